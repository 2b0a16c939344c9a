//! The operator API over one in-memory store, as the API's and the CLI's tests start it: the
//! cluster's certificates and token in a temp dir, `api::serve` on a loopback port, and a
//! `MemoryReplicated` store the test can look into. Written once here for both.

use std::sync::Arc;

use anyhow::Context;
use umbra_orchestrator::api::{self, ApiConfig, RunningApi};
use umbra_orchestrator::state::Plan;
use umbra_orchestrator::store::MemoryReplicated;
use umbra_proto::certs::Layout;
use umbra_proto::{Credentials, Identity};
use umbra_testkit::{Secrets, write_secrets};

/// See the module docs. Dropping it shuts the API down and removes the temp dir.
pub struct MemoryApi {
    /// Holds the certificates, the token file and whatever the test writes.
    pub dir: tempfile::TempDir,
    /// The certificates (default layout) and the token file.
    pub secrets: Secrets,
    /// The running API.
    pub api: RunningApi,
    /// The store behind it.
    pub store: Arc<MemoryReplicated>,
    /// Where the API registered its metrics.
    pub registry: prometheus::Registry,
}

impl MemoryApi {
    /// Starts the API as orchestrator 1 of the default certificate layout.
    pub async fn start() -> anyhow::Result<MemoryApi> {
        let dir = tempfile::tempdir()?;
        let secrets = write_secrets(dir.path(), &Layout::default())?;
        let credentials = Credentials::load(&secrets.certs_dir, &Identity::orchestrator(1))?;
        let store = Arc::new(MemoryReplicated::new());
        let registry = prometheus::Registry::new();
        let config = ApiConfig::new(
            "127.0.0.1:0".parse().expect("an address"),
            secrets.token_file.clone(),
        );
        let api = api::serve(&config, &credentials, store.clone(), &registry)
            .await
            .context("starting the operator API")?;
        Ok(MemoryApi {
            dir,
            secrets,
            api,
            store,
            registry,
        })
    }

    /// The API's base URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.api.local_addr())
    }
}

impl Drop for MemoryApi {
    fn drop(&mut self) {
        self.api.shutdown();
    }
}

/// The example plan without its follow-the-sun schedule, for tests that create every
/// migration themselves.
pub fn plan_without_schedules() -> Plan {
    let mut plan = Plan::example();
    plan.schedules.clear();
    plan
}
