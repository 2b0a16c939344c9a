//! A test cluster's secrets in its directory: the certificates `umbra certs init` would issue
//! for a layout, and an operator API token file, written once here for every test that starts
//! an API or a node.

use std::path::{Path, PathBuf};

use umbra_proto::certs::{self, Layout};

/// The operator API's bearer token in every test (long enough for the API's minimum).
pub const TEST_TOKEN: &str = "umbra-test-token-0123456789abcdef0123456789abcdef";

/// Where a test cluster's secrets are.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// The certificates directory (CA, orchestrators, agents, operators).
    pub certs_dir: PathBuf,
    /// A file holding [`TEST_TOKEN`] on one line.
    pub token_file: PathBuf,
}

/// Issues `layout`'s certificates into `dir/certs` and replaces the token `certs init` wrote
/// there (`certs/api-token`, where the CLI looks by default) with [`TEST_TOKEN`].
pub fn write_secrets(dir: &Path, layout: &Layout) -> anyhow::Result<Secrets> {
    let certs_dir = dir.join("certs");
    certs::init(layout, &certs_dir)?;
    let token_file = certs_dir.join(certs::API_TOKEN_FILE);
    std::fs::write(&token_file, format!("{TEST_TOKEN}\n"))?;
    Ok(Secrets {
        certs_dir,
        token_file,
    })
}
