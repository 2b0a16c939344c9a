//! The orchestrator node: its configuration file (`config`), the process wiring of the Raft
//! node with its QUIC and admin endpoints (`server`), and a client for the replicated store
//! that follows leader hints (`client`). The key-value state machine stands in for the
//! migration state until that lands.

pub mod client;
pub mod config;
pub mod server;

pub use client::{StoreClient, StoreClientError};
pub use config::{NodeConfig, NodeConfigError, PeerConfig};
pub use server::{AdminStatus, RunningNode, start};
