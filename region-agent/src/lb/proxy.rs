//! The embedded load balancer: a weighted HTTP/1.1 reverse proxy, one per region front.
//!
//! Weights live in an immutable table swapped atomically (arc-swap): a request picks its
//! backend from the table current when it arrives and keeps that backend even if the table
//! changes, so a weight change applies to new requests and in-flight requests finish where
//! they started. Within a table, backends are chosen by smooth weighted round robin (the
//! nginx algorithm), so shares match weights exactly over every cycle instead of only on
//! average. A backend that refuses a connection is ejected for a while and the request is
//! retried on another backend before the client sees an error; requests whose method is
//! idempotent are also retried when the connection breaks before a response arrives.
//! Request bodies are buffered (bounded) so a retry can resend them; response bodies stream.
//! Latency is kept twice per backend: a cumulative histogram (`LoadBalancer::stats`) and a
//! recent window of rotating histograms ([`EmbeddedProxy::recent_latency`]), so a cutover step
//! is judged on what the backends do now, not on their whole history.
//! This module must not decide weights: the orchestrator does, through `LoadBalancer`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{BackendState, BackendStats, BackendWeight, LbError, LoadBalancer, validate_backends};

/// Connect timeout to a backend unless configured: a few round trips of a slow inter-region
/// path; a refused connection on a live host fails far sooner.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for a backend's response headers unless configured.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body buffered for retries unless configured (larger requests get 413).
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Client connections served at once unless configured; each also holds a pooled upstream
/// connection, so this stays well under common file-descriptor limits.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Attempts per request (first try + retries) unless configured.
pub const DEFAULT_MAX_ATTEMPTS: usize = 3;
/// How long a backend that refused a connection is skipped unless configured: long enough
/// not to hammer a dead process, short enough that a restarted one is back within seconds.
pub const DEFAULT_EJECT_DURATION: Duration = Duration::from_secs(5);
/// Length of the recent-latency window unless configured: long enough for a few hundred
/// samples at modest traffic (a p99 needs them), short enough that a cutover step (the demo
/// holds each for 5 s) is judged on its own requests once the window has passed.
pub const DEFAULT_LATENCY_WINDOW: Duration = Duration::from_secs(5);
/// Rotating histograms making up the window unless configured: 1 s each, so a sample leaves
/// the window between 4 and 5 s after it was recorded.
pub const DEFAULT_LATENCY_WINDOW_BUCKETS: usize = 5;
/// Most histograms one window may rotate through (each is ~20 KiB, kept per backend).
pub const MAX_LATENCY_WINDOW_BUCKETS: usize = 60;
/// Latency histograms span 1 µs to 10 min at 3 significant figures.
const HISTOGRAM_MAX_US: u64 = 600_000_000;
/// Window histograms span 1 µs to 60 s (longer is a timeout, clamped to 60 s) at 2 significant
/// figures (1 % resolution, plenty for an SLO in ms): 2,560 counters, 20 KiB each, where the
/// cumulative histogram's range and precision would take 172 KiB per bucket.
const WINDOW_HISTOGRAM_MAX_US: u64 = 60_000_000;
const WINDOW_HISTOGRAM_SIGFIG: u8 = 2;

/// Hop-by-hop headers (RFC 9110 § 7.6.1) are for one connection and are not forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Settings of the embedded proxy.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    pub max_attempts: usize,
    pub eject_duration: Duration,
    /// How far back [`EmbeddedProxy::recent_latency`] looks.
    pub latency_window: Duration,
    /// Rotating histograms over `latency_window`; a sample leaves the window between
    /// `latency_window − latency_window / buckets` and `latency_window` after it was taken.
    pub latency_window_buckets: usize,
    /// Told the backend's name and the time to response headers of every answered request
    /// (the region front feeds its Prometheus histogram with it).
    pub latency_observer: Option<LatencyObserver>,
}

/// What a [`LatencyObserver`] calls: backend name and time to response headers.
pub type ObserveLatency = dyn Fn(&str, Duration) + Send + Sync;

/// A callback for each answered request: backend name and time to response headers.
#[derive(Clone)]
pub struct LatencyObserver(pub Arc<ObserveLatency>);

impl std::fmt::Debug for LatencyObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LatencyObserver")
    }
}

impl ProxyConfig {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            eject_duration: DEFAULT_EJECT_DURATION,
            latency_window: DEFAULT_LATENCY_WINDOW,
            latency_window_buckets: DEFAULT_LATENCY_WINDOW_BUCKETS,
            latency_observer: None,
        }
    }

    pub fn validate(&self) -> Result<(), LbError> {
        let bad = |m: &str| Err(LbError::InvalidConfig(m.to_string()));
        if self.connect_timeout.is_zero() || self.response_timeout.is_zero() {
            return bad("timeouts must be positive");
        }
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return bad("max_connections must be in 1..=1000000");
        }
        if self.max_body_bytes == 0 {
            return bad("max_body_bytes must be positive (it bounds buffered request bodies)");
        }
        if self.max_attempts == 0 || self.max_attempts > 10 {
            return bad("max_attempts must be in 1..=10");
        }
        if !(1..=MAX_LATENCY_WINDOW_BUCKETS).contains(&self.latency_window_buckets) {
            return Err(LbError::InvalidConfig(format!(
                "latency_window_buckets must be in 1..={MAX_LATENCY_WINDOW_BUCKETS}"
            )));
        }
        let bucket_ms = self.latency_window.as_millis() / self.latency_window_buckets as u128;
        if bucket_ms == 0 || self.latency_window > Duration::from_secs(3600) {
            return bad(
                "latency_window must be at least 1 ms per bucket and at most 1 hour \
                 (it is the period a front's p99 covers)",
            );
        }
        Ok(())
    }
}

/// Latency of the requests of the last window: a ring of histograms, each covering
/// `bucket_ms` of the proxy's clock and reused (reset) when its slot comes round again, so
/// memory is fixed whatever the traffic. Time is passed in (ms since the proxy started). The
/// HAProxy front keeps one too, fed from haproxy's per-request log.
pub(crate) struct WindowHistogram {
    bucket_ms: u64,
    /// (bucket number = `now_ms / bucket_ms` when the slot was last reset, its samples in µs).
    slots: Vec<(u64, Histogram<u64>)>,
}

impl WindowHistogram {
    pub(crate) fn new(window: Duration, buckets: usize) -> Self {
        let buckets = buckets.max(1);
        let bucket_ms =
            (u64::try_from(window.as_millis()).unwrap_or(u64::MAX) / buckets as u64).max(1);
        let empty = Histogram::new_with_bounds(1, WINDOW_HISTOGRAM_MAX_US, WINDOW_HISTOGRAM_SIGFIG)
            .expect("constant histogram bounds");
        Self {
            bucket_ms,
            slots: vec![(0, empty); buckets],
        }
    }

    pub(crate) fn record(&mut self, us: u64, now_ms: u64) {
        let bucket = now_ms / self.bucket_ms;
        let len = self.slots.len() as u64;
        let (number, histogram) = &mut self.slots[(bucket % len) as usize];
        if *number != bucket {
            // The slot last held samples one full window ago: they have left the window.
            histogram.reset();
            *number = bucket;
        }
        histogram.saturating_record(us);
    }

    /// Adds the samples still inside the window at `now_ms` to `into`.
    pub(crate) fn add_to(&self, into: &mut Histogram<u64>, now_ms: u64) {
        let current = now_ms / self.bucket_ms;
        let len = self.slots.len() as u64;
        for (number, histogram) in &self.slots {
            if *number <= current && *number + len > current && !histogram.is_empty() {
                into.add(histogram)
                    .expect("window histograms share their bounds");
            }
        }
    }

    pub(crate) fn empty_like(&self) -> Histogram<u64> {
        Histogram::new_from(&self.slots[0].1)
    }
}

/// A backend's latency histograms, cumulative and recent.
struct Latency {
    total_us: Histogram<u64>,
    recent_us: WindowHistogram,
}

/// Counters that outlive weight changes (kept per backend name).
struct BackendCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    /// Milliseconds since the proxy started until which the backend is skipped (0: never).
    ejected_until_ms: AtomicU64,
    drain_requested: std::sync::atomic::AtomicBool,
    latency: Mutex<Latency>,
}

impl BackendCounters {
    fn new(config: &ProxyConfig) -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            ejected_until_ms: AtomicU64::new(0),
            drain_requested: std::sync::atomic::AtomicBool::new(false),
            latency: Mutex::new(Latency {
                total_us: Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3)
                    .expect("constant histogram bounds"),
                recent_us: WindowHistogram::new(
                    config.latency_window,
                    config.latency_window_buckets,
                ),
            }),
        }
    }
}

/// Time to response headers over the proxy's recent window, for a set of backends merged into
/// one distribution (a p99 over all their requests, not the worst backend's p99).
#[derive(Clone, Debug, PartialEq)]
pub struct RecentLatency {
    /// The period covered (`ProxyConfig::latency_window`).
    pub window: Duration,
    /// Responses measured in the window.
    pub responses: u64,
    /// `None` when nothing was measured in the window.
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p99: Option<f64>,
}

struct Slot {
    name: String,
    addr: SocketAddr,
    authority: String,
    weight: u32,
    counters: Arc<BackendCounters>,
}

/// One immutable weight table: the slots and the smooth-WRR order over them.
struct Table {
    slots: Vec<Arc<Slot>>,
    /// Slot indices in smooth weighted round-robin order; its length is the sum of weights.
    schedule: Vec<u8>,
    cursor: AtomicU64,
}

/// nginx's smooth weighted round robin, unrolled over one full cycle: every backend appears
/// exactly `weight` times, spread out rather than in runs.
fn smooth_schedule(weights: &[u32]) -> Vec<u8> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0_i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] || (weights[best] == 0 && w > 0) {
                best = i;
            }
        }
        current[best] -= total;
        order.push(u8::try_from(best).expect("at most MAX_BACKENDS (64) backends"));
    }
    order
}

struct Inner {
    table: ArcSwap<Table>,
    /// Counters by name; a backend keeps its counters across weight changes and removals.
    counters: Mutex<HashMap<String, Arc<BackendCounters>>>,
    client: Client<HttpConnector, Full<Bytes>>,
    config: ProxyConfig,
    started: Instant,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The running proxy. Dropping it stops accepting; `shutdown` also waits for connections.
pub struct EmbeddedProxy {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
    stop: CancellationToken,
    accept_task: Option<tokio::task::JoinHandle<()>>,
}

impl EmbeddedProxy {
    /// Binds the listen address and starts serving with `backends`.
    pub async fn start(config: ProxyConfig, backends: &[BackendWeight]) -> Result<Self, LbError> {
        config.validate()?;
        validate_backends(backends)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| LbError::Io {
                what: format!("proxy listen {}", config.listen),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| LbError::Io {
            what: "proxy listener".into(),
            source,
        })?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let inner = Arc::new(Inner {
            table: ArcSwap::from_pointee(Table {
                slots: vec![],
                schedule: vec![],
                cursor: AtomicU64::new(0),
            }),
            counters: Mutex::new(HashMap::new()),
            client,
            config: config.clone(),
            started: Instant::now(),
        });
        inner.install(backends);
        let stop = CancellationToken::new();
        let accept_task = tokio::spawn(accept_loop(listener, inner.clone(), stop.clone()));
        tracing::info!(%local_addr, backends = backends.len(), "embedded proxy listening");
        Ok(Self {
            inner,
            local_addr,
            stop,
            accept_task: Some(accept_task),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Time to response headers over the last [`ProxyConfig::latency_window`] of the backends
    /// whose name `include` accepts (including backends since removed from the table).
    pub fn recent_latency(&self, include: impl Fn(&str) -> bool) -> RecentLatency {
        self.inner.recent_latency(&include)
    }

    /// Stops accepting, lets open connections finish their current request, and waits for
    /// the accept loop (bounded by `grace`).
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop.cancel();
        if let Some(task) = self.accept_task.take() {
            let _ = tokio::time::timeout(grace, task).await;
        }
    }
}

impl Drop for EmbeddedProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Builds and swaps in a new table. Counters are reused by name.
    fn install(&self, backends: &[BackendWeight]) {
        let mut counters = self.counters.lock().expect("counters lock");
        let mut slots = Vec::with_capacity(backends.len());
        for b in backends {
            let c = counters
                .entry(b.name.clone())
                .or_insert_with(|| Arc::new(BackendCounters::new(&self.config)))
                .clone();
            // A new explicit weight supersedes an earlier drain request.
            c.drain_requested.store(false, Ordering::Relaxed);
            slots.push(Arc::new(Slot {
                name: b.name.clone(),
                addr: b.addr,
                authority: b.addr.to_string(),
                weight: b.weight,
                counters: c,
            }));
        }
        let weights: Vec<u32> = slots.iter().map(|s| s.weight).collect();
        let schedule = smooth_schedule(&weights);
        self.table.store(Arc::new(Table {
            slots,
            schedule,
            cursor: AtomicU64::new(0),
        }));
    }

    /// Picks the next backend not in `tried` and not ejected; falls back to an ejected one
    /// (better a probable failure than a certain one) if nothing else has weight.
    fn pick(&self, table: &Table, tried: &[usize]) -> Option<usize> {
        let len = table.schedule.len();
        if len == 0 {
            return None;
        }
        let now_ms = self.now_ms();
        let start = table.cursor.fetch_add(1, Ordering::Relaxed) as usize;
        let mut fallback = None;
        // One pass over the cycle visits every weighted backend at least once.
        for k in 0..len {
            let idx = usize::from(table.schedule[(start + k) % len]);
            if tried.contains(&idx) {
                continue;
            }
            if table.slots[idx]
                .counters
                .ejected_until_ms
                .load(Ordering::Relaxed)
                > now_ms
            {
                fallback.get_or_insert(idx);
                continue;
            }
            return Some(idx);
        }
        fallback
    }

    fn recent_latency(&self, include: &dyn Fn(&str) -> bool) -> RecentLatency {
        let now_ms = self.now_ms();
        let mut merged: Option<Histogram<u64>> = None;
        // Removed backends count too: their last requests are part of the recent past.
        let counters = self.counters.lock().expect("counters lock");
        for (_, c) in counters.iter().filter(|(name, _)| include(name)) {
            let latency = c.latency.lock().expect("latency lock");
            let into = merged.get_or_insert_with(|| latency.recent_us.empty_like());
            latency.recent_us.add_to(into, now_ms);
        }
        let merged = merged.filter(|h| !h.is_empty());
        let q = |q: f64| {
            merged
                .as_ref()
                .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
        };
        RecentLatency {
            window: self.config.latency_window,
            responses: merged.as_ref().map_or(0, |h| h.len()),
            latency_ms_p50: q(0.50),
            latency_ms_p99: q(0.99),
        }
    }

    fn stats(&self) -> Vec<BackendStats> {
        let table = self.table.load();
        let now_ms = self.now_ms();
        let mut out: Vec<BackendStats> = table
            .slots
            .iter()
            .map(|s| stats_of(&s.name, Some(s.addr), s.weight, &s.counters, now_ms))
            .collect();
        // Backends removed from the table still report their history.
        let counters = self.counters.lock().expect("counters lock");
        for (name, c) in counters.iter() {
            if !table.slots.iter().any(|s| &s.name == name) {
                out.push(stats_of(name, None, 0, c, now_ms));
            }
        }
        out
    }
}

fn stats_of(
    name: &str,
    addr: Option<SocketAddr>,
    weight: u32,
    c: &BackendCounters,
    now_ms: u64,
) -> BackendStats {
    let state = if c.ejected_until_ms.load(Ordering::Relaxed) > now_ms {
        BackendState::Down
    } else if weight == 0 || c.drain_requested.load(Ordering::Relaxed) {
        BackendState::Draining
    } else {
        BackendState::Ready
    };
    let latency = c.latency.lock().expect("latency lock");
    let h = &latency.total_us;
    let q = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0);
    BackendStats {
        name: name.to_string(),
        addr,
        weight,
        state,
        requests: c.requests.load(Ordering::Relaxed),
        errors: c.errors.load(Ordering::Relaxed),
        in_flight: c.in_flight.load(Ordering::Relaxed),
        latency_ms_mean: (!h.is_empty()).then(|| h.mean() / 1000.0),
        latency_ms_p50: q(0.50),
        latency_ms_p99: q(0.99),
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>, stop: CancellationToken) {
    let connections = Arc::new(Semaphore::new(inner.config.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        // Holding a permit before accepting applies back-pressure at the connection limit.
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = connections.clone().acquire_owned() => p.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        let service = service_fn(move |req| {
            let inner = inner.clone();
            async move { Ok::<_, Infallible>(handle_request(inner, req, peer).await) }
        });
        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    // Open connections finish the request they are on; bounded so shutdown cannot hang.
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

fn plain(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{msg}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Decrements a backend's in-flight count when the response body is done or dropped.
struct InFlight(Arc<BackendCounters>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle_request(
    inner: Arc<Inner>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, inner.config.max_body_bytes)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large for the proxy",
                );
            }
            return plain(StatusCode::BAD_REQUEST, "could not read the request body");
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let mut headers = parts.headers;
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    let forwarded_for = HeaderName::from_static("x-forwarded-for");
    let peer_ip = peer.ip().to_string();
    let xff = match headers.get(&forwarded_for).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {peer_ip}"),
        None => peer_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(forwarded_for, v);
    }

    // The table is read once: this request keeps its backend choice even if weights change.
    let table = inner.table.load_full();
    let attempts = inner.config.max_attempts.min(table.slots.len().max(1));
    let mut tried: Vec<usize> = Vec::with_capacity(attempts);
    let mut last_failure = (StatusCode::SERVICE_UNAVAILABLE, "no backend has weight");
    for _ in 0..attempts {
        let Some(idx) = inner.pick(&table, &tried) else {
            break;
        };
        tried.push(idx);
        let slot = table.slots[idx].clone();
        let c = slot.counters.clone();
        let uri: Uri = match format!("http://{}{}", slot.authority, path).parse() {
            Ok(u) => u,
            Err(_) => return plain(StatusCode::BAD_REQUEST, "request target is not a valid URI"),
        };
        let mut upstream = Request::new(Full::new(body.clone()));
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = uri;
        *upstream.headers_mut() = headers.clone();

        c.requests.fetch_add(1, Ordering::Relaxed);
        c.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(c.clone());
        let started = Instant::now();
        let result = tokio::time::timeout(
            inner.config.response_timeout,
            inner.client.request(upstream),
        )
        .await;
        match result {
            Ok(Ok(response)) => {
                let us = u64::try_from(started.elapsed().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let now_ms = inner.now_ms();
                {
                    let mut latency = c.latency.lock().expect("latency lock");
                    latency.total_us.saturating_record(us);
                    latency.recent_us.record(us, now_ms);
                }
                if let Some(observer) = &inner.config.latency_observer {
                    (observer.0)(&slot.name, Duration::from_micros(us));
                }
                if response.status().is_server_error() {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
                let (mut rparts, rbody) = response.into_parts();
                for h in HOP_BY_HOP {
                    rparts.headers.remove(h);
                }
                // The guard rides inside the body so in-flight counts until the body ends.
                let rbody = rbody
                    .map_frame(move |frame| {
                        let _ = &guard;
                        frame
                    })
                    .boxed();
                return Response::from_parts(rparts, rbody);
            }
            Ok(Err(e)) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                drop(guard);
                if e.is_connect() {
                    // Nothing was sent: always safe to try another backend.
                    let until = inner.now_ms() + inner.config.eject_duration.as_millis() as u64;
                    c.ejected_until_ms.store(until, Ordering::Relaxed);
                    tracing::warn!(backend = slot.name, addr = %slot.addr, error = %e, "backend refused a connection; ejected");
                    last_failure = (
                        StatusCode::BAD_GATEWAY,
                        "no backend accepted the connection",
                    );
                    continue;
                }
                tracing::warn!(backend = slot.name, error = %e, "backend connection failed mid-request");
                last_failure = (StatusCode::BAD_GATEWAY, "backend connection failed");
                if is_idempotent(&parts.method) {
                    continue;
                }
                break;
            }
            Err(_) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                drop(guard);
                // A slow backend may still be processing: resending could double the work, so
                // timeouts are not retried.
                return plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    "backend did not answer in time",
                );
            }
        }
    }
    plain(last_failure.0, last_failure.1)
}

impl LoadBalancer for EmbeddedProxy {
    fn set_backends<'a>(
        &'a self,
        backends: &'a [BackendWeight],
    ) -> BoxFuture<'a, Result<(), LbError>> {
        async move {
            validate_backends(backends)?;
            self.inner.install(backends);
            Ok(())
        }
        .boxed()
    }

    fn drain<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), LbError>> {
        async move {
            let table = self.inner.table.load();
            if !table.slots.iter().any(|s| s.name == name) {
                return Err(LbError::UnknownBackend(name.to_string()));
            }
            let backends: Vec<BackendWeight> = table
                .slots
                .iter()
                .map(|s| {
                    BackendWeight::new(&s.name, s.addr, if s.name == name { 0 } else { s.weight })
                })
                .collect();
            self.inner.install(&backends);
            if let Some(c) = self.inner.counters.lock().expect("counters lock").get(name) {
                c.drain_requested.store(true, Ordering::Relaxed);
            }
            Ok(())
        }
        .boxed()
    }

    fn stats(&self) -> BoxFuture<'_, Result<Vec<BackendStats>, LbError>> {
        let stats = self.inner.stats();
        async move { Ok(stats) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hdrhistogram::Histogram;

    use super::{WindowHistogram, smooth_schedule};

    fn p99_ms(window: &WindowHistogram, now_ms: u64) -> Option<f64> {
        let mut merged = window.empty_like();
        window.add_to(&mut merged, now_ms);
        (!merged.is_empty()).then(|| merged.value_at_quantile(0.99) as f64 / 1000.0)
    }

    #[test]
    fn the_window_p99_follows_a_latency_change_and_the_cumulative_one_does_not() {
        // 1 s window in 4 buckets of 250 ms.
        let mut window = WindowHistogram::new(Duration::from_secs(1), 4);
        let mut total = Histogram::<u64>::new_with_bounds(1, super::HISTOGRAM_MAX_US, 3).unwrap();
        let mut record = |window: &mut WindowHistogram, us: u64, now_ms: u64| {
            window.record(us, now_ms);
            total.saturating_record(us);
        };
        // 0..2 s: 50 ms per request, 100 requests a second.
        for i in 0..200u64 {
            record(&mut window, 50_000, i * 10);
        }
        let slow = p99_ms(&window, 1_999).unwrap();
        assert!((49.0..=51.0).contains(&slow), "{slow}");
        // From 2 s on: 2 ms per request.
        let mut followed_at = None;
        for i in 0..200u64 {
            let now_ms = 2_000 + i * 10;
            record(&mut window, 2_000, now_ms);
            let p99 = p99_ms(&window, now_ms).unwrap();
            if followed_at.is_none() && p99 < 3.0 {
                followed_at = Some(now_ms);
            }
            // Never mixed up: a sample is in the window or it is not.
            assert!(!(3.0..=49.0).contains(&p99), "{p99} at {now_ms}");
        }
        // The last slow sample (1 990 ms, bucket 7) leaves when bucket 11 starts (2 750 ms):
        // between window − bucket (750 ms) and window (1 s) after it was taken.
        assert_eq!(followed_at, Some(2_750));
        let cumulative_p99 = total.value_at_quantile(0.99) as f64 / 1000.0;
        assert!(cumulative_p99 > 49.0, "{cumulative_p99}");
        // Quiet for a whole window: nothing left to report.
        assert_eq!(p99_ms(&window, 3_990 + 1_000), None);
    }

    #[test]
    fn a_window_reuses_its_histograms() {
        let mut window = WindowHistogram::new(Duration::from_secs(5), 5);
        // A long run of traffic (an hour of 1 s buckets) leaves memory as it was.
        for now_ms in (0..3_600_000u64).step_by(100) {
            window.record(1 + now_ms % 7_000, now_ms);
        }
        assert_eq!(window.slots.len(), 5);
        let counters: usize = window.slots.iter().map(|(_, h)| h.distinct_values()).sum();
        assert!(counters * 8 <= 5 * 21 * 1024, "{counters} counters");
        // Only the last 5 s of samples count: 10 a second.
        let mut merged = window.empty_like();
        window.add_to(&mut merged, 3_599_999);
        assert_eq!(merged.len(), 50);
    }

    #[test]
    fn smooth_schedule_gives_exact_spread_out_shares() {
        let rows: Vec<(Vec<u32>, Vec<usize>)> = vec![
            (vec![90, 10], vec![90, 10]),
            (vec![50, 50], vec![50, 50]),
            (vec![0, 100], vec![0, 100]),
            (vec![5, 1, 1], vec![5, 1, 1]),
            (vec![0, 0], vec![0, 0]),
        ];
        for (weights, expected) in rows {
            let s = smooth_schedule(&weights);
            let counts: Vec<usize> = (0..weights.len())
                .map(|i| s.iter().filter(|&&x| usize::from(x) == i).count())
                .collect();
            assert_eq!(counts, expected, "{weights:?}");
        }
        // Spread: with 50/50 the two alternate instead of running 50 in a row.
        let s = smooth_schedule(&[50, 50]);
        assert!(s.windows(2).all(|w| w[0] != w[1]));
    }
}
