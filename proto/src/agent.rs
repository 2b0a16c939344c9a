//! Wire types between orchestrators and region agents (carried on [`StreamKind::Agent`]
//! streams): the agent's hello and heartbeat reports, the leader's commands (each with an
//! operation id and the leader's Raft term), and their outcomes.
//!
//! Plain serde data only. The rules — a repeated operation id returns the first outcome, a
//! term older than the newest seen is refused, a command for another region is refused — are
//! the agent's (`umbra_agent::agent`), and the request-mix and gate checks are the warmer's.
//! New enum variants are appended, never inserted: postcard encodes the variant index.
//!
//! [`StreamKind::Agent`]: crate::StreamKind::Agent

use serde::{Deserialize, Serialize};

/// Longest operation id accepted (bytes): ids are chosen by the leader, e.g.
/// `mig-42/provision/3`, and stored by the agent, so they are bounded.
pub const MAX_OPERATION_ID_BYTES: usize = 128;

/// The first message an agent sends on a new agent stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentHello {
    /// The region this agent serves (must match its certificate's id).
    pub region: String,
    /// The newest leader term the agent has seen (0 when it has seen none).
    pub newest_term: u64,
}

/// The orchestrator's answer to [`AgentHello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HelloReply {
    /// This orchestrator is the leader for `term` and will send commands on this stream.
    Leader {
        /// The leader's Raft node id.
        node_id: u64,
        /// The leader's current term.
        term: u64,
    },
    /// This orchestrator is not the leader; try the hinted one (if known).
    NotLeader {
        /// The leader's node id, when known.
        leader_id: Option<u64>,
        /// The leader's agent-gateway address (`host:port`), when known.
        leader_addr: Option<String>,
    },
}

/// Messages from the orchestrator (leader) to an agent after [`HelloReply::Leader`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToAgent {
    /// Do something.
    Command(AgentCommand),
}

/// Messages from an agent to the orchestrator after [`HelloReply::Leader`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromAgent {
    /// Periodic state.
    Report(AgentReport),
    /// The outcome of a command, by operation id.
    Outcome {
        /// The command's operation id.
        op_id: String,
        /// What happened.
        outcome: CommandOutcome,
    },
}

/// A command from the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentCommand {
    /// Idempotency key: a repeated id gets the first outcome back, without acting again.
    pub op_id: String,
    /// The sending leader's Raft term: older than the newest the agent has seen is refused.
    pub term: u64,
    /// The region the command is for; an agent refuses commands for another region.
    pub region: String,
    /// What to do.
    pub action: AgentAction,
}

/// What a command asks the agent to do. Instance ids are chosen by the orchestrator, so a
/// retried provision names the same instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentAction {
    /// Create instances, dormant (created, not started).
    Provision {
        /// Ids of the instances to create.
        instances: Vec<String>,
    },
    /// Start a dormant instance: it serves but is not in the load balancer (warm).
    Start {
        /// The instance.
        instance: String,
    },
    /// Put a warm (or dormant: it is started first) instance in service (active).
    Activate {
        /// The instance.
        instance: String,
    },
    /// Take an active instance out of service, keep it running (warm).
    Deactivate {
        /// The instance.
        instance: String,
    },
    /// Freeze a running instance (memory kept, no CPU).
    Pause {
        /// The instance.
        instance: String,
    },
    /// Thaw a paused instance back to the state it was paused from.
    Resume {
        /// The instance.
        instance: String,
    },
    /// Stop an instance (it may be removed afterwards).
    Stop {
        /// The instance.
        instance: String,
    },
    /// Stop and delete an instance and its data.
    Remove {
        /// The instance.
        instance: String,
    },
    /// Drive synthetic traffic at an instance until its readiness gate holds or a cap is hit.
    Warm {
        /// The instance.
        instance: String,
        /// Mix, gate and write policy.
        plan: WarmupSpec,
    },
    /// Start replicating from `source` into an instance.
    StartReplication {
        /// The target instance (in this region).
        instance: String,
        /// The source's replication endpoint (for the sample service, its base URL).
        source: String,
    },
    /// Fence the source of an instance's replication (it refuses writes from then on).
    FenceSource {
        /// The target instance.
        instance: String,
    },
    /// Wait until the target has applied everything the (fenced) source holds.
    WaitForZeroLag {
        /// The target instance.
        instance: String,
        /// Give up after this long.
        timeout_ms: u64,
    },
    /// Make the target the writer; replication stops.
    Promote {
        /// The target instance.
        instance: String,
    },
    /// Stop replicating without promoting (rollback).
    StopReplication {
        /// The target instance.
        instance: String,
    },
    /// This region's front sends `percent` % of new requests for `service` to `target_front`
    /// (another region's front, `host:port`) and the rest to its local active instances;
    /// `percent` 0 removes the remote backend. Idempotent.
    SetShare {
        /// The service.
        service: String,
        /// The other region's front address, `host:port`.
        target_front: String,
        /// Share of new requests sent there, 0..=100.
        percent: u8,
    },
    /// Set an instance's CPU and memory limits (a provider that enforces limits only: the
    /// Docker provider; others refuse). Idempotent.
    SetLimits {
        /// The instance.
        instance: String,
        /// The limits.
        limits: InstanceLimits,
    },
    /// Lift the fence a `FenceSource` put on the source of an instance's replication (a
    /// rollback after the fence, before the promotion): the source takes writes again.
    /// Refused while the target is the writer (the writer must be handed back instead) and
    /// failed while the target cannot be asked; run after any promotion of the same
    /// instance the agent is running. Idempotent.
    UnfenceSource {
        /// The target instance.
        instance: String,
    },
}

/// CPU and memory limits of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceLimits {
    /// CPU, in thousandths of a core.
    pub cpu_millis: u32,
    /// Memory, MiB.
    pub memory_mib: u32,
}

/// The outcome of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// Done; the state the command left behind.
    Done(CommandResult),
    /// Not done, and nothing changed.
    Refused(Refusal),
    /// Tried and failed (something may have changed: the next report says what).
    Failed {
        /// Why.
        reason: String,
    },
}

/// What a successful command reports back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandResult {
    /// The instances touched, as they are now.
    Instances(Vec<InstanceReport>),
    /// Final warm-up progress.
    Warmup(WarmupProgress),
    /// Replication state after the command.
    Replication(ReplicationReport),
    /// The front after a share change.
    Front(FrontReport),
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Refusal {
    /// The command's term is older than the newest this agent has seen: a deposed leader.
    StaleTerm {
        /// The command's term.
        command_term: u64,
        /// The newest term seen.
        newest_term: u64,
    },
    /// The command names another region.
    WrongRegion {
        /// This agent's region.
        ours: String,
        /// The command's region.
        theirs: String,
    },
    /// The same operation id is being executed right now; ask again later.
    InProgress,
    /// The command itself is invalid (bad mix, unknown instance...).
    BadRequest {
        /// What is wrong and what to do.
        reason: String,
    },
}

/// Lifecycle state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InstanceState {
    /// Created, not started.
    Dormant,
    /// Started then frozen: memory kept, no CPU.
    Paused,
    /// Running, not in the load balancer.
    Warm,
    /// Running and serving traffic.
    Active,
    /// Stopped (by a command, or it exited).
    Stopped,
}

impl InstanceState {
    /// Every state, in lifecycle order.
    pub const ALL: [InstanceState; 5] = [
        InstanceState::Dormant,
        InstanceState::Paused,
        InstanceState::Warm,
        InstanceState::Active,
        InstanceState::Stopped,
    ];

    /// The state's name in lower case, as metrics and logs show it.
    pub fn name(self) -> &'static str {
        match self {
            InstanceState::Dormant => "dormant",
            InstanceState::Paused => "paused",
            InstanceState::Warm => "warm",
            InstanceState::Active => "active",
            InstanceState::Stopped => "stopped",
        }
    }
}

/// The measured time of one state transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionTiming {
    /// State before.
    pub from: InstanceState,
    /// State after.
    pub to: InstanceState,
    /// Wall time from the command to the new state holding (for a start or resume: until the
    /// instance answered its health check), in milliseconds.
    pub millis: u64,
}

/// One instance, as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    /// The instance id.
    pub id: String,
    /// Its state.
    pub state: InstanceState,
    /// Where it serves (`host:port`), once started.
    pub addr: Option<String>,
    /// Every transition so far, oldest first (bounded by the agent).
    pub transitions: Vec<TransitionTiming>,
    /// The limits its provider enforces (`None`: the provider enforces none).
    #[serde(default)]
    pub limits: Option<InstanceLimits>,
}

/// One request shape of a warm-up mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestTemplate {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Path; `{key}` is replaced by a key drawn from the mix's key distribution.
    pub path: String,
    /// Relative weight among the mix's templates.
    pub weight: f64,
}

/// A declared synthetic request mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestMix {
    /// Request shapes, drawn by weight.
    pub requests: Vec<RequestTemplate>,
    /// Keys are `key-0` … `key-{N-1}`.
    pub key_count: u64,
    /// Zipf exponent of the key distribution (0 = uniform, ~1 = typical web skew).
    pub zipf_exponent: f64,
    /// Requests per second (open loop).
    pub rate_per_sec: f64,
    /// Stop after this long even if the gate has not held.
    pub max_duration_ms: u64,
}

/// When a warmed instance counts as ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadinessGate {
    /// The source region's measured p99, in milliseconds.
    pub reference_p99_ms: f64,
    /// Allowed excess over the reference, in percent (e.g. 20 → p99 ≤ 1.2 × reference).
    pub p99_tolerance_pct: f64,
    /// Largest allowed error rate, in [0, 1].
    pub max_error_rate: f64,
    /// Requests that must have completed before the gate may hold.
    pub min_requests: u64,
}

/// What warm-up traffic to send to a shadow and when it counts as warm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmupSpec {
    /// What traffic to send.
    pub mix: RequestMix,
    /// When to stop early.
    pub gate: ReadinessGate,
    /// Allow non-safe methods (PUT, POST, DELETE...). Without it the warmer refuses a mix with
    /// writes, so writes are never replayed against a target holding real data.
    pub allow_writes: bool,
}

/// Length of one window the readiness gate measures (ms): one second gives a p99 over hundreds
/// of requests at the rates warm-ups use, and a gate decision every second.
pub const GATE_WINDOW_MS: u64 = 1_000;
/// Windows the gate judges together: three seconds of traffic, so readiness is sustained
/// rather than one lucky window.
pub const GATE_WINDOWS: usize = 3;
/// Fewest answered requests across the judged windows for their p99 to count: below a few
/// hundred, the 99th percentile is the maximum of a handful of samples.
pub const MIN_GATE_SAMPLES: u64 = 300;

impl WarmupSpec {
    /// Whether the declared numbers let the gate ever hold: enough requests in its windows for
    /// a p99, a cap no shorter than its windows, and `min_requests` within the cap. `Err` says
    /// which number falls short and what to raise. (Answers that fail or miss still count
    /// against it at run time; this is the part a plan can be checked for.)
    pub fn feasible(&self) -> Result<(), String> {
        let rate = self.mix.rate_per_sec;
        let judged_ms = GATE_WINDOWS as u64 * GATE_WINDOW_MS;
        let in_windows = rate * judged_ms as f64 / 1_000.0;
        if in_windows < MIN_GATE_SAMPLES as f64 {
            return Err(format!(
                "warmup.mix.rate_per_sec {rate} sends {in_windows:.0} requests in the readiness gate's {} s of windows, fewer than the {MIN_GATE_SAMPLES} its p99 needs, so the gate never holds; raise rate_per_sec to at least {}",
                judged_ms / 1_000,
                MIN_GATE_SAMPLES * 1_000 / judged_ms
            ));
        }
        let cap_ms = self.mix.max_duration_ms;
        if cap_ms < judged_ms {
            return Err(format!(
                "warmup.mix.max_duration_ms {cap_ms} is shorter than the readiness gate's {judged_ms} ms of windows; raise it to at least {judged_ms}"
            ));
        }
        let sent = rate * cap_ms as f64 / 1_000.0;
        let needed = self.gate.min_requests.max(MIN_GATE_SAMPLES);
        if sent < needed as f64 {
            return Err(format!(
                "at warmup.mix.rate_per_sec {rate} for max_duration_ms {cap_ms} a warm-up sends {sent:.0} requests, fewer than the {needed} the gate needs (gate.min_requests {}); raise rate_per_sec or max_duration_ms, or lower min_requests",
                self.gate.min_requests
            ));
        }
        Ok(())
    }
}

/// Where a warm-up stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WarmupPhase {
    /// Traffic is flowing, the gate has not held yet.
    Running,
    /// The gate held.
    Ready,
    /// The duration cap was hit before the gate held.
    CapReached,
}

impl WarmupPhase {
    /// The phase's name in snake case, as metrics show it.
    pub fn name(self) -> &'static str {
        match self {
            WarmupPhase::Running => "running",
            WarmupPhase::Ready => "ready",
            WarmupPhase::CapReached => "cap_reached",
        }
    }
}

/// Progress of one warm-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmupProgress {
    /// The instance warmed.
    pub instance: String,
    /// Phase.
    pub phase: WarmupPhase,
    /// Requests completed in total.
    pub requests: u64,
    /// Requests that failed in total.
    pub errors: u64,
    /// p99 over the gate's recent window, in milliseconds.
    pub window_p99_ms: f64,
    /// Error rate over the recent window.
    pub window_error_rate: f64,
    /// Time spent so far, in milliseconds.
    pub elapsed_ms: u64,
}

/// Replication state of one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicationReport {
    /// The target instance.
    pub instance: String,
    /// The source's replication endpoint.
    pub source: String,
    /// Source position (records for the sample service, bytes of WAL for PostgreSQL).
    pub source_position: u64,
    /// Target position, same unit.
    pub target_position: u64,
    /// Whether the source is fenced.
    pub source_fenced: bool,
    /// Whether the target has been promoted.
    pub promoted: bool,
}

/// A heartbeat report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    /// The agent's region.
    pub region: String,
    /// The newest leader term the agent has seen.
    pub newest_term: u64,
    /// Every instance the agent manages.
    pub instances: Vec<InstanceReport>,
    /// Warm-ups in progress or finished recently.
    pub warmups: Vec<WarmupProgress>,
    /// Replications the agent drives.
    pub replication: Vec<ReplicationReport>,
    /// Unix time of the report, in milliseconds.
    pub at_unix_ms: u64,
    /// The region front, when this agent runs one.
    pub front: Option<FrontReport>,
}

/// A share of a service's traffic that a front forwards to another region's front.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareReport {
    /// The service.
    pub service: String,
    /// The other region's front, `host:port`.
    pub target_front: String,
    /// Share of new requests forwarded, 0..=100.
    pub percent: u8,
}

/// What a region's front served. Counters cover the LOCAL backends only (the region's own
/// instances), so a target region's report measures the target's instances, not traffic it
/// forwarded elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontReport {
    /// The front's listen address.
    pub listen: String,
    /// Requests to local backends since the front started.
    pub requests_total: u64,
    /// Of which failed (connect failures, upstream errors, 5xx).
    pub errors_total: u64,
    /// Length of the recent window, ms (time since the previous report).
    pub window_ms: u64,
    /// Requests to local backends in the window.
    pub window_requests: u64,
    /// Failed requests in the window.
    pub window_errors: u64,
    /// p99 time to response headers of local backends (see the agent's front module for the
    /// period it covers), ms; `None` before any request.
    pub window_p99_ms: Option<f64>,
    /// Shares as applied.
    pub shares: Vec<ShareReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_round_trips_through_the_envelope() {
        let cmd = ToAgent::Command(AgentCommand {
            op_id: "mig-1/provision".into(),
            term: 7,
            region: "eu-west".into(),
            action: AgentAction::Provision {
                instances: vec!["shop-1".into(), "shop-2".into()],
            },
        });
        let bytes = crate::envelope::encode(&cmd).unwrap();
        let back: ToAgent = crate::envelope::decode(&bytes).unwrap();
        assert_eq!(back, cmd);
    }
}
