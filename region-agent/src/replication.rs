//! Replication drivers: move a service's data from the source region to a shadow target and
//! hand over the single writer at cutover. The [`ReplicationDriver`] trait is the contract the
//! agent executes — start, lag, fence the source, wait for lag 0, promote, stop — shaped so a
//! PostgreSQL logical-replication driver fits it later (positions are opaque counters: records
//! here, LSN bytes there; fencing = `default_transaction_read_only` plus terminating writers;
//! promote = drop the subscription and open the target for writes).
//!
//! The first driver, [`SampleLogShipping`], drives the sample service's log shipping over its
//! admin API: the target pulls the source's WAL from its own offset (see
//! `sample::follower`), so a restarted target resumes without loss or duplication.
//!
//! Drivers must not promote a target that could lack acknowledged writes: [`promote`] checks
//! that the source is fenced and the lag is zero first. Nor may they make two writers:
//! [`unfence_source`] checks that the target is not promoted first.
//!
//! [`promote`]: ReplicationDriver::promote
//! [`unfence_source`]: ReplicationDriver::unfence_source

use std::future::Future;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::sample::{Mode, SampleStatus};

/// Timeout of one admin call to a source or target.
pub const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll interval while waiting for lag 0: short, because the wait sits inside the cutover's
/// write-unavailability window.
pub const LAG_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Errors of replication drivers.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// A call to the source or the target failed.
    #[error("{endpoint}: {message}")]
    Call {
        /// Which side and URL.
        endpoint: String,
        /// What failed.
        message: String,
    },
    /// Lag did not reach 0 in time.
    #[error(
        "replication lag still {lag} after {waited:?}; is the source fenced and the target following?"
    )]
    LagTimeout {
        /// Remaining lag.
        lag: u64,
        /// How long we waited.
        waited: Duration,
    },
    /// Promotion would lose acknowledged writes.
    #[error("refusing to promote: {0}")]
    UnsafePromote(String),
    /// Lifting the fence would make a second writer: the target already is one.
    #[error("refusing to lift the source's fence: {0}")]
    UnsafeUnfence(String),
    /// The driver was given a bad endpoint.
    #[error("invalid replication endpoint {0:?}: use a base URL such as http://127.0.0.1:8080")]
    BadEndpoint(String),
}

/// Where source and target stand, in the driver's unit (records, bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    /// What the source holds.
    pub source: u64,
    /// What the target has applied.
    pub target: u64,
    /// Whether the source refuses writes.
    pub source_fenced: bool,
    /// Whether the target is the writer.
    pub target_promoted: bool,
}

impl Positions {
    /// Records (or bytes) the target still lacks.
    pub fn lag(&self) -> u64 {
        self.source.saturating_sub(self.target)
    }
}

/// One source → target replication.
pub trait ReplicationDriver: Send + Sync {
    /// Starts streaming from the source to the target (idempotent).
    fn start(&self) -> impl Future<Output = Result<(), ReplicationError>> + Send;
    /// Current positions.
    fn positions(&self) -> impl Future<Output = Result<Positions, ReplicationError>> + Send;
    /// Makes the source refuse writes; every write it acknowledged before is in its log.
    fn fence_source(&self) -> impl Future<Output = Result<(), ReplicationError>> + Send;
    /// Lifts the fence (rollback before promotion). Refused while the target is the writer:
    /// the source must not take writes beside it (hand the writer back instead).
    fn unfence_source(&self) -> impl Future<Output = Result<(), ReplicationError>> + Send;
    /// Makes the target the writer and stops replication. Refused unless the source is fenced
    /// and the lag is 0.
    fn promote(&self) -> impl Future<Output = Result<(), ReplicationError>> + Send;
    /// Stops replication without promoting (the target stays read-only).
    fn stop(&self) -> impl Future<Output = Result<(), ReplicationError>> + Send;

    /// Waits until the target holds everything the source holds.
    fn wait_for_zero_lag(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Positions, ReplicationError>> + Send {
        async move {
            let started = Instant::now();
            loop {
                let p = self.positions().await?;
                if p.lag() == 0 {
                    return Ok(p);
                }
                if started.elapsed() >= timeout {
                    return Err(ReplicationError::LagTimeout {
                        lag: p.lag(),
                        waited: started.elapsed(),
                    });
                }
                tokio::time::sleep(LAG_POLL_INTERVAL).await;
            }
        }
    }
}

/// Log shipping between two sample-service instances.
pub struct SampleLogShipping {
    source: String,
    target: String,
    http: reqwest::Client,
}

impl SampleLogShipping {
    /// A driver from `source` to `target` (base URLs).
    pub fn new(source: &str, target: &str) -> Result<Self, ReplicationError> {
        for url in [source, target] {
            if !url.starts_with("http://") || url.len() <= "http://".len() {
                return Err(ReplicationError::BadEndpoint(url.to_owned()));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(ADMIN_CALL_TIMEOUT)
            .build()
            .map_err(|e| ReplicationError::Call {
                endpoint: "http client".into(),
                message: e.to_string(),
            })?;
        Ok(SampleLogShipping {
            source: source.trim_end_matches('/').to_owned(),
            target: target.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// The source's base URL.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The target's base URL.
    pub fn target(&self) -> &str {
        &self.target
    }

    async fn call<T: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ReplicationError> {
        let url = format!("{base}{path}");
        let err = |message: String| ReplicationError::Call {
            endpoint: url.clone(),
            message,
        };
        let req = match body {
            Some(b) => self.http.post(&url).json(&b),
            None if path.starts_with("/admin/status") => self.http.get(&url),
            None => self.http.post(&url),
        };
        let resp = req.send().await.map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(err(format!("{status}: {text}")));
        }
        resp.json::<T>().await.map_err(|e| err(e.to_string()))
    }
}

impl ReplicationDriver for SampleLogShipping {
    async fn start(&self) -> Result<(), ReplicationError> {
        let status: SampleStatus = self.call(&self.target, "/admin/status", None).await?;
        if status.mode
            == (Mode::Replica {
                source: self.source.clone(),
            })
        {
            return Ok(());
        }
        let _: SampleStatus = self
            .call(
                &self.target,
                "/admin/follow",
                Some(serde_json::json!({ "source": self.source })),
            )
            .await?;
        Ok(())
    }

    async fn positions(&self) -> Result<Positions, ReplicationError> {
        // Source first: the target can only be behind what we read from the source, so the lag
        // is never under-reported.
        let source: SampleStatus = self.call(&self.source, "/admin/status", None).await?;
        let target: SampleStatus = self.call(&self.target, "/admin/status", None).await?;
        // In PostgreSQL mode a replica's followers read its own server's WAL, not its
        // source's: they are measured against the position it publishes.
        let source_position = source
            .postgres
            .as_ref()
            .and_then(|pg| pg.published_position)
            .unwrap_or(source.last_seq);
        Ok(Positions {
            source: source_position,
            target: target.last_seq,
            source_fenced: source.mode == Mode::Fenced,
            target_promoted: target.mode == Mode::Primary,
        })
    }

    async fn fence_source(&self) -> Result<(), ReplicationError> {
        // The fenced source passes client writes on to the target (held until it is
        // promoted), so writes still reaching the source during the move are not refused.
        let body = serde_json::json!({ "writer": self.target });
        let _: SampleStatus = self.call(&self.source, "/admin/fence", Some(body)).await?;
        Ok(())
    }

    async fn unfence_source(&self) -> Result<(), ReplicationError> {
        // The target is asked first: while it cannot answer, it may be the writer.
        let p = self.positions().await?;
        if p.target_promoted {
            return Err(ReplicationError::UnsafeUnfence(
                "the target was promoted and takes writes; hand the writer back to the source"
                    .into(),
            ));
        }
        if !p.source_fenced {
            return Ok(());
        }
        let _: SampleStatus = self.call(&self.source, "/admin/unfence", None).await?;
        Ok(())
    }

    async fn promote(&self) -> Result<(), ReplicationError> {
        let p = self.positions().await?;
        if p.target_promoted {
            return Ok(());
        }
        if !p.source_fenced {
            return Err(ReplicationError::UnsafePromote(
                "the source still accepts writes; fence it first".into(),
            ));
        }
        if p.lag() != 0 {
            return Err(ReplicationError::UnsafePromote(format!(
                "the target lacks {} acknowledged records; wait for lag 0 first",
                p.lag()
            )));
        }
        let _: SampleStatus = self.call(&self.target, "/admin/promote", None).await?;
        Ok(())
    }

    async fn stop(&self) -> Result<(), ReplicationError> {
        let _: SampleStatus = self.call(&self.target, "/admin/unfollow", None).await?;
        Ok(())
    }
}
