//! A [`Replicated`] store over one in-process [`OrchestratorState`]: a single "node" that
//! always leads. Commands and queries go through the same envelope encoding and
//! `StateMachine` calls a Raft node makes, so the API behaves the same over both. For tests
//! and tools; it replicates nothing and must not be used where durability matters.

use std::sync::Mutex;

use umbra_consensus::StateMachine;

use super::{LeaderInfo, ObservationBoard, Replicated, StoreError};
use crate::migration::Observations;
use crate::state::{
    Command, OrchestratorState, Outcome, Query, QueryAnswer, decode_answer, decode_outcome,
    encode_command, encode_query,
};

/// See the module docs.
#[derive(Debug, Default)]
pub struct MemoryReplicated {
    inner: Mutex<Inner>,
    observations: ObservationBoard,
}

#[derive(Debug, Default)]
struct Inner {
    state: OrchestratorState,
    last_index: u64,
}

impl MemoryReplicated {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where the executor (or a test) publishes what it observed.
    pub fn observation_board(&self) -> ObservationBoard {
        self.observations.clone()
    }

    /// A copy of the state as it is now.
    pub fn state(&self) -> OrchestratorState {
        self.lock().state.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl Replicated for MemoryReplicated {
    async fn propose(&self, command: Command) -> Result<Outcome, StoreError> {
        let bytes = encode_command(&command);
        let mut inner = self.lock();
        inner.last_index += 1;
        let index = inner.last_index;
        let answer = inner.state.apply(index, &bytes);
        decode_outcome(&answer).map_err(|e| StoreError::Garbled(e.to_string()))
    }

    async fn query(&self, query: Query) -> Result<QueryAnswer, StoreError> {
        let answer = self.lock().state.query(&encode_query(&query));
        decode_answer(&answer).map_err(|e| StoreError::Garbled(e.to_string()))
    }

    fn leader(&self) -> LeaderInfo {
        LeaderInfo {
            this_node: None,
            leader: None,
            term: 0,
        }
    }

    fn observations(&self, id: &str) -> Option<Observations> {
        self.observations.get(id)
    }

    fn pools(&self) -> Vec<crate::capacity::PoolView> {
        self.observations.pools()
    }
}
