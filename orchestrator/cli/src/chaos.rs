//! `umbra chaos plan --seed S`: prints the fault plan a seed gives (`umbra_chaos::plan`), for
//! `umbra drill --fault-plan` (or, with `--campaign`, the one `umbra chaos campaign --seed S`
//! runs; `campaign` is that command).
//!
//! `umbra chaos simulate`: runs the seeded whole-cluster simulation (`umbra_chaos::sim`) over a
//! range of seeds and reports every invariant that did not hold, each with the one command
//! that replays its seed. A table and a progress bar for people; `--json` prints one JSON
//! object as the last line, for CI. It fails (status 1) when any invariant was violated.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::bail;
use serde::Serialize;
use umbra_chaos::plan::{FaultPlan, Scope};
use umbra_chaos::sim::{self, SeedReport, SimConfig, Violation};

/// Seeds run when neither `--seeds` nor `--seed` is given.
const DEFAULT_SEEDS: u64 = 100;

/// Arguments of `umbra chaos`.
#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    #[command(subcommand)]
    command: ChaosCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ChaosCommand {
    /// Simulate the whole control plane (3 Raft replicas, the executor, 2 agents, clients)
    /// under seeded faults, one seed after another, and check its invariants.
    Simulate(SimulateArgs),
    /// Print the fault plan (TOML) a seed gives, for `umbra drill evacuate --fault-plan`.
    Plan(PlanArgs),
    /// Run the demo's real processes through one migration per seed, each under the fault
    /// plan its seed gives (kills and restarts, pauses, partitions, packet loss, failing
    /// instances, full data disks, wall-clock jumps, the operator's abort), and judge every
    /// run on the campaign's invariants.
    Campaign(crate::campaign::CampaignArgs),
}

/// Arguments of `umbra chaos plan`. The scope defaults to the demo's topology.
#[derive(Debug, clap::Args)]
struct PlanArgs {
    /// The seed; the same seed and scope always give the same plan.
    #[arg(long)]
    seed: u64,
    /// A region the plan may name (repeat; default: the demo's us-east, eu-west, ap-south).
    #[arg(long = "region")]
    regions: Vec<String>,
    /// A service the plan may name (repeat; default: the demo's shop).
    #[arg(long = "service")]
    services: Vec<String>,
    /// A process `pause` faults may stop, as the drill will be given its pid (`--pid
    /// NAME=PID`; repeat; default: none, so no pauses).
    #[arg(long = "process")]
    processes: Vec<String>,
    /// The plan `umbra chaos campaign --seed S` runs (the demo supervisor's processes, roles
    /// included), instead of a drill's.
    #[arg(long, conflicts_with_all = ["regions", "services", "processes"])]
    campaign: bool,
}

/// Arguments of `umbra chaos simulate`.
#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// How many seeds to run (from `--seed`, or 0). Default: 100, or 1 when `--seed` is
    /// given alone.
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed; alone, replays exactly that seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Run without faults (the baseline).
    #[arg(long)]
    no_faults: bool,
    /// Print one JSON object (the last line) instead of a table.
    #[arg(long)]
    json: bool,
}

/// The `--json` summary.
#[derive(Debug, Serialize)]
struct Summary {
    seeds: u64,
    first_seed: u64,
    violations: Vec<Violation>,
    replay: Vec<String>,
    elapsed_ms: u64,
    ms_per_seed: f64,
    simulated_ms: u64,
    events: u64,
    rolled_back: u64,
    completed: u64,
}

/// Runs `umbra chaos`.
pub fn run(args: ChaosArgs) -> anyhow::Result<()> {
    match args.command {
        ChaosCommand::Simulate(args) => simulate(args),
        ChaosCommand::Plan(args) => {
            print!("{}", plan(args).to_toml());
            Ok(())
        }
        ChaosCommand::Campaign(args) => crate::campaign::run(args),
    }
}

fn plan(args: PlanArgs) -> FaultPlan {
    if args.campaign {
        return FaultPlan::generate(args.seed, &crate::campaign::generating_scope());
    }
    let or_demo = |given: Vec<String>, demo: Vec<String>| -> BTreeSet<String> {
        if given.is_empty() { demo } else { given }
            .into_iter()
            .collect()
    };
    let demo_regions = umbra_demo::scenario::DemoTopology::new(0).region_names();
    let scope = Scope {
        regions: or_demo(args.regions, demo_regions),
        services: or_demo(
            args.services,
            vec![umbra_demo::scenario::SERVICE.to_owned()],
        ),
        processes: args.processes.into_iter().collect(),
        ..Scope::default()
    };
    FaultPlan::generate(args.seed, &scope)
}

fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let (first, count) = crate::seeds::seed_range(args.seeds, args.seed, DEFAULT_SEEDS)?;
    let config = SimConfig {
        faults: !args.no_faults,
        ..SimConfig::default()
    };
    let bar = crate::seeds::seeds_bar(count, args.json)?;
    let started = Instant::now();
    let mut summary = Summary {
        seeds: count,
        first_seed: first,
        violations: Vec::new(),
        replay: Vec::new(),
        elapsed_ms: 0,
        ms_per_seed: 0.0,
        simulated_ms: 0,
        events: 0,
        rolled_back: 0,
        completed: 0,
    };
    let mut single = None;
    for seed in first..first.saturating_add(count) {
        bar.set_message(seed.to_string());
        let report = sim::run(seed, &config);
        summary.simulated_ms += report.sim_ms;
        summary.events += report.events;
        for (_, phase) in &report.migrations {
            match phase.as_str() {
                "rolled_back" => summary.rolled_back += 1,
                "completed" => summary.completed += 1,
                _ => {}
            }
        }
        if !report.violations.is_empty() {
            summary.replay.push(sim::replay_command(seed));
            bar.suspend(|| print_failure(&report, args.json));
            summary.violations.extend(report.violations.iter().cloned());
        }
        if count == 1 {
            single = Some(report);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    summary.ms_per_seed = summary.elapsed_ms as f64 / count as f64;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        if let Some(report) = &single {
            print_run(report);
        }
        println!(
            "{} seed{} from {}: {} violations; {} migrations completed, {} rolled back; {:.1} s ({:.0} ms a seed, {} simulated s)",
            count,
            if count == 1 { "" } else { "s" },
            first,
            summary.violations.len(),
            summary.completed,
            summary.rolled_back,
            summary.elapsed_ms as f64 / 1_000.0,
            summary.ms_per_seed,
            summary.simulated_ms / 1_000,
        );
    }
    if !summary.violations.is_empty() {
        bail!(
            "{} invariant violations in {} seeds; replay one with `{}`",
            summary.violations.len(),
            summary.replay.len(),
            summary.replay[0]
        );
    }
    Ok(())
}

/// A failing seed's violations and the command that replays it (on stderr with `--json`, so
/// the last line of stdout stays the summary).
fn print_failure(report: &SeedReport, json: bool) {
    let mut text = format!("seed {} FAILED:\n", report.seed);
    for v in &report.violations {
        text.push_str(&format!(
            "  {} at {} ms: {}\n",
            v.invariant, v.at_ms, v.detail
        ));
    }
    text.push_str(&format!("  replay: {}", sim::replay_command(report.seed)));
    if json {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
}

/// One seed in detail.
fn print_run(report: &SeedReport) {
    println!(
        "seed {}: {} events over {:.1} simulated s; target fails: {}",
        report.seed,
        report.events,
        report.sim_ms as f64 / 1_000.0,
        report.target_fails
    );
    let faults: Vec<String> = report
        .faults
        .iter()
        .map(|(kind, n)| format!("{kind} ×{n}"))
        .collect();
    println!(
        "  faults: {}",
        if faults.is_empty() {
            "none".to_owned()
        } else {
            faults.join(", ")
        }
    );
    for (id, phase) in &report.migrations {
        println!("  migration {id}: {phase}");
    }
    println!("  trace digest {:016x}", report.trace_digest);
}
