//! Three real `umbra-orchestrator` processes in orchestrator mode (the default state machine),
//! each with its operator API, agent gateway, embedded DNS server and executor, as a
//! deployment runs them. Through the API (`api::ApiClient`, operator certificate + token):
//! a plan applies and reads back from every node, a plan naming an unknown region is refused
//! with a message that names it, every node's own replica (admin `/status`, not the API,
//! which reads through the leader) holds the same state, and every node's DNS server answers
//! the service's name with the primary region's front (each serves its own replica). An agent
//! (region certificate) opening an agent stream on any node's QUIC endpoint gets the
//! gateway's hello reply: `Leader` from the leader, `NotLeader` naming the leader elsewhere. Then the
//! leader is SIGKILLed: a survivor's API still answers, a new leader is elected, writes go
//! through, and the survivors' DNS still answers. SIGTERM stops a node cleanly (exit 0).
//!
//! Needs only the binary Cargo builds for this test; all traffic stays on 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_proto::rr::{RData, RecordType};
use umbra_dns::verify::resolver_for;
use umbra_orchestrator::api::{ApiClient, ApiConfig, BearerToken};
use umbra_orchestrator::node::{
    AdminStatus, DnsSection, ExecutorSection, GatewaySection, NodeConfig, PeerConfig,
    StateMachineKind,
};
use umbra_orchestrator::state::Overview;
use umbra_proto::agent::{AgentHello, HelloReply};
use umbra_proto::certs::{self, Layout};
use umbra_proto::ports::free_loopback_port;
use umbra_proto::{Credentials, Endpoint, Identity, Role, StreamKind, TransportConfig};

const ZONE: &str = "umbra.test.";
/// The region whose agent certificate the test uses to open agent streams.
const REGION: &str = "us-east";
const HOSTNAME: &str = "shop.umbra.test.";
/// How long an election plus the first API answer may take on a loaded 2-core machine.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);
const API_CALL_TIMEOUT: Duration = Duration::from_secs(20);

const PLAN: &str = r#"
[[region]]
name = "us-east"
front = "127.0.0.11:8080"

[[region]]
name = "eu-west"
front = "127.0.0.12:8080"

[[service]]
name = "shop"
hostname = "shop.umbra.test."
primary_region = "us-east"
capacity_rps_per_instance = 100.0
max_instances = 4
tier = { probabilistic = { cost_miss = 4.0, cost_idle = 1.0 } }
replication = "sample-log-shipping"
slo = { max_error_rate = 0.01, max_p99_ms = 100.0, min_samples = 50 }

[service.warmup]
allow_writes = false
mix = { requests = [{ method = "GET", path = "/kv/{key}", weight = 1.0 }], key_count = 1000, zipf_exponent = 1.0, rate_per_sec = 200.0, max_duration_ms = 30000 }
gate = { reference_p99_ms = 5.0, p99_tolerance_pct = 50.0, max_error_rate = 0.01, min_requests = 200 }
"#;

/// One orchestrator process; SIGKILLed on drop if still running.
struct Node {
    id: u64,
    quic: SocketAddr,
    api: SocketAddr,
    dns: SocketAddr,
    admin: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(&self.log_path)?;
        let child = Command::new(env!("CARGO_BIN_EXE_umbra-orchestrator"))
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info,raft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting umbra-orchestrator")?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    operator: Credentials,
    agent: Credentials,
    token: BearerToken,
}

impl Cluster {
    fn start(dir: tempfile::TempDir) -> anyhow::Result<Self> {
        let root = dir.path();
        let certs_dir = root.join("certs");
        certs::init(
            &Layout {
                orchestrators: 3,
                regions: vec![REGION.into()],
                operators: vec!["admin".into()],
            },
            &certs_dir,
        )?;
        let token_value = "wiring-test-token-0123456789abcdef0123456789abcdef";
        let token_file = root.join("api-token");
        std::fs::write(&token_file, format!("{token_value}\n"))?;
        let localhost = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut peers = Vec::new();
        let mut apis = Vec::new();
        let mut dns = Vec::new();
        let mut admins = Vec::new();
        for id in 1..=3 {
            peers.push(PeerConfig {
                id,
                address: localhost(free_loopback_port()?),
            });
            apis.push(localhost(free_loopback_port()?));
            dns.push(localhost(free_loopback_port()?));
            admins.push(localhost(free_loopback_port()?));
        }
        let mut nodes = Vec::new();
        for (i, peer) in peers.iter().enumerate() {
            let node_dir = root.join(format!("node-{}", peer.id));
            std::fs::create_dir_all(&node_dir)?;
            let config = NodeConfig {
                id: peer.id,
                listen: peer.address,
                data_dir: node_dir.join("data"),
                certs_dir: certs_dir.clone(),
                admin_listen: Some(admins[i]),
                join: false,
                peers: peers.clone(),
                fault_injection: false,
                state_machine: StateMachineKind::Orchestrator,
                raft: umbra_consensus::Config::default(),
                api: Some(ApiConfig::new(apis[i], token_file.clone())),
                gateway: GatewaySection::default(),
                dns: Some(DnsSection {
                    listen: dns[i],
                    zone: ZONE.into(),
                }),
                executor: ExecutorSection {
                    dns_servers: dns.clone(),
                    ..ExecutorSection::default()
                },
            };
            config.validate()?;
            let config_path = node_dir.join("node.toml");
            std::fs::write(&config_path, config.to_toml())?;
            let mut node = Node {
                id: peer.id,
                quic: peer.address,
                api: apis[i],
                dns: dns[i],
                admin: admins[i],
                config_path,
                log_path: node_dir.join("node.log"),
                child: None,
            };
            node.spawn()?;
            nodes.push(node);
        }
        let operator = Credentials::load(&certs_dir, &Identity::new(Role::Operator, "admin")?)?;
        let agent = Credentials::load(&certs_dir, &Identity::new(Role::Agent, REGION)?)?;
        Ok(Self {
            _dir: dir,
            nodes,
            operator,
            agent,
            token: BearerToken::new(token_value).context("test token")?,
        })
    }

    fn client(&self, node: &Node) -> anyhow::Result<ApiClient> {
        Ok(ApiClient::new(
            &format!("https://{}", node.api),
            &self.operator,
            self.token.clone(),
        )?
        .with_timeout(API_CALL_TIMEOUT))
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("node ids are 1..=3")
    }

    /// Fails with the node's log when a process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "node {} exited ({status}); its log:\n{}",
                    node.id,
                    node.log()
                );
            }
        }
        Ok(())
    }

    /// Waits until `node`'s API names a leader among `among`; the leader's id.
    async fn leader_seen_by(&mut self, id: u64, among: &[u64]) -> anyhow::Result<u64> {
        let client = self.client(self.node(id))?;
        let deadline = Instant::now() + CLUSTER_DEADLINE;
        loop {
            self.check_alive()?;
            match client.health().await {
                Ok(health) => {
                    if let Some(leader) = health.leader.leader
                        && among.contains(&leader)
                    {
                        return Ok(leader);
                    }
                }
                Err(error) if Instant::now() >= deadline => {
                    bail!("node {id}'s API never named a leader: {error}")
                }
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {id}'s API named no leader among {among:?} within {CLUSTER_DEADLINE:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Opens an agent stream (agent certificate of `REGION`) on `node`'s QUIC endpoint and returns
/// the gateway's answer to the hello.
async fn agent_hello(cluster: &Cluster, node: &Node) -> anyhow::Result<HelloReply> {
    let endpoint = Endpoint::client(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        &cluster.agent,
        TransportConfig::default(),
    )?;
    let connection = endpoint
        .connect(node.quic, &Identity::orchestrator(node.id).server_name())
        .await?;
    let mut stream = connection.open_stream(StreamKind::Agent).await?;
    stream
        .send(&AgentHello {
            region: REGION.into(),
            newest_term: 0,
        })
        .await?;
    let reply = tokio::time::timeout(API_CALL_TIMEOUT, stream.recv::<HelloReply>())
        .await
        .context("no hello reply in time")??
        .context("the node closed the agent stream without a reply")?;
    endpoint.close();
    Ok(reply)
}

/// The addresses `server` answers for `name` (A records), asked with a fresh resolver so no
/// cache hides a change.
async fn resolve(server: SocketAddr, name: &str) -> anyhow::Result<Vec<IpAddr>> {
    let resolver = resolver_for(server)?;
    let lookup = resolver.lookup(name, RecordType::A).await?;
    Ok(lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect())
}

/// Waits until `server` answers `name` with exactly `expected`.
async fn wait_for_record(
    server: SocketAddr,
    name: &str,
    expected: &[IpAddr],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CLUSTER_DEADLINE;
    let mut last = String::new();
    while Instant::now() < deadline {
        match resolve(server, name).await {
            Ok(found) if found == expected => return Ok(()),
            Ok(found) => last = format!("answered {found:?}"),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("DNS server {server} never answered {name} with {expected:?}; last: {last}")
}

/// Waits until every running node's own replica (admin `/status`) holds `expected`'s regions,
/// services and DNS weights; how many nodes were compared.
async fn wait_for_replicas(nodes: &[Node], expected: &Overview) -> anyhow::Result<usize> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = Instant::now() + CLUSTER_DEADLINE;
    let same = |o: &Overview| {
        o.regions == expected.regions && o.services == expected.services && o.dns == expected.dns
    };
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut agreed = 0;
        for node in nodes.iter().filter(|n| n.child.is_some()) {
            let status: Result<AdminStatus, _> = match http
                .get(format!("http://{}/status", node.admin))
                .send()
                .await
            {
                Ok(response) => response.json().await,
                Err(error) => Err(error),
            };
            match status {
                Ok(AdminStatus {
                    overview: Some(overview),
                    ..
                }) if same(&overview) => agreed += 1,
                Ok(status) => last = format!("node {} holds {:?}", node.id, status.overview),
                Err(error) => last = format!("node {}: {error}", node.id),
            }
        }
        if agreed == nodes.iter().filter(|n| n.child.is_some()).count() {
            return Ok(agreed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the replicas never agreed; last: {last}")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IPs parse")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_serve_api_and_dns_and_survive_the_leader() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(tempfile::tempdir()?)?;
    let leader = cluster.leader_seen_by(1, &[1, 2, 3]).await?;

    // A plan through a follower's API (forwarded to the leader).
    let follower = if leader == 1 { 2 } else { 1 };
    let applied = cluster
        .client(cluster.node(follower))?
        .apply_plan_toml(PLAN)
        .await
        .context("applying the plan through a follower")?;
    assert!(format!("{applied:?}").contains("Plan"), "{applied:?}");

    // A plan naming an unknown region is refused, and the message names the region.
    let unknown = PLAN.replace("primary_region = \"us-east\"", "primary_region = \"mars\"");
    let refused = cluster
        .client(cluster.node(leader))?
        .apply_plan_toml(&unknown)
        .await
        .expect_err("a plan with an unknown region must be refused");
    assert!(refused.to_string().contains("mars"), "{refused}");

    // Every node's API reads the plan back, and every node's state is the same.
    let mut overviews = Vec::new();
    for node in &cluster.nodes {
        let status = cluster.client(node)?.status().await?;
        assert_eq!(status.overview.regions.len(), 2, "node {}", node.id);
        let shop = &status.overview.services["shop"];
        assert_eq!(shop.primary_region, "us-east");
        overviews.push(status.overview);
    }
    assert!(overviews.windows(2).all(|w| w[0] == w[1]));
    // The API reads through the leader; each node's own replica is on its admin `/status`.
    let replicas = wait_for_replicas(&cluster.nodes, &overviews[0]).await?;
    assert_eq!(replicas, 3);

    // Every node's DNS serves the replicated weights: all weight on us-east's front.
    for node in &cluster.nodes {
        wait_for_record(node.dns, HOSTNAME, &[ip("127.0.0.11")])
            .await
            .with_context(|| format!("node {}", node.id))?;
    }

    // Agents reach the gateway on every node's QUIC endpoint: the leader takes the stream,
    // the others point at the leader.
    let leader = cluster.leader_seen_by(follower, &[1, 2, 3]).await?;
    for node in &cluster.nodes {
        let reply = agent_hello(&cluster, node).await?;
        if node.id == leader {
            assert!(
                matches!(reply, HelloReply::Leader { node_id, .. } if node_id == leader),
                "node {}: {reply:?}",
                node.id
            );
        } else {
            let leader_quic = cluster.node(leader).quic.to_string();
            assert_eq!(
                reply,
                HelloReply::NotLeader {
                    leader_id: Some(leader),
                    leader_addr: Some(leader_quic),
                },
                "node {}",
                node.id
            );
        }
    }

    // SIGKILL the leader; a survivor's API still answers and a new leader takes writes.
    cluster
        .nodes
        .iter_mut()
        .find(|n| n.id == leader)
        .expect("the leader is one of the nodes")
        .kill();
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let survivor = survivors[0];
    let new_leader = cluster.leader_seen_by(survivor, &survivors).await?;
    assert_ne!(new_leader, leader);
    let status = cluster.client(cluster.node(survivor))?.status().await?;
    assert_eq!(status.overview.services["shop"].primary_region, "us-east");
    let grown = format!("{PLAN}\n[[region]]\nname = \"ap-south\"\nfront = \"127.0.0.13:8080\"\n");
    cluster
        .client(cluster.node(survivors[1]))?
        .apply_plan_toml(&grown)
        .await
        .context("a write after the leader died")?;
    let after = cluster.client(cluster.node(survivor))?.status().await?;
    assert_eq!(wait_for_replicas(&cluster.nodes, &after.overview).await?, 2);
    for id in &survivors {
        let status = cluster.client(cluster.node(*id))?.status().await?;
        assert_eq!(status.overview.regions.len(), 3, "node {id}");
        wait_for_record(cluster.node(*id).dns, HOSTNAME, &[ip("127.0.0.11")]).await?;
    }

    // SIGTERM: a clean stop, exit status 0.
    for id in &survivors {
        let node = cluster
            .nodes
            .iter_mut()
            .find(|n| n.id == *id)
            .expect("survivor");
        // The child stays in `node` until it has exited, so `Node::drop` reaps it on any error.
        let pid = node.child.as_ref().expect("survivor runs").id();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = node.child.as_mut().expect("survivor runs").try_wait()? {
                node.child = None;
                break status;
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {id} did not stop within 20 s of SIGTERM; log:\n{}",
                    node.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            status.success(),
            "node {id} exited {status}; log:\n{}",
            node.log()
        );
    }
    Ok(())
}
