//! The orchestrator node's configuration file (`node.toml`): who this node is, where it
//! listens, where it keeps its log, its certificates, its peers, Raft tuning, which state
//! machine it replicates, and the services it runs on top (`[api]`, `[gateway]`, `[dns]`,
//! `[executor]`). Parsed with serde at this edge and checked by `validate()`; nothing else in
//! the node reads the file. It must not start anything: `node::server` and `node::services` do.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::ApiConfig;
use crate::executor::ExecutorConfig;
use crate::gateway::GatewayConfig;
use umbra_dns::embedded::EmbeddedDnsConfig;
use umbra_dns::rfc2136::{Rfc2136Config, Rfc2136Provider, TsigKey};

/// Which state machine the Raft group replicates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateMachineKind {
    /// `state::OrchestratorState`: regions, services, migrations, DNS weights. What a
    /// deployment runs; the only mode with the API, gateway, DNS and executor.
    #[default]
    Orchestrator,
    /// The key-value machine of `umbra-consensus`: the Raft test and benchmark mode (`umbra
    /// kv`, the Raft acceptance tests and bench). Runs no `[api]`, `[dns]` or `[executor]`.
    Kv,
}

/// `[gateway]`: the agent gateway on this node's QUIC endpoint (agents open streams of kind
/// `Agent` on the same port as Raft). Always on in orchestrator mode; this tunes its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Commands queued per agent stream.
    #[serde(default = "default_command_queue")]
    pub command_queue: usize,
    /// How long an agent has to send its hello, ms.
    #[serde(default = "default_hello_timeout_ms")]
    pub hello_timeout_ms: u64,
}

fn default_command_queue() -> usize {
    crate::gateway::DEFAULT_COMMAND_QUEUE
}
fn default_hello_timeout_ms() -> u64 {
    crate::gateway::DEFAULT_HELLO_TIMEOUT.as_millis() as u64
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            command_queue: default_command_queue(),
            hello_timeout_ms: default_hello_timeout_ms(),
        }
    }
}

impl GatewaySection {
    /// The gateway's config for node `id`; agents are pointed at the peers' QUIC addresses.
    pub fn gateway_config(&self, id: u64, peers: &[PeerConfig]) -> GatewayConfig {
        GatewayConfig {
            command_queue: self.command_queue,
            hello_timeout: std::time::Duration::from_millis(self.hello_timeout_ms),
            ..GatewayConfig::new(id, peers.iter().map(|p| (p.id, p.address)).collect())
        }
    }
}

/// Which authority serves the service zone (`[dns] provider`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsProviderKind {
    /// Every orchestrator runs its own authoritative server (hickory-server) on `listen`,
    /// answering one address per query by weight; all of them serve the replicated weights.
    #[default]
    Embedded,
    /// A standard server (BIND 9) at `server` is the zone's only authority; the leader sends
    /// it RFC 2136 updates signed with the TSIG key in `tsig_key_file`, and this orchestrator
    /// serves no DNS itself.
    Rfc2136,
}

/// `[dns]`: who answers for the service zone, kept equal to the replicated DNS weights.
///
/// ```toml
/// [dns]                       # the default provider
/// listen = "127.0.0.1:5353"
/// zone = "umbra.test."
/// secondaries = ["127.0.0.1:5301"]                   # optional: BIND secondaries to NOTIFY
/// transfer_key_file = "/etc/umbra/umbra-xfr.key"     # required with secondaries
///
/// [dns]                       # BIND as the authority
/// provider = "rfc2136"
/// server = "127.0.0.1:53"
/// zone = "umbra.test."
/// tsig_key_file = "/etc/umbra/umbra-update.key"   # what `tsig-keygen` writes
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// `embedded` (the default) or `rfc2136`.
    #[serde(default)]
    pub provider: DnsProviderKind,
    /// Embedded only: UDP and TCP address (one port for both; port 0 picks a free one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The zone served, e.g. `umbra.test.`; services' hostnames must lie inside it.
    pub zone: String,
    /// rfc2136 only: the primary server that takes the updates (address:port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<SocketAddr>,
    /// rfc2136 only: a BIND key file declaring one key (`tsig-keygen -a hmac-sha256 NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsig_key_file: Option<PathBuf>,
    /// Embedded only: standard secondaries (BIND, `IP:PORT`) sent NOTIFY on every change of
    /// the zone; they copy it by AXFR/IXFR and keep answering while no orchestrator is up.
    /// Needs `transfer_key_file`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secondaries: Vec<SocketAddr>,
    /// Embedded only: a BIND key file (the `tsig_key_file` format); zone transfers are served
    /// only to requests signed with this key, and NOTIFY is signed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_key_file: Option<PathBuf>,
}

impl DnsSection {
    /// An embedded server for `zone` on `listen`.
    pub fn embedded(listen: SocketAddr, zone: impl Into<String>) -> Self {
        Self {
            provider: DnsProviderKind::Embedded,
            listen: Some(listen),
            zone: zone.into(),
            server: None,
            tsig_key_file: None,
            secondaries: Vec::new(),
            transfer_key_file: None,
        }
    }

    /// The embedded server's settings (listen, zone, secondaries and the transfer key read
    /// from `transfer_key_file`); an error says what to write. `Ok(None)` for rfc2136.
    pub fn embedded_config(&self) -> Result<Option<EmbeddedDnsConfig>, NodeConfigError> {
        let fix = |reason: String| NodeConfigError::Dns(reason);
        if self.rfc2136_config()?.is_some() {
            return Ok(None);
        }
        let listen = self
            .listen
            .ok_or_else(|| fix("the embedded provider needs listen".into()))?;
        let mut config = EmbeddedDnsConfig::new(self.zone.clone(), listen);
        match (&self.transfer_key_file, self.secondaries.is_empty()) {
            (None, false) => {
                return Err(fix(
                    "secondaries need transfer_key_file = \"PATH\", a BIND key file as \
                     `tsig-keygen -a hmac-sha256 NAME` writes it: the secondaries sign their \
                     transfer requests with it (BIND: `primaries { IP port PORT key NAME; }`)"
                        .into(),
                ));
            }
            (None, true) => {}
            (Some(path), _) => {
                let key = TsigKey::read_bind_key_file(path)
                    .map_err(|e| fix(format!("transfer_key_file: {e}")))?;
                config = config.with_secondaries(self.secondaries.clone(), key);
            }
        }
        config.validate().map_err(|e| NodeConfigError::DnsZone {
            zone: self.zone.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(config))
    }

    /// `zone` on the standard server `server`, updated with the key in `tsig_key_file`.
    pub fn rfc2136(server: SocketAddr, zone: impl Into<String>, tsig_key_file: PathBuf) -> Self {
        Self {
            provider: DnsProviderKind::Rfc2136,
            listen: None,
            zone: zone.into(),
            server: Some(server),
            tsig_key_file: Some(tsig_key_file),
            secondaries: Vec::new(),
            transfer_key_file: None,
        }
    }

    /// The update provider's settings with the key read from `tsig_key_file`; an error says
    /// what to write. `Ok(None)` for the embedded provider.
    pub fn rfc2136_config(&self) -> Result<Option<Rfc2136Config>, NodeConfigError> {
        let fix = |reason: String| NodeConfigError::Dns(reason);
        match self.provider {
            DnsProviderKind::Embedded => {
                if self.server.is_some() || self.tsig_key_file.is_some() {
                    return Err(fix(
                        "server and tsig_key_file are for provider = \"rfc2136\"; with the \
                         embedded provider write only listen and zone"
                            .into(),
                    ));
                }
                if self.listen.is_none() {
                    return Err(fix(
                        "the embedded provider needs listen = \"IP:PORT\", where this \
                         orchestrator answers DNS (or set provider = \"rfc2136\")"
                            .into(),
                    ));
                }
                Ok(None)
            }
            DnsProviderKind::Rfc2136 => {
                if !self.secondaries.is_empty() || self.transfer_key_file.is_some() {
                    return Err(fix(
                        "secondaries and transfer_key_file are for the embedded provider; \
                         with provider = \"rfc2136\" the standard server notifies its own \
                         secondaries (BIND: also-notify)"
                            .into(),
                    ));
                }
                if self.listen.is_some() {
                    return Err(fix(
                        "provider = \"rfc2136\" makes the server the zone's one authority, so \
                         this orchestrator serves no DNS: remove listen"
                            .into(),
                    ));
                }
                let Some(server) = self.server else {
                    return Err(fix(
                        "provider = \"rfc2136\" needs server = \"IP:PORT\", the primary server \
                         that takes updates for the zone"
                            .into(),
                    ));
                };
                let Some(path) = &self.tsig_key_file else {
                    return Err(fix(
                        "provider = \"rfc2136\" needs tsig_key_file = \"PATH\", a BIND key file \
                         as `tsig-keygen -a hmac-sha256 NAME` writes it (the server's \
                         allow-update must name that key)"
                            .into(),
                    ));
                };
                let key = TsigKey::read_bind_key_file(path).map_err(|e| fix(e.to_string()))?;
                let config = Rfc2136Config::new(server, self.zone.clone(), Some(key));
                // Checks the zone's name and the key's length.
                Rfc2136Provider::new(config.clone()).map_err(|e| fix(e.to_string()))?;
                Ok(Some(config))
            }
        }
    }
}

/// `[executor]`: the migration executor, which acts only while this node leads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSection {
    /// `false` keeps this node from ever executing migrations (it still votes and serves).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Round period, ms.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Longest wait for an agent command's outcome, ms.
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
    /// Longest retry delay of an agent command, ms.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Every orchestrator's DNS server (`[dns] listen` of each node), checked after each
    /// change of weights; empty: no verification. With `[dns] provider = "rfc2136"`, empty
    /// means the `[dns] server` (list it with its secondaries to check them too), and a
    /// cutover step counts only once they all serve its weights.
    #[serde(default)]
    pub dns_servers: Vec<SocketAddr>,
    /// How long every DNS server has to serve new weights, ms.
    #[serde(default = "default_dns_verify_timeout_ms")]
    pub dns_verify_timeout_ms: u64,
    /// Run follow-the-sun schedules.
    #[serde(default = "default_true")]
    pub schedules: bool,
    /// Demand history for sizing shadow pools: every `*.csv` here (long form
    /// `timestamp,service,region,value`). Unset: pools get the service's `min_instances`.
    #[serde(default)]
    pub demand_csv_dir: Option<PathBuf>,
    /// Slice width of that history, seconds.
    #[serde(default = "default_slice_secs")]
    pub demand_slice_secs: u32,
    /// How long a rolled-back migration's shadow instances are kept, out of the front, before
    /// they are stopped and removed, ms (0: at once).
    #[serde(default = "default_shadow_keep_ms")]
    pub shadow_keep_ms: u64,
    /// Size each service's serving pool from the demand forecast, warm and dormant (false: no
    /// forecast; every pool holds the service's `min_instances` warm, raised only by capacity
    /// claims and the load its front measured).
    #[serde(default = "default_true")]
    pub pools: bool,
    /// Slices in a row a smaller pool target must be asked for before the pool shrinks.
    #[serde(default = "default_shrink_after_slices")]
    pub pool_shrink_after_slices: u32,
    /// Smallest shrink worth making, as a fraction of the pool (0.1: 10 %).
    #[serde(default = "default_shrink_band")]
    pub pool_shrink_band: f64,
    /// A dormant instance older than this is removed and created afresh, seconds.
    #[serde(default = "default_max_dormant_age_secs")]
    pub max_dormant_age_secs: u64,
    /// How much earlier than its agent's measured activation and provisioning times a pool
    /// moves ahead of a slice, ms.
    #[serde(default = "default_pool_lead_margin_ms")]
    pub pool_lead_margin_ms: u64,
    /// New demand slices after which a pool's forecast is refitted in full (robust training,
    /// decomposition, every model) instead of incrementally; at least 1 (1: always in full).
    /// Unset: a quarter of a day of slices.
    #[serde(default)]
    pub forecast_full_refit_every_slices: Option<usize>,
    /// How far past its lead time (activation and provisioning) a pool's forecast reaches,
    /// seconds: a pool is forecast again once the one it holds no longer covers its lead time.
    #[serde(default = "default_pool_forecast_reach_secs")]
    pub pool_forecast_reach_secs: u64,
    /// How far this node's wall clock may be from most of its peers' before it stops
    /// executing and hands leadership over, ms (it plans cutovers by that clock; see
    /// `node::clock`).
    #[serde(default = "default_max_clock_offset_ms")]
    pub max_clock_offset_ms: u64,
}

fn default_true() -> bool {
    true
}
fn default_tick_ms() -> u64 {
    crate::executor::DEFAULT_TICK_MS
}
fn default_command_timeout_ms() -> u64 {
    crate::executor::DEFAULT_COMMAND_TIMEOUT_MS
}
fn default_retry_max_ms() -> u64 {
    crate::executor::DEFAULT_RETRY_MAX_MS
}
fn default_dns_verify_timeout_ms() -> u64 {
    crate::executor::DEFAULT_DNS_VERIFY_TIMEOUT_MS
}
fn default_shadow_keep_ms() -> u64 {
    crate::executor::DEFAULT_SHADOW_KEEP_MS
}
fn default_shrink_after_slices() -> u32 {
    umbra_forecast::sizing::DEFAULT_HYSTERESIS.shrink_after_slices
}
fn default_shrink_band() -> f64 {
    umbra_forecast::sizing::DEFAULT_HYSTERESIS.shrink_band
}
fn default_max_dormant_age_secs() -> u64 {
    umbra_forecast::sizing::DEFAULT_LIMITS.max_dormant_age_secs
}
fn default_pool_lead_margin_ms() -> u64 {
    crate::executor::pools::DEFAULT_LEAD_MARGIN_MS
}
fn default_pool_forecast_reach_secs() -> u64 {
    crate::executor::DEFAULT_POOL_FORECAST_REACH_SECS
}
fn default_max_clock_offset_ms() -> u64 {
    super::clock::DEFAULT_MAX_CLOCK_OFFSET_MS
}
fn default_slice_secs() -> u32 {
    umbra_forecast::history::HistoryConfig::default().slice_secs
}

impl Default for ExecutorSection {
    fn default() -> Self {
        Self {
            enabled: true,
            tick_ms: default_tick_ms(),
            command_timeout_ms: default_command_timeout_ms(),
            retry_max_ms: default_retry_max_ms(),
            dns_servers: Vec::new(),
            dns_verify_timeout_ms: default_dns_verify_timeout_ms(),
            schedules: true,
            demand_csv_dir: None,
            demand_slice_secs: default_slice_secs(),
            shadow_keep_ms: default_shadow_keep_ms(),
            pools: true,
            pool_shrink_after_slices: default_shrink_after_slices(),
            pool_shrink_band: default_shrink_band(),
            max_dormant_age_secs: default_max_dormant_age_secs(),
            pool_lead_margin_ms: default_pool_lead_margin_ms(),
            forecast_full_refit_every_slices: None,
            pool_forecast_reach_secs: default_pool_forecast_reach_secs(),
            max_clock_offset_ms: default_max_clock_offset_ms(),
        }
    }
}

impl ExecutorSection {
    /// The executor's settings (the rest at the executor's defaults).
    pub fn executor_config(&self) -> ExecutorConfig {
        ExecutorConfig {
            tick_ms: self.tick_ms,
            command_timeout_ms: self.command_timeout_ms,
            retry_max_ms: self.retry_max_ms,
            retry_min_ms: ExecutorConfig::default()
                .retry_min_ms
                .min(self.retry_max_ms),
            dns_servers: self.dns_servers.clone(),
            dns_verify_timeout_ms: self.dns_verify_timeout_ms,
            schedules: self.schedules,
            shadow_keep_ms: self.shadow_keep_ms,
            pools: self.pools,
            pool_shrink_after_slices: self.pool_shrink_after_slices,
            pool_shrink_band: self.pool_shrink_band,
            max_dormant_age_secs: self.max_dormant_age_secs,
            pool_lead_margin_ms: self.pool_lead_margin_ms,
            forecast_full_refit_every_slices: self.forecast_full_refit_every_slices,
            pool_forecast_reach_secs: self.pool_forecast_reach_secs,
            ..ExecutorConfig::default()
        }
    }

    /// How the CSV history becomes slices.
    pub fn history_config(&self) -> umbra_forecast::history::HistoryConfig {
        umbra_forecast::history::HistoryConfig {
            slice_secs: self.demand_slice_secs,
            ..umbra_forecast::history::HistoryConfig::default()
        }
    }
}

/// One `[[peer]]` entry: a founding member of the Raft group (this node included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    pub address: SocketAddr,
}

/// The whole `node.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Raft node id; the certificate `orchestrator-<id>.pem` in `certs_dir` must match.
    pub id: u64,
    /// QUIC address for peers and clients.
    pub listen: SocketAddr,
    /// Where the Raft log and snapshots live.
    pub data_dir: PathBuf,
    /// Directory written by `umbra certs init` (holds `ca.pem`, `orchestrator-<id>.pem/.key`).
    pub certs_dir: PathBuf,
    /// Loopback HTTP address serving `/metrics` (Prometheus text) and `/status` (JSON).
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// `true` for a node added to a running cluster with `add_node`: it starts with no
    /// configuration and learns it from the leader. Founding members leave it `false`.
    #[serde(default)]
    pub join: bool,
    /// Founding members (including this node) with their QUIC addresses.
    #[serde(rename = "peer", default)]
    pub peers: Vec<PeerConfig>,
    /// Serves `POST /faults/cut` and `POST /faults/heal` on the admin endpoint, which drop
    /// this node's Raft traffic with chosen peers (tests and drills). Off unless set.
    #[serde(default)]
    pub fault_injection: bool,
    /// What the Raft group replicates: `orchestrator` (default) or `kv` (Raft tests/bench).
    #[serde(default)]
    pub state_machine: StateMachineKind,
    /// Raft tuning; every field optional.
    #[serde(default)]
    pub raft: umbra_consensus::Config,
    /// The operator API (HTTPS); none unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiConfig>,
    /// Agent gateway limits (the gateway runs in orchestrator mode).
    #[serde(default)]
    pub gateway: GatewaySection,
    /// Who answers for the service zone (embedded servers or a standard server); none unless
    /// set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsSection>,
    /// The migration executor (orchestrator mode; runs on the leader only).
    #[serde(default)]
    pub executor: ExecutorSection,
}

/// A configuration that cannot work, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid node config: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("id must be 1 or more (it is the Raft node id)")]
    ZeroId,
    #[error(
        "[executor] max_clock_offset_ms must be greater than zero; leave it out for the default of {} ms",
        super::clock::DEFAULT_MAX_CLOCK_OFFSET_MS
    )]
    ZeroClockOffset,
    #[error(
        "node {id} is not among the [[peer]] entries; list every founding member, this node included, or set join = true for a node added later"
    )]
    SelfNotListed { id: u64 },
    #[error("[[peer]] id {0} is listed twice")]
    DuplicatePeer(u64),
    #[error("[[peer]] entry for node {id} says {listed} but listen is {listen}; they must match")]
    AddressMismatch {
        id: u64,
        listed: SocketAddr,
        listen: SocketAddr,
    },
    #[error(
        "admin_listen {0} must be a loopback address: /status and /metrics are unauthenticated"
    )]
    AdminNotLoopback(SocketAddr),
    #[error("fault_injection = true needs admin_listen: the faults are set through it")]
    FaultsWithoutAdmin,
    #[error("certs_dir {0} has no ca.pem; run `umbra certs init --out {0}` first")]
    NoCertificates(PathBuf),
    #[error(transparent)]
    Raft(#[from] umbra_consensus::ConfigError),
    #[error(
        "[{0}] needs state_machine = \"orchestrator\"; the kv machine (Raft tests and bench) runs no {0}"
    )]
    SectionNeedsOrchestrator(&'static str),
    #[error("[api]: {0}")]
    Api(#[from] crate::api::ApiConfigError),
    #[error("[gateway]: {0}")]
    Gateway(#[from] crate::gateway::GatewayError),
    #[error("[dns]: {0}")]
    Dns(String),
    #[error("[dns] zone {zone:?}: {reason}")]
    DnsZone { zone: String, reason: String },
    #[error("[dns] listen {listen} and [api] listen {api} are one address; give each its own port")]
    DnsApiClash { listen: SocketAddr, api: SocketAddr },
    #[error("[executor]: {0}")]
    Executor(#[from] crate::executor::ExecutorConfigError),
    #[error("[executor] dns_servers lists {0} twice; list each orchestrator's [dns] listen once")]
    DuplicateDnsServer(SocketAddr),
    #[error("[executor] demand_csv_dir {0} is not a directory; create it or leave the key out")]
    DemandDir(PathBuf),
    #[error("[executor] demand_slice_secs: {0}")]
    DemandSlice(String),
}

impl NodeConfig {
    /// Reads and validates a `node.toml`.
    pub fn load(path: &Path) -> Result<Self, NodeConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| NodeConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: NodeConfig =
            toml::from_str(&text).map_err(|source| NodeConfigError::Parse {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values fit together.
    pub fn validate(&self) -> Result<(), NodeConfigError> {
        if self.id == 0 {
            return Err(NodeConfigError::ZeroId);
        }
        let mut seen = BTreeSet::new();
        for peer in &self.peers {
            if !seen.insert(peer.id) {
                return Err(NodeConfigError::DuplicatePeer(peer.id));
            }
            if peer.id == self.id && peer.address != self.listen {
                return Err(NodeConfigError::AddressMismatch {
                    id: peer.id,
                    listed: peer.address,
                    listen: self.listen,
                });
            }
        }
        if !self.join && !seen.contains(&self.id) {
            return Err(NodeConfigError::SelfNotListed { id: self.id });
        }
        if let Some(admin) = self.admin_listen
            && !admin.ip().is_loopback()
        {
            return Err(NodeConfigError::AdminNotLoopback(admin));
        }
        if self.fault_injection && self.admin_listen.is_none() {
            return Err(NodeConfigError::FaultsWithoutAdmin);
        }
        if !self.certs_dir.join(umbra_proto::tls::CA_CERT_FILE).exists() {
            return Err(NodeConfigError::NoCertificates(self.certs_dir.clone()));
        }
        self.raft.validate()?;
        self.validate_services()
    }

    fn validate_services(&self) -> Result<(), NodeConfigError> {
        if self.state_machine == StateMachineKind::Kv {
            if self.api.is_some() {
                return Err(NodeConfigError::SectionNeedsOrchestrator("api"));
            }
            if self.dns.is_some() {
                return Err(NodeConfigError::SectionNeedsOrchestrator("dns"));
            }
            return Ok(());
        }
        if let Some(api) = &self.api {
            api.validate()?;
        }
        self.gateway
            .gateway_config(self.id, &self.peers)
            .validate()?;
        if let Some(dns) = &self.dns
            && let Some(embedded) = dns.embedded_config()?
        {
            let listen = embedded.listen;
            if let Some(api) = &self.api
                && api.listen == listen
                && api.listen.port() != 0
            {
                return Err(NodeConfigError::DnsApiClash {
                    listen,
                    api: api.listen,
                });
            }
        }
        self.executor.executor_config().validate()?;
        if self.executor.max_clock_offset_ms == 0 {
            return Err(NodeConfigError::ZeroClockOffset);
        }
        let mut servers = BTreeSet::new();
        for server in &self.executor.dns_servers {
            if !servers.insert(server) {
                return Err(NodeConfigError::DuplicateDnsServer(*server));
            }
        }
        if let Some(dir) = &self.executor.demand_csv_dir
            && !dir.is_dir()
        {
            return Err(NodeConfigError::DemandDir(dir.clone()));
        }
        self.executor
            .history_config()
            .validate()
            .map_err(|e| NodeConfigError::DemandSlice(e.to_string()))?;
        Ok(())
    }

    /// Voters of a brand-new cluster: every founding member, or none for a joining node.
    pub fn initial_voters(&self) -> Vec<u64> {
        if self.join {
            Vec::new()
        } else {
            self.peers.iter().map(|p| p.id).collect()
        }
    }

    /// Renders the config as TOML (used by `umbra demo` and the tests to write node files).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("node config always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> NodeConfig {
        NodeConfig {
            id: 1,
            listen: "127.0.0.1:7001".parse().unwrap(),
            data_dir: dir.join("data"),
            certs_dir: dir.to_owned(),
            admin_listen: Some("127.0.0.1:9001".parse().unwrap()),
            join: false,
            peers: vec![
                PeerConfig {
                    id: 1,
                    address: "127.0.0.1:7001".parse().unwrap(),
                },
                PeerConfig {
                    id: 2,
                    address: "127.0.0.1:7002".parse().unwrap(),
                },
            ],
            fault_injection: false,
            state_machine: StateMachineKind::Orchestrator,
            raft: umbra_consensus::Config::default(),
            api: None,
            gateway: GatewaySection::default(),
            dns: None,
            executor: ExecutorSection::default(),
        }
    }

    #[test]
    fn sections_parse_with_defaults_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let text = format!(
            r#"id = 1
listen = "127.0.0.1:7001"
data_dir = "{d}/data"
certs_dir = "{d}"

[[peer]]
id = 1
address = "127.0.0.1:7001"

[api]
listen = "127.0.0.1:8443"
token_file = "{d}/token"

[dns]
listen = "127.0.0.1:5353"
zone = "umbra.test."

[executor]
dns_servers = ["127.0.0.1:5353"]
demand_csv_dir = "{d}"
forecast_full_refit_every_slices = 12
pool_forecast_reach_secs = 90
"#,
            d = dir.path().display()
        );
        let path = dir.path().join("node.toml");
        std::fs::write(&path, &text).unwrap();
        let config = NodeConfig::load(&path).unwrap();
        assert_eq!(config.state_machine, StateMachineKind::Orchestrator);
        assert_eq!(config.api.as_ref().unwrap().listen.port(), 8443);
        assert_eq!(config.dns.as_ref().unwrap().zone, "umbra.test.");
        assert_eq!(config.gateway, GatewaySection::default());
        let executor = config.executor.executor_config();
        assert_eq!(executor.dns_servers.len(), 1);
        assert_eq!(executor.tick_ms, crate::executor::DEFAULT_TICK_MS);
        assert_eq!(executor.forecast_full_refit_every_slices, Some(12));
        assert_eq!(executor.pool_forecast_reach_secs, 90);
        assert_eq!(
            ExecutorSection::default().forecast_full_refit_every_slices,
            None,
            "unset: the forecaster's default"
        );
        std::fs::write(&path, config.to_toml()).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap(), config);

        let kv = format!("state_machine = \"kv\"\n{text}");
        std::fs::write(&path, kv).unwrap();
        let message = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(message.contains("[api] needs state_machine"), "{message}");
    }

    #[test]
    fn round_trips_through_toml_and_checks_mistakes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let good = config(dir.path());
        let path = dir.path().join("node.toml");
        std::fs::write(&path, good.to_toml()).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap(), good);

        let cases: Vec<(NodeConfig, &str)> = vec![
            (
                NodeConfig {
                    id: 0,
                    ..good.clone()
                },
                "id must be 1",
            ),
            (
                NodeConfig {
                    id: 3,
                    ..good.clone()
                },
                "join = true",
            ),
            (
                NodeConfig {
                    admin_listen: Some("0.0.0.0:9".parse().unwrap()),
                    ..good.clone()
                },
                "loopback",
            ),
            (
                NodeConfig {
                    certs_dir: dir.path().join("nope"),
                    ..good.clone()
                },
                "umbra certs init",
            ),
            (
                NodeConfig {
                    listen: "127.0.0.1:1".parse().unwrap(),
                    ..good.clone()
                },
                "must match",
            ),
        ];
        for (config, expected) in cases {
            let message = config.validate().expect_err(expected).to_string();
            assert!(
                message.contains(expected),
                "{message:?} should mention {expected:?}"
            );
        }
        let api = ApiConfig::new("127.0.0.1:8443".parse().unwrap(), dir.path().join("token"));
        let dns = DnsSection::embedded("127.0.0.1:8443".parse().unwrap(), "umbra.test.");
        let service_cases: Vec<(NodeConfig, &str)> = vec![
            (
                NodeConfig {
                    state_machine: StateMachineKind::Kv,
                    api: Some(api.clone()),
                    ..good.clone()
                },
                "needs state_machine = \"orchestrator\"",
            ),
            (
                NodeConfig {
                    dns: Some(DnsSection {
                        zone: ".".into(),
                        ..dns.clone()
                    }),
                    ..good.clone()
                },
                "[dns] zone",
            ),
            (
                NodeConfig {
                    api: Some(api.clone()),
                    dns: Some(dns.clone()),
                    ..good.clone()
                },
                "give each its own port",
            ),
            (
                NodeConfig {
                    executor: ExecutorSection {
                        demand_csv_dir: Some(dir.path().join("missing")),
                        ..ExecutorSection::default()
                    },
                    ..good.clone()
                },
                "not a directory",
            ),
            (
                NodeConfig {
                    executor: ExecutorSection {
                        tick_ms: 0,
                        ..ExecutorSection::default()
                    },
                    ..good.clone()
                },
                "tick_ms must be greater than zero",
            ),
            (
                NodeConfig {
                    executor: ExecutorSection {
                        forecast_full_refit_every_slices: Some(0),
                        ..ExecutorSection::default()
                    },
                    ..good.clone()
                },
                "executor.forecast_full_refit_every_slices must be greater than zero",
            ),
            (
                NodeConfig {
                    executor: ExecutorSection {
                        pool_forecast_reach_secs: 0,
                        ..ExecutorSection::default()
                    },
                    ..good.clone()
                },
                "executor.pool_forecast_reach_secs must be greater than zero",
            ),
            (
                NodeConfig {
                    executor: ExecutorSection {
                        max_clock_offset_ms: 0,
                        ..ExecutorSection::default()
                    },
                    ..good.clone()
                },
                "max_clock_offset_ms must be greater than zero; leave it out for the default",
            ),
            (
                NodeConfig {
                    executor: ExecutorSection {
                        dns_servers: vec![dns.listen.unwrap(), dns.listen.unwrap()],
                        ..ExecutorSection::default()
                    },
                    ..good.clone()
                },
                "lists 127.0.0.1:8443 twice",
            ),
        ];
        for (config, expected) in service_cases {
            let message = config.validate().expect_err(expected).to_string();
            assert!(
                message.contains(expected),
                "{message:?} should mention {expected:?}"
            );
        }

        let unknown = dir.path().join("bad.toml");
        std::fs::write(&unknown, format!("{}\nbogus = 1\n", good.to_toml())).unwrap();
        assert!(NodeConfig::load(&unknown).is_err());
    }

    #[test]
    fn dns_provider_is_chosen_in_the_file_and_mistakes_say_what_to_write() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let key_file = dir.path().join("umbra-update.key");
        let secret = "nQfVU/x8lKoGrSssq8YNvSVgdnTyp/mX2NN8Z/nnzKU=";
        std::fs::write(
            &key_file,
            format!(
                "key \"umbra-update\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{secret}\";\n}};\n"
            ),
        )
        .unwrap();
        let base = config(dir.path()).to_toml();
        let path = dir.path().join("node.toml");
        let load = |dns: &str| {
            std::fs::write(&path, format!("{base}\n[dns]\n{dns}")).unwrap();
            NodeConfig::load(&path)
        };

        let embedded = load("listen = \"127.0.0.1:5353\"\nzone = \"umbra.test.\"\n").unwrap();
        let dns = embedded.dns.as_ref().unwrap();
        assert_eq!(
            dns.provider,
            DnsProviderKind::Embedded,
            "embedded is the default"
        );
        assert!(dns.rfc2136_config().unwrap().is_none());
        let served = dns.embedded_config().unwrap().unwrap();
        assert!(served.secondaries.is_empty() && served.transfer_key.is_none());

        // Secondaries: notified, and served transfers signed with the key file's key.
        let with_secondaries = load(&format!(
            "listen = \"127.0.0.1:5353\"\nzone = \"umbra.test.\"\nsecondaries = [\"127.0.0.1:5301\", \"127.0.0.1:5302\"]\ntransfer_key_file = \"{}\"\n",
            key_file.display()
        ))
        .unwrap();
        let served = with_secondaries
            .dns
            .as_ref()
            .unwrap()
            .embedded_config()
            .unwrap()
            .unwrap();
        assert_eq!(
            served.secondaries,
            vec![
                "127.0.0.1:5301".parse().unwrap(),
                "127.0.0.1:5302".parse().unwrap()
            ]
        );
        assert_eq!(served.transfer_key.as_ref().unwrap().name, "umbra-update");
        assert!(!format!("{with_secondaries:?}{served:?}").contains(secret));
        std::fs::write(&path, with_secondaries.to_toml()).unwrap();
        assert_eq!(
            NodeConfig::load(&path).unwrap(),
            with_secondaries,
            "round trip"
        );

        let bind = load(&format!(
            "provider = \"rfc2136\"\nserver = \"127.0.0.1:5300\"\nzone = \"umbra.test.\"\ntsig_key_file = \"{}\"\n",
            key_file.display()
        ))
        .unwrap();
        let update = bind
            .dns
            .as_ref()
            .unwrap()
            .rfc2136_config()
            .unwrap()
            .unwrap();
        assert_eq!(update.server, "127.0.0.1:5300".parse().unwrap());
        assert_eq!(update.key.as_ref().unwrap().name, "umbra-update");
        assert!(
            !format!("{bind:?}{update:?}").contains(secret),
            "the secret is never shown"
        );
        std::fs::write(&path, bind.to_toml()).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap(), bind, "round trip");

        let key = format!("tsig_key_file = \"{}\"\n", key_file.display());
        let xfr_key = format!("transfer_key_file = \"{}\"\n", key_file.display());
        let cases = [
            ("zone = \"umbra.test.\"\n".to_owned(), "needs listen"),
            (
                "listen = \"127.0.0.1:5353\"\nzone = \"umbra.test.\"\nsecondaries = [\"127.0.0.1:5301\"]\n"
                    .to_owned(),
                "secondaries need transfer_key_file",
            ),
            (
                format!(
                    "listen = \"127.0.0.1:5353\"\nzone = \"umbra.test.\"\nsecondaries = [\"127.0.0.1:5301\", \"127.0.0.1:5301\"]\n{xfr_key}"
                ),
                "listed twice",
            ),
            (
                format!(
                    "listen = \"127.0.0.1:5353\"\nzone = \"umbra.test.\"\nsecondaries = [\"127.0.0.1:5353\"]\n{xfr_key}"
                ),
                "own listen address",
            ),
            (
                "listen = \"127.0.0.1:5353\"\nzone = \"umbra.test.\"\nsecondaries = [\"127.0.0.1:5301\"]\ntransfer_key_file = \"/nonexistent-xfr.key\"\n"
                    .to_owned(),
                "/nonexistent-xfr.key",
            ),
            (
                format!(
                    "provider = \"rfc2136\"\nserver = \"127.0.0.1:53\"\nzone = \"umbra.test.\"\n{key}secondaries = [\"127.0.0.1:5301\"]\n"
                ),
                "are for the embedded provider",
            ),
            (
                format!("listen = \"127.0.0.1:5353\"\nzone = \"umbra.test.\"\n{key}"),
                "are for provider = \"rfc2136\"",
            ),
            (
                format!("provider = \"rfc2136\"\nzone = \"umbra.test.\"\n{key}"),
                "needs server = \"IP:PORT\"",
            ),
            (
                "provider = \"rfc2136\"\nserver = \"127.0.0.1:53\"\nzone = \"umbra.test.\"\n"
                    .to_owned(),
                "needs tsig_key_file",
            ),
            (
                format!(
                    "provider = \"rfc2136\"\nlisten = \"127.0.0.1:5353\"\nserver = \"127.0.0.1:53\"\nzone = \"umbra.test.\"\n{key}"
                ),
                "remove listen",
            ),
            (
                "provider = \"rfc2136\"\nserver = \"127.0.0.1:53\"\nzone = \"umbra.test.\"\ntsig_key_file = \"/nonexistent.key\"\n"
                    .to_owned(),
                "/nonexistent.key",
            ),
            (
                "provider = \"bind\"\nzone = \"umbra.test.\"\n".to_owned(),
                "expected `embedded` or `rfc2136`",
            ),
        ];
        for (dns, expected) in cases {
            let message = load(&dns).expect_err(expected).to_string();
            assert!(
                message.contains(expected),
                "{message:?} should say {expected:?}"
            );
        }
        std::fs::write(
            &key_file,
            "key \"k\" { algorithm hmac-md5; secret \"c2hvcnQ=\"; };",
        )
        .unwrap();
        let message = load(&format!(
            "provider = \"rfc2136\"\nserver = \"127.0.0.1:53\"\nzone = \"umbra.test.\"\n{key}"
        ))
        .unwrap_err()
        .to_string();
        assert!(message.contains("tsig-keygen -a hmac-sha256"), "{message}");
    }
}
