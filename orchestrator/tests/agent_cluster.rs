//! Issue 4's first acceptance line on real processes: three `umbra-orchestrator` processes in
//! orchestrator mode (agent gateway on their QUIC endpoints) and one `umbra-agent run` process
//! (process provider, its own state directory, agent certificate of its region).
//!
//! 1. The agent reaches the Raft leader: the leader's own log says the agent connected in its
//!    term, and the agent's `/metrics` shows that term as its newest.
//! 2. The leader is SIGKILLed: the survivors elect a leader of a higher term, the agent follows
//!    it (same two observations, new term). The test prints how long that took.
//! 3. Fencing. The agent's orchestrator list also names a stand-in endpoint holding a real
//!    orchestrator certificate from the cluster's CA (a fourth orchestrator identity). Once the
//!    agent follows the second leader, the stand-in is armed to announce itself leader of the
//!    next term and the second leader is stopped (SIGTERM closes its QUIC links at once, and
//!    the lone survivor cannot win an election), so the agent's search ends at the stand-in.
//!    Its hello carries the second leader's term; commands stamped with an older term (the
//!    first and the second leader's) are refused as `StaleTerm`, one for another region as
//!    `WrongRegion`, and the agent's next report shows nothing changed (no instance). A command
//!    with the current term then runs, so the refusals were the fence and not a dead link.
//!
//! Needs `umbra-agent` and `umbra-sample` built next to the test binary
//! (`cargo build -p umbra-agent --bins`). All traffic stays on 127.0.0.1. Every process is
//! killed when the test ends, also on failure.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use umbra_orchestrator::node::{
    AdminStatus, ExecutorSection, GatewaySection, NodeConfig, PeerConfig, StateMachineKind,
};
use umbra_proto::agent::{
    AgentAction, AgentCommand, AgentHello, AgentReport, CommandOutcome, CommandResult, FromAgent,
    HelloReply, Refusal, ToAgent,
};
use umbra_proto::certs::{self, Layout};
use umbra_proto::ports::free_loopback_port;
use umbra_proto::{Credentials, Endpoint, FramedStream, Identity, Role, TransportConfig};

/// The agent's region (its certificate's id).
const REGION: &str = "us-east";
const OTHER_REGION: &str = "eu-west";
/// The stand-in's orchestrator identity: a fourth certificate from the cluster's CA.
const STAND_IN_ID: u64 = 4;
/// Bound on each wait. An agent notices a SIGKILLed leader only through its connection's idle
/// timeout (3 s for agent sessions: a dead process sends no close), each attempt at an
/// orchestrator costs up to 1–5 s, and an election on a loaded 2-core machine adds seconds.
/// 90 s leaves room for all of that several times over.
const DEADLINE: Duration = Duration::from_secs(90);
/// Agent heartbeat: frequent, so a report arrives soon after each command.
const HEARTBEAT_MS: u64 = 200;
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A child process with its log file, SIGKILLed on drop if still running.
struct Proc {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut command: Command, log_path: PathBuf) -> anyhow::Result<Self> {
        let log = std::fs::File::create(&log_path)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.into(),
            child: Some(child),
            log_path,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Fails with the log when the process exited on its own.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            bail!("{} exited ({status}); its log:\n{}", self.name, self.log());
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for the exit.
    async fn terminate(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                bail!("{} did not stop within 20 s of SIGTERM", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = None;
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Node {
    id: u64,
    quic: SocketAddr,
    admin: SocketAddr,
    proc: Proc,
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A binary Cargo built next to this test binary (target/debug/deps/agent_cluster-HASH →
/// target/debug/NAME).
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary has no target directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build -p umbra-agent --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// Starts three orchestrator-mode nodes (gateway on, no API or DNS: this test talks to the
/// agent gateway only).
fn start_nodes(root: &Path, certs_dir: &Path) -> anyhow::Result<Vec<Node>> {
    let mut peers = Vec::new();
    let mut admins = Vec::new();
    for id in 1..=3 {
        peers.push(PeerConfig {
            id,
            address: localhost(free_loopback_port()?),
        });
        admins.push(localhost(free_loopback_port()?));
    }
    let mut nodes = Vec::new();
    for (peer, admin) in peers.iter().zip(admins) {
        let node_dir = root.join(format!("node-{}", peer.id));
        std::fs::create_dir_all(&node_dir)?;
        let config = NodeConfig {
            id: peer.id,
            listen: peer.address,
            data_dir: node_dir.join("data"),
            certs_dir: certs_dir.to_owned(),
            admin_listen: Some(admin),
            join: false,
            peers: peers.clone(),
            fault_injection: false,
            state_machine: StateMachineKind::Orchestrator,
            raft: umbra_consensus::Config::default(),
            api: None,
            gateway: GatewaySection::default(),
            dns: None,
            executor: ExecutorSection::default(),
        };
        config.validate()?;
        let config_path = node_dir.join("node.toml");
        std::fs::write(&config_path, config.to_toml())?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_umbra-orchestrator"));
        command
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info,raft=warn");
        nodes.push(Node {
            id: peer.id,
            quic: peer.address,
            admin,
            proc: Proc::spawn(
                &format!("orchestrator {}", peer.id),
                command,
                node_dir.join("node.log"),
            )?,
        });
    }
    Ok(nodes)
}

/// An agent stream the stand-in took as "leader", with the agent's hello.
struct Followed {
    hello: AgentHello,
    stream: FramedStream,
    _connection: umbra_proto::Connection,
}

/// The stand-in orchestrator: answers `NotLeader` (no hint) until `armed` holds a term, then
/// `Leader{STAND_IN_ID, term}` and hands the stream to the test.
fn stand_in(
    endpoint: Endpoint,
    armed: Arc<Mutex<Option<u64>>>,
    followed: mpsc::Sender<Followed>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let (armed, followed) = (armed.clone(), followed.clone());
            tokio::spawn(async move {
                let Ok(connection) = incoming.establish().await else {
                    return;
                };
                if connection.peer().role() != Role::Agent {
                    return;
                }
                let Ok(mut stream) = connection.accept_stream().await else {
                    return;
                };
                let hello =
                    match tokio::time::timeout(HTTP_TIMEOUT, stream.recv::<AgentHello>()).await {
                        Ok(Ok(Some(hello))) => hello,
                        _ => return,
                    };
                let term = *armed.lock().unwrap_or_else(|p| p.into_inner());
                match term {
                    None => {
                        let reply = HelloReply::NotLeader {
                            leader_id: None,
                            leader_addr: None,
                        };
                        let _ = stream.send(&reply).await;
                        stream.finish();
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            stream.recv::<AgentHello>(),
                        )
                        .await;
                    }
                    Some(term) => {
                        let reply = HelloReply::Leader {
                            node_id: STAND_IN_ID,
                            term,
                        };
                        if stream.send(&reply).await.is_ok() {
                            let _ = followed
                                .send(Followed {
                                    hello,
                                    stream,
                                    _connection: connection,
                                })
                                .await;
                        }
                    }
                }
            });
        }
    })
}

/// The leader (id, term) among the running nodes, from their admin `/status`: the node that
/// says it leads, in the highest term if two do (a deposed one has not heard yet).
async fn current_leader(
    http: &reqwest::Client,
    nodes: &mut [Node],
) -> anyhow::Result<Option<(u64, u64)>> {
    let mut best: Option<(u64, u64)> = None;
    for node in nodes.iter_mut().filter(|n| n.proc.running()) {
        node.proc.check_alive()?;
        let Ok(response) = http
            .get(format!("http://{}/status", node.admin))
            .send()
            .await
        else {
            continue;
        };
        let Ok(status) = response.json::<AdminStatus>().await else {
            continue;
        };
        if status.raft.role == umbra_consensus::Role::Leader
            && best.is_none_or(|(_, term)| status.raft.term > term)
        {
            best = Some((node.id, status.raft.term));
        }
    }
    Ok(best)
}

/// Waits until a node among `among` leads; returns (leader, term).
async fn wait_for_leader(
    http: &reqwest::Client,
    nodes: &mut [Node],
    among: &[u64],
) -> anyhow::Result<(u64, u64)> {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if let Some((leader, term)) = current_leader(http, nodes).await?
            && among.contains(&leader)
        {
            return Ok((leader, term));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no leader among {among:?} within {DEADLINE:?}")
}

/// The agent's `umbra_agent_newest_term` gauge.
async fn agent_newest_term(http: &reqwest::Client, metrics: SocketAddr) -> Option<u64> {
    let text = http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("umbra_agent_newest_term "))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether `node`'s gateway logged a session with this test's agent in `term`.
fn gateway_served_agent(node: &Node, term: u64) -> bool {
    let (region, term) = (format!("region={REGION}"), format!("term={term}"));
    node.proc.log().lines().any(|line| {
        // Whole fields, so term=1 does not match term=12.
        let has = |field: &str| line.split_whitespace().any(|word| word == field);
        line.contains("agent connected to the leader") && has(&region) && has(&term)
    })
}

/// Waits until a leader among `among` exists, its gateway logged the agent's session in its
/// term, and the agent's newest term is that term; returns (leader, term).
async fn wait_agent_follows(
    http: &reqwest::Client,
    nodes: &mut [Node],
    agent: &mut Proc,
    metrics: SocketAddr,
    among: &[u64],
) -> anyhow::Result<(u64, u64)> {
    let deadline = Instant::now() + DEADLINE;
    let mut last = String::from("no leader yet");
    while Instant::now() < deadline {
        agent.check_alive()?;
        if let Some((leader, term)) = current_leader(http, nodes).await? {
            let agent_term = agent_newest_term(http, metrics).await;
            let node = nodes.iter().find(|n| n.id == leader).expect("a node's id");
            let logged = gateway_served_agent(node, term);
            if among.contains(&leader) && agent_term == Some(term) && logged {
                return Ok((leader, term));
            }
            last = format!(
                "leader {leader} in term {term}; agent's newest term {agent_term:?}; \
                 gateway logged the agent: {logged}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "the agent did not follow a leader among {among:?} within {DEADLINE:?}; last: {last}\n\
         agent log:\n{}",
        agent.log()
    )
}

/// Sends a command on the stand-in's stream and returns its outcome (reports skipped).
async fn command(
    followed: &mut Followed,
    op_id: &str,
    term: u64,
    region: &str,
    action: AgentAction,
) -> anyhow::Result<CommandOutcome> {
    followed
        .stream
        .send(&ToAgent::Command(AgentCommand {
            op_id: op_id.into(),
            term,
            region: region.into(),
            action,
        }))
        .await?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let message = tokio::time::timeout_at(deadline, followed.stream.recv::<FromAgent>())
            .await
            .with_context(|| format!("no outcome for {op_id} within {DEADLINE:?}"))??
            .context("the agent closed the stream")?;
        if let FromAgent::Outcome {
            op_id: got,
            outcome,
        } = message
            && got == op_id
        {
            return Ok(outcome);
        }
    }
}

/// The agent's next heartbeat report on the stand-in's stream (sent after everything before).
async fn next_report(followed: &mut Followed) -> anyhow::Result<AgentReport> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let message = tokio::time::timeout_at(deadline, followed.stream.recv::<FromAgent>())
            .await
            .context("no report in time")??
            .context("the agent closed the stream")?;
        if let FromAgent::Report(report) = message {
            return Ok(report);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_a_real_leader_change_and_fences_a_stale_term() -> anyhow::Result<()> {
    let agent_binary = sibling_binary("umbra-agent")?;
    let sample_binary = sibling_binary("umbra-sample")?;
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let certs_dir = root.join("certs");
    certs::init(
        &Layout {
            orchestrators: STAND_IN_ID,
            regions: vec![REGION.into()],
            operators: vec![],
        },
        &certs_dir,
    )?;
    let mut nodes = start_nodes(root, &certs_dir)?;

    // The stand-in, unarmed: NotLeader without a hint, so the agent moves on to the next address.
    let stand_in_credentials = Credentials::load(&certs_dir, &Identity::orchestrator(STAND_IN_ID))?;
    let stand_in_endpoint = Endpoint::server(
        localhost(0),
        &stand_in_credentials,
        TransportConfig::default(),
    )?;
    let stand_in_addr = stand_in_endpoint.local_addr()?;
    let armed = Arc::new(Mutex::new(None));
    let (followed_tx, mut followed_rx) = mpsc::channel(4);
    let stand_in_task = stand_in(stand_in_endpoint.clone(), armed.clone(), followed_tx);

    // The agent process.
    let state_dir = root.join("agent-state");
    let metrics = localhost(free_loopback_port()?);
    let orchestrators: Vec<String> = nodes
        .iter()
        .map(|n| n.quic)
        .chain([stand_in_addr])
        .map(|a| a.to_string())
        .collect();
    let agent_config = root.join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "region = {REGION:?}\nstate_dir = {state:?}\norchestrators = {orchestrators:?}\n\
             certs_dir = {certs:?}\nheartbeat_ms = {HEARTBEAT_MS}\n\
             metrics_listen = \"{metrics}\"\n\
             [provider]\nkind = \"process\"\nbacking_latency_ms = 5\nsample_binary = {sample:?}\n",
            state = state_dir.display().to_string(),
            certs = certs_dir.display().to_string(),
            sample = sample_binary.display().to_string(),
        ),
    )?;
    let mut agent_command = Command::new(&agent_binary);
    agent_command
        .args(["run", "--config"])
        .arg(&agent_config)
        .env("RUST_LOG", "info");
    let mut agent = Proc::spawn("umbra-agent", agent_command, root.join("agent.log"))?;
    let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build()?;

    // 1. The agent reaches the leader.
    let started = Instant::now();
    let (first_leader, first_term) =
        wait_agent_follows(&http, &mut nodes, &mut agent, metrics, &[1, 2, 3]).await?;
    println!(
        "agent following leader {first_leader} in term {first_term} after {:?}",
        started.elapsed()
    );

    // 2. SIGKILL the leader: a leader of a higher term among the survivors, and the agent
    // follows it.
    let killed_at = Instant::now();
    nodes
        .iter_mut()
        .find(|n| n.id == first_leader)
        .expect("the leader is a node")
        .proc
        .kill();
    let survivors: Vec<u64> = [1, 2, 3]
        .into_iter()
        .filter(|id| *id != first_leader)
        .collect();
    let (elected, elected_term) = wait_for_leader(&http, &mut nodes, &survivors).await?;
    let election_time = killed_at.elapsed();
    let (second_leader, second_term) =
        wait_agent_follows(&http, &mut nodes, &mut agent, metrics, &survivors).await?;
    let follow_time = killed_at.elapsed();
    println!(
        "leader {first_leader} (term {first_term}) SIGKILLed → node {elected} leads in term \
         {elected_term} after {election_time:?}"
    );
    assert!(
        second_term > first_term,
        "new term {second_term} after {first_term}"
    );
    println!(
        "leader {first_leader} (term {first_term}) SIGKILLed → agent following leader \
         {second_leader} in term {second_term} after {follow_time:?}"
    );

    // 3. The stand-in announces the next term; the second leader stops, so the agent's search
    // reaches the stand-in (the lone survivor has no quorum).
    let stand_in_term = second_term + 1;
    *armed.lock().unwrap_or_else(|p| p.into_inner()) = Some(stand_in_term);
    let stopped_at = Instant::now();
    nodes
        .iter_mut()
        .find(|n| n.id == second_leader)
        .expect("the second leader is a node")
        .proc
        .terminate()
        .await?;
    let mut followed = tokio::time::timeout(DEADLINE, followed_rx.recv())
        .await
        .with_context(|| {
            format!(
                "the agent never reached the stand-in within {DEADLINE:?}; agent log:\n{}",
                agent.log()
            )
        })?
        .context("the stand-in stopped")?;
    println!(
        "second leader stopped → agent following the stand-in (term {stand_in_term}) after {:?}",
        stopped_at.elapsed()
    );
    assert_eq!(followed.hello.region, REGION);
    assert_eq!(
        followed.hello.newest_term, second_term,
        "the agent's hello carries the newest term it saw"
    );

    // Commands stamped with a deposed leader's term: refused.
    let provision = AgentAction::Provision {
        instances: vec!["fenced-1".into()],
    };
    for (op_id, old_term) in [("stale-1", first_term), ("stale-2", second_term)] {
        let outcome = command(&mut followed, op_id, old_term, REGION, provision.clone()).await?;
        assert_eq!(
            outcome,
            CommandOutcome::Refused(Refusal::StaleTerm {
                command_term: old_term,
                newest_term: stand_in_term,
            })
        );
    }
    // Another region's command: refused, whatever its term.
    let outcome = command(
        &mut followed,
        "other-region-1",
        stand_in_term,
        OTHER_REGION,
        provision.clone(),
    )
    .await?;
    assert_eq!(
        outcome,
        CommandOutcome::Refused(Refusal::WrongRegion {
            ours: REGION.into(),
            theirs: OTHER_REGION.into(),
        })
    );
    // Nothing changed on the agent: its next report (sent after the outcomes) has no instance.
    let report = next_report(&mut followed).await?;
    assert_eq!(report.region, REGION);
    assert_eq!(report.newest_term, stand_in_term);
    assert!(report.instances.is_empty(), "{:?}", report.instances);

    // The same command with the current term runs (the refusals above were the fence), and
    // is undone.
    let done = command(&mut followed, "current-1", stand_in_term, REGION, provision).await?;
    match &done {
        CommandOutcome::Done(CommandResult::Instances(instances)) => {
            assert_eq!(instances.len(), 1, "{instances:?}");
            assert_eq!(instances[0].id, "fenced-1");
        }
        other => bail!("a current-term provision should run: {other:?}"),
    }
    let removed = command(
        &mut followed,
        "current-2",
        stand_in_term,
        REGION,
        AgentAction::Remove {
            instance: "fenced-1".into(),
        },
    )
    .await?;
    assert!(matches!(removed, CommandOutcome::Done(_)), "{removed:?}");

    agent.check_alive()?;
    drop(followed);
    stand_in_endpoint.close();
    stand_in_task.abort();
    Ok(())
}
