//! Harness for Umbra's end-to-end tests: one [`Cluster`] type that starts real
//! `umbra-orchestrator` processes on loopback with fresh data directories, and kills, pauses,
//! stops and restarts them.
//!
//! A cluster runs in one of two [`Mode`]s. [`Mode::Kv`] is the Raft test and bench mode: the
//! key-value state machine, QUIC, Raft and the admin endpoint only ([`Cluster::start`]).
//! [`Mode::Orchestrator`] runs every node as a deployment does: the orchestrator state machine,
//! the operator API (a token file in the cluster dir, [`Cluster::api`]), an embedded DNS
//! server on its own port serving [`Options::zone`], the agent gateway on the QUIC endpoint,
//! and the executor, whose `dns_servers` are every node's DNS address
//! ([`Cluster::launch`] with [`Options::orchestrator`]).
//!
//! A `Cluster` owns a temp dir with the certificates ([`Options::regions`] and
//! [`Options::operators`], and [`MAX_NODES`] orchestrators), one config and data dir per node
//! and each node's log; every child process is killed when the cluster is dropped (also when
//! a test panics). Waits are polls with deadlines, never bare sleeps.

mod memory_api;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use umbra_consensus::Role as RaftRole;
use umbra_orchestrator::api::OverviewView;
use umbra_orchestrator::api::{ApiClient, ApiConfig, BearerToken};
use umbra_orchestrator::node::{
    AdminStatus, DnsSection, ExecutorSection, GatewaySection, NodeConfig, PeerConfig,
    StateMachineKind,
};
use umbra_orchestrator::store::StoreClient;
use umbra_proto::certs::Layout;
use umbra_proto::{
    Connection, Credentials, Endpoint, FramedStream, Identity, Role, StreamKind, TransportConfig,
};

/// Orchestrator certificates issued per test cluster: three founders plus room for members
/// added by membership tests (or a test's own stand-in orchestrator).
pub const MAX_NODES: u64 = 5;
/// The zone orchestrator-mode nodes serve: the one `examples/plan.toml`'s hostnames lie in.
pub const ZONE: &str = "umbra.test.";
/// The operator whose certificate the harness's clients present.
pub const OPERATOR: &str = "admin";
/// How long one `/status` request may take before the node counts as unresponsive.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How many log lines a failing wait shows per node.
const LOG_TAIL_LINES: usize = 15;

pub use memory_api::{MemoryApi, plan_without_schedules};
pub use umbra_testkit::{Process, bin_dir, binary, free_port, wait_for};
use umbra_testkit::{Secrets, TEST_TOKEN, write_secrets};

/// The demo's options for an end-to-end test: the binaries next to the test's, and an SLO
/// that judges errors, not speed (`umbra_demo::scenario::SAFETY_ONLY_P99_MS`), so a stalled
/// shared machine does not roll the migration back.
pub fn demo_options() -> anyhow::Result<umbra_demo::DemoOptions> {
    let mut options = umbra_demo::DemoOptions::new(bin_dir()?);
    options.load.slo_max_p99_ms = umbra_demo::scenario::SAFETY_ONLY_P99_MS;
    Ok(options)
}

/// Raft tuning for tests: 50 ms ticks so elections take about a second on a loaded 2-core
/// machine, frequent snapshots so catch-up by snapshot is exercised, and a long request
/// timeout so a proposal stranded on a cut-off leader lives until the cut heals (the test
/// then sees it dropped, not timed out).
pub fn test_raft_config() -> umbra_consensus::Config {
    umbra_consensus::Config {
        tick_interval_ms: 50,
        election_ticks: 10,
        heartbeat_ticks: 1,
        snapshot_interval_entries: 200,
        request_timeout_ms: 15_000,
        ..umbra_consensus::Config::default()
    }
}

/// What a cluster's nodes replicate, and so which services each runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The key-value machine of the Raft tests and bench: QUIC, Raft and the admin endpoint.
    Kv,
    /// The product: operator API, embedded DNS, agent gateway and executor on every node.
    Orchestrator,
}

impl Mode {
    fn state_machine(self) -> StateMachineKind {
        match self {
            Mode::Kv => StateMachineKind::Kv,
            Mode::Orchestrator => StateMachineKind::Orchestrator,
        }
    }

    fn rust_log(self) -> &'static str {
        match self {
            Mode::Kv => "info,raft=info",
            Mode::Orchestrator => "info,raft=warn",
        }
    }
}

/// How to start a [`Cluster`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Founding nodes, ids `1..=size`.
    pub size: u64,
    pub mode: Mode,
    /// Raft tuning of every node.
    pub raft: umbra_consensus::Config,
    /// Regions that get an agent certificate.
    pub regions: Vec<String>,
    /// Operators that get a certificate; [`OPERATOR`] is the harness's own clients'.
    pub operators: Vec<String>,
    /// The zone each node's DNS server serves (orchestrator mode).
    pub zone: String,
    /// Secondaries each node's DNS server notifies (`[dns] secondaries`; orchestrator mode).
    pub dns_secondaries: Vec<SocketAddr>,
    /// Each node's `[dns] transfer_key_file` (required with `dns_secondaries`).
    pub dns_transfer_key_file: Option<PathBuf>,
}

impl Options {
    /// Key-value mode with the test Raft tuning ([`test_raft_config`]).
    pub fn kv(size: u64) -> Self {
        Self {
            size,
            mode: Mode::Kv,
            raft: test_raft_config(),
            regions: vec!["us-east".into()],
            operators: vec![OPERATOR.into()],
            zone: ZONE.into(),
            dns_secondaries: Vec::new(),
            dns_transfer_key_file: None,
        }
    }

    /// Orchestrator mode with the product's Raft tuning (100 ms ticks, elections after about
    /// a second), as deployments run it: each node runs all its services, and the tests that
    /// use this mode judge terms, which spurious elections on a loaded machine would muddle.
    pub fn orchestrator(size: u64) -> Self {
        Self {
            mode: Mode::Orchestrator,
            raft: umbra_consensus::Config::default(),
            ..Self::kv(size)
        }
    }
}

/// One orchestrator process of a test cluster.
pub struct NodeProcess {
    pub id: u64,
    pub config: NodeConfig,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    process: Option<Process>,
    paused: bool,
}

impl NodeProcess {
    /// QUIC address: Raft peers, store clients and agents.
    pub fn listen(&self) -> SocketAddr {
        self.config.listen
    }

    pub fn admin(&self) -> SocketAddr {
        self.config
            .admin_listen
            .expect("test nodes always have an admin endpoint")
    }

    /// The operator API's address (orchestrator mode).
    pub fn api(&self) -> SocketAddr {
        self.config
            .api
            .as_ref()
            .expect("only orchestrator-mode nodes have an API")
            .listen
    }

    /// The embedded DNS server's address, UDP and TCP (orchestrator mode).
    pub fn dns(&self) -> SocketAddr {
        self.config
            .dns
            .as_ref()
            .expect("only orchestrator-mode nodes serve DNS")
            .listen
            .expect("the cluster's nodes run the embedded DNS server")
    }

    pub fn pid(&self) -> Option<Pid> {
        self.process.as_ref().map(Process::pid)
    }

    /// The last `lines` lines of its log (also of a process that has exited).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn running(&self) -> anyhow::Result<&Process> {
        self.process
            .as_ref()
            .with_context(|| format!("node {} is not running", self.id))
    }
}

/// A client stream opened straight to one node as [`OPERATOR`], with no redirects (to reach
/// a particular, soon deposed, leader). Its connection and endpoint live as long as it.
pub struct DirectStream {
    pub stream: FramedStream,
    _connection: Connection,
    _endpoint: Endpoint,
}

/// A cluster of `umbra-orchestrator` processes on loopback; see the module docs.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub certs_dir: PathBuf,
    pub nodes: BTreeMap<u64, NodeProcess>,
    binary: PathBuf,
    http: reqwest::Client,
    options: Options,
    /// Every node's DNS address, by id, known before any config is written (orchestrator mode).
    dns_addresses: BTreeMap<u64, SocketAddr>,
    token_file: PathBuf,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

impl Cluster {
    /// Key-value mode: issues certificates and starts founding nodes `1..=size` with the test
    /// Raft tuning.
    pub async fn start(size: u64) -> anyhow::Result<Self> {
        Self::launch(Options::kv(size)).await
    }

    /// Issues certificates and starts the founding nodes as `options` says.
    pub async fn launch(options: Options) -> anyhow::Result<Self> {
        let binary = binary("umbra-orchestrator")?;
        let dir = tempfile::Builder::new().prefix("umbra-e2e-").tempdir()?;
        let Secrets {
            certs_dir,
            token_file,
        } = write_secrets(
            dir.path(),
            &Layout {
                orchestrators: MAX_NODES,
                regions: options.regions.clone(),
                operators: options.operators.clone(),
            },
        )?;
        let mut peers = Vec::new();
        let mut dns_addresses = BTreeMap::new();
        for id in 1..=options.size {
            peers.push(PeerConfig {
                id,
                address: loopback(free_port()?),
            });
            if options.mode == Mode::Orchestrator {
                dns_addresses.insert(id, loopback(free_port()?));
            }
        }
        let mut cluster = Self {
            dir,
            certs_dir,
            nodes: BTreeMap::new(),
            binary,
            http: reqwest::Client::builder().timeout(STATUS_TIMEOUT).build()?,
            options,
            dns_addresses,
            token_file,
        };
        for peer in &peers {
            cluster.add_process(peer.id, peer.address, peers.clone(), false)?;
        }
        for peer in &peers {
            cluster.spawn(peer.id)?;
        }
        Ok(cluster)
    }

    /// Writes the config for a node (founding or joining) without starting it.
    pub fn add_process(
        &mut self,
        id: u64,
        listen: SocketAddr,
        peers: Vec<PeerConfig>,
        join: bool,
    ) -> anyhow::Result<()> {
        let node_dir = self.dir.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&node_dir)?;
        let (api, dns, executor) = match self.options.mode {
            Mode::Kv => (None, None, ExecutorSection::default()),
            Mode::Orchestrator => {
                // Founders' addresses are drawn at launch, so every executor lists them all.
                let dns = match self.dns_addresses.get(&id) {
                    Some(dns) => *dns,
                    None => {
                        let dns = loopback(free_port()?);
                        self.dns_addresses.insert(id, dns);
                        dns
                    }
                };
                (
                    Some(ApiConfig::new(
                        loopback(free_port()?),
                        self.token_file.clone(),
                    )),
                    Some(DnsSection {
                        secondaries: self.options.dns_secondaries.clone(),
                        transfer_key_file: self.options.dns_transfer_key_file.clone(),
                        ..DnsSection::embedded(dns, self.options.zone.clone())
                    }),
                    ExecutorSection {
                        dns_servers: self.dns_addresses.values().copied().collect(),
                        ..ExecutorSection::default()
                    },
                )
            }
        };
        let config = NodeConfig {
            id,
            listen,
            data_dir: node_dir.join("data"),
            certs_dir: self.certs_dir.clone(),
            admin_listen: Some(loopback(free_port()?)),
            join,
            peers,
            fault_injection: true,
            state_machine: self.options.mode.state_machine(),
            api,
            gateway: GatewaySection::default(),
            dns,
            executor,
            raft: self.options.raft.clone(),
        };
        config
            .validate()
            .with_context(|| format!("node {id}'s config"))?;
        let config_path = node_dir.join("node.toml");
        std::fs::write(&config_path, config.to_toml())?;
        self.nodes.insert(
            id,
            NodeProcess {
                id,
                config,
                config_path,
                log_path: node_dir.join("node.log"),
                process: None,
                paused: false,
            },
        );
        Ok(())
    }

    /// A new member's peer list: every current node plus itself.
    pub fn peer_list_with(&self, id: u64, listen: SocketAddr) -> Vec<PeerConfig> {
        let mut peers: Vec<PeerConfig> = self
            .nodes
            .values()
            .map(|n| PeerConfig {
                id: n.id,
                address: n.listen(),
            })
            .collect();
        peers.push(PeerConfig {
            id,
            address: listen,
        });
        peers
    }

    fn node(&self, id: u64) -> anyhow::Result<&NodeProcess> {
        self.nodes.get(&id).with_context(|| format!("no node {id}"))
    }

    fn node_mut(&mut self, id: u64) -> anyhow::Result<&mut NodeProcess> {
        self.nodes
            .get_mut(&id)
            .with_context(|| format!("no node {id}"))
    }

    /// Starts (or restarts) node `id` from its config and data dir.
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let binary = self.binary.clone();
        let rust_log = self.options.mode.rust_log();
        let node = self.node_mut(id)?;
        if node.process.is_some() {
            bail!("node {id} is already running");
        }
        let mut command = Command::new(&binary);
        command
            .arg("--config")
            .arg(&node.config_path)
            .env("RUST_LOG", rust_log);
        node.process = Some(Process::spawn(
            &format!("node {id}"),
            command,
            &node.log_path,
        )?);
        node.paused = false;
        Ok(())
    }

    /// SIGKILL: no shutdown code runs, unsynced data is lost.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        // Dropping the process SIGKILLs and reaps it.
        node.process = None;
        node.paused = false;
        Ok(())
    }

    /// SIGKILL then start again from the same data dir.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id)?;
        self.spawn(id)
    }

    /// SIGTERM (a clean stop) and the exit status, once the node exits within `timeout`
    /// (otherwise an error with its log tail, and it is SIGKILLed).
    pub async fn terminate(&mut self, id: u64, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let node = self.node_mut(id)?;
        let mut process = node
            .process
            .take()
            .with_context(|| format!("node {id} is not running"))?;
        if std::mem::take(&mut node.paused) {
            process.resume()?;
        }
        process.signal(Signal::SIGTERM)?;
        wait_for_exit(&mut process, id, timeout)
            .await
            .context("after SIGTERM")
    }

    /// Waits until node `id` exits on its own within `timeout`; its exit status.
    pub async fn wait_for_exit(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> anyhow::Result<ExitStatus> {
        let node = self.node_mut(id)?;
        let mut process = node
            .process
            .take()
            .with_context(|| format!("node {id} is not running"))?;
        wait_for_exit(&mut process, id, timeout).await
    }

    /// Deletes node `id`'s data directory, as a lost disk would (the node must not be running).
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node(id)?;
        if node.process.is_some() {
            bail!("node {id} is running; kill it before wiping its data");
        }
        std::fs::remove_dir_all(&node.config.data_dir)
            .with_context(|| format!("removing {}", node.config.data_dir.display()))
    }

    /// Rewrites node `id`'s config with `join` (a founding member or one added later).
    pub fn set_join(&mut self, id: u64, join: bool) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        node.config.join = join;
        std::fs::write(&node.config_path, node.config.to_toml())?;
        Ok(())
    }

    /// Every node's whole log, for checks over what the processes printed.
    pub fn logs(&self) -> anyhow::Result<BTreeMap<u64, String>> {
        self.nodes
            .values()
            .map(|node| {
                let log = std::fs::read_to_string(&node.log_path)
                    .with_context(|| format!("reading {}", node.log_path.display()))?;
                Ok((node.id, log))
            })
            .collect()
    }

    /// SIGSTOP; returns once every thread of the node is stopped (its sockets stay open).
    pub fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        node.running()?.pause()?;
        node.paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        node.running()?.resume()?;
        node.paused = false;
        Ok(())
    }

    /// Drops node `id`'s Raft traffic with `peers`, both ways (its clients still reach it).
    pub async fn cut(&self, id: u64, peers: &[u64]) -> anyhow::Result<()> {
        let url = format!("http://{}/faults/cut", self.node(id)?.admin());
        self.http
            .post(&url)
            .json(&serde_json::json!({ "peers": peers }))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Restores node `id`'s Raft traffic.
    pub async fn heal(&self, id: u64) -> anyhow::Result<()> {
        let url = format!("http://{}/faults/heal", self.node(id)?.admin());
        self.http.post(&url).send().await?.error_for_status()?;
        Ok(())
    }

    /// The node's `/status` (its own replica, not read through the leader), or an error if it
    /// does not answer in time.
    pub async fn status(&self, id: u64) -> anyhow::Result<AdminStatus> {
        let node = self.node(id)?;
        let url = format!("http://{}/status", node.admin());
        let response = self.http.get(&url).send().await?.error_for_status()?;
        Ok(response.json().await?)
    }

    /// Statuses of the nodes that answer, by id.
    pub async fn statuses(&self, ids: &[u64]) -> BTreeMap<u64, AdminStatus> {
        let mut statuses = BTreeMap::new();
        for id in ids {
            if let Ok(status) = self.status(*id).await {
                statuses.insert(*id, status);
            }
        }
        statuses
    }

    /// Ids of running, unpaused nodes.
    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.process.is_some() && !n.paused)
            .map(|n| n.id)
            .collect()
    }

    /// The leader and its term, if one of `among` leads (the highest term, should a deposed
    /// leader not know yet) and a majority of its voters among `among` agree on it. One poll.
    pub async fn leader_among(&self, among: &[u64]) -> Option<(u64, u64)> {
        let statuses = self.statuses(among).await;
        let leader = statuses
            .values()
            .filter(|s| s.raft.role == RaftRole::Leader)
            .max_by_key(|s| s.raft.term)?;
        let agreeing = statuses
            .values()
            .filter(|s| s.raft.leader == Some(leader.raft.id) && s.raft.term == leader.raft.term)
            .count();
        (agreeing * 2 > leader.raft.voters.len()).then_some((leader.raft.id, leader.raft.term))
    }

    /// Waits until one of `among` leads and a majority agrees on it ([`Cluster::leader_among`]).
    pub async fn wait_for_leader_among(
        &self,
        among: &[u64],
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        let result = wait_for("a leader", timeout, || self.leader_among(among)).await;
        self.dump_on_error(result)
            .await
            .map(|(leader, _term)| leader)
    }

    /// Waits for a leader among the live nodes.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let live = self.live();
        self.wait_for_leader_among(&live, timeout).await
    }

    /// Waits until node `id`'s operator API names a leader among `among`; that leader.
    pub async fn wait_for_api_leader(
        &self,
        id: u64,
        among: &[u64],
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        let client = self.api(id)?;
        let last = RefCell::new(String::from("no answer yet"));
        let result = wait_for(
            &format!("node {id}'s API to name a leader among {among:?}"),
            timeout,
            || async {
                match client.health().await {
                    Ok(health) => {
                        let leader = health.leader.leader.filter(|l| among.contains(l));
                        if leader.is_none() {
                            *last.borrow_mut() = format!("it names {:?}", health.leader);
                        }
                        leader
                    }
                    Err(error) => {
                        *last.borrow_mut() = error.to_string();
                        None
                    }
                }
            },
        )
        .await
        .with_context(|| format!("last: {}", last.borrow()));
        self.dump_on_error(result).await
    }

    /// Waits until every node in `ids` applied the same commands in the same order, up to at
    /// least `commands` commands; returns the common digest's applied count (key-value mode).
    pub async fn wait_for_same_state(
        &self,
        ids: &[u64],
        commands: u64,
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        let result = wait_for("identical state machines", timeout, || async {
            let statuses = self.statuses(ids).await;
            if statuses.len() != ids.len() {
                return None;
            }
            let digests: Vec<_> = statuses.values().filter_map(|s| s.digest).collect();
            let first = *digests.first()?;
            (digests.len() == ids.len()
                && first.commands_applied >= commands
                && digests.iter().all(|d| *d == first))
            .then_some(first.commands_applied)
        })
        .await;
        self.dump_on_error(result).await
    }

    /// Waits until every live node's own replica (admin `/status`) holds `expected`'s regions,
    /// services and DNS weights (orchestrator mode); returns how many nodes were compared.
    pub async fn wait_for_replicas(
        &self,
        expected: &OverviewView,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let live = self.live();
        let last = RefCell::new(String::new());
        let result = wait_for("the replicas to agree", timeout, || async {
            let mut agreed = 0;
            for (id, status) in self.statuses(&live).await {
                match status.overview {
                    Some(o)
                        if o.regions == expected.regions
                            && o.services == expected.services
                            && o.dns == expected.dns =>
                    {
                        agreed += 1
                    }
                    other => *last.borrow_mut() = format!("node {id} holds {other:?}"),
                }
            }
            (agreed == live.len()).then_some(agreed)
        })
        .await
        .with_context(|| format!("last: {}", last.borrow()));
        self.dump_on_error(result).await
    }

    /// Passes `result` on, printing every node's status and log tail first if it failed.
    async fn dump_on_error<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        if result.is_err() {
            self.dump_statuses().await;
        }
        result
    }

    /// Prints every node's status and log tail, for a failing test's output.
    pub async fn dump_statuses(&self) {
        for node in self.nodes.values() {
            match self.status(node.id).await {
                Ok(status) => eprintln!("node {}: {:?}", node.id, status),
                Err(error) => eprintln!("node {}: no status ({error})", node.id),
            }
            for line in node.log_tail(LOG_TAIL_LINES).lines() {
                eprintln!("  node {} | {line}", node.id);
            }
        }
    }

    /// Credentials of `identity`, from the cluster's certificates.
    pub fn credentials(&self, identity: &Identity) -> anyhow::Result<Credentials> {
        Credentials::load(&self.certs_dir, identity)
            .with_context(|| format!("credentials of {identity:?}"))
    }

    /// Credentials of the operator [`OPERATOR`].
    pub fn operator_credentials(&self) -> anyhow::Result<Credentials> {
        self.credentials(&Identity::new(Role::Operator, OPERATOR)?)
    }

    /// A client of node `id`'s operator API, as [`OPERATOR`] with the cluster's token
    /// (orchestrator mode).
    pub fn api(&self, id: u64) -> anyhow::Result<ApiClient> {
        let node = self.node(id)?;
        let token = BearerToken::new(TEST_TOKEN).context("the test token is usable")?;
        Ok(ApiClient::new(
            &format!("https://{}", node.api()),
            &self.operator_credentials()?,
            token,
        )?)
    }

    /// A store client that knows every node, starting with `first`.
    pub fn client_starting_at(&self, first: u64) -> anyhow::Result<StoreClient> {
        let mut nodes: Vec<SocketAddr> = self.nodes.values().map(|n| n.listen()).collect();
        let start = self.node(first)?.listen();
        nodes.retain(|a| *a != start);
        nodes.insert(0, start);
        Ok(StoreClient::new(&self.operator_credentials()?, nodes)?)
    }

    /// A client stream straight to node `id`; see [`DirectStream`].
    pub async fn direct_stream(&self, id: u64) -> anyhow::Result<DirectStream> {
        let endpoint = Endpoint::client(
            loopback(0),
            &self.operator_credentials()?,
            TransportConfig::default(),
        )?;
        let connection = endpoint
            .connect(self.node(id)?.listen(), &Role::Orchestrator.server_name())
            .await?;
        let stream = connection.open_stream(StreamKind::Client).await?;
        Ok(DirectStream {
            stream,
            _connection: connection,
            _endpoint: endpoint,
        })
    }
}

/// Waits until `process` (node `id`) exits within `timeout`; its exit status, or an error
/// with its log tail.
async fn wait_for_exit(
    process: &mut Process,
    id: u64,
    timeout: Duration,
) -> anyhow::Result<ExitStatus> {
    let exited = wait_for(&format!("node {id} to exit"), timeout, || {
        let exited = process.child_mut().try_wait();
        async move { exited.transpose() }
    })
    .await;
    exited
        .and_then(|status| Ok(status?))
        .with_context(|| format!("its log ends:\n{}", process.log_tail()))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            // A stopped process still dies from SIGKILL; no SIGCONT needed.
            node.process = None;
        }
        if std::thread::panicking() || std::env::var_os("UMBRA_KEEP_TEST_DIRS").is_some() {
            let kept = self.dir.path().to_path_buf();
            eprintln!(
                "test cluster files (logs, configs) kept in {}",
                kept.display()
            );
            // Keep the directory for post-mortem reading.
            let dir = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("a temp dir for the replacement"),
            );
            let _ = dir.keep();
        }
    }
}

/// The example plan without its follow-the-sun schedule: the zone changes only when a test
/// changes it.
pub fn unscheduled_plan() -> umbra_orchestrator::state::Plan {
    let mut plan = umbra_orchestrator::state::Plan::example();
    plan.schedules.clear();
    plan
}

/// The IP of `region`'s front in `plan`.
pub fn front_ip(plan: &umbra_orchestrator::state::Plan, region: &str) -> anyhow::Result<IpAddr> {
    let spec = plan
        .regions
        .iter()
        .find(|r| r.name == region)
        .with_context(|| format!("the plan declares {region}"))?;
    Ok(spec.front.parse::<SocketAddr>()?.ip())
}

/// A zone-transfer TSIG key made as an operator makes it (`tsig-keygen -a hmac-sha256
/// umbra-xfr`), written to `dir/umbra-xfr.key` for the orchestrators' `[dns]
/// transfer_key_file`, and the same key for a BIND secondary's configuration. Fails with the
/// install command when `tsig-keygen` is missing.
pub fn transfer_key(
    dir: &std::path::Path,
) -> anyhow::Result<(PathBuf, umbra_testkit::bind::TsigSecret)> {
    let keygen = umbra_testkit::installed("tsig-keygen", "bind9")?;
    let generated = std::process::Command::new(keygen)
        .args(["-a", "hmac-sha256", "umbra-xfr"])
        .output()?;
    anyhow::ensure!(generated.status.success(), "tsig-keygen failed");
    let key_file = dir.join("umbra-xfr.key");
    std::fs::write(&key_file, &generated.stdout)?;
    let key = umbra_dns::rfc2136::TsigKey::read_bind_key_file(&key_file)?;
    let secret = umbra_testkit::bind::TsigSecret {
        name: key.name.clone(),
        algorithm: "hmac-sha256".into(),
        secret_base64: key.secret_base64(),
    };
    Ok((key_file, secret))
}
