//! What the region-agent integration tests share beyond the kit (`umbra_testkit`, which holds
//! what every crate's tests share): this package's `umbra-sample` and a process provider over
//! it, the provider's instance processes (found by the marker each carries in its
//! environment) and a reaper that SIGKILLs any left when a test ends — also when it fails
//! half-way, since instances run in their own sessions and would otherwise outlive the test —
//! the load generator's progress at a chosen point of its run, and the weight steps both load
//! balancers (the embedded proxy and HAProxy) are driven through under load.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hyper::header::HeaderName;
use tokio::sync::watch;
use umbra_agent::lb::named_backend::BACKEND_HEADER;
use umbra_agent::lb::{BackendWeight, LoadBalancer};
use umbra_agent::loadgen::{
    LoadConfig, LoadGenerator, LoadProgress, LoadReport, RequestSpec, Target,
};
use umbra_agent::provider::Provider;
use umbra_agent::provider::process::{ENV_PROVIDER_STATE, ProcessConfig, ProcessRuntime};
use umbra_testkit::Reaper;

/// This package's `umbra-sample`, built with the test.
pub fn sample_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_umbra-sample"))
}

/// A process provider on `state` whose instances are `umbra-sample` processes with a cold
/// read costing `backing_latency_ms`.
pub async fn sample_provider(
    state: &Path,
    backing_latency_ms: u64,
) -> anyhow::Result<Provider<ProcessRuntime>> {
    let config = ProcessConfig::sample(sample_binary().to_owned(), backing_latency_ms, None);
    Ok(Provider::open(ProcessRuntime::new(config, state)?, state).await?)
}

/// Pids of the live instance processes of this provider state directory.
pub fn processes_of(state_dir: &Path) -> Vec<u32> {
    umbra_testkit::processes_marked(ENV_PROVIDER_STATE, state_dir)
}

/// SIGKILLs every instance process of `state_dir` (which may not exist yet) when dropped.
pub fn reaper(state_dir: &Path) -> Reaper {
    Reaper::new(ENV_PROVIDER_STATE, state_dir)
}

/// The load generator's target for the HTTP server at `addr`.
pub fn http_target(addr: SocketAddr) -> Target {
    Target::Urls(vec![
        format!("http://{addr}")
            .parse()
            .expect("a socket address makes a URL"),
    ])
}

/// Load on `target` at `rate_per_sec` for at most `max_duration` (as many requests as that
/// makes), tallying responses by the backend that served them (its `x-backend` header) and
/// reporting progress every 50 ms.
pub fn tallied_load(target: Target, rate_per_sec: f64, max_duration: Duration) -> LoadConfig {
    let mut config = LoadConfig::new(
        target,
        rate_per_sec,
        (rate_per_sec * max_duration.as_secs_f64()) as u64,
        max_duration,
    );
    config.tally_header = Some(HeaderName::from_static(BACKEND_HEADER));
    config.progress_interval = Duration::from_millis(50);
    config
}

/// Waits (bounded) for the first progress snapshot at or after `elapsed_secs` of the run (or
/// the last one, if the run finishes first).
pub async fn snapshot_at(
    progress: &mut watch::Receiver<LoadProgress>,
    elapsed_secs: f64,
) -> LoadProgress {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let p = progress.borrow_and_update().clone();
            if p.elapsed_secs >= elapsed_secs || p.finished {
                return p;
            }
            progress
                .changed()
                .await
                .expect("generator alive until finished");
        }
    })
    .await
    .expect("load generator progressed within 30 s")
}

/// The weights (a, b) both load balancer tests step through, [`STEP_SECS`] each.
pub const WEIGHT_STEPS: [(u32, u32); 7] = [
    (100, 0),
    (90, 10),
    (50, 50),
    (0, 100),
    (50, 50),
    (90, 10),
    (100, 0),
];
/// How long each weight step lasts.
pub const STEP_SECS: f64 = 2.0;
/// A step's share is counted from this long after its change (requests already in flight
/// finish where they started) to 50 ms before its end.
const SETTLE_SECS: f64 = 0.25;

/// Sends GET / to `front` at `rate_per_sec` (tallied by backend) while it drives `lb` through
/// [`WEIGHT_STEPS`] for backends named a (at `a`) and b (at `b`), each as the load reaches
/// it, and within each step checks what `served` counts (the cumulative requests of a and b,
/// read at a progress snapshot): at least half of `rate_per_sec` per second, and a's share
/// within 5 points of its weight's. `counted` says what `served` counts, for the printed
/// figures and the messages. Returns the load's report once it has run to its end.
pub async fn weight_steps_under_load<C, Fut>(
    lb: &dyn LoadBalancer,
    front: SocketAddr,
    (a, b): (SocketAddr, SocketAddr),
    rate_per_sec: f64,
    counted: &str,
    mut served: C,
) -> anyhow::Result<LoadReport>
where
    C: FnMut(LoadProgress) -> Fut,
    Fut: Future<Output = anyhow::Result<(u64, u64)>>,
{
    let run_for = Duration::from_secs_f64(STEP_SECS * WEIGHT_STEPS.len() as f64 + 0.5);
    let config = tallied_load(http_target(front), rate_per_sec, run_for);
    let generator = LoadGenerator::new(config, |_| RequestSpec::get("/"))?;
    let mut progress = generator.progress();
    let run = tokio::spawn(generator.run());
    for (i, &(wa, wb)) in WEIGHT_STEPS.iter().enumerate() {
        let step_start = i as f64 * STEP_SECS;
        snapshot_at(&mut progress, step_start).await;
        lb.set_backends(&[
            BackendWeight::new("a", a, wa),
            BackendWeight::new("b", b, wb),
        ])
        .await?;
        let settled = snapshot_at(&mut progress, step_start + SETTLE_SECS).await;
        let (a0, b0) = served(settled).await?;
        let end = snapshot_at(&mut progress, step_start + STEP_SECS - 0.05).await;
        let (a1, b1) = served(end).await?;
        let (da, db) = (a1 - a0, b1 - b0);
        let total = (da + db) as f64;
        assert!(
            total >= 0.5 * rate_per_sec,
            "step {i}: only {total} {counted} in the window"
        );
        let share_a = 100.0 * da as f64 / total;
        let want_a = 100.0 * wa as f64 / (wa + wb) as f64;
        println!("step {i}: weights {wa}/{wb}: a {share_a:.1}% of {total} {counted}");
        assert!(
            (share_a - want_a).abs() <= 5.0,
            "step {i}: a got {share_a:.1}% of the {counted}, weight says {want_a:.1}%"
        );
    }
    Ok(run.await??)
}
