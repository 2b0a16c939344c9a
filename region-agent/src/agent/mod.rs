//! The agent proper: its configuration ([`config`]), the sans-IO command core that enforces
//! idempotency, term fencing and the region check ([`core`]), the executor that turns commands
//! into provider, warmer and replication calls ([`executor`]), and the QUIC session that
//! follows the orchestrators' leader ([`session`]), the region front ([`front`]: the embedded
//! proxy or a haproxy the agent runs, over this region's active instances plus cutover
//! shares), and its Prometheus endpoint ([`metrics`]). [`Agent`] ties core and executor
//! together and persists the core (newest term and finished operations) in `<state_dir>/ledger.json`,
//! so a restarted agent still refuses a deposed leader and still answers a retried operation
//! with its first outcome.

pub mod config;
pub mod core;
pub mod executor;
pub mod front;
pub mod metrics;
pub mod session;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use umbra_proto::agent::{AgentCommand, AgentReport, CommandOutcome};

use self::config::{AgentConfig, ConfigError};
use self::core::{Admission, CommandCore};
use self::executor::Executor;
use crate::provider::AnyProvider;

/// The ledger file in the state directory.
pub const LEDGER_FILE: &str = "ledger.json";

/// Errors opening an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Configuration or provider.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The region front could not start.
    #[error("region front on {listen}: {message}")]
    Front {
        /// The configured address.
        listen: std::net::SocketAddr,
        /// What failed.
        message: String,
    },
    /// The ledger could not be read or written.
    #[error("command ledger {path}: {message}")]
    Ledger {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Other state the agent keeps (the replications it drives) could not be read.
    #[error("agent state {path}: {message}")]
    State {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// One region's agent: command core plus executor.
pub struct Agent {
    core: Mutex<CommandCore>,
    ledger_path: PathBuf,
    executor: Executor,
    metrics: metrics::AgentMetrics,
}

impl Agent {
    /// Builds the provider from `config` (adopting recorded instances) and loads the ledger.
    pub async fn open(config: &AgentConfig) -> Result<Agent, AgentError> {
        config.validate()?;
        let provider = config.build_provider().await?;
        let front = match &config.front {
            Some(section) => Some(
                front::Front::from_config(section, &config.state_dir)
                    .await
                    .map_err(|e| AgentError::Front {
                        listen: section.listen,
                        message: e.to_string(),
                    })?,
            ),
            None => None,
        };
        Agent::with_parts(&config.region, &config.state_dir, provider, front)
    }

    /// An agent over an existing provider, without a front.
    pub fn with_provider(
        region: &str,
        state_dir: &Path,
        provider: AnyProvider,
    ) -> Result<Agent, AgentError> {
        Agent::with_parts(region, state_dir, provider, None)
    }

    /// An agent over an existing provider and front.
    pub fn with_parts(
        region: &str,
        state_dir: &Path,
        provider: AnyProvider,
        front: Option<front::Front>,
    ) -> Result<Agent, AgentError> {
        let ledger_path = state_dir.join(LEDGER_FILE);
        let err = |message: String| AgentError::Ledger {
            path: ledger_path.clone(),
            message,
        };
        let core = match std::fs::read(&ledger_path) {
            Ok(bytes) => {
                let mut core: CommandCore =
                    serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
                if core.region() != region {
                    return Err(err(format!(
                        "it belongs to region {:?}, this agent serves {region:?}; use another \
                         state directory",
                        core.region()
                    )));
                }
                core.handle_restart();
                core
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CommandCore::new(region),
            Err(e) => return Err(err(e.to_string())),
        };
        if let Some(front) = &front {
            front.telemetry().set_region(region);
        }
        let executor = Executor::new(provider, front)
            .kept_in(state_dir)
            .map_err(|message| AgentError::State {
                path: state_dir.join(executor::REPLICATIONS_FILE),
                message,
            })?;
        let metrics = metrics::AgentMetrics::new(region);
        metrics.register(executor.collectors());
        Ok(Agent {
            core: Mutex::new(core),
            ledger_path,
            executor,
            metrics,
        })
    }

    /// The executor (and through it the provider).
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// The agent's metric families.
    pub fn metrics(&self) -> &metrics::AgentMetrics {
        &self.metrics
    }

    /// The newest leader term seen.
    pub fn newest_term(&self) -> u64 {
        self.core.lock().expect("core lock").newest_term()
    }

    /// The region.
    pub fn region(&self) -> String {
        self.core.lock().expect("core lock").region().to_owned()
    }

    fn persist(&self, core: &CommandCore) -> Result<(), std::io::Error> {
        let tmp = self.ledger_path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(core).expect("the core serializes"))?;
        std::fs::rename(&tmp, &self.ledger_path)
    }

    /// A leader announced `term`; false (and nothing changes) if it is older than the newest
    /// seen.
    pub fn handle_leader_term(&self, term: u64) -> bool {
        let mut core = self.core.lock().expect("core lock");
        let before = core.newest_term();
        if !core.handle_leader_term(term) {
            return false;
        }
        if core.newest_term() != before
            && let Err(e) = self.persist(&core)
        {
            tracing::error!(error = %e, "cannot persist the newest term");
        }
        true
    }

    /// Admits, executes and records one command.
    pub async fn handle_command(&self, cmd: &AgentCommand) -> CommandOutcome {
        let admission = {
            let mut core = self.core.lock().expect("core lock");
            let before = core.clone();
            let admission = core.handle_command(cmd);
            if *core != before
                && let Err(e) = self.persist(&core)
            {
                // Without a durable term and ledger entry, running the command could break
                // fencing or idempotency after a crash: do not run it.
                *core = before;
                let outcome = CommandOutcome::Failed {
                    reason: format!("cannot persist the command ledger: {e}"),
                };
                self.metrics.count_command(&outcome, false);
                return outcome;
            }
            admission
        };
        match admission {
            Admission::Reply(outcome) => {
                tracing::info!(op_id = %cmd.op_id, term = cmd.term, ?outcome, "answered without acting");
                let replayed = !matches!(outcome, CommandOutcome::Refused(_));
                self.metrics.count_command(&outcome, replayed);
                outcome
            }
            Admission::Execute => {
                tracing::info!(op_id = %cmd.op_id, term = cmd.term, action = ?cmd.action, "executing");
                let outcome = self.executor.execute(&cmd.action).await;
                let mut core = self.core.lock().expect("core lock");
                core.handle_outcome(&cmd.op_id, &outcome);
                if let Err(e) = self.persist(&core) {
                    tracing::error!(error = %e, "cannot persist the command ledger");
                }
                self.metrics.count_command(&outcome, false);
                outcome
            }
        }
    }

    /// The heartbeat report.
    pub async fn report(&self) -> AgentReport {
        self.executor.provider().notice_exits().await;
        AgentReport {
            region: self.region(),
            newest_term: self.newest_term(),
            instances: self.executor.provider().list().await,
            warmups: self.executor.warmups(),
            replication: self.executor.replication().await,
            at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            front: self.executor.front_report().await,
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs an agent from its configuration until the process is stopped.
pub async fn run(config: AgentConfig) -> Result<(), session::SessionError> {
    let agent = std::sync::Arc::new(Agent::open(&config).await?);
    let endpoint = session::client_endpoint(&config)?;
    let _metrics = match config.metrics_listen {
        Some(addr) => {
            let (bound, task) = metrics::serve(agent.clone(), addr)
                .await
                .map_err(|e| session::SessionError::Endpoint(format!("metrics on {addr}: {e}")))?;
            tracing::info!(%bound, "serving /metrics");
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    let session_config = session::SessionConfig::from_agent_config(&config);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| session::SessionError::Endpoint(format!("SIGTERM handler: {e}")))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        // Instances and a haproxy front keep running: the next agent on this state directory
        // adopts them.
        stop.cancel();
    });
    session::run_session(agent, endpoint, session_config, shutdown).await
}
