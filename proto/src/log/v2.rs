//! Log schema version 2: version 1, drills and game days. A drill (`umbra drill evacuate`)
//! records its verdict in the replicated state, so every operator sees the cluster's drills
//! (`umbra status`, `GET /v1/drills`) and nobody's laptop holds the only copy; a plan can
//! schedule a drill (a game day), which the leader runs and records the same way.
//!
//! What changed from [version 1](super::v1): [`Command`] gained [`Command::RecordDrill`],
//! [`Plan`] gained `game_days`, and [`Snapshot`] gained `drills`, `next_drill`, `game_days`
//! and `game_day_verdicts`. Every other type is version 1's, unchanged (re-exported from
//! there, so it cannot drift). A version 1 entry or snapshot upgrades through `From`: its
//! command as the same command (a plan with no game days), its state with no drills.
//!
//! Frozen once released, as every version is (see [`super`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::v1::{
    AuditEntry, AuditEvent, CapacityClaim, ClaimKind, ClaimRequest, DnsTtlPlan, DnsWeights,
    LimitsSpec, MigrationRecord, MigrationRequest, MigrationSpec, Phase, PhaseDeadlines, PoolMode,
    PrometheusSlo, ReadinessGate, RegionSpec, ReplicationKind, RequestMix, RequestTemplate,
    ScheduleLeg, ScheduleSpec, ServiceSpec, ServiceState, Slo, SloJudgement, SloSource, Tier,
    WarmupSpec,
};

use super::v1;

/// A change to the replicated state: one Raft log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create or update regions, services and schedules.
    ApplyPlan {
        /// The plan.
        plan: Plan,
        /// When (Unix ms, the proposer's clock).
        at_ms: u64,
    },
    /// Create a migration.
    CreateMigration {
        /// What to move.
        request: MigrationRequest,
        /// When.
        at_ms: u64,
    },
    /// Move a migration to another phase.
    Transition {
        /// The migration.
        id: String,
        /// The phase it must be in.
        from: Phase,
        /// The phase to move to.
        to: Phase,
        /// Why.
        reason: String,
        /// Shadow pool size, set when provisioning starts.
        shadow_instances: Option<u32>,
        /// Entering `RolledBack`: the rollback's measured time.
        rollback_ms: Option<u64>,
        /// Proposing leader's term.
        term: u64,
        /// When.
        at_ms: u64,
    },
    /// The single writer moved.
    SetPromoted {
        /// The migration.
        id: String,
        /// Whether the target is the writer now.
        promoted: bool,
        /// The measured fence-to-promotion window.
        fence_window_ms: Option<u64>,
        /// Proposing leader's term.
        term: u64,
        /// When.
        at_ms: u64,
    },
    /// An operator asks a migration to roll back.
    RequestRollback {
        /// The migration.
        id: String,
        /// Why.
        reason: String,
        /// When.
        at_ms: u64,
    },
    /// The weights of a service's DNS record.
    SetDnsWeights {
        /// The service.
        service: String,
        /// The weights and TTL.
        dns: DnsWeights,
        /// Why.
        reason: String,
        /// Proposing leader's term.
        term: u64,
        /// When.
        at_ms: u64,
    },
    /// An operator claims serving capacity.
    ClaimCapacity {
        /// What is claimed.
        request: ClaimRequest,
        /// When.
        at_ms: u64,
    },
    /// An operator gives a claim back.
    ReleaseCapacity {
        /// The claim.
        id: String,
        /// When.
        at_ms: u64,
    },
    /// A drill's verdict, as the drill reported it (new in version 2).
    RecordDrill {
        /// The verdict.
        drill: DrillReport,
        /// When (Unix ms, the proposer's clock).
        at_ms: u64,
    },
}

/// The whole replicated state: one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Regions by name.
    pub regions: BTreeMap<String, RegionSpec>,
    /// Services by name.
    pub services: BTreeMap<String, ServiceState>,
    /// Migrations by id.
    pub migrations: BTreeMap<String, MigrationRecord>,
    /// Schedules by name.
    pub schedules: BTreeMap<String, ScheduleSpec>,
    /// DNS weights by service.
    pub dns: BTreeMap<String, DnsWeights>,
    /// Schedule key → the migration it created.
    pub fired: BTreeMap<String, String>,
    /// The audit log, oldest first.
    pub audit: Vec<AuditEntry>,
    /// Capacity claims by id.
    pub capacity: BTreeMap<String, CapacityClaim>,
    /// The last migration number given out.
    pub next_migration: u64,
    /// The last claim number given out.
    pub next_claim: u64,
    /// The highest leader term applied.
    pub highest_term: u64,
    /// Index of the last applied entry.
    pub applied_index: u64,
    /// Recorded drills, oldest first (new in version 2).
    pub drills: Vec<DrillRecord>,
    /// The last drill number given out (new in version 2).
    pub next_drill: u64,
    /// Game days by name (new in version 2).
    pub game_days: BTreeMap<String, GameDaySpec>,
    /// Game day → the drill that recorded its verdict (new in version 2).
    pub game_day_verdicts: BTreeMap<String, String>,
}

/// A plan as applied (version 2: game days added).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Regions.
    pub regions: Vec<RegionSpec>,
    /// Services.
    pub services: Vec<ServiceSpec>,
    /// Schedules.
    pub schedules: Vec<ScheduleSpec>,
    /// Game days.
    pub game_days: Vec<GameDaySpec>,
}

/// A drill the plan schedules: a game day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameDaySpec {
    /// Name.
    pub name: String,
    /// The drill.
    pub drill: String,
    /// The region it acts on.
    pub region: String,
    /// Where services go.
    pub to: Option<String>,
    /// When it starts, Unix ms.
    pub at_ms: u64,
}

/// A drill's verdict as its runner reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// The kind of drill, e.g. `evacuate`.
    pub drill: String,
    /// The region it acted on.
    pub region: String,
    /// Whether it passed.
    pub passed: bool,
    /// Why it failed.
    pub reasons: Vec<String>,
    /// Start, Unix ms.
    pub started_ms: u64,
    /// End, Unix ms.
    pub ended_ms: u64,
    /// Time until every service was out, ms.
    pub evacuate_ms: Option<u64>,
    /// Each service's outcome, in the drill's order.
    pub services: Vec<DrillService>,
    /// Requests the fronts served during it.
    pub requests: u64,
    /// Of which failed.
    pub failed_requests: u64,
    /// The error budget, 0..1.
    pub max_failed_ratio: f64,
    /// The p99 bound, ms.
    pub max_p99_ms: f64,
    /// The highest window p99, ms.
    pub p99_ms_max: Option<f64>,
    /// The stop condition that tripped.
    pub stopped: Option<String>,
    /// Rollbacks it asked for.
    pub rollbacks: u64,
    /// Faults of its plan that fired.
    pub faults_fired: u64,
    /// Faults in its plan.
    pub faults_planned: u64,
    /// The generated fault plan's seed.
    pub seed: Option<u64>,
    /// The game day it ran for.
    pub game_day: Option<String>,
}

/// One service of a drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillService {
    /// The service.
    pub service: String,
    /// Where it went.
    pub to: String,
    /// The migration that moved it.
    pub migration: Option<String>,
    /// How it ended.
    pub outcome: String,
}

/// A recorded drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// `drill-{n}`.
    pub id: String,
    /// Log index of the command.
    pub index: u64,
    /// When recorded, Unix ms.
    pub recorded_ms: u64,
    /// The verdict.
    pub report: DrillReport,
}

impl From<v1::Command> for Command {
    fn from(command: v1::Command) -> Self {
        use v1::Command as V1;
        match command {
            V1::ApplyPlan { plan, at_ms } => Command::ApplyPlan {
                plan: plan.into(),
                at_ms,
            },
            V1::CreateMigration { request, at_ms } => Command::CreateMigration { request, at_ms },
            V1::Transition {
                id,
                from,
                to,
                reason,
                shadow_instances,
                rollback_ms,
                term,
                at_ms,
            } => Command::Transition {
                id,
                from,
                to,
                reason,
                shadow_instances,
                rollback_ms,
                term,
                at_ms,
            },
            V1::SetPromoted {
                id,
                promoted,
                fence_window_ms,
                term,
                at_ms,
            } => Command::SetPromoted {
                id,
                promoted,
                fence_window_ms,
                term,
                at_ms,
            },
            V1::RequestRollback { id, reason, at_ms } => {
                Command::RequestRollback { id, reason, at_ms }
            }
            V1::SetDnsWeights {
                service,
                dns,
                reason,
                term,
                at_ms,
            } => Command::SetDnsWeights {
                service,
                dns,
                reason,
                term,
                at_ms,
            },
            V1::ClaimCapacity { request, at_ms } => Command::ClaimCapacity { request, at_ms },
            V1::ReleaseCapacity { id, at_ms } => Command::ReleaseCapacity { id, at_ms },
        }
    }
}

impl From<v1::Snapshot> for Snapshot {
    fn from(snapshot: v1::Snapshot) -> Self {
        let v1::Snapshot {
            regions,
            services,
            migrations,
            schedules,
            dns,
            fired,
            audit,
            capacity,
            next_migration,
            next_claim,
            highest_term,
            applied_index,
        } = snapshot;
        Snapshot {
            regions,
            services,
            migrations,
            schedules,
            dns,
            fired,
            audit,
            capacity,
            next_migration,
            next_claim,
            highest_term,
            applied_index,
            drills: Vec::new(),
            next_drill: 0,
            game_days: BTreeMap::new(),
            game_day_verdicts: BTreeMap::new(),
        }
    }
}

impl From<v1::Plan> for Plan {
    fn from(plan: v1::Plan) -> Self {
        let v1::Plan {
            regions,
            services,
            schedules,
        } = plan;
        Plan {
            regions,
            services,
            schedules,
            game_days: Vec::new(),
        }
    }
}
