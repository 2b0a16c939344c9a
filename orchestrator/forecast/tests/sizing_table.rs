//! Table-driven tests of the sizing math: tiers, the newsvendor quantile, instances per
//! demand, the warm/dormant split, hysteresis and limits. Each row is (input, expected),
//! worked out by hand from the formulas in `sizing/mod.rs`.

use umbra_forecast::sizing::{
    DEFAULT_HYSTERESIS, Hysteresis, InstanceProfile, PoolLimits, PoolState, PoolTarget,
    SizingPolicy, Tier, instances_for, newsvendor_quantile, warm_quantile,
};

const EPS: f64 = 1e-9;

#[test]
fn newsvendor_quantile_table() {
    // (c_miss, c_idle, quantile)
    let table = [
        (1.0, 1.0, 0.5),
        (9.0, 1.0, 0.9),
        (99.0, 1.0, 0.99),
        (1.0, 3.0, 0.25),
        (0.1, 0.1 / 60.0, 60.0 / 61.0),
    ];
    for (miss, idle, q) in table {
        assert!(
            (newsvendor_quantile(miss, idle) - q).abs() < EPS,
            "{miss} {idle}"
        );
    }
}

#[test]
fn tier_quantile_table() {
    let table = [
        (Tier::Guaranteed { quantile: 0.99 }, Some(0.99)),
        // Capped: the forecast tail past p99.9 is guesswork.
        (Tier::Guaranteed { quantile: 0.99999 }, Some(0.999)),
        (
            Tier::Probabilistic {
                cost_miss: 19.0,
                cost_idle: 1.0,
            },
            Some(0.95),
        ),
        (Tier::OnDemand, None),
    ];
    for (tier, expected) in table {
        assert!(tier.validate().is_ok());
        match (tier.quantile(), expected) {
            (Some(q), Some(e)) => assert!((q - e).abs() < EPS, "{tier:?}"),
            (q, e) => assert_eq!(q, e, "{tier:?}"),
        }
    }
    let invalid = [
        Tier::Guaranteed { quantile: 1.0 },
        Tier::Guaranteed { quantile: 0.0 },
        Tier::Guaranteed { quantile: f64::NAN },
        Tier::Probabilistic {
            cost_miss: 0.0,
            cost_idle: 1.0,
        },
        Tier::Probabilistic {
            cost_miss: 1.0,
            cost_idle: f64::INFINITY,
        },
    ];
    for tier in invalid {
        assert!(tier.validate().is_err(), "{tier:?} should be refused");
    }
}

#[test]
fn instances_for_table() {
    // (demand, capacity, instances)
    let table = [
        (0.0, 100.0, 0),
        (-5.0, 100.0, 0),
        (f64::NAN, 100.0, 0),
        (1.0, 100.0, 1),
        (100.0, 100.0, 1),
        (100.000_000_000_01, 100.0, 1),
        (100.5, 100.0, 2),
        (1_000.0, 100.0, 10),
        (1_001.0, 100.0, 11),
    ];
    for (demand, capacity, n) in table {
        assert_eq!(instances_for(demand, capacity), n, "{demand} / {capacity}");
    }
}

fn profile(activation_secs: f64) -> InstanceProfile {
    InstanceProfile {
        capacity: 100.0,
        warm_cost_per_slice: 1.0,
        dormant_cost_per_slice: 0.1,
        dormant_activation_secs: activation_secs,
    }
}

#[test]
fn warm_quantile_table() {
    // (pool quantile, activation s, c_miss, slice s, warm quantile)
    // premium = 0.9; loss = activation share × c_miss; q_w = 1 − premium / loss.
    let table = [
        (0.99, 60.0, 18.0, 300.0, 0.75),  // share 0.2, loss 3.6, 1 − 0.25
        (0.99, 150.0, 18.0, 300.0, 0.9),  // share 0.5, loss 9, 1 − 0.1
        (0.99, 300.0, 90.0, 300.0, 0.99), // share 1, loss 90, 0.99 capped at the pool's
        (0.99, 30.0, 9.0, 300.0, 0.0),    // loss 0.9 = premium: nothing is worth warming
        (0.99, 0.0, 18.0, 300.0, 0.0),    // instant activation: all dormant
        (0.99, 600.0, 18.0, 300.0, 0.95), // share capped at 1: loss 18, 1 − 0.05
    ];
    for (q, act, miss, slice, expected) in table {
        let got = warm_quantile(q, &profile(act), miss, slice);
        assert!(
            (got - expected).abs() < EPS,
            "activation {act}: {got} != {expected}"
        );
    }
}

/// Demand quantile function of a uniform distribution on [lo, hi].
fn uniform(lo: f64, hi: f64) -> impl Fn(f64) -> f64 {
    move |q| lo + (hi - lo) * q
}

#[test]
fn pool_split_table() {
    let limits = PoolLimits {
        max_pool: 1_000,
        max_dormant_age_secs: 3_600,
    };
    // (tier, activation s, c_miss, demand uniform(lo, hi), expected pool)
    let table = [
        // q = 0.9 → 0 + 1000 × 0.9 = 900 → 9 instances; q_w = 1 − 0.9/(0.2 × 9) = 0.5 → 5 warm.
        (
            Tier::Probabilistic {
                cost_miss: 9.0,
                cost_idle: 1.0,
            },
            60.0,
            9.0,
            (0.0, 1000.0),
            PoolTarget {
                warm: 5,
                dormant: 4,
            },
        ),
        // Guaranteed p99: 990 → 10 instances; q_w = 1 − 0.9/(0.2 × 18) = 0.75 → 750 → 8 warm.
        (
            Tier::Guaranteed { quantile: 0.99 },
            60.0,
            18.0,
            (0.0, 1000.0),
            PoolTarget {
                warm: 8,
                dormant: 2,
            },
        ),
        // Slow activation (a whole slice): nearly everything is warm.
        (
            Tier::Guaranteed { quantile: 0.99 },
            300.0,
            90.0,
            (0.0, 1000.0),
            PoolTarget {
                warm: 10,
                dormant: 0,
            },
        ),
        // On-demand: no pool at all.
        (
            Tier::OnDemand,
            60.0,
            18.0,
            (0.0, 1000.0),
            PoolTarget::default(),
        ),
        // Max pool 1000 caps dormant first: demand 200,000 at p99 → 1,981 instances.
        (
            Tier::Guaranteed { quantile: 0.99 },
            300.0,
            90.0,
            (0.0, 200_100.0),
            PoolTarget {
                warm: 1_000,
                dormant: 0,
            },
        ),
    ];
    for (tier, act, miss, (lo, hi), expected) in table {
        let policy = SizingPolicy {
            tier,
            profile: profile(act),
            limits,
            cost_miss: miss,
            slice_secs: 300.0,
        };
        policy.validate().unwrap();
        assert_eq!(policy.size(&uniform(lo, hi)), expected, "{tier:?}");
    }
}

#[test]
fn limits_table() {
    let limits = PoolLimits {
        max_pool: 10,
        max_dormant_age_secs: 3_600,
    };
    // (target, capped)
    let table = [
        (
            PoolTarget {
                warm: 4,
                dormant: 4,
            },
            PoolTarget {
                warm: 4,
                dormant: 4,
            },
        ),
        (
            PoolTarget {
                warm: 4,
                dormant: 9,
            },
            PoolTarget {
                warm: 4,
                dormant: 6,
            },
        ),
        (
            PoolTarget {
                warm: 12,
                dormant: 3,
            },
            PoolTarget {
                warm: 10,
                dormant: 0,
            },
        ),
    ];
    for (target, expected) in table {
        assert_eq!(limits.apply(target), expected);
    }
    // (dormant ages, to recycle)
    let ages: [(&[u64], usize); 3] = [(&[], 0), (&[10, 3_600, 3_601], 1), (&[7_200, 9_000], 2)];
    for (a, n) in ages {
        assert_eq!(limits.dormant_to_recycle(a), n, "{a:?}");
    }
}

fn pool(warm: u32, dormant: u32) -> PoolTarget {
    PoolTarget { warm, dormant }
}

/// A name, a start pool, then (desired, held) per slice.
type HysteresisCase = (&'static str, PoolTarget, Vec<(PoolTarget, PoolTarget)>);

#[test]
fn hysteresis_table() {
    let h = Hysteresis {
        shrink_after_slices: 3,
        shrink_band: 0.10,
    };
    // Each case: a start pool, then (desired, held) per slice.
    let cases: Vec<HysteresisCase> = vec![
        (
            "growth is immediate",
            pool(10, 0),
            vec![(pool(12, 3), pool(12, 3))],
        ),
        (
            "a dip inside the band is ignored",
            pool(20, 0),
            vec![
                (pool(19, 0), pool(20, 0)),
                (pool(19, 0), pool(20, 0)),
                (pool(19, 0), pool(20, 0)),
                (pool(19, 0), pool(20, 0)),
            ],
        ),
        (
            "a sustained drop shrinks after three slices, to the largest asked meanwhile",
            pool(20, 0),
            vec![
                (pool(10, 0), pool(20, 0)),
                (pool(14, 0), pool(20, 0)),
                (pool(12, 0), pool(14, 0)),
            ],
        ),
        (
            "a drop interrupted by growth starts counting again",
            pool(20, 0),
            vec![
                (pool(10, 0), pool(20, 0)),
                (pool(10, 0), pool(20, 0)),
                (pool(21, 0), pool(21, 0)),
                (pool(10, 0), pool(21, 0)),
                (pool(10, 0), pool(21, 0)),
                (pool(10, 0), pool(10, 0)),
            ],
        ),
        (
            "warm can grow while dormant shrinks: total kept, warm raised",
            pool(10, 10),
            vec![(pool(15, 0), pool(15, 5))],
        ),
    ];
    for (name, start, steps) in cases {
        let mut state = PoolState::new(start);
        for (i, (desired, held)) in steps.into_iter().enumerate() {
            assert_eq!(state.handle_target(desired, &h), held, "{name}: slice {i}");
        }
    }
    // The default waits two slices before shrinking by more than its 3 % band, and a pool
    // below 34 shrinks by a single instance.
    let mut state = PoolState::new(pool(20, 0));
    let held: Vec<PoolTarget> = (0..2)
        .map(|_| state.handle_target(pool(19, 0), &DEFAULT_HYSTERESIS))
        .collect();
    assert_eq!(held, vec![pool(20, 0), pool(19, 0)]);
    let mut state = PoolState::new(pool(100, 0));
    let held: Vec<PoolTarget> = (0..2)
        .map(|_| state.handle_target(pool(98, 0), &DEFAULT_HYSTERESIS))
        .collect();
    assert_eq!(
        held,
        vec![pool(100, 0), pool(100, 0)],
        "2 % is inside the band"
    );
}
