//! The agent proper: its configuration ([`config`]), the sans-IO command core that enforces
//! idempotency, term fencing and the region check ([`core`]), the executor that turns commands
//! into provider, warmer and replication calls ([`executor`]), and the QUIC session that
//! follows the orchestrators' leader ([`session`]), the region front ([`front`]: the embedded
//! proxy or a haproxy the agent runs, over this region's active instances plus cutover
//! shares), and its Prometheus endpoint ([`metrics`]). [`Agent`] ties core and executor
//! together and journals the core's durable changes (newest term, finished operations) in
//! `<state_dir>/ledger.jsonl` ([`ledger`]) before it acts on them, so a restarted agent still
//! refuses a deposed leader and still answers a retried operation with its first outcome.

pub mod config;
pub mod core;
pub mod executor;
pub mod front;
pub mod ledger;
pub mod metrics;
pub mod session;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use umbra_proto::agent::{AgentCommand, AgentReport, CommandOutcome, Refusal};

use self::config::{AgentConfig, ConfigError};
use self::core::{Admission, CommandCore};
use self::executor::Executor;
use self::ledger::Journal;
use crate::provider::AnyProvider;

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
    journal: Journal,
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
        let (journal, core) = Journal::open(state_dir, region).map_err(|e| AgentError::Ledger {
            path: e.path,
            message: e.message,
        })?;
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
            journal,
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

    /// A leader announced `term`; false (and nothing changes) if it is older than the newest
    /// seen. Returns once a raised term is on disk.
    pub async fn handle_leader_term(&self, term: u64) -> bool {
        let written = {
            let mut core = self.core.lock().expect("core lock");
            if !core.handle_leader_term(term) {
                return false;
            }
            self.journal.append(core.take_records())
        };
        if let Err(e) = written.await {
            tracing::error!(error = %e, "cannot journal the newest term");
        }
        true
    }

    /// Admits, executes and records one command.
    pub async fn handle_command(&self, cmd: &AgentCommand) -> CommandOutcome {
        let (admission, written) = {
            let mut core = self.core.lock().expect("core lock");
            let admission = core.handle_command(cmd);
            (admission, self.journal.append(core.take_records()))
        };
        if let Err(e) = written.await {
            // Without a durable term, running the command (or answering for it) could break
            // fencing after a crash: do neither, and free the id for a retry.
            if admission == Admission::Execute {
                self.core
                    .lock()
                    .expect("core lock")
                    .handle_outcome(&cmd.op_id, &CommandOutcome::Refused(Refusal::InProgress));
            }
            let outcome = CommandOutcome::Failed {
                reason: format!("cannot journal the command ledger: {e}"),
            };
            self.metrics.count_command(&outcome, false);
            return outcome;
        }
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
                let written = {
                    let mut core = self.core.lock().expect("core lock");
                    core.handle_outcome(&cmd.op_id, &outcome);
                    self.journal.append(core.take_records())
                };
                if let Err(e) = written.await {
                    tracing::error!(error = %e, "cannot journal the command's outcome");
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
    // The front follows the instances and shares on the agent's own schedule, leader or not:
    // with every orchestrator down, a front process that died is started again and its
    // routing set from what this agent knows.
    let _front_keeper = AbortOnDrop(tokio::spawn({
        let agent = agent.clone();
        let period = std::time::Duration::from_millis(config.heartbeat_ms);
        async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                agent.executor().reconcile_front().await;
            }
        }
    }));
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
