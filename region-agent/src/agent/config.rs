//! The agent's configuration file (TOML): its region, state directory, provider, orchestrator
//! addresses and certificates. Plain structs with [`AgentConfig::validate`]; serde only at the
//! file edge. Building a provider from it lives here too, so a bad provider name is refused
//! before anything is created.
//!
//! ```toml
//! region = "eu-west"
//! state_dir = "/var/lib/umbra-agent"
//! orchestrators = ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
//! certs_dir = "/etc/umbra/certs"     # ca.pem, agent-eu-west.pem/.key (umbra certs init)
//! # quic_bind = "127.0.0.1:7201"      (where its QUIC traffic leaves from; default: a port the kernel picks)
//! heartbeat_ms = 1000
//! metrics_listen = "127.0.0.1:9464"   # Prometheus /metrics (optional)
//! [front]                            # optional: the region front
//! listen = "127.0.0.12:8000"
//! kind = "embedded"                   # or "haproxy" (the agent runs and drives haproxy)
//! # front_binary = "/usr/local/bin/umbra-agent"    (embedded; default: umbra-agent next to the agent)
//! # haproxy_binary = "haproxy"                      (haproxy; found on PATH by default)
//! # haproxy_dir = "/var/lib/umbra-agent/front-haproxy"  (haproxy; default: under state_dir)
//! [provider]
//! kind = "process"                    # or "docker"
//! backing_latency_ms = 30
//! # sample_binary = "/usr/local/bin/umbra-sample"   (process; default: next to umbra-agent)
//! # image = "umbra-sample:local"                    (docker)
//! # postgres = "host=127.0.0.1 port=5432 user=postgres"  (process: data in PostgreSQL)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::provider::docker::{DEFAULT_IMAGE, DockerConfig, DockerRuntime};
use crate::provider::process::{ProcessConfig, ProcessRuntime};
use crate::provider::{AnyProvider, Provider, ProviderError, ProviderKind};
use crate::sample::DEFAULT_BACKING_LATENCY_MS;

/// Heartbeat period: one second keeps the leader's view of a region fresh for step analysis
/// windows of tens of seconds, at negligible cost.
pub const DEFAULT_HEARTBEAT_MS: u64 = 1_000;

/// Errors of the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read agent config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("agent config {path} is not valid TOML for this version: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A value is invalid.
    #[error("invalid agent config: {0}")]
    Invalid(String),
    /// The provider could not be built.
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

/// Which provider and how to run instances.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// `process` or `docker` (kept a string so an unknown name gets our message).
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Backing-store latency of the sample service instances.
    #[serde(default = "default_latency")]
    pub backing_latency_ms: u64,
    /// The sample binary (process provider).
    #[serde(default)]
    pub sample_binary: Option<PathBuf>,
    /// The image (docker provider).
    #[serde(default)]
    pub image: Option<String>,
    /// The limits a new container starts with (docker provider; the leader then sizes them
    /// from the forecast when the service declares `instance_limits`).
    #[serde(default)]
    pub initial_limits: Option<umbra_proto::agent::InstanceLimits>,
    /// The region's PostgreSQL server (a conninfo without a password): the sample instances
    /// keep their data there, one database each, and replicate with PostgreSQL's logical
    /// replication (process provider).
    #[serde(default)]
    pub postgres: Option<String>,
}

fn default_kind() -> String {
    "process".into()
}
fn default_latency() -> u64 {
    DEFAULT_BACKING_LATENCY_MS
}

impl Default for ProviderSection {
    fn default() -> Self {
        ProviderSection {
            kind: default_kind(),
            backing_latency_ms: default_latency(),
            sample_binary: None,
            image: None,
            initial_limits: None,
            postgres: None,
        }
    }
}

/// The agent's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The region this agent serves; must match its certificate.
    pub region: String,
    /// Where instance records and the command ledger live.
    pub state_dir: PathBuf,
    /// Orchestrators' agent-gateway addresses.
    #[serde(default)]
    pub orchestrators: Vec<SocketAddr>,
    /// Directory with `ca.pem` and this agent's certificate and key.
    #[serde(default)]
    pub certs_dir: Option<PathBuf>,
    /// The local address the agent's QUIC connections to the orchestrators leave from (a port
    /// the kernel picks when absent): fixed, a firewall rule, or a fault plan's partition,
    /// can name the agent's traffic by its port.
    #[serde(default)]
    pub quic_bind: Option<SocketAddr>,
    /// Heartbeat period in ms.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// Where to serve Prometheus `/metrics` (off when absent).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Instances.
    #[serde(default)]
    pub provider: ProviderSection,
    /// The region front (embedded proxy), if this agent runs one.
    #[serde(default)]
    pub front: Option<FrontSection>,
}

/// The region front.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontSection {
    /// Where the front listens, e.g. `127.0.0.12:8000` (fronts of different regions share a
    /// port on distinct loopback addresses, because a DNS A record carries no port).
    pub listen: SocketAddr,
    /// `embedded` or `haproxy` (kept a string so an unknown name gets our message).
    #[serde(default = "default_front_kind")]
    pub kind: String,
    /// The `haproxy` program (kind `haproxy`): a path, or a name looked up on `PATH`.
    #[serde(default)]
    pub haproxy_binary: Option<PathBuf>,
    /// Where the agent writes haproxy's configuration and keeps its sockets, pid and log
    /// (kind `haproxy`); [`DEFAULT_HAPROXY_DIR`] under `state_dir` by default.
    #[serde(default)]
    pub haproxy_dir: Option<PathBuf>,
    /// The `umbra-agent` program that runs the embedded front (`umbra-agent front`, kind
    /// `embedded`); the `umbra-agent` next to the running executable by default.
    #[serde(default)]
    pub front_binary: Option<PathBuf>,
}

/// The haproxy program unless configured: Debian's package installs it as `haproxy`.
pub const DEFAULT_HAPROXY_BINARY: &str = "haproxy";
/// The haproxy directory under the agent's `state_dir` unless configured.
pub const DEFAULT_HAPROXY_DIR: &str = "front-haproxy";
/// The embedded front's directory under the agent's `state_dir` (its routing, control and
/// log sockets, pid and log).
pub const EMBEDDED_FRONT_DIR: &str = "front-embedded";
/// Longest socket path Linux accepts (`sun_path` is 108 bytes with its terminating NUL); a
/// front's directory holds two sockets, so its path must leave room for their names.
const MAX_UNIX_SOCKET_PATH: usize = 107;
/// The longest socket name the agent puts in a front's directory.
const LONGEST_SOCKET_NAME: &str = "/control.sock";

fn default_front_kind() -> String {
    FrontKind::Embedded.as_str().into()
}

/// Which program is the region front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrontKind {
    /// The agent's own weighted proxy (`crate::lb::proxy`): needs nothing installed.
    #[default]
    Embedded,
    /// A `haproxy` the agent configures, starts and drives through its runtime API.
    Haproxy,
}

/// What the embedded front needs, resolved from [`FrontSection`] and the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedSettings {
    /// The `umbra-agent` program that runs it.
    pub binary: PathBuf,
    /// Its routing file, sockets, pid file and log.
    pub dir: PathBuf,
}

impl FrontKind {
    /// The name written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            FrontKind::Embedded => "embedded",
            FrontKind::Haproxy => "haproxy",
        }
    }
}

impl std::fmt::Display for FrontKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FrontKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "embedded" => Ok(FrontKind::Embedded),
            "haproxy" => Ok(FrontKind::Haproxy),
            other => Err(format!(
                "unknown front kind {other:?}; the kinds are \"embedded\" (the agent's own \
                 proxy) and \"haproxy\" (the agent runs haproxy and drives it through its \
                 runtime API)"
            )),
        }
    }
}

/// What a `haproxy` front needs, resolved from [`FrontSection`] and the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxySettings {
    /// The program.
    pub binary: PathBuf,
    /// Its configuration, sockets, pid file and log.
    pub dir: PathBuf,
}

impl FrontSection {
    /// The front kind, or an error saying what to write instead.
    pub fn front_kind(&self) -> Result<FrontKind, ConfigError> {
        self.kind.parse().map_err(|e: String| {
            ConfigError::Invalid(format!(
                "front.kind: {e}: write kind = \"embedded\" or kind = \"haproxy\""
            ))
        })
    }

    /// The haproxy settings (kind `haproxy`), with defaults filled in.
    pub fn haproxy(&self, state_dir: &Path) -> HaproxySettings {
        HaproxySettings {
            binary: self
                .haproxy_binary
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_HAPROXY_BINARY)),
            dir: self
                .haproxy_dir
                .clone()
                .unwrap_or_else(|| state_dir.join(DEFAULT_HAPROXY_DIR)),
        }
    }

    /// The embedded front's settings (kind `embedded`), with defaults filled in.
    pub fn embedded(&self, state_dir: &Path) -> EmbeddedSettings {
        EmbeddedSettings {
            binary: self
                .front_binary
                .clone()
                .unwrap_or_else(|| next_to_exe("umbra-agent")),
            dir: state_dir.join(EMBEDDED_FRONT_DIR),
        }
    }

    fn validate(&self, state_dir: &Path) -> Result<(), ConfigError> {
        match self.front_kind()? {
            FrontKind::Embedded => {
                if self.haproxy_binary.is_some() || self.haproxy_dir.is_some() {
                    return Err(ConfigError::Invalid(
                        "front.haproxy_binary and front.haproxy_dir are read only with \
                         kind = \"haproxy\"; remove them or set kind = \"haproxy\""
                            .into(),
                    ));
                }
                let dir = self.embedded(state_dir).dir;
                if dir.as_os_str().len() + LONGEST_SOCKET_NAME.len() > MAX_UNIX_SOCKET_PATH {
                    return Err(ConfigError::Invalid(format!(
                        "the embedded front's directory {} is too long for the Unix sockets \
                         it holds (at most {} bytes); set a shorter state_dir",
                        dir.display(),
                        MAX_UNIX_SOCKET_PATH - LONGEST_SOCKET_NAME.len()
                    )));
                }
            }
            FrontKind::Haproxy => {
                if self.front_binary.is_some() {
                    return Err(ConfigError::Invalid(
                        "front.front_binary is read only with kind = \"embedded\"; remove it \
                         or set kind = \"embedded\""
                            .into(),
                    ));
                }
                if self.listen.port() == 0 {
                    return Err(ConfigError::Invalid(format!(
                        "front.listen {}: a haproxy front needs a fixed port (haproxy \
                         reports no port it chose); write e.g. \"{}:8000\"",
                        self.listen,
                        self.listen.ip()
                    )));
                }
                let dir = self.haproxy(state_dir).dir;
                if dir.as_os_str().len() + LONGEST_SOCKET_NAME.len() > MAX_UNIX_SOCKET_PATH {
                    return Err(ConfigError::Invalid(format!(
                        "front.haproxy_dir {} is too long for the Unix sockets it holds \
                         (at most {} bytes); set a shorter front.haproxy_dir",
                        dir.display(),
                        MAX_UNIX_SOCKET_PATH - LONGEST_SOCKET_NAME.len()
                    )));
                }
            }
        }
        Ok(())
    }
}

fn default_heartbeat() -> u64 {
    DEFAULT_HEARTBEAT_MS
}

impl AgentConfig {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: AgentConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the message says what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        umbra_proto::Identity::new(umbra_proto::Role::Agent, self.region.clone())
            .map_err(|e| ConfigError::Invalid(format!("region: {e}")))?;
        self.provider_kind()?;
        if let Some(front) = &self.front {
            front.validate(&self.state_dir)?;
        }
        if let (Some(bind), Some(first)) = (self.quic_bind, self.orchestrators.first())
            && bind.is_ipv4() != first.is_ipv4()
        {
            return Err(ConfigError::Invalid(format!(
                "quic_bind {bind} is not of the orchestrators' address family ({first}); bind \
                 to an address of the same family, e.g. 127.0.0.1:PORT for IPv4 orchestrators, \
                 or remove quic_bind"
            )));
        }
        if !(100..=60_000).contains(&self.heartbeat_ms) {
            return Err(ConfigError::Invalid(format!(
                "heartbeat_ms {} must be between 100 and 60000",
                self.heartbeat_ms
            )));
        }
        if self.provider.backing_latency_ms > 60_000 {
            return Err(ConfigError::Invalid(
                "provider.backing_latency_ms must be at most 60000".into(),
            ));
        }
        if let Some(conninfo) = &self.provider.postgres {
            crate::sample::postgres::parse_conninfo(conninfo)
                .map_err(|e| ConfigError::Invalid(format!("provider.postgres: {e}")))?;
            if self.provider_kind()? != ProviderKind::Process {
                return Err(ConfigError::Invalid(
                    "provider.postgres runs the sample instances on PostgreSQL, which only the \
                     process provider does; remove it or use kind = \"process\""
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The provider kind, or the unknown-provider error.
    pub fn provider_kind(&self) -> Result<ProviderKind, ConfigError> {
        Ok(self.provider.kind.parse::<ProviderKind>()?)
    }

    /// Builds the provider (adopting instances recorded in the state directory).
    pub async fn build_provider(&self) -> Result<AnyProvider, ConfigError> {
        build_provider(
            self.provider_kind()?,
            &self.state_dir,
            &self.region,
            &self.provider,
        )
        .await
    }
}

/// The sample binary next to the running executable (where cargo and packages put it).
pub fn sample_binary_next_to_exe() -> PathBuf {
    next_to_exe("umbra-sample")
}

/// The program `name` next to the running executable (where cargo and packages put Umbra's
/// binaries), or `name` to be looked up on `PATH`.
fn next_to_exe(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Builds a provider of `kind` on `state_dir`.
pub async fn build_provider(
    kind: ProviderKind,
    state_dir: &Path,
    owner: &str,
    section: &ProviderSection,
) -> Result<AnyProvider, ConfigError> {
    Ok(match kind {
        ProviderKind::Process => {
            let binary = section
                .sample_binary
                .clone()
                .unwrap_or_else(sample_binary_next_to_exe);
            let runtime = ProcessRuntime::new(
                ProcessConfig::sample(
                    binary,
                    section.backing_latency_ms,
                    section.postgres.as_deref(),
                ),
                state_dir,
            )?;
            AnyProvider::Process(Provider::open(runtime, state_dir).await?)
        }
        ProviderKind::Docker => {
            let runtime = DockerRuntime::connect(DockerConfig {
                image: section
                    .image
                    .clone()
                    .unwrap_or_else(|| DEFAULT_IMAGE.into()),
                owner: owner.to_owned(),
                backing_latency_ms: section.backing_latency_ms,
                initial_limits: section
                    .initial_limits
                    .unwrap_or(crate::provider::docker::DEFAULT_INITIAL_LIMITS),
            })
            .await?;
            AnyProvider::Docker(Provider::open(runtime, state_dir).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_provider_is_refused_with_the_choices() {
        let config: AgentConfig = toml::from_str(
            "region = \"eu-west\"\nstate_dir = \"/tmp/x\"\n[provider]\nkind = \"lambda\"\n",
        )
        .unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("unknown provider \"lambda\""), "{err}");
        assert!(err.contains("\"docker\""), "{err}");
    }

    #[test]
    fn defaults_and_bad_values() {
        let config: AgentConfig =
            toml::from_str("region = \"eu-west\"\nstate_dir = \"/tmp/x\"\n").unwrap();
        config.validate().unwrap();
        assert_eq!(config.provider_kind().unwrap(), ProviderKind::Process);
        let bad: AgentConfig =
            toml::from_str("region = \"EU West\"\nstate_dir = \"/tmp/x\"\n").unwrap();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_quic_bind_must_be_of_the_orchestrators_family() {
        let with = |bind: &str| {
            let config: AgentConfig = toml::from_str(&format!(
                "region = \"eu-west\"\nstate_dir = \"/tmp/x\"\norchestrators = [\"127.0.0.1:7101\"]\nquic_bind = \"{bind}\"\n"
            ))
            .unwrap();
            config.validate().map(|()| config)
        };
        assert_eq!(
            with("127.0.0.1:7201").unwrap().quic_bind,
            Some("127.0.0.1:7201".parse().unwrap())
        );
        let err = with("[::1]:7201").unwrap_err().to_string();
        assert!(
            err.contains("quic_bind [::1]:7201 is not of the orchestrators' address family"),
            "{err}"
        );
    }

    fn front(section: &str) -> Result<AgentConfig, ConfigError> {
        let config: AgentConfig = toml::from_str(&format!(
            "region = \"eu-west\"\nstate_dir = \"/tmp/x\"\n[front]\n{section}\n"
        ))
        .unwrap();
        config.validate().map(|()| config)
    }

    #[test]
    fn a_postgres_server_is_checked_and_only_for_the_process_provider() {
        let with = |provider: &str| {
            let text =
                format!("region = \"eu-west\"\nstate_dir = \"/tmp/x\"\n[provider]\n{provider}");
            toml::from_str::<AgentConfig>(&text).unwrap().validate()
        };
        with("postgres = \"host=127.0.0.1 port=5432 user=postgres\"\n").unwrap();
        let error = with("postgres = \"host=127.0.0.1 password=hunter2\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("password") && !error.contains("hunter2"),
            "{error}"
        );
        let error = with("postgres = \"port=5432\"\n").unwrap_err().to_string();
        assert!(error.contains("host"), "{error}");
        let error = with("kind = \"docker\"\npostgres = \"host=127.0.0.1\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("process"), "{error}");
    }

    #[test]
    fn front_kinds_and_their_settings() {
        let embedded = front("listen = \"127.0.0.12:8000\"").unwrap();
        let section = embedded.front.unwrap();
        assert_eq!(section.front_kind().unwrap(), FrontKind::Embedded);
        let haproxy = front("listen = \"127.0.0.12:8000\"\nkind = \"haproxy\"").unwrap();
        let section = haproxy.front.unwrap();
        assert_eq!(section.front_kind().unwrap(), FrontKind::Haproxy);
        assert_eq!(
            section.haproxy(&haproxy.state_dir),
            HaproxySettings {
                binary: PathBuf::from("haproxy"),
                dir: PathBuf::from("/tmp/x/front-haproxy"),
            }
        );
        // A user's mistakes, each with what to write instead.
        let rows = [
            ("kind = \"nginx\"", "write kind = \"embedded\""),
            ("kind = \"HAProxy\"", "or kind = \"haproxy\""),
            (
                "haproxy_binary = \"/usr/sbin/haproxy\"",
                "or set kind = \"haproxy\"",
            ),
            (
                "kind = \"haproxy\"\nhaproxy_dir = \"/tmp/this/path/is/far/too/long/for/a/unix/socket/address/because/sun_path/holds/only/108/bytes/with/its/nul\"",
                "set a shorter front.haproxy_dir",
            ),
        ];
        for (extra, expected) in rows {
            let err = front(&format!("listen = \"127.0.0.12:8000\"\n{extra}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{extra}: {err}");
        }
        let err = front("listen = \"127.0.0.12:0\"\nkind = \"haproxy\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a fixed port"), "{err}");
    }
}
