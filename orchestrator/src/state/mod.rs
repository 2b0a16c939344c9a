//! The orchestrators' replicated state: regions, services, migrations, schedules, the DNS
//! weights each service's record should carry, and an audit log of every change with its
//! reason. It is the `StateMachine` the Raft group replicates.
//!
//! Every command is checked by [`OrchestratorState::check`] twice: by the API before it
//! proposes (so bad input costs no log entry and gets its error at once) and again when it
//! applies (the state may have moved between the two). A rejected command changes nothing
//! and says why, with a [`RejectKind`] (invalid input, not found, conflict with the current
//! state, a deposed leader's term) so callers need not parse the message. A command is
//! validated against the state as it is (`&self`, which is all a dry run does: it changes and
//! logs nothing), then committed in place by code that cannot fail, so no command copies the
//! state and its cost does not grow with the archive or the audit log. `apply` is
//! deterministic: time comes inside the command (the proposing
//! leader's clock), maps are ordered, and nothing here does I/O.
//!
//! History is bounded (`retention`): the audit log is a ring, finished migrations move to an
//! archive that drops its oldest past a cap, and a schedule key leaves with its migration.
//!
//! Fencing: every command from a leader carries its Raft term; the state remembers the
//! highest term it has applied and rejects an executor command from an older term, so a
//! deposed leader's late proposal (forwarded by raft-rs after it stepped down) cannot act
//! twice. Transitions also name the phase they start from, so a repeated transition is
//! rejected rather than applied again.

pub mod audit;
pub mod claims;
pub mod drills;
pub mod game_days;
mod log;
pub mod plan;
mod retention;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use umbra_consensus::{RestoreError, SnapshotEncoder, StateMachine, UnreadableEntry};
use umbra_proto::log::LogError;

use crate::migration::{DnsTtlPlan, MigrationRecord, MigrationSpec, Phase, PhaseDeadlines};
pub use audit::AuditEvent;
use claims::rfc3339;
pub use claims::{CapacityClaim, ClaimKind, ClaimRequest};
pub use drills::{DrillRecord, DrillReport, DrillService, MAX_DRILLS};
pub use game_days::{GameDayMove, GameDayRun, GameDaySpec, MoveState};
pub use plan::{
    LimitsSpec, Plan, PlanError, PoolMode, RegionSpec, ReplicationKind, ScheduleSpec, ServiceSpec,
};
use retention::{Archive, MigrationIndex, ranked};
pub use retention::{MAX_ARCHIVED_MIGRATIONS, MAX_AUDIT_ENTRIES, Retention, migration_number};

/// How far in the past a migration's cutover time may lie when it is created: the
/// operator's `now` as the CLI's clock saw it, give or take clock skew and the round trip.
/// Further back is a mistake (a date typed wrong), refused rather than started at once.
pub const MAX_CUTOVER_IN_PAST_MS: u64 = 300_000;

/// How many seconds `t_ms` lies before `now_ms`, when that is more than
/// [`MAX_CUTOVER_IN_PAST_MS`]: a time typed wrong, not clock skew.
fn too_far_past_secs(t_ms: u64, now_ms: u64) -> Option<u64> {
    (t_ms.saturating_add(MAX_CUTOVER_IN_PAST_MS) < now_ms).then(|| (now_ms - t_ms) / 1_000)
}

/// Default phase deadlines for migrations the state creates: ten minutes to provision and
/// to warm, five to catch up (and, at the last step, to move the single writer). Traffic goes back within a second in practice (the demo measures
/// it); the 30 s rollback deadline only decides when a rollback that cannot be confirmed —
/// agents unreachable across a leader change, say — is declared Failed for an operator, and
/// Failed is terminal, so it must not fire on a slow reconnect. It does not bound moving the
/// single writer back after a promotion: that is retried until done (`migration::decide`).
pub const DEFAULT_DEADLINES: PhaseDeadlines = PhaseDeadlines {
    provisioning_ms: 600_000,
    warming_ms: 600_000,
    replicating_ms: 300_000,
    rolling_back_ms: 30_000,
};

/// A service as replicated: its spec and where it lives now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceState {
    /// What the operator applied.
    pub spec: ServiceSpec,
    /// The region serving it now (moved only by completed migrations).
    pub primary_region: String,
    /// The migration in flight, if any (at most one per service).
    pub active_migration: Option<String>,
}

/// The weights a service's DNS record should carry, by region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DnsWeights {
    /// Weight per region name (relative).
    pub weights: BTreeMap<String, u32>,
    /// TTL of the record.
    pub ttl_secs: u32,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Raft log index of the command.
    pub index: u64,
    /// When (Unix ms, the proposer's clock).
    pub at_ms: u64,
    /// Raft term of the proposing leader (0 for operator commands).
    pub term: u64,
    /// What it is about: a migration id, a service, a claim id, or `plan`.
    pub subject: String,
    /// What happened.
    pub event: AuditEvent,
    /// Why.
    pub reason: String,
}

/// What an operator asks for with `umbra migrate`, or a schedule creates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationRequest {
    /// The service to move.
    pub service: String,
    /// Expected source region (`None`: wherever the service is now).
    pub from: Option<String>,
    /// Target region.
    pub to: String,
    /// Start of the slice the traffic should be in the target for (Unix ms).
    pub cutover_at_ms: u64,
    /// Warm the shadow pool (off only to show the cold baseline).
    pub warm_up: bool,
    /// Override the service's lead time (ms).
    pub lead_time_ms: Option<u64>,
    /// Override the service's analysis window (ms).
    pub analysis_window_ms: Option<u64>,
    /// Override the drain time (ms); default: the service's normal DNS TTL plus 10 %.
    pub drain_ms: Option<u64>,
    /// Set by schedules: `schedule/slice-start`, so a schedule fires once per slice even
    /// when two leaders in a row see it due.
    pub schedule_key: Option<String>,
}

impl MigrationRequest {
    /// A request to move `service` to `to` for the slice starting at `cutover_at_ms`, from
    /// wherever it is now, warmed, with the service's own timings. Callers set the other
    /// fields for their overrides.
    pub fn new(service: &str, to: &str, cutover_at_ms: u64) -> Self {
        Self {
            service: service.to_owned(),
            from: None,
            to: to.to_owned(),
            cutover_at_ms,
            warm_up: true,
            lead_time_ms: None,
            analysis_window_ms: None,
            drain_ms: None,
            schedule_key: None,
        }
    }
}

/// A change to the replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create or update regions, services and schedules.
    ApplyPlan {
        /// The plan.
        plan: Plan,
        /// When.
        at_ms: u64,
    },
    /// Create a migration.
    CreateMigration {
        /// What to move.
        request: MigrationRequest,
        /// When.
        at_ms: u64,
    },
    /// Move a migration to another phase (the executor, on the leader).
    Transition {
        /// The migration.
        id: String,
        /// The phase it must be in now.
        from: Phase,
        /// The phase to move to.
        to: Phase,
        /// Why (kept in the audit log).
        reason: String,
        /// Shadow pool size, set when provisioning starts.
        shadow_instances: Option<u32>,
        /// Entering `rolled_back`: the rollback's measured time (kept in the audit log).
        rollback_ms: Option<u64>,
        /// Proposing leader's term.
        term: u64,
        /// When.
        at_ms: u64,
    },
    /// Record that the single writer moved (`true`: to the target).
    SetPromoted {
        /// The migration.
        id: String,
        /// Whether the target is the writer now.
        promoted: bool,
        /// The fence-to-promotion window the proposing leader measured, ms.
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
    /// Set the weights of a service's DNS record (the DNS controller, on the leader).
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
    /// An operator claims serving capacity (see [`claims`]).
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
    /// A drill that ran against the cluster records its verdict (see [`drills`]).
    RecordDrill {
        /// The verdict.
        drill: DrillReport,
        /// When.
        at_ms: u64,
    },
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    /// A plan was applied: how many regions, services and schedules it created or updated.
    Plan {
        /// Regions created or updated.
        regions: usize,
        /// Services created or updated.
        services: usize,
        /// Schedules created or updated.
        schedules: usize,
    },
    /// A migration exists with this id (new, or the one a schedule already created).
    Migration {
        /// Its id.
        id: String,
    },
    /// Anything else.
    Done,
    /// A capacity claim exists with this id.
    Capacity {
        /// Its id.
        id: String,
    },
    /// A drill was recorded with this id.
    Drill {
        /// Its id.
        id: String,
    },
}

/// What sort of refusal a [`Rejected`] is, so callers (the API's status codes, the
/// executor's retry decisions) need not parse the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectKind {
    /// The command itself is wrong whatever the state: an undeclared region, a bad plan,
    /// a transition that is not an edge of the phase machine.
    Invalid,
    /// It names a migration or service that does not exist.
    NotFound,
    /// It is valid but clashes with the current state: a migration already in flight, a
    /// phase that has moved on, a plan that would move a service.
    Conflict,
    /// It comes from a deposed leader (an older Raft term than one already applied).
    Stale,
}

/// Why a command was rejected; nothing changed. Displays as its message alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Rejected {
    /// What sort of refusal.
    pub kind: RejectKind,
    /// What is wrong and what to do, for an operator.
    pub message: String,
}

impl Rejected {
    /// The command is wrong whatever the state.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(RejectKind::Invalid, message)
    }

    /// No such migration or service.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(RejectKind::NotFound, message)
    }

    /// Valid, but clashes with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(RejectKind::Conflict, message)
    }

    /// A deposed leader's command.
    pub fn stale(message: impl Into<String>) -> Self {
        Self::new(RejectKind::Stale, message)
    }

    fn new(kind: RejectKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The answer to a command, as the proposer receives it.
pub type Outcome = Result<Applied, Rejected>;

/// A read of the replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Query {
    /// What is current: everything but the audit log and the archived migrations.
    Overview,
    /// Audit entries with index > `after_index`, at most `limit`.
    Audit {
        /// Exclusive lower bound.
        after_index: u64,
        /// Most entries returned.
        limit: usize,
    },
    /// Would this command apply now? A dry run on the current state, so the API rejects bad
    /// input before it costs a log entry.
    Check(Box<Command>),
    /// One migration, current or archived.
    Migration {
        /// Its id.
        id: String,
    },
    /// Archived migrations, newest first.
    Archived {
        /// Only those created before this migration number (`shop-12` → 12), to page on.
        before: Option<u64>,
        /// Most records returned.
        limit: usize,
    },
    /// Recorded drills, newest first.
    Drills {
        /// Most records returned.
        limit: usize,
    },
}

/// The answer to [`Query::Overview`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    /// Regions by name.
    pub regions: BTreeMap<String, RegionSpec>,
    /// Services by name.
    pub services: BTreeMap<String, ServiceState>,
    /// Migrations by id: the live ones, and each service's latest and latest completed
    /// (whose shadow pool serves it). Older finished ones are archived: [`Query::Migration`]
    /// and [`Query::Archived`] read them.
    pub migrations: BTreeMap<String, MigrationRecord>,
    /// Schedules by name.
    pub schedules: BTreeMap<String, ScheduleSpec>,
    /// DNS weights by service.
    pub dns: BTreeMap<String, DnsWeights>,
    /// Capacity claims by id (ended ones leave at the next claim command).
    pub capacity: BTreeMap<String, CapacityClaim>,
    /// Game days by name, with their verdicts and migrations.
    pub game_days: BTreeMap<String, GameDayRun>,
    /// Index of the last applied command.
    pub applied_index: u64,
}

/// The answer to a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QueryAnswer {
    /// See [`Overview`].
    Overview(Box<Overview>),
    /// Audit entries, oldest first.
    Audit(Vec<AuditEntry>),
    /// The dry run's verdict.
    Check(Result<(), Rejected>),
    /// The migration asked for, if the state still holds it, and whether it is archived.
    Migration {
        /// The record (`None`: no such migration, or dropped from the archive).
        record: Option<Box<MigrationRecord>>,
        /// Whether it is archived rather than in the overview.
        archived: bool,
    },
    /// Archived migrations, newest first.
    Migrations(Vec<MigrationRecord>),
    /// The query bytes were not understood.
    Malformed(String),
    /// Recorded drills, newest first.
    Drills(Vec<DrillRecord>),
}

/// The replicated state machine. Snapshots encode it through the log schema (`log`), never
/// with serde directly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrchestratorState {
    regions: BTreeMap<String, RegionSpec>,
    services: BTreeMap<String, ServiceState>,
    /// Current migrations: live ones, and each service's latest and latest completed.
    migrations: BTreeMap<String, MigrationRecord>,
    /// Finished migrations nothing depends on, oldest created first (at most
    /// `retention.archived_migrations`). A snapshot holds both maps as one.
    archive: Archive,
    schedules: BTreeMap<String, ScheduleSpec>,
    dns: BTreeMap<String, DnsWeights>,
    /// `schedule_key` → migration id, so a schedule fires once per slice. A key leaves with
    /// its migration when the archive drops it: a leader proposes a slice's key only while
    /// the slice is due, at most [`MAX_CUTOVER_IN_PAST_MS`] after its start, and thousands of
    /// migrations do not finish in that time.
    fired: BTreeMap<String, String>,
    audit: VecDeque<AuditEntry>,
    capacity: BTreeMap<String, CapacityClaim>,
    next_migration: u64,
    next_claim: u64,
    highest_term: u64,
    applied_index: u64,
    /// Recorded drills, oldest first, at most [`MAX_DRILLS`].
    drills: VecDeque<DrillRecord>,
    next_drill: u64,
    /// Game days by name, as the plan declared them.
    game_days: BTreeMap<String, GameDaySpec>,
    /// Game day → the drill its verdict was recorded as.
    game_day_verdicts: BTreeMap<String, String>,
    /// Derived from `migrations` and `fired`; rebuilt on restore.
    index: MigrationIndex,
    /// This node's caps (not replicated: every node runs the same build's defaults).
    retention: Retention,
}

/// A command checked against the state, with what it will change: committing it cannot
/// fail, so a command is all or nothing without copying the state.
enum Change<'c> {
    Plan(&'c Plan),
    /// A schedule's migration exists already: nothing changes.
    Existing(String),
    Create {
        request: &'c MigrationRequest,
        record: Box<MigrationRecord>,
        reason: String,
    },
    Transition {
        id: &'c str,
        to: Phase,
        shadow_instances: Option<u32>,
    },
    Promote {
        id: &'c str,
        promoted: bool,
    },
    Rollback {
        id: &'c str,
        from: Phase,
    },
    Dns {
        service: &'c str,
        dns: &'c DnsWeights,
        /// The migration in flight whose TTL clock this record starts.
        lowers: Option<String>,
    },
    Claim(Box<CapacityClaim>),
    Release(&'c str),
    Drill(&'c DrillReport),
}

impl OrchestratorState {
    /// An empty state that keeps at most what `retention` says (the product runs
    /// [`Retention::default`], which is also what [`Default`] builds).
    pub fn with_retention(retention: Retention) -> Self {
        Self {
            retention: Retention {
                audit_entries: retention.audit_entries.max(1),
                ..retention
            },
            ..Self::default()
        }
    }

    /// A read-only view of what is current: everything but the audit log and the archived
    /// migrations, so its size does not grow with history.
    pub fn overview(&self) -> Overview {
        Overview {
            regions: self.regions.clone(),
            services: self.services.clone(),
            migrations: self.migrations.clone(),
            schedules: self.schedules.clone(),
            dns: self.dns.clone(),
            capacity: self.capacity.clone(),
            game_days: self
                .game_days
                .values()
                .map(|spec| self.game_day_run(spec))
                .collect(),
            applied_index: self.applied_index,
        }
    }

    /// Game day `spec` with its verdict and the migrations it created (found by their keys,
    /// current or archived).
    fn game_day_run(&self, spec: &GameDaySpec) -> (String, GameDayRun) {
        let state = |key: String| {
            let id = self.fired.get(&key)?;
            let (record, _) = self.migration(id)?;
            Some(MoveState {
                id: id.clone(),
                to: record.spec.to.clone(),
                phase: record.phase,
                since_ms: record.phase_since_ms,
            })
        };
        let moves = self
            .services
            .keys()
            .filter_map(|service| {
                Some(GameDayMove {
                    service: service.clone(),
                    out: state(game_days::forward_key(&spec.name, service))?,
                    back: state(game_days::back_key(&spec.name, service)),
                })
            })
            .collect();
        (
            spec.name.clone(),
            GameDayRun {
                spec: spec.clone(),
                verdict: self.game_day_verdicts.get(&spec.name).cloned(),
                moves,
            },
        )
    }

    /// The audit log, oldest first.
    pub fn audit(&self) -> &VecDeque<AuditEntry> {
        &self.audit
    }

    /// Migration `id`, current or archived, and whether it is archived.
    pub fn migration(&self, id: &str) -> Option<(&MigrationRecord, bool)> {
        match self.migrations.get(id) {
            Some(record) => Some((record, false)),
            None => self.archive.get(&ranked(id)).map(|record| (record, true)),
        }
    }

    /// At most `limit` archived migrations created before migration number `before` (all
    /// when `None`), newest first.
    pub fn archived(&self, before: Option<u64>, limit: usize) -> Vec<MigrationRecord> {
        self.archive
            .range(..(before.unwrap_or(u64::MAX), String::new()))
            .rev()
            .map(|(_, record)| record.clone())
            .take(limit)
            .collect()
    }

    /// The newest `limit` recorded drills, newest first.
    pub fn drills(&self, limit: usize) -> Vec<DrillRecord> {
        self.drills.iter().rev().take(limit).cloned().collect()
    }

    /// Checks `command` against the current state without changing it.
    pub fn check(&self, command: &Command) -> Result<(), Rejected> {
        self.validate(command).map(|_| ())
    }

    /// Applies `command` as log entry `index`: all or nothing.
    pub fn apply_command(&mut self, index: u64, command: &Command) -> Outcome {
        let outcome = self
            .validate(command)
            .map(|change| self.commit(command, change, index));
        self.applied_index = index;
        outcome
    }

    fn stale_term(&self, term: u64) -> Result<(), Rejected> {
        if term < self.highest_term {
            return Err(Rejected::stale(format!(
                "term {term} is older than term {} already applied: a deposed leader's command",
                self.highest_term
            )));
        }
        Ok(())
    }

    /// Appends to the audit log (a ring at its cap) and logs the entry: only applied
    /// commands get here, so a dry run logs nothing.
    fn record(&mut self, entry: AuditEntry) {
        tracing::info!(
            subject = %entry.subject,
            index = entry.index,
            term = entry.term,
            "{}: {}",
            entry.event,
            entry.reason
        );
        if self.audit.len() >= self.retention.audit_entries {
            self.audit.pop_front();
        }
        self.audit.push_back(entry);
    }

    fn unknown_region(&self, what: &str, region: &str) -> Rejected {
        let known: Vec<&str> = self.regions.keys().map(String::as_str).collect();
        Rejected::invalid(format!(
            "{what} names region {region:?}, which is not declared; declared regions: {}. Apply a plan with that [[region]] first",
            known.join(", ")
        ))
    }

    fn found(&self, id: &str) -> Result<&MigrationRecord, Rejected> {
        self.migration(id)
            .map(|(record, _)| record)
            .ok_or_else(|| Rejected::not_found(format!("no migration {id:?}")))
    }

    /// Migration `id`, current or archived, which validation found.
    fn found_mut(&mut self, id: &str) -> &mut MigrationRecord {
        match self.migrations.get_mut(id) {
            Some(record) => record,
            None => self.archive.get_mut(&ranked(id)).expect("validated"),
        }
    }

    /// Everything a command needs checked, against `&self`: a rejection here is the only
    /// way a command fails.
    fn validate<'c>(&self, command: &'c Command) -> Result<Change<'c>, Rejected> {
        match command {
            Command::ApplyPlan { plan, at_ms } => self
                .validate_plan(plan, *at_ms)
                .map(|()| Change::Plan(plan)),
            Command::CreateMigration { request, at_ms } => self.validate_migration(request, *at_ms),
            Command::Transition {
                id,
                from,
                to,
                shadow_instances,
                term,
                ..
            } => {
                self.stale_term(*term)?;
                let record = self.found(id)?;
                if record.phase != *from {
                    return Err(Rejected::conflict(format!(
                        "migration {id} is {} now, not {from}: the transition was already made or overtaken",
                        record.phase
                    )));
                }
                if !from.may_become(*to, record.spec.steps_percent.len()) {
                    return Err(Rejected::invalid(format!(
                        "migration {id} cannot go from {from} to {to}"
                    )));
                }
                Ok(Change::Transition {
                    id,
                    to: *to,
                    shadow_instances: *shadow_instances,
                })
            }
            Command::SetPromoted {
                id, promoted, term, ..
            } => {
                self.stale_term(*term)?;
                if self.found(id)?.promoted == *promoted {
                    return Err(Rejected::conflict(format!(
                        "migration {id} already has promoted = {promoted}"
                    )));
                }
                Ok(Change::Promote {
                    id,
                    promoted: *promoted,
                })
            }
            Command::RequestRollback { id, .. } => {
                let record = self.migration(id).map(|(r, _)| r).ok_or_else(|| {
                    Rejected::not_found(format!(
                        "no migration {id:?}; `umbra status` lists the migrations"
                    ))
                })?;
                if !record
                    .phase
                    .may_become(Phase::RollingBack, record.spec.steps_percent.len())
                {
                    return Err(Rejected::conflict(format!(
                        "migration {id} is {}: there is nothing to roll back",
                        record.phase
                    )));
                }
                Ok(Change::Rollback {
                    id,
                    from: record.phase,
                })
            }
            Command::SetDnsWeights {
                service, dns, term, ..
            } => {
                self.stale_term(*term)?;
                let Some(state) = self.services.get(service) else {
                    return Err(Rejected::not_found(format!("no service {service:?}")));
                };
                if let Some(region) = dns.weights.keys().find(|r| !self.regions.contains_key(*r)) {
                    return Err(self.unknown_region("DNS weights", region));
                }
                if dns.weights.values().all(|w| *w == 0) {
                    return Err(Rejected::invalid(
                        "DNS weights must give some region a weight above zero".to_owned(),
                    ));
                }
                // The first low-TTL record of a migration in flight starts its TTL clock.
                let lowers = state
                    .active_migration
                    .as_ref()
                    .filter(|id| {
                        dns.ttl_secs < state.spec.dns_ttl_secs
                            && self
                                .migrations
                                .get(*id)
                                .is_some_and(|r| r.ttl_lowered_at_ms.is_none())
                    })
                    .cloned();
                Ok(Change::Dns {
                    service,
                    dns,
                    lowers,
                })
            }
            Command::ClaimCapacity { request, at_ms } => self
                .validate_claim(request, *at_ms)
                .map(|claim| Change::Claim(Box::new(claim))),
            Command::ReleaseCapacity { id, at_ms } => {
                if self.capacity.get(id).is_none_or(|c| c.end_ms <= *at_ms) {
                    return Err(Rejected::not_found(format!(
                        "no capacity claim {id:?} in force; `umbra capacity list` shows them (an ended claim is gone already)"
                    )));
                }
                Ok(Change::Release(id))
            }
            Command::RecordDrill { drill, .. } => {
                drills::validate(drill)?;
                if !self.regions.contains_key(&drill.region) {
                    return Err(self.unknown_region("the drill", &drill.region));
                }
                if let Some(name) = &drill.game_day {
                    if !self.game_days.contains_key(name) {
                        return Err(Rejected::not_found(format!("no game day {name:?}")));
                    }
                    if let Some(id) = self.game_day_verdicts.get(name) {
                        return Err(Rejected::conflict(format!(
                            "game day {name:?} is recorded already, as {id}"
                        )));
                    }
                }
                Ok(Change::Drill(drill))
            }
        }
    }

    /// Makes a validated change; cannot fail.
    fn commit(&mut self, command: &Command, change: Change<'_>, index: u64) -> Applied {
        let (at_ms, term) = match command {
            Command::ApplyPlan { at_ms, .. }
            | Command::CreateMigration { at_ms, .. }
            | Command::RequestRollback { at_ms, .. }
            | Command::ClaimCapacity { at_ms, .. }
            | Command::ReleaseCapacity { at_ms, .. }
            | Command::RecordDrill { at_ms, .. } => (*at_ms, 0),
            Command::Transition { at_ms, term, .. }
            | Command::SetPromoted { at_ms, term, .. }
            | Command::SetDnsWeights { at_ms, term, .. } => (*at_ms, *term),
        };
        self.highest_term = self.highest_term.max(term);
        let entry = |subject: &str, event: AuditEvent, reason: String| AuditEntry {
            index,
            at_ms,
            term,
            subject: subject.to_owned(),
            event,
            reason,
        };
        match change {
            Change::Plan(plan) => {
                self.commit_plan(plan);
                self.record(entry(
                    "plan",
                    AuditEvent::PlanApplied {
                        regions: plan.regions.len(),
                        services: plan.services.len(),
                        schedules: plan.schedules.len(),
                    },
                    "operator applied a plan".to_owned(),
                ));
                Applied::Plan {
                    regions: plan.regions.len(),
                    services: plan.services.len(),
                    schedules: plan.schedules.len(),
                }
            }
            Change::Existing(id) => Applied::Migration { id },
            Change::Create {
                request,
                record,
                reason,
            } => {
                self.next_migration += 1;
                let id = record.spec.id.clone();
                let event = AuditEvent::MigrationCreated {
                    service: request.service.clone(),
                    from: record.spec.from.clone(),
                    to: record.spec.to.clone(),
                    cutover_at_ms: record.spec.cutover_at_ms,
                };
                self.migrations.insert(id.clone(), *record);
                if let Some(service) = self.services.get_mut(&request.service) {
                    service.active_migration = Some(id.clone());
                }
                let key = request.schedule_key.as_deref();
                if let Some(key) = key {
                    self.fired.insert(key.to_owned(), id.clone());
                }
                let unpinned = self.index.created(&request.service, &id, key);
                self.archive(unpinned);
                self.record(entry(&id, event, reason));
                Applied::Migration { id }
            }
            Change::Transition {
                id,
                to,
                shadow_instances,
            } => {
                let Command::Transition {
                    from,
                    reason,
                    rollback_ms,
                    ..
                } = command
                else {
                    unreachable!("a transition change comes from a transition command")
                };
                let record = self.found_mut(id);
                if let Some(n) = shadow_instances {
                    record.shadow_instances = n;
                }
                record.phase = to;
                record.phase_since_ms = at_ms;
                let service_name = record.spec.service.clone();
                if to.is_terminal() {
                    let target = record.spec.to.clone();
                    if let Some(service) = self.services.get_mut(&service_name) {
                        service.active_migration = None;
                        if to == Phase::Completed {
                            service.primary_region = target;
                        }
                    }
                    let unpinned = self.index.finished(&service_name, id, to);
                    self.archive(unpinned);
                }
                self.record(entry(
                    id,
                    AuditEvent::Transition {
                        from: *from,
                        to,
                        shadow_instances,
                        rollback_ms: *rollback_ms,
                    },
                    reason.clone(),
                ));
                Applied::Done
            }
            Change::Promote { id, promoted } => {
                let Command::SetPromoted {
                    fence_window_ms, ..
                } = command
                else {
                    unreachable!("a promote change comes from a promote command")
                };
                self.found_mut(id).promoted = promoted;
                let reason = if promoted {
                    "source fenced, lag 0, target promoted"
                } else {
                    "rollback moved the single writer back"
                };
                self.record(entry(
                    id,
                    AuditEvent::WriterMoved {
                        to_target: promoted,
                        fence_window_ms: *fence_window_ms,
                    },
                    reason.to_owned(),
                ));
                Applied::Done
            }
            Change::Rollback { id, from } => {
                let Command::RequestRollback { reason, .. } = command else {
                    unreachable!("a rollback change comes from a rollback command")
                };
                let record = self.found_mut(id);
                record.phase = Phase::RollingBack;
                record.phase_since_ms = at_ms;
                self.record(entry(
                    id,
                    AuditEvent::Transition {
                        from,
                        to: Phase::RollingBack,
                        shadow_instances: None,
                        rollback_ms: None,
                    },
                    format!("operator asked: {reason}"),
                ));
                Applied::Done
            }
            Change::Dns {
                service,
                dns,
                lowers,
            } => {
                let Command::SetDnsWeights { reason, .. } = command else {
                    unreachable!("a DNS change comes from a DNS command")
                };
                self.dns.insert(service.to_owned(), dns.clone());
                if let Some(record) = lowers.and_then(|id| self.migrations.get_mut(&id)) {
                    record.ttl_lowered_at_ms = Some(at_ms);
                }
                self.record(entry(
                    service,
                    AuditEvent::DnsWeights {
                        weights: dns.weights.clone(),
                        ttl_secs: dns.ttl_secs,
                    },
                    reason.clone(),
                ));
                Applied::Done
            }
            Change::Claim(claim) => {
                self.capacity.retain(|_, c| c.end_ms > at_ms);
                self.next_claim += 1;
                let id = claim.id.clone();
                let event = AuditEvent::CapacityClaimed {
                    service: claim.service.clone(),
                    region: claim.region.clone(),
                    instances: claim.instances,
                    start_ms: claim.start_ms,
                    end_ms: claim.end_ms,
                };
                let reason = match claim.kind {
                    ClaimKind::Request => "operator requested capacity",
                    ClaimKind::Reservation => "operator reserved capacity",
                };
                self.capacity.insert(id.clone(), *claim);
                self.record(entry(&id, event, reason.to_owned()));
                Applied::Capacity { id }
            }
            Change::Release(id) => {
                self.capacity.retain(|_, c| c.end_ms > at_ms);
                let claim = self.capacity.remove(id).expect("validated");
                self.record(entry(
                    id,
                    AuditEvent::CapacityReleased {
                        service: claim.service,
                        region: claim.region,
                        instances: claim.instances,
                    },
                    "operator released the claim".to_owned(),
                ));
                Applied::Done
            }
            Change::Drill(report) => {
                self.next_drill += 1;
                let id = format!("drill-{}", self.next_drill);
                tracing::info!(
                    drill = %id,
                    index,
                    region = %report.region,
                    passed = report.passed,
                    "drill recorded: {} {} {}",
                    report.drill,
                    report.region,
                    if report.passed { "passed" } else { "failed" }
                );
                if self.drills.len() >= MAX_DRILLS {
                    self.drills.pop_front();
                }
                if let Some(name) = &report.game_day {
                    self.game_day_verdicts.insert(name.clone(), id.clone());
                }
                self.drills.push_back(DrillRecord {
                    id: id.clone(),
                    index,
                    recorded_ms: at_ms,
                    report: report.clone(),
                });
                Applied::Drill { id }
            }
        }
    }

    /// Moves a migration that is no longer current (`unpinned`, from the index) to the
    /// archive, then retires what the archive holds past its cap.
    fn archive(&mut self, unpinned: Option<retention::Ranked>) {
        if let Some(key) = unpinned
            && let Some(record) = self.migrations.remove(&key.1)
        {
            self.archive.insert(key, record);
        }
        self.retire();
    }

    /// Drops the oldest archived migrations past the cap, with their schedule keys.
    fn retire(&mut self) {
        while self.archive.len() > self.retention.archived_migrations {
            let Some(((_, id), _)) = self.archive.pop_first() else {
                break;
            };
            if let Some(key) = self.index.retired(&id) {
                self.fired.remove(&key);
            }
        }
    }

    fn validate_claim(
        &self,
        request: &ClaimRequest,
        at_ms: u64,
    ) -> Result<CapacityClaim, Rejected> {
        use claims::{DEFAULT_REQUEST_HOLD_MS, MAX_CLAIM_MS, MAX_CLAIMS, START_SKEW_MS, peak};
        // Ended claims leave when this command commits; until then they count for nothing.
        let in_force = || self.capacity.values().filter(move |c| c.end_ms > at_ms);
        let service = find_service(&self.services, &request.service)?;
        let region = self
            .regions
            .get(&request.region)
            .ok_or_else(|| self.unknown_region("the capacity claim", &request.region))?;
        if request.region != service.primary_region {
            return Err(Rejected::conflict(format!(
                "service {:?} is served from {}; a claim holds serving capacity in the serving region: claim in {} (or migrate the service to {} first)",
                request.service, service.primary_region, service.primary_region, request.region
            )));
        }
        let spec = &service.spec;
        if request.instances == 0 || request.instances > spec.max_instances {
            return Err(Rejected::invalid(format!(
                "instances must be 1..={} (service {:?}'s max_instances); raise max_instances in the plan to claim more",
                spec.max_instances, request.service
            )));
        }
        let (kind, start_ms) = match request.start_ms {
            None => (ClaimKind::Request, at_ms),
            Some(start) if start + START_SKEW_MS < at_ms => {
                return Err(Rejected::invalid(
                    "the window starts in the past; leave the start out to claim from now"
                        .to_owned(),
                ));
            }
            Some(start) => (ClaimKind::Reservation, start.max(at_ms)),
        };
        let end_ms = match (kind, request.end_ms) {
            (_, Some(end)) => end,
            (ClaimKind::Request, None) => at_ms + DEFAULT_REQUEST_HOLD_MS,
            (ClaimKind::Reservation, None) => {
                return Err(Rejected::invalid(
                    "a reservation needs an end as well as a start".to_owned(),
                ));
            }
        };
        if end_ms <= start_ms {
            return Err(Rejected::invalid(
                "the window ends before it starts (or in the past); give an end after the start"
                    .to_owned(),
            ));
        }
        if end_ms - start_ms > MAX_CLAIM_MS || start_ms - at_ms > MAX_CLAIM_MS {
            return Err(Rejected::invalid(format!(
                "a claim may last at most {} days and start at most that far ahead; make it shorter or claim again later",
                MAX_CLAIM_MS / 86_400_000
            )));
        }
        if in_force().count() >= MAX_CLAIMS {
            return Err(Rejected::conflict(format!(
                "{MAX_CLAIMS} claims are in force already; release some (`umbra capacity release ID`)"
            )));
        }
        let window = format!(
            "{} to {}",
            claims::rfc3339(start_ms),
            claims::rfc3339(end_ms)
        );
        let same_service = peak(
            in_force().filter(|c| c.service == request.service && c.region == request.region),
            start_ms,
            end_ms,
        );
        if same_service + request.instances > spec.max_instances {
            return Err(Rejected::conflict(format!(
                "service {:?} holds at most {} instances (max_instances) and claims hold {same_service} of them at some time from {window}; claim at most {}, pick another window, or raise max_instances in the plan",
                request.service,
                spec.max_instances,
                spec.max_instances.saturating_sub(same_service)
            )));
        }
        if let Some(limit) = region.max_instances {
            let held = peak(
                in_force().filter(|c| c.region == request.region),
                start_ms,
                end_ms,
            );
            if held + request.instances > limit {
                return Err(Rejected::conflict(format!(
                    "region {} holds at most {limit} instances (its max_instances) and claims hold {held} of them at some time from {window}; claim at most {}, pick another window, or raise the region's max_instances in the plan",
                    request.region,
                    limit.saturating_sub(held)
                )));
            }
        }
        Ok(CapacityClaim {
            id: format!("cap-{}", self.next_claim + 1),
            service: request.service.clone(),
            region: request.region.clone(),
            instances: request.instances,
            kind,
            start_ms,
            end_ms,
            created_ms: at_ms,
        })
    }

    fn validate_plan(&self, plan: &Plan, at_ms: u64) -> Result<(), Rejected> {
        plan.validate(
            self.regions.keys().map(String::as_str),
            self.services.keys().map(String::as_str),
        )
        .map_err(|e| Rejected::invalid(e.to_string()))?;
        for service in &plan.services {
            if let Some(existing) = self.services.get(&service.name) {
                if existing.primary_region != service.primary_region {
                    return Err(Rejected::conflict(format!(
                        "service {:?} is served from {} now; a plan cannot move it to {} (use `umbra migrate`)",
                        service.name, existing.primary_region, service.primary_region
                    )));
                }
                if let Some(active) = &existing.active_migration {
                    return Err(Rejected::conflict(format!(
                        "service {:?} has migration {active} in flight; apply its changes after it ends",
                        service.name
                    )));
                }
            }
        }
        let held = self.game_days.len()
            + plan
                .game_days
                .iter()
                .filter(|d| !self.game_days.contains_key(&d.name))
                .count();
        if held > game_days::MAX_GAME_DAYS {
            return Err(Rejected::invalid(format!(
                "the cluster would hold {held} game days; it keeps at most {}",
                game_days::MAX_GAME_DAYS
            )));
        }
        for day in &plan.game_days {
            if self.game_days.get(&day.name) == Some(day) {
                continue;
            }
            if let Some(id) = self.game_day_verdicts.get(&day.name) {
                return Err(Rejected::conflict(format!(
                    "game day {:?} ran already (its verdict is {id}); give the changed one a new name",
                    day.name
                )));
            }
            if let Some(secs) = too_far_past_secs(day.at_ms, at_ms) {
                return Err(Rejected::invalid(format!(
                    "game day {:?} is set for {}, {secs} s in the past; give a time to come",
                    day.name,
                    rfc3339(day.at_ms),
                )));
            }
        }
        Ok(())
    }

    fn commit_plan(&mut self, plan: &Plan) {
        for region in &plan.regions {
            self.regions.insert(region.name.clone(), region.clone());
        }
        for service in &plan.services {
            let state = self
                .services
                .entry(service.name.clone())
                .or_insert_with(|| ServiceState {
                    spec: service.clone(),
                    primary_region: service.primary_region.clone(),
                    active_migration: None,
                });
            state.spec = service.clone();
            // A new service starts with all of its DNS weight on its primary region.
            self.dns
                .entry(service.name.clone())
                .or_insert_with(|| DnsWeights {
                    weights: BTreeMap::from([(service.primary_region.clone(), 1)]),
                    ttl_secs: service.dns_ttl_secs,
                });
        }
        for schedule in &plan.schedules {
            self.schedules
                .insert(schedule.name.clone(), schedule.clone());
        }
        for day in &plan.game_days {
            self.game_days.insert(day.name.clone(), day.clone());
        }
    }

    fn validate_migration<'c>(
        &self,
        request: &'c MigrationRequest,
        at_ms: u64,
    ) -> Result<Change<'c>, Rejected> {
        if let Some(key) = &request.schedule_key
            && let Some(id) = self.fired.get(key)
        {
            return Ok(Change::Existing(id.clone()));
        }
        let service = find_service(&self.services, &request.service)?;
        if !self.regions.contains_key(&request.to) {
            return Err(self.unknown_region("the migration's target", &request.to));
        }
        if let Some(from) = &request.from {
            if !self.regions.contains_key(from) {
                return Err(self.unknown_region("the migration's source", from));
            }
            if *from != service.primary_region {
                return Err(Rejected::conflict(format!(
                    "service {:?} is served from {}, not {from}",
                    request.service, service.primary_region
                )));
            }
        }
        if let Some(active) = &service.active_migration {
            return Err(Rejected::conflict(format!(
                "service {:?} already has migration {active} in flight; roll it back or wait",
                request.service
            )));
        }
        if let Some(secs) = too_far_past_secs(request.cutover_at_ms, at_ms) {
            return Err(Rejected::invalid(format!(
                "the cutover time {} is {secs} s in the past; ask for `now` (`umbra migrate --at now`) or a time to come",
                rfc3339(request.cutover_at_ms),
            )));
        }
        let spec = &service.spec;
        let id = format!("{}-{}", request.service, self.next_migration + 1);
        let mut migration = MigrationSpec {
            id: id.clone(),
            service: request.service.clone(),
            from: service.primary_region.clone(),
            to: request.to.clone(),
            cutover_at_ms: request.cutover_at_ms,
            lead_time_ms: request
                .lead_time_ms
                .unwrap_or(spec.lead_time_secs.saturating_mul(1_000)),
            steps_percent: spec.steps_percent.clone(),
            analysis_window_ms: request
                .analysis_window_ms
                .unwrap_or(spec.analysis_window_secs.saturating_mul(1_000)),
            // Clients may cache the old answer for one old TTL; 10 % on top for clocks.
            drain_ms: request.drain_ms,
            dns_ttl: DnsTtlPlan::default(),
            warm_up: request.warm_up,
            max_replication_lag: spec.max_replication_lag,
            slo: spec.slo.clone(),
            deadlines: DEFAULT_DEADLINES,
        };
        migration
            .validate()
            .map_err(|e| Rejected::invalid(format!("migration for {:?}: {e}", request.service)))?;
        let timeline = ttl_timeline_of(&migration, spec, at_ms)
            .map_err(|e| Rejected::invalid(format!("migration for {:?}: {e}", request.service)))?;
        migration.dns_ttl = timeline.0;
        let mut reason = match &request.schedule_key {
            Some(key) => format!("schedule {key}"),
            None => "operator asked".to_owned(),
        };
        if let Some(everywhere_ms) = timeline.1 {
            reason.push_str(&format!(
                "; the DNS TTL is lowered late: every cache holds the {} s TTL only from {}, after the cutover starts, and steps before then take up to the old {} s TTL to reach every client",
                spec.cutover_ttl_secs,
                rfc3339(everywhere_ms),
                spec.dns_ttl_secs
            ));
        }
        Ok(Change::Create {
            request,
            record: Box::new(MigrationRecord {
                spec: migration,
                phase: Phase::Planned,
                phase_since_ms: at_ms,
                shadow_instances: spec.min_instances,
                promoted: false,
                ttl_lowered_at_ms: None,
            }),
            reason,
        })
    }
}

/// The TTL plan of `migration` of `service` created at `at_ms` (`umbra_dns::ttl_timeline`,
/// steps at their earliest: one analysis window apart from the cutover time), and when every
/// cache holds the low TTL if that is after the cutover starts (a late lowering).
fn ttl_timeline_of(
    migration: &MigrationSpec,
    service: &ServiceSpec,
    at_ms: u64,
) -> Result<(DnsTtlPlan, Option<u64>), umbra_dns::ttl_timeline::TtlTimelineError> {
    use umbra_dns::ttl_timeline::{DnsStep, TtlAction, TtlTimelineInput, TtlWarning, ttl_timeline};
    let at = crate::migration::utc_of_ms;
    let ms = |t: chrono::DateTime<chrono::Utc>| u64::try_from(t.timestamp_millis()).unwrap_or(0);
    let window_secs =
        u32::try_from(migration.analysis_window_ms.div_ceil(1_000)).unwrap_or(u32::MAX);
    let steps = (0u32..)
        .zip(&migration.steps_percent)
        .map(|(i, &target_share_pct)| DnsStep {
            offset_secs: i.saturating_mul(window_secs),
            target_share_pct,
        })
        .collect();
    let timeline = ttl_timeline(&TtlTimelineInput {
        now: at(at_ms),
        current_ttl_secs: service.dns_ttl_secs,
        low_ttl_secs: service.cutover_ttl_secs,
        margin_secs: service.dns_margin_secs,
        cutover_at: at(migration.cutover_at_ms.max(at_ms)),
        steps,
    })?;
    let lower_at_ms = timeline
        .actions
        .iter()
        .find_map(|a| matches!(a.action, TtlAction::LowerTtl { .. }).then_some(ms(a.at)))
        .unwrap_or(at_ms);
    let late = timeline.warnings.iter().map(|w| match w {
        TtlWarning::LateLowering {
            low_ttl_effective_at,
        } => ms(*low_ttl_effective_at),
    });
    let late = late.max();
    let plan = DnsTtlPlan {
        old_ttl_secs: service.dns_ttl_secs,
        low_ttl_secs: service.cutover_ttl_secs,
        margin_secs: service.dns_margin_secs,
        lower_at_ms,
    };
    Ok((plan, late))
}

/// `name` among `services`, or a NotFound listing the declared ones.
pub fn find_service<'a>(
    services: &'a BTreeMap<String, ServiceState>,
    name: &str,
) -> Result<&'a ServiceState, Rejected> {
    services.get(name).ok_or_else(|| {
        Rejected::not_found(format!(
            "no service {name:?}; declared services: {}",
            services.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })
}

/// Encodes a command as the Raft log entry a proposal carries: the current log schema
/// version and the command in its types (`umbra_proto::log`).
pub fn encode_command(command: &Command) -> Vec<u8> {
    umbra_proto::log::encode_command(&log::Logged::to_log(command))
        .expect("log schema types always encode")
}

/// Decodes a Raft log entry written by this or any earlier Umbra build. An entry of a newer
/// schema version is [`LogError::Newer`], which says to upgrade this node.
pub fn decode_command(entry: &[u8]) -> Result<Command, LogError> {
    umbra_proto::log::decode_command(entry).map(log::Logged::from_log)
}

/// Decodes the outcome a proposal returned.
pub fn decode_outcome(bytes: &[u8]) -> Result<Outcome, umbra_proto::EnvelopeError> {
    umbra_proto::envelope::decode(bytes)
}

/// Encodes a query.
pub fn encode_query(query: &Query) -> Vec<u8> {
    umbra_proto::envelope::encode(query).expect("queries always serialise")
}

/// Decodes a query's answer.
pub fn decode_answer(bytes: &[u8]) -> Result<QueryAnswer, umbra_proto::EnvelopeError> {
    umbra_proto::envelope::decode(bytes)
}

impl StateMachine for OrchestratorState {
    fn readable(&self, entry: &[u8]) -> Result<(), UnreadableEntry> {
        umbra_proto::log::check_entry_version(entry).map_err(|e| UnreadableEntry(e.to_string()))
    }

    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        let outcome = match decode_command(command) {
            Ok(command) => self.apply_command(index, &command),
            Err(e) => {
                self.applied_index = index;
                Err(Rejected::invalid(format!(
                    "not an orchestrator command: {e}"
                )))
            }
        };
        umbra_proto::envelope::encode(&outcome).expect("outcomes always serialise")
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        let answer = match umbra_proto::envelope::decode::<Query>(query) {
            Ok(Query::Overview) => QueryAnswer::Overview(Box::new(self.overview())),
            Ok(Query::Audit { after_index, limit }) => {
                // Indices only grow along the log, so the first newer entry is found by halving.
                let first = self.audit.partition_point(|e| e.index <= after_index);
                QueryAnswer::Audit(self.audit.range(first..).take(limit).cloned().collect())
            }
            Ok(Query::Check(command)) => QueryAnswer::Check(self.check(&command)),
            Ok(Query::Migration { id }) => match self.migration(&id) {
                Some((record, archived)) => QueryAnswer::Migration {
                    record: Some(Box::new(record.clone())),
                    archived,
                },
                None => QueryAnswer::Migration {
                    record: None,
                    archived: false,
                },
            },
            Ok(Query::Archived { before, limit }) => {
                QueryAnswer::Migrations(self.archived(before, limit))
            }
            Ok(Query::Drills { limit }) => QueryAnswer::Drills(self.drills(limit)),
            Err(e) => QueryAnswer::Malformed(e.to_string()),
        };
        umbra_proto::envelope::encode(&answer).expect("answers always serialise")
    }

    fn capture(&self) -> SnapshotEncoder {
        // The copy into the log schema is the capture; encoding it is the slow part, which
        // runs off the driver thread.
        let logged = log::Logged::to_log(self);
        Box::new(move || {
            umbra_proto::log::encode_snapshot(&logged).expect("log schema types always encode")
        })
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let snapshot = umbra_proto::log::decode_snapshot(snapshot)
            .map_err(|e| RestoreError(format!("not an orchestrator snapshot: {e}")))?;
        let retention = self.retention;
        *self = log::Logged::from_log(snapshot);
        self.retention = retention;
        // A snapshot written before these caps (or under larger ones) is cut to them here, so
        // a replica that restored it holds what one that replayed the log under the caps holds.
        while self.audit.len() > retention.audit_entries {
            self.audit.pop_front();
        }
        while self.drills.len() > MAX_DRILLS {
            self.drills.pop_front();
        }
        self.retire();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
