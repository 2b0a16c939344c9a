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
        rollback_ms: None,
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
        .map(|e| e.event.to_string())
        .collect();
    assert_eq!(
        audit,
        vec![
            "created: shop us-east → eu-west at 1970-01-01T00:01:40Z",
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

fn claim(start_ms: Option<u64>, end_ms: Option<u64>, instances: u32) -> Command {
    Command::ClaimCapacity {
        request: ClaimRequest {
            service: "shop".to_owned(),
            region: "us-east".to_owned(),
            instances,
            start_ms,
            end_ms,
        },
        at_ms: 1_000_000,
    }
}

#[test]
fn capacity_claims_are_checked_against_the_service_and_region_limits() {
    let mut state = planned();
    let mut plan = Plan::example();
    plan.regions[0].max_instances = Some(3);
    state
        .apply_command(2, &Command::ApplyPlan { plan, at_ms: 2 })
        .expect("a region limit applies");
    let max = state.overview().services["shop"].spec.max_instances;
    assert!(max >= 4, "the example's shop allows a few instances");
    let hour = 3_600_000;
    let start = Some(2_000_000);
    // (command, refusal kind or the claim's id, words the message must hold)
    let cases: Vec<(Command, Result<&str, RejectKind>, &str)> = vec![
        (claim(None, None, 2), Ok("cap-1"), ""),
        (claim(start, Some(2_000_000 + hour), 1), Ok("cap-2"), ""),
        // 2 + 1 overlap: the region's 3 are all claimed in that window.
        (
            claim(start, Some(2_000_000 + hour), 1),
            Err(RejectKind::Conflict),
            "region us-east holds at most 3",
        ),
        (
            claim(start, Some(2_000_000 + hour), max),
            Err(RejectKind::Conflict),
            "claim at most 1",
        ),
        // After the request's hour only the reservation holds.
        (
            claim(Some(1_000_000 + hour), Some(1_000_000 + 2 * hour), 2),
            Ok("cap-3"),
            "",
        ),
        (claim(None, None, 0), Err(RejectKind::Invalid), "instances"),
        (
            claim(None, None, max + 1),
            Err(RejectKind::Invalid),
            "max_instances",
        ),
        (
            claim(Some(1), Some(hour), 1),
            Err(RejectKind::Invalid),
            "starts in the past",
        ),
        (
            claim(start, None, 1),
            Err(RejectKind::Invalid),
            "needs an end",
        ),
        (
            claim(start, Some(1_500_000), 1),
            Err(RejectKind::Invalid),
            "ends before",
        ),
    ];
    for (i, (command, want, words)) in cases.into_iter().enumerate() {
        let before = state.clone();
        let got = state.apply_command(10 + i as u64, &command);
        match (got, want) {
            (Ok(Applied::Capacity { id }), Ok(want_id)) => assert_eq!(id, want_id, "case {i}"),
            (Err(e), Err(kind)) => {
                assert_eq!(e.kind, kind, "case {i}: {e}");
                assert!(e.message.contains(words), "case {i}: {e}");
                assert_eq!(state.overview().capacity, before.overview().capacity);
                assert_eq!(state.audit(), before.audit(), "a refusal changes nothing");
            }
            (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
        }
    }
    let claims = state.overview().capacity;
    assert_eq!(claims["cap-1"].kind, ClaimKind::Request);
    assert_eq!(claims["cap-1"].end_ms, 1_000_000 + hour);
    assert_eq!(claims["cap-2"].kind, ClaimKind::Reservation);
}

#[test]
fn a_claim_names_the_serving_region_and_can_be_released_once() {
    let mut state = planned();
    let mut elsewhere = claim(None, None, 1);
    if let Command::ClaimCapacity { request, .. } = &mut elsewhere {
        request.region = "eu-west".to_owned();
    }
    let err = state.apply_command(2, &elsewhere).expect_err("not serving");
    assert_eq!(err.kind, RejectKind::Conflict, "{err}");
    assert!(err.message.contains("served from us-east"), "{err}");
    state
        .apply_command(3, &claim(None, None, 1))
        .expect("claim");
    let release = Command::ReleaseCapacity {
        id: "cap-1".to_owned(),
        at_ms: 1_000_001,
    };
    state.apply_command(4, &release).expect("release");
    assert!(state.overview().capacity.is_empty());
    let err = state.apply_command(5, &release).expect_err("gone");
    assert_eq!(err.kind, RejectKind::NotFound, "{err}");
    // An ended claim leaves the state at the next claim command.
    state
        .apply_command(6, &claim(None, Some(1_000_010), 1))
        .expect("short claim");
    let mut later = claim(None, None, 1);
    if let Command::ClaimCapacity { at_ms, .. } = &mut later {
        *at_ms = 1_000_010;
    }
    state.apply_command(7, &later).expect("later claim");
    let ids: Vec<String> = state.overview().capacity.into_keys().collect();
    assert_eq!(ids, ["cap-3"]);
}

#[test]
fn a_lead_time_shorter_than_one_old_ttl_and_margin_is_refused_at_apply() {
    let mut state = planned();
    let before = state.clone();
    let mut plan = Plan::example();
    // 300 s TTL + 60 s margin: a 120 s lead would reach the first step with 300 s caches.
    plan.services[0].lead_time_secs = 120;
    let err = state
        .apply_command(2, &Command::ApplyPlan { plan, at_ms: 2 })
        .expect_err("lead time too short for the TTL");
    assert_eq!(err.kind, RejectKind::Invalid, "{err}");
    assert!(
        err.message.contains("lead_time_secs 120")
            && err.message.contains("at least 360")
            && err.message.contains("dns_ttl_secs"),
        "says what to set: {err}"
    );
    assert_eq!(state.overview().services, before.overview().services);
    // A record that is never lowered (the cutover TTL is the TTL) needs no lead for it.
    let mut plan = Plan::example();
    plan.services[0].lead_time_secs = 120;
    plan.services[0].cutover_ttl_secs = 300;
    assert!(
        state
            .apply_command(3, &Command::ApplyPlan { plan, at_ms: 3 })
            .is_ok()
    );
}

#[test]
fn a_migration_plans_its_ttl_lowering_and_records_when_it_was_published() {
    let mut state = planned();
    // Cutover at 1,000 s, created at 10 ms: lower at 1,000 − 300 − 60 = 640 s, in time.
    let request = MigrationRequest::new("shop", "eu-west", 1_000_000);
    state
        .apply_command(2, &Command::CreateMigration { request, at_ms: 10 })
        .unwrap();
    let record = &state.overview().migrations["shop-1"];
    assert_eq!(
        record.spec.dns_ttl,
        crate::migration::DnsTtlPlan {
            old_ttl_secs: 300,
            low_ttl_secs: 5,
            margin_secs: 60,
            lower_at_ms: 640_000,
        }
    );
    assert!(!record.spec.dns_ttl.late(None, record.spec.cutover_at_ms));
    let dns = |ttl_secs: u32, at_ms: u64| Command::SetDnsWeights {
        service: "shop".to_owned(),
        dns: DnsWeights {
            weights: BTreeMap::from([("us-east".to_owned(), 100)]),
            ttl_secs,
        },
        reason: "test".to_owned(),
        term: 1,
        at_ms,
    };
    // The normal TTL starts no clock; the first low-TTL record does, and only the first.
    state.apply_command(3, &dns(300, 600_000)).unwrap();
    assert_eq!(
        state.overview().migrations["shop-1"].ttl_lowered_at_ms,
        None
    );
    state.apply_command(4, &dns(5, 640_100)).unwrap();
    state.apply_command(5, &dns(5, 700_000)).unwrap();
    assert_eq!(
        state.overview().migrations["shop-1"].ttl_lowered_at_ms,
        Some(640_100)
    );
}

#[test]
fn a_migration_asked_for_too_soon_says_its_ttl_is_lowered_late() {
    let mut state = planned();
    // Cutover 100 s after creation: the 300 s answers outlive it.
    let request = MigrationRequest::new("shop", "eu-west", 100_000);
    state
        .apply_command(2, &Command::CreateMigration { request, at_ms: 0 })
        .unwrap();
    let record = &state.overview().migrations["shop-1"];
    assert_eq!(record.spec.dns_ttl.lower_at_ms, 0, "lowered at once");
    assert!(record.spec.dns_ttl.late(None, record.spec.cutover_at_ms));
    let created = state.audit().back().unwrap();
    assert!(
        created.reason.contains("lowered late") && created.reason.contains("1970-01-01T00:05:00"),
        "the audit says when the low TTL is everywhere: {}",
        created.reason
    );
}

#[test]
fn a_cutover_time_long_past_is_refused_and_changes_nothing() {
    let mut state = planned();
    let request = MigrationRequest::new("shop", "eu-west", 1_000_000);
    // A month after the cutover time that was asked for.
    let at_ms = 1_000_000 + 30 * 86_400_000;
    let err = state
        .apply_command(2, &Command::CreateMigration { request, at_ms })
        .expect_err("a month in the past");
    assert_eq!(err.kind, RejectKind::Invalid, "{err}");
    assert!(
        err.message.contains("1970-01-01T00:16:40Z")
            && err.message.contains("in the past")
            && err.message.contains("--at now"),
        "{err}"
    );
    assert!(state.overview().migrations.is_empty());
    // A few seconds back (the CLI's `now`, a skewed clock) is still accepted.
    let request = MigrationRequest::new("shop", "eu-west", at_ms - 5_000);
    assert!(
        state
            .apply_command(3, &Command::CreateMigration { request, at_ms })
            .is_ok()
    );
}

#[test]
fn a_warm_up_whose_gate_can_never_hold_is_refused_with_the_numbers() {
    let state = planned();
    let refused = |mutate: &dyn Fn(&mut Plan), wanted: &[&str]| {
        let mut after = state.clone();
        let mut plan = Plan::example();
        mutate(&mut plan);
        let err = after
            .apply_command(2, &Command::ApplyPlan { plan, at_ms: 2 })
            .expect_err("an infeasible warm-up");
        assert_eq!(err.kind, RejectKind::Invalid, "{err}");
        for w in wanted {
            assert!(err.message.contains(w), "{w:?} in {err}");
        }
        assert_eq!(after.overview().services, state.overview().services);
    };
    // 50 requests a second give 150 in the gate's 3 s, short of the 300 a p99 needs.
    refused(
        &|p| p.services[0].warmup.mix.rate_per_sec = 50.0,
        &["rate_per_sec 50", "150 requests", "at least 100"],
    );
    refused(
        &|p| p.services[0].warmup.mix.max_duration_ms = 2_000,
        &["max_duration_ms 2000", "at least 3000"],
    );
    refused(
        &|p| p.services[0].warmup.gate.min_requests = 10_000,
        &["sends 6000 requests", "min_requests 10000"],
    );
}

/// The Prometheus SLO source commented out in `examples/plan.toml` applies as written, reaches
/// the migrations it creates, and a bad one is refused at apply with what to change.
#[test]
fn a_prometheus_slo_source_applies_and_a_bad_one_is_refused() {
    use crate::migration::SloSource;
    use crate::state::plan::EXAMPLE_PLAN_TOML;
    let commented = EXAMPLE_PLAN_TOML
        .lines()
        .find(|l| l.starts_with("# slo = ") && l.contains("prometheus"))
        .expect("examples/plan.toml documents the Prometheus SLO source");
    let line = commented.trim_start_matches("# ");
    let original = EXAMPLE_PLAN_TOML
        .lines()
        .find(|l| l.starts_with("slo = "))
        .expect("the example's SLO");
    let text = EXAMPLE_PLAN_TOML.replace(original, line);
    let plan = Plan::from_toml(&text).expect("the documented source parses");
    let mut state = OrchestratorState::default();
    state
        .apply_command(1, &Command::ApplyPlan { plan, at_ms: 1 })
        .expect("the documented source applies");
    migrate(&mut state, 2, "eu-west").expect("a migration is created");
    let overview = state.overview();
    let migration = overview.migrations.values().next().expect("one migration");
    assert!(matches!(
        migration.spec.slo.source,
        SloSource::Prometheus(_)
    ));
    // The old form, without a source, is the fronts.
    assert_eq!(Plan::example().services[0].slo.source, SloSource::Fronts);

    let rows = [
        (
            "{region}\"}[{window}])) /",
            "{regoin}\"}[{window}])) /",
            "placeholder {regoin}",
        ),
        ("http://127.0.0.1:9090", "127.0.0.1:9090", "http:// URL"),
    ];
    for (from, to, expected) in rows {
        let bad = text.replacen(from, to, 1);
        let mut state = OrchestratorState::default();
        let error = match Plan::from_toml(&bad) {
            Ok(plan) => state
                .apply_command(1, &Command::ApplyPlan { plan, at_ms: 1 })
                .expect_err("refused")
                .to_string(),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(expected), "{error}");
    }
}

/// A migration of shop to `to`, created by schedule key `key` at `index`, then rolled back
/// by an operator and finished by the executor: a finished migration nothing depends on once
/// a newer one exists.
fn create_and_roll_back(state: &mut OrchestratorState, index: u64, to: &str, key: &str) -> String {
    let request = MigrationRequest {
        schedule_key: Some(key.to_owned()),
        ..MigrationRequest::new("shop", to, 100_000)
    };
    let Ok(Applied::Migration { id }) =
        state.apply_command(index, &Command::CreateMigration { request, at_ms: 10 })
    else {
        panic!("the migration is created");
    };
    let rollback = Command::RequestRollback {
        id: id.clone(),
        reason: "drill".to_owned(),
        at_ms: 11,
    };
    assert_eq!(state.apply_command(index + 1, &rollback), Ok(Applied::Done));
    let done = transition(&id, Phase::RollingBack, Phase::RolledBack, 1);
    assert_eq!(state.apply_command(index + 2, &done), Ok(Applied::Done));
    id
}

/// The index and the current/archive split kept along apply are what a restore derives.
fn assert_index_is_derived(state: &OrchestratorState) {
    let mut every = state.migrations.clone();
    every.extend(
        state
            .archive
            .iter()
            .map(|((_, id), record)| (id.clone(), record.clone())),
    );
    let (index, current, archive) = MigrationIndex::split(every, &state.fired);
    assert_eq!(
        (&state.index, &state.migrations, &state.archive),
        (&index, &current, &archive),
        "the incremental index or split drifted from what a restore derives"
    );
}

#[test]
fn finished_migrations_move_to_a_bounded_archive_with_their_schedule_keys() {
    let mut state = OrchestratorState::with_retention(Retention {
        audit_entries: 1_000,
        archived_migrations: 2,
    });
    state
        .apply_command(
            1,
            &Command::ApplyPlan {
                plan: Plan::example(),
                at_ms: 1,
            },
        )
        .unwrap();
    let ids: Vec<String> = (0..4)
        .map(|n| create_and_roll_back(&mut state, 10 + 3 * n, "eu-west", &format!("k/{n}")))
        .collect();
    assert_index_is_derived(&state);
    // shop-4 is the service's latest: current. shop-2 and shop-3 are archived; shop-1, the
    // oldest, left the archive at the cap, and its schedule key with it.
    let overview = state.overview();
    assert_eq!(
        overview.migrations.keys().collect::<Vec<_>>(),
        vec![&ids[3]]
    );
    assert!(state.migration(&ids[0]).is_none(), "dropped past the cap");
    assert!(!state.fired.contains_key("k/0"), "its key left with it");
    for id in &ids[1..3] {
        let (record, archived) = state.migration(id).expect("archived ones are found");
        assert!(archived && record.phase == Phase::RolledBack, "{id}");
    }
    assert_eq!(state.migration(&ids[3]).map(|(_, a)| a), Some(false));
    let newest_first: Vec<String> = state
        .archived(None, 10)
        .into_iter()
        .map(|r| r.spec.id)
        .collect();
    assert_eq!(newest_first, vec![ids[2].clone(), ids[1].clone()]);
    let before_3 = state.archived(Some(migration_number(&ids[2])), 10);
    assert_eq!(before_3.len(), 1, "paging by creation number");
    assert_eq!(before_3[0].spec.id, ids[1]);
    // Commands naming an archived migration are validated against it where it is: a
    // rollback or a transition is refused by its phase, and the writer flag a late
    // proposal sets (which apply has always taken) changes it in the archive.
    let archived = ids[1].clone();
    let rollback = Command::RequestRollback {
        id: archived.clone(),
        reason: "late".to_owned(),
        at_ms: 20,
    };
    let refused = state.apply_command(22, &rollback).expect_err("finished");
    assert!(
        refused.to_string().contains("nothing to roll back"),
        "{refused}"
    );
    let late = transition(&archived, Phase::RolledBack, Phase::Completed, 1);
    assert!(state.apply_command(23, &late).is_err());
    let promote = Command::SetPromoted {
        id: archived.clone(),
        promoted: true,
        fence_window_ms: None,
        term: 1,
        at_ms: 20,
    };
    assert_eq!(state.apply_command(24, &promote), Ok(Applied::Done));
    assert_eq!(
        state.migration(&archived).map(|(r, a)| (r.promoted, a)),
        Some((true, true))
    );
    assert_index_is_derived(&state);

    // A completed migration is the service's pool: it stays current while newer ones
    // come and go, and leaves for the archive only when a newer one completes.
    let completed = {
        let Ok(Applied::Migration { id }) = migrate(&mut state, 30, "eu-west") else {
            panic!("created");
        };
        for (i, pair) in happy_path(3).windows(2).enumerate() {
            let step = transition(&id, pair[0], pair[1], 1);
            assert_eq!(state.apply_command(31 + i as u64, &step), Ok(Applied::Done));
        }
        id
    };
    for n in 0..3 {
        create_and_roll_back(&mut state, 60 + 3 * n, "us-east", &format!("later/{n}"));
    }
    assert_eq!(state.migration(&completed).map(|(_, a)| a), Some(false));
    assert!(state.overview().migrations.contains_key(&completed));
    assert_eq!(state.archived(None, 10).len(), 2, "the cap holds");
    assert!(state.fired.len() <= 4, "keys: {:?}", state.fired);
    assert_index_is_derived(&state);

    let mut restored = OrchestratorState::with_retention(state.retention);
    restored.restore(&StateMachine::snapshot(&state)).unwrap();
    assert_eq!(restored, state, "a restore derives the same index");
}

#[test]
fn the_audit_log_is_a_ring_at_its_cap() {
    let mut state = OrchestratorState::with_retention(Retention {
        audit_entries: 3,
        archived_migrations: 10,
    });
    state
        .apply_command(
            1,
            &Command::ApplyPlan {
                plan: Plan::example(),
                at_ms: 1,
            },
        )
        .unwrap();
    create_and_roll_back(&mut state, 2, "eu-west", "k");
    migrate(&mut state, 5, "eu-west").unwrap();
    let kept: Vec<u64> = state.audit().iter().map(|e| e.index).collect();
    assert_eq!(kept, vec![3, 4, 5], "the newest three, oldest first");
    let answer = decode_answer(&state.query(&encode_query(&Query::Audit {
        after_index: 3,
        limit: 10,
    })))
    .unwrap();
    let QueryAnswer::Audit(after) = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(
        after.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![4, 5]
    );
}

/// A snapshot written under larger caps (an older build kept 100,000 audit entries and every
/// finished migration) restores to exactly what a replica that replayed the same log under
/// today's caps holds, so replicas never differ by how they caught up.
#[test]
fn a_snapshot_from_larger_caps_restores_to_what_a_replay_under_the_caps_holds() {
    let small = Retention {
        audit_entries: 4,
        archived_migrations: 1,
    };
    let mut large = OrchestratorState::with_retention(Retention {
        audit_entries: 1_000,
        archived_migrations: 100,
    });
    let mut replayed = OrchestratorState::with_retention(small);
    for state in [&mut large, &mut replayed] {
        let plan = Command::ApplyPlan {
            plan: Plan::example(),
            at_ms: 1,
        };
        state.apply_command(1, &plan).unwrap();
        for n in 0..4 {
            create_and_roll_back(state, 10 + 3 * n, "eu-west", &format!("k/{n}"));
        }
    }
    assert!(large.audit().len() > small.audit_entries);
    let mut restored = OrchestratorState::with_retention(small);
    restored.restore(&StateMachine::snapshot(&large)).unwrap();
    assert_eq!(restored, replayed);
    assert_index_is_derived(&restored);
}

/// A `tracing` writer into a shared buffer, to see what a call logs.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_rejected_command_leaves_the_state_byte_identical_and_a_dry_run_logs_nothing() {
    let mut state = planned();
    migrate(&mut state, 2, "eu-west").unwrap();
    // Claims that ended leave at the next claim command, so a refused one must not drop them.
    state.apply_command(3, &claim(None, None, 1)).unwrap();
    let late = 1_000_001 + claims::DEFAULT_REQUEST_HOLD_MS;
    let rejected = [
        transition("shop-1", Phase::Planned, Phase::Provisioning, 0),
        transition("shop-1", Phase::Ready, Phase::Draining, 5),
        Command::SetPromoted {
            id: "nope-1".to_owned(),
            promoted: true,
            fence_window_ms: None,
            term: 5,
            at_ms: 20,
        },
        Command::ApplyPlan {
            plan: Plan::example(),
            at_ms: 20,
        },
        Command::ClaimCapacity {
            request: ClaimRequest {
                instances: 0,
                ..match claim(None, None, 1) {
                    Command::ClaimCapacity { request, .. } => request,
                    _ => unreachable!(),
                }
            },
            at_ms: late,
        },
        Command::ReleaseCapacity {
            id: "cap-1".to_owned(),
            at_ms: late,
        },
        Command::CreateMigration {
            request: MigrationRequest::new("shop", "eu-west", 100_000),
            at_ms: 20,
        },
    ];
    // Term 1 applied first, so term 0 is stale.
    state
        .apply_command(
            4,
            &transition("shop-1", Phase::Planned, Phase::Provisioning, 1),
        )
        .unwrap();
    for (i, command) in rejected.iter().enumerate() {
        let index = 10 + i as u64;
        let mut expected = state.clone();
        expected.applied_index = index;
        let log = Captured::default();
        let subscriber = tracing_subscriber::fmt().with_writer({
            let log = log.clone();
            move || log.clone()
        });
        let outcome = tracing::subscriber::with_default(subscriber.finish(), || {
            assert!(state.check(command).is_err(), "{command:?}");
            state.apply_command(index, command)
        });
        assert!(outcome.is_err(), "{command:?} is refused");
        assert_eq!(state, expected, "{command:?} changed something");
        assert_eq!(
            StateMachine::snapshot(&state),
            StateMachine::snapshot(&expected)
        );
        assert!(log.0.lock().unwrap().is_empty(), "{command:?} logged");
    }

    let command = transition("shop-1", Phase::Provisioning, Phase::Warming, 1);
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt().with_writer({
        let log = log.clone();
        move || log.clone()
    });
    tracing::subscriber::with_default(subscriber.finish(), || {
        assert_eq!(state.check(&command), Ok(()));
        assert!(log.0.lock().unwrap().is_empty(), "a dry run logs nothing");
        state.apply_command(20, &command).unwrap();
    });
    let logged = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("provisioning → warming"), "{logged}");
}

#[test]
fn a_drill_is_recorded_numbered_and_capped_and_a_bad_one_changes_nothing() {
    let mut state = planned();
    let record = |state: &mut OrchestratorState, index: u64, drill: drills::DrillReport| {
        state.apply_command(
            index,
            &Command::RecordDrill {
                drill,
                at_ms: 50_000,
            },
        )
    };
    let applied = record(&mut state, 2, drills::passed()).expect("a sound report");
    assert_eq!(
        applied,
        Applied::Drill {
            id: "drill-1".to_owned()
        }
    );
    let recorded = state.drills(10);
    assert_eq!(recorded.len(), 1);
    assert_eq!((recorded[0].index, recorded[0].recorded_ms), (2, 50_000));
    assert_eq!(recorded[0].report, drills::passed());

    let before = state.clone();
    let mut mars = drills::passed();
    mars.region = "mars-1".to_owned();
    let err = record(&mut state, 3, mars).expect_err("an undeclared region");
    assert_eq!(err.kind, RejectKind::Invalid);
    assert!(err.message.contains("\"mars-1\""), "{err}");
    let mut nonsense = drills::passed();
    nonsense.failed_requests = nonsense.requests + 1;
    let err = record(&mut state, 4, nonsense).expect_err("more failed than sent");
    assert_eq!(err.kind, RejectKind::Invalid);
    assert_eq!(state.drills(10), before.drills(10), "nothing changed");

    for index in 5..(5 + MAX_DRILLS as u64) {
        record(&mut state, index, drills::passed()).expect("a sound report");
    }
    let kept = state.drills(usize::MAX);
    assert_eq!(kept.len(), MAX_DRILLS, "the oldest leave past the cap");
    assert_eq!(
        kept[0].id,
        format!("drill-{}", MAX_DRILLS + 1),
        "newest first"
    );
    assert_eq!(kept[MAX_DRILLS - 1].id, "drill-2");

    // A snapshot holds them and the numbering goes on from it.
    let mut restored = OrchestratorState::default();
    restored
        .restore(&StateMachine::snapshot(&state))
        .expect("restores");
    assert_eq!(restored, state);
    let applied = record(&mut restored, 500, drills::passed()).expect("a sound report");
    assert_eq!(
        applied,
        Applied::Drill {
            id: format!("drill-{}", MAX_DRILLS + 2)
        }
    );
}
