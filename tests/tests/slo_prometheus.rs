//! Cutover steps judged by a real Prometheus (Debian's `/usr/bin/prometheus`, started by the
//! demo on loopback and scraping every agent's `/metrics` once a second), through the real
//! binaries: three `umbra-orchestrator`, three `umbra-agent` with their fronts, `umbra-sample`
//! instances, and the `umbra` CLI.
//!
//! - The demo with `--slo-source prometheus` completes with no failed request, and every step
//!   was passed on a Prometheus answer ("judged by Prometheus" in the audit), with queries that
//!   had data counted by the leader: over the embedded fronts, and over haproxy fronts.
//! - A service whose error-ratio query names a metric that does not exist gets no data: its
//!   migration reaches `cutting_over[0]` and stays there, neither passed nor rolled back, while
//!   several analysis windows pass, and the executor's `no_data` count rises; an operator's
//!   rollback then ends it `rolled_back`.
//! - With the comparison judgement (`slo.judgement = "compare"`), each step is judged on the
//!   target's latency samples against the source's (Mann-Whitney U), not on the bound.
//! - With the target failing at the 50 % step, Prometheus sees the errors and the migration
//!   rolls back by itself, the reason naming Prometheus.
//!
//! A missing Prometheus fails the test with the install command. Deadlines are liveness
//! limits, never latency bounds. Run `cargo build --workspace --bins` first.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use umbra_demo::report::DemoReport;
use umbra_demo::scenario::{DemoTiming, migration_request};
use umbra_demo::{DemoOptions, DemoSloSource, FrontKind, IdleCluster, run};
use umbra_orchestrator::api::StatusReport;
use umbra_orchestrator::api::Written;
use umbra_orchestrator::migration::SloJudgement;

/// Longest any stage may take on a loaded 2-core machine (a liveness deadline).
const DEADLINE: Duration = Duration::from_secs(180);
/// Analysis windows the no-data step must hold through.
const WINDOWS_HELD: u32 = 4;

fn options(work_dir: &Path) -> anyhow::Result<DemoOptions> {
    let mut options = umbra_tests::demo_options()?;
    options.work_dir = Some(work_dir.to_owned());
    options.slo_source = DemoSloSource::Prometheus;
    // Smaller than `umbra demo`: 200 req/s, a 6 s baseline, no minimum request count.
    options.load.rate_per_sec = 200.0;
    options.steady_secs = 6;
    options.settle_secs = 3;
    options.min_requests = 0;
    options.no_warm = true;
    Ok(options)
}

async fn run_demo(options: &DemoOptions) -> anyhow::Result<DemoReport> {
    let report = run(options, &|line| eprintln!("{line}")).await?;
    eprintln!("{}", serde_json::to_string_pretty(&report)?);
    Ok(report)
}

/// Runs `umbra args…` against the leader's API.
fn umbra(env: &[(&'static str, String)], args: &[&str]) -> anyhow::Result<Output> {
    let output = std::process::Command::new(umbra_tests::binary("umbra")?)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("RUST_BACKTRACE")
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "umbra {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// The phase of `id` as `umbra status --json` shows it.
fn phase_of(env: &[(&'static str, String)], id: &str) -> anyhow::Result<String> {
    let status: StatusReport = serde_json::from_slice(&umbra(env, &["status", "--json"])?.stdout)?;
    status
        .migrations
        .iter()
        .find(|m| m.id == id)
        .map(|m| m.phase.clone())
        .ok_or_else(|| anyhow::anyhow!("no migration {id} in umbra status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_completes_with_every_step_judged_by_prometheus() -> anyhow::Result<()> {
    completes_judged_by_prometheus(FrontKind::Embedded).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_on_haproxy_fronts_completes_judged_by_prometheus() -> anyhow::Result<()> {
    completes_judged_by_prometheus(FrontKind::Haproxy).await
}

async fn completes_judged_by_prometheus(front: FrontKind) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut options = options(dir.path())?;
    options.front = front;
    let report = run_demo(&options).await?;
    assert_eq!(report.outcome, "completed", "{report:#?}");
    assert_eq!(report.requests_failed, 0, "{:?}", report.failures);
    assert_eq!(report.slo_source, "prometheus");
    assert!(
        report.slo_queries_with_data > 0,
        "the leader's Prometheus queries had data: {report:#?}"
    );
    // Each step passed on a Prometheus answer: the reason of entering the next phase says so.
    for next in ["cutting_over[1]", "cutting_over[2]", "draining"] {
        let phase = report
            .phases
            .iter()
            .find(|p| p.name == next)
            .unwrap_or_else(|| panic!("no {next} in {:?}", report.phases));
        assert!(
            phase.reason.contains("judged by Prometheus"),
            "{next}: {}",
            phase.reason
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_judged_by_comparison_with_the_source_completes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut options = options(dir.path())?;
    options.slo_judgement = SloJudgement::Compare;
    // Warmed shadows: a cold one is slower than the source, which the comparison would
    // rightly catch.
    options.no_warm = false;
    let report = run_demo(&options).await?;
    assert_eq!(report.requests_failed, 0, "{:?}", report.failures);
    let reason_of = |name: &str| {
        report
            .phases
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.reason.clone())
            .unwrap_or_else(|| panic!("no {name} in {:?}", report.phases))
    };
    // A warmed target on this loaded machine is usually as fast as the source, and then every
    // step passes on the comparison. When its latency really is above the source's the
    // comparison rolls back, naming the test: both are the judgement at work; anything else
    // (a threshold verdict, no verdict) fails.
    match report.outcome.as_str() {
        "completed" => {
            for next in ["cutting_over[1]", "cutting_over[2]", "draining"] {
                let reason = reason_of(next);
                assert!(
                    reason.contains("judged by Prometheus") && reason.contains("Mann-Whitney U"),
                    "{next}: {reason}"
                );
            }
        }
        "rolled_back" => {
            let reason = reason_of("rolling_back");
            eprintln!("the target was slower than the source: {reason}");
            assert!(
                reason.contains("Mann-Whitney U") && reason.contains("significantly slower"),
                "{reason}"
            );
        }
        other => panic!("the migration ended {other}: {report:#?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_without_prometheus_data_holds_until_an_operator_rolls_it_back() -> anyhow::Result<()>
{
    let mut options = umbra_tests::demo_options()?;
    options.slo_source = DemoSloSource::Prometheus;
    let cluster = IdleCluster::start(&options, &|line| eprintln!("{line}")).await?;
    let plan = cluster.demo_plan().replace(
        "umbra_front_request_errors_total",
        "umbra_front_no_such_metric_total",
    );
    assert!(plan.contains("umbra_front_no_such_metric_total"), "{plan}");
    cluster
        .apply_plan_toml(&plan)
        .await
        .map_err(anyhow::Error::msg)?;
    let env =
        umbra_tests::wait_for("a leader's API", DEADLINE, || cluster.leader_cli_env()).await?;
    let timing = DemoTiming::default();
    let regions = cluster.regions().to_vec();
    let now_ms = chrono::Utc::now().timestamp_millis() as u64;
    let request = migration_request(&regions[0], &regions[1], now_ms, &timing, false);
    let applied = cluster
        .migrate(&request)
        .await
        .map_err(anyhow::Error::msg)?;
    let Written::Migration { id } = applied else {
        anyhow::bail!("not a migration: {applied:?}");
    };

    umbra_tests::wait_for("the migration at cutting_over[0]", DEADLINE, || async {
        let phase = phase_of(&env, &id).ok()?;
        assert!(
            !phase.starts_with("rolling") && phase != "rolled_back" && phase != "failed",
            "the migration ended early: {phase}"
        );
        (phase == "cutting_over[0]").then_some(())
    })
    .await?;
    let no_data_at_start = cluster.slo_queries("no_data").await;
    let window = Duration::from_secs(timing.analysis_window_secs);
    let hold = window * WINDOWS_HELD;
    let started = Instant::now();
    let mut polls = 0u32;
    while started.elapsed() < hold {
        let phase = phase_of(&env, &id)?;
        assert_eq!(
            phase,
            "cutting_over[0]",
            "no data is neither a pass nor a rollback (after {:?})",
            started.elapsed()
        );
        polls += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let no_data = cluster.slo_queries("no_data").await;
    let with_data = cluster.slo_queries("ok").await;
    eprintln!(
        "held cutting_over[0] for {WINDOWS_HELD} windows of {window:?} ({polls} status polls); \
         no_data queries {no_data_at_start} → {no_data}, with data {with_data}"
    );
    assert!(no_data > no_data_at_start, "the no_data count rises");
    assert_eq!(with_data, 0, "a metric that does not exist never has data");

    umbra(
        &env,
        &[
            "rollback",
            &id,
            "--reason",
            "the SLO has no data in Prometheus",
        ],
    )?;
    umbra_tests::wait_for("the migration rolled back", DEADLINE, || async {
        (phase_of(&env, &id).ok()? == "rolled_back").then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_failing_under_prometheus_rolls_back_naming_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut options = options(dir.path())?;
    options.inject_fault = Some(umbra_demo::FaultAt::HalfWay);
    let report = run_demo(&options).await?;
    assert_eq!(report.outcome, "rolled_back", "{report:#?}");
    let rolling_back = report
        .phases
        .iter()
        .find(|p| p.name == "rolling_back")
        .expect("a rolling_back phase");
    assert!(
        rolling_back.reason.starts_with("SLO breach")
            && rolling_back.reason.contains("judged by Prometheus"),
        "{}",
        rolling_back.reason
    );
    Ok(())
}
