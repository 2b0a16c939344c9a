//! The region agent process.
//!
//! ```text
//! umbra-agent run --config agent.toml          # connect to the orchestrators and serve
//! umbra-agent front --listen ADDR --dir DIR    # the embedded region front (the agent starts it)
//! umbra-agent local --state-dir DIR [--provider process|docker] \
//!     [--provision a,b] [--activate a] [--pause a] [--resume a] [--stop a] [--remove a] \
//!     [--list] [--hold]
//! ```
//! `local` runs provider operations without orchestrators (for operators and tests); instances
//! outlive it, and the next agent on the same state directory adopts them. This file is only
//! argument handling: the work is in the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use umbra_agent::agent::config::{AgentConfig, ProviderSection, build_provider};
use umbra_agent::provider::{Operation, ProviderKind};

#[derive(Parser, Debug)]
#[command(name = "umbra-agent", version, about = "Umbra's region agent")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Connect to the orchestrators and execute their commands.
    Run {
        /// The agent configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Serve the region front (the embedded proxy) on `listen`, with the routing kept in
    /// `dir`. The agent starts it (`[front] kind = "embedded"`) and drives it through
    /// `dir/control.sock`; it outlives the agent.
    Front {
        /// Where clients reach the front.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The front's directory: its routing file and control socket.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run provider operations locally, in this order: provision, activate, pause, resume,
    /// stop, remove, then list.
    Local(Box<LocalArgs>),
}

#[derive(clap::Args, Debug)]
struct LocalArgs {
    /// Provider state directory (instance records and data).
    #[arg(long)]
    state_dir: PathBuf,
    /// `process` or `docker`.
    #[arg(long, default_value = "process")]
    provider: String,
    /// Sample binary for the process provider (default: next to this executable).
    #[arg(long)]
    sample_binary: Option<PathBuf>,
    /// Owner label for the docker provider.
    #[arg(long, default_value = "local")]
    owner: String,
    /// Backing latency of the sample instances, ms.
    #[arg(long, default_value_t = umbra_agent::sample::DEFAULT_BACKING_LATENCY_MS)]
    backing_latency_ms: u64,
    /// Instances to create (dormant), comma-separated.
    #[arg(long, value_delimiter = ',')]
    provision: Vec<String>,
    /// Instances to activate.
    #[arg(long, value_delimiter = ',')]
    activate: Vec<String>,
    /// Instances to pause.
    #[arg(long, value_delimiter = ',')]
    pause: Vec<String>,
    /// Instances to resume.
    #[arg(long, value_delimiter = ',')]
    resume: Vec<String>,
    /// Instances to stop.
    #[arg(long, value_delimiter = ',')]
    stop: Vec<String>,
    /// Instances to remove.
    #[arg(long, value_delimiter = ',')]
    remove: Vec<String>,
    /// Print every instance as JSON at the end.
    #[arg(long)]
    list: bool,
    /// Stay running afterwards (until killed); writes `local-ready` in the state directory.
    #[arg(long)]
    hold: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    umbra_proto::exit::code(run().await)
}

async fn run() -> anyhow::Result<()> {
    umbra_proto::logs::init("info");
    match Args::parse().command {
        Cmd::Run { config } => {
            let config = AgentConfig::load(&config)?;
            Ok(umbra_agent::agent::run(config).await?)
        }
        Cmd::Front { listen, dir } => {
            Ok(umbra_agent::agent::front::embedded::serve(listen, &dir).await?)
        }
        Cmd::Local(args) => {
            let LocalArgs {
                state_dir,
                provider,
                sample_binary,
                owner,
                backing_latency_ms,
                provision,
                activate,
                pause,
                resume,
                stop,
                remove,
                list,
                hold,
            } = *args;
            let kind: ProviderKind = provider.parse()?;
            let section = ProviderSection {
                kind: provider,
                backing_latency_ms,
                sample_binary,
                image: None,
                initial_limits: None,
                postgres: None,
            };
            let provider = build_provider(kind, &state_dir, &owner, &section).await?;
            if !provision.is_empty() {
                provider.provision(&provision).await?;
            }
            for (ids, op) in [
                (&activate, Operation::Activate),
                (&pause, Operation::Pause),
                (&resume, Operation::Resume),
                (&stop, Operation::Stop),
            ] {
                for id in ids {
                    let r = provider
                        .apply(id, op)
                        .await
                        .with_context(|| format!("{op:?} {id}"))?;
                    eprintln!("{id}: {:?} {:?}", r.state, r.transitions.last());
                }
            }
            for id in &remove {
                provider.remove(id).await?;
            }
            if list {
                println!("{}", serde_json::to_string_pretty(&provider.list().await)?);
            }
            if hold {
                std::fs::write(state_dir.join("local-ready"), b"ready\n")?;
                std::future::pending::<()>().await;
            }
            Ok(())
        }
    }
}
