//! The orchestrator process: a Raft member replicating the orchestrator state, with the
//! operator API, the agent gateway, the embedded DNS server and (while it leads) the migration
//! executor, as its `node.toml` says. `umbra-orchestrator --config node.toml`. This file only
//! parses arguments, sets up logging, waits for SIGTERM/Ctrl-C or a fatal Raft error and
//! shuts down in order; the wiring lives in `umbra_orchestrator::node`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use umbra_orchestrator::node::{self, NodeConfig, NodeEnvironment};

/// How long a SIGTERM'd node waits for its Raft driver to close the log.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Log filter when `RUST_LOG` is unset. hickory's server logs every DNS query at info, which
/// under a traffic client's load would drown the node's own events.
const DEFAULT_LOG_FILTER: &str = "info,raft=warn,hickory_server=warn";

/// An Umbra orchestrator node.
#[derive(Debug, Parser)]
#[command(name = "umbra-orchestrator", version, about)]
struct Args {
    /// The node's TOML configuration (id, listen, data_dir, certs_dir, [[peer]], [raft],
    /// state_machine, [api], [gateway], [dns], [executor]).
    #[arg(long)]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    umbra_proto::exit::code(run().await)
}

async fn run() -> anyhow::Result<()> {
    umbra_proto::logs::init(DEFAULT_LOG_FILTER);
    let args = Args::parse();
    let config = NodeConfig::load(&args.config)
        .with_context(|| format!("reading the node config {}", args.config.display()))?;
    let running = node::start(config, NodeEnvironment::default()).await?;
    let mut status = running.raft.watch_status();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = terminate.recv() => Ok(()),
        failure = async {
            loop {
                if let Some(failure) = status.borrow_and_update().failure.clone() {
                    return failure;
                }
                if status.changed().await.is_err() {
                    return "raft node stopped".to_owned();
                }
            }
        } => Err(anyhow::anyhow!("raft node failed: {failure}")),
    };
    tracing::info!("shutting down");
    running.shutdown();
    // Services first (the executor stands down, DNS and API stop answering), then the log.
    running.services_stopped().await;
    // Let the driver close the log cleanly; everything acknowledged is already fsynced, so
    // giving up after the grace period loses nothing.
    if tokio::time::timeout(SHUTDOWN_GRACE, running.raft.stopped())
        .await
        .is_err()
    {
        tracing::warn!(
            ?SHUTDOWN_GRACE,
            "raft driver did not stop in time; exiting anyway"
        );
    }
    outcome
}
