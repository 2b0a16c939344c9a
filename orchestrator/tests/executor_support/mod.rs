//! Shared parts of the executor tests (`executor_migration`, `executor_failover`): a Raft group
//! of one or three nodes (raft-rs + raft-engine on consensus's in-memory network) running
//! `OrchestratorState`, each node with its QUIC endpoint, agent gateway and leader-only
//! executor; two region agents in process (library session over QUIC, process provider running
//! `umbra-sample`, region front); a constant-rate client; and a guard that kills instance
//! processes when a test ends. Needs `umbra-sample` built: `cargo build -p umbra-agent --bins`.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{TimeZone, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use umbra_agent::agent::Agent;
use umbra_agent::agent::front::Front;
use umbra_agent::agent::session::{SessionConfig, run_session, transport_config};
use umbra_agent::provider::process::{ENV_PROVIDER_STATE, ProcessConfig, ProcessRuntime};
use umbra_agent::provider::{AnyProvider, Provider};
use umbra_consensus::memory::MemoryNetwork;
use umbra_consensus::{Config, NodeOptions, RaftNode, Role as RaftRole, mailbox};
use umbra_forecast::history::{DemandSeries, SeriesKey};
use umbra_orchestrator::executor::metrics::ExecutorMetrics;
use umbra_orchestrator::executor::shadow_sizing::MemoryDemand;
use umbra_orchestrator::executor::{self, ExecutorConfig, ExecutorContext};
use umbra_orchestrator::gateway::{AgentGateway, GatewayConfig};
use umbra_orchestrator::migration::Phase;
use umbra_orchestrator::state::{
    AuditEntry, Command, MigrationRequest, OrchestratorState, Overview, Plan, Query, QueryAnswer,
};
use umbra_orchestrator::store::{Clock, SystemClock};
use umbra_orchestrator::store::{ObservationBoard, RaftReplicated, Replicated};
use umbra_proto::certs::{self, Layout};
use umbra_proto::{Credentials, Endpoint, Identity, Role, StreamKind, TransportConfig};

/// Seed of the in-memory network (no faults are injected; printed for replay anyway).
pub const SEED: u64 = 0x0e8e_c070;

pub const SOURCE: &str = "us-east";
pub const TARGET: &str = "eu-west";
/// Requests per second of the test's client; the 10 % step sends 10 of them to the target
/// each second, enough for the SLO's 20 samples within a 1.5 s window.
pub const CLIENT_RPS: u64 = 100;
/// Longest a whole migration may take here (warm-up caps at 10 s; the rest is seconds).
pub const MIGRATION_DEADLINE: Duration = Duration::from_secs(120);

/// SIGKILLs every instance process of a provider state directory when dropped, also when a
/// test fails half-way (instances run in their own sessions and would outlive the test).
struct Reaper {
    /// `UMBRA_PROVIDER_STATE=<canonical state dir>`, computed when the reaper is made: by the
    /// time it drops, the temp dir may be gone (World drops `_dir` first) and could no longer
    /// be canonicalised, which once let every instance outlive its test.
    marker: String,
}

impl Reaper {
    fn new(state: &Path) -> anyhow::Result<Reaper> {
        let dir = std::fs::canonicalize(state)?;
        Ok(Reaper {
            marker: format!("{ENV_PROVIDER_STATE}={}", dir.display()),
        })
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let marker = &self.marker;
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            if env.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn sample_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/debug/deps/executor_migration-HASH → target/debug/umbra-sample
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target directory")?;
    let sample = dir.join("umbra-sample");
    if !sample.exists() {
        bail!(
            "{} is missing: run `cargo build -p umbra-agent --bins` first",
            sample.display()
        );
    }
    Ok(sample)
}

/// The plan. The warm-up mix carries `GET /healthz` beside the key reads because the warmer
/// judges latency on 2xx/3xx answers only, and a fresh shadow (no data until replication)
/// answers every key read 404 (executor-requests.md, to the agent helper).
/// `service_times` replaces the service's TTL lines (see [`short_windows`]).
pub fn plan(fronts: &BTreeMap<&str, SocketAddr>, service_times: &str) -> String {
    format!(
        r#"
[[region]]
name = "us-east"
front = "{}"

[[region]]
name = "eu-west"
front = "{}"

[[service]]
name = "shop"
hostname = "shop.umbra.test."
primary_region = "us-east"
capacity_rps_per_instance = 100.0
min_instances = 1
max_instances = 2
tier = {{ probabilistic = {{ cost_miss = 4.0, cost_idle = 1.0 }} }}
replication = "sample-log-shipping"
{}
slo = {{ max_error_rate = 0.05, max_p99_ms = 500.0, min_samples = 20 }}

[service.warmup]
allow_writes = false
mix = {{ requests = [{{ method = "GET", path = "/kv/{{key}}", weight = 1.0 }}, {{ method = "GET", path = "/healthz", weight = 1.0 }}], key_count = 200, zipf_exponent = 1.0, rate_per_sec = 200.0, max_duration_ms = 10000 }}
gate = {{ reference_p99_ms = 50.0, p99_tolerance_pct = 100.0, max_error_rate = 0.01, min_requests = 100 }}
"#,
        fronts[SOURCE],
        fronts[TARGET],
        if service_times.is_empty() {
            DEFAULT_TIMES
        } else {
            service_times
        }
    )
}

/// The service's TTLs in the tests' plan: migrations created by the tests override the
/// windows per request.
pub const DEFAULT_TIMES: &str = "dns_ttl_secs = 60\ncutover_ttl_secs = 5";

/// Service-level times short enough for a migration that takes the service's own settings
/// (a scheduled one): 1 s TTLs (drain 1.1 s), 1 s analysis windows, 60 s lead time.
pub fn short_windows() -> String {
    "dns_ttl_secs = 1\ncutover_ttl_secs = 1\nanalysis_window_secs = 1\nlead_time_secs = 60".into()
}

/// Two weeks of 30-minute slices at a flat 150 rps in the target: at 100 rps per instance
/// the probabilistic tier holds 2 instances.
pub fn history() -> DemandSeries {
    let now = Utc::now();
    let start = Utc
        .timestamp_opt(now.timestamp() - now.timestamp() % 1800 - 14 * 86_400, 0)
        .unwrap();
    let values = (0..14 * 48).map(|i| 150.0 + (i % 7) as f64).collect();
    DemandSeries {
        key: SeriesKey::new("shop", TARGET),
        start,
        slice_secs: 1800,
        values,
    }
}

fn init_tracing() {
    // RUST_LOG=umbra_orchestrator=debug shows every command the executor sends.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,umbra_agent=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub struct Region {
    pub agent: Arc<Agent>,
    pub front: SocketAddr,
    _reaper: Reaper,
}

/// One orchestrator: Raft node, QUIC endpoint (agent gateway), store, executor.
pub struct Node {
    pub raft: RaftNode,
    pub endpoint: Endpoint,
    pub store: Arc<dyn Replicated>,
    stop_executor: watch::Sender<bool>,
}

pub struct World {
    _dir: tempfile::TempDir,
    pub network: MemoryNetwork,
    pub nodes: BTreeMap<u64, Node>,
    pub regions: BTreeMap<&'static str, Region>,
    stop_agents: CancellationToken,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_agents.cancel();
        for node in self.nodes.values() {
            let _ = node.stop_executor.send(true);
            node.endpoint.close();
            node.raft.shutdown();
        }
    }
}

impl World {
    /// `nodes` orchestrators (1 or 3) and the two agents, plan applied.
    pub async fn start(nodes: u64) -> anyhow::Result<World> {
        Self::start_with(nodes, Arc::new(SystemClock), "", "").await
    }

    /// Same, with the executors' clock, the service's times (see [`plan`]) and text appended
    /// to the plan (e.g. a schedule).
    pub async fn start_with(
        nodes: u64,
        clock: Arc<dyn Clock>,
        service_times: &str,
        extra_plan: &str,
    ) -> anyhow::Result<World> {
        init_tracing();
        eprintln!("memory network seed: {SEED}");
        let dir = tempfile::tempdir()?;
        let certs_dir = dir.path().join("certs");
        certs::init(&Layout::default(), &certs_dir)?;
        let sample = sample_binary()?;
        let network = MemoryNetwork::new(SEED);
        let ids: Vec<u64> = (1..=nodes).collect();

        let mut endpoints = BTreeMap::new();
        for &id in &ids {
            let credentials = Credentials::load(&certs_dir, &Identity::orchestrator(id))?;
            let endpoint = Endpoint::server(
                "127.0.0.1:0".parse()?,
                &credentials,
                TransportConfig::default(),
            )?;
            endpoints.insert(id, (endpoint, credentials));
        }
        let quic: BTreeMap<u64, SocketAddr> = endpoints
            .iter()
            .map(|(id, (e, _))| Ok((*id, e.local_addr()?)))
            .collect::<anyhow::Result<_>>()?;
        let mut members = BTreeMap::new();
        for (id, (endpoint, credentials)) in endpoints {
            let (mail, inbox) = mailbox(4096);
            let raft = RaftNode::start(
                NodeOptions {
                    id,
                    data_dir: dir.path().join(format!("raft-{id}")),
                    config: Config {
                        tick_interval_ms: 20,
                        ..Config::default()
                    },
                    initial_voters: ids.clone(),
                    peers: BTreeMap::new(),
                },
                OrchestratorState::default(),
                network.attach(id, mail),
                inbox,
                &prometheus::Registry::new(),
            )?;
            let gateway =
                AgentGateway::new(GatewayConfig::new(id, quic.clone()), raft.watch_status())?;
            {
                let (endpoint, gateway) = (endpoint.clone(), gateway.clone());
                tokio::spawn(async move {
                    while let Some(incoming) = endpoint.accept().await {
                        let gateway = gateway.clone();
                        tokio::spawn(async move {
                            let Ok(conn) = incoming.establish().await else {
                                return;
                            };
                            while let Ok(stream) = conn.accept_stream().await {
                                if stream.kind() == StreamKind::Agent {
                                    let gateway = gateway.clone();
                                    tokio::spawn(async move { gateway.serve_stream(stream).await });
                                }
                            }
                        });
                    }
                });
            }
            let board = ObservationBoard::default();
            let store: Arc<dyn Replicated> = Arc::new(RaftReplicated::new(
                raft.clone(),
                credentials.clone(),
                quic.values().copied().collect(),
                board.clone(),
            ));
            let (stop_executor, stopped) = watch::channel(false);
            executor::spawn(
                ExecutorContext {
                    store: store.clone(),
                    status: raft.watch_status(),
                    gateway,
                    board,
                    demand: Arc::new(MemoryDemand::new([history()])),
                    clock: clock.clone(),
                    metrics: ExecutorMetrics::new(&prometheus::Registry::new())?,
                    config: ExecutorConfig {
                        retry_max_ms: 1_000,
                        ..ExecutorConfig::default()
                    },
                },
                stopped,
            )?;
            members.insert(
                id,
                Node {
                    raft,
                    endpoint,
                    store,
                    stop_executor,
                },
            );
        }

        // The agents, each with its front, following the leader over QUIC.
        let stop_agents = CancellationToken::new();
        let mut regions = BTreeMap::new();
        for region in [SOURCE, TARGET] {
            let state = dir.path().join(region);
            std::fs::create_dir_all(&state)?;
            let reaper = Reaper::new(&state)?;
            let provider = Provider::open(
                ProcessRuntime::new(ProcessConfig::sample(sample.clone(), 5), &state)?,
                &state,
            )
            .await?;
            let front = Front::start("127.0.0.1:0".parse()?).await?;
            let front_addr = front.local_addr();
            let agent = Arc::new(Agent::with_parts(
                region,
                &state,
                AnyProvider::Process(provider),
                Some(front),
            )?);
            let agent_credentials =
                Credentials::load(&certs_dir, &Identity::new(Role::Agent, region)?)?;
            let agent_endpoint = Endpoint::client(
                "127.0.0.1:0".parse()?,
                &agent_credentials,
                // The agent's own transport (short idle timeout and keep-alive), as `umbra-agent` uses.
                transport_config(),
            )?;
            tokio::spawn(run_session(
                agent.clone(),
                agent_endpoint,
                SessionConfig {
                    orchestrators: quic.values().copied().collect(),
                    heartbeat: Duration::from_millis(200),
                },
                stop_agents.clone(),
            ));
            regions.insert(
                region,
                Region {
                    agent,
                    front: front_addr,
                    _reaper: reaper,
                },
            );
        }
        let world = World {
            _dir: dir,
            network,
            nodes: members,
            regions,
            stop_agents,
        };
        world.leader().await?;
        let fronts = world.regions.iter().map(|(r, g)| (*r, g.front)).collect();
        let plan = Plan::from_toml(&(plan(&fronts, service_times) + extra_plan))?;
        world
            .propose(Command::ApplyPlan {
                plan,
                at_ms: now_ms(),
            })
            .await?;
        Ok(world)
    }

    /// The id of the node every live member agrees leads (waits up to 20 s).
    pub async fn leader(&self) -> anyhow::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leaders: Vec<u64> = self
                .nodes
                .values()
                .map(|n| n.raft.status())
                .filter(|s| s.role == RaftRole::Leader)
                .map(|s| s.id)
                .collect();
            if let [leader] = leaders.as_slice()
                && self
                    .nodes
                    .values()
                    .all(|n| n.raft.status().leader == Some(*leader))
            {
                return Ok(*leader);
            }
            if Instant::now() > deadline {
                bail!("no agreed leader in 20 s (seed {SEED})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops node `id` as a SIGKILL would: its executor, endpoint (agents see their streams
    /// close) and Raft node, and cuts it off the network.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("a live node");
        let _ = node.stop_executor.send(true);
        node.endpoint.close();
        node.raft.shutdown();
        self.network.isolate(id);
    }

    async fn store(&self) -> anyhow::Result<Arc<dyn Replicated>> {
        let leader = self.leader().await?;
        Ok(self.nodes[&leader].store.clone())
    }

    pub async fn propose(&self, command: Command) -> anyhow::Result<()> {
        match self.store().await?.propose(command).await? {
            Ok(_) => Ok(()),
            Err(rejected) => bail!("rejected: {rejected}"),
        }
    }

    pub async fn overview(&self) -> anyhow::Result<Overview> {
        match self.store().await?.query(Query::Overview).await? {
            QueryAnswer::Overview(o) => Ok(*o),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// Every node's own copy of the state (not linearizable: for comparing members).
    pub async fn local_overviews(&self) -> anyhow::Result<BTreeMap<u64, Overview>> {
        let mut out = BTreeMap::new();
        for (id, node) in &self.nodes {
            let bytes = node
                .raft
                .read_local(umbra_orchestrator::state::encode_query(&Query::Overview))
                .await?;
            match umbra_orchestrator::state::decode_answer(&bytes)? {
                QueryAnswer::Overview(o) => {
                    out.insert(*id, *o);
                }
                other => bail!("unexpected answer {other:?}"),
            }
        }
        Ok(out)
    }

    pub async fn audit(&self) -> anyhow::Result<Vec<AuditEntry>> {
        match self
            .store()
            .await?
            .query(Query::Audit {
                after_index: 0,
                limit: 10_000,
            })
            .await?
        {
            QueryAnswer::Audit(a) => Ok(a),
            other => bail!("unexpected answer {other:?}"),
        }
    }
    /// Waits (polling) until the source's home pool serves through its front.
    pub async fn wait_source_serving(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = reqwest::Client::new();
        let url = format!("http://{}/kv/key-1", self.regions[SOURCE].front);
        loop {
            if let Ok(r) = client.get(&url).send().await
                && (r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the executor did not bring up the source's home pool in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn migrate(&self) -> anyhow::Result<String> {
        self.migrate_between(SOURCE, TARGET).await
    }

    /// Creates a migration of `shop` from `from` to `to` on the tests' compressed schedule
    /// (lead time 0, 1.5 s analysis windows, 0.5 s drain); returns its id.
    pub async fn migrate_between(&self, from: &str, to: &str) -> anyhow::Result<String> {
        let before: Vec<String> = self.overview().await?.migrations.into_keys().collect();
        self.propose(Command::CreateMigration {
            request: MigrationRequest {
                service: "shop".into(),
                from: Some(from.into()),
                to: to.into(),
                cutover_at_ms: now_ms(),
                warm_up: true,
                lead_time_ms: Some(0),
                analysis_window_ms: Some(1_500),
                drain_ms: Some(500),
                schedule_key: None,
            },
            at_ms: now_ms(),
        })
        .await?;
        let overview = self.overview().await?;
        overview
            .migrations
            .into_keys()
            .find(|id| !before.contains(id))
            .context("the migration exists")
    }

    /// Polls the migration until `until` says stop, calling `on_phase` at each new phase;
    /// returns the phases seen in order.
    pub async fn follow(
        &self,
        id: &str,
        mut on_phase: impl AsyncFnMut(Phase) -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<Phase>> {
        let deadline = Instant::now() + MIGRATION_DEADLINE;
        let mut seen: Vec<Phase> = Vec::new();
        loop {
            // During an election the store answers errors: try again until the deadline.
            let phase = match self.overview().await {
                Ok(overview) => overview.migrations[id].phase,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("overview unavailable: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if seen.last() != Some(&phase) {
                eprintln!("{id}: {phase}");
                seen.push(phase);
                on_phase(phase).await?;
            }
            if phase.is_terminal() {
                return Ok(seen);
            }
            if Instant::now() > deadline {
                bail!("{id} still {phase} after {MIGRATION_DEADLINE:?}; phases {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A constant-rate client against one front: GETs of a few keys, every outcome counted.
pub struct Client {
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub fn start(front: SocketAddr) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, t, f) = (stop.clone(), total.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client");
            let mut tick = tokio::time::interval(Duration::from_millis(1_000 / CLIENT_RPS));
            // Bounded: at most ten minutes of requests even if a test forgets to stop it.
            for i in 0..CLIENT_RPS * 600 {
                tick.tick().await;
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let (http, t, f) = (http.clone(), t.clone(), f.clone());
                let url = format!("http://{front}/kv/key-{}", i % 50);
                tokio::spawn(async move {
                    let ok = match http.get(&url).send().await {
                        Ok(r) => !r.status().is_server_error(),
                        Err(_) => false,
                    };
                    t.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Client {
            stop,
            total,
            failed,
            task,
        }
    }

    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        // Requests still in flight finish within their 5 s timeout.
        tokio::time::sleep(Duration::from_millis(500)).await;
        (
            self.total.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

pub fn transitions(audit: &[AuditEntry], id: &str) -> Vec<String> {
    audit
        .iter()
        .filter(|e| e.subject == id && e.event.contains('→'))
        // Phase changes only: not the creation line, not the single-writer moves.
        .filter(|e| !e.event.starts_with("created") && !e.event.starts_with("writer"))
        .map(|e| e.event.clone())
        .collect()
}
