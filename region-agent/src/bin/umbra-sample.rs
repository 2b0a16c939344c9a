//! The sample service: a small, honest HTTP key-value store used by the demo and the tests
//! (see `umbra_agent::sample` for the HTTP API). This file is only the command line: it must
//! stay stable, because the process provider, the Docker image and other helpers start it.
//!
//! ```text
//! umbra-sample --listen 127.0.0.1:0 --data-dir DIR [--port-file FILE]
//!              [--backing-latency-ms 30] [--cache-capacity 100000]
//!              [--fsync always|never] [--replica-of http://HOST:PORT] [--name NAME]
//!              [--postgres CONNINFO]
//! ```
//! `--postgres` keeps the data in the database `umbra_<name>` on that PostgreSQL server
//! (created if missing) and replicates with PostgreSQL's logical replication
//! (`umbra_agent::sample::postgres`).
//! `--name` (or `UMBRA_INSTANCE_ID`, which the agent's providers set) is stamped on every
//! write the instance accepts from a client, in its write-ahead log.
//! The first line on stdout is `umbra-sample listening on ADDR`; with `--port-file` the bound
//! port is also written (atomically, decimal, newline) to FILE once the service accepts
//! connections.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use umbra_agent::sample::wal::FsyncPolicy;
use umbra_agent::sample::{
    DEFAULT_BACKING_LATENCY_MS, DEFAULT_CACHE_CAPACITY, DEFAULT_MAX_VALUE_BYTES, SampleConfig,
    SampleServer,
};

#[derive(Parser, Debug)]
#[command(
    name = "umbra-sample",
    version,
    about = "Umbra's sample key-value service"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port (see --port-file).
    #[arg(long, default_value = "127.0.0.1:8080", env = "UMBRA_SAMPLE_LISTEN")]
    listen: SocketAddr,
    /// Directory for the write-ahead log and the mode file.
    #[arg(long, env = "UMBRA_SAMPLE_DATA_DIR")]
    data_dir: PathBuf,
    /// Write the bound port here once serving.
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Latency of a read whose key is not cached, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_BACKING_LATENCY_MS)]
    backing_latency_ms: u64,
    /// Keys the read cache holds.
    #[arg(long, default_value_t = DEFAULT_CACHE_CAPACITY)]
    cache_capacity: usize,
    /// When WAL appends are synced: always (before acknowledging; group commit) or never.
    #[arg(long, value_enum, default_value = "always")]
    fsync: FsyncPolicy,
    /// Largest accepted value in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_VALUE_BYTES)]
    max_value_bytes: usize,
    /// Start as a replica of this primary (base URL).
    #[arg(long)]
    replica_of: Option<String>,
    /// This instance's name, stamped on every write it accepts (default: the data directory).
    #[arg(long, env = "UMBRA_INSTANCE_ID")]
    name: Option<String>,
    /// Keep the data in PostgreSQL: the server's conninfo, such as
    /// "host=127.0.0.1 port=5432 user=postgres" (no password).
    #[arg(long, env = "UMBRA_SAMPLE_POSTGRES")]
    postgres: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    umbra_proto::exit::code(run().await)
}

async fn run() -> anyhow::Result<()> {
    umbra_proto::logs::init("info");
    let args = Args::parse();
    let mut config = SampleConfig::new(args.listen, args.data_dir);
    config.backing_latency_ms = args.backing_latency_ms;
    config.cache_capacity = args.cache_capacity;
    config.fsync = args.fsync;
    config.max_value_bytes = args.max_value_bytes;
    config.replica_of = args.replica_of;
    config.postgres = args.postgres;
    if let Some(name) = args.name {
        config.name = name;
    }
    let server = SampleServer::start(config).await?;
    let addr = server.local_addr();
    println!("umbra-sample listening on {addr}");
    if let Some(path) = &args.port_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", addr.port()))
            .with_context(|| format!("writing port file {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("writing port file {}", path.display()))?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
