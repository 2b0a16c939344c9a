//! Harness for Umbra's end-to-end tests: locating the built binaries, starting them on
//! loopback with fresh data directories, and killing, pausing and restarting them.
//!
//! A `Cluster` owns a temp dir with the certificates, one config and data dir per node and
//! each node's log; every child process is killed when the cluster is dropped (also when a
//! test panics). Waits are polls with deadlines, never bare sleeps.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::unistd::Pid;
use umbra_consensus::Role as RaftRole;
use umbra_orchestrator::node::{AdminStatus, NodeConfig, PeerConfig};
use umbra_orchestrator::store::StoreClient;
use umbra_proto::certs::{self, Layout};
use umbra_proto::{Credentials, Identity, Role};

/// Orchestrator certificates issued per test cluster: three founders plus room for members
/// added by membership tests.
pub const MAX_NODES: u64 = 5;
/// How long one `/status` request may take before the node counts as unresponsive.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

pub use umbra_testkit::{Process, binary, free_port, wait_for};

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
    pub fn listen(&self) -> SocketAddr {
        self.config.listen
    }

    pub fn admin(&self) -> SocketAddr {
        self.config
            .admin_listen
            .expect("test nodes always have an admin endpoint")
    }

    pub fn pid(&self) -> Option<Pid> {
        self.process.as_ref().map(Process::pid)
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    fn running(&self) -> anyhow::Result<&Process> {
        self.process
            .as_ref()
            .with_context(|| format!("node {} is not running", self.id))
    }
}

/// A cluster of `umbra-orchestrator` processes on loopback.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub certs_dir: PathBuf,
    pub nodes: BTreeMap<u64, NodeProcess>,
    binary: PathBuf,
    http: reqwest::Client,
    raft: umbra_consensus::Config,
}

impl Cluster {
    /// Issues certificates and starts founding nodes `1..=size` with the test Raft tuning.
    pub async fn start(size: u64) -> anyhow::Result<Self> {
        Self::start_with(size, test_raft_config()).await
    }

    /// Like `start`, with the given Raft tuning for every node.
    pub async fn start_with(size: u64, raft: umbra_consensus::Config) -> anyhow::Result<Self> {
        let binary = binary("umbra-orchestrator")?;
        let dir = tempfile::Builder::new().prefix("umbra-e2e-").tempdir()?;
        let certs_dir = dir.path().join("certs");
        certs::init(
            &Layout {
                orchestrators: MAX_NODES,
                regions: vec!["us-east".into()],
                operators: vec!["admin".into()],
            },
            &certs_dir,
        )?;
        let mut peers = Vec::new();
        for id in 1..=size {
            peers.push(PeerConfig {
                id,
                address: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            });
        }
        let mut cluster = Self {
            dir,
            certs_dir,
            nodes: BTreeMap::new(),
            binary,
            http: reqwest::Client::builder().timeout(STATUS_TIMEOUT).build()?,
            raft,
        };
        for peer in &peers {
            cluster.add_process(peer.id, peer.address, peers.clone(), false)?;
        }
        for id in 1..=size {
            cluster.spawn(id)?;
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
        let config = NodeConfig {
            id,
            listen,
            data_dir: node_dir.join("data"),
            certs_dir: self.certs_dir.clone(),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], free_port()?))),
            join,
            peers,
            fault_injection: true,
            // The Raft test/bench mode: the key-value machine, no API, DNS or executor.
            state_machine: umbra_orchestrator::node::StateMachineKind::Kv,
            api: None,
            gateway: Default::default(),
            dns: None,
            executor: Default::default(),
            raft: self.raft.clone(),
        };
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
        let node = self.node_mut(id)?;
        if node.process.is_some() {
            bail!("node {id} is already running");
        }
        let mut command = Command::new(&binary);
        command
            .arg("--config")
            .arg(&node.config_path)
            .env("RUST_LOG", "info,raft=info");
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

    /// The node's `/status`, or an error if it does not answer in time.
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

    /// Waits until one of `among` leads and a majority of `among` agree on it.
    pub async fn wait_for_leader_among(
        &self,
        among: &[u64],
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        let result = wait_for("a leader", timeout, || async {
            let statuses = self.statuses(among).await;
            let leader = statuses
                .values()
                .filter(|s| s.raft.role == RaftRole::Leader)
                .max_by_key(|s| s.raft.term)?;
            let agreeing = statuses
                .values()
                .filter(|s| {
                    s.raft.leader == Some(leader.raft.id) && s.raft.term == leader.raft.term
                })
                .count();
            (agreeing * 2 > leader.raft.voters.len()).then_some(leader.raft.id)
        })
        .await;
        if result.is_err() {
            self.dump_statuses().await;
        }
        result
    }

    /// Waits for a leader among the live nodes.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let live = self.live();
        self.wait_for_leader_among(&live, timeout).await
    }

    /// Waits until every node in `ids` applied the same commands in the same order, up to at
    /// least `commands` commands; returns the common digest's applied count.
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
            if let Ok(log) = std::fs::read_to_string(&node.log_path) {
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                for line in tail.iter().rev() {
                    eprintln!("  node {} | {line}", node.id);
                }
            }
        }
    }

    /// Credentials of the operator `admin`.
    pub fn operator_credentials(&self) -> anyhow::Result<Credentials> {
        Ok(Credentials::load(
            &self.certs_dir,
            &Identity::new(Role::Operator, "admin")?,
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
