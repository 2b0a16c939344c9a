//! `umbra kv put|get`: poke a running cluster's replicated key-value store over QUIC with an
//! operator certificate. A thin shell over `umbra_orchestrator::node::StoreClient`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use umbra_consensus::kv::{KvAnswer, KvCommand, KvQuery};
use umbra_orchestrator::node::StoreClient;
use umbra_proto::{Credentials, Identity, Role};

/// Arguments of `umbra kv`.
#[derive(Debug, clap::Args)]
pub struct KvArgs {
    #[command(subcommand)]
    command: KvCommandArgs,
    /// Address of any node (QUIC, host:port); repeat or comma-separate for several.
    #[arg(long = "node", value_delimiter = ',', required = true, global = true)]
    nodes: Vec<SocketAddr>,
    /// Directory written by `umbra certs init`.
    #[arg(long, global = true)]
    certs: Option<PathBuf>,
    /// Operator name whose certificate to use (`operator-<name>.pem` in --certs).
    #[arg(long = "as", default_value = "admin", global = true)]
    operator: String,
}

#[derive(Debug, clap::Subcommand)]
enum KvCommandArgs {
    /// Write KEY = VALUE through the leader and wait until it is applied.
    Put { key: String, value: String },
    /// Read KEY linearizably (through the leader).
    Get { key: String },
    /// Delete KEY.
    Delete { key: String },
}

pub fn run(args: KvArgs) -> anyhow::Result<()> {
    let certs = args
        .certs
        .context("--certs DIR is required: the directory written by `umbra certs init`")?;
    let identity = Identity::new(Role::Operator, args.operator.clone())?;
    let credentials = Credentials::load(&certs, &identity).with_context(|| {
        format!(
            "loading {identity}'s certificate from {} (issue one with `umbra certs add --dir {} --role operator --id {}`)",
            certs.display(),
            certs.display(),
            args.operator
        )
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut client = StoreClient::new(&credentials, args.nodes)?;
        let answer = match args.command {
            KvCommandArgs::Put { key, value } => {
                client
                    .propose(
                        KvCommand::Put {
                            key,
                            value: value.into_bytes(),
                        }
                        .encode(),
                    )
                    .await?
            }
            KvCommandArgs::Delete { key } => {
                client.propose(KvCommand::Delete { key }.encode()).await?
            }
            KvCommandArgs::Get { key } => client.read(KvQuery::Get { key }.encode()).await?,
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
