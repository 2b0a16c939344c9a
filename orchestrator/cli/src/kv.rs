//! `umbra kv put|get`: poke a running cluster's replicated key-value store over QUIC with an
//! operator certificate. A thin shell over `umbra_orchestrator::store::StoreClient`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use umbra_consensus::kv::{KvAnswer, KvCommand, KvQuery};
use umbra_orchestrator::store::StoreClient;
use umbra_proto::{Credentials, Identity, Role};

/// Arguments of `umbra kv`.
#[derive(Debug, clap::Args)]
pub struct KvArgs {
    #[command(subcommand)]
    command: KvCommandArgs,
}

/// Which cluster to talk to, and as whom (`umbra kv`, `umbra member`).
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// Address of any node (QUIC, host:port); repeat or comma-separate for several.
    #[arg(long = "node", value_delimiter = ',', required = true)]
    nodes: Vec<SocketAddr>,
    /// Directory written by `umbra certs init`.
    #[arg(long)]
    certs: Option<PathBuf>,
    /// Operator name whose certificate to use (`operator-<name>.pem` in --certs).
    #[arg(long = "as", default_value = "admin")]
    operator: String,
}

impl Target {
    /// A store client for these nodes with the operator's certificate, and a runtime to drive
    /// it (the CLI is synchronous).
    pub(crate) fn client(self) -> anyhow::Result<(tokio::runtime::Runtime, StoreClient)> {
        let certs = self
            .certs
            .context("--certs DIR is required: the directory written by `umbra certs init`")?;
        let identity = Identity::new(Role::Operator, self.operator)?;
        let credentials = Credentials::load(&certs, &identity).with_context(|| {
            format!("loading {identity}'s certificate from {}", certs.display())
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // The client's endpoint binds a socket, which needs the runtime entered.
        let client = {
            let _entered = runtime.enter();
            StoreClient::new(&credentials, self.nodes)?
        };
        Ok((runtime, client))
    }
}

#[derive(Debug, clap::Subcommand)]
enum KvCommandArgs {
    /// Write KEY = VALUE through the leader and wait until it is applied.
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        target: Target,
    },
    /// Read KEY linearizably (through the leader).
    Get {
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete KEY.
    Delete {
        key: String,
        #[command(flatten)]
        target: Target,
    },
}

enum Request {
    Propose(Vec<u8>),
    Read(Vec<u8>),
}

pub fn run(args: KvArgs) -> anyhow::Result<()> {
    let (target, request) = match args.command {
        KvCommandArgs::Put { key, value, target } => (
            target,
            Request::Propose(
                KvCommand::Put {
                    key,
                    value: value.into_bytes(),
                }
                .encode(),
            ),
        ),
        KvCommandArgs::Delete { key, target } => {
            (target, Request::Propose(KvCommand::Delete { key }.encode()))
        }
        KvCommandArgs::Get { key, target } => {
            (target, Request::Read(KvQuery::Get { key }.encode()))
        }
    };
    let (runtime, mut client) = target.client()?;
    runtime.block_on(async move {
        let answer = match request {
            Request::Propose(command) => client.propose(command).await?,
            Request::Read(query) => client.read(query).await?,
        };
        match KvAnswer::decode(&answer).context("decoding the node's answer")? {
            KvAnswer::Written { index, previous } => {
                println!(
                    "applied at log index {index} (previous value: {})",
                    previous
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                        .unwrap_or_else(|| "none".into())
                );
            }
            KvAnswer::Value(Some(value)) => println!("{}", String::from_utf8_lossy(&value)),
            KvAnswer::Value(None) => anyhow::bail!("no such key"),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
        anyhow::Ok(())
    })
}
