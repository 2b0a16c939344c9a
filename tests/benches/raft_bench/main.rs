//! Raft benchmark on 3 local `umbra-orchestrator` processes (QUIC + mTLS, raft-engine with
//! fsync on every node, default Raft tuning): commit latency with one sequential client,
//! throughput with 64 concurrent proposers, and failover time (SIGKILL the leader → next
//! committed entry) over repeated kills.
//!
//! `cargo build --release --workspace --bins && cargo bench -p umbra-tests --bench raft_bench`
//! (options after `--`: `--kills 20 --latency-proposals 1000 --throughput-secs 10`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use umbra_consensus::kv::KvCommand;
use umbra_orchestrator::store::StoreClient;
use umbra_tests::{Cluster, Options};

#[derive(Debug, Parser)]
struct Args {
    /// Sequential proposals for the latency figure.
    #[arg(long, default_value_t = 1000)]
    latency_proposals: u64,
    /// Concurrent proposers for the throughput figure.
    #[arg(long, default_value_t = 64)]
    proposers: u64,
    /// Duration of the throughput run.
    #[arg(long, default_value_t = 10)]
    throughput_secs: u64,
    /// Leader kills for the failover figure (the issue asks for at least 20).
    #[arg(long, default_value_t = 20)]
    kills: u32,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Accepted (and ignored) so `cargo bench` can pass `--bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// No single measurement may take longer than this; the bench fails instead of hanging.
const STEP_DEADLINE: Duration = Duration::from_secs(60);

fn command(key: String, value_bytes: usize) -> Vec<u8> {
    KvCommand::Put {
        key,
        value: vec![b'x'; value_bytes],
    }
    .encode()
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cluster = Cluster::launch(Options {
        raft: umbra_consensus::Config::default(),
        ..Options::kv(3)
    })
    .await?;
    let leader = cluster.wait_for_leader(STEP_DEADLINE).await?;
    println!(
        "3 nodes up, leader {leader}; fsync on; default raft tuning (100 ms ticks, election 10 ticks)"
    );

    // 1. Commit latency, one sequential client.
    let mut client = cluster.client_starting_at(leader)?;
    for i in 0..50 {
        client
            .propose(command(format!("warm-{i}"), args.value_bytes))
            .await?;
    }
    let mut latency = Histogram::<u64>::new(3)?;
    for i in 0..args.latency_proposals {
        let sent = Instant::now();
        client
            .propose(command(format!("seq-{i}"), args.value_bytes))
            .await?;
        latency.record(sent.elapsed().as_micros() as u64)?;
    }
    println!(
        "commit latency, 1 sequential client, {} proposals: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.latency_proposals,
        ms(&latency, 0.5),
        ms(&latency, 0.99),
        latency.max() as f64 / 1000.0
    );

    // 2. Throughput, concurrent proposers for a fixed time.
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut proposers = Vec::new();
    for p in 0..args.proposers {
        let mut client = cluster.client_starting_at(leader)?;
        let committed = committed.clone();
        let stop = stop.clone();
        let value_bytes = args.value_bytes;
        proposers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3)?;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                client
                    .propose(command(format!("p{p}-{i}"), value_bytes))
                    .await?;
                histogram.record(sent.elapsed().as_micros() as u64)?;
                committed.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(histogram)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.throughput_secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut under_load = Histogram::<u64>::new(3)?;
    for proposer in proposers {
        under_load.add(proposer.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = committed.load(Ordering::Relaxed);
    println!(
        "throughput, {} concurrent proposers, {:.1} s: {} commits, {:.0} commits/s (latency p50 {:.2} ms, p99 {:.2} ms)",
        args.proposers,
        elapsed,
        total,
        total as f64 / elapsed,
        ms(&under_load, 0.5),
        ms(&under_load, 0.99)
    );

    // 3. Failover: SIGKILL the leader, time until a survivor commits the next entry.
    let credentials = cluster.operator_credentials()?;
    let mut failover = Histogram::<u64>::new(3)?;
    for kill in 1..=args.kills {
        let leader = cluster.wait_for_leader(STEP_DEADLINE).await?;
        let expected = cluster
            .status(leader)
            .await?
            .digest
            .map(|d| d.commands_applied)
            .unwrap_or(0);
        cluster
            .wait_for_same_state(&[1, 2, 3], expected, STEP_DEADLINE)
            .await?;
        let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
        // Connections to the survivors are opened before the kill, so the figure is Raft's
        // failover and not a QUIC handshake.
        let mut probes = Vec::new();
        for id in &survivors {
            let mut probe = StoreClient::pinned(&credentials, cluster.nodes[id].listen())?;
            let _ = probe.leader().await;
            probes.push(probe);
        }
        cluster.kill(leader)?;
        let killed_at = Instant::now();
        let mut n = 0u64;
        'probe: loop {
            if killed_at.elapsed() > STEP_DEADLINE {
                bail!(
                    "kill {kill}: nothing committed {STEP_DEADLINE:?} after killing node {leader}"
                );
            }
            for probe in &mut probes {
                n += 1;
                let attempt = tokio::time::timeout(
                    Duration::from_millis(500),
                    probe.propose(command(format!("failover-{kill}-{n}"), args.value_bytes)),
                )
                .await;
                if let Ok(Ok(_)) = attempt {
                    break 'probe;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = killed_at.elapsed();
        failover.record(took.as_micros() as u64)?;
        println!(
            "kill {kill}: node {leader} killed, next commit after {:.0} ms",
            took.as_secs_f64() * 1000.0
        );
        cluster
            .spawn(leader)
            .context("restarting the killed node")?;
    }
    println!(
        "failover (SIGKILL leader -> next committed entry), {} kills: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        args.kills,
        ms(&failover, 0.5),
        ms(&failover, 0.99),
        failover.max() as f64 / 1000.0
    );
    Ok(())
}
