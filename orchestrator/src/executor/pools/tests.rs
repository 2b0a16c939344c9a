use umbra_proto::agent::{ReplicationReport, TransitionTiming};

use super::*;

const SLICE: u64 = 10_000;

/// Slices of `SLICE` ms from 0, with these (warm, dormant) targets.
fn forecast(targets: &[(u32, u32)]) -> PoolForecast {
    PoolForecast {
        slice_ms: SLICE,
        slices: targets
            .iter()
            .enumerate()
            .map(|(i, &(warm, dormant))| SliceTarget {
                start_ms: i as u64 * SLICE,
                mean: 0.0,
                quantile: 0.0,
                target: PoolTarget { warm, dormant },
            })
            .collect(),
        reason: "test".into(),
    }
}

fn t(warm: u32, dormant: u32) -> PoolTarget {
    PoolTarget { warm, dormant }
}

#[test]
fn the_target_looks_one_activation_ahead_for_warm_and_further_for_dormant() {
    let f = forecast(&[(1, 0), (1, 0), (1, 3), (4, 0), (1, 0)]);
    let leads = Leads {
        activation_ms: 3_000,
        provision_ms: 8_000,
    };
    // Table: (now ms, expected target).
    for (now, want) in [
        (0, t(1, 0)),
        // Total for the slice one provision + activation ahead (20 000..): 4 in all.
        (9_000, t(1, 3)),
        (20_000, t(1, 3)),
        // Warm for the slice one activation ahead (30 000..): the dormant ones are activated.
        (27_000, t(4, 0)),
        (30_000, t(4, 0)),
        (40_000, t(1, 0)),
    ] {
        assert_eq!(desired(Some(&f), now, leads, 1, 10), want, "at {now}");
    }
    assert_eq!(
        desired(Some(&f), 50_000, leads, 2, 10),
        t(2, 0),
        "past the forecast: the floor"
    );
    assert_eq!(
        desired(None, 0, leads, 2, 10),
        t(2, 0),
        "no forecast: the floor, warm"
    );
    // Limits: warm at least the floor, all of it at most the ceiling.
    assert_eq!(desired(Some(&f), 27_000, leads, 1, 3), t(3, 0));
    assert_eq!(desired(Some(&f), 9_000, leads, 2, 3), t(2, 1));
}

fn report(instances: &[(&str, InstanceState)]) -> AgentReport {
    AgentReport {
        region: "eu-west".into(),
        newest_term: 1,
        instances: instances
            .iter()
            .enumerate()
            .map(|(i, (id, state))| InstanceReport {
                id: (*id).to_owned(),
                state: *state,
                addr: matches!(state, InstanceState::Active | InstanceState::Warm)
                    .then(|| format!("127.0.0.1:{}", 9000 + i)),
                transitions: Vec::new(),
                limits: None,
            })
            .collect(),
        warmups: Vec::new(),
        replication: Vec::new(),
        at_unix_ms: 0,
        front: None,
    }
}

fn spec(target: PoolTarget, stateful: bool) -> PoolSpec<'static> {
    PoolSpec {
        base: "shop/pool/eu-west/shop-eu-west",
        region: "eu-west",
        prefix: "shop-eu-west",
        target,
        stateful,
    }
}

fn actions(due: &[DueCommand]) -> Vec<(String, AgentAction)> {
    due.iter()
        .map(|c| {
            let op = c
                .op_id
                .trim_start_matches("shop/pool/eu-west/shop-eu-west/");
            (op.to_owned(), c.action.clone())
        })
        .collect()
}

#[test]
fn a_stateless_pool_provisions_activates_parks_and_removes() {
    use InstanceState::*;
    let r = report(&[
        ("shop-eu-west-1", Active),
        ("shop-eu-west-2", Dormant),
        ("shop-eu-west-3", Active),
        ("shop-eu-west-4", Warm),
        ("shop-eu-west-6", Stopped),
        ("shop-eu-west-7", Active),
        ("other-1", Active),
    ]);
    let got = pool_commands(&spec(t(2, 3), false), Some(&r));
    let id = |k: u32| format!("shop-eu-west-{k}");
    assert_eq!(
        actions(&got),
        vec![
            (
                "provision".into(),
                AgentAction::Provision {
                    instances: vec![id(5)]
                }
            ),
            (
                format!("activate/{}", id(2)),
                AgentAction::Activate { instance: id(2) }
            ),
            (
                format!("deactivate/{}", id(3)),
                AgentAction::Deactivate { instance: id(3) }
            ),
            (
                format!("stop/{}", id(4)),
                AgentAction::Stop { instance: id(4) }
            ),
            (
                format!("remove/{}", id(6)),
                AgentAction::Remove { instance: id(6) }
            ),
            (
                format!("deactivate/{}", id(7)),
                AgentAction::Deactivate { instance: id(7) }
            ),
        ]
    );
    assert!(
        got.iter().all(|c| c.observable),
        "every stage shows in a report"
    );
    assert!(
        pool_commands(&spec(t(2, 3), false), None).is_empty(),
        "nothing before a report"
    );
    assert_eq!(actual("shop-eu-west", Some(&r)), t(3, 2));
}

#[test]
fn a_follower_starts_follows_the_writer_catches_up_then_serves() {
    use InstanceState::*;
    let two = spec(t(2, 0), true);
    let (w, f) = ("shop-eu-west-1", "shop-eu-west-2");
    let mut r = report(&[(w, Active), (f, Dormant)]);
    let due = pool_commands(&two, Some(&r));
    assert_eq!(
        actions(&due),
        vec![
            (
                format!("start/{f}"),
                AgentAction::Start { instance: f.into() }
            ),
            (
                format!("follow/{f}"),
                AgentAction::StartReplication {
                    instance: f.into(),
                    source: "http://127.0.0.1:9000".into()
                }
            ),
        ]
    );
    assert_eq!(
        due[1].after.as_deref(),
        Some(due[0].op_id.as_str()),
        "it follows as soon as it runs"
    );
    r = report(&[(w, Active), (f, Warm)]);
    assert_eq!(
        actions(&pool_commands(&two, Some(&r))),
        vec![(
            format!("follow/{f}"),
            AgentAction::StartReplication {
                instance: f.into(),
                source: "http://127.0.0.1:9000".into()
            }
        )]
    );
    let follows = |target_position| ReplicationReport {
        instance: f.into(),
        source: "http://127.0.0.1:9000".into(),
        source_position: 10,
        target_position,
        source_fenced: false,
        promoted: false,
    };
    r.replication = vec![follows(4)];
    assert!(
        pool_commands(&two, Some(&r)).is_empty(),
        "not in the front while it lags"
    );
    r.replication = vec![follows(10)];
    assert_eq!(
        actions(&pool_commands(&two, Some(&r))),
        vec![(
            format!("activate/{f}"),
            AgentAction::Activate { instance: f.into() }
        )]
    );
    // Without a serving writer a follower waits.
    let r = report(&[(w, Dormant), (f, Warm)]);
    assert_eq!(
        actions(&pool_commands(&two, Some(&r))),
        vec![(
            format!("activate/{w}"),
            AgentAction::Activate { instance: w.into() }
        )]
    );
    // Parked, one stage per report: out of the front while it still follows (a follower
    // that stopped following refuses writes and serves stale reads, so it must answer
    // nobody by then), then replication stopped, then stopped.
    let parked = spec(t(1, 1), true);
    let mut r = report(&[(w, Active), (f, Active)]);
    r.replication = vec![follows(10)];
    assert_eq!(
        actions(&pool_commands(&parked, Some(&r))),
        vec![(
            format!("deactivate/{f}"),
            AgentAction::Deactivate { instance: f.into() }
        )]
    );
    let mut r = report(&[(w, Active), (f, Warm)]);
    r.replication = vec![follows(10)];
    assert_eq!(
        actions(&pool_commands(&parked, Some(&r))),
        vec![(
            format!("unreplicate/{f}"),
            AgentAction::StopReplication { instance: f.into() }
        )]
    );
    let r = report(&[(w, Active), (f, Warm)]);
    assert_eq!(
        actions(&pool_commands(&parked, Some(&r))),
        vec![(
            format!("stop/{f}"),
            AgentAction::Stop { instance: f.into() }
        )]
    );
}

#[test]
fn members_are_numbered_ids_of_the_prefix_only() {
    assert_eq!(member("shop-1", "shop-1-3"), Some(3));
    assert_eq!(member("shop-1", "shop-12-3"), None);
    assert_eq!(member("shop-1", "shop-1-03"), None);
    assert_eq!(member("shop-1", "shop-1-"), None);
    assert_eq!(member("shop-1", "shop-1-x"), None);
}

#[test]
fn lead_times_are_the_longest_measured_plus_a_margin() {
    let mut r = report(&[("a", InstanceState::Active)]);
    assert_eq!(
        measured_leads(Some(&r), 1_000),
        Leads {
            activation_ms: DEFAULT_LEAD_MS,
            provision_ms: DEFAULT_LEAD_MS
        }
    );
    r.instances[0].transitions = [
        (InstanceState::Stopped, InstanceState::Dormant, 40),
        (InstanceState::Dormant, InstanceState::Active, 700),
        (InstanceState::Stopped, InstanceState::Active, 900),
        (InstanceState::Warm, InstanceState::Active, 5),
    ]
    .map(|(from, to, millis)| TransitionTiming { from, to, millis })
    .to_vec();
    assert_eq!(
        measured_leads(Some(&r), 1_000),
        Leads {
            activation_ms: 1_900,
            provision_ms: 1_040
        }
    );
}

#[test]
fn limits_follow_the_load_within_their_range_in_coarse_steps() {
    let range = LimitsSpec {
        min_cpu_millis: 250,
        max_cpu_millis: 1_000,
        min_memory_mib: 128,
        max_memory_mib: 256,
    };
    let l = |cpu_millis, memory_mib| InstanceLimits {
        cpu_millis,
        memory_mib,
    };
    // (rps per instance, limits) for 100 rps per instance at full load.
    for (rps, want) in [
        (0.0, l(250, 128)),
        (f64::NAN, l(250, 128)),
        (10.0, l(350, 144)),
        (50.0, l(650, 192)),
        (100.0, l(1_000, 256)),
        (400.0, l(1_000, 256)),
    ] {
        assert_eq!(limits_for(&range, rps, 100.0), want, "{rps} rps");
    }
}

#[test]
fn limits_are_set_on_serving_instances_whose_provider_enforces_them() {
    let mut r = report(&[
        ("shop-eu-west-1", InstanceState::Active),
        ("shop-eu-west-2", InstanceState::Active),
        ("shop-eu-west-3", InstanceState::Dormant),
        ("shop-eu-west-4", InstanceState::Active),
    ]);
    let small = InstanceLimits {
        cpu_millis: 250,
        memory_mib: 128,
    };
    let big = InstanceLimits {
        cpu_millis: 500,
        memory_mib: 160,
    };
    // 1 has the limits already; 2 and 3 have smaller ones; 4 enforces none (a process).
    r.instances[0].limits = Some(big);
    r.instances[1].limits = Some(small);
    r.instances[2].limits = Some(small);
    let due = limit_commands(&spec(t(2, 1), false), Some(&r), big);
    assert_eq!(
        actions(&due),
        [(
            "limits/shop-eu-west-2/500m-160Mi".to_owned(),
            AgentAction::SetLimits {
                instance: "shop-eu-west-2".into(),
                limits: big
            }
        )],
        "the dormant one is sized when it is activated"
    );
    assert!(due.iter().all(|c| c.observable));
    assert!(limit_commands(&spec(t(2, 1), false), None, big).is_empty());
}
