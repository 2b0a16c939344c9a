//! The agent's session over real QUIC with mutual TLS (proto endpoints, certificates from
//! `certs::init`), against three stand-in orchestrators that speak the agent protocol: the
//! agent finds the leader through a NotLeader hint, executes commands (a repeated operation id
//! returns the first outcome; another region is refused), follows a leader change, refuses a
//! command with a stale term, and will not follow a deposed leader that still claims its old
//! term. The stand-ins hold the leadership in a variable the test changes; the real gateway is
//! the orchestrator's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use tokio::sync::mpsc;
use umbra_agent::agent::Agent;
use umbra_agent::agent::session::{SessionConfig, run_session, transport_config};
use umbra_agent::provider::{AnyProvider, InstanceState};
use umbra_proto::agent::{
    AgentAction, AgentCommand, AgentHello, AgentReport, CommandOutcome, CommandResult, FromAgent,
    HelloReply, Refusal, ToAgent,
};
use umbra_proto::certs::Layout;
use umbra_proto::{
    Connection, Credentials, Endpoint, FramedStream, Identity, Role, TransportConfig,
};
use umbra_testkit::Process;

type Leader = Arc<Mutex<(u64, u64)>>;

struct Followed {
    node: u64,
    stream: FramedStream,
    conn: Connection,
}

/// Three orchestrator endpoints; the one named in `leader` answers Leader{term} and hands the
/// stream to the test, the others answer NotLeader with the leader's address.
async fn stand_in_cluster(
    certs: &std::path::Path,
    leader: Leader,
) -> anyhow::Result<(Vec<SocketAddr>, mpsc::Receiver<Followed>)> {
    let mut endpoints = Vec::new();
    for node in 1..=3u64 {
        let creds = Credentials::load(certs, &Identity::orchestrator(node))?;
        endpoints.push(Endpoint::server(
            "127.0.0.1:0".parse()?,
            &creds,
            TransportConfig::default(),
        )?);
    }
    let addrs: Vec<SocketAddr> = endpoints
        .iter()
        .map(|e| e.local_addr())
        .collect::<Result<_, _>>()?;
    let (tx, rx) = mpsc::channel(8);
    for (i, ep) in endpoints.into_iter().enumerate() {
        let node = i as u64 + 1;
        let (leader, tx, addrs) = (leader.clone(), tx.clone(), addrs.clone());
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (leader, tx, addrs) = (leader.clone(), tx.clone(), addrs.clone());
                tokio::spawn(async move {
                    let Ok(conn) = incoming.establish().await else {
                        return;
                    };
                    assert_eq!(conn.peer().role(), Role::Agent);
                    let Ok(mut stream) = conn.accept_stream().await else {
                        return;
                    };
                    let Ok(Some(hello)) = stream.recv::<AgentHello>().await else {
                        return;
                    };
                    assert_eq!(hello.region, "eu-west");
                    let (leader_node, term) = *leader.lock().unwrap();
                    if leader_node == node {
                        let reply = HelloReply::Leader {
                            node_id: node,
                            term,
                        };
                        if stream.send(&reply).await.is_ok() {
                            let _ = tx.send(Followed { node, stream, conn }).await;
                        }
                    } else {
                        let reply = HelloReply::NotLeader {
                            leader_id: Some(leader_node),
                            leader_addr: Some(addrs[leader_node as usize - 1].to_string()),
                        };
                        let _ = stream.send(&reply).await;
                        // Keep the connection until the agent closes it.
                        let _ = stream.recv::<AgentHello>().await;
                    }
                });
            }
        });
    }
    Ok((addrs, rx))
}

/// Certificates for three orchestrators and the agent of eu-west in `dir/certs`, and the
/// stand-in cluster with `leader` (node, term) leading.
async fn certs_and_cluster(
    dir: &Path,
    leader: (u64, u64),
) -> anyhow::Result<(PathBuf, Leader, Vec<SocketAddr>, mpsc::Receiver<Followed>)> {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    umbra_proto::certs::init(
        &Layout {
            orchestrators: 3,
            regions: vec!["eu-west".into()],
            operators: vec![],
        },
        &certs,
    )?;
    let leader: Leader = Arc::new(Mutex::new(leader));
    let (addrs, followed) = stand_in_cluster(&certs, leader.clone()).await?;
    Ok((certs, leader, addrs, followed))
}

/// The next heartbeat report on the followed stream (skipping other messages).
async fn next_report(f: &mut Followed) -> anyhow::Result<AgentReport> {
    loop {
        if let Some(FromAgent::Report(r)) = f.stream.recv::<FromAgent>().await? {
            return Ok(r);
        }
    }
}

async fn next_followed(rx: &mut mpsc::Receiver<Followed>) -> anyhow::Result<Followed> {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("cluster stopped"))
}

/// Sends a command and returns its outcome (skipping heartbeats).
async fn command(
    f: &mut Followed,
    op_id: &str,
    term: u64,
    region: &str,
    action: AgentAction,
) -> anyhow::Result<CommandOutcome> {
    let cmd = AgentCommand {
        op_id: op_id.into(),
        term,
        region: region.into(),
        action,
    };
    f.stream.send(&ToAgent::Command(cmd)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline, f.stream.recv::<FromAgent>())
            .await??
            .ok_or_else(|| anyhow::anyhow!("agent closed the stream"))?;
        if let FromAgent::Outcome {
            op_id: got,
            outcome,
        } = msg
            && got == op_id
        {
            return Ok(outcome);
        }
    }
}

fn instance_state(outcome: &CommandOutcome) -> Option<InstanceState> {
    match outcome {
        CommandOutcome::Done(CommandResult::Instances(v)) => v.first().map(|r| r.state),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_the_leader_and_fences_stale_terms() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (certs, leader, addrs, mut followed) = certs_and_cluster(dir.path(), (2, 3)).await?;

    let state = dir.path().join("agent");
    let _reaper = common::reaper(&state);
    let provider = common::sample_provider(&state, 5).await?;
    let agent = Arc::new(Agent::with_provider(
        "eu-west",
        &state,
        AnyProvider::Process(provider),
    )?);
    let creds = Credentials::load(&certs, &Identity::new(Role::Agent, "eu-west")?)?;
    let endpoint = Endpoint::client("127.0.0.1:0".parse()?, &creds, transport_config())?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let session = tokio::spawn(run_session(
        agent.clone(),
        endpoint,
        SessionConfig {
            // Node 1 first: it is not the leader and must redirect.
            orchestrators: addrs.clone(),
            heartbeat: Duration::from_millis(200),
        },
        shutdown.clone(),
    ));

    // Found through node 1's hint.
    let mut f = next_followed(&mut followed).await?;
    assert_eq!(f.node, 2);
    let provision = AgentAction::Provision {
        instances: vec!["s-1".into()],
    };
    let first = command(&mut f, "p-1", 3, "eu-west", provision.clone()).await?;
    assert_eq!(instance_state(&first), Some(InstanceState::Dormant));
    // The same operation again: the first outcome, nothing done twice.
    let again = command(&mut f, "p-1", 3, "eu-west", provision).await?;
    assert_eq!(again, first);
    assert_eq!(agent.executor().provider().list().await.len(), 1);
    // Another region's command: refused, nothing changes.
    let other = command(
        &mut f,
        "x-1",
        3,
        "us-east",
        AgentAction::Start {
            instance: "s-1".into(),
        },
    )
    .await?;
    assert!(
        matches!(other, CommandOutcome::Refused(Refusal::WrongRegion { .. })),
        "{other:?}"
    );
    assert_eq!(
        agent.executor().provider().list().await[0].state,
        InstanceState::Dormant
    );

    // Heartbeats carry the instances and the term.
    let report = next_report(&mut f).await?;
    assert_eq!((report.region.as_str(), report.newest_term), ("eu-west", 3));
    assert_eq!(report.instances.len(), 1);

    // Leader change: node 3 wins term 4; node 2's link drops.
    *leader.lock().unwrap() = (3, 4);
    f.conn.close(0, "leadership lost");
    let mut f = next_followed(&mut followed).await?;
    assert_eq!(f.node, 3);
    let active = command(
        &mut f,
        "a-1",
        4,
        "eu-west",
        AgentAction::Activate {
            instance: "s-1".into(),
        },
    )
    .await?;
    assert_eq!(instance_state(&active), Some(InstanceState::Active));
    // A command stamped with the old term (e.g. relayed from the deposed leader): refused.
    let stale = command(
        &mut f,
        "st-1",
        3,
        "eu-west",
        AgentAction::Stop {
            instance: "s-1".into(),
        },
    )
    .await?;
    assert_eq!(
        stale,
        CommandOutcome::Refused(Refusal::StaleTerm {
            command_term: 3,
            newest_term: 4
        })
    );
    assert_eq!(
        agent.executor().provider().list().await[0].state,
        InstanceState::Active
    );

    // The agent's /metrics says the same, every series labelled with its region.
    let (metrics_addr, metrics_task) =
        umbra_agent::agent::metrics::serve(agent.clone(), "127.0.0.1:0".parse()?).await?;
    let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await?
        .text()
        .await?;
    for line in [
        "umbra_agent_newest_term{region=\"eu-west\"} 4",
        "umbra_agent_instances{service=\"s\",state=\"active\",region=\"eu-west\"} 1",
        "umbra_agent_instances{service=\"s\",state=\"dormant\",region=\"eu-west\"} 0",
        "umbra_agent_commands_total{result=\"replayed\",region=\"eu-west\"} 1",
        "umbra_agent_commands_total{result=\"refused\",region=\"eu-west\"} 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(
        text.contains(
            "umbra_agent_instance_transition_seconds_count{from=\"dormant\",to=\"active\",region=\"eu-west\"} 1"
        ),
        "{text}"
    );
    assert!(
        !text.contains("instance=\""),
        "no series per instance:\n{text}"
    );
    // It follows node 3 now, and got there through a hint.
    assert!(
        text.lines()
            .any(|l| l == "umbra_agent_leader_connected{region=\"eu-west\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "umbra_agent_leader_attempts_total{result=\"redirected\",region=\"eu-west\"}"
        ),
        "{text}"
    );
    metrics_task.abort();

    // The deposed node 2 still claims term 3: the agent does not follow it...
    *leader.lock().unwrap() = (2, 3);
    f.conn.close(0, "partitioned");
    let mut deposed = next_followed(&mut followed).await?;
    assert_eq!(deposed.node, 2);
    let refused =
        tokio::time::timeout(Duration::from_secs(10), deposed.stream.recv::<FromAgent>()).await?;
    assert!(
        !matches!(refused, Ok(Some(_))),
        "the agent must not serve a leader with a stale term: {refused:?}"
    );
    // ...and follows node 3 again once it announces term 5.
    *leader.lock().unwrap() = (3, 5);
    let mut f = next_followed(&mut followed).await?;
    while f.node != 3 {
        f = next_followed(&mut followed).await?;
    }
    let stopped = command(
        &mut f,
        "s-1-stop",
        5,
        "eu-west",
        AgentAction::Stop {
            instance: "s-1".into(),
        },
    )
    .await?;
    assert_eq!(instance_state(&stopped), Some(InstanceState::Stopped));
    assert_eq!(agent.newest_term(), 5);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), session).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_keeps_its_ledger_and_instances_across_a_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (certs, _leader, addrs, mut followed) = certs_and_cluster(dir.path(), (1, 3)).await?;
    let state = dir.path().join("agent");
    let _reaper = common::reaper(&state);
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "region = \"eu-west\"\nstate_dir = {state:?}\norchestrators = {addrs:?}\n\
             certs_dir = {certs:?}\nheartbeat_ms = 200\n[provider]\nkind = \"process\"\n\
             backing_latency_ms = 5\nsample_binary = {sample:?}\n",
            state = state.display().to_string(),
            addrs = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            certs = certs.display().to_string(),
            sample = common::sample_binary().display().to_string(),
        ),
    )?;
    // Killed when dropped, so a failed assertion leaves no agent behind.
    let spawn = || -> anyhow::Result<Process> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_umbra-agent"));
        command
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn");
        Process::spawn("umbra-agent", command, &dir.path().join("agent.log"))
    };
    let agent = spawn()?;
    let mut f = next_followed(&mut followed).await?;
    let provision = AgentAction::Provision {
        instances: vec!["k-1".into()],
    };
    let first = command(&mut f, "p-1", 3, "eu-west", provision.clone()).await?;
    let activate = AgentAction::Activate {
        instance: "k-1".into(),
    };
    let active = command(&mut f, "a-1", 3, "eu-west", activate).await?;
    assert_eq!(instance_state(&active), Some(InstanceState::Active));

    drop(agent); // SIGKILL
    let _agent = spawn()?;
    let mut f = next_followed(&mut followed).await?;
    // The instance was adopted, still active.
    let report = next_report(&mut f).await?;
    assert_eq!(report.instances.len(), 1);
    assert_eq!(report.instances[0].state, InstanceState::Active);
    assert_eq!(
        report.newest_term, 3,
        "the newest term survived the restart"
    );
    // The finished operation is remembered: the first outcome, not a second provision.
    assert_eq!(
        command(&mut f, "p-1", 3, "eu-west", provision).await?,
        first
    );
    // Fencing survived too.
    let stale = command(
        &mut f,
        "s-0",
        2,
        "eu-west",
        AgentAction::Stop {
            instance: "k-1".into(),
        },
    )
    .await?;
    assert!(
        matches!(stale, CommandOutcome::Refused(Refusal::StaleTerm { .. })),
        "{stale:?}"
    );
    let removed = command(
        &mut f,
        "r-1",
        3,
        "eu-west",
        AgentAction::Remove {
            instance: "k-1".into(),
        },
    )
    .await?;
    assert!(matches!(removed, CommandOutcome::Done(_)), "{removed:?}");
    Ok(())
}
