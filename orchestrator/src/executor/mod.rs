//! The migration executor: on the Raft leader only, it turns the replicated state into agent
//! commands, DNS weights and phase transitions. Its decisions live in the sans-IO
//! [`controller::Controller`]; this module is the thin async driver around it. Every tick (and
//! whenever an answer arrives) the driver reads the overview and the agents' latest reports,
//! hands them to the controller, then carries out what it asks for: proposals (stamped with
//! this leader's term and the clock's `now`; a rejection just means the state moved), agent
//! commands through the [`AgentGateway`], shadow-pool sizing from the forecast
//! ([`shadow_sizing`], on a blocking thread), and its events: Prometheus metrics
//! ([`metrics`]), the observation board behind `GET /v1/status`, and the check that every
//! configured DNS server serves new weights (advisory with the embedded servers; with one
//! authority, `[dns] provider = "rfc2136"`, its result goes back to the controller and a
//! cutover step counts only once it passed).
//!
//! A new leader starts from nothing but the replicated state and fresh reports. This module
//! must not change the replicated state except through proposals, and must not act while this
//! node is not the leader.

pub mod controller;
pub mod game_day;
pub mod metrics;
pub mod pools;
pub mod reconcile;
pub mod shadow_sizing;
pub mod simulated_agent;
pub mod slo_source;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;
use umbra_consensus::{NodeStatus, Role as RaftRole};

use self::controller::{Controller, ControllerConfig, Delivery, Event, Now, Proposal, Proposed};
use self::metrics::ExecutorMetrics;
use self::pools::PoolForecast;
use self::shadow_sizing::{DemandSource, ShadowSize};
use crate::gateway::{AgentGateway, GatewayError};
use crate::state::{Query, QueryAnswer};
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
/// How long a rolled-back migration's shadows stay (out of the front, so they serve nothing)
/// before they are stopped and removed: 5 minutes, for an operator to look at them.
pub const DEFAULT_SHADOW_KEEP_MS: u64 = 300_000;
/// How far past its lead time a pool's forecast reaches: 10 minutes, so a pool with fine
/// slices is not forecast again every slice.
pub const DEFAULT_POOL_FORECAST_REACH_SECS: u64 = 600;
/// Longest a proposal or read may take before the round gives up on it (the Raft node's own
/// request timeout is 5 s).
const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// DNS servers that must serve new weights (every orchestrator's embedded server, or the
    /// one authority and its secondaries); empty: no verification.
    pub dns_servers: Vec<SocketAddr>,
    /// How long they have, ms.
    pub dns_verify_timeout_ms: u64,
    /// `dns_servers` are the zone's one authority, which this leader writes (`[dns] provider
    /// = "rfc2136"`): a cutover step counts only once they serve its weights, and weights they
    /// do not serve in time roll the migration back. Off (the embedded servers): checks are
    /// advisory, counted and logged.
    pub dns_authority: bool,
    /// Run follow-the-sun schedules.
    pub schedules: bool,
    /// How long a rolled-back migration's shadows are kept out of the front before they are
    /// stopped and removed, ms (0: at once).
    pub shadow_keep_ms: u64,
    /// Size serving pools from the demand forecast (off: `min_instances`, warm).
    pub pools: bool,
    /// Slices in a row a smaller target must be asked for before a pool shrinks.
    pub pool_shrink_after_slices: u32,
    /// Smallest shrink worth making, as a fraction of the pool.
    pub pool_shrink_band: f64,
    /// A dormant instance older than this is recycled, seconds.
    pub max_dormant_age_secs: u64,
    /// Added to measured activation and provisioning times, ms.
    pub pool_lead_margin_ms: u64,
    /// New demand slices after which a pool's forecast is refitted in full again (between
    /// them, incrementally); unset: the forecaster's default, a quarter of a day.
    pub forecast_full_refit_every_slices: Option<usize>,
    /// How far past its lead time a pool's forecast reaches, seconds; the pool is forecast
    /// again once the one it holds no longer covers its lead time.
    pub pool_forecast_reach_secs: u64,
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
            dns_authority: false,
            schedules: true,
            shadow_keep_ms: DEFAULT_SHADOW_KEEP_MS,
            pools: true,
            pool_shrink_after_slices: umbra_forecast::sizing::DEFAULT_HYSTERESIS
                .shrink_after_slices,
            pool_shrink_band: umbra_forecast::sizing::DEFAULT_HYSTERESIS.shrink_band,
            max_dormant_age_secs: umbra_forecast::sizing::DEFAULT_LIMITS.max_dormant_age_secs,
            pool_lead_margin_ms: pools::DEFAULT_LEAD_MARGIN_MS,
            forecast_full_refit_every_slices: None,
            pool_forecast_reach_secs: DEFAULT_POOL_FORECAST_REACH_SECS,
        }
    }
}

/// Why an [`ExecutorConfig`] is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecutorConfigError {
    /// A duration or count is zero.
    #[error("executor.{0} must be greater than zero")]
    Zero(&'static str),
    /// The retry bounds are inverted.
    #[error("executor.retry_min_ms must not exceed executor.retry_max_ms")]
    RetryBounds,
    /// One DNS authority gates the steps, but no server is listed to check it.
    #[error(
        "executor.dns_servers is empty but the DNS authority gates the cutover steps; list the \
         authority's address (the node does so from [dns] server)"
    )]
    NoDnsAuthority,
    /// The shrink band is not a fraction.
    #[error("executor.pool_shrink_band {0} must be at least 0 and below 1 (0.1 is 10 %)")]
    ShrinkBand(f64),
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
            (
                "pool_shrink_after_slices",
                u64::from(self.pool_shrink_after_slices),
            ),
            ("max_dormant_age_secs", self.max_dormant_age_secs),
            ("pool_forecast_reach_secs", self.pool_forecast_reach_secs),
            (
                "forecast_full_refit_every_slices",
                self.forecast_full_refit_every_slices
                    .map_or(1, |n| n as u64),
            ),
        ] {
            if value == 0 {
                return Err(ExecutorConfigError::Zero(name));
            }
        }
        if self.dns_authority && self.dns_servers.is_empty() {
            return Err(ExecutorConfigError::NoDnsAuthority);
        }
        if self.retry_min_ms > self.retry_max_ms {
            return Err(ExecutorConfigError::RetryBounds);
        }
        if !(0.0..1.0).contains(&self.pool_shrink_band) {
            return Err(ExecutorConfigError::ShrinkBand(self.pool_shrink_band));
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
    /// Whether this node's wall clock agrees with its peers' (`node::clock`): while it does
    /// not, the executor stands down as if it did not lead, because it plans by that clock.
    pub clock_agrees: watch::Receiver<bool>,
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
    /// With one DNS authority: what this node's publisher last sent it, so a failed check
    /// can say why (`None` with the embedded servers).
    pub dns_published: Option<crate::zone_publish::PublishLog>,
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
        let mut clock_agrees = context.clock_agrees.clone();
        loop {
            let term = tokio::select! {
                term = wait_for_leadership(&mut status, &mut clock_agrees) => term,
                _ = stopped(&mut shutdown) => return,
            };
            let Some(term) = term else { return };
            tracing::info!(term, "leading: executor starts");
            let mut leadership = Leadership::new(context.clone(), term);
            let mut tick = tokio::time::interval(Duration::from_millis(context.config.tick_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let retry = leadership.controller.poll_timeout();
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = sleep_until(retry) => {}
                    Some(finished) = leadership.finished.recv() => leadership.finished(finished),
                    _ = stopped(&mut shutdown) => {
                        leadership.stand_down();
                        return;
                    }
                }
                if !leads(&status.borrow(), term) {
                    tracing::info!(term, "no longer leading: executor stands down");
                    break;
                }
                if !*clock_agrees.borrow() {
                    tracing::warn!(
                        term,
                        "this node's wall clock disagrees with its peers': executor stands down"
                    );
                    break;
                }
                leadership.round().await;
            }
            leadership.stand_down();
        }
    }))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
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

/// Waits until this node leads with a clock that agrees with its peers'; its term, or `None`
/// when the node stopped.
async fn wait_for_leadership(
    status: &mut watch::Receiver<NodeStatus>,
    clock_agrees: &mut watch::Receiver<bool>,
) -> Option<u64> {
    loop {
        {
            let s = status.borrow_and_update();
            if s.role == RaftRole::Leader && *clock_agrees.borrow_and_update() {
                return Some(s.term);
            }
        }
        tokio::select! {
            changed = status.changed() => changed.ok()?,
            changed = clock_agrees.changed() => changed.ok()?,
        }
    }
}

/// How often the leader scores each pool's earlier forecasts against the actuals its demand
/// history holds by then, between forecasts (which come about every 10 minutes): the
/// `umbra_forecast_*` metrics follow the actuals within this.
const FORECAST_SCORE_INTERVAL: Duration = Duration::from_secs(15);

/// What a task the driver started brings back.
enum Finished {
    Command {
        operation: String,
        delivery: Delivery,
    },
    Sizing {
        migration: String,
        size: ShadowSize,
    },
    /// A pool's forecast, how its models were refitted, and how its earlier forecasts fared.
    Pool {
        forecast: PoolForecast,
        refit: Option<umbra_forecast::Refit>,
        score: PoolScore,
    },
    /// A pool's earlier forecasts scored against newer actuals, between forecasts.
    Scored(PoolScore),
    DnsChecked {
        service: String,
        dns: crate::state::DnsWeights,
        result: Result<(), String>,
    },
    SloAnswered {
        job: controller::SloQueryJob,
        answer: crate::migration::SloAnswer,
    },
}

/// One term of leadership: the controller and the tasks it asked for. Dropped when it ends.
struct Leadership {
    context: Arc<ExecutorContext>,
    controller: Controller,
    done: mpsc::UnboundedSender<Finished>,
    finished: mpsc::UnboundedReceiver<Finished>,
    /// Asks the Prometheus SLO sources.
    http: reqwest::Client,
    /// What each pool's series remembers of this leadership's forecasts (service, region):
    /// scored against the newer actuals of the demand history, they choose the model and
    /// calibrate its intervals, and their errors are exported.
    series: BTreeMap<(String, String), PoolSeries>,
    /// When the pools' forecasts were last scored between forecasts.
    scored_at: Option<Instant>,
}

/// How one pool's forecasts fare, for its `umbra_forecast_*` metrics.
struct PoolScore {
    service: String,
    region: String,
    /// The model the latest forecast chose.
    model: Option<umbra_forecast::ModelKind>,
    /// How that model's earlier forecasts fared (`None`: none scored yet).
    accuracy: Option<umbra_forecast::Accuracy>,
}

impl PoolScore {
    fn of(service: &str, region: &str, state: &umbra_forecast::SeriesState) -> Self {
        Self {
            service: service.to_owned(),
            region: region.to_owned(),
            model: state.chosen(),
            accuracy: state.chosen_accuracy(),
        }
    }
}

/// What the leader keeps of one pool's forecasts: the series' memory, and the service and
/// region as the latest pool job named them (a scoring job reads their history).
#[derive(Clone)]
struct PoolSeries {
    state: Arc<std::sync::Mutex<umbra_forecast::SeriesState>>,
    service: crate::state::ServiceSpec,
    region: crate::state::RegionSpec,
}

impl Leadership {
    fn new(context: Arc<ExecutorContext>, term: u64) -> Self {
        // Reports sent to an earlier leadership of this node describe an older world.
        context.gateway.clear_reports();
        let (done, finished) = mpsc::unbounded_channel();
        let controller = Controller::new(
            ControllerConfig::from(&context.config),
            term,
            now(context.clock.as_ref()),
        );
        Self {
            context,
            controller,
            done,
            finished,
            http: reqwest::Client::new(),
            series: BTreeMap::new(),
            scored_at: None,
        }
    }

    fn now(&self) -> Now {
        now(self.context.clock.as_ref())
    }

    fn stand_down(&mut self) {
        self.controller.stand_down();
        self.events();
        self.context.board.forget_pools();
    }

    /// Hands a finished task's result to the controller (the round that follows acts on it).
    fn finished(&mut self, finished: Finished) {
        let now = self.now();
        match finished {
            Finished::Command {
                operation,
                delivery,
            } => self.controller.handle_outcome(&operation, delivery, now),
            Finished::Sizing { migration, size } => {
                self.controller.handle_sizing(&migration, size, now)
            }
            Finished::Pool {
                forecast,
                refit,
                score,
            } => {
                if let Some(refit) = refit {
                    self.context
                        .metrics
                        .forecast_refits
                        .with_label_values(&[refit.name()])
                        .inc();
                }
                self.observe_forecast(&score);
                self.controller
                    .handle_pool_forecast(&score.service, &score.region, forecast, now)
            }
            Finished::Scored(score) => self.observe_forecast(&score),
            Finished::DnsChecked {
                service,
                dns,
                result,
            } => self
                .controller
                .handle_dns_checked(&service, &dns, result, now),
            Finished::SloAnswered { job, answer } => self.controller.handle_slo_answer(
                &job.migration,
                job.phase,
                job.asked_at_ms,
                answer,
                now,
            ),
        }
    }

    async fn round(&mut self) {
        let Some(overview) = self.overview().await else {
            return;
        };
        for (region, received) in self.context.gateway.reports() {
            self.controller
                .handle_report(&region, received.report, received.received_at);
        }
        let now = self.now();
        self.controller.handle_overview(overview, now);
        self.carry_out().await;
        if self
            .scored_at
            .is_none_or(|at| at.elapsed() >= FORECAST_SCORE_INTERVAL)
        {
            self.scored_at = Some(Instant::now());
            self.score_pools();
        }
    }

    fn observe_forecast(&self, score: &PoolScore) {
        self.context.metrics.observe_forecast(
            &score.service,
            &score.region,
            score.model,
            score.accuracy.as_ref(),
        );
    }

    /// Scores every pool's earlier forecasts against the actuals that arrived since, off the
    /// async threads on rayon's pool, one series at a time (a forecast of the same series
    /// waits).
    fn score_pools(&self) {
        for series in self.series.values() {
            let (demand, done, series) = (
                self.context.demand.clone(),
                self.done.clone(),
                series.clone(),
            );
            rayon::spawn(move || {
                let mut state = series.state.lock().unwrap_or_else(|e| e.into_inner());
                shadow_sizing::score_pool(
                    demand.as_ref(),
                    &series.service,
                    &series.region,
                    &mut state,
                );
                let score = PoolScore::of(&series.service.name, &series.region.name, &state);
                let _ = done.send(Finished::Scored(score));
            });
        }
    }

    /// Does what the controller asks for until it asks for nothing more.
    async fn carry_out(&mut self) {
        loop {
            self.events();
            while let Some(job) = self.controller.poll_sizing() {
                self.size(job);
            }
            while let Some(job) = self.controller.poll_pool_job() {
                self.forecast_pool(job);
            }
            while let Some(job) = self.controller.poll_slo_query() {
                self.ask_slo(job);
            }
            while let Some(outgoing) = self.controller.poll_command() {
                self.send(outgoing);
            }
            let Some(proposal) = self.controller.poll_proposal() else {
                break;
            };
            let result = self.propose(&proposal).await;
            let now = self.now();
            self.controller.handle_proposal(&proposal.key, result, now);
        }
        self.events();
    }

    async fn overview(&self) -> Option<crate::state::Overview> {
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

    async fn propose(&self, proposal: &Proposal) -> Proposed {
        let result = tokio::time::timeout(
            STORE_CALL_TIMEOUT,
            self.context.store.propose(proposal.command.clone()),
        )
        .await;
        match result {
            Ok(Ok(Ok(_))) => Proposed::Applied,
            Ok(Ok(Err(rejected))) => Proposed::Rejected(rejected.to_string()),
            Ok(Err(error)) => Proposed::Unavailable(error.to_string()),
            Err(_) => Proposed::Unavailable("timed out".to_owned()),
        }
    }

    fn send(&self, outgoing: controller::Outgoing) {
        let gateway = self.context.gateway.clone();
        let done = self.done.clone();
        tokio::spawn(
            async move {
                let result = gateway.send(outgoing.command, outgoing.timeout).await;
                let delivery = match result {
                    Ok(outcome) => Delivery::Answered(outcome),
                    Err(GatewayError::Duplicate(_)) => Delivery::Duplicate,
                    Err(error) => Delivery::Unanswered(error.to_string()),
                };
                let _ = done.send(Finished::Command {
                    operation: outgoing.operation,
                    delivery,
                });
            }
            .in_current_span(),
        );
    }

    fn ask_slo(&self, job: controller::SloQueryJob) {
        let http = self.http.clone();
        let done = self.done.clone();
        tokio::spawn(
            async move {
                let answer = slo_source::ask(&http, &job).await;
                let _ = done.send(Finished::SloAnswered { job, answer });
            }
            .in_current_span(),
        );
    }

    fn size(&self, job: controller::SizingJob) {
        let demand = self.context.demand.clone();
        let done = self.done.clone();
        tokio::task::spawn_blocking(move || {
            let at = chrono::DateTime::from_timestamp_millis(job.cutover_at_ms as i64)
                .unwrap_or_default();
            let size =
                shadow_sizing::size_shadow_pool(demand.as_ref(), &job.service, &job.region, at);
            let _ = done.send(Finished::Sizing {
                migration: job.migration,
                size,
            });
        });
    }

    fn forecast_pool(&mut self, job: controller::PoolJob) {
        let demand = self.context.demand.clone();
        let full_refit_every_slices = self.context.config.forecast_full_refit_every_slices;
        let done = self.done.clone();
        let series = self
            .series
            .entry((job.service.name.clone(), job.region.name.clone()))
            .and_modify(|s| {
                s.service = job.service.clone();
                s.region = job.region.clone();
            })
            .or_insert_with(|| PoolSeries {
                state: Arc::default(),
                service: job.service.clone(),
                region: job.region.clone(),
            })
            .state
            .clone();
        // Fitting is CPU work: on rayon's pool (one thread per core), so a cycle of many
        // pools' forecasts runs on every core without a thread per pool.
        rayon::spawn(move || {
            let from =
                chrono::DateTime::from_timestamp_millis(job.from_ms as i64).unwrap_or_default();
            let until = from + chrono::Duration::milliseconds(job.ahead_ms as i64);
            // One forecast of a series at a time: a second job waits for the first's record.
            let mut state = series.lock().unwrap_or_else(|e| e.into_inner());
            let forecast = shadow_sizing::forecast_pool(
                demand.as_ref(),
                &job.service,
                &job.region,
                from..=until,
                job.activation_secs,
                &mut state,
                full_refit_every_slices,
            );
            let refit = state.take_refit();
            let score = PoolScore::of(&job.service.name, &job.region.name, &state);
            let _ = done.send(Finished::Pool {
                forecast,
                refit,
                score,
            });
        });
    }

    /// Exports the controller's events: metrics, the observation board, DNS checks.
    fn events(&mut self) {
        let metrics = &self.context.metrics;
        while let Some(event) = self.controller.poll_event() {
            match event {
                Event::SloQueried { result } => {
                    metrics.slo_queries.with_label_values(&[result]).inc()
                }
                Event::Observed { migration, seen } => {
                    self.context.board.publish(&migration, *seen)
                }
                Event::Unobserved { migration } => self.context.board.forget(&migration),
                Event::Stage {
                    migration,
                    phase,
                    previous,
                    done,
                } => {
                    if let Some(old) = previous {
                        let _ = metrics.phase.remove_label_values(&[&migration, old]);
                    }
                    metrics
                        .phase
                        .with_label_values(&[migration.as_str(), phase])
                        .set(done as i64);
                }
                Event::Pool(view) => {
                    metrics.observe_pool(&view);
                    self.context.board.publish_pool(*view);
                }
                Event::StageCleared { migration, phase } => {
                    let _ = metrics.phase.remove_label_values(&[&migration, phase]);
                }
                Event::ProposalEnded { kind, label } => {
                    metrics.proposals.with_label_values(&[kind, label]).inc()
                }
                Event::CommandEnded { kind, class } => {
                    metrics.commands.with_label_values(&[kind, class]).inc()
                }
                Event::PhaseLeft { phase, seconds } => metrics
                    .phase_seconds
                    .with_label_values(&[phase])
                    .observe(seconds),
                Event::RollbackStarted { cause } => {
                    metrics.rollbacks.with_label_values(&[cause]).inc()
                }
                Event::RolledBack { rollback_ms, .. } => metrics
                    .rollback_seconds
                    .observe(rollback_ms as f64 / 1_000.0),
                Event::WriterMoved { direction, seconds } => metrics
                    .writer_move_seconds
                    .with_label_values(&[direction])
                    .observe(seconds),
                Event::DnsChanged {
                    service,
                    dns,
                    overview,
                } => self.verify_dns(service, dns, *overview),
            }
        }
    }

    fn verify_dns(
        &self,
        service: String,
        dns: crate::state::DnsWeights,
        overview: crate::state::Overview,
    ) {
        let config = &self.context.config;
        let servers = config.dns_servers.clone();
        if servers.is_empty() {
            // validate() refuses an authority without servers: nothing is gated on this.
            return;
        }
        let authority = config.dns_authority;
        let timeout = Duration::from_millis(config.dns_verify_timeout_ms);
        let counter = self.context.metrics.dns_verifications.clone();
        let published = self.context.dns_published.clone().unwrap_or_default();
        let done = self.done.clone();
        tokio::spawn(
            async move {
                let verified = crate::zone_publish::verify_published(
                    &servers, &published, &overview, &service, &dns, timeout,
                )
                .await;
                let result = match verified {
                    Ok(verified) => {
                        tracing::info!(
                            servers = verified.len(),
                            "every DNS server serves the new weights"
                        );
                        counter.with_label_values(&["ok"]).inc();
                        Ok(())
                    }
                    Err(error) => {
                        if authority {
                            tracing::error!(%error, "the DNS authority does not serve the new weights: the step fails");
                        } else {
                            tracing::warn!(%error, "DNS servers do not serve the new weights yet");
                        }
                        counter.with_label_values(&["failed"]).inc();
                        Err(error)
                    }
                };
                if authority {
                    let _ = done.send(Finished::DnsChecked {
                        service,
                        dns,
                        result,
                    });
                }
            }
            .in_current_span(),
        );
    }
}

fn now(clock: &dyn Clock) -> Now {
    Now {
        at: Instant::now(),
        unix_ms: clock.now_ms(),
    }
}
