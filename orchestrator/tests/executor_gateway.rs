//! The agent gateway as a node runs it (`executor_support::Cluster`: orchestrators started by
//! `node::start`, whose accept loop hands agent streams on the QUIC endpoint to the gateway),
//! with a hand-driven agent over QUIC with mutual TLS (certificates from `certs::init`): a
//! follower answers `NotLeader` with the leader's address; the leader answers
//! `Leader{node_id, term}`, keeps the agent's latest report, delivers commands and returns their
//! outcomes; an agent whose hello names another region than its certificate is refused; a
//! command nobody answers times out and one for an absent region fails at once; the stream
//! ends when the node stops leading (its followers die, so it loses its quorum).

use std::time::Duration;

use umbra_orchestrator::gateway::GatewayError;
use umbra_orchestrator::node::NodeEnvironment;
use umbra_proto::agent::{
    AgentAction, AgentCommand, AgentReport, CommandOutcome, CommandResult, FromAgent, HelloReply,
    ToAgent,
};
use umbra_proto::{Connection, Credentials, FramedStream, Identity, Role};
use umbra_testkit::wait_for;

mod executor_support;

use executor_support::{CLUSTER_DEADLINE, Cluster};

/// Longest a reply or a stream's end may take to arrive.
const WAIT: Duration = Duration::from_secs(10);

/// An agent of `cert_region` that connects to node `id` and says hello as `hello_region`.
async fn agent(
    cluster: &Cluster,
    id: u64,
    cert_region: &str,
    hello_region: &str,
) -> anyhow::Result<(Connection, FramedStream, Option<HelloReply>)> {
    let credentials = Credentials::load(
        cluster.certs_dir(),
        &Identity::new(Role::Agent, cert_region)?,
    )?;
    let greeting =
        umbra_testkit::agent::agent_hello(cluster.quic(id), &credentials, hello_region, WAIT)
            .await?;
    Ok((greeting.connection, greeting.stream, greeting.reply))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_points_agents_at_the_leader() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, NodeEnvironment::default()).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.follower_of(leader);
    let (_conn, _stream, reply) = agent(&cluster, follower, "eu-west", "eu-west").await?;
    assert_eq!(
        reply,
        Some(HelloReply::NotLeader {
            leader_id: Some(leader),
            leader_addr: Some(cluster.quic(leader).to_string()),
        })
    );
    assert!(cluster.gateway(follower).connected_regions().is_empty());
    assert!(cluster.gateway(leader).connected_regions().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_naming_another_region_than_the_certificate_is_refused() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, NodeEnvironment::default()).await?;
    let leader = cluster.leader().await?;
    let (_conn, _stream, reply) = agent(&cluster, leader, "eu-west", "us-east").await?;
    assert_eq!(reply, None, "no reply: the stream was aborted");
    let gateway = cluster.gateway(leader);
    assert!(gateway.connected_regions().is_empty());
    assert!(gateway.report("us-east").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_delivers_commands_keeps_reports_and_lets_go_when_it_stops_leading()
-> anyhow::Result<()> {
    let cluster = Cluster::start(3, NodeEnvironment::default()).await?;
    let leader = cluster.leader().await?;
    let gateway = cluster.gateway(leader);
    let (_conn, stream, reply) = agent(&cluster, leader, "eu-west", "eu-west").await?;
    let Some(HelloReply::Leader { node_id, term }) = reply else {
        anyhow::bail!("the leader answers Leader, not {reply:?}");
    };
    assert_eq!(node_id, leader);
    assert!(term > 0, "a term was elected");
    let (mut tx, mut rx) = stream.split();

    // A report arrives and is kept.
    let report = AgentReport {
        region: "eu-west".into(),
        newest_term: term,
        instances: Vec::new(),
        warmups: Vec::new(),
        replication: Vec::new(),
        at_unix_ms: 42,
        front: None,
    };
    tx.send(&FromAgent::Report(report.clone())).await?;
    wait_for("the report to be kept", WAIT, || {
        let kept = gateway.report("eu-west").map(|r| r.report) == Some(report.clone());
        async move { kept.then_some(()) }
    })
    .await?;

    // A command goes out with its op id, term and region; its outcome comes back.
    let command = AgentCommand {
        op_id: "shop-1/provisioning/0/ensure_shadow/provision".into(),
        term,
        region: "eu-west".into(),
        action: AgentAction::Provision {
            instances: vec!["shop-1-1".into()],
        },
    };
    let sent = {
        let (gateway, command) = (gateway.clone(), command.clone());
        tokio::spawn(async move { gateway.send(command, WAIT).await })
    };
    let Some(ToAgent::Command(got)) = tokio::time::timeout(WAIT, rx.recv::<ToAgent>()).await??
    else {
        anyhow::bail!("the agent stream ended before the command");
    };
    assert_eq!(got, command);
    let outcome = CommandOutcome::Done(CommandResult::Instances(Vec::new()));
    tx.send(&FromAgent::Outcome {
        op_id: got.op_id.clone(),
        outcome: outcome.clone(),
    })
    .await?;
    assert_eq!(sent.await??, outcome);

    // Nobody answers: the caller learns the outcome is unknown after its timeout.
    let silent = AgentCommand {
        op_id: "silent".into(),
        ..command.clone()
    };
    assert_eq!(
        gateway.send(silent, Duration::from_millis(200)).await,
        Err(GatewayError::Timeout {
            region: "eu-west".into(),
            timeout_ms: 200
        })
    );
    // A region with no agent here fails at once.
    let elsewhere = AgentCommand {
        region: "ap-south".into(),
        ..command.clone()
    };
    assert_eq!(
        gateway.send(elsewhere, WAIT).await,
        Err(GatewayError::NotConnected("ap-south".into()))
    );

    // Both followers die: the leader loses its quorum and steps down, and the gateway ends
    // the stream of the term it no longer leads.
    for id in cluster.live().into_iter().filter(|id| *id != leader) {
        cluster.kill(id);
    }
    let ended = tokio::time::timeout(CLUSTER_DEADLINE, async {
        loop {
            match rx.recv::<ToAgent>().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the agent stream ends when the node stops leading"
    );
    wait_for("the session to be forgotten", WAIT, || {
        let forgotten = gateway.connected_regions().is_empty();
        async move { forgotten.then_some(()) }
    })
    .await?;
    Ok(())
}
