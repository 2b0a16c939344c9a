//! A running Raft node: a driver thread that owns raft-rs's `RawNode`, the durable store and
//! the state machine, and a cloneable `RaftNode` handle to propose, read and change membership.
//! The driver ticks on an interval, steps inbound messages, persists each Ready (fsync) before
//! sending what depends on it, applies committed entries and answers proposers when their entry
//! applies. It must not know what commands mean (the `StateMachine` does) nor how bytes travel
//! (the `Transport` does).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType, Snapshot, SnapshotMetadata};
use raft::{RawNode, StateRole};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Config, ConfigError};
use crate::logging::raft_logger;
use crate::metrics::RaftMetrics;
use crate::state_machine::StateMachine;
use crate::storage::{DiskStorage, SnapshotOrigin, StorageOpenError};
use crate::transport::{Inbound, MailboxReceiver, Transport};

/// Requests queued from handles to the driver. Proposers beyond this wait (backpressure)
/// rather than grow memory; 1024 is four times the benchmark's 64 concurrent proposers ×
/// a few retries.
const REQUEST_QUEUE_CAPACITY: usize = 1024;
/// Inbound messages and requests handled between two Readies: bounds the latency one busy
/// queue adds to the other and batches proposals into one fsync.
const MAX_DRAIN_PER_TURN: usize = 512;
/// Terms remembered in a node's leadership history (status); older terms are forgotten.
const HISTORY_TERMS: usize = 256;

/// Everything needed to start a node.
pub struct NodeOptions {
    pub id: u64,
    /// Where the raft-engine log lives. Created if missing.
    pub data_dir: PathBuf,
    pub config: Config,
    /// Voters of a brand-new cluster (all founding members pass the same list). Empty for a
    /// node joining an existing cluster through `add_node`. Ignored when the data dir holds
    /// state.
    pub initial_voters: Vec<u64>,
    /// Addresses of peers known from the configuration file.
    pub peers: BTreeMap<u64, String>,
    /// What the operator should do when this node finds that it lost entries it had
    /// acknowledged (its data directory was wiped or replaced): said at the end of the
    /// failure, in the words of the program that runs the node.
    pub lost_log_advice: String,
}

/// A node that could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("node id must be greater than 0")]
    ZeroId,
    #[error(transparent)]
    Storage(#[from] StorageOpenError),
    #[error("cannot read the stored snapshot: {0}")]
    Snapshot(String),
    #[error("raft refused to start: {0}")]
    Raft(#[from] raft::Error),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the raft driver thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Why a proposal, read or membership change did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RequestError {
    #[error("this node is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("the entry was replaced by a newer leader's log and was not applied")]
    Dropped,
    #[error("no answer within {timeout_ms} ms; the outcome is unknown")]
    Timeout { timeout_ms: u64 },
    #[error("too many requests in flight; retry later")]
    Busy,
    #[error("request of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("the raft node has stopped")]
    Stopped,
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The proposal's entry may or may not be applied, and this node cannot tell: either it
    /// caught up from a snapshot that covers the entry's index (which holds the entry if a
    /// follower had it when this node lost its leadership, and not if a newer leader's log
    /// replaced it), or it stopped while the entry waited to commit (a follower that holds it
    /// may become leader and commit it). Retry only commands that are safe to apply twice.
    #[error(
        "the outcome is unknown: the entry was in this node's log, which may or may not reach the committed log"
    )]
    OutcomeUnknown,
}

/// A membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Adds a voter reachable at `address`.
    AddVoter { id: u64, address: String },
    /// Removes a member.
    Remove { id: u64 },
}

/// A node's role, as raft-rs reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl From<StateRole> for Role {
    fn from(role: StateRole) -> Self {
        match role {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// What a node reports about itself. Published after every turn of the driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u64,
    pub role: Role,
    pub term: u64,
    pub leader: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub voters: Vec<u64>,
    /// Terms in which this node became leader (last `HISTORY_TERMS`).
    pub led_terms: Vec<u64>,
    /// For each term, the nodes that proposed the entries this node applied in that term. Raft
    /// guarantees one leader per term, so every set must have one member.
    pub term_proposers: BTreeMap<u64, BTreeSet<u64>>,
    /// Set when the driver stopped on an error it cannot recover from.
    pub failure: Option<String>,
    /// Campaigns this node started because its leader's port was found closed, without
    /// waiting out the election timeout (see `Driver::leader_down`).
    #[serde(default)]
    pub dead_leader_campaigns: u64,
}

type Reply<T> = oneshot::Sender<Result<T, RequestError>>;

enum Request {
    Propose {
        command: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    Read {
        query: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    ReadLocal {
        query: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    Membership {
        change: MembershipChange,
        reply: Reply<Vec<u64>>,
    },
    TransferLeader {
        to: u64,
        reply: Reply<()>,
    },
}

/// A handle to a running node. Cloning is cheap; the node stops when `shutdown` is called or
/// every handle is dropped.
#[derive(Clone)]
pub struct RaftNode {
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<NodeStatus>,
    shutdown: mpsc::Sender<()>,
    request_timeout: Duration,
    max_command_bytes: usize,
}

/// The entry context: who proposed it and which of their proposals it is, then an optional
/// payload (the new member's address for membership changes).
fn encode_context(proposer: u64, proposal_id: u64, payload: &[u8]) -> Vec<u8> {
    let mut context = Vec::with_capacity(16 + payload.len());
    context.extend_from_slice(&proposer.to_le_bytes());
    context.extend_from_slice(&proposal_id.to_le_bytes());
    context.extend_from_slice(payload);
    context
}

fn decode_context(context: &[u8]) -> Option<(u64, u64, &[u8])> {
    if context.len() < 16 {
        return None;
    }
    let proposer = u64::from_le_bytes(context[..8].try_into().ok()?);
    let proposal_id = u64::from_le_bytes(context[8..16].try_into().ok()?);
    Some((proposer, proposal_id, &context[16..]))
}

/// A snapshot's data: the state machine's bytes and the peer addresses known at that point,
/// so a node that catches up by snapshot can reach members added before it.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    peers: BTreeMap<u64, String>,
    #[serde(
        serialize_with = "state_bytes::write",
        deserialize_with = "state_bytes::read"
    )]
    state: Vec<u8>,
}

/// The state machine's bytes as one postcard byte string: the same encoding as a sequence of
/// `u8` (a length, then the bytes), so snapshots written before read the same, but copied in
/// one call rather than one per byte, which for a state of tens of MiB is the difference
/// between a driver turn and an election timeout.
mod state_bytes {
    use serde::de::{Deserializer, Error, Visitor};

    pub fn write<S: serde::Serializer>(state: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(state)
    }

    pub fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl Visitor<'_> for Bytes {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the state machine's snapshot bytes")
            }

            fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
                Ok(bytes.to_vec())
            }

            fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(bytes)
            }
        }
        deserializer.deserialize_byte_buf(Bytes)
    }
}

impl RaftNode {
    /// Opens the node's store, restores the state machine from the latest snapshot and starts
    /// the driver thread.
    pub fn start<S: StateMachine, T: Transport>(
        options: NodeOptions,
        mut state_machine: S,
        mut transport: T,
        mailbox: MailboxReceiver,
        registry: &prometheus::Registry,
    ) -> Result<Self, StartError> {
        options.config.validate()?;
        if options.id == 0 {
            return Err(StartError::ZeroId);
        }
        std::fs::create_dir_all(&options.data_dir)?;
        let storage = DiskStorage::open(&options.data_dir, &options.initial_voters)?;
        let mut peers = options.peers.clone();
        let mut applied = 0;
        if let Some(snapshot) = storage
            .load_snapshot()
            .map_err(|e| StartError::Snapshot(e.to_string()))?
        {
            let data: SnapshotData = postcard::from_bytes(&snapshot.data)
                .map_err(|e| StartError::Snapshot(e.to_string()))?;
            state_machine
                .restore(&data.state)
                .map_err(|e| StartError::Snapshot(e.to_string()))?;
            for (id, address) in data.peers {
                peers.entry(id).or_insert(address);
            }
            applied = snapshot.get_metadata().index;
        }
        // Addresses learnt from membership changes win over stale ones from a snapshot.
        peers.extend(
            storage
                .peer_addresses()
                .map_err(|e| StartError::Snapshot(e.to_string()))?,
        );
        peers.remove(&options.id);
        for (id, address) in &peers {
            transport.set_peer(*id, address);
        }
        let metrics = RaftMetrics::register(registry)?;
        let logger = raft_logger(options.id);
        let raw = RawNode::new(
            &options.config.to_raft(options.id, applied),
            storage,
            &logger,
        )?;
        let (requests_tx, requests_rx) = mpsc::channel(REQUEST_QUEUE_CAPACITY);
        let (shutdown_tx, shutdown_rx) = mpsc::channel(1);
        let (snapshots_tx, snapshots_rx) = mpsc::unbounded_channel();
        let mut driver = Driver {
            id: options.id,
            raw,
            state_machine,
            transport,
            config: options.config.clone(),
            metrics,
            peers,
            pending: BTreeMap::new(),
            next_proposal_id: 1,
            reads_awaiting_index: HashMap::new(),
            reads_awaiting_apply: Vec::new(),
            applied,
            led_terms: Vec::new(),
            term_proposers: BTreeMap::new(),
            leader: 0,
            status_tx: None,
            lost_log: None,
            lost_log_advice: options.lost_log_advice,
            ticks: 0,
            succession: None,
            dead_leader_campaigns: 0,
            snapshot_writing: None,
            snapshot_retry_tick: 0,
            snapshots_written: snapshots_tx,
        };
        let status = driver.status(None);
        let (status_tx, status_rx) = watch::channel(status);
        driver.status_tx = Some(status_tx);
        let request_timeout = options.config.request_timeout();
        let max_command_bytes = options.config.max_command_bytes;
        let inbox = mailbox.receiver;
        thread::Builder::new()
            .name(format!("raft-{}", options.id))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        runtime.block_on(driver.run(inbox, requests_rx, shutdown_rx, snapshots_rx))
                    }
                    Err(error) => driver.fail(format!("cannot build the driver runtime: {error}")),
                }
            })?;
        Ok(Self {
            requests: requests_tx,
            status: status_rx,
            shutdown: shutdown_tx,
            request_timeout,
            max_command_bytes,
        })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, RequestError> {
        let (reply, answer) = oneshot::channel();
        let timeout = self.request_timeout;
        let exchange = async {
            self.requests
                .send(make(reply))
                .await
                .map_err(|_| RequestError::Stopped)?;
            answer.await.map_err(|_| RequestError::Stopped)?
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(RequestError::Timeout {
                timeout_ms: timeout.as_millis() as u64,
            }))
    }

    fn check_size(&self, bytes: &[u8]) -> Result<(), RequestError> {
        if bytes.len() > self.max_command_bytes {
            return Err(RequestError::TooLarge {
                size: bytes.len(),
                max: self.max_command_bytes,
            });
        }
        Ok(())
    }

    /// Replicates `command` and returns the state machine's result once it is applied here.
    /// Only the leader accepts proposals; others answer `NotLeader` with a hint.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, RequestError> {
        self.check_size(&command)?;
        self.call(|reply| Request::Propose { command, reply }).await
    }

    /// Answers `query` against state that includes every write acknowledged before the call
    /// (ReadIndex: the leader confirms it still leads, then waits until it has applied up to
    /// its commit index). Served by the leader only.
    pub async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>, RequestError> {
        self.check_size(&query)?;
        self.call(|reply| Request::Read { query, reply }).await
    }

    /// Answers `query` from this node's state as it is now, leader or not. Not linearizable
    /// (a follower may lag); for inspection and tests that compare members.
    pub async fn read_local(&self, query: Vec<u8>) -> Result<Vec<u8>, RequestError> {
        self.check_size(&query)?;
        self.call(|reply| Request::ReadLocal { query, reply }).await
    }

    /// Adds or removes a member; returns the voters once the change is applied here.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<Vec<u64>, RequestError> {
        self.call(|reply| Request::Membership { change, reply })
            .await
    }

    /// Asks this node, if it leads, to hand leadership to voter `to` (raft-rs's leader
    /// transfer: `to` is brought up to date, then told to campaign at once). Answers once the
    /// transfer has started, not when it is over; the status shows the new leader. Proposals
    /// are refused while a transfer is under way (for at most an election timeout).
    pub async fn transfer_leader(&self, to: u64) -> Result<(), RequestError> {
        self.call(|reply| Request::TransferLeader { to, reply })
            .await
    }

    /// The latest status.
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// Stops the driver (the store is closed when the thread ends). Idempotent.
    pub fn shutdown(&self) {
        let _ = self.shutdown.try_send(());
    }

    /// Waits until the driver thread has ended and closed the store (after `shutdown`, or a
    /// fatal error), so the data dir can be reopened.
    pub async fn stopped(&self) {
        let mut status = self.status.clone();
        // The driver owns the sender; it is dropped, after the store, when the driver ends.
        while status.changed().await.is_ok() {}
    }
}

enum PendingKind {
    Proposal(Reply<Vec<u8>>),
    Membership(Reply<Vec<u64>>),
}

struct Pending {
    term: u64,
    proposal_id: u64,
    kind: PendingKind,
}

impl Pending {
    fn fail(self, error: RequestError) {
        match self.kind {
            PendingKind::Proposal(reply) => {
                let _ = reply.send(Err(error));
            }
            PendingKind::Membership(reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    fn is_abandoned(&self) -> bool {
        match &self.kind {
            PendingKind::Proposal(reply) => reply.is_closed(),
            PendingKind::Membership(reply) => reply.is_closed(),
        }
    }
}

struct PendingRead {
    query: Vec<u8>,
    reply: Reply<Vec<u8>>,
}

struct Driver<S, T: Transport> {
    id: u64,
    raw: RawNode<DiskStorage>,
    state_machine: S,
    transport: T,
    config: Config,
    metrics: RaftMetrics,
    peers: BTreeMap<u64, String>,
    /// Proposals waiting for the entry at their index to apply.
    pending: BTreeMap<u64, Pending>,
    next_proposal_id: u64,
    reads_awaiting_index: HashMap<u64, PendingRead>,
    reads_awaiting_apply: Vec<(u64, PendingRead)>,
    applied: u64,
    led_terms: Vec<u64>,
    term_proposers: BTreeMap<u64, BTreeSet<u64>>,
    leader: u64,
    status_tx: Option<watch::Sender<NodeStatus>>,
    /// Set when a leader counts this node as holding entries its log lacks; the driver stops
    /// at its next turn, before raft-rs would panic on the commit index.
    lost_log: Option<String>,
    lost_log_advice: String,
    /// Ticks since the driver started: the clock of `succession`.
    ticks: u64,
    /// Set while this node helps elect a successor to a leader whose port was found closed.
    succession: Option<Succession>,
    dead_leader_campaigns: u64,
    /// The index of the snapshot being encoded and written on its own thread, if any: one at
    /// a time.
    snapshot_writing: Option<u64>,
    /// After a snapshot could not be written, the tick before which none is tried again.
    snapshot_retry_tick: u64,
    snapshots_written: mpsc::UnboundedSender<SnapshotWritten>,
}

/// A snapshot encoded and written by its own thread: the metadata captured with the state,
/// and the data file's name (or why it could not be written).
struct SnapshotWritten {
    meta: SnapshotMetadata,
    file: Result<String, String>,
    bytes: usize,
    took: Duration,
}

/// The succession of a leader whose process is gone (its port refused a probe). Its lease
/// is void: nobody can hear from it again in its term. The surviving voters campaign in id
/// order, one heartbeat apart, each again after every other survivor had its turn, so one of
/// them wins at once instead of all waiting out a randomised election timeout. Pre-vote keeps
/// this safe: a campaign never disrupts a live leader's term, and a node whose log is behind
/// cannot win.
#[derive(Debug, Clone, Copy)]
struct Succession {
    /// The dead leader.
    dead: u64,
    /// The term it led; a new term (anyone's campaign that got votes) ends the succession.
    term: u64,
    /// This node's next turn to campaign.
    next_campaign_tick: u64,
    /// Ticks between this node's turns: one heartbeat per survivor.
    every: u64,
    /// After one election timeout the ordinary randomised timer takes over.
    until_tick: u64,
}

/// A failure that stops the driver: the store or raft-rs refused an operation, and going on
/// could acknowledge something that is not durable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Fatal(String);

impl From<raft::Error> for Fatal {
    fn from(error: raft::Error) -> Self {
        Fatal(error.to_string())
    }
}

impl<S: StateMachine, T: Transport> Driver<S, T> {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Inbound>,
        mut requests: mpsc::Receiver<Request>,
        mut shutdown: mpsc::Receiver<()>,
        mut snapshots: mpsc::UnboundedReceiver<SnapshotWritten>,
    ) {
        let mut ticker = tokio::time::interval(self.config.tick_interval());
        // After a pause (SIGSTOP, a slow fsync) tick once, not in a burst: a burst would
        // expire the election timeout at once and start needless elections.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.ticks += 1;
                    self.forget_abandoned();
                    self.probe_leader();
                    self.succeed_dead_leader();
                }
                inbound = inbox.recv() => match inbound {
                    Some(inbound) => self.handle_inbound(inbound),
                    None => break,
                },
                request = requests.recv() => match request {
                    Some(request) => self.handle_request(request),
                    None => break,
                },
                _ = shutdown.recv() => break,
                Some(written) = snapshots.recv() => {
                    if let Err(Fatal(reason)) = self.snapshot_written(written) {
                        self.fail(reason);
                        return;
                    }
                }
            }
            for _ in 0..MAX_DRAIN_PER_TURN {
                match inbox.try_recv() {
                    Ok(inbound) => self.handle_inbound(inbound),
                    Err(_) => break,
                }
            }
            for _ in 0..MAX_DRAIN_PER_TURN {
                match requests.try_recv() {
                    Ok(request) => self.handle_request(request),
                    Err(_) => break,
                }
            }
            if let Err(Fatal(reason)) = self.handle_ready() {
                self.fail(reason);
                return;
            }
            self.publish_status(None);
        }
        tracing::info!(node = self.id, "raft node stopped");
        self.fail_everything();
    }

    fn fail(mut self, reason: String) {
        tracing::error!(node = self.id, %reason, "raft node stopped on an unrecoverable error");
        self.fail_everything();
        self.publish_status(Some(reason));
    }

    /// Answers everything still waiting when the node stops. A pending proposal's entry is in
    /// this node's log and may already be on a follower, which can commit it as the next
    /// leader: its outcome is unknown, never "not applied". A read has no effect to be unsure
    /// of: it just stopped.
    fn fail_everything(&mut self) {
        for (_, pending) in std::mem::take(&mut self.pending) {
            pending.fail(RequestError::OutcomeUnknown);
        }
        for (_, read) in std::mem::take(&mut self.reads_awaiting_index) {
            let _ = read.reply.send(Err(RequestError::Stopped));
        }
        for (_, read) in std::mem::take(&mut self.reads_awaiting_apply) {
            let _ = read.reply.send(Err(RequestError::Stopped));
        }
    }

    fn status(&self, failure: Option<String>) -> NodeStatus {
        let raft = &self.raw.raft;
        NodeStatus {
            id: self.id,
            role: raft.state.into(),
            term: raft.term,
            leader: (raft.leader_id != raft::INVALID_ID).then_some(raft.leader_id),
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            last_index: raft.raft_log.last_index(),
            voters: {
                let mut voters = self.raw.store().conf_state().voters.clone();
                voters.sort_unstable();
                voters
            },
            led_terms: self.led_terms.clone(),
            term_proposers: self.term_proposers.clone(),
            failure,
            dead_leader_campaigns: self.dead_leader_campaigns,
        }
    }

    fn publish_status(&self, failure: Option<String>) {
        let status = self.status(failure);
        self.metrics.term.set(status.term as i64);
        self.metrics.commit_index.set(status.commit_index as i64);
        self.metrics.applied_index.set(status.applied_index as i64);
        self.metrics
            .is_leader
            .set(i64::from(status.role == Role::Leader));
        if let Some(tx) = &self.status_tx {
            tx.send_if_modified(|current| {
                if *current == status {
                    false
                } else {
                    *current = status;
                    true
                }
            });
        }
    }

    fn leader_hint(&self) -> Option<u64> {
        let leader = self.raw.raft.leader_id;
        (leader != raft::INVALID_ID && leader != self.id).then_some(leader)
    }

    fn handle_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Message(message) => {
                if let Some(lost) = self.lost_entries(&message) {
                    self.lost_log.get_or_insert(lost);
                    return;
                }
                // Errors here are messages from unknown peers or for the wrong node: raft-rs
                // ignores them and so do we, they are not ours to act on.
                if let Err(error) = self.raw.step(message) {
                    tracing::debug!(node = self.id, %error, "raft message ignored");
                }
            }
            Inbound::Unreachable(peer) => self.raw.report_unreachable(peer),
            Inbound::PeerDown(peer) => self.leader_down(peer),
            Inbound::SnapshotStatus { to, delivered } => {
                let status = if delivered {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
        }
    }

    /// A follower asks each tick whether its leader's process is still there (a one-datagram
    /// probe, answered by the transport only when the port is closed).
    fn probe_leader(&mut self) {
        let raft = &self.raw.raft;
        if raft.state == StateRole::Follower
            && raft.leader_id != raft::INVALID_ID
            && raft.leader_id != self.id
        {
            let leader = raft.leader_id;
            self.transport.probe(leader);
        }
    }

    /// `peer`'s port is closed. If it is the leader this node follows, its lease is over here
    /// (the election timer is moved to the timeout, so this node grants the survivors' votes
    /// at once) and the succession starts: this node campaigns now if it has the lowest id of
    /// the surviving voters, else at its turn.
    fn leader_down(&mut self, peer: u64) {
        let raft = &mut self.raw.raft;
        if raft.state != StateRole::Follower || raft.leader_id != peer || peer == self.id {
            return;
        }
        if self
            .succession
            .is_some_and(|s| s.term == raft.term && s.dead == peer)
        {
            return;
        }
        let mut survivors = self.raw.store().conf_state().voters.clone();
        survivors.retain(|&v| v != peer);
        survivors.sort_unstable();
        let Some(rank) = survivors.iter().position(|&v| v == self.id) else {
            return; // a learner does not campaign
        };
        let raft = &mut self.raw.raft;
        let timeout = raft.election_timeout();
        raft.election_elapsed = raft.election_elapsed.max(timeout);
        let heartbeat = self.config.heartbeat_ticks as u64;
        tracing::info!(
            node = self.id,
            leader = peer,
            term = raft.term,
            rank,
            "the leader's port is closed: its lease is over, electing a successor"
        );
        self.succession = Some(Succession {
            dead: peer,
            term: raft.term,
            next_campaign_tick: self.ticks + rank as u64 * heartbeat,
            every: survivors.len() as u64 * heartbeat,
            until_tick: self.ticks + timeout as u64,
        });
        self.succeed_dead_leader();
    }

    /// Campaigns at this node's turn in a succession, until a new term starts, a live leader
    /// is heard, or one election timeout has passed.
    fn succeed_dead_leader(&mut self) {
        let Some(mut succession) = self.succession else {
            return;
        };
        let raft = &self.raw.raft;
        let live_leader = raft.leader_id != raft::INVALID_ID && raft.leader_id != succession.dead;
        if raft.term != succession.term || live_leader || self.ticks > succession.until_tick {
            self.succession = None;
            return;
        }
        let may_campaign = matches!(raft.state, StateRole::Follower | StateRole::PreCandidate);
        if may_campaign && self.ticks >= succession.next_campaign_tick {
            succession.next_campaign_tick = self.ticks + succession.every;
            self.dead_leader_campaigns += 1;
            self.metrics.dead_leader_campaigns.inc();
            if let Err(error) = self.raw.campaign() {
                tracing::warn!(node = self.id, %error, "campaign refused");
            }
        }
        self.succession = Some(succession);
    }

    /// A heartbeat carries `min(what the leader counts as replicated here, its commit)`. A
    /// commit beyond this node's last index means the leader saw this node acknowledge
    /// entries that are gone (its data directory was lost): raft-rs would panic on it, and
    /// a node that forgot its log and its votes must not take part until it is removed and
    /// added back as a new member.
    fn lost_entries(&self, message: &raft::eraftpb::Message) -> Option<String> {
        let last = self.raw.raft.raft_log.last_index();
        let lost = message.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeat
            && message.term >= self.raw.raft.term
            && message.commit > last;
        lost.then(|| {
            format!(
                "node {} holds the log up to index {last}, but leader {} counts it as holding \
                 entries up to {}: this node's data directory was lost or replaced since it \
                 last ran, and it cannot rejoin as the member it was. {}",
                self.id, message.from, message.commit, self.lost_log_advice
            )
        })
    }

    fn handle_request(&mut self, request: Request) {
        let is_leader = self.raw.raft.state == StateRole::Leader;
        match request {
            Request::Propose { command, reply } => {
                if !is_leader {
                    self.metrics
                        .proposals
                        .with_label_values(&["not_leader"])
                        .inc();
                    let _ = reply.send(Err(RequestError::NotLeader {
                        leader: self.leader_hint(),
                    }));
                    return;
                }
                if self.pending.len() >= self.config.max_pending_proposals {
                    self.metrics.proposals.with_label_values(&["busy"]).inc();
                    let _ = reply.send(Err(RequestError::Busy));
                    return;
                }
                let proposal_id = self.next_proposal_id;
                self.next_proposal_id += 1;
                let context = encode_context(self.id, proposal_id, &[]);
                match self.raw.propose(context, command) {
                    Ok(()) => self.track(proposal_id, PendingKind::Proposal(reply)),
                    Err(_) => {
                        self.metrics.proposals.with_label_values(&["dropped"]).inc();
                        let _ = reply.send(Err(RequestError::Dropped));
                    }
                }
            }
            Request::Read { query, reply } => {
                if !is_leader {
                    let _ = reply.send(Err(RequestError::NotLeader {
                        leader: self.leader_hint(),
                    }));
                    return;
                }
                let read_id = self.next_proposal_id;
                self.next_proposal_id += 1;
                self.raw.read_index(read_id.to_le_bytes().to_vec());
                self.reads_awaiting_index
                    .insert(read_id, PendingRead { query, reply });
            }
            Request::ReadLocal { query, reply } => {
                let _ = reply.send(Ok(self.state_machine.query(&query)));
            }
            Request::TransferLeader { to, reply } => {
                if !is_leader {
                    let _ = reply.send(Err(RequestError::NotLeader {
                        leader: self.leader_hint(),
                    }));
                    return;
                }
                self.raw.transfer_leader(to);
                let _ = reply.send(Ok(()));
            }
            Request::Membership { change, reply } => {
                if !is_leader {
                    let _ = reply.send(Err(RequestError::NotLeader {
                        leader: self.leader_hint(),
                    }));
                    return;
                }
                let proposal_id = self.next_proposal_id;
                self.next_proposal_id += 1;
                let (cc, payload) = match &change {
                    MembershipChange::AddVoter { id, address } => (
                        ConfChange {
                            change_type: ConfChangeType::AddNode,
                            node_id: *id,
                            ..ConfChange::default()
                        },
                        address.as_bytes().to_vec(),
                    ),
                    MembershipChange::Remove { id } => (
                        ConfChange {
                            change_type: ConfChangeType::RemoveNode,
                            node_id: *id,
                            ..ConfChange::default()
                        },
                        Vec::new(),
                    ),
                };
                let context = encode_context(self.id, proposal_id, &payload);
                match self.raw.propose_conf_change(context, cc) {
                    Ok(()) => self.track(proposal_id, PendingKind::Membership(reply)),
                    Err(error) => {
                        let _ = reply.send(Err(RequestError::Membership(error.to_string())));
                    }
                }
            }
        }
    }

    /// Remembers a proposal just appended to the leader's log.
    fn track(&mut self, proposal_id: u64, kind: PendingKind) {
        let index = self.raw.raft.raft_log.last_index();
        let pending = Pending {
            term: self.raw.raft.term,
            proposal_id,
            kind,
        };
        if let Some(replaced) = self.pending.insert(index, pending) {
            // An older proposal at the same index lost its entry to a newer leader's log.
            replaced.fail(RequestError::Dropped);
        }
    }

    /// Drops bookkeeping for callers that gave up (timed out); their entries still apply.
    fn forget_abandoned(&mut self) {
        self.pending.retain(|_, p| !p.is_abandoned());
        self.reads_awaiting_index
            .retain(|_, r| !r.reply.is_closed());
    }

    fn handle_ready(&mut self) -> Result<(), Fatal> {
        if let Some(lost) = self.lost_log.take() {
            return Err(Fatal(lost));
        }
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(soft) = ready.ss() {
            self.handle_soft_state(soft.leader_id, soft.raft_state);
        }
        // A leader may send appends before its own fsync (Raft thesis §10.2.1); everything
        // else waits for persistence below.
        self.transport.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }
        for state in ready.take_read_states() {
            let read_id = state
                .request_ctx
                .as_slice()
                .try_into()
                .map(u64::from_le_bytes)
                .unwrap_or_default();
            if let Some(read) = self.reads_awaiting_index.remove(&read_id) {
                self.reads_awaiting_apply.push((state.index, read));
            }
        }
        let sync = !ready.entries().is_empty() || ready.must_sync();
        self.raw
            .mut_store()
            .persist(ready.entries(), ready.hs(), sync)?;
        self.transport.send(ready.take_persisted_messages());
        self.apply(ready.take_committed_entries())?;
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.serve_reads();
        self.maybe_snapshot()?;
        Ok(())
    }

    fn handle_soft_state(&mut self, leader: u64, role: StateRole) {
        if leader != self.leader {
            self.leader = leader;
            self.metrics.leader_changes.inc();
            tracing::info!(
                node = self.id,
                leader,
                term = self.raw.raft.term,
                "leader changed"
            );
        }
        if role == StateRole::Leader {
            let term = self.raw.raft.term;
            if self.led_terms.last() != Some(&term) {
                self.led_terms.push(term);
                if self.led_terms.len() > HISTORY_TERMS {
                    self.led_terms.remove(0);
                }
            }
        } else {
            // Reads waiting for a ReadIndex answer will never get one from a non-leader.
            let hint = self.leader_hint();
            for (_, read) in self.reads_awaiting_index.drain() {
                let _ = read
                    .reply
                    .send(Err(RequestError::NotLeader { leader: hint }));
            }
        }
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), Fatal> {
        let index = snapshot.get_metadata().index;
        let data: SnapshotData = postcard::from_bytes(&snapshot.data)
            .map_err(|e| Fatal(format!("snapshot at {index} is unreadable: {e}")))?;
        self.state_machine
            .restore(&data.state)
            .map_err(|e| Fatal(format!("snapshot at {index}: {e}")))?;
        self.raw.mut_store().apply_snapshot(&snapshot)?;
        // Proposals at or below the snapshot's index will never be applied one by one here, so
        // `resolve_before` would call them dropped; but a leader that lost its leadership may
        // have handed its entry to a follower, and the next leader commits it: unknown, not
        // dropped.
        let later = self.pending.split_off(&(index + 1));
        for (_, covered) in std::mem::replace(&mut self.pending, later) {
            covered.fail(RequestError::OutcomeUnknown);
        }
        for (id, address) in data.peers {
            if id != self.id && !self.peers.contains_key(&id) {
                self.transport.set_peer(id, &address);
                self.peers.insert(id, address);
            }
        }
        self.applied = index;
        tracing::info!(
            node = self.id,
            index,
            bytes = snapshot.data.len(),
            "installed snapshot from the leader"
        );
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Fatal> {
        for entry in entries {
            let index = entry.index;
            if index <= self.applied {
                continue;
            }
            let context = decode_context(&entry.context);
            if let Some((proposer, _, _)) = context {
                let proposers = self.term_proposers.entry(entry.term).or_default();
                proposers.insert(proposer);
                if self.term_proposers.len() > HISTORY_TERMS {
                    self.term_proposers.pop_first();
                }
            }
            let my_id = self.id;
            let ours = |pending: &Pending| {
                matches!(context, Some((proposer, id, _))
                    if proposer == my_id && id == pending.proposal_id && entry.term == pending.term)
            };
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    // A newer version's entry stops the node before it is applied (see
                    // `StateMachine::readable`); the entry stays in the log for the upgrade.
                    if !entry.data.is_empty() {
                        self.state_machine
                            .readable(&entry.data)
                            .map_err(|e| Fatal(format!("log entry {index}: {e}")))?;
                    }
                    // Empty entries are the no-ops new leaders append; nothing to apply.
                    let result = (!entry.data.is_empty())
                        .then(|| self.state_machine.apply(index, &entry.data));
                    self.applied = index;
                    self.resolve_before(index);
                    if let Some(pending) = self.pending.remove(&index) {
                        match (ours(&pending), result, pending.kind) {
                            (true, Some(result), PendingKind::Proposal(reply)) => {
                                self.metrics.proposals.with_label_values(&["applied"]).inc();
                                let _ = reply.send(Ok(result));
                            }
                            (_, _, kind) => {
                                self.metrics.proposals.with_label_values(&["dropped"]).inc();
                                Pending { kind, ..pending }.fail(RequestError::Dropped);
                            }
                        }
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&entry.data)
                        .map_err(|e| Fatal(format!("conf change at {index}: {e}")))?;
                    let conf_state = self.raw.apply_conf_change(&cc)?;
                    let address = context
                        .and_then(|(_, _, payload)| std::str::from_utf8(payload).ok())
                        .filter(|a| {
                            !a.is_empty() && cc.get_change_type() == ConfChangeType::AddNode
                        });
                    let mut voters = conf_state.voters.clone();
                    voters.sort_unstable();
                    self.raw
                        .mut_store()
                        .set_conf_state(conf_state, address.map(|a| (cc.node_id, a)))?;
                    match (cc.get_change_type(), address) {
                        (ConfChangeType::AddNode, Some(address)) if cc.node_id != self.id => {
                            self.transport.set_peer(cc.node_id, address);
                            self.peers.insert(cc.node_id, address.to_owned());
                        }
                        (ConfChangeType::RemoveNode, _) if cc.node_id != self.id => {
                            self.transport.remove_peer(cc.node_id);
                            self.peers.remove(&cc.node_id);
                        }
                        _ => {}
                    }
                    tracing::info!(node = self.id, index, ?voters, "membership changed");
                    self.applied = index;
                    self.resolve_before(index);
                    if let Some(pending) = self.pending.remove(&index) {
                        match (ours(&pending), pending.kind) {
                            (true, PendingKind::Membership(reply)) => {
                                let _ = reply.send(Ok(voters));
                            }
                            (_, kind) => Pending { kind, ..pending }.fail(RequestError::Dropped),
                        }
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    return Err(Fatal(format!(
                        "entry {index} is a joint-consensus change, which this node never proposes"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Fails proposals at indexes below `index` that were skipped (their entries were
    /// replaced by a snapshot or a newer leader's log).
    fn resolve_before(&mut self, index: u64) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= index {
                break;
            }
            entry.remove().fail(RequestError::Dropped);
        }
    }

    fn serve_reads(&mut self) {
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_awaiting_apply)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads_awaiting_apply = waiting;
        for (_, read) in ready {
            let answer = self.state_machine.query(&read.query);
            let _ = read.reply.send(Ok(answer));
        }
    }

    /// Starts a snapshot when the log grew by the interval since the last one, or raft-rs
    /// needs a newer one for a follower. The state is captured here, at the applied index;
    /// encoding it and writing the file happen on a thread of their own, so a state of
    /// hundreds of MiB never holds up heartbeats; the log is compacted once the file is on
    /// disk ([`Self::snapshot_written`]).
    fn maybe_snapshot(&mut self) -> Result<(), Fatal> {
        if self.snapshot_writing.is_some() || self.ticks < self.snapshot_retry_tick {
            return Ok(());
        }
        let store = self.raw.store();
        let wanted = store.take_snapshot_wanted() && self.applied > store.snapshot_index();
        if !wanted && self.applied < store.snapshot_index() + self.config.snapshot_interval_entries
        {
            return Ok(());
        }
        let meta = store.snapshot_metadata(self.applied)?;
        let files = store.snapshot_files();
        let encode = self.state_machine.capture();
        let peers = self.peers.clone();
        let written = self.snapshots_written.clone();
        let index = meta.index;
        thread::Builder::new()
            .name(format!("raft-{}-snapshot", self.id))
            .spawn(move || {
                let started = Instant::now();
                let data = SnapshotData {
                    peers,
                    state: encode(),
                };
                let (file, bytes) = match postcard::to_stdvec(&data) {
                    Ok(bytes) => (
                        files
                            .write(index, SnapshotOrigin::Taken, &bytes)
                            .map_err(|e| format!("writing the snapshot file: {e}")),
                        bytes.len(),
                    ),
                    Err(e) => (Err(format!("encoding the snapshot: {e}")), 0),
                };
                let took = started.elapsed();
                // The driver is gone when the node stopped meanwhile; the file is then
                // removed at the next start.
                let _ = written.send(SnapshotWritten {
                    meta,
                    file,
                    bytes,
                    took,
                });
            })
            .map_err(|e| Fatal(format!("cannot start a snapshot thread: {e}")))?;
        self.snapshot_writing = Some(index);
        Ok(())
    }

    /// Records a snapshot whose file its thread wrote, and compacts the log up to it.
    fn snapshot_written(&mut self, written: SnapshotWritten) -> Result<(), Fatal> {
        self.snapshot_writing = None;
        let index = written.meta.index;
        match written.file {
            Ok(file) => {
                if self.raw.mut_store().record_snapshot(written.meta, file)? {
                    self.metrics.snapshots_taken.inc();
                    tracing::info!(
                        node = self.id,
                        index,
                        bytes = written.bytes,
                        took_ms = written.took.as_millis() as u64,
                        "snapshot taken, log compacted"
                    );
                }
            }
            Err(error) => {
                // The log is kept whole, so nothing is lost; the next try waits an election
                // timeout rather than spinning on a full or broken disk.
                self.snapshot_retry_tick = self.ticks + self.config.election_ticks as u64;
                tracing::warn!(node = self.id, index, %error, "snapshot not written; the log is kept");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SnapshotData` as builds before `state_bytes` wrote it.
    #[derive(Serialize)]
    struct SnapshotDataPerByte {
        peers: BTreeMap<u64, String>,
        state: Vec<u8>,
    }

    #[test]
    fn snapshot_state_as_one_byte_string_encodes_as_before() {
        let peers = BTreeMap::from([(2, "127.0.0.1:7002".to_owned())]);
        let state: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let before = postcard::to_stdvec(&SnapshotDataPerByte {
            peers: peers.clone(),
            state: state.clone(),
        })
        .unwrap();
        let now = postcard::to_stdvec(&SnapshotData {
            peers,
            state: state.clone(),
        })
        .unwrap();
        assert_eq!(before, now);
        let read: SnapshotData = postcard::from_bytes(&before).unwrap();
        assert_eq!(read.state, state);
    }
}
