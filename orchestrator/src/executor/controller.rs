//! The executor's controller, sans-IO (quinn-proto's shape): everything one leadership
//! remembers and decides, with no task, lock, socket or clock inside. The driver in
//! [`super`] feeds it what happened (`handle_*`, each with [`Now`]) and carries out what it
//! asks for (`poll_*`): agent commands, proposals to the replicated state, shadow-pool
//! sizing jobs and events (metrics, the observation board, DNS checks). Same inputs in the
//! same order give the same outputs, so a leadership can be replayed and tested in tables.
//!
//! What it owns: the table of agent operations (attempts, backoff, outcomes), the proposals
//! in flight, the SLO baselines, the rollback timers, the schedule legs already proposed and
//! the shadow sizes. A new leadership starts a new controller from nothing but the replicated
//! state and fresh reports: it repeats its predecessor's operation ids, so agents answer from
//! their ledgers instead of acting twice.
//!
//! An operation is sent again only when its outcome is missing or failed, with exponential
//! backoff; a failed one gets a new id (`…/r{n}`) because the agent answers a repeated id
//! with its first outcome. An operation whose effect the agents can see (an instance exists,
//! serves, left the front, stopped, is gone) is *healed*: when [`reconcile`] asks for it again
//! after it succeeded and a report newer than that success still lacks the effect (the
//! instance died, or an agent restart lost it), it runs again under a fresh id (`…/h{n}`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use umbra_proto::agent::{
    AgentAction, AgentCommand, AgentReport, CommandOutcome, CommandResult, WarmupPhase, WarmupSpec,
};

use umbra_forecast::sizing::{Hysteresis, PoolState, PoolTarget};

use super::ExecutorConfig;
use super::game_day::{self, Traffic};
use super::pools::{self, PoolForecast, PoolSpec, PoolView};
use super::reconcile::{self, CommandContext, DueCommand, OpView};
use super::shadow_sizing::ShadowSize;
use crate::capacity::ClaimFulfilment;
use crate::migration::{
    self, DnsObserved, MigrationRecord, Observations, Phase, QueriedSlo, SloAnswer, SloJudgement,
    SloReading, SloSource,
};
use crate::state::claims;
use crate::state::{
    CapacityClaim, Command, DnsWeights, MigrationRequest, Overview, PoolMode, RegionSpec,
    ServiceSpec, ServiceState,
};

/// Re-decisions of one migration within one round, so a chain of instant transitions (a
/// breach, then the rollback) does not wait a tick each, and nothing can loop.
const STEPS_PER_ROUND: u32 = 4;

/// The time of an input: a monotonic instant for timers and Unix milliseconds for what is
/// written into the replicated state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time (backoff, rollback timing).
    pub at: Instant,
    /// Wall-clock time, Unix ms (stamped into commands, compared with scheduled times; phase
    /// timers read it only through a migration's [`PhaseClock`]).
    pub unix_ms: u64,
}

/// A migration's phase as this leadership first saw it. Phase timers (deadlines, analysis
/// windows, the drain, the shadow's keep time, the Prometheus step windows) run from there on
/// the monotonic clock: the replicated `phase_since_ms` is some proposer's wall clock, and a
/// step of this leader's wall clock must neither stall a phase (a step back) nor skip its
/// windows (a step forward). Only the phase's age when first seen is read off the wall clock
/// (a negative age counts as zero), so a phase a stepped proposer stamped is timed off by
/// that step for the leadership that takes it over. Rebuilt only when the phase changes.
#[derive(Debug, Clone, Copy)]
struct PhaseClock {
    phase: Phase,
    since_ms: u64,
    seen_at: Instant,
    age_ms: u64,
}

/// An agent command to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The command, with the id of this attempt.
    pub command: AgentCommand,
    /// The operation it belongs to (its id before any `/h` or `/r` suffix): hand it back
    /// with the outcome.
    pub operation: String,
    /// What kind of action, for metrics.
    pub kind: &'static str,
    /// How long to wait for the outcome.
    pub timeout: Duration,
}

/// What a proposal is about; at most one proposal per key is in flight.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProposalKey {
    /// A transition or the promoted flag of a migration.
    Migration(String),
    /// A service's DNS weights.
    Dns(String),
    /// A follow-the-sun schedule leg (its key).
    Schedule(String),
    /// A game day's next step (its name).
    GameDay(String),
}

/// A command to propose to the replicated state.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// Hand it back with the result.
    pub key: ProposalKey,
    /// What kind, for metrics and logs.
    pub kind: &'static str,
    /// The command.
    pub command: Command,
}

/// How a proposal ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposed {
    /// It applied.
    Applied,
    /// The state refused it (someone else moved the state, or this leader was deposed).
    Rejected(String),
    /// No answer (timeout, lost leadership, transport).
    Unavailable(String),
}

impl Proposed {
    fn label(&self) -> &'static str {
        match self {
            Proposed::Applied => "applied",
            Proposed::Rejected(_) => "rejected",
            Proposed::Unavailable(_) => "error",
        }
    }
}

/// How a command ended, as the gateway saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// The agent answered.
    Answered(CommandOutcome),
    /// The same id already awaits its outcome on the agent's stream.
    Duplicate,
    /// No answer (not connected, timeout, stream closed), with why.
    Unanswered(String),
}

/// A shadow pool to size from the demand history (the forecast runs outside the controller).
#[derive(Debug, Clone, PartialEq)]
pub struct SizingJob {
    /// The migration.
    pub migration: String,
    /// The service.
    pub service: ServiceSpec,
    /// The target region.
    pub region: RegionSpec,
    /// The cutover time, Unix ms.
    pub cutover_at_ms: u64,
}

/// How often a step judged by Prometheus is asked about: once a second, Prometheus's
/// shortest usual scrape interval (nothing newer can be in it sooner).
pub const SLO_QUERY_INTERVAL: Duration = Duration::from_secs(1);
/// Most target p99 samples kept per step for the comparison judgement: ten minutes of one a
/// second, longer than any sensible analysis window.
const MAX_P99_SAMPLES: usize = 600;
/// The source's baseline for the comparison judgement: its latest 60 p99 samples with data, a
/// minute at one query a second (the default analysis window).
const MAX_BASELINE_SAMPLES: usize = 60;
/// Fewest seconds between two log lines about a step's SLO source having no data or failing.
const SLO_PROBLEM_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Two PromQL queries to evaluate for a migration's step (the driver asks Prometheus and hands
/// the answer to [`Controller::handle_slo_answer`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SloQueryJob {
    /// The migration.
    pub migration: String,
    /// The phase the answer is for (an answer for an earlier step is dropped).
    pub phase: Phase,
    /// When it was asked, Unix ms on the migration's phase clock: hand it back.
    pub asked_at_ms: u64,
    /// The Prometheus server's base URL.
    pub url: String,
    /// The error-ratio query, placeholders filled in.
    pub error_ratio_query: String,
    /// The p99-latency query (seconds), placeholders filled in.
    pub latency_p99_query: String,
    /// For the comparison judgement, the same p99 query over the source region.
    pub source_latency_p99_query: Option<String>,
}

/// A step judged by Prometheus, as this leadership follows it.
#[derive(Debug, Clone, PartialEq)]
struct SloQueries {
    phase: Phase,
    share_applied_at_ms: u64,
    newest: Option<(u64, SloAnswer)>,
    target_p99_ms: Vec<f64>,
    asked_at: Option<Instant>,
    in_flight: bool,
    logged_at: Option<Instant>,
}

impl SloQueries {
    /// Nothing asked yet for `phase`, whose share applied at `now_ms`; `logged_at` carries the
    /// log's rate limit over from the step before.
    fn fresh(phase: Phase, now_ms: u64, logged_at: Option<Instant>) -> Self {
        SloQueries {
            phase,
            share_applied_at_ms: now_ms,
            newest: None,
            target_p99_ms: Vec::new(),
            asked_at: None,
            in_flight: false,
            logged_at,
        }
    }
}

/// A pool's coming slices to forecast (the forecast runs outside the controller).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolJob {
    /// The service.
    pub service: ServiceSpec,
    /// The region.
    pub region: RegionSpec,
    /// The first slice holds this time, Unix ms.
    pub from_ms: u64,
    /// How far ahead to forecast, ms (at least one slice).
    pub ahead_ms: u64,
    /// Measured activation time, seconds (the warm/dormant split weighs it).
    pub activation_secs: f64,
}

/// Something the driver reports or exports. Nothing here changes the replicated state.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An SLO source answered a step's queries: `ok`, `no_data` or `error`.
    SloQueried {
        /// The answer's label.
        result: &'static str,
    },
    /// What was observed of a live migration (for `GET /v1/status`).
    Observed {
        /// The migration.
        migration: String,
        /// The observations.
        seen: Box<Observations>,
    },
    /// A migration is no longer observed (terminal, or this leadership ended).
    Unobserved {
        /// The migration.
        migration: String,
    },
    /// A migration's stage (for the phase gauge): `previous` is the stage last exported.
    Stage {
        /// The migration.
        migration: String,
        /// Phase name.
        phase: &'static str,
        /// The phase last exported for it, if different.
        previous: Option<&'static str>,
        /// Stages done on the happy path.
        done: u64,
    },
    /// A pool's target and what it holds, once per round.
    Pool(Box<PoolView>),
    /// A migration's stage is no longer exported.
    StageCleared {
        /// The migration.
        migration: String,
        /// The phase last exported.
        phase: &'static str,
    },
    /// A proposal ended.
    ProposalEnded {
        /// Its kind.
        kind: &'static str,
        /// `applied`, `rejected` or `error`.
        label: &'static str,
    },
    /// A command ended.
    CommandEnded {
        /// Its kind.
        kind: &'static str,
        /// `done`, `not_ready`, `refused`, `failed`, `duplicate` or `unanswered`.
        class: &'static str,
    },
    /// A transition applied: the phase left and how long the migration spent in it.
    PhaseLeft {
        /// The phase left.
        phase: &'static str,
        /// Seconds spent in it.
        seconds: f64,
    },
    /// A rollback started.
    RollbackStarted {
        /// `slo`, `operator`, `dns` or `deadline`.
        cause: &'static str,
    },
    /// Traffic is back on the source: breach detected → share 0 confirmed.
    RolledBack {
        /// The migration.
        migration: String,
        /// Milliseconds.
        rollback_ms: u64,
    },
    /// The single writer moved: from the first fence confirmed to the last promotion
    /// confirmed, as this leader saw it (writes reaching the service were held in between).
    WriterMoved {
        /// `to_target` (cutover) or `to_source` (rollback).
        direction: &'static str,
        /// Seconds.
        seconds: f64,
    },
    /// New DNS weights applied (or, when DNS gates steps, weights this leadership has not
    /// checked yet): check every DNS server serves them, and when DNS gates steps hand the
    /// result to [`Controller::handle_dns_checked`].
    DnsChanged {
        /// The service.
        service: String,
        /// The weights.
        dns: DnsWeights,
        /// The state they were proposed from (the regions' fronts).
        overview: Box<Overview>,
    },
}

/// The controller's settings (from [`ExecutorConfig`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    /// Longest wait for an outcome.
    pub command_timeout: Duration,
    /// `WaitForZeroLag` timeout, ms.
    pub zero_lag_timeout_ms: u64,
    /// First retry delay.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Attempts (distinct ids) per operation before it waits for the phase deadline.
    pub max_attempts: u32,
    /// Run follow-the-sun schedules.
    pub schedules: bool,
    /// How long a rolled-back migration's shadows are kept (out of the front) before they
    /// are stopped and removed, ms.
    pub shadow_keep_ms: u64,
    /// Size serving pools from the demand forecast (off: every pool holds `min_instances`).
    pub pools: bool,
    /// When a pool may shrink.
    pub hysteresis: Hysteresis,
    /// A dormant instance older than this is removed and provisioned afresh.
    pub max_dormant_age: Duration,
    /// Added to the measured activation and provisioning times: how much earlier than
    /// measured a pool moves ahead of a slice.
    pub pool_lead_margin: Duration,
    /// The zone has one authority this leader writes (`[dns] provider = "rfc2136"`): a
    /// cutover step counts only once it serves the step's weights ([`DnsObserved`]), and
    /// checks are asked for with [`Event::DnsChanged`] and answered with
    /// [`Controller::handle_dns_checked`].
    pub dns_gate: bool,
    /// How far past its lead time a pool's forecast reaches.
    pub pool_forecast_reach: Duration,
}

impl From<&ExecutorConfig> for ControllerConfig {
    fn from(c: &ExecutorConfig) -> Self {
        Self {
            command_timeout: Duration::from_millis(c.command_timeout_ms),
            zero_lag_timeout_ms: c.zero_lag_timeout_ms,
            retry_min: Duration::from_millis(c.retry_min_ms),
            retry_max: Duration::from_millis(c.retry_max_ms),
            max_attempts: c.max_attempts,
            schedules: c.schedules,
            shadow_keep_ms: c.shadow_keep_ms,
            pools: c.pools,
            hysteresis: Hysteresis {
                shrink_after_slices: c.pool_shrink_after_slices,
                shrink_band: c.pool_shrink_band,
            },
            max_dormant_age: Duration::from_secs(c.max_dormant_age_secs),
            pool_lead_margin: Duration::from_millis(c.pool_lead_margin_ms),
            dns_gate: c.dns_authority,
            pool_forecast_reach: Duration::from_secs(c.pool_forecast_reach_secs),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum OpState {
    /// Sent; the outcome is awaited.
    InFlight,
    /// Succeeded (at `at`).
    Done {
        outcome: CommandOutcome,
        at: Instant,
    },
    /// Send (again) at `until`.
    Wait { until: Instant },
}

#[derive(Debug, Clone, PartialEq)]
struct Operation {
    /// Times the effect was healed in this leadership (each heal starts a new id sequence,
    /// `/h{term}.{n}`: a later leader's heals never reuse an earlier one's ids).
    heal: u32,
    term: u64,
    /// Attempt within the current heal.
    attempt: u32,
    backoff: Duration,
    state: OpState,
    kind: &'static str,
    /// Paused for [`CAPPED_PAUSE_FACTOR`] times the backoff's cap after every `max_attempts`
    /// failed answers, then tried again: a fault that outlasts a few quick retries (a full
    /// disk, an agent restarting) must not stall the step until its deadline, and a command
    /// refused for good costs one attempt per pause. Not a rollback's: it has no deadline to
    /// hand the migration to an operator, so it is retried at the backoff's cap until it is
    /// done.
    capped: bool,
}

impl Operation {
    fn id(&self, base: &str) -> String {
        let mut id = base.to_owned();
        if self.heal > 0 {
            id.push_str(&format!("/h{}.{}", self.term, self.heal));
        }
        if self.attempt > 0 {
            id.push_str(&format!("/r{}", self.attempt));
        }
        id
    }
}

struct Ops<'a>(&'a BTreeMap<String, Operation>);

impl OpView for Ops<'_> {
    fn done(&self, op_id: &str) -> Option<&CommandOutcome> {
        match &self.0.get(op_id)?.state {
            OpState::Done { outcome, .. } => Some(outcome),
            _ => None,
        }
    }

    fn sent(&self, op_id: &str) -> bool {
        // `ensure` keeps an operation only once it sends it.
        self.0.contains_key(op_id)
    }
}

/// What to do when a proposal applies.
#[derive(Debug, Clone, PartialEq)]
enum OnApplied {
    Transition {
        id: String,
        from: Phase,
        to: Phase,
        reason: String,
        shadow_instances: Option<u32>,
        rollback_ms: Option<u64>,
    },
    Promoted {
        id: String,
        promoted: bool,
        /// The writer's move as measured when it was proposed (see `writer_window`).
        window: Option<Duration>,
    },
    Dns {
        service: String,
        dns: DnsWeights,
    },
    Schedule,
    GameDay(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct SloBase {
    phase: Phase,
    requests: u64,
    errors: u64,
}

/// One serving pool, as this leadership drives it.
#[derive(Debug, Clone, PartialEq)]
struct Pool {
    prefix: String,
    forecast: Option<PoolForecast>,
    /// A forecast job is out.
    asked: bool,
    /// When the last forecast job was asked for, Unix ms.
    asked_at_ms: u64,
    /// The target in force, with its shrink hysteresis.
    hold: Option<PoolState>,
    /// The slice (start ms) the hysteresis last counted.
    counted_slice: Option<u64>,
    /// The target of the previous round (a change is logged).
    logged: Option<PoolTarget>,
    /// When each dormant instance was first seen dormant in this leadership.
    dormant_since: BTreeMap<String, Instant>,
    /// Instances being recycled, with the number of their recycle in this leadership (the
    /// removal's operation id).
    recycling: BTreeMap<String, u32>,
    recycled: BTreeMap<String, u32>,
    /// How the pool met each capacity claim in force.
    claims: BTreeMap<String, ClaimFulfilment>,
}

impl Pool {
    fn new(prefix: String) -> Self {
        Self {
            claims: BTreeMap::new(),
            prefix,
            forecast: None,
            asked: false,
            asked_at_ms: 0,
            hold: None,
            counted_slice: None,
            logged: None,
            dormant_since: BTreeMap::new(),
            recycling: BTreeMap::new(),
            recycled: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Sizing {
    Requested,
    Ready(ShadowSize),
}

/// One term of leadership's controller. See the module docs.
pub struct Controller {
    config: ControllerConfig,
    term: u64,
    now: Now,
    overview: Option<Overview>,
    /// The latest report of each region, and when it arrived.
    reports: BTreeMap<String, AgentReport>,
    received: BTreeMap<String, Instant>,
    ops: BTreeMap<String, Operation>,
    in_flight: BTreeMap<ProposalKey, OnApplied>,
    sizing: BTreeMap<String, Sizing>,
    pools: BTreeMap<(String, String), Pool>,
    slo: BTreeMap<String, SloBase>,
    slo_queries: BTreeMap<String, SloQueries>,
    /// Each migration's source p99 baseline for the comparison judgement, across its steps.
    slo_baselines: BTreeMap<String, VecDeque<f64>>,
    slo_query_jobs: VecDeque<SloQueryJob>,
    rollback_started: BTreeMap<String, Instant>,
    phase_clocks: BTreeMap<String, PhaseClock>,
    /// The phases of each migration whose beginning this leadership saw (it saw the migration
    /// in an earlier phase first): everything done in them was done by this leadership, since
    /// a transition committed in an earlier term is in the log it started from.
    phases_begun: BTreeMap<String, Vec<Phase>>,
    stages: BTreeMap<String, &'static str>,
    dns_proposed: BTreeMap<String, DnsWeights>,
    /// When DNS gates steps: each service's latest weights asked to be checked, and how the
    /// check went.
    dns_checks: BTreeMap<String, (DnsWeights, DnsObserved)>,
    schedule_keys: BTreeSet<String>,
    /// What the fronts reported while each running game day ran, in this leadership.
    game_day_traffic: BTreeMap<String, Traffic>,
    observed: BTreeSet<String>,
    steps: BTreeMap<String, u32>,
    commands: VecDeque<Outgoing>,
    proposals: VecDeque<Proposal>,
    sizing_jobs: VecDeque<SizingJob>,
    pool_jobs: VecDeque<PoolJob>,
    events: VecDeque<Event>,
}

impl Controller {
    /// A controller for leadership `term`, starting at `now`.
    pub fn new(config: ControllerConfig, term: u64, now: Now) -> Self {
        Self {
            config,
            term,
            now,
            overview: None,
            reports: BTreeMap::new(),
            received: BTreeMap::new(),
            ops: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            sizing: BTreeMap::new(),
            pools: BTreeMap::new(),
            slo: BTreeMap::new(),
            slo_queries: BTreeMap::new(),
            slo_baselines: BTreeMap::new(),
            slo_query_jobs: VecDeque::new(),
            rollback_started: BTreeMap::new(),
            phase_clocks: BTreeMap::new(),
            phases_begun: BTreeMap::new(),
            stages: BTreeMap::new(),
            dns_proposed: BTreeMap::new(),
            dns_checks: BTreeMap::new(),
            schedule_keys: BTreeSet::new(),
            game_day_traffic: BTreeMap::new(),
            observed: BTreeSet::new(),
            steps: BTreeMap::new(),
            commands: VecDeque::new(),
            proposals: VecDeque::new(),
            sizing_jobs: VecDeque::new(),
            pool_jobs: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A region's latest report, received at `received_at`. Reports take effect at the
    /// next [`Controller::handle_overview`].
    pub fn handle_report(&mut self, region: &str, report: AgentReport, received_at: Instant) {
        if self
            .received
            .get(region)
            .is_some_and(|at| *at >= received_at)
        {
            return;
        }
        self.received.insert(region.to_owned(), received_at);
        if let (Some(front), Some(overview)) = (&report.front, &self.overview) {
            for run in overview.game_days.values() {
                if run.running(self.now.unix_ms) {
                    self.game_day_traffic
                        .entry(run.spec.name.clone())
                        .or_default()
                        .add(
                            front.window_requests,
                            front.window_errors,
                            front.window_p99_ms,
                        );
                }
            }
        }
        self.reports.insert(region.to_owned(), report);
    }

    /// A fresh read of the replicated state: runs one round over every service and
    /// migration.
    pub fn handle_overview(&mut self, overview: Overview, now: Now) {
        self.now = now;
        self.overview = Some(overview);
        self.steps.clear();
        self.run_pools();
        if self.config.schedules {
            self.run_schedules();
        }
        self.run_game_days();
        let overview = self.overview.as_ref().expect("just set");
        let latest = reconcile::latest_migrations(overview);
        let records: Vec<(String, Phase, bool)> = overview
            .migrations
            .values()
            .map(|m| {
                let id = m.spec.id.clone();
                let is_latest = latest.get(&m.spec.service) == Some(&id);
                (id, m.phase, is_latest)
            })
            .collect();
        for (id, phase, is_latest) in records {
            if phase.is_terminal() {
                self.unobserve(&id);
                self.slo.remove(&id);
                self.slo_queries.remove(&id);
                self.slo_baselines.remove(&id);
                if !is_latest {
                    self.superseded(&id);
                    continue;
                }
            }
            self.step(&id);
        }
    }

    /// The outcome of `operation` (as handed out in [`Outgoing::operation`]).
    pub fn handle_outcome(&mut self, operation: &str, delivery: Delivery, now: Now) {
        self.now = now;
        let (class, next) = classify(&delivery);
        let Some(op) = self.ops.get_mut(operation) else {
            return; // forgotten meanwhile
        };
        if op.state != OpState::InFlight {
            return;
        }
        self.events.push_back(Event::CommandEnded {
            kind: op.kind,
            class,
        });
        match (&delivery, &next) {
            (Delivery::Answered(CommandOutcome::Done(_)), Next::Done) => {
                tracing::debug!(operation, "done")
            }
            (Delivery::Answered(outcome), _) => {
                tracing::info!(operation, ?outcome, "not done; will retry")
            }
            (Delivery::Duplicate, _) => tracing::debug!(operation, "duplicate; will retry"),
            (Delivery::Unanswered(why), _) => {
                tracing::debug!(operation, %why, "no outcome; will retry")
            }
        }
        match next {
            Next::Done => {
                let Delivery::Answered(outcome) = delivery else {
                    unreachable!("classified as done")
                };
                op.state = OpState::Done {
                    outcome,
                    at: now.at,
                };
            }
            Next::Retry { new_id } => {
                if new_id {
                    op.attempt += 1;
                }
                let pause = if op.capped && new_id && op.attempt % self.config.max_attempts == 0 {
                    tracing::info!(
                        operation,
                        attempts = op.attempt,
                        "failed every attempt so far: pausing before the next ones"
                    );
                    self.config.retry_max * CAPPED_PAUSE_FACTOR
                } else {
                    op.backoff
                };
                op.state = OpState::Wait {
                    until: now.at + pause,
                };
                op.backoff = (op.backoff * 2).min(self.config.retry_max);
            }
        }
    }

    /// How a proposal handed out by [`Controller::poll_proposal`] ended.
    pub fn handle_proposal(&mut self, key: &ProposalKey, result: Proposed, now: Now) {
        self.now = now;
        let Some(on_applied) = self.in_flight.remove(key) else {
            return;
        };
        let kind = match &on_applied {
            OnApplied::Transition { .. } => "transition",
            OnApplied::Promoted { .. } => "set_promoted",
            OnApplied::Dns { .. } => "set_dns_weights",
            OnApplied::Schedule => "create_migration",
            OnApplied::GameDay(kind) => kind,
        };
        self.events.push_back(Event::ProposalEnded {
            kind,
            label: result.label(),
        });
        match &result {
            Proposed::Applied => {}
            Proposed::Rejected(why) => tracing::info!(%why, kind, "proposal rejected"),
            Proposed::Unavailable(why) => tracing::warn!(%why, kind, "proposal failed"),
        }
        if result != Proposed::Applied {
            if let OnApplied::Dns { service, .. } = on_applied {
                self.dns_proposed.remove(&service);
            }
            return;
        }
        match on_applied {
            OnApplied::Transition {
                id,
                from,
                to,
                reason,
                shadow_instances,
                rollback_ms,
            } => self.transition_applied(&id, from, to, &reason, shadow_instances, rollback_ms),
            OnApplied::Promoted {
                id,
                promoted,
                window,
            } => {
                if let Some(window) = window {
                    self.writer_moved(&id, promoted, window);
                }
                if let Some(record) = self.record_mut(&id) {
                    record.promoted = promoted;
                }
                self.step(&id);
            }
            OnApplied::Dns { service, dns } => {
                self.dns_proposed.insert(service.clone(), dns.clone());
                self.check_dns(service, dns);
            }
            OnApplied::Schedule | OnApplied::GameDay(_) => {}
        }
    }

    /// How the check of `service`'s weights `dns` (asked for with [`Event::DnsChanged`])
    /// ended: `Err` says why the authority does not serve them. A result for weights other
    /// than the latest asked for is stale and ignored.
    pub fn handle_dns_checked(
        &mut self,
        service: &str,
        dns: &DnsWeights,
        result: Result<(), String>,
        now: Now,
    ) {
        self.now = now;
        if !self.config.dns_gate {
            return;
        }
        let Some((checked, state)) = self.dns_checks.get_mut(service) else {
            return;
        };
        if checked != dns {
            return;
        }
        *state = match result {
            Ok(()) => DnsObserved::Served,
            Err(why) => DnsObserved::Failed(why),
        };
        let ids: Vec<String> = self
            .overview
            .iter()
            .flat_map(|o| o.migrations.values())
            .filter(|r| r.spec.service == service && !r.phase.is_terminal())
            .map(|r| r.spec.id.clone())
            .collect();
        for id in ids {
            self.step(&id);
        }
    }

    /// Asks the driver to check that `service`'s weights `dns` are served.
    fn check_dns(&mut self, service: String, dns: DnsWeights) {
        let Some(overview) = &self.overview else {
            return;
        };
        if self.config.dns_gate {
            self.dns_checks
                .insert(service.clone(), (dns.clone(), DnsObserved::Pending));
        }
        self.events.push_back(Event::DnsChanged {
            service,
            dns,
            overview: Box::new(overview.clone()),
        });
    }

    /// What this leadership knows of the DNS authority serving the weights `record`'s
    /// current step wants; asks for a check of weights already replicated that it has not
    /// checked (a new leader, or an earlier leader's last change).
    fn observe_dns(
        &mut self,
        record: &MigrationRecord,
        service: &ServiceState,
        share_applied: Option<u8>,
    ) -> DnsObserved {
        if !self.config.dns_gate {
            return DnsObserved::Ungated;
        }
        let Some(want) = reconcile::desired_dns(record, service, share_applied, self.now.unix_ms)
        else {
            return DnsObserved::Pending;
        };
        let name = &record.spec.service;
        let replicated = self
            .overview
            .as_ref()
            .and_then(|o| o.dns.get(name))
            .is_some_and(|d| d == &want);
        if !replicated {
            return DnsObserved::Pending;
        }
        match self.dns_checks.get(name) {
            Some((checked, state)) if checked == &want => state.clone(),
            _ => {
                self.check_dns(name.clone(), want);
                DnsObserved::Pending
            }
        }
    }

    /// The shadow pool size of `migration`, from the sizing job it asked for.
    pub fn handle_sizing(&mut self, migration: &str, size: ShadowSize, now: Now) {
        self.now = now;
        if self.sizing.get(migration) == Some(&Sizing::Requested) {
            self.sizing
                .insert(migration.to_owned(), Sizing::Ready(size));
            self.step(migration);
        }
    }

    /// The forecast a pool job asked for (see [`Controller::poll_pool_job`]).
    pub fn handle_pool_forecast(
        &mut self,
        service: &str,
        region: &str,
        forecast: PoolForecast,
        now: Now,
    ) {
        self.now = now;
        if let Some(pool) = self.pools.get_mut(&(service.to_owned(), region.to_owned())) {
            pool.asked = false;
            pool.forecast = Some(forecast);
        }
    }

    /// The next SLO query to ask Prometheus. Hand its answer to
    /// [`Controller::handle_slo_answer`].
    pub fn poll_slo_query(&mut self) -> Option<SloQueryJob> {
        self.slo_query_jobs.pop_front()
    }

    /// Prometheus's answer to a [`SloQueryJob`]. It counts for the step only when the
    /// migration is still in `phase`; the next round judges with it.
    pub fn handle_slo_answer(
        &mut self,
        migration: &str,
        phase: Phase,
        asked_at_ms: u64,
        answer: SloAnswer,
        now: Now,
    ) {
        self.now = now;
        self.events.push_back(Event::SloQueried {
            result: answer.label(),
        });
        let Some(queries) = self.slo_queries.get_mut(migration) else {
            return;
        };
        if queries.phase != phase {
            return;
        }
        queries.in_flight = false;
        let problem = match &answer {
            SloAnswer::Data { .. } => None,
            SloAnswer::NoData(why) => Some(format!("no data ({why})")),
            SloAnswer::Error(why) => Some(format!("Prometheus unreachable or refused ({why})")),
        };
        if let Some(problem) = problem {
            let due = queries
                .logged_at
                .is_none_or(|at| now.at.saturating_duration_since(at) >= SLO_PROBLEM_LOG_INTERVAL);
            if due {
                queries.logged_at = Some(now.at);
                tracing::warn!(migration, %phase, %problem, "the step holds: its SLO cannot be judged");
            }
        }
        if let SloAnswer::Data {
            source_p99_ms: Some(source),
            ..
        } = &answer
            && source.is_finite()
        {
            let baseline = self.slo_baselines.entry(migration.to_owned()).or_default();
            if baseline.len() == MAX_BASELINE_SAMPLES {
                baseline.pop_front();
            }
            baseline.push_back(*source);
        }
        if asked_at_ms >= queries.share_applied_at_ms {
            if let SloAnswer::Data { p99_ms, .. } = &answer
                && queries.target_p99_ms.len() < MAX_P99_SAMPLES
            {
                queries.target_p99_ms.push(*p99_ms);
            }
            queries.newest = Some((asked_at_ms, answer));
        }
    }

    /// The next pool forecast to compute. Hand its result to
    /// [`Controller::handle_pool_forecast`].
    pub fn poll_pool_job(&mut self) -> Option<PoolJob> {
        self.pool_jobs.pop_front()
    }

    /// The next agent command to send.
    pub fn poll_command(&mut self) -> Option<Outgoing> {
        self.commands.pop_front()
    }

    /// The next command to propose. Hand its result to [`Controller::handle_proposal`].
    pub fn poll_proposal(&mut self) -> Option<Proposal> {
        self.proposals.pop_front()
    }

    /// The next shadow pool to size. Hand its result to [`Controller::handle_sizing`].
    pub fn poll_sizing(&mut self) -> Option<SizingJob> {
        self.sizing_jobs.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When the next retry falls due after the latest input (the driver runs a round then, if
    /// not before). A retry whose time passed without the round asking for it again (its
    /// effect came about otherwise) is not due: it never makes the driver spin.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ops
            .values()
            .filter_map(|op| match op.state {
                OpState::Wait { until } if until > self.now.at => Some(until),
                _ => None,
            })
            .min()
    }

    /// Ends this leadership: everything published is withdrawn.
    pub fn stand_down(&mut self) {
        for id in std::mem::take(&mut self.observed) {
            self.events.push_back(Event::Unobserved { migration: id });
        }
    }

    /// The writer's move of `id` as this leadership's operations show it: from the first fence
    /// confirmed to the last promotion confirmed. `None` when another leader may have done part
    /// of it: this leadership did not see the beginning of the phase the move runs in (the
    /// last cutover step, or the rollback), so a fence it sent again may have been answered
    /// from the agent's ledger, long after the first one held the writes.
    fn writer_window(&self, record: &MigrationRecord, to_target: bool) -> Option<Duration> {
        let id = record.spec.id.as_str();
        let (action, phase) = if to_target {
            let last = record.spec.steps_percent.len().saturating_sub(1);
            ("promote_target", Phase::CuttingOver { step: last })
        } else {
            ("promote_source", Phase::RollingBack)
        };
        if !self
            .phases_begun
            .get(id)
            .is_some_and(|begun| begun.contains(&phase))
        {
            return None;
        }
        let prefix = format!("{id}/");
        let done_at = |stage: &str| {
            let infix = format!("/{action}/{stage}/");
            self.ops
                .iter()
                .filter(|(op, _)| op.starts_with(&prefix) && op.contains(&infix))
                .map(|(_, op)| match op.state {
                    OpState::Done { at, .. } => Some(at),
                    _ => None,
                })
                .collect::<Option<Vec<Instant>>>()
                .filter(|times| !times.is_empty())
        };
        let first = done_at("fence")?.into_iter().min()?;
        let last = done_at("promote")?.into_iter().max()?;
        Some(last.saturating_duration_since(first))
    }

    /// Reports the writer's move of `id`, measured by [`Controller::writer_window`] when it
    /// was proposed (the same figure the audit log keeps).
    fn writer_moved(&mut self, id: &str, to_target: bool, window: Duration) {
        let direction = if to_target { "to_target" } else { "to_source" };
        tracing::info!(
            migration = id,
            direction,
            window_ms = window.as_millis() as u64,
            "single writer moved (first fence → last promotion confirmed; writes held meanwhile)"
        );
        self.events.push_back(Event::WriterMoved {
            direction,
            seconds: window.as_secs_f64(),
        });
    }

    fn record_mut(&mut self, id: &str) -> Option<&mut MigrationRecord> {
        self.overview.as_mut()?.migrations.get_mut(id)
    }

    fn unobserve(&mut self, id: &str) {
        if self.observed.remove(id) {
            self.events.push_back(Event::Unobserved {
                migration: id.to_owned(),
            });
        }
    }

    /// A terminal migration that a later one of its service superseded: a rolled-back one's
    /// shadows are still released (they must never serve again); once nothing of it is left
    /// to act on, this leadership forgets it, so memory stays bounded by live migrations.
    fn superseded(&mut self, id: &str) {
        let overview = self.overview.as_ref().expect("round has an overview");
        let record = overview.migrations[id].clone();
        let target = self.reports.get(&record.spec.to);
        let left = reconcile::shadow_ids(&record)
            .iter()
            .any(|shadow| target.is_some_and(|t| t.instances.iter().any(|i| &i.id == shadow)));
        if record.phase == Phase::RolledBack && left {
            let _span = tracing::info_span!("migration", migration = %id).entered();
            let in_phase_ms = self.in_phase_ms(&record);
            let due = self
                .command_context(&record, in_phase_ms)
                .map(|context| {
                    reconcile::commands(&record, &migration::Action::ReleaseShadow, &context)
                })
                .unwrap_or_default();
            for command in due {
                self.ensure(command, self.config.command_timeout);
            }
            return;
        }
        self.forget(id);
    }

    fn forget(&mut self, id: &str) {
        let prefix = format!("{id}/");
        self.ops.retain(|op, _| !op.starts_with(&prefix));
        self.rollback_started.remove(id);
        self.phase_clocks.remove(id);
        self.phases_begun.remove(id);
        self.sizing.remove(id);
        if let Some(phase) = self.stages.remove(id) {
            self.events.push_back(Event::StageCleared {
                migration: id.to_owned(),
                phase,
            });
        }
    }

    /// Every service's serving pool, toward its target: forecast (asked for when the one held
    /// no longer covers the lead time ahead), lead times, hysteresis, then the agent commands
    /// and the recycling of dormant instances past their age.
    fn run_pools(&mut self) {
        let overview = self.overview.as_ref().expect("round has an overview");
        let now = self.now;
        let mut due = Vec::new();
        let mut live = BTreeSet::new();
        for (name, service) in &overview.services {
            let region = service.primary_region.clone();
            let Some(region_spec) = overview.regions.get(&region) else {
                continue;
            };
            let prefix = reconcile::pool_prefix(overview, name, &region, None);
            let key = (name.clone(), region.clone());
            live.insert(key.clone());
            let pool = self
                .pools
                .entry(key)
                .or_insert_with(|| Pool::new(prefix.clone()));
            if pool.prefix != prefix {
                *pool = Pool::new(prefix.clone()); // a migration completed into the region
            }
            let report = self.reports.get(&region);
            let leads =
                pools::measured_leads(report, self.config.pool_lead_margin.as_millis() as u64);
            let spec = &service.spec;
            let predictive = self.config.pools && spec.pools == PoolMode::Predictive;
            let lookahead = leads.activation_ms + leads.provision_ms;
            if predictive && !pool.asked && forecast_due(pool, now.unix_ms, lookahead) {
                pool.asked = true;
                pool.asked_at_ms = now.unix_ms;
                self.pool_jobs.push_back(PoolJob {
                    service: spec.clone(),
                    region: region_spec.clone(),
                    from_ms: now.unix_ms,
                    ahead_ms: lookahead + self.config.pool_forecast_reach.as_millis() as u64,
                    activation_secs: leads.activation_ms as f64 / 1_000.0,
                });
            }
            let forecast = pool.forecast.as_ref().filter(|_| predictive);
            let mut claims: Vec<CapacityClaim> = overview
                .capacity
                .values()
                .filter(|c| c.service == *name && c.region == region)
                .cloned()
                .collect();
            claims.sort_by_key(|c| (c.created_ms, c.id.len(), c.id.clone()));
            // The load its front measured: all a reactive pool goes by; for a predictive one,
            // a surprise above the forecast, met by activating dormant instances first (the
            // warm/dormant split counts on exactly that) and launching cold ones beyond them.
            let needed_now = pools::instances_for(
                pools::measured_rps(report).unwrap_or(0.0),
                spec.capacity_rps_per_instance,
            );
            let desired = pools::raise(
                pools::desired(
                    forecast,
                    now.unix_ms,
                    leads,
                    spec.min_instances,
                    spec.max_instances,
                ),
                &claims,
                now.unix_ms,
                leads,
                needed_now,
                spec.max_instances,
            );
            let slice_now = forecast.and_then(|f| f.at(now.unix_ms)).cloned();
            if pool.hold.is_none() && report.is_none() {
                // A new leadership holds no target before the region reported: it adopts the
                // pool as it stands (below), it does not start from the floor.
                continue;
            }
            // Shrinking waits whole slices: the forecast's, or minutes without one.
            let slice_start = Some(
                slice_now
                    .as_ref()
                    .map_or(now.unix_ms - now.unix_ms % UNFORECAST_SLICE_MS, |s| {
                        s.start_ms
                    }),
            );
            // A new leadership (or a new pool) starts from what the region runs, at least: the
            // pool the previous leader sized shrinks only through the hysteresis, so a failover
            // does not drop serving instances before the first forecast is back.
            let running = pools::actual(&prefix, report);
            let hold = pool.hold.get_or_insert_with(|| {
                // The slice under way counts as no shrink slice: it is only partly seen.
                pool.counted_slice = slice_start;
                PoolState::new(pools::at_least(desired, running))
            });
            let grows = desired.warm > hold.current.warm || desired.total() > hold.current.total();
            let target = if grows || slice_start != pool.counted_slice {
                pool.counted_slice = slice_start;
                hold.handle_target(desired, &self.config.hysteresis)
            } else {
                hold.current
            };
            if pool.logged != Some(target) {
                pool.logged = Some(target);
                tracing::info!(
                    service = %name,
                    %region,
                    warm = target.warm,
                    dormant = target.dormant,
                    slice = ?slice_now.as_ref().map(|s| (s.start_ms, s.quantile)),
                    claimed = claims::held_at(&claims, now.unix_ms),
                    needed_now,
                    "pool target"
                );
            }
            pools::track_claims(
                &mut pool.claims,
                &claims,
                &prefix,
                report,
                now.unix_ms,
                leads,
            );
            let base = format!("{name}/pool/{region}/{prefix}");
            let pool_spec = PoolSpec {
                base: &base,
                region: &region,
                prefix: &prefix,
                target,
                stateful: spec.replication != crate::state::ReplicationKind::None,
            };
            due.extend(pools::pool_commands(&pool_spec, report));
            if let Some(range) = &spec.instance_limits {
                // The load each serving instance will carry: the forecast's for now and one
                // activation lead ahead (limits grow before the load), or what the front
                // measured for a reactive pool.
                let rps = match spec.pools {
                    PoolMode::Reactive => pools::measured_rps(report).unwrap_or(0.0),
                    PoolMode::Predictive => [now.unix_ms, now.unix_ms + leads.activation_ms]
                        .into_iter()
                        .filter_map(|t| forecast.and_then(|f| f.at(t)))
                        .map(|s| s.quantile)
                        .fold(0.0, f64::max),
                };
                let limits = pools::limits_for(
                    range,
                    rps / f64::from(target.warm.max(1)),
                    spec.capacity_rps_per_instance,
                );
                due.extend(pools::limit_commands(&pool_spec, report, limits));
            }
            due.extend(recycle(
                pool,
                &base,
                &region,
                target,
                report,
                now.at,
                self.config.max_dormant_age,
            ));
            self.events.push_back(Event::Pool(Box::new(PoolView {
                service: name.clone(),
                region: region.clone(),
                prefix: prefix.clone(),
                target,
                actual: pools::actual(&prefix, report),
                slice: slice_now,
                forecast: match (spec.pools, pool.forecast.as_ref()) {
                    (PoolMode::Reactive, _) => "reactive: sized from the front's load".to_owned(),
                    (PoolMode::Predictive, None) => "not forecast yet".to_owned(),
                    (PoolMode::Predictive, Some(f)) => f.reason.clone(),
                },
                upcoming: pool
                    .forecast
                    .iter()
                    .filter(|_| predictive)
                    .flat_map(|f| {
                        f.slices
                            .iter()
                            .filter(|s| s.start_ms + f.slice_ms > now.unix_ms)
                    })
                    .cloned()
                    .collect(),
                claims: pool.claims.values().cloned().collect(),
            })));
        }
        self.pools.retain(|key, _| live.contains(key));
        for command in due {
            self.ensure(command, self.config.command_timeout);
        }
    }

    fn run_schedules(&mut self) {
        let overview = self.overview.as_ref().expect("round has an overview");
        let requests: Vec<MigrationRequest> =
            reconcile::due_schedule_requests(overview, self.now.unix_ms);
        for request in requests {
            let key = request.schedule_key.clone().unwrap_or_default();
            if !self.schedule_keys.insert(key.clone()) {
                continue;
            }
            tracing::info!(schedule = %key, to = %request.to, "schedule leg due: creating its migration");
            self.propose(
                ProposalKey::Schedule(key),
                "create_migration",
                Command::CreateMigration {
                    request,
                    at_ms: self.now.unix_ms,
                },
                OnApplied::Schedule,
            );
        }
    }

    /// Each game day's next step ([`game_day::next`]), one proposal in flight per game day.
    fn run_game_days(&mut self) {
        let overview = self.overview.as_ref().expect("round has an overview");
        let now_ms = self.now.unix_ms;
        let mut steps = Vec::new();
        for run in overview.game_days.values() {
            let name = &run.spec.name;
            if !run.running(now_ms) {
                self.game_day_traffic.remove(name);
                continue;
            }
            let key = ProposalKey::GameDay(name.clone());
            if self.in_flight.contains_key(&key) {
                continue;
            }
            let traffic = self.game_day_traffic.get(name).copied().unwrap_or_default();
            match game_day::next(run, overview, &traffic, now_ms) {
                game_day::Next::Wait => {}
                game_day::Next::Migrate(request) => {
                    tracing::info!(game_day = %name, service = %request.service, to = %request.to,
                        "game day: creating its next migration");
                    steps.push((
                        key,
                        "create_migration",
                        Command::CreateMigration {
                            request,
                            at_ms: now_ms,
                        },
                    ));
                }
                game_day::Next::Record(report) => {
                    tracing::info!(game_day = %name, passed = report.passed,
                        "game day over: recording its verdict");
                    steps.push((
                        key,
                        "record_drill",
                        Command::RecordDrill {
                            drill: *report,
                            at_ms: now_ms,
                        },
                    ));
                }
            }
        }
        for (key, kind, command) in steps {
            self.propose(key, kind, command, OnApplied::GameDay(kind));
        }
    }

    fn propose(&mut self, key: ProposalKey, kind: &'static str, command: Command, on: OnApplied) {
        self.in_flight.insert(key.clone(), on);
        self.proposals.push_back(Proposal { key, kind, command });
    }

    /// One decision for one migration: observe, decide, then propose or ensure.
    fn step(&mut self, id: &str) {
        if self
            .in_flight
            .contains_key(&ProposalKey::Migration(id.to_owned()))
        {
            return;
        }
        let count = self.steps.entry(id.to_owned()).or_default();
        *count += 1;
        if *count > STEPS_PER_ROUND {
            return;
        }
        let Some(overview) = self.overview.as_ref() else {
            return;
        };
        let Some(record) = overview.migrations.get(id).cloned() else {
            return;
        };
        let Some(service) = overview.services.get(&record.spec.service).cloned() else {
            return;
        };
        let _span = tracing::info_span!("migration", migration = %id).entered();
        let mut seen =
            reconcile::observe(&record, &service, overview, &self.reports, &Ops(&self.ops));
        seen.slo = slo_reading(&mut self.slo, &record, &seen, &self.reports);
        // One reading of the phase clock for the whole step: the Prometheus windows on its
        // Unix-ms scale, the decision and the commands on the time in the phase.
        let in_phase_ms = self.in_phase_ms(&record);
        let phase_now_ms = self
            .phase_clock(&record)
            .since_ms
            .saturating_add(in_phase_ms);
        seen.slo_queried = self.slo_queried(&record, seen.share_applied, phase_now_ms);
        seen.dns = self.observe_dns(&record, &service, seen.share_applied);
        if record.phase == Phase::Warming {
            seen.warmup = warmup_reading(&record, &service, &self.reports);
        }
        self.export_stage(&record);
        if !record.phase.is_terminal() {
            self.observed.insert(id.to_owned());
            self.events.push_back(Event::Observed {
                migration: id.to_owned(),
                seen: Box::new(seen.clone()),
            });
        }
        let time = migration::DecisionTime {
            wall_ms: self.now.unix_ms,
            in_phase_ms,
        };
        let decision = migration::decide_at(&record, &seen, time);
        if let Some(promoted) = decision.promoted {
            let window = self.writer_window(&record, promoted);
            self.propose(
                ProposalKey::Migration(id.to_owned()),
                "set_promoted",
                Command::SetPromoted {
                    id: id.to_owned(),
                    promoted,
                    fence_window_ms: window.map(|w| w.as_millis() as u64),
                    term: self.term,
                    at_ms: self.now.unix_ms,
                },
                OnApplied::Promoted {
                    id: id.to_owned(),
                    promoted,
                    window,
                },
            );
            return;
        }
        if let Some(transition) = decision.transition {
            self.propose_transition(&record, transition);
            return;
        }
        let mut due = Vec::new();
        if let Some(context) = self.command_context(&record, time.in_phase_ms) {
            for action in &decision.actions {
                due.extend(reconcile::commands(&record, action, &context));
            }
        }
        let warm_timeout = self.config.command_timeout
            + Duration::from_millis(service.spec.warmup.mix.max_duration_ms);
        let lag_timeout =
            self.config.command_timeout + Duration::from_millis(self.config.zero_lag_timeout_ms);
        // A rollback's commands are never given up: moving the writer back and lifting the
        // source's fence have no deadline, and giving up would leave the migration waiting
        // for the next leader with no region taking writes.
        let capped = record.phase != Phase::RollingBack;
        for command in due {
            let timeout = match command.action {
                AgentAction::Warm { .. } => warm_timeout,
                AgentAction::WaitForZeroLag { .. } => lag_timeout,
                _ => self.config.command_timeout,
            };
            self.ensure_with(command, timeout, capped);
        }
        self.ensure_dns(&record, &service, seen.share_applied);
    }

    /// A step judged by Prometheus: what it answered since the share applied, and a query
    /// job when one is due (at most one in flight, one a [`SLO_QUERY_INTERVAL`]). Times are
    /// on the migration's phase clock (`now_ms`), as the windows they are compared with.
    fn slo_queried(
        &mut self,
        record: &MigrationRecord,
        applied: Option<u8>,
        now_ms: u64,
    ) -> Option<QueriedSlo> {
        let id = &record.spec.id;
        let SloSource::Prometheus(source) = &record.spec.slo.source else {
            return None;
        };
        let judged = matches!(record.phase, Phase::CuttingOver { .. } | Phase::Draining);
        if !judged {
            self.slo_baselines.remove(id);
        }
        if !judged || applied != Some(record.spec.target_share(record.phase)) {
            self.slo_queries.remove(id);
            return None;
        }
        let now = self.now;
        let queries = self
            .slo_queries
            .entry(id.clone())
            .or_insert_with(|| SloQueries::fresh(record.phase, now_ms, None));
        if queries.phase != record.phase {
            *queries = SloQueries::fresh(record.phase, now_ms, queries.logged_at);
        }
        let due = queries
            .asked_at
            .is_none_or(|at| now.at.saturating_duration_since(at) >= SLO_QUERY_INTERVAL);
        if due && !queries.in_flight {
            queries.asked_at = Some(now.at);
            queries.in_flight = true;
            let (error_ratio_query, latency_p99_query) = source.render(
                &record.spec.service,
                &record.spec.to,
                record.spec.analysis_window_ms,
            );
            let source_latency_p99_query = (record.spec.slo.judgement == SloJudgement::Compare)
                .then(|| {
                    source
                        .render(
                            &record.spec.service,
                            &record.spec.from,
                            record.spec.analysis_window_ms,
                        )
                        .1
                });
            self.slo_query_jobs.push_back(SloQueryJob {
                migration: id.clone(),
                phase: record.phase,
                asked_at_ms: now_ms,
                url: source.url.clone(),
                error_ratio_query,
                latency_p99_query,
                source_latency_p99_query,
            });
        }
        Some(QueriedSlo {
            share_applied_at_ms: queries.share_applied_at_ms,
            newest: queries.newest.clone(),
            target_p99_ms: queries.target_p99_ms.clone(),
            source_p99_ms: self
                .slo_baselines
                .get(id)
                .map(|b| b.iter().copied().collect())
                .unwrap_or_default(),
        })
    }

    /// `record`'s phase clock, built when this leadership first sees its phase.
    fn phase_clock(&mut self, record: &MigrationRecord) -> PhaseClock {
        let now = self.now;
        let fresh = PhaseClock {
            phase: record.phase,
            since_ms: record.phase_since_ms,
            seen_at: now.at,
            age_ms: now.unix_ms.saturating_sub(record.phase_since_ms),
        };
        let clock = self
            .phase_clocks
            .entry(record.spec.id.clone())
            .or_insert(fresh);
        if clock.phase != record.phase {
            *clock = fresh;
            self.phases_begun
                .entry(record.spec.id.clone())
                .or_default()
                .push(record.phase);
        }
        *clock
    }

    /// How long `record` has been in its phase, ms: the phase's age when this leadership
    /// first saw it plus the monotonic time since. See [`PhaseClock`].
    fn in_phase_ms(&mut self, record: &MigrationRecord) -> u64 {
        let clock = self.phase_clock(record);
        let since_seen = self.now.at.saturating_duration_since(clock.seen_at);
        clock.age_ms.saturating_add(since_seen.as_millis() as u64)
    }

    /// What command planning needs for `record`, `in_phase_ms` into its phase; `None` when
    /// its service left the state.
    fn command_context(
        &self,
        record: &MigrationRecord,
        in_phase_ms: u64,
    ) -> Option<CommandContext<'_>> {
        let overview = self.overview.as_ref()?;
        let service = overview.services.get(&record.spec.service)?;
        Some(CommandContext {
            overview,
            reports: &self.reports,
            warm_plan: warm_plan(record, service, &self.reports),
            zero_lag_timeout_ms: self.config.zero_lag_timeout_ms,
            in_phase_ms,
            shadow_keep_ms: self.config.shadow_keep_ms,
        })
    }

    fn propose_transition(&mut self, record: &MigrationRecord, transition: migration::Transition) {
        let id = record.spec.id.clone();
        let mut reason = transition.reason.clone();
        let mut shadow_instances = None;
        if transition.to == Phase::Provisioning {
            let Some(size) = self.shadow_size(record) else {
                return; // the forecast is still running
            };
            shadow_instances = Some(size.instances);
            reason = format!("{reason}; shadow pool {}: {}", size.instances, size.reason);
        }
        let mut rollback_ms = None;
        if transition.to == Phase::RolledBack {
            let confirmed = match self.ops.get(&reconcile::set_share_op(record, 0)) {
                Some(Operation {
                    state: OpState::Done { at, .. },
                    ..
                }) => *at,
                _ => self.now.at,
            };
            let ms = match self.rollback_started.get(&id) {
                Some(started) => confirmed.saturating_duration_since(*started).as_millis() as u64,
                // This leader did not see the rollback begin: the phase start is the best it
                // knows.
                None => self.in_phase_ms(record),
            };
            rollback_ms = Some(ms);
            reason =
                format!("{reason}; traffic back on the source {ms} ms after the rollback began");
        }
        let from = record.phase;
        self.propose(
            ProposalKey::Migration(id.clone()),
            "transition",
            Command::Transition {
                id: id.clone(),
                from,
                to: transition.to,
                reason: reason.clone(),
                shadow_instances,
                rollback_ms,
                term: self.term,
                at_ms: self.now.unix_ms,
            },
            OnApplied::Transition {
                id,
                from,
                to: transition.to,
                reason,
                shadow_instances,
                rollback_ms,
            },
        );
    }

    fn transition_applied(
        &mut self,
        id: &str,
        from: Phase,
        to: Phase,
        reason: &str,
        shadow_instances: Option<u32>,
        rollback_ms: Option<u64>,
    ) {
        let _span = tracing::info_span!("migration", migration = %id).entered();
        tracing::info!(%from, %to, %reason, "transition applied");
        let now = self.now;
        let Some(left) = self.record_mut(id).map(|record| record.clone()) else {
            return;
        };
        let seconds = self.in_phase_ms(&left) as f64 / 1_000.0;
        let Some(record) = self.record_mut(id) else {
            return;
        };
        if let Some(n) = shadow_instances {
            record.shadow_instances = n;
        }
        record.phase = to;
        record.phase_since_ms = now.unix_ms;
        self.events.push_back(Event::PhaseLeft {
            phase: from.name(),
            seconds,
        });
        if to == Phase::RollingBack {
            self.rollback_started.insert(id.to_owned(), now.at);
            let cause = if reason.starts_with("SLO breach") {
                "slo"
            } else if reason.starts_with("operator") {
                "operator"
            } else if reason.starts_with("DNS") {
                "dns"
            } else {
                "deadline"
            };
            self.events.push_back(Event::RollbackStarted { cause });
        }
        if let Some(ms) = rollback_ms {
            tracing::info!(rollback_ms = ms, "traffic back on the source");
            self.events.push_back(Event::RolledBack {
                migration: id.to_owned(),
                rollback_ms: ms,
            });
        }
        self.sizing.remove(id);
        self.step(id);
    }

    /// The shadow pool size for `record`, once its sizing job answered (asked on first call).
    fn shadow_size(&mut self, record: &MigrationRecord) -> Option<ShadowSize> {
        let id = &record.spec.id;
        match self.sizing.get(id) {
            Some(Sizing::Ready(size)) => return Some(size.clone()),
            Some(Sizing::Requested) => return None,
            None => {}
        }
        let overview = self.overview.as_ref().expect("round has an overview");
        let found = overview
            .services
            .get(&record.spec.service)
            .zip(overview.regions.get(&record.spec.to));
        let Some((service, region)) = found else {
            let size = ShadowSize {
                instances: record.shadow_instances,
                reason: "service or region missing from the state".to_owned(),
            };
            self.sizing.insert(id.clone(), Sizing::Ready(size.clone()));
            return Some(size);
        };
        self.sizing_jobs.push_back(SizingJob {
            migration: id.clone(),
            service: service.spec.clone(),
            region: region.clone(),
            cutover_at_ms: record.spec.cutover_at_ms,
        });
        self.sizing.insert(id.clone(), Sizing::Requested);
        None
    }

    fn export_stage(&mut self, record: &MigrationRecord) {
        let id = &record.spec.id;
        let phase = record.phase.name();
        let previous = self.stages.insert(id.clone(), phase);
        let (done, _) = migration::progress(record);
        self.events.push_back(Event::Stage {
            migration: id.clone(),
            phase,
            previous: previous.filter(|p| *p != phase),
            done,
        });
    }

    fn ensure_dns(
        &mut self,
        record: &MigrationRecord,
        service: &ServiceState,
        share_applied: Option<u8>,
    ) {
        let Some(want) = reconcile::desired_dns(record, service, share_applied, self.now.unix_ms)
        else {
            return;
        };
        let name = &record.spec.service;
        let overview = self.overview.as_ref().expect("round has an overview");
        let key = ProposalKey::Dns(name.clone());
        if overview.dns.get(name) == Some(&want)
            || self.dns_proposed.get(name) == Some(&want)
            || self.in_flight.contains_key(&key)
        {
            return;
        }
        self.propose(
            key,
            "set_dns_weights",
            Command::SetDnsWeights {
                service: name.clone(),
                dns: want.clone(),
                reason: format!("{} {}", record.spec.id, record.phase),
                term: self.term,
                at_ms: self.now.unix_ms,
            },
            OnApplied::Dns {
                service: name.clone(),
                dns: want,
            },
        );
    }

    /// Makes `command` hold: sends it unless it succeeded (and was not undone since), is in
    /// flight, waits for its backoff (or its pause after failing `max_attempts` times), or
    /// depends on an operation that has not succeeded yet.
    fn ensure(&mut self, command: DueCommand, timeout: Duration) {
        self.ensure_with(command, timeout, true);
    }

    /// [`Controller::ensure`], paused after every `max_attempts` failed answers only if
    /// `capped`.
    fn ensure_with(&mut self, command: DueCommand, timeout: Duration, capped: bool) {
        let now = self.now.at;
        if let Some(after) = &command.after
            && !matches!(
                self.ops.get(after).map(|r| &r.state),
                Some(OpState::Done { .. })
            )
        {
            return;
        }
        let report_at = self.received.get(&command.region).copied();
        let retry_min = self.config.retry_min;
        let term = self.term;
        let op = self
            .ops
            .entry(command.op_id.clone())
            .or_insert_with(|| Operation {
                heal: 0,
                term,
                attempt: 0,
                backoff: retry_min,
                state: OpState::Wait { until: now },
                kind: action_kind(&command.action),
                capped,
            });
        op.capped = capped;
        match op.state {
            OpState::InFlight => return,
            OpState::Done { at, .. } => {
                // Asked for again after it succeeded: the effect is gone only if a report that
                // arrived after the success still lacks it.
                if !command.observable || report_at.is_none_or(|r| r <= at) {
                    return;
                }
                tracing::info!(op = %command.op_id, region = %command.region, "effect lost since it succeeded: healing");
                op.heal += 1;
                op.attempt = 0;
                op.backoff = retry_min;
            }
            OpState::Wait { until } if until > now => return,
            OpState::Wait { .. } => {}
        }
        op.state = OpState::InFlight;
        let op_id = op.id(&command.op_id);
        tracing::debug!(%op_id, attempt = op.attempt, region = %command.region, "sending");
        self.commands.push_back(Outgoing {
            command: AgentCommand {
                op_id,
                term: self.term,
                region: command.region,
                action: command.action,
            },
            operation: command.op_id,
            kind: op.kind,
            timeout,
        });
    }
}

/// A capped operation that failed `max_attempts` times in a row waits this many times the
/// backoff's cap before its next attempts.
const CAPPED_PAUSE_FACTOR: u32 = 4;

/// How long a pool without usable history waits before it asks for a forecast again.
const FORECAST_RETRY_MS: u64 = 60_000;
/// Without a forecast slice, shrink hysteresis counts minutes.
const UNFORECAST_SLICE_MS: u64 = 60_000;

/// Whether `pool` needs a new forecast: it has none, the one it holds no longer reaches one
/// lead time ahead, or (no usable history last time) a minute passed.
fn forecast_due(pool: &Pool, now_ms: u64, lookahead_ms: u64) -> bool {
    match &pool.forecast {
        None => true,
        Some(f) if f.slices.is_empty() => {
            now_ms.saturating_sub(pool.asked_at_ms) >= FORECAST_RETRY_MS
        }
        Some(f) => !f.covers(now_ms + lookahead_ms),
    }
}

/// Dormant instances of `pool` past `max_age` (since this leadership first saw them dormant)
/// are removed; the pool's provisioning then creates them afresh (stale images, certificates).
fn recycle(
    pool: &mut Pool,
    base: &str,
    region: &str,
    target: PoolTarget,
    report: Option<&AgentReport>,
    now: Instant,
    max_age: Duration,
) -> Vec<DueCommand> {
    use umbra_proto::agent::InstanceState;
    let members = pools::members(&pool.prefix, report);
    let mut dormant = BTreeSet::new();
    for (k, instance) in &members {
        let parked = matches!(
            instance.state,
            InstanceState::Dormant | InstanceState::Stopped
        );
        if *k <= target.warm || *k > target.total() || !parked {
            continue;
        }
        dormant.insert(instance.id.clone());
        let since = *pool.dormant_since.entry(instance.id.clone()).or_insert(now);
        if now.saturating_duration_since(since) >= max_age
            && !pool.recycling.contains_key(&instance.id)
        {
            let n = pool.recycled.entry(instance.id.clone()).or_default();
            *n += 1;
            pool.recycling.insert(instance.id.clone(), *n);
        }
    }
    pool.dormant_since.retain(|id, _| dormant.contains(id));
    // Gone: the removal is done (provisioning recreates it), or it was needed again.
    pool.recycling.retain(|id, _| dormant.contains(id));
    pool.recycling
        .iter()
        .map(|(id, n)| DueCommand {
            op_id: format!("{base}/recycle/{id}/{n}"),
            region: region.to_owned(),
            action: AgentAction::Remove {
                instance: id.clone(),
            },
            after: None,
            observable: false,
        })
        .collect()
}

/// The SLO reading of the current step: what the TARGET front served since the step's
/// share was confirmed on the source front.
fn slo_reading(
    bases: &mut BTreeMap<String, SloBase>,
    record: &MigrationRecord,
    seen: &Observations,
    reports: &BTreeMap<String, AgentReport>,
) -> Option<SloReading> {
    let id = &record.spec.id;
    if !matches!(record.phase, Phase::CuttingOver { .. } | Phase::Draining) {
        bases.remove(id);
        return None;
    }
    if seen.share_applied != Some(record.spec.target_share(record.phase)) {
        return None;
    }
    let front = reports.get(&record.spec.to)?.front.as_ref()?;
    let fresh = SloBase {
        phase: record.phase,
        requests: front.requests_total,
        errors: front.errors_total,
    };
    let base = bases.entry(id.clone()).or_insert(fresh);
    if base.phase != record.phase || front.requests_total < base.requests {
        *base = fresh;
    }
    let samples = front.requests_total - base.requests;
    if samples == 0 {
        return None;
    }
    let errors = front.errors_total.saturating_sub(base.errors);
    Some(SloReading {
        samples,
        error_rate: errors as f64 / samples as f64,
        p99_ms: front.window_p99_ms.unwrap_or(0.0),
    })
}

/// The warm-up gate's last reading on the shadow furthest from passing (fewest requests
/// among those not ready), with the thresholds of the plan the warmer runs.
fn warmup_reading(
    record: &MigrationRecord,
    service: &ServiceState,
    reports: &BTreeMap<String, AgentReport>,
) -> Option<migration::WarmupReading> {
    let shadows = reconcile::shadow_ids(record);
    let gate = warm_plan(record, service, reports).gate;
    reports
        .get(&record.spec.to)?
        .warmups
        .iter()
        .filter(|w| shadows.contains(&w.instance) && w.phase != WarmupPhase::Ready)
        .min_by_key(|w| w.requests)
        .map(|w| migration::WarmupReading {
            instance: w.instance.clone(),
            elapsed_ms: w.elapsed_ms,
            requests: w.requests,
            min_requests: gate.min_requests,
            window_p99_ms: w.window_p99_ms,
            max_p99_ms: gate.reference_p99_ms * (1.0 + gate.p99_tolerance_pct / 100.0),
            window_error_rate: w.window_error_rate,
            max_error_rate: gate.max_error_rate,
        })
}

/// The warm-up plan with its reference p99: the source front's p99 when it is known, but
/// never below the plan's own reference (a source serving from cache can report a
/// sub-millisecond p99 that no fresh instance meets within a warm-up cap).
fn warm_plan(
    record: &MigrationRecord,
    service: &ServiceState,
    reports: &BTreeMap<String, AgentReport>,
) -> WarmupSpec {
    let mut plan = service.spec.warmup.clone();
    if let Some(p99) = reports
        .get(&record.spec.from)
        .and_then(|r| r.front.as_ref())
        .and_then(|f| f.window_p99_ms)
    {
        plan.gate.reference_p99_ms = plan.gate.reference_p99_ms.max(p99);
    }
    plan
}

enum Next {
    Done,
    Retry { new_id: bool },
}

/// What a delivery means for the operation: success, a retry under the same id (the agent
/// did not record it: refusals, lost answers), or a retry under a new id (the agent recorded a
/// failure and would repeat it).
fn classify(delivery: &Delivery) -> (&'static str, Next) {
    match delivery {
        Delivery::Answered(CommandOutcome::Done(CommandResult::Warmup(p)))
            if p.phase != WarmupPhase::Ready =>
        {
            ("not_ready", Next::Retry { new_id: true })
        }
        Delivery::Answered(CommandOutcome::Done(_)) => ("done", Next::Done),
        Delivery::Answered(CommandOutcome::Refused(_)) => {
            ("refused", Next::Retry { new_id: false })
        }
        Delivery::Answered(CommandOutcome::Failed { .. }) => {
            ("failed", Next::Retry { new_id: true })
        }
        Delivery::Duplicate => ("duplicate", Next::Retry { new_id: false }),
        Delivery::Unanswered(_) => ("unanswered", Next::Retry { new_id: false }),
    }
}

fn action_kind(action: &AgentAction) -> &'static str {
    use AgentAction::*;
    match action {
        Provision { .. } => "provision",
        Start { .. } => "start",
        Activate { .. } => "activate",
        Deactivate { .. } => "deactivate",
        Pause { .. } => "pause",
        Resume { .. } => "resume",
        Stop { .. } => "stop",
        Remove { .. } => "remove",
        Warm { .. } => "warm",
        StartReplication { .. } => "start_replication",
        FenceSource { .. } => "fence_source",
        WaitForZeroLag { .. } => "wait_for_zero_lag",
        Promote { .. } => "promote",
        StopReplication { .. } => "stop_replication",
        UnfenceSource { .. } => "unfence_source",
        SetShare { .. } => "set_share",
        SetLimits { .. } => "set_limits",
    }
}

#[cfg(test)]
mod tests;
