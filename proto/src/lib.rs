//! Every message that crosses an Umbra process boundary, and the transport that carries it:
//! a versioned envelope, length-delimited framing with a maximum frame size, and QUIC
//! endpoints with mutual TLS whose certificates carry a role. No business logic lives here.
//!
//! # Using it
//!
//! ```no_run
//! # async fn demo(dir: &std::path::Path) -> anyhow::Result<()> {
//! use umbra_proto::{Credentials, Endpoint, Identity, RaftMessage, StreamKind, TransportConfig};
//!
//! umbra_proto::certs::init(&umbra_proto::certs::Layout::default(), dir)?; // once per cluster
//! let me = Credentials::load(dir, &Identity::orchestrator(1))?;
//! let server = Endpoint::server("127.0.0.1:0".parse()?, &me, TransportConfig::default())?;
//! let addr = server.local_addr()?;
//! tokio::spawn(async move {
//!     while let Some(incoming) = server.accept().await {
//!         tokio::spawn(async move {
//!             // Handshake: the client's certificate must come from the cluster CA.
//!             let Ok(conn) = incoming.establish().await else { return };
//!             // Refuses (closes with codes::ROLE_REFUSED) a role the kind does not permit.
//!             while let Ok(mut stream) = conn.accept_stream().await {
//!                 // Here stream.kind() is Raft, so conn.peer().role() is Orchestrator.
//!                 while let Ok(Some(msg)) = stream.recv::<RaftMessage>().await { let _ = msg; }
//!             }
//!         });
//!     }
//! });
//! let peer = Credentials::load(dir, &Identity::orchestrator(2))?;
//! let client = Endpoint::server("127.0.0.1:0".parse()?, &peer, TransportConfig::default())?;
//! let conn = client.connect(addr, &Identity::orchestrator(1).server_name()).await?;
//! let mut stream = conn.open_stream(StreamKind::Raft).await?;
//! stream.send(&RaftMessage { from: 2, to: 1, message: vec![] }).await?;
//! # Ok(()) }
//! ```
//!
//! Modules: [`envelope`] (version + postcard), [`frame`] (length-delimited framing),
//! [`clock`] (wall-clock readings between orchestrators), [`identity`] (roles and ids in
//! certificates), [`tls`] (credentials, rustls configs),
//! [`certs`] (issuing with rcgen), [`endpoint`] (QUIC endpoints, connections, typed
//! streams), [`raft`] and [`store`] (wire types for `consensus`), [`agent`] (orchestrator ⇄
//! region agent wire types), [`log`] (the schema of the orchestrators' Raft log entries and
//! snapshots, versioned apart from the wire protocol), [`liveness`] (is a peer's port
//! closed, i.e. its process gone).

pub mod agent;
pub mod certs;
pub mod clock;
pub mod endpoint;
pub mod envelope;
pub mod exit;
pub mod frame;
pub mod identity;
pub mod liveness;
pub mod log;
pub mod logs;
pub mod ports;
pub mod raft;
pub mod store;
pub mod tls;

pub use endpoint::{
    AcceptError, ConnectError, Connection, Endpoint, EndpointError, FrameReceiver, FrameSender,
    FramedStream, IncomingConnection, LinkError, StreamError, StreamKind, TransportConfig, codes,
};
pub use envelope::{EnvelopeError, PROTOCOL_VERSION};
pub use frame::{FrameCodec, FrameError};
pub use identity::{Identity, IdentityError, Role};
pub use raft::RaftMessage;
pub use store::{
    ClientError, ClientErrorKind, ClientOutcome, ClientRequest, ClientRequestBody, ClientResponse,
    LeaderHint, MembershipChange,
};
pub use tls::{CredentialError, Credentials};
