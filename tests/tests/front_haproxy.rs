//! HAProxy as the regions' front, end to end through the real binaries: the migration demo
//! (`umbra_demo`, what `umbra demo --front haproxy` runs) with three `umbra-orchestrator` and
//! three `umbra-agent` processes whose configs say `[front] kind = "haproxy"`, so each agent
//! writes haproxy's configuration, starts a real `haproxy` on its region's front address and
//! drives it through the runtime API. The demo's client sends its traffic by name to those
//! fronts, and a warm migration runs to the end.
//!
//! What a user would check: the migration completes, not one request fails (the demo's client
//! counts every non-2xx answer, timeout and reset, and waits for the requests in flight before
//! it reports), every region's front really was a haproxy that carried the traffic (read from
//! its own `show stat` while the demo runs), and no haproxy or instance is left running. A
//! second run breaks the target at the 50 % step: the errors haproxy counts for the target's
//! instances are what the leader's step analysis reads, so the migration must roll back.
//!
//! A missing `haproxy` fails the test with how to install it; it never skips. Run
//! `cargo build --workspace --bins` first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use umbra_agent::provider::process::ENV_PROVIDER_STATE;
use umbra_demo::processes::instance_pids;
use umbra_demo::report::DemoReport;
use umbra_demo::{DemoOptions, FrontKind, run};

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// How often the test reads each haproxy's counters while the demo runs.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// Timeout of one runtime API exchange: haproxy answers locally in microseconds.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

fn state_dir(work_dir: &Path, region: &str) -> PathBuf {
    work_dir.join(format!("agent-{region}")).join("state")
}

/// The haproxy processes of a region's agent: processes carrying the agent's marker whose
/// program is haproxy.
fn haproxy_pids(state: &Path) -> Vec<u32> {
    umbra_testkit::processes_marked(ENV_PROVIDER_STATE, state)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "haproxy")
        })
        .collect()
}

/// `req_tot` of haproxy's frontend (every HTTP request it received), from `show stat` on the
/// admin socket the agent configured.
async fn frontend_requests(state: &Path) -> Option<u64> {
    let socket = state.join("front-haproxy").join("admin.sock");
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(&socket).await.ok()?;
        stream.write_all(b"show stat\n").await.ok()?;
        let mut csv = String::new();
        stream.read_to_string(&mut csv).await.ok()?;
        Some(csv)
    };
    let csv = tokio::time::timeout(ADMIN_TIMEOUT, exchange).await.ok()??;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.strip_prefix("# ")?.split(',').collect();
    let column = |name: &str| header.iter().position(|c| *c == name);
    let (svname, req_tot) = (column("svname")?, column("req_tot")?);
    lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .find(|row| row.get(svname) == Some(&"FRONTEND"))
        .and_then(|row| row.get(req_tot)?.parse().ok())
}

/// What the test saw of the haproxy fronts while the demo ran.
#[derive(Debug, Default)]
struct Seen {
    /// haproxy pids by region.
    pids: BTreeMap<String, BTreeSet<u32>>,
    /// The highest frontend request count read, by region.
    requests: BTreeMap<String, u64>,
}

async fn watch(work_dir: &Path, seen: &mut Seen) {
    loop {
        for region in REGIONS {
            let state = state_dir(work_dir, region);
            seen.pids
                .entry(region.to_owned())
                .or_default()
                .extend(haproxy_pids(&state));
            if let Some(n) = frontend_requests(&state).await {
                let max = seen.requests.entry(region.to_owned()).or_default();
                *max = (*max).max(n);
            }
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

/// The demo's options with haproxy fronts, smaller than `umbra demo` as in demo_migration:
/// 200 req/s, a 6 s baseline. Fails at once when haproxy is not installed.
fn options(work_dir: &Path) -> anyhow::Result<DemoOptions> {
    umbra_testkit::installed("haproxy", "haproxy")?;
    let mut options = umbra_tests::demo_options()?;
    options.work_dir = Some(work_dir.to_owned());
    options.front = FrontKind::Haproxy;
    options.load.rate_per_sec = 200.0;
    options.steady_secs = 6;
    options.settle_secs = 3;
    options.min_requests = 0;
    Ok(options)
}

/// Runs the demo while watching its haproxy fronts.
async fn run_watched(options: &DemoOptions, work_dir: &Path) -> anyhow::Result<(DemoReport, Seen)> {
    let mut seen = Seen::default();
    let report = {
        let demo = run(options, &|line| eprintln!("{line}"));
        tokio::pin!(demo);
        tokio::select! {
            report = &mut demo => report?,
            () = watch(work_dir, &mut seen) => unreachable!("the watch loops until the demo ends"),
        }
    };
    eprintln!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("haproxy fronts seen: {seen:?}");
    for region in REGIONS {
        anyhow::ensure!(
            seen.pids.get(region).is_some_and(|p| !p.is_empty()),
            "no haproxy ran for {region}: {seen:?}"
        );
    }
    Ok((report, seen))
}

/// The demo's front address of `region` (127.0.0.11, .12, .13).
fn front_ip(region: &str) -> &'static str {
    match region {
        "us-east" => "127.0.0.11",
        "eu-west" => "127.0.0.12",
        "ap-south" => "127.0.0.13",
        other => panic!("unexpected region {other}"),
    }
}

/// No process of any region's agent outlived the demo: the haproxy fronts carry the agents'
/// marker, so they are found with the instances.
fn assert_nothing_left(work_dir: &Path) {
    for region in REGIONS {
        let state = state_dir(work_dir, region);
        assert_eq!(
            instance_pids(&state),
            Vec::<u32>::new(),
            "processes of {region} outlived the demo"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_through_haproxy_fronts_completes_without_a_failed_request()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = options(dir.path())?;
    let (report, seen) = run_watched(&options, dir.path()).await?;

    assert_eq!(report.outcome, "completed", "{report:#?}");
    assert_eq!(
        report.requests_failed, 0,
        "every request answered 2xx through haproxy: {:?} ({} in the fence window)",
        report.failures, report.failed_in_fence_window
    );
    assert!(report.requests_total > 5_000, "{}", report.requests_total);
    assert_eq!(
        report.writes.found, report.writes.acknowledged,
        "{:?}",
        report.writes
    );
    println!(
        "{} requests, {} failed; haproxy frontends counted {:?}",
        report.requests_total, report.requests_failed, seen.requests
    );

    // Each region's front was a haproxy the agent started (`run_watched`), and the client's
    // traffic went through them: the source's and the target's frontends together received at
    // least what the client sent (a forwarded share is counted by both; the last reading may
    // be up to one watch interval old, so a tenth is left for it).
    let through_haproxy = seen.requests.get(&report.from).copied().unwrap_or(0)
        + seen.requests.get(&report.to).copied().unwrap_or(0);
    assert!(
        through_haproxy * 10 >= report.requests_total * 9,
        "haproxy counted {through_haproxy} of {} requests: {seen:?}",
        report.requests_total
    );
    // All traffic ended on the target's front.
    let target_ip = front_ip(&report.to);
    assert!(
        report
            .by_front_at_end
            .keys()
            .all(|a| a.starts_with(target_ip)),
        "{:?}",
        report.by_front_at_end
    );

    assert_nothing_left(dir.path());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_failing_behind_haproxy_rolls_the_migration_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut options = options(dir.path())?;
    options.no_warm = true;
    options.inject_fault = Some(umbra_demo::FaultAt::HalfWay);
    let (report, _) = run_watched(&options, dir.path()).await?;
    assert_eq!(report.outcome, "rolled_back", "{report:#?}");
    let names: Vec<&str> = report.phases.iter().map(|p| p.name.as_str()).collect();
    assert!(
        names.ends_with(&["cutting_over[1]", "rolling_back", "rolled_back"]),
        "{names:?}"
    );
    println!(
        "rolled back in {:?} ms; {} of {} requests failed",
        report.rollback_ms, report.requests_failed, report.requests_total
    );
    // Traffic is back on the source's front.
    let source_ip = front_ip(&report.from);
    assert!(
        report
            .by_front_at_end
            .keys()
            .all(|a| a.starts_with(source_ip)),
        "{:?}",
        report.by_front_at_end
    );
    assert!(report.identical_state, "the orchestrators disagree");
    assert_nothing_left(dir.path());
    Ok(())
}
