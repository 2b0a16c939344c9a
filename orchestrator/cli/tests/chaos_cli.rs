//! `umbra chaos simulate` as CI and a person run it: the real binary, its `--json` summary as
//! the last line of standard output, one seed replayed exactly, and a mistake refused.

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
