//! The real-process fault campaign, through the product's binary: `umbra chaos campaign
//! --json` runs the demo's processes (three orchestrators, three agents with their fronts and
//! sample instances, reads and writes by name through DNS) through one migration per seed,
//! under the fault plan the seed gives: orchestrators and agents SIGKILLed and started again
//! by the demo's supervisor, paused (seen stopped in `/proc` before the pause counts),
//! orchestrators cut off or losing packets through nftables, instances failing or slow. Each
//! run is judged on the campaign's invariants (`umbra_chaos::campaign::INVARIANTS`): the
//! migration ends, a rollback has a data-plane fault behind it, steps apply once, no
//! acknowledged write is lost, no request fails under control-plane faults, the replicas
//! agree, a rolled-back shadow pool is gone, and every fault was injected and undone.
//!
//! Twenty seeds in two tests of ten (two runs at a time), so each stays within nextest's
//! limit; `umbra chaos campaign --seeds 200` is the bench-sized run. Needs root and nftables
//! (`.ci/install-deps`), as the partitions do: without them the campaign fails, loudly.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, ensure};
use serde_json::Value;

/// Runs `umbra chaos campaign` over `seeds` seeds from `first`, two at a time; the summary.
fn campaign(first: u64, seeds: u64) -> anyhow::Result<Value> {
    let bin = umbra_testkit::bin_dir()?;
    let output = Command::new(bin.join("umbra"))
        .args([
            "chaos",
            "campaign",
            "--seed",
            &first.to_string(),
            "--seeds",
            &seeds.to_string(),
            "--parallel",
            "2",
            "--json",
        ])
        .output()
        .context("running umbra chaos campaign")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let summary: Value = serde_json::from_str(last)
        .with_context(|| format!("the campaign's last line is not its summary: {last:?}"))?;
    ensure!(
        output.status.success(),
        "the campaign failed: {}",
        summary["violations"]
    );
    Ok(summary)
}

/// The summary's checks: every seed ran, nothing broke, and the faults really fired.
fn check(summary: &Value, seeds: u64, kinds: &[&str]) -> anyhow::Result<()> {
    assert_eq!(summary["seeds"], seeds);
    assert_eq!(
        summary["runs"].as_array().map(Vec::len),
        Some(seeds as usize)
    );
    assert_eq!(summary["violations"], Value::Array(Vec::new()));
    let fired: BTreeMap<String, u64> = serde_json::from_value(summary["fired"].clone())?;
    for kind in kinds {
        ensure!(
            fired.get(*kind).copied().unwrap_or(0) > 0,
            "no {kind} fault fired in the campaign: {fired:?}"
        );
    }
    Ok(())
}

#[test]
fn seeds_0_to_9_hold_every_invariant_under_kills_pauses_partitions_and_failing_instances()
-> anyhow::Result<()> {
    let summary = campaign(0, 10)?;
    check(
        &summary,
        10,
        &["kill", "pause", "partition", "loss", "errors"],
    )
}

#[test]
fn seeds_10_to_19_hold_every_invariant() -> anyhow::Result<()> {
    let summary = campaign(10, 10)?;
    check(&summary, 10, &["kill", "pause", "loss"])
}
