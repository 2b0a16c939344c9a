//! The real-process fault campaign, through the product's binary: `umbra chaos campaign
//! --json` runs the demo's processes (three orchestrators, three agents with their fronts and
//! sample instances, reads and writes by name through DNS) through one migration per seed,
//! under the fault plan the seed gives: orchestrators and agents SIGKILLed and started again
//! by the demo's supervisor, paused (seen stopped in `/proc` before the pause counts),
//! orchestrators and agents cut off, from everything or from one orchestrator only, or losing
//! packets through nftables, or each packet held a while (iptables and a netfilter queue the
//! campaign reads), instances failing or slow. Each
//! run is judged on the campaign's invariants (`umbra_chaos::campaign::INVARIANTS`): the
//! migration ends, a rollback has a data-plane fault behind it, steps apply once, no
//! acknowledged write is lost, no request fails under control-plane faults, the replicas
//! agree, a rolled-back shadow pool is gone, every fault was injected and undone, and the
//! instances' write-ahead logs show one writer at a time.
//!
//! Twenty seeds in two tests of ten (two runs at a time), so each stays within nextest's
//! limit; `umbra chaos campaign --seeds 200` is the bench-sized run. One more run carries out
//! a plan written by hand (`--plan`): the single writer moves to the target and back; one
//! more fills the source's data disk; one more steps the wall clocks of the leader (forward,
//! then back) and of both agents; and one more has the operator abort the migration at its
//! last step, where the single writer moves. Needs root (nftables for
//! the partitions, iptables for the delays, a tmpfs mount for the disks) and libfaketime for
//! the clocks
//! (`.ci/install-deps`): without them the campaign fails, loudly.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};
use serde_json::Value;

/// Runs `umbra chaos campaign` over `seeds` seeds from `first`, two at a time; the summary.
fn campaign(first: u64, seeds: u64) -> anyhow::Result<Value> {
    let (first, seeds) = (first.to_string(), seeds.to_string());
    let args = ["--seed", &first, "--seeds", &seeds, "--parallel", "2"];
    campaign_with(&args)
}

/// Runs `umbra chaos campaign --json` with `args`; the summary, once it found no violation.
fn campaign_with(args: &[&str]) -> anyhow::Result<Value> {
    let bin = umbra_testkit::bin_dir()?;
    let output = Command::new(bin.join("umbra"))
        .args(["chaos", "campaign", "--json"])
        .args(args)
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

/// Runs the one hand-written plan `faults` (TOML) through `umbra chaos campaign --plan`; the
/// summary, once it found no violation, and the run's `report.json`.
fn one_plan(faults: &str) -> anyhow::Result<(Value, Value)> {
    let dir = tempfile::tempdir()?;
    let (summary, report, _) = one_plan_in(&dir, faults)?;
    Ok((summary, report))
}

/// [`one_plan`] with the run's files kept in `dir`; also where they are.
fn one_plan_in(
    dir: &tempfile::TempDir,
    faults: &str,
) -> anyhow::Result<(Value, Value, std::path::PathBuf)> {
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, faults)?;
    let keep = dir.path().join("runs");
    let summary = campaign_with(&[
        "--plan",
        plan.to_str().context("plan path")?,
        "--keep",
        keep.to_str().context("keep path")?,
    ])?;
    let run = keep.join("seed-0");
    let report = serde_json::from_slice(&std::fs::read(run.join("report.json"))?)?;
    Ok((summary, report, run))
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
        &["kill", "pause", "partition", "loss", "delay", "errors"],
    )?;
    // Some of the network faults acted only between two processes (an agent and the leader,
    // two orchestrators).
    let between: BTreeMap<String, u64> = serde_json::from_value(summary["fired_between"].clone())?;
    ensure!(
        between.values().sum::<u64>() > 0,
        "no fault between two processes fired: {between:?}"
    );
    Ok(())
}

#[test]
fn seeds_10_to_19_hold_every_invariant() -> anyhow::Result<()> {
    let summary = campaign(10, 10)?;
    check(&summary, 10, &["kill", "pause", "loss", "delay"])
}

/// The target's instances fail half their requests from the last step (100 %) on. The target
/// is promoted before that step's share applies, so the migration rolls back only after the
/// single writer moved: the source follows the target, the target is fenced and the source
/// promoted again. Every invariant holds (`single_writer` included), no acknowledged write is
/// lost, and the logs show the writer move to the target and back.
#[test]
fn a_rollback_after_the_promotion_hands_the_writer_back_with_one_writer_at_a_time()
-> anyhow::Result<()> {
    let (summary, report) = one_plan(
        "[[faults]]\nkind = \"errors\"\nregion = \"target\"\nservice = \"shop\"\n\
         rate = 0.5\nat_phase = \"cutting_over[2]\"\n",
    )?;
    check(&summary, 1, &["errors"])?;
    assert_eq!(summary["runs"][0]["outcome"], "rolled_back", "{summary}");
    let writes = &report["writes"];
    assert_eq!(writes["acknowledged_missing"], 0, "{writes}");
    ensure!(
        writes["acknowledged"].as_u64() > Some(0),
        "no write was acknowledged: {writes}"
    );
    // A log that saw it all: the source's writer, the target's promoted shadow (named after
    // the migration), then the source's writer again.
    let shadow = format!("{}-", report["migration"].as_str().context("migration id")?);
    let hand_backs: Vec<Vec<&str>> = report["wals"]
        .as_array()
        .context("the report's logs")?
        .iter()
        .map(|wal| {
            let mut writers: Vec<&str> = wal["runs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|run| run["writer"].as_str())
                .collect();
            writers.dedup();
            writers
        })
        .filter(|writers| {
            writers.len() >= 3
                && writers[1].starts_with(&shadow)
                && writers[0] == writers[2]
                && !writers[0].starts_with(&shadow)
        })
        .collect();
    ensure!(
        !hand_backs.is_empty(),
        "no log shows the writer moving to the target and back: {}",
        report["wals"]
    );
    Ok(())
}

/// The source region's data disk (a 64 MiB tmpfs under its instances) filled to the last byte
/// for 3 s from the first cutover step. Its instances refuse each write they cannot make
/// durable with a 507 and keep nothing of it; reads go on; once the ballast is removed the
/// same instances take writes again, without a restart. Every invariant holds: no
/// acknowledged write is lost, one writer at a time.
#[test]
fn a_full_data_disk_refuses_writes_with_507_loses_none_and_takes_writes_once_freed()
-> anyhow::Result<()> {
    let (summary, report) = one_plan(
        "[[faults]]\nkind = \"disk_full\"\nregion = \"source\"\nfor_ms = 3000\n\
         at_phase = \"cutting_over[0]\"\n",
    )?;
    check(&summary, 1, &["disk_full"])?;
    let writes = &report["writes"];
    assert_eq!(writes["acknowledged_missing"], 0, "{writes}");
    let failed = report["failed_requests"]
        .as_array()
        .context("failed_requests")?;
    ensure!(
        failed
            .iter()
            .any(|f| f["status"] == 507 && f["method"] == "PUT"),
        "no write was refused for the full disk: {failed:?}"
    );
    ensure!(
        !failed
            .iter()
            .any(|f| f["status"] == 507 && f["method"] == "GET"),
        "a read failed for the full disk: {failed:?}"
    );
    // The source's logs took records stamped after the ballast was removed.
    let fault = &report["faults"][0];
    let source = report["from"].as_str().context("from")?;
    assert_eq!(fault["hit"], source, "{fault}");
    let undone = chrono::DateTime::parse_from_rfc3339(fault["undone"].as_str().context("undone")?)?
        .timestamp_millis();
    let written_after = report["wals"]
        .as_array()
        .context("the report's logs")?
        .iter()
        .filter(|wal| {
            wal["instance"]
                .as_str()
                .is_some_and(|i| i.starts_with(&format!("{source}/")))
        })
        .flat_map(|wal| wal["runs"].as_array().into_iter().flatten())
        .filter_map(|run| run["to_ms"].as_i64())
        .any(|to_ms| to_ms > undone);
    ensure!(
        written_after,
        "no log in {source} took a write after its disk was freed: {}",
        report["wals"]
    );
    Ok(())
}

/// Whether `hit`'s log in the kept run `run` holds a line stamped by its clock stepped
/// `stepped_ms` off the real time, written while `fault` (from the report) was in force: the
/// process read the stepped clock. The steps are minutes; a minute either way is margin.
fn log_shows_step(run: &Path, fault: &Value, stepped_ms: i64) -> anyhow::Result<bool> {
    let hit = fault["hit"].as_str().context("hit")?;
    let log = match hit.strip_prefix("agent-") {
        Some(region) => run.join(format!("agent-{region}")).join("agent.log"),
        None => run.join(hit).join("node.log"),
    };
    let at = |field: &str| -> anyhow::Result<i64> {
        let text = fault[field]
            .as_str()
            .with_context(|| format!("{field}: {fault}"))?;
        Ok(chrono::DateTime::parse_from_rfc3339(text)?.timestamp_millis())
    };
    let in_force = at("fired")? - 60_000..=at("undone")? + 60_000;
    Ok(std::fs::read_to_string(&log)?.lines().any(|line| {
        line.split_whitespace()
            .next()
            .and_then(|stamp| chrono::DateTime::parse_from_rfc3339(stamp).ok())
            .is_some_and(|stamp| {
                let stamp = stamp.timestamp_millis();
                in_force.contains(&(stamp - stepped_ms)) && !in_force.contains(&stamp)
            })
    }))
}

/// While the shadows warm, the source's agent's wall clock steps two minutes ahead for 3 s
/// and the leader's five minutes back until the migration's end; at the first cutover step
/// the leader then (another node) steps ten minutes ahead for 3 s and the target's agent ten
/// minutes ahead until the end. libfaketime moves only the wall clock (tokio's timers and
/// every `Instant` keep the kernel's monotonic clock), as an NTP step does. The migration
/// completes and every invariant holds (no request fails for it): a leader whose clock
/// disagrees with its peers' stops executing and hands leadership over (`node::clock`), where
/// a leader five minutes behind would hold the cutover, scheduled on the wall clock, back by
/// five minutes; and phases are timed on the leader's monotonic clock. Each stepped process
/// was seen with libfaketime loaded when its clock stepped, and the two stepped until the end
/// did read the stepped clock: their logs, stamped by their own wall clocks, hold lines that
/// far off the real time (an agent may write nothing in 3 s).
#[test]
fn wall_clock_jumps_of_the_leader_and_the_agents_break_no_invariant() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let steps = [
        ("agent-source", 120_000i64, "for_ms = 3000", "warming"),
        ("leader", -300_000, "", "warming"),
        ("leader", 600_000, "for_ms = 3000", "cutting_over[0]"),
        ("agent-target", 600_000, "", "cutting_over[0]"),
    ];
    let plan: String = steps
        .iter()
        .map(|(process, ms, lasts, phase)| {
            format!(
                "[[faults]]\nkind = \"clock_jump\"\nprocess = \"{process}\"\nms = {ms}\n\
                 {lasts}\nat_phase = \"{phase}\"\n"
            )
        })
        .collect();
    let (summary, report, run) = one_plan_in(&dir, &plan)?;
    check(&summary, 1, &["clock_jump"])?;
    assert_eq!(summary["fired"]["clock_jump"], 4, "{summary}");
    assert_eq!(summary["runs"][0]["outcome"], "completed", "{summary}");
    let faults = report["faults"].as_array().context("the report's faults")?;
    ensure!(
        faults[1]["hit"] != faults[2]["hit"],
        "the leader stepped back five minutes still led at the first cutover step: {} then {}",
        faults[1]["hit"],
        faults[2]["hit"]
    );
    for (fault, (_, stepped_ms, lasts, _)) in faults.iter().zip(steps) {
        ensure!(
            fault["error"].is_null() && fault["undone"].is_string(),
            "{fault}"
        );
        let detail = fault["detail"].as_str().unwrap_or_default();
        ensure!(
            detail.contains(&format!("stepped {stepped_ms:+} ms (pid")),
            "{fault}"
        );
        ensure!(
            !lasts.is_empty() || log_shows_step(&run, fault, stepped_ms)?,
            "{}'s log shows no line stamped {stepped_ms:+} ms off while {fault} was in force",
            fault["hit"]
        );
    }
    Ok(())
}

/// The operator aborts the migration (the API's rollback) once it reaches its last step,
/// where the single writer moves to the target: before the fence, inside it or after the
/// promotion, whichever the abort meets. The migration rolls back, and as an abort is a
/// control-plane fault, every invariant holds with it: no request fails outside the fence
/// window, no acknowledged write is lost, one writer at a time, the shadows are released.
#[test]
fn an_operator_abort_at_the_writers_move_rolls_back_losing_nothing() -> anyhow::Result<()> {
    let (summary, report) =
        one_plan("[[faults]]\nkind = \"abort\"\nat_phase = \"cutting_over[2]\"\n")?;
    check(&summary, 1, &["abort"])?;
    assert_eq!(summary["runs"][0]["outcome"], "rolled_back", "{summary}");
    let fault = &report["faults"][0];
    assert_eq!(fault["hit"], report["migration"], "{fault}");
    let writes = &report["writes"];
    assert_eq!(writes["acknowledged_missing"], 0, "{writes}");
    ensure!(
        writes["acknowledged"].as_u64() > Some(0),
        "no write was acknowledged: {writes}"
    );
    Ok(())
}
