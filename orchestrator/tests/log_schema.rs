//! The Raft log and snapshot encoding across Umbra versions. `fixtures/log-v1/` holds real
//! bytes: every command of one scenario (each command variant at least once) as a proposal
//! encodes it, and the snapshot of the state the scenario leaves (regions, services,
//! schedules, migrations in several phases, DNS weights, capacity claims, the audit log).
//! The committed bytes are compared with what this build encodes, so an edit of the log
//! schema in place fails here; the fixtures README says which commit wrote them and how.
//!
//! `UMBRA_WRITE_LOG_FIXTURES=DIR` writes the scenario's bytes into DIR instead of comparing.

use std::path::{Path, PathBuf};

use umbra_consensus::StateMachine;
use umbra_forecast::sizing::Tier;
use umbra_orchestrator::migration::{Phase, PrometheusSlo, SloJudgement, SloSource};
use umbra_orchestrator::state::{
    ClaimRequest, Command, DnsWeights, MigrationRequest, OrchestratorState, Plan, PoolMode,
    RegionSpec, ReplicationKind, ServiceSpec, encode_command,
};

/// 2027-01-01T00:00:00Z, Unix ms: the scenario's clock starts here.
const T0: u64 = 1_798_761_600_000;

/// The plan: the example's regions, service and schedule, plus a third region and two more
/// services that use the other variants of every plan enum.
fn plan() -> Plan {
    let mut plan = Plan::example();
    plan.regions.push(RegionSpec {
        name: "ap-south".to_owned(),
        front: "127.0.0.13:8080".to_owned(),
        warm_instance_hour: 1.75,
        dormant_instance_hour: 0.2,
        max_instances: None,
    });
    let shop = plan.services[0].clone();
    let mut cart = ServiceSpec {
        name: "cart".to_owned(),
        hostname: "cart.umbra.test.".to_owned(),
        primary_region: "eu-west".to_owned(),
        min_instances: 2,
        max_instances: 6,
        tier: Tier::Guaranteed { quantile: 0.95 },
        steps_percent: vec![25, 100],
        replication: ReplicationKind::None,
        max_replication_lag: 7,
        pools: PoolMode::Reactive,
        instance_limits: None,
        ..shop.clone()
    };
    cart.slo.source = SloSource::Prometheus(PrometheusSlo {
        url: "http://127.0.0.1:9090".to_owned(),
        error_ratio_query: "sum(rate(errors{service=\"{service}\",region=\"{region}\"}[{window}]))"
            .to_owned(),
        latency_p99_query: "histogram_quantile(0.99, rate(d{region=\"{region}\"}[{window}]))"
            .to_owned(),
    });
    cart.slo.judgement = SloJudgement::Compare;
    cart.warmup.allow_writes = true;
    let search = ServiceSpec {
        name: "search".to_owned(),
        hostname: "search.umbra.test.".to_owned(),
        tier: Tier::OnDemand,
        analysis_window_secs: 45,
        ..shop
    };
    plan.services.push(cart);
    plan.services.push(search);
    plan
}

fn transition(id: &str, from: Phase, to: Phase, term: u64, at_ms: u64) -> Command {
    Command::Transition {
        id: id.to_owned(),
        from,
        to,
        reason: format!("{id}: {from} done"),
        shadow_instances: None,
        rollback_ms: None,
        term,
        at_ms,
    }
}

/// The scenario, as (fixture name, command); command `i` (from 0) is log index `i + 1`.
/// Every command applies.
fn scenario() -> Vec<(String, Command)> {
    use Phase::*;
    let mut commands: Vec<(&str, Command)> = vec![(
        "apply-plan",
        Command::ApplyPlan {
            plan: plan(),
            at_ms: T0,
        },
    )];
    // shop-1: every override, cut over to its second step, writer moved.
    commands.push((
        "create-migration",
        Command::CreateMigration {
            request: MigrationRequest {
                service: "shop".to_owned(),
                from: Some("us-east".to_owned()),
                to: "eu-west".to_owned(),
                cutover_at_ms: T0 + 3_600_000,
                warm_up: true,
                lead_time_ms: Some(1_200_000),
                analysis_window_ms: Some(30_000),
                drain_ms: Some(90_000),
                schedule_key: None,
            },
            at_ms: T0 + 1_000,
        },
    ));
    // cart-2: fired by a schedule, cold, rolled back by an operator.
    commands.push((
        "create-migration",
        Command::CreateMigration {
            request: MigrationRequest {
                warm_up: false,
                schedule_key: Some("sun/2027-01-01T02:00:00Z".to_owned()),
                ..MigrationRequest::new("cart", "ap-south", T0 + 7_200_000)
            },
            at_ms: T0 + 2_000,
        },
    ));
    // search-3: asked for now (its TTL is lowered late), completed.
    commands.push((
        "create-migration",
        Command::CreateMigration {
            request: MigrationRequest::new("search", "eu-west", T0 + 3_000),
            at_ms: T0 + 3_000,
        },
    ));
    let at = |n: u64| T0 + 10_000 + n * 1_000;
    commands.push((
        "transition",
        Command::Transition {
            id: "shop-1".to_owned(),
            from: Planned,
            to: Provisioning,
            reason: "lead time reached".to_owned(),
            shadow_instances: Some(3),
            rollback_ms: None,
            term: 3,
            at_ms: at(0),
        },
    ));
    for (i, (from, to)) in [
        (Provisioning, Warming),
        (Warming, Replicating),
        (Replicating, Ready),
        (Ready, CuttingOver { step: 0 }),
        (CuttingOver { step: 0 }, CuttingOver { step: 1 }),
    ]
    .into_iter()
    .enumerate()
    {
        commands.push((
            "transition",
            transition("shop-1", from, to, 3, at(1 + i as u64)),
        ));
    }
    commands.push((
        "set-dns-weights",
        Command::SetDnsWeights {
            service: "shop".to_owned(),
            dns: DnsWeights {
                weights: [("eu-west".to_owned(), 50), ("us-east".to_owned(), 50)].into(),
                ttl_secs: 5,
            },
            reason: "cutover step 1: 50 % to eu-west".to_owned(),
            term: 3,
            at_ms: at(6),
        },
    ));
    commands.push((
        "set-promoted",
        Command::SetPromoted {
            id: "shop-1".to_owned(),
            promoted: true,
            fence_window_ms: Some(42),
            term: 3,
            at_ms: at(7),
        },
    ));
    commands.push((
        "transition",
        Command::Transition {
            id: "cart-2".to_owned(),
            from: Planned,
            to: Provisioning,
            reason: "lead time reached".to_owned(),
            shadow_instances: Some(2),
            rollback_ms: None,
            term: 3,
            at_ms: at(8),
        },
    ));
    commands.push((
        "transition",
        transition("cart-2", Provisioning, Replicating, 3, at(9)),
    ));
    commands.push((
        "request-rollback",
        Command::RequestRollback {
            id: "cart-2".to_owned(),
            reason: "drill".to_owned(),
            at_ms: at(10),
        },
    ));
    commands.push((
        "transition",
        Command::Transition {
            id: "cart-2".to_owned(),
            from: RollingBack,
            to: RolledBack,
            reason: "share 0 confirmed on the source".to_owned(),
            shadow_instances: None,
            rollback_ms: Some(870),
            term: 4,
            at_ms: at(11),
        },
    ));
    for (i, (from, to)) in [
        (Planned, Provisioning),
        (Provisioning, Warming),
        (Warming, Replicating),
        (Replicating, Ready),
        (Ready, CuttingOver { step: 0 }),
        (CuttingOver { step: 0 }, CuttingOver { step: 1 }),
        (CuttingOver { step: 1 }, CuttingOver { step: 2 }),
        (CuttingOver { step: 2 }, Draining),
        (Draining, Completed),
    ]
    .into_iter()
    .enumerate()
    {
        commands.push((
            "transition",
            transition("search-3", from, to, 4, at(12 + i as u64)),
        ));
    }
    commands.push((
        "set-dns-weights",
        Command::SetDnsWeights {
            service: "search".to_owned(),
            dns: DnsWeights {
                weights: [("eu-west".to_owned(), 1)].into(),
                ttl_secs: 300,
            },
            reason: "completed".to_owned(),
            term: 4,
            at_ms: at(21),
        },
    ));
    // cap-1 (a request, then released), cap-2 (a reservation), cap-3 (a request with an end).
    commands.push((
        "claim-capacity",
        Command::ClaimCapacity {
            request: ClaimRequest {
                service: "search".to_owned(),
                region: "eu-west".to_owned(),
                instances: 1,
                start_ms: None,
                end_ms: None,
            },
            at_ms: at(22),
        },
    ));
    commands.push((
        "claim-capacity",
        Command::ClaimCapacity {
            request: ClaimRequest {
                service: "shop".to_owned(),
                region: "us-east".to_owned(),
                instances: 2,
                start_ms: Some(T0 + 86_400_000),
                end_ms: Some(T0 + 90_000_000),
            },
            at_ms: at(23),
        },
    ));
    commands.push((
        "claim-capacity",
        Command::ClaimCapacity {
            request: ClaimRequest {
                service: "cart".to_owned(),
                region: "eu-west".to_owned(),
                instances: 3,
                start_ms: None,
                end_ms: Some(T0 + 20_000_000),
            },
            at_ms: at(24),
        },
    ));
    commands.push((
        "release-capacity",
        Command::ReleaseCapacity {
            id: "cap-1".to_owned(),
            at_ms: at(25),
        },
    ));
    commands
        .into_iter()
        .enumerate()
        .map(|(i, (name, command))| (format!("{:02}-{name}", i + 1), command))
        .collect()
}

/// The state the scenario leaves, each command applied as its log index.
fn scenario_state() -> OrchestratorState {
    let mut state = OrchestratorState::default();
    for (index, (name, command)) in (1u64..).zip(scenario()) {
        if let Err(e) = state.apply_command(index, &command) {
            panic!("scenario command {name} is refused: {e}");
        }
    }
    state
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/log-v1")
}

/// Every fixture file: (file name, the bytes this build encodes for it).
fn encoded_now() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = scenario()
        .into_iter()
        .map(|(name, command)| (format!("command-{name}.bin"), encode_command(&command)))
        .collect();
    files.push((
        "snapshot.bin".to_owned(),
        StateMachine::snapshot(&scenario_state()),
    ));
    files
}

#[test]
fn this_build_encodes_the_log_and_snapshot_fixtures_byte_for_byte() {
    if let Some(dir) = std::env::var_os("UMBRA_WRITE_LOG_FIXTURES") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("create the fixture directory");
        for (name, bytes) in encoded_now() {
            std::fs::write(dir.join(&name), bytes).expect("write a fixture");
        }
        return;
    }
    let dir = fixture_dir();
    for (name, bytes) in encoded_now() {
        let path = dir.join(&name);
        let committed =
            std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert!(
            committed == bytes,
            "{name}: this build encodes {} bytes that differ from the {} committed ones. Log schema v1 is frozen: entries and snapshots already in data directories decode only as written. Add a new schema version (proto/src/log/) instead of editing v1",
            bytes.len(),
            committed.len()
        );
    }
}
