//! Requests to the replicated store and their answers, on a
//! [`StreamKind::Client`](crate::StreamKind::Client) stream: propose a command and get the
//! applied result, or read linearizably.
//!
//! Commands, queries and results are opaque bytes: each state machine encodes its own. This
//! module must stay generic; it knows nothing about key-value stores or migrations.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A request to the replicated store. `id` is chosen by the client and echoed in the
/// response, so one stream can carry several requests in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// Client-chosen id, echoed in [`ClientResponse::id`].
    pub id: u64,
    /// What is asked.
    pub body: ClientRequestBody,
}

/// What a client asks of the replicated store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequestBody {
    /// Replicate `command` and apply it; answered once it is applied on the leader.
    Propose {
        /// The state machine's encoding of the command.
        command: Vec<u8>,
    },
    /// A linearizable read (ReadIndex): `query` runs against state at least as new as
    /// every write acknowledged before the read started.
    Read {
        /// The state machine's encoding of the query.
        query: Vec<u8>,
    },
    /// Who leads, as far as the answering node knows.
    LeaderInfo,
    /// Change the Raft group's membership.
    ChangeMembership(MembershipChange),
}

/// A membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add an orchestrator as a voter.
    AddNode {
        /// Its Raft node id.
        node_id: u64,
        /// Its QUIC address, where the others reach it. IP and port only: serde's encoding
        /// of `SocketAddr` drops an IPv6 scope id and flow label.
        addr: SocketAddr,
    },
    /// Remove a node from the group.
    RemoveNode {
        /// Its Raft node id.
        node_id: u64,
    },
}

/// The answer to one [`ClientRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientResponse {
    /// The request's id.
    pub id: u64,
    /// What happened.
    pub outcome: ClientOutcome,
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientOutcome {
    /// The command was committed and applied; the state machine's result.
    Applied {
        /// The state machine's encoding of the result.
        result: Vec<u8>,
    },
    /// The read's result.
    ReadResult {
        /// The state machine's encoding of the result.
        result: Vec<u8>,
    },
    /// Answer to [`ClientRequestBody::LeaderInfo`].
    Leader(LeaderHint),
    /// This node is not the leader; retry at the hint.
    NotLeader(LeaderHint),
    /// The request failed.
    Failed(ClientError),
}

/// Where the leader is believed to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    /// The leader's Raft node id, if one is known.
    pub leader_id: Option<u64>,
    /// The leader's QUIC address, if known.
    pub leader_addr: Option<SocketAddr>,
    /// The term the answering node is in.
    pub term: u64,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ClientError {
    /// The category, which says whether retrying can help.
    pub kind: ClientErrorKind,
    /// A human-readable explanation.
    pub message: String,
}

/// Categories of request failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientErrorKind {
    /// Not committed in time; the command may still be applied later, so only retry
    /// idempotent commands.
    Timeout,
    /// Raft dropped the proposal (e.g. leadership changed); it was not applied. Retry.
    Dropped,
    /// The request is invalid (the state machine or the membership rules refused it);
    /// retrying will not help.
    Invalid,
    /// The node is shutting down. Retry elsewhere.
    ShuttingDown,
    /// An internal failure on the node.
    Internal,
}
