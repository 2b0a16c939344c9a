//! The replicated state's rules, checked through its public commands: bad input is refused
//! with a clear message and the right kind (invalid, not found, conflict, stale) and changes
//! nothing; transitions are fenced by phase and term;
//! schedules fire once per slice; a snapshot restores the same state.

use super::*;
use crate::migration::happy_path;

fn planned() -> OrchestratorState {
    let mut state = OrchestratorState::default();
    let plan = Plan::example();
    state
        .apply_command(1, &Command::ApplyPlan { plan, at_ms: 1 })
        .expect("the example plan applies");
    state
}

fn migrate(state: &mut OrchestratorState, index: u64, to: &str) -> Outcome {
    state.apply_command(
        index,
        &Command::CreateMigration {
            request: MigrationRequest::new("shop", to, 100_000),
            at_ms: 10,
        },
    )
}

fn transition(id: &str, from: Phase, to: Phase, term: u64) -> Command {
    Command::Transition {
        id: id.to_owned(),
        from,
        to,
        reason: "test".to_owned(),
        shadow_instances: None,
        term,
        at_ms: 20,
    }
}

#[test]
fn a_plan_naming_an_unknown_region_is_refused_and_changes_nothing() {
    let mut state = planned();
    let before = state.clone();
    let mut plan = Plan::example();
    plan.services[0].primary_region = "mars-1".to_owned();
    let err = state
        .apply_command(2, &Command::ApplyPlan { plan, at_ms: 2 })
        .expect_err("unknown region");
    assert_eq!(err.kind, RejectKind::Invalid, "{err}");
    assert!(err.message.contains("\"mars-1\""), "{err}");
    assert!(
        err.to_string().contains("us-east"),
        "the message lists the known regions: {err}"
    );
    assert_eq!(state.overview().regions, before.overview().regions);
    assert_eq!(state.overview().services, before.overview().services);
    assert_eq!(state.audit(), before.audit());
}

#[test]
fn malformed_plans_say_where() {
    // The example plan with an operator's slips in it: a number for a front, a typo in a key.
    let front = format!("front = {:?}", Plan::example().regions[0].front);
    let text = plan::EXAMPLE_PLAN_TOML.replacen(&front, "front = 5", 1);
    let line = 1 + text
        .lines()
        .position(|l| l == "front = 5")
        .expect("a front");
    let err = Plan::from_toml(&text).expect_err("bad type");
    assert!(err.to_string().contains(&format!("line {line}")), "{err}");
    let text = plan::EXAMPLE_PLAN_TOML.replacen(&front, "frnt = \"a\"", 1);
    let err = Plan::from_toml(&text).expect_err("typo");
    assert!(err.to_string().contains("frnt"), "{err}");
}

#[test]
fn migrations_to_unknown_regions_or_busy_services_are_refused() {
    let mut state = planned();
    let err = migrate(&mut state, 2, "ap-south").expect_err("unknown region");
    assert_eq!(err.kind, RejectKind::Invalid, "{err}");
    assert!(err.message.contains("\"ap-south\""), "{err}");
    assert!(state.overview().migrations.is_empty());

    assert_eq!(
        migrate(&mut state, 3, "eu-west"),
        Ok(Applied::Migration {
            id: "shop-1".to_owned()
        })
    );
    let err = migrate(&mut state, 4, "eu-west").expect_err("busy");
    assert_eq!(err.kind, RejectKind::Conflict, "{err}");
    assert!(err.message.contains("shop-1"), "{err}");
    let err = migrate(&mut state, 5, "us-east").expect_err("same region");
    assert!(
        err.message.contains("two regions") || err.message.contains("shop-1"),
        "{err}"
    );
}

#[test]
fn a_migration_of_an_unknown_service_is_not_found_and_from_the_wrong_region_conflicts() {
    let mut state = planned();
    let request = |service: &str, from: &str| Command::CreateMigration {
        request: MigrationRequest {
            from: Some(from.to_owned()),
            ..MigrationRequest::new(service, "eu-west", 100_000)
        },
        at_ms: 10,
    };
    let err = state
        .apply_command(2, &request("cart", "us-east"))
        .expect_err("no such service");
    assert_eq!(err.kind, RejectKind::NotFound, "{err}");
    assert!(err.message.contains("shop"), "lists the services: {err}");
    // eu-west is declared but shop is not served from there: valid input, wrong state.
    let err = state
        .apply_command(3, &request("shop", "eu-west"))
        .expect_err("wrong source");
    assert_eq!(err.kind, RejectKind::Conflict, "{err}");
    let err = state
        .apply_command(4, &request("shop", "mars-1"))
        .expect_err("undeclared source");
    assert_eq!(err.kind, RejectKind::Invalid, "{err}");
    assert!(state.overview().migrations.is_empty());
}

#[test]
fn transitions_are_fenced_by_phase_and_term() {
    let mut state = planned();
    migrate(&mut state, 2, "eu-west").unwrap();
    let first = transition("shop-1", Phase::Planned, Phase::Provisioning, 3);
    assert_eq!(state.apply_command(3, &first), Ok(Applied::Done));
    // The same transition again (a new leader repeating it) is refused, not applied twice.
    let again = state.apply_command(4, &first).expect_err("repeated");
    assert_eq!(again.kind, RejectKind::Conflict, "{again}");
    assert!(again.message.contains("already made"), "{again}");
    // A deposed leader's command from an older term is refused.
    let stale = transition("shop-1", Phase::Provisioning, Phase::Warming, 2);
    let err = state.apply_command(5, &stale).expect_err("stale term");
    assert_eq!(err.kind, RejectKind::Stale, "{err}");
    assert!(err.message.contains("deposed"), "{err}");
    // Not an edge of the state machine.
    let jump = transition("shop-1", Phase::Provisioning, Phase::Completed, 3);
    let err = state.apply_command(6, &jump).expect_err("not an edge");
    assert_eq!(err.kind, RejectKind::Invalid, "{err}");
    let unknown = transition("shop-9", Phase::Provisioning, Phase::Warming, 3);
    let err = state
        .apply_command(7, &unknown)
        .expect_err("no such migration");
    assert_eq!(err.kind, RejectKind::NotFound, "{err}");
    let audit: Vec<_> = state
        .audit()
        .iter()
        .filter(|e| e.subject == "shop-1")
        .map(|e| e.event.as_str())
        .collect();
    assert_eq!(
        audit,
        vec![
            "created: shop us-east → eu-west at 100000",
            "planned → provisioning"
        ]
    );
}

#[test]
fn a_completed_migration_moves_the_primary_region_and_frees_the_service() {
    let mut state = planned();
    migrate(&mut state, 2, "eu-west").unwrap();
    let path = happy_path(3);
    for (i, pair) in path.windows(2).enumerate() {
        let outcome = state.apply_command(3 + i as u64, &transition("shop-1", pair[0], pair[1], 1));
        assert_eq!(outcome, Ok(Applied::Done), "{} → {}", pair[0], pair[1]);
    }
    let overview = state.overview();
    assert_eq!(overview.services["shop"].primary_region, "eu-west");
    assert_eq!(overview.services["shop"].active_migration, None);
    // Re-applying the original plan must not silently move the service back.
    let plan = Plan::example();
    let err = state
        .apply_command(20, &Command::ApplyPlan { plan, at_ms: 30 })
        .expect_err("plan would move the service");
    assert_eq!(err.kind, RejectKind::Conflict, "{err}");
    assert!(err.message.contains("umbra migrate"), "{err}");
}

#[test]
fn an_operator_rollback_is_recorded_and_only_for_live_migrations() {
    let mut state = planned();
    migrate(&mut state, 2, "eu-west").unwrap();
    let rollback = Command::RequestRollback {
        id: "shop-1".to_owned(),
        reason: "drill".to_owned(),
        at_ms: 40,
    };
    assert_eq!(state.apply_command(3, &rollback), Ok(Applied::Done));
    assert_eq!(
        state.overview().migrations["shop-1"].phase,
        Phase::RollingBack
    );
    let err = state
        .apply_command(4, &rollback)
        .expect_err("already rolling back");
    assert_eq!(err.kind, RejectKind::Conflict, "{err}");
    let unknown = Command::RequestRollback {
        id: "nope-9".to_owned(),
        reason: "x".to_owned(),
        at_ms: 41,
    };
    let err = state.apply_command(5, &unknown).expect_err("unknown id");
    assert_eq!(err.kind, RejectKind::NotFound, "{err}");
    assert!(err.message.contains("umbra status"), "{err}");
}

#[test]
fn a_schedule_fires_once_per_slice() {
    let mut state = planned();
    let request = MigrationRequest {
        schedule_key: Some("sun/86400000".to_owned()),
        ..MigrationRequest::new("shop", "eu-west", 86_400_000)
    };
    let create = Command::CreateMigration { request, at_ms: 1 };
    let first = state.apply_command(2, &create).unwrap();
    let second = state.apply_command(3, &create).unwrap();
    assert_eq!(
        first, second,
        "the second leader gets the same migration back"
    );
    assert_eq!(state.overview().migrations.len(), 1);
}

#[test]
fn dns_weights_name_known_regions_only() {
    let mut state = planned();
    assert_eq!(
        state.overview().dns["shop"].weights,
        BTreeMap::from([("us-east".to_owned(), 1)])
    );
    let set = |weights: &[(&str, u32)], term| Command::SetDnsWeights {
        service: "shop".to_owned(),
        dns: DnsWeights {
            weights: weights.iter().map(|(r, w)| (r.to_string(), *w)).collect(),
            ttl_secs: 5,
        },
        reason: "step".to_owned(),
        term,
        at_ms: 50,
    };
    assert_eq!(
        state.apply_command(2, &set(&[("us-east", 90), ("eu-west", 10)], 1)),
        Ok(Applied::Done)
    );
    for (index, weights) in [(3, &[("mars-1", 1)]), (4, &[("us-east", 0)])] {
        let err = state
            .apply_command(index, &set(weights, 1))
            .expect_err("unknown region or no weight");
        assert_eq!(err.kind, RejectKind::Invalid, "{err}");
    }
    let mut other = set(&[("us-east", 1)], 1);
    if let Command::SetDnsWeights { service, .. } = &mut other {
        *service = "cart".to_owned();
    }
    let err = state.apply_command(5, &other).expect_err("no such service");
    assert_eq!(err.kind, RejectKind::NotFound, "{err}");
    assert_eq!(state.overview().dns["shop"].weights["eu-west"], 10);
}

#[test]
fn the_state_machine_round_trips_snapshots_and_refuses_garbage() {
    let mut state = planned();
    migrate(&mut state, 2, "eu-west").unwrap();
    let snapshot = StateMachine::snapshot(&state);
    let mut restored = OrchestratorState::default();
    restored.restore(&snapshot).unwrap();
    assert_eq!(restored, state);
    assert!(restored.restore(b"garbage").is_err());

    let answer = StateMachine::apply(&mut restored, 3, b"\x01garbage");
    let outcome = decode_outcome(&answer).unwrap();
    assert!(
        matches!(&outcome, Err(r) if r.kind == RejectKind::Invalid),
        "{outcome:?}"
    );
    assert_eq!(
        restored.overview().migrations.len(),
        1,
        "garbage changed nothing"
    );

    let check = Query::Check(Box::new(Command::CreateMigration {
        request: MigrationRequest::new("shop", "eu-west", 0),
        at_ms: 0,
    }));
    let answer = decode_answer(&restored.query(&encode_query(&check))).unwrap();
    assert!(
        matches!(&answer, QueryAnswer::Check(Err(r)) if r.kind == RejectKind::Conflict),
        "shop already has a migration in flight: {answer:?}"
    );
}
