//! Constant-rate HTTP load generation: the traffic client behind `umbra-load`, the warmer and
//! the cutover tests.
//!
//! The schedule is open-loop: request `i` is due at `start + i / rate`, and its latency is
//! measured from that due time, not from when a slot to send it became free, so a stalled
//! server shows up as latency instead of silently lowering the offered load (no coordinated
//! omission). Everything is bounded: requests in flight, the request count, the run time and
//! each request's time. Every request ends in exactly one counted outcome. The target is
//! either fixed base URLs or a service name resolved through hickory-resolver against the
//! given DNS servers (all of them asked at once, the first answer taken, so servers that are
//! down cost no failed lookup while one answers); the resolver caches each answer for its TTL
//! and asks again after it, which is how real clients follow a DNS cutover. A request that
//! times out says whether it was still waiting on DNS or on which address. This module must not decide what a
//! "good" result is: gates and assertions belong to its callers.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use http_body_util::{BodyExt, Full};
use hyper::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::unix_ms;

/// Requests allowed in flight at once unless configured: enough for 5,000 req/s at 50 ms,
/// small enough that a dead target cannot make the client open thousands of sockets.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// Upper bound on `max_in_flight`; far above what two cores can keep busy.
pub const MAX_IN_FLIGHT_LIMIT: usize = 16_384;
/// Per-request deadline unless configured (connect, send and read the whole body).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often progress snapshots are published unless configured.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// Highest offered rate accepted: one tokio client on two cores tops out well below it, so
/// a larger number is a typo, not a plan.
pub const MAX_RATE_PER_SEC: f64 = 200_000.0;
/// Latencies are recorded in microseconds up to ten minutes (saturating beyond), with three
/// significant figures, which is what HdrHistogram's own examples use for request latency.
const HISTOGRAM_MAX_US: u64 = 600_000_000;
const HISTOGRAM_SIGFIG: u8 = 3;
/// Distinct status codes, addresses and tally values kept; more are folded into "other" so
/// a misbehaving server cannot grow the report without bound.
const MAX_DISTINCT_KEYS: usize = 256;
/// Failed requests a report describes one by one (the first ones of a run); the rest are
/// only counted.
pub const MAX_FAILED_KEPT: usize = 8;
/// Characters of a failed answer's body (or of the error) kept in its description.
const FAILED_DETAIL_CHARS: usize = 200;

/// Where requests go.
#[derive(Clone, Debug)]
pub enum Target {
    /// Base URLs (`http://host:port`), used in turn; the request path is appended.
    Urls(Vec<Uri>),
    /// A service name resolved through DNS before each request (answers cached for their TTL).
    Service(ServiceTarget),
}

/// A service reached by name, as a user's client would reach it during a cutover.
#[derive(Clone, Debug)]
pub struct ServiceTarget {
    /// Fully qualified name, e.g. `shop.umbra.test.`.
    pub name: String,
    /// HTTP port on every address the name resolves to.
    pub port: u16,
    /// Authoritative or recursive servers to ask, e.g. `127.0.0.1:5353`.
    pub dns_servers: Vec<SocketAddr>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Urls(urls) => {
                let list: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
                write!(f, "{}", list.join(","))
            }
            Target::Service(s) => {
                let servers: Vec<String> = s.dns_servers.iter().map(|a| a.to_string()).collect();
                write!(f, "{}:{} via dns {}", s.name, s.port, servers.join(","))
            }
        }
    }
}

/// How much load, for how long, with which limits.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub target: Target,
    /// Offered rate; the schedule does not slow down when the server does.
    pub rate_per_sec: f64,
    /// Stop after scheduling this many requests.
    pub max_requests: u64,
    /// Stop scheduling after this long (in-flight requests still finish or time out).
    pub max_duration: Duration,
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    /// Count responses by the value of this response header (e.g. the backend or region
    /// that served them), which is how tests measure traffic shares from the client side.
    pub tally_header: Option<HeaderName>,
    pub progress_interval: Duration,
}

impl LoadConfig {
    /// A config with the default limits.
    pub fn new(
        target: Target,
        rate_per_sec: f64,
        max_requests: u64,
        max_duration: Duration,
    ) -> Self {
        Self {
            target,
            rate_per_sec,
            max_requests,
            max_duration,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            tally_header: None,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        }
    }

    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |msg: String| Err(LoadError::InvalidConfig(msg));
        if !(self.rate_per_sec.is_finite()
            && self.rate_per_sec > 0.0
            && self.rate_per_sec <= MAX_RATE_PER_SEC)
        {
            return bad(format!(
                "rate_per_sec must be in (0, {MAX_RATE_PER_SEC}], got {}",
                self.rate_per_sec
            ));
        }
        if self.max_requests == 0 {
            return bad("max_requests must be at least 1".into());
        }
        if self.max_duration.is_zero() {
            return bad("max_duration must be positive".into());
        }
        if self.max_in_flight == 0 || self.max_in_flight > MAX_IN_FLIGHT_LIMIT {
            return bad(format!(
                "max_in_flight must be in 1..={MAX_IN_FLIGHT_LIMIT}, got {}",
                self.max_in_flight
            ));
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout must be positive".into());
        }
        if self.progress_interval < Duration::from_millis(10) {
            return bad("progress_interval must be at least 10 ms".into());
        }
        match &self.target {
            Target::Urls(urls) => {
                if urls.is_empty() {
                    return bad("give at least one target URL".into());
                }
                for url in urls {
                    if url.scheme_str() != Some("http") || url.authority().is_none() {
                        return bad(format!("target URL {url} must look like http://host:port"));
                    }
                    // Paths come from the request source; a base URL's own path would be
                    // silently dropped, so refuse it.
                    if url.path_and_query().is_some_and(|p| p.as_str() != "/") {
                        return bad(format!(
                            "target URL {url} has a path; give only http://host:port and put paths in the requests"
                        ));
                    }
                }
            }
            Target::Service(s) => {
                if s.dns_servers.is_empty() {
                    return bad(format!(
                        "service {} needs at least one DNS server to ask",
                        s.name
                    ));
                }
                if s.name.is_empty() || s.name.contains('/') || s.name.contains(':') {
                    return bad(format!("{:?} is not a DNS name", s.name));
                }
            }
        }
        Ok(())
    }
}

/// Errors that stop a run before it starts.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid load config: {0}")]
    InvalidConfig(String),
    #[error("could not build the DNS resolver: {0}")]
    Resolver(String),
}

/// One request as the caller's mix wants it.
#[derive(Clone, Debug)]
pub struct RequestSpec {
    pub method: Method,
    /// Path and query, starting with `/`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RequestSpec {
    /// A GET of `path` with no body.
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }
}

/// Produces the `seq`-th request of a run; called once per request, from many tasks.
pub trait RequestSource: Send + Sync + 'static {
    fn request(&self, seq: u64) -> RequestSpec;
}

impl<F> RequestSource for F
where
    F: Fn(u64) -> RequestSpec + Send + Sync + 'static,
{
    fn request(&self, seq: u64) -> RequestSpec {
        self(seq)
    }
}

/// What happened to one request. Exactly one per scheduled request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 1xx/2xx/3xx response, body read in full.
    Ok,
    /// A 4xx/5xx response.
    HttpError,
    /// The TCP connection could not be made (refused, unreachable, connect timeout).
    ConnectError,
    /// No full response within `request_timeout`.
    Timeout,
    /// The service name did not resolve.
    ResolveError,
    /// The connection broke after it was made (reset, closed mid-response).
    IoError,
}

/// Counters of every outcome, plus what was scheduled and is still in flight.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct OutcomeCounts {
    pub scheduled: u64,
    pub completed: u64,
    pub ok: u64,
    pub http_error: u64,
    pub connect_error: u64,
    pub timeout: u64,
    pub resolve_error: u64,
    pub io_error: u64,
}

impl OutcomeCounts {
    /// Requests that a user would have seen fail.
    pub fn failed(&self) -> u64 {
        self.http_error + self.connect_error + self.timeout + self.resolve_error + self.io_error
    }

    fn count(&mut self, outcome: Outcome) {
        self.completed += 1;
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::HttpError => self.http_error += 1,
            Outcome::ConnectError => self.connect_error += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::ResolveError => self.resolve_error += 1,
            Outcome::IoError => self.io_error += 1,
        }
    }
}

/// One failed request as the client saw it, so a report can say what failed, where and when,
/// not only how many.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FailedRequest {
    /// The request's number in the run.
    pub seq: u64,
    /// When it was due, in milliseconds since the Unix epoch.
    pub due_unix_ms: u64,
    pub method: String,
    pub path: String,
    pub outcome: Outcome,
    /// The answer's status, when there was an answer.
    pub status: Option<u16>,
    /// Where it was sent, when it got that far.
    pub address: Option<String>,
    /// The start of the answer's body, or the error.
    pub detail: String,
}

/// Latency quantiles of successful requests, in microseconds from the scheduled send time.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// A live view of a run, published every `progress_interval` and once at the end.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadProgress {
    pub elapsed_secs: f64,
    pub in_flight: u64,
    pub counts: OutcomeCounts,
    pub latency_ok: LatencySummary,
    /// Responses by value of the tally header (`-` when absent).
    pub by_tally: BTreeMap<String, u64>,
    /// Requests by the address they were sent to.
    pub by_address: BTreeMap<String, u64>,
    pub finished: bool,
}

/// Why scheduling stopped.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    RequestCount,
    Duration,
    Cancelled,
}

/// The result of a run, as text (`Display`) or JSON (`to_json`).
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub target: String,
    pub offered_rate_per_sec: f64,
    pub achieved_rate_per_sec: f64,
    pub elapsed_secs: f64,
    pub stopped_by: StopReason,
    pub counts: OutcomeCounts,
    pub by_status: BTreeMap<u16, u64>,
    pub by_tally: BTreeMap<String, u64>,
    pub by_address: BTreeMap<String, u64>,
    /// The first [`MAX_FAILED_KEPT`] failed requests, in the order they finished.
    pub failed_requests: Vec<FailedRequest>,
    /// The number of every failed request, in the order they finished (one `u64` per failure
    /// of a bounded run), so a caller can tell exactly which writes were acknowledged.
    #[serde(skip)]
    pub failed_seqs: Vec<u64>,
    pub latency_ok: LatencySummary,
    /// The full histogram of successful latencies (µs) for callers that merge or compare runs.
    #[serde(skip)]
    pub latency_ok_histogram: Histogram<u64>,
}

impl LoadReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a LoadReport always serializes")
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(f, "target        {}", self.target)?;
        writeln!(
            f,
            "rate          offered {:.1}/s, achieved {:.1}/s over {:.2} s (stopped by {:?})",
            self.offered_rate_per_sec,
            self.achieved_rate_per_sec,
            self.elapsed_secs,
            self.stopped_by
        )?;
        writeln!(
            f,
            "requests      scheduled {}, completed {}, ok {}, failed {}",
            c.scheduled,
            c.completed,
            c.ok,
            c.failed()
        )?;
        writeln!(
            f,
            "failures      http {}, connect {}, timeout {}, resolve {}, io {}",
            c.http_error, c.connect_error, c.timeout, c.resolve_error, c.io_error
        )?;
        let l = &self.latency_ok;
        let ms = |us: u64| us as f64 / 1000.0;
        writeln!(
            f,
            "latency ok ms p50 {:.3}, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3} (n={})",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            l.count
        )?;
        if !self.by_status.is_empty() {
            let parts: Vec<String> = self
                .by_status
                .iter()
                .map(|(s, n)| format!("{s}={n}"))
                .collect();
            writeln!(f, "status        {}", parts.join(" "))?;
        }
        if !self.by_tally.is_empty() {
            let total: u64 = self.by_tally.values().sum();
            let parts: Vec<String> = self
                .by_tally
                .iter()
                .map(|(k, n)| format!("{k}={n} ({:.1}%)", 100.0 * *n as f64 / total.max(1) as f64))
                .collect();
            writeln!(f, "served by     {}", parts.join(" "))?;
        }
        if self.by_address.len() > 1 {
            let parts: Vec<String> = self
                .by_address
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            writeln!(f, "addresses     {}", parts.join(" "))?;
        }
        for failed in &self.failed_requests {
            let answer = failed
                .status
                .map_or_else(|| format!("{:?}", failed.outcome), |s| s.to_string());
            writeln!(
                f,
                "failed        #{} {} {} via {} → {answer}: {}",
                failed.seq,
                failed.method,
                failed.path,
                failed.address.as_deref().unwrap_or("-"),
                failed.detail
            )?;
        }
        Ok(())
    }
}

/// Shared, lock-protected tallies. Updated once per completed request: at the rates one
/// client reaches on two cores an uncontended mutex costs far less than the request itself.
struct Tallies {
    counts: OutcomeCounts,
    in_flight: u64,
    by_status: BTreeMap<u16, u64>,
    by_tally: BTreeMap<String, u64>,
    by_address: BTreeMap<String, u64>,
    failed_requests: Vec<FailedRequest>,
    failed_seqs: Vec<u64>,
    latency_ok: Histogram<u64>,
}

fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, other: K) {
    if map.len() >= MAX_DISTINCT_KEYS && !map.contains_key(&key) {
        *map.entry(other).or_insert(0) += 1;
    } else {
        *map.entry(key).or_insert(0) += 1;
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, HISTOGRAM_SIGFIG)
        .expect("histogram bounds are constants that hdrhistogram accepts")
}

/// How a request found its address.
enum Addressing {
    Urls(Vec<String>),
    Service {
        name: String,
        port: u16,
        host_header: HeaderValue,
        resolver: Box<TokioResolver>,
    },
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One run of constant-rate load. Create, take `progress()` / `cancel_token()` if wanted,
/// then `run()`.
pub struct LoadGenerator {
    config: LoadConfig,
    source: Arc<dyn RequestSource>,
    cancel: CancellationToken,
    progress_tx: watch::Sender<LoadProgress>,
}

impl LoadGenerator {
    pub fn new(config: LoadConfig, source: impl RequestSource) -> Result<Self, LoadError> {
        config.validate()?;
        let (progress_tx, _) = watch::channel(LoadProgress::default());
        Ok(Self {
            config,
            source: Arc::new(source),
            cancel: CancellationToken::new(),
            progress_tx,
        })
    }

    /// Live snapshots; the last one has `finished = true`.
    pub fn progress(&self) -> watch::Receiver<LoadProgress> {
        self.progress_tx.subscribe()
    }

    /// Cancelling stops scheduling; requests in flight still finish or time out and are
    /// counted, so the report stays complete.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub async fn run(self) -> Result<LoadReport, LoadError> {
        let config = self.config;
        let addressing = Arc::new(match &config.target {
            Target::Urls(urls) => Addressing::Urls(
                urls.iter()
                    .map(|u| format!("http://{}", u.authority().expect("validated")))
                    .collect(),
            ),
            Target::Service(s) => {
                let host = format!("{}:{}", s.name.trim_end_matches('.'), s.port);
                Addressing::Service {
                    name: s.name.clone(),
                    port: s.port,
                    host_header: HeaderValue::from_str(&host).map_err(|_| {
                        LoadError::InvalidConfig(format!("{host:?} is not a valid Host"))
                    })?,
                    resolver: Box::new(build_resolver(&s.dns_servers, config.request_timeout)?),
                }
            }
        });

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.request_timeout));
        connector.set_nodelay(true);
        let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);

        let tallies = Arc::new(Mutex::new(Tallies {
            counts: OutcomeCounts::default(),
            in_flight: 0,
            by_status: BTreeMap::new(),
            by_tally: BTreeMap::new(),
            by_address: BTreeMap::new(),
            failed_requests: Vec::new(),
            failed_seqs: Vec::new(),
            latency_ok: new_histogram(),
        }));

        let start = Instant::now();
        let start_unix_ms = unix_ms();
        let deadline = start + config.max_duration;
        let permits = Arc::new(Semaphore::new(config.max_in_flight));
        let done = CancellationToken::new();
        let progress_task = tokio::spawn(publish_progress(
            tallies.clone(),
            self.progress_tx.clone(),
            start,
            config.progress_interval,
            done.clone(),
        ));

        let mut stopped_by = StopReason::RequestCount;
        for seq in 0..config.max_requests {
            let due = start + Duration::from_secs_f64(seq as f64 / config.rate_per_sec);
            if due >= deadline {
                stopped_by = StopReason::Duration;
                break;
            }
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => { stopped_by = StopReason::Cancelled; break; }
                _ = tokio::time::sleep_until(due) => {}
            }
            // Waiting for a slot does not move `due`: the wait is part of the latency.
            let permit = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => { stopped_by = StopReason::Cancelled; break; }
                _ = tokio::time::sleep_until(deadline) => { stopped_by = StopReason::Duration; break; }
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            {
                let mut t = tallies.lock().expect("tallies lock");
                t.counts.scheduled += 1;
                t.in_flight += 1;
            }
            let spec = self.source.request(seq);
            let task = RequestTask {
                client: client.clone(),
                addressing: addressing.clone(),
                tallies: tallies.clone(),
                timeout: config.request_timeout,
                tally_header: config.tally_header.clone(),
            };
            let due_unix_ms = start_unix_ms + (due - start).as_millis() as u64;
            tokio::spawn(async move {
                task.run(seq, due, due_unix_ms, spec).await;
                drop(permit);
            });
        }
        // Every task holds a permit until it has counted its outcome, and each is bounded by
        // `request_timeout`, so taking all permits back waits for exactly the stragglers.
        let all = u32::try_from(config.max_in_flight).expect("validated below u32::MAX");
        let _all_back = permits
            .acquire_many(all)
            .await
            .expect("the semaphore is never closed");
        let elapsed = start.elapsed();
        done.cancel();
        let _ = progress_task.await;

        let t = tallies.lock().expect("tallies lock");
        let report = LoadReport {
            target: config.target.to_string(),
            offered_rate_per_sec: config.rate_per_sec,
            achieved_rate_per_sec: t.counts.completed as f64 / elapsed.as_secs_f64().max(1e-9),
            elapsed_secs: elapsed.as_secs_f64(),
            stopped_by,
            counts: t.counts.clone(),
            by_status: t.by_status.clone(),
            by_tally: t.by_tally.clone(),
            by_address: t.by_address.clone(),
            failed_requests: t.failed_requests.clone(),
            failed_seqs: t.failed_seqs.clone(),
            latency_ok: LatencySummary::from_histogram(&t.latency_ok),
            latency_ok_histogram: t.latency_ok.clone(),
        };
        let _ = self.progress_tx.send(snapshot(&t, elapsed, true));
        Ok(report)
    }
}

fn build_resolver(servers: &[SocketAddr], timeout: Duration) -> Result<TokioResolver, LoadError> {
    let mut config = ResolverConfig::default();
    for server in servers {
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = server.port();
        config
            .name_servers
            .push(NameServerConfig::new(server.ip(), true, vec![udp, tcp]));
    }
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    // Two tries per server: enough to ride out one lost UDP datagram on a loaded box.
    opts.attempts = 2;
    // Ask every server at once and take the first answer. hickory's default asks two; a server
    // that is down (killed, paused, cut off) never answers a UDP query, so with two of them in
    // that pair a lookup would wait out the whole timeout although a third server answers.
    // The servers are one service's own name servers (the orchestrators), a handful at most.
    opts.num_concurrent_reqs = servers.len().max(1);
    // The TTL is the point of the exercise: never stretch it, never cache beyond it.
    opts.positive_min_ttl = None;
    opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| LoadError::Resolver(e.to_string()))
}

fn snapshot(t: &Tallies, elapsed: Duration, finished: bool) -> LoadProgress {
    LoadProgress {
        elapsed_secs: elapsed.as_secs_f64(),
        in_flight: t.in_flight,
        counts: t.counts.clone(),
        latency_ok: LatencySummary::from_histogram(&t.latency_ok),
        by_tally: t.by_tally.clone(),
        by_address: t.by_address.clone(),
        finished,
    }
}

async fn publish_progress(
    tallies: Arc<Mutex<Tallies>>,
    tx: watch::Sender<LoadProgress>,
    start: Instant,
    every: Duration,
    done: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snap = snapshot(
            &tallies.lock().expect("tallies lock"),
            start.elapsed(),
            false,
        );
        let _ = tx.send(snap);
    }
}

struct RequestTask {
    client: HttpClient,
    addressing: Arc<Addressing>,
    tallies: Arc<Mutex<Tallies>>,
    timeout: Duration,
    tally_header: Option<HeaderName>,
}

struct Response {
    status: u16,
    tally: Option<String>,
    /// The start of the body of a 4xx/5xx answer.
    error_body: Option<String>,
}

/// A request that failed before an answer: what happened, and the error's text.
struct Failure {
    outcome: Outcome,
    detail: String,
}

impl Failure {
    fn new(outcome: Outcome, detail: impl std::fmt::Display) -> Self {
        Self {
            outcome,
            detail: detail.to_string(),
        }
    }
}

fn cut(text: &str) -> String {
    text.chars().take(FAILED_DETAIL_CHARS).collect()
}

impl RequestTask {
    async fn run(self, seq: u64, due: Instant, due_unix_ms: u64, spec: RequestSpec) {
        let (method, path) = (spec.method.to_string(), spec.path.clone());
        let (address, result) = self.send(seq, spec).await;
        let latency_us = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
        let (outcome, response, detail) = match result {
            Err(failure) => (failure.outcome, None, failure.detail),
            Ok(mut response) => {
                // Only a 2xx is a success: a redirect is not what the client asked for.
                let outcome = if (200..300).contains(&response.status) {
                    Outcome::Ok
                } else {
                    Outcome::HttpError
                };
                let detail = response.error_body.take().unwrap_or_default();
                (outcome, Some(response), detail)
            }
        };
        let mut t = self.tallies.lock().expect("tallies lock");
        t.in_flight -= 1;
        t.counts.count(outcome);
        if outcome != Outcome::Ok {
            t.failed_seqs.push(seq);
        }
        if outcome == Outcome::Ok {
            t.latency_ok.saturating_record(latency_us.max(1));
        } else if t.failed_requests.len() < MAX_FAILED_KEPT {
            t.failed_requests.push(FailedRequest {
                seq,
                due_unix_ms,
                method,
                path,
                outcome,
                status: response.as_ref().map(|r| r.status),
                address: address.clone(),
                detail: cut(&detail),
            });
        }
        if let Some(address) = address {
            bump(&mut t.by_address, address, "other".to_string());
        }
        if let Some(response) = response {
            bump(&mut t.by_status, response.status, 0);
            if self.tally_header.is_some() {
                let key = response.tally.unwrap_or_else(|| "-".to_string());
                bump(&mut t.by_tally, key, "other".to_string());
            }
        }
    }

    /// Resolves (if needed) and sends, all of it within the request timeout; returns the
    /// address used (`None` when the name gave none) and the response or the failed outcome.
    /// A timeout says which part it cut: the DNS lookup, or the exchange with the address.
    async fn send(
        &self,
        seq: u64,
        spec: RequestSpec,
    ) -> (Option<String>, Result<Response, Failure>) {
        let deadline = Instant::now() + self.timeout;
        let timed_out = |what: &str| {
            let within = self.timeout.as_millis();
            Err(Failure::new(
                Outcome::Timeout,
                format!("{what} within {within} ms"),
            ))
        };
        let (base, host) = match &*self.addressing {
            Addressing::Urls(bases) => (bases[(seq % bases.len() as u64) as usize].clone(), None),
            Addressing::Service {
                name,
                port,
                host_header,
                resolver,
            } => match tokio::time::timeout_at(deadline, resolver.lookup_ip(name.as_str())).await {
                Err(_) => return (None, timed_out("no DNS answer")),
                Ok(Ok(lookup)) => match lookup.iter().next() {
                    Some(ip) => (base_url(ip, *port), Some(host_header.clone())),
                    None => {
                        let failure =
                            Failure::new(Outcome::ResolveError, "no address in the answer");
                        return (None, Err(failure));
                    }
                },
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, name, "service name did not resolve");
                    return (None, Err(Failure::new(Outcome::ResolveError, e)));
                }
            },
        };
        let address = base.trim_start_matches("http://").to_string();
        let uri = match format!("{base}{}", spec.path).parse::<Uri>() {
            Ok(uri) => uri,
            Err(e) => {
                // A caller's mix produced a bad path: count it as a failed request rather than
                // panicking inside a spawned task.
                tracing::warn!(error = %e, path = spec.path, "request path does not form a URI");
                return (Some(address), Err(Failure::new(Outcome::HttpError, e)));
            }
        };
        let mut request = Request::builder().method(spec.method).uri(uri);
        if let Some(headers) = request.headers_mut() {
            headers.extend(spec.headers);
            if let Some(host) = host {
                headers.insert(HOST, host);
            }
        }
        let request = request
            .body(Full::new(spec.body))
            .expect("method, URI and headers are valid");
        let result = match tokio::time::timeout_at(deadline, self.exchange(request, &address)).await
        {
            Ok(result) => result,
            Err(_) => timed_out("no whole answer"),
        };
        (Some(address), result)
    }

    /// Sends `request` to `address` and reads the whole answer.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        address: &str,
    ) -> Result<Response, Failure> {
        let response = match self.client.request(request).await {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                return Err(Failure::new(
                    Outcome::ConnectError,
                    umbra_proto::exit::one_line(&e),
                ));
            }
            Err(e) => {
                tracing::debug!(error = %e, address, "request failed after connecting");
                return Err(Failure::new(
                    Outcome::IoError,
                    umbra_proto::exit::one_line(&e),
                ));
            }
        };
        let status = response.status().as_u16();
        let tally = self.tally_header.as_ref().and_then(|h| {
            response
                .headers()
                .get(h)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        });
        match response.into_body().collect().await {
            Ok(body) => {
                let error_body = (status >= 400)
                    .then(|| String::from_utf8_lossy(&body.to_bytes()).trim().to_string());
                Ok(Response {
                    status,
                    tally,
                    error_body,
                })
            }
            Err(e) => Err(Failure::new(
                Outcome::IoError,
                umbra_proto::exit::one_line(&e),
            )),
        }
    }
}

fn base_url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{port}"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Target {
        Target::Urls(list.iter().map(|u| u.parse().unwrap()).collect())
    }

    #[test]
    fn validate_rejects_what_cannot_run() {
        let ok = LoadConfig::new(
            urls(&["http://127.0.0.1:1"]),
            100.0,
            10,
            Duration::from_secs(1),
        );
        assert!(ok.validate().is_ok());
        let cases: Vec<(&str, LoadConfig)> = vec![
            (
                "zero rate",
                LoadConfig {
                    rate_per_sec: 0.0,
                    ..ok.clone()
                },
            ),
            (
                "nan rate",
                LoadConfig {
                    rate_per_sec: f64::NAN,
                    ..ok.clone()
                },
            ),
            (
                "no requests",
                LoadConfig {
                    max_requests: 0,
                    ..ok.clone()
                },
            ),
            (
                "no time",
                LoadConfig {
                    max_duration: Duration::ZERO,
                    ..ok.clone()
                },
            ),
            (
                "no slots",
                LoadConfig {
                    max_in_flight: 0,
                    ..ok.clone()
                },
            ),
            (
                "no urls",
                LoadConfig {
                    target: Target::Urls(vec![]),
                    ..ok.clone()
                },
            ),
            (
                "https",
                LoadConfig {
                    target: urls(&["https://127.0.0.1:1"]),
                    ..ok.clone()
                },
            ),
            (
                "path",
                LoadConfig {
                    target: urls(&["http://127.0.0.1:1/api"]),
                    ..ok.clone()
                },
            ),
            (
                "no dns",
                LoadConfig {
                    target: Target::Service(ServiceTarget {
                        name: "shop.test.".into(),
                        port: 80,
                        dns_servers: vec![],
                    }),
                    ..ok.clone()
                },
            ),
        ];
        for (what, config) in cases {
            assert!(
                matches!(config.validate(), Err(LoadError::InvalidConfig(_))),
                "{what} should be refused"
            );
        }
    }

    #[test]
    fn failed_counts_every_failure_kind() {
        let mut c = OutcomeCounts::default();
        for o in [
            Outcome::Ok,
            Outcome::HttpError,
            Outcome::ConnectError,
            Outcome::Timeout,
            Outcome::ResolveError,
            Outcome::IoError,
        ] {
            c.count(o);
        }
        assert_eq!((c.completed, c.ok, c.failed()), (6, 1, 5));
    }

    #[tokio::test]
    async fn refused_connections_are_counted_not_lost() {
        // Bind then drop a listener so the port is very likely closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = urls(&[&format!("http://127.0.0.1:{port}")]);
        let config = LoadConfig::new(target, 200.0, 20, Duration::from_secs(10));
        let report = LoadGenerator::new(config, |_| RequestSpec::get("/"))
            .unwrap()
            .run()
            .await
            .unwrap();
        assert_eq!(report.counts.scheduled, 20);
        assert_eq!(report.counts.completed, 20);
        assert_eq!(report.counts.connect_error, 20, "{report}");
        assert_eq!(report.stopped_by, StopReason::RequestCount);
        // Only the first few are described, each with the error's own text.
        assert_eq!(report.failed_requests.len(), MAX_FAILED_KEPT);
        for failed in &report.failed_requests {
            assert_eq!(failed.outcome, Outcome::ConnectError);
            assert_eq!(failed.status, None);
            assert!(!failed.detail.is_empty(), "{failed:?}");
        }
    }

    #[tokio::test]
    async fn a_failed_answer_is_described_with_its_status_body_address_and_time() {
        let app = axum::Router::new()
            .route("/ok", axum::routing::get(|| async { "ok" }))
            .fallback(|| async {
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "the instance is read-only",
                )
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let before = unix_ms();
        let config = LoadConfig::new(
            urls(&[&format!("http://{addr}")]),
            100.0,
            10,
            Duration::from_secs(10),
        );
        let report = LoadGenerator::new(config, |seq| {
            RequestSpec::get(if seq % 2 == 0 { "/ok" } else { "/kv/gone" })
        })
        .unwrap()
        .run()
        .await
        .unwrap();
        let after = unix_ms();
        assert_eq!((report.counts.ok, report.counts.http_error), (5, 5));
        let mut seqs: Vec<u64> = report.failed_requests.iter().map(|f| f.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, [1, 3, 5, 7, 9]);
        let mut all = report.failed_seqs.clone();
        all.sort_unstable();
        assert_eq!(all, seqs, "every failed request's number is kept");
        for failed in &report.failed_requests {
            assert_eq!(failed.outcome, Outcome::HttpError);
            assert_eq!(failed.status, Some(503));
            assert_eq!(
                (failed.method.as_str(), failed.path.as_str()),
                ("GET", "/kv/gone")
            );
            assert_eq!(failed.address.as_deref(), Some(addr.to_string().as_str()));
            assert_eq!(failed.detail, "the instance is read-only");
            assert!((before..=after).contains(&failed.due_unix_ms), "{failed:?}");
        }
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["failed_requests"][0]["outcome"], "http_error");
    }

    #[tokio::test]
    async fn slow_answers_time_out_and_tallies_name_the_server() {
        use crate::lb::named_backend::{BACKEND_HEADER, NamedBackend};
        let backend = NamedBackend::start("slowpoke", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let target = urls(&[&format!("http://{}", backend.local_addr())]);
        let mut config = LoadConfig::new(target, 100.0, 10, Duration::from_secs(10));
        config.request_timeout = Duration::from_millis(200);
        config.tally_header = Some(HeaderName::from_static(BACKEND_HEADER));
        // Even requests are fast, odd ones wait 2 s and must be cut at the 200 ms timeout.
        let generator = LoadGenerator::new(config, |seq| {
            RequestSpec::get(if seq % 2 == 0 {
                "/".to_string()
            } else {
                "/slow/2000".to_string()
            })
        })
        .unwrap();
        let mut progress = generator.progress();
        let report = generator.run().await.unwrap();
        assert_eq!(
            (report.counts.ok, report.counts.timeout),
            (5, 5),
            "{report}"
        );
        assert_eq!(report.by_tally.get("slowpoke"), Some(&5));
        // A timeout names the address it was waiting on and the part it cut.
        let addr = backend.local_addr().to_string();
        for failed in &report.failed_requests {
            assert_eq!(failed.address.as_deref(), Some(addr.as_str()), "{report}");
            assert!(
                failed.detail.starts_with("no whole answer within 200 ms"),
                "{report}"
            );
        }
        assert_eq!(report.failed_requests.len(), 5, "{report}");
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["counts"]["timeout"], 5);
        // The final snapshot is marked finished and agrees with the report.
        let last = progress.borrow_and_update().clone();
        assert!(last.finished);
        assert_eq!(last.counts, report.counts);
    }

    #[tokio::test]
    async fn cancellation_stops_scheduling_and_still_reports() {
        let backend =
            crate::lb::named_backend::NamedBackend::start("c", "127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
        let target = urls(&[&format!("http://{}", backend.local_addr())]);
        let config = LoadConfig::new(target, 50.0, 1_000_000, Duration::from_secs(60));
        let generator = LoadGenerator::new(config, |_| RequestSpec::get("/")).unwrap();
        let cancel = generator.cancel_token();
        let mut progress = generator.progress();
        let run = tokio::spawn(generator.run());
        // Cancel once some requests completed (bounded wait).
        tokio::time::timeout(Duration::from_secs(10), async {
            while progress.borrow_and_update().counts.completed < 5 {
                progress.changed().await.unwrap();
            }
        })
        .await
        .expect("5 requests complete within 10 s");
        cancel.cancel();
        let report = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(report.stopped_by, StopReason::Cancelled);
        assert_eq!(report.counts.scheduled, report.counts.completed);
        assert!(report.counts.completed < 1000, "{report}");
        assert_eq!(report.counts.failed(), 0, "{report}");
    }
}
