//! Issue 15's disk-loss acceptance line against real `umbra-orchestrator` processes: a
//! follower whose data directory is wiped is refused when it comes back as the founding member
//! it was, and once replaced through the documented path (`umbra member remove`, `umbra member
//! add`, `join = true`) it catches up from a snapshot of several hundred MiB (far more than
//! one 16 MiB frame), with no panic in any node's log. Run `cargo build --workspace --bins`
//! first.
//!
//! The replicated state is `UMBRA_REPLACE_STATE_MIB` MiB (default `DEFAULT_STATE_MIB`).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use umbra_consensus::kv::{KvAnswer, KvCommand, KvQuery};
use umbra_orchestrator::store::StoreClient;
use umbra_tests::{Cluster, OPERATOR, Options, binary};

const ELECTION: Duration = Duration::from_secs(20);
/// Writing, snapshotting and shipping the whole state on a loaded 2-core machine; scaled
/// with the state's size below.
const CATCH_UP_PER_MIB: Duration = Duration::from_secs(2);
const CATCH_UP_MIN: Duration = Duration::from_secs(60);
/// The refused node exits once the leader's first heartbeat reaches it.
const REFUSAL: Duration = Duration::from_secs(30);
/// Bytes of one value: under the 512 KiB a command may hold (`max_command_bytes`).
const VALUE_BYTES: usize = 448 * 1024;
/// State written by default: the several hundred MiB issue 15 asks a replaced node to catch
/// up from, which also keeps the test at about two minutes in a debug build.
const DEFAULT_STATE_MIB: usize = 300;
/// Entries between snapshots: the leader compacts its log every 48 values (21 MiB), so the
/// wiped node can only catch up from a snapshot, while the snapshots taken during the writes
/// (each encoded and written off the Raft driver's thread) stay few.
const SNAPSHOT_INTERVAL: u64 = 48;
/// Times one put is sent before the test gives up on it.
const WRITE_ATTEMPTS: u32 = 5;
/// The frame size a snapshot could not exceed before it was sent in chunks.
const ONE_FRAME_BYTES: usize = umbra_proto::frame::DEFAULT_MAX_FRAME_BYTES;

fn state_mib() -> anyhow::Result<usize> {
    match std::env::var("UMBRA_REPLACE_STATE_MIB") {
        Ok(mib) => mib
            .parse()
            .with_context(|| format!("UMBRA_REPLACE_STATE_MIB={mib} is not a whole number")),
        Err(_) => Ok(DEFAULT_STATE_MIB),
    }
}

/// The value stored under key `i`: distinct per key, so a mixed-up chunk changes the digest.
fn value(i: usize) -> Vec<u8> {
    (0..VALUE_BYTES)
        .map(|b| (b.wrapping_mul(31) ^ i.wrapping_mul(7919)) as u8)
        .collect()
}

fn key(i: usize) -> String {
    format!("big-{i:05}")
}

/// Runs `umbra ARGS --node NODES --certs DIR --as OPERATOR`; its stdout, or an error with its
/// stderr.
async fn umbra(cluster: &Cluster, args: &[String], nodes: &[SocketAddr]) -> anyhow::Result<String> {
    let mut command = Command::new(binary("umbra")?);
    command
        .args(args)
        .arg("--node")
        .arg(
            nodes
                .iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(","),
        )
        .arg("--certs")
        .arg(&cluster.certs_dir)
        .arg("--as")
        .arg(OPERATOR);
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "umbra {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
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

/// The size of the snapshot node `id` installed, from its log's "installed snapshot" line.
fn installed_snapshot_bytes(log: &str) -> Option<usize> {
    log.lines()
        .filter(|line| line.contains("installed snapshot from the leader"))
        .filter_map(|line| {
            let (_, rest) = line.split_once("bytes=")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .max()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_is_refused_then_replaced_and_catches_up_from_a_large_snapshot()
-> anyhow::Result<()> {
    let state_mib = state_mib()?;
    let values = state_mib * 1024 * 1024 / VALUE_BYTES + 1;
    ensure!(
        values * VALUE_BYTES > ONE_FRAME_BYTES,
        "UMBRA_REPLACE_STATE_MIB={state_mib} is too small to need more than one frame"
    );
    // The product's Raft timings (elections after about a second): a debug build encoding a
    // snapshot of tens of MiB must not look like a dead leader.
    let mut options = Options::kv(3);
    options.raft = umbra_consensus::Config {
        snapshot_interval_entries: SNAPSHOT_INTERVAL,
        ..umbra_consensus::Config::default()
    };
    let mut cluster = Cluster::launch(options).await?;
    let leader = cluster.wait_for_leader(ELECTION).await?;
    let mut client = cluster.client_starting_at(leader)?;
    let writing = Instant::now();
    for i in 0..values {
        let command = KvCommand::Put {
            key: key(i),
            value: value(i),
        }
        .encode();
        // A put is idempotent, so one whose outcome is unknown (a request timeout or a
        // leader change on a loaded machine) is sent again; each retry is printed.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match client.propose(command.clone()).await {
                Ok(_) => break,
                Err(e) if attempt < WRITE_ATTEMPTS => {
                    println!("writing {} again (attempt {attempt}: {e})", key(i));
                }
                Err(e) => return Err(e).with_context(|| format!("writing {}", key(i))),
            }
        }
    }
    println!(
        "state: {values} values of {VALUE_BYTES} bytes ({} MiB), written in {:.1} s",
        values * VALUE_BYTES / (1024 * 1024),
        writing.elapsed().as_secs_f64()
    );

    let leader = cluster.wait_for_leader(ELECTION).await?;
    let wiped = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let others: Vec<SocketAddr> = cluster
        .nodes
        .values()
        .filter(|n| n.id != wiped)
        .map(|n| n.listen())
        .collect();
    cluster.kill(wiped)?;
    cluster.wipe(wiped)?;

    // Back as the founding member it was, on an empty data directory: refused, with the
    // procedure named.
    cluster.spawn(wiped)?;
    let refused = cluster.wait_for_exit(wiped, REFUSAL).await?;
    ensure!(!refused.success(), "node {wiped} exited with {refused}");
    let log = cluster.logs()?.remove(&wiped).unwrap_or_default();
    for expected in [
        "data directory was lost".to_owned(),
        format!("umbra member remove {wiped}"),
        format!("umbra member add {wiped}"),
        "join = true".to_owned(),
    ] {
        ensure!(
            log.contains(&expected),
            "node {wiped}'s refusal does not say {expected:?}; its log:\n{log}"
        );
    }

    // The documented replace path, through the `umbra` binary.
    let address = cluster.nodes[&wiped].listen();
    let removed = umbra(
        &cluster,
        &["member".into(), "remove".into(), wiped.to_string()],
        &others,
    )
    .await?;
    println!("umbra member remove: {}", removed.trim());
    let added = umbra(
        &cluster,
        &[
            "member".into(),
            "add".into(),
            wiped.to_string(),
            address.to_string(),
        ],
        &others,
    )
    .await?;
    println!("umbra member add: {}", added.trim());
    cluster.set_join(wiped, true)?;
    let catching_up = Instant::now();
    cluster.spawn(wiped)?;
    let timeout = CATCH_UP_MIN.max(CATCH_UP_PER_MIB * state_mib as u32);
    cluster
        .wait_for_same_state(&[1, 2, 3], values as u64, timeout)
        .await
        .with_context(|| format!("node {wiped} catching up"))?;
    println!(
        "node {wiped} caught up in {:.1} s",
        catching_up.elapsed().as_secs_f64()
    );
    let last = key(values - 1);
    ensure!(
        get(&mut client, &last).await? == Some(value(values - 1)),
        "{last} reads back wrong"
    );

    let logs = cluster.logs()?;
    let snapshot = installed_snapshot_bytes(&logs[&wiped])
        .with_context(|| format!("node {wiped} installed no snapshot"))?;
    println!(
        "snapshot installed by node {wiped}: {snapshot} bytes ({} MiB)",
        snapshot / (1024 * 1024)
    );
    ensure!(
        snapshot > ONE_FRAME_BYTES,
        "node {wiped} caught up from a snapshot of {snapshot} bytes, not more than one frame"
    );
    for (id, log) in &logs {
        ensure!(
            !log.contains("panicked"),
            "node {id} panicked; its log:\n{log}"
        );
    }
    Ok(())
}
