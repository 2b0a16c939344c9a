//! A Raft node on tikv raft-rs: durable log and snapshots, the Ready loop, peer transport over
//! `umbra-proto`, membership changes and ReadIndex reads, generic over a `StateMachine`.
//! It knows nothing about migrations.
//!
//! Map: `config` (validated tuning), `storage` (raft-engine log, hard state, snapshots),
//! `node` (the driver thread and the `RaftNode` handle), `state_machine` (the trait),
//! `kv` (a small key-value machine: the node's `state_machine = "kv"` mode, which the Raft
//! tests and benchmark run), `transport` (the seam), `quic` (the QUIC transport over
//! `umbra-proto`), `memory` (a seeded, fault-injecting in-memory network, only with the
//! `memory-network` feature: tests and simulations), `logging` (slog → tracing), `metrics`
//! (Prometheus).

pub mod config;
pub mod kv;
pub mod logging;
#[cfg(feature = "memory-network")]
pub mod memory;
pub mod metrics;
pub mod node;
pub mod quic;
pub mod state_machine;
pub mod storage;
pub mod transport;

pub use config::{Config, ConfigError};
pub use node::{
    MembershipChange, NodeOptions, NodeStatus, RaftNode, RequestError, Role, StartError,
};
pub use state_machine::{RestoreError, SnapshotEncoder, StateMachine, UnreadableEntry};
pub use transport::{Inbound, Mailbox, MailboxReceiver, Transport, mailbox};
