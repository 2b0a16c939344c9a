//! The simulated world: the event queue, the network, the replicas with the executor on the
//! leader, the agents, the clients and the operator, the fault schedule and the invariant
//! checks. See the parent module for what it models; this file must stay one-threaded and
//! draw every random choice from the run's seeded generator.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hasher};
use std::rc::Rc;
use std::time::{Duration, Instant};

use raft::prelude::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use umbra_orchestrator::capacity::PoolView;
use umbra_orchestrator::executor::ExecutorConfig;
use umbra_orchestrator::executor::controller::{
    Controller, ControllerConfig, Delivery, Event, Now, ProposalKey, Proposed,
};
use umbra_orchestrator::executor::reconcile::shadow_ids;
use umbra_orchestrator::executor::shadow_sizing::ShadowSize;
use umbra_orchestrator::executor::simulated_agent::{AgentDelays, SimulatedAgent};
use umbra_orchestrator::migration::Phase;
use umbra_orchestrator::state::{
    Command, MigrationRequest, Overview, Plan, PoolMode, decode_command, decode_outcome,
    encode_command,
};
use umbra_proto::agent::{
    AgentAction, AgentCommand, AgentReport, CommandOutcome, CommandResult, InstanceState,
    ReplicationReport,
};

use super::data::Data;
use super::replica::{AppliedEntry, Replica};
use super::{SeedReport, SimConfig, Violation};

/// Unix ms at simulated time 0 (2026-01-01T00:00:00Z): wall clocks are this plus the
/// simulated time plus each replica's jumps.
const START_UNIX_MS: u64 = 1_767_225_600_000;
/// Replicas, ids 1..=3.
const REPLICAS: usize = 3;
/// The Raft tick and the executor's round period (the product's defaults, both 100 ms).
const TICK_MS: u64 = umbra_orchestrator::executor::DEFAULT_TICK_MS;
/// Agents report once a second (the agent's default heartbeat).
const HEARTBEAT_MS: u64 = 1_000;
/// Clients send their requests once a second.
const TRAFFIC_MS: u64 = 1_000;
/// Requests the clients send each second.
const REQUESTS_PER_SEC: u64 = 100;
/// Of those, writes to the service's data (each with a new id), split between the regions'
/// fronts as its requests are.
const WRITES_PER_SEC: u64 = 10;
/// The operator retries every half second until its command applied.
const OPERATOR_MS: u64 = 500;
/// How long the operator (and the executor) wait for a proposal: the product's store-call
/// timeout, 10 s.
const PROPOSAL_TIMEOUT_MS: u64 = 10_000;
/// A round's read that has not come back in this long is abandoned (the same timeout).
const READ_TIMEOUT_MS: u64 = 10_000;
/// Faults happen within [`FAULTS_FROM_MS`, `FAULTS_UNTIL_MS`); then everything heals.
const FAULTS_FROM_MS: u64 = 5_000;
const FAULTS_UNTIL_MS: u64 = 120_000;
/// The run ends at this simulated time at the latest (sooner once everything settled after
/// the faults): every migration must have ended and every replica caught up by then.
const HORIZON_MS: u64 = 600_000;
/// The migration's cutover is this long after it is asked for (its lead time is 30 s).
const CUTOVER_AFTER_MS: u64 = 40_000;
/// Shadow instances the sizing job answers.
const SHADOW_INSTANCES: u32 = 2;
/// How long a rolled-back migration's shadows are kept (the product's default is 5 min).
const SHADOW_KEEP_MS: u64 = 20_000;
/// Time after which a rolled-back migration's shadows must be gone: the keep time plus ten
/// heartbeats and retries.
const SHADOW_GONE_AFTER_MS: u64 = SHADOW_KEEP_MS + 15_000;
/// How far past its own bound a phase may last before the migration counts as stuck: longer
/// than any single fault (10 s) plus an election and a command timeout, with room for two.
const STUCK_GRACE_MS: u64 = 60_000;
/// The drain's bound when the TTL plan sets it: the sim plan's TTLs and margin are 20 s.
const DRAIN_BOUND_MS: u64 = 30_000;
/// Share of seeds whose operator rolls the migration back the moment the source is fenced
/// for the writer's move, before the target is promoted (an SRE aborting a move that waits).
const ABORT_IN_FENCE_SHARE: f64 = 0.25;
/// Mixed into the seed of the stream that draws whether the operator aborts, so every other
/// draw of every seed stays what it was.
const ABORT_DRAW_SALT: u64 = 0xab0_47f3;
/// The service the scenario moves, and its regions.
const SERVICE: &str = "shop";
const REGIONS: [&str; 2] = ["us-east", "eu-west"];

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Replica(usize),
    Agent(usize),
}

/// A fault, as scheduled.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Crash the leader (or a follower), restart it after `down_ms`.
    Crash { leader: bool, down_ms: u64 },
    /// Cut the leader (or a follower) off from everything for `for_ms`.
    Isolate { leader: bool, for_ms: u64 },
    /// Restart an agent, down for `down_ms`.
    AgentRestart { region: usize, down_ms: u64 },
    /// Crash a running instance of a region.
    InstanceCrash { region: usize },
    /// A replica's wall clock jumps by `ms`.
    ClockJump { replica: usize, ms: i64 },
}

impl Fault {
    fn name(&self) -> &'static str {
        match self {
            Fault::Crash { leader: true, .. } => "leader_crash",
            Fault::Crash { leader: false, .. } => "follower_crash",
            Fault::Isolate { leader: true, .. } => "leader_isolated",
            Fault::Isolate { leader: false, .. } => "follower_isolated",
            Fault::AgentRestart { .. } => "agent_restart",
            Fault::InstanceCrash { .. } => "instance_crash",
            Fault::ClockJump { .. } => "clock_jump",
        }
    }
}

#[derive(Debug)]
enum Ev {
    Tick(usize),
    Raft(Message),
    Command {
        region: usize,
        from: usize,
        leadership: u64,
        command: AgentCommand,
    },
    Answer {
        replica: usize,
        leadership: u64,
        op_id: String,
        outcome: CommandOutcome,
    },
    Report {
        replica: usize,
        report: AgentReport,
    },
    AgentTimer(usize),
    Heartbeat(usize),
    CommandTimeout {
        replica: usize,
        leadership: u64,
        op_id: String,
    },
    ProposalTimeout {
        replica: usize,
        leadership: u64,
        index: u64,
    },
    Traffic,
    Operator,
    Fault(Fault),
    Restart(usize),
    Rejoin(usize),
    AgentUp(usize),
    HealAll,
}

impl Ev {
    fn kind(&self) -> u64 {
        match self {
            Ev::Tick(_) => 1,
            Ev::Raft(_) => 2,
            Ev::Command { .. } => 3,
            Ev::Answer { .. } => 4,
            Ev::Report { .. } => 5,
            Ev::AgentTimer(_) => 6,
            Ev::Heartbeat(_) => 7,
            Ev::CommandTimeout { .. } => 8,
            Ev::ProposalTimeout { .. } => 9,
            Ev::Traffic => 10,
            Ev::Operator => 11,
            Ev::Fault(_) => 12,
            Ev::Restart(_) => 13,
            Ev::Rejoin(_) => 14,
            Ev::AgentUp(_) => 15,
            Ev::HealAll => 16,
        }
    }
}

/// Who waits for a proposed entry to apply.
#[derive(Debug, Clone)]
enum Proposer {
    Controller { leadership: u64, key: ProposalKey },
    Operator,
}

#[derive(Debug, Clone)]
struct Waiter {
    term: u64,
    proposer: Proposer,
}

/// Where a leadership's driver is in its round, as the async driver's `await`s would be.
#[derive(Debug, Clone, PartialEq)]
enum Driver {
    Idle,
    Reading { context: Vec<u8>, since_ms: u64 },
    ReadAt { index: u64, since_ms: u64 },
    Proposing { index: u64 },
}

/// One term of leadership on one replica: the controller and what its driver awaits.
struct Leadership {
    id: u64,
    term: u64,
    controller: Controller,
    driver: Driver,
    /// Commands awaiting their outcome: attempt id → operation.
    ops: BTreeMap<String, String>,
    reads: u64,
    pools: BTreeMap<(String, String), PoolView>,
}

struct Node {
    replica: Replica,
    clock_jump_ms: i64,
    leadership: Option<Leadership>,
    /// The gateway's latest report per region, and when it arrived (sim ms).
    reports: BTreeMap<String, (AgentReport, u64)>,
    waiting: BTreeMap<u64, Waiter>,
    /// Index of the last entry this replica applied, as seen from outside.
    last_applied: u64,
}

struct AgentSlot {
    agent: SimulatedAgent,
    up: bool,
    /// Who sent each command id last: the answer goes there.
    routes: BTreeMap<String, (usize, u64)>,
}

struct Operator {
    commands: Vec<Command>,
    /// The replica proposed to and when the operator gives up on it (sim ms).
    in_flight: Option<(usize, u64)>,
    migration_asked: bool,
    /// This seed's operator rolls back as the source is fenced for the writer's move.
    aborts_in_fence: bool,
    /// The operator asked for that rollback.
    abort_asked: bool,
    /// The rollback it asked for was applied.
    abort_applied: bool,
}

/// A proposal whose result reached its proposer: the entry must never leave the log.
struct Ack {
    index: u64,
    term: u64,
}

struct World {
    seed: u64,
    config: SimConfig,
    rng: StdRng,
    now_ms: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    origin: Instant,
    nodes: Vec<Node>,
    agents: Vec<AgentSlot>,
    isolated: BTreeSet<usize>,
    drop_p: f64,
    dup_p: f64,
    max_delay_ms: u64,
    target_fails: bool,
    /// The target fails only once its store is the writer: the rollback must hand the writer
    /// back.
    target_fails_late: bool,
    plan: Plan,
    operator: Operator,
    controller_config: ControllerConfig,
    next_leadership: u64,
    leaders: BTreeMap<u64, usize>,
    committed: BTreeMap<u64, (u64, Rc<Vec<u8>>)>,
    /// Each transition applied, and the index it applied at (replicas replay the same ones).
    steps: BTreeMap<(String, String, String), u64>,
    /// Each migration's latest phase, and the index that set it.
    phases: BTreeMap<String, (Phase, u64)>,
    acks: Vec<Ack>,
    /// The moved service's data: which region's store accepts writes, and what each holds.
    data: Data,
    /// Whether two stores accept writes now (reported once each time it starts).
    two_writers: bool,
    violations: Vec<Violation>,
    faults: BTreeMap<&'static str, u32>,
    /// Migrations and phases already reported stuck (once each).
    stuck: BTreeSet<(String, String)>,
    events: u64,
    digest: DefaultHasher,
}

/// Runs one seed and checks every invariant.
pub fn run(seed: u64, config: &SimConfig) -> SeedReport {
    let mut world = World::new(seed, *config);
    world.start();
    while let Some(((at, seq), ev)) = world.queue.pop_first() {
        world.now_ms = at;
        world.events += 1;
        world.digest.write_u64(at);
        world.digest.write_u64(seq);
        world.digest.write_u64(ev.kind());
        world.handle(ev);
        if world.now_ms >= HORIZON_MS || world.settled() {
            break;
        }
    }
    world.finish()
}

/// The plan the simulation applies: the example plan's regions and `shop`, without its
/// schedule and instance limits, with DNS, lead time and analysis window short enough that a
/// migration takes about a minute and a half of simulated time.
fn sim_plan() -> Plan {
    let mut plan = Plan::example();
    plan.schedules.clear();
    for service in &mut plan.services {
        service.instance_limits = None;
        service.pools = PoolMode::Reactive;
        service.dns_ttl_secs = 10;
        service.cutover_ttl_secs = 5;
        service.dns_margin_secs = 5;
        service.lead_time_secs = 30;
        service.analysis_window_secs = 5;
        service.slo.min_samples = 20;
        service.min_instances = SHADOW_INSTANCES;
    }
    plan
}

impl World {
    fn new(seed: u64, config: SimConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let voters: Vec<u64> = (1..=REPLICAS as u64).collect();
        let nodes = (0..REPLICAS)
            .map(|i| Node {
                replica: Replica::new(i as u64 + 1, &voters, config.bugs.apply_twice),
                clock_jump_ms: 0,
                leadership: None,
                reports: BTreeMap::new(),
                waiting: BTreeMap::new(),
                last_applied: 0,
            })
            .collect();
        let delays = AgentDelays {
            provision_ms: 2_000,
            activation_ms: 1_000,
        };
        let plan = sim_plan();

        let agents = REGIONS
            .iter()
            .enumerate()
            .map(|(i, region)| {
                let mut agent = SimulatedAgent::new(region, delays);
                if i == 0 {
                    for k in 1..=SHADOW_INSTANCES {
                        let home = format!("{SERVICE}-{region}-{k}");
                        agent = agent.with_instance(&home, InstanceState::Active);
                    }
                }
                AgentSlot {
                    agent,
                    up: true,
                    routes: BTreeMap::new(),
                }
            })
            .collect();
        let (drop_p, dup_p, max_delay_ms) = if config.faults {
            (
                rng.random_range(0.0..0.05),
                rng.random_range(0.0..0.03),
                rng.random_range(1..30),
            )
        } else {
            (0.0, 0.0, 5)
        };
        let target_fails = rng.random_bool(0.3);
        let target_fails_late = target_fails && rng.random_bool(0.5);
        let executor = ExecutorConfig {
            command_timeout_ms: 5_000,
            schedules: false,
            pools: false,
            shadow_keep_ms: SHADOW_KEEP_MS,
            ..ExecutorConfig::default()
        };
        let operator = Operator {
            commands: vec![Command::ApplyPlan {
                plan: plan.clone(),
                at_ms: 0,
            }],
            in_flight: None,
            migration_asked: false,
            aborts_in_fence: StdRng::seed_from_u64(seed ^ ABORT_DRAW_SALT)
                .random_bool(ABORT_IN_FENCE_SHARE),
            abort_asked: false,
            abort_applied: false,
        };
        World {
            seed,
            config,
            rng,
            now_ms: 0,
            seq: 0,
            queue: BTreeMap::new(),
            // The only clock read: an origin the controller's instants are offsets from.
            origin: Instant::now(),
            nodes,
            agents,
            isolated: BTreeSet::new(),
            drop_p,
            dup_p,
            max_delay_ms,
            target_fails,
            target_fails_late,
            plan,
            operator,
            controller_config: ControllerConfig::from(&executor),
            next_leadership: 0,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            steps: BTreeMap::new(),
            phases: BTreeMap::new(),
            acks: Vec::new(),
            // The plan's primary region for the service is the first: its store is the writer.
            data: Data::new(REGIONS.len(), 0),
            two_writers: false,
            violations: Vec::new(),
            faults: BTreeMap::new(),
            stuck: BTreeSet::new(),
            events: 0,
            digest: DefaultHasher::new(),
        }
    }

    fn start(&mut self) {
        for n in 0..REPLICAS {
            self.start_replica(n);
            let offset = self.rng.random_range(0..TICK_MS);
            self.at(offset, Ev::Tick(n));
        }
        for a in 0..REGIONS.len() {
            let offset = self.rng.random_range(0..HEARTBEAT_MS);
            self.at(offset, Ev::Heartbeat(a));
        }
        self.at(TRAFFIC_MS, Ev::Traffic);
        self.at(OPERATOR_MS, Ev::Operator);
        if self.config.faults {
            let count = self.rng.random_range(2..=6);
            for _ in 0..count {
                let at = self.rng.random_range(FAULTS_FROM_MS..FAULTS_UNTIL_MS);
                let fault = self.draw_fault();
                self.at(at, Ev::Fault(fault));
            }
        }
        self.at(FAULTS_UNTIL_MS, Ev::HealAll);
    }

    fn draw_fault(&mut self) -> Fault {
        let leader = self.rng.random_bool(0.5);
        match self.rng.random_range(0..5) {
            0 => Fault::Crash {
                leader,
                down_ms: self.rng.random_range(500..10_000),
            },
            1 => Fault::Isolate {
                leader,
                for_ms: self.rng.random_range(500..10_000),
            },
            2 => Fault::AgentRestart {
                region: self.rng.random_range(0..REGIONS.len()),
                down_ms: self.rng.random_range(200..3_000),
            },
            3 => Fault::InstanceCrash {
                region: self.rng.random_range(0..REGIONS.len()),
            },
            _ => Fault::ClockJump {
                replica: self.rng.random_range(0..REPLICAS),
                ms: self.rng.random_range(-3_000..=3_000),
            },
        }
    }

    /// Schedules `ev` at absolute simulated time `at_ms`.
    fn at(&mut self, at_ms: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at_ms.max(self.now_ms), self.seq), ev);
    }

    fn after(&mut self, ms: u64, ev: Ev) {
        self.at(self.now_ms + ms, ev);
    }

    fn violation(&mut self, invariant: &'static str, detail: String) {
        self.violations.push(Violation {
            seed: self.seed,
            at_ms: self.now_ms,
            invariant,
            detail,
        });
    }

    fn quiet(&self) -> bool {
        self.now_ms >= FAULTS_UNTIL_MS
    }

    /// Sends `ev` over the network: lost when an end is down or cut off or by a seeded drop,
    /// delayed, and sometimes delivered twice.
    fn send(&mut self, from: Endpoint, to: Endpoint, ev: Ev) {
        let up = |w: &World, e: Endpoint| match e {
            Endpoint::Replica(n) => w.nodes[n].replica.is_up(),
            Endpoint::Agent(a) => w.agents[a].up,
        };
        let cut =
            |w: &World, e: Endpoint| matches!(e, Endpoint::Replica(n) if w.isolated.contains(&n));
        if !up(self, from) || cut(self, from) || cut(self, to) {
            return;
        }
        let faulty = !self.quiet();
        if faulty && self.rng.random_bool(self.drop_p) {
            return;
        }
        let delay = self.rng.random_range(1..=self.max_delay_ms);
        if faulty && self.rng.random_bool(self.dup_p) {
            let again = self.rng.random_range(1..=self.max_delay_ms * 4);
            if let Some(copy) = duplicate(&ev) {
                self.after(again, copy);
            }
        }
        self.after(delay, ev);
    }

    /// The agents' clock, Unix ms (agents' clocks do not jump).
    fn agent_ms(&self) -> u64 {
        START_UNIX_MS + self.now_ms
    }

    fn now_of(&self, n: usize) -> Now {
        let wall = (START_UNIX_MS + self.now_ms) as i64 + self.nodes[n].clock_jump_ms;
        Now {
            at: self.origin + Duration::from_millis(self.now_ms),
            unix_ms: wall as u64,
        }
    }

    fn start_replica(&mut self, n: usize) {
        let defaults = umbra_consensus::Config::default();
        let election = self
            .rng
            .random_range(defaults.election_ticks..2 * defaults.election_ticks);
        if let Err(e) = self.nodes[n].replica.start(election) {
            self.violation(
                "replica_behind",
                format!("replica {} cannot start: {e}", n + 1),
            );
        }
        self.nodes[n].last_applied = self.nodes[n].replica.applied().unwrap_or(0);
    }

    fn crash_replica(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.replica.crash();
        if let Some(mut l) = node.leadership.take() {
            l.controller.stand_down();
        }
        node.reports.clear();
        node.waiting.clear();
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(n) => {
                self.after(TICK_MS, Ev::Tick(n));
                if !self.nodes[n].replica.is_up() {
                    return;
                }
                self.nodes[n].replica.tick();
                self.pump(n);
                self.lead(n);
                self.pump(n);
            }
            Ev::Raft(message) => {
                let n = message.to as usize - 1;
                self.nodes[n].replica.step(message);
                self.pump(n);
            }
            Ev::Command {
                region,
                from,
                leadership,
                command,
            } => self.agent_command(region, from, leadership, command),
            Ev::Answer {
                replica,
                leadership,
                op_id,
                outcome,
            } => self.answered(replica, leadership, &op_id, Delivery::Answered(outcome)),
            Ev::CommandTimeout {
                replica,
                leadership,
                op_id,
            } => {
                let why = Delivery::Unanswered("timed out".to_owned());
                self.answered(replica, leadership, &op_id, why);
            }
            Ev::Report { replica, report } => {
                if self.nodes[replica].replica.is_up() {
                    let region = report.region.clone();
                    self.nodes[replica]
                        .reports
                        .insert(region, (report, self.now_ms));
                }
            }
            Ev::AgentTimer(a) => self.agent_progress(a),
            Ev::Heartbeat(a) => {
                self.after(HEARTBEAT_MS, Ev::Heartbeat(a));
                if self.agents[a].up {
                    let now = self.agent_ms();
                    let report = self.agents[a].agent.report(now);
                    for n in 0..REPLICAS {
                        let report = Ev::Report {
                            replica: n,
                            report: report.clone(),
                        };
                        self.send(Endpoint::Agent(a), Endpoint::Replica(n), report);
                    }
                }
            }
            Ev::ProposalTimeout {
                replica,
                leadership,
                index,
            } => {
                let waiting = matches!(
                    &self.nodes[replica].leadership,
                    Some(l) if l.id == leadership && l.driver == Driver::Proposing { index }
                );
                if waiting && let Some(w) = self.nodes[replica].waiting.remove(&index) {
                    let result = Proposed::Unavailable("timed out".to_owned());
                    self.proposal_ended(replica, w.proposer, result);
                }
            }
            Ev::Traffic => {
                self.after(TRAFFIC_MS, Ev::Traffic);
                self.traffic();
            }
            Ev::Operator => {
                self.after(OPERATOR_MS, Ev::Operator);
                self.operate();
            }
            Ev::Fault(fault) => self.fault(fault),
            Ev::Restart(n) => {
                if !self.nodes[n].replica.is_up() {
                    self.start_replica(n);
                    self.pump(n);
                }
            }
            Ev::Rejoin(n) => {
                self.isolated.remove(&n);
            }
            Ev::AgentUp(a) => self.agents[a].up = true,
            Ev::HealAll => {
                self.isolated.clear();
                for a in 0..REGIONS.len() {
                    self.agents[a].up = true;
                }
                for n in 0..REPLICAS {
                    if !self.nodes[n].replica.is_up() {
                        self.start_replica(n);
                        self.pump(n);
                    }
                }
            }
        }
    }

    /// The replica that leads now (the lowest id among those that think so and run).
    fn leader(&self) -> Option<usize> {
        (0..REPLICAS)
            .find(|&n| !self.isolated.contains(&n) && self.nodes[n].replica.leads().is_some())
    }

    /// Injects `fault`, counted when it found something to hit.
    fn fault(&mut self, fault: Fault) {
        if self.inject(fault) {
            *self.faults.entry(fault.name()).or_default() += 1;
        }
    }

    fn inject(&mut self, fault: Fault) -> bool {
        let pick = |w: &mut World, leader: bool| -> Option<usize> {
            let lead = w.leader();
            if leader {
                return lead;
            }
            let others: Vec<usize> = (0..REPLICAS)
                .filter(|&n| Some(n) != lead && w.nodes[n].replica.is_up())
                .collect();
            (!others.is_empty()).then(|| others[w.rng.random_range(0..others.len())])
        };
        match fault {
            Fault::Crash { leader, down_ms } => {
                let Some(n) = pick(self, leader) else {
                    return false;
                };
                self.crash_replica(n);
                self.after(down_ms, Ev::Restart(n));
            }
            Fault::Isolate { leader, for_ms } => {
                let Some(n) = pick(self, leader) else {
                    return false;
                };
                self.isolated.insert(n);
                self.after(for_ms, Ev::Rejoin(n));
            }
            Fault::AgentRestart { region, down_ms } => {
                if !self.agents[region].up {
                    return false;
                }
                let slot = &mut self.agents[region];
                slot.up = false;
                slot.agent.restart(START_UNIX_MS + self.now_ms);
                slot.routes.clear();
                self.after(down_ms, Ev::AgentUp(region));
            }
            Fault::InstanceCrash { region } => {
                let running: Vec<String> = self.agents[region]
                    .agent
                    .instances()
                    .filter(|(_, s)| matches!(s, InstanceState::Active | InstanceState::Warm))
                    .map(|(id, _)| id.to_owned())
                    .collect();
                if running.is_empty() {
                    return false;
                }
                let id = running[self.rng.random_range(0..running.len())].clone();
                let now = self.agent_ms();
                self.agents[region].agent.crash_instance(&id, now);
            }
            Fault::ClockJump { replica, ms } => self.nodes[replica].clock_jump_ms += ms,
        }
        true
    }

    /// Clients send a second's requests to the service's serving region; its front sends the
    /// migration's share on to the target's front, which fails half of them when the target
    /// is made to break its SLO.
    fn traffic(&mut self) {
        let overview = self
            .most_applied()
            .and_then(|n| self.nodes[n].replica.state())
            .map(|s| s.overview());
        if let Some(overview) = &overview {
            self.check_progress(overview);
        }
        let serving = overview
            .and_then(|o| o.services.get(SERVICE).map(|x| x.primary_region.clone()))
            .unwrap_or_else(|| REGIONS[0].to_owned());
        let Some(from) = REGIONS.iter().position(|r| *r == serving) else {
            return;
        };
        if !self.agents[from].up {
            return;
        }
        let source = &mut self.agents[from].agent;
        source.handle_requests(REQUESTS_PER_SEC);
        let share = source.share(SERVICE).cloned();
        let forwarded_writes = share
            .as_ref()
            .map_or(0, |s| WRITES_PER_SEC * u64::from(s.percent) / 100);
        self.client_writes(from, WRITES_PER_SEC - forwarded_writes);
        let Some(share) = share else {
            return;
        };
        let front = self
            .plan
            .regions
            .iter()
            .find(|r| r.front == share.target_front);
        let Some(to) = front.and_then(|r| REGIONS.iter().position(|x| *x == r.name)) else {
            return;
        };
        if !self.agents[to].up {
            return;
        }
        let forwarded = REQUESTS_PER_SEC * u64::from(share.percent) / 100;
        self.agents[to].agent.handle_requests(forwarded);
        let failing =
            self.target_fails && (!self.target_fails_late || self.data.writers().contains(&to));
        if failing && to == 1 {
            self.agents[to].agent.handle_errors(forwarded / 2);
        }
        self.client_writes(to, forwarded_writes);
    }

    /// `count` client writes reach region `r`'s front. Each is acknowledged by the store that
    /// accepts writes or refused (the fence window); the refused are the client's to retry.
    fn client_writes(&mut self, r: usize, count: u64) {
        for _ in 0..count {
            self.data.handle_write(r);
        }
    }

    /// Never stuck: a migration stays in a phase no longer than the phase's own bound (its
    /// deadline, its cutover time, its analysis window, its drain) plus [`STUCK_GRACE_MS`].
    fn check_progress(&mut self, overview: &Overview) {
        let wall = START_UNIX_MS + self.now_ms;
        for m in overview.migrations.values() {
            let spec = &m.spec;
            let since = m.phase_since_ms;
            let bound = match m.phase {
                Phase::Planned => spec.cutover_at_ms.saturating_sub(spec.lead_time_ms),
                Phase::Provisioning => since + spec.deadlines.provisioning_ms,
                Phase::Warming => since + spec.deadlines.warming_ms,
                Phase::Replicating => since + spec.deadlines.replicating_ms,
                Phase::Ready => spec.cutover_at_ms.max(since),
                Phase::CuttingOver { .. } => since + spec.analysis_window_ms,
                Phase::Draining => since + spec.drain_ms.unwrap_or(DRAIN_BOUND_MS),
                Phase::RollingBack => since + spec.deadlines.rolling_back_ms,
                Phase::Completed | Phase::RolledBack | Phase::Failed => continue,
            };
            let key = (spec.id.clone(), m.phase.to_string());
            if wall > bound + STUCK_GRACE_MS && self.stuck.insert(key) {
                let detail = format!(
                    "{} in {} for {} s, past its bound by more than {} s",
                    spec.id,
                    m.phase,
                    wall.saturating_sub(since) / 1_000,
                    STUCK_GRACE_MS / 1_000
                );
                self.violation("migration_stuck", detail);
            }
        }
    }

    fn most_applied(&self) -> Option<usize> {
        (0..REPLICAS)
            .filter(|&n| self.nodes[n].replica.is_up())
            .max_by_key(|&n| (self.nodes[n].replica.applied(), std::cmp::Reverse(n)))
    }

    /// The operator applies the plan, then asks for the migration; each command is retried
    /// on the leader until it applied.
    fn operate(&mut self) {
        if let Some((_, deadline)) = self.operator.in_flight
            && self.now_ms >= deadline
        {
            self.operator.in_flight = None;
        }
        if self.operator.in_flight.is_some() {
            return;
        }
        let Some(command) = self.operator.commands.first().cloned() else {
            return;
        };
        let Some(n) = self.leader() else {
            return;
        };
        let wall = self.now_of(n).unix_ms;
        let command = match command {
            Command::ApplyPlan { plan, .. } => Command::ApplyPlan { plan, at_ms: wall },
            Command::CreateMigration { request, .. } => Command::CreateMigration {
                request: MigrationRequest {
                    cutover_at_ms: wall + CUTOVER_AFTER_MS,
                    ..request
                },
                at_ms: wall,
            },
            Command::RequestRollback { id, reason, .. } => Command::RequestRollback {
                id,
                reason,
                at_ms: wall,
            },
            other => other,
        };
        if let Some((index, term)) = self.nodes[n].replica.propose(encode_command(&command)) {
            self.nodes[n].waiting.insert(
                index,
                Waiter {
                    term,
                    proposer: Proposer::Operator,
                },
            );
            let deadline = self.now_ms + PROPOSAL_TIMEOUT_MS;
            self.operator.in_flight = Some((n, deadline));
            self.pump(n);
        }
    }

    fn operator_done(&mut self, result: Proposed) {
        self.operator.in_flight = None;
        let command = self.operator.commands.first().cloned();
        if matches!(
            (&result, &command),
            (Proposed::Applied, Some(Command::RequestRollback { .. }))
        ) {
            self.operator.abort_applied = true;
        }
        match (&result, command) {
            // A rollback asked once the migration ended (the promotion won and it completed)
            // is refused: nothing to roll back.
            (Proposed::Applied, _)
            | (
                Proposed::Rejected(_),
                Some(Command::CreateMigration { .. } | Command::RequestRollback { .. }),
            ) => {
                self.operator.commands.remove(0);
                if !self.operator.migration_asked {
                    self.operator.migration_asked = true;
                    self.operator.commands.push(Command::CreateMigration {
                        request: MigrationRequest::new(SERVICE, REGIONS[1], 0),
                        at_ms: 0,
                    });
                }
            }
            _ => {}
        }
    }

    /// Handles everything replica `n` has ready: messages out, applied entries checked and
    /// handed to whoever waits for them, reads answered and rounds run.
    fn pump(&mut self, n: usize) {
        loop {
            let out = match self.nodes[n].replica.handle_ready() {
                Ok(out) => out,
                Err(e) => {
                    self.violation("replica_behind", format!("replica {}: {e}", n + 1));
                    return;
                }
            };
            if out.messages.is_empty() && out.applied.is_empty() && out.reads.is_empty() {
                break;
            }
            for message in out.messages {
                let to = message.to as usize - 1;
                self.send(
                    Endpoint::Replica(n),
                    Endpoint::Replica(to),
                    Ev::Raft(message),
                );
            }
            for entry in out.applied {
                self.check_applied(n, &entry);
                self.resolve(n, &entry);
            }
            for (context, index) in out.reads {
                if let Some(l) = &mut self.nodes[n].leadership
                    && let Driver::Reading {
                        context: ours,
                        since_ms,
                    } = &l.driver
                    && *ours == context
                {
                    l.driver = Driver::ReadAt {
                        index,
                        since_ms: *since_ms,
                    };
                }
            }
            self.maybe_round(n);
        }
        self.maybe_round(n);
    }

    /// Invariants on one applied entry: in order, once, identical state and entry on every
    /// replica at the same index, no step twice, no phase after a terminal one.
    fn check_applied(&mut self, n: usize, entry: &AppliedEntry) {
        let last = self.nodes[n].last_applied;
        if entry.index == last {
            self.violation(
                "entry_applied_twice",
                format!("replica {} applied entry {} again", n + 1, entry.index),
            );
        } else if entry.index != last + 1 {
            self.violation(
                "applied_out_of_order",
                format!("replica {} applied {} after {last}", n + 1, entry.index),
            );
        }
        self.nodes[n].last_applied = entry.index;
        match self.committed.get(&entry.index) {
            Some((term, state)) => {
                if *term != entry.term {
                    let detail = format!(
                        "replica {} applied entry {} of term {} where another applied term {term}",
                        n + 1,
                        entry.index,
                        entry.term
                    );
                    self.violation("committed_entry_differs", detail);
                } else if **state != *entry.state {
                    let detail = format!(
                        "replica {} holds another state than its peers after entry {}",
                        n + 1,
                        entry.index
                    );
                    self.violation("replicas_differ", detail);
                }
            }
            None => {
                self.committed
                    .insert(entry.index, (entry.term, entry.state.clone()));
            }
        }
        let Some(outcome) = &entry.outcome else {
            return;
        };
        if !matches!(decode_outcome(outcome), Ok(Ok(_))) {
            return;
        }
        let Some((_, data)) = self.nodes[n].replica.entry(entry.index) else {
            return;
        };
        let Ok(Command::Transition { id, from, to, .. }) = decode_command(&data) else {
            return;
        };
        let index = entry.index;
        let first = *self
            .steps
            .entry((id.clone(), from.to_string(), to.to_string()))
            .or_insert(index);
        if first != index {
            let detail = format!("{id} {from} → {to} applied at {first} and again at {index}");
            self.violation("step_applied_twice", detail);
        }
        match self.phases.get(&id).copied() {
            Some((_, at)) if at >= index => {}
            Some((was, _)) if was.is_terminal() => {
                let detail = format!("{id} left terminal {was} for {to} at entry {index}");
                self.violation("left_terminal_phase", detail);
            }
            _ => {
                self.phases.insert(id, (to, index));
            }
        }
    }

    /// Hands an applied entry's outcome to whoever proposed it on this replica.
    fn resolve(&mut self, n: usize, entry: &AppliedEntry) {
        let Some(waiter) = self.nodes[n].waiting.remove(&entry.index) else {
            return;
        };
        let result = if waiter.term != entry.term {
            Proposed::Unavailable("the entry was replaced by a newer leader's log".to_owned())
        } else {
            self.acks.push(Ack {
                index: entry.index,
                term: entry.term,
            });
            match entry.outcome.as_deref().map(decode_outcome) {
                Some(Ok(Ok(_))) => Proposed::Applied,
                Some(Ok(Err(rejected))) => Proposed::Rejected(rejected.to_string()),
                Some(Err(e)) => Proposed::Unavailable(format!("undecodable outcome: {e}")),
                None => Proposed::Unavailable("an empty entry".to_owned()),
            }
        };
        self.proposal_ended(n, waiter.proposer, result);
    }

    fn proposal_ended(&mut self, n: usize, proposer: Proposer, result: Proposed) {
        match proposer {
            Proposer::Operator => {
                if matches!(self.operator.in_flight, Some((m, ..)) if m == n) {
                    self.operator_done(result);
                }
            }
            Proposer::Controller { leadership, key } => {
                let now = self.now_of(n);
                let Some(l) = &mut self.nodes[n].leadership else {
                    return;
                };
                if l.id != leadership {
                    return;
                }
                l.driver = Driver::Idle;
                l.controller.handle_proposal(&key, result, now);
                self.carry_out(n);
            }
        }
    }

    /// Starts or ends the leadership of replica `n` as Raft says, and starts a round (its
    /// linearizable read) each tick while it leads.
    fn lead(&mut self, n: usize) {
        let leads = self.nodes[n].replica.leads();
        if let Some(term) = leads
            && let Some(&other) = self.leaders.get(&term)
            && other != n
        {
            let detail = format!("replicas {} and {} both led term {term}", other + 1, n + 1);
            self.violation("two_leaders_in_term", detail);
        }
        if let Some(term) = leads {
            self.leaders.insert(term, n);
        }
        let current = self.nodes[n].leadership.as_ref().map(|l| l.term);
        if current.is_some()
            && current != leads
            && let Some(mut old) = self.nodes[n].leadership.take()
        {
            old.controller.stand_down();
        }
        if let Some(term) = leads
            && self.nodes[n].leadership.is_none()
        {
            self.next_leadership += 1;
            let controller = Controller::new(self.controller_config.clone(), term, self.now_of(n));
            // Reports sent to an earlier leadership describe an older world.
            self.nodes[n].reports.clear();
            self.nodes[n].leadership = Some(Leadership {
                id: self.next_leadership,
                term,
                controller,
                driver: Driver::Idle,
                ops: BTreeMap::new(),
                reads: 0,
                pools: BTreeMap::new(),
            });
        }
        let now_ms = self.now_ms;
        let Some(l) = &mut self.nodes[n].leadership else {
            return;
        };
        match l.driver {
            Driver::Reading { since_ms, .. } | Driver::ReadAt { since_ms, .. }
                if now_ms >= since_ms + READ_TIMEOUT_MS =>
            {
                l.driver = Driver::Idle;
            }
            _ => {}
        }
        if l.driver == Driver::Idle {
            l.reads += 1;
            let context = format!("{}/{}", l.id, l.reads).into_bytes();
            l.driver = Driver::Reading {
                context: context.clone(),
                since_ms: now_ms,
            };
            self.nodes[n].replica.read_index(context);
        }
    }

    /// Runs the round whose read point replica `n` has applied.
    fn maybe_round(&mut self, n: usize) {
        let applied = self.nodes[n].replica.applied().unwrap_or(0);
        let now = self.now_of(n);
        let node = &mut self.nodes[n];
        let Some(l) = &mut node.leadership else {
            return;
        };
        let Driver::ReadAt { index, .. } = l.driver else {
            return;
        };
        if applied < index {
            return;
        }
        let Some(state) = node.replica.state() else {
            return;
        };
        l.driver = Driver::Idle;
        // A round reports every pool it still runs; one that left (its service moved) is gone.
        l.pools.clear();
        let overview = state.overview();
        for (region, (report, at_ms)) in &node.reports {
            let at = self.origin + Duration::from_millis(*at_ms);
            l.controller.handle_report(region, report.clone(), at);
        }
        l.controller.handle_overview(overview, now);
        self.carry_out(n);
    }

    /// Does what the controller of replica `n` asks for until it asks for nothing more or
    /// awaits a proposal: sizing answered at once, commands sent, one proposal at a time.
    fn carry_out(&mut self, n: usize) {
        loop {
            let now = self.now_of(n);
            let Some(l) = &mut self.nodes[n].leadership else {
                return;
            };
            if l.driver != Driver::Idle {
                return;
            }
            drain_events(l);
            while let Some(job) = l.controller.poll_sizing() {
                let size = ShadowSize {
                    instances: SHADOW_INSTANCES,
                    reason: "the simulation's fixed shadow pool".to_owned(),
                };
                l.controller.handle_sizing(&job.migration, size, now);
            }
            let mut sends = Vec::new();
            while let Some(outgoing) = l.controller.poll_command() {
                if l.ops.contains_key(&outgoing.command.op_id) {
                    l.controller
                        .handle_outcome(&outgoing.operation, Delivery::Duplicate, now);
                } else {
                    l.ops
                        .insert(outgoing.command.op_id.clone(), outgoing.operation.clone());
                    sends.push(outgoing);
                }
            }
            let proposal = l.controller.poll_proposal();
            let id = l.id;
            for outgoing in sends {
                let Some(region) = REGIONS.iter().position(|r| *r == outgoing.command.region)
                else {
                    continue;
                };
                let op_id = outgoing.command.op_id.clone();
                let timeout = outgoing.timeout.as_millis() as u64;
                let command = Ev::Command {
                    region,
                    from: n,
                    leadership: id,
                    command: outgoing.command,
                };
                self.send(Endpoint::Replica(n), Endpoint::Agent(region), command);
                self.after(
                    timeout,
                    Ev::CommandTimeout {
                        replica: n,
                        leadership: id,
                        op_id,
                    },
                );
            }
            let Some(proposal) = proposal else {
                break;
            };
            let data = encode_command(&proposal.command);
            match self.nodes[n].replica.propose(data) {
                Some((index, term)) => {
                    let node = &mut self.nodes[n];
                    node.waiting.insert(
                        index,
                        Waiter {
                            term,
                            proposer: Proposer::Controller {
                                leadership: id,
                                key: proposal.key,
                            },
                        },
                    );
                    if let Some(l) = &mut node.leadership {
                        l.driver = Driver::Proposing { index };
                    }
                    self.after(
                        PROPOSAL_TIMEOUT_MS,
                        Ev::ProposalTimeout {
                            replica: n,
                            leadership: id,
                            index,
                        },
                    );
                    return;
                }
                None => {
                    if let Some(l) = &mut self.nodes[n].leadership {
                        let result = Proposed::Unavailable("not leading".to_owned());
                        l.controller.handle_proposal(&proposal.key, result, now);
                    }
                }
            }
        }
        if let Some(l) = &mut self.nodes[n].leadership {
            drain_events(l);
        }
    }

    /// A command's delivery reached (or timed out on) replica `n`'s leadership.
    fn answered(&mut self, n: usize, leadership: u64, op_id: &str, delivery: Delivery) {
        let now = self.now_of(n);
        let Some(l) = &mut self.nodes[n].leadership else {
            return;
        };
        if l.id != leadership {
            return;
        }
        let Some(operation) = l.ops.remove(op_id) else {
            return;
        };
        l.controller.handle_outcome(&operation, delivery, now);
    }

    /// A command reached agent `a`.
    fn agent_command(&mut self, a: usize, from: usize, leadership: u64, command: AgentCommand) {
        if !self.agents[a].up {
            return;
        }
        let slot = &mut self.agents[a];
        slot.routes
            .insert(command.op_id.clone(), (from, leadership));
        let planted = self.config.bugs.ignore_shadow_release
            && a == 1
            && command.op_id.contains("/rolled_back/")
            && command.op_id.contains("/release_shadow");
        if planted {
            let op_id = command.op_id;
            let outcome = CommandOutcome::Done(CommandResult::Instances(Vec::new()));
            let answer = Ev::Answer {
                replica: from,
                leadership,
                op_id,
                outcome,
            };
            self.send(Endpoint::Agent(a), Endpoint::Replica(from), answer);
            return;
        }
        let moves_data = replicated_instance(&command.action)
            .map(|i| (command.action.clone(), slot.agent.replication(i).cloned()));
        slot.agent
            .handle_command(command, START_UNIX_MS + self.now_ms);
        if let Some((action, before)) = moves_data {
            self.data_moved(a, &action, before);
        }
        self.agent_progress(a);
    }

    /// Agent `a` carried out `action` on a replication that was `before`: region `a`'s store
    /// follows, is promoted or stops following, or the store it follows is fenced. Only what
    /// the agent's replication state shows it did counts (a repeated operation id gets its
    /// first outcome back and does nothing again), and only replication between regions (a
    /// follower inside a region is part of its region's store).
    fn data_moved(&mut self, a: usize, action: &AgentAction, before: Option<ReplicationReport>) {
        let Some(instance) = replicated_instance(action) else {
            return;
        };
        let after = self.agents[a].agent.replication(instance).cloned();
        let Some(seen) = after.as_ref().or(before.as_ref()) else {
            return;
        };
        let from = self
            .agents
            .iter()
            .position(|slot| slot.agent.hands_out(&seen.source));
        let Some(source) = from.filter(|&s| s != a) else {
            return;
        };
        let became = |flag: fn(&ReplicationReport) -> bool| {
            after.as_ref().is_some_and(flag) && !before.as_ref().is_some_and(flag)
        };
        match action {
            AgentAction::StartReplication { .. } if after.is_some() && after != before => {
                self.data.handle_follow(a, source);
            }
            // Planted bug: the fence is answered as done (the agent lets the promotion
            // follow) and the fenced store keeps accepting writes.
            AgentAction::FenceSource { .. }
                if became(|r| r.source_fenced) && !self.config.bugs.fence_ignored =>
            {
                self.data.handle_fence(source);
                self.abort_in_fence();
            }
            AgentAction::Promote { .. } if became(|r| r.promoted) => self.data.handle_promote(a),
            AgentAction::UnfenceSource { .. }
                if before.as_ref().is_some_and(|r| r.source_fenced)
                    && after.as_ref().is_some_and(|r| !r.source_fenced) =>
            {
                self.data.handle_unfence(source);
            }
            AgentAction::StopReplication { .. } if after.is_none() => {
                self.data.handle_unfollow(a);
            }
            _ => return,
        }
        self.check_writers();
    }

    /// This seed's operator asks for a rollback as the source's writer is fenced for the move
    /// into the target, once: the rollback must lift the fence (or, if the promotion wins the
    /// race, hand the writer back).
    fn abort_in_fence(&mut self) {
        if !self.operator.aborts_in_fence || self.operator.abort_asked || !self.data.fenced(0) {
            return;
        }
        let moving = self
            .phases
            .iter()
            .find(|(_, (phase, _))| matches!(phase, Phase::CuttingOver { .. }));
        let Some((id, _)) = moving else {
            return;
        };
        self.operator.abort_asked = true;
        self.operator.commands.push(Command::RequestRollback {
            id: id.clone(),
            reason: "the writer's move waits; aborting".to_owned(),
            at_ms: 0,
        });
    }

    /// At most one writer at any instant, checked whenever a store changes what it does with
    /// writes; reported when a second writer appears, not again while it lasts.
    fn check_writers(&mut self) {
        let writers = self.data.writers();
        let two = writers.len() > 1;
        if two && !self.two_writers {
            let regions: Vec<&str> = writers.iter().map(|&r| REGIONS[r]).collect();
            let detail = format!("the stores of {regions:?} all accept writes");
            self.violation("single_writer", detail);
        }
        self.two_writers = two;
    }

    /// Agent `a`'s commands due by now complete; answers go back to their senders.
    fn agent_progress(&mut self, a: usize) {
        if !self.agents[a].up {
            return;
        }
        let now_ms = self.agent_ms();
        let slot = &mut self.agents[a];
        slot.agent.handle_timeout(now_ms);
        let mut answers = Vec::new();
        while let Some(answer) = slot.agent.poll_answer() {
            if let Some(&(replica, leadership)) = slot.routes.get(&answer.op_id) {
                answers.push(Ev::Answer {
                    replica,
                    leadership,
                    op_id: answer.op_id,
                    outcome: answer.outcome,
                });
            }
        }
        let next = slot.agent.poll_timeout();
        for answer in answers {
            let Ev::Answer { replica, .. } = &answer else {
                unreachable!("built as answers")
            };
            let to = Endpoint::Replica(*replica);
            self.send(Endpoint::Agent(a), to, answer);
        }
        if let Some(at) = next {
            self.at(at.saturating_sub(START_UNIX_MS), Ev::AgentTimer(a));
        }
    }

    /// Whether the run may end: faults over, every replica caught up, the operator done,
    /// every migration terminal and any rolled-back shadow past its release time.
    fn settled(&mut self) -> bool {
        if !self.quiet() || !self.operator.commands.is_empty() || !self.events.is_multiple_of(64) {
            return false;
        }
        let applied: Vec<Option<u64>> = (0..REPLICAS)
            .map(|n| self.nodes[n].replica.applied())
            .collect();
        if applied.iter().any(|a| a.is_none() || *a != applied[0]) {
            return false;
        }
        let Some(state) = self.nodes[0].replica.state() else {
            return false;
        };
        let wall = START_UNIX_MS + self.now_ms;
        state.overview().migrations.values().all(|m| {
            m.phase.is_terminal()
                && (m.phase != Phase::RolledBack
                    || wall >= m.phase_since_ms + SHADOW_GONE_AFTER_MS + 5_000)
        }) && self.pools_converged().is_empty()
    }

    /// Pools whose target and actual instances differ, as the current leader last saw them.
    fn pools_converged(&self) -> Vec<String> {
        let Some(n) = self.leader() else {
            return vec!["no leader".to_owned()];
        };
        let Some(l) = &self.nodes[n].leadership else {
            return vec!["no leadership".to_owned()];
        };
        l.pools
            .values()
            .filter(|v| v.target != v.actual)
            .map(|v| {
                format!(
                    "{} in {}: target {:?}, actual {:?}",
                    v.service, v.region, v.target, v.actual
                )
            })
            .collect()
    }

    /// The end-of-run invariants, then the report.
    fn finish(mut self) -> SeedReport {
        self.final_checks();
        let final_state = self
            .most_applied()
            .and_then(|n| self.nodes[n].replica.state())
            .map(umbra_consensus::StateMachine::snapshot)
            .unwrap_or_default();
        let migrations = self
            .most_applied()
            .and_then(|n| self.nodes[n].replica.state())
            .map(|s| {
                s.overview()
                    .migrations
                    .values()
                    .map(|m| (m.spec.id.clone(), m.phase.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        SeedReport {
            seed: self.seed,
            violations: self.violations,
            sim_ms: self.now_ms,
            events: self.events,
            migrations,
            target_fails: self.target_fails,
            target_fails_late: self.target_fails_late,
            aborted_in_fence: self.operator.abort_applied,
            writers: self
                .data
                .writers()
                .into_iter()
                .map(|r| REGIONS[r].to_owned())
                .collect(),
            writes_acknowledged: self.data.acknowledged(),
            faults: self
                .faults
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            trace_digest: self.digest.finish(),
            final_state,
        }
    }

    /// No acknowledged client write lost: the store that accepts writes at the end holds
    /// every write any store acknowledged (with none accepting, none is reachable).
    fn check_data_kept(&mut self) {
        let writers = self.data.writers();
        if writers.is_empty() {
            let detail = format!(
                "no store accepts writes at the end: {} acknowledged writes are unreachable",
                self.data.acknowledged()
            );
            self.violation("acknowledged_data_write_lost", detail);
        }
        for r in writers {
            let missing = self.data.missing(r);
            if !missing.is_empty() {
                let detail = format!(
                    "{} of {} acknowledged writes are not in the store of {}, a writer at the end (first: {:?})",
                    missing.len(),
                    self.data.acknowledged(),
                    REGIONS[r],
                    &missing[..missing.len().min(5)]
                );
                self.violation("acknowledged_data_write_lost", detail);
            }
        }
    }

    fn final_checks(&mut self) {
        // No acknowledged write lost: every replica's log holds each acknowledged entry.
        let acks = std::mem::take(&mut self.acks);
        for ack in &acks {
            for n in 0..REPLICAS {
                let term = self.nodes[n].replica.entry(ack.index).map(|(t, _)| t);
                if term != Some(ack.term) {
                    let detail = format!(
                        "entry {} of term {} acknowledged, replica {} holds {term:?}",
                        ack.index,
                        ack.term,
                        n + 1
                    );
                    self.violation("acknowledged_write_lost", detail);
                }
            }
        }
        self.check_data_kept();
        let applied: Vec<Option<u64>> = (0..REPLICAS)
            .map(|n| self.nodes[n].replica.applied())
            .collect();
        if applied.iter().any(|a| a.is_none() || *a != applied[0]) {
            self.violation(
                "replica_behind",
                format!("applied indexes at the end: {applied:?}"),
            );
        }
        let Some(n) = self.most_applied() else {
            return;
        };
        let Some(overview) = self.nodes[n].replica.state().map(|s| s.overview()) else {
            return;
        };
        if overview.migrations.is_empty() {
            self.violation(
                "migration_not_terminal",
                "the operator's migration was never created".to_owned(),
            );
        }
        let wall = START_UNIX_MS + self.now_ms;
        for m in overview.migrations.values() {
            let id = &m.spec.id;
            match m.phase {
                Phase::Completed => {}
                Phase::RolledBack => {
                    if !self.target_fails && !self.operator.abort_applied {
                        let detail = format!("{id} rolled back with a healthy target");
                        self.violation("rolled_back_without_cause", detail);
                    }
                    let Some(to) = REGIONS.iter().position(|r| *r == m.spec.to) else {
                        continue;
                    };
                    let shadows = shadow_ids(m);
                    let left: Vec<(String, InstanceState)> = self.agents[to]
                        .agent
                        .instances()
                        .filter(|(i, _)| shadows.iter().any(|s| s == i))
                        .map(|(i, s)| (i.to_owned(), s))
                        .collect();
                    let serving = left.iter().any(|(_, s)| *s == InstanceState::Active);
                    let kept_too_long =
                        !left.is_empty() && wall >= m.phase_since_ms + SHADOW_GONE_AFTER_MS;
                    let from = REGIONS.iter().position(|r| *r == m.spec.from);
                    let shared = from.and_then(|f| self.agents[f].agent.share(&m.spec.service));
                    if serving || kept_too_long || shared.is_some() {
                        let detail = format!(
                            "{id} rolled back, yet its shadows are {left:?} and the source front shares {:?}",
                            shared.map(|s| s.percent)
                        );
                        self.violation("rolled_back_shadow_serves", detail);
                    }
                }
                Phase::Failed => {
                    let detail = format!("{id} failed: its rollback was not confirmed in time");
                    self.violation("migration_failed", detail);
                }
                other => {
                    let detail = format!("{id} still {other} at the end");
                    self.violation("migration_not_terminal", detail);
                }
            }
            if m.phase == Phase::Completed && self.target_fails {
                let detail = format!("{id} completed though its target failed half its requests");
                self.violation("rolled_back_without_cause", detail);
            }
        }
        for pool in self.pools_converged() {
            self.violation("pool_not_converged", pool);
        }
        self.acks = acks;
    }
}

/// The instance whose replication `action` changes, if it is a replication command.
fn replicated_instance(action: &AgentAction) -> Option<&str> {
    match action {
        AgentAction::StartReplication { instance, .. }
        | AgentAction::FenceSource { instance }
        | AgentAction::Promote { instance }
        | AgentAction::UnfenceSource { instance }
        | AgentAction::StopReplication { instance } => Some(instance),
        _ => None,
    }
}

/// The leadership's events: the pools' views are kept for the convergence check; the rest is
/// what the product exports as metrics and status, which the simulation does not need.
fn drain_events(l: &mut Leadership) {
    while let Some(event) = l.controller.poll_event() {
        if let Event::Pool(view) = event {
            l.pools
                .insert((view.service.clone(), view.region.clone()), *view);
        }
    }
}

/// A second copy of a message, for the network's duplicates (timers are never sent).
fn duplicate(ev: &Ev) -> Option<Ev> {
    Some(match ev {
        Ev::Raft(m) => Ev::Raft(m.clone()),
        Ev::Command {
            region,
            from,
            leadership,
            command,
        } => Ev::Command {
            region: *region,
            from: *from,
            leadership: *leadership,
            command: command.clone(),
        },
        Ev::Answer {
            replica,
            leadership,
            op_id,
            outcome,
        } => Ev::Answer {
            replica: *replica,
            leadership: *leadership,
            op_id: op_id.clone(),
            outcome: outcome.clone(),
        },
        Ev::Report { replica, report } => Ev::Report {
            replica: *replica,
            report: report.clone(),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sim_plan_applies_to_an_empty_state() {
        let mut state = umbra_orchestrator::state::OrchestratorState::default();
        let applied = state.apply_command(
            1,
            &Command::ApplyPlan {
                plan: sim_plan(),
                at_ms: START_UNIX_MS,
            },
        );
        assert!(applied.is_ok(), "{applied:?}");
    }
}
