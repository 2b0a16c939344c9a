//! Issue 4's first acceptance line on real processes: three `umbra-orchestrator` processes in
//! orchestrator mode (agent gateway on their QUIC endpoints) and one `umbra-agent run` process
//! (process provider, its own state directory, agent certificate of its region).
//!
//! 1. The agent reaches the Raft leader: the leader's own log says the agent connected in its
//!    term, and the agent's `/metrics` shows that term as its newest.
//! 2. The leader is SIGKILLed: the survivors elect a leader of a higher term, the agent follows
//!    it (same two observations, new term), and its log shows it left the dead leader because
//!    its port closed. The test prints how long that took.
//! 3. Fencing. The agent's orchestrator list also names a stand-in endpoint holding a real
//!    orchestrator certificate from the cluster's CA (a spare orchestrator identity beyond the
//!    three nodes). Once the agent follows the second leader, the stand-in is armed to announce
//!    itself leader of the next term and the second leader is stopped (SIGTERM closes its QUIC
//!    links at once, and the lone survivor cannot win an election), so the agent's search ends
//!    at the stand-in. Its hello carries the second leader's term; commands stamped with an
//!    older term (the first and the second leader's) are refused as `StaleTerm`, one for
//!    another region as `WrongRegion`, and the agent's next report shows nothing changed (no
//!    instance). A command with the current term then runs, so the refusals were the fence and
//!    not a dead link.
//!
//! Run `cargo build --workspace --bins` first (`umbra-orchestrator`, `umbra-agent`,
//! `umbra-sample`). All traffic stays on 127.0.0.1. Every process is killed when the test
//! ends, also on failure (the agent's instances by their provider's marker).

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use umbra_agent::provider::process::ENV_PROVIDER_STATE;
use umbra_proto::agent::{
    AgentAction, AgentCommand, AgentHello, AgentReport, CommandOutcome, CommandResult, FromAgent,
    HelloReply, Refusal, ToAgent,
};
use umbra_proto::{Endpoint, FramedStream, Identity, Role, TransportConfig};
use umbra_testkit::Reaper;
use umbra_tests::{Cluster, MAX_NODES, NodeProcess, Options, Process, binary, free_port, wait_for};

/// The agent's region (its certificate's id).
const REGION: &str = "us-east";
const OTHER_REGION: &str = "eu-west";
/// The stand-in's orchestrator identity: a spare certificate from the cluster's CA.
const STAND_IN_ID: u64 = 4;
const _: () = assert!(
    STAND_IN_ID <= MAX_NODES,
    "the cluster issues the stand-in's certificate"
);
/// Bound on each wait. An agent notices a SIGKILLed leader by its closed port (or else at its
/// connection's 3 s idle timeout), each attempt at an orchestrator costs up to 1–5 s, and an
/// election on a loaded 2-core machine adds seconds. 90 s leaves room for all of that several
/// times over.
const DEADLINE: Duration = Duration::from_secs(90);
/// Agent heartbeat: frequent, so a report arrives soon after each command.
const HEARTBEAT_MS: u64 = 200;
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
const SIGTERM_DEADLINE: Duration = Duration::from_secs(20);

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
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

/// The agent's `umbra_agent_newest_term` gauge (labelled with the agent's region).
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
        .find_map(|line| {
            line.strip_prefix(&format!("umbra_agent_newest_term{{region=\"{REGION}\"}} "))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Whether `node`'s gateway logged a session with this test's agent in `term`.
fn gateway_served_agent(node: &NodeProcess, term: u64) -> bool {
    let (region, term) = (format!("region={REGION}"), format!("term={term}"));
    let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
    log.lines().any(|line| {
        // Whole fields, so term=1 does not match term=12.
        let has = |field: &str| line.split_whitespace().any(|word| word == field);
        line.contains("agent connected to the leader") && has(&region) && has(&term)
    })
}

/// Waits until a leader among `among` exists, its gateway logged the agent's session in its
/// term, and the agent's newest term is that term; returns (leader, term). Fails at once if
/// the agent exits.
async fn wait_agent_follows(
    cluster: &Cluster,
    agent: &mut Process,
    http: &reqwest::Client,
    metrics: SocketAddr,
    among: &[u64],
) -> anyhow::Result<(u64, u64)> {
    let last = RefCell::new(String::from("no leader yet"));
    agent
        .wait_for(
            &format!("the agent to follow a leader among {among:?}"),
            DEADLINE,
            || async {
                let (leader, term) = cluster.leader_among(&cluster.live()).await?;
                let agent_term = agent_newest_term(http, metrics).await;
                let logged = gateway_served_agent(&cluster.nodes[&leader], term);
                if among.contains(&leader) && agent_term == Some(term) && logged {
                    return Some((leader, term));
                }
                *last.borrow_mut() = format!(
                    "leader {leader} in term {term}; agent's newest term {agent_term:?}; \
                     gateway logged the agent: {logged}"
                );
                None
            },
        )
        .await
        .with_context(|| format!("last: {}", last.borrow()))
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
    let agent_binary = binary("umbra-agent")?;
    let sample_binary = binary("umbra-sample")?;
    let mut cluster = Cluster::launch(Options {
        regions: vec![REGION.into()],
        ..Options::orchestrator(3)
    })
    .await?;
    let root = cluster.dir.path().to_owned();

    // The stand-in, unarmed: NotLeader without a hint, so the agent moves on to the next address.
    let stand_in_endpoint = Endpoint::server(
        localhost(0),
        &cluster.credentials(&Identity::orchestrator(STAND_IN_ID))?,
        TransportConfig::default(),
    )?;
    let stand_in_addr = stand_in_endpoint.local_addr()?;
    let armed = Arc::new(Mutex::new(None));
    let (followed_tx, mut followed_rx) = mpsc::channel(4);
    let stand_in_task = stand_in(stand_in_endpoint.clone(), armed.clone(), followed_tx);

    // The agent process; its instances run in sessions of their own, so a reaper kills them.
    let state_dir = root.join("agent-state");
    let _instances = Reaper::new(ENV_PROVIDER_STATE, &state_dir);
    let metrics = localhost(free_port()?);
    let orchestrators: Vec<String> = cluster
        .nodes
        .values()
        .map(|n| n.listen())
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
            certs = cluster.certs_dir.display().to_string(),
            sample = sample_binary.display().to_string(),
        ),
    )?;
    let mut agent_command = Command::new(&agent_binary);
    agent_command
        .args(["run", "--config"])
        .arg(&agent_config)
        .env("RUST_LOG", "info");
    let mut agent = Process::spawn("umbra-agent", agent_command, &root.join("agent.log"))?;
    let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build()?;

    // 1. The agent reaches the leader.
    let started = Instant::now();
    let (first_leader, first_term) =
        wait_agent_follows(&cluster, &mut agent, &http, metrics, &[1, 2, 3]).await?;
    println!(
        "agent following leader {first_leader} in term {first_term} after {:?}",
        started.elapsed()
    );

    // 2. SIGKILL the leader: a leader of a higher term among the survivors, and the agent
    // follows it.
    let killed_at = Instant::now();
    cluster.kill(first_leader)?;
    let survivors = cluster.live();
    let (elected, elected_term) = wait_for("a leader among the survivors", DEADLINE, || {
        cluster.leader_among(&survivors)
    })
    .await?;
    let election_time = killed_at.elapsed();
    let (second_leader, second_term) =
        wait_agent_follows(&cluster, &mut agent, &http, metrics, &survivors).await?;
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
    // The agent left the killed leader because its port closed, not at its idle timeout.
    let agent_log = std::fs::read_to_string(root.join("agent.log"))?;
    assert!(
        agent_log.contains("the orchestrator's port is closed"),
        "the agent did not notice the killed leader's closed port; its log:\n{agent_log}"
    );

    // 3. The stand-in announces the next term; the second leader stops, so the agent's search
    // reaches the stand-in (the lone survivor has no quorum).
    let stand_in_term = second_term + 1;
    *armed.lock().unwrap_or_else(|p| p.into_inner()) = Some(stand_in_term);
    let stopped_at = Instant::now();
    cluster.terminate(second_leader, SIGTERM_DEADLINE).await?;
    let mut followed = tokio::time::timeout(DEADLINE, followed_rx.recv())
        .await
        .with_context(|| {
            format!(
                "the agent never reached the stand-in within {DEADLINE:?}; agent log:\n{}",
                agent.log_tail()
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

    assert!(
        !agent.has_exited()?,
        "the agent exited; its log ends:\n{}",
        agent.log_tail()
    );
    drop(followed);
    stand_in_endpoint.close();
    stand_in_task.abort();
    Ok(())
}
