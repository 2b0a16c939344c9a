//! The embedded proxy under real load: weight steps with shares measured from the client
//! side, a backend process SIGKILLed mid-run, a backend that refuses connections, in-flight
//! requests across a weight change, drain, and the recent-latency window following a backend
//! whose latency changes. Backends are real HTTP servers (in-process,
//! or `umbra-load serve` child processes where a process must die).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use anyhow::{Context, Result};
use common::snapshot_at;
use umbra_agent::lb::named_backend::{BACKEND_HEADER, NamedBackend};
use umbra_agent::lb::proxy::{EmbeddedProxy, ProxyConfig};
use umbra_agent::lb::{BackendState, BackendWeight, LoadBalancer};
use umbra_agent::loadgen::{LoadConfig, LoadGenerator, LoadProgress, RequestSpec};
use umbra_testkit::{Process, wait_for};

const RATE_PER_SEC: f64 = 500.0;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn load(proxy: SocketAddr, max_duration: Duration) -> LoadConfig {
    common::tallied_load(common::http_target(proxy), RATE_PER_SEC, max_duration)
}

fn served(p: &LoadProgress, name: &str) -> u64 {
    p.by_tally.get(name).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_steps_move_exact_shares_with_zero_failures() -> Result<()> {
    let a = NamedBackend::start("a", any_port()).await?;
    let b = NamedBackend::start("b", any_port()).await?;
    let proxy = EmbeddedProxy::start(
        ProxyConfig::new(any_port()),
        &[
            BackendWeight::new("a", a.local_addr(), 100),
            BackendWeight::new("b", b.local_addr(), 0),
        ],
    )
    .await?;

    let report = common::weight_steps_under_load(
        &proxy,
        proxy.local_addr(),
        (a.local_addr(), b.local_addr()),
        RATE_PER_SEC,
        "responses the client saw",
        |p| async move { Ok((served(&p, "a"), served(&p, "b"))) },
    )
    .await?;
    println!("{report}");
    let steps_secs = common::STEP_SECS * common::WEIGHT_STEPS.len() as f64;
    assert!(report.counts.completed as f64 >= 0.9 * RATE_PER_SEC * steps_secs);
    assert!(
        report.achieved_rate_per_sec >= 0.9 * RATE_PER_SEC,
        "{report}"
    );
    assert_eq!(report.counts.failed(), 0, "{report}");
    // The proxy's own counters agree with what the client saw.
    let stats = proxy.stats().await?;
    let proxied: u64 = stats.iter().map(|s| s.requests).sum();
    assert_eq!(proxied, report.counts.ok, "{stats:?}");
    assert!(
        stats
            .iter()
            .all(|s| s.errors == 0 && s.latency_ms_p99.is_some()),
        "{stats:?}"
    );
    Ok(())
}

/// A `umbra-load serve` child process (killed with the test) and the address it listens on.
fn backend_process(name: &str) -> Result<(Process, SocketAddr)> {
    use std::io::BufRead;
    let child = Command::new(env!("CARGO_BIN_EXE_umbra-load"))
        .args(["serve", "--name", name, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawning umbra-load serve")?;
    let mut process = Process::adopt("umbra-load serve", child);
    let stdout = process.child_mut().stdout.take().expect("piped");
    // The first line is the bound address; reading it blocks until the backend listens.
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .parse()
        .with_context(|| format!("backend printed {line:?}"))?;
    Ok((process, addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_process_is_ejected_and_failures_are_bounded() -> Result<()> {
    let (_a, a_addr) = backend_process("a")?;
    let (b, b_addr) = backend_process("b")?;
    let backends = vec![
        BackendWeight::new("a", a_addr, 50),
        BackendWeight::new("b", b_addr, 50),
    ];
    let proxy = EmbeddedProxy::start(ProxyConfig::new(any_port()), &backends).await?;

    let run_for = Duration::from_secs(8);
    // Half the requests are POSTs, which the proxy must not resend once they may have reached
    // a backend: those in flight on the killed process are the failures a user can see.
    let generator = LoadGenerator::new(load(proxy.local_addr(), run_for), |seq| {
        let mut spec = RequestSpec::get("/");
        if seq % 2 == 1 {
            spec.method = hyper::Method::POST;
            spec.body = bytes::Bytes::from_static(b"order");
        }
        spec
    })?;
    let mut progress = generator.progress();
    let run = tokio::spawn(generator.run());

    let before = snapshot_at(&mut progress, 2.0).await;
    assert!(
        served(&before, "b") > 0,
        "b served before the kill: {before:?}"
    );
    b.kill()?; // SIGKILL
    let after_kill = snapshot_at(&mut progress, 3.0).await;
    let b_requests_settled = proxy
        .stats()
        .await?
        .into_iter()
        .find(|s| s.name == "b")
        .map(|s| s.requests)
        .unwrap_or(0);
    let stats_now = proxy.stats().await?;
    let b_state = stats_now.iter().find(|s| s.name == "b").map(|s| s.state);
    assert_eq!(b_state, Some(BackendState::Down), "{stats_now:?}");

    let report = run.await??;
    println!("{report}");
    let stats = proxy.stats().await?;
    println!("{stats:?}");
    let b_stats = stats.iter().find(|s| s.name == "b").unwrap();
    // After ejection the proxy only probes b once per ejection period (5 s by default).
    let probes = b_stats.requests - b_requests_settled;
    assert!(probes <= 2, "b got {probes} requests after it was ejected");
    // Stated bound: failures are requests already in flight on b when it died (at 250 req/s
    // to b and ~1-2 ms service time, a handful), and no request sent once the kill settled
    // fails. A request caught in flight may fail only when the client gives up on it (seen
    // once in CI: the POST sent as b died got no answer within the client's 5 s), so failures
    // are told apart by when they were sent, not by when they finished.
    let failed = report.counts.failed();
    assert!(failed <= 10, "{failed} failed requests: {report}");
    let sent_before_settled = after_kill.counts.scheduled;
    let late: Vec<u64> = report
        .failed_seqs
        .iter()
        .copied()
        .filter(|&seq| seq >= sent_before_settled)
        .collect();
    assert!(
        late.is_empty(),
        "requests {late:?} were sent after the kill settled (the first {sent_before_settled}) \
         and failed: {report}"
    );
    assert_eq!(
        served(&after_kill, "b"),
        report.by_tally.get("b").copied().unwrap_or(0)
    );
    assert!(report.counts.ok + failed == report.counts.completed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_retried_and_in_flight_requests_finish() -> Result<()> {
    let a = NamedBackend::start("a", any_port()).await?;
    // A port with nothing listening refuses connections.
    let dead = SocketAddr::from(([127, 0, 0, 1], umbra_testkit::free_port()?));
    let proxy = EmbeddedProxy::start(
        ProxyConfig::new(any_port()),
        &[
            BackendWeight::new("a", a.local_addr(), 50),
            BackendWeight::new("dead", dead, 50),
        ],
    )
    .await?;
    let base = format!("http://{}", proxy.local_addr());
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let r = client.post(format!("{base}/")).body("x").send().await?;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[BACKEND_HEADER], "a");
    }
    let stats = proxy.stats().await?;
    let dead_stats = stats.iter().find(|s| s.name == "dead").unwrap();
    assert!(
        dead_stats.errors >= 1 && dead_stats.state == BackendState::Down,
        "{stats:?}"
    );

    // A slow request started on a keeps going after a's weight drops to 0.
    let b = NamedBackend::start("b", any_port()).await?;
    proxy
        .set_backends(&[
            BackendWeight::new("a", a.local_addr(), 1),
            BackendWeight::new("b", b.local_addr(), 0),
        ])
        .await?;
    let slow = tokio::spawn(client.get(format!("{base}/slow/600")).send());
    wait_for(
        "the slow request to be in flight at a",
        Duration::from_secs(10),
        || async {
            match proxy.stats().await {
                Ok(s) if !s.iter().any(|s| s.name == "a" && s.in_flight == 1) => None,
                other => Some(other),
            }
        },
    )
    .await??;
    proxy.drain("a").await?;
    proxy
        .set_backends(&[
            BackendWeight::new("a", a.local_addr(), 0),
            BackendWeight::new("b", b.local_addr(), 1),
        ])
        .await?;
    let next = client.get(format!("{base}/")).send().await?;
    assert_eq!(next.headers()[BACKEND_HEADER], "b");
    let slow = slow.await??;
    assert_eq!(
        (slow.status().as_u16(), slow.text().await?),
        (200, "a\n".to_string())
    );
    let stats = proxy.stats().await?;
    let a_stats = stats.iter().find(|s| s.name == "a").unwrap();
    assert_eq!(
        (a_stats.in_flight, a_stats.state),
        (0, BackendState::Draining),
        "{stats:?}"
    );
    assert!(matches!(
        proxy.drain("nope").await,
        Err(umbra_agent::lb::LbError::UnknownBackend(_))
    ));
    Ok(())
}

/// A backend that answers in 200 ms, then at once: once a latency window has passed, the
/// proxy's recent p99 is the fast one, while the cumulative p99 keeps the slow history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recent_p99_follows_a_latency_change_the_cumulative_one_does_not() -> Result<()> {
    const SLOW_MS: f64 = 200.0;
    let a = NamedBackend::start("a", any_port()).await?;
    let mut config = ProxyConfig::new(any_port());
    config.latency_window = Duration::from_secs(1);
    config.latency_window_buckets = 4;
    let window = config.latency_window;
    let proxy = EmbeddedProxy::start(config, &[BackendWeight::new("a", a.local_addr(), 1)]).await?;
    let base = format!("http://{}", proxy.local_addr());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    assert_eq!(proxy.recent_latency(|_| true).latency_ms_p99, None);

    // 40 slow requests, all at once.
    let slow = futures::future::join_all(
        (0..40).map(|_| client.get(format!("{base}/slow/{SLOW_MS}")).send()),
    )
    .await;
    let slow_done = std::time::Instant::now();
    for r in slow {
        assert_eq!(r?.status(), 200);
    }
    let recent = proxy.recent_latency(|_| true);
    assert_eq!(recent.responses, 40, "{recent:?}");
    assert!(recent.latency_ms_p99 >= Some(SLOW_MS), "{recent:?}");

    // Fast requests, paced (bounded: about 100) until a whole window has passed since the last
    // slow response: every slow sample has then left the window.
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    let mut fast = 0u64;
    while slow_done.elapsed() <= window + Duration::from_millis(50) && fast < 1_000 {
        pace.tick().await;
        assert_eq!(client.get(format!("{base}/")).send().await?.status(), 200);
        fast += 1;
    }
    let recent = proxy.recent_latency(|_| true);
    let cumulative = proxy.stats().await?[0].latency_ms_p99;
    println!("after {fast} fast requests: recent {recent:?}, cumulative p99 {cumulative:?}");
    assert!(
        recent.responses > 0 && recent.responses <= fast,
        "only fast requests are in the window: {recent:?}"
    );
    assert!(
        recent.latency_ms_p99.is_some_and(|p99| p99 < SLOW_MS / 2.0),
        "{recent:?}"
    );
    assert!(
        cumulative.is_some_and(|p99| p99 >= SLOW_MS),
        "the cumulative p99 keeps the slow requests: {cumulative:?}"
    );
    // Backends are chosen by name: none matches, nothing to report.
    assert_eq!(proxy.recent_latency(|name| name == "b").responses, 0);
    Ok(())
}
