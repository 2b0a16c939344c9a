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
    if let Some(token) = &issued.api_token {
        println!(
            "operator API token: {} (mode 0600): name it in the nodes' [api] token_file; umbra reads it from --certs",
            token.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use umbra_proto::Credentials;

    /// `umbra certs ...` as the real CLI nests it.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        certs: CertsArgs,
    }

    fn run_cli(args: &[&str]) -> anyhow::Result<()> {
        run(Cli::try_parse_from(std::iter::once("certs").chain(args.iter().copied()))?.certs)
    }

    #[test]
    fn init_then_add_write_loadable_members() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("certs");
        let out_str = out.to_str().context("utf-8 temp path")?;
        run_cli(&[
            "init",
            "--out",
            out_str,
            "--orchestrators",
            "2",
            "--regions",
            "eu-west,ap-south",
            "--operators",
            "admin",
        ])?;
        for identity in [
            Identity::orchestrator(1),
            Identity::orchestrator(2),
            Identity::new(Role::Agent, "eu-west")?,
            Identity::new(Role::Agent, "ap-south")?,
            Identity::new(Role::Operator, "admin")?,
        ] {
            Credentials::load(&out, &identity)?;
        }
        assert!(!out.join("orchestrator-3.pem").exists());
        // The operator API token: secret, and what the API accepts.
        let token = out.join(certs::API_TOKEN_FILE);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&token)?.permissions().mode() & 0o777,
            0o600
        );
        umbra_orchestrator::api::BearerToken::load(&token)?;
        assert!(!out.join("agent-us-east.pem").exists());

        run_cli(&[
            "add",
            "--dir",
            out_str,
            "--role",
            "orchestrator",
            "--id",
            "3",
        ])?;
        Credentials::load(&out, &Identity::orchestrator(3))?;

        let again = run_cli(&["init", "--out", out_str]).expect_err("CA exists");
        assert!(
            format!("{again:#}").contains("refusing to replace"),
            "{again:#}"
        );
        let bad_role = run_cli(&["add", "--dir", out_str, "--role", "king", "--id", "1"])
            .expect_err("unknown role");
        assert!(
            bad_role
                .to_string()
                .contains("orchestrator, agent or operator")
        );
        Ok(())
    }
}
