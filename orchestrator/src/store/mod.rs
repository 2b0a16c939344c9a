//! The replicated store that the operator API and the executor share: the [`Replicated`]
//! trait (propose a command, read linearizably, who leads), its two implementations,
//! [`RaftReplicated`] over this node's Raft group (forwarding to the leader with a
//! [`StoreClient`] from a follower) and [`MemoryReplicated`] over one in-process state (tests,
//! tools); the [`ObservationBoard`] where the leader's executor publishes what it observed and
//! the API reads it; and the [`Clock`] that commands take their time from.
//!
//! `api` and `executor` depend on this module and not on each other; `node` wires them. This
//! module must not interpret commands (that is `state`).

mod client;
mod memory;
mod raft;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::capacity::PoolView;
use crate::migration::Observations;
use crate::state::{Command, Outcome, Query, QueryAnswer};

pub use client::{StoreClient, StoreClientError};
pub use memory::MemoryReplicated;
pub use raft::RaftReplicated;

/// Why the replicated store could not answer. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No leader is known (an election is under way, or there is no quorum).
    #[error("no orchestrator leads the cluster right now ({0}); retry in a few seconds")]
    NoLeader(String),
    /// The cluster did not answer; nothing was applied.
    #[error("the cluster did not answer ({0}); nothing was applied, retry")]
    Unavailable(String),
    /// A write was sent but its fate is unknown (timeout, lost connection).
    #[error(
        "the write was sent but its outcome is unknown ({0}); check `umbra status` before retrying"
    )]
    OutcomeUnknown(String),
    /// The state machine answered something this API does not understand (a version skew
    /// between orchestrators, or a bug).
    #[error("the cluster's answer could not be understood: {0}")]
    Garbled(String),
}

/// Who leads the cluster, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaderInfo {
    /// This node's Raft id (`None` for a store that is not a Raft member).
    pub this_node: Option<u64>,
    /// The leader's Raft id, if one is known.
    pub leader: Option<u64>,
    /// The current Raft term.
    pub term: u64,
}

/// What the executor last observed per migration (shadow instances serving and warm,
/// replication lag). It is not replicated: the leader's executor publishes it here, and
/// `GET /v1/status` turns it into a readiness score on that node. Other nodes show no
/// readiness until they lead.
#[derive(Debug, Clone, Default)]
pub struct ObservationBoard {
    seen: Arc<RwLock<BTreeMap<String, Observations>>>,
    pools: Arc<RwLock<BTreeMap<(String, String), PoolView>>>,
}

impl ObservationBoard {
    /// Publishes the latest observations of migration `id`.
    pub fn publish(&self, id: &str, observations: Observations) {
        self.seen
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), observations);
    }

    /// Forgets migration `id` (it ended, or this node stopped leading).
    pub fn forget(&self, id: &str) {
        self.seen
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Publishes what a pool holds and should hold.
    pub fn publish_pool(&self, view: PoolView) {
        self.pools
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((view.service.clone(), view.region.clone()), view);
    }

    /// Forgets every pool (this node stopped leading).
    pub fn forget_pools(&self) {
        self.pools
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Every pool published, by service then region.
    pub fn pools(&self) -> Vec<PoolView> {
        self.pools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The latest observations of migration `id`.
    pub fn get(&self, id: &str) -> Option<Observations> {
        self.seen
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}

/// The replicated store the API reads and writes. Implementations must apply a command at
/// most once per `propose` call (no blind retries of writes).
#[async_trait::async_trait]
pub trait Replicated: Send + Sync + 'static {
    /// Replicates `command` and returns the state's verdict once it is applied.
    async fn propose(&self, command: Command) -> Result<Outcome, StoreError>;
    /// A linearizable read.
    async fn query(&self, query: Query) -> Result<QueryAnswer, StoreError>;
    /// Who leads, as this node sees it now.
    fn leader(&self) -> LeaderInfo;
    /// What the executor last observed for migration `id`, if this node runs it.
    fn observations(&self, id: &str) -> Option<Observations>;
    /// The serving pools, if this node's executor runs them (it leads).
    fn pools(&self) -> Vec<PoolView>;
}

/// Where `now` comes from (Unix ms). Commands carry it, so every decision about deadlines and
/// windows is made on one clock; the demo may pass a shifted one.
pub trait Clock: Send + Sync {
    /// Unix milliseconds now.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}
