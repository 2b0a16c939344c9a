//! What `umbra apply`, `migrate`, `status` and `rollback` share: the flags that reach the
//! operator API (`--api`, `--certs`, `--as`, `--token-file`, each also an environment
//! variable), building the HTTPS client, and printing answers as text or `--json`.
//!
//! It must not hold a subcommand's logic, and must not print the token.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use umbra_orchestrator::api::{ApiClient, BearerToken, ErrorBody};
use umbra_proto::{Credentials, Identity, Role};

/// How to reach the operator API.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The operator API of any orchestrator, e.g. https://127.0.0.1:7443.
    #[arg(long, env = "UMBRA_API")]
    pub api: String,
    /// Directory written by `umbra certs init` (holds ca.pem and operator-<name>.pem/.key).
    #[arg(long, env = "UMBRA_CERTS")]
    pub certs: PathBuf,
    /// Operator whose certificate to present (`operator-<name>.pem` in --certs).
    #[arg(long = "as", env = "UMBRA_OPERATOR", default_value = "admin")]
    pub operator: String,
    /// File holding the API's bearer token (one line); default: `api-token` in --certs, as
    /// `umbra certs init` writes it.
    #[arg(long, env = "UMBRA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print one JSON document (errors too: `{"error": "..."}`) instead of text.
    #[arg(long)]
    pub json: bool,
}

impl ApiArgs {
    /// The API client these flags describe.
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        let identity = Identity::new(Role::Operator, self.operator.clone())
            .with_context(|| format!("--as {:?}", self.operator))?;
        let credentials = Credentials::load(&self.certs, &identity).with_context(|| {
            format!(
                "loading {identity}'s certificate from {}",
                self.certs.display()
            )
        })?;
        let token = match &self.token_file {
            Some(file) => BearerToken::load(file)?,
            None => BearerToken::load(&self.certs.join(umbra_proto::certs::API_TOKEN_FILE))?,
        };
        Ok(ApiClient::new(&self.api, &credentials, token)?)
    }

    /// Runs `work` on a small runtime; with `--json`, a failure is also printed to stdout
    /// as `{"error": "..."}` so scripts read one JSON document either way.
    pub fn run<F, T>(&self, work: F) -> anyhow::Result<T>
    where
        F: AsyncFnOnce(ApiClient) -> anyhow::Result<T>,
    {
        let outcome = self.client().and_then(|client| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(work(client))
        });
        if let Err(error) = &outcome
            && self.json
        {
            print_json(&ErrorBody {
                error: format!("{error:#}"),
            })?;
        }
        outcome
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Unix ms as RFC 3339 (UTC, seconds).
pub fn rfc3339(ms: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}
