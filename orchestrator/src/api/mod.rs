//! The operator API: HTTPS + JSON on every orchestrator, for `umbra apply`, `migrate`,
//! `status` and `rollback`. The server (`server`) checks who is calling (a client certificate
//! from the cluster CA with the `operator` role, plus a bearer token), dry-runs every write
//! with `Query::Check` so bad input costs no log entry, then proposes it through a
//! [`Replicated`](crate::store::Replicated) store (`crate::store`). `client` is the HTTPS
//! client the CLI and the tests use.
//!
//! This module must not decide what a command does (that is `state`), must not log the
//! token, and must not trust anything a request says about who sent it: identity comes from
//! the verified TLS certificate only.

mod auth;
pub mod client;
mod dashboard;
mod openapi;
mod server;
mod views;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use auth::{BearerToken, TokenError};
pub use client::{ApiClient, ClientError};
pub use server::{RunningApi, ServeError, serve};
pub use views::{
    AuditEntryView, AuditEventView, CapacityReport, ClaimStatus, DnsTtlStatus, DrillBody,
    DrillServiceView, DrillVerdict, DrillView, ForecastReport, FulfilmentView, GameDayView, Health,
    MemberView, MigrationAnswer, MigrationBody, MigrationStatus, OverviewView, PoolSize,
    PoolStatus, SliceView, StatusReport, Timestamp, Written,
};

/// Largest request body accepted: 1 MiB. A plan of a few hundred services is tens of KiB;
/// anything near this bound is a mistake, not a plan.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Longest a request may take end to end: 15 s, longer than the Raft node's own 5 s request
/// timeout plus the forwarding client's 8 s wait, so the cluster's verdict arrives first.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a TLS handshake plus request head may take: 5 s, so a client that connects and
/// says nothing cannot hold a connection slot.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's accept queue. Operators are few.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Audit entries `GET /v1/audit` returns when no `limit` is given, and the most it returns.
pub const DEFAULT_AUDIT_LIMIT: usize = 100;
/// See [`DEFAULT_AUDIT_LIMIT`].
pub const MAX_AUDIT_LIMIT: usize = 1_000;
/// Audit entries `GET /v1/status` includes (the most recent ones).
pub const STATUS_AUDIT_ENTRIES: usize = 20;
/// Recorded drills `GET /v1/status` shows, newest first.
pub const STATUS_DRILLS: usize = 5;

/// How the operator API listens and what it accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on (HTTPS).
    pub listen: SocketAddr,
    /// File holding the bearer token (one line). Read once at start; never logged.
    pub token_file: PathBuf,
    /// Largest request body, bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Longest a request may take, milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Longest a TLS handshake plus request head may take, milliseconds.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Connections served at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_request_timeout_ms() -> u64 {
    DEFAULT_REQUEST_TIMEOUT.as_millis() as u64
}
fn default_handshake_timeout_ms() -> u64 {
    DEFAULT_HANDSHAKE_TIMEOUT.as_millis() as u64
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

/// Why an [`ApiConfig`] is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiConfigError {
    /// A limit is zero.
    #[error("api.{0} must be greater than zero")]
    Zero(&'static str),
}

impl ApiConfig {
    /// A config with the default limits.
    pub fn new(listen: SocketAddr, token_file: PathBuf) -> Self {
        Self {
            listen,
            token_file,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout_ms: default_request_timeout_ms(),
            handshake_timeout_ms: default_handshake_timeout_ms(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// Checks the limits.
    pub fn validate(&self) -> Result<(), ApiConfigError> {
        for (name, value) in [
            ("max_body_bytes", self.max_body_bytes as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("max_connections", self.max_connections as u64),
        ] {
            if value == 0 {
                return Err(ApiConfigError::Zero(name));
            }
        }
        Ok(())
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong and what to do about it.
    pub error: String,
}

/// The body of `POST /v1/migrations/{id}/rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Why (kept in the audit log).
    pub reason: String,
}

/// The body of `POST /v1/capacity`: serving capacity to hold for a service in its serving
/// region, from now (a request) or for a window (a reservation: `start` and `end`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CapacityBody {
    /// The service.
    pub service: String,
    /// Its serving region.
    pub region: String,
    /// Serving instances to hold.
    pub instances: u32,
    /// Window start, RFC 3339 (leave out for a request from now).
    #[serde(default)]
    pub start: Option<String>,
    /// Window end, RFC 3339 (a request without it holds for `hold_secs`).
    #[serde(default)]
    pub end: Option<String>,
    /// How long a request holds, seconds (default one hour); not with `end`.
    #[serde(default)]
    pub hold_secs: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::{
        MigrationRecord, MigrationSpec, Observations, Phase, PhaseDeadlines, Slo, progress,
    };

    fn record(phase: Phase) -> MigrationRecord {
        MigrationRecord {
            spec: MigrationSpec {
                id: "shop-1".to_owned(),
                service: "shop".to_owned(),
                from: "us-east".to_owned(),
                to: "eu-west".to_owned(),
                cutover_at_ms: 1_000,
                lead_time_ms: 100,
                steps_percent: vec![10, 50, 100],
                analysis_window_ms: 10,
                drain_ms: Some(10),
                dns_ttl: crate::migration::DnsTtlPlan::default(),
                warm_up: true,
                max_replication_lag: 0,
                slo: Slo {
                    max_error_rate: 0.01,
                    max_p99_ms: 100.0,
                    min_samples: 10,
                    source: Default::default(),
                    judgement: Default::default(),
                },
                deadlines: PhaseDeadlines {
                    provisioning_ms: 1,
                    warming_ms: 1,
                    replicating_ms: 1,
                    rolling_back_ms: 1,
                },
            },
            phase,
            phase_since_ms: 0,
            shadow_instances: 2,
            promoted: false,
            ttl_lowered_at_ms: None,
        }
    }

    #[test]
    fn progress_moves_forward_through_the_lifecycle_and_never_back_in_a_rollback() {
        let table = [
            (Phase::Planned, 0),
            (Phase::Provisioning, 1),
            (Phase::Warming, 2),
            (Phase::Replicating, 3),
            (Phase::Ready, 4),
            (Phase::CuttingOver { step: 0 }, 5),
            (Phase::CuttingOver { step: 2 }, 7),
            (Phase::Draining, 8),
            (Phase::Completed, 9),
            (Phase::RollingBack, 0),
            (Phase::RolledBack, 9),
            (Phase::Failed, 9),
        ];
        for (phase, done) in table {
            assert_eq!(progress(&record(phase)), (done, 9), "{phase}");
        }
    }

    #[test]
    fn status_shows_the_share_and_readiness_only_when_observed() {
        let cutting = record(Phase::CuttingOver { step: 1 });
        let status = MigrationStatus::of(&cutting, None);
        assert_eq!(status.phase, "cutting_over[1]");
        assert_eq!(status.target_share_percent, 50);
        assert!(status.readiness.is_none());
        let seen = Observations {
            shadow_serving: 2,
            shadow_warm: 2,
            replication: Some(crate::migration::ReplicationObserved {
                lag: 0,
                promoted: false,
                source_fenced: false,
                fence_lifted: false,
            }),
            ..Observations::default()
        };
        let status = MigrationStatus::of(&record(Phase::Ready), Some(&seen));
        assert_eq!(status.readiness.expect("observed").score, 100);
    }

    #[test]
    fn zero_limits_are_refused() {
        let mut config = ApiConfig::new("127.0.0.1:0".parse().unwrap(), "token".into());
        assert_eq!(config.validate(), Ok(()));
        config.request_timeout_ms = 0;
        assert_eq!(
            config.validate(),
            Err(ApiConfigError::Zero("request_timeout_ms"))
        );
    }
}
