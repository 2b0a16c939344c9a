//! The orchestrator world of the executor, gateway and API tests, started the way a deployment
//! starts it: every orchestrator is `umbra_orchestrator::node::start` on its own `NodeConfig`
//! (Raft over QUIC with mutual TLS on a loopback port, the agent gateway and the store's client
//! streams on that endpoint, the operator API, the leader-only executor reading its demand
//! history from a CSV directory), so the tests run the production wiring of `node::server` and
//! `node::services`, not a copy of it. The only thing a test injects is the executor's clock,
//! through `node::NodeEnvironment`.
//!
//! [`Cluster`] is those nodes alone (`api_raft`, `executor_gateway`). [`World`] adds two region
//! agents in process (library session over QUIC, process provider running `umbra-sample`,
//! region front) and applies the tests' plan through the operator API, which the tests also
//! use to create and follow migrations; [`Client`] is a constant-rate client against a front.
//! Instance processes are killed when a test ends, also on failure. Needs `umbra-sample` built
//! beside the test: `cargo build --workspace --bins`.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;
use umbra_agent::agent::Agent;
use umbra_agent::agent::config::{FrontKind, FrontSection};
use umbra_agent::agent::front::Front;
use umbra_agent::agent::session::{SessionConfig, run_session, transport_config};
use umbra_agent::provider::process::{ENV_PROVIDER_STATE, ProcessConfig, ProcessRuntime};
use umbra_agent::provider::{AnyProvider, Provider};
use umbra_consensus::Role as RaftRole;
use umbra_orchestrator::api::{ApiClient, ApiConfig, BearerToken, MAX_AUDIT_LIMIT, Written};
use umbra_orchestrator::gateway::AgentGateway;
use umbra_orchestrator::migration::{Phase, Slo, happy_path};
use umbra_orchestrator::node::{
    self, ExecutorSection, GatewaySection, NodeConfig, NodeEnvironment, PeerConfig, RunningNode,
    StateMachineKind,
};
use umbra_orchestrator::state::{
    AuditEntry, AuditEvent, MigrationRequest, Overview, Plan, ServiceSpec,
};
use umbra_proto::agent::{ReadinessGate, RequestTemplate};
use umbra_proto::certs::Layout;
use umbra_proto::ports::free_loopback_port;
use umbra_proto::{Credentials, Endpoint, Identity, Role};
use umbra_testkit::{Reaper, Secrets, TEST_TOKEN, wait_for, write_secrets};

/// The region the service starts in.
pub const SOURCE: &str = "us-east";
/// The region the tests migrate it to.
pub const TARGET: &str = "eu-west";
/// Requests per second of the test's client; the 10 % step sends 10 of them to the target
/// each second, enough for the SLO's 20 samples within a 1.5 s window.
pub const CLIENT_RPS: u64 = 100;
/// Longest a whole migration may take here (warm-up caps at 10 s; the rest is seconds).
pub const MIGRATION_DEADLINE: Duration = Duration::from_secs(120);
/// Longest an election, a replica catching up, or a fresh pool coming up may take on a loaded
/// 2-core machine.
pub const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);
/// Width of the demand history's slices, seconds.
const HISTORY_SLICE_SECS: u32 = 1800;

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn init_tracing() {
    // RUST_LOG=umbra_orchestrator=debug shows every command the executor sends.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,raft=warn,umbra_agent=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Orchestrator nodes started by `node::start`, each with its operator API; the test's
/// operator talks to them through [`ApiClient`]s. Killed nodes leave the map.
pub struct Cluster {
    nodes: Mutex<BTreeMap<u64, RunningNode>>,
    quic: BTreeMap<u64, SocketAddr>,
    apis: BTreeMap<u64, ApiClient>,
    certs_dir: PathBuf,
    demand_dir: PathBuf,
    // Last: removed once every node above has been told to stop.
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes().values() {
            node.shutdown();
        }
    }
}

impl Cluster {
    /// `nodes` orchestrators (ids 1..=nodes) in one Raft group, with the defaults a deployment
    /// runs except: executor retries capped at 1 s, demand history read from
    /// [`Cluster::demand_dir`] in 30-minute slices, and `environment` (the executor's clock).
    pub async fn start(nodes: u64, environment: NodeEnvironment) -> anyhow::Result<Cluster> {
        Self::start_each(nodes, |_| environment.clone()).await
    }

    /// As [`Cluster::start`], with node `id`'s environment from `environment(id)` (e.g. a
    /// clock of its own).
    pub async fn start_each(
        nodes: u64,
        environment: impl Fn(u64) -> NodeEnvironment,
    ) -> anyhow::Result<Cluster> {
        init_tracing();
        let dir = tempfile::tempdir()?;
        let Secrets {
            certs_dir,
            token_file,
        } = write_secrets(dir.path(), &Layout::default())?;
        let demand_dir = dir.path().join("demand");
        std::fs::create_dir_all(&demand_dir)?;
        let peers = (1..=nodes)
            .map(|id| {
                Ok(PeerConfig {
                    id,
                    address: localhost(free_loopback_port()?),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let operator = Credentials::load(&certs_dir, &Identity::new(Role::Operator, "admin")?)?;
        let token = BearerToken::new(TEST_TOKEN).context("test token")?;
        // Nodes join the cluster as they start, so the ones started are stopped (on drop) if
        // a later one fails to start.
        let mut cluster = Cluster {
            nodes: Mutex::new(BTreeMap::new()),
            quic: peers.iter().map(|p| (p.id, p.address)).collect(),
            apis: BTreeMap::new(),
            certs_dir,
            demand_dir,
            dir,
        };
        for peer in &peers {
            let config = NodeConfig {
                id: peer.id,
                listen: peer.address,
                data_dir: cluster.dir().join(format!("node-{}", peer.id)),
                certs_dir: cluster.certs_dir.clone(),
                admin_listen: None,
                join: false,
                peers: peers.clone(),
                fault_injection: false,
                state_machine: StateMachineKind::Orchestrator,
                raft: umbra_consensus::Config::default(),
                api: Some(ApiConfig::new(
                    localhost(free_loopback_port()?),
                    token_file.clone(),
                )),
                gateway: GatewaySection::default(),
                dns: None,
                executor: ExecutorSection {
                    retry_max_ms: 1_000,
                    demand_csv_dir: Some(cluster.demand_dir.clone()),
                    demand_slice_secs: HISTORY_SLICE_SECS,
                    ..ExecutorSection::default()
                },
            };
            let started = node::start(config, environment(peer.id))
                .await
                .with_context(|| format!("starting node {}", peer.id))?;
            let api = started.services.as_ref().and_then(|s| s.api_address());
            cluster.nodes().insert(peer.id, started);
            let api = api.context("the node runs its API")?;
            cluster.apis.insert(
                peer.id,
                ApiClient::new(&format!("https://{api}"), &operator, token.clone())?,
            );
        }
        Ok(cluster)
    }

    fn nodes(&self) -> MutexGuard<'_, BTreeMap<u64, RunningNode>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The test's scratch directory (certificates, node data, region state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What `certs::init` wrote: CA, orchestrators, the default regions' agents, `admin`.
    pub fn certs_dir(&self) -> &Path {
        &self.certs_dir
    }

    /// Where the executors read demand history (`*.csv`, long form).
    pub fn demand_dir(&self) -> &Path {
        &self.demand_dir
    }

    /// Node `id`'s QUIC address (Raft, store clients, agents).
    pub fn quic(&self, id: u64) -> SocketAddr {
        self.quic[&id]
    }

    /// Every node's QUIC address, the dead ones included (as agents are configured).
    pub fn quic_addresses(&self) -> Vec<SocketAddr> {
        self.quic.values().copied().collect()
    }

    /// The ids of the nodes still running.
    pub fn live(&self) -> Vec<u64> {
        self.nodes().keys().copied().collect()
    }

    /// A live node other than `leader`.
    pub fn follower_of(&self, leader: u64) -> u64 {
        self.live()
            .into_iter()
            .find(|id| *id != leader)
            .expect("a cluster of three has followers")
    }

    /// Node `id`'s agent gateway (it must be running).
    pub fn gateway(&self, id: u64) -> AgentGateway {
        self.nodes()[&id]
            .services
            .as_ref()
            .expect("orchestrator mode runs the services")
            .gateway()
            .clone()
    }

    /// The id of the node every live member agrees leads.
    pub async fn leader(&self) -> anyhow::Result<u64> {
        wait_for(
            "a leader every live node agrees on",
            CLUSTER_DEADLINE,
            || {
                let agreed = self.agreed_leader();
                async move { agreed }
            },
        )
        .await
    }

    /// The node every live member says leads now, if they agree.
    pub fn agreed_leader(&self) -> Option<u64> {
        let statuses: Vec<_> = self.nodes().values().map(|n| n.raft.status()).collect();
        let leaders: Vec<u64> = statuses
            .iter()
            .filter(|s| s.role == RaftRole::Leader)
            .map(|s| s.id)
            .collect();
        match leaders.as_slice() {
            [leader] if statuses.iter().all(|s| s.leader == Some(*leader)) => Some(*leader),
            _ => None,
        }
    }

    /// Stops node `id` the way its process would stop on SIGKILL, as far as the others can
    /// tell: its executor stands down, its endpoint closes (agents and peers see their
    /// connections end) and its Raft node stops.
    pub fn kill(&self, id: u64) {
        let node = self.nodes().remove(&id).expect("a live node");
        node.shutdown();
    }

    /// An operator's API client of node `id`.
    pub fn client(&self, id: u64) -> ApiClient {
        self.apis[&id].clone()
    }

    /// An operator's API client of the first live node (a follower forwards to the leader).
    pub fn api(&self) -> ApiClient {
        let first = *self.nodes().keys().next().expect("a live node");
        self.client(first)
    }

    /// The replicated state, whole (migration records included), as of an API read: a
    /// live node's own replica once it has applied everything the API's answer had (the
    /// API shows the operator's view of the state, not its records).
    pub async fn overview(&self) -> anyhow::Result<Overview> {
        let applied = self.api().status().await?.overview.applied_index;
        wait_for(
            "a replica to apply what the API answered",
            CLUSTER_DEADLINE,
            || async {
                self.local_overviews()
                    .into_values()
                    .find(|o| o.applied_index >= applied)
            },
        )
        .await
    }

    /// The whole audit log, read through the API.
    pub async fn audit(&self) -> anyhow::Result<Vec<AuditEntry>> {
        let api = self.api();
        let mut entries: Vec<AuditEntry> = Vec::new();
        // Bounded: a test writes far fewer than 100 pages of entries.
        for _ in 0..100 {
            let after = entries.last().map_or(0, |e| e.index);
            let page = api.audit(after, MAX_AUDIT_LIMIT).await?;
            let full = page.len() == MAX_AUDIT_LIMIT;
            entries.extend(page);
            if !full {
                return Ok(entries);
            }
        }
        bail!("the audit log is longer than 100 pages")
    }

    /// Every live node's own replica, as it last published it (not linearizable: for
    /// comparing members).
    pub fn local_overviews(&self) -> BTreeMap<u64, Overview> {
        self.nodes()
            .iter()
            .filter_map(|(id, n)| {
                let overview = n.services.as_ref()?.overviews().borrow().clone();
                Some((*id, Overview::clone(&overview)))
            })
            .collect()
    }

    /// Waits until every live node's own replica is the same and passes `check`; returns it.
    pub async fn replicas_agree(
        &self,
        check: impl Fn(&Overview) -> bool,
    ) -> anyhow::Result<Overview> {
        wait_for(
            "every replica to hold the same state",
            CLUSTER_DEADLINE,
            || {
                let replicas = self.local_overviews();
                let mut all = replicas.values();
                let agreed = all.next().and_then(|first| {
                    (all.all(|o| o == first) && check(first)).then(|| first.clone())
                });
                async move { agreed }
            },
        )
        .await
    }
}

/// The tests' plan: the example plan (`Plan::example()`) with the agents' fronts and without
/// its schedule; `shop` runs 1–2 instances, keeps a 60 s TTL (5 s in a cutover), is judged
/// on 20 samples against a 5 % error rate and 500 ms p99, and warms with `GET /healthz` beside
/// the key reads, because the warmer judges latency on 2xx/3xx answers only and a fresh shadow
/// (no data until replication) answers every key read 404. Migrations the tests create
/// override the windows per request.
pub fn plan(fronts: &BTreeMap<&str, SocketAddr>) -> Plan {
    let mut plan = Plan::example();
    for region in &mut plan.regions {
        region.front = fronts[region.name.as_str()].to_string();
    }
    plan.schedules.clear();
    let shop = &mut plan.services[0];
    shop.min_instances = 1;
    shop.max_instances = 2;
    shop.dns_ttl_secs = 60;
    shop.cutover_ttl_secs = 5;
    // Judged on errors, not speed: a 2-core machine running other tests was seen to stall a
    // step to a p99 of 1.7 s with nothing wrong; no test here rolls back on latency.
    shop.slo = Slo {
        max_error_rate: 0.05,
        max_p99_ms: 10_000.0,
        min_samples: 20,
        source: Default::default(),
        judgement: Default::default(),
    };
    let mix = &mut shop.warmup.mix;
    mix.requests.push(RequestTemplate {
        method: "GET".into(),
        path: "/healthz".into(),
        weight: 1.0,
    });
    mix.key_count = 200;
    mix.max_duration_ms = 10_000;
    shop.warmup.gate = ReadinessGate {
        reference_p99_ms: 50.0,
        p99_tolerance_pct: 100.0,
        max_error_rate: 0.01,
        min_requests: 100,
    };
    plan
}

/// Service-level times short enough for a migration that takes the service's own settings
/// (a scheduled one): 1 s TTLs and no margin (drain 1 s), 1 s analysis windows, 60 s lead
/// time.
pub fn short_windows(service: &mut ServiceSpec) {
    service.dns_ttl_secs = 1;
    service.cutover_ttl_secs = 1;
    service.dns_margin_secs = 0;
    service.analysis_window_secs = 1;
    service.lead_time_secs = 60;
}

/// Two weeks of 30-minute slices at a flat ~150 rps of `shop` in the target, as the long-form
/// CSV the executors read: at 100 rps per instance the probabilistic tier holds 2 instances.
fn write_history(dir: &Path) -> anyhow::Result<()> {
    let slice = u64::from(HISTORY_SLICE_SECS);
    let now = now_ms() / 1000;
    let start = now - now % slice - 14 * 86_400;
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("shop.csv"))?);
    writeln!(out, "timestamp,service,region,value")?;
    for i in 0..14 * 86_400 / slice {
        let value = 150 + i % 7;
        writeln!(out, "{},shop,{TARGET},{value}", start + i * slice)?;
    }
    out.flush()?;
    Ok(())
}

/// One region: its agent (in process) and its front's address.
pub struct Region {
    /// The agent, for reading its provider and front directly.
    pub agent: Arc<Agent>,
    /// The region's load-balancer front.
    pub front: SocketAddr,
    /// SIGKILLs the region's instance processes (they run in sessions of their own) when the
    /// test ends, also when it fails half-way.
    _reaper: Reaper,
}

/// A [`Cluster`] with the two regions' agents connected and the tests' plan applied.
pub struct World {
    /// The regions, by name.
    pub regions: BTreeMap<&'static str, Region>,
    stop_agents: CancellationToken,
    /// The agents' sessions, waited for when the world ends.
    sessions: Vec<tokio::task::JoinHandle<Result<(), umbra_agent::agent::session::SessionError>>>,
    cluster: Cluster,
    /// Each region's PostgreSQL server, when the instances keep their data there.
    _databases: Vec<umbra_testkit::postgres::PostgresProcess>,
}

impl Drop for World {
    /// Stops the agents' sessions and waits until they are gone, before the regions' reapers
    /// (dropped after this) kill the instances and fronts: a session still running on another
    /// worker thread would otherwise start a killed front again, which nothing would reap.
    fn drop(&mut self) {
        self.stop_agents.cancel();
        let sessions = std::mem::take(&mut self.sessions);
        for session in &sessions {
            session.abort();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // On a runtime of one thread nothing runs beside this drop, and the runtime drops
        // the aborted sessions without polling them again.
        if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            tokio::task::block_in_place(|| {
                runtime.block_on(async {
                    let all = futures::future::join_all(sessions);
                    let _ = tokio::time::timeout(Duration::from_secs(10), all).await;
                })
            });
        }
    }
}

impl Deref for World {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl World {
    /// `nodes` orchestrators (1 or 3) and the two agents, [`plan`] applied.
    pub async fn start(nodes: u64) -> anyhow::Result<World> {
        Self::start_with(nodes, NodeEnvironment::default(), |_| {}).await
    }

    /// Same, with the nodes' `environment` (the executor's clock) and `edit` applied to the
    /// plan first (e.g. to add a schedule).
    pub async fn start_with(
        nodes: u64,
        environment: NodeEnvironment,
        edit: impl FnOnce(&mut Plan),
    ) -> anyhow::Result<World> {
        Self::start_full(nodes, environment, edit, false).await
    }

    /// [`World::start`] with each region's instances keeping their data on a PostgreSQL
    /// server of the region's (`[provider] postgres`), the replication lag bounded in bytes.
    pub async fn start_on_postgres(nodes: u64) -> anyhow::Result<World> {
        let edit = |plan: &mut Plan| plan.services[0].max_replication_lag = 1 << 20;
        Self::start_full(nodes, NodeEnvironment::default(), edit, true).await
    }

    async fn start_full(
        nodes: u64,
        environment: NodeEnvironment,
        edit: impl FnOnce(&mut Plan),
        postgres: bool,
    ) -> anyhow::Result<World> {
        let sample = umbra_testkit::binary("umbra-sample")?;
        let cluster = Cluster::start(nodes, environment).await?;
        write_history(cluster.demand_dir())?;

        // Made first, so that agents started before a failure are stopped with it.
        let mut world = World {
            regions: BTreeMap::new(),
            stop_agents: CancellationToken::new(),
            sessions: Vec::new(),
            cluster,
            _databases: Vec::new(),
        };
        // The agents, each with its front, following the leader over QUIC.
        for region in [SOURCE, TARGET] {
            let state = world.dir().join(region);
            std::fs::create_dir_all(&state)?;
            let reaper = Reaper::new(ENV_PROVIDER_STATE, &state);
            let conninfo = if postgres {
                let server = umbra_testkit::postgres::PostgresProcess::start().await?;
                let conninfo = server.conninfo();
                world._databases.push(server);
                Some(conninfo)
            } else {
                None
            };
            let config = ProcessConfig::sample(sample.clone(), 5, conninfo.as_deref());
            let provider = Provider::open(ProcessRuntime::new(config, &state)?, &state).await?;
            // The region's front as `umbra-agent run` starts it: `umbra-agent front`, a process
            // of its own on a port the kernel chooses (stopped with the instances by the reaper).
            let section = FrontSection {
                listen: localhost(0),
                kind: FrontKind::Embedded.to_string(),
                haproxy_binary: None,
                haproxy_dir: None,
                front_binary: Some(umbra_testkit::binary("umbra-agent")?),
            };
            let front = Front::from_config(&section, &state).await?;
            let front_addr = front.local_addr();
            let agent = Arc::new(Agent::with_parts(
                region,
                &state,
                AnyProvider::Process(provider),
                Some(front),
            )?);
            let credentials =
                Credentials::load(world.certs_dir(), &Identity::new(Role::Agent, region)?)?;
            // The agent's own transport (short idle timeout and keep-alive), as `umbra-agent` uses.
            let endpoint = Endpoint::client(localhost(0), &credentials, transport_config())?;
            world.sessions.push(tokio::spawn(run_session(
                agent.clone(),
                endpoint,
                SessionConfig {
                    orchestrators: world.quic_addresses(),
                    heartbeat: Duration::from_millis(200),
                },
                world.stop_agents.clone(),
            )));
            world.regions.insert(
                region,
                Region {
                    agent,
                    front: front_addr,
                    _reaper: reaper,
                },
            );
        }
        world.leader().await?;
        let fronts = world.regions.iter().map(|(r, g)| (*r, g.front)).collect();
        let mut plan = plan(&fronts);
        edit(&mut plan);
        let applied = world
            .api()
            .apply_plan_toml(&toml::to_string(&plan)?)
            .await
            .context("applying the tests' plan")?;
        eprintln!("plan applied: {applied:?}");
        Ok(world)
    }

    /// Waits until the source's home pool serves through its front.
    pub async fn wait_source_serving(&self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let url = format!("http://{}/kv/key-1", self.regions[SOURCE].front);
        wait_for(
            "the executor to bring up the source's home pool",
            CLUSTER_DEADLINE,
            || async {
                let response = client.get(&url).send().await.ok()?;
                let status = response.status();
                (status.is_success() || status == reqwest::StatusCode::NOT_FOUND).then_some(())
            },
        )
        .await
    }

    /// Creates a migration of `shop` from the source to the target; returns its id.
    pub async fn migrate(&self) -> anyhow::Result<String> {
        self.migrate_between(SOURCE, TARGET).await
    }

    /// Creates a migration of `shop` from `from` to `to` through the API, on the tests'
    /// compressed schedule (lead time 0, 1.5 s analysis windows, 0.5 s drain); returns its id.
    pub async fn migrate_between(&self, from: &str, to: &str) -> anyhow::Result<String> {
        let request = MigrationRequest {
            from: Some(from.into()),
            lead_time_ms: Some(0),
            analysis_window_ms: Some(1_500),
            drain_ms: Some(500),
            ..MigrationRequest::new("shop", to, now_ms())
        };
        match self.api().migrate(&request).await? {
            Written::Migration { id } => Ok(id),
            other => bail!("creating a migration answered {other:?}"),
        }
    }

    /// Polls migration `id` until it ends, calling `on_phase` at each new phase; returns the
    /// phases seen in order. Fails after [`MIGRATION_DEADLINE`] or on `on_phase`'s error.
    pub async fn follow(
        &self,
        id: &str,
        on_phase: impl AsyncFnMut(Phase) -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<Phase>> {
        let progress = tokio::sync::Mutex::new((Vec::<Phase>::new(), on_phase));
        let outcome = wait_for(&format!("{id} to end"), MIGRATION_DEADLINE, || async {
            // During an election the API answers errors: try again until the deadline.
            let phase = match self.overview().await {
                Ok(overview) => overview.migrations.get(id)?.phase,
                Err(error) => {
                    eprintln!("overview unavailable: {error}");
                    return None;
                }
            };
            let mut progress = progress.lock().await;
            let (seen, on_phase) = &mut *progress;
            if seen.last() != Some(&phase) {
                eprintln!("{id}: {phase}");
                seen.push(phase);
                if let Err(error) = on_phase(phase).await {
                    return Some(Err(error));
                }
            }
            phase.is_terminal().then(|| Ok(seen.clone()))
        })
        .await;
        let seen = progress.into_inner().0;
        outcome.with_context(|| format!("phases seen: {seen:?}"))?
    }
}

/// Now, Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_millis() as u64
}

/// Keys a client seeds and reads.
const SEEDED_KEYS: u64 = 20;
/// Every this-many requests one is a write of a fresh key.
const WRITE_EVERY: u64 = 10;
/// Clients made by this process, so each seeds and writes keys of its own.
static CLIENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What a client saw.
#[derive(Debug, Clone, Default)]
pub struct ClientReport {
    /// Requests sent (seeding excluded).
    pub total: u64,
    /// Of which failed: any non-2xx answer, no answer within 5 s, a reset, or a read whose
    /// value is not the one seeded.
    pub failed: u64,
    /// Writes acknowledged (2xx), the seeds first, as (key, value): each must read back
    /// later.
    pub written: Vec<(String, String)>,
    /// The first failures, each with its time (RFC 3339) and what went wrong.
    pub failures: Vec<String>,
}

/// An honest constant-rate client against one front, at [`CLIENT_RPS`]: it first seeds
/// [`SEEDED_KEYS`] keys of its own (so a lost write or a stale replica shows as a wrong
/// read), then reads them and writes a fresh key every [`WRITE_EVERY`] requests. Every
/// request is counted, and it waits for the ones in flight before it reports.
pub struct Client {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<ClientReport>,
}

/// One request of a client: `Ok` when it succeeded, else what went wrong.
async fn exchange(request: reqwest::RequestBuilder, want: Option<String>) -> Result<(), String> {
    let response = request
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| format!("{status}, body cut: {e}"))?;
    if !status.is_success() {
        return Err(format!("{status}: {body}"));
    }
    match want {
        Some(value) if body != value => Err(format!("read {body:?}, expected {value:?}")),
        _ => Ok(()),
    }
}

/// Failures a client describes in its report (the count covers them all).
const DESCRIBED_FAILURES: usize = 10;

impl Client {
    /// Sends until [`Client::stop`] (at most ten minutes of requests).
    pub fn start(front: SocketAddr) -> Client {
        Self::sending(front, CLIENT_RPS * 600)
    }

    /// Seeds, then sends `count` requests and ends by itself ([`Client::finish`] waits).
    pub fn sending(front: SocketAddr, count: u64) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let me = CLIENTS.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client");
            let url = |key: &str| format!("http://{front}/kv/{key}");
            let seeded = |k: u64| (format!("c{me}-seed-{k}"), format!("s{me}-{k}"));
            let mut report = ClientReport::default();
            for k in 0..SEEDED_KEYS {
                let (key, value) = seeded(k);
                wait_for(&format!("seeding {key}"), CLUSTER_DEADLINE, || async {
                    exchange(http.put(url(&key)).body(value.clone()), None)
                        .await
                        .ok()
                })
                .await
                .expect("the front takes writes when the client starts");
                report.written.push((key, value));
            }
            let mut requests = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_millis(1_000 / CLIENT_RPS));
            let tally = |report: &mut ClientReport, outcome| match outcome {
                Ok((Ok(()), Some(written))) => report.written.push(written),
                Ok((Ok(()), None)) => {}
                Ok((Err(why), _)) => {
                    report.failed += 1;
                    if report.failures.len() < DESCRIBED_FAILURES {
                        report.failures.push(why);
                    }
                }
                Err(join) => {
                    report.failed += 1;
                    report.failures.push(format!("request task: {join}"));
                }
            };
            for i in 0..count {
                tick.tick().await;
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                report.total += 1;
                if i % WRITE_EVERY == WRITE_EVERY - 1 {
                    let (key, value) = (format!("c{me}-w{i}"), format!("v{i}"));
                    let request = http.put(url(&key)).body(value.clone());
                    requests.spawn(async move {
                        (stamped(exchange(request, None).await), Some((key, value)))
                    });
                } else {
                    let (key, value) = seeded(i % SEEDED_KEYS);
                    let request = http.get(url(&key));
                    requests.spawn(
                        async move { (stamped(exchange(request, Some(value)).await), None) },
                    );
                }
                while let Some(outcome) = requests.try_join_next() {
                    tally(&mut report, outcome);
                }
            }
            // Requests still in flight end within their 5 s timeout.
            while let Some(outcome) = requests.join_next().await {
                tally(&mut report, outcome);
            }
            report
        });
        Client { stop, task }
    }

    /// Stops sending; once every request sent has its answer, (sent, failed).
    pub async fn stop(self) -> (u64, u64) {
        let report = self.stop_and_report().await;
        (report.total, report.failed)
    }

    /// Stops sending; once every request sent has its answer, everything it saw.
    pub async fn stop_and_report(self) -> ClientReport {
        self.stop.store(true, Ordering::Relaxed);
        described(self.task.await.expect("the client task does not panic"))
    }

    /// Waits until every request was sent and answered; (sent, failed).
    pub async fn finish(self) -> (u64, u64) {
        let report = self.finish_and_report().await;
        (report.total, report.failed)
    }

    /// Waits until every request was sent and answered; everything it saw.
    pub async fn finish_and_report(self) -> ClientReport {
        described(self.task.await.expect("the client task does not panic"))
    }
}

/// A failure with the time it was seen, so it can be matched with the nodes' logs.
fn stamped(outcome: Result<(), String>) -> Result<(), String> {
    outcome.map_err(|why| format!("{}: {why}", chrono::Utc::now().to_rfc3339()))
}

/// `report`, after printing its failures (the test's output shows them when it fails).
fn described(report: ClientReport) -> ClientReport {
    for why in &report.failures {
        eprintln!("client request failed at {why}");
    }
    report
}

/// The acknowledged writes of `written` that do not read back with their value through
/// `front`.
pub async fn missing_writes(front: SocketAddr, written: &[(String, String)]) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut missing = Vec::new();
    for (key, value) in written {
        let request = http.get(format!("http://{front}/kv/{key}"));
        if exchange(request, Some(value.clone())).await.is_err() {
            missing.push(key.clone());
        }
    }
    missing
}

/// The audit's transitions of a migration of the example service (three cutover steps) that
/// nothing went wrong for: each phase of the happy path to the next, once.
pub fn happy_transitions() -> Vec<String> {
    happy_path(3)
        .windows(2)
        .map(|pair| format!("{} → {}", pair[0], pair[1]))
        .collect()
}

/// The phase changes of migration `id` in the audit log, in order (not its creation, not
/// the single-writer moves).
pub fn transitions(audit: &[AuditEntry], id: &str) -> Vec<String> {
    audit
        .iter()
        .filter(|e| e.subject == id)
        .filter(|e| matches!(e.event, AuditEvent::Transition { .. }))
        .map(|e| e.event.to_string())
        .collect()
}
