//! The agent gateway over real QUIC with mutual TLS (certificates from `certs::init`), with the
//! Raft status driven by the test through a watch channel: a follower answers `NotLeader` with
//! the leader's address; the leader answers `Leader{node_id, term}`, keeps the agent's latest
//! report, delivers commands and returns their outcomes; an agent whose hello names another
//! region than its certificate is refused; a command nobody answers times out and one for an
//! absent region fails at once; the stream ends when the node stops leading that term.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use umbra_consensus::{NodeStatus, Role as RaftRole};
use umbra_orchestrator::gateway::{AgentGateway, GatewayConfig, GatewayError};
use umbra_proto::agent::{
    AgentAction, AgentCommand, AgentHello, AgentReport, CommandOutcome, CommandResult, FromAgent,
    HelloReply, ToAgent,
};
use umbra_proto::certs::{self, Layout};
use umbra_proto::{
    Connection, Credentials, Endpoint, FramedStream, Identity, Role, StreamKind, TransportConfig,
};

const WAIT: Duration = Duration::from_secs(10);

fn status(role: RaftRole, term: u64, leader: Option<u64>) -> NodeStatus {
    NodeStatus {
        id: 1,
        role,
        term,
        leader,
        commit_index: 0,
        applied_index: 0,
        last_index: 0,
        voters: vec![1, 2, 3],
        led_terms: Vec::new(),
        term_proposers: BTreeMap::new(),
        failure: None,
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    certs: std::path::PathBuf,
    addr: SocketAddr,
    gateway: AgentGateway,
    status: watch::Sender<NodeStatus>,
    endpoint: Endpoint,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.endpoint.close();
    }
}

/// Node 1's endpoint serving agent streams with a gateway; node 2 is at `peer_addr`.
async fn setup(initial: NodeStatus, peer_addr: SocketAddr) -> anyhow::Result<Setup> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    certs::init(&Layout::default(), &certs)?;
    let credentials = Credentials::load(&certs, &Identity::orchestrator(1))?;
    let endpoint = Endpoint::server(
        "127.0.0.1:0".parse()?,
        &credentials,
        TransportConfig::default(),
    )?;
    let addr = endpoint.local_addr()?;
    let (status, rx) = watch::channel(initial);
    let gateway = AgentGateway::new(
        GatewayConfig::new(1, BTreeMap::from([(1, addr), (2, peer_addr)])),
        rx,
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
                        let gateway = gateway.clone();
                        tokio::spawn(async move { gateway.serve_stream(stream).await });
                    }
                });
            }
        });
    }
    Ok(Setup {
        _dir: dir,
        certs,
        addr,
        gateway,
        status,
        endpoint,
    })
}

/// An agent of `cert_region` that says hello as `hello_region`.
async fn agent(
    setup: &Setup,
    cert_region: &str,
    hello_region: &str,
) -> anyhow::Result<(Connection, FramedStream, Option<HelloReply>)> {
    let credentials = Credentials::load(&setup.certs, &Identity::new(Role::Agent, cert_region)?)?;
    let endpoint = Endpoint::client(
        "127.0.0.1:0".parse()?,
        &credentials,
        TransportConfig::default(),
    )?;
    let conn = endpoint
        .connect(setup.addr, &Role::Orchestrator.server_name())
        .await?;
    let mut stream = conn.open_stream(StreamKind::Agent).await?;
    stream
        .send(&AgentHello {
            region: hello_region.into(),
            newest_term: 0,
        })
        .await?;
    let reply = tokio::time::timeout(WAIT, stream.recv::<HelloReply>())
        .await?
        .ok()
        .flatten();
    Ok((conn, stream, reply))
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("{what} did not happen within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_points_agents_at_the_leader() -> anyhow::Result<()> {
    let peer: SocketAddr = "127.0.0.1:7102".parse()?;
    let setup = setup(status(RaftRole::Follower, 4, Some(2)), peer).await?;
    let (_conn, _stream, reply) = agent(&setup, "eu-west", "eu-west").await?;
    assert_eq!(
        reply,
        Some(HelloReply::NotLeader {
            leader_id: Some(2),
            leader_addr: Some(peer.to_string()),
        })
    );
    assert!(setup.gateway.connected_regions().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_naming_another_region_than_the_certificate_is_refused() -> anyhow::Result<()> {
    let setup = setup(
        status(RaftRole::Leader, 3, Some(1)),
        "127.0.0.1:7102".parse()?,
    )
    .await?;
    let (_conn, _stream, reply) = agent(&setup, "eu-west", "us-east").await?;
    assert_eq!(reply, None, "no reply: the stream was aborted");
    assert!(setup.gateway.connected_regions().is_empty());
    assert!(setup.gateway.report("us-east").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_delivers_commands_keeps_reports_and_lets_go_when_its_term_ends()
-> anyhow::Result<()> {
    let setup = setup(
        status(RaftRole::Leader, 3, Some(1)),
        "127.0.0.1:7102".parse()?,
    )
    .await?;
    let (_conn, stream, reply) = agent(&setup, "eu-west", "eu-west").await?;
    assert_eq!(
        reply,
        Some(HelloReply::Leader {
            node_id: 1,
            term: 3
        })
    );
    let (mut tx, mut rx) = stream.split();

    // A report arrives and is kept.
    let report = AgentReport {
        region: "eu-west".into(),
        newest_term: 3,
        instances: Vec::new(),
        warmups: Vec::new(),
        replication: Vec::new(),
        at_unix_ms: 42,
        front: None,
    };
    tx.send(&FromAgent::Report(report.clone())).await?;
    let gateway = setup.gateway.clone();
    eventually("the report is kept", || {
        gateway.report("eu-west").map(|r| r.report) == Some(report.clone())
    })
    .await?;

    // A command goes out with its op id, term and region; its outcome comes back.
    let command = AgentCommand {
        op_id: "shop-1/provisioning/0/ensure_shadow/provision".into(),
        term: 3,
        region: "eu-west".into(),
        action: AgentAction::Provision {
            instances: vec!["shop-1-1".into()],
        },
    };
    let sent = {
        let (gateway, command) = (setup.gateway.clone(), command.clone());
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
        setup.gateway.send(silent, Duration::from_millis(200)).await,
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
        setup.gateway.send(elsewhere, WAIT).await,
        Err(GatewayError::NotConnected("ap-south".into()))
    );

    // A new term (another node won an election): the gateway ends the stream.
    setup.status.send(status(RaftRole::Follower, 4, Some(2)))?;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match rx.recv::<ToAgent>().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the agent stream ends when the term ends");
    let gateway = setup.gateway.clone();
    eventually("the session is forgotten", || {
        gateway.connected_regions().is_empty()
    })
    .await?;
    Ok(())
}
