//! Log schema version 1: the commands of the orchestrators' replicated state as Raft log
//! entries hold them, and the state as a snapshot holds it.
//!
//! Version 1 is the encoding every Umbra build wrote before the log schema had a module of
//! its own (the orchestrator's types, postcard, behind protocol version 1), so each type here
//! mirrors one of them field for field, in the same order: the bytes are the same, and data
//! directories written by those builds decode as version 1. The orchestrator's
//! `tests/fixtures/log-v1/` holds such bytes, and its `log_schema` test checks both ways.
//!
//! Frozen: nothing here changes, not a field, not its type, not its place, not a variant's
//! place (see [`super`] for how a change is made instead). Counts that were `usize` are `u64`
//! here, which postcard encodes the same way. Plain data: no defaults, no renames, no
//! behaviour, no dependency on any other wire type (the agent protocol's `WarmupSpec`, say,
//! may change with the protocol version; its copy here may not).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
}

/// A plan as applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Regions.
    pub regions: Vec<RegionSpec>,
    /// Services.
    pub services: Vec<ServiceSpec>,
    /// Schedules.
    pub schedules: Vec<ScheduleSpec>,
}

/// One region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionSpec {
    /// Name.
    pub name: String,
    /// Load-balancer front, `ip:port`.
    pub front: String,
    /// Cost of a warm instance-hour.
    pub warm_instance_hour: f64,
    /// Cost of a dormant instance-hour.
    pub dormant_instance_hour: f64,
    /// Quota for capacity claims.
    pub max_instances: Option<u32>,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Name.
    pub name: String,
    /// DNS name clients resolve.
    pub hostname: String,
    /// Serving region when first applied.
    pub primary_region: String,
    /// Requests per second one instance serves.
    pub capacity_rps_per_instance: f64,
    /// Smallest shadow pool.
    pub min_instances: u32,
    /// Largest shadow pool.
    pub max_instances: u32,
    /// Capacity guarantee.
    pub tier: Tier,
    /// DNS TTL outside migrations.
    pub dns_ttl_secs: u32,
    /// DNS TTL during a cutover.
    pub cutover_ttl_secs: u32,
    /// Slack after each TTL wait.
    pub dns_margin_secs: u32,
    /// Cutover steps, percent.
    pub steps_percent: Vec<u8>,
    /// Hold per step.
    pub analysis_window_secs: u64,
    /// Provisioning lead.
    pub lead_time_secs: u64,
    /// The SLO.
    pub slo: Slo,
    /// Warm-up traffic and gate.
    pub warmup: WarmupSpec,
    /// How data follows the service.
    pub replication: ReplicationKind,
    /// Caught-up replication lag.
    pub max_replication_lag: u64,
    /// How the serving pool is sized.
    pub pools: PoolMode,
    /// Adaptive instance limits.
    pub instance_limits: Option<LimitsSpec>,
}

/// Capacity guarantee of a service.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Tier {
    /// A fixed demand quantile.
    Guaranteed {
        /// The quantile.
        quantile: f64,
    },
    /// The newsvendor quantile of two costs.
    Probabilistic {
        /// Cost of a missing instance.
        cost_miss: f64,
        /// Cost of an idle instance.
        cost_idle: f64,
    },
    /// No pool.
    OnDemand,
}

/// A service's SLO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// Highest failed share, 0..1.
    pub max_error_rate: f64,
    /// Highest p99, ms.
    pub max_p99_ms: f64,
    /// Fewest requests per verdict.
    pub min_samples: u64,
    /// Where readings come from.
    pub source: SloSource,
    /// How latency is judged.
    pub judgement: SloJudgement,
}

/// Where SLO readings come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SloSource {
    /// The target region's front.
    Fronts,
    /// Prometheus queries.
    Prometheus(PrometheusSlo),
}

/// An SLO judged from Prometheus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrometheusSlo {
    /// Server base URL.
    pub url: String,
    /// Error-ratio query.
    pub error_ratio_query: String,
    /// p99 latency query.
    pub latency_p99_query: String,
}

/// How a step's latency is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SloJudgement {
    /// Against the p99 bound.
    Thresholds,
    /// Against the source region's.
    Compare,
}

/// Warm-up traffic and its readiness gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmupSpec {
    /// The traffic.
    pub mix: RequestMix,
    /// When it counts as warm.
    pub gate: ReadinessGate,
    /// Whether writes are allowed.
    pub allow_writes: bool,
}

/// A synthetic request mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestMix {
    /// Request shapes.
    pub requests: Vec<RequestTemplate>,
    /// Number of keys.
    pub key_count: u64,
    /// Zipf exponent of the keys.
    pub zipf_exponent: f64,
    /// Requests per second.
    pub rate_per_sec: f64,
    /// Longest warm-up, ms.
    pub max_duration_ms: u64,
}

/// One request shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestTemplate {
    /// HTTP method.
    pub method: String,
    /// Path with `{key}`.
    pub path: String,
    /// Relative weight.
    pub weight: f64,
}

/// When a warmed instance counts as ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadinessGate {
    /// Reference p99, ms.
    pub reference_p99_ms: f64,
    /// Allowed excess, percent.
    pub p99_tolerance_pct: f64,
    /// Highest error rate.
    pub max_error_rate: f64,
    /// Requests before the gate may hold.
    pub min_requests: u64,
}

/// How a service's data follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicationKind {
    /// Stateless.
    None,
    /// The sample service's log shipping.
    SampleLogShipping,
}

/// How a serving pool is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolMode {
    /// From the forecast.
    Predictive,
    /// From measured load.
    Reactive,
}

/// The range of an instance's adaptive limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsSpec {
    /// CPU at no load, millicores.
    pub min_cpu_millis: u32,
    /// CPU at full load.
    pub max_cpu_millis: u32,
    /// Memory at no load, MiB.
    pub min_memory_mib: u32,
    /// Memory at full load, MiB.
    pub max_memory_mib: u32,
}

/// A follow-the-sun schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// Name.
    pub name: String,
    /// The service it moves.
    pub service: String,
    /// Its legs.
    pub legs: Vec<ScheduleLeg>,
}

/// One leg of a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleLeg {
    /// Hour of the day, UTC.
    pub at_hour_utc: u8,
    /// The region.
    pub region: String,
}

/// What a migration is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRequest {
    /// The service.
    pub service: String,
    /// Expected source region.
    pub from: Option<String>,
    /// Target region.
    pub to: String,
    /// Cutover slice start, Unix ms.
    pub cutover_at_ms: u64,
    /// Whether to warm.
    pub warm_up: bool,
    /// Lead time override, ms.
    pub lead_time_ms: Option<u64>,
    /// Analysis window override, ms.
    pub analysis_window_ms: Option<u64>,
    /// Drain override, ms.
    pub drain_ms: Option<u64>,
    /// The schedule slice that fired it.
    pub schedule_key: Option<String>,
}

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Created.
    Planned,
    /// Shadow instances being created.
    Provisioning,
    /// Shadow instances being warmed.
    Warming,
    /// Data catching up.
    Replicating,
    /// Waiting for the cutover time.
    Ready,
    /// Traffic moving step by step.
    CuttingOver {
        /// Index into the steps.
        step: u64,
    },
    /// The source drains.
    Draining,
    /// Done.
    Completed,
    /// Traffic going back.
    RollingBack,
    /// Traffic back on the source.
    RolledBack,
    /// A rollback did not complete.
    Failed,
}

/// The weights of a service's DNS record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsWeights {
    /// Weight per region.
    pub weights: BTreeMap<String, u32>,
    /// TTL.
    pub ttl_secs: u32,
}

/// A capacity claim as asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// The service.
    pub service: String,
    /// The region.
    pub region: String,
    /// Instances.
    pub instances: u32,
    /// Window start, Unix ms.
    pub start_ms: Option<u64>,
    /// Window end, Unix ms.
    pub end_ms: Option<u64>,
}

/// A service as replicated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    /// What was applied.
    pub spec: ServiceSpec,
    /// Where it is served now.
    pub primary_region: String,
    /// Its migration in flight.
    pub active_migration: Option<String>,
}

/// A migration as replicated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationRecord {
    /// What was asked.
    pub spec: MigrationSpec,
    /// Where it is.
    pub phase: Phase,
    /// Since when, Unix ms.
    pub phase_since_ms: u64,
    /// Shadow pool size.
    pub shadow_instances: u32,
    /// Whether the target is the writer.
    pub promoted: bool,
    /// When the low TTL was first published.
    pub ttl_lowered_at_ms: Option<u64>,
}

/// A migration's fixed rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationSpec {
    /// Id.
    pub id: String,
    /// The service.
    pub service: String,
    /// Source region.
    pub from: String,
    /// Target region.
    pub to: String,
    /// Cutover slice start, Unix ms.
    pub cutover_at_ms: u64,
    /// Provisioning lead, ms.
    pub lead_time_ms: u64,
    /// Cutover steps, percent.
    pub steps_percent: Vec<u8>,
    /// Hold per step, ms.
    pub analysis_window_ms: u64,
    /// Fixed drain, ms.
    pub drain_ms: Option<u64>,
    /// The TTL plan.
    pub dns_ttl: DnsTtlPlan,
    /// Whether to warm.
    pub warm_up: bool,
    /// Caught-up replication lag.
    pub max_replication_lag: u64,
    /// The SLO.
    pub slo: Slo,
    /// Phase deadlines.
    pub deadlines: PhaseDeadlines,
}

/// A migration's DNS TTL plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsTtlPlan {
    /// TTL outside migrations.
    pub old_ttl_secs: u32,
    /// TTL during the migration.
    pub low_ttl_secs: u32,
    /// Slack after each TTL wait.
    pub margin_secs: u32,
    /// When the low TTL is published, Unix ms.
    pub lower_at_ms: u64,
}

/// How long each phase may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseDeadlines {
    /// Provisioning, ms.
    pub provisioning_ms: u64,
    /// Warming, ms.
    pub warming_ms: u64,
    /// Replicating, ms.
    pub replicating_ms: u64,
    /// Rolling back, ms.
    pub rolling_back_ms: u64,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Log index of the command.
    pub index: u64,
    /// When, Unix ms.
    pub at_ms: u64,
    /// Proposing leader's term (0: an operator's command).
    pub term: u64,
    /// What it is about.
    pub subject: String,
    /// What happened.
    pub event: AuditEvent,
    /// Why.
    pub reason: String,
}

/// What an audit line records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditEvent {
    /// A plan was applied.
    PlanApplied {
        /// Regions in it.
        regions: u64,
        /// Services in it.
        services: u64,
        /// Schedules in it.
        schedules: u64,
    },
    /// A migration was created.
    MigrationCreated {
        /// The service.
        service: String,
        /// Source region.
        from: String,
        /// Target region.
        to: String,
        /// Cutover slice start, Unix ms.
        cutover_at_ms: u64,
    },
    /// A migration changed phase.
    Transition {
        /// Phase left.
        from: Phase,
        /// Phase entered.
        to: Phase,
        /// Shadow pool size.
        shadow_instances: Option<u32>,
        /// Measured rollback time.
        rollback_ms: Option<u64>,
    },
    /// The single writer moved.
    WriterMoved {
        /// To the target, or back.
        to_target: bool,
        /// Measured fence window.
        fence_window_ms: Option<u64>,
    },
    /// New DNS weights.
    DnsWeights {
        /// Weight per region.
        weights: BTreeMap<String, u32>,
        /// TTL.
        ttl_secs: u32,
    },
    /// Capacity was claimed.
    CapacityClaimed {
        /// The service.
        service: String,
        /// The region.
        region: String,
        /// Instances.
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
        /// Instances.
        instances: u32,
    },
}

/// A capacity claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityClaim {
    /// `cap-{n}`.
    pub id: String,
    /// The service.
    pub service: String,
    /// The region.
    pub region: String,
    /// Instances.
    pub instances: u32,
    /// Request or reservation.
    pub kind: ClaimKind,
    /// Window start, Unix ms.
    pub start_ms: u64,
    /// Window end, Unix ms.
    pub end_ms: u64,
    /// When made, Unix ms.
    pub created_ms: u64,
}

/// Whether a claim was for now or a window ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimKind {
    /// From when it applied.
    Request,
    /// For a window given in advance.
    Reservation,
}
