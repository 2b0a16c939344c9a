//! Prometheus metrics of one Raft node: term, commit and applied indexes, leadership, leader
//! changes and proposal outcomes. Registered on a registry the caller owns (one per process,
//! or one per node in in-memory tests); it must not use the global default registry.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct RaftMetrics {
    pub term: IntGauge,
    pub commit_index: IntGauge,
    pub applied_index: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub dead_leader_campaigns: IntCounter,
    pub proposals: IntCounterVec,
    pub snapshots_taken: IntCounter,
}

impl RaftMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            term: IntGauge::new("umbra_raft_term", "Current Raft term of this node.")?,
            commit_index: IntGauge::new(
                "umbra_raft_commit_index",
                "Highest log index known to be committed.",
            )?,
            applied_index: IntGauge::new(
                "umbra_raft_applied_index",
                "Highest log index applied to the state machine.",
            )?,
            is_leader: IntGauge::new("umbra_raft_is_leader", "1 while this node is the leader.")?,
            leader_changes: IntCounter::new(
                "umbra_raft_leader_changes_total",
                "Times this node saw the leader change.",
            )?,
            dead_leader_campaigns: IntCounter::new(
                "umbra_raft_dead_leader_campaigns_total",
                "Campaigns started because the leader's port was found closed (its process gone), without waiting out the election timeout.",
            )?,
            proposals: IntCounterVec::new(
                Opts::new(
                    "umbra_raft_proposals_total",
                    "Proposals by outcome (applied, dropped, not_leader, busy).",
                ),
                &["outcome"],
            )?,
            snapshots_taken: IntCounter::new(
                "umbra_raft_snapshots_total",
                "State-machine snapshots taken (each followed by a log compaction).",
            )?,
        };
        registry.register(Box::new(metrics.term.clone()))?;
        registry.register(Box::new(metrics.commit_index.clone()))?;
        registry.register(Box::new(metrics.applied_index.clone()))?;
        registry.register(Box::new(metrics.is_leader.clone()))?;
        registry.register(Box::new(metrics.leader_changes.clone()))?;
        registry.register(Box::new(metrics.dead_leader_campaigns.clone()))?;
        registry.register(Box::new(metrics.proposals.clone()))?;
        registry.register(Box::new(metrics.snapshots_taken.clone()))?;
        Ok(metrics)
    }
}
