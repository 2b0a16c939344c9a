//! `umbra chaos campaign`: the demo's real processes (three orchestrators, three agents with
//! their fronts and instances, traffic by name with reads and writes) run one migration per
//! seed under the fault plan that seed gives (`umbra_chaos::plan`, with the demo supervisor's
//! kills and restarts, pauses, partitions, packet loss and full data disks, and wall-clock
//! jumps in plans written by hand, `umbra_demo::faults`), and every
//! run is judged on the campaign's invariants (`umbra_chaos::campaign`). One line per seed
//! and a progress bar for people; `--json` prints one JSON object as the last line. Status 1
//! when any invariant broke; each failing seed's files are kept and named, with the command
//! that runs it again.
//!
//! `--plan FILE` runs one plan written by hand instead, on the same timeline and judged the
//! same way; `umbra demo --fault-plan FILE` does it on the demo's own, longer timeline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::Serialize;
use umbra_chaos::campaign::{FaultFacts, RunFacts, Violation, judge};
use umbra_chaos::plan::{FaultPlan, Scope};
use umbra_demo::report::DemoReport;
use umbra_demo::scenario::{DemoTiming, DemoTopology, SAFETY_ONLY_P99_MS};
use umbra_demo::{DemoError, DemoOptions};

/// Seeds run when `--seeds` is not given (and `--seed` is not given alone).
const DEFAULT_SEEDS: u64 = 20;

/// Arguments of `umbra chaos campaign`.
#[derive(Debug, clap::Args)]
pub struct CampaignArgs {
    /// How many seeds to run (from `--seed`, or 0). Default: 20, or 1 when `--seed` is given
    /// alone.
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed; alone, runs exactly that seed's plan again.
    #[arg(long)]
    seed: Option<u64>,
    /// Reads per second of the traffic client.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Writes per second beside the reads (each read back at the end).
    #[arg(long, default_value_t = 20.0)]
    write_rate: f64,
    /// Keep every run's certificates, configs, data and logs under this directory (one
    /// `seed-N` directory each); by default only failing runs' files are kept.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Runs at a time (each is seven processes and their instances, about a third of a core
    /// in a debug build).
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Print one JSON object (the last line) instead of the table.
    #[arg(long)]
    json: bool,
    /// Run this fault plan (TOML, written by hand) once instead of seeded ones: a fault at
    /// the moment a test or a bug report needs it.
    #[arg(long, conflicts_with_all = ["seeds", "seed"])]
    plan: Option<PathBuf>,
}

/// One run, as the summary shows it.
#[derive(Debug, Serialize)]
struct Run {
    seed: u64,
    outcome: String,
    faults: Vec<String>,
    requests: u64,
    failed: u64,
    writes_acknowledged: u64,
    secs: f64,
    violations: usize,
}

/// The `--json` summary.
#[derive(Debug, Serialize)]
struct Summary {
    seeds: u64,
    first_seed: u64,
    runs: Vec<Run>,
    /// How many faults of each kind fired over the campaign.
    fired: BTreeMap<String, u64>,
    /// How many of the partitions, losses and delays that fired acted only on the link
    /// between two processes (a `peer`), by kind.
    fired_between: BTreeMap<String, u64>,
    violations: Vec<Violation>,
    /// The command that runs each failing seed again, and where its files are.
    replay: Vec<String>,
    elapsed_ms: u64,
}

/// What a seed's plan is drawn from: the scope of the demo's supervisor, what a campaign plan
/// may name.
pub fn generating_scope() -> Scope {
    umbra_demo::faults::scope(&DemoTopology::new(0).region_names(), 3)
}

/// The demo's options for one campaign run: its compressed timeline and a small load.
fn options(args: &CampaignArgs, bin_dir: &Path, plan: FaultPlan, dir: PathBuf) -> DemoOptions {
    let mut options = DemoOptions::new(bin_dir.to_owned());
    options.load.rate_per_sec = args.rate;
    options.load.write_rate_per_sec = args.write_rate;
    // The campaign judges safety, not speed: the runs' SLO bounds only errors (latency
    // faults still count as data-plane faults).
    options.load.slo_max_p99_ms = SAFETY_ONLY_P99_MS;
    options.steady_secs = 3;
    options.settle_secs = 2;
    options.min_requests = 0;
    options.timing = DemoTiming {
        lead_time_secs: 10,
        analysis_window_secs: 3,
        ..DemoTiming::default()
    };
    options.work_dir = Some(dir);
    options.fault_plan = Some(plan);
    options
}

/// What a run recorded, for the judge.
pub fn facts(result: &Result<DemoReport, DemoError>, plan: &FaultPlan) -> RunFacts {
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            return RunFacts {
                error: Some(error.to_string()),
                faults: plan
                    .faults
                    .iter()
                    .map(|f| FaultFacts {
                        kind: f.kind.clone(),
                        hit: None,
                        error: None,
                    })
                    .collect(),
                ..RunFacts::default()
            };
        }
    };
    RunFacts {
        error: None,
        outcome: report.outcome.clone(),
        source: report.from.clone(),
        target: report.to.clone(),
        faults: plan
            .faults
            .iter()
            .zip(&report.faults)
            .map(|(fault, seen)| FaultFacts {
                kind: fault.kind.clone(),
                hit: seen.fired.as_ref().and(seen.hit.clone()),
                error: seen.error.clone(),
            })
            .collect(),
        requests_failed: report.requests_failed,
        failed_in_fence_window: report.failed_in_fence_window,
        first_failures: report
            .failed_requests
            .iter()
            .take(3)
            .map(|f| {
                format!(
                    "{} {} via {}: {:?} {}",
                    f.method,
                    f.path,
                    f.front.as_deref().unwrap_or("-"),
                    f.outcome,
                    f.detail
                )
            })
            .collect(),
        acknowledged_missing: report.writes.acknowledged_missing,
        first_missing: report.writes.first_missing.clone(),
        step_counts: report.audit_step_counts.clone(),
        identical_state: report.identical_state,
        shadow_instances_left: report.shadow_instances_left,
        wals: report.wals.clone(),
    }
}

/// What one seed's run gave.
struct SeedResult {
    run: Run,
    violations: Vec<Violation>,
    /// The kinds of the faults that fired.
    fired: Vec<&'static str>,
    /// The kinds of those that acted only between two processes.
    fired_between: Vec<&'static str>,
    dir: PathBuf,
}

/// One run: the demo under `plan` (seed `seed`'s, or the one written by hand), the judgement.
async fn run_seed(
    args: &CampaignArgs,
    bin_dir: &Path,
    root: &Path,
    plan: FaultPlan,
    seed: u64,
) -> anyhow::Result<SeedResult> {
    let dir = root.join(format!("seed-{seed}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("fault-plan.toml"), plan.to_toml())
        .with_context(|| format!("writing {}", dir.display()))?;
    let started = Instant::now();
    let options = options(args, bin_dir, plan.clone(), dir.clone());
    let log = std::sync::Mutex::new(Vec::<String>::new());
    let progress = |line: &str| log.lock().expect("log lock").push(line.to_owned());
    let result = umbra_demo::run(&options, &progress).await;
    let lines = log.into_inner().expect("log lock");
    let _ = std::fs::write(dir.join("progress.log"), lines.join("\n"));
    if let Ok(report) = &result {
        // Beside the progress, the whole report: which writes each instance accepted, when.
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", dir.display()))?;
    }
    let facts = facts(&result, &plan);
    let violations = judge(plan.seed, &facts);
    let fired_kinds = |between: bool| {
        facts
            .faults
            .iter()
            .filter(|f| f.hit.is_some() && (!between || f.kind.peer().is_some()))
            .map(|f| f.kind.name())
            .collect::<Vec<_>>()
    };
    let (fired, fired_between) = (fired_kinds(false), fired_kinds(true));
    let run = Run {
        seed,
        outcome: match &result {
            Ok(r) => r.outcome.clone(),
            Err(_) => "error".to_owned(),
        },
        faults: plan
            .faults
            .iter()
            .map(|f| format!("{} {}", f.kind, f.when))
            .collect(),
        requests: result.as_ref().map_or(0, |r| r.requests_total),
        failed: result.as_ref().map_or(0, |r| r.requests_failed),
        writes_acknowledged: result.as_ref().map_or(0, |r| r.writes.acknowledged),
        secs: started.elapsed().as_secs_f64(),
        violations: violations.len(),
    };
    Ok(SeedResult {
        run,
        violations,
        fired,
        fired_between,
        dir,
    })
}

/// Runs `umbra chaos campaign`.
pub fn run(args: CampaignArgs) -> anyhow::Result<()> {
    let written = match &args.plan {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the fault plan {}", path.display()))?;
            let plan =
                FaultPlan::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
            Some(plan)
        }
        None => None,
    };
    let (first, count) = match &written {
        Some(plan) => (plan.seed.unwrap_or(0), 1),
        None => crate::seeds::seed_range(args.seeds, args.seed, DEFAULT_SEEDS)?,
    };
    if !(1..=4).contains(&args.parallel) {
        bail!("--parallel must be 1 to 4 runs at a time on one machine");
    }
    let exe = std::env::current_exe().context("locating the umbra binary")?;
    let bin_dir = exe
        .parent()
        .context("the umbra binary has no directory")?
        .to_owned();
    let (root, temp) = match &args.keep {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("umbra-campaign-")
                .tempdir()
                .context("creating the campaign's temp dir")?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let scope = generating_scope();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let bar = crate::seeds::seeds_bar(count, args.json)?;
    let started = Instant::now();
    let mut summary = Summary {
        seeds: count,
        first_seed: first,
        runs: Vec::new(),
        fired: BTreeMap::new(),
        fired_between: BTreeMap::new(),
        violations: Vec::new(),
        replay: Vec::new(),
        elapsed_ms: 0,
    };
    let mut kept = 0;
    let campaign = async {
        let mut runs = futures::stream::iter(first..first.saturating_add(count))
            .map(|seed| {
                let plan = written
                    .clone()
                    .unwrap_or_else(|| FaultPlan::generate(seed, &scope));
                run_seed(&args, &bin_dir, &root, plan, seed)
            })
            .buffered(args.parallel);
        while let Some(result) = runs.next().await {
            let SeedResult {
                run,
                violations,
                fired,
                fired_between,
                dir,
            } = result?;
            bar.set_message(run.seed.to_string());
            let line = format!(
                "seed {}: {} in {:.0} s, {} requests ({} failed), {} writes acknowledged; {}; {}",
                run.seed,
                run.outcome,
                run.secs,
                run.requests,
                run.failed,
                run.writes_acknowledged,
                run.faults.join("; "),
                if violations.is_empty() {
                    "ok".to_owned()
                } else {
                    format!("{} VIOLATIONS", violations.len())
                }
            );
            bar.suspend(|| {
                if args.json {
                    eprintln!("{line}");
                } else {
                    println!("{line}");
                }
                for v in &violations {
                    eprintln!("  {}: {}", v.invariant, v.detail);
                }
            });
            for kind in fired {
                *summary.fired.entry(kind.to_owned()).or_insert(0) += 1;
            }
            for kind in fired_between {
                *summary.fired_between.entry(kind.to_owned()).or_insert(0) += 1;
            }
            if violations.is_empty() {
                if args.keep.is_none() {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            } else {
                kept += 1;
                let which = match &args.plan {
                    Some(path) => format!("--plan {}", path.display()),
                    None => format!("--seed {}", run.seed),
                };
                summary.replay.push(format!(
                    "umbra chaos campaign {which} --rate {} --write-rate {} (files: {})",
                    args.rate,
                    args.write_rate,
                    dir.display()
                ));
            }
            summary.violations.extend(violations);
            summary.runs.push(run);
            bar.inc(1);
        }
        anyhow::Ok(())
    };
    runtime.block_on(async {
        tokio::select! {
            done = campaign => done,
            // Dropping the runs drops their supervisors, which stop every process.
            _ = tokio::signal::ctrl_c() => {
                bail!("interrupted; stopped everything the campaign started")
            }
        }
    })?;
    bar.finish_and_clear();
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    if kept > 0
        && let Some(temp) = temp
    {
        // The failing runs' files outlive the campaign: they are the evidence.
        let _ = temp.keep();
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "{count} seeds from {first}: {} violations; {} completed, {} rolled back; faults fired: {:?}, between two processes: {:?}; {:.0} s",
            summary.violations.len(),
            summary
                .runs
                .iter()
                .filter(|r| r.outcome == "completed")
                .count(),
            summary
                .runs
                .iter()
                .filter(|r| r.outcome == "rolled_back")
                .count(),
            summary.fired,
            summary.fired_between,
            summary.elapsed_ms as f64 / 1000.0
        );
    }
    if !summary.violations.is_empty() {
        bail!(
            "{} invariant violations in {} seeds; run one again with `{}`",
            summary.violations.len(),
            summary.replay.len(),
            summary.replay[0]
        );
    }
    Ok(())
}
