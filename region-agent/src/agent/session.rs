//! The agent's link to the control plane: QUIC with mutual TLS (its agent-role certificate for
//! its region) to the orchestrators' agent gateways, following the Raft leader.
//!
//! Protocol on one [`StreamKind::Agent`] stream: the agent sends [`AgentHello`]; the
//! orchestrator answers [`HelloReply::Leader`] (then sends [`ToAgent`] commands and receives
//! [`FromAgent`] reports and outcomes) or [`HelloReply::NotLeader`] with a hint, which the agent
//! follows next. When the stream or connection ends the agent tries the hint, then every
//! configured orchestrator in turn, backing off up to [`MAX_BACKOFF`] after a full round. A
//! "leader" announcing a term older than the newest seen is not followed (a deposed leader),
//! and each command's term is checked again by the core.
//!
//! Commands run in their own tasks (a warm-up takes seconds), bounded by
//! [`MAX_CONCURRENT_COMMANDS`]; outcomes and heartbeats share one bounded outgoing queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use umbra_proto::agent::{AgentHello, FromAgent, HelloReply, ToAgent};
use umbra_proto::{Credentials, Endpoint, Identity, Role, StreamKind, TransportConfig};

use super::config::AgentConfig;
use super::{Agent, AgentError};

/// Longest pause between reconnection rounds.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// First pause after a failed round.
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Commands executing at once; more wait (the leader sees them as in progress).
pub const MAX_CONCURRENT_COMMANDS: usize = 16;
/// Outgoing messages queued at most (outcomes and reports).
pub const OUTGOING_QUEUE: usize = 64;
/// How long the hello exchange may take.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Opening the agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Credentials or endpoint.
    #[error("agent endpoint: {0}")]
    Endpoint(String),
    /// Nothing to connect to.
    #[error("no orchestrator addresses configured; set `orchestrators` in the agent config")]
    NoOrchestrators,
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Agent-gateway addresses of the orchestrators.
    pub orchestrators: Vec<SocketAddr>,
    /// Report period.
    pub heartbeat: Duration,
}

impl SessionConfig {
    /// From the agent's configuration.
    pub fn from_agent_config(config: &AgentConfig) -> Self {
        SessionConfig {
            orchestrators: config.orchestrators.clone(),
            heartbeat: Duration::from_millis(config.heartbeat_ms),
        }
    }
}

/// A client endpoint with this agent's certificate.
pub fn client_endpoint(config: &AgentConfig) -> Result<Endpoint, SessionError> {
    let dir = config.certs_dir.as_ref().ok_or_else(|| {
        SessionError::Endpoint(
            "certs_dir is not set; point it at the output of `umbra certs init`".into(),
        )
    })?;
    let identity = Identity::new(Role::Agent, config.region.clone())
        .map_err(|e| SessionError::Endpoint(e.to_string()))?;
    let credentials =
        Credentials::load(dir, &identity).map_err(|e| SessionError::Endpoint(e.to_string()))?;
    Endpoint::client(
        "0.0.0.0:0".parse().expect("valid address"),
        &credentials,
        TransportConfig::default(),
    )
    .map_err(|e| SessionError::Endpoint(e.to_string()))
}

/// How one attempt ended.
enum Attempt {
    /// Try this address next.
    Redirect(Option<SocketAddr>),
    /// Served a leader until the link ended.
    Served,
    /// Could not reach or use this orchestrator.
    Failed(String),
}

/// Follows the leader and serves it until `shutdown`.
pub async fn run_session(
    agent: Arc<Agent>,
    endpoint: Endpoint,
    config: SessionConfig,
    shutdown: CancellationToken,
) -> Result<(), SessionError> {
    if config.orchestrators.is_empty() {
        return Err(SessionError::NoOrchestrators);
    }
    let commands = Arc::new(Semaphore::new(MAX_CONCURRENT_COMMANDS));
    let mut next = 0usize;
    let mut hint: Option<SocketAddr> = None;
    let mut backoff = MIN_BACKOFF;
    let mut failures_in_round = 0usize;
    while !shutdown.is_cancelled() {
        let addr = match hint.take() {
            Some(a) => a,
            None => {
                let a = config.orchestrators[next % config.orchestrators.len()];
                next += 1;
                a
            }
        };
        let attempt = tokio::select! {
            a = attempt(&agent, &endpoint, addr, &config, &commands) => a,
            _ = shutdown.cancelled() => break,
        };
        match attempt {
            Attempt::Redirect(h) => {
                tracing::info!(%addr, hint = ?h, "not the leader; following the hint");
                hint = h;
                failures_in_round += 1;
            }
            Attempt::Served => {
                tracing::warn!(%addr, "link to the leader ended; looking for the leader");
                backoff = MIN_BACKOFF;
                failures_in_round = 0;
                continue;
            }
            Attempt::Failed(reason) => {
                tracing::warn!(%addr, %reason, "orchestrator unavailable");
                failures_in_round += 1;
            }
        }
        if failures_in_round > config.orchestrators.len() {
            // A full round without a leader: back off (elections take a few hundred ms).
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            failures_in_round = 0;
        }
    }
    agent.executor().shutdown();
    Ok(())
}

async fn attempt(
    agent: &Arc<Agent>,
    endpoint: &Endpoint,
    addr: SocketAddr,
    config: &SessionConfig,
    commands: &Arc<Semaphore>,
) -> Attempt {
    let conn = match endpoint
        .connect(addr, &Role::Orchestrator.server_name())
        .await
    {
        Ok(c) => c,
        Err(e) => return Attempt::Failed(e.to_string()),
    };
    let mut stream = match conn.open_stream(StreamKind::Agent).await {
        Ok(s) => s,
        Err(e) => return Attempt::Failed(e.to_string()),
    };
    let hello = AgentHello {
        region: agent.region(),
        newest_term: agent.newest_term(),
    };
    let reply = tokio::time::timeout(HELLO_TIMEOUT, async {
        stream.send(&hello).await?;
        stream.recv::<HelloReply>().await
    })
    .await;
    let (node_id, term) = match reply {
        Err(_) => return Attempt::Failed(format!("no hello reply within {HELLO_TIMEOUT:?}")),
        Ok(Err(e)) => return Attempt::Failed(e.to_string()),
        Ok(Ok(None)) => return Attempt::Failed("stream closed before the hello reply".into()),
        Ok(Ok(Some(HelloReply::NotLeader { leader_addr, .. }))) => {
            return Attempt::Redirect(leader_addr.and_then(|a| a.parse().ok()));
        }
        Ok(Ok(Some(HelloReply::Leader { node_id, term }))) => (node_id, term),
    };
    if !agent.handle_leader_term(term) {
        conn.close(0, "stale leader term");
        return Attempt::Failed(format!(
            "orchestrator {node_id} claims leadership for term {term}, older than {}",
            agent.newest_term()
        ));
    }
    tracing::info!(%addr, node_id, term, "following the leader");
    let (mut tx, mut rx) = stream.split();
    let (out_tx, mut out_rx) = mpsc::channel::<FromAgent>(OUTGOING_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            if tx.send(&msg).await.is_err() {
                break;
            }
        }
    });
    let reporter = {
        let (agent, out_tx, period) = (agent.clone(), out_tx.clone(), config.heartbeat);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let report = agent.report().await;
                if out_tx.send(FromAgent::Report(report)).await.is_err() {
                    break;
                }
            }
        })
    };
    loop {
        match rx.recv::<ToAgent>().await {
            Ok(Some(ToAgent::Command(cmd))) => {
                let (agent, out_tx) = (agent.clone(), out_tx.clone());
                let Ok(permit) = commands.clone().acquire_owned().await else {
                    break;
                };
                tokio::spawn(async move {
                    let outcome = agent.handle_command(&cmd).await;
                    drop(permit);
                    let _ = out_tx
                        .send(FromAgent::Outcome {
                            op_id: cmd.op_id,
                            outcome,
                        })
                        .await;
                });
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "agent stream from the leader failed");
                break;
            }
        }
    }
    reporter.abort();
    drop(out_tx);
    writer.abort();
    conn.close(0, "agent stream ended");
    Attempt::Served
}
