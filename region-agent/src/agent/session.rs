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
//! Failover is fast and bounded ([`LeaderSearch`], the pure part): a leader whose process is
//! gone (its port refuses a probe, `umbra_proto::liveness`) is left within a probe interval;
//! one that went silent otherwise (a partition, a paused process) is dropped after
//! [`IDLE_TIMEOUT`] of silence, the connection sending keep-alives every
//! [`KEEP_ALIVE_INTERVAL`]; reaching an orchestrator
//! (handshake, stream, hello reply) gets [`CONNECT_TIMEOUT`] — orchestrators are near — and
//! only after a round in which none answered does the budget grow (up to [`HELLO_TIMEOUT`], for
//! a loaded machine); an address that could not be reached is skipped for
//! [`UNREACHABLE_SKIP`], also when followers still hint it while they elect its successor.
//!
//! Commands run in their own tasks (a warm-up takes seconds), bounded by
//! [`MAX_CONCURRENT_COMMANDS`]; outcomes and heartbeats share one bounded outgoing queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use umbra_proto::agent::{AgentHello, FromAgent, HelloReply, ToAgent};
use umbra_proto::{
    Credentials, Endpoint, Identity, LinkError, Role, StreamKind, TransportConfig, liveness,
};

use super::config::AgentConfig;
use super::metrics::LinkAttempt;
use super::{Agent, AgentError};

/// Longest pause between reconnection rounds.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// First pause after a failed round.
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Commands executing at once; more wait (the leader sees them as in progress).
pub const MAX_CONCURRENT_COMMANDS: usize = 16;
/// Outgoing messages queued at most (outcomes and reports).
pub const OUTGOING_QUEUE: usize = 64;
/// Longest time allowed to reach an orchestrator (handshake, stream open, hello reply); the
/// budget grows to it from [`CONNECT_TIMEOUT`] only while no orchestrator answers at all.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// First time allowed to reach an orchestrator: orchestrators are near their agents (same or
/// a neighbouring region, round trips of tens of ms), so a handshake that has not finished in
/// 1 s is almost always to a dead address; waiting the general 5 s there is what made agents
/// take ~10 s to follow a new leader.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The agent's QUIC idle timeout (QUIC uses the lower of both sides', so this applies to the
/// whole connection): a leader that died without closing is noticed this long after it last
/// answered, instead of the endpoint default's 10 s.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Keep-alive pings on the agent's connection: three fit in [`IDLE_TIMEOUT`], so two lost
/// pings in a row do not drop a live link.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long an address that could not be reached is skipped (as a hint and in the rotation)
/// while others are left to try: longer than an election on a loaded machine, during which
/// followers still hint the dead leader, short enough that a restarted orchestrator is tried
/// again soon.
pub const UNREACHABLE_SKIP: Duration = Duration::from_secs(2);

/// Why a link ended early: the orchestrator's port refused a probe.
const GONE: &str = "the orchestrator's port is closed (its process is gone)";

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

/// The transport of an agent's endpoint: the default limits with the short idle timeout and
/// keep-alive above; the handshake limit is the longest reach budget (the session bounds
/// each attempt more tightly).
pub fn transport_config() -> TransportConfig {
    TransportConfig {
        idle_timeout: IDLE_TIMEOUT,
        keep_alive_interval: KEEP_ALIVE_INTERVAL,
        handshake_timeout: HELLO_TIMEOUT,
        stream_open_timeout: HELLO_TIMEOUT,
        ..TransportConfig::default()
    }
}

/// A client endpoint with this agent's certificate, bound to its `quic_bind` (a port the
/// kernel picks when absent).
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
    let bind = config
        .quic_bind
        .unwrap_or_else(|| "0.0.0.0:0".parse().expect("valid address"));
    Endpoint::client(bind, &credentials, transport_config())
        .map_err(|e| SessionError::Endpoint(format!("QUIC endpoint on {bind}: {e}")))
}

/// How one attempt ended.
enum Attempt {
    /// Try this address next.
    Redirect(Option<SocketAddr>),
    /// Served a leader until the link ended; `gone` when the connection itself failed (timed
    /// out, closed, reset), not just the stream (the leader stepping down ends only that).
    Served { gone: bool },
    /// Answered, but as a leader of a term older than the newest seen (deposed).
    Stale(String),
    /// Could not reach or use this orchestrator.
    Failed(String),
}

/// What the session does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchStep {
    /// Try to reach this orchestrator within `budget`.
    Try { addr: SocketAddr, budget: Duration },
    /// A round found no leader: wait this long first.
    Pause(Duration),
}

/// Where to look for the leader next: hints first, then the configured orchestrators in turn,
/// skipping addresses that recently could not be reached; a pause after a round without a
/// leader. Pure (time is passed in), driven by [`run_session`].
#[derive(Debug, Clone)]
pub struct LeaderSearch {
    orchestrators: Vec<SocketAddr>,
    next: usize,
    hint: Option<SocketAddr>,
    /// Addresses skipped until the instant given.
    unreachable: Vec<(SocketAddr, Instant)>,
    /// Attempts since the last pause or leader that found no leader.
    misses: usize,
    /// Whether any orchestrator answered in this round (a hint, or a leader of a stale term).
    answered: bool,
    backoff: Duration,
    budget: Duration,
}

impl LeaderSearch {
    /// A search over `orchestrators` (non-empty, checked by [`run_session`]).
    pub fn new(orchestrators: Vec<SocketAddr>) -> Self {
        LeaderSearch {
            orchestrators,
            next: 0,
            hint: None,
            unreachable: Vec::new(),
            misses: 0,
            answered: false,
            backoff: MIN_BACKOFF,
            budget: CONNECT_TIMEOUT,
        }
    }

    fn skipped(&self, addr: SocketAddr) -> bool {
        self.unreachable.iter().any(|(a, _)| *a == addr)
    }

    /// The next step at `now`.
    pub fn next_step(&mut self, now: Instant) -> SearchStep {
        if self.misses > self.orchestrators.len() {
            // A full round without a leader (elections take a few hundred ms). Only when
            // nobody answered may the orchestrators be too loaded for the budget: grow it.
            self.misses = 0;
            if !self.answered {
                self.budget = (self.budget * 2).min(HELLO_TIMEOUT);
            }
            self.answered = false;
            let pause = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            return SearchStep::Pause(pause);
        }
        self.unreachable.retain(|(_, until)| *until > now);
        let budget = self.budget;
        if let Some(addr) = self.hint.take()
            && !self.skipped(addr)
        {
            return SearchStep::Try { addr, budget };
        }
        let n = self.orchestrators.len();
        let pick = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| !self.skipped(self.orchestrators[i]))
            // Every address was unreachable a moment ago: one of them may be back.
            .unwrap_or(self.next % n);
        self.next = pick + 1;
        SearchStep::Try {
            addr: self.orchestrators[pick],
            budget,
        }
    }

    /// `from` is not the leader and hinted `hint`.
    pub fn redirected(&mut self, hint: Option<SocketAddr>) {
        self.hint = hint;
        self.answered = true;
        self.misses += 1;
    }

    /// `addr` answered but cannot be followed (a deposed leader's term): skipped for a while
    /// like an unreachable address, but the answer shows the budget is enough.
    pub fn refused(&mut self, addr: SocketAddr, now: Instant) {
        self.mark(addr, now);
        self.answered = true;
        self.misses += 1;
    }

    /// `addr` could not be reached (or did not answer in time) at `now`.
    pub fn unreachable(&mut self, addr: SocketAddr, now: Instant) {
        self.mark(addr, now);
        self.misses += 1;
    }

    /// The link to a leader ended; `gone` when its connection failed (the address is then
    /// skipped like an unreachable one: a dead leader is what followers still hint).
    pub fn served(&mut self, addr: SocketAddr, gone: bool, now: Instant) {
        self.misses = 0;
        self.answered = false;
        self.backoff = MIN_BACKOFF;
        self.budget = CONNECT_TIMEOUT;
        if gone {
            self.mark(addr, now);
        }
    }

    fn mark(&mut self, addr: SocketAddr, now: Instant) {
        self.unreachable.retain(|(a, _)| *a != addr);
        self.unreachable.push((addr, now + UNREACHABLE_SKIP));
    }
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
    let mut search = LeaderSearch::new(config.orchestrators.clone());
    while !shutdown.is_cancelled() {
        let (addr, budget) = match search.next_step(Instant::now()) {
            SearchStep::Try { addr, budget } => (addr, budget),
            SearchStep::Pause(pause) => {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
        };
        let attempt = tokio::select! {
            a = attempt(&agent, &endpoint, addr, budget, &config, &commands) => a,
            _ = shutdown.cancelled() => break,
        };
        match attempt {
            Attempt::Redirect(h) => {
                agent
                    .metrics()
                    .count_leader_attempt(LinkAttempt::Redirected);
                tracing::info!(%addr, hint = ?h, "not the leader; following the hint");
                search.redirected(h);
            }
            Attempt::Served { gone } => {
                agent.metrics().count_leader_attempt(LinkAttempt::Followed);
                tracing::warn!(%addr, gone, "link to the leader ended; looking for the leader");
                search.served(addr, gone, Instant::now());
            }
            Attempt::Stale(reason) => {
                agent.metrics().count_leader_attempt(LinkAttempt::Stale);
                tracing::warn!(%addr, %reason, "not following a deposed leader");
                search.refused(addr, Instant::now());
            }
            Attempt::Failed(reason) => {
                agent.metrics().count_leader_attempt(LinkAttempt::Failed);
                tracing::warn!(%addr, %reason, "orchestrator unavailable");
                search.unreachable(addr, Instant::now());
            }
        }
    }
    agent.executor().shutdown();
    Ok(())
}

async fn attempt(
    agent: &Arc<Agent>,
    endpoint: &Endpoint,
    addr: SocketAddr,
    budget: Duration,
    config: &SessionConfig,
    commands: &Arc<Semaphore>,
) -> Attempt {
    let hello = AgentHello {
        region: agent.region(),
        newest_term: agent.newest_term(),
    };
    // One budget for handshake, stream and hello: a dead address costs `budget`, not the sum
    // of three transport limits. Dropping a half-done handshake abandons that connection.
    // A dead address (its port closed) fails at the first probe, not at the budget's end.
    let reached = tokio::time::timeout(budget, async {
        let reach = async {
            let conn = endpoint
                .connect(addr, &Role::Orchestrator.server_name())
                .await
                .map_err(|e| e.to_string())?;
            let mut stream = conn
                .open_stream(StreamKind::Agent)
                .await
                .map_err(|e| e.to_string())?;
            stream.send(&hello).await.map_err(|e| e.to_string())?;
            let reply = stream
                .recv::<HelloReply>()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((conn, stream, reply))
        };
        tokio::select! {
            reached = reach => reached,
            () = liveness::closed(addr) => Err(GONE.to_owned()),
        }
    })
    .await;
    let (conn, stream, node_id, term) = match reached {
        Err(_) => {
            return Attempt::Failed(format!(
                "no hello reply within {budget:?} (handshake, stream and hello)"
            ));
        }
        Ok(Err(reason)) => return Attempt::Failed(reason),
        Ok(Ok((_, _, None))) => {
            return Attempt::Failed("stream closed before the hello reply".into());
        }
        Ok(Ok((_, _, Some(HelloReply::NotLeader { leader_addr, .. })))) => {
            return Attempt::Redirect(leader_addr.and_then(|a| a.parse().ok()));
        }
        Ok(Ok((conn, stream, Some(HelloReply::Leader { node_id, term })))) => {
            (conn, stream, node_id, term)
        }
    };
    if !agent.handle_leader_term(term).await {
        conn.close(0, "stale leader term");
        return Attempt::Stale(format!(
            "orchestrator {node_id} claims leadership for term {term}, older than {}",
            agent.newest_term()
        ));
    }
    tracing::info!(%addr, node_id, term, "following the leader");
    agent.metrics().set_leader_connected(true);
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
    // The leader's port closing ends the link at once: a killed leader is left within a probe
    // interval, not after the idle timeout.
    let mut leader_gone = false;
    let dead = liveness::closed(addr);
    tokio::pin!(dead);
    loop {
        let received = tokio::select! {
            received = rx.recv::<ToAgent>() => received,
            () = &mut dead => {
                tracing::warn!(%addr, "{GONE}");
                leader_gone = true;
                break;
            }
        };
        match received {
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
    agent.metrics().set_leader_connected(false);
    reporter.abort();
    drop(out_tx);
    writer.abort();
    // A connection that failed (idle timeout, closed or reset by the peer) means the address
    // is gone for now; a stream ended on a live connection means the leader stepped down.
    let gone = leader_gone
        || conn.close_reason().is_some_and(|reason| {
            tracing::info!(%addr, %reason, "connection to the leader lost");
            !matches!(reason, LinkError::LocallyClosed)
        });
    conn.close(0, "agent stream ended");
    Attempt::Served { gone }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<SocketAddr> {
        (1..=3)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect()
    }

    fn tried(step: SearchStep) -> SocketAddr {
        match step {
            SearchStep::Try { addr, .. } => addr,
            SearchStep::Pause(p) => panic!("paused {p:?}"),
        }
    }

    #[test]
    fn a_dead_leader_hinted_by_followers_is_not_tried_again() {
        let [a, b, c] = addrs()[..] else {
            unreachable!()
        };
        let mut search = LeaderSearch::new(vec![a, b, c]);
        let t0 = Instant::now();
        assert_eq!(tried(search.next_step(t0)), a);
        // a led until its connection failed.
        search.served(a, true, t0);
        assert_eq!(
            search.next_step(t0),
            SearchStep::Try {
                addr: b,
                budget: CONNECT_TIMEOUT
            }
        );
        // b has not noticed yet and hints a: skipped, c is next.
        search.redirected(Some(a));
        assert_eq!(tried(search.next_step(t0)), c);
        search.redirected(Some(a));
        assert_eq!(tried(search.next_step(t0)), b);
        // The election is over: b hints c, the new leader.
        search.redirected(Some(c));
        assert_eq!(tried(search.next_step(t0)), c);
        // Once the skip has ended, a is tried again (it may have restarted).
        search.served(c, true, t0);
        let later = t0 + UNREACHABLE_SKIP + Duration::from_millis(1);
        search.redirected(Some(a));
        assert_eq!(tried(search.next_step(later)), a);
    }

    #[test]
    fn a_stream_ended_by_a_live_leader_does_not_skip_it() {
        let [a, b, c] = addrs()[..] else {
            unreachable!()
        };
        let mut search = LeaderSearch::new(vec![a, b, c]);
        let t0 = Instant::now();
        assert_eq!(tried(search.next_step(t0)), a);
        search.served(a, false, t0);
        assert_eq!(tried(search.next_step(t0)), b);
        search.redirected(Some(a));
        assert_eq!(tried(search.next_step(t0)), a);
    }

    #[test]
    fn rounds_without_a_leader_pause_and_only_silence_grows_the_budget() {
        let [a, b, c] = addrs()[..] else {
            unreachable!()
        };
        let mut search = LeaderSearch::new(vec![a, b, c]);
        let t0 = Instant::now();
        // An election in progress: everyone answers, nobody knows the leader.
        let mut pauses = Vec::new();
        for _ in 0..20 {
            match search.next_step(t0) {
                SearchStep::Try { budget, .. } => {
                    assert_eq!(budget, CONNECT_TIMEOUT, "answers keep the budget short");
                    search.redirected(None);
                }
                SearchStep::Pause(p) => pauses.push(p),
            }
        }
        assert_eq!(pauses[..3], [MIN_BACKOFF, MIN_BACKOFF * 2, MIN_BACKOFF * 4]);
        assert!(pauses.iter().all(|p| *p <= MAX_BACKOFF));
        // Nobody answers (a loaded machine, or all down): the budget doubles up to the limit,
        // and every address is still tried even though all are marked unreachable.
        let mut budgets = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            if let SearchStep::Try { addr, budget } = search.next_step(t0) {
                budgets.push(budget);
                seen.insert(addr);
                search.unreachable(addr, t0);
            }
        }
        assert_eq!(budgets.first(), Some(&CONNECT_TIMEOUT));
        assert_eq!(budgets.last(), Some(&HELLO_TIMEOUT));
        assert!(budgets.windows(2).all(|w| w[0] <= w[1]), "{budgets:?}");
        assert_eq!(seen.len(), 3);
        // A leader resets the budget.
        search.served(b, false, t0);
        assert!(matches!(
            search.next_step(t0 + UNREACHABLE_SKIP * 2),
            SearchStep::Try {
                budget: CONNECT_TIMEOUT,
                ..
            }
        ));
    }

    #[test]
    fn the_agent_transport_is_valid_and_notices_silence_fast() {
        let t = transport_config();
        t.validate().unwrap();
        assert_eq!(t.idle_timeout, IDLE_TIMEOUT);
        assert!(KEEP_ALIVE_INTERVAL * 3 <= IDLE_TIMEOUT);
        assert!(CONNECT_TIMEOUT < HELLO_TIMEOUT);
    }
}
