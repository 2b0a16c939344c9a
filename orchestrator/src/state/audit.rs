//! What the audit log records: one typed event per change, with its reason. Readers (the
//! demo's report, `umbra status`, the tests) match on the event; none parses text. `Display`
//! gives the one-line form a person reads (`cutting_over[1] → rolling_back`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::migration::Phase;

/// One change to the replicated state. Variants are only ever appended (postcard encodes
/// their index in snapshots).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    /// A plan created or updated this many regions, services and schedules.
    PlanApplied {
        /// Regions in the plan.
        regions: usize,
        /// Services in the plan.
        services: usize,
        /// Schedules in the plan.
        schedules: usize,
    },
    /// A migration was created.
    MigrationCreated {
        /// The service it moves.
        service: String,
        /// Source region.
        from: String,
        /// Target region.
        to: String,
        /// When the traffic should be in the target, Unix ms.
        cutover_at_ms: u64,
    },
    /// A migration changed phase (the executor, or an operator's rollback).
    Transition {
        /// The phase it left.
        from: Phase,
        /// The phase it entered.
        to: Phase,
        /// The shadow pool's size, set when provisioning starts.
        shadow_instances: Option<u32>,
        /// Entering `rolled_back`: from the breach detected to share 0 confirmed on the
        /// source, as the leader measured it.
        rollback_ms: Option<u64>,
    },
    /// The single writer moved.
    WriterMoved {
        /// `true`: to the target; `false`: back to the source.
        to_target: bool,
        /// From the source's fence confirmed to the promotion confirmed, as the leader that did
        /// both measured it (`None` when leaders changed in between).
        fence_window_ms: Option<u64>,
    },
    /// A service's DNS record got new weights.
    DnsWeights {
        /// Weight per region.
        weights: BTreeMap<String, u32>,
        /// The record's TTL.
        ttl_secs: u32,
    },
    /// Serving capacity was claimed.
    CapacityClaimed {
        /// The service.
        service: String,
        /// The region.
        region: String,
        /// Serving instances held.
        instances: u32,
        /// Window start, Unix ms.
        start_ms: u64,
        /// Window end, Unix ms.
        end_ms: u64,
    },
    /// A claim was given back.
    CapacityReleased {
        /// The service.
        service: String,
        /// The region.
        region: String,
        /// Serving instances it held.
        instances: u32,
    },
}

impl fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use super::claims::rfc3339;
        match self {
            AuditEvent::PlanApplied {
                regions,
                services,
                schedules,
            } => write!(
                f,
                "applied {regions} region(s), {services} service(s), {schedules} schedule(s)"
            ),
            AuditEvent::MigrationCreated {
                service,
                from,
                to,
                cutover_at_ms,
            } => write!(
                f,
                "created: {service} {from} → {to} at {}",
                rfc3339(*cutover_at_ms)
            ),
            AuditEvent::Transition { from, to, .. } => write!(f, "{from} → {to}"),
            AuditEvent::WriterMoved {
                to_target,
                fence_window_ms,
            } => {
                f.write_str(if *to_target {
                    "writer → target"
                } else {
                    "writer → source"
                })?;
                match fence_window_ms {
                    Some(ms) => write!(f, " (fenced {ms} ms)"),
                    None => Ok(()),
                }
            }
            AuditEvent::DnsWeights { weights, ttl_secs } => {
                let weights: Vec<String> =
                    weights.iter().map(|(r, w)| format!("{r}={w}")).collect();
                write!(f, "dns {} ttl {ttl_secs}s", weights.join(","))
            }
            AuditEvent::CapacityClaimed {
                service,
                region,
                instances,
                start_ms,
                end_ms,
            } => write!(
                f,
                "claimed {instances} instance(s) of {service} in {region} from {} to {}",
                rfc3339(*start_ms),
                rfc3339(*end_ms)
            ),
            AuditEvent::CapacityReleased {
                service,
                region,
                instances,
            } => write!(
                f,
                "released {instances} instance(s) of {service} in {region}"
            ),
        }
    }
}
