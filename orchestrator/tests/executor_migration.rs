//! The executor end to end on real parts: a one-node Raft group (raft-rs + raft-engine, on
//! consensus's in-memory network) running `OrchestratorState`, the agent gateway on a real
//! QUIC endpoint with mutual TLS, and two real region agents (the agent library's session,
//! process provider running `umbra-sample` instances, each with its region front) connected
//! over QUIC. A constant stream of GETs goes to the source region's front the whole time.
//!
//! 1. A migration walks Planned → Completed on a compressed schedule (lead time 0, 1.5 s
//!    analysis windows): the shadow pool is sized from the synthetic history, provisioned,
//!    warmed, replicated, promoted; the source front ends forwarding 100 % to the target, the
//!    DNS weights end on the target with the normal TTL, and no request failed.
//! 2. The target's sample instances start failing at the 50 % step (their fault switch): the
//!    SLO breach rolls the migration back by itself, the source front's share is 0 again, the
//!    DNS weights are back on the source, and the audit log says how long it took
//!    (`rollback_ms`, breach detected → share 0 confirmed), which must be ≤ 1,000 ms.
//!
//! Needs `umbra-sample` built next to the test binary: `cargo build -p umbra-agent --bins`.

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
use umbra_agent::agent::session::{SessionConfig, run_session};
use umbra_agent::provider::process::{ENV_PROVIDER_STATE, ProcessConfig, ProcessRuntime};
use umbra_agent::provider::{AnyProvider, Provider};
use umbra_consensus::memory::MemoryNetwork;
use umbra_consensus::{Config, NodeOptions, RaftNode, Role as RaftRole, mailbox};
use umbra_orchestrator::api::{ObservationBoard, RaftReplicated, Replicated};
use umbra_orchestrator::demand::{DemandSeries, SeriesKey};
use umbra_orchestrator::executor::demand::MemoryDemand;
use umbra_orchestrator::executor::metrics::ExecutorMetrics;
use umbra_orchestrator::executor::{self, ExecutorConfig, ExecutorContext, SystemClock};
use umbra_orchestrator::gateway::{AgentGateway, GatewayConfig};
use umbra_orchestrator::migration::Phase;
use umbra_orchestrator::state::{
    AuditEntry, Command, MigrationRequest, Overview, Plan, Query, QueryAnswer,
};
use umbra_proto::certs::{self, Layout};
use umbra_proto::{Credentials, Endpoint, Identity, Role, StreamKind, TransportConfig};

const SOURCE: &str = "us-east";
const TARGET: &str = "eu-west";
/// Requests per second of the test's client; the 10 % step sends 10 of them to the target
/// each second, enough for the SLO's 20 samples within a 1.5 s window.
const CLIENT_RPS: u64 = 100;
/// Longest a whole migration may take here (warm-up caps at 10 s; the rest is seconds).
const MIGRATION_DEADLINE: Duration = Duration::from_secs(120);

/// SIGKILLs every instance process of a provider state directory when dropped, also when a
/// test fails half-way (instances run in their own sessions and would outlive the test).
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::canonicalize(&self.0) else {
            return;
        };
        let marker = format!("{ENV_PROVIDER_STATE}={}", dir.display());
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
fn plan(fronts: &BTreeMap<&str, SocketAddr>) -> String {
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
dns_ttl_secs = 60
cutover_ttl_secs = 5
slo = {{ max_error_rate = 0.05, max_p99_ms = 500.0, min_samples = 20 }}

[service.warmup]
allow_writes = false
mix = {{ requests = [{{ method = "GET", path = "/kv/{{key}}", weight = 1.0 }}, {{ method = "GET", path = "/healthz", weight = 1.0 }}], key_count = 200, zipf_exponent = 1.0, rate_per_sec = 200.0, max_duration_ms = 10000 }}
gate = {{ reference_p99_ms = 50.0, p99_tolerance_pct = 100.0, max_error_rate = 0.01, min_requests = 100 }}
"#,
        fronts[SOURCE], fronts[TARGET]
    )
}

/// Two weeks of 30-minute slices at a flat 150 rps in the target: at 100 rps per instance
/// the probabilistic tier holds 2 instances.
fn history() -> DemandSeries {
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

struct Region {
    agent: Arc<Agent>,
    front: SocketAddr,
    _reaper: Reaper,
}

struct World {
    _dir: tempfile::TempDir,
    raft: RaftNode,
    endpoint: Endpoint,
    store: Arc<dyn Replicated>,
    regions: BTreeMap<&'static str, Region>,
    stop_agents: CancellationToken,
    stop_executor: watch::Sender<bool>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_agents.cancel();
        let _ = self.stop_executor.send(true);
        self.endpoint.close();
        self.raft.shutdown();
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

impl World {
    async fn start() -> anyhow::Result<World> {
        init_tracing();
        let dir = tempfile::tempdir()?;
        let certs_dir = dir.path().join("certs");
        certs::init(&Layout::default(), &certs_dir)?;
        let sample = sample_binary()?;

        // The orchestrator: Raft, QUIC endpoint, gateway, executor.
        let credentials = Credentials::load(&certs_dir, &Identity::orchestrator(1))?;
        let endpoint = Endpoint::server(
            "127.0.0.1:0".parse()?,
            &credentials,
            TransportConfig::default(),
        )?;
        let quic = endpoint.local_addr()?;
        let (mail, inbox) = mailbox(4096);
        let raft = RaftNode::start(
            NodeOptions {
                id: 1,
                data_dir: dir.path().join("raft"),
                config: Config {
                    tick_interval_ms: 20,
                    ..Config::default()
                },
                initial_voters: vec![1],
                peers: BTreeMap::new(),
            },
            umbra_orchestrator::state::OrchestratorState::default(),
            MemoryNetwork::new(7).attach(1, mail),
            inbox,
            &prometheus::Registry::new(),
        )?;
        let gateway = AgentGateway::new(
            GatewayConfig::new(1, BTreeMap::from([(1, quic)])),
            raft.watch_status(),
        )?;
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
            vec![quic],
            board.clone(),
        ));
        let registry = prometheus::Registry::new();
        let (stop_executor, stopped) = watch::channel(false);
        executor::spawn(
            ExecutorContext {
                store: store.clone(),
                status: raft.watch_status(),
                gateway,
                board,
                demand: Arc::new(MemoryDemand::new([history()])),
                clock: Arc::new(SystemClock),
                metrics: ExecutorMetrics::new(&registry)?,
                config: ExecutorConfig {
                    retry_max_ms: 1_000,
                    ..ExecutorConfig::default()
                },
            },
            stopped,
        )?;

        // The agents, each with its front, following the orchestrator over QUIC.
        let stop_agents = CancellationToken::new();
        let mut regions = BTreeMap::new();
        for region in [SOURCE, TARGET] {
            let state = dir.path().join(region);
            std::fs::create_dir_all(&state)?;
            let reaper = Reaper(state.clone());
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
                TransportConfig::default(),
            )?;
            tokio::spawn(run_session(
                agent.clone(),
                agent_endpoint,
                SessionConfig {
                    orchestrators: vec![quic],
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
            raft,
            endpoint,
            store,
            regions,
            stop_agents,
            stop_executor,
        };
        world.wait_leader().await?;
        let fronts = world.regions.iter().map(|(r, g)| (*r, g.front)).collect();
        let plan = Plan::from_toml(&plan(&fronts))?;
        world
            .propose(Command::ApplyPlan {
                plan,
                at_ms: now_ms(),
            })
            .await?;
        Ok(world)
    }

    async fn wait_leader(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.raft.status().role != RaftRole::Leader {
            if Instant::now() > deadline {
                bail!("the one-node group elected no leader in 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn propose(&self, command: Command) -> anyhow::Result<()> {
        match self.store.propose(command).await? {
            Ok(_) => Ok(()),
            Err(rejected) => bail!("rejected: {rejected}"),
        }
    }

    async fn overview(&self) -> anyhow::Result<Overview> {
        match self.store.query(Query::Overview).await? {
            QueryAnswer::Overview(o) => Ok(*o),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    async fn audit(&self) -> anyhow::Result<Vec<AuditEntry>> {
        match self
            .store
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
    async fn wait_source_serving(&self) -> anyhow::Result<()> {
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

    async fn migrate(&self) -> anyhow::Result<String> {
        self.propose(Command::CreateMigration {
            request: MigrationRequest {
                service: "shop".into(),
                from: Some(SOURCE.into()),
                to: TARGET.into(),
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
        Ok(overview
            .migrations
            .keys()
            .next()
            .context("the migration exists")?
            .clone())
    }

    /// Polls the migration until `until` says stop, calling `on_phase` at each new phase;
    /// returns the phases seen in order.
    async fn follow(
        &self,
        id: &str,
        mut on_phase: impl AsyncFnMut(Phase) -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<Phase>> {
        let deadline = Instant::now() + MIGRATION_DEADLINE;
        let mut seen: Vec<Phase> = Vec::new();
        loop {
            let overview = self.overview().await?;
            let phase = overview.migrations[id].phase;
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A constant-rate client against one front: GETs of a few keys, every outcome counted.
struct Client {
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    fn start(front: SocketAddr) -> Client {
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

    async fn stop(self) -> (u64, u64) {
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

fn transitions(audit: &[AuditEntry], id: &str) -> Vec<String> {
    audit
        .iter()
        .filter(|e| e.subject == id && e.event.contains('→'))
        // Phase changes only: not the creation line, not the single-writer moves.
        .filter(|e| !e.event.starts_with("created") && !e.event.starts_with("writer"))
        .map(|e| e.event.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_migration_walks_from_planned_to_completed_without_a_failed_request() -> anyhow::Result<()>
{
    let world = World::start().await?;
    world.wait_source_serving().await?;
    let client = Client::start(world.regions[SOURCE].front);
    let id = world.migrate().await?;
    let phases = world.follow(&id, async |_| Ok(())).await?;
    let (total, failed) = client.stop().await;
    eprintln!("requests {total}, failed {failed}");

    assert_eq!(phases.last(), Some(&Phase::Completed), "phases {phases:?}");
    let audit = world.audit().await?;
    let moves = transitions(&audit, &id);
    assert_eq!(
        moves,
        [
            "planned → provisioning",
            "provisioning → warming",
            "warming → replicating",
            "replicating → ready",
            "ready → cutting_over[0]",
            "cutting_over[0] → cutting_over[1]",
            "cutting_over[1] → cutting_over[2]",
            "cutting_over[2] → draining",
            "draining → completed",
        ],
        "each transition exactly once, in order"
    );
    let overview = world.overview().await?;
    let record = &overview.migrations[&id];
    assert_eq!(record.shadow_instances, 2, "sized from the 150 rps history");
    assert!(record.promoted, "the target is the single writer");
    assert_eq!(overview.services["shop"].primary_region, TARGET);
    let dns = &overview.dns["shop"];
    assert_eq!(dns.weights, BTreeMap::from([(TARGET.to_owned(), 100)]));
    assert_eq!(dns.ttl_secs, 60, "normal TTL once completed");
    // The source front forwards everything to the target (clients with old DNS answers).
    let front = world.regions[SOURCE]
        .agent
        .executor()
        .front_report()
        .await
        .context("source front")?;
    assert_eq!(front.shares.len(), 1);
    assert_eq!(front.shares[0].percent, 100);
    assert!(total >= 500, "the client ran the whole migration: {total}");
    assert_eq!(failed, 0, "no request failed during the migration");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_target_at_the_50_percent_step_rolls_back_within_a_second() -> anyhow::Result<()>
{
    let world = World::start().await?;
    world.wait_source_serving().await?;
    let client = Client::start(world.regions[SOURCE].front);
    let id = world.migrate().await?;
    let target = world.regions[TARGET].agent.clone();
    let http = reqwest::Client::new();
    let phases = world
        .follow(&id, async |phase| {
            if phase == (Phase::CuttingOver { step: 1 }) {
                // The target's sample instances start failing every request.
                for instance in target.executor().provider().list().await {
                    if let Some(addr) = instance.addr {
                        http.post(format!("http://{addr}/admin/fault"))
                            .json(&serde_json::json!({ "error_rate": 1.0 }))
                            .send()
                            .await?
                            .error_for_status()?;
                    }
                }
            }
            Ok(())
        })
        .await?;
    let (total, failed) = client.stop().await;
    eprintln!("requests {total}, failed {failed}");

    assert_eq!(phases.last(), Some(&Phase::RolledBack), "phases {phases:?}");
    let audit = world.audit().await?;
    let breach = audit
        .iter()
        .find(|e| e.subject == id && e.event == "cutting_over[1] → rolling_back")
        .context("the rollback started at the 50 % step")?;
    assert!(
        breach.reason.starts_with("SLO breach at 50%"),
        "{}",
        breach.reason
    );
    let done = audit
        .iter()
        .find(|e| e.subject == id && e.event == "rolling_back → rolled_back")
        .context("the rollback finished")?;
    let rollback_ms: u64 = done
        .reason
        .split("rollback_ms=")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("rollback_ms in {:?}", done.reason))?;
    eprintln!("rollback_ms {rollback_ms}");
    assert!(rollback_ms <= 1_000, "rollback took {rollback_ms} ms");

    let overview = world.overview().await?;
    assert_eq!(overview.services["shop"].primary_region, SOURCE);
    assert_eq!(
        overview.dns["shop"].weights,
        BTreeMap::from([(SOURCE.to_owned(), 100)])
    );
    let front = world.regions[SOURCE]
        .agent
        .executor()
        .front_report()
        .await
        .context("source front")?;
    assert!(
        front.shares.iter().all(|s| s.percent == 0),
        "traffic back on the source: {:?}",
        front.shares
    );
    // Requests sent to the failing target between the fault and the rollback fail; none
    // after it: the last second of traffic is all on the healthy source.
    let before = failed;
    let client = Client::start(world.regions[SOURCE].front);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (after_total, after_failed) = client.stop().await;
    assert!(after_total > 0);
    assert_eq!(
        after_failed, 0,
        "after the rollback nothing fails ({before} did before)"
    );
    Ok(())
}
