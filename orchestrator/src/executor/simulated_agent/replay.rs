//! The product's capacity controller replayed against a demand trace: one region, one service,
//! the executor's [`Controller`] deciding and a [`SimulatedAgent`] carrying it out, on a
//! simulated clock. This is what `umbra simulate` calls its `umbra` policy: the pool the
//! running product would have held, as the agent's instances show it step by step.
//!
//! The driver here does what the executor's async driver does, in simulated time: a round at
//! every step boundary (with a report whose front window carries the demand since the
//! previous report), at every command completion (answers wake the executor), one heartbeat
//! after a round that sent commands (an agent reports about once a second), and when a retry
//! falls due. Pool forecasts are answered at once by the caller's forecaster. No clock is
//! read: times are the trace's, and instants are offsets from the caller's origin.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use umbra_forecast::sizing::PoolTarget;
use umbra_proto::agent::InstanceState;

use super::{AgentDelays, Census, SimulatedAgent};
use crate::executor::controller::{Controller, ControllerConfig, Delivery, Event, Now, PoolJob};
use crate::executor::pools::PoolForecast;
use crate::state::{Command, OrchestratorState, Overview, Plan, RegionSpec, Rejected, ServiceSpec};

/// How long after a round that sent commands the next report arrives: the agent's default
/// heartbeat, one second.
pub const HEARTBEAT_MS: u64 = 1_000;

/// The leader's term in a replay (one leadership throughout).
const TERM: u64 = 1;

/// What a replay runs.
#[derive(Debug, Clone)]
pub struct ReplaySetup {
    /// The service (its primary region must be `region`).
    pub service: ServiceSpec,
    /// The region.
    pub region: RegionSpec,
    /// The controller's settings.
    pub controller: ControllerConfig,
    /// How long the simulated agent takes.
    pub delays: AgentDelays,
    /// Unix ms of the first step.
    pub start_ms: u64,
    /// Step width, ms.
    pub step_ms: u64,
    /// Instances of the pool serving when the replay starts.
    pub initial_serving: u32,
}

/// What the replay observed at one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStep {
    /// The agent's instances at the step's start, after its first round.
    pub census: Census,
    /// The controller's pool target then.
    pub target: Option<PoolTarget>,
}

/// What a whole replay did, beyond the steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ReplayCounts {
    /// Controller rounds run.
    pub rounds: u64,
    /// Agent commands the controller sent.
    pub commands: u64,
    /// Pool forecasts the controller asked for.
    pub pool_forecasts: u64,
    /// Times the pool target changed.
    pub target_changes: u64,
}

/// Replays `requests` (requests per step) through the controller and a simulated agent.
/// `forecaster` answers the controller's pool jobs; `origin` is the instant of `start_ms`;
/// `on_step` sees each step as it is done (for progress). The region and service are applied
/// as a plan to an empty replicated state first, so a setup the product would refuse is
/// refused here, with the product's reason.
pub fn replay(
    setup: &ReplaySetup,
    requests: &[u64],
    origin: Instant,
    forecaster: &mut dyn FnMut(&PoolJob) -> PoolForecast,
    on_step: &mut dyn FnMut(usize),
) -> Result<(Vec<ReplayStep>, ReplayCounts), Rejected> {
    assert!(setup.step_ms > 0, "a replay needs a positive step");
    let mut state = OrchestratorState::default();
    let plan = Plan {
        regions: vec![setup.region.clone()],
        services: vec![setup.service.clone()],
        ..Plan::default()
    };
    state.apply_command(
        1,
        &Command::ApplyPlan {
            plan,
            at_ms: setup.start_ms,
        },
    )?;
    let mut run = Replay::new(setup, requests, origin, state.overview());
    run.start(forecaster);
    let mut steps = Vec::with_capacity(requests.len());
    for step in 0..requests.len() {
        let start = setup.start_ms + step as u64 * setup.step_ms;
        let end = start + setup.step_ms;
        let mut follow_up = run.round(start, forecaster).then_some(start + HEARTBEAT_MS);
        steps.push(ReplayStep {
            census: run.agent.census(),
            target: run.target,
        });
        // Rounds within the step: completions, heartbeats after commands, retries.
        loop {
            let last = run.last_round_ms;
            let retry = run
                .controller
                .poll_timeout()
                .map(|at| setup.start_ms + at.saturating_duration_since(origin).as_millis() as u64);
            let next = [run.agent.poll_timeout(), follow_up, retry]
                .into_iter()
                .flatten()
                .filter(|&t| t > last && t < end)
                .min();
            let Some(at) = next else { break };
            follow_up = run.round(at, forecaster).then_some(at + HEARTBEAT_MS);
        }
        on_step(step);
    }
    Ok((steps, run.counts))
}

/// One replay in progress.
struct Replay<'a> {
    setup: &'a ReplaySetup,
    requests: &'a [u64],
    origin: Instant,
    controller: Controller,
    agent: SimulatedAgent,
    overview: Overview,
    /// Requests handed to the front so far (up to `fed_ms`), for spreading each step's
    /// requests over the reports that cover it.
    fed_ms: u64,
    fed_exact: f64,
    fed: u64,
    last_round_ms: u64,
    /// The operation of each command in flight, by the id it was sent under.
    operations: BTreeMap<String, String>,
    target: Option<PoolTarget>,
    counts: ReplayCounts,
}

impl<'a> Replay<'a> {
    fn new(
        setup: &'a ReplaySetup,
        requests: &'a [u64],
        origin: Instant,
        overview: Overview,
    ) -> Self {
        let now = Now {
            at: origin,
            unix_ms: setup.start_ms,
        };
        let mut agent = SimulatedAgent::new(&setup.region.name, setup.delays);
        let prefix = format!("{}-{}", setup.service.name, setup.region.name);
        for k in 1..=setup.initial_serving {
            agent = agent.with_instance(&format!("{prefix}-{k}"), InstanceState::Active);
        }
        Self {
            setup,
            requests,
            origin,
            controller: Controller::new(setup.controller.clone(), TERM, now),
            agent,
            overview,
            fed_ms: setup.start_ms,
            fed_exact: 0.0,
            fed: 0,
            last_round_ms: 0,
            operations: BTreeMap::new(),
            target: None,
            counts: ReplayCounts::default(),
        }
    }

    fn instant(&self, unix_ms: u64) -> Instant {
        self.origin + Duration::from_millis(unix_ms - self.setup.start_ms)
    }

    fn now(&self, unix_ms: u64) -> Now {
        Now {
            at: self.instant(unix_ms),
            unix_ms,
        }
    }

    /// The trace's requests up to `until_ms` reach the front, each step's spread evenly over
    /// it (rounded so that the totals stay exact).
    fn feed(&mut self, until_ms: u64) {
        let step_ms = self.setup.step_ms;
        while self.fed_ms < until_ms {
            let step = ((self.fed_ms - self.setup.start_ms) / step_ms) as usize;
            let Some(&requests) = self.requests.get(step) else {
                break;
            };
            let step_end = self.setup.start_ms + (step as u64 + 1) * step_ms;
            let to = step_end.min(until_ms);
            self.fed_exact += requests as f64 * (to - self.fed_ms) as f64 / step_ms as f64;
            self.fed_ms = to;
        }
        let whole = self.fed_exact.round() as u64;
        self.agent.handle_requests(whole - self.fed);
        self.fed = whole;
    }

    /// The leadership's first round, before the agent's first report: the controller asks for
    /// its pool forecast (and can send nothing, having no report), so the replay starts from
    /// a leader that knows its forecast, as one that has led for a while does.
    fn start(&mut self, forecaster: &mut dyn FnMut(&PoolJob) -> PoolForecast) {
        let now = self.now(self.setup.start_ms);
        self.controller.handle_overview(self.overview.clone(), now);
        self.carry_out(self.setup.start_ms, forecaster);
        self.target = None;
    }

    /// One executor round at `now_ms`: outcomes due, the agent's report, the overview, then
    /// whatever the controller asks for. Whether it sent any command.
    fn round(&mut self, now_ms: u64, forecaster: &mut dyn FnMut(&PoolJob) -> PoolForecast) -> bool {
        self.last_round_ms = now_ms;
        self.counts.rounds += 1;
        self.agent.handle_timeout(now_ms);
        self.deliver_answers();
        self.feed(now_ms);
        let report = self.agent.report(now_ms);
        let region = self.setup.region.name.clone();
        self.controller
            .handle_report(&region, report, self.instant(now_ms));
        self.controller
            .handle_overview(self.overview.clone(), self.now(now_ms));
        self.carry_out(now_ms, forecaster)
    }

    /// Does what the controller asks for: forecasts, commands, events. Whether it sent any
    /// command.
    fn carry_out(
        &mut self,
        now_ms: u64,
        forecaster: &mut dyn FnMut(&PoolJob) -> PoolForecast,
    ) -> bool {
        while let Some(job) = self.controller.poll_pool_job() {
            self.counts.pool_forecasts += 1;
            let forecast = forecaster(&job);
            self.controller.handle_pool_forecast(
                &job.service.name,
                &job.region.name,
                forecast,
                self.now(now_ms),
            );
        }
        let mut sent = false;
        while let Some(outgoing) = self.controller.poll_command() {
            self.counts.commands += 1;
            sent = true;
            self.operations
                .insert(outgoing.command.op_id.clone(), outgoing.operation);
            self.agent.handle_command(outgoing.command, now_ms);
            self.deliver_answers();
        }
        while let Some(event) = self.controller.poll_event() {
            if let Event::Pool(view) = event
                && self.target != Some(view.target)
            {
                if self.target.is_some() {
                    self.counts.target_changes += 1;
                }
                self.target = Some(view.target);
            }
        }
        sent
    }

    /// Hands every answer the agent has to the controller, under the operation its command
    /// was sent for.
    fn deliver_answers(&mut self) {
        while let Some(answer) = self.agent.poll_answer() {
            let Some(operation) = self.operations.remove(&answer.op_id) else {
                continue;
            };
            let now = self.now(answer.at_ms);
            self.controller
                .handle_outcome(&operation, Delivery::Answered(answer.outcome), now);
        }
    }
}
