//! The orchestrator node: its configuration file (`config`), the process wiring of the Raft
//! node with its QUIC and admin endpoints (`server`), the services on top of the replicated
//! `OrchestratorState` — operator API, agent gateway, embedded DNS, executor (`services`) —
//! and what a node takes from the program that starts it rather than the file
//! (`NodeEnvironment`: the executor's clock).
//! The key-value state machine (`state_machine = "kv"`) remains for the Raft tests and benchmark.

pub mod clock;
pub mod config;
pub mod server;
pub mod services;

pub use config::{
    DnsSection, ExecutorSection, GatewaySection, NodeConfig, NodeConfigError, PeerConfig,
    StateMachineKind,
};
pub use server::{AdminStatus, RunningNode, start};
pub use services::{NodeEnvironment, NodeServices};
