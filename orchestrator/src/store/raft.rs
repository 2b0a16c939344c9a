//! A [`Replicated`] store over this orchestrator's Raft node. On the leader, commands and
//! reads go straight to the local node; on a follower they are forwarded to the leader with
//! a [`StoreClient`] (QUIC, this node's orchestrator certificate), which follows leader
//! hints. A write is sent at most once: when its outcome is unknown (timeout, lost
//! connection) the caller is told so, never retried blindly.
//!
//! This module wires; it must not interpret commands (that is `state`).

use std::net::SocketAddr;

use tokio::sync::Mutex;
use umbra_consensus::{RaftNode, RequestError};
use umbra_proto::Credentials;

use super::{LeaderInfo, ObservationBoard, Replicated, StoreError};
use super::{StoreClient, StoreClientError};
use crate::migration::Observations;
use crate::state::{
    Command, Outcome, Query, QueryAnswer, decode_answer, decode_outcome, encode_command,
    encode_query,
};

/// See the module docs.
pub struct RaftReplicated {
    raft: RaftNode,
    credentials: Credentials,
    /// The cluster's QUIC addresses, for forwarding from a follower.
    nodes: Vec<SocketAddr>,
    /// Created on the first forwarded request; one forwarded request at a time (operator
    /// writes are rare, and the client holds one stream).
    forwarder: Mutex<Option<StoreClient>>,
    observations: ObservationBoard,
}

impl RaftReplicated {
    /// A store over `raft`, forwarding to the leader among `nodes` (QUIC addresses of every
    /// member, this one included) with `credentials` (this orchestrator's).
    pub fn new(
        raft: RaftNode,
        credentials: Credentials,
        nodes: Vec<SocketAddr>,
        observations: ObservationBoard,
    ) -> Self {
        Self {
            raft,
            credentials,
            nodes,
            forwarder: Mutex::new(None),
            observations,
        }
    }

    async fn forward_propose(&self, bytes: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let mut forwarder = self.forwarder().await?;
        let client = forwarder.as_mut().expect("forwarder() fills it");
        client.propose(bytes).await.map_err(forward_error)
    }

    async fn forward_read(&self, bytes: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let mut forwarder = self.forwarder().await?;
        let client = forwarder.as_mut().expect("forwarder() fills it");
        client.read(bytes).await.map_err(forward_error)
    }

    async fn forwarder(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<StoreClient>>, StoreError> {
        let mut guard = self.forwarder.lock().await;
        if guard.is_none() {
            let client = StoreClient::new(&self.credentials, self.nodes.clone()).map_err(|e| {
                StoreError::Unavailable(format!("cannot forward to the leader: {e}"))
            })?;
            *guard = Some(client);
        }
        Ok(guard)
    }
}

fn forward_error(error: StoreClientError) -> StoreError {
    match error {
        StoreClientError::OutcomeUnknown(reason) => StoreError::OutcomeUnknown(reason),
        StoreClientError::NotLeader(hint) => StoreError::NoLeader(format!("leader hint {hint:?}")),
        StoreClientError::Unexpected(outcome) => StoreError::Garbled(format!("{outcome:?}")),
        StoreClientError::Refused {
            kind: umbra_proto::ClientErrorKind::Timeout,
            message,
        } => StoreError::OutcomeUnknown(message),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Maps a local Raft error, or `None` when the request should be forwarded to the leader.
fn local_error(error: RequestError) -> Option<StoreError> {
    match error {
        RequestError::NotLeader { .. } => None,
        RequestError::Timeout { .. } | RequestError::OutcomeUnknown => {
            Some(StoreError::OutcomeUnknown(error.to_string()))
        }
        RequestError::Dropped | RequestError::Busy | RequestError::Stopped => {
            Some(StoreError::Unavailable(error.to_string()))
        }
        RequestError::TooLarge { .. } | RequestError::Membership(_) => {
            Some(StoreError::Garbled(error.to_string()))
        }
    }
}

#[async_trait::async_trait]
impl Replicated for RaftReplicated {
    async fn propose(&self, command: Command) -> Result<Outcome, StoreError> {
        let bytes = encode_command(&command);
        let answer = match self.raft.propose(bytes.clone()).await {
            Ok(answer) => answer,
            Err(error) => match local_error(error) {
                Some(error) => return Err(error),
                None => self.forward_propose(bytes).await?,
            },
        };
        decode_outcome(&answer).map_err(|e| StoreError::Garbled(e.to_string()))
    }

    async fn query(&self, query: Query) -> Result<QueryAnswer, StoreError> {
        let bytes = encode_query(&query);
        let answer = match self.raft.read(bytes.clone()).await {
            Ok(answer) => answer,
            Err(error) => match local_error(error) {
                Some(error) => return Err(error),
                None => self.forward_read(bytes).await?,
            },
        };
        decode_answer(&answer).map_err(|e| StoreError::Garbled(e.to_string()))
    }

    fn leader(&self) -> LeaderInfo {
        let status = self.raft.status();
        LeaderInfo {
            this_node: Some(status.id),
            leader: status.leader,
            term: status.term,
        }
    }

    fn observations(&self, id: &str) -> Option<Observations> {
        self.observations.get(id)
    }

    fn pools(&self) -> Vec<crate::capacity::PoolView> {
        self.observations.pools()
    }
}
