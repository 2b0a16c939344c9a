//! `umbra certs`: issue a cluster's CA and certificates. Placeholder until `umbra-proto`
//! grows its certificate module; the proto owner replaces this file.

/// Arguments of `umbra certs`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {}

pub fn run(_args: CertsArgs) -> anyhow::Result<()> {
    anyhow::bail!("umbra certs is not built yet")
}
