//! `umbra`, the operator's CLI. Each subcommand lives in a module of its own beside this file
//! (`certs.rs`, `forecast.rs`, ...); this file only parses arguments, sets up logging and
//! dispatches. It must not hold subcommand logic.

mod apply;
mod backtest;
mod campaign;
mod capacity;
mod certs;
mod chaos;
mod demo;
mod drill;
mod forecast;
mod kv;
mod member;
mod migrate;
mod operator;
mod plot;
mod rollback;
mod seeds;
mod simulate;
mod status;

use clap::{Parser, Subcommand};

/// Umbra moves a service's traffic between regions without its users noticing.
#[derive(Debug, Parser)]
#[command(name = "umbra", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Migrate a service between regions on this machine: 3 orchestrators, 3 region agents,
    /// traffic through DNS; prints each phase and a final report, then stops everything.
    Demo(demo::DemoArgs),
    /// Put, get or delete a key in a running cluster's replicated store.
    Kv(kv::KvArgs),
    /// Add or remove an orchestrator (Raft member); remove then add replaces a node's disk.
    Member(member::MemberArgs),
    /// Issue a CA and per-node certificates for a cluster layout.
    Certs(certs::CertsArgs),
    /// Forecast a demand series (CSV or Prometheus): mean and quantiles per slice.
    Forecast(forecast::ForecastArgs),
    /// Rolling-origin backtest of the forecaster against seasonal naive baselines.
    Backtest(backtest::BacktestArgs),
    /// Replay a demand trace against pool policies and compare misses, idle time and cost.
    Simulate(simulate::SimulateArgs),
    /// Seeded simulation of the whole control plane under faults, with invariant checks.
    Chaos(chaos::ChaosArgs),
    /// Drills against a running cluster: `evacuate` moves every service out of a region under
    /// a fault plan and stop conditions, and prints a verdict.
    Drill(drill::DrillArgs),
    /// Apply a plan (regions, services, schedules) through the operator API.
    Apply(apply::ApplyArgs),
    /// Print the example plan (examples/plan.toml), a starting point for your own.
    ExamplePlan,
    /// Start moving a service's traffic to another region.
    Migrate(migrate::MigrateArgs),
    /// Show the cluster's migrations, readiness and recent audit log (--watch: live).
    Status(status::StatusArgs),
    /// Roll a migration back.
    Rollback(rollback::RollbackArgs),
    /// Claim serving capacity (request now, reserve a window), list or release claims.
    Capacity(capacity::CapacityArgs),
    /// The leader's demand forecast and pool targets for a service's serving pool.
    Predict(capacity::PredictArgs),
}

/// Runs the subcommand; a failure is its causes on stderr and status 1, never a backtrace.
fn main() -> std::process::ExitCode {
    umbra_proto::exit::code(run())
}

fn run() -> anyhow::Result<()> {
    umbra_proto::logs::init("warn");
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Kv(args) => kv::run(args),
        Command::Member(args) => member::run(args),
        Command::Certs(args) => certs::run(args),
        Command::Forecast(args) => forecast::run(args),
        Command::Backtest(args) => backtest::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Chaos(args) => chaos::run(args),
        Command::Drill(args) => drill::run(args),
        Command::Apply(args) => apply::run(args),
        Command::ExamplePlan => {
            print!("{}", umbra_orchestrator::state::plan::EXAMPLE_PLAN_TOML);
            Ok(())
        }
        Command::Migrate(args) => migrate::run(args),
        Command::Status(args) => status::run(args),
        Command::Rollback(args) => rollback::run(args),
        Command::Capacity(args) => capacity::run(args),
        Command::Predict(args) => capacity::predict(args),
    }
}
