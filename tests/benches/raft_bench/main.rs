//! Umbra's Raft against etcd's, side by side in one run: three local `umbra-orchestrator`
//! processes (QUIC + mutual TLS, raft-engine with fsync on every node) and three `etcd`
//! processes (Debian's etcd-server, fsync on, its JSON gateway over HTTP), with the same value
//! size, client counts and kill pattern:
//!
//! 1. commit latency of one sequential client;
//! 2. throughput of concurrent clients for a fixed time;
//! 3. failover, per election-timeout class: SIGKILL the leader, time until a survivor commits
//!    the next entry (clients already connected to both survivors, trying each in turn with a
//!    500 ms limit per attempt), restart the killed node, wait until all agree, repeat.
//!
//! Prints one table, then one JSON line with the same figures.
//! `bash tests/benches/raft-vs-etcd.sh` (installs etcd, builds the release binaries, runs
//! this; options after `--`, e.g. `--kills 20 --classes 1000,250`).

mod etcd;
mod umbra;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// Sequential puts for the latency figure.
    #[arg(long, default_value_t = 1000)]
    latency_puts: u64,
    /// Concurrent clients for the throughput figure.
    #[arg(long, default_value_t = 64)]
    clients: u64,
    /// Duration of the throughput run.
    #[arg(long, default_value_t = 10)]
    throughput_secs: u64,
    /// Leader kills per election-timeout class.
    #[arg(long, default_value_t = 20)]
    kills: u32,
    /// Election-timeout classes in ms. For each, etcd runs with that election timeout and a
    /// heartbeat of a tenth of it; Umbra with ticks of a tenth of it, a heartbeat every tick
    /// and an election timeout of ten ticks (both randomise it up to twice that).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1000, 250])]
    classes: Vec<u64>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// The etcd binary.
    #[arg(long, default_value = etcd::DEFAULT_BINARY)]
    etcd: PathBuf,
    /// Accepted (and ignored) so `cargo bench` can pass `--bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// No single wait may take longer than this; the bench fails instead of hanging.
const STEP_DEADLINE: Duration = Duration::from_secs(60);
/// One failover probe attempt's limit; the survivors are tried in turn until one commits.
const PROBE_ATTEMPT: Duration = Duration::from_millis(500);
/// Ticks per election timeout on the Umbra side (etcd's ratio of election to heartbeat).
const ELECTION_TICKS: usize = 10;

/// A client that writes one key.
trait Putter: Send + 'static {
    fn put(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A three-node cluster under test.
trait System {
    type Client: Putter;
    /// A client that starts at node `id` and reaches the leader from there.
    fn client(&self, id: u64) -> anyhow::Result<Self::Client>;
    /// A client that only ever talks to node `id`.
    fn pinned(&self, id: u64) -> anyhow::Result<Self::Client>;
    fn leader(&self, deadline: Duration) -> impl Future<Output = anyhow::Result<u64>>;
    /// Waits until every node runs, agrees on the leader and holds the same log.
    fn settle(&self, deadline: Duration) -> impl Future<Output = anyhow::Result<()>>;
    fn kill(&mut self, id: u64) -> anyhow::Result<()>;
    fn restart(&mut self, id: u64) -> anyhow::Result<()>;
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// Commit latency and throughput of one system.
struct Steady {
    latency: Histogram<u64>,
    commits_per_sec: f64,
    under_load: Histogram<u64>,
}

async fn steady<S: System>(system: &S, args: &Args) -> anyhow::Result<Steady> {
    let leader = system.leader(STEP_DEADLINE).await?;
    let mut client = system.client(leader)?;
    let value = vec![b'x'; args.value_bytes];
    for i in 0..50 {
        client.put(format!("warm-{i}"), value.clone()).await?;
    }
    let mut latency = Histogram::<u64>::new(3)?;
    for i in 0..args.latency_puts {
        let sent = Instant::now();
        client.put(format!("seq-{i}"), value.clone()).await?;
        latency.record(sent.elapsed().as_micros() as u64)?;
    }
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..args.clients {
        let mut client = system.client(leader)?;
        let (committed, stop, value) = (committed.clone(), stop.clone(), value.clone());
        clients.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3)?;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                client.put(format!("c{c}-{i}"), value.clone()).await?;
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
    for client in clients {
        under_load.add(client.await??)?;
    }
    let commits_per_sec =
        committed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    Ok(Steady {
        latency,
        commits_per_sec,
        under_load,
    })
}

/// Failover times over `kills` leader kills.
async fn failover<S: System>(
    system: &mut S,
    name: &str,
    kills: u32,
    value_bytes: usize,
) -> anyhow::Result<Histogram<u64>> {
    let mut times = Histogram::<u64>::new(3)?;
    let value = vec![b'x'; value_bytes];
    for kill in 1..=kills {
        system.settle(STEP_DEADLINE).await?;
        let leader = system.leader(STEP_DEADLINE).await?;
        let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
        // Clients of the survivors connect before the kill, so the figure is the failover and
        // not a handshake.
        let mut probes = Vec::new();
        for id in &survivors {
            let mut probe = system.pinned(*id)?;
            let _ = tokio::time::timeout(
                PROBE_ATTEMPT,
                probe.put(format!("connect-{kill}-{id}"), value.clone()),
            )
            .await;
            probes.push(probe);
        }
        system.kill(leader)?;
        let killed_at = Instant::now();
        let mut n = 0u64;
        'probe: loop {
            if killed_at.elapsed() > STEP_DEADLINE {
                bail!(
                    "{name} kill {kill}: nothing committed {STEP_DEADLINE:?} after killing node {leader}"
                );
            }
            for probe in &mut probes {
                n += 1;
                let attempt = tokio::time::timeout(
                    PROBE_ATTEMPT,
                    probe.put(format!("failover-{kill}-{n}"), value.clone()),
                )
                .await;
                if let Ok(Ok(())) = attempt {
                    break 'probe;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = killed_at.elapsed();
        times.record(took.as_micros() as u64)?;
        eprintln!(
            "{name}: kill {kill}: node {leader} killed, next commit after {:.0} ms",
            took.as_secs_f64() * 1000.0
        );
        system.restart(leader)?;
    }
    Ok(times)
}

/// One class's failover figures for both systems.
struct Class {
    election_ms: u64,
    umbra: Histogram<u64>,
    etcd: Histogram<u64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.classes.iter().any(|c| *c < 10 || *c % 10 != 0) {
        bail!("--classes takes election timeouts in ms that are multiples of 10 (e.g. 1000,250)");
    }
    // Steady state on the default tuning of each: 100 ms heartbeat, 1 s election timeout.
    eprintln!("steady state: Umbra");
    let umbra_steady = steady(
        &umbra::UmbraCluster::launch(100, ELECTION_TICKS).await?,
        &args,
    )
    .await?;
    eprintln!("steady state: etcd");
    let etcd_steady = steady(
        &etcd::EtcdCluster::launch(args.etcd.clone(), 100, 1000)?,
        &args,
    )
    .await?;
    let mut classes = Vec::new();
    for &election_ms in &args.classes {
        let tick_ms = election_ms / ELECTION_TICKS as u64;
        let mut umbra = umbra::UmbraCluster::launch(tick_ms, ELECTION_TICKS).await?;
        let umbra_times = failover(
            &mut umbra,
            &format!("umbra {election_ms} ms"),
            args.kills,
            args.value_bytes,
        )
        .await?;
        drop(umbra);
        let mut etcd = etcd::EtcdCluster::launch(args.etcd.clone(), tick_ms, election_ms)?;
        let etcd_times = failover(
            &mut etcd,
            &format!("etcd {election_ms} ms"),
            args.kills,
            args.value_bytes,
        )
        .await?;
        drop(etcd);
        classes.push(Class {
            election_ms,
            umbra: umbra_times,
            etcd: etcd_times,
        });
    }

    println!(
        "3 nodes each on loopback, fsync on, {} B values; Umbra over QUIC + mTLS, etcd over its HTTP JSON gateway",
        args.value_bytes
    );
    println!("| | Umbra | etcd |");
    println!("|---|---|---|");
    println!(
        "| 1 client, sequential, {} puts: p50 / p99 | {:.2} / {:.2} ms | {:.2} / {:.2} ms |",
        args.latency_puts,
        ms(&umbra_steady.latency, 0.5),
        ms(&umbra_steady.latency, 0.99),
        ms(&etcd_steady.latency, 0.5),
        ms(&etcd_steady.latency, 0.99)
    );
    println!(
        "| {} clients, {} s: commits/s (p50) | {:.0} ({:.2} ms) | {:.0} ({:.2} ms) |",
        args.clients,
        args.throughput_secs,
        umbra_steady.commits_per_sec,
        ms(&umbra_steady.under_load, 0.5),
        etcd_steady.commits_per_sec,
        ms(&etcd_steady.under_load, 0.5)
    );
    for class in &classes {
        println!(
            "| failover, election timeout {} ms, {} kills: p50 / p99 | {:.0} / {:.0} ms | {:.0} / {:.0} ms |",
            class.election_ms,
            args.kills,
            ms(&class.umbra, 0.5),
            ms(&class.umbra, 0.99),
            ms(&class.etcd, 0.5),
            ms(&class.etcd, 0.99)
        );
    }
    let failover: Vec<_> = classes
        .iter()
        .map(|c| {
            json!({
                "election_timeout_ms": c.election_ms,
                "kills": args.kills,
                "umbra_failover_p50_ms": ms(&c.umbra, 0.5),
                "umbra_failover_p99_ms": ms(&c.umbra, 0.99),
                "umbra_failover_max_ms": c.umbra.max() as f64 / 1000.0,
                "etcd_failover_p50_ms": ms(&c.etcd, 0.5),
                "etcd_failover_p99_ms": ms(&c.etcd, 0.99),
                "etcd_failover_max_ms": c.etcd.max() as f64 / 1000.0,
            })
        })
        .collect();
    println!(
        "{}",
        json!({
            "value_bytes": args.value_bytes,
            "latency_puts": args.latency_puts,
            "umbra_commit_p50_ms": ms(&umbra_steady.latency, 0.5),
            "umbra_commit_p99_ms": ms(&umbra_steady.latency, 0.99),
            "etcd_commit_p50_ms": ms(&etcd_steady.latency, 0.5),
            "etcd_commit_p99_ms": ms(&etcd_steady.latency, 0.99),
            "clients": args.clients,
            "umbra_commits_per_sec": umbra_steady.commits_per_sec.round(),
            "etcd_commits_per_sec": etcd_steady.commits_per_sec.round(),
            "umbra_under_load_p50_ms": ms(&umbra_steady.under_load, 0.5),
            "etcd_under_load_p50_ms": ms(&etcd_steady.under_load, 0.5),
            "failover": failover,
        })
    );
    Ok(())
}
