//! `umbra chaos simulate` as CI and a person run it: the real binary, its `--json` summary as
//! the last line of standard output, one seed replayed exactly, and a mistake refused. And
//! `umbra chaos plan --seed S`: one plan per seed, which `umbra drill --fault-plan` reads; a
//! malformed plan is refused before the drill touches a cluster, as is a demo p99 bound that is
//! not above zero.

use std::process::{Command, Output};

fn umbra(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_umbra"))
        .args(args)
        .output()
        .expect("run umbra")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_json_summary_is_the_last_line_with_the_seeds_and_no_violations() {
    let out = umbra(&[
        "chaos", "simulate", "--seeds", "3", "--seed", "10", "--json",
    ]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = text.lines().last().expect("a summary line");
    let summary: serde_json::Value = serde_json::from_str(last).expect("JSON");
    assert_eq!(summary["seeds"], 3);
    assert_eq!(summary["first_seed"], 10);
    assert_eq!(summary["violations"], serde_json::json!([]));
    assert!(summary["elapsed_ms"].is_u64());
    let ended = summary["completed"].as_u64().unwrap() + summary["rolled_back"].as_u64().unwrap();
    assert_eq!(ended, 3, "each seed's migration ended: {summary}");
}

#[test]
fn one_seed_alone_is_replayed_exactly() {
    let first = umbra(&["chaos", "simulate", "--seed", "4"]);
    let again = umbra(&["chaos", "simulate", "--seed", "4"]);
    assert!(first.status.success(), "{}", stdout(&first));
    let digest = |o: &Output| {
        stdout(o)
            .lines()
            .find(|l| l.contains("trace digest"))
            .map(str::to_owned)
    };
    assert!(digest(&first).is_some(), "{}", stdout(&first));
    assert_eq!(digest(&first), digest(&again));
    assert!(stdout(&first).contains("1 seed from 4: 0 violations"));
}

#[test]
fn zero_seeds_is_refused_with_what_to_do() {
    let out = umbra(&["chaos", "simulate", "--seeds", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seeds must be at least 1"));
}

#[test]
fn a_seed_prints_one_fault_plan_the_drill_reads() {
    let first = umbra(&["chaos", "plan", "--seed", "9", "--process", "agent-eu-west"]);
    assert!(first.status.success());
    let again = umbra(&["chaos", "plan", "--seed", "9", "--process", "agent-eu-west"]);
    assert_eq!(stdout(&first), stdout(&again));
    let plan = umbra_chaos::plan::FaultPlan::from_toml(&stdout(&first)).expect("a plan");
    assert_eq!(plan.seed, Some(9));
    assert!(!plan.faults.is_empty());
    assert_ne!(
        stdout(&first),
        stdout(&umbra(&["chaos", "plan", "--seed", "10"]))
    );
}

#[test]
fn a_malformed_fault_plan_is_refused_before_the_drill_starts() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, "[[faults]]\nkind = \"flood\"\nafter_ms = 1\n").unwrap();
    let out = umbra(&[
        "drill",
        "evacuate",
        "--region",
        "us-east",
        "--fault-plan",
        plan.to_str().unwrap(),
        "--front-metrics",
        "127.0.0.1:1",
        "--api",
        "https://127.0.0.1:1",
        "--certs",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown fault kind \"flood\"; the kinds are errors, latency, pause"),
        "{stderr}"
    );
}

#[test]
fn a_demo_p99_bound_that_is_not_above_zero_is_refused_before_anything_starts() {
    for bad in ["0", "-5", "NaN", "fast"] {
        let out = umbra(&["demo", &format!("--slo-p99-ms={bad}")]);
        assert!(!out.status.success(), "--slo-p99-ms {bad} was taken");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("give milliseconds above zero"),
            "--slo-p99-ms {bad}: {stderr}"
        );
        assert!(!stderr.contains("started orchestrator"), "{stderr}");
    }
}
