//! Table-driven tests of the migration state machine (raft-rs `testdata` style: each row is
//! an input and what must come out), a walk through a whole migration, and a property test
//! that `decide` only ever proposes edges the replicated state accepts.

use super::*;

const T0: u64 = 1_800_000_000_000;

fn spec() -> MigrationSpec {
    MigrationSpec {
        id: "shop-1".to_owned(),
        service: "shop".to_owned(),
        from: "us-east".to_owned(),
        to: "eu-west".to_owned(),
        cutover_at_ms: T0 + 60_000,
        lead_time_ms: 30_000,
        steps_percent: DEFAULT_STEPS_PERCENT.to_vec(),
        analysis_window_ms: 5_000,
        drain_ms: Some(2_000),
        dns_ttl: DnsTtlPlan {
            old_ttl_secs: 300,
            low_ttl_secs: 5,
            margin_secs: 60,
            lower_at_ms: T0 + 60_000 - 360_000,
        },
        warm_up: true,
        max_replication_lag: 10,
        slo: Slo {
            max_error_rate: 0.01,
            max_p99_ms: 100.0,
            min_samples: 50,
            source: SloSource::Fronts,
            judgement: SloJudgement::Thresholds,
        },
        deadlines: PhaseDeadlines {
            provisioning_ms: 20_000,
            warming_ms: 20_000,
            replicating_ms: 20_000,
            rolling_back_ms: 1_000,
        },
    }
}

fn record(phase: Phase, promoted: bool) -> MigrationRecord {
    MigrationRecord {
        spec: spec(),
        phase,
        phase_since_ms: T0,
        shadow_instances: 3,
        promoted,
        ttl_lowered_at_ms: None,
    }
}

fn healthy(samples: u64) -> Option<SloReading> {
    Some(SloReading {
        samples,
        error_rate: 0.0,
        p99_ms: 20.0,
    })
}

fn caught_up(promoted: bool) -> Option<ReplicationObserved> {
    Some(ReplicationObserved {
        lag: 0,
        promoted,
        source_fenced: false,
        fence_lifted: false,
    })
}

/// Caught up, the source fenced for the writer's move, the target not promoted yet.
fn fenced() -> Option<ReplicationObserved> {
    Some(ReplicationObserved {
        lag: 0,
        promoted: false,
        source_fenced: true,
        fence_lifted: false,
    })
}

struct Row {
    name: &'static str,
    phase: Phase,
    promoted: bool,
    elapsed_ms: u64,
    seen: Observations,
    to: Option<Phase>,
    promoted_change: Option<bool>,
    actions: Vec<Action>,
}

#[test]
fn decisions_table() {
    use Action::*;
    let shadow = EnsureShadow { instances: 3 };
    let rows = vec![
        Row {
            name: "planned waits before the lead time",
            phase: Phase::Planned,
            promoted: false,
            elapsed_ms: 29_999,
            seen: Observations::default(),
            to: None,
            promoted_change: None,
            actions: vec![],
        },
        Row {
            name: "planned starts provisioning at cutover − lead time",
            phase: Phase::Planned,
            promoted: false,
            elapsed_ms: 30_000,
            seen: Observations::default(),
            to: Some(Phase::Provisioning),
            promoted_change: None,
            actions: vec![],
        },
        Row {
            name: "provisioning ensures the pool while it comes up",
            phase: Phase::Provisioning,
            promoted: false,
            elapsed_ms: 1_000,
            seen: Observations {
                shadow_serving: 2,
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![shadow.clone()],
        },
        Row {
            name: "provisioning done moves to warming",
            phase: Phase::Provisioning,
            promoted: false,
            elapsed_ms: 1_000,
            seen: Observations {
                shadow_serving: 3,
                ..Observations::default()
            },
            to: Some(Phase::Warming),
            promoted_change: None,
            actions: vec![shadow.clone()],
        },
        Row {
            name: "provisioning past its deadline rolls back",
            phase: Phase::Provisioning,
            promoted: false,
            elapsed_ms: 20_001,
            seen: Observations {
                shadow_serving: 2,
                ..Observations::default()
            },
            to: Some(Phase::RollingBack),
            promoted_change: None,
            actions: vec![shadow.clone()],
        },
        Row {
            name: "warming waits for every gate",
            phase: Phase::Warming,
            promoted: false,
            elapsed_ms: 1_000,
            seen: Observations {
                shadow_serving: 3,
                shadow_warm: 2,
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, EnsureWarm],
        },
        Row {
            name: "a warm-up that reached its cap without the gate rolls back",
            phase: Phase::Warming,
            promoted: false,
            elapsed_ms: 1_000,
            seen: Observations {
                shadow_serving: 3,
                shadow_warm: 2,
                shadow_warm_failed: 1,
                ..Observations::default()
            },
            to: Some(Phase::RollingBack),
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, EnsureWarm],
        },
        Row {
            name: "all warm moves to replicating",
            phase: Phase::Warming,
            promoted: false,
            elapsed_ms: 1_000,
            seen: Observations {
                shadow_serving: 3,
                shadow_warm: 3,
                ..Observations::default()
            },
            to: Some(Phase::Replicating),
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, EnsureWarm],
        },
        Row {
            name: "lag above the bound keeps replicating",
            phase: Phase::Replicating,
            promoted: false,
            elapsed_ms: 1_000,
            seen: Observations {
                replication: Some(ReplicationObserved {
                    lag: 11,
                    promoted: false,
                    source_fenced: false,
                    fence_lifted: false,
                }),
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication],
        },
        Row {
            name: "lag within the bound is ready",
            phase: Phase::Replicating,
            promoted: false,
            elapsed_ms: 1_000,
            seen: Observations {
                replication: Some(ReplicationObserved {
                    lag: 10,
                    promoted: false,
                    source_fenced: false,
                    fence_lifted: false,
                }),
                ..Observations::default()
            },
            to: Some(Phase::Ready),
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication],
        },
        Row {
            name: "ready waits for the cutover time",
            phase: Phase::Ready,
            promoted: false,
            elapsed_ms: 59_999,
            seen: Observations::default(),
            to: None,
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication],
        },
        Row {
            name: "ready cuts over at the slice start",
            phase: Phase::Ready,
            promoted: false,
            elapsed_ms: 60_000,
            seen: Observations::default(),
            to: Some(Phase::CuttingOver { step: 0 }),
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication],
        },
        Row {
            name: "a step holds until its share is confirmed",
            phase: Phase::CuttingOver { step: 0 },
            promoted: false,
            elapsed_ms: 9_000,
            seen: Observations {
                share_applied: Some(0),
                slo: healthy(500),
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, SetShare { percent: 10 }],
        },
        Row {
            name: "a step holds for its analysis window",
            phase: Phase::CuttingOver { step: 0 },
            promoted: false,
            elapsed_ms: 4_999,
            seen: Observations {
                share_applied: Some(10),
                slo: healthy(500),
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, SetShare { percent: 10 }],
        },
        Row {
            name: "a healthy step moves to the next",
            phase: Phase::CuttingOver { step: 0 },
            promoted: false,
            elapsed_ms: 5_000,
            seen: Observations {
                share_applied: Some(10),
                slo: healthy(500),
                ..Observations::default()
            },
            to: Some(Phase::CuttingOver { step: 1 }),
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, SetShare { percent: 10 }],
        },
        Row {
            name: "a step does not pass on time alone: too few requests judged",
            phase: Phase::CuttingOver { step: 0 },
            promoted: false,
            elapsed_ms: 60_000,
            seen: Observations {
                share_applied: Some(10),
                slo: healthy(49),
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, SetShare { percent: 10 }],
        },
        Row {
            name: "with one DNS authority a step holds until it serves the step's weights",
            phase: Phase::CuttingOver { step: 0 },
            promoted: false,
            elapsed_ms: 60_000,
            seen: Observations {
                share_applied: Some(10),
                slo: healthy(500),
                dns: DnsObserved::Pending,
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, SetShare { percent: 10 }],
        },
        Row {
            name: "with one DNS authority serving the step's weights, the step passes",
            phase: Phase::CuttingOver { step: 0 },
            promoted: false,
            elapsed_ms: 60_000,
            seen: Observations {
                share_applied: Some(10),
                slo: healthy(500),
                dns: DnsObserved::Served,
                ..Observations::default()
            },
            to: Some(Phase::CuttingOver { step: 1 }),
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, SetShare { percent: 10 }],
        },
        Row {
            name: "a DNS authority that refused the step's weights rolls the migration back",
            phase: Phase::CuttingOver { step: 1 },
            promoted: false,
            elapsed_ms: 100,
            seen: Observations {
                share_applied: Some(50),
                slo: healthy(500),
                dns: DnsObserved::Failed("NOTAUTH".to_owned()),
                ..Observations::default()
            },
            to: Some(Phase::RollingBack),
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, SetShare { percent: 50 }],
        },
        Row {
            name: "a step with no reading at all holds (e.g. a new leader just took over)",
            phase: Phase::CuttingOver { step: 1 },
            promoted: false,
            elapsed_ms: 60_000,
            seen: Observations {
                share_applied: Some(50),
                slo: None,
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, SetShare { percent: 50 }],
        },
        Row {
            name: "an error-rate breach rolls back before the window ends",
            phase: Phase::CuttingOver { step: 1 },
            promoted: false,
            elapsed_ms: 100,
            seen: Observations {
                share_applied: Some(50),
                slo: Some(SloReading {
                    samples: 200,
                    error_rate: 0.2,
                    p99_ms: 10.0,
                }),
                ..Observations::default()
            },
            to: Some(Phase::RollingBack),
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, SetShare { percent: 50 }],
        },
        Row {
            name: "a latency breach rolls back",
            phase: Phase::CuttingOver { step: 1 },
            promoted: false,
            elapsed_ms: 100,
            seen: Observations {
                share_applied: Some(50),
                slo: Some(SloReading {
                    samples: 200,
                    error_rate: 0.0,
                    p99_ms: 250.0,
                }),
                ..Observations::default()
            },
            to: Some(Phase::RollingBack),
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, SetShare { percent: 50 }],
        },
        Row {
            name: "too few samples give no verdict",
            phase: Phase::CuttingOver { step: 1 },
            promoted: false,
            elapsed_ms: 100,
            seen: Observations {
                share_applied: Some(50),
                slo: Some(SloReading {
                    samples: 49,
                    error_rate: 1.0,
                    p99_ms: 1_000.0,
                }),
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, SetShare { percent: 50 }],
        },
        Row {
            name: "the last step promotes the target before taking all traffic",
            phase: Phase::CuttingOver { step: 2 },
            promoted: false,
            elapsed_ms: 0,
            seen: Observations {
                share_applied: Some(50),
                replication: caught_up(false),
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, PromoteTarget],
        },
        Row {
            name: "a writer's move that waits on its catch-up holds within its bound",
            phase: Phase::CuttingOver { step: 2 },
            promoted: false,
            elapsed_ms: 20_000,
            seen: Observations {
                share_applied: Some(50),
                replication: fenced(),
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, PromoteTarget],
        },
        Row {
            name: "a writer's move past the catch-up bound rolls back",
            phase: Phase::CuttingOver { step: 2 },
            promoted: false,
            elapsed_ms: 20_001,
            seen: Observations {
                share_applied: Some(50),
                replication: fenced(),
                ..Observations::default()
            },
            to: Some(Phase::RollingBack),
            promoted_change: None,
            actions: vec![shadow.clone(), EnsureReplication, PromoteTarget],
        },
        Row {
            name: "a confirmed promotion is recorded first",
            phase: Phase::CuttingOver { step: 2 },
            promoted: false,
            elapsed_ms: 0,
            seen: Observations {
                share_applied: Some(50),
                replication: caught_up(true),
                ..Observations::default()
            },
            to: None,
            promoted_change: Some(true),
            actions: vec![],
        },
        Row {
            name: "after promotion the last step shifts all traffic",
            phase: Phase::CuttingOver { step: 2 },
            promoted: true,
            elapsed_ms: 10,
            seen: Observations {
                share_applied: Some(50),
                replication: caught_up(true),
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![shadow.clone(), SetShare { percent: 100 }],
        },
        Row {
            name: "the last healthy step drains the source",
            phase: Phase::CuttingOver { step: 2 },
            promoted: true,
            elapsed_ms: 5_000,
            seen: Observations {
                share_applied: Some(100),
                replication: caught_up(true),
                slo: healthy(1_000),
                ..Observations::default()
            },
            to: Some(Phase::Draining),
            promoted_change: None,
            actions: vec![shadow.clone(), SetShare { percent: 100 }],
        },
        Row {
            name: "draining completes after the drain time",
            phase: Phase::Draining,
            promoted: true,
            elapsed_ms: 2_000,
            seen: Observations::default(),
            to: Some(Phase::Completed),
            promoted_change: None,
            actions: vec![SetShare { percent: 100 }],
        },
        Row {
            name: "rolling back restores the source's share",
            phase: Phase::RollingBack,
            promoted: false,
            elapsed_ms: 10,
            seen: Observations {
                share_applied: Some(50),
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![SetShare { percent: 0 }],
        },
        Row {
            name: "rolled back once the source has every request",
            phase: Phase::RollingBack,
            promoted: false,
            elapsed_ms: 10,
            seen: Observations {
                share_applied: Some(0),
                ..Observations::default()
            },
            to: Some(Phase::RolledBack),
            promoted_change: None,
            actions: vec![SetShare { percent: 0 }],
        },
        Row {
            name: "a rollback after the fence, before the promotion, lifts the source's fence",
            phase: Phase::RollingBack,
            promoted: false,
            elapsed_ms: 10,
            seen: Observations {
                share_applied: Some(0),
                replication: fenced(),
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![SetShare { percent: 0 }, UnfenceSource],
        },
        Row {
            name: "a source still fenced past the deadline is not abandoned fenced",
            phase: Phase::RollingBack,
            promoted: false,
            elapsed_ms: 1_001,
            seen: Observations {
                share_applied: Some(0),
                replication: fenced(),
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![SetShare { percent: 0 }, UnfenceSource],
        },
        Row {
            name: "rolled back once the target's agent lifted the fence",
            phase: Phase::RollingBack,
            promoted: false,
            elapsed_ms: 10,
            seen: Observations {
                share_applied: Some(0),
                replication: fenced().map(|r| ReplicationObserved {
                    fence_lifted: true,
                    ..r
                }),
                ..Observations::default()
            },
            to: Some(Phase::RolledBack),
            promoted_change: None,
            actions: vec![SetShare { percent: 0 }],
        },
        Row {
            name: "rolling back after promotion moves the writer back",
            phase: Phase::RollingBack,
            promoted: true,
            elapsed_ms: 10,
            seen: Observations {
                share_applied: Some(0),
                replication: caught_up(true),
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![SetShare { percent: 0 }, shadow.clone(), PromoteSource],
        },
        Row {
            name: "a writer hand-back that outlasts the deadline is not abandoned",
            phase: Phase::RollingBack,
            promoted: true,
            elapsed_ms: 1_001,
            seen: Observations {
                share_applied: Some(0),
                replication: caught_up(true),
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![SetShare { percent: 0 }, shadow.clone(), PromoteSource],
        },
        Row {
            name: "a promotion that landed after the rollback began is recorded, to hand it back",
            phase: Phase::RollingBack,
            promoted: false,
            elapsed_ms: 10,
            seen: Observations {
                share_applied: Some(0),
                replication: caught_up(true),
                ..Observations::default()
            },
            to: None,
            promoted_change: Some(true),
            actions: vec![],
        },
        Row {
            name: "a writer back on the source is recorded",
            phase: Phase::RollingBack,
            promoted: true,
            elapsed_ms: 10,
            seen: Observations {
                share_applied: Some(0),
                replication: caught_up(false),
                ..Observations::default()
            },
            to: None,
            promoted_change: Some(false),
            actions: vec![],
        },
        Row {
            name: "a rollback that cannot finish fails loudly",
            phase: Phase::RollingBack,
            promoted: false,
            elapsed_ms: 1_001,
            seen: Observations {
                share_applied: Some(50),
                ..Observations::default()
            },
            to: Some(Phase::Failed),
            promoted_change: None,
            actions: vec![SetShare { percent: 0 }],
        },
        Row {
            name: "an operator rollback wins over everything else",
            phase: Phase::CuttingOver { step: 0 },
            promoted: false,
            elapsed_ms: 5_000,
            seen: Observations {
                share_applied: Some(10),
                slo: healthy(500),
                rollback_requested: Some("drill".to_owned()),
                ..Observations::default()
            },
            to: Some(Phase::RollingBack),
            promoted_change: None,
            actions: vec![],
        },
        Row {
            name: "an operator rollback of a completed migration is ignored",
            phase: Phase::Completed,
            promoted: true,
            elapsed_ms: 5_000,
            seen: Observations {
                rollback_requested: Some("too late".to_owned()),
                ..Observations::default()
            },
            to: None,
            promoted_change: None,
            actions: vec![SetShare { percent: 100 }, ReleaseSource],
        },
        Row {
            name: "a rolled-back migration keeps traffic on the source and releases its shadow",
            phase: Phase::RolledBack,
            promoted: false,
            elapsed_ms: 5_000,
            seen: Observations::default(),
            to: None,
            promoted_change: None,
            actions: vec![SetShare { percent: 0 }, ReleaseShadow],
        },
    ];

    for row in rows {
        let record = record(row.phase, row.promoted);
        let decision = decide(&record, &row.seen, T0 + row.elapsed_ms);
        assert_eq!(
            decision.transition.as_ref().map(|t| t.to),
            row.to,
            "{}: transition ({:?})",
            row.name,
            decision.transition
        );
        assert_eq!(
            decision.promoted, row.promoted_change,
            "{}: promoted",
            row.name
        );
        assert_eq!(decision.actions, row.actions, "{}: actions", row.name);
        if let Some(t) = &decision.transition {
            assert!(
                !t.reason.is_empty(),
                "{}: a transition needs a reason",
                row.name
            );
            assert!(
                row.phase.may_become(t.to, record.spec.steps_percent.len()),
                "{}: {} → {} is not an edge",
                row.name,
                row.phase,
                t.to
            );
        }
    }
}

/// Drives one migration from Planned to Completed with a world that does what it is told,
/// the way the executor and the replicated state will, and checks the phases in order.
#[test]
fn a_whole_migration_walks_every_phase_once() {
    let mut record = record(Phase::Planned, false);
    let mut seen = Observations::default();
    let mut now = T0;
    let mut phases = vec![record.phase];
    for _round in 0..1_000 {
        let decision = decide(&record, &seen, now);
        // The world applies every action at once.
        for action in &decision.actions {
            match action {
                Action::EnsureShadow { instances } => seen.shadow_serving = *instances,
                Action::EnsureWarm => seen.shadow_warm = record.shadow_instances,
                Action::EnsureReplication => seen.replication = caught_up(false),
                Action::PromoteTarget => seen.replication = caught_up(true),
                Action::PromoteSource | Action::UnfenceSource => {
                    seen.replication = caught_up(false)
                }
                Action::SetShare { percent } => {
                    seen.share_applied = Some(*percent);
                    seen.slo = healthy(1_000);
                }
                Action::ReleaseShadow | Action::ReleaseSource => {}
            }
        }
        if let Some(p) = decision.promoted {
            record.promoted = p;
        }
        if let Some(t) = decision.transition {
            assert!(
                record.phase.may_become(t.to, 3),
                "{} → {}",
                record.phase,
                t.to
            );
            record.phase = t.to;
            record.phase_since_ms = now;
            phases.push(t.to);
        }
        if record.phase.is_terminal() {
            break;
        }
        now += 500;
    }
    use Phase::*;
    assert_eq!(
        phases,
        vec![
            Planned,
            Provisioning,
            Warming,
            Replicating,
            Ready,
            CuttingOver { step: 0 },
            CuttingOver { step: 1 },
            CuttingOver { step: 2 },
            Draining,
            Completed
        ]
    );
    assert!(record.promoted);
}

#[test]
fn specs_are_validated() {
    let ok = spec();
    assert_eq!(ok.validate(), Ok(()));
    type Breaks = fn(&mut MigrationSpec);
    let cases: Vec<(&str, Breaks)> = vec![
        ("same region", |s| s.to = s.from.clone()),
        ("empty steps", |s| s.steps_percent.clear()),
        ("not ending at 100", |s| s.steps_percent = vec![10, 50]),
        ("decreasing", |s| s.steps_percent = vec![50, 10, 100]),
        ("zero first step", |s| s.steps_percent = vec![0, 100]),
        ("error rate above 1", |s| s.slo.max_error_rate = 1.5),
        ("p99 not positive", |s| s.slo.max_p99_ms = 0.0),
        ("zero window", |s| s.analysis_window_ms = 0),
        ("zero rollback deadline", |s| {
            s.deadlines.rolling_back_ms = 0
        }),
    ];
    for (name, break_it) in cases {
        let mut bad = spec();
        break_it(&mut bad);
        let err = bad.validate().expect_err(name);
        assert!(!err.to_string().is_empty(), "{name}");
    }
}

#[test]
fn readiness_is_100_only_when_every_gate_holds() {
    let record = record(Phase::Ready, false);
    let mut seen = Observations {
        shadow_serving: 3,
        shadow_warm: 3,
        replication: Some(ReplicationObserved {
            lag: 11,
            promoted: false,
            source_fenced: false,
            fence_lifted: false,
        }),
        ..Observations::default()
    };
    let almost = readiness(&record, &seen);
    assert!(almost.score < 100, "{almost:?}");
    assert!(
        almost.score >= 90,
        "two gates hold, lag is close: {almost:?}"
    );
    seen.replication = caught_up(false);
    let ready = readiness(&record, &seen);
    assert_eq!(ready.score, 100);
    assert!(ready.gates.iter().all(|g| g.holds));
    let cold = readiness(&record, &Observations::default());
    assert_eq!(cold.score, 0, "{cold:?}");
}

#[test]
fn a_waiting_warm_gate_shows_its_reading_against_each_threshold() {
    let record = record(Phase::Warming, false);
    let seen = Observations {
        shadow_serving: 3,
        shadow_warm: 2,
        warmup: Some(WarmupReading {
            instance: "shop-1-s2".to_owned(),
            elapsed_ms: 4_100,
            requests: 540,
            min_requests: 2_000,
            window_p99_ms: 9.31,
            max_p99_ms: 6.0,
            window_error_rate: 0.0,
            max_error_rate: 0.001,
        }),
        ..Observations::default()
    };
    let warm = readiness(&record, &seen)
        .gates
        .into_iter()
        .find(|g| g.name == "warm")
        .expect("a warm gate");
    assert!(!warm.holds);
    assert_eq!(
        warm.detail,
        "2 of 3 shadow instances pass the warm-up gate; shop-1-s2 after 4.1 s: 540 of 2000 \
         requests, p99 9.3 ms (limit 6.0 ms), errors 0.00 % (limit 0.10 %): short on \
         requests, p99"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn any_phase() -> impl Strategy<Value = Phase> {
        prop_oneof![
            Just(Phase::Planned),
            Just(Phase::Provisioning),
            Just(Phase::Warming),
            Just(Phase::Replicating),
            Just(Phase::Ready),
            (0usize..3).prop_map(|step| Phase::CuttingOver { step }),
            Just(Phase::Draining),
            Just(Phase::Completed),
            Just(Phase::RollingBack),
            Just(Phase::RolledBack),
            Just(Phase::Failed),
        ]
    }

    proptest! {
        /// Whatever the world reports, `decide` proposes only edges of the state machine and
        /// never acts in a terminal phase except to keep traffic where it ended.
        #[test]
        fn decide_only_proposes_edges(
            phase in any_phase(),
            promoted in any::<bool>(),
            elapsed in 0u64..200_000,
            serving in 0u32..5,
            warm in 0u32..5,
            lag in proptest::option::of(0u64..50),
            target_promoted in any::<bool>(),
            share in proptest::option::of(prop_oneof![Just(0u8), Just(10), Just(50), Just(100)]),
            samples in 0u64..500,
            error_rate in 0.0f64..0.1,
            p99 in 1.0f64..300.0,
            rollback in any::<bool>(),
            failed in 0u32..2,
        ) {
            let record = record(phase, promoted);
            let seen = Observations {
                shadow_serving: serving,
                shadow_warm: warm,
                shadow_warm_failed: failed,
                replication: lag.map(|lag| ReplicationObserved { lag, promoted: target_promoted, source_fenced: false , fence_lifted: false}),
                share_applied: share,
                slo: Some(SloReading { samples, error_rate, p99_ms: p99 }),
                rollback_requested: rollback.then(|| "drill".to_owned()),
                dns: DnsObserved::Ungated,
                slo_queried: None,
                warmup: None,
            };
            let decision = decide(&record, &seen, T0 + elapsed);
            if let Some(t) = &decision.transition {
                prop_assert!(phase.may_become(t.to, 3), "{} → {}", phase, t.to);
            }
            if phase.is_terminal() {
                prop_assert!(decision.transition.is_none());
                let keeps_traffic = decision.actions.iter().all(|a| {
                    matches!(
                        a,
                        Action::SetShare { .. } | Action::ReleaseSource | Action::ReleaseShadow
                    )
                });
                prop_assert!(keeps_traffic, "{:?}", decision.actions);
            }
        }
    }
}

/// Without an operator's drain, the source drains for the TTL on the answers the last change
/// replaced plus the margin: the low TTL once it reached every cache before draining began,
/// the old TTL when it was lowered late or never.
#[test]
fn the_drain_follows_the_ttl_plan() {
    let rows = [
        ("lowered in time", Some(T0 - 400_000), 65_000, "5 s TTL"),
        ("lowered late", Some(T0 - 100_000), 360_000, "300 s TTL"),
        ("never lowered", None, 360_000, "300 s TTL"),
    ];
    for (name, lowered, drain_ms, why) in rows {
        let mut r = record(Phase::Draining, true);
        r.spec.drain_ms = None;
        r.ttl_lowered_at_ms = lowered;
        let seen = Observations::default();
        let early = decide(&r, &seen, T0 + drain_ms - 1);
        assert_eq!(early.transition, None, "{name}: still draining");
        let done = decide(&r, &seen, T0 + drain_ms).transition.expect(name);
        assert_eq!(done.to, Phase::Completed, "{name}");
        assert!(
            done.reason.contains(&format!("{drain_ms} ms")) && done.reason.contains(why),
            "{name}: {}",
            done.reason
        );
    }
    // A record whose TTL is never lowered (cutover TTL = TTL) drains after that TTL.
    let mut r = record(Phase::Draining, true);
    r.spec.drain_ms = None;
    r.spec.dns_ttl.low_ttl_secs = 300;
    let done = decide(&r, &Observations::default(), T0 + 360_000);
    assert_eq!(done.transition.map(|t| t.to), Some(Phase::Completed));
}

fn prometheus_source() -> SloSource {
    SloSource::Prometheus(PrometheusSlo {
        url: "http://127.0.0.1:9090".to_owned(),
        error_ratio_query: "sum(rate(umbra_front_request_errors_total{service=\"{service}\",region=\"{region}\"}[{window}]))".to_owned(),
        latency_p99_query: "histogram_quantile(0.99, sum by (le) (rate(umbra_front_request_duration_seconds_bucket{region=\"{region}\"}[{window}])))".to_owned(),
    })
}

/// The rules of a step judged by Prometheus: a breach rolls back; no data, NaN and an
/// unreachable server hold (never a pass, never a rollback) however long it lasts; a pass
/// needs an answer with data asked once the window elapsed since the share applied.
#[test]
fn prometheus_judgement_table() {
    let data = |error_ratio: f64, p99_ms: f64| SloAnswer::Data {
        error_ratio,
        p99_ms,
        source_p99_ms: None,
    };
    let applied = T0 + 1_000;
    let after_window = applied + 5_000;
    // (name, elapsed ms, share applied, answers (asked at, answer), expected next phase)
    type Case = (
        &'static str,
        u64,
        Option<u8>,
        Option<(u64, SloAnswer)>,
        Option<Phase>,
    );
    let next = Some(Phase::CuttingOver { step: 1 });
    let back = Some(Phase::RollingBack);
    let rows: Vec<Case> = vec![
        (
            "share not applied yet",
            60_000,
            Some(0),
            Some((after_window, data(0.0, 5.0))),
            None,
        ),
        ("no answer yet", 60_000, Some(10), None, None),
        (
            "healthy within the window",
            3_000,
            Some(10),
            Some((applied + 2_000, data(0.0, 5.0))),
            None,
        ),
        (
            "healthy but asked before the window elapsed",
            60_000,
            Some(10),
            Some((after_window - 1, data(0.0, 5.0))),
            None,
        ),
        (
            "healthy, asked after the window",
            60_000,
            Some(10),
            Some((after_window, data(0.0, 5.0))),
            next,
        ),
        (
            "no data holds, long past the window",
            600_000,
            Some(10),
            Some((T0 + 590_000, SloAnswer::NoData("empty vector".into()))),
            None,
        ),
        (
            "unreachable holds, long past the window",
            600_000,
            Some(10),
            Some((T0 + 590_000, SloAnswer::Error("connection refused".into()))),
            None,
        ),
        (
            "NaN holds",
            60_000,
            Some(10),
            Some((after_window, data(f64::NAN, 5.0))),
            None,
        ),
        (
            "error ratio breach rolls back at once",
            2_000,
            Some(10),
            Some((applied + 500, data(0.5, 5.0))),
            back,
        ),
        (
            "latency breach rolls back",
            60_000,
            Some(10),
            Some((after_window, data(0.0, 250.0))),
            back,
        ),
    ];
    for (name, elapsed_ms, share, newest, expected) in rows {
        let mut r = record(Phase::CuttingOver { step: 0 }, false);
        r.spec.slo.source = prometheus_source();
        let seen = Observations {
            shadow_serving: 3,
            shadow_warm: 3,
            replication: caught_up(false),
            share_applied: share,
            // The fronts' reading is ignored when Prometheus judges.
            slo: healthy(1_000),
            slo_queried: share.filter(|s| *s == 10).map(|_| QueriedSlo {
                share_applied_at_ms: applied,
                newest,
                target_p99_ms: Vec::new(),
                source_p99_ms: Vec::new(),
            }),
            ..Observations::default()
        };
        let decision = decide(&r, &seen, T0 + elapsed_ms);
        let to = decision.transition.as_ref().map(|t| t.to);
        assert_eq!(to, expected, "{name}: {decision:?}");
        if let Some(t) = &decision.transition {
            assert!(
                t.reason.contains("judged by Prometheus"),
                "{name}: {}",
                t.reason
            );
        }
    }
}

#[test]
fn prometheus_sources_are_validated_and_rendered() {
    let SloSource::Prometheus(good) = prometheus_source() else {
        unreachable!()
    };
    assert_eq!(good.validate(), Ok(()));
    let (errors, latency) = good.render("shop", "eu-west", 5_000);
    assert!(
        errors.contains("service=\"shop\",region=\"eu-west\"}[5s]"),
        "{errors}"
    );
    assert!(latency.contains("region=\"eu-west\"}[5s]"), "{latency}");
    assert_eq!(promql_duration(2_500), "2500ms");
    let rows: Vec<(PrometheusSlo, &str)> = vec![
        (
            PrometheusSlo {
                url: "ftp://x".into(),
                ..good.clone()
            },
            "must be the http:// URL",
        ),
        (
            PrometheusSlo {
                url: "not a url".into(),
                ..good.clone()
            },
            "must be the http:// URL",
        ),
        (
            PrometheusSlo {
                url: "https://prom:9090".into(),
                ..good.clone()
            },
            "https is not supported",
        ),
        (
            PrometheusSlo {
                error_ratio_query: " ".into(),
                ..good.clone()
            },
            "error_ratio_query is empty",
        ),
        (
            PrometheusSlo {
                latency_p99_query: "up{job=\"{job}\"}".into(),
                ..good.clone()
            },
            "placeholder {job}",
        ),
    ];
    for (bad, expected) in rows {
        let error = bad.validate().expect_err("refused").to_string();
        assert!(error.contains(expected), "{error}");
    }
}

/// The comparison judgement: the error ratio keeps its bound, the p99 is judged against the
/// source's samples over the step (not against `max_p99_ms`), and too few samples hold.
#[test]
fn comparison_judgement_table() {
    let applied = T0 + 1_000;
    let after_window = applied + 5_000;
    let pairs = |target: f64, source: f64| -> Vec<(f64, f64)> {
        (0..6)
            .map(|i| (target + f64::from(i), source + f64::from(i) * 0.5))
            .collect()
    };
    let interleaved: Vec<(f64, f64)> = (0..6)
        .map(|i| (20.0 + f64::from(i), 20.5 + f64::from(i)))
        .collect();
    // (name, error ratio, newest p99 ms, pairs, expected next phase, reason contains)
    type Case = (
        &'static str,
        f64,
        f64,
        Vec<(f64, f64)>,
        Option<Phase>,
        &'static str,
    );
    let rows: Vec<Case> = vec![
        (
            "alike: passes",
            0.0,
            21.0,
            interleaved.clone(),
            Some(Phase::CuttingOver { step: 1 }),
            "Mann-Whitney U",
        ),
        (
            "above max_p99_ms but alike: passes",
            0.0,
            500.0,
            pairs(500.0, 495.0)
                .into_iter()
                .map(|(t, _)| (t, t))
                .collect(),
            Some(Phase::CuttingOver { step: 1 }),
            "Mann-Whitney U",
        ),
        (
            "slower than the source: rolls back",
            0.0,
            90.0,
            pairs(90.0, 20.0),
            Some(Phase::RollingBack),
            "significantly slower",
        ),
        (
            "too few samples: holds",
            0.0,
            90.0,
            pairs(90.0, 20.0)[..4].to_vec(),
            None,
            "",
        ),
        (
            "errors still breach",
            0.5,
            21.0,
            interleaved.clone(),
            Some(Phase::RollingBack),
            "error ratio 50.00 %",
        ),
    ];
    for (name, error_ratio, p99_ms, samples, expected, says) in rows {
        let mut r = record(Phase::CuttingOver { step: 0 }, false);
        r.spec.slo.source = prometheus_source();
        r.spec.slo.judgement = SloJudgement::Compare;
        let seen = Observations {
            shadow_serving: 3,
            shadow_warm: 3,
            replication: caught_up(false),
            share_applied: Some(10),
            slo_queried: Some(QueriedSlo {
                share_applied_at_ms: applied,
                newest: Some((
                    after_window,
                    SloAnswer::Data {
                        error_ratio,
                        p99_ms,
                        source_p99_ms: Some(20.0),
                    },
                )),
                target_p99_ms: samples.iter().map(|(t, _)| *t).collect(),
                source_p99_ms: samples.iter().map(|(_, s)| *s).collect(),
            }),
            ..Observations::default()
        };
        let decision = decide(&r, &seen, T0 + 60_000);
        let transition = decision.transition.as_ref();
        assert_eq!(transition.map(|t| t.to), expected, "{name}: {decision:?}");
        if let Some(t) = transition {
            assert!(t.reason.contains(says), "{name}: {}", t.reason);
        }
    }
    // Compare needs samples of both regions: the fronts cannot give them.
    let mut slo = spec().slo;
    slo.judgement = SloJudgement::Compare;
    let error = slo.validate().expect_err("refused").to_string();
    assert!(error.contains("needs source = { prometheus"), "{error}");
}

/// The schedule is read off the wall clock, deadlines off the time in the phase: with the
/// two apart (a leader whose wall clock stepped), each decides what it owns.
#[test]
fn the_schedule_follows_the_wall_clock_and_deadlines_the_time_in_the_phase() {
    let seen = Observations::default();
    let spec = spec();
    let at = |wall_ms, in_phase_ms| DecisionTime {
        wall_ms,
        in_phase_ms,
    };
    // Planned: provisioning starts one lead time before the cutover, by the wall clock,
    // however long the migration has been planned.
    let planned = record(Phase::Planned, false);
    let lead_reached = spec.cutover_at_ms - spec.lead_time_ms;
    assert_eq!(
        decide_at(&planned, &seen, at(lead_reached - 1, 3_600_000)).transition,
        None
    );
    assert_eq!(
        decide_at(&planned, &seen, at(lead_reached, 0))
            .transition
            .map(|t| t.to),
        Some(Phase::Provisioning)
    );
    // Provisioning: the deadline counts the time in the phase, whatever the wall clock says.
    let provisioning = record(Phase::Provisioning, false);
    let deadline = spec.deadlines.provisioning_ms;
    assert_eq!(
        decide_at(&provisioning, &seen, at(T0 + 10 * deadline, deadline)).transition,
        None
    );
    assert_eq!(
        decide_at(&provisioning, &seen, at(T0 - 300_000, deadline + 1))
            .transition
            .map(|t| t.to),
        Some(Phase::RollingBack)
    );
}
