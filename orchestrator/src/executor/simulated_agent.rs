//! A region agent in memory: a small, deterministic model of `umbra-agent` that carries out
//! the controller's commands on simulated instances with the time they would take, answers
//! each one, and builds heartbeat reports with instance states, measured transitions and a
//! front that counts the traffic it is told about. It lets the product's own controller be
//! replayed against a demand trace ([`replay`], behind `umbra simulate`) and whole clusters be
//! simulated with faults (`umbra-chaos`, behind `umbra chaos simulate`): an agent can restart
//! (losing the commands in progress, keeping its ledger), an instance can crash, and the
//! front can be told that some requests failed.
//!
//! Sans-IO like the controller: `handle_command` and `handle_timeout` take the time in Unix
//! ms, `poll_answer` and `poll_timeout` give back what happened and when to come back. No
//! clock, no I/O, no randomness: the same inputs give the same answers and reports.
//!
//! The model, and where it is simpler than the real agent:
//! - Creating instances (`Provision`) takes [`AgentDelays::provision_ms`] whatever their number
//!   (a cloud creates them in parallel) and is reported as a `Stopped → Dormant` transition;
//!   the instances appear in reports once created, as in the real agent.
//! - Starting a process (`Start`, or `Activate` of a dormant or stopped instance) takes
//!   [`AgentDelays::activation_ms`]; a cold launch is both. Everything else (entering or
//!   leaving the front, pausing, resuming, stopping, removing) is immediate. An instance
//!   reports the state it is in until a transition completes.
//! - Commands on one instance run one after another, as the real agent's per-instance lock
//!   makes them; a command is checked against the state its predecessors will leave.
//! - The rules of the agent's command core hold: a command for another region or from an
//!   older term is refused, and a repeated operation id gets its first outcome back (or
//!   `InProgress` while it runs), from a ledger of the newest [`LEDGER_CAPACITY`] outcomes.
//! - Replication is always caught up, a warm-up is ready at once, and shares are recorded:
//!   enough for the controller's migration path to run, not a model of data movement. A
//!   promotion is refused until the source is fenced, and the promoted writer stays in the
//!   reports, as with the real agent.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use umbra_proto::agent::{
    AgentAction, AgentCommand, AgentReport, CommandOutcome, CommandResult, FrontReport,
    InstanceReport, InstanceState, Refusal, ReplicationReport, ShareReport, TransitionTiming,
    WarmupPhase, WarmupProgress,
};

pub mod replay;

/// Finished operations the ledger remembers (the real agent's default capacity).
pub const LEDGER_CAPACITY: usize = 4_096;
/// Transitions kept per instance, oldest dropped first (the real provider's bound).
pub const MAX_TRANSITIONS_KEPT: usize = 64;

/// How long the simulated agent takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentDelays {
    /// Nothing → dormant (creating an instance), ms.
    pub provision_ms: u64,
    /// Dormant or stopped → serving (starting its process), ms.
    pub activation_ms: u64,
}

impl AgentDelays {
    /// Delays whose cold launch (create, then start) takes `launch_ms`, of which starting a
    /// dormant instance takes `activation_ms`.
    pub fn from_launch(launch_ms: u64, activation_ms: u64) -> Self {
        assert!(
            activation_ms <= launch_ms,
            "a dormant instance cannot take longer to start than a cold launch"
        );
        Self {
            provision_ms: launch_ms - activation_ms,
            activation_ms,
        }
    }

    /// Nothing → serving, ms.
    pub fn launch_ms(&self) -> u64 {
        self.provision_ms + self.activation_ms
    }
}

/// The outcome of a command, and when it came.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The command's operation id.
    pub op_id: String,
    /// When the outcome was known, Unix ms.
    pub at_ms: u64,
    /// The outcome.
    pub outcome: CommandOutcome,
}

/// How many instances are in which condition, as the bill sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Census {
    /// Active: in the front, serving.
    pub serving: u32,
    /// Running but not serving (warm, or starting): billed as warm.
    pub running: u32,
    /// Existing without a process (dormant, stopped, paused, or being created).
    pub parked: u32,
}

#[derive(Debug, Clone)]
struct Instance {
    state: InstanceState,
    paused_from: Option<InstanceState>,
    addr: Option<String>,
    transitions: Vec<TransitionTiming>,
}

/// What a queued command does when it completes.
#[derive(Debug, Clone)]
enum Effect {
    Create(Vec<String>),
    Enter {
        instance: String,
        to: InstanceState,
        paused_from: Option<InstanceState>,
        millis: u64,
    },
    Remove(String),
}

#[derive(Debug, Clone)]
struct Pending {
    op_id: String,
    done_at_ms: u64,
    effect: Effect,
}

/// A simulated region agent. See the module docs.
#[derive(Debug, Clone)]
pub struct SimulatedAgent {
    region: String,
    delays: AgentDelays,
    newest_term: u64,
    instances: BTreeMap<String, Instance>,
    /// The state each instance will be in once its queued commands completed (`None`: it
    /// will not exist), and when the last of them completes.
    projected: BTreeMap<String, (Option<InstanceState>, u64)>,
    pending: Vec<Pending>,
    ledger: BTreeMap<String, Option<CommandOutcome>>,
    finished: VecDeque<String>,
    answers: VecDeque<Answer>,
    replication: BTreeMap<String, ReplicationReport>,
    /// Replication targets whose source's fence a rollback lifted: as the real agent, no
    /// fence or promotion of them after it, until the agent restarts.
    lifted: BTreeSet<String>,
    shares: BTreeMap<String, ShareReport>,
    front_listen: String,
    requests_total: u64,
    window_requests: u64,
    errors_total: u64,
    window_errors: u64,
    last_report_ms: Option<u64>,
    next_port: u32,
}

impl SimulatedAgent {
    /// An agent for `region` with no instances.
    pub fn new(region: &str, delays: AgentDelays) -> Self {
        Self {
            region: region.to_owned(),
            delays,
            newest_term: 0,
            instances: BTreeMap::new(),
            projected: BTreeMap::new(),
            pending: Vec::new(),
            ledger: BTreeMap::new(),
            finished: VecDeque::new(),
            answers: VecDeque::new(),
            replication: BTreeMap::new(),
            lifted: BTreeSet::new(),
            shares: BTreeMap::new(),
            front_listen: format!("{region}.front:443"),
            requests_total: 0,
            window_requests: 0,
            errors_total: 0,
            window_errors: 0,
            last_report_ms: None,
            next_port: 20_000,
        }
    }

    /// Adds an instance in `state` (dormant, warm or active) that this agent created (and
    /// started) earlier, with those transitions measured at the agent's delays: e.g. a pool
    /// serving when a replay starts.
    pub fn with_instance(mut self, id: &str, state: InstanceState) -> Self {
        let mut transitions = vec![TransitionTiming {
            from: InstanceState::Stopped,
            to: InstanceState::Dormant,
            millis: self.delays.provision_ms,
        }];
        let running = matches!(state, InstanceState::Active | InstanceState::Warm);
        if running {
            transitions.push(TransitionTiming {
                from: InstanceState::Dormant,
                to: state,
                millis: self.delays.activation_ms,
            });
        }
        let addr = running.then(|| self.new_addr());
        self.instances.insert(
            id.to_owned(),
            Instance {
                state,
                paused_from: None,
                addr,
                transitions,
            },
        );
        self
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// `requests` reached the region's front since the last call (the demand of a step).
    pub fn handle_requests(&mut self, requests: u64) {
        self.requests_total += requests;
        self.window_requests += requests;
    }

    /// `errors` of the requests handed to [`SimulatedAgent::handle_requests`] failed (a
    /// target that breaks its SLO, for a simulation that must roll back).
    pub fn handle_errors(&mut self, errors: u64) {
        self.errors_total += errors;
        self.window_errors += errors;
    }

    /// The agent process restarts at `now_ms`: commands in progress are lost and recorded in
    /// the ledger as failed (the agent keeps its ledger, so a repeated id gets that failure
    /// and the controller retries under a new id), answers not yet handed out are lost with
    /// the connection, and the instances keep running (the provider finds them again).
    pub fn restart(&mut self, now_ms: u64) {
        self.handle_timeout(now_ms);
        for pending in std::mem::take(&mut self.pending) {
            let failed = CommandOutcome::Failed {
                reason: "the agent restarted while the command ran".to_owned(),
            };
            self.finish(pending.op_id, now_ms, failed);
        }
        self.projected.clear();
        self.answers.clear();
        self.lifted.clear();
    }

    /// The process of instance `id` dies at `now_ms` (it is `Stopped`, out of every front;
    /// the replication the agent drives into it is kept, as the real agent keeps it in its
    /// state directory); whether there was such a running instance.
    pub fn crash_instance(&mut self, id: &str, now_ms: u64) -> bool {
        self.handle_timeout(now_ms);
        let Some(i) = self.instances.get_mut(id) else {
            return false;
        };
        if !matches!(i.state, InstanceState::Active | InstanceState::Warm) {
            return false;
        }
        if i.transitions.len() >= MAX_TRANSITIONS_KEPT {
            i.transitions.remove(0);
        }
        i.transitions.push(TransitionTiming {
            from: i.state,
            to: InstanceState::Stopped,
            millis: 0,
        });
        i.state = InstanceState::Stopped;
        i.paused_from = None;
        i.addr = None;
        true
    }

    /// Every instance and the state it is in now, by id.
    pub fn instances(&self) -> impl Iterator<Item = (&str, InstanceState)> {
        self.instances.iter().map(|(id, i)| (id.as_str(), i.state))
    }

    /// The replication into instance `id`, as the next report will show it.
    pub fn replication(&self, id: &str) -> Option<&ReplicationReport> {
        self.replication.get(id)
    }

    /// Whether `url` (`http://host:port`) names an address this agent gives its instances,
    /// whether or not one serves there now: a simulation routes a replication's source (and a
    /// fence sent to it) to the source's region by it.
    pub fn hands_out(&self, url: &str) -> bool {
        let host = url.strip_prefix("http://").unwrap_or(url);
        host.strip_prefix(self.instance_host().as_str())
            .is_some_and(|rest| rest.starts_with(':'))
    }

    /// The share (percent) of `service` this region's front sends to another region's front,
    /// and that front; `None` when it sends none.
    pub fn share(&self, service: &str) -> Option<&ShareReport> {
        self.shares.get(service)
    }

    /// A command from the leader, received at `now_ms`. Its answer is handed out by
    /// [`SimulatedAgent::poll_answer`]: at once when it takes no time, else once
    /// [`SimulatedAgent::handle_timeout`] reaches its completion.
    pub fn handle_command(&mut self, command: AgentCommand, now_ms: u64) {
        self.handle_timeout(now_ms);
        let answer = |outcome| Answer {
            op_id: command.op_id.clone(),
            at_ms: now_ms,
            outcome,
        };
        if command.region != self.region {
            let refusal = Refusal::WrongRegion {
                ours: self.region.clone(),
                theirs: command.region.clone(),
            };
            self.answers
                .push_back(answer(CommandOutcome::Refused(refusal)));
            return;
        }
        if command.term < self.newest_term {
            let refusal = Refusal::StaleTerm {
                command_term: command.term,
                newest_term: self.newest_term,
            };
            self.answers
                .push_back(answer(CommandOutcome::Refused(refusal)));
            return;
        }
        self.newest_term = command.term;
        match self.ledger.get(&command.op_id) {
            Some(Some(first)) => {
                self.answers.push_back(answer(first.clone()));
                return;
            }
            Some(None) => {
                let refusal = CommandOutcome::Refused(Refusal::InProgress);
                self.answers.push_back(answer(refusal));
                return;
            }
            None => {}
        }
        // Recorded as running first: a command that completes at once finishes it below.
        self.ledger.insert(command.op_id.clone(), None);
        match self.execute(&command.op_id, command.action, now_ms) {
            Ok(Some(outcome)) => self.finish(command.op_id, now_ms, outcome),
            Ok(None) => self.handle_timeout(now_ms),
            // Refusals are not recorded: nothing changed, so the id stays free.
            Err(reason) => {
                self.ledger.remove(&command.op_id);
                let refusal = Refusal::BadRequest { reason };
                self.answers
                    .push_back(answer(CommandOutcome::Refused(refusal)));
            }
        }
    }

    /// Time passed to `now_ms`: commands due by then complete, in order of completion.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        loop {
            let due = self
                .pending
                .iter()
                .enumerate()
                .filter(|(_, p)| p.done_at_ms <= now_ms)
                .min_by_key(|(i, p)| (p.done_at_ms, *i))
                .map(|(i, _)| i);
            let Some(i) = due else { break };
            let pending = self.pending.remove(i);
            let outcome = self.complete(pending.effect);
            self.finish(pending.op_id, pending.done_at_ms, outcome);
        }
    }

    /// The next outcome to hand to the leader.
    pub fn poll_answer(&mut self) -> Option<Answer> {
        self.answers.pop_front()
    }

    /// When the next command in progress completes, Unix ms.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.pending.iter().map(|p| p.done_at_ms).min()
    }

    /// A heartbeat at `now_ms`: every instance with its transitions, replications, and the
    /// front's counters, whose window is the traffic since the previous report.
    pub fn report(&mut self, now_ms: u64) -> AgentReport {
        self.handle_timeout(now_ms);
        let window_ms = now_ms.saturating_sub(self.last_report_ms.unwrap_or(now_ms));
        self.last_report_ms = Some(now_ms);
        let window_requests = std::mem::take(&mut self.window_requests);
        let window_errors = std::mem::take(&mut self.window_errors);
        let front = self.front(window_ms, window_requests, window_errors);
        AgentReport {
            region: self.region.clone(),
            newest_term: self.newest_term,
            instances: self
                .instances
                .iter()
                .map(|(id, i)| instance_report(id, i))
                .collect(),
            warmups: Vec::new(),
            replication: self.replication.values().cloned().collect(),
            at_unix_ms: now_ms,
            front: Some(front),
        }
    }

    /// What the instances cost now: serving, running without serving, parked.
    pub fn census(&self) -> Census {
        let mut census = Census::default();
        for i in self.instances.values() {
            match i.state {
                InstanceState::Active => census.serving += 1,
                InstanceState::Warm => census.running += 1,
                InstanceState::Dormant | InstanceState::Stopped | InstanceState::Paused => {
                    census.parked += 1
                }
            }
        }
        for p in &self.pending {
            match &p.effect {
                // Being created: billed as the dormant instance it becomes.
                Effect::Create(ids) => census.parked += ids.len() as u32,
                // Being started: its process runs (and is billed) before it serves.
                Effect::Enter { millis, .. } if *millis > 0 => {
                    census.parked = census.parked.saturating_sub(1);
                    census.running += 1;
                }
                Effect::Enter { .. } | Effect::Remove(_) => {}
            }
        }
        census
    }

    /// A new address, named for the region: addresses are unique across agents, as real
    /// ones are, so a replication's source names one region's instance (see
    /// [`SimulatedAgent::hands_out`]).
    fn new_addr(&mut self) -> String {
        self.next_port += 1;
        format!("{}:{}", self.instance_host(), self.next_port)
    }

    fn instance_host(&self) -> String {
        format!("{}.instances", self.region)
    }

    fn finish(&mut self, op_id: String, at_ms: u64, outcome: CommandOutcome) {
        self.ledger.insert(op_id.clone(), Some(outcome.clone()));
        self.finished.push_back(op_id.clone());
        while self.finished.len() > LEDGER_CAPACITY {
            if let Some(old) = self.finished.pop_front() {
                self.ledger.remove(&old);
            }
        }
        self.answers.push_back(Answer {
            op_id,
            at_ms,
            outcome,
        });
    }

    /// Where `id` will stand once its queued commands completed: its state (`None`: absent)
    /// and when it is free.
    fn projection(&self, id: &str, now_ms: u64) -> (Option<InstanceState>, u64) {
        match self.projected.get(id) {
            Some(&(state, free_at)) if free_at > now_ms => (state, free_at),
            _ => (self.instances.get(id).map(|i| i.state), now_ms),
        }
    }

    /// Carries out `action`: `Ok(Some)` done now, `Ok(None)` queued, `Err` refused.
    fn execute(
        &mut self,
        op_id: &str,
        action: AgentAction,
        now_ms: u64,
    ) -> Result<Option<CommandOutcome>, String> {
        use AgentAction::*;
        match action {
            Provision { instances } => {
                for (n, id) in instances.iter().enumerate() {
                    let (exists, _) = self.projection(id, now_ms);
                    if exists.is_some() || instances[..n].contains(id) {
                        return Err(format!("instance {id:?} already exists"));
                    }
                }
                let done_at_ms = now_ms + self.delays.provision_ms;
                for id in &instances {
                    self.projected
                        .insert(id.clone(), (Some(InstanceState::Dormant), done_at_ms));
                }
                self.queue(op_id, done_at_ms, Effect::Create(instances));
                Ok(None)
            }
            Remove { instance } => {
                let (state, free_at) = self.projection(&instance, now_ms);
                if state.is_none() {
                    return Err(format!("no instance {instance:?}"));
                }
                self.projected.insert(instance.clone(), (None, free_at));
                self.queue(op_id, free_at, Effect::Remove(instance));
                Ok(None)
            }
            Start { ref instance }
            | Activate { ref instance }
            | Deactivate { ref instance }
            | Pause { ref instance }
            | Resume { ref instance }
            | Stop { ref instance } => self.lifecycle(op_id, &action, instance, now_ms),
            // Like the process provider: it enforces no limits, and says so.
            SetLimits { .. } => Err("the simulated agent enforces no CPU or memory limits".into()),
            Warm { instance, plan } => {
                self.running(&instance)?;
                Ok(Some(CommandOutcome::Done(CommandResult::Warmup(
                    WarmupProgress {
                        instance,
                        phase: WarmupPhase::Ready,
                        requests: plan.gate.min_requests,
                        errors: 0,
                        window_p99_ms: plan.gate.reference_p99_ms,
                        window_error_rate: 0.0,
                        elapsed_ms: 0,
                    },
                ))))
            }
            StartReplication { instance, source } => {
                self.running(&instance)?;
                let report = ReplicationReport {
                    instance: instance.clone(),
                    source,
                    source_position: 0,
                    target_position: 0,
                    source_fenced: false,
                    promoted: false,
                };
                self.replication.insert(instance, report.clone());
                Ok(Some(CommandOutcome::Done(CommandResult::Replication(
                    report,
                ))))
            }
            FenceSource { instance } => {
                self.not_lifted(&instance)?;
                let report = self.replication_of(&instance)?;
                report.source_fenced = true;
                let report = report.clone();
                Ok(Some(CommandOutcome::Done(CommandResult::Replication(
                    report,
                ))))
            }
            WaitForZeroLag { instance, .. } => {
                let report = self.replication_of(&instance)?.clone();
                Ok(Some(CommandOutcome::Done(CommandResult::Replication(
                    report,
                ))))
            }
            // As the real agent: refused until the source is fenced, and the promoted writer
            // keeps being reported (the controller observes the move in the reports).
            Promote { instance } => {
                self.not_lifted(&instance)?;
                let report = self.replication_of(&instance)?;
                if !report.source_fenced {
                    return Err("the source still accepts writes; fence it first".into());
                }
                report.promoted = true;
                let report = report.clone();
                Ok(Some(CommandOutcome::Done(CommandResult::Replication(
                    report,
                ))))
            }
            // As the real agent: refused while the target is the writer.
            UnfenceSource { instance } => {
                let Some(report) = self.replication.get_mut(&instance) else {
                    self.lifted.insert(instance);
                    return Ok(Some(CommandOutcome::Done(CommandResult::Instances(
                        Vec::new(),
                    ))));
                };
                if report.promoted {
                    return Err("the target was promoted; hand the writer back instead".into());
                }
                report.source_fenced = false;
                let report = report.clone();
                self.lifted.insert(instance);
                Ok(Some(CommandOutcome::Done(CommandResult::Replication(
                    report,
                ))))
            }
            StopReplication { instance } => {
                let report = self.replication_of(&instance)?.clone();
                self.replication.remove(&instance);
                Ok(Some(CommandOutcome::Done(CommandResult::Replication(
                    report,
                ))))
            }
            SetShare {
                service,
                target_front,
                percent,
            } => {
                if percent > 100 {
                    return Err(format!("share {percent} % is above 100"));
                }
                if percent == 0 {
                    self.shares.remove(&service);
                } else {
                    self.shares.insert(
                        service.clone(),
                        ShareReport {
                            service,
                            target_front,
                            percent,
                        },
                    );
                }
                Ok(Some(CommandOutcome::Done(CommandResult::Front(
                    self.front(0, 0, 0),
                ))))
            }
        }
    }

    fn front(&self, window_ms: u64, window_requests: u64, window_errors: u64) -> FrontReport {
        FrontReport {
            listen: self.front_listen.clone(),
            requests_total: self.requests_total,
            errors_total: self.errors_total,
            window_ms,
            window_requests,
            window_errors,
            window_p99_ms: None,
            shares: self.shares.values().cloned().collect(),
        }
    }

    fn running(&self, id: &str) -> Result<(), String> {
        match self.instances.get(id).map(|i| i.state) {
            Some(InstanceState::Warm | InstanceState::Active) => Ok(()),
            Some(state) => Err(format!("instance {id:?} is {state:?}; start it first")),
            None => Err(format!("no instance {id:?}")),
        }
    }

    fn not_lifted(&self, id: &str) -> Result<(), String> {
        if self.lifted.contains(id) {
            return Err(format!(
                "the replication into {id:?} was rolled back (its source's fence lifted)"
            ));
        }
        Ok(())
    }

    fn replication_of(&mut self, id: &str) -> Result<&mut ReplicationReport, String> {
        self.replication
            .get_mut(id)
            .ok_or_else(|| format!("no replication into {id:?}; start one first"))
    }

    /// A lifecycle operation, by the provider's table: nothing to do, a step taking no time,
    /// or a process start taking the activation delay.
    fn lifecycle(
        &mut self,
        op_id: &str,
        action: &AgentAction,
        instance: &str,
        now_ms: u64,
    ) -> Result<Option<CommandOutcome>, String> {
        let instance = instance.to_owned();
        let (state, free_at) = self.projection(&instance, now_ms);
        let Some(state) = state else {
            return Err(format!("no instance {instance:?}"));
        };
        let paused_from = self.instances.get(&instance).and_then(|i| i.paused_from);
        let Some((to, starts)) = lifecycle_step(action, state) else {
            return Err(format!(
                "instance {instance:?} is {state:?}: cannot {action:?}"
            ));
        };
        let to = match action {
            AgentAction::Resume { .. } => paused_from.unwrap_or(InstanceState::Warm),
            _ => to,
        };
        if to == state && free_at <= now_ms {
            return Ok(Some(CommandOutcome::Done(CommandResult::Instances(vec![
                instance_report(&instance, &self.instances[&instance]),
            ]))));
        }
        let millis = if starts { self.delays.activation_ms } else { 0 };
        let done_at_ms = free_at + millis;
        let paused_from = (to == InstanceState::Paused).then_some(state);
        self.projected
            .insert(instance.clone(), (Some(to), done_at_ms));
        self.queue(
            op_id,
            done_at_ms,
            Effect::Enter {
                instance,
                to,
                paused_from,
                millis,
            },
        );
        Ok(None)
    }

    fn queue(&mut self, op_id: &str, done_at_ms: u64, effect: Effect) {
        self.pending.push(Pending {
            op_id: op_id.to_owned(),
            done_at_ms,
            effect,
        });
    }

    /// A queued command completes: its effect holds and its outcome is known.
    fn complete(&mut self, effect: Effect) -> CommandOutcome {
        match effect {
            Effect::Create(ids) => {
                let millis = self.delays.provision_ms;
                let mut created = Vec::new();
                for id in ids {
                    let instance = Instance {
                        state: InstanceState::Dormant,
                        paused_from: None,
                        addr: None,
                        // "Created" is recorded as Stopped (nothing) → Dormant, as the agent does.
                        transitions: vec![TransitionTiming {
                            from: InstanceState::Stopped,
                            to: InstanceState::Dormant,
                            millis,
                        }],
                    };
                    created.push(instance_report(&id, &instance));
                    self.instances.insert(id, instance);
                }
                CommandOutcome::Done(CommandResult::Instances(created))
            }
            Effect::Remove(id) => {
                self.instances.remove(&id);
                self.replication.remove(&id);
                CommandOutcome::Done(CommandResult::Instances(Vec::new()))
            }
            Effect::Enter {
                instance: id,
                to,
                paused_from,
                millis,
            } => {
                let needs_addr = matches!(to, InstanceState::Warm | InstanceState::Active)
                    && self.instances.get(&id).is_some_and(|i| i.addr.is_none());
                let addr = needs_addr.then(|| self.new_addr());
                let Some(i) = self.instances.get_mut(&id) else {
                    return CommandOutcome::Failed {
                        reason: format!("instance {id:?} vanished"),
                    };
                };
                if i.transitions.len() >= MAX_TRANSITIONS_KEPT {
                    i.transitions.remove(0);
                }
                i.transitions.push(TransitionTiming {
                    from: i.state,
                    to,
                    millis,
                });
                i.state = to;
                i.paused_from = paused_from;
                if let Some(addr) = addr {
                    i.addr = Some(addr);
                }
                if to == InstanceState::Stopped {
                    i.addr = None;
                }
                CommandOutcome::Done(CommandResult::Instances(vec![instance_report(&id, i)]))
            }
        }
    }
}

/// The state a lifecycle `action` leaves an instance in `state` in, and whether it starts a
/// process; `None` when it does not apply (the agent refuses it) or is no lifecycle action.
/// Mirrors the agent's lifecycle table (`umbra_agent::provider::plan`).
fn lifecycle_step(action: &AgentAction, state: InstanceState) -> Option<(InstanceState, bool)> {
    use AgentAction::*;
    use InstanceState::*;
    Some(match (action, state) {
        (Start { .. }, Dormant | Stopped) => (Warm, true),
        (Start { .. }, Warm | Active) => (state, false),
        (Activate { .. }, Dormant | Stopped) => (Active, true),
        (Activate { .. }, Warm | Active) => (Active, false),
        (Deactivate { .. }, Active | Warm) => (Warm, false),
        (Pause { .. }, Warm | Active | Paused) => (Paused, false),
        (Resume { .. }, Paused) => (Warm, false),
        (Resume { .. }, Warm | Active) => (state, false),
        (Stop { .. }, _) => (Stopped, false),
        _ => return None,
    })
}

fn instance_report(id: &str, i: &Instance) -> InstanceReport {
    InstanceReport {
        id: id.to_owned(),
        state: i.state,
        addr: i.addr.clone(),
        transitions: i.transitions.clone(),
        limits: None,
    }
}

#[cfg(test)]
mod tests;
