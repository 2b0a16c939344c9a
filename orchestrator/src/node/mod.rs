//! The orchestrator node: its configuration file (`config`), the process wiring of the Raft
//! node with its QUIC and admin endpoints (`server`), the services on top of the replicated
//! `OrchestratorState` — operator API, agent gateway, embedded DNS, executor (`services`) —
//! and a client for the replicated store that follows leader hints (`client`). The key-value
//! state machine (`state_machine = "kv"`) remains for the Raft tests and benchmark.

pub mod client;
pub mod config;
pub mod server;
pub mod services;

pub use client::{StoreClient, StoreClientError};
pub use config::{
    DnsSection, ExecutorSection, GatewaySection, NodeConfig, NodeConfigError, PeerConfig,
    StateMachineKind,
};
pub use server::{AdminStatus, RunningNode, start};
pub use services::NodeServices;

/// A loopback port the OS reports free for both UDP (QUIC) and TCP (the admin endpoint),
/// for local clusters (`umbra demo`, tests). Another process may still take it before it is
/// bound; callers start nodes right away.
pub fn free_loopback_port() -> std::io::Result<u16> {
    // Bounded: the kernel hands out ephemeral ports; a clash with TCP is rare.
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no loopback port free for both UDP and TCP in 50 tries",
    ))
}
