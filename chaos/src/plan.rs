//! Fault plans: the faults a drill injects into a running cluster, as data. A plan is a TOML
//! file, written by hand or generated from a seed ([`FaultPlan::generate`], printed by `umbra
//! chaos plan --seed S`); the same seed and scope always give the same plan, so a drill's
//! verdict names the seed that replays it.
//!
//! ```toml
//! seed = 7                     # only in generated plans
//! [[faults]]
//! kind = "errors"              # the sample service's fault switch: a share of requests fail
//! region = "us-east"
//! service = "shop"
//! rate = 0.2
//! at_phase = "cutting_over[1]" # or after_ms = 5000 (from the drill's start)
//! ```
//!
//! `disk_full` fills a region's data disk (where its instances keep their write-ahead logs)
//! for `for_ms`; only a runner that mounted those disks can (`umbra demo --fault-plan`,
//! `umbra chaos campaign`: each a size-limited tmpfs).
//!
//! `clock_jump` steps a process's wall clock by `ms` (back when negative), as an NTP step
//! would, and steps it back `for_ms` later (or at the run's end without `for_ms`); its
//! monotonic clock does not move. Only a runner that started the process under a clock it
//! controls can (`umbra demo --fault-plan`, `umbra chaos campaign`: libfaketime, through
//! [`crate::inject::ClockFile`]).
//!
//! `abort` is the operator asking the migration to roll back (the operator API's
//! rollback), as an SRE aborting a migration does; only a runner that requested the
//! migration can (`umbra demo --fault-plan`, `umbra chaos campaign`; a drill rolls back on
//! its own stop conditions).
//!
//! `pause`, `kill`, `partition`, `loss` and `delay` act on named processes. The drill knows
//! only pids (`--pid NAME=PID`), so it pauses; `umbra demo --fault-plan` and `umbra chaos
//! campaign` run the processes under their own supervisor, so they may also kill one (and
//! start it again after `restart_after_ms`, as systemd would) and cut an orchestrator or an
//! agent off the network, or from one other process (`peer`), drop a share of its packets or
//! hold each of them `added_ms` ([`crate::inject`]); the drill does those three on the UDP
//! ports it is given (`--udp-port`). Their plans may name roles that are resolved
//! when a fault fires: `leader` (the orchestrator leading then), `agent-source` and
//! `agent-target`, and the regions `source` and `target` of the migration.
//!
//! This module only parses, checks and generates plans; it injects nothing.

use std::collections::BTreeSet;
use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The fault kinds a plan may name, as they are spelled in TOML.
pub const FAULT_KINDS: [&str; 10] = [
    "errors",
    "latency",
    "pause",
    "kill",
    "partition",
    "loss",
    "delay",
    "disk_full",
    "clock_jump",
    "abort",
];

/// Migration phases a generated plan fires faults at: the ones a migration always passes
/// through with traffic at stake (the demo plan's three cutover steps included).
const GENERATED_PHASES: [&str; 5] = [
    "warming",
    "replicating",
    "cutting_over[0]",
    "cutting_over[1]",
    "cutting_over[2]",
];

/// Share of generated plans that also fill a data disk, when the scope has disks.
const DISK_FULL_SHARE: f64 = 0.25;
/// Mixed into the seed of the stream that draws the disk fault.
const DISK_DRAW_SALT: u64 = 0xd15c_f011;
/// Share of generated plans that also jump a process's clock, when the scope has clocks.
const CLOCK_JUMP_SHARE: f64 = 0.25;
/// Mixed into the seed of the stream that draws the clock jump.
const CLOCK_DRAW_SALT: u64 = 0xc10c_0001;
/// Share of generated plans in which the operator also aborts the migration, when the
/// runner can.
const ABORT_SHARE: f64 = 0.15;
/// Mixed into the seed of the stream that draws the abort.
const ABORT_DRAW_SALT: u64 = 0xab07_7001;
/// Share of generated plans (with processes the runner can cut off) that add a delay.
const DELAY_SHARE: f64 = 0.25;
/// Salt of the stream a generated delay is drawn from.
const DELAY_DRAW_SALT: u64 = 0xde1a_7001;
/// Share of generated partitions, losses and delays that act only between two processes,
/// when the runner knows the ports of two or more (and one of them is an orchestrator).
const PEER_SHARE: f64 = 0.5;
/// Salt of the stream a generated fault's peer is drawn from.
const PEER_DRAW_SALT: u64 = 0x9ee2_7001;
/// Largest clock jump a plan may ask for, ms: a day either way, far past any step NTP makes
/// (and the bound of [`crate::inject::ClockFile`]).
pub const MAX_CLOCK_JUMP_MS: i64 = crate::inject::MAX_CLOCK_OFFSET_MS;

/// A set of faults and when each fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    /// The seed the plan was generated from (absent in a plan written by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The faults, in the order they were written.
    #[serde(default)]
    pub faults: Vec<Fault>,
}

/// One fault: what it does and when it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawFault", into = "RawFault")]
pub struct Fault {
    /// What it does.
    pub kind: FaultKind,
    /// When it fires.
    pub when: Trigger,
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Every instance of `service` in `region` answers a share `rate` (0..1] of its requests
    /// with a 500, through the sample service's fault switch (`POST /admin/fault`).
    Errors {
        /// The region whose instances fail.
        region: String,
        /// The service.
        service: String,
        /// Share of requests that fail.
        rate: f64,
    },
    /// Every instance of `service` in `region` adds `added_ms` to each request (the same
    /// switch).
    Latency {
        /// The region whose instances slow down.
        region: String,
        /// The service.
        service: String,
        /// Latency added to every request, ms.
        added_ms: u64,
    },
    /// The named process is stopped with SIGSTOP and continued with SIGCONT `for_ms` later.
    Pause {
        /// The process's name, as the drill was told its pid (`--pid NAME=PID`).
        process: String,
        /// How long it stays stopped, ms.
        for_ms: u64,
    },
    /// The named process is SIGKILLed and started again `restart_after_ms` later, the way it
    /// was first started (a crash under a process manager).
    Kill {
        /// The process's name.
        process: String,
        /// How long it stays down, ms.
        restart_after_ms: u64,
    },
    /// Every packet to or from the named process's QUIC port (an orchestrator's Raft peers,
    /// agents and clients; an agent's orchestrators) is dropped for `for_ms`; with `peer`, only the packets between the two, both
    /// ways (each still reaches every other process).
    Partition {
        /// The process's name.
        process: String,
        /// The process on the other side, when only the link between the two is cut.
        peer: Option<String>,
        /// How long the cut lasts, ms.
        for_ms: u64,
    },
    /// A share `percent` of the packets to the named process's QUIC port, and every
    /// share of those it sends, is dropped for `for_ms`; with `peer`, only of the packets
    /// between the two.
    Loss {
        /// The process's name.
        process: String,
        /// The process on the other side, when only the link between the two loses packets.
        peer: Option<String>,
        /// Share of packets dropped, 1..=100.
        percent: u8,
        /// How long the loss lasts, ms.
        for_ms: u64,
    },
    /// Every packet to or from the named process's QUIC port is delivered `added_ms`
    /// late for `for_ms` (a round trip with it takes `2 × added_ms` more), as over a slow
    /// inter-region link; with `peer`, only the packets between the two.
    Delay {
        /// The process's name.
        process: String,
        /// The process on the other side, when only the link between the two is slow.
        peer: Option<String>,
        /// Time each packet is held, ms: 1 to [`crate::inject::MAX_DELAY_MS`].
        added_ms: u64,
        /// How long the delay lasts, ms.
        for_ms: u64,
    },
    /// The data disk of every instance in `region` (a size-limited tmpfs the runner mounted)
    /// is filled to its last byte with a ballast file, removed `for_ms` later: each write an
    /// instance must make durable meanwhile fails.
    DiskFull {
        /// The region whose data disk fills.
        region: String,
        /// How long it stays full, ms.
        for_ms: u64,
    },
    /// The named process's wall clock steps by `ms` (back when negative), as an NTP step
    /// would, and steps back `for_ms` later (at the run's end when `None`); its monotonic
    /// clock does not move.
    ClockJump {
        /// The process's name.
        process: String,
        /// The step, ms: non-zero, at most [`MAX_CLOCK_JUMP_MS`] either way.
        ms: i64,
        /// How long the step lasts, ms.
        for_ms: Option<u64>,
    },
    /// The operator asks the migration to roll back, through the operator API, as an SRE
    /// aborting it would. Nothing to undo; refused by the API once the migration is rolling
    /// back or has ended.
    Abort,
}

impl FaultKind {
    /// The kind as TOML spells it (one of [`FAULT_KINDS`]).
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Errors { .. } => "errors",
            FaultKind::Latency { .. } => "latency",
            FaultKind::Pause { .. } => "pause",
            FaultKind::Kill { .. } => "kill",
            FaultKind::Partition { .. } => "partition",
            FaultKind::Loss { .. } => "loss",
            FaultKind::Delay { .. } => "delay",
            FaultKind::DiskFull { .. } => "disk_full",
            FaultKind::ClockJump { .. } => "clock_jump",
            FaultKind::Abort => "abort",
        }
    }

    /// The process the fault acts on (none for the instances' fault switch).
    pub fn process(&self) -> Option<&str> {
        match self {
            FaultKind::Errors { .. }
            | FaultKind::Latency { .. }
            | FaultKind::DiskFull { .. }
            | FaultKind::Abort => None,
            FaultKind::Pause { process, .. }
            | FaultKind::Kill { process, .. }
            | FaultKind::Partition { process, .. }
            | FaultKind::Loss { process, .. }
            | FaultKind::Delay { process, .. }
            | FaultKind::ClockJump { process, .. } => Some(process),
        }
    }

    /// The process on the other side of a partition, a loss or a delay between two processes.
    pub fn peer(&self) -> Option<&str> {
        match self {
            FaultKind::Partition { peer, .. }
            | FaultKind::Loss { peer, .. }
            | FaultKind::Delay { peer, .. } => peer.as_deref(),
            _ => None,
        }
    }

    /// How long the fault lasts before it is undone by itself, ms (`None`: until the run's
    /// end, or, for an abort, never undone).
    pub fn lasts_ms(&self) -> Option<u64> {
        match self {
            FaultKind::Errors { .. } | FaultKind::Latency { .. } | FaultKind::Abort => None,
            FaultKind::Pause { for_ms, .. }
            | FaultKind::Partition { for_ms, .. }
            | FaultKind::Loss { for_ms, .. }
            | FaultKind::Delay { for_ms, .. }
            | FaultKind::DiskFull { for_ms, .. } => Some(*for_ms),
            FaultKind::Kill {
                restart_after_ms, ..
            } => Some(*restart_after_ms),
            FaultKind::ClockJump { for_ms, .. } => *for_ms,
        }
    }
}

/// When a fault fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// This long after the drill started, ms.
    AfterMs(u64),
    /// When a migration the drill runs is first seen in this phase (e.g. `warming`,
    /// `cutting_over[1]`, as `umbra status` spells phases).
    AtPhase(String),
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Errors {
                region,
                service,
                rate,
            } => write!(
                f,
                "errors: {service} in {region} fails {:.0} %",
                rate * 100.0
            ),
            FaultKind::Latency {
                region,
                service,
                added_ms,
            } => write!(f, "latency: {service} in {region} +{added_ms} ms"),
            FaultKind::Pause { process, for_ms } => {
                write!(f, "pause: {process} stopped for {for_ms} ms")
            }
            FaultKind::Kill {
                process,
                restart_after_ms,
            } => write!(
                f,
                "kill: {process} SIGKILLed, started again {restart_after_ms} ms later"
            ),
            FaultKind::Partition {
                process,
                peer: None,
                for_ms,
            } => write!(f, "partition: {process} cut off for {for_ms} ms"),
            FaultKind::Partition {
                process,
                peer: Some(peer),
                for_ms,
            } => write!(
                f,
                "partition: {process} cut off from {peer} for {for_ms} ms"
            ),
            FaultKind::Loss {
                process,
                peer,
                percent,
                for_ms,
            } => write!(
                f,
                "loss: {percent} % of {process}'s packets{} for {for_ms} ms",
                with_peer(peer.as_deref())
            ),
            FaultKind::Delay {
                process,
                peer,
                added_ms,
                for_ms,
            } => write!(
                f,
                "delay: {process}'s packets{} +{added_ms} ms for {for_ms} ms",
                with_peer(peer.as_deref())
            ),
            FaultKind::DiskFull { region, for_ms } => {
                write!(f, "disk_full: {region}'s data disk full for {for_ms} ms")
            }
            FaultKind::ClockJump {
                process,
                ms,
                for_ms,
            } => {
                write!(f, "clock_jump: {process}'s wall clock {ms:+} ms")?;
                match for_ms {
                    Some(for_ms) => write!(f, " for {for_ms} ms"),
                    None => write!(f, " until the end"),
                }
            }
            FaultKind::Abort => write!(f, "abort: the operator asks the migration to roll back"),
        }
    }
}

/// ` with PEER` after a network fault's packets, when it is between two processes.
fn with_peer(peer: Option<&str>) -> String {
    peer.map_or_else(String::new, |peer| format!(" with {peer}"))
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::AfterMs(ms) => write!(f, "{ms} ms after the start"),
            Trigger::AtPhase(phase) => write!(f, "at phase {phase}"),
        }
    }
}

/// Why a plan was refused. Nothing was injected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// Not TOML, or not a plan's shape.
    #[error("the fault plan is not valid: {0}")]
    Malformed(String),
    /// A fault names a region the cluster does not have.
    #[error(
        "fault {index} names region {region:?}, which the cluster does not have (regions: {known})"
    )]
    UnknownRegion {
        /// Its position, from 1.
        index: usize,
        /// The name.
        region: String,
        /// The cluster's regions.
        known: String,
    },
    /// A fault names a service the cluster does not have.
    #[error(
        "fault {index} names service {service:?}, which the cluster does not have (services: {known})"
    )]
    UnknownService {
        /// Its position, from 1.
        index: usize,
        /// The name.
        service: String,
        /// The cluster's services.
        known: String,
    },
    /// A pause names a process whose pid the drill was not given.
    #[error(
        "fault {index} pauses process {process:?}, whose pid the drill was not given: add --pid {process}=PID (given: {known})"
    )]
    UnknownProcess {
        /// Its position, from 1.
        index: usize,
        /// The name.
        process: String,
        /// The names given.
        known: String,
    },
    /// A partition, loss or delay names a process whose UDP port this runner does not know.
    #[error(
        "fault {index} ({kind}) names process {process:?}, whose UDP port this runner does not know: give it to umbra drill as --udp-port {process}=PORT (an orchestrator's QUIC port, or an agent's quic_bind port), or run the plan under Umbra's own supervisor (umbra demo --fault-plan, umbra chaos campaign){known}"
    )]
    NoPort {
        /// Its position, from 1.
        index: usize,
        /// The fault kind.
        kind: &'static str,
        /// The name.
        process: String,
        /// `; it knows the ports of: a, b` (empty when it knows none).
        known: String,
    },
    /// A kill names a process this runner cannot start again.
    #[error(
        "fault {index} ({kind}) names process {process:?}, which this runner cannot {kind}: {kind} faults need a process started by Umbra's own supervisor (umbra demo --fault-plan, umbra chaos campaign){known}"
    )]
    NotSupervised {
        /// Its position, from 1.
        index: usize,
        /// The fault kind.
        kind: &'static str,
        /// The name.
        process: String,
        /// `; it can: a, b` (empty when it can do none).
        known: String,
    },
    /// A clock_jump names a process this runner did not start under a clock it controls.
    #[error(
        "fault {index} jumps the clock of process {process:?}, which this runner did not start under a clock it controls: clock_jump faults need a process started by Umbra's own supervisor (umbra demo --fault-plan, umbra chaos campaign){known}"
    )]
    NoClock {
        /// Its position, from 1.
        index: usize,
        /// The name.
        process: String,
        /// `; it can jump: a, b` (empty when it can jump none).
        known: String,
    },
    /// An abort in a plan for a runner that did not request the migration.
    #[error(
        "fault {index} (abort) asks the migration to roll back, which this runner cannot: abort faults need the runner that requested the migration (umbra demo --fault-plan, umbra chaos campaign); a drill rolls back what moved on its own stop conditions"
    )]
    NoAbort {
        /// Its position, from 1.
        index: usize,
    },
    /// A disk_full names a region whose data disk this runner did not mount.
    #[error(
        "fault {index} fills the data disk of {region:?}, which this runner did not mount: disk_full faults need the data disks of Umbra's own supervisor (umbra demo --fault-plan, umbra chaos campaign){known}"
    )]
    NoDisk {
        /// Its position, from 1.
        index: usize,
        /// The region.
        region: String,
        /// `; it can fill: a, b` (empty when it can fill none).
        known: String,
    },
}

/// What a plan may name: the cluster's regions and services, and the processes the runner
/// can act on.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Region names.
    pub regions: BTreeSet<String>,
    /// Service names.
    pub services: BTreeSet<String>,
    /// Processes the runner can pause (it knows their pids).
    pub processes: BTreeSet<String>,
    /// Processes the runner can kill and start again (its supervisor started them); they can
    /// be paused too.
    pub restartable: BTreeSet<String>,
    /// Processes whose QUIC port the runner knows, to cut off or drop packets of; they can be
    /// paused too.
    pub partitionable: BTreeSet<String>,
    /// Those of them that are orchestrators, when the runner says (every other process talks
    /// only to orchestrators): a generated fault between two processes names one as its
    /// peer. Empty: any of them may be the peer.
    pub orchestrators: BTreeSet<String>,
    /// Regions (or the roles `source` and `target`) whose instances' data disk the runner
    /// mounted and can fill.
    pub disks: BTreeSet<String>,
    /// Processes the runner can start under a clock it controls, to jump.
    pub clocks: BTreeSet<String>,
    /// Whether the runner requested the migration and can ask it to roll back.
    pub aborts: bool,
}

impl Scope {
    /// Every process a pause may name.
    fn pausable(&self) -> BTreeSet<String> {
        let mut all = self.processes.clone();
        all.extend(self.restartable.iter().cloned());
        all.extend(self.partitionable.iter().cloned());
        all
    }
}

impl FaultPlan {
    /// Parses a plan; a malformed one, or one naming an unknown fault kind, is refused with
    /// the position of the mistake.
    pub fn from_toml(text: &str) -> Result<Self, PlanError> {
        toml::from_str(text).map_err(|e| PlanError::Malformed(e.to_string()))
    }

    /// The plan as TOML, in the form [`FaultPlan::from_toml`] reads.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a fault plan is plain data")
    }

    /// Checks that every fault names a region, service and process of `scope`.
    pub fn check(&self, scope: &Scope) -> Result<(), PlanError> {
        let list = |set: &BTreeSet<String>| {
            if set.is_empty() {
                "none".to_owned()
            } else {
                set.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        };
        // `; it can VERB: a, b` for an error's end; nothing when it can do it to none.
        let it_can = |verb: &str, able: &BTreeSet<String>| {
            if able.is_empty() {
                String::new()
            } else {
                format!("; it can {verb}: {}", list(able))
            }
        };
        let known_region = |index, region: &String| {
            if scope.regions.contains(region) {
                Ok(())
            } else {
                Err(PlanError::UnknownRegion {
                    index,
                    region: region.clone(),
                    known: list(&scope.regions),
                })
            }
        };
        for (i, fault) in self.faults.iter().enumerate() {
            let index = i + 1;
            match &fault.kind {
                FaultKind::Errors {
                    region, service, ..
                }
                | FaultKind::Latency {
                    region, service, ..
                } => {
                    known_region(index, region)?;
                    if !scope.services.contains(service) {
                        return Err(PlanError::UnknownService {
                            index,
                            service: service.clone(),
                            known: list(&scope.services),
                        });
                    }
                }
                FaultKind::DiskFull { region, .. } => {
                    known_region(index, region)?;
                    if !scope.disks.contains(region) {
                        return Err(PlanError::NoDisk {
                            index,
                            region: region.clone(),
                            known: it_can("fill", &scope.disks),
                        });
                    }
                }
                FaultKind::Abort => {
                    if !scope.aborts {
                        return Err(PlanError::NoAbort { index });
                    }
                }
                FaultKind::ClockJump { process, .. } => {
                    if !scope.clocks.contains(process) {
                        return Err(PlanError::NoClock {
                            index,
                            process: process.clone(),
                            known: it_can("jump", &scope.clocks),
                        });
                    }
                }
                FaultKind::Pause { process, .. } => {
                    let pausable = scope.pausable();
                    if !pausable.contains(process) {
                        return Err(PlanError::UnknownProcess {
                            index,
                            process: process.clone(),
                            known: list(&pausable),
                        });
                    }
                }
                FaultKind::Partition { process, peer, .. }
                | FaultKind::Loss { process, peer, .. }
                | FaultKind::Delay { process, peer, .. } => {
                    for named in std::iter::once(process).chain(peer) {
                        if !scope.partitionable.contains(named) {
                            return Err(PlanError::NoPort {
                                index,
                                kind: fault.kind.name(),
                                process: named.clone(),
                                known: if scope.partitionable.is_empty() {
                                    String::new()
                                } else {
                                    format!(
                                        "; it knows the ports of: {}",
                                        list(&scope.partitionable)
                                    )
                                },
                            });
                        }
                    }
                }
                FaultKind::Kill { process, .. } => {
                    let (kind, able) = ("kill", &scope.restartable);
                    if !able.contains(process) {
                        return Err(PlanError::NotSupervised {
                            index,
                            kind,
                            process: process.clone(),
                            known: it_can(kind, able),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// A plan of one to three faults drawn from `seed` within `scope` (pauses only when it
    /// names processes, kills, partitions and losses only when it names processes the runner
    /// supervises), plus in about a quarter of the plans a full data disk when it names disks,
    /// in about a quarter a clock jump when it names clocks, and in about a quarter a delay
    /// when it names processes to cut off; the same seed and scope give the same plan. Each
    /// kind added later is drawn from a stream of its own, after the earlier ones: a scope
    /// without supervised processes draws exactly what it drew before those kinds existed,
    /// one without disks what it drew before disks could fill, one without clocks what it
    /// drew before clocks could jump, and every scope keeps the faults it drew before delays
    /// existed, in the same places, a delay coming last; about half of the partitions,
    /// losses and delays are then narrowed to the link with one other process.
    pub fn generate(seed: u64, scope: &Scope) -> Self {
        assert!(
            !scope.regions.is_empty() && !scope.services.is_empty(),
            "a generated plan needs a region and a service"
        );
        let mut rng = StdRng::seed_from_u64(seed);
        let pick = |rng: &mut StdRng, set: &BTreeSet<String>| {
            set.iter()
                .nth(rng.random_range(0..set.len()))
                .expect("in range")
                .clone()
        };
        let pausable = scope.pausable();
        let supervised = !scope.restartable.is_empty() && !scope.partitionable.is_empty();
        let kinds = match (pausable.is_empty(), supervised) {
            (true, _) => 2,
            (false, false) => 3,
            (false, true) => 6,
        };
        let mut faults = (0..rng.random_range(1..=3))
            .map(|_| {
                let kind = match rng.random_range(0..kinds) {
                    0 => FaultKind::Errors {
                        region: pick(&mut rng, &scope.regions),
                        service: pick(&mut rng, &scope.services),
                        // Whole percent, so the plan prints as it was drawn.
                        rate: f64::from(rng.random_range(2..=50u32)) / 100.0,
                    },
                    1 => FaultKind::Latency {
                        region: pick(&mut rng, &scope.regions),
                        service: pick(&mut rng, &scope.services),
                        added_ms: rng.random_range(5..=40) * 10,
                    },
                    2 => FaultKind::Pause {
                        process: pick(&mut rng, &pausable),
                        for_ms: rng.random_range(5..=30) * 100,
                    },
                    3 => FaultKind::Kill {
                        process: pick(&mut rng, &scope.restartable),
                        restart_after_ms: rng.random_range(5..=80) * 100,
                    },
                    4 => FaultKind::Partition {
                        process: pick(&mut rng, &scope.partitionable),
                        peer: None,
                        for_ms: rng.random_range(10..=80) * 100,
                    },
                    _ => FaultKind::Loss {
                        process: pick(&mut rng, &scope.partitionable),
                        peer: None,
                        percent: rng.random_range(2..=10) * 5,
                        for_ms: rng.random_range(20..=100) * 100,
                    },
                };
                Fault {
                    kind,
                    when: draw_trigger(&mut rng),
                }
            })
            .collect::<Vec<_>>();
        // A full data disk is drawn from a stream of its own, so the faults above stay what
        // each seed drew before disks could fill; about one seed in four adds one.
        if !scope.disks.is_empty() {
            let mut rng = StdRng::seed_from_u64(seed ^ DISK_DRAW_SALT);
            if rng.random_bool(DISK_FULL_SHARE) {
                let region = pick(&mut rng, &scope.disks);
                let for_ms = rng.random_range(20..=80) * 100;
                faults.push(Fault {
                    kind: FaultKind::DiskFull { region, for_ms },
                    when: draw_trigger(&mut rng),
                });
            }
        }
        // A clock jump too, from its own stream: 10 s to 15 min either way (NTP steps once
        // the offset passes 128 ms; a VM resumed from a snapshot or a bad time source steps
        // by minutes), for 2 to 8 s or, one time in three, until the end.
        if !scope.clocks.is_empty() {
            let mut rng = StdRng::seed_from_u64(seed ^ CLOCK_DRAW_SALT);
            if rng.random_bool(CLOCK_JUMP_SHARE) {
                let process = pick(&mut rng, &scope.clocks);
                let step_ms = rng.random_range(1..=90) * 10_000;
                let ms = if rng.random_bool(0.5) {
                    step_ms
                } else {
                    -step_ms
                };
                let for_ms = (!rng.random_bool(1.0 / 3.0)).then(|| rng.random_range(20..=80) * 100);
                faults.push(Fault {
                    kind: FaultKind::ClockJump {
                        process,
                        ms,
                        for_ms,
                    },
                    when: draw_trigger(&mut rng),
                });
            }
        }
        // And the operator's abort, from its own stream.
        if scope.aborts {
            let mut rng = StdRng::seed_from_u64(seed ^ ABORT_DRAW_SALT);
            if rng.random_bool(ABORT_SHARE) {
                faults.push(Fault {
                    kind: FaultKind::Abort,
                    when: draw_trigger(&mut rng),
                });
            }
        }
        // A slow link to an orchestrator too, from its own stream: 50 to 300 ms each way for
        // 2 to 10 s.
        if !scope.partitionable.is_empty() {
            let mut rng = StdRng::seed_from_u64(seed ^ DELAY_DRAW_SALT);
            if rng.random_bool(DELAY_SHARE) {
                faults.push(Fault {
                    kind: FaultKind::Delay {
                        process: pick(&mut rng, &scope.partitionable),
                        peer: None,
                        added_ms: rng.random_range(5..=30) * 10,
                        for_ms: rng.random_range(20..=100) * 100,
                    },
                    when: draw_trigger(&mut rng),
                });
            }
        }
        // About half of the partitions, losses and delays act only on the link to one other
        // process, drawn last from a stream of its own so each keeps its other fields.
        let mut rng = StdRng::seed_from_u64(seed ^ PEER_DRAW_SALT);
        for fault in &mut faults {
            if let FaultKind::Partition { process, peer, .. }
            | FaultKind::Loss { process, peer, .. }
            | FaultKind::Delay { process, peer, .. } = &mut fault.kind
            {
                let others: BTreeSet<String> = scope
                    .partitionable
                    .iter()
                    .filter(|p| *p != process)
                    .filter(|p| scope.orchestrators.is_empty() || scope.orchestrators.contains(*p))
                    .cloned()
                    .collect();
                if !others.is_empty() && rng.random_bool(PEER_SHARE) {
                    *peer = Some(pick(&mut rng, &others));
                }
            }
        }
        Self {
            seed: Some(seed),
            faults,
        }
    }
}

/// When a generated fault fires: 2 to 30 s after the start, or at one of [`GENERATED_PHASES`].
fn draw_trigger(rng: &mut StdRng) -> Trigger {
    if rng.random_bool(0.5) {
        Trigger::AfterMs(rng.random_range(2..=30) * 1_000)
    } else {
        Trigger::AtPhase(GENERATED_PHASES[rng.random_range(0..GENERATED_PHASES.len())].to_owned())
    }
}

/// A fault as TOML spells it: one flat table, `kind` saying which fields it needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    added_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    for_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restart_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at_phase: Option<String>,
}

impl TryFrom<RawFault> for Fault {
    type Error = String;

    fn try_from(raw: RawFault) -> Result<Self, String> {
        let kind_name = raw.kind.clone();
        let need = |field: Option<String>, name: &str| {
            field.ok_or_else(|| format!("a {kind_name:?} fault needs `{name}`"))
        };
        let allowed: &[&str] = match raw.kind.as_str() {
            "errors" => &["region", "service", "rate"],
            "latency" => &["region", "service", "added_ms"],
            "pause" => &["process", "for_ms"],
            "partition" => &["process", "peer", "for_ms"],
            "kill" => &["process", "restart_after_ms"],
            "loss" => &["process", "peer", "percent", "for_ms"],
            "delay" => &["process", "peer", "added_ms", "for_ms"],
            "disk_full" => &["region", "for_ms"],
            "clock_jump" => &["process", "ms", "for_ms"],
            "abort" => &[],
            other => {
                return Err(format!(
                    "unknown fault kind {other:?}; the kinds are {}",
                    FAULT_KINDS.join(", ")
                ));
            }
        };
        let given = [
            ("region", raw.region.is_some()),
            ("service", raw.service.is_some()),
            ("rate", raw.rate.is_some()),
            ("added_ms", raw.added_ms.is_some()),
            ("process", raw.process.is_some()),
            ("peer", raw.peer.is_some()),
            ("for_ms", raw.for_ms.is_some()),
            ("restart_after_ms", raw.restart_after_ms.is_some()),
            ("percent", raw.percent.is_some()),
            ("ms", raw.ms.is_some()),
        ];
        if let Some((stray, _)) = given
            .iter()
            .find(|(name, set)| *set && !allowed.contains(name))
        {
            let takes = if allowed.is_empty() {
                "only its trigger".to_owned()
            } else {
                allowed.join(", ")
            };
            return Err(format!(
                "a {kind_name:?} fault takes {takes}, not `{stray}`"
            ));
        }
        let kind = match raw.kind.as_str() {
            "errors" => {
                let rate = raw.rate.ok_or("an \"errors\" fault needs `rate`")?;
                if !(rate > 0.0 && rate <= 1.0) {
                    return Err(format!("rate {rate} must be in (0, 1]"));
                }
                FaultKind::Errors {
                    region: need(raw.region, "region")?,
                    service: need(raw.service, "service")?,
                    rate,
                }
            }
            "latency" => FaultKind::Latency {
                region: need(raw.region, "region")?,
                service: need(raw.service, "service")?,
                added_ms: match raw.added_ms {
                    Some(0) | None => {
                        return Err("a \"latency\" fault needs `added_ms` above 0".to_owned());
                    }
                    Some(ms) => ms,
                },
            },
            "kill" => FaultKind::Kill {
                process: need(raw.process, "process")?,
                restart_after_ms: raw
                    .restart_after_ms
                    .ok_or("a \"kill\" fault needs `restart_after_ms` (0: at once)")?,
            },
            "loss" => FaultKind::Loss {
                peer: peer_of(&raw.process, raw.peer)?,
                process: need(raw.process, "process")?,
                percent: match raw.percent {
                    Some(p @ 1..=100) => p,
                    _ => return Err("a \"loss\" fault needs `percent` from 1 to 100".to_owned()),
                },
                for_ms: above_zero(raw.for_ms, &kind_name)?,
            },
            "partition" => FaultKind::Partition {
                peer: peer_of(&raw.process, raw.peer)?,
                process: need(raw.process, "process")?,
                for_ms: above_zero(raw.for_ms, &kind_name)?,
            },
            "delay" => FaultKind::Delay {
                peer: peer_of(&raw.process, raw.peer)?,
                process: need(raw.process, "process")?,
                added_ms: match raw.added_ms {
                    Some(ms @ 1..=crate::inject::MAX_DELAY_MS) => ms,
                    _ => {
                        return Err(format!(
                            "a \"delay\" fault needs `added_ms`, the time each packet is held: \
                             1 to {} ms",
                            crate::inject::MAX_DELAY_MS
                        ));
                    }
                },
                for_ms: above_zero(raw.for_ms, &kind_name)?,
            },
            "disk_full" => FaultKind::DiskFull {
                region: need(raw.region, "region")?,
                for_ms: above_zero(raw.for_ms, &kind_name)?,
            },
            "abort" => FaultKind::Abort,
            "clock_jump" => FaultKind::ClockJump {
                process: need(raw.process, "process")?,
                ms: match raw.ms {
                    Some(ms) if ms != 0 && ms.abs() <= MAX_CLOCK_JUMP_MS => ms,
                    _ => {
                        return Err(format!(
                            "a \"clock_jump\" fault needs `ms`, the step of the wall clock in \
                             ms: not 0, at most {MAX_CLOCK_JUMP_MS} (a day) either way, negative \
                             to step back (e.g. ms = 600000: ten minutes ahead)"
                        ));
                    }
                },
                for_ms: match raw.for_ms {
                    None => None,
                    Some(_) => Some(above_zero(raw.for_ms, &kind_name)?),
                },
            },
            _ => FaultKind::Pause {
                process: need(raw.process, "process")?,
                for_ms: above_zero(raw.for_ms, &kind_name)?,
            },
        };
        let when = match (raw.after_ms, raw.at_phase) {
            (Some(ms), None) => Trigger::AfterMs(ms),
            (None, Some(phase)) if !phase.is_empty() => Trigger::AtPhase(phase),
            _ => {
                return Err(format!(
                    "a {kind_name:?} fault needs exactly one of `after_ms` (from the drill's start) \
                     or `at_phase` (e.g. \"cutting_over[1]\")"
                ));
            }
        };
        Ok(Fault { kind, when })
    }
}

/// A network fault's `peer`: another process than its own, or why not.
fn peer_of(process: &Option<String>, peer: Option<String>) -> Result<Option<String>, String> {
    match peer {
        Some(peer) if peer.is_empty() => Err("`peer` is empty: name a process, or leave `peer` \
                                              out to act on every packet of the process"
            .to_owned()),
        Some(peer) if Some(&peer) == process.as_ref() => Err(format!(
            "`peer` names {peer:?}, the fault's own process: name another process, or leave `peer` out to act on every packet of {peer:?}"
        )),
        peer => Ok(peer),
    }
}

/// A `for_ms` above 0, or why not.
fn above_zero(for_ms: Option<u64>, kind: &str) -> Result<u64, String> {
    match for_ms {
        Some(0) | None => Err(format!("a {kind:?} fault needs `for_ms` above 0")),
        Some(ms) => Ok(ms),
    }
}

impl From<Fault> for RawFault {
    fn from(fault: Fault) -> Self {
        let kind_name = fault.kind.name();
        let mut raw = match fault.kind {
            FaultKind::Errors {
                region,
                service,
                rate,
            } => RawFault {
                kind: kind_name.into(),
                region: Some(region),
                service: Some(service),
                rate: Some(rate),
                ..RawFault::default()
            },
            FaultKind::Latency {
                region,
                service,
                added_ms,
            } => RawFault {
                kind: kind_name.into(),
                region: Some(region),
                service: Some(service),
                added_ms: Some(added_ms),
                ..RawFault::default()
            },
            FaultKind::Pause { process, for_ms } => RawFault {
                kind: kind_name.into(),
                process: Some(process),
                for_ms: Some(for_ms),
                ..RawFault::default()
            },
            FaultKind::Kill {
                process,
                restart_after_ms,
            } => RawFault {
                kind: kind_name.into(),
                process: Some(process),
                restart_after_ms: Some(restart_after_ms),
                ..RawFault::default()
            },
            FaultKind::Partition {
                process,
                peer,
                for_ms,
            } => RawFault {
                kind: kind_name.into(),
                process: Some(process),
                peer,
                for_ms: Some(for_ms),
                ..RawFault::default()
            },
            FaultKind::Loss {
                process,
                peer,
                percent,
                for_ms,
            } => RawFault {
                kind: kind_name.into(),
                process: Some(process),
                peer,
                percent: Some(percent),
                for_ms: Some(for_ms),
                ..RawFault::default()
            },
            FaultKind::Delay {
                process,
                peer,
                added_ms,
                for_ms,
            } => RawFault {
                kind: kind_name.into(),
                process: Some(process),
                peer,
                added_ms: Some(added_ms),
                for_ms: Some(for_ms),
                ..RawFault::default()
            },
            FaultKind::Abort => RawFault {
                kind: kind_name.into(),
                ..RawFault::default()
            },
            FaultKind::DiskFull { region, for_ms } => RawFault {
                kind: kind_name.into(),
                region: Some(region),
                for_ms: Some(for_ms),
                ..RawFault::default()
            },
            FaultKind::ClockJump {
                process,
                ms,
                for_ms,
            } => RawFault {
                kind: kind_name.into(),
                process: Some(process),
                ms: Some(ms),
                for_ms,
                ..RawFault::default()
            },
        };
        match fault.when {
            Trigger::AfterMs(ms) => raw.after_ms = Some(ms),
            Trigger::AtPhase(phase) => raw.at_phase = Some(phase),
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo_scope() -> Scope {
        Scope {
            regions: ["us-east", "eu-west", "ap-south"].map(String::from).into(),
            services: ["shop".to_owned()].into(),
            processes: ["agent-eu-west".to_owned()].into(),
            ..Scope::default()
        }
    }

    /// Each `(fault, expected)`: the fault's TOML lines (a trigger is added) are refused
    /// with an error that says `expected`.
    fn refused(cases: &[(&str, &str)]) {
        for (text, expected) in cases {
            let error = FaultPlan::from_toml(&format!("[[faults]]\n{text}\nafter_ms = 1"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    fn supervised_scope() -> Scope {
        Scope {
            restartable: ["leader", "agent-target"].map(String::from).into(),
            partitionable: ["leader".to_owned()].into(),
            disks: ["eu-west".to_owned()].into(),
            clocks: ["leader", "orchestrator-2"].map(String::from).into(),
            aborts: true,
            ..demo_scope()
        }
    }

    #[test]
    fn a_written_plan_parses_and_checks() {
        let plan = FaultPlan::from_toml(
            r#"
            [[faults]]
            kind = "errors"
            region = "us-east"
            service = "shop"
            rate = 0.25
            at_phase = "cutting_over[1]"

            [[faults]]
            kind = "pause"
            process = "agent-eu-west"
            for_ms = 1500
            after_ms = 4000
            "#,
        )
        .unwrap();
        assert_eq!(plan.seed, None);
        assert_eq!(
            plan.faults,
            vec![
                Fault {
                    kind: FaultKind::Errors {
                        region: "us-east".into(),
                        service: "shop".into(),
                        rate: 0.25
                    },
                    when: Trigger::AtPhase("cutting_over[1]".into()),
                },
                Fault {
                    kind: FaultKind::Pause {
                        process: "agent-eu-west".into(),
                        for_ms: 1500
                    },
                    when: Trigger::AfterMs(4000),
                },
            ]
        );
        plan.check(&demo_scope()).unwrap();
    }

    #[test]
    fn mistakes_are_refused_with_what_to_do() {
        let table = [
            (
                "[[faults]]\nkind = \"flood\"\nafter_ms = 1",
                "unknown fault kind \"flood\"; the kinds are errors, latency, pause, kill, partition, loss",
            ),
            (
                "[[faults]]\nkind = \"errors\"\nregion = \"us-east\"\nservice = \"shop\"\nafter_ms = 1",
                "needs `rate`",
            ),
            (
                "[[faults]]\nkind = \"errors\"\nregion = \"us-east\"\nservice = \"shop\"\nrate = 1.5\nafter_ms = 1",
                "rate 1.5 must be in (0, 1]",
            ),
            (
                "[[faults]]\nkind = \"errors\"\nregion = \"us-east\"\nservice = \"shop\"\nrate = 0.5",
                "exactly one of `after_ms`",
            ),
            (
                "[[faults]]\nkind = \"errors\"\nregion = \"us-east\"\nservice = \"shop\"\nrate = 0.5\nafter_ms = 1\nat_phase = \"warming\"",
                "exactly one of `after_ms`",
            ),
            (
                "[[faults]]\nkind = \"pause\"\nprocess = \"p\"\nfor_ms = 5\nrate = 0.5\nafter_ms = 1",
                "takes process, for_ms, not `rate`",
            ),
            (
                "[[faults]]\nkind = \"latency\"\nregion = \"us-east\"\nservice = \"shop\"\nafter_ms = 1",
                "`added_ms` above 0",
            ),
            (
                "[[faults]]\nkind = \"errors\"\nregoin = \"us-east\"",
                "unknown field `regoin`",
            ),
            ("faults = 3", "invalid type"),
            ("[[faults]", "the fault plan is not valid"),
        ];
        for (text, expected) in table {
            let error = FaultPlan::from_toml(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn unknown_regions_services_and_processes_are_named() {
        let scope = demo_scope();
        let plan = |body: &str| {
            FaultPlan::from_toml(&format!("[[faults]]\n{body}\nafter_ms = 1")).unwrap()
        };
        let error = plan("kind = \"errors\"\nregion = \"mars\"\nservice = \"shop\"\nrate = 0.5")
            .check(&scope)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "fault 1 names region \"mars\", which the cluster does not have (regions: ap-south, eu-west, us-east)"
        );
        let error =
            plan("kind = \"latency\"\nregion = \"us-east\"\nservice = \"cart\"\nadded_ms = 50")
                .check(&scope)
                .unwrap_err();
        assert!(matches!(error, PlanError::UnknownService { .. }), "{error}");
        let error = plan("kind = \"pause\"\nprocess = \"orchestrator-1\"\nfor_ms = 50")
            .check(&scope)
            .unwrap_err();
        assert!(
            error.to_string().contains("add --pid orchestrator-1=PID"),
            "{error}"
        );
    }

    #[test]
    fn process_faults_parse_and_need_a_supervised_process() {
        let plan = FaultPlan::from_toml(
            r#"
            [[faults]]
            kind = "kill"
            process = "leader"
            restart_after_ms = 3000
            at_phase = "cutting_over[1]"

            [[faults]]
            kind = "partition"
            process = "leader"
            for_ms = 2000
            after_ms = 100

            [[faults]]
            kind = "loss"
            process = "leader"
            percent = 30
            for_ms = 2000
            after_ms = 200
            "#,
        )
        .unwrap();
        assert_eq!(
            plan.faults[0].kind,
            FaultKind::Kill {
                process: "leader".into(),
                restart_after_ms: 3000
            }
        );
        assert_eq!(plan.faults[2].kind.lasts_ms(), Some(2000));
        assert_eq!(plan.faults[1].kind.process(), Some("leader"));
        plan.check(&supervised_scope()).unwrap();
        // The drill has pids only: it may pause, but it cannot start a process again.
        let error = plan.check(&demo_scope()).unwrap_err().to_string();
        assert!(
            error.contains("fault 1 (kill) names process \"leader\"")
                && error.contains("umbra chaos campaign"),
            "{error}"
        );
        refused(&[
            (
                "kind = \"loss\"\nprocess = \"leader\"\npercent = 0\nfor_ms = 5",
                "`percent` from 1 to 100",
            ),
            (
                "kind = \"kill\"\nprocess = \"leader\"",
                "needs `restart_after_ms`",
            ),
            (
                "kind = \"kill\"\nprocess = \"leader\"\nfor_ms = 5",
                "takes process, restart_after_ms, not `for_ms`",
            ),
            (
                "kind = \"partition\"\nprocess = \"leader\"\nfor_ms = 0",
                "`for_ms` above 0",
            ),
        ]);
    }

    #[test]
    fn a_scope_without_supervised_processes_draws_no_process_fault_but_pauses() {
        for seed in 0..200 {
            for fault in FaultPlan::generate(seed, &demo_scope()).faults {
                assert!(
                    matches!(
                        fault.kind,
                        FaultKind::Errors { .. }
                            | FaultKind::Latency { .. }
                            | FaultKind::Pause { .. }
                    ),
                    "seed {seed}: {}",
                    fault.kind
                );
            }
        }
    }

    #[test]
    fn a_seed_gives_one_plan_that_reads_back_and_checks() {
        let scope = supervised_scope();
        let mut kinds = BTreeSet::new();
        for seed in 0..200 {
            let plan = FaultPlan::generate(seed, &scope);
            assert_eq!(
                plan,
                FaultPlan::generate(seed, &scope),
                "seed {seed} replays"
            );
            assert!((1..=6).contains(&plan.faults.len()));
            assert_eq!(FaultPlan::from_toml(&plan.to_toml()).unwrap(), plan);
            plan.check(&scope).unwrap();
            for fault in &plan.faults {
                kinds.insert(RawFault::from(fault.clone()).kind);
            }
        }
        assert_eq!(kinds, FAULT_KINDS.map(String::from).into());
        assert_ne!(
            FaultPlan::generate(1, &scope),
            FaultPlan::generate(2, &scope)
        );
    }

    #[test]
    fn a_disk_fault_parses_and_needs_a_disk_the_runner_mounted() {
        let plan = FaultPlan::from_toml(
            "[[faults]]\nkind = \"disk_full\"\nregion = \"eu-west\"\nfor_ms = 4000\nat_phase = \"cutting_over[0]\"\n",
        )
        .unwrap();
        assert_eq!(
            plan.faults[0].kind,
            FaultKind::DiskFull {
                region: "eu-west".into(),
                for_ms: 4000
            }
        );
        assert_eq!(plan.faults[0].kind.lasts_ms(), Some(4000));
        assert_eq!(FaultPlan::from_toml(&plan.to_toml()).unwrap(), plan);
        plan.check(&supervised_scope()).unwrap();
        // The drill mounted no disk: refused, saying which runners can.
        let error = plan.check(&demo_scope()).unwrap_err().to_string();
        assert!(
            error.contains("fault 1 fills the data disk of \"eu-west\"")
                && error.contains("umbra chaos campaign"),
            "{error}"
        );
        refused(&[
            (
                "kind = \"disk_full\"\nregion = \"eu-west\"",
                "`for_ms` above 0",
            ),
            ("kind = \"disk_full\"\nfor_ms = 5", "needs `region`"),
            (
                "kind = \"disk_full\"\nregion = \"eu-west\"\nfor_ms = 5\nprocess = \"leader\"",
                "takes region, for_ms, not `process`",
            ),
        ]);
    }

    /// `plan` without the delay a generated plan may end with.
    fn without_delay(mut plan: FaultPlan) -> FaultPlan {
        if matches!(
            plan.faults.last().map(|f| &f.kind),
            Some(FaultKind::Delay { .. })
        ) {
            plan.faults.pop();
        }
        plan
    }

    #[test]
    fn delays_come_last_in_some_seeds_and_only_where_the_runner_can_cut_off() {
        let with = supervised_scope();
        let mut delayed = 0;
        for seed in 0..200 {
            let plan = FaultPlan::generate(seed, &with);
            let delays: Vec<&Fault> = plan
                .faults
                .iter()
                .filter(|f| matches!(f.kind, FaultKind::Delay { .. }))
                .collect();
            assert!(delays.len() <= 1, "seed {seed}: {plan:?}");
            if let Some(delay) = delays.first() {
                delayed += 1;
                assert_eq!(Some(*delay), plan.faults.last(), "seed {seed}");
                let FaultKind::Delay {
                    process,
                    added_ms,
                    for_ms,
                    ..
                } = &delay.kind
                else {
                    unreachable!()
                };
                assert!(with.partitionable.contains(process));
                assert!((50..=300).contains(added_ms) && (2_000..=10_000).contains(for_ms));
            }
            plan.check(&with).unwrap();
            assert_eq!(FaultPlan::from_toml(&plan.to_toml()).unwrap(), plan);
        }
        assert!((25..=75).contains(&delayed), "{delayed} of 200 seeds");
        let uncut = Scope {
            partitionable: BTreeSet::new(),
            ..with
        };
        for seed in 0..200 {
            let plan = FaultPlan::generate(seed, &uncut);
            assert!(
                !plan
                    .faults
                    .iter()
                    .any(|f| matches!(f.kind, FaultKind::Delay { .. })),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn a_delay_parses_and_needs_a_process_the_runner_can_cut_off() {
        let plan = FaultPlan::from_toml(
            r#"
            [[faults]]
            kind = "delay"
            process = "leader"
            added_ms = 200
            for_ms = 4000
            at_phase = "cutting_over[1]"
            "#,
        )
        .unwrap();
        assert_eq!(
            plan.faults[0].kind,
            FaultKind::Delay {
                process: "leader".to_owned(),
                peer: None,
                added_ms: 200,
                for_ms: 4_000,
            }
        );
        assert_eq!(
            plan.faults[0].kind.to_string(),
            "delay: leader's packets +200 ms for 4000 ms"
        );
        plan.check(&supervised_scope()).unwrap();
        let drill = Scope {
            partitionable: BTreeSet::new(),
            ..supervised_scope()
        };
        let err = plan.check(&drill).unwrap_err().to_string();
        assert!(err.contains("delay"), "{err}");
        for (body, says) in [
            ("process = \"leader\"\nfor_ms = 5", "needs `added_ms`"),
            (
                "process = \"leader\"\nadded_ms = 0\nfor_ms = 5",
                "needs `added_ms`",
            ),
            (
                "process = \"leader\"\nadded_ms = 10001\nfor_ms = 5",
                "1 to 10000 ms",
            ),
            ("process = \"leader\"\nadded_ms = 10", "for_ms"),
            (
                "process = \"leader\"\nadded_ms = 10\nfor_ms = 5\npercent = 3",
                "not `percent`",
            ),
        ] {
            let text = format!("[[faults]]\nkind = \"delay\"\n{body}\nafter_ms = 1\n");
            let err = FaultPlan::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(says), "{body:?}: {err}");
        }
    }

    #[test]
    fn disks_add_a_disk_fault_to_some_seeds_and_change_no_other_fault() {
        let with = Scope {
            clocks: BTreeSet::new(),
            aborts: false,
            ..supervised_scope()
        };
        let without = Scope {
            disks: BTreeSet::new(),
            ..with.clone()
        };
        let mut filled = 0;
        for seed in 0..200 {
            let mut plan = without_delay(FaultPlan::generate(seed, &with));
            if matches!(
                plan.faults.last().map(|f| &f.kind),
                Some(FaultKind::DiskFull { .. })
            ) {
                filled += 1;
                plan.faults.pop();
            }
            assert_eq!(
                plan,
                without_delay(FaultPlan::generate(seed, &without)),
                "seed {seed}"
            );
        }
        assert!((25..=75).contains(&filled), "{filled} of 200 seeds");
    }

    #[test]
    fn a_clock_jump_parses_and_needs_a_clock_the_runner_controls() {
        let plan = FaultPlan::from_toml(
            r#"
            [[faults]]
            kind = "clock_jump"
            process = "leader"
            ms = 600000
            at_phase = "cutting_over[0]"

            [[faults]]
            kind = "clock_jump"
            process = "orchestrator-2"
            ms = -90000
            for_ms = 5000
            after_ms = 100
            "#,
        )
        .unwrap();
        assert_eq!(
            plan.faults[0].kind,
            FaultKind::ClockJump {
                process: "leader".into(),
                ms: 600_000,
                for_ms: None
            }
        );
        assert_eq!(plan.faults[0].kind.lasts_ms(), None);
        assert_eq!(plan.faults[1].kind.lasts_ms(), Some(5000));
        assert_eq!(plan.faults[1].kind.process(), Some("orchestrator-2"));
        assert_eq!(
            plan.faults[1].kind.to_string(),
            "clock_jump: orchestrator-2's wall clock -90000 ms for 5000 ms"
        );
        assert_eq!(FaultPlan::from_toml(&plan.to_toml()).unwrap(), plan);
        plan.check(&supervised_scope()).unwrap();
        // The drill started no process: refused, saying which runners can.
        let error = plan.check(&demo_scope()).unwrap_err().to_string();
        assert_eq!(
            error,
            "fault 1 jumps the clock of process \"leader\", which this runner did not start under \
             a clock it controls: clock_jump faults need a process started by Umbra's own \
             supervisor (umbra demo --fault-plan, umbra chaos campaign)"
        );
        let only_leader = Scope {
            clocks: ["leader".to_owned()].into(),
            ..supervised_scope()
        };
        let error = plan.check(&only_leader).unwrap_err().to_string();
        assert!(
            error.starts_with("fault 2 jumps the clock of process \"orchestrator-2\"")
                && error.ends_with("; it can jump: leader"),
            "{error}"
        );
        refused(&[
            ("kind = \"clock_jump\"\nprocess = \"leader\"", "needs `ms`"),
            (
                "kind = \"clock_jump\"\nprocess = \"leader\"\nms = 0",
                "needs `ms`, the step of the wall clock in ms: not 0",
            ),
            (
                "kind = \"clock_jump\"\nprocess = \"leader\"\nms = -86400001",
                "at most 86400000 (a day) either way",
            ),
            (
                "kind = \"clock_jump\"\nprocess = \"leader\"\nms = 5\nfor_ms = 0",
                "`for_ms` above 0",
            ),
            ("kind = \"clock_jump\"\nms = 5", "needs `process`"),
            (
                "kind = \"clock_jump\"\nprocess = \"leader\"\nms = 5\nregion = \"eu-west\"",
                "takes process, ms, for_ms, not `region`",
            ),
            (
                "kind = \"pause\"\nprocess = \"leader\"\nfor_ms = 5\nms = 5",
                "takes process, for_ms, not `ms`",
            ),
        ]);
    }

    #[test]
    fn clocks_add_a_clock_jump_to_some_seeds_and_change_no_other_fault() {
        let with = Scope {
            aborts: false,
            ..supervised_scope()
        };
        let without = Scope {
            clocks: BTreeSet::new(),
            ..with.clone()
        };
        let (mut jumped, mut back, mut to_the_end) = (0, 0, 0);
        for seed in 0..200 {
            let mut plan = without_delay(FaultPlan::generate(seed, &with));
            if let Some(FaultKind::ClockJump {
                process,
                ms,
                for_ms,
            }) = plan.faults.last().map(|f| f.kind.clone())
            {
                jumped += 1;
                back += usize::from(ms < 0);
                to_the_end += usize::from(for_ms.is_none());
                assert!(with.clocks.contains(&process), "seed {seed}: {process}");
                assert!(
                    (10_000..=900_000).contains(&ms.abs()),
                    "seed {seed}: {ms} ms"
                );
                plan.faults.pop();
            }
            assert_eq!(
                plan,
                without_delay(FaultPlan::generate(seed, &without)),
                "seed {seed}"
            );
        }
        assert!((25..=75).contains(&jumped), "{jumped} of 200 seeds");
        assert!(back > 0 && back < jumped, "{back} of {jumped} step back");
        assert!(
            to_the_end > 0 && to_the_end < jumped,
            "{to_the_end} of {jumped} last to the end"
        );
    }

    #[test]
    fn an_abort_parses_takes_only_its_trigger_and_needs_a_runner_that_can() {
        let plan =
            FaultPlan::from_toml("[[faults]]\nkind = \"abort\"\nat_phase = \"cutting_over[2]\"\n")
                .unwrap();
        assert_eq!(plan.faults[0].kind, FaultKind::Abort);
        assert_eq!(FaultPlan::from_toml(&plan.to_toml()).unwrap(), plan);
        let refused_here = plan.check(&demo_scope()).unwrap_err();
        assert_eq!(refused_here, PlanError::NoAbort { index: 1 });
        assert!(refused_here.to_string().contains("umbra chaos campaign"));
        let runner = Scope {
            aborts: true,
            ..demo_scope()
        };
        plan.check(&runner).unwrap();
        refused(&[(
            "kind = \"abort\"\nprocess = \"leader\"",
            "takes only its trigger, not `process`",
        )]);
    }

    #[test]
    fn aborts_add_an_abort_to_some_seeds_and_change_no_other_fault() {
        let with = supervised_scope();
        let without = Scope {
            aborts: false,
            ..supervised_scope()
        };
        let mut aborted = 0;
        for seed in 0..200 {
            let mut plan = without_delay(FaultPlan::generate(seed, &with));
            if plan.faults.last().map(|f| &f.kind) == Some(&FaultKind::Abort) {
                aborted += 1;
                plan.faults.pop();
            }
            assert_eq!(
                plan,
                without_delay(FaultPlan::generate(seed, &without)),
                "seed {seed}"
            );
            plan.check(&with).unwrap();
        }
        assert!((10..=50).contains(&aborted), "{aborted} of 200 seeds");
    }

    /// A scope whose runner knows the ports of three orchestrators (one of them by role).
    fn three_ports() -> Scope {
        Scope {
            partitionable: ["leader", "orchestrator-1", "orchestrator-2"]
                .map(String::from)
                .into(),
            ..supervised_scope()
        }
    }

    #[test]
    fn a_network_fault_between_two_processes_parses_and_needs_both_ports() {
        let plan = FaultPlan::from_toml(
            r#"
            [[faults]]
            kind = "partition"
            process = "leader"
            peer = "orchestrator-2"
            for_ms = 3000
            after_ms = 1000

            [[faults]]
            kind = "loss"
            process = "orchestrator-1"
            peer = "orchestrator-2"
            percent = 30
            for_ms = 2000
            at_phase = "warming"
            "#,
        )
        .unwrap();
        assert_eq!(
            plan.faults[0].kind,
            FaultKind::Partition {
                process: "leader".into(),
                peer: Some("orchestrator-2".into()),
                for_ms: 3000
            }
        );
        assert_eq!(plan.faults[1].kind.peer(), Some("orchestrator-2"));
        assert_eq!(
            plan.faults[0].kind.to_string(),
            "partition: leader cut off from orchestrator-2 for 3000 ms"
        );
        assert_eq!(
            plan.faults[1].kind.to_string(),
            "loss: 30 % of orchestrator-1's packets with orchestrator-2 for 2000 ms"
        );
        assert_eq!(FaultPlan::from_toml(&plan.to_toml()).unwrap(), plan);
        plan.check(&three_ports()).unwrap();
        // The peer's port must be known too, like the process's.
        let error = plan.check(&supervised_scope()).unwrap_err().to_string();
        assert!(
            error.contains("fault 1 (partition) names process \"orchestrator-2\"")
                && error.contains("--udp-port orchestrator-2=PORT"),
            "{error}"
        );
        refused(&[
            (
                "kind = \"partition\"\nprocess = \"leader\"\npeer = \"leader\"\nfor_ms = 5",
                "`peer` names \"leader\", the fault's own process",
            ),
            (
                "kind = \"delay\"\nprocess = \"leader\"\npeer = \"\"\nadded_ms = 5\nfor_ms = 5",
                "`peer` is empty",
            ),
            (
                "kind = \"pause\"\nprocess = \"leader\"\npeer = \"orchestrator-2\"\nfor_ms = 5",
                "takes process, for_ms, not `peer`",
            ),
        ]);
    }

    #[test]
    fn about_half_the_generated_network_faults_name_a_peer_only_with_two_ports_known() {
        let with = three_ports();
        let (mut network, mut paired) = (0, 0);
        for seed in 0..300 {
            let plan = FaultPlan::generate(seed, &with);
            plan.check(&with).unwrap();
            assert_eq!(FaultPlan::from_toml(&plan.to_toml()).unwrap(), plan);
            for fault in &plan.faults {
                if let FaultKind::Partition { process, peer, .. }
                | FaultKind::Loss { process, peer, .. }
                | FaultKind::Delay { process, peer, .. } = &fault.kind
                {
                    network += 1;
                    if let Some(peer) = peer {
                        paired += 1;
                        assert_ne!(peer, process, "seed {seed}");
                        assert!(with.partitionable.contains(peer), "seed {seed}");
                    }
                }
            }
        }
        assert!(network >= 100, "{network} network faults in 300 seeds");
        assert!(
            (network * 3 / 10..=network * 7 / 10).contains(&paired),
            "{paired} of {network} paired"
        );
        // Where the runner says which are orchestrators, every peer is one of them.
        let with_agents = Scope {
            partitionable: ["leader", "orchestrator-1", "agent-us-east", "agent-eu-west"]
                .map(String::from)
                .into(),
            orchestrators: ["leader", "orchestrator-1"].map(String::from).into(),
            ..supervised_scope()
        };
        let mut peers = BTreeSet::new();
        for seed in 0..300 {
            let plan = FaultPlan::generate(seed, &with_agents);
            plan.check(&with_agents).unwrap();
            peers.extend(
                plan.faults
                    .iter()
                    .filter_map(|f| f.kind.peer().map(String::from)),
            );
        }
        assert_eq!(peers, with_agents.orchestrators);
        // With one port known, no peer.
        for seed in 0..100 {
            assert!(
                FaultPlan::generate(seed, &supervised_scope())
                    .faults
                    .iter()
                    .all(|f| f.kind.peer().is_none()),
                "seed {seed}"
            );
        }
    }
}
