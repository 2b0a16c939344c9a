//! The Raft log and snapshot encoding across Umbra versions. `fixtures/log-v1/` holds real
//! bytes, written by the build before the log schema (`umbra_proto::log`) had a version of
//! its own: every command of one scenario (each command variant at least once) as a proposal
//! encodes it, and the snapshot of the state the scenario leaves (regions, services,
//! schedules, migrations in several phases, DNS weights, capacity claims, the audit log).
//! `fixtures/log-v2/` holds the same scenario and one recorded drill, as the build that
//! introduced version 2 wrote them. This build must decode both to the values written, field
//! by field (v1 upgraded to the current version), read and write each v1 file back through
//! the frozen v1 types byte for byte, and encode the current scenario to the v2 bytes, so an
//! edit of a released version in place fails here; each directory's README says which
//! commit wrote it and how.
//!
//! `UMBRA_WRITE_LOG_FIXTURES=DIR` writes the current version's scenario bytes into DIR
//! instead of comparing.

use std::path::{Path, PathBuf};

use umbra_consensus::StateMachine;
use umbra_forecast::sizing::Tier;
use umbra_orchestrator::migration::{Phase, PrometheusSlo, SloJudgement, SloSource};
use umbra_orchestrator::state::{
    AuditEvent, ClaimKind, ClaimRequest, Command, DnsWeights, DrillReport, DrillService,
    GameDaySpec, LimitsSpec, MigrationRequest, OrchestratorState, Plan, PoolMode, RegionSpec,
    ReplicationKind, ServiceSpec, decode_command, encode_command,
};
use umbra_proto::envelope;
use umbra_proto::log::{V1, v1};

/// 2027-01-01T00:00:00Z, Unix ms: the scenario's clock starts here.
const T0: u64 = 1_798_761_600_000;

/// The time of the scenario's `n`th timed command, Unix ms.
fn at(n: u64) -> u64 {
    T0 + 10_000 + n * 1_000
}

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

/// The drill version 2 adds to the scenario: a failed evacuation under a generated fault
/// plan, every optional field set.
fn drill() -> DrillReport {
    DrillReport {
        drill: "evacuate".to_owned(),
        region: "us-east".to_owned(),
        passed: false,
        reasons: vec!["stopped at 2027-01-01T00:00:40.000Z: error budget burnt".to_owned()],
        started_ms: at(26),
        ended_ms: at(31),
        evacuate_ms: None,
        services: vec![
            DrillService {
                service: "shop".to_owned(),
                to: "eu-west".to_owned(),
                migration: Some("shop-1".to_owned()),
                outcome: "rolled_back".to_owned(),
            },
            DrillService {
                service: "cart".to_owned(),
                to: "ap-south".to_owned(),
                migration: None,
                outcome: "not_started".to_owned(),
            },
        ],
        requests: 12_000,
        failed_requests: 310,
        max_failed_ratio: 0.01,
        max_p99_ms: 300.0,
        p99_ms_max: Some(812.5),
        stopped: Some("error budget burnt (at 2027-01-01T00:00:40.000Z)".to_owned()),
        rollbacks: 1,
        faults_fired: 2,
        faults_planned: 3,
        seed: Some(7),
        game_day: Some("q1".to_owned()),
    }
}

/// The game day version 2 adds to the plan, which the drill above ran for.
fn game_day() -> GameDaySpec {
    GameDaySpec {
        name: "q1".to_owned(),
        drill: "evacuate".to_owned(),
        region: "us-east".to_owned(),
        to: Some("eu-west".to_owned()),
        at_ms: at(31),
    }
}

/// The version 2 scenario: version 1's, then a plan with a game day (log index 31) and the
/// drill it recorded (32).
fn scenario_v2() -> Vec<(String, Command)> {
    let mut commands = scenario();
    // Its regions and the game day: the services are in flight and may not change now.
    let plan = Plan {
        regions: plan().regions,
        game_days: vec![game_day()],
        ..Plan::default()
    };
    commands.push((
        "31-apply-plan".to_owned(),
        Command::ApplyPlan {
            plan,
            at_ms: at(30),
        },
    ));
    commands.push((
        "32-record-drill".to_owned(),
        Command::RecordDrill {
            drill: drill(),
            at_ms: at(32),
        },
    ));
    commands
}

/// The state `commands` leave, each applied as its log index.
fn state_of(commands: Vec<(String, Command)>) -> OrchestratorState {
    let mut state = OrchestratorState::default();
    for (index, (name, command)) in (1u64..).zip(commands) {
        if let Err(e) = state.apply_command(index, &command) {
            panic!("scenario command {name} is refused: {e}");
        }
    }
    state
}

/// The state the version 1 scenario leaves.
fn scenario_state() -> OrchestratorState {
    state_of(scenario())
}

fn fixture_dir(version: u16) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/log-v{version}"))
}

/// Every current fixture file: (file name, the bytes this build encodes for it).
fn encoded_now() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = scenario_v2()
        .into_iter()
        .map(|(name, command)| (format!("command-{name}.bin"), encode_command(&command)))
        .collect();
    files.push((
        "snapshot.bin".to_owned(),
        StateMachine::snapshot(&state_of(scenario_v2())),
    ));
    files
}

#[test]
fn this_build_encodes_the_v2_log_and_snapshot_fixtures_byte_for_byte() {
    assert_eq!(
        umbra_proto::log::CURRENT_VERSION,
        2,
        "fixtures for a new version go in log-v3/"
    );
    if let Some(dir) = std::env::var_os("UMBRA_WRITE_LOG_FIXTURES") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("create the fixture directory");
        for (name, bytes) in encoded_now() {
            std::fs::write(dir.join(&name), bytes).expect("write a fixture");
        }
        return;
    }
    for (name, bytes) in encoded_now() {
        let committed = fixture(2, &name);
        assert!(
            committed == bytes,
            "{name}: this build encodes {} bytes that differ from the {} committed ones. Log schema v2 is frozen: entries and snapshots already in data directories decode only as written. Add a new schema version (proto/src/log/) instead of editing v2",
            bytes.len(),
            committed.len()
        );
    }
}

/// Reads a v1 file as the frozen v1 type and writes it back: the same bytes, or v1 changed.
fn v1_round_trip<T>(name: &str)
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let bytes = fixture(V1, name);
    let (version, body) = envelope::split_version::<T>(&bytes).expect("a version");
    assert_eq!(version, V1, "{name}");
    let value: T = envelope::decode_body(body).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        envelope::encode_with_version(V1, &value).expect("encodes") == bytes,
        "{name}: the v1 types no longer write the bytes they read. Log schema v1 is frozen: add a new schema version (proto/src/log/) instead of editing v1"
    );
}

#[test]
fn every_v1_file_reads_and_writes_back_through_the_frozen_v1_types_byte_for_byte() {
    for (name, _) in scenario() {
        v1_round_trip::<v1::Command>(&format!("command-{name}.bin"));
    }
    v1_round_trip::<v1::Snapshot>("snapshot.bin");
}

fn fixture(version: u16, name: &str) -> Vec<u8> {
    let path = fixture_dir(version).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn every_committed_entry_decodes_to_the_command_that_wrote_it() {
    let scenario = scenario();
    for (name, command) in &scenario {
        let decoded = decode_command(&fixture(V1, &format!("command-{name}.bin")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&decoded, command, "{name}");
    }
    // One entry of each variant, field by field against the values written, not the builder.
    let decoded =
        |name: &str| decode_command(&fixture(V1, &format!("command-{name}.bin"))).unwrap();
    let Command::ApplyPlan { plan, at_ms } = decoded("01-apply-plan") else {
        panic!("01 is a plan");
    };
    assert_eq!(at_ms, T0);
    let names = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        plan.regions
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>(),
        names(vec!["us-east", "eu-west", "ap-south"])
    );
    assert_eq!(plan.regions[0].front, "127.0.0.11:8080");
    assert_eq!(plan.regions[0].max_instances, Some(8));
    let ap = &plan.regions[2];
    assert_eq!(
        (
            ap.warm_instance_hour,
            ap.dormant_instance_hour,
            ap.max_instances
        ),
        (1.75, 0.2, None)
    );
    let [shop, cart, search] = &plan.services[..] else {
        panic!("three services: {:?}", plan.services);
    };
    assert_eq!(
        (
            shop.name.as_str(),
            shop.hostname.as_str(),
            shop.primary_region.as_str()
        ),
        ("shop", "shop.umbra.test.", "us-east")
    );
    assert_eq!(shop.capacity_rps_per_instance, 100.0);
    assert_eq!((shop.min_instances, shop.max_instances), (1, 4));
    assert_eq!(
        shop.tier,
        Tier::Probabilistic {
            cost_miss: 4.0,
            cost_idle: 1.0
        }
    );
    assert_eq!(
        (
            shop.dns_ttl_secs,
            shop.cutover_ttl_secs,
            shop.dns_margin_secs
        ),
        (300, 5, 60)
    );
    assert_eq!(shop.steps_percent, vec![10, 50, 100]);
    assert_eq!((shop.analysis_window_secs, shop.lead_time_secs), (60, 900));
    assert_eq!(
        (
            shop.slo.max_error_rate,
            shop.slo.max_p99_ms,
            shop.slo.min_samples
        ),
        (0.01, 100.0, 50)
    );
    assert_eq!(shop.slo.source, SloSource::Fronts);
    assert_eq!(shop.slo.judgement, SloJudgement::Thresholds);
    assert_eq!(shop.warmup.mix.requests[0].path, "/kv/{key}");
    assert_eq!(
        (
            shop.warmup.mix.key_count,
            shop.warmup.mix.rate_per_sec,
            shop.warmup.mix.max_duration_ms
        ),
        (1000, 200.0, 30_000)
    );
    assert_eq!(
        (
            shop.warmup.gate.reference_p99_ms,
            shop.warmup.gate.min_requests
        ),
        (5.0, 200)
    );
    assert!(!shop.warmup.allow_writes);
    assert_eq!(shop.replication, ReplicationKind::SampleLogShipping);
    assert_eq!(shop.pools, PoolMode::Predictive);
    assert_eq!(
        shop.instance_limits,
        Some(LimitsSpec {
            min_cpu_millis: 250,
            max_cpu_millis: 1000,
            min_memory_mib: 128,
            max_memory_mib: 256
        })
    );
    assert_eq!((cart.min_instances, cart.max_instances), (2, 6));
    assert_eq!(cart.tier, Tier::Guaranteed { quantile: 0.95 });
    assert_eq!(cart.steps_percent, vec![25, 100]);
    assert_eq!(cart.replication, ReplicationKind::None);
    assert_eq!(cart.max_replication_lag, 7);
    assert_eq!(cart.pools, PoolMode::Reactive);
    assert_eq!(cart.instance_limits, None);
    assert!(cart.warmup.allow_writes);
    assert_eq!(cart.slo.judgement, SloJudgement::Compare);
    let SloSource::Prometheus(prometheus) = &cart.slo.source else {
        panic!("cart's SLO comes from Prometheus: {:?}", cart.slo.source);
    };
    assert_eq!(prometheus.url, "http://127.0.0.1:9090");
    assert!(prometheus.error_ratio_query.starts_with("sum(rate(errors{"));
    assert!(
        prometheus
            .latency_p99_query
            .starts_with("histogram_quantile(0.99")
    );
    assert_eq!(search.tier, Tier::OnDemand);
    assert_eq!(search.analysis_window_secs, 45);
    assert_eq!(plan.schedules[0].name, "sun");
    assert_eq!(
        plan.schedules[0]
            .legs
            .iter()
            .map(|l| (l.at_hour_utc, l.region.as_str()))
            .collect::<Vec<_>>(),
        vec![(0, "eu-west"), (12, "us-east")]
    );

    assert_eq!(
        decoded("02-create-migration"),
        Command::CreateMigration {
            request: MigrationRequest {
                service: "shop".to_owned(),
                from: Some("us-east".to_owned()),
                to: "eu-west".to_owned(),
                cutover_at_ms: 1_798_765_200_000,
                warm_up: true,
                lead_time_ms: Some(1_200_000),
                analysis_window_ms: Some(30_000),
                drain_ms: Some(90_000),
                schedule_key: None,
            },
            at_ms: 1_798_761_601_000,
        }
    );
    let Command::CreateMigration { request, .. } = decoded("03-create-migration") else {
        panic!("03 creates a migration");
    };
    assert_eq!(
        (
            request.warm_up,
            request.schedule_key.as_deref(),
            request.from
        ),
        (false, Some("sun/2027-01-01T02:00:00Z"), None)
    );
    assert_eq!(
        decoded("05-transition"),
        Command::Transition {
            id: "shop-1".to_owned(),
            from: Phase::Planned,
            to: Phase::Provisioning,
            reason: "lead time reached".to_owned(),
            shadow_instances: Some(3),
            rollback_ms: None,
            term: 3,
            at_ms: 1_798_761_610_000,
        }
    );
    let Command::Transition { from, to, .. } = decoded("10-transition") else {
        panic!("10 is a transition");
    };
    assert_eq!(
        (from, to),
        (
            Phase::CuttingOver { step: 0 },
            Phase::CuttingOver { step: 1 }
        )
    );
    assert_eq!(
        decoded("11-set-dns-weights"),
        Command::SetDnsWeights {
            service: "shop".to_owned(),
            dns: DnsWeights {
                weights: [("eu-west".to_owned(), 50), ("us-east".to_owned(), 50)].into(),
                ttl_secs: 5,
            },
            reason: "cutover step 1: 50 % to eu-west".to_owned(),
            term: 3,
            at_ms: 1_798_761_616_000,
        }
    );
    assert_eq!(
        decoded("12-set-promoted"),
        Command::SetPromoted {
            id: "shop-1".to_owned(),
            promoted: true,
            fence_window_ms: Some(42),
            term: 3,
            at_ms: 1_798_761_617_000,
        }
    );
    assert_eq!(
        decoded("15-request-rollback"),
        Command::RequestRollback {
            id: "cart-2".to_owned(),
            reason: "drill".to_owned(),
            at_ms: 1_798_761_620_000,
        }
    );
    let Command::Transition {
        to,
        rollback_ms,
        term,
        ..
    } = decoded("16-transition")
    else {
        panic!("16 is a transition");
    };
    assert_eq!((to, rollback_ms, term), (Phase::RolledBack, Some(870), 4));
    assert_eq!(
        decoded("28-claim-capacity"),
        Command::ClaimCapacity {
            request: ClaimRequest {
                service: "shop".to_owned(),
                region: "us-east".to_owned(),
                instances: 2,
                start_ms: Some(1_798_848_000_000),
                end_ms: Some(1_798_851_600_000),
            },
            at_ms: 1_798_761_633_000,
        }
    );
    assert_eq!(
        decoded("30-release-capacity"),
        Command::ReleaseCapacity {
            id: "cap-1".to_owned(),
            at_ms: 1_798_761_635_000,
        }
    );
}

#[test]
fn the_committed_snapshot_restores_the_state_its_committed_log_replays_to() {
    let mut restored = OrchestratorState::default();
    restored
        .restore(&fixture(V1, "snapshot.bin"))
        .expect("the v1 snapshot restores");
    assert_eq!(restored, scenario_state());
    // Replaying the committed entries through the state machine, as a node replays its log
    // after an upgrade, reaches the same state.
    let mut replayed = OrchestratorState::default();
    for (index, (name, _)) in (1u64..).zip(scenario()) {
        StateMachine::apply(
            &mut replayed,
            index,
            &fixture(V1, &format!("command-{name}.bin")),
        );
    }
    assert_eq!(replayed, restored);

    // Field by field, against the values written.
    let overview = restored.overview();
    assert_eq!(overview.applied_index, 30);
    assert_eq!(
        overview.regions.keys().collect::<Vec<_>>(),
        ["ap-south", "eu-west", "us-east"]
    );
    let phases: Vec<(&str, Phase)> = overview
        .migrations
        .iter()
        .map(|(id, m)| (id.as_str(), m.phase))
        .collect();
    assert_eq!(
        phases,
        [
            ("cart-2", Phase::RolledBack),
            ("search-3", Phase::Completed),
            ("shop-1", Phase::CuttingOver { step: 1 }),
        ]
    );
    let shop_1 = &overview.migrations["shop-1"];
    assert_eq!(
        (
            shop_1.shadow_instances,
            shop_1.promoted,
            shop_1.ttl_lowered_at_ms,
            shop_1.phase_since_ms
        ),
        (3, true, Some(1_798_761_616_000), 1_798_761_615_000)
    );
    assert_eq!(
        (
            shop_1.spec.from.as_str(),
            shop_1.spec.to.as_str(),
            shop_1.spec.cutover_at_ms,
            shop_1.spec.lead_time_ms,
            shop_1.spec.analysis_window_ms,
            shop_1.spec.drain_ms
        ),
        (
            "us-east",
            "eu-west",
            1_798_765_200_000,
            1_200_000,
            30_000,
            Some(90_000)
        )
    );
    assert_eq!(
        (
            shop_1.spec.dns_ttl.old_ttl_secs,
            shop_1.spec.dns_ttl.low_ttl_secs,
            shop_1.spec.dns_ttl.margin_secs
        ),
        (300, 5, 60)
    );
    assert_eq!(shop_1.spec.deadlines.provisioning_ms, 600_000);
    assert_eq!(shop_1.spec.deadlines.rolling_back_ms, 30_000);
    let cart_2 = &overview.migrations["cart-2"];
    assert_eq!((cart_2.shadow_instances, cart_2.spec.warm_up), (2, false));
    assert_eq!(
        cart_2.spec.slo.judgement,
        SloJudgement::Compare,
        "a migration keeps its service's SLO"
    );
    assert_eq!(
        overview.services["shop"].active_migration.as_deref(),
        Some("shop-1")
    );
    assert_eq!(overview.services["search"].primary_region, "eu-west");
    assert_eq!(overview.services["search"].active_migration, None);
    assert_eq!(overview.services["cart"].primary_region, "eu-west");
    assert_eq!(overview.schedules["sun"].service, "shop");
    assert_eq!(overview.dns["shop"].weights["eu-west"], 50);
    assert_eq!(overview.dns["shop"].ttl_secs, 5);
    assert_eq!(overview.dns["cart"].weights["eu-west"], 1);
    assert_eq!(
        overview.capacity.keys().collect::<Vec<_>>(),
        ["cap-2", "cap-3"]
    );
    let cap_2 = &overview.capacity["cap-2"];
    assert_eq!(
        (cap_2.kind, cap_2.instances, cap_2.start_ms, cap_2.end_ms),
        (
            ClaimKind::Reservation,
            2,
            1_798_848_000_000,
            1_798_851_600_000
        )
    );
    assert_eq!(overview.capacity["cap-3"].kind, ClaimKind::Request);
    let audit = restored.audit();
    assert_eq!(audit.len(), 30, "one audit line per command");
    assert_eq!(
        audit[0].event,
        AuditEvent::PlanApplied {
            regions: 3,
            services: 3,
            schedules: 1
        }
    );
    assert_eq!(audit[15].subject, "cart-2");
    assert_eq!(
        audit[15].event,
        AuditEvent::Transition {
            from: Phase::RollingBack,
            to: Phase::RolledBack,
            shadow_instances: None,
            rollback_ms: Some(870),
        }
    );
    assert_eq!(
        audit[11].event,
        AuditEvent::WriterMoved {
            to_target: true,
            fence_window_ms: Some(42)
        }
    );
    assert_eq!(
        audit[29].event,
        AuditEvent::CapacityReleased {
            service: "search".to_owned(),
            region: "eu-west".to_owned(),
            instances: 1
        }
    );
}

#[test]
fn every_v2_entry_and_the_v2_snapshot_read_back_as_written() {
    for (name, command) in scenario_v2() {
        let decoded = decode_command(&fixture(2, &format!("command-{name}.bin")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(decoded, command, "{name}");
    }
    // The drill, field by field against the values written.
    let Command::RecordDrill {
        drill: report,
        at_ms,
    } = decode_command(&fixture(2, "command-32-record-drill.bin")).unwrap()
    else {
        panic!("32 records a drill");
    };
    assert_eq!(report.game_day.as_deref(), Some("q1"));
    let Command::ApplyPlan { plan, .. } =
        decode_command(&fixture(2, "command-31-apply-plan.bin")).unwrap()
    else {
        panic!("31 applies a plan");
    };
    assert_eq!(plan.game_days, [game_day()]);
    assert_eq!(at_ms, 1_798_761_642_000);
    assert_eq!(
        (
            report.drill.as_str(),
            report.region.as_str(),
            report.passed,
            report.requests,
            report.failed_requests,
            report.p99_ms_max,
            report.seed,
            report.services.len(),
            report.services[1].outcome.as_str(),
        ),
        (
            "evacuate",
            "us-east",
            false,
            12_000,
            310,
            Some(812.5),
            Some(7),
            2,
            "not_started"
        )
    );

    let mut restored = OrchestratorState::default();
    restored
        .restore(&fixture(2, "snapshot.bin"))
        .expect("the v2 snapshot restores");
    assert_eq!(restored, state_of(scenario_v2()));
    let mut replayed = OrchestratorState::default();
    for (index, (name, _)) in (1u64..).zip(scenario_v2()) {
        StateMachine::apply(
            &mut replayed,
            index,
            &fixture(2, &format!("command-{name}.bin")),
        );
    }
    assert_eq!(replayed, restored);
    let drills = restored.drills(10);
    assert_eq!(drills.len(), 1);
    assert_eq!(
        (
            drills[0].id.as_str(),
            drills[0].index,
            drills[0].recorded_ms
        ),
        ("drill-1", 32, 1_798_761_642_000)
    );
    assert_eq!(drills[0].report, drill());
    let q1 = &restored.overview().game_days["q1"];
    assert_eq!(
        (&q1.spec, q1.verdict.as_deref()),
        (&game_day(), Some("drill-1"))
    );
    // The v1 scenario's state is all there too, upgraded.
    assert_eq!(restored.audit().len(), 31);
    assert_eq!(restored.overview(), state_of(scenario_v2()).overview());
}
