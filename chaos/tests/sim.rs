//! The whole-cluster simulation as CI runs it: a range of seeds under faults with every
//! invariant holding, the same seed giving the same run, and planted bugs (in the simulation,
//! never in product code) caught within a few seeds.

use std::collections::BTreeSet;

use umbra_chaos::sim::{self, Bugs, SeedReport, SimConfig, Violation};

/// Seeds run under faults: the acceptance's thousand, on two threads (about 80 ms a seed in
/// the dev profile, where the orchestrator and this crate are optimised at level 1).
const SEEDS: u64 = 1_000;

/// Seeds a planted bug must be caught within.
const BUG_SEEDS: u64 = 20;

fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| {
            format!(
                "seed {} at {} ms: {}: {} (replay: {})",
                v.seed,
                v.at_ms,
                v.invariant,
                v.detail,
                sim::replay_command(v.seed)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `seeds` on two threads (each seed is one thread's whole run, so the split changes
/// nothing in any of them), reports in seed order.
fn run_seeds(seeds: std::ops::Range<u64>, config: &SimConfig) -> Vec<SeedReport> {
    let mut reports: Vec<SeedReport> = std::thread::scope(|scope| {
        let halves: Vec<_> = [0, 1]
            .into_iter()
            .map(|half| {
                let seeds = seeds.clone();
                scope.spawn(move || {
                    seeds
                        .filter(|seed| seed % 2 == half)
                        .map(|seed| sim::run(seed, config))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    reports.sort_by_key(|r| r.seed);
    reports
}

#[test]
fn every_invariant_holds_under_faults_and_every_fault_and_outcome_occurs() {
    let reports = run_seeds(0..SEEDS, &SimConfig::default());
    let violations: Vec<Violation> = reports
        .iter()
        .flat_map(|r| r.violations.iter().cloned())
        .collect();
    assert!(violations.is_empty(), "{}", describe(&violations));
    // The seeds exercised what they claim to: each kind of fault, and both endings.
    let faults: BTreeSet<&str> = reports
        .iter()
        .flat_map(|r| r.faults.iter().map(|(kind, _)| kind.as_str()))
        .collect();
    for kind in [
        "leader_crash",
        "follower_crash",
        "leader_isolated",
        "follower_isolated",
        "agent_restart",
        "instance_crash",
        "clock_jump",
    ] {
        assert!(faults.contains(kind), "no seed injected {kind}: {faults:?}");
    }
    let endings: BTreeSet<&str> = reports
        .iter()
        .flat_map(|r| r.migrations.iter().map(|(_, phase)| phase.as_str()))
        .collect();
    assert_eq!(
        endings,
        BTreeSet::from(["completed", "rolled_back"]),
        "both endings occur, and only they"
    );
    for report in &reports {
        assert_writer_follows_the_ending(report);
    }
    assert!(
        reports
            .iter()
            .any(|r| r.target_fails_late && r.writers == ["us-east"]),
        "some rollback handed the writer back after it moved"
    );
    assert!(
        reports.iter().any(|r| r.aborted_in_fence
            && !r.target_fails
            && r.migrations.iter().all(|(_, p)| p == "rolled_back")
            && r.writers == ["us-east"]),
        "some operator's rollback in the fence window lifted the fence on a healthy target"
    );
}

/// The service's data accepts writes where the migration left the service, and clients' writes
/// were acknowledged.
fn assert_writer_follows_the_ending(report: &SeedReport) {
    let phases: Vec<&str> = report.migrations.iter().map(|(_, p)| p.as_str()).collect();
    let writer = match phases.as_slice() {
        ["completed"] => "eu-west",
        _ => "us-east",
    };
    assert_eq!(report.writers, [writer], "seed {}: {phases:?}", report.seed);
    assert!(report.writes_acknowledged > 0, "seed {}", report.seed);
}

#[test]
fn without_faults_a_healthy_target_completes_and_a_failing_one_rolls_back() {
    let config = SimConfig {
        faults: false,
        ..SimConfig::default()
    };
    for report in run_seeds(0..10, &config) {
        assert!(
            report.violations.is_empty(),
            "{}",
            describe(&report.violations)
        );
        assert!(report.faults.is_empty());
        let want = if report.target_fails || report.aborted_in_fence {
            "rolled_back"
        } else {
            "completed"
        };
        let phases: Vec<&str> = report.migrations.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(phases, vec![want], "seed {}", report.seed);
        assert_writer_follows_the_ending(&report);
    }
}

#[test]
fn one_seed_replays_exactly() {
    let config = SimConfig::default();
    let first = sim::run(7, &config);
    let again = sim::run(7, &config);
    assert_eq!(first.trace_digest, again.trace_digest);
    assert_eq!(first.events, again.events);
    assert_eq!(first.sim_ms, again.sim_ms);
    assert_eq!(first.final_state, again.final_state);
    assert!(!first.final_state.is_empty());
    let other = sim::run(8, &config);
    assert_ne!(
        first.trace_digest, other.trace_digest,
        "another seed is another run"
    );
}

/// The invariants violated over the first [`BUG_SEEDS`] seeds with `bugs` planted.
fn caught(bugs: Bugs) -> BTreeSet<&'static str> {
    let config = SimConfig {
        bugs,
        ..SimConfig::default()
    };
    run_seeds(0..BUG_SEEDS, &config)
        .iter()
        .flat_map(|r| r.violations.iter().map(|v| v.invariant))
        .collect()
}

#[test]
fn a_driver_that_applies_an_entry_twice_is_caught() {
    let found = caught(Bugs {
        apply_twice: true,
        ..Bugs::default()
    });
    assert!(found.contains("entry_applied_twice"), "{found:?}");
}

#[test]
fn a_target_agent_that_ignores_shadow_release_is_caught() {
    let found = caught(Bugs {
        ignore_shadow_release: true,
        ..Bugs::default()
    });
    assert!(found.contains("rolled_back_shadow_serves"), "{found:?}");
}

#[test]
fn a_fence_that_does_nothing_is_caught_as_two_writers_and_lost_writes() {
    let found = caught(Bugs {
        fence_ignored: true,
        ..Bugs::default()
    });
    assert!(found.contains("single_writer"), "{found:?}");
    assert!(found.contains("acknowledged_data_write_lost"), "{found:?}");
}
