//! BIND 9 as the zone's one authority, through the real binaries: `umbra_demo` (what `umbra
//! demo --dns bind` runs) starts `named` on loopback with a key from `tsig-keygen`, three
//! `umbra-orchestrator` processes with `[dns] provider = "rfc2136"` and that key file, three
//! agents, and an honest traffic client that resolves `shop.umbra.test` through BIND (every
//! non-2xx, timeout or reset counts as a failure). Beside the demo, this test asks BIND with
//! `dig` as a user would, for the whole run, and records each distinct answer set.
//!
//! What a user must see: the answer moves from the source's front to the target's, with both
//! served in between, and no request fails; with a key BIND does not accept, the step fails
//! naming BIND's NOTAUTH, the migration rolls back, and BIND keeps answering with the source.
//! With haproxy as every region's front as well (`umbra demo --front haproxy --dns bind`), the
//! migration completes with no failed request, and a target failing at the 50 % step rolls it
//! back with BIND's answer and the traffic on the source again.
//! `named`, `dig` or `haproxy` missing fails the test with the command that installs them.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use umbra_demo::report::DemoReport;
use umbra_demo::{DemoDns, DemoOptions, FrontKind, run};
use umbra_testkit::bind::dig;
use umbra_testkit::{free_port, installed};

const HOSTNAME: &str = "shop.umbra.test.";

fn options(work_dir: &Path, dns: DemoDns) -> anyhow::Result<DemoOptions> {
    let mut options = umbra_tests::demo_options()?;
    options.work_dir = Some(work_dir.to_owned());
    options.dns = dns;
    // Smaller than `umbra demo`: 200 reads/s, a 6 s baseline, no minimum request count.
    options.load.rate_per_sec = 200.0;
    // Reads only: a write refused while the writer moves would be a failure this test does
    // not excuse (the demo's own tests count those apart).
    options.load.write_rate_per_sec = 0.0;
    options.no_warm = true;
    options.steady_secs = 6;
    options.settle_secs = 3;
    options.min_requests = 0;
    Ok(options)
}

/// The demo's front address of `region`.
fn front_ip(region: &str) -> IpAddr {
    let last = match region {
        "us-east" => 11,
        "eu-west" => 12,
        "ap-south" => 13,
        other => panic!("unexpected region {other}"),
    };
    IpAddr::from([127, 0, 0, last])
}

/// Asks `server` for the A records of `shop` with `dig` every 50 ms until stopped, keeping
/// each answer set that differs from the one before (answers before `named` is up and has
/// loaded its zone are skipped; an empty answer after that is kept, it would be a failure).
struct AnswerWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<BTreeSet<IpAddr>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AnswerWatch {
    fn start(server: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::task::spawn_blocking({
            let (stop, seen) = (stop.clone(), seen.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let query = format!("{HOSTNAME} A +short +time=1 +tries=1");
                    if let Ok(out) = dig(server, &[query])
                        && !out.contains("connection refused")
                        && !out.contains("timed out")
                    {
                        let set: BTreeSet<IpAddr> =
                            out.lines().filter_map(|l| l.trim().parse().ok()).collect();
                        let mut seen = seen.lock().unwrap();
                        // Until named has loaded the zone it answers SERVFAIL (empty here);
                        // the demo starts nothing before it answers. Any empty answer after
                        // the first one is kept, and fails the test.
                        let loading = seen.is_empty() && set.is_empty();
                        if !loading && seen.last() != Some(&set) {
                            seen.push(set);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        Self { stop, seen, task }
    }

    async fn stop(self) -> Vec<BTreeSet<IpAddr>> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the dig watcher panicked");
        let seen = self.seen.lock().unwrap().clone();
        println!("answer sets BIND served, in order: {seen:?}");
        seen
    }
}

/// What a run changes from the BIND demo's defaults.
#[derive(Default)]
struct Drill {
    /// The orchestrators hold another secret than BIND.
    wrong_key: bool,
    /// The leading orchestrator is SIGKILLed at the 50 % step.
    kill_leader: bool,
    /// The target's instances fail from the 50 % step on.
    inject_fault: bool,
    /// Each region's front is a haproxy its agent runs (`[front] kind = "haproxy"`).
    haproxy: bool,
}

/// Runs the demo with BIND as `drill` says, watching BIND's answers throughout.
async fn run_with_bind(drill: Drill) -> anyhow::Result<(DemoReport, Vec<BTreeSet<IpAddr>>)> {
    // Loudly, before anything starts: this test drives the real BIND.
    installed("named", "bind9")?;
    installed("tsig-keygen", "bind9")?;
    installed("dig", "bind9-dnsutils")?;
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let wrong_key = drill.wrong_key;
    let mut options = options(dir.path(), DemoDns::Bind { port, wrong_key })?;
    options.kill_leader = drill.kill_leader;
    options.inject_fault = drill.inject_fault.then_some(umbra_demo::FaultAt::HalfWay);
    if drill.haproxy {
        installed("haproxy", "haproxy")?;
        options.front = FrontKind::Haproxy;
    }
    let watch = AnswerWatch::start(server);
    let report = run(&options, &|line| eprintln!("{line}")).await;
    let seen = watch.stop().await;
    let report = report?;
    eprintln!("{}", serde_json::to_string_pretty(&report)?);
    Ok((report, seen))
}

/// BIND answered with the source, then both during the steps below 100 %, then the target.
fn assert_answer_moved(report: &DemoReport, seen: &[BTreeSet<IpAddr>]) {
    let (source, target) = (front_ip(&report.from), front_ip(&report.to));
    assert_eq!(
        seen,
        [
            BTreeSet::from([source]),
            BTreeSet::from([source, target]),
            BTreeSet::from([target]),
        ],
        "BIND's answer: the source, both during the steps below 100 %, then the target"
    );
}

fn assert_no_request_failed(report: &DemoReport) {
    assert!(report.requests_total > 1_000, "{}", report.requests_total);
    assert_eq!(
        report.requests_failed, 0,
        "every request must succeed: {:?}",
        report.failures
    );
    println!(
        "{} requests through BIND's answers, {} failed",
        report.requests_total, report.requests_failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_moves_the_answer_bind_serves_and_no_request_fails() -> anyhow::Result<()> {
    let (report, seen) = run_with_bind(Drill::default()).await?;
    assert_eq!(report.outcome, "completed", "{report:#?}");
    assert_no_request_failed(&report);
    assert_answer_moved(&report, &seen);
    assert_phases_once_each(&report);
    Ok(())
}

/// Every phase of a completed migration, each once, in order.
fn assert_phases_once_each(report: &DemoReport) {
    // The phases the leader passed, each step only once BIND served its weights.
    let names: Vec<&str> = report.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "planned",
            "provisioning",
            "replicating",
            "ready",
            "cutting_over[0]",
            "cutting_over[1]",
            "cutting_over[2]",
            "draining",
            "completed"
        ]
    );
    assert!(
        report.identical_state,
        "the orchestrators and BIND disagree"
    );
}

/// Both real parts at once, as `umbra demo --front haproxy --dns bind` runs them: BIND holds
/// the zone, haproxy carries each region's traffic, and the client follows BIND's answers
/// into the haproxy fronts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_fronts_behind_bind_complete_the_migration_with_no_failed_request()
-> anyhow::Result<()> {
    let (report, seen) = run_with_bind(Drill {
        haproxy: true,
        ..Drill::default()
    })
    .await?;
    assert_eq!(report.outcome, "completed", "{report:#?}");
    assert_no_request_failed(&report);
    assert_answer_moved(&report, &seen);
    assert_phases_once_each(&report);
    Ok(())
}

/// `umbra demo --front haproxy --dns bind --inject-fault`: the target fails at the 50 % step,
/// haproxy's counters show it, the migration rolls back by itself, and both BIND's answer and
/// the traffic end on the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_behind_haproxy_and_bind_rolls_back_to_the_source() -> anyhow::Result<()> {
    let (report, seen) = run_with_bind(Drill {
        haproxy: true,
        inject_fault: true,
        ..Drill::default()
    })
    .await?;
    assert_eq!(report.outcome, "rolled_back", "{report:#?}");
    println!(
        "rolled back in {:?} ms; {} of {} requests failed",
        report.rollback_ms, report.requests_failed, report.requests_total
    );
    let source = front_ip(&report.from);
    assert_eq!(
        seen.last(),
        Some(&BTreeSet::from([source])),
        "BIND answers with the source again: {seen:?}"
    );
    let source = source.to_string();
    assert!(
        !report.by_front_at_end.is_empty()
            && report
                .by_front_at_end
                .keys()
                .all(|a| a.starts_with(&source)),
        "the traffic ends on the source: {:?}",
        report.by_front_at_end
    );
    assert!(
        report.identical_state,
        "the orchestrators and BIND disagree"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_tsig_key_fails_the_step_naming_notauth_and_rolls_back() -> anyhow::Result<()> {
    let (report, seen) = run_with_bind(Drill {
        wrong_key: true,
        ..Drill::default()
    })
    .await?;
    assert_eq!(report.outcome, "rolled_back", "{report:#?}");
    let rolling_back = report
        .phases
        .iter()
        .find(|p| p.name == "rolling_back")
        .expect("the migration rolled back");
    println!("rolled back because: {}", rolling_back.reason);
    assert!(
        rolling_back.reason.starts_with("DNS not served at 10%")
            && rolling_back.reason.contains("NOTAUTH"),
        "the step's failure names BIND's refusal: {}",
        rolling_back.reason
    );
    // No update was taken: BIND answered with the source the whole time, and the traffic
    // that followed it never failed.
    assert_eq!(seen, vec![BTreeSet::from([front_ip(&report.from)])]);
    assert_no_request_failed(&report);
    Ok(())
}

/// Killing the leader mid-cutover: the new leader's publisher republishes the replicated
/// weights (the same set: BIND's answer does not change), its executor checks BIND again
/// before the step counts, and the migration completes with every step once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_publishing_and_the_migration_completes() -> anyhow::Result<()> {
    let (report, seen) = run_with_bind(Drill {
        kill_leader: true,
        ..Drill::default()
    })
    .await?;
    assert!(report.killed_leader.is_some(), "no leader was killed");
    assert_eq!(report.outcome, "completed", "{report:#?}");
    assert_no_request_failed(&report);
    assert_answer_moved(&report, &seen);
    for (step, count) in &report.audit_step_counts {
        assert_eq!(*count, 1, "{step} appears {count} times in the audit");
    }
    assert!(report.identical_state, "the survivors and BIND disagree");
    Ok(())
}
