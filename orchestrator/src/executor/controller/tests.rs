//! The controller in tables: inputs in, outputs out, no task and no clock. A tiny world
//! answers its commands the way an agent would, so whole sequences can be replayed.

use std::time::{Duration, Instant};

use umbra_proto::agent::{
    AgentAction, AgentReport, CommandOutcome, CommandResult, InstanceReport, InstanceState,
};

use super::*;
use crate::state::{Command, MigrationRequest, OrchestratorState, Plan};

const T0_MS: u64 = 1_800_000_000_000;
const KEEP_MS: u64 = 60_000;

fn config() -> ControllerConfig {
    ControllerConfig {
        command_timeout: Duration::from_secs(30),
        zero_lag_timeout_ms: 10_000,
        retry_min: Duration::from_millis(200),
        retry_max: Duration::from_secs(5),
        max_attempts: 5,
        schedules: false,
        shadow_keep_ms: KEEP_MS,
    }
}

/// The example plan with `shop` (home us-east, pool of one) and one migration `shop-…` to
/// eu-west, put in `phase` with `shadows` shadow instances.
fn overview_with(phase: Phase, shadows: u32) -> (Overview, String) {
    let mut state = OrchestratorState::default();
    state
        .apply_command(
            1,
            &Command::ApplyPlan {
                plan: Plan::example(),
                at_ms: 1,
            },
        )
        .expect("the example plan applies");
    state
        .apply_command(
            2,
            &Command::CreateMigration {
                request: MigrationRequest::new("shop", "eu-west", T0_MS),
                at_ms: 2,
            },
        )
        .expect("the migration is created");
    let mut overview = state.overview();
    let id = overview.migrations.keys().next().expect("one").clone();
    let record = overview.migrations.get_mut(&id).expect("created");
    record.phase = phase;
    record.phase_since_ms = T0_MS;
    record.shadow_instances = shadows;
    (overview, id)
}

fn instance(id: &str, state: InstanceState) -> InstanceReport {
    InstanceReport {
        id: id.to_owned(),
        state,
        addr: (state != InstanceState::Stopped).then(|| "127.0.0.1:9".to_owned()),
        transitions: Vec::new(),
    }
}

fn report(region: &str, instances: Vec<InstanceReport>) -> AgentReport {
    AgentReport {
        region: region.to_owned(),
        newest_term: 1,
        instances,
        warmups: Vec::new(),
        replication: Vec::new(),
        at_unix_ms: T0_MS,
        front: None,
    }
}

/// The source region with the home pool serving.
fn home_serving() -> AgentReport {
    report(
        "us-east",
        vec![instance("shop-us-east-1", InstanceState::Active)],
    )
}

struct Clock {
    start: Instant,
    ms: u64,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            ms: 0,
        }
    }

    fn now(&self) -> Now {
        Now {
            at: self.start + Duration::from_millis(self.ms),
            unix_ms: T0_MS + self.ms,
        }
    }

    fn advance(&mut self, ms: u64) -> Now {
        self.ms += ms;
        self.now()
    }
}

fn drain_commands(c: &mut Controller) -> Vec<Outgoing> {
    std::iter::from_fn(|| c.poll_command()).collect()
}

fn actions(commands: &[Outgoing]) -> Vec<(String, AgentAction)> {
    commands
        .iter()
        .map(|o| (o.command.op_id.clone(), o.command.action.clone()))
        .collect()
}

fn done(c: &mut Controller, sent: &[Outgoing], now: Now) {
    for o in sent {
        c.handle_outcome(
            &o.operation,
            Delivery::Answered(CommandOutcome::Done(CommandResult::Instances(vec![]))),
            now,
        );
    }
}

#[test]
fn a_rolled_back_shadow_leaves_the_front_at_once_and_is_removed_after_the_keep_time() {
    let (overview, id) = overview_with(Phase::RolledBack, 2);
    let mut clock = Clock::new();
    let mut c = Controller::new(config(), 3, clock.now());
    let s1 = format!("{id}-1");
    let s2 = format!("{id}-2");
    let home = "shop-us-east-1";
    let both = |state| report("eu-west", vec![instance(&s1, state), instance(&s2, state)]);
    c.handle_report(
        "us-east",
        report("us-east", vec![instance(home, InstanceState::Active)]),
        clock.now().at,
    );
    c.handle_report("eu-west", both(InstanceState::Active), clock.now().at);
    c.handle_overview(overview.clone(), clock.advance(1_000));
    let sent = drain_commands(&mut c);
    let released: Vec<_> = actions(&sent)
        .into_iter()
        .filter(|(_, a)| !matches!(a, AgentAction::SetShare { .. }))
        .collect();
    assert_eq!(
        released,
        vec![
            (
                format!("{id}/rolled_back/0/release_shadow/deactivate/{s1}"),
                AgentAction::Deactivate {
                    instance: s1.clone()
                }
            ),
            (
                format!("{id}/rolled_back/0/release_shadow/deactivate/{s2}"),
                AgentAction::Deactivate {
                    instance: s2.clone()
                }
            ),
        ],
        "out of the front at once, nothing stopped yet"
    );
    done(&mut c, &sent, clock.advance(10));

    // Out of the front; inside the keep time nothing more happens.
    let warm = both(InstanceState::Warm);
    c.handle_report("eu-west", warm.clone(), clock.advance(1_000).at);
    c.handle_overview(overview.clone(), clock.now());
    assert_eq!(actions(&drain_commands(&mut c)), vec![]);

    // Past the keep time: stopped, then removed.
    clock.advance(KEEP_MS);
    c.handle_report("eu-west", warm, clock.now().at);
    c.handle_overview(overview.clone(), clock.now());
    let sent = drain_commands(&mut c);
    assert_eq!(
        actions(&sent),
        vec![
            (
                format!("{id}/rolled_back/0/release_shadow/stop/{s1}"),
                AgentAction::Stop {
                    instance: s1.clone()
                }
            ),
            (
                format!("{id}/rolled_back/0/release_shadow/stop/{s2}"),
                AgentAction::Stop {
                    instance: s2.clone()
                }
            ),
        ]
    );
    done(&mut c, &sent, clock.advance(10));
    let stopped = both(InstanceState::Stopped);
    c.handle_report("eu-west", stopped, clock.advance(1_000).at);
    c.handle_overview(overview.clone(), clock.now());
    let sent = drain_commands(&mut c);
    assert_eq!(
        actions(&sent)
            .into_iter()
            .map(|(_, a)| a)
            .collect::<Vec<_>>(),
        vec![
            AgentAction::Remove {
                instance: s1.clone()
            },
            AgentAction::Remove {
                instance: s2.clone()
            },
        ]
    );
    done(&mut c, &sent, clock.advance(10));
    c.handle_report(
        "eu-west",
        report("eu-west", vec![]),
        clock.advance(1_000).at,
    );
    c.handle_overview(overview, clock.now());
    assert_eq!(actions(&drain_commands(&mut c)), vec![], "nothing left");
}

#[test]
fn a_superseded_rolled_back_migration_still_releases_its_shadow() {
    let (mut overview, id) = overview_with(Phase::RolledBack, 1);
    // A later migration of the same service supersedes it.
    let mut later = overview.migrations[&id].clone();
    later.spec.id = "shop-99".to_owned();
    later.phase = Phase::Planned;
    later.spec.cutover_at_ms = T0_MS + 86_400_000;
    overview.migrations.insert(later.spec.id.clone(), later);
    let clock = Clock::new();
    let mut c = Controller::new(config(), 3, clock.now());
    let shadow = format!("{id}-1");
    c.handle_report(
        "eu-west",
        report("eu-west", vec![instance(&shadow, InstanceState::Active)]),
        clock.now().at,
    );
    c.handle_overview(overview, clock.now());
    assert_eq!(
        actions(&drain_commands(&mut c)),
        vec![(
            format!("{id}/rolled_back/0/release_shadow/deactivate/{shadow}"),
            AgentAction::Deactivate { instance: shadow }
        )]
    );
}

#[test]
fn an_instance_that_died_after_it_was_activated_is_activated_again_under_a_fresh_id() {
    let (mut overview, _) = overview_with(Phase::Planned, 0);
    overview.migrations.clear();
    let mut clock = Clock::new();
    let mut c = Controller::new(config(), 3, clock.now());
    let home = "shop-us-east-1";
    c.handle_report(
        "us-east",
        report("us-east", vec![instance(home, InstanceState::Dormant)]),
        clock.now().at,
    );
    c.handle_overview(overview.clone(), clock.now());
    let sent = drain_commands(&mut c);
    assert_eq!(
        actions(&sent),
        vec![(
            format!("shop/home/us-east/activate/{home}"),
            AgentAction::Activate {
                instance: home.to_owned()
            }
        )]
    );
    done(&mut c, &sent, clock.advance(10));
    // A report from before the answer was sent arrives late: not a loss.
    c.handle_overview(overview.clone(), clock.advance(100));
    assert_eq!(actions(&drain_commands(&mut c)), vec![]);
    // Serving; then it dies and a newer report says so.
    c.handle_report(
        "us-east",
        report("us-east", vec![instance(home, InstanceState::Active)]),
        clock.advance(1_000).at,
    );
    c.handle_overview(overview.clone(), clock.now());
    assert_eq!(actions(&drain_commands(&mut c)), vec![]);
    c.handle_report(
        "us-east",
        report("us-east", vec![instance(home, InstanceState::Stopped)]),
        clock.advance(1_000).at,
    );
    c.handle_overview(overview, clock.now());
    assert_eq!(
        actions(&drain_commands(&mut c)),
        vec![(
            format!("shop/home/us-east/activate/{home}/h1"),
            AgentAction::Activate {
                instance: home.to_owned()
            }
        )],
        "healed under a fresh id: the agent would answer the old one from its ledger"
    );
}

#[test]
fn a_failed_command_is_retried_under_a_new_id_after_its_backoff() {
    let (mut overview, _) = overview_with(Phase::Planned, 0);
    overview.migrations.clear();
    let mut clock = Clock::new();
    let mut c = Controller::new(config(), 3, clock.now());
    c.handle_report("us-east", report("us-east", vec![]), clock.now().at);
    c.handle_overview(overview.clone(), clock.now());
    let sent = drain_commands(&mut c);
    assert_eq!(
        sent.len(),
        1,
        "the activation waits for the provision: {sent:?}"
    );
    let provision = &sent[0];
    assert_eq!(provision.command.op_id, "shop/home/us-east/provision");
    c.handle_outcome(
        &provision.operation,
        Delivery::Answered(CommandOutcome::Failed {
            reason: "disk full".to_owned(),
        }),
        clock.now(),
    );
    assert_eq!(
        c.poll_timeout(),
        Some(clock.now().at + Duration::from_millis(200))
    );
    c.handle_overview(overview.clone(), clock.advance(100));
    assert_eq!(actions(&drain_commands(&mut c)), vec![], "backing off");
    c.handle_overview(overview.clone(), clock.advance(100));
    let again = drain_commands(&mut c);
    assert_eq!(
        again
            .iter()
            .map(|o| o.command.op_id.as_str())
            .collect::<Vec<_>>(),
        vec!["shop/home/us-east/provision/r1"]
    );
    // It fails again; meanwhile the instance appears by other means, so no round asks for
    // the provision any more: its retry time passes and is never due (no busy loop).
    c.handle_outcome(
        &again[0].operation,
        Delivery::Answered(CommandOutcome::Failed {
            reason: "disk full".to_owned(),
        }),
        clock.now(),
    );
    assert!(c.poll_timeout().is_some());
    c.handle_report("us-east", home_serving(), clock.advance(1_000).at);
    c.handle_overview(overview, clock.now());
    assert_eq!(actions(&drain_commands(&mut c)), vec![]);
    assert_eq!(c.poll_timeout(), None);
}

/// Everything a controller put out, in order.
fn transcript(c: &mut Controller) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(std::iter::from_fn(|| c.poll_command()).map(|o| format!("{o:?}")));
    out.extend(std::iter::from_fn(|| c.poll_proposal()).map(|p| format!("{p:?}")));
    out.extend(std::iter::from_fn(|| c.poll_sizing()).map(|s| format!("{s:?}")));
    out.extend(std::iter::from_fn(|| c.poll_event()).map(|e| format!("{e:?}")));
    out
}

/// A scripted leadership: a migration that needs sizing, then provisioning with agents
/// answering, a promotion and a DNS change, fed in a fixed order.
fn replay() -> Vec<String> {
    let (overview, id) = overview_with(Phase::Planned, 0);
    let mut clock = Clock::new();
    let mut c = Controller::new(config(), 7, clock.now());
    let mut out = Vec::new();
    c.handle_report("us-east", home_serving(), clock.now().at);
    c.handle_report("eu-west", report("eu-west", vec![]), clock.now().at);
    c.handle_overview(overview.clone(), clock.advance(5));
    let proposals: Vec<_> = std::iter::from_fn(|| c.poll_proposal()).collect();
    out.extend(proposals.iter().map(|p| format!("{p:?}")));
    let jobs: Vec<_> = std::iter::from_fn(|| c.poll_sizing()).collect();
    out.extend(jobs.iter().map(|j| format!("{j:?}")));
    for job in &jobs {
        c.handle_sizing(
            &job.migration,
            ShadowSize {
                instances: 2,
                reason: "test".to_owned(),
            },
            clock.advance(3),
        );
    }
    let proposals: Vec<_> = std::iter::from_fn(|| c.poll_proposal()).collect();
    out.extend(proposals.iter().map(|p| format!("{p:?}")));
    for p in &proposals {
        c.handle_proposal(&p.key, Proposed::Applied, clock.advance(2));
    }
    out.extend(transcript(&mut c));
    let mut provisioning = overview;
    let record = provisioning.migrations.get_mut(&id).expect("there");
    record.phase = Phase::Provisioning;
    record.shadow_instances = 2;
    c.handle_overview(provisioning, clock.advance(100));
    let sent = drain_commands(&mut c);
    out.extend(sent.iter().map(|o| format!("{o:?}")));
    done(&mut c, &sent, clock.advance(7));
    out.extend(transcript(&mut c));
    out
}

#[test]
fn the_same_inputs_in_the_same_order_give_the_same_outputs() {
    let first = replay();
    assert!(
        first.iter().any(|line| line.contains("Provision")),
        "the script reaches provisioning: {first:#?}"
    );
    for _ in 0..20 {
        assert_eq!(replay(), first);
    }
}

#[test]
fn the_writers_move_is_measured_from_the_first_fence_to_the_last_promotion() {
    let (mut overview, id) = overview_with(Phase::CuttingOver { step: 2 }, 1);
    overview
        .migrations
        .get_mut(&id)
        .expect("there")
        .spec
        .steps_percent = vec![10, 50, 100];
    let shadow = format!("{id}-1");
    let mut clock = Clock::new();
    let mut c = Controller::new(config(), 3, clock.now());
    let replication = |promoted: bool| umbra_proto::agent::ReplicationReport {
        instance: shadow.clone(),
        source: "http://127.0.0.1:1".to_owned(),
        source_position: 10,
        target_position: 10,
        source_fenced: promoted,
        promoted,
    };
    let target = |promoted: bool| AgentReport {
        replication: vec![replication(promoted)],
        ..report("eu-west", vec![instance(&shadow, InstanceState::Active)])
    };
    c.handle_report("eu-west", target(false), clock.now().at);
    c.handle_report("us-east", home_serving(), clock.now().at);
    // Fence, wait for lag 0, promote: one after the other, each answered 20 ms later.
    for stage in ["fence", "zero_lag", "promote"] {
        c.handle_overview(overview.clone(), clock.advance(1));
        let sent = drain_commands(&mut c);
        let step: Vec<_> = sent
            .iter()
            .filter(|o| o.operation.contains(&format!("/promote_target/{stage}/")))
            .cloned()
            .collect();
        assert_eq!(step.len(), 1, "{stage}: {:?}", actions(&sent));
        done(&mut c, &step, clock.advance(20));
    }
    c.handle_report("eu-west", target(true), clock.advance(1).at);
    c.handle_overview(overview, clock.now());
    let proposal = c.poll_proposal().expect("the writer moved: SetPromoted");
    assert!(matches!(
        proposal.command,
        Command::SetPromoted { promoted: true, .. }
    ));
    c.handle_proposal(&proposal.key, Proposed::Applied, clock.advance(5));
    let moved: Vec<_> = std::iter::from_fn(|| c.poll_event())
        .filter_map(|e| match e {
            Event::WriterMoved { direction, seconds } => Some((direction, seconds)),
            _ => None,
        })
        .collect();
    // Fence answered at +21 ms, promotion at +63 ms (1 ms between the rounds).
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0].0, "to_target");
    assert!((moved[0].1 - 0.042).abs() < 1e-9, "{moved:?}");
}
