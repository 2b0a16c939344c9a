//! The controller in tables: inputs in, outputs out, no task and no clock. A tiny world
//! answers its commands the way an agent would, so whole sequences can be replayed.

use std::time::{Duration, Instant};

use umbra_proto::agent::{
    AgentAction, AgentReport, CommandOutcome, CommandResult, InstanceLimits, InstanceReport,
    InstanceState,
};

use super::*;
use crate::capacity::MemberWas;
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
        pools: true,
        hysteresis: Hysteresis {
            shrink_after_slices: 2,
            shrink_band: 0.1,
        },
        max_dormant_age: Duration::from_secs(3_600),
        pool_lead_margin: Duration::from_secs(3),
        dns_gate: false,
        pool_forecast_reach: Duration::from_secs(600),
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
        limits: None,
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
    // First the target's front sends the service back to the source's front (clients whose
    // DNS answer still names the target), and nothing leaves the front before it did.
    let sent = drain_commands(&mut c);
    let share_back = (
        format!("{id}/rolled_back/0/share_back"),
        AgentAction::SetShare {
            service: "shop".into(),
            target_front: overview.regions["us-east"].front.clone(),
            percent: 100,
        },
    );
    let to_target: Vec<_> = sent
        .iter()
        .filter(|o| o.command.region == "eu-west")
        .map(|o| (o.command.op_id.clone(), o.command.action.clone()))
        .collect();
    assert_eq!(to_target, vec![share_back]);
    done(&mut c, &sent, clock.advance(10));
    c.handle_overview(overview.clone(), clock.now());
    let sent = drain_commands(&mut c);
    assert_eq!(
        actions(&sent),
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
            format!("shop/pool/us-east/shop-us-east/activate/{home}"),
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
            format!("shop/pool/us-east/shop-us-east/activate/{home}/h3.1"),
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
    assert_eq!(
        provision.command.op_id,
        "shop/pool/us-east/shop-us-east/provision"
    );
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
        vec!["shop/pool/us-east/shop-us-east/provision/r1"]
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

/// The writer's move at the last step, fence, lag 0 and promotion each answered 20 ms after
/// it was sent; `seen_from` is the step this leadership first saw the migration at. Returns
/// the `SetPromoted` proposal's window and the `WriterMoved` events.
fn writers_move_seen_from(seen_from: usize) -> (Option<u64>, Vec<(&'static str, f64)>) {
    let (mut overview, id) = overview_with(Phase::CuttingOver { step: seen_from }, 1);
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
    if seen_from < 2 {
        c.handle_overview(overview.clone(), clock.advance(1));
        drain_commands(&mut c);
    }
    let last = Phase::CuttingOver { step: 2 };
    overview.migrations.get_mut(&id).expect("there").phase = last;
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
    let Command::SetPromoted {
        promoted: true,
        fence_window_ms,
        ..
    } = proposal.command
    else {
        panic!("{:?}", proposal.command);
    };
    c.handle_proposal(&proposal.key, Proposed::Applied, clock.advance(5));
    let moved: Vec<_> = std::iter::from_fn(|| c.poll_event())
        .filter_map(|e| match e {
            Event::WriterMoved { direction, seconds } => Some((direction, seconds)),
            _ => None,
        })
        .collect();
    (fence_window_ms, moved)
}

#[test]
fn the_writers_move_is_measured_from_the_first_fence_to_the_last_promotion() {
    // This leadership saw the last step begin.
    let (window, moved) = writers_move_seen_from(1);
    // Fence answered at +22 ms, promotion at +64 ms (1 ms between the rounds).
    assert_eq!(window, Some(42));
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0].0, "to_target");
    assert!((moved[0].1 - 0.042).abs() < 1e-9, "{moved:?}");
}

#[test]
fn a_leadership_that_took_the_last_step_over_does_not_measure_the_writers_move() {
    // A previous leader may have fenced the source long before this leadership's fence was
    // answered from the agent's ledger: the window would be short by that much.
    let (window, moved) = writers_move_seen_from(2);
    assert_eq!(window, None);
    assert!(moved.is_empty(), "{moved:?}");
}

/// Campaign seed 161: the source's disk was full when the writer's move fenced it. The fence
/// failed five times within three seconds; it then pauses, and is asked again after the pause,
/// instead of waiting for the step's deadline.
#[test]
fn a_fence_that_keeps_failing_pauses_and_is_asked_again() {
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
    let target = AgentReport {
        replication: vec![umbra_proto::agent::ReplicationReport {
            instance: shadow.clone(),
            source: "http://127.0.0.1:1".to_owned(),
            source_position: 10,
            target_position: 10,
            source_fenced: false,
            promoted: false,
        }],
        ..report("eu-west", vec![instance(&shadow, InstanceState::Active)])
    };
    c.handle_report("eu-west", target, clock.now().at);
    c.handle_report("us-east", home_serving(), clock.now().at);
    let fences = |sent: &[Outgoing]| -> Vec<Outgoing> {
        sent.iter()
            .filter(|o| o.operation.contains("/promote_target/fence/"))
            .cloned()
            .collect()
    };
    let full = CommandOutcome::Failed {
        reason: "write-ahead log failed: data directory full".to_owned(),
    };
    let mut asked = 0;
    // Rounds every 100 ms for 10 s: the fence fails each time it is asked.
    for _ in 0..100 {
        c.handle_overview(overview.clone(), clock.advance(100));
        for o in fences(&drain_commands(&mut c)) {
            asked += 1;
            c.handle_outcome(
                &o.operation,
                Delivery::Answered(full.clone()),
                clock.advance(1),
            );
        }
    }
    assert_eq!(asked, 5, "five quick attempts, then the pause");
    // The pause is four times the backoff's cap (5 s): 20 s after the fifth failure.
    let mut again = 0;
    for _ in 0..150 {
        c.handle_overview(overview.clone(), clock.advance(100));
        again += fences(&drain_commands(&mut c)).len();
        if again > 0 {
            break;
        }
    }
    assert_eq!(again, 1, "asked again after the pause");
}

/// Simulator seed 407: while the writer goes back to the source, the fence's answer is lost,
/// then the wait for lag 0, and the promoted shadow crashes. The hand-back outlasts the 30 s
/// rollback deadline, yet it is not given up (a Failed migration would leave the source
/// fenced behind the target and no region accepting writes): the shadow is started again and
/// the move resumes until the source is the writer.
#[test]
fn a_writer_hand_back_slowed_by_lost_answers_outlasts_the_rollback_deadline_and_completes() {
    let (mut overview, id) = overview_with(Phase::RollingBack, 1);
    overview.migrations.get_mut(&id).expect("there").promoted = true;
    let config = ControllerConfig {
        command_timeout: Duration::from_secs(5),
        ..config()
    };
    let shadow = format!("{id}-1");
    let home = "shop-us-east-1";
    let mut clock = Clock::new();
    let mut c = Controller::new(config, 3, clock.now());
    // `instance` promoted after following `source` (fenced, lag 0).
    let writer = |instance: &str, source: &str| umbra_proto::agent::ReplicationReport {
        instance: instance.to_owned(),
        source: source.to_owned(),
        source_position: 10,
        target_position: 10,
        source_fenced: true,
        promoted: true,
    };
    let shadow_writes = |state| AgentReport {
        replication: vec![writer(&shadow, "http://127.0.0.1:1")],
        ..report("eu-west", vec![instance(&shadow, state)])
    };
    c.handle_report(
        "eu-west",
        shadow_writes(InstanceState::Active),
        clock.now().at,
    );
    c.handle_report("us-east", home_serving(), clock.now().at);
    let base = format!("{id}/rolling_back/0/promote_source");
    // One round, `advance_ms` after the last input: the hand-back sends the one command of
    // `stage` (the others are answered at once).
    let round = |c: &mut Controller, clock: &mut Clock, advance_ms: u64, stage: &str| {
        c.handle_overview(overview.clone(), clock.advance(advance_ms));
        let sent = drain_commands(c);
        let (hand_back, others): (Vec<_>, Vec<_>) = sent
            .into_iter()
            .partition(|o| o.command.op_id.starts_with(&base));
        done(c, &others, clock.now());
        if let Some(p) = c.poll_proposal() {
            assert!(
                !matches!(
                    p.command,
                    Command::Transition {
                        to: Phase::Failed,
                        ..
                    }
                ),
                "the hand-back was given up at +{} ms: {:?}",
                clock.ms,
                p.command
            );
            c.handle_proposal(&p.key, Proposed::Applied, clock.now());
        }
        let ops: Vec<_> = hand_back.iter().map(|o| &o.command.op_id).collect();
        assert_eq!(
            ops,
            [&format!("{base}/{stage}/{home}")],
            "at +{} ms",
            clock.ms
        );
        hand_back
    };
    let lost = |c: &mut Controller, sent: &[Outgoing], now: Now| {
        for o in sent {
            c.handle_outcome(&o.operation, Delivery::Unanswered("timed out".into()), now);
        }
    };
    let follow = round(&mut c, &mut clock, 1, "follow");
    done(&mut c, &follow, clock.advance(10));
    let fence = round(&mut c, &mut clock, 1, "fence");
    // Its answer is lost: asked again under the same id once the backoff passed.
    lost(&mut c, &fence, clock.advance(5_000));
    let fence = round(&mut c, &mut clock, 300, "fence");
    done(&mut c, &fence, clock.advance(10));
    let wait = round(&mut c, &mut clock, 1, "zero_lag");
    // The shadow crashes while the wait's command is lost.
    c.handle_report(
        "eu-west",
        shadow_writes(InstanceState::Stopped),
        clock.advance(2_000).at,
    );
    lost(&mut c, &wait, clock.advance(13_000));
    // Past the deadline (30 s since the rollback began): the shadow is started again first,
    // and nothing of the hand-back is asked while it has no address to follow.
    clock.advance(10_000);
    c.handle_overview(overview.clone(), clock.now());
    let sent = drain_commands(&mut c);
    assert!(
        sent.iter().any(
            |o| matches!(&o.command.action, AgentAction::Activate { instance } if *instance == shadow)
        ),
        "{:?}",
        actions(&sent)
    );
    assert!(
        sent.iter().all(|o| !o.command.op_id.starts_with(&base)),
        "{:?}",
        actions(&sent)
    );
    assert!(c.poll_proposal().is_none(), "not given up");
    done(&mut c, &sent, clock.advance(10));
    c.handle_report(
        "eu-west",
        shadow_writes(InstanceState::Active),
        clock.advance(1_000).at,
    );
    let wait = round(&mut c, &mut clock, 1, "zero_lag");
    done(&mut c, &wait, clock.advance(10));
    let promote = round(&mut c, &mut clock, 1, "promote");
    done(&mut c, &promote, clock.advance(10));
    // The source reports its writer promoted: the move back is recorded.
    let source_writes = AgentReport {
        replication: vec![writer(home, "http://127.0.0.1:9")],
        ..home_serving()
    };
    c.handle_report("us-east", source_writes, clock.advance(1_000).at);
    c.handle_overview(overview, clock.now());
    let proposal = c.poll_proposal().expect("the writer is back: SetPromoted");
    assert!(
        matches!(
            proposal.command,
            Command::SetPromoted {
                promoted: false,
                ..
            }
        ),
        "{:?}",
        proposal.command
    );
}

/// A forecast of 10-second slices from `T0_MS` with these (warm, dormant) targets.
/// A rollback after the source's fence and before the promotion (an operator aborting a move
/// that waits): the target's agent, which drives the replication, is asked to lift the fence,
/// again past the attempt cap while it fails (the target cannot be asked), and the migration
/// ends only once its report shows the source taking writes again.
#[test]
fn a_rollback_after_the_fence_lifts_it_retrying_past_the_attempt_cap_before_it_ends() {
    let (overview, id) = overview_with(Phase::RollingBack, 1);
    let shadow = format!("{id}-1");
    let mut clock = Clock::new();
    let mut c = Controller::new(config(), 3, clock.now());
    let target = |source_fenced: bool| AgentReport {
        replication: vec![umbra_proto::agent::ReplicationReport {
            instance: shadow.clone(),
            source: "http://127.0.0.1:1".to_owned(),
            source_position: 10,
            target_position: 10,
            source_fenced,
            promoted: false,
        }],
        ..report("eu-west", vec![instance(&shadow, InstanceState::Active)])
    };
    let source = AgentReport {
        front: Some(front(0, Vec::new())),
        ..home_serving()
    };
    c.handle_report("eu-west", target(true), clock.now().at);
    c.handle_report("us-east", source.clone(), clock.now().at);
    let lift = format!("{id}/rolling_back/0/unfence_source/{shadow}");
    let mut asked = 0;
    for _ in 0..3 * config().max_attempts {
        c.handle_overview(overview.clone(), clock.advance(5_000));
        while let Some(p) = c.poll_proposal() {
            assert!(
                !matches!(p.command, Command::Transition { .. }),
                "ended with the source fenced at +{} ms: {:?}",
                clock.ms,
                p.command
            );
        }
        for o in drain_commands(&mut c) {
            if o.operation != lift {
                continue;
            }
            assert_eq!(
                o.command.action,
                AgentAction::UnfenceSource {
                    instance: shadow.clone()
                }
            );
            asked += 1;
            let failed = CommandOutcome::Failed {
                reason: "http://127.0.0.1:9/admin/status: connection refused".into(),
            };
            c.handle_outcome(&o.operation, Delivery::Answered(failed), clock.now());
        }
    }
    assert!(
        asked > config().max_attempts as usize,
        "given up after {asked} attempts"
    );
    // The target answers again: the fence is lifted, and only then does the rollback end.
    c.handle_overview(overview.clone(), clock.advance(5_000));
    let sent = drain_commands(&mut c);
    assert!(
        sent.iter().any(|o| o.operation == lift),
        "{:?}",
        actions(&sent)
    );
    done(&mut c, &sent, clock.advance(10));
    c.handle_report("eu-west", target(false), clock.advance(1_000).at);
    c.handle_report("us-east", source, clock.now().at);
    c.handle_overview(overview.clone(), clock.advance(10));
    let proposed: Vec<_> = std::iter::from_fn(|| c.poll_proposal())
        .map(|p| p.command)
        .collect();
    assert!(
        proposed.iter().any(|p| matches!(
            p,
            Command::Transition {
                to: Phase::RolledBack,
                ..
            }
        )),
        "the rollback ends once the fence is lifted: {proposed:?}"
    );
}

fn pool_forecast(targets: &[(u32, u32)]) -> PoolForecast {
    PoolForecast {
        slice_ms: 10_000,
        slices: targets
            .iter()
            .enumerate()
            .map(|(i, &(warm, dormant))| pools::SliceTarget {
                start_ms: T0_MS + i as u64 * 10_000,
                mean: 0.0,
                quantile: 0.0,
                target: PoolTarget { warm, dormant },
            })
            .collect(),
        reason: "test".into(),
    }
}

/// The example plan with no migration, `shop` stateless with a pool of 1..=10 in us-east.
fn stateless_home() -> Overview {
    let (mut overview, _) = overview_with(Phase::Planned, 0);
    overview.migrations.clear();
    let shop = &mut overview.services.get_mut("shop").expect("shop").spec;
    shop.replication = crate::state::ReplicationKind::None;
    shop.min_instances = 1;
    shop.max_instances = 10;
    overview
}

#[test]
fn a_pool_grows_ahead_of_its_forecast_peak_and_shrinks_after_the_hysteresis() {
    let overview = stateless_home();
    let mut clock = Clock::new();
    let mut c = Controller::new(config(), 3, clock.now());
    let serving = |n: u32| {
        let instances = (1..=n)
            .map(|k| instance(&format!("shop-us-east-{k}"), InstanceState::Active))
            .collect();
        report("us-east", instances)
    };
    c.handle_report("us-east", serving(1), clock.now().at);
    c.handle_overview(overview.clone(), clock.now());
    let job = c.poll_pool_job().expect("the pool asks for its forecast");
    assert_eq!(
        (job.service.name.as_str(), job.region.name.as_str()),
        ("shop", "us-east")
    );
    assert_eq!(c.poll_pool_job(), None, "one job at a time");
    // Quiet, then a peak of 4 in the fourth slice (30 s..40 s), then quiet again.
    let forecast = pool_forecast(&[
        (1, 0),
        (1, 0),
        (1, 1),
        (4, 0),
        (1, 0),
        (1, 0),
        (1, 0),
        (1, 0),
    ]);
    c.handle_pool_forecast("shop", "us-east", forecast, clock.now());
    let pool = |c: &mut Controller| {
        std::iter::from_fn(|| c.poll_event())
            .filter_map(|e| match e {
                Event::Pool(view) => Some(view.target),
                _ => None,
            })
            .last()
            .expect("a pool event every round")
    };
    let target = |warm, dormant| PoolTarget { warm, dormant };
    // Table: (ms since T0, target). Lead times are the defaults (5 s each, nothing measured):
    // warm looks 5 s ahead, the total 10 s ahead.
    let mut provisioned = Vec::new();
    for (at, want) in [
        (0, target(1, 0)),
        (15_000, target(1, 1)),
        // One provisioning and activation lead before the peak: dormant capacity for it.
        (20_000, target(1, 3)),
        // One activation lead before the peak: serving.
        (25_000, target(4, 0)),
        (39_000, target(4, 0)),
        // Shrinking waits two slices (the config's hysteresis).
        (40_000, target(4, 0)),
        (50_000, target(1, 0)),
    ] {
        c.handle_overview(overview.clone(), clock.advance(at - clock.ms));
        assert_eq!(pool(&mut c), want, "at +{at} ms");
        for o in drain_commands(&mut c) {
            if let AgentAction::Provision { instances } = o.command.action {
                provisioned.push((at, instances));
            }
        }
    }
    assert_eq!(
        provisioned.first(),
        Some(&(15_000, vec!["shop-us-east-2".to_owned()])),
        "dormant capacity is created ahead of the peak"
    );
    // Without usable history the pool holds min_instances, warm, and asks again later.
    let mut c = Controller::new(config(), 4, clock.now());
    c.handle_report("us-east", serving(1), clock.now().at);
    c.handle_overview(overview.clone(), clock.now());
    assert!(c.poll_pool_job().is_some());
    c.handle_pool_forecast("shop", "us-east", pool_forecast(&[]), clock.now());
    c.handle_overview(overview.clone(), clock.advance(1_000));
    assert_eq!(pool(&mut c), target(1, 0));
    assert_eq!(c.poll_pool_job(), None);
    c.handle_overview(overview, clock.advance(60_000));
    assert!(c.poll_pool_job().is_some(), "asked again a minute later");
    assert!(
        drain_commands(&mut c).is_empty(),
        "without a forecast the pool holds min_instances"
    );
}

#[test]
fn a_new_leadership_adopts_the_pool_its_region_runs_and_shrinks_it_only_after_the_hysteresis() {
    // The previous leader sized the pool to 3; this leadership has no forecast yet and the
    // floor is 1. It must not take two serving instances out of the front at once (the
    // failover cut writes short in the demo before this); it waits for its region's report,
    // starts from the 3 it runs, and shrinks only after two whole (minute) slices.
    let overview = stateless_home();
    let mut clock = Clock::new();
    let mut c = Controller::new(config(), 3, clock.now());
    c.handle_overview(overview.clone(), clock.now());
    assert!(
        std::iter::from_fn(|| c.poll_event()).all(|e| !matches!(e, Event::Pool(_))),
        "no target before the region reported"
    );
    let three = report(
        "us-east",
        (1..=3)
            .map(|k| instance(&format!("shop-us-east-{k}"), InstanceState::Active))
            .collect(),
    );
    let mut held = Vec::new();
    for at in [0, 1_000, 59_999, 60_000, 119_999, 120_000] {
        let now = clock.advance(at - clock.ms);
        c.handle_report("us-east", three.clone(), now.at);
        c.handle_overview(overview.clone(), now);
        let warm = std::iter::from_fn(|| c.poll_event())
            .filter_map(|e| match e {
                Event::Pool(view) => Some(view.target.warm),
                _ => None,
            })
            .last()
            .expect("a pool event every round");
        let commands = drain_commands(&mut c);
        let deactivated = actions(&commands)
            .iter()
            .filter(|(_, a)| matches!(a, AgentAction::Deactivate { .. }))
            .count();
        held.push((at, warm, deactivated));
        done(&mut c, &commands, now);
    }
    // The minute under way when it took over counts as no shrink slice (it saw only part
    // of it): the next two minutes do, and the pool shrinks then, not before.
    assert_eq!(
        held,
        [
            (0, 3, 0),
            (1_000, 3, 0),
            (59_999, 3, 0),
            (60_000, 3, 0),
            (119_999, 3, 0),
            (120_000, 1, 2)
        ]
    );
}

fn claim(id: &str, instances: u32, start_ms: u64, end_ms: u64) -> CapacityClaim {
    CapacityClaim {
        id: id.to_owned(),
        service: "shop".to_owned(),
        region: "us-east".to_owned(),
        instances,
        kind: crate::state::ClaimKind::Reservation,
        start_ms,
        end_ms,
        created_ms: T0_MS,
    }
}

#[test]
fn claims_raise_the_pool_ahead_and_say_which_instance_came_from_dormant() {
    let mut overview = stateless_home();
    // A reservation of 3 for 60 s..120 s.
    overview.capacity.insert(
        "cap-1".into(),
        claim("cap-1", 3, T0_MS + 60_000, T0_MS + 120_000),
    );
    let mut clock = Clock::new();
    let mut c = Controller::new(config(), 3, clock.now());
    // What the agent holds: (instance k, state); each round reports it.
    let mut held: BTreeMap<u32, InstanceState> = BTreeMap::from([(1, InstanceState::Active)]);
    let report_of = |held: &BTreeMap<u32, InstanceState>, ms: u64| AgentReport {
        at_unix_ms: T0_MS + ms,
        ..report(
            "us-east",
            held.iter()
                .map(|(k, s)| instance(&format!("shop-us-east-{k}"), *s))
                .collect(),
        )
    };
    let mut seen = Vec::new();
    // Every 5 s the controller decides and the agent carries out what it was asked at once.
    for at in (0..=130_000).step_by(5_000) {
        let now = clock.advance(at - clock.ms);
        c.handle_report("us-east", report_of(&held, at), now.at);
        c.handle_overview(overview.clone(), now);
        let sent = drain_commands(&mut c);
        for (_, action) in actions(&sent) {
            let k = |id: &str| id.rsplit('-').next().and_then(|k| k.parse::<u32>().ok());
            match action {
                AgentAction::Provision { instances } => {
                    for id in instances {
                        held.insert(k(&id).expect("pool id"), InstanceState::Dormant);
                    }
                }
                AgentAction::Activate { instance } => {
                    held.insert(k(&instance).expect("pool id"), InstanceState::Active);
                }
                AgentAction::Deactivate { instance } => {
                    held.insert(k(&instance).expect("pool id"), InstanceState::Warm);
                }
                AgentAction::Stop { instance } => {
                    held.insert(k(&instance).expect("pool id"), InstanceState::Stopped);
                }
                AgentAction::Remove { instance } => {
                    held.remove(&k(&instance).expect("pool id"));
                }
                _ => {}
            }
        }
        done(&mut c, &sent, now);
        let view = std::iter::from_fn(|| c.poll_event())
            .filter_map(|e| match e {
                Event::Pool(view) => Some(view),
                _ => None,
            })
            .last()
            .expect("a pool event every round");
        seen.push((at, view.target, view.claims));
    }
    let target_at = |ms: u64| seen.iter().find(|(at, ..)| *at == ms).expect("round").1;
    let t = |warm, dormant| PoolTarget { warm, dormant };
    // Default leads (nothing measured): activation 5 s, provisioning 5 s.
    assert_eq!(target_at(45_000), t(1, 0));
    assert_eq!(
        target_at(50_000),
        t(1, 2),
        "dormant one provisioning lead ahead"
    );
    assert_eq!(
        target_at(55_000),
        t(3, 0),
        "serving one activation lead ahead"
    );
    assert_eq!(target_at(115_000), t(3, 0));
    // After the window, shrinking waits the hysteresis (two minute-slices without a forecast).
    assert_eq!(target_at(130_000), t(3, 0));
    let (_, _, claims) = seen.iter().find(|(at, ..)| *at == 60_000).expect("round");
    let fulfilment = claims.first().expect("the reservation is tracked");
    let was: Vec<(&str, MemberWas)> = fulfilment
        .members
        .iter()
        .map(|m| (m.instance.as_str(), m.was))
        .collect();
    assert_eq!(
        was,
        [
            ("shop-us-east-1", MemberWas::Serving),
            ("shop-us-east-2", MemberWas::Dormant),
            ("shop-us-east-3", MemberWas::Dormant),
        ]
    );
    assert!(fulfilment.fulfilled());
    assert!(
        fulfilment
            .members
            .iter()
            .all(|m| m.ready_after_ms(fulfilment.start_ms) == Some(0)),
        "each served when the window opened: {fulfilment:?}"
    );
}

#[test]
fn a_reactive_pool_follows_the_load_its_front_measured() {
    let mut overview = stateless_home();
    let shop = &mut overview.services.get_mut("shop").expect("shop").spec;
    shop.pools = PoolMode::Reactive;
    shop.capacity_rps_per_instance = 100.0;
    shop.max_instances = 4;
    let mut clock = Clock::new();
    let mut c = Controller::new(config(), 3, clock.now());
    let loaded = |rps: u64| AgentReport {
        front: Some(umbra_proto::agent::FrontReport {
            listen: "127.0.0.11:8080".into(),
            requests_total: 0,
            errors_total: 0,
            window_ms: 1_000,
            window_requests: rps,
            window_errors: 0,
            window_p99_ms: None,
            shares: Vec::new(),
        }),
        ..home_serving()
    };
    let mut targets = Vec::new();
    for (at, rps) in [
        (0, 50),
        (1_000, 250),
        (2_000, 900),
        (60_000, 50),
        (120_000, 50),
    ] {
        let now = clock.advance(at - clock.ms);
        c.handle_report("us-east", loaded(rps), now.at);
        c.handle_overview(overview.clone(), now);
        assert_eq!(
            c.poll_pool_job(),
            None,
            "a reactive pool asks for no forecast"
        );
        let target = std::iter::from_fn(|| c.poll_event())
            .find_map(|e| match e {
                Event::Pool(view) => Some(view.target.warm),
                _ => None,
            })
            .expect("pool event");
        targets.push(target);
    }
    // 50 rps: the floor; 250: 3; 900: capped at max_instances; back down after two slices.
    assert_eq!(targets, [1, 3, 4, 4, 1]);
}

#[test]
fn limits_grow_one_activation_lead_before_the_forecast_load() {
    let mut overview = stateless_home();
    let shop = &mut overview.services.get_mut("shop").expect("shop").spec;
    shop.capacity_rps_per_instance = 100.0;
    shop.instance_limits = Some(crate::state::LimitsSpec {
        min_cpu_millis: 250,
        max_cpu_millis: 1_000,
        min_memory_mib: 128,
        max_memory_mib: 256,
    });
    let mut clock = Clock::new();
    let mut c = Controller::new(config(), 3, clock.now());
    let small = InstanceLimits {
        cpu_millis: 250,
        memory_mib: 128,
    };
    let mut held = small;
    // 10 requests per second, then 90 in the fourth slice (30 s..40 s): one instance holds
    // either (100 per instance), so only its limits follow the load.
    let mut forecast = pool_forecast(&[(1, 0); 6]);
    for (i, slice) in forecast.slices.iter_mut().enumerate() {
        slice.quantile = if i == 3 { 90.0 } else { 10.0 };
    }
    let mut sent = Vec::new();
    for at in (0..=45_000).step_by(5_000) {
        let now = clock.advance(at - clock.ms);
        let mut one = instance("shop-us-east-1", InstanceState::Active);
        one.limits = Some(held);
        c.handle_report("us-east", report("us-east", vec![one]), now.at);
        c.handle_overview(overview.clone(), now);
        if at == 0 {
            c.poll_pool_job().expect("the pool asks for its forecast");
            c.handle_pool_forecast("shop", "us-east", forecast.clone(), now);
            c.handle_overview(overview.clone(), now);
        }
        let commands = drain_commands(&mut c);
        for (_, action) in actions(&commands) {
            if let AgentAction::SetLimits { limits, .. } = action {
                sent.push((at, limits.cpu_millis));
                held = limits;
            }
        }
        done(&mut c, &commands, now);
    }
    // 10 rps: 325 → 350 mCPU at once; 90 rps from one activation lead (5 s) before the
    // peak's slice; back down once the forecast load falls.
    assert_eq!(sent, [(0, 350), (25_000, 950), (40_000, 350)]);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// One input of a random leadership.
    #[derive(Debug, Clone)]
    enum Input {
        /// A region's report: instances `{prefix}-{k}` in these states.
        Report { target: bool, states: Vec<(u8, u8)> },
        /// A round, with the migration in this phase.
        Round { phase: u8 },
        /// The n-th outstanding command ends this way.
        Outcome { which: usize, how: u8 },
        /// The n-th outstanding proposal ends this way.
        Proposal { which: usize, how: u8 },
        /// Every outstanding sizing job gets this size.
        Sizing { instances: u32 },
        /// The pool's forecast: slices of these (warm, dormant) targets from now.
        Forecast { targets: Vec<(u8, u8)> },
        /// Time passes.
        Advance { ms: u16 },
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            (any::<bool>(), prop::collection::vec((1u8..4, 0u8..5), 0..4))
                .prop_map(|(target, states)| Input::Report { target, states }),
            (0u8..8).prop_map(|phase| Input::Round { phase }),
            (any::<usize>(), 0u8..4).prop_map(|(which, how)| Input::Outcome { which, how }),
            (any::<usize>(), 0u8..3).prop_map(|(which, how)| Input::Proposal { which, how }),
            (1u32..4).prop_map(|instances| Input::Sizing { instances }),
            prop::collection::vec((0u8..4, 0u8..3), 0..6)
                .prop_map(|targets| Input::Forecast { targets }),
            (0u16..20_000).prop_map(|ms| Input::Advance { ms }),
        ]
    }

    const STATES: [InstanceState; 5] = [
        InstanceState::Dormant,
        InstanceState::Paused,
        InstanceState::Warm,
        InstanceState::Active,
        InstanceState::Stopped,
    ];

    fn phase(n: u8) -> Phase {
        match n {
            0 => Phase::Planned,
            1 => Phase::Provisioning,
            2 => Phase::Warming,
            3 => Phase::Replicating,
            4 => Phase::CuttingOver { step: 1 },
            5 => Phase::RollingBack,
            6 => Phase::RolledBack,
            _ => Phase::Completed,
        }
    }

    /// Runs `inputs` through a fresh controller; everything it put out, in order.
    fn run(inputs: &[Input]) -> Vec<String> {
        let (overview, id) = overview_with(Phase::Planned, 2);
        let mut clock = Clock::new();
        let mut c = Controller::new(config(), 5, clock.now());
        let (mut commands, mut proposals, mut jobs) = (Vec::new(), Vec::new(), Vec::new());
        let mut out = Vec::new();
        for input in inputs {
            match input {
                Input::Report { target, states } => {
                    let (region, prefix) = if *target {
                        ("eu-west", id.clone())
                    } else {
                        ("us-east", "shop-us-east".to_owned())
                    };
                    let instances = states
                        .iter()
                        .map(|(k, s)| instance(&format!("{prefix}-{k}"), STATES[*s as usize]))
                        .collect();
                    c.handle_report(region, report(region, instances), clock.advance(1).at);
                }
                Input::Round { phase: n } => {
                    let mut round = overview.clone();
                    round.migrations.get_mut(&id).expect("there").phase = phase(*n);
                    c.handle_overview(round, clock.advance(1));
                }
                Input::Outcome { which, how } if !commands.is_empty() => {
                    let o: Outgoing = commands.remove(which % commands.len());
                    let delivery = match how {
                        0 => Delivery::Answered(CommandOutcome::Done(CommandResult::Instances(
                            vec![],
                        ))),
                        1 => Delivery::Answered(CommandOutcome::Failed {
                            reason: "no".into(),
                        }),
                        2 => Delivery::Duplicate,
                        _ => Delivery::Unanswered("lost".into()),
                    };
                    c.handle_outcome(&o.operation, delivery, clock.advance(1));
                }
                Input::Proposal { which, how } if !proposals.is_empty() => {
                    let p: Proposal = proposals.remove(which % proposals.len());
                    let result = match how {
                        0 => Proposed::Applied,
                        1 => Proposed::Rejected("moved".into()),
                        _ => Proposed::Unavailable("lost".into()),
                    };
                    c.handle_proposal(&p.key, result, clock.advance(1));
                }
                Input::Sizing { instances } => {
                    for job in std::mem::take(&mut jobs) {
                        let job: SizingJob = job;
                        let size = ShadowSize {
                            instances: *instances,
                            reason: "test".into(),
                        };
                        c.handle_sizing(&job.migration, size, clock.advance(1));
                    }
                }
                Input::Forecast { targets } => {
                    let mut forecast = pool_forecast(
                        targets
                            .iter()
                            .map(|&(w, d)| (u32::from(w), u32::from(d)))
                            .collect::<Vec<_>>()
                            .as_slice(),
                    );
                    for slice in &mut forecast.slices {
                        slice.start_ms += clock.ms;
                    }
                    c.handle_pool_forecast("shop", "us-east", forecast, clock.advance(1));
                }
                Input::Advance { ms } => {
                    clock.advance(u64::from(*ms));
                }
                _ => {}
            }
            while let Some(o) = c.poll_command() {
                out.push(format!("{o:?}"));
                commands.push(o);
            }
            while let Some(p) = c.poll_proposal() {
                out.push(format!("{p:?}"));
                proposals.push(p);
            }
            while let Some(j) = c.poll_sizing() {
                out.push(format!("{j:?}"));
                jobs.push(j);
            }
            while let Some(j) = c.poll_pool_job() {
                out.push(format!("{j:?}"));
            }
            out.extend(std::iter::from_fn(|| c.poll_event()).map(|e| format!("{e:?}")));
            out.push(format!(
                "timeout in {:?}",
                c.poll_timeout()
                    .map(|t| t.saturating_duration_since(clock.now().at))
            ));
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random input sequences, replayed: the same outputs every time.
        #[test]
        fn a_random_leadership_replayed_gives_the_same_outputs(
            inputs in prop::collection::vec(input(), 1..80)
        ) {
            let first = run(&inputs);
            prop_assert_eq!(run(&inputs), first);
        }
    }
}

/// A front report: `requests` served so far, none failed, and `shares` applied.
fn front(
    requests: u64,
    shares: Vec<umbra_proto::agent::ShareReport>,
) -> umbra_proto::agent::FrontReport {
    umbra_proto::agent::FrontReport {
        listen: "127.0.0.1:9".to_owned(),
        requests_total: requests,
        errors_total: 0,
        window_ms: 250,
        window_requests: 0,
        window_errors: 0,
        window_p99_ms: Some(5.0),
        shares,
    }
}

/// With one DNS authority (`dns_gate`, `[dns] provider = "rfc2136"`), a step whose share,
/// window and SLO evidence all hold still waits until the authority is seen serving its
/// weights; a failed check rolls the migration back and says why. A new leader, which finds
/// the step's weights already replicated, asks for the check itself.
#[test]
fn with_one_dns_authority_a_step_counts_only_once_the_authority_serves_it() {
    for checked in [Ok(()), Err("NOTAUTH (Not authorized)".to_owned())] {
        let (mut overview, id) = overview_with(Phase::CuttingOver { step: 0 }, 1);
        let record = overview.migrations[&id].clone();
        let service = overview.services["shop"].clone();
        let percent = record.spec.steps_percent[0];
        let want =
            reconcile::desired_dns(&record, &service, Some(percent), T0_MS).expect("weights");
        // An earlier leader already proposed this step's weights.
        overview.dns.insert("shop".to_owned(), want.clone());
        let mut clock = Clock::new();
        let mut c = Controller::new(
            ControllerConfig {
                dns_gate: true,
                ..config()
            },
            3,
            clock.now(),
        );
        let share = umbra_proto::agent::ShareReport {
            service: "shop".to_owned(),
            target_front: "127.0.0.12:9".to_owned(),
            percent,
        };
        let source = AgentReport {
            front: Some(front(0, vec![share])),
            ..home_serving()
        };
        let shadow = format!("{id}-1");
        let target = |requests| AgentReport {
            front: Some(front(requests, Vec::new())),
            ..report("eu-west", vec![instance(&shadow, InstanceState::Active)])
        };
        c.handle_report("us-east", source.clone(), clock.now().at);
        c.handle_report("eu-west", target(0), clock.now().at);
        c.handle_overview(overview.clone(), clock.advance(1));
        // The window passes with enough requests judged at the step's share.
        let later = clock.advance(record.spec.analysis_window_ms + 1);
        c.handle_report("us-east", source, later.at);
        c.handle_report("eu-west", target(1_000), later.at);
        c.handle_overview(overview.clone(), later);
        let asked: Vec<DnsWeights> = std::iter::from_fn(|| c.poll_event())
            .filter_map(|e| match e {
                Event::DnsChanged { service, dns, .. } if service == "shop" => Some(dns),
                _ => None,
            })
            .collect();
        assert_eq!(asked, vec![want.clone()], "the check is asked for once");
        let transitions = |c: &mut Controller| -> Vec<(Phase, String)> {
            std::iter::from_fn(|| c.poll_proposal())
                .filter_map(|p| match p.command {
                    Command::Transition { to, reason, .. } => Some((to, reason)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(transitions(&mut c), vec![], "the step waits for DNS");
        c.handle_overview(overview.clone(), clock.advance(100));
        assert_eq!(transitions(&mut c), vec![], "still waiting for the check");

        let failed = checked.is_err();
        c.handle_dns_checked("shop", &want, checked, clock.advance(1));
        let proposed = transitions(&mut c);
        assert_eq!(proposed.len(), 1, "{proposed:?}");
        let (to, reason) = &proposed[0];
        if failed {
            assert_eq!(*to, Phase::RollingBack);
            assert!(
                reason.starts_with(&format!("DNS not served at {percent}%"))
                    && reason.contains("NOTAUTH"),
                "{reason}"
            );
        } else {
            assert_eq!(*to, Phase::CuttingOver { step: 1 }, "{reason}");
        }
    }
}

/// While warming, what the leader publishes for `umbra status` carries the warm-up gate's
/// reading on the shadow furthest from passing, beside the plan's thresholds.
#[test]
fn a_warming_migration_publishes_the_gates_reading_against_the_plans_thresholds() {
    let (overview, id) = overview_with(Phase::Warming, 2);
    let clock = Clock::new();
    let mut c = Controller::new(config(), 3, clock.now());
    let (s1, s2) = (format!("{id}-1"), format!("{id}-2"));
    let progress = |instance: &str, phase, requests| umbra_proto::agent::WarmupProgress {
        instance: instance.to_owned(),
        phase,
        requests,
        errors: 0,
        window_p99_ms: 9.0,
        window_error_rate: 0.0,
        elapsed_ms: 2_500,
    };
    let mut target = report(
        "eu-west",
        vec![
            instance(&s1, InstanceState::Active),
            instance(&s2, InstanceState::Active),
        ],
    );
    target.warmups = vec![
        progress(&s1, WarmupPhase::Ready, 900),
        progress(&s2, WarmupPhase::Running, 120),
    ];
    c.handle_report("us-east", home_serving(), clock.now().at);
    c.handle_report("eu-west", target, clock.now().at);
    c.handle_overview(overview.clone(), clock.now());
    let seen = std::iter::from_fn(|| c.poll_event())
        .find_map(|e| match e {
            Event::Observed { migration, seen } if migration == id => Some(seen),
            _ => None,
        })
        .expect("the migration is observed");
    let gate = &overview.services["shop"].spec.warmup.gate;
    let reading = seen.warmup.expect("a reading while warming");
    assert_eq!(reading.instance, s2, "the shadow furthest from passing");
    assert_eq!(reading.requests, 120);
    assert_eq!(reading.min_requests, gate.min_requests);
    assert_eq!(
        reading.max_p99_ms,
        gate.reference_p99_ms * (1.0 + gate.p99_tolerance_pct / 100.0)
    );
    assert_eq!(reading.max_error_rate, gate.max_error_rate);
}

/// Every transition this round proposes.
fn transitions(c: &mut Controller) -> Vec<(Phase, String)> {
    std::iter::from_fn(|| c.poll_proposal())
        .filter_map(|p| match p.command {
            Command::Transition { to, reason, .. } => Some((to, reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_phase_deadline_runs_on_the_monotonic_clock_whatever_the_leaders_wall_clock_does() {
    let (overview, id) = overview_with(Phase::Provisioning, 1);
    let deadline_ms = overview.migrations[&id].spec.deadlines.provisioning_ms;
    let mut clock = Clock::new();
    let mut c = Controller::new(config(), 3, clock.now());
    c.handle_report("us-east", home_serving(), clock.now().at);
    c.handle_overview(overview.clone(), clock.advance(1_000));
    assert_eq!(transitions(&mut c), vec![], "the shadow is still coming up");

    // The wall clock jumps past the deadline; one real second passed.
    let jumped = Now {
        at: clock.advance(1_000).at,
        unix_ms: T0_MS + 2_000 + deadline_ms + 60_000,
    };
    c.handle_overview(overview.clone(), jumped);
    assert_eq!(transitions(&mut c), vec![], "a step forward skips nothing");

    // The wall clock steps back behind the phase's start; the deadline passes on the
    // monotonic clock all the same.
    let stepped_back = Now {
        at: clock.advance(deadline_ms).at,
        unix_ms: T0_MS - 300_000,
    };
    c.handle_overview(overview, stepped_back);
    let rolled_back = transitions(&mut c);
    assert_eq!(rolled_back.len(), 1, "{rolled_back:?}");
    assert_eq!(rolled_back[0].0, Phase::RollingBack);
    assert!(
        rolled_back[0].1.starts_with("provisioning did not finish"),
        "{}",
        rolled_back[0].1
    );
}
