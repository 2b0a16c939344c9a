//! The sample service `umbra-sample`: a small, honest HTTP key-value store that the demo, the
//! tests and the drills run as the "service" Umbra moves between regions.
//!
//! It behaves like the services Umbra is for: a read of a key that is not cached waits for a
//! backing store (a configurable latency, [`DEFAULT_BACKING_LATENCY_MS`]), so a fresh instance
//! is slow until traffic has warmed its cache; writes go to a write-ahead log ([`wal`]) before
//! they are acknowledged, each stamped with the name of the instance that accepted it and
//! when ([`SampleConfig::name`]); a primary ships its log to a replica that pulls from an offset
//! ([`follower`]); a fence makes a primary read-only for a cutover, and `promote` makes a
//! replica the writer. A fault switch adds errors and latency for drills. With
//! [`SampleConfig::postgres`] it keeps its data in PostgreSQL instead, and replicates with
//! PostgreSQL's logical replication behind the same API ([`postgres`]).
//!
//! HTTP API (all JSON unless noted):
//! - `GET /kv/{key}` → the value as text, 404 when absent; `PUT /kv/{key}` (body: the value as
//!   UTF-8 text) → `{"seq":N}` once durable; `DELETE /kv/{key}` → `{"seq":N}`. The writer
//!   applies writes; a replica passes them on to its source, and a fenced primary to the
//!   instance it hands over to (`/admin/fence` names it), holding them up to
//!   [`WRITER_MOVE_HOLD`] while that one is still read-only (the move's fence → promote
//!   window). A write passed on carries its hop count ([`FORWARDED_HEADER`]): it is passed on
//!   again (a replica of a replica, inside a region) but never held there, and never past
//!   [`MAX_WRITE_HOPS`], so a loop of sources ends. Read-only refusals are 503 with
//!   [`READ_ONLY_HEADER`].
//! - `GET /healthz` → `{"status":"ok","mode":…,"last_seq":N}`; `GET /metrics` → Prometheus text.
//! - `GET /wal?from=N&max=M&wait_ms=W` → `{"records":[…],"last_seq":N}`: records from seq `N`
//!   on, waiting up to `W` ms for new ones when there are none (long poll).
//! - `GET /admin/status`; `GET /admin/dump` (every key and value); `POST /admin/fault`
//!   `{"error_rate":0.1,"added_latency_ms":50}`; `POST /admin/fence` (optionally
//!   `{"writer":"http://…"}`), `/admin/unfence`,
//!   `/admin/follow` `{"source":"http://…"}`, `/admin/unfollow`, `/admin/promote`.
//!
//! Known limits, acceptable for a sample: the whole log is also kept in memory (it is what
//! `/wal` serves), so memory grows with the WAL; there is no compaction; and a replica
//! checks only that the source's log is at least as long as its own, not that the shared prefix
//! is identical (a replica re-pointed at a diverged primary is not detected).
//!
//! What it must not do: hold a lock across an `.await`, accept a client write anywhere but in
//! the WAL writer's order (that is what makes a fence exact), or grow a request without bound
//! (bodies, batches and waits are capped).

pub mod follower;
pub mod postgres;
pub mod wal;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use postgres::{PgError, PgStatus, PgStore};
use wal::{FsyncPolicy, Wal, WalError, WalRecord};

/// Default backing-store latency of a cold read: 30 ms, the middle of the 20–50 ms a
/// cross-zone database read typically costs, which the issue asks the sample to imitate.
pub const DEFAULT_BACKING_LATENCY_MS: u64 = 30;
/// Default number of keys the read cache holds (FIFO eviction): large enough that a Zipf
/// warm-up over the demo's 10,000 keys fits, small enough to bound memory.
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;
/// Largest value accepted by `PUT`, in bytes.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 64 * 1024;
/// Largest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Longest instance name, in bytes: it is stamped on every record, so it stays short.
pub const MAX_NAME_BYTES: usize = 256;
/// Most records one `GET /wal` answers with.
pub const MAX_WAL_BATCH: usize = 5_000;
/// Longest a `GET /wal` long poll waits for new records.
pub const MAX_WAL_WAIT_MS: u64 = 10_000;
/// Client writes grouped into one WAL append (one fsync) at most.
const MAX_GROUP_COMMIT: usize = 512;
/// Capacity of the writer's queue: writers beyond it wait (backpressure), they are not dropped.
const WRITER_QUEUE: usize = 4_096;
/// The file that remembers the mode (primary, fenced, replica) across restarts, so a fenced
/// source stays fenced and a replica resumes following after a crash.
pub const MODE_FILE_NAME: &str = "mode.json";

/// Configuration of one sample-service instance.
#[derive(Debug, Clone)]
pub struct SampleConfig {
    /// Address to listen on; port 0 picks a free port (see [`SampleServer::local_addr`]).
    pub listen: SocketAddr,
    /// Directory of the WAL and the mode file.
    pub data_dir: PathBuf,
    /// Added latency of a read whose key is not cached, in ms.
    pub backing_latency_ms: u64,
    /// Keys the read cache holds.
    pub cache_capacity: usize,
    /// When WAL appends reach stable storage.
    pub fsync: FsyncPolicy,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// Start as a replica following this primary (persisted in the mode file).
    pub replica_of: Option<String>,
    /// This instance's name, stamped on every write it accepts from a client
    /// ([`WalRecord::writer`]). Defaults to the data directory, which no two instances on one
    /// machine share; the agent's providers pass the instance id.
    pub name: String,
    /// Keep the data in PostgreSQL instead of the WAL: the conninfo of the region's server
    /// (see [`postgres`]); the instance's database is named after [`SampleConfig::name`].
    pub postgres: Option<String>,
}

impl SampleConfig {
    /// A configuration with the documented defaults.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        SampleConfig {
            listen,
            backing_latency_ms: DEFAULT_BACKING_LATENCY_MS,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            fsync: FsyncPolicy::Always,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            replica_of: None,
            postgres: None,
            name: data_dir.display().to_string(),
            data_dir,
        }
    }

    /// Checks the limits; the message says what to change.
    pub fn validate(&self) -> Result<(), SampleError> {
        let bad = |m: String| Err(SampleError::Config(m));
        if self.cache_capacity == 0 {
            return bad("cache capacity must be at least 1 key".into());
        }
        if self.backing_latency_ms > 60_000 {
            return bad(format!(
                "backing latency {} ms is above the 60000 ms limit",
                self.backing_latency_ms
            ));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > 16 * 1024 * 1024 {
            return bad("max value size must be between 1 byte and 16 MiB".into());
        }
        if let Some(src) = &self.replica_of {
            check_source_url(src).map_err(SampleError::Config)?;
            if self.postgres.is_some() {
                return bad(
                    "--replica-of takes the write-ahead log's shipping; with --postgres \
                     start the instance alone and POST /admin/follow"
                        .into(),
                );
            }
        }
        if self.name.is_empty() || self.name.len() > MAX_NAME_BYTES {
            return bad(format!(
                "the instance name must be 1 to {MAX_NAME_BYTES} bytes (--name)"
            ));
        }
        Ok(())
    }
}

fn check_source_url(src: &str) -> Result<(), String> {
    if !(src.starts_with("http://") || src.starts_with("https://")) {
        return Err(format!(
            "replication source {src:?} must be an http:// URL such as http://127.0.0.1:8080"
        ));
    }
    Ok(())
}

/// Errors starting the sample service.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// A configuration value is out of range.
    #[error("invalid sample-service configuration: {0}")]
    Config(String),
    /// The WAL could not be opened or recovered.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The data directory or the mode file could not be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The mode file does not parse.
    #[error("mode file {path} is not valid: {reason}; delete it to start as a primary")]
    ModeFile {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
    /// The PostgreSQL database could not be set up.
    #[error(transparent)]
    Postgres(#[from] PgError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Who may write to an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Mode {
    /// Accepts client writes.
    Primary,
    /// Read-only: a primary fenced for a cutover, or a replica that stopped following.
    Fenced,
    /// Read-only, applying the log of `source`.
    Replica {
        /// Base URL of the primary.
        source: String,
    },
}

impl Mode {
    /// Every mode's name, as [`Mode::name`] gives it.
    const NAMES: [&'static str; 3] = ["primary", "fenced", "replica"];

    fn name(&self) -> &'static str {
        match self {
            Mode::Primary => "primary",
            Mode::Fenced => "fenced",
            Mode::Replica { .. } => "replica",
        }
    }
}

/// The fault switch: what drills and tests inject into `/kv` requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultSwitch {
    /// Share of `/kv` requests answered 500, in [0, 1].
    #[serde(default)]
    pub error_rate: f64,
    /// Latency added to every `/kv` request, in ms.
    #[serde(default)]
    pub added_latency_ms: u64,
}

impl FaultSwitch {
    fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "error_rate {} must be between 0 and 1",
                self.error_rate
            ));
        }
        if self.added_latency_ms > 60_000 {
            return Err(format!(
                "added_latency_ms {} is above the 60000 ms limit",
                self.added_latency_ms
            ));
        }
        Ok(())
    }
}

/// What `GET /admin/status` answers; also what the replication driver reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleStatus {
    /// Current mode.
    #[serde(flatten)]
    pub mode: Mode,
    /// Last seq in this instance's log.
    pub last_seq: u64,
    /// For a replica: the source's last seq as of the latest pull (0 otherwise).
    pub source_last_seq: u64,
    /// Keys stored.
    pub keys: usize,
    /// Keys cached.
    pub cached_keys: usize,
    /// The fault switch.
    pub fault: FaultSwitch,
    /// The instance's database, in PostgreSQL mode (where `last_seq` is a WAL position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PgStatus>,
}

/// An answer of `GET /wal`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WalBatch {
    /// Records from the requested offset, in order.
    pub records: Vec<WalRecord>,
    /// The source's last seq when answering.
    pub last_seq: u64,
}

struct ReadCache {
    keys: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl ReadCache {
    fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }
    fn insert(&mut self, key: &str) {
        if self.keys.contains(key) {
            return;
        }
        // FIFO eviction keeps this O(1) without an LRU crate; the warm-up signal (cold keys
        // are slow, hot keys fast) does not depend on the policy.
        while self.keys.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.keys.remove(&old);
                }
                None => break,
            }
        }
        self.keys.insert(key.to_owned());
        self.order.push_back(key.to_owned());
    }
}

struct SampleMetrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    cache: IntCounterVec,
    wal_last_seq: IntGauge,
    source_last_seq: IntGauge,
    mode: IntGaugeVec,
}

impl SampleMetrics {
    fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "umbra_sample_requests_total",
                "Requests by operation and status.",
            ),
            &["op", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "umbra_sample_request_duration_seconds",
                "Request latency by operation.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["op"],
        )
        .expect("valid metric");
        let cache = IntCounterVec::new(
            Opts::new("umbra_sample_cache_total", "Reads by cache result."),
            &["result"],
        )
        .expect("valid metric");
        let wal_last_seq =
            IntGauge::new("umbra_sample_wal_last_seq", "Last seq in the WAL.").expect("valid");
        let source_last_seq = IntGauge::new(
            "umbra_sample_replication_source_last_seq",
            "A replica's view of its source's last seq.",
        )
        .expect("valid metric");
        let mode = IntGaugeVec::new(
            Opts::new(
                "umbra_sample_mode",
                "1 for the mode the instance is in (primary, fenced, replica), 0 for the others.",
            ),
            &["mode"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(cache.clone()),
            Box::new(wal_last_seq.clone()),
            Box::new(source_last_seq.clone()),
            Box::new(mode.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        SampleMetrics {
            registry,
            requests,
            latency,
            cache,
            wal_last_seq,
            source_last_seq,
            mode,
        }
    }

    /// Sets the mode gauge: one series per mode, so a scrape always shows all three.
    fn set_mode(&self, current: &Mode) {
        for name in Mode::NAMES {
            self.mode
                .with_label_values(&[name])
                .set(i64::from(name == current.name()));
        }
    }
}

/// Why the WAL writer refused a write.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteRefused {
    /// The instance is fenced or a replica.
    #[error("read-only: this instance is {0}; send writes to the primary")]
    ReadOnly(&'static str),
    /// A mode change is not allowed from the current mode.
    #[error("cannot {action} an instance in mode {from}")]
    BadTransition {
        /// What was asked.
        action: &'static str,
        /// The current mode.
        from: &'static str,
    },
    /// The log could not be written; the instance refuses all writes from now on.
    #[error("write-ahead log failed: {0}")]
    Failed(String),
    /// The data disk is full: this write was refused and nothing of it kept; writes are taken
    /// again once there is room.
    #[error("{0}")]
    DiskFull(String),
    /// PostgreSQL failed or refused the change; nothing of it was kept.
    #[error("PostgreSQL: {0}")]
    Store(String),
    /// The task that writes the log is gone (the instance is shutting down).
    #[error("the WAL writer has stopped")]
    WriterStopped,
}

enum WriterMsg {
    Client {
        key: String,
        value: Option<String>,
        ack: oneshot::Sender<Result<u64, WriteRefused>>,
    },
    Replicated {
        source: String,
        records: Vec<WalRecord>,
        ack: oneshot::Sender<Result<(), WriteRefused>>,
    },
    SetMode {
        action: ModeAction,
        ack: oneshot::Sender<Result<Mode, WriteRefused>>,
    },
}

/// A requested mode change.
#[derive(Debug, Clone)]
enum ModeAction {
    Fence,
    Unfence,
    Follow(String),
    Unfollow,
    Promote,
}

impl ModeAction {
    fn name(&self) -> &'static str {
        match self {
            ModeAction::Fence => "fence",
            ModeAction::Unfence => "unfence",
            ModeAction::Follow(_) => "follow",
            ModeAction::Unfollow => "unfollow",
            ModeAction::Promote => "promote",
        }
    }

    /// The mode after the action, or why it is not allowed. Pure, so the rules are tested as a
    /// table.
    fn apply(&self, from: &Mode) -> Result<Mode, WriteRefused> {
        let refuse = || {
            Err(WriteRefused::BadTransition {
                action: self.name(),
                from: from.name(),
            })
        };
        match (self, from) {
            (ModeAction::Fence, Mode::Primary | Mode::Fenced) => Ok(Mode::Fenced),
            (ModeAction::Unfence, Mode::Primary | Mode::Fenced) => Ok(Mode::Primary),
            (ModeAction::Follow(src), Mode::Primary | Mode::Fenced | Mode::Replica { .. }) => {
                Ok(Mode::Replica {
                    source: src.clone(),
                })
            }
            (ModeAction::Unfollow, Mode::Replica { .. } | Mode::Fenced) => Ok(Mode::Fenced),
            (ModeAction::Promote, Mode::Replica { .. } | Mode::Primary) => Ok(Mode::Primary),
            _ => refuse(),
        }
    }
}

struct Shared {
    config: SampleConfig,
    store: RwLock<HashMap<String, String>>,
    cache: Mutex<ReadCache>,
    log: RwLock<Vec<WalRecord>>,
    last_seq: watch::Sender<u64>,
    mode: watch::Sender<Mode>,
    writer: mpsc::Sender<WriterMsg>,
    fault: Mutex<FaultSwitch>,
    source_last_seq: AtomicU64,
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where a fenced primary sends the writes it can no longer take (the instance that is
    /// taking over), as `/admin/fence` named it; cleared by unfence and promote.
    fence_writer: Mutex<Option<String>>,
    /// Client for writes passed on to the writer.
    http: reqwest::Client,
    metrics: SampleMetrics,
    /// The database, in PostgreSQL mode (then the store, the log and the WAL are unused).
    pg: Option<Arc<PgStore>>,
}

/// A running sample service.
pub struct SampleServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// How often a promoted PostgreSQL database checks whether its slot for the way back still
/// serves anything.
const BACK_SLOT_CHECK: Duration = Duration::from_secs(5);

/// Drops the way-back slot once the database it was made for is gone, checking every
/// [`BACK_SLOT_CHECK`] while the instance runs.
async fn release_unused_back_slot(pg: Arc<PgStore>) {
    loop {
        tokio::time::sleep(BACK_SLOT_CHECK).await;
        if let Err(e) = pg.release_unused_back_slot().await {
            tracing::debug!(error = %e, "checking the slot for the way back");
        }
    }
}

impl SampleServer {
    /// Validates the configuration, recovers the WAL, binds, and starts serving.
    pub async fn start(config: SampleConfig) -> Result<SampleServer, SampleError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| SampleError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let pg = match &config.postgres {
            Some(conninfo) => Some(Arc::new(PgStore::open(conninfo, &config.name).await?)),
            None => None,
        };
        let (wal, records) = match pg {
            Some(_) => (None, Vec::new()),
            None => {
                let (wal, records) = Wal::open(&config.data_dir, config.fsync)?;
                (Some(wal), records)
            }
        };
        let mut mode = read_mode(&config.data_dir)?;
        if let Some(src) = &config.replica_of {
            mode = Mode::Replica {
                source: src.clone(),
            };
            write_mode(&config.data_dir, &mode)?;
        }
        let mut store = HashMap::new();
        for r in &records {
            apply(&mut store, r);
        }
        let last = wal.as_ref().map_or(0, Wal::last_seq);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SampleError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| SampleError::Bind {
            addr: config.listen,
            source,
        })?;
        let (writer_tx, writer_rx) = mpsc::channel(WRITER_QUEUE);
        let metrics = SampleMetrics::new();
        metrics.wal_last_seq.set(last as i64);
        let shared = Arc::new(Shared {
            cache: Mutex::new(ReadCache {
                keys: HashSet::new(),
                order: VecDeque::new(),
                capacity: config.cache_capacity,
            }),
            config,
            store: RwLock::new(store),
            log: RwLock::new(records),
            last_seq: watch::channel(last).0,
            mode: watch::channel(mode.clone()).0,
            writer: writer_tx,
            fault: Mutex::new(FaultSwitch::default()),
            source_last_seq: AtomicU64::new(0),
            follower: Mutex::new(None),
            fence_writer: Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(FORWARD_TIMEOUT)
                .build()
                .map_err(|e| SampleError::Config(format!("HTTP client: {e}")))?,
            metrics,
            pg: pg.clone(),
        });
        match (wal, pg) {
            (Some(wal), _) => {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name("umbra-sample-wal".into())
                    .spawn(move || run_writer(shared, wal, mode, writer_rx))
                    .map_err(|source| SampleError::DataDir {
                        path: PathBuf::from("<wal writer thread>"),
                        source,
                    })?;
            }
            (None, Some(pg)) => {
                tokio::spawn(release_unused_back_slot(pg.clone()));
                tokio::spawn(run_pg_writer(shared.clone(), pg, mode, writer_rx));
            }
            (None, None) => unreachable!("a WAL is opened unless PostgreSQL keeps the data"),
        }
        follower::ensure_running(&shared);
        let app = router(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
        });
        tracing::info!(%local_addr, last_seq = last, "umbra-sample serving");
        Ok(SampleServer {
            local_addr,
            shared,
            shutdown: Some(tx),
            task,
        })
    }

    /// The bound address (the real port when the configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The last seq in the log.
    pub fn last_seq(&self) -> u64 {
        *self.shared.last_seq.borrow()
    }

    /// Stops accepting connections and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the server stops (it only stops through [`SampleServer::shutdown`] or an
    /// accept error).
    pub async fn wait(self) -> std::io::Result<()> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

fn apply(store: &mut HashMap<String, String>, rec: &WalRecord) {
    match &rec.value {
        Some(v) => {
            store.insert(rec.key.clone(), v.clone());
        }
        None => {
            store.remove(&rec.key);
        }
    }
}

fn read_mode(dir: &Path) -> Result<Mode, SampleError> {
    let path = dir.join(MODE_FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SampleError::ModeFile {
            path,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Mode::Primary),
        Err(source) => Err(SampleError::DataDir { path, source }),
    }
}

/// Writes the mode file atomically (temp file, fsync, rename) so a crash leaves the old or
/// the new mode, never half of one.
fn write_mode(dir: &Path, mode: &Mode) -> Result<(), SampleError> {
    let path = dir.join(MODE_FILE_NAME);
    let tmp = dir.join(format!("{MODE_FILE_NAME}.tmp"));
    let io = |source| SampleError::DataDir {
        path: path.clone(),
        source,
    };
    let bytes = serde_json::to_vec(mode).expect("a mode always serializes");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(())
}

/// The single WAL writer: orders every append and every mode change. Runs on its own thread
/// because `fsync` blocks.
fn run_writer(
    shared: Arc<Shared>,
    mut wal: Wal,
    mut mode: Mode,
    mut rx: mpsc::Receiver<WriterMsg>,
) {
    let mut failed: Option<String> = None;
    let mut batch: Vec<(WalRecord, oneshot::Sender<Result<u64, WriteRefused>>)> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Client { key, value, ack } => {
                    if let Some(f) = &failed {
                        let _ = ack.send(Err(WriteRefused::Failed(f.clone())));
                    } else if mode != Mode::Primary {
                        let _ = ack.send(Err(WriteRefused::ReadOnly(mode.name())));
                    } else {
                        let seq = wal.last_seq() + batch.len() as u64 + 1;
                        let record = WalRecord {
                            seq,
                            key,
                            value,
                            writer: shared.config.name.clone(),
                            at_ms: crate::unix_ms(),
                        };
                        batch.push((record, ack));
                    }
                }
                other => {
                    // Mode changes and replicated batches are ordered after every client
                    // write received before them: flush first.
                    flush(&shared, &mut wal, &mut batch, &mut failed, true);
                    match other {
                        WriterMsg::Replicated {
                            source,
                            records,
                            ack,
                        } => {
                            let r = if let Some(f) = &failed {
                                Err(WriteRefused::Failed(f.clone()))
                            } else if mode
                                != (Mode::Replica {
                                    source: source.clone(),
                                })
                            {
                                // Promoted or re-pointed meanwhile: a stale follower's batch
                                // must not land after the cut.
                                Err(WriteRefused::ReadOnly(mode.name()))
                            } else {
                                match wal.append(&records) {
                                    Ok(()) => {
                                        publish(&shared, &records, false);
                                        Ok(())
                                    }
                                    Err(e @ WalError::OutOfOrder { .. }) => {
                                        Err(WriteRefused::Failed(e.to_string()))
                                    }
                                    // The follower sends the batch again from its offset.
                                    Err(e @ WalError::Full { .. }) => {
                                        Err(WriteRefused::DiskFull(e.to_string()))
                                    }
                                    Err(e) => {
                                        failed = Some(e.to_string());
                                        Err(WriteRefused::Failed(e.to_string()))
                                    }
                                }
                            };
                            let _ = ack.send(r);
                        }
                        WriterMsg::SetMode { action, ack } => {
                            let r = action.apply(&mode).and_then(|new| {
                                write_mode(&shared.config.data_dir, &new)
                                    .map_err(|e| WriteRefused::Failed(e.to_string()))?;
                                Ok(new)
                            });
                            if let Ok(new) = &r {
                                mode = new.clone();
                                shared.mode.send_replace(new.clone());
                            }
                            let _ = ack.send(r);
                        }
                        WriterMsg::Client { .. } => unreachable!("handled above"),
                    }
                }
            }
            if batch.len() < MAX_GROUP_COMMIT {
                next = rx.try_recv().ok();
            }
        }
        flush(&shared, &mut wal, &mut batch, &mut failed, true);
    }
}

/// Longest a mode change may take in PostgreSQL mode: the writer orders every client write
/// after it, so a source out of reach must not stall them all.
const PG_MODE_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client write waiting for the PostgreSQL writer's transaction: key, value (`None`:
/// delete), and where its answer goes.
type PendingWrite = (
    (String, Option<String>),
    oneshot::Sender<Result<u64, WriteRefused>>,
);

/// The writer in PostgreSQL mode: the same order as [`run_writer`] (client writes grouped
/// into one transaction, every mode change after the writes received before it), with the
/// database doing what the WAL and the follower do otherwise.
async fn run_pg_writer(
    shared: Arc<Shared>,
    pg: Arc<PgStore>,
    mut mode: Mode,
    mut rx: mpsc::Receiver<WriterMsg>,
) {
    let mut batch: Vec<PendingWrite> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Client { key, value, ack } => {
                    if mode == Mode::Primary {
                        batch.push(((key, value), ack));
                    } else {
                        let _ = ack.send(Err(WriteRefused::ReadOnly(mode.name())));
                    }
                }
                WriterMsg::Replicated { ack, .. } => {
                    let _ = ack.send(Err(WriteRefused::ReadOnly("postgres")));
                }
                WriterMsg::SetMode { action, ack } => {
                    pg_flush(&shared, &pg, &mut batch).await;
                    let r = match action.apply(&mode) {
                        Ok(new) => tokio::time::timeout(
                            PG_MODE_CHANGE_TIMEOUT,
                            pg_transition(&shared, &pg, &mode, &action),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(WriteRefused::Store(format!(
                                "{} took longer than {PG_MODE_CHANGE_TIMEOUT:?} (a source \
                                     out of reach, or a long transaction holding a slot's \
                                     creation); nothing was taken as done: ask again",
                                action.name()
                            )))
                        })
                        .and_then(|()| {
                            write_mode(&shared.config.data_dir, &new)
                                .map_err(|e| WriteRefused::Failed(e.to_string()))?;
                            Ok(new)
                        }),
                        Err(e) => Err(e),
                    };
                    if let Ok(new) = &r {
                        mode = new.clone();
                        shared.mode.send_replace(new.clone());
                    }
                    let _ = ack.send(r);
                }
            }
            if batch.len() < MAX_GROUP_COMMIT {
                next = rx.try_recv().ok();
            }
        }
        pg_flush(&shared, &pg, &mut batch).await;
    }
}

/// What a mode change does in the database (see [`postgres`]).
async fn pg_transition(
    shared: &Shared,
    pg: &PgStore,
    from: &Mode,
    action: &ModeAction,
) -> Result<(), WriteRefused> {
    let store = |e: PgError| WriteRefused::Store(e.to_string());
    match (action, from) {
        (ModeAction::Fence, Mode::Primary) => pg.fence().await.map_err(store),
        (ModeAction::Unfence, Mode::Fenced) => pg.unfence().await.map_err(store),
        (ModeAction::Follow(source), _) => {
            let url = format!("{source}/admin/status");
            let upstream: SampleStatus = async {
                shared
                    .http
                    .get(&url)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await
            }
            .await
            .map_err(|e| WriteRefused::Store(format!("{url}: {e}")))?;
            let Some(upstream) = upstream.postgres else {
                return Err(WriteRefused::Store(format!(
                    "{source} keeps its data in a write-ahead log, not PostgreSQL: both sides \
                     of a replication must run with --postgres"
                )));
            };
            pg.follow(&upstream).await.map_err(store)
        }
        (ModeAction::Unfollow, Mode::Replica { .. }) => pg.unfollow().await.map_err(store),
        (ModeAction::Promote, Mode::Replica { .. }) => pg.promote().await.map_err(store),
        _ => Ok(()),
    }
}

/// Commits the grouped client writes in one transaction and answers each.
async fn pg_flush(shared: &Shared, pg: &PgStore, batch: &mut Vec<PendingWrite>) {
    if batch.is_empty() {
        return;
    }
    let writes: Vec<(String, Option<String>)> = batch.iter().map(|(w, _)| w.clone()).collect();
    match pg.write(&writes, &shared.config.name).await {
        Ok(seqs) => {
            {
                let mut cache = shared.cache.lock().expect("cache lock");
                for (key, _) in &writes {
                    cache.insert(key);
                }
            }
            if let Some(last) = seqs.iter().max() {
                shared.metrics.wal_last_seq.set(*last as i64);
                shared.last_seq.send_replace(*last);
            }
            for ((_, ack), seq) in batch.drain(..).zip(seqs) {
                let _ = ack.send(Ok(seq));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, writes = batch.len(), "PostgreSQL refused the writes");
            for (_, ack) in batch.drain(..) {
                let refusal = match &e {
                    PgError::ReadOnly => WriteRefused::ReadOnly("fenced"),
                    other => WriteRefused::Store(other.to_string()),
                };
                let _ = ack.send(Err(refusal));
            }
        }
    }
}

fn flush(
    shared: &Shared,
    wal: &mut Wal,
    batch: &mut Vec<(WalRecord, oneshot::Sender<Result<u64, WriteRefused>>)>,
    failed: &mut Option<String>,
    cache_writes: bool,
) {
    if batch.is_empty() {
        return;
    }
    let records: Vec<WalRecord> = batch.iter().map(|(r, _)| r.clone()).collect();
    match wal.append(&records) {
        Ok(()) => {
            publish(shared, &records, cache_writes);
            for (rec, ack) in batch.drain(..) {
                let _ = ack.send(Ok(rec.seq));
            }
        }
        Err(e @ WalError::Full { .. }) => {
            tracing::warn!(error = %e, writes = batch.len(), "the data disk is full; writes refused");
            for (_, ack) in batch.drain(..) {
                let _ = ack.send(Err(WriteRefused::DiskFull(e.to_string())));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "WAL append failed; refusing writes from now on");
            *failed = Some(e.to_string());
            for (_, ack) in batch.drain(..) {
                let _ = ack.send(Err(WriteRefused::Failed(e.to_string())));
            }
        }
    }
}

/// Makes durable records visible: store, shipping log, last seq. Client writes are cached
/// (write-through); replicated ones are not, which is why a fresh replica still needs warming.
fn publish(shared: &Shared, records: &[WalRecord], cache_writes: bool) {
    {
        let mut store = shared.store.write().expect("store lock");
        for r in records {
            apply(&mut store, r);
        }
    }
    if cache_writes {
        let mut cache = shared.cache.lock().expect("cache lock");
        for r in records {
            cache.insert(&r.key);
        }
    }
    let last = records.last().map_or(0, |r| r.seq);
    shared
        .log
        .write()
        .expect("log lock")
        .extend_from_slice(records);
    shared.metrics.wal_last_seq.set(last as i64);
    shared.last_seq.send_replace(last);
}

fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.config.max_value_bytes;
    Router::new()
        .route("/kv/{key}", get(get_kv).put(put_kv).delete(delete_kv))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/wal", get(wal_stream))
        .route("/admin/status", get(status))
        .route("/admin/dump", get(dump))
        .route("/admin/fault", post(set_fault))
        .route("/admin/fence", post(fence))
        .route(
            "/admin/unfence",
            post(|s| mode_change(s, ModeAction::Unfence)),
        )
        .route(
            "/admin/unfollow",
            post(|s| mode_change(s, ModeAction::Unfollow)),
        )
        .route(
            "/admin/promote",
            post(|s| mode_change(s, ModeAction::Promote)),
        )
        .route("/admin/follow", post(follow))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": msg.to_string() })),
    )
        .into_response()
}

/// Applies the fault switch: maybe waits, maybe fails. Returns the failure response, if any.
async fn inject_fault(shared: &Shared) -> Option<Response> {
    let fault = *shared.fault.lock().expect("fault lock");
    if fault.added_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fault.added_latency_ms)).await;
    }
    if fault.error_rate > 0.0 && rand::rng().random_bool(fault.error_rate) {
        return Some(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected fault (the fault switch is on)",
        ));
    }
    None
}

fn check_key(key: &str) -> Option<Response> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Some(error(
            StatusCode::BAD_REQUEST,
            format!("keys must be 1 to {MAX_KEY_BYTES} bytes"),
        ));
    }
    None
}

fn observe(shared: &Shared, op: &str, started: Instant, resp: Response) -> Response {
    shared
        .metrics
        .requests
        .with_label_values(&[op, resp.status().as_str()])
        .inc();
    shared
        .metrics
        .latency
        .with_label_values(&[op])
        .observe(started.elapsed().as_secs_f64());
    resp
}

async fn get_kv(State(shared): State<Arc<Shared>>, UrlPath(key): UrlPath<String>) -> Response {
    let started = Instant::now();
    let resp = async {
        if let Some(r) = check_key(&key) {
            return r;
        }
        if let Some(r) = inject_fault(&shared).await {
            return r;
        }
        let cached = shared.cache.lock().expect("cache lock").contains(&key);
        if cached {
            shared.metrics.cache.with_label_values(&["hit"]).inc();
        } else {
            shared.metrics.cache.with_label_values(&["miss"]).inc();
            // The backing store: a cold key costs a round trip; absent keys are cached too
            // (a negative entry), as real read-through caches do.
            tokio::time::sleep(Duration::from_millis(shared.config.backing_latency_ms)).await;
            shared.cache.lock().expect("cache lock").insert(&key);
        }
        let value = match &shared.pg {
            Some(pg) => match pg.read(&key).await {
                Ok(value) => value,
                Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
            },
            None => shared.store.read().expect("store lock").get(&key).cloned(),
        };
        match value {
            Some(v) => (StatusCode::OK, v).into_response(),
            None => error(StatusCode::NOT_FOUND, format!("no key {key:?}")),
        }
    }
    .await;
    observe(&shared, "get", started, resp)
}

/// Marks a write passed on by another instance, with the number of hops it took so far: the
/// receiver applies it, passes it on once more if it is not the writer either (a replica that
/// follows a replica), or refuses it at [`MAX_WRITE_HOPS`] (no loops).
pub const FORWARDED_HEADER: &str = "x-umbra-forwarded";
/// Most hops a write is passed on: a replica, the replica it follows, that one's source (a
/// shadow's follower during a migration), and one to spare.
pub const MAX_WRITE_HOPS: u8 = 3;
/// Set on a refusal because the instance is read-only (fenced or a replica): the sender may
/// hold the write and try again once the writer moved.
pub const READ_ONLY_HEADER: &str = "x-umbra-read-only";
/// Longest a write is held while the writer moves (fence → caught up → promote): past it the
/// client gets the read-only refusal. The move takes milliseconds when replication keeps up.
pub const WRITER_MOVE_HOLD: Duration = Duration::from_secs(3);
/// Pause between tries while a write is held.
const HOLD_RETRY: Duration = Duration::from_millis(10);
/// Longest wait for the writer's answer to a passed-on write.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// A client write: applied here when this instance is the writer; otherwise passed on to the
/// writer (a replica's source, or the instance a fenced primary hands over to) and held
/// through the writer's move, so a write reaching the wrong region is not refused. A write
/// that was itself passed on (`hops` > 0) is applied, passed on once more, or refused; only
/// the instance the client reached holds it.
async fn write_kv(shared: &Shared, key: String, value: Option<String>, hops: u8) -> Response {
    if let Some(r) = check_key(&key) {
        return r;
    }
    if let Some(r) = inject_fault(shared).await {
        return r;
    }
    let held_until = Instant::now() + WRITER_MOVE_HOLD;
    loop {
        let refused = match apply_locally(shared, key.clone(), value.clone()).await {
            Err(e @ WriteRefused::ReadOnly(_)) => e,
            done => return write_response(done),
        };
        if hops >= MAX_WRITE_HOPS {
            return read_only(refused);
        }
        let writer = match &*shared.mode.borrow() {
            Mode::Replica { source } => Some(source.clone()),
            Mode::Fenced => shared.fence_writer.lock().expect("fence lock").clone(),
            Mode::Primary => None,
        };
        let Some(writer) = writer else {
            return read_only(refused); // nobody takes over: refuse at once
        };
        if let Some(answer) = pass_on(shared, &writer, &key, value.as_deref(), hops + 1).await {
            return answer;
        }
        // The writer is read-only too: the move is under way. Hold the write (only where the
        // client's request arrived: an instance in between answers at once).
        if hops > 0 || Instant::now() >= held_until {
            return read_only(refused);
        }
        tokio::time::sleep(HOLD_RETRY).await;
    }
}

async fn apply_locally(
    shared: &Shared,
    key: String,
    value: Option<String>,
) -> Result<u64, WriteRefused> {
    let (ack, rx) = oneshot::channel();
    if shared
        .writer
        .send(WriterMsg::Client { key, value, ack })
        .await
        .is_err()
    {
        return Err(WriteRefused::WriterStopped);
    }
    rx.await.unwrap_or(Err(WriteRefused::WriterStopped))
}

fn write_response(result: Result<u64, WriteRefused>) -> Response {
    match result {
        Ok(seq) => Json(serde_json::json!({ "seq": seq })).into_response(),
        Err(e @ WriteRefused::ReadOnly(_)) => read_only(e),
        Err(e @ WriteRefused::WriterStopped) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e @ WriteRefused::DiskFull(_)) => error(StatusCode::INSUFFICIENT_STORAGE, e),
        Err(e @ WriteRefused::Store(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn read_only(e: WriteRefused) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, e);
    response
        .headers_mut()
        .insert(READ_ONLY_HEADER, axum::http::HeaderValue::from_static("1"));
    response
}

/// Sends a write to `writer`; its answer, or `None` when it is read-only too (hold and try
/// again). A writer that cannot be reached answers 502, as a proxy would.
async fn pass_on(
    shared: &Shared,
    writer: &str,
    key: &str,
    value: Option<&str>,
    hops: u8,
) -> Option<Response> {
    let url = format!("{writer}/kv/{key}");
    let request = match value {
        Some(v) => shared.http.put(&url).body(v.to_owned()),
        None => shared.http.delete(&url),
    };
    let answer = match request
        .header(FORWARDED_HEADER, hops.to_string())
        .send()
        .await
    {
        Ok(answer) => answer,
        Err(e) => {
            return Some(error(
                StatusCode::BAD_GATEWAY,
                format!("the writer {writer} did not answer: {e}"),
            ));
        }
    };
    if answer.headers().contains_key(READ_ONLY_HEADER) {
        return None;
    }
    let status = answer.status();
    let body = answer.bytes().await.unwrap_or_default();
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Some(response)
}

/// Hops a write took so far (0 from a client). A header that is not a number counts as the
/// most, so a garbled one is never passed on.
fn hops(headers: &axum::http::HeaderMap) -> u8 {
    match headers.get(FORWARDED_HEADER) {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u8>().ok())
            .unwrap_or(MAX_WRITE_HOPS),
    }
}

async fn put_kv(
    State(shared): State<Arc<Shared>>,
    UrlPath(key): UrlPath<String>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Response {
    let started = Instant::now();
    let resp = write_kv(&shared, key, Some(body), hops(&headers)).await;
    observe(&shared, "put", started, resp)
}

async fn delete_kv(
    State(shared): State<Arc<Shared>>,
    UrlPath(key): UrlPath<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let started = Instant::now();
    let resp = write_kv(&shared, key, None, hops(&headers)).await;
    observe(&shared, "delete", started, resp)
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let mode = shared.mode.borrow().clone();
    Json(serde_json::json!({
        "status": "ok",
        "mode": mode.name(),
        "last_seq": *shared.last_seq.borrow(),
    }))
    .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared
        .metrics
        .source_last_seq
        .set(shared.source_last_seq.load(Ordering::Relaxed) as i64);
    shared.metrics.set_mode(&shared.mode.borrow());
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&shared.metrics.registry.gather(), &mut buf) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e);
    }
    (
        [(axum::http::header::CONTENT_TYPE, encoder.format_type())],
        buf,
    )
        .into_response()
}

fn current_status(shared: &Shared) -> SampleStatus {
    SampleStatus {
        mode: shared.mode.borrow().clone(),
        last_seq: *shared.last_seq.borrow(),
        source_last_seq: shared.source_last_seq.load(Ordering::Relaxed),
        keys: shared.store.read().expect("store lock").len(),
        cached_keys: shared.cache.lock().expect("cache lock").keys.len(),
        fault: *shared.fault.lock().expect("fault lock"),
        postgres: None,
    }
}

/// The status, with the database's position, keys and endpoint in PostgreSQL mode.
async fn full_status(shared: &Shared) -> Result<SampleStatus, PgError> {
    let mut status = current_status(shared);
    if let Some(pg) = &shared.pg {
        let replica = matches!(status.mode, Mode::Replica { .. });
        let positions = pg.positions(status.mode == Mode::Fenced, replica).await?;
        status.last_seq = positions.last_seq;
        status.keys = pg.keys().await?;
        status.postgres = Some(PgStatus {
            published_position: Some(positions.published),
            ..pg.status().await?
        });
    }
    Ok(status)
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    match full_status(&shared).await {
        Ok(status) => Json(status).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn dump(State(shared): State<Arc<Shared>>) -> Response {
    match &shared.pg {
        Some(pg) => match pg.dump().await {
            Ok(rows) => Json(rows.into_iter().collect::<HashMap<_, _>>()).into_response(),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        },
        None => Json(shared.store.read().expect("store lock").clone()).into_response(),
    }
}

async fn set_fault(State(shared): State<Arc<Shared>>, Json(fault): Json<FaultSwitch>) -> Response {
    if let Err(e) = fault.validate() {
        return error(StatusCode::BAD_REQUEST, e);
    }
    *shared.fault.lock().expect("fault lock") = fault;
    tracing::info!(?fault, "fault switch set");
    Json(fault).into_response()
}

#[derive(Deserialize)]
struct WalQuery {
    from: u64,
    #[serde(default)]
    max: Option<usize>,
    #[serde(default)]
    wait_ms: Option<u64>,
}

async fn wal_stream(State(shared): State<Arc<Shared>>, Query(q): Query<WalQuery>) -> Response {
    if q.from == 0 {
        return error(StatusCode::BAD_REQUEST, "from is a 1-based seq");
    }
    let max = q.max.unwrap_or(1_000).clamp(1, MAX_WAL_BATCH);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(MAX_WAL_WAIT_MS));
    let mut rx = shared.last_seq.subscribe();
    if *rx.borrow_and_update() < q.from && !wait.is_zero() {
        let _ = tokio::time::timeout(wait, rx.wait_for(|last| *last >= q.from)).await;
    }
    let log = shared.log.read().expect("log lock");
    let last_seq = log.last().map_or(0, |r| r.seq);
    let start = (q.from - 1) as usize;
    let records = if start < log.len() {
        log[start..(start + max).min(log.len())].to_vec()
    } else {
        Vec::new()
    };
    Json(WalBatch { records, last_seq }).into_response()
}

async fn set_mode(shared: &Shared, action: ModeAction) -> Result<Mode, WriteRefused> {
    let (ack, rx) = oneshot::channel();
    shared
        .writer
        .send(WriterMsg::SetMode { action, ack })
        .await
        .map_err(|_| WriteRefused::WriterStopped)?;
    rx.await.map_err(|_| WriteRefused::WriterStopped)?
}

async fn mode_change(State(shared): State<Arc<Shared>>, action: ModeAction) -> Response {
    let name = action.name();
    match set_mode(&shared, action).await {
        Ok(mode) => {
            tracing::info!(action = name, ?mode, "mode changed");
            if mode != Mode::Fenced {
                *shared.fence_writer.lock().expect("fence lock") = None;
            }
            // A follower stops on its own when the mode leaves Replica; wait for it so that
            // `promote` returning means no replicated batch is in flight.
            let handle = shared.follower.lock().expect("follower lock").take();
            if let Some(h) = handle {
                if matches!(mode, Mode::Replica { .. }) {
                    *shared.follower.lock().expect("follower lock") = Some(h);
                } else {
                    let _ = h.await;
                }
            }
            status(State(shared)).await
        }
        Err(e @ WriteRefused::BadTransition { .. }) => error(StatusCode::CONFLICT, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
struct FollowRequest {
    source: String,
}

/// `POST /admin/fence`, optionally `{"writer":"http://…"}`: the instance taking over, to
/// which writes are passed on from now on (held while it is still read-only).
#[derive(Deserialize, Default)]
struct FenceRequest {
    #[serde(default)]
    writer: Option<String>,
}

async fn fence(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let request: FenceRequest = if body.is_empty() {
        FenceRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("fence body must be {{\"writer\":\"http://host:port\"}} or empty: {e}"),
                );
            }
        }
    };
    if let Some(writer) = &request.writer
        && let Err(e) = check_source_url(writer)
    {
        return error(StatusCode::BAD_REQUEST, e);
    }
    // Named before the fence takes effect: a write refused by the fence must find where to
    // go at once, not in the moment between the fence and this handler's answer.
    let writer = request.writer.map(|w| w.trim_end_matches('/').to_owned());
    let before = std::mem::replace(
        &mut *shared.fence_writer.lock().expect("fence lock"),
        writer,
    );
    let response = mode_change(State(shared.clone()), ModeAction::Fence).await;
    if !response.status().is_success() {
        *shared.fence_writer.lock().expect("fence lock") = before;
    }
    response
}

async fn follow(State(shared): State<Arc<Shared>>, Json(req): Json<FollowRequest>) -> Response {
    if let Err(e) = check_source_url(&req.source) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let source = req.source.trim_end_matches('/').to_owned();
    match set_mode(&shared, ModeAction::Follow(source)).await {
        Ok(_) => {
            follower::ensure_running(&shared);
            status(State(shared)).await
        }
        Err(e @ WriteRefused::BadTransition { .. }) => error(StatusCode::CONFLICT, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_transitions_follow_the_table() {
        let replica = Mode::Replica {
            source: "http://a".into(),
        };
        let follow = ModeAction::Follow("http://b".into());
        let table: Vec<(ModeAction, Mode, Option<Mode>)> = vec![
            (ModeAction::Fence, Mode::Primary, Some(Mode::Fenced)),
            (ModeAction::Fence, Mode::Fenced, Some(Mode::Fenced)),
            (ModeAction::Fence, replica.clone(), None),
            (ModeAction::Unfence, Mode::Fenced, Some(Mode::Primary)),
            (ModeAction::Unfence, replica.clone(), None),
            (
                follow.clone(),
                Mode::Primary,
                Some(Mode::Replica {
                    source: "http://b".into(),
                }),
            ),
            (ModeAction::Promote, replica.clone(), Some(Mode::Primary)),
            (ModeAction::Promote, Mode::Fenced, None),
            (ModeAction::Unfollow, replica.clone(), Some(Mode::Fenced)),
            (ModeAction::Unfollow, Mode::Primary, None),
        ];
        for (action, from, want) in table {
            let got = action.apply(&from).ok();
            assert_eq!(got, want, "{action:?} from {from:?}");
        }
    }

    #[test]
    fn bad_config_is_refused_with_a_reason() {
        let mut c = SampleConfig::new("127.0.0.1:0".parse().unwrap(), "/tmp/x".into());
        c.cache_capacity = 0;
        assert!(c.validate().unwrap_err().to_string().contains("cache"));
        let mut c = SampleConfig::new("127.0.0.1:0".parse().unwrap(), "/tmp/x".into());
        c.replica_of = Some("127.0.0.1:80".into());
        assert!(c.validate().unwrap_err().to_string().contains("http://"));
        let mut c = SampleConfig::new("127.0.0.1:0".parse().unwrap(), "/tmp/x".into());
        assert_eq!(
            c.name, "/tmp/x",
            "the data directory names an unnamed instance"
        );
        c.name = String::new();
        assert!(c.validate().unwrap_err().to_string().contains("--name"));
    }
}
