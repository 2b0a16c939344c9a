//! A real `umbra-orchestrator` applies Raft log entries written by an earlier Umbra build and
//! keeps them across a SIGKILL: the entries are the committed bytes of
//! `orchestrator/tests/fixtures/log-v1/` (written by the build before the log schema had a
//! version of its own), proposed as they are through the store protocol, so the node's log
//! holds exactly what an older node wrote. Snapshots are taken every few entries, so the
//! restart reads a snapshot this build wrote and the log after it. What the node holds is
//! compared with the state the committed snapshot restores. Run `cargo build --workspace
//! --bins` first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use umbra_consensus::StateMachine;
use umbra_orchestrator::state::{
    AuditEntry, OrchestratorState, Overview, Query, QueryAnswer, decode_answer, decode_outcome,
    encode_query,
};
use umbra_orchestrator::store::StoreClient;
use umbra_tests::{Cluster, Options, wait_for};

const ELECTION: Duration = Duration::from_secs(30);

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../orchestrator/tests/fixtures/log-v1")
}

/// The committed entries, in log order (`command-NN-*.bin`).
fn committed_entries() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let dir = fixture_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    names.retain(|n| n.starts_with("command-") && n.ends_with(".bin"));
    names.sort();
    ensure!(names.len() >= 8, "too few entries in {}", dir.display());
    names
        .into_iter()
        .map(|n| Ok((n.clone(), std::fs::read(dir.join(&n))?)))
        .collect()
}

/// The state the committed snapshot holds.
fn committed_state() -> anyhow::Result<OrchestratorState> {
    let mut state = OrchestratorState::default();
    state
        .restore(&std::fs::read(fixture_dir().join("snapshot.bin"))?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(state)
}

async fn query(client: &mut StoreClient, query: &Query) -> anyhow::Result<QueryAnswer> {
    Ok(decode_answer(&client.read(encode_query(query)).await?)?)
}

/// The node's overview and audit log, read through the leader. The node's log indexes are
/// its own (its leaders' empty entries come between the proposals), so they are left out.
async fn held(client: &mut StoreClient) -> anyhow::Result<(Overview, Vec<AuditEntry>)> {
    let QueryAnswer::Overview(overview) = query(client, &Query::Overview).await? else {
        bail!("no overview");
    };
    let QueryAnswer::Audit(audit) = query(
        client,
        &Query::Audit {
            after_index: 0,
            limit: 1_000,
        },
    )
    .await?
    else {
        bail!("no audit log");
    };
    let overview = Overview {
        applied_index: 0,
        ..*overview
    };
    let audit = audit
        .into_iter()
        .map(|entry| AuditEntry { index: 0, ..entry })
        .collect();
    Ok((overview, audit))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_applies_an_earlier_builds_entries_and_keeps_them_across_a_restart()
-> anyhow::Result<()> {
    let mut options = Options::orchestrator(1);
    // A snapshot every few entries: the restart below reads one this build wrote.
    options.raft.snapshot_interval_entries = 8;
    let mut cluster = Cluster::launch(options).await?;
    cluster.wait_for_leader(ELECTION).await?;
    let mut client = cluster.client_starting_at(1)?;
    for (name, entry) in committed_entries()? {
        let outcome = decode_outcome(&client.propose(entry).await?)?;
        ensure!(outcome.is_ok(), "{name} was refused: {outcome:?}");
    }

    let committed = committed_state()?;
    let expected = (
        Overview {
            applied_index: 0,
            ..committed.overview()
        },
        committed
            .audit()
            .iter()
            .cloned()
            .map(|entry| AuditEntry { index: 0, ..entry })
            .collect::<Vec<_>>(),
    );
    // The executor on this leader proposes with its Raft term, below the entries' terms (3
    // and 4), so its commands are refused as a deposed leader's and the state stays as
    // committed.
    let term = cluster.status(1).await?.raft.term;
    ensure!(
        term < 3,
        "this test needs a Raft term below the entries' own; it is {term}"
    );
    let before = held(&mut client).await?;
    assert_eq!(before, expected, "the node holds the committed state");

    cluster.kill(1)?;
    cluster.spawn(1)?;
    cluster.wait_for_leader(ELECTION).await?;
    let term = cluster.status(1).await?.raft.term;
    ensure!(
        term < 4,
        "this test needs a Raft term below the entries' own; it is {term}"
    );
    let mut client = cluster.client_starting_at(1)?;
    let after = wait_for("the restarted node's state", ELECTION, || async {
        held(&mut cluster.client_starting_at(1).ok()?).await.ok()
    })
    .await?;
    assert_eq!(after, expected, "the state after a SIGKILL and restart");
    // And it keeps applying: an entry proposed now lands after them.
    let entries = committed_entries()?;
    let (name, release) = entries.last().context("a last entry")?;
    let outcome = decode_outcome(&client.propose(release.clone()).await?)?;
    assert!(
        outcome.is_err(),
        "{name} again: the claim is released already: {outcome:?}"
    );
    Ok(())
}
