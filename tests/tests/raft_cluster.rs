//! Issue 2's acceptance lines for consensus, against real `umbra-orchestrator` processes on
//! loopback: QUIC with mutual TLS between them, raft-engine logs on disk with fsync, and
//! SIGKILL / SIGSTOP / SIGCONT from the harness. Run `cargo build --workspace --bins` first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use umbra_consensus::kv::{KvAnswer, KvCommand, KvQuery};
use umbra_orchestrator::node::AdminStatus;
use umbra_orchestrator::store::{StoreClient, StoreClientError};
use umbra_proto::certs::{self, Layout};
use umbra_proto::{
    ClientOutcome, ClientRequest, ClientRequestBody, ClientResponse, Credentials, Endpoint,
    Identity, LinkError, MembershipChange, RaftMessage, Role, StreamError, StreamKind,
    TransportConfig,
};
use umbra_tests::{Cluster, free_port, wait_for};

const ELECTION: Duration = Duration::from_secs(20);
const CATCH_UP: Duration = Duration::from_secs(30);

fn put(key: &str, value: &str) -> Vec<u8> {
    KvCommand::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
    .encode()
}

async fn get(client: &mut StoreClient, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let answer = client
        .read(KvQuery::Get { key: key.into() }.encode())
        .await?;
    match KvAnswer::decode(&answer)? {
        KvAnswer::Value(value) => Ok(value),
        other => bail!("unexpected answer to get {key}: {other:?}"),
    }
}

/// Checks Raft's election safety from what the nodes report: in every term, the entries
/// every node applied were proposed by one node, and that node is the only one that says it
/// led that term.
fn assert_one_leader_per_term(statuses: &BTreeMap<u64, AdminStatus>) {
    let mut leaders: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for status in statuses.values() {
        for term in &status.raft.led_terms {
            leaders.entry(*term).or_default().insert(status.raft.id);
        }
    }
    for (term, ids) in &leaders {
        assert_eq!(ids.len(), 1, "term {term} had several leaders: {ids:?}");
    }
    for status in statuses.values() {
        for (term, proposers) in &status.raft.term_proposers {
            assert_eq!(
                proposers.len(),
                1,
                "node {} applied entries of term {term} from several proposers {proposers:?}",
                status.raft.id
            );
            if let Some(led) = leaders.get(term) {
                assert_eq!(
                    led, proposers,
                    "term {term}: entries proposed by {proposers:?} but led by {led:?}"
                );
            }
        }
    }
}

/// Waits until node `id` follows another node in term `term` or later (a deposed leader
/// stepping down).
async fn wait_until_following(cluster: &Cluster, id: u64, term: u64) -> anyhow::Result<()> {
    wait_for(&format!("node {id} to follow"), ELECTION, || async {
        let status = cluster.status(id).await.ok()?;
        (status.raft.role == umbra_consensus::Role::Follower
            && status.raft.term >= term
            && status.raft.leader.is_some_and(|l| l != id))
        .then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_proposals_apply_in_the_same_order_on_all_three() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(ELECTION).await?;
    // Four writers, each entering through a different node and following redirects.
    let mut writers = Vec::new();
    for writer in 0..4u64 {
        let mut client = cluster.client_starting_at(1 + writer % 3)?;
        writers.push(tokio::spawn(async move {
            for i in 0..250 {
                let key = format!("w{writer}-{i}");
                client.propose(put(&key, "v")).await.with_context(|| key)?;
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let applied = cluster
        .wait_for_same_state(&[1, 2, 3], 1000, CATCH_UP)
        .await?;
    assert_eq!(applied, 1000, "exactly the 1000 proposals were applied");
    let mut client = cluster.client_starting_at(2)?;
    assert_eq!(get(&mut client, "w3-249").await?, Some(b"v".to_vec()));
    assert_one_leader_per_term(&cluster.statuses(&[1, 2, 3]).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_the_leader_five_times_during_proposals() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(ELECTION).await?;
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut client = cluster.client_starting_at(1)?;
    // A stream of proposals; only acknowledged keys are recorded. Errors (the leader died
    // mid-request) are expected: the writer moves on to the next key.
    let writer = tokio::spawn(async move {
        for i in 0..100_000u64 {
            if stop_rx.try_recv().is_ok() {
                break;
            }
            let key = format!("k{i}");
            if client.propose(put(&key, "v")).await.is_ok() {
                let _ = acked_tx.send(key);
            }
        }
    });
    let mut acknowledged: Vec<String> = Vec::new();
    let mut drain = |acknowledged: &mut Vec<String>| {
        while let Ok(key) = acked_rx.try_recv() {
            acknowledged.push(key);
        }
    };
    for round in 1..=5 {
        let leader = cluster.wait_for_leader(ELECTION).await?;
        let before = {
            drain(&mut acknowledged);
            acknowledged.len()
        };
        wait_for("proposals flowing", CATCH_UP, || {
            drain(&mut acknowledged);
            let n = acknowledged.len();
            async move { (n >= before + 20).then_some(()) }
        })
        .await?;
        cluster.kill(leader)?;
        let survivors: Vec<u64> = cluster.live();
        let new_leader = cluster.wait_for_leader_among(&survivors, ELECTION).await?;
        ensure!(
            new_leader != leader,
            "round {round}: the killed node cannot lead"
        );
        let at_kill = acknowledged.len();
        wait_for("proposals flowing after failover", CATCH_UP, || {
            drain(&mut acknowledged);
            let n = acknowledged.len();
            async move { (n >= at_kill + 20).then_some(()) }
        })
        .await
        .with_context(|| format!("round {round}"))?;
        // Everything acknowledged so far is readable (linearizably, from the new leader) ...
        let mut reader = cluster.client_starting_at(new_leader)?;
        for key in &acknowledged[before.saturating_sub(5)..] {
            ensure!(
                get(&mut reader, key).await?.is_some(),
                "round {round}: acknowledged {key} lost after killing node {leader}"
            );
        }
        // ... and the killed node, restarted from its data dir, catches up.
        cluster.spawn(leader)?;
        let live = cluster.live();
        let leader_status = cluster.status(new_leader).await?;
        let target = leader_status
            .digest
            .map(|d| d.commands_applied)
            .unwrap_or(0);
        cluster
            .wait_for_same_state(&live, target, CATCH_UP)
            .await
            .with_context(|| format!("round {round}: node {leader} catching up"))?;
        eprintln!(
            "round {round}: killed leader {leader}, new leader {new_leader}, {} acknowledged",
            acknowledged.len()
        );
    }
    let _ = stop_tx.send(());
    writer.await?;
    drain(&mut acknowledged);
    let leader = cluster.wait_for_leader(ELECTION).await?;
    let mut reader = cluster.client_starting_at(leader)?;
    for key in &acknowledged {
        ensure!(
            get(&mut reader, key).await?.is_some(),
            "acknowledged {key} lost"
        );
    }
    let statuses = cluster.statuses(&[1, 2, 3]).await;
    assert_one_leader_per_term(&statuses);
    Ok(())
}

/// A killed process's port is closed, and that is noticed at once. A request in flight to a
/// leader (frozen first, so it cannot answer) that is then SIGKILLed fails as "outcome
/// unknown" naming the closed port, not after the client's response timeout; a read is then
/// retried on the new leader. And when a running leader is SIGKILLed, the survivors elect its
/// successor through the dead-leader campaign instead of waiting out the election timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_noticed_by_its_closed_port() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(ELECTION).await?;
    let mut client = cluster.client_starting_at(leader)?;
    client.propose(put("before", "1")).await?;

    cluster.pause(leader)?;
    let in_flight = tokio::spawn(async move {
        let outcome = client.propose(put("in-flight", "x")).await;
        (client, outcome)
    });
    cluster.kill(leader)?;
    let (mut client, outcome) = in_flight.await?;
    match outcome {
        Err(StoreClientError::OutcomeUnknown(reason)) if reason.contains("port is closed") => {}
        other => bail!("expected an unknown outcome naming the closed port, got {other:?}"),
    }
    assert_eq!(get(&mut client, "before").await?, Some(b"1".to_vec()));

    cluster.spawn(leader)?;
    let leader = cluster.wait_for_leader(ELECTION).await?;
    client.propose(put("settle", "2")).await?;
    let commands = cluster
        .status(leader)
        .await?
        .digest
        .map(|d| d.commands_applied)
        .unwrap_or(0);
    cluster
        .wait_for_same_state(&[1, 2, 3], commands, CATCH_UP)
        .await?;
    cluster.kill(leader)?;
    let survivors = cluster.live();
    let successor = cluster.wait_for_leader_among(&survivors, ELECTION).await?;
    let statuses = cluster.statuses(&survivors).await;
    let campaigns: u64 = statuses
        .values()
        .map(|s| s.raft.dead_leader_campaigns)
        .sum();
    ensure!(
        campaigns >= 1,
        "node {successor} leads, but no survivor campaigned on the dead leader: {statuses:#?}"
    );
    // `client` was talking to the killed leader: its next proposal would be of unknown outcome.
    let mut fresh = cluster.client_starting_at(successor)?;
    fresh.propose(put("after", "3")).await?;
    assert_eq!(get(&mut fresh, "settle").await?, Some(b"2".to_vec()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_all_three_and_restart_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(ELECTION).await?;
    let mut client = cluster.client_starting_at(1)?;
    for i in 0..300 {
        client
            .propose(put(&format!("k{i}"), &i.to_string()))
            .await?;
    }
    for id in 1..=3 {
        cluster.kill(id)?;
    }
    for id in 1..=3 {
        cluster.spawn(id)?;
    }
    cluster.wait_for_leader(ELECTION).await?;
    let mut client = cluster.client_starting_at(3)?;
    for i in 0..300 {
        let key = format!("k{i}");
        assert_eq!(
            get(&mut client, &key).await?,
            Some(i.to_string().into_bytes()),
            "{key} after restarting every node"
        );
    }
    cluster
        .wait_for_same_state(&[1, 2, 3], 300, CATCH_UP)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_cannot_commit_steps_down_and_loses_its_entry() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let old_leader = cluster.wait_for_leader(ELECTION).await?;
    let mut client = cluster.client_starting_at(old_leader)?;
    client.propose(put("before", "1")).await?;
    let old_term = cluster.status(old_leader).await?.raft.term;

    // A client stream straight to the old leader, opened while it still runs.
    let mut direct = cluster.direct_stream(old_leader).await?;
    let stream = &mut direct.stream;

    cluster.pause(old_leader)?;
    // The proposal waits in the frozen leader's socket: it cannot commit there.
    stream
        .send(&ClientRequest {
            id: 7,
            body: ClientRequestBody::Propose {
                command: put("stranded", "x"),
            },
        })
        .await?;
    let others: Vec<u64> = cluster.live();
    let new_leader = cluster.wait_for_leader_among(&others, ELECTION).await?;
    let mut others_client = cluster.client_starting_at(new_leader)?;
    others_client.propose(put("during", "2")).await?;
    let new_term = cluster.status(new_leader).await?.raft.term;
    ensure!(new_term > old_term, "the others moved to a new term");

    cluster.resume(old_leader)?;
    let answer = tokio::time::timeout(Duration::from_secs(15), stream.recv::<ClientResponse>())
        .await
        .context("the old leader answers after SIGCONT")??
        .context("stream ended without an answer")?;
    assert_eq!(answer.id, 7);
    eprintln!("the deposed leader answered: {:?}", answer.outcome);
    match &answer.outcome {
        ClientOutcome::NotLeader(_) => {}
        ClientOutcome::Failed(error) => {
            assert!(
                matches!(error.kind, umbra_proto::ClientErrorKind::Dropped),
                "{error:?}"
            )
        }
        other => panic!("the deposed leader acknowledged a proposal: {other:?}"),
    }
    // It steps down and follows the new leader; its uncommitted entry is gone everywhere.
    wait_until_following(&cluster, old_leader, new_term).await?;
    others_client.propose(put("after", "3")).await?;
    assert_eq!(get(&mut others_client, "stranded").await?, None);
    assert_eq!(
        get(&mut others_client, "during").await?,
        Some(b"2".to_vec())
    );
    cluster.wait_for_same_state(&[1, 2, 3], 3, CATCH_UP).await?;
    assert_one_leader_per_term(&cluster.statuses(&[1, 2, 3]).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_leader_cannot_commit_steps_down_and_its_entry_is_discarded() -> anyhow::Result<()>
{
    let cluster = Cluster::start(3).await?;
    let old_leader = cluster.wait_for_leader(ELECTION).await?;
    let others: Vec<u64> = [1, 2, 3]
        .into_iter()
        .filter(|id| *id != old_leader)
        .collect();
    let mut client = cluster.client_starting_at(old_leader)?;
    client.propose(put("before", "1")).await?;
    let old_term = cluster.status(old_leader).await?.raft.term;

    // The old leader drops all Raft traffic with the other two; clients still reach it.
    let mut direct = cluster.direct_stream(old_leader).await?;
    let stream = &mut direct.stream;
    cluster.cut(old_leader, &others).await?;
    stream
        .send(&ClientRequest {
            id: 9,
            body: ClientRequestBody::Propose {
                command: put("stranded", "x"),
            },
        })
        .await?;
    // It appends the entry but cannot commit it.
    let stranded = wait_for(
        "the stranded entry in the old leader's log",
        ELECTION,
        || async {
            let status = cluster.status(old_leader).await.ok()?;
            (status.raft.last_index > status.raft.commit_index).then_some(status.raft)
        },
    )
    .await?;
    let new_leader = cluster.wait_for_leader_among(&others, ELECTION).await?;
    let mut others_client = cluster.client_starting_at(new_leader)?;
    others_client.propose(put("during", "2")).await?;
    let old_status = cluster.status(old_leader).await?.raft;
    ensure!(
        old_status.commit_index < stranded.last_index,
        "the cut-off leader committed its entry: {old_status:?}"
    );

    cluster.heal(old_leader).await?;
    let answer = tokio::time::timeout(Duration::from_secs(20), stream.recv::<ClientResponse>())
        .await
        .context("the old leader answers the stranded proposal after the cut heals")??
        .context("stream ended without an answer")?;
    assert_eq!(answer.id, 9);
    match &answer.outcome {
        ClientOutcome::Failed(error) => assert!(
            matches!(error.kind, umbra_proto::ClientErrorKind::Dropped),
            "the stranded proposal must be reported dropped: {error:?}"
        ),
        other => panic!("the cut-off leader's proposal must be dropped, got {other:?}"),
    }
    wait_until_following(&cluster, old_leader, old_term + 1).await?;
    others_client.propose(put("after", "3")).await?;
    assert_eq!(get(&mut others_client, "stranded").await?, None);
    cluster.wait_for_same_state(&[1, 2, 3], 3, CATCH_UP).await?;
    assert_one_leader_per_term(&cluster.statuses(&[1, 2, 3]).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_ca_and_agent_certificates_are_refused_on_the_raft_stream() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(ELECTION).await?;
    let target = cluster.nodes[&1].listen();

    // An orchestrator certificate for node 2 issued by a different CA.
    let rogue_dir = tempfile::tempdir()?;
    certs::init(
        &Layout {
            orchestrators: 3,
            regions: vec![],
            operators: vec![],
        },
        rogue_dir.path(),
    )?;
    let rogue = Credentials::load(rogue_dir.path(), &Identity::orchestrator(2))?;
    let endpoint = Endpoint::client("127.0.0.1:0".parse()?, &rogue, TransportConfig::default())?;
    // The rogue does not trust our CA either, so it cannot even verify node 1; a rogue that
    // skipped verification would still be refused by node 1. Either way, the handshake or the
    // first stream fails with a certificate error.
    let refusal = match endpoint
        .connect(target, &Identity::orchestrator(1).server_name())
        .await
    {
        Err(error) => error.link_error().cloned(),
        Ok(connection) => match connection.open_stream(StreamKind::Raft).await {
            Err(error) => error.link_error().cloned(),
            Ok(_) => bail!("a certificate from another CA opened a raft stream"),
        },
    };
    assert!(
        matches!(refusal, Some(LinkError::CertificateRefused { .. })),
        "expected a certificate refusal, got {refusal:?}"
    );

    // A genuine agent certificate from our CA: TLS succeeds, the raft stream is refused.
    let agent = cluster.credentials(&Identity::new(Role::Agent, "us-east")?)?;
    let endpoint = Endpoint::client("127.0.0.1:0".parse()?, &agent, TransportConfig::default())?;
    let connection = endpoint
        .connect(target, &Identity::orchestrator(1).server_name())
        .await?;
    let refused = connection.open_stream(StreamKind::Raft).await;
    match refused {
        Err(StreamError::Link(LinkError::RoleRefused { reason })) => {
            assert!(reason.contains("agent"), "{reason}")
        }
        Err(other) => bail!("expected a role refusal, got {other}"),
        Ok(_) => bail!("an agent certificate opened a raft stream"),
    }
    // An orchestrator impersonating another node id inside the stream is cut off too.
    let node3 = cluster.credentials(&Identity::orchestrator(3))?;
    let endpoint = Endpoint::client("127.0.0.1:0".parse()?, &node3, TransportConfig::default())?;
    let connection = endpoint
        .connect(target, &Identity::orchestrator(1).server_name())
        .await?;
    let mut stream = connection.open_stream(StreamKind::Raft).await?;
    stream
        .send(&RaftMessage {
            from: 2,
            to: 1,
            message: vec![],
        })
        .await?;
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.recv::<RaftMessage>()).await?;
    assert!(
        ended.is_err(),
        "a forged sender id must abort the stream: {ended:?}"
    );
    // The cluster still works.
    let mut client = cluster.client_starting_at(1)?;
    client.propose(put("still", "ok")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_and_oversized_frames_leave_the_node_serving() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(ELECTION).await?;
    let target = cluster.nodes[&1].listen();

    // Raw UDP garbage at the QUIC port.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    for size in [1usize, 37, 1200, 1500] {
        let garbage: Vec<u8> = (0..size).map(|i| (i * 131 % 251) as u8).collect();
        socket.send_to(&garbage, target).await?;
    }

    // Frames on real, authenticated streams: the node must close the stream with a code
    // and keep serving everything else.
    let node2 = cluster.credentials(&Identity::orchestrator(2))?;
    let endpoint = Endpoint::client("127.0.0.1:0".parse()?, &node2, TransportConfig::default())?;
    let connection = endpoint
        .connect(target, &Identity::orchestrator(1).server_name())
        .await?;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x00\x00\x00\x08garbage!".to_vec()),
        ("oversized", u32::MAX.to_be_bytes().to_vec()),
        ("truncated", {
            let mut bytes = 1000u32.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[7u8; 10]);
            bytes
        }),
    ];
    for (name, bytes) in cases {
        let (mut send, mut recv) = connection.quinn().open_bi().await?;
        send.write_all(&bytes).await?;
        send.finish()?;
        // The node answers a bad header by stopping/resetting the stream; reading its side
        // ends (with an error or an empty stream), never hangs and never takes the
        // connection down.
        let read = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 16)).await;
        ensure!(
            read.is_ok(),
            "{name}: the node neither answered nor closed the stream"
        );
        ensure!(
            connection.close_reason().is_none(),
            "{name}: the whole connection was closed: {:?}",
            connection.close_reason()
        );
    }
    // A valid raft stream whose messages are garbage, oversized or truncated.
    for (name, message) in [
        ("garbage raft message", vec![0xff; 64]),
        ("truncated raft message", vec![0x08]),
    ] {
        let mut stream = connection.open_stream(StreamKind::Raft).await?;
        stream
            .send(&RaftMessage {
                from: 2,
                to: 1,
                message,
            })
            .await?;
        let ended =
            tokio::time::timeout(Duration::from_secs(5), stream.recv::<RaftMessage>()).await;
        ensure!(
            matches!(ended, Ok(Err(_))),
            "{name}: the node should abort the stream, got {ended:?}"
        );
    }
    let mut stream = connection.open_stream(StreamKind::Client).await?;
    let too_big = vec![0u8; umbra_proto::frame::DEFAULT_MAX_FRAME_BYTES + 1];
    let refused = stream
        .send(&ClientRequest {
            id: 1,
            body: ClientRequestBody::Propose { command: too_big },
        })
        .await;
    ensure!(
        refused.is_err(),
        "the sender refuses an oversized frame itself"
    );
    // The node still answers clients and peers.
    let mut client = cluster.client_starting_at(1)?;
    client.propose(put("alive", "yes")).await?;
    assert_eq!(get(&mut client, "alive").await?, Some(b"yes".to_vec()));
    let status = cluster.status(1).await?;
    ensure!(status.raft.failure.is_none());
    cluster.wait_for_same_state(&[1, 2, 3], 1, CATCH_UP).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_a_fourth_node_remove_one_and_keep_committing() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    cluster.wait_for_leader(ELECTION).await?;
    let mut client = cluster.client_starting_at(1)?;
    // Past one snapshot interval, so the newcomer catches up from a snapshot.
    for i in 0..250 {
        client.propose(put(&format!("k{i}"), "v")).await?;
    }
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let peers = cluster.peer_list_with(4, address);
    cluster.add_process(4, address, peers, true)?;
    cluster.spawn(4)?;
    let voters = client
        .change_membership(MembershipChange::AddNode {
            node_id: 4,
            addr: address,
        })
        .await?;
    assert_eq!(voters, vec![1, 2, 3, 4]);
    client.propose(put("with-four", "1")).await?;
    cluster
        .wait_for_same_state(&[1, 2, 3, 4], 251, CATCH_UP)
        .await
        .context("node 4 catching up")?;

    let leader = cluster.wait_for_leader(ELECTION).await?;
    let removed = [1, 2, 3, 4]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let voters = client
        .change_membership(MembershipChange::RemoveNode { node_id: removed })
        .await?;
    ensure!(!voters.contains(&removed), "{voters:?}");
    cluster.kill(removed)?;
    let mut remaining: Vec<u64> = vec![1, 2, 3, 4];
    remaining.retain(|id| *id != removed);
    for i in 0..20 {
        client.propose(put(&format!("after-{i}"), "v")).await?;
    }
    cluster
        .wait_for_same_state(&remaining, 271, CATCH_UP)
        .await?;
    assert_eq!(get(&mut client, "after-19").await?, Some(b"v".to_vec()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_binary_or_a_bad_config_gets_a_clear_message() -> anyhow::Result<()> {
    let missing = umbra_tests::binary("umbra-no-such-binary").expect_err("missing");
    assert!(
        missing
            .to_string()
            .contains("cargo build --workspace --bins"),
        "{missing}"
    );
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "id = 0\n")?;
    // Many Rust machines set RUST_BACKTRACE: a user's mistake still gets no backtrace.
    let output = std::process::Command::new(umbra_tests::binary("umbra-orchestrator")?)
        .arg("--config")
        .arg(&config)
        .env("RUST_BACKTRACE", "1")
        .output()?;
    ensure!(output.status.code() == Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        stderr.starts_with("error: reading the node config") && stderr.contains("node.toml"),
        "{stderr}"
    );
    ensure!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    let output = std::process::Command::new(umbra_tests::binary("umbra-agent")?)
        .args(["run", "--config"])
        .arg(dir.path().join("no-such-agent.toml"))
        .env("RUST_BACKTRACE", "1")
        .output()?;
    ensure!(output.status.code() == Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        stderr.starts_with("error: cannot read agent config")
            && !stderr.to_lowercase().contains("backtrace"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn umbra_kv_puts_and_gets_through_any_node() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(ELECTION).await?;
    let follower = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let umbra = umbra_tests::binary("umbra")?;
    let run = |args: Vec<String>| {
        let output = std::process::Command::new(&umbra).args(&args).output()?;
        anyhow::Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    };
    let node = cluster.nodes[&follower].listen().to_string();
    let certs = cluster.certs_dir.display().to_string();
    // Entering through a follower: the CLI follows the leader hint.
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| {
        run(vec![
            "kv".into(),
            "put".into(),
            "colour".into(),
            "blue".into(),
            "--node".into(),
            node.clone(),
            "--certs".into(),
            certs.clone(),
        ])
    })?;
    ensure!(ok, "umbra kv put failed: {stderr}");
    ensure!(stdout.contains("applied at log index"), "{stdout}");
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| {
        run(vec![
            "kv".into(),
            "get".into(),
            "colour".into(),
            "--node".into(),
            node.clone(),
            "--certs".into(),
            certs.clone(),
        ])
    })?;
    ensure!(ok, "umbra kv get failed: {stderr}");
    assert_eq!(stdout.trim(), "blue");
    // A missing --certs is a clear mistake message, not a panic.
    let (ok, _, stderr) = tokio::task::block_in_place(|| {
        run(vec![
            "kv".into(),
            "get".into(),
            "x".into(),
            "--node".into(),
            node.clone(),
        ])
    })?;
    ensure!(!ok && stderr.contains("umbra certs init"), "{stderr}");
    Ok(())
}
