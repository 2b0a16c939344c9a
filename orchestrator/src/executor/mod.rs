//! The migration executor: on the Raft leader only, it turns the replicated state into agent
//! commands, DNS weights and phase transitions. Every tick (and whenever an agent answers) it
//! reads the overview, builds each live migration's [`Observations`] from the agents' latest
//! reports ([`reconcile::observe`]), asks [`migration::decide`] what must hold and what comes next,
//! proposes the transition (stamped with this leader's term and the clock's `now`; a rejection
//! just means the state moved: re-read), and makes each action hold through the
//! [`AgentGateway`] with deterministic operation ids ([`reconcile::commands`]). An operation is sent
//! again only when its outcome is missing or failed, with exponential backoff; a failed one
//! gets a new id (`…/r{n}`) because the agent answers a repeated id with its first outcome.
//!
//! Also here: sizing the shadow pool from the forecast when provisioning starts
//! ([`demand`]), the DNS weights that follow each confirmed cutover step (proposed as
//! `SetDnsWeights`, then verified on every configured DNS server), the home pool of each
//! service in its primary region, follow-the-sun schedules, Prometheus metrics ([`metrics`])
//! and the rollback time (breach detected → share 0 confirmed on the source), which is logged,
//! exported and written into the audit reason of the `rolled_back` transition as
//! `rollback_ms=N`.
//!
//! A new leader starts from nothing but the replicated state and fresh reports: it forgets
//! every previous leadership's outcomes and repeats the same ids, so agents answer from their
//! ledgers instead of acting twice. This module must not change the replicated state except
//! through proposals, and must not act while this node is not the leader.

pub mod metrics;
pub mod reconcile;
pub mod shadow_sizing;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;
use umbra_consensus::{NodeStatus, Role as RaftRole};
use umbra_proto::agent::{AgentCommand, AgentReport, CommandOutcome, CommandResult, WarmupPhase};

use self::metrics::ExecutorMetrics;
use self::reconcile::{CommandContext, DueCommand, OpView};
use self::shadow_sizing::{DemandSource, ShadowSize};
use crate::gateway::{AgentGateway, GatewayError};
use crate::migration::{self, MigrationRecord, Observations, Phase, SloReading};
use crate::state::{Command, DnsWeights, Overview, Query, QueryAnswer};
use crate::store::{Clock, ObservationBoard, Replicated};

/// Executor round period: 100 ms, a tenth of the agents' default heartbeat, so a report is
/// acted on within 100 ms of arriving (answers wake the executor at once).
pub const DEFAULT_TICK_MS: u64 = 100;
/// Longest wait for a command's outcome (a warm-up gets its plan's cap on top): 30 s covers a
/// provision plus activation of several instances on a loaded machine.
pub const DEFAULT_COMMAND_TIMEOUT_MS: u64 = 30_000;
/// `WaitForZeroLag` timeout: 10 s; writes are held while it waits, so longer is worse than
/// failing and rolling back.
pub const DEFAULT_ZERO_LAG_TIMEOUT_MS: u64 = 10_000;
/// First retry delay of an operation: 200 ms, two ticks.
pub const DEFAULT_RETRY_MIN_MS: u64 = 200;
/// Longest retry delay: 5 s, well inside the shortest phase deadline that matters (minutes).
pub const DEFAULT_RETRY_MAX_MS: u64 = 5_000;
/// Attempts (distinct operation ids) per operation before the executor stops trying and lets
/// the phase deadline roll the migration back.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// How long every DNS server has to serve new weights.
pub const DEFAULT_DNS_VERIFY_TIMEOUT_MS: u64 = 10_000;
/// Longest a proposal or read may take before the round gives up on it (the Raft node's own
/// request timeout is 5 s).
const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Transitions followed within one round for one migration, so a chain of instant
/// transitions (a breach, then the rollback) does not wait a tick each.
const TRANSITIONS_PER_ROUND: usize = 3;

/// The executor's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutorConfig {
    /// Round period, ms.
    pub tick_ms: u64,
    /// Longest wait for a command's outcome, ms.
    pub command_timeout_ms: u64,
    /// `WaitForZeroLag` timeout, ms.
    pub zero_lag_timeout_ms: u64,
    /// First retry delay, ms.
    pub retry_min_ms: u64,
    /// Longest retry delay, ms.
    pub retry_max_ms: u64,
    /// Distinct operation ids per operation at most.
    pub max_attempts: u32,
    /// DNS servers that must serve new weights (every orchestrator's embedded server); empty:
    /// no verification.
    pub dns_servers: Vec<SocketAddr>,
    /// How long they have, ms.
    pub dns_verify_timeout_ms: u64,
    /// Run follow-the-sun schedules.
    pub schedules: bool,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            tick_ms: DEFAULT_TICK_MS,
            command_timeout_ms: DEFAULT_COMMAND_TIMEOUT_MS,
            zero_lag_timeout_ms: DEFAULT_ZERO_LAG_TIMEOUT_MS,
            retry_min_ms: DEFAULT_RETRY_MIN_MS,
            retry_max_ms: DEFAULT_RETRY_MAX_MS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            dns_servers: Vec::new(),
            dns_verify_timeout_ms: DEFAULT_DNS_VERIFY_TIMEOUT_MS,
            schedules: true,
        }
    }
}

/// Why an [`ExecutorConfig`] is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecutorConfigError {
    /// A duration or count is zero.
    #[error("executor.{0} must be greater than zero")]
    Zero(&'static str),
    /// The retry bounds are inverted.
    #[error("executor.retry_min_ms must not exceed executor.retry_max_ms")]
    RetryBounds,
}

impl ExecutorConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ExecutorConfigError> {
        for (name, value) in [
            ("tick_ms", self.tick_ms),
            ("command_timeout_ms", self.command_timeout_ms),
            ("zero_lag_timeout_ms", self.zero_lag_timeout_ms),
            ("retry_min_ms", self.retry_min_ms),
            ("max_attempts", u64::from(self.max_attempts)),
            ("dns_verify_timeout_ms", self.dns_verify_timeout_ms),
        ] {
            if value == 0 {
                return Err(ExecutorConfigError::Zero(name));
            }
        }
        if self.retry_min_ms > self.retry_max_ms {
            return Err(ExecutorConfigError::RetryBounds);
        }
        Ok(())
    }
}

/// Everything the executor works with. The node builds it once.
pub struct ExecutorContext {
    /// The replicated state (proposals and linearizable reads).
    pub store: Arc<dyn Replicated>,
    /// This node's Raft status (`RaftNode::watch_status`): the executor acts only while it
    /// shows this node leading.
    pub status: watch::Receiver<NodeStatus>,
    /// The agent gateway of this node.
    pub gateway: AgentGateway,
    /// Where observations are published for `GET /v1/status`.
    pub board: ObservationBoard,
    /// Demand history for sizing.
    pub demand: Arc<dyn DemandSource>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Metric families (register them once per process with [`ExecutorMetrics::new`]).
    pub metrics: ExecutorMetrics,
    /// Settings.
    pub config: ExecutorConfig,
}

/// Starts the executor. It idles while this node follows, runs while it leads, and returns
/// when `shutdown` turns true (or its sender is dropped).
pub fn spawn(
    context: ExecutorContext,
    mut shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, ExecutorConfigError> {
    context.config.validate()?;
    let context = Arc::new(context);
    Ok(tokio::spawn(async move {
        let mut status = context.status.clone();
        loop {
            let term = tokio::select! {
                term = wait_for_leadership(&mut status) => term,
                _ = stopped(&mut shutdown) => return,
            };
            let Some(term) = term else { return };
            tracing::info!(term, "leading: executor starts");
            let mut leadership = Leadership::new(context.clone(), term);
            let mut tick = tokio::time::interval(Duration::from_millis(context.config.tick_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = leadership.wake.notified() => {}
                    _ = stopped(&mut shutdown) => {
                        leadership.stand_down();
                        return;
                    }
                }
                if !leads(&status.borrow(), term) {
                    break;
                }
                leadership.round().await;
            }
            tracing::info!(term, "no longer leading: executor stands down");
            leadership.stand_down();
        }
    }))
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

fn leads(status: &NodeStatus, term: u64) -> bool {
    status.role == RaftRole::Leader && status.term == term
}

/// Waits until this node leads; its term, or `None` when the node stopped.
async fn wait_for_leadership(status: &mut watch::Receiver<NodeStatus>) -> Option<u64> {
    loop {
        {
            let s = status.borrow_and_update();
            if s.role == RaftRole::Leader {
                return Some(s.term);
            }
        }
        status.changed().await.ok()?;
    }
}

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
struct OpRecord {
    attempt: u32,
    backoff: Duration,
    state: OpState,
}

type Ops = Arc<Mutex<HashMap<String, OpRecord>>>;

struct OpsSnapshot(HashMap<String, OpRecord>);

impl OpView for OpsSnapshot {
    fn done(&self, op_id: &str) -> Option<&CommandOutcome> {
        match &self.0.get(op_id)?.state {
            OpState::Done { outcome, .. } => Some(outcome),
            _ => None,
        }
    }
}

impl OpsSnapshot {
    fn done_at(&self, op_id: &str) -> Option<Instant> {
        match &self.0.get(op_id)?.state {
            OpState::Done { at, .. } => Some(*at),
            _ => None,
        }
    }
}

enum SizingJob {
    Running(JoinHandle<ShadowSize>),
    Ready(ShadowSize),
}

#[derive(Debug, Clone, Copy)]
struct SloBase {
    phase: Phase,
    requests: u64,
    errors: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One term of leadership: what this leader has done and seen. Dropped when it ends.
struct Leadership {
    context: Arc<ExecutorContext>,
    term: u64,
    ops: Ops,
    wake: Arc<Notify>,
    sizing: HashMap<String, SizingJob>,
    slo: HashMap<String, SloBase>,
    rollback_started: HashMap<String, Instant>,
    stage_labels: HashMap<String, &'static str>,
    dns_proposed: HashMap<String, DnsWeights>,
    schedule_keys: HashSet<String>,
    published: HashSet<String>,
}

impl Leadership {
    fn new(context: Arc<ExecutorContext>, term: u64) -> Self {
        // Reports sent to an earlier leadership of this node describe an older world.
        context.gateway.clear_reports();
        Self {
            context,
            term,
            ops: Arc::new(Mutex::new(HashMap::new())),
            wake: Arc::new(Notify::new()),
            sizing: HashMap::new(),
            slo: HashMap::new(),
            rollback_started: HashMap::new(),
            stage_labels: HashMap::new(),
            dns_proposed: HashMap::new(),
            schedule_keys: HashSet::new(),
            published: HashSet::new(),
        }
    }

    fn stand_down(&mut self) {
        for id in self.published.drain() {
            self.context.board.forget(&id);
        }
        for job in self.sizing.values() {
            if let SizingJob::Running(handle) = job {
                handle.abort();
            }
        }
    }

    async fn overview(&self) -> Option<Overview> {
        let answer = tokio::time::timeout(
            STORE_CALL_TIMEOUT,
            self.context.store.query(Query::Overview),
        )
        .await;
        match answer {
            Ok(Ok(QueryAnswer::Overview(overview))) => Some(*overview),
            Ok(Ok(other)) => {
                tracing::error!(?other, "the state answered an overview with something else");
                None
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "overview unavailable");
                None
            }
            Err(_) => {
                tracing::warn!("overview read timed out");
                None
            }
        }
    }

    /// Proposes `command`; true when it applied.
    async fn propose(&self, kind: &str, command: Command) -> bool {
        let result =
            tokio::time::timeout(STORE_CALL_TIMEOUT, self.context.store.propose(command)).await;
        let label = match &result {
            Ok(Ok(Ok(_))) => "applied",
            Ok(Ok(Err(rejected))) => {
                // Someone else moved the state (or this leader was deposed): re-read.
                tracing::info!(%rejected, kind, "proposal rejected");
                "rejected"
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, kind, "proposal failed");
                "error"
            }
            Err(_) => {
                tracing::warn!(kind, "proposal timed out");
                "error"
            }
        };
        self.context
            .metrics
            .proposals
            .with_label_values(&[kind, label])
            .inc();
        label == "applied"
    }

    async fn round(&mut self) {
        let Some(overview) = self.overview().await else {
            return;
        };
        let reports: BTreeMap<String, AgentReport> = self
            .context
            .gateway
            .reports()
            .into_iter()
            .map(|(region, r)| (region, r.report))
            .collect();
        let now_ms = self.context.clock.now_ms();
        self.ensure_home_pools(&overview, &reports);
        if self.context.config.schedules {
            self.run_schedules(&overview, now_ms).await;
        }
        let latest = reconcile::latest_migrations(&overview);
        for record in overview.migrations.values() {
            let id = record.spec.id.clone();
            let is_latest = latest.get(&record.spec.service) == Some(&id);
            if record.phase.is_terminal() {
                if self.published.remove(&id) {
                    self.context.board.forget(&id);
                }
                self.slo.remove(&id);
                if !is_latest {
                    self.forget(&id);
                    continue;
                }
            }
            let span = tracing::info_span!("migration", migration = %id);
            self.drive(record.clone(), &overview, &reports, now_ms)
                .instrument(span)
                .await;
        }
    }

    /// Drops what this leadership remembers about a migration that nothing will act on again
    /// (terminal and superseded), so memory stays bounded by the live migrations.
    fn forget(&mut self, id: &str) {
        let prefix = format!("{id}/");
        lock(&self.ops).retain(|op, _| !op.starts_with(&prefix));
        self.rollback_started.remove(id);
        self.sizing.remove(id);
        if let Some(phase) = self.stage_labels.remove(id) {
            let _ = self.context.metrics.phase.remove_label_values(&[id, phase]);
        }
    }

    fn ensure_home_pools(&self, overview: &Overview, reports: &BTreeMap<String, AgentReport>) {
        for (name, service) in &overview.services {
            let region = &service.primary_region;
            let pool = reconcile::pool_of(overview, name, region, None);
            if pool != reconcile::home_pool(overview, name, region) {
                continue;
            }
            let base = format!("{name}/home/{region}");
            for command in reconcile::ensure_pool(&base, region, &pool, reports.get(region)) {
                self.ensure(command, self.context.config.command_timeout_ms);
            }
        }
    }

    async fn run_schedules(&mut self, overview: &Overview, now_ms: u64) {
        for request in reconcile::due_schedule_requests(overview, now_ms) {
            let key = request.schedule_key.clone().unwrap_or_default();
            if !self.schedule_keys.insert(key.clone()) {
                continue;
            }
            tracing::info!(schedule = %key, to = %request.to, "schedule leg due: creating its migration");
            self.propose(
                "create_migration",
                Command::CreateMigration {
                    request,
                    at_ms: now_ms,
                },
            )
            .await;
        }
    }

    fn ops_snapshot(&self) -> OpsSnapshot {
        OpsSnapshot(lock(&self.ops).clone())
    }

    async fn drive(
        &mut self,
        mut record: MigrationRecord,
        overview: &Overview,
        reports: &BTreeMap<String, AgentReport>,
        now_ms: u64,
    ) {
        let id = record.spec.id.clone();
        let Some(service) = overview.services.get(&record.spec.service) else {
            return;
        };
        for _ in 0..TRANSITIONS_PER_ROUND {
            let ops = self.ops_snapshot();
            let mut seen = reconcile::observe(&record, service, overview, reports, &ops);
            seen.slo = self.slo_reading(&record, &seen, reports);
            self.export_stage(&record);
            if !record.phase.is_terminal() {
                self.context.board.publish(&id, seen.clone());
                self.published.insert(id.clone());
            }
            let decision = migration::decide(&record, &seen, now_ms);
            if let Some(promoted) = decision.promoted {
                let applied = self
                    .propose(
                        "set_promoted",
                        Command::SetPromoted {
                            id: id.clone(),
                            promoted,
                            term: self.term,
                            at_ms: now_ms,
                        },
                    )
                    .await;
                if !applied {
                    return;
                }
                record.promoted = promoted;
                continue;
            }
            if let Some(transition) = decision.transition {
                if !self
                    .apply_transition(&mut record, transition, &ops, overview, now_ms)
                    .await
                {
                    return;
                }
                continue;
            }
            let context = CommandContext {
                overview,
                reports,
                warm_plan: self.warm_plan(&record, service, reports),
                zero_lag_timeout_ms: self.context.config.zero_lag_timeout_ms,
            };
            let warm_timeout =
                self.context.config.command_timeout_ms + service.spec.warmup.mix.max_duration_ms;
            let lag_timeout =
                self.context.config.command_timeout_ms + self.context.config.zero_lag_timeout_ms;
            for action in &decision.actions {
                for command in reconcile::commands(&record, action, &context) {
                    let timeout_ms = match command.action {
                        umbra_proto::agent::AgentAction::Warm { .. } => warm_timeout,
                        umbra_proto::agent::AgentAction::WaitForZeroLag { .. } => lag_timeout,
                        _ => self.context.config.command_timeout_ms,
                    };
                    self.ensure(command, timeout_ms);
                }
            }
            self.ensure_dns(&record, service, overview, seen.share_applied, now_ms)
                .await;
            return;
        }
    }

    /// Proposes `transition` for `record`; on success updates `record` as the state did.
    async fn apply_transition(
        &mut self,
        record: &mut MigrationRecord,
        transition: migration::Transition,
        ops: &OpsSnapshot,
        overview: &Overview,
        now_ms: u64,
    ) -> bool {
        let id = record.spec.id.clone();
        let mut reason = transition.reason.clone();
        let mut shadow_instances = None;
        if transition.to == Phase::Provisioning {
            let Some(size) = self.sizing(record, overview) else {
                return false; // the forecast is still running
            };
            shadow_instances = Some(size.instances);
            reason = format!("{reason}; shadow pool {}: {}", size.instances, size.reason);
        }
        let mut rollback_ms = None;
        if transition.to == Phase::RolledBack {
            let confirmed = ops
                .done_at(&reconcile::set_share_op(record, 0))
                .unwrap_or_else(Instant::now);
            let ms = match self.rollback_started.get(&id) {
                Some(started) => confirmed.saturating_duration_since(*started).as_millis() as u64,
                // This leader did not see the breach: the phase start is the best it knows.
                None => now_ms.saturating_sub(record.phase_since_ms),
            };
            rollback_ms = Some(ms);
            reason = format!(
                "{reason}; rollback_ms={ms} (breach detected → share 0 confirmed on the source)"
            );
        }
        let from = record.phase;
        let applied = self
            .propose(
                "transition",
                Command::Transition {
                    id: id.clone(),
                    from,
                    to: transition.to,
                    reason: reason.clone(),
                    shadow_instances,
                    term: self.term,
                    at_ms: now_ms,
                },
            )
            .await;
        if !applied {
            return false;
        }
        tracing::info!(%from, to = %transition.to, %reason, "transition applied");
        let metrics = &self.context.metrics;
        metrics
            .phase_seconds
            .with_label_values(&[from.name()])
            .observe(now_ms.saturating_sub(record.phase_since_ms) as f64 / 1_000.0);
        if transition.to == Phase::RollingBack {
            self.rollback_started.insert(id.clone(), Instant::now());
            let cause = if reason.starts_with("SLO breach") {
                "slo"
            } else if reason.starts_with("operator") {
                "operator"
            } else {
                "deadline"
            };
            metrics.rollbacks.with_label_values(&[cause]).inc();
        }
        if let Some(ms) = rollback_ms {
            tracing::info!(rollback_ms = ms, "traffic back on the source");
            metrics
                .rollback_ms
                .with_label_values(&[id.as_str()])
                .set(ms as f64);
        }
        if let Some(n) = shadow_instances {
            record.shadow_instances = n;
        }
        record.phase = transition.to;
        record.phase_since_ms = now_ms;
        self.sizing.remove(&id);
        true
    }

    /// The shadow pool size for `record`, once the forecast finished (started on first call).
    fn sizing(&mut self, record: &MigrationRecord, overview: &Overview) -> Option<ShadowSize> {
        let id = record.spec.id.clone();
        match self.sizing.get(&id) {
            Some(SizingJob::Ready(size)) => return Some(size.clone()),
            Some(SizingJob::Running(handle)) if !handle.is_finished() => return None,
            Some(SizingJob::Running(_)) => {
                let Some(SizingJob::Running(handle)) = self.sizing.remove(&id) else {
                    unreachable!("matched above");
                };
                let size = futures::FutureExt::now_or_never(handle)
                    .and_then(Result::ok)
                    .unwrap_or_else(|| ShadowSize {
                        instances: record.shadow_instances,
                        reason: "the sizing task failed; holding the plan's minimum".to_owned(),
                    });
                self.sizing.insert(id, SizingJob::Ready(size.clone()));
                return Some(size);
            }
            None => {}
        }
        let demand = self.context.demand.clone();
        let wake = self.wake.clone();
        let spec = record.spec.clone();
        let fallback = record.shadow_instances;
        let job = {
            let cutover_at_ms = spec.cutover_at_ms;
            let found = overview
                .services
                .get(&spec.service)
                .zip(overview.regions.get(&spec.to));
            let Some((service, region_spec)) = found.map(|(s, r)| (s.spec.clone(), r.clone()))
            else {
                let size = ShadowSize {
                    instances: fallback,
                    reason: "service or region missing from the state".to_owned(),
                };
                self.sizing.insert(id, SizingJob::Ready(size.clone()));
                return Some(size);
            };
            tokio::task::spawn_blocking(move || {
                let at = chrono::DateTime::from_timestamp_millis(cutover_at_ms as i64)
                    .unwrap_or_default();
                let size =
                    shadow_sizing::size_shadow_pool(demand.as_ref(), &service, &region_spec, at);
                wake.notify_one();
                size
            })
        };
        self.sizing.insert(id, SizingJob::Running(job));
        None
    }

    /// The warm-up plan with its reference p99: the source front's p99 when it is known, but
    /// never below the plan's own reference (a source serving from cache can report a
    /// sub-millisecond p99 that no fresh instance meets within a warm-up cap).
    fn warm_plan(
        &self,
        record: &MigrationRecord,
        service: &crate::state::ServiceState,
        reports: &BTreeMap<String, AgentReport>,
    ) -> umbra_proto::agent::WarmupSpec {
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

    /// The SLO reading of the current step: what the TARGET front served since the step's
    /// share was confirmed on the source front.
    fn slo_reading(
        &mut self,
        record: &MigrationRecord,
        seen: &Observations,
        reports: &BTreeMap<String, AgentReport>,
    ) -> Option<SloReading> {
        let id = &record.spec.id;
        if !matches!(record.phase, Phase::CuttingOver { .. } | Phase::Draining) {
            self.slo.remove(id);
            return None;
        }
        if seen.share_applied != Some(record.spec.target_share(record.phase)) {
            return None;
        }
        let front = reports.get(&record.spec.to)?.front.as_ref()?;
        let base = self.slo.entry(id.clone()).or_insert(SloBase {
            phase: record.phase,
            requests: front.requests_total,
            errors: front.errors_total,
        });
        if base.phase != record.phase || front.requests_total < base.requests {
            *base = SloBase {
                phase: record.phase,
                requests: front.requests_total,
                errors: front.errors_total,
            };
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

    fn export_stage(&mut self, record: &MigrationRecord) {
        let id = record.spec.id.as_str();
        let phase = record.phase.name();
        let gauge = &self.context.metrics.phase;
        if let Some(old) = self.stage_labels.insert(id.to_owned(), phase)
            && old != phase
        {
            let _ = gauge.remove_label_values(&[id, old]);
        }
        let (done, _) = crate::migration::progress(record);
        gauge.with_label_values(&[id, phase]).set(done as i64);
    }

    async fn ensure_dns(
        &mut self,
        record: &MigrationRecord,
        service: &crate::state::ServiceState,
        overview: &Overview,
        share_applied: Option<u8>,
        now_ms: u64,
    ) {
        let Some(want) = reconcile::desired_dns(record, service, share_applied) else {
            return;
        };
        let name = &record.spec.service;
        if overview.dns.get(name) == Some(&want) || self.dns_proposed.get(name) == Some(&want) {
            return;
        }
        let reason = format!("{} {}", record.spec.id, record.phase);
        let applied = self
            .propose(
                "set_dns_weights",
                Command::SetDnsWeights {
                    service: name.clone(),
                    dns: want.clone(),
                    reason,
                    term: self.term,
                    at_ms: now_ms,
                },
            )
            .await;
        if !applied {
            self.dns_proposed.remove(name);
            return;
        }
        self.dns_proposed.insert(name.clone(), want.clone());
        let servers = self.context.config.dns_servers.clone();
        if servers.is_empty() {
            return;
        }
        let overview = overview.clone();
        let service = name.clone();
        let timeout = Duration::from_millis(self.context.config.dns_verify_timeout_ms);
        let counter = self.context.metrics.dns_verifications.clone();
        tokio::spawn(
            async move {
                let verified = crate::zone_sync::verify_weights_served(
                    &servers, &overview, &service, &want, timeout,
                )
                .await;
                match verified {
                    Ok(verified) => {
                        tracing::info!(
                            servers = verified.len(),
                            "every DNS server serves the new weights"
                        );
                        counter.with_label_values(&["ok"]).inc();
                    }
                    Err(error) => {
                        tracing::warn!(%error, "DNS servers do not serve the new weights yet");
                        counter.with_label_values(&["failed"]).inc();
                    }
                }
            }
            .in_current_span(),
        );
    }

    /// Makes `command` hold: sends it unless it succeeded, is in flight, waits for its backoff,
    /// depends on an operation that has not succeeded yet, or ran out of attempts.
    fn ensure(&self, command: DueCommand, timeout_ms: u64) {
        let config = &self.context.config;
        let now = Instant::now();
        let (op_id, attempt) = {
            let mut ops = lock(&self.ops);
            if let Some(after) = &command.after
                && !matches!(ops.get(after).map(|r| &r.state), Some(OpState::Done { .. }))
            {
                return;
            }
            let record = ops.entry(command.op_id.clone()).or_insert(OpRecord {
                attempt: 0,
                backoff: Duration::from_millis(config.retry_min_ms),
                state: OpState::Wait { until: now },
            });
            match record.state {
                OpState::InFlight | OpState::Done { .. } => return,
                OpState::Wait { until } if until > now => return,
                OpState::Wait { .. } => {}
            }
            if record.attempt >= config.max_attempts {
                return;
            }
            record.state = OpState::InFlight;
            let op_id = if record.attempt == 0 {
                command.op_id.clone()
            } else {
                format!("{}/r{}", command.op_id, record.attempt)
            };
            (op_id, record.attempt)
        };
        let kind = action_kind(&command.action);
        let agent_command = AgentCommand {
            op_id: op_id.clone(),
            term: self.term,
            region: command.region.clone(),
            action: command.action,
        };
        let gateway = self.context.gateway.clone();
        let ops = self.ops.clone();
        let wake = self.wake.clone();
        let metrics = self.context.metrics.clone();
        let base = command.op_id;
        let retry_max = Duration::from_millis(config.retry_max_ms);
        tracing::debug!(%op_id, attempt, region = %agent_command.region, "sending");
        tokio::spawn(
            async move {
                let result = gateway
                    .send(agent_command, Duration::from_millis(timeout_ms))
                    .await;
                let (class, next) = classify(&result);
                metrics.commands.with_label_values(&[kind, class]).inc();
                {
                    let mut ops = lock(&ops);
                    let Some(record) = ops.get_mut(&base) else {
                        return;
                    };
                    match next {
                        Next::Done => {
                            let outcome = result.clone().expect("classified as done");
                            record.state = OpState::Done {
                                outcome,
                                at: Instant::now(),
                            };
                        }
                        Next::Retry { new_id } => {
                            if new_id {
                                record.attempt += 1;
                            }
                            record.state = OpState::Wait {
                                until: Instant::now() + record.backoff,
                            };
                            record.backoff = (record.backoff * 2).min(retry_max);
                        }
                    }
                }
                match &result {
                    Ok(CommandOutcome::Done(_)) if class == "done" => {
                        tracing::debug!(%op_id, "done")
                    }
                    Ok(outcome) => tracing::info!(%op_id, ?outcome, "not done; will retry"),
                    Err(GatewayError::NotConnected(region)) => {
                        tracing::debug!(%op_id, %region, "agent not connected; will retry")
                    }
                    Err(error) => tracing::info!(%op_id, %error, "no outcome; will retry"),
                }
                wake.notify_one();
            }
            .in_current_span(),
        );
    }
}

enum Next {
    Done,
    Retry { new_id: bool },
}

/// What an outcome means for the operation: success, a retry under the same id (the agent
/// did not record it: refusals, lost answers), or a retry under a new id (the agent recorded a
/// failure and would repeat it).
fn classify(result: &Result<CommandOutcome, GatewayError>) -> (&'static str, Next) {
    match result {
        Ok(CommandOutcome::Done(CommandResult::Warmup(p))) if p.phase != WarmupPhase::Ready => {
            ("not_ready", Next::Retry { new_id: true })
        }
        Ok(CommandOutcome::Done(_)) => ("done", Next::Done),
        Ok(CommandOutcome::Refused(_)) => ("refused", Next::Retry { new_id: false }),
        Ok(CommandOutcome::Failed { .. }) => ("failed", Next::Retry { new_id: true }),
        Err(GatewayError::Duplicate(_)) => ("duplicate", Next::Retry { new_id: false }),
        Err(_) => ("unanswered", Next::Retry { new_id: false }),
    }
}

fn action_kind(action: &umbra_proto::agent::AgentAction) -> &'static str {
    use umbra_proto::agent::AgentAction::*;
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
        SetShare { .. } => "set_share",
    }
}
