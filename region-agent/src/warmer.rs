//! The warmer: synthetic traffic from a declared request mix against one shadow instance until
//! a readiness gate holds — p99 within X % of the source region's measured p99, error rate under
//! Y, at least N requests — or the duration cap is hit.
//!
//! Split as the style asks: [`check_plan`] and [`WarmupTracker`] are pure (plan validation, and
//! the gate as a function of measured windows and elapsed time); [`warm`] is the driver, which
//! runs the traffic helper's open-loop load generator ([`crate::loadgen`]) in consecutive
//! windows of about [`WINDOW`] and feeds each window's numbers to the tracker. The gate judges
//! the latest [`GATE_WINDOWS`] windows, not the whole run, because the point is how the
//! instance serves *now*, and not a single window, because one lucky second proves nothing.
//!
//! Errors, for the gate, are what a user would call a failure: 5xx, timeouts, connection
//! failures. A 404 is a served answer (the key is absent) and is not an error; note that the
//! load generator records latency for 1xx–3xx answers only, so warm an instance that holds the
//! data (replicate first), which is also what makes its cache meaningful.
//!
//! It must never replay writes at a target that holds real data: a mix with a non-safe method
//! is refused unless the plan says `allow_writes`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use hyper::{Method, Uri};
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use umbra_proto::agent::{ReadinessGate, RequestMix, WarmupPhase, WarmupProgress, WarmupSpec};

use crate::loadgen::{LoadConfig, LoadError, LoadGenerator, LoadReport, RequestSpec, Target};

/// Length of one measured window ([`umbra_proto::agent::GATE_WINDOW_MS`]).
pub const WINDOW: Duration = Duration::from_millis(umbra_proto::agent::GATE_WINDOW_MS);
pub use umbra_proto::agent::{GATE_WINDOWS, MIN_GATE_SAMPLES as MIN_WINDOW_REQUESTS};
/// Longest warm-up cap accepted (1 hour).
pub const MAX_DURATION_MS: u64 = 3_600_000;
/// Highest rate accepted for a warm-up, req/s.
pub const MAX_WARM_RATE: f64 = 50_000.0;

/// A plan that cannot be run, with what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The request mix is invalid.
    #[error("invalid request mix: {0}")]
    Mix(String),
    /// The readiness gate is invalid.
    #[error("invalid readiness gate: {0}")]
    Gate(String),
    /// The mix writes but the plan does not allow it.
    #[error(
        "the mix sends {0} requests, which would replay writes against the target; use safe \
         methods (GET, HEAD, OPTIONS) or set allow_writes when the target holds no real data"
    )]
    WritesNotAllowed(String),
}

/// Errors of a warm-up run.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// The plan is invalid; nothing was sent.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The target URL is invalid.
    #[error("invalid warm-up target {0:?}: use http://host:port")]
    Target(String),
    /// The load generator failed.
    #[error("load generator: {0}")]
    Load(#[from] LoadError),
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Checks a plan completely before any request is sent.
pub fn check_plan(plan: &WarmupSpec) -> Result<(), PlanError> {
    check_mix(&plan.mix)?;
    check_gate(&plan.gate)?;
    if !plan.allow_writes {
        for r in &plan.mix.requests {
            let m = Method::from_bytes(r.method.as_bytes()).expect("checked by check_mix");
            if !is_safe(&m) {
                return Err(PlanError::WritesNotAllowed(r.method.clone()));
            }
        }
    }
    Ok(())
}

fn check_mix(mix: &RequestMix) -> Result<(), PlanError> {
    let bad = |m: String| Err(PlanError::Mix(m));
    if !(mix.rate_per_sec.is_finite() && mix.rate_per_sec > 0.0) {
        return bad(format!(
            "rate_per_sec {} must be a positive number of requests per second",
            mix.rate_per_sec
        ));
    }
    if mix.rate_per_sec > MAX_WARM_RATE {
        return bad(format!(
            "rate_per_sec {} is above the {MAX_WARM_RATE} limit",
            mix.rate_per_sec
        ));
    }
    if mix.max_duration_ms == 0 || mix.max_duration_ms > MAX_DURATION_MS {
        return bad(format!(
            "max_duration_ms {} must be between 1 and {MAX_DURATION_MS}",
            mix.max_duration_ms
        ));
    }
    if mix.requests.is_empty() {
        return bad("requests is empty; declare at least one request template".into());
    }
    for r in &mix.requests {
        if Method::from_bytes(r.method.as_bytes()).is_err() {
            return bad(format!("{:?} is not an HTTP method", r.method));
        }
        if !r.path.starts_with('/') {
            return bad(format!("path {:?} must start with '/'", r.path));
        }
        if !(r.weight.is_finite() && r.weight > 0.0) {
            return bad(format!(
                "weight {} of {} must be positive",
                r.weight, r.path
            ));
        }
    }
    if mix.key_count == 0 && mix.requests.iter().any(|r| r.path.contains("{key}")) {
        return bad("key_count must be at least 1 when a path uses {key}".into());
    }
    if !(mix.zipf_exponent.is_finite() && mix.zipf_exponent >= 0.0) {
        return bad(format!(
            "zipf_exponent {} must be 0 (uniform) or more",
            mix.zipf_exponent
        ));
    }
    Ok(())
}

fn check_gate(gate: &ReadinessGate) -> Result<(), PlanError> {
    let bad = |m: String| Err(PlanError::Gate(m));
    if !(gate.reference_p99_ms.is_finite() && gate.reference_p99_ms > 0.0) {
        return bad(format!(
            "reference_p99_ms {} must be the source's measured p99, above 0",
            gate.reference_p99_ms
        ));
    }
    if !(gate.p99_tolerance_pct.is_finite() && gate.p99_tolerance_pct >= 0.0) {
        return bad(format!(
            "p99_tolerance_pct {} must be 0 or more",
            gate.p99_tolerance_pct
        ));
    }
    if !(0.0..=1.0).contains(&gate.max_error_rate) {
        return bad(format!(
            "max_error_rate {} must be between 0 and 1",
            gate.max_error_rate
        ));
    }
    Ok(())
}

/// What one measured window saw.
#[derive(Debug, Clone)]
pub struct WindowStats {
    /// Requests completed in the window.
    pub requests: u64,
    /// Of which failed (5xx, timeouts, connection failures).
    pub errors: u64,
    /// Latencies of the window's answered requests, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl WindowStats {
    /// Reads a window from a load-generator report.
    pub fn from_report(report: &LoadReport) -> Self {
        let client_errors: u64 = report
            .by_status
            .iter()
            .filter(|(s, _)| (400..500).contains(*s))
            .map(|(_, n)| *n)
            .sum();
        WindowStats {
            requests: report.counts.completed,
            errors: report.counts.failed().saturating_sub(client_errors),
            latency_us: report.latency_ok_histogram.clone(),
        }
    }
}

/// The gate as a state machine over windows: pure, time passed in. It judges the last
/// [`GATE_WINDOWS`] windows together (their merged latency histogram and summed errors), so
/// one lucky second cannot declare an instance ready.
#[derive(Debug, Clone)]
pub struct WarmupTracker {
    gate: ReadinessGate,
    cap: Duration,
    recent: VecDeque<WindowStats>,
    progress: WarmupProgress,
}

impl WarmupTracker {
    /// A tracker for `instance` with the plan's gate and cap.
    pub fn new(instance: &str, plan: &WarmupSpec) -> Self {
        WarmupTracker {
            gate: plan.gate.clone(),
            cap: Duration::from_millis(plan.mix.max_duration_ms),
            recent: VecDeque::new(),
            progress: WarmupProgress {
                instance: instance.to_owned(),
                phase: WarmupPhase::Running,
                requests: 0,
                errors: 0,
                window_p99_ms: 0.0,
                window_error_rate: 0.0,
                elapsed_ms: 0,
            },
        }
    }

    /// The p99 the gate allows, ms.
    pub fn p99_limit_ms(&self) -> f64 {
        self.gate.reference_p99_ms * (1.0 + self.gate.p99_tolerance_pct / 100.0)
    }

    /// Takes a finished window; `elapsed` is the time since the warm-up began.
    pub fn handle_window(&mut self, window: WindowStats, elapsed: Duration) -> &WarmupProgress {
        if self.progress.phase != WarmupPhase::Running {
            return &self.progress;
        }
        self.progress.requests += window.requests;
        self.progress.errors += window.errors;
        self.progress.elapsed_ms = elapsed.as_millis() as u64;
        self.recent.push_back(window);
        while self.recent.len() > GATE_WINDOWS {
            self.recent.pop_front();
        }
        let mut merged = self.recent[0].latency_us.clone();
        for w in self.recent.iter().skip(1) {
            // Same bounds for every window (the load generator's), so adding cannot fail.
            let _ = merged.add(&w.latency_us);
        }
        let requests: u64 = self.recent.iter().map(|w| w.requests).sum();
        let errors: u64 = self.recent.iter().map(|w| w.errors).sum();
        let error_rate = if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        };
        let p99_ms = if merged.is_empty() {
            f64::INFINITY
        } else {
            merged.value_at_quantile(0.99) as f64 / 1_000.0
        };
        self.progress.window_p99_ms = if p99_ms.is_finite() { p99_ms } else { 0.0 };
        self.progress.window_error_rate = error_rate;
        let ready = self.recent.len() == GATE_WINDOWS
            && self.progress.requests >= self.gate.min_requests
            && merged.len() >= MIN_WINDOW_REQUESTS
            && p99_ms <= self.p99_limit_ms()
            && error_rate <= self.gate.max_error_rate;
        if ready {
            self.progress.phase = WarmupPhase::Ready;
        } else if elapsed >= self.cap {
            self.progress.phase = WarmupPhase::CapReached;
        }
        &self.progress
    }

    /// Time left before the cap.
    pub fn remaining(&self, elapsed: Duration) -> Duration {
        self.cap.saturating_sub(elapsed)
    }

    /// Progress so far.
    pub fn progress(&self) -> &WarmupProgress {
        &self.progress
    }
}

/// Draws requests from a mix: template by weight, key by Zipf rank. Deterministic per
/// (seed, sequence number), so it needs no lock across the load generator's tasks.
pub struct MixSource {
    mix: RequestMix,
    cumulative_weights: Vec<f64>,
    zipf: Option<rand_distr::Zipf<f64>>,
    seed: u64,
}

impl MixSource {
    /// A source for a checked mix.
    pub fn new(mix: RequestMix, seed: u64) -> Result<Self, PlanError> {
        check_mix(&mix)?;
        let mut total = 0.0;
        let cumulative_weights = mix
            .requests
            .iter()
            .map(|r| {
                total += r.weight;
                total
            })
            .collect();
        let zipf = if mix.key_count > 0 {
            Some(
                rand_distr::Zipf::new(mix.key_count as f64, mix.zipf_exponent)
                    .map_err(|e| PlanError::Mix(format!("key distribution: {e}")))?,
            )
        } else {
            None
        };
        Ok(MixSource {
            mix,
            cumulative_weights,
            zipf,
            seed,
        })
    }

    /// The `seq`-th request.
    pub fn request(&self, seq: u64) -> RequestSpec {
        let mut rng =
            rand::rngs::StdRng::seed_from_u64(self.seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let total = *self.cumulative_weights.last().expect("non-empty mix");
        let pick = rng.random_range(0.0..total);
        let idx = self
            .cumulative_weights
            .iter()
            .position(|w| pick < *w)
            .unwrap_or(self.mix.requests.len() - 1);
        let template = &self.mix.requests[idx];
        let path = match &self.zipf {
            Some(z) if template.path.contains("{key}") => {
                // Zipf samples ranks 1..=N; rank 1 is the hottest key.
                let rank = rng.sample(z) as u64;
                template.path.replace("{key}", &format!("key-{}", rank - 1))
            }
            _ => template.path.clone(),
        };
        let mut spec = RequestSpec::get(path);
        spec.method = Method::from_bytes(template.method.as_bytes()).expect("checked mix");
        if !is_safe(&spec.method) {
            spec.body = bytes::Bytes::from_static(b"warm-up");
        }
        spec
    }
}

/// What every warm-up sent, for the agent's metrics endpoint (unregistered until the agent
/// registers [`WarmupTelemetry::collectors`]): requests by result and the answered requests'
/// latency, with no per-instance label so the series stay bounded.
#[derive(Clone)]
pub struct WarmupTelemetry {
    requests: prometheus::IntCounterVec,
    duration: prometheus::Histogram,
}

impl Default for WarmupTelemetry {
    fn default() -> Self {
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "umbra_agent_warmup_requests_total",
                "Warm-up requests by result (error: 5xx, timeout or connection failure).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let duration = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "umbra_agent_warmup_request_duration_seconds",
                "Latency of answered warm-up requests.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("valid metric");
        WarmupTelemetry { requests, duration }
    }
}

impl WarmupTelemetry {
    /// The families, for registering.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.requests.clone()),
            Box::new(self.duration.clone()),
        ]
    }

    fn observe(&self, window: &WindowStats) {
        self.requests
            .with_label_values(&["ok"])
            .inc_by(window.requests.saturating_sub(window.errors));
        self.requests
            .with_label_values(&["error"])
            .inc_by(window.errors);
        for value in window.latency_us.iter_recorded() {
            let seconds = value.value_iterated_to() as f64 / 1e6;
            for _ in 0..value.count_at_value() {
                self.duration.observe(seconds);
            }
        }
    }
}

/// Warms the instance at `base_url` with `plan` until the gate holds or the cap is hit.
/// Progress is published on `progress` after every window and counted in `telemetry`;
/// `cancel` stops it between windows.
pub async fn warm(
    instance: &str,
    base_url: &str,
    plan: &WarmupSpec,
    progress: &watch::Sender<WarmupProgress>,
    telemetry: &WarmupTelemetry,
    cancel: &CancellationToken,
) -> Result<WarmupProgress, WarmError> {
    check_plan(plan)?;
    let uri: Uri = base_url
        .parse()
        .map_err(|_| WarmError::Target(base_url.to_owned()))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(WarmError::Target(base_url.to_owned()));
    }
    let source = Arc::new(MixSource::new(plan.mix.clone(), 0x5eed_0001)?);
    let mut tracker = WarmupTracker::new(instance, plan);
    let started = tokio::time::Instant::now();
    let mut offset: u64 = 0;
    progress.send_replace(tracker.progress().clone());
    loop {
        let remaining = tracker.remaining(started.elapsed());
        let window = WINDOW.min(remaining).max(Duration::from_millis(50));
        let count = ((plan.mix.rate_per_sec * window.as_secs_f64()).ceil() as u64).max(1);
        let config = LoadConfig::new(
            Target::Urls(vec![uri.clone()]),
            plan.mix.rate_per_sec,
            count,
            window,
        );
        let s = source.clone();
        let base = offset;
        let generator = LoadGenerator::new(config, move |seq: u64| s.request(base + seq))?;
        let token = generator.cancel_token();
        let report = tokio::select! {
            r = generator.run() => r?,
            _ = cancel.cancelled() => {
                token.cancel();
                return Ok(tracker.progress().clone());
            }
        };
        offset += count;
        let window = WindowStats::from_report(&report);
        telemetry.observe(&window);
        let now = tracker.handle_window(window, started.elapsed()).clone();
        tracing::info!(
            instance,
            phase = ?now.phase,
            requests = now.requests,
            window_p99_ms = now.window_p99_ms,
            limit_ms = tracker.p99_limit_ms(),
            "warm-up window"
        );
        progress.send_replace(now.clone());
        if now.phase != WarmupPhase::Running {
            return Ok(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_proto::agent::RequestTemplate;

    fn plan() -> WarmupSpec {
        WarmupSpec {
            mix: RequestMix {
                requests: vec![RequestTemplate {
                    method: "GET".into(),
                    path: "/kv/{key}".into(),
                    weight: 1.0,
                }],
                key_count: 100,
                zipf_exponent: 1.0,
                rate_per_sec: 200.0,
                max_duration_ms: 10_000,
            },
            gate: ReadinessGate {
                reference_p99_ms: 10.0,
                p99_tolerance_pct: 50.0,
                max_error_rate: 0.01,
                min_requests: 500,
            },
            allow_writes: false,
        }
    }

    #[test]
    fn bad_plans_are_refused_with_what_to_change() {
        type Mutation = Box<dyn Fn(&mut WarmupSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|p| p.mix.rate_per_sec = -5.0), "rate_per_sec -5"),
            (
                Box::new(|p| p.mix.rate_per_sec = f64::NAN),
                "positive number",
            ),
            (Box::new(|p| p.mix.requests.clear()), "at least one"),
            (
                Box::new(|p| p.mix.requests[0].weight = 0.0),
                "must be positive",
            ),
            (
                Box::new(|p| p.mix.requests[0].path = "kv".into()),
                "start with '/'",
            ),
            (Box::new(|p| p.mix.zipf_exponent = -1.0), "zipf_exponent"),
            (Box::new(|p| p.mix.max_duration_ms = 0), "max_duration_ms"),
            (Box::new(|p| p.gate.max_error_rate = 2.0), "max_error_rate"),
            (
                Box::new(|p| p.gate.reference_p99_ms = 0.0),
                "reference_p99_ms",
            ),
            (
                Box::new(|p| p.mix.requests[0].method = "PUT".into()),
                "replay writes",
            ),
        ];
        for (mutate, want) in cases {
            let mut p = plan();
            mutate(&mut p);
            let err = check_plan(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        let mut p = plan();
        p.mix.requests[0].method = "PUT".into();
        p.allow_writes = true;
        assert!(
            check_plan(&p).is_ok(),
            "writes are allowed when the plan says so"
        );
    }

    #[test]
    fn the_gate_over_windows() {
        let p = plan();
        // A window of `requests` answered requests: `slow` of them at 40 ms, the rest at 2 ms.
        let w = |requests: u64, errors: u64, slow: u64| {
            let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
            for i in 0..requests {
                h.record(if i < slow { 40_000 } else { 2_000 }).unwrap();
            }
            WindowStats {
                requests,
                errors,
                latency_us: h,
            }
        };
        let s = Duration::from_secs;
        let mut t = WarmupTracker::new("i", &p);
        // Cold windows: 10 % slow requests, p99 = 40 ms > 15 ms limit.
        assert_eq!(
            t.handle_window(w(200, 0, 20), s(1)).phase,
            WarmupPhase::Running
        );
        assert_eq!(
            t.handle_window(w(200, 0, 0), s(2)).phase,
            WarmupPhase::Running
        );
        // Three judged windows but the first of them is still cold (20 of 600 slow > 1 %).
        assert_eq!(
            t.handle_window(w(200, 0, 0), s(3)).phase,
            WarmupPhase::Running
        );
        // Fast, but errors above 1 % over the judged windows.
        assert_eq!(
            t.handle_window(w(200, 10, 0), s(4)).phase,
            WarmupPhase::Running
        );
        assert_eq!(
            t.handle_window(w(200, 0, 0), s(5)).phase,
            WarmupPhase::Running
        );
        assert_eq!(
            t.handle_window(w(200, 0, 0), s(6)).phase,
            WarmupPhase::Running
        );
        // Three clean, fast windows: ready.
        assert_eq!(
            t.handle_window(w(200, 0, 1), s(7)).phase,
            WarmupPhase::Ready
        );
        assert_eq!(t.progress().requests, 1_400);
        // Once decided, later windows change nothing.
        assert_eq!(
            t.handle_window(w(200, 200, 200), s(8)).phase,
            WarmupPhase::Ready
        );
        // Never fast: the cap ends it.
        let mut t = WarmupTracker::new("i", &p);
        assert_eq!(
            t.handle_window(w(200, 0, 50), s(9)).phase,
            WarmupPhase::Running
        );
        assert_eq!(
            t.handle_window(w(200, 0, 50), s(10)).phase,
            WarmupPhase::CapReached
        );
        // Fast from the start but fewer than min_requests in total: not ready.
        let mut t = WarmupTracker::new("i", &p);
        for i in 1..=3 {
            assert_eq!(
                t.handle_window(w(150, 0, 0), s(i)).phase,
                WarmupPhase::Running
            );
        }
        assert_eq!(
            t.handle_window(w(150, 0, 0), s(4)).phase,
            WarmupPhase::Ready
        );
    }

    #[test]
    fn the_mix_is_skewed_and_deterministic() {
        let src = MixSource::new(plan().mix, 7).unwrap();
        let hot = (0..2_000)
            .filter(|i| src.request(*i).path == "/kv/key-0")
            .count();
        // With s = 1 over 100 keys, rank 1 has probability 1/H(100) ≈ 19 %.
        assert!(
            (250..550).contains(&hot),
            "hot key drawn {hot} times of 2000"
        );
        assert_eq!(src.request(42).path, src.request(42).path);
    }
}
