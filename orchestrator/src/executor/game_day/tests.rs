//! A game day run against the real state machine: each step the decision asks for is applied
//! as the leader would propose it, and the migrations move along their phases by hand.

use super::*;
use crate::migration::happy_path;
use crate::state::{Applied, Command, GameDaySpec, OrchestratorState, Plan, RejectKind};

const AT: u64 = 1_000_000_000;

/// The example plan with a second service, `cart`, and a game day evacuating us-east at `AT`.
fn plan() -> Plan {
    let mut plan = Plan::example();
    plan.schedules.clear();
    let mut cart = plan.services[0].clone();
    cart.name = "cart".to_owned();
    cart.hostname = "cart.umbra.test.".to_owned();
    plan.services.push(cart);
    plan.game_days.push(GameDaySpec {
        name: "q1".to_owned(),
        drill: "evacuate".to_owned(),
        region: "us-east".to_owned(),
        to: None,
        at_ms: AT,
    });
    plan
}

struct Day {
    state: OrchestratorState,
    index: u64,
}

impl Day {
    fn new() -> Self {
        let mut state = OrchestratorState::default();
        state
            .apply_command(
                1,
                &Command::ApplyPlan {
                    plan: plan(),
                    at_ms: AT - 60_000,
                },
            )
            .expect("the plan applies");
        Day { state, index: 1 }
    }

    fn apply(&mut self, command: Command) -> Applied {
        self.index += 1;
        self.state
            .apply_command(self.index, &command)
            .unwrap_or_else(|e| panic!("{command:?} is refused: {e}"))
    }

    fn next(&self, now_ms: u64, traffic: &Traffic) -> Next {
        let overview = self.state.overview();
        next(&overview.game_days["q1"], &overview, traffic, now_ms)
    }

    /// Asks for the next step at `now_ms`, which must be a migration, and creates it.
    fn migrate(&mut self, now_ms: u64) -> (String, MigrationRequest) {
        let Next::Migrate(request) = self.next(now_ms, &Traffic::default()) else {
            panic!(
                "expected a migration, got {:?}",
                self.next(now_ms, &Traffic::default())
            );
        };
        let Applied::Migration { id } = self.apply(Command::CreateMigration {
            request: request.clone(),
            at_ms: now_ms,
        }) else {
            panic!("a migration");
        };
        (id, request)
    }

    /// Moves migration `id` along `phases` (the first is where it is).
    fn walk(&mut self, id: &str, phases: &[Phase], at_ms: u64) {
        for pair in phases.windows(2) {
            self.apply(Command::Transition {
                id: id.to_owned(),
                from: pair[0],
                to: pair[1],
                reason: "test".to_owned(),
                shadow_instances: None,
                rollback_ms: None,
                term: 1,
                at_ms,
            });
        }
    }
}

#[test]
fn an_evacuation_moves_each_service_out_in_turn_then_records_a_pass_once() {
    let mut day = Day::new();
    let quiet = Traffic::default();
    assert_eq!(day.next(AT - 1, &quiet), Next::Wait, "not due yet");
    let (first, request) = day.migrate(AT);
    let lead_ms = plan().services[0].lead_time_secs * 1_000;
    assert_eq!(
        (
            request.service.as_str(),
            request.to.as_str(),
            request.cutover_at_ms
        ),
        ("cart", "eu-west", AT + lead_ms),
        "in name order, to the only other region, a lead time ahead"
    );
    assert_eq!(request.schedule_key.as_deref(), Some("game-day:q1:cart"));
    assert_eq!(
        day.next(AT + 10, &quiet),
        Next::Wait,
        "its migration is live"
    );
    // Asked again (a new leader, or a proposal whose answer was lost): the same migration.
    assert_eq!(
        day.apply(Command::CreateMigration {
            request,
            at_ms: AT + 20
        }),
        Applied::Migration { id: first.clone() }
    );
    day.walk(&first, &happy_path(3), AT + 30_000);
    let (second, request) = day.migrate(AT + 40_000);
    assert_eq!(request.service, "shop");
    day.walk(&second, &happy_path(3), AT + 90_000);

    let mut traffic = Traffic::default();
    traffic.add(5_000, 2, Some(12.0));
    traffic.add(4_000, 0, Some(f64::NAN));
    let Next::Record(report) = day.next(AT + 95_000, &traffic) else {
        panic!("a verdict");
    };
    assert!(report.passed, "{:?}", report.reasons);
    assert_eq!(report.game_day.as_deref(), Some("q1"));
    assert_eq!((report.requests, report.failed_requests), (9_000, 2));
    assert_eq!(report.p99_ms_max, Some(12.0));
    assert_eq!(report.evacuate_ms, Some(90_000));
    assert_eq!((report.started_ms, report.ended_ms), (AT, AT + 95_000));
    let outcomes: Vec<(&str, &str)> = report
        .services
        .iter()
        .map(|s| (s.service.as_str(), s.outcome.as_str()))
        .collect();
    assert_eq!(outcomes, [("cart", "completed"), ("shop", "completed")]);
    let recorded = day.apply(Command::RecordDrill {
        drill: (*report).clone(),
        at_ms: AT + 95_000,
    });
    assert_eq!(
        recorded,
        Applied::Drill {
            id: "drill-1".to_owned()
        }
    );
    assert_eq!(day.next(AT + 96_000, &quiet), Next::Wait, "done");
    let again = day.state.apply_command(
        99,
        &Command::RecordDrill {
            drill: *report,
            at_ms: AT + 97_000,
        },
    );
    assert_eq!(
        again.map_err(|e| e.kind),
        Err(RejectKind::Conflict),
        "recorded once"
    );
}

#[test]
fn a_migration_that_does_not_complete_fails_the_day_and_what_moved_moves_back() {
    let mut day = Day::new();
    let (cart, _) = day.migrate(AT);
    day.walk(&cart, &happy_path(3), AT + 30_000);
    let (shop, _) = day.migrate(AT + 40_000);
    let mut path = happy_path(3)[..6].to_vec();
    path.extend([Phase::RollingBack, Phase::RolledBack]);
    day.walk(&shop, &path, AT + 50_000);

    let (back, request) = day.migrate(AT + 60_000);
    assert_eq!(
        (request.service.as_str(), request.to.as_str()),
        ("cart", "us-east")
    );
    assert_eq!(
        request.schedule_key.as_deref(),
        Some("game-day:q1:cart:back")
    );
    assert_eq!(day.next(AT + 61_000, &Traffic::default()), Next::Wait);
    day.walk(&back, &happy_path(3), AT + 90_000);

    let Next::Record(report) = day.next(AT + 95_000, &Traffic::default()) else {
        panic!("a verdict");
    };
    assert!(!report.passed);
    let outcomes: Vec<(&str, &str)> = report
        .services
        .iter()
        .map(|s| (s.service.as_str(), s.outcome.as_str()))
        .collect();
    assert_eq!(outcomes, [("cart", "moved_back"), ("shop", "rolled_back")]);
    assert_eq!(report.rollbacks, 1);
    assert_eq!(report.evacuate_ms, None);
    assert!(
        report
            .stopped
            .as_deref()
            .is_some_and(|s| s.contains(&shop) && s.contains("rolled_back")),
        "{report:?}"
    );
    assert_eq!(report.reasons.len(), 2, "{:?}", report.reasons);
    day.apply(Command::RecordDrill {
        drill: *report,
        at_ms: AT + 95_000,
    });
    let overview = day.state.overview();
    assert_eq!(overview.services["cart"].primary_region, "us-east");
    assert_eq!(overview.services["shop"].primary_region, "us-east");
}

#[test]
fn a_move_back_that_does_not_complete_is_named_and_the_service_counts_as_still_out() {
    let mut day = Day::new();
    let (cart, _) = day.migrate(AT);
    day.walk(&cart, &happy_path(3), AT + 30_000);
    let (shop, _) = day.migrate(AT + 40_000);
    let mut failed = happy_path(3)[..6].to_vec();
    failed.extend([Phase::RollingBack, Phase::Failed]);
    day.walk(&shop, &failed, AT + 50_000);
    let (back, _) = day.migrate(AT + 60_000);
    let mut path = happy_path(3)[..6].to_vec();
    path.extend([Phase::RollingBack, Phase::RolledBack]);
    day.walk(&back, &path, AT + 70_000);
    let Next::Record(report) = day.next(AT + 75_000, &Traffic::default()) else {
        panic!("a verdict: the move back ended, and is not asked for again");
    };
    let outcomes: Vec<(&str, &str)> = report
        .services
        .iter()
        .map(|s| (s.service.as_str(), s.outcome.as_str()))
        .collect();
    assert_eq!(outcomes, [("cart", "completed"), ("shop", "failed")]);
    assert!(!report.passed);
    assert!(
        report
            .reasons
            .iter()
            .any(|r| r == &format!("cart could not be moved back: {back} ended rolled_back")),
        "{:?}",
        report.reasons
    );
    assert_eq!(report.rollbacks, 1);
    day.apply(Command::RecordDrill {
        drill: *report,
        at_ms: AT + 75_000,
    });
}

#[test]
fn failed_requests_over_the_budget_fail_a_day_whose_moves_all_completed() {
    let mut day = Day::new();
    let (cart, _) = day.migrate(AT);
    day.walk(&cart, &happy_path(3), AT + 30_000);
    let (shop, _) = day.migrate(AT + 40_000);
    day.walk(&shop, &happy_path(3), AT + 90_000);
    let mut traffic = Traffic::default();
    traffic.add(1_000, 500, None);
    let Next::Record(report) = day.next(AT + 95_000, &traffic) else {
        panic!("a verdict");
    };
    assert!(!report.passed);
    assert!(
        report.reasons[0].contains("500 of 1000 requests failed"),
        "{:?}",
        report.reasons
    );
}

#[test]
fn a_plan_may_not_change_a_game_day_that_ran_nor_set_one_in_the_past() {
    let mut day = Day::new();
    let (cart, _) = day.migrate(AT);
    day.walk(&cart, &happy_path(3), AT + 30_000);
    let (shop, _) = day.migrate(AT + 40_000);
    day.walk(&shop, &happy_path(3), AT + 90_000);
    let Next::Record(report) = day.next(AT + 95_000, &Traffic::default()) else {
        panic!("a verdict");
    };
    day.apply(Command::RecordDrill {
        drill: *report,
        at_ms: AT + 95_000,
    });
    let apply = |day: &mut Day, plan: Plan| {
        day.state.apply_command(
            200,
            &Command::ApplyPlan {
                plan,
                at_ms: AT + 100_000,
            },
        )
    };
    // The plan moved both services: re-applied as it was, with their new regions.
    let mut same = plan();
    for service in &mut same.services {
        service.primary_region = "eu-west".to_owned();
    }
    assert!(apply(&mut day, same.clone()).is_ok(), "unchanged: applies");
    let mut changed = same.clone();
    changed.game_days[0].at_ms = AT + 3_600_000;
    let err = apply(&mut day, changed).expect_err("it ran already");
    assert_eq!(err.kind, RejectKind::Conflict);
    assert!(err.message.contains("new name"), "{err}");
    let mut past = same.clone();
    past.game_days[0].name = "q2".to_owned();
    past.game_days[0].at_ms = AT - 1_000_000;
    let err = apply(&mut day, past).expect_err("in the past");
    assert_eq!(err.kind, RejectKind::Invalid);
    assert!(err.message.contains("in the past"), "{err}");
    // The state holds a bounded number of them: q1 and 100 more are one too many.
    let mut many = same;
    let q1 = many.game_days[0].clone();
    many.game_days = (0..crate::state::game_days::MAX_GAME_DAYS)
        .map(|i| GameDaySpec {
            name: format!("d{i}"),
            at_ms: AT + 3_600_000,
            ..q1.clone()
        })
        .collect();
    let err = apply(&mut day, many.clone()).expect_err("too many");
    assert!(err.message.contains("at most 100"), "{err}");
    many.game_days.pop();
    assert!(apply(&mut day, many).is_ok(), "100 in all fit");
}
