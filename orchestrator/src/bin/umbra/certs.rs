//! `umbra certs`: issue a cluster's CA and certificates (`init`), or more members from an
//! existing CA (`add`). A thin shell over `umbra_proto::certs`; it must not hold issuing
//! logic of its own.

use std::path::PathBuf;

use anyhow::Context;
use umbra_proto::certs::{self, DEFAULT_ORCHESTRATORS, Layout};
use umbra_proto::{Identity, Role};

/// Arguments of `umbra certs`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CertsCommand {
    /// Create a new cluster CA and certificates for every member of a layout.
    Init {
        /// Directory to write ca.pem, ca.key and <role>-<id>.pem/.key into.
        #[arg(long)]
        out: PathBuf,
        /// Number of orchestrators (node ids 1..=N).
        #[arg(long, default_value_t = DEFAULT_ORCHESTRATORS)]
        orchestrators: u64,
        /// Agent regions, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "us-east,eu-west,ap-south"
        )]
        regions: Vec<String>,
        /// Operator names, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "admin")]
        operators: Vec<String>,
    },
    /// Issue certificates for more members from the CA in an existing directory.
    Add {
        /// Directory holding ca.pem and ca.key (written by `umbra certs init`).
        #[arg(long)]
        dir: PathBuf,
        /// Role of the new member: orchestrator, agent or operator.
        #[arg(long)]
        role: String,
        /// Node id (orchestrator), region (agent) or name (operator); repeat or comma-separate.
        #[arg(long = "id", value_delimiter = ',', required = true)]
        ids: Vec<String>,
    },
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let issued = match args.command {
        CertsCommand::Init {
            out,
            orchestrators,
            regions,
            operators,
        } => {
            let layout = Layout {
                orchestrators,
                regions: regions.into_iter().filter(|r| !r.is_empty()).collect(),
                operators: operators.into_iter().filter(|o| !o.is_empty()).collect(),
            };
            certs::init(&layout, &out)
                .with_context(|| format!("issuing certificates into {}", out.display()))?
        }
        CertsCommand::Add { dir, role, ids } => {
            let role = Role::parse(&role).with_context(|| {
                format!("unknown role {role:?}: use orchestrator, agent or operator")
            })?;
            let identities = ids
                .into_iter()
                .map(|id| Identity::new(role, id))
                .collect::<Result<Vec<_>, _>>()?;
            certs::add(&dir, &identities)
                .with_context(|| format!("issuing certificates from the CA in {}", dir.display()))?
        }
    };
    println!("CA certificate: {}", issued.ca_cert.display());
    for (identity, cert, key) in &issued.members {
        println!(
            "{identity}: {} (key {}, mode 0600)",
            cert.display(),
            key.display()
        );
    }
    Ok(())
}
