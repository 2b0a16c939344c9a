//! The orchestrator process: a Raft member serving the replicated store (and, later, the
//! operator API and the agent gateway). `umbra-orchestrator --config node.toml`. This file
//! only parses arguments, sets up logging and waits for a signal; the wiring lives in
//! `umbra_orchestrator::node`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use umbra_orchestrator::node::{self, NodeConfig};

/// An Umbra orchestrator node.
#[derive(Debug, Parser)]
#[command(name = "umbra-orchestrator", version, about)]
struct Args {
    /// The node's TOML configuration (id, listen, data_dir, certs_dir, [[peer]], [raft]).
    #[arg(long)]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,raft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = NodeConfig::load(&args.config)
        .with_context(|| format!("reading the node config {}", args.config.display()))?;
    let running = node::start(config).await?;
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
    outcome
}
