//! Tuning of a Raft node: tick interval, election and heartbeat ticks, batch and inflight
//! limits, snapshot cadence and client deadlines. Plain data with `validate()`; it must not
//! read files or the environment (the node binary parses TOML at its edge).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// 100 ms ticks: etcd's default heartbeat interval, which keeps elections well under a
/// second on a LAN while costing a few packets per second per peer.
pub const DEFAULT_TICK_INTERVAL_MS: u64 = 100;
/// One heartbeat per tick, as etcd does (heartbeat interval = tick).
pub const DEFAULT_HEARTBEAT_TICKS: usize = 1;
/// Ten ticks (1 s): etcd's default election timeout, 10× the heartbeat, which the Raft paper
/// (§5.6) asks for so a slow heartbeat is not mistaken for a dead leader.
pub const DEFAULT_ELECTION_TICKS: usize = 10;
/// 1 MiB per append message: raft-rs recommends bounding `max_size_per_msg` so a lagging
/// follower is fed in pieces; TiKV uses 1 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 1024 * 1024;
/// 256 inflight append messages per follower: raft-rs's own default.
pub const DEFAULT_MAX_INFLIGHT_MSGS: usize = 256;
/// 4096 proposals waiting for their entry to apply: enough for the 64 concurrent proposers
/// of the benchmark many times over, small enough that a stuck cluster pushes back quickly.
pub const DEFAULT_MAX_PENDING_PROPOSALS: usize = 4096;
/// Take a state-machine snapshot and compact the log every 10 000 applied entries, so a
/// restart replays at most that many entries and the log stays bounded.
pub const DEFAULT_SNAPSHOT_INTERVAL_ENTRIES: u64 = 10_000;
/// A proposal or read that has not completed in 5 s fails: five election timeouts, so a
/// leader change in between still lets most requests finish.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Largest command or query accepted, 512 KiB: it must fit in one append message with room
/// for the envelope, below `umbra-proto`'s frame limit.
pub const DEFAULT_MAX_COMMAND_BYTES: usize = 512 * 1024;

/// Tuning of one Raft node. Every node of a cluster should use the same tick values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How often the Raft state machine is ticked.
    pub tick_interval_ms: u64,
    /// Ticks between heartbeats from the leader.
    pub heartbeat_ticks: usize,
    /// Ticks without a leader before a follower campaigns (randomised in [n, 2n)).
    pub election_ticks: usize,
    /// Largest append message to one follower.
    pub max_batch_bytes: u64,
    /// Append messages in flight to one follower.
    pub max_inflight_msgs: usize,
    /// Proposals waiting for their entry to apply on this node.
    pub max_pending_proposals: usize,
    /// Applied entries between snapshots (and log compactions).
    pub snapshot_interval_entries: u64,
    /// Deadline of one `propose` or `read`.
    pub request_timeout_ms: u64,
    /// Largest command or query in bytes.
    pub max_command_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tick_interval_ms: DEFAULT_TICK_INTERVAL_MS,
            heartbeat_ticks: DEFAULT_HEARTBEAT_TICKS,
            election_ticks: DEFAULT_ELECTION_TICKS,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_inflight_msgs: DEFAULT_MAX_INFLIGHT_MSGS,
            max_pending_proposals: DEFAULT_MAX_PENDING_PROPOSALS,
            snapshot_interval_entries: DEFAULT_SNAPSHOT_INTERVAL_ENTRIES,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            max_command_bytes: DEFAULT_MAX_COMMAND_BYTES,
        }
    }
}

/// A `Config` value that cannot work, with what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("raft.tick_interval_ms must be between 1 and 10000, got {0}")]
    TickInterval(u64),
    #[error("raft.heartbeat_ticks must be at least 1")]
    HeartbeatTicks,
    #[error(
        "raft.election_ticks ({election}) must be at least 3 × raft.heartbeat_ticks ({heartbeat}) so a late heartbeat does not start an election"
    )]
    ElectionTicks { election: usize, heartbeat: usize },
    #[error("raft.{0} must be greater than 0")]
    Zero(&'static str),
}

impl Config {
    /// Checks that the values can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=10_000).contains(&self.tick_interval_ms) {
            return Err(ConfigError::TickInterval(self.tick_interval_ms));
        }
        if self.heartbeat_ticks == 0 {
            return Err(ConfigError::HeartbeatTicks);
        }
        if self.election_ticks < 3 * self.heartbeat_ticks {
            return Err(ConfigError::ElectionTicks {
                election: self.election_ticks,
                heartbeat: self.heartbeat_ticks,
            });
        }
        for (name, value) in [
            ("max_batch_bytes", self.max_batch_bytes),
            ("max_inflight_msgs", self.max_inflight_msgs as u64),
            ("max_pending_proposals", self.max_pending_proposals as u64),
            ("snapshot_interval_entries", self.snapshot_interval_entries),
            ("request_timeout_ms", self.request_timeout_ms),
            ("max_command_bytes", self.max_command_bytes as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(())
    }

    pub fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.tick_interval_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The raft-rs configuration for node `id`, resuming after `applied`.
    pub(crate) fn to_raft(&self, id: u64, applied: u64) -> raft::Config {
        raft::Config {
            id,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            applied,
            max_size_per_msg: self.max_batch_bytes,
            max_inflight_msgs: self.max_inflight_msgs,
            // A leader that cannot hear a quorum steps down after an election timeout, so a
            // cut-off leader stops accepting proposals it could never commit.
            check_quorum: true,
            // A node returning from a partition asks before bumping the term, so it does not
            // depose a healthy leader (Raft thesis §9.6).
            pre_vote: true,
            ..raft::Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_accepted_by_raft() {
        let config = Config::default();
        assert_eq!(config.validate(), Ok(()));
        config
            .to_raft(1, 0)
            .validate()
            .expect("raft accepts our defaults");
    }

    #[test]
    fn bad_values_are_refused_with_the_field_name() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    tick_interval_ms: 0,
                    ..Config::default()
                },
                "tick_interval_ms",
            ),
            (
                Config {
                    heartbeat_ticks: 0,
                    ..Config::default()
                },
                "heartbeat_ticks",
            ),
            (
                Config {
                    election_ticks: 2,
                    ..Config::default()
                },
                "election_ticks",
            ),
            (
                Config {
                    max_batch_bytes: 0,
                    ..Config::default()
                },
                "max_batch_bytes",
            ),
            (
                Config {
                    max_pending_proposals: 0,
                    ..Config::default()
                },
                "max_pending_proposals",
            ),
            (
                Config {
                    request_timeout_ms: 0,
                    ..Config::default()
                },
                "request_timeout_ms",
            ),
        ];
        for (config, field) in cases {
            let message = config.validate().expect_err(field).to_string();
            assert!(message.contains(field), "{message:?} should name {field}");
        }
    }
}
