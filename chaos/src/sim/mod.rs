//! A seeded, one-thread simulation of a whole Umbra cluster, in the style of FoundationDB's and
//! TigerBeetle's simulators: three orchestrator replicas (`replica`: raft-rs and the
//! product's state machine on the encoded path), the product's executor
//! [`Controller`](umbra_orchestrator::executor::controller::Controller) on whichever replica
//! leads (a new one per leadership, fed as the async driver feeds it), two
//! [`SimulatedAgent`](umbra_orchestrator::executor::simulated_agent::SimulatedAgent)s with
//! heartbeats, clients sending requests to the regions' fronts (some of them writes to the
//! moved service's data, `data`: one store per region, moved only by the replication commands
//! the controller sends the agents), and an operator who applies a plan and asks for a
//! migration (and, in a quarter of the seeds, asks for a rollback the moment the source is
//! fenced for the writer's move, before the target is promoted: the rollback must lift the
//! fence, or hand the writer back if the promotion wins). Everything happens on an event queue
//! ordered by (simulated time, sequence number); every random choice comes from `StdRng`s
//! seeded with the seed, so a seed is a complete description of a run and
//! `umbra chaos simulate --seed S` replays it exactly.
//!
//! Faults, drawn from the seed within a fault window: message drops, delays and duplicates, a
//! replica (leader or follower) isolated from everything, a replica crashed and restarted
//! from its disk, an agent restarted, an instance crashed, a replica's wall clock jumping.
//! Some seeds make the target region fail half its requests, from the first step or only
//! once the writer moved there, so the SLO breaks and the migration must roll back (moving
//! the writer back in the second case). After the window everything heals and the run settles.
//!
//! Invariants ([`Violation`]) are checked after every applied entry and tick, and at the end;
//! they are data, each with the seed and the simulated time. This module must not read a
//! clock for anything that shows in a run (the one `Instant` read is an origin only offsets
//! are taken from) and must not iterate a hash map.

mod data;
mod replica;
mod world;

use serde::Serialize;

pub use world::run;

/// Bugs a test can plant in the simulation (never in product code), to show that the
/// invariants catch them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Every replica hands each non-empty committed entry to the state machine twice: the
    /// at-least-once apply of a driver that re-delivers what it already applied.
    pub apply_twice: bool,
    /// The target region's agent answers every command that releases a rolled-back
    /// migration's shadow instances with success and does nothing.
    pub ignore_shadow_release: bool,
    /// Every agent answers `FenceSource` as done (and lets the promotion follow) while the
    /// fenced store keeps accepting writes: after the promotion two regions take writes.
    pub fence_ignored: bool,
}

/// What one run does besides its seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// Inject faults (off: a clean run, the baseline every fault is measured against).
    pub faults: bool,
    /// Planted bugs.
    pub bugs: Bugs,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            faults: true,
            bugs: Bugs::default(),
        }
    }
}

/// An invariant that did not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The run's seed.
    pub seed: u64,
    /// Simulated time, ms since the run started.
    pub at_ms: u64,
    /// Which invariant, e.g. `replicas_differ` (see [`INVARIANTS`]).
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

/// Every invariant the simulation checks, by the name its violations carry:
/// - after every applied entry: replicas that applied the same index hold the same snapshot
///   bytes (`replicas_differ`) and the same entry (`committed_entry_differs`); each replica
///   applies each index once and in order (`entry_applied_twice`, `applied_out_of_order`);
///   no transition applies at two indexes (`step_applied_twice`) and no migration leaves a
///   terminal phase (`left_terminal_phase`);
/// - every tick: one leader per term (`two_leaders_in_term`); every second: no migration
///   stays in a phase a minute past the phase's own bound (`migration_stuck`);
/// - whenever an agent's replication command changes what a region's copy of the service's
///   data does with writes: at most one region accepts writes (`single_writer`);
/// - at the end: every acknowledged proposal's entry is in every replica's log
///   (`acknowledged_write_lost`), every client write acknowledged by the service is held by
///   the region that accepts writes at the end, and one does (`acknowledged_data_write_lost`),
///   every replica applied as far as the others (`replica_behind`), every migration ended
///   (`migration_not_terminal`), none Failed (`migration_failed`), it rolled back exactly when
///   its target failed or the operator asked (`rolled_back_without_cause`), a rolled-back migration's shadows serve
///   nothing and are gone after the keep time (`rolled_back_shadow_serves`), and every pool
///   holds its target (`pool_not_converged`).
pub const INVARIANTS: [&str; 17] = [
    "replicas_differ",
    "committed_entry_differs",
    "entry_applied_twice",
    "applied_out_of_order",
    "step_applied_twice",
    "left_terminal_phase",
    "two_leaders_in_term",
    "single_writer",
    "acknowledged_write_lost",
    "acknowledged_data_write_lost",
    "replica_behind",
    "migration_stuck",
    "migration_not_terminal",
    "migration_failed",
    "rolled_back_without_cause",
    "rolled_back_shadow_serves",
    "pool_not_converged",
];

/// How a run went.
#[derive(Debug, Clone, Serialize)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Invariants that did not hold (empty: all held).
    pub violations: Vec<Violation>,
    /// Simulated time the run took, ms.
    pub sim_ms: u64,
    /// Events handled.
    pub events: u64,
    /// Each migration's id and final phase.
    pub migrations: Vec<(String, String)>,
    /// Whether the target region failed half its requests (the migration must roll back).
    pub target_fails: bool,
    /// Whether it failed them only once its store was the writer (the rollback must move the
    /// writer back).
    pub target_fails_late: bool,
    /// Whether the operator's rollback, asked as the source was fenced for the writer's move,
    /// was applied (the migration may roll back with a healthy target).
    pub aborted_in_fence: bool,
    /// The regions whose copy of the service's data accepts writes at the end.
    pub writers: Vec<String>,
    /// Client writes the service acknowledged.
    pub writes_acknowledged: usize,
    /// Faults injected, by kind.
    pub faults: Vec<(String, u32)>,
    /// A digest of every event handled, in order: two runs of one seed give the same.
    pub trace_digest: u64,
    /// The state machine's snapshot on the replica that applied most, at the end.
    #[serde(skip)]
    pub final_state: Vec<u8>,
}

/// The command that replays `seed` exactly.
pub fn replay_command(seed: u64) -> String {
    format!("umbra chaos simulate --seed {seed}")
}
