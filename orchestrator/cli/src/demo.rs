//! `umbra demo [--json] [--inject-fault[=half-way|after-writer-moved]] [--kill-leader]
//! [--restart-target-agent] [--no-warm] [--front embedded|haproxy] [--dns embedded|bind]
//! [--slo-source fronts|prometheus] [--slo-judgement thresholds|compare] [--data wal|postgres]`:
//! one real region migration on this machine (three orchestrators, three region agents with
//! their fronts and sample instances, traffic through the orchestrators' DNS). The work is
//! `umbra_demo`; this file parses flags, prints progress on stderr and the final
//! report on stdout (`--json`: one JSON object), and turns Ctrl-C into a clean stop.

use std::path::PathBuf;

use anyhow::{Context, bail};
use umbra_demo::report::DemoReport;
use umbra_demo::scenario::DemoLoad;
use umbra_demo::{
    DemoData, DemoDns, DemoOptions, DemoSloSource, FaultAt, FrontKind, run as run_demo,
};
use umbra_orchestrator::migration::SloJudgement;

/// Arguments of `umbra demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Print one JSON object (the final report) on stdout; progress stays on stderr.
    #[arg(long)]
    json: bool,
    /// The target's sample service starts failing, and the migration must roll back by
    /// itself: at the 50 % step (`half-way`, the default), or once the single writer moved to
    /// the target (`after-writer-moved`: the rollback hands the writer back to the source).
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true,
          default_missing_value = "half-way", value_name = "WHEN")]
    inject_fault: Option<FaultAtChoice>,
    /// SIGKILL the leading orchestrator mid-cutover (at the 50 % step).
    #[arg(long)]
    kill_leader: bool,
    /// SIGKILL the target region's agent while the migration warms and start it again 5 s
    /// later: the migration must still complete.
    #[arg(long)]
    restart_target_agent: bool,
    /// Skip the warm-up of the shadow pool (the cold baseline).
    #[arg(long)]
    no_warm: bool,
    /// Reads per second the traffic client offers (GETs of the seeded keys).
    #[arg(long, default_value_t = 400.0)]
    rate: f64,
    /// Writes per second offered beside the reads (PUTs of fresh keys, each read back where
    /// the service ended up; the default makes a ninth of the traffic writes); 0 for reads
    /// only.
    #[arg(long, default_value_t = 50.0)]
    write_rate: f64,
    /// The SLO's p99 bound on each cutover step, ms (the plan's `slo.max_p99_ms`): a step
    /// whose target p99 exceeds it rolls the migration back.
    #[arg(long, default_value_t = DemoLoad::default().slo_max_p99_ms, value_parser = positive_ms)]
    slo_p99_ms: f64,
    /// Keep the traffic running until at least this many requests were sent.
    #[arg(long, default_value_t = 20_000)]
    min_requests: u64,
    /// Keep certificates, configs, data and logs in this directory (default: a temp dir,
    /// removed at the end).
    #[arg(long)]
    keep: Option<PathBuf>,
    /// The regions' fronts: `embedded` (the agent's own proxy) or `haproxy` (each agent runs
    /// a real haproxy, which must be installed).
    #[arg(long, default_value_t = FrontKind::Embedded)]
    front: FrontKind,
    /// Who answers for the service zone: each orchestrator's embedded server, or BIND 9
    /// (`named`, started by the demo) updated by the leader with RFC 2136 + TSIG.
    #[arg(long, value_enum, default_value_t = DnsChoice::Embedded)]
    dns: DnsChoice,
    /// Where each cutover step's SLO is read from: the target front's counters as its agent
    /// reports them, or a real Prometheus (started by the demo, scraping every agent's
    /// metrics once a second; `/usr/bin/prometheus` must be installed).
    #[arg(long, value_enum, default_value_t = SloSourceChoice::Fronts)]
    slo_source: SloSourceChoice,
    /// How each step's latency is judged: against the plan's p99 bound, or against the
    /// source region's latency over the same step (Mann-Whitney U, as Kayenta judges a
    /// canary; needs `--slo-source prometheus`).
    #[arg(long, value_enum, default_value_t = JudgementChoice::Thresholds)]
    slo_judgement: JudgementChoice,
    /// Where the sample instances keep their data: their own write-ahead logs, or a database
    /// each on a PostgreSQL server per region (started by the demo; `postgresql` must be
    /// installed), replicated with PostgreSQL's logical replication.
    #[arg(long, value_enum, default_value_t = DataChoice::Wal)]
    data: DataChoice,
    /// Request no migration: keep the cluster up with its traffic running, print how to reach
    /// it (with `--json`: one JSON line: API, certificates, token, each front's metrics, each
    /// agent's directory, every pid, and an `umbra drill evacuate` command) and wait for
    /// Ctrl-C or SIGTERM; then stop everything and print what the traffic client saw.
    #[arg(long, conflicts_with_all = ["inject_fault", "kill_leader", "restart_target_agent"])]
    serve: bool,
    /// Inject the faults of this plan (TOML; `umbra chaos plan --campaign --seed S` prints
    /// one) into the demo's own processes while the migration runs, and judge the run on the
    /// chaos campaign's invariants (status 1 when one broke).
    #[arg(long, conflicts_with = "serve")]
    fault_plan: Option<PathBuf>,
}

/// `--inject-fault=WHEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FaultAtChoice {
    HalfWay,
    AfterWriterMoved,
}

/// `--slo-judgement`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum JudgementChoice {
    Thresholds,
    Compare,
}

/// `--slo-source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SloSourceChoice {
    Fronts,
    Prometheus,
}

/// `--data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DataChoice {
    Wal,
    Postgres,
}

/// `--dns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DnsChoice {
    Embedded,
    Bind,
}

/// A p99 bound in milliseconds: a finite number above zero.
fn positive_ms(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ms) if ms.is_finite() && ms > 0.0 => Ok(ms),
        _ => Err(format!(
            "{text:?} is not a p99 bound: give milliseconds above zero, e.g. 300"
        )),
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the umbra binary")?;
    let bin_dir = exe
        .parent()
        .context("the umbra binary has no directory")?
        .to_owned();
    let mut options = DemoOptions::new(bin_dir);
    options.inject_fault = args.inject_fault.map(|at| match at {
        FaultAtChoice::HalfWay => FaultAt::HalfWay,
        FaultAtChoice::AfterWriterMoved => FaultAt::AfterWriterMoved,
    });
    options.kill_leader = args.kill_leader;
    options.restart_target_agent = args.restart_target_agent;
    options.no_warm = args.no_warm;
    options.load.rate_per_sec = args.rate;
    options.load.write_rate_per_sec = args.write_rate;
    options.load.slo_max_p99_ms = args.slo_p99_ms;
    options.min_requests = args.min_requests;
    options.work_dir = args.keep.clone();
    options.front = args.front;
    options.dns = match args.dns {
        DnsChoice::Embedded => DemoDns::Embedded,
        DnsChoice::Bind => DemoDns::Bind {
            port: 0,
            wrong_key: false,
        },
    };
    options.slo_source = match args.slo_source {
        SloSourceChoice::Fronts => DemoSloSource::Fronts,
        SloSourceChoice::Prometheus => DemoSloSource::Prometheus,
    };
    options.data = match args.data {
        DataChoice::Wal => DemoData::Wal,
        DataChoice::Postgres => DemoData::Postgres,
    };
    options.slo_judgement = match args.slo_judgement {
        JudgementChoice::Thresholds => SloJudgement::Thresholds,
        JudgementChoice::Compare => SloJudgement::Compare,
    };
    if let Some(path) = &args.fault_plan {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the fault plan {}", path.display()))?;
        let plan = umbra_chaos::plan::FaultPlan::from_toml(&text)
            .with_context(|| format!("in {}", path.display()))?;
        options.fault_plan = Some(plan);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let progress = |line: &str| eprintln!("{line}");
    if args.serve {
        return runtime.block_on(serve(&options, args.json));
    }
    let result = runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("listening for SIGTERM")?;
        tokio::select! {
            result = run_demo(&options, &progress) => result.map_err(anyhow::Error::from),
            // Dropping the demo future drops its supervisor, which stops every process: on
            // Ctrl-C, and on the SIGTERM a process manager or `timeout` sends.
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; stopped everything the demo started")),
            _ = terminate.recv() => Err(anyhow::anyhow!("terminated (SIGTERM); stopped everything the demo started")),
        }
    });
    if let Some(plan) = &options.fault_plan {
        return judged(result, plan, &args);
    }
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if let Some(dir) = &args.keep {
        eprintln!("files kept in {}", dir.display());
    }
    let expected = if args.inject_fault.is_some() {
        "rolled_back"
    } else {
        "completed"
    };
    if report.outcome != expected {
        bail!(
            "the migration ended {} (expected {expected}); see the phases above",
            report.outcome
        );
    }
    Ok(())
}

/// A run under `--fault-plan`: the report, then the campaign's judgement of it.
fn judged(
    result: anyhow::Result<DemoReport>,
    plan: &umbra_chaos::plan::FaultPlan,
    args: &DemoArgs,
) -> anyhow::Result<()> {
    let result = match result {
        Ok(report) => Ok(report),
        Err(error) => match error.downcast::<umbra_demo::DemoError>() {
            Ok(error) => Err(error),
            Err(interrupted) => return Err(interrupted),
        },
    };
    let violations =
        umbra_chaos::campaign::judge(plan.seed, &crate::campaign::facts(&result, plan));
    if let Ok(report) = &result {
        if args.json {
            println!("{}", serde_json::to_string_pretty(report)?);
        } else {
            print_report(report);
        }
    }
    if let Some(dir) = &args.keep {
        eprintln!("files kept in {}", dir.display());
    }
    for v in &violations {
        eprintln!("VIOLATION {}: {}", v.invariant, v.detail);
    }
    match (result, violations.len()) {
        (Err(error), _) => Err(error.into()),
        (Ok(_), 0) => Ok(()),
        (Ok(_), n) => bail!("{n} of the campaign's invariants broke under the fault plan"),
    }
}

/// `umbra demo --serve`: up until Ctrl-C or SIGTERM.
async fn serve(options: &umbra_demo::DemoOptions, json: bool) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    let reach = |reach: &umbra_demo::Reach| {
        if json {
            match serde_json::to_string(reach) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("error: printing how to reach the cluster: {e}"),
            }
        } else {
            println!(
                "the demo cluster is up, its traffic running; stop it with Ctrl-C\n\
                 export UMBRA_API={} UMBRA_CERTS={} UMBRA_OPERATOR={} UMBRA_TOKEN_FILE={}\n\
                 drill: {}",
                reach.api,
                reach.certs.display(),
                reach.operator,
                reach.token_file.display(),
                reach.drill
            );
        }
    };
    let progress = |line: &str| eprintln!("{line}");
    let traffic = umbra_demo::serve(options, &progress, &reach, stop).await?;
    if json {
        println!("{}", serde_json::to_string(&traffic)?);
    } else {
        println!(
            "traffic: {} requests, {} failed {:?}",
            traffic.requests_total, traffic.requests_failed, traffic.failures
        );
    }
    Ok(())
}

fn print_report(r: &DemoReport) {
    println!(
        "migration {} ({} → {}): {}",
        r.migration, r.from, r.to, r.outcome
    );
    for phase in &r.phases {
        let took = phase
            .end
            .map(|end| format!("{:>7.1} s", end.saturating_sub(phase.start) as f64 / 1000.0))
            .unwrap_or_else(|| "      -  ".into());
        println!("  {:<18} {took}", phase.name);
    }
    println!(
        "requests: {} sent at {} req/s over {:.0} s, {} failed {:?}",
        r.requests_total, r.rate_per_sec, r.traffic_secs, r.requests_failed, r.failures
    );
    println!(
        "p99: {:.1} ms steady, {} in the first 10 s after the cutover ({} warm-up)",
        r.p99_ms_steady,
        r.p99_ms_first_10s_after_cutover
            .map(|p| format!("{p:.1} ms"))
            .unwrap_or_else(|| "no cutover".into()),
        if r.warm_up { "with" } else { "without" }
    );
    println!("shadow instances: {}", r.shadow_instances);
    if r.slo_source == "prometheus" {
        println!(
            "slo_source: prometheus ({} queries with data, {} without)",
            r.slo_queries_with_data, r.slo_queries_no_data
        );
    } else {
        println!("slo_source: {}", r.slo_source);
    }
    if let Some(ms) = r.rollback_ms {
        println!("rollback: breach detected → all weights restored in {ms} ms");
    }
    if let Some(ms) = r.fence_window_ms {
        println!(
            "writer moved: fenced for {ms} ms (writes held meanwhile); {} failed in those \
             seconds, {} of them writes",
            r.failed_in_fence_window, r.writes_refused_while_fenced
        );
    }
    if let Some(id) = r.killed_leader {
        println!("killed orchestrator {id} (the leader) mid-cutover");
    }
    if let Some(region) = &r.restarted_agent {
        println!("killed {region}'s agent while warming and started it again");
    }
    for f in &r.faults {
        println!(
            "fault {}: {} ({}): {}",
            f.index,
            f.fault,
            f.trigger,
            match (&f.fired, &f.error) {
                (_, Some(error)) => format!("FAILED: {error}"),
                (Some(at), None) => format!(
                    "fired {at} in {} on {}, undone {}; {}",
                    f.phase.as_deref().unwrap_or("-"),
                    f.hit.as_deref().unwrap_or("-"),
                    f.undone.as_deref().unwrap_or("never"),
                    f.detail
                ),
                (None, None) => "never came due".to_owned(),
            }
        );
    }
    println!("traffic at the end by front: {:?}", r.by_front_at_end);
    println!(
        "writes: {} sent, {} acknowledged, {} read back at the end on the {}, {} acknowledged \
         and missing{}",
        r.writes.sent,
        r.writes.acknowledged,
        r.writes.found,
        if r.writes_found_on_target.is_some() {
            format!("target ({})", r.to)
        } else {
            format!("source ({})", r.from)
        },
        r.writes.acknowledged_missing,
        if r.writes.first_missing.is_empty() {
            String::new()
        } else {
            format!(" (missing, first: {:?})", r.writes.first_missing)
        }
    );
    println!(
        "instances left by region: {:?} ({} of the shadow pool)",
        r.instances_left, r.shadow_instances_left
    );
    for p in &r.pools {
        println!(
            "pool {:<9} slice {}: forecast {} → target {} warm + {} dormant, held {} + {}",
            p.region,
            p.slice_start.as_deref().unwrap_or("(no forecast)"),
            p.forecast_rps
                .map(|q| format!("{q:.0} req/s"))
                .unwrap_or_else(|| "-".into()),
            p.target_warm,
            p.target_dormant,
            p.warm,
            p.dormant
        );
    }
    println!(
        "audit (each exactly once expected): {:?}",
        r.audit_step_counts
    );
    println!(
        "every live orchestrator holds the same state: {}",
        if r.identical_state { "yes" } else { "NO" }
    );
    println!("demo took {:.1} s", r.demo_secs);
}
