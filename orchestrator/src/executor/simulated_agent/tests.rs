//! The simulated agent against the rules of the real one: delays honoured, transitions
//! measured, every command answered (once per id), removed instances gone from reports.

use umbra_proto::agent::{
    AgentAction, AgentCommand, CommandOutcome, CommandResult, InstanceState, Refusal,
};

use super::{AgentDelays, Answer, Census, SimulatedAgent};
use crate::executor::pools;

const REGION: &str = "eu-west";
const DELAYS: AgentDelays = AgentDelays {
    provision_ms: 100_000,
    activation_ms: 20_000,
};

fn command(op_id: &str, action: AgentAction) -> AgentCommand {
    AgentCommand {
        op_id: op_id.to_owned(),
        term: 1,
        region: REGION.to_owned(),
        action,
    }
}

fn provision(ids: &[&str]) -> AgentAction {
    AgentAction::Provision {
        instances: ids.iter().map(|id| id.to_string()).collect(),
    }
}

fn activate(id: &str) -> AgentAction {
    AgentAction::Activate {
        instance: id.to_owned(),
    }
}

fn answers(agent: &mut SimulatedAgent) -> Vec<Answer> {
    std::iter::from_fn(|| agent.poll_answer()).collect()
}

fn state_of(agent: &mut SimulatedAgent, id: &str, now_ms: u64) -> Option<InstanceState> {
    let report = agent.report(now_ms);
    report
        .instances
        .iter()
        .find(|i| i.id == id)
        .map(|i| i.state)
}

#[test]
fn a_cold_launch_takes_provisioning_then_activation_and_both_are_measured() {
    let mut agent = SimulatedAgent::new(REGION, DELAYS);
    agent.handle_command(command("p", provision(&["a-1"])), 0);
    assert!(answers(&mut agent).is_empty(), "creating takes time");
    assert_eq!(agent.poll_timeout(), Some(100_000));
    // Not reported while it is being created, billed as dormant.
    assert_eq!(state_of(&mut agent, "a-1", 99_999), None);
    assert_eq!(agent.census().parked, 1);

    agent.handle_timeout(100_000);
    let done = answers(&mut agent);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].op_id, "p");
    assert_eq!(done[0].at_ms, 100_000);
    assert!(matches!(
        &done[0].outcome,
        CommandOutcome::Done(CommandResult::Instances(i)) if i[0].state == InstanceState::Dormant
    ));

    agent.handle_command(command("act", activate("a-1")), 100_000);
    assert!(answers(&mut agent).is_empty(), "starting takes time");
    // Starting: its process is billed, it does not serve yet, and it still reports dormant.
    assert_eq!(
        agent.census(),
        Census {
            serving: 0,
            running: 1,
            parked: 0
        }
    );
    assert_eq!(
        state_of(&mut agent, "a-1", 119_999),
        Some(InstanceState::Dormant)
    );
    assert_eq!(
        state_of(&mut agent, "a-1", 120_000),
        Some(InstanceState::Active)
    );
    assert_eq!(answers(&mut agent)[0].op_id, "act");
    assert_eq!(agent.census().serving, 1);

    // The controller reads the delays from the transitions.
    let report = agent.report(120_000);
    let leads = pools::measured_leads(Some(&report), 0);
    assert_eq!(leads.provision_ms, 100_000);
    assert_eq!(leads.activation_ms, 20_000);
}

#[test]
fn leaving_the_front_stopping_and_removing_take_no_time_and_removal_leaves_the_report() {
    let mut agent = SimulatedAgent::new(REGION, DELAYS).with_instance("a-1", InstanceState::Active);
    let table = [
        (
            "deactivate",
            AgentAction::Deactivate {
                instance: "a-1".into(),
            },
            Some(InstanceState::Warm),
        ),
        (
            "stop",
            AgentAction::Stop {
                instance: "a-1".into(),
            },
            Some(InstanceState::Stopped),
        ),
        (
            "remove",
            AgentAction::Remove {
                instance: "a-1".into(),
            },
            None,
        ),
    ];
    for (op, action, want) in table {
        agent.handle_command(command(op, action), 5_000);
        let done = answers(&mut agent);
        assert_eq!(done.len(), 1, "{op} is answered at once");
        assert!(
            matches!(done[0].outcome, CommandOutcome::Done(_)),
            "{op}: {:?}",
            done[0].outcome
        );
        assert_eq!(state_of(&mut agent, "a-1", 5_000), want, "after {op}");
    }
    assert_eq!(agent.census(), Census::default());
}

#[test]
fn a_repeated_id_gets_its_first_outcome_and_refusals_leave_the_id_free() {
    let mut agent =
        SimulatedAgent::new(REGION, DELAYS).with_instance("a-1", InstanceState::Dormant);
    agent.handle_command(command("act", activate("a-1")), 0);
    // Repeated while it runs: in progress, not started twice.
    agent.handle_command(command("act", activate("a-1")), 1_000);
    let early = answers(&mut agent);
    assert_eq!(early.len(), 1);
    assert_eq!(
        early[0].outcome,
        CommandOutcome::Refused(Refusal::InProgress)
    );
    agent.handle_timeout(20_000);
    let first = answers(&mut agent);
    assert_eq!(first.len(), 1);
    // Repeated after it finished: the first outcome, at once, without acting again.
    agent.handle_command(command("act", activate("a-1")), 30_000);
    let again = answers(&mut agent);
    assert_eq!(again[0].outcome, first[0].outcome);
    assert_eq!(agent.poll_timeout(), None);

    // A bad command is refused and its id stays free for a good one.
    agent.handle_command(command("x", activate("nobody")), 30_000);
    assert!(matches!(
        answers(&mut agent)[0].outcome,
        CommandOutcome::Refused(Refusal::BadRequest { .. })
    ));
    agent.handle_command(
        command(
            "x",
            AgentAction::Stop {
                instance: "a-1".into(),
            },
        ),
        30_000,
    );
    assert!(matches!(
        answers(&mut agent)[0].outcome,
        CommandOutcome::Done(_)
    ));
}

#[test]
fn another_region_and_an_older_term_are_refused() {
    let mut agent = SimulatedAgent::new(REGION, DELAYS);
    let mut newer = command("p", provision(&["a-1"]));
    newer.term = 5;
    agent.handle_command(newer, 0);
    let mut older = command("q", provision(&["a-2"]));
    older.term = 4;
    agent.handle_command(older, 0);
    let mut elsewhere = command("r", provision(&["a-3"]));
    elsewhere.region = "us-east".into();
    agent.handle_command(elsewhere, 0);
    let refusals: Vec<_> = answers(&mut agent).into_iter().map(|a| a.outcome).collect();
    assert_eq!(
        refusals,
        vec![
            CommandOutcome::Refused(Refusal::StaleTerm {
                command_term: 4,
                newest_term: 5
            }),
            CommandOutcome::Refused(Refusal::WrongRegion {
                ours: REGION.into(),
                theirs: "us-east".into()
            }),
        ]
    );
    assert_eq!(agent.report(0).newest_term, 5);
}

#[test]
fn commands_on_one_instance_run_one_after_another() {
    let mut agent =
        SimulatedAgent::new(REGION, DELAYS).with_instance("a-1", InstanceState::Dormant);
    agent.handle_command(command("act", activate("a-1")), 0);
    // Removed while it starts: the removal waits for the start, as the agent's lock makes it.
    agent.handle_command(
        command(
            "rm",
            AgentAction::Remove {
                instance: "a-1".into(),
            },
        ),
        5_000,
    );
    assert!(answers(&mut agent).is_empty());
    agent.handle_timeout(20_000);
    let done: Vec<_> = answers(&mut agent).into_iter().map(|a| a.op_id).collect();
    assert_eq!(done, vec!["act", "rm"]);
    assert_eq!(state_of(&mut agent, "a-1", 20_000), None);
}

#[test]
fn the_front_window_carries_the_requests_since_the_previous_report() {
    let mut agent = SimulatedAgent::new(REGION, DELAYS);
    agent.report(0);
    agent.handle_requests(600);
    let first = agent.report(60_000).front.expect("the agent runs a front");
    assert_eq!((first.window_ms, first.window_requests), (60_000, 600));
    agent.handle_requests(300);
    let second = agent.report(90_000).front.expect("the agent runs a front");
    assert_eq!((second.window_ms, second.window_requests), (30_000, 300));
    assert_eq!(second.requests_total, 900);
}

/// The example plan's `shop`, stateless, served from `eu-west` at 10 rps per instance.
#[test]
fn a_restart_fails_the_commands_in_progress_and_keeps_the_ledger() {
    let mut agent = SimulatedAgent::new(REGION, DELAYS);
    agent.handle_command(command("p", provision(&["a-1"])), 0);
    agent.restart(10);
    assert!(
        answers(&mut agent).is_empty(),
        "the connection went with the process"
    );
    assert_eq!(agent.poll_timeout(), None, "nothing runs any more");
    assert_eq!(state_of(&mut agent, "a-1", 200_000), None);
    // The id is answered with the failure, so the controller retries under a new one.
    agent.handle_command(command("p", provision(&["a-1"])), 20);
    let again = answers(&mut agent);
    assert!(matches!(&again[0].outcome, CommandOutcome::Failed { .. }));
    agent.handle_command(command("p/r1", provision(&["a-1"])), 30);
    agent.handle_timeout(100_030);
    assert_eq!(
        state_of(&mut agent, "a-1", 100_030),
        Some(InstanceState::Dormant)
    );
}

#[test]
fn a_crashed_instance_is_stopped() {
    let mut agent = SimulatedAgent::new(REGION, DELAYS).with_instance("a-1", InstanceState::Active);
    assert!(!agent.crash_instance("a-2", 0), "no such instance");
    assert!(agent.crash_instance("a-1", 0));
    assert!(!agent.crash_instance("a-1", 1), "already stopped");
    assert_eq!(state_of(&mut agent, "a-1", 2), Some(InstanceState::Stopped));
    assert_eq!(
        agent.instances().collect::<Vec<_>>(),
        vec![("a-1", InstanceState::Stopped)]
    );
}

#[test]
fn a_replication_source_names_the_one_agent_that_handed_its_address_out() {
    let url = |agent: &mut SimulatedAgent| {
        let report = agent.report(0);
        let addr = report.instances[0]
            .addr
            .clone()
            .expect("a serving instance");
        format!("http://{addr}")
    };
    let mut east =
        SimulatedAgent::new("us-east", DELAYS).with_instance("a-1", InstanceState::Active);
    let mut west = SimulatedAgent::new(REGION, DELAYS).with_instance("b-1", InstanceState::Active);
    let (east_url, west_url) = (url(&mut east), url(&mut west));
    assert_ne!(east_url, west_url, "each agent's first instance");
    assert!(east.hands_out(&east_url) && !east.hands_out(&west_url));
    assert!(west.hands_out(&west_url) && !west.hands_out(&east_url));
    // A crashed instance's old address is still the region's: a fence sent there reaches it.
    assert!(east.crash_instance("a-1", 1));
    assert!(east.hands_out(&east_url));
}

#[test]
fn replication_is_readable_as_the_next_report_shows_it() {
    let mut agent = SimulatedAgent::new(REGION, DELAYS).with_instance("a-1", InstanceState::Active);
    assert_eq!(agent.replication("a-1"), None);
    let source = "http://us-east.instances:20001".to_owned();
    let start = AgentAction::StartReplication {
        instance: "a-1".to_owned(),
        source: source.clone(),
    };
    agent.handle_command(command("r", start), 0);
    let fence = AgentAction::FenceSource {
        instance: "a-1".to_owned(),
    };
    agent.handle_command(command("f", fence), 0);
    let seen = agent.replication("a-1").cloned().expect("replicating");
    assert_eq!(
        (seen.source.as_str(), seen.source_fenced),
        (source.as_str(), true)
    );
    assert_eq!(agent.report(1).replication, vec![seen]);
}

#[test]
fn failed_requests_count_in_the_front_report() {
    let mut agent = SimulatedAgent::new(REGION, DELAYS);
    agent.handle_requests(100);
    agent.handle_errors(7);
    let front = agent.report(1_000).front.expect("a front");
    assert_eq!((front.requests_total, front.errors_total), (100, 7));
    assert_eq!((front.window_requests, front.window_errors), (100, 7));
    let next = agent.report(2_000).front.expect("a front");
    assert_eq!((next.errors_total, next.window_errors), (7, 0));
}

fn replay_setup() -> super::replay::ReplaySetup {
    use crate::executor::ExecutorConfig;
    use crate::executor::controller::ControllerConfig;
    let plan = crate::state::Plan::example();
    let mut service = plan.services[0].clone();
    service.primary_region = REGION.to_owned();
    service.replication = crate::state::ReplicationKind::None;
    service.capacity_rps_per_instance = 10.0;
    service.min_instances = 1;
    service.max_instances = 20;
    let region = plan
        .regions
        .into_iter()
        .find(|r| r.name == REGION)
        .expect("the example plan declares eu-west");
    super::replay::ReplaySetup {
        service,
        region,
        controller: ControllerConfig::from(&ExecutorConfig::default()),
        delays: DELAYS,
        start_ms: 1_700_000_000_000,
        step_ms: 60_000,
        initial_serving: 1,
    }
}

#[test]
fn a_replay_holds_the_forecast_pool_through_the_controller() {
    use crate::executor::pools::{PoolForecast, SliceTarget};
    use umbra_forecast::sizing::PoolTarget;
    let setup = replay_setup();
    let start = setup.start_ms;
    // Every slice asks for 3 warm and 2 dormant instances.
    let mut asked = 0;
    let mut forecaster = |job: &crate::executor::controller::PoolJob| {
        asked += 1;
        let slice_ms = 1_800_000;
        let first = job.from_ms - (job.from_ms - start) % slice_ms;
        PoolForecast {
            slice_ms,
            slices: (0..=(job.ahead_ms / slice_ms + 1))
                .map(|n| SliceTarget {
                    start_ms: first + n * slice_ms,
                    mean: 25.0,
                    quantile: 30.0,
                    target: PoolTarget {
                        warm: 3,
                        dormant: 2,
                    },
                })
                .collect(),
            reason: "constant".into(),
        }
    };
    let requests = vec![1_500; 10];
    let (steps, counts) = super::replay::replay(
        &setup,
        &requests,
        std::time::Instant::now(),
        &mut forecaster,
        &mut |_| {},
    )
    .expect("the example service in eu-west is a valid plan");
    assert!(asked >= 1 && counts.pool_forecasts == asked as u64);
    assert_eq!(
        steps[0].census.serving, 1,
        "the replay starts from its initial pool"
    );
    // A cold launch takes 2 minutes (created, then started): by step 3 the pool is complete.
    let last = steps.last().expect("ten steps");
    assert_eq!(
        last.census,
        Census {
            serving: 3,
            running: 0,
            parked: 2
        }
    );
    assert_eq!(
        last.target,
        Some(PoolTarget {
            warm: 3,
            dormant: 2
        })
    );
    assert!(counts.commands > 0 && counts.rounds >= 10);
}

#[test]
fn a_replay_is_the_same_every_time() {
    use crate::executor::pools::{PoolForecast, SliceTarget};
    use umbra_forecast::sizing::PoolTarget;
    let setup = replay_setup();
    let start = setup.start_ms;
    // A forecast that grows the pool every half hour, and demand that follows it.
    let mut forecaster = |job: &crate::executor::controller::PoolJob| {
        let slice_ms = 1_800_000;
        let first = job.from_ms - (job.from_ms - start) % slice_ms;
        PoolForecast {
            slice_ms,
            slices: (0..=(job.ahead_ms / slice_ms + 1))
                .map(|n| {
                    let k = ((first + n * slice_ms - start) / slice_ms) as u32;
                    SliceTarget {
                        start_ms: first + n * slice_ms,
                        mean: 10.0 * f64::from(k + 1),
                        quantile: 10.0 * f64::from(k + 1),
                        target: PoolTarget {
                            warm: k + 1,
                            dormant: 1,
                        },
                    }
                })
                .collect(),
            reason: "ramp".into(),
        }
    };
    let requests: Vec<u64> = (0..120).map(|s| 600 * (s / 30 + 1)).collect();
    let origin = std::time::Instant::now();
    let mut run = || {
        super::replay::replay(&setup, &requests, origin, &mut forecaster, &mut |_| {})
            .expect("the example service in eu-west is a valid plan")
    };
    let first = run();
    let second = run();
    assert_eq!(first, second);
    let serving: Vec<u32> = first.0.iter().map(|s| s.census.serving).collect();
    assert_eq!(serving.iter().max(), Some(&4), "{serving:?}");
}
