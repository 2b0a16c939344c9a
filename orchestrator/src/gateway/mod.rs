//! The agent gateway: the orchestrator's side of the agent protocol (`umbra_proto::agent`).
//! Region agents dial every orchestrator's QUIC endpoint and open a [`StreamKind::Agent`]
//! stream; the node hands each such stream to [`AgentGateway::serve_stream`]. The gateway
//! answers the hello — `Leader{node_id, term}` on the leader, `NotLeader` with the leader's
//! address elsewhere — keeps the latest [`AgentReport`] per region, and lets the executor send
//! [`AgentCommand`]s and await their outcome with a timeout ([`AgentGateway::send`]).
//!
//! Identity comes from the verified certificate only: the stream's peer must have the agent
//! role and its certificate id must be the region the hello names. A stream ends when this node
//! stops leading or its term changes, so agents reconnect and find the new leader; reconnecting
//! is the agent's job. This module must not decide what to command (that is the executor) and
//! must not retry anything on its own: a missing outcome is reported to the caller.
//!
//! [`StreamKind::Agent`]: umbra_proto::StreamKind::Agent

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use umbra_consensus::{NodeStatus, Role as RaftRole};
use umbra_proto::agent::{
    AgentCommand, AgentHello, AgentReport, CommandOutcome, FromAgent, HelloReply, ToAgent,
};
use umbra_proto::{FramedStream, Role, StreamKind, codes};

/// Commands queued per agent stream before [`AgentGateway::send`] waits: an executor round
/// sends at most a few per region, so 64 is room for a burst without unbounded memory.
pub const DEFAULT_COMMAND_QUEUE: usize = 64;
/// How long the agent has to send its hello after opening the stream: 5 s, the most the agent
/// itself allows for a whole attempt (it starts at 1 s and doubles only after a round in which
/// no orchestrator answered, `umbra_agent::agent::session`), so a slow but live agent is
/// never cut off first by this side.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Commands awaiting an outcome on one stream at most; the agent runs 16 at once
/// (`MAX_CONCURRENT_COMMANDS`), the rest wait in its queue.
pub const MAX_PENDING_PER_STREAM: usize = 256;

/// Settings of the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// This orchestrator's Raft node id.
    pub node_id: u64,
    /// Where agents reach each orchestrator (node id → QUIC address), for `NotLeader` hints.
    pub agent_addresses: BTreeMap<u64, SocketAddr>,
    /// Commands queued per agent stream.
    pub command_queue: usize,
    /// How long an agent has to send its hello.
    pub hello_timeout: Duration,
}

impl GatewayConfig {
    /// A config with the default limits.
    pub fn new(node_id: u64, agent_addresses: BTreeMap<u64, SocketAddr>) -> Self {
        Self {
            node_id,
            agent_addresses,
            command_queue: DEFAULT_COMMAND_QUEUE,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
        }
    }

    /// Checks the limits.
    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.node_id == 0 {
            return Err(GatewayError::Config(
                "node_id must be greater than 0".into(),
            ));
        }
        if self.command_queue == 0 || self.hello_timeout.is_zero() {
            return Err(GatewayError::Config(
                "command_queue and hello_timeout must be greater than zero".into(),
            ));
        }
        Ok(())
    }
}

/// Why a command got no outcome, or the gateway could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The gateway's configuration is unusable.
    #[error("agent gateway config: {0}")]
    Config(String),
    /// No agent of the region is connected to this orchestrator.
    #[error("no agent of region {0:?} is connected to this orchestrator")]
    NotConnected(String),
    /// The agent's stream ended before the outcome arrived; the command may or may not have
    /// run (resend it with the same operation id to learn its outcome).
    #[error("the agent of region {0:?} went away before answering; the outcome is unknown")]
    Disconnected(String),
    /// No outcome within the timeout; the command may still be running.
    #[error("no outcome from region {region:?} within {timeout_ms} ms; the outcome is unknown")]
    Timeout {
        /// The region.
        region: String,
        /// The timeout.
        timeout_ms: u64,
    },
    /// The same operation id is already awaiting its outcome on this stream.
    #[error("operation {0:?} is already awaiting its outcome")]
    Duplicate(String),
    /// Too many commands await outcomes on this stream.
    #[error("too many commands in flight to region {0:?}; retry later")]
    Busy(String),
}

/// The latest report of a region and when it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedReport {
    /// The report as the agent sent it.
    pub report: AgentReport,
    /// When this orchestrator received it.
    pub received_at: Instant,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<CommandOutcome>>>>;

struct Session {
    /// Distinguishes a reconnected agent's session from the one it replaced.
    serial: u64,
    commands: mpsc::Sender<ToAgent>,
    pending: Pending,
}

struct Inner {
    config: GatewayConfig,
    status: watch::Receiver<NodeStatus>,
    sessions: Mutex<BTreeMap<String, Session>>,
    reports: Mutex<BTreeMap<String, ReceivedReport>>,
    next_serial: AtomicU64,
}

/// See the module docs. Cloning is cheap (one shared gateway).
#[derive(Clone)]
pub struct AgentGateway {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain maps behind: keep using them.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AgentGateway {
    /// A gateway for the node whose Raft status `status` publishes (`RaftNode::watch_status`).
    pub fn new(
        config: GatewayConfig,
        status: watch::Receiver<NodeStatus>,
    ) -> Result<Self, GatewayError> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                status,
                sessions: Mutex::new(BTreeMap::new()),
                reports: Mutex::new(BTreeMap::new()),
                next_serial: AtomicU64::new(1),
            }),
        })
    }

    /// The latest report of every region that reported to this node.
    pub fn reports(&self) -> BTreeMap<String, ReceivedReport> {
        lock(&self.inner.reports).clone()
    }

    /// The latest report of `region`.
    pub fn report(&self, region: &str) -> Option<ReceivedReport> {
        lock(&self.inner.reports).get(region).cloned()
    }

    /// Regions whose agent is connected to this node now.
    pub fn connected_regions(&self) -> Vec<String> {
        lock(&self.inner.sessions).keys().cloned().collect()
    }

    /// Forgets every report (this node stopped leading: a later leadership must not act on
    /// what agents said to an earlier one).
    pub fn clear_reports(&self) {
        lock(&self.inner.reports).clear();
    }

    /// Sends `command` to its region's agent and waits up to `timeout` for the outcome.
    pub async fn send(
        &self,
        command: AgentCommand,
        timeout: Duration,
    ) -> Result<CommandOutcome, GatewayError> {
        let region = command.region.clone();
        let op_id = command.op_id.clone();
        let (sender, pending) = {
            let sessions = lock(&self.inner.sessions);
            let session = sessions
                .get(&region)
                .ok_or_else(|| GatewayError::NotConnected(region.clone()))?;
            (session.commands.clone(), session.pending.clone())
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&pending);
            if pending.contains_key(&op_id) {
                return Err(GatewayError::Duplicate(op_id));
            }
            if pending.len() >= MAX_PENDING_PER_STREAM {
                return Err(GatewayError::Busy(region));
            }
            pending.insert(op_id.clone(), tx);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let result = async {
            tokio::time::timeout_at(deadline, sender.send(ToAgent::Command(command)))
                .await
                .map_err(|_| GatewayError::Busy(region.clone()))?
                .map_err(|_| GatewayError::Disconnected(region.clone()))?;
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(outcome)) => Ok(outcome),
                Ok(Err(_)) => Err(GatewayError::Disconnected(region.clone())),
                Err(_) => Err(GatewayError::Timeout {
                    region: region.clone(),
                    timeout_ms: timeout.as_millis() as u64,
                }),
            }
        }
        .await;
        lock(&pending).remove(&op_id);
        result
    }

    fn is_leader(status: &NodeStatus) -> bool {
        status.role == RaftRole::Leader
    }

    fn not_leader_reply(&self, status: &NodeStatus) -> HelloReply {
        HelloReply::NotLeader {
            leader_id: status.leader,
            leader_addr: status
                .leader
                .filter(|id| *id != self.inner.config.node_id)
                .and_then(|id| self.inner.config.agent_addresses.get(&id))
                .map(ToString::to_string),
        }
    }

    /// Serves one accepted agent stream until the agent leaves or this node stops leading.
    /// The node calls it for every stream of kind [`StreamKind::Agent`]; streams of another
    /// kind or from another role are refused.
    pub async fn serve_stream(&self, mut stream: FramedStream) {
        let peer = stream.peer().clone();
        if stream.kind() != StreamKind::Agent || peer.role() != Role::Agent {
            tracing::warn!(%peer, kind = ?stream.kind(), "not an agent stream; refused");
            stream.abort(codes::STREAM_FAILED);
            return;
        }
        let hello = match tokio::time::timeout(
            self.inner.config.hello_timeout,
            stream.recv::<AgentHello>(),
        )
        .await
        {
            Ok(Ok(Some(hello))) => hello,
            Ok(Ok(None)) => return,
            Ok(Err(error)) => {
                tracing::warn!(%peer, %error, "agent hello unreadable");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "no agent hello in time");
                stream.abort(codes::STREAM_FAILED);
                return;
            }
        };
        if hello.region != peer.id() {
            tracing::warn!(%peer, claimed = %hello.region, "agent hello names another region than its certificate; refused");
            stream.abort(codes::STREAM_FAILED);
            return;
        }
        let mut status_rx = self.inner.status.clone();
        let status = status_rx.borrow_and_update().clone();
        if !Self::is_leader(&status) {
            let _ = stream.send(&self.not_leader_reply(&status)).await;
            stream.finish();
            // Give the reply time to leave before the stream is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.recv::<AgentHello>()).await;
            return;
        }
        let term = status.term;
        let reply = HelloReply::Leader {
            node_id: self.inner.config.node_id,
            term,
        };
        if stream.send(&reply).await.is_err() {
            return;
        }
        self.run_session(stream, hello.region, term, status_rx)
            .await;
    }

    async fn run_session(
        &self,
        stream: FramedStream,
        region: String,
        term: u64,
        mut status_rx: watch::Receiver<NodeStatus>,
    ) {
        let (mut tx, mut rx) = stream.split();
        let (commands_tx, mut commands_rx) =
            mpsc::channel::<ToAgent>(self.inner.config.command_queue);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let serial = self.inner.next_serial.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.sessions).insert(
            region.clone(),
            Session {
                serial,
                commands: commands_tx,
                pending: pending.clone(),
            },
        );
        tracing::info!(%region, term, "agent connected to the leader");
        let writer = tokio::spawn(async move {
            while let Some(message) = commands_rx.recv().await {
                if tx.send(&message).await.is_err() {
                    return;
                }
            }
            tx.finish();
        });
        let still_leading = |s: &NodeStatus| Self::is_leader(s) && s.term == term;
        loop {
            tokio::select! {
                message = rx.recv::<FromAgent>() => match message {
                    Ok(Some(FromAgent::Report(report))) => {
                        if report.region != region {
                            tracing::warn!(%region, reported = %report.region, "report for another region ignored");
                            continue;
                        }
                        lock(&self.inner.reports).insert(region.clone(), ReceivedReport {
                            report,
                            received_at: Instant::now(),
                        });
                    }
                    Ok(Some(FromAgent::Outcome { op_id, outcome })) => {
                        if let Some(waiter) = lock(&pending).remove(&op_id) {
                            let _ = waiter.send(outcome);
                        } else {
                            tracing::debug!(%region, %op_id, "outcome nobody awaits (timed out earlier)");
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::info!(%region, %error, "agent stream ended");
                        break;
                    }
                },
                changed = status_rx.changed() => {
                    if changed.is_err() || !still_leading(&status_rx.borrow_and_update()) {
                        tracing::info!(%region, term, "no longer leading this term; closing the agent stream");
                        break;
                    }
                }
            }
        }
        {
            let mut sessions = lock(&self.inner.sessions);
            if sessions.get(&region).is_some_and(|s| s.serial == serial) {
                sessions.remove(&region);
            }
        }
        // Waiters learn at once that the outcome is unknown.
        lock(&pending).clear();
        writer.abort();
        rx.stop(codes::STREAM_FAILED);
    }
}
