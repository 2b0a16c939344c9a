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
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::migration::{MigrationRecord, Observations, Readiness, progress};
use crate::state::{AuditEntry, Overview};
use crate::store::LeaderInfo;

pub use auth::{BearerToken, TokenError};
pub use client::{ApiClient, ClientError};
pub use server::{RunningApi, ServeError, serve};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do about it.
    pub error: String,
}

/// The body of `POST /v1/migrations/{id}/rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Why (kept in the audit log).
    pub reason: String,
}

/// The body of `POST /v1/capacity`: serving capacity to hold for a service in its serving
/// region, from now (a request) or for a window (a reservation: `start` and `end`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// One capacity claim as `GET /v1/capacity` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimStatus {
    /// The claim as replicated.
    #[serde(flatten)]
    pub claim: crate::state::CapacityClaim,
    /// Window start and end, RFC 3339.
    pub start: String,
    /// Window end, RFC 3339.
    pub end: String,
    /// How the pool met it, as the leader's executor saw it (`None` before it takes effect,
    /// or on a node that does not lead).
    pub fulfilment: Option<crate::capacity::ClaimFulfilment>,
}

/// The answer of `GET /v1/capacity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityReport {
    /// Who leads (fulfilment and pools come from the leader's executor only).
    pub leader: LeaderInfo,
    /// The claims in force or ahead, in the order they were made.
    pub claims: Vec<ClaimStatus>,
    /// Each service's serving pool.
    pub pools: Vec<crate::capacity::PoolView>,
}

/// One slice of `GET /v1/forecast`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastSlice {
    /// Slice start, RFC 3339.
    pub start: String,
    /// The slice's target and the demand it was sized for.
    #[serde(flatten)]
    pub slice: crate::capacity::SliceTarget,
}

/// The answer of `GET /v1/forecast?service=S&region=R`: the demand forecast the leader holds
/// for a serving pool, slice by slice from now's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastReport {
    /// The service.
    pub service: String,
    /// The region.
    pub region: String,
    /// The model, or why there is no forecast.
    pub model: String,
    /// The coming slices.
    pub slices: Vec<ForecastSlice>,
}

/// The answer of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always true when the API answers.
    pub ok: bool,
    /// Who leads.
    pub leader: LeaderInfo,
}

/// One migration as `GET /v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// Its id.
    pub id: String,
    /// The service it moves.
    pub service: String,
    /// Source region.
    pub from: String,
    /// Target region.
    pub to: String,
    /// Where it is, e.g. `cutting_over[1]`.
    pub phase: String,
    /// Since when (Unix ms).
    pub phase_since_ms: u64,
    /// Nothing more will happen to it.
    pub terminal: bool,
    /// Share of traffic (percent) the target should carry in this phase.
    pub target_share_percent: u8,
    /// Lifecycle stages finished (see [`progress`]).
    pub stages_done: u64,
    /// Lifecycle stages in all: planned, provisioning, warming, replicating, ready, one per
    /// cutover step, draining, completed.
    pub stages_total: u64,
    /// When the traffic should be in the target (Unix ms).
    pub cutover_at_ms: u64,
    /// Shadow pool size.
    pub shadow_instances: u32,
    /// Whether the target is the single writer.
    pub promoted: bool,
    /// Readiness of the target before cutover, when this node's executor observed it.
    pub readiness: Option<Readiness>,
    /// The DNS TTL plan: when the record's TTL goes down and whether that is late.
    pub dns_ttl: DnsTtlStatus,
}

/// A migration's DNS TTL, as `umbra status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsTtlStatus {
    /// TTL outside migrations, seconds.
    pub old_ttl_secs: u32,
    /// TTL during the cutover, seconds (equal to the old one: never lowered).
    pub low_ttl_secs: u32,
    /// When the TTL plan lowers it (Unix ms).
    pub lower_at_ms: u64,
    /// When the low TTL was first published (Unix ms), once it was.
    pub lowered_at_ms: Option<u64>,
    /// From when every cache holds the low TTL (Unix ms; as planned until it was published).
    pub low_ttl_everywhere_at_ms: u64,
    /// That time is after the cutover starts: steps before it take up to the old TTL to reach
    /// every client.
    pub late: bool,
}

/// The answer of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Who leads.
    pub leader: LeaderInfo,
    /// Regions, services, schedules, DNS weights (and migrations, in full).
    pub overview: Overview,
    /// Every migration, newest first.
    pub migrations: Vec<MigrationStatus>,
    /// The most recent audit entries, oldest first.
    pub recent_audit: Vec<AuditEntry>,
    /// Each service's serving pool: target and what its region holds (from the leader's
    /// executor; empty on a node that does not lead).
    #[serde(default)]
    pub pools: Vec<crate::capacity::PoolView>,
}

impl MigrationStatus {
    /// The status of `record`, with the readiness computed from `seen` when given.
    pub fn of(record: &MigrationRecord, seen: Option<&Observations>) -> Self {
        let (stages_done, stages_total) = progress(record);
        let spec = &record.spec;
        Self {
            id: spec.id.clone(),
            service: spec.service.clone(),
            from: spec.from.clone(),
            to: spec.to.clone(),
            phase: record.phase.to_string(),
            phase_since_ms: record.phase_since_ms,
            terminal: record.phase.is_terminal(),
            target_share_percent: spec.target_share(record.phase),
            stages_done,
            stages_total,
            cutover_at_ms: spec.cutover_at_ms,
            shadow_instances: record.shadow_instances,
            promoted: record.promoted,
            readiness: seen.map(|seen| crate::migration::readiness(record, seen)),
            dns_ttl: {
                let plan = &spec.dns_ttl;
                let lowered = record.ttl_lowered_at_ms;
                DnsTtlStatus {
                    old_ttl_secs: plan.old_ttl_secs,
                    low_ttl_secs: plan.low_ttl_secs,
                    lower_at_ms: plan.lower_at_ms,
                    lowered_at_ms: lowered,
                    low_ttl_everywhere_at_ms: plan
                        .low_ttl_everywhere_at_ms(lowered.unwrap_or(plan.lower_at_ms)),
                    late: plan.lowers() && plan.late(lowered, spec.cutover_at_ms),
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::{MigrationSpec, Phase, PhaseDeadlines, Slo};

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
