//! QUIC endpoints with mutual TLS, connections that know their peer's [`Identity`], and typed
//! framed streams that open with a [`StreamKind`] the accepting side checks against the
//! peer's role.
//!
//! Stream opening protocol: the opener sends one frame `StreamHeader { kind }`, the acceptor
//! answers `StreamOpenReply::Accepted` when the peer's role may use that kind. A role that may
//! not is refused by closing the connection with [`codes::ROLE_REFUSED`] and a reason, which
//! the opener observes as [`LinkError::RoleRefused`]; a refusal, never a timeout. A stream
//! that sends garbage, an oversized or truncated frame, or another protocol version is
//! stopped with a code from [`codes`], and the connection and endpoint carry on.
//!
//! This module must not know what flows on a stream beyond its header; Raft, store and
//! agent traffic is the business of the crates that open those streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use quinn::VarInt;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::envelope::{self, EnvelopeError};
use crate::frame::{DEFAULT_MAX_FRAME_BYTES, FrameCodec, FrameError};
use crate::identity::{Identity, IdentityError, Role};
use crate::tls::{CredentialError, Credentials};

/// Application error codes Umbra uses when it stops a stream or closes a connection.
pub mod codes {
    /// Normal close: the endpoint or connection is shutting down.
    pub const NORMAL: u32 = 0;
    /// A frame announced more than the maximum frame size.
    pub const FRAME_TOO_LARGE: u32 = 0x10;
    /// The stream ended in the middle of a frame.
    pub const FRAME_TRUNCATED: u32 = 0x11;
    /// A frame was not a valid message.
    pub const MESSAGE_MALFORMED: u32 = 0x12;
    /// A frame carried another protocol version.
    pub const VERSION_MISMATCH: u32 = 0x13;
    /// The stream header did not arrive in time.
    pub const HEADER_TIMEOUT: u32 = 0x14;
    /// The stream failed for a local reason (I/O); not the peer's fault.
    pub const STREAM_FAILED: u32 = 0x15;
    /// The peer's role may open this kind of stream, but this process does not serve it
    /// (e.g. operator streams on a node without the operator API).
    pub const KIND_NOT_SERVED: u32 = 0x16;
    /// The peer's role may not open this kind of stream (a connection close code).
    pub const ROLE_REFUSED: u32 = 0x20;

    /// What a code means, for error messages.
    pub fn describe(code: u64) -> &'static str {
        match code {
            c if c == u64::from(NORMAL) => "closed normally",
            c if c == u64::from(FRAME_TOO_LARGE) => "frame exceeds the maximum frame size",
            c if c == u64::from(FRAME_TRUNCATED) => "stream ended in the middle of a frame",
            c if c == u64::from(MESSAGE_MALFORMED) => "malformed message",
            c if c == u64::from(VERSION_MISMATCH) => "protocol version mismatch",
            c if c == u64::from(HEADER_TIMEOUT) => "stream header did not arrive in time",
            c if c == u64::from(STREAM_FAILED) => "stream failed on the peer",
            c if c == u64::from(KIND_NOT_SERVED) => "this kind of stream is not served here",
            c if c == u64::from(ROLE_REFUSED) => "role may not open this kind of stream",
            _ => "unknown error code",
        }
    }
}

/// Default idle timeout: 10 s. A peer silent this long is gone; keep-alives (below) make
/// silence mean failure, and Raft's own election timeout reacts sooner anyway.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default keep-alive interval: a fifth of the idle timeout, so four lost keep-alives in a
/// row are survived.
pub const DEFAULT_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Default handshake timeout: 5 s, many loopback or cross-region round trips.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time to open a stream (header out, reply back): 5 s, like the handshake.
pub const DEFAULT_STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default cap on handshakes waiting to be accepted: a cluster has a handful of
/// orchestrators, a few agents per region and some operators, so 1,024 pending handshakes
/// is generous; quinn's own default (65,536) is sized for public servers.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 1024;
/// Default cap on concurrently open bidirectional streams per connection: room for one
/// stream per in-flight client request at the benchmark's 64 proposers, four times over.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;

/// Tuning of endpoints and streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// Largest frame sent or accepted, in bytes.
    pub max_frame_bytes: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive ping interval; must be below `idle_timeout`.
    pub keep_alive_interval: Duration,
    /// Limit on a TLS handshake (connect and accept).
    pub handshake_timeout: Duration,
    /// Limit on opening a stream (and on the acceptor waiting for a stream's header).
    pub stream_open_timeout: Duration,
    /// Bidirectional streams a peer may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Incoming handshakes held before new ones are refused (servers only).
    pub max_pending_handshakes: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            keep_alive_interval: DEFAULT_KEEP_ALIVE_INTERVAL,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            stream_open_timeout: DEFAULT_STREAM_OPEN_TIMEOUT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
        }
    }
}

/// A [`TransportConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transport config: {0}")]
pub struct ConfigError(pub String);

impl TransportConfig {
    /// Checks the settings fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // A frame must at least hold a stream header; u32 is the length prefix's range.
        if self.max_frame_bytes < 64 || self.max_frame_bytes > u32::MAX as usize {
            return Err(ConfigError(format!(
                "max_frame_bytes {} must be between 64 and {}",
                self.max_frame_bytes,
                u32::MAX
            )));
        }
        for (name, value) in [
            ("idle_timeout", self.idle_timeout),
            ("keep_alive_interval", self.keep_alive_interval),
            ("handshake_timeout", self.handshake_timeout),
            ("stream_open_timeout", self.stream_open_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError(format!("{name} must be above zero")));
            }
        }
        if self.keep_alive_interval >= self.idle_timeout {
            return Err(ConfigError(format!(
                "keep_alive_interval {:?} must be below idle_timeout {:?}, or idle connections drop",
                self.keep_alive_interval, self.idle_timeout
            )));
        }
        if quinn::IdleTimeout::try_from(self.idle_timeout).is_err() {
            return Err(ConfigError(format!(
                "idle_timeout {:?} is too large for QUIC",
                self.idle_timeout
            )));
        }
        if self.max_concurrent_streams == 0 {
            return Err(ConfigError(
                "max_concurrent_streams must be above zero".into(),
            ));
        }
        if self.max_pending_handshakes == 0 {
            return Err(ConfigError(
                "max_pending_handshakes must be above zero".into(),
            ));
        }
        Ok(())
    }

    fn quinn_transport(&self) -> Result<Arc<quinn::TransportConfig>, ConfigError> {
        self.validate()?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(self.idle_timeout)
                    .map_err(|err| ConfigError(err.to_string()))?,
            ))
            .keep_alive_interval(Some(self.keep_alive_interval))
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_streams))
            // Umbra never uses unidirectional streams; refuse them outright.
            .max_concurrent_uni_streams(VarInt::from_u32(0));
        Ok(Arc::new(transport))
    }
}

/// What a stream carries. The acceptor checks the peer's role with [`StreamKind::permits`].
/// New kinds are appended (the wire encodes the variant index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StreamKind {
    /// Raft peer messages ([`RaftMessage`](crate::RaftMessage)) between orchestrators.
    Raft,
    /// Replicated-store requests ([`ClientRequest`](crate::ClientRequest)).
    Client,
    /// Orchestrator ⇄ region agent traffic.
    Agent,
    /// The operator API (the `umbra` CLI).
    Operator,
    /// One Raft snapshot between orchestrators, in chunks
    /// ([`SnapshotHeader`](crate::raft::SnapshotHeader), then
    /// [`SnapshotChunk`](crate::raft::SnapshotChunk)s, answered by a
    /// [`SnapshotReceipt`](crate::raft::SnapshotReceipt)), apart from the Raft stream so a
    /// large transfer does not hold up heartbeats.
    RaftSnapshot,
    /// One Raft snapshot as in [`StreamKind::RaftSnapshot`], resumable: the receiver answers
    /// the header with a [`SnapshotResume`](crate::raft::SnapshotResume) saying how much of
    /// that very snapshot it kept from an interrupted transfer, and the sender sends only the
    /// rest. What this build sends; `RaftSnapshot` is still served for a sender of the build
    /// before.
    RaftSnapshotResumable,
    /// Wall-clock readings between orchestrators ([`ClockProbe`](crate::clock::ClockProbe)
    /// answered by [`ClockReading`](crate::clock::ClockReading)), so that a node whose clock
    /// disagrees with its peers' does not lead.
    Clock,
}

impl StreamKind {
    /// The roles allowed to open a stream of this kind.
    pub fn allowed_roles(self) -> &'static [Role] {
        match self {
            // Only Raft members: an agent or operator joining Raft could forge votes.
            StreamKind::Raft => &[Role::Orchestrator],
            // Orchestrators forward requests to the leader; operators use the store directly.
            StreamKind::Client => &[Role::Orchestrator, Role::Operator],
            // Agents dial in to the gateway; orchestrators dial agents.
            StreamKind::Agent => &[Role::Orchestrator, Role::Agent],
            StreamKind::Operator => &[Role::Operator],
            // A snapshot replaces a member's whole state: Raft members only, as for `Raft`.
            StreamKind::RaftSnapshot | StreamKind::RaftSnapshotResumable => &[Role::Orchestrator],
            // Only members judge each other's clocks.
            StreamKind::Clock => &[Role::Orchestrator],
        }
    }

    /// Whether `role` may open a stream of this kind.
    pub fn permits(self, role: Role) -> bool {
        self.allowed_roles().contains(&role)
    }
}

/// The first frame on every stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StreamHeader {
    kind: StreamKind,
}

/// The acceptor's answer to a [`StreamHeader`]. Refusals close the connection instead, so
/// the reason is carried by the QUIC close frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum StreamOpenReply {
    Accepted,
}

/// Why a connection ended or could not be established, classified for callers and tests.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The TLS handshake failed on a certificate: from another CA, missing, or the wrong
    /// name. Check both sides were issued by the same `umbra certs init`.
    #[error("certificate refused during the TLS handshake: {reason}")]
    CertificateRefused {
        /// The TLS alert or local verification error.
        reason: String,
    },
    /// The peer speaks another major version of the Umbra protocol (no common ALPN id).
    #[error(
        "peer speaks another Umbra protocol version (ALPN mismatch): {reason}; run the same Umbra version on every node"
    )]
    ProtocolMismatch {
        /// The TLS alert.
        reason: String,
    },
    /// The peer refused a stream because of this side's role.
    #[error("refused by peer: {reason}")]
    RoleRefused {
        /// The peer's explanation, e.g. "role agent may not open raft streams".
        reason: String,
    },
    /// The peer closed the connection with an application code.
    #[error("closed by peer (code {code}: {}): {reason}", codes::describe(*code))]
    ClosedByPeer {
        /// The code.
        code: u64,
        /// The peer's reason.
        reason: String,
    },
    /// No answer in time.
    #[error("timed out")]
    TimedOut,
    /// This side closed the connection or endpoint.
    #[error("closed locally")]
    LocallyClosed,
    /// Anything else QUIC reports (reset, protocol violation).
    #[error("connection failed: {0}")]
    Quic(quinn::ConnectionError),
}

/// TLS alert 120, no_application_protocol (RFC 8446 § 6.2), as a QUIC crypto error code: the
/// peer does not offer the ALPN protocol [`crate::tls::ALPN_PROTOCOL`].
const NO_APPLICATION_PROTOCOL_ALERT: u8 = 120;

impl From<quinn::ConnectionError> for LinkError {
    fn from(err: quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as E;
        // TLS alerts travel as QUIC "crypto error" codes 0x100..=0x1ff (RFC 9001 § 4.8).
        let is_crypto =
            |code: quinn::TransportErrorCode| (0x100..=0x1ff).contains(&u64::from(code));
        match err {
            E::ApplicationClosed(close)
                if close.error_code == VarInt::from_u32(codes::ROLE_REFUSED) =>
            {
                LinkError::RoleRefused {
                    reason: String::from_utf8_lossy(&close.reason).into_owned(),
                }
            }
            E::ApplicationClosed(close) => LinkError::ClosedByPeer {
                code: close.error_code.into_inner(),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            E::ConnectionClosed(ref close)
                if close.error_code
                    == quinn::TransportErrorCode::crypto(NO_APPLICATION_PROTOCOL_ALERT) =>
            {
                LinkError::ProtocolMismatch {
                    reason: err.to_string(),
                }
            }
            E::TransportError(ref transport)
                if transport.code
                    == quinn::TransportErrorCode::crypto(NO_APPLICATION_PROTOCOL_ALERT) =>
            {
                LinkError::ProtocolMismatch {
                    reason: err.to_string(),
                }
            }
            E::ConnectionClosed(ref close) if is_crypto(close.error_code) => {
                LinkError::CertificateRefused {
                    reason: err.to_string(),
                }
            }
            E::TransportError(ref transport) if is_crypto(transport.code) => {
                LinkError::CertificateRefused {
                    reason: err.to_string(),
                }
            }
            E::TimedOut => LinkError::TimedOut,
            E::LocallyClosed => LinkError::LocallyClosed,
            other => LinkError::Quic(other),
        }
    }
}

/// Why an endpoint could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The transport settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The credentials cannot make a TLS configuration.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The certificate cannot serve (an operator certificate has no server names).
    #[error("{identity} cannot run a server: only orchestrator and agent certificates can")]
    CannotServe {
        /// Whose credentials were given.
        identity: Identity,
    },
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a connection could not be established.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// quinn refused to start (bad address, bad server name, endpoint closing).
    #[error("cannot connect to {addr}: {source}")]
    Start {
        /// The address.
        addr: SocketAddr,
        /// quinn's reason.
        #[source]
        source: quinn::ConnectError,
    },
    /// The handshake failed.
    #[error("connection with {addr} failed: {source}")]
    Link {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: LinkError,
    },
    /// The handshake took longer than `handshake_timeout`.
    #[error("handshake with {addr} timed out after {timeout:?}")]
    HandshakeTimeout {
        /// The peer's address.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The peer's certificate verified but carries no usable Umbra identity.
    #[error("peer at {addr} has no usable identity: {source}")]
    Identity {
        /// The peer's address.
        addr: SocketAddr,
        /// What is wrong.
        #[source]
        source: IdentityError,
    },
}

impl ConnectError {
    /// The connection-level reason, if the failure was one.
    pub fn link_error(&self) -> Option<&LinkError> {
        match self {
            ConnectError::Link { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A frame was oversized or truncated, or the stream's I/O failed.
    #[error(transparent)]
    Frame(FrameError),
    /// A frame was not a valid envelope of the expected type, or of another version.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The peer abandoned sending on this stream with a code (see [`codes::describe`]).
    #[error("peer reset the stream (code {code}: {})", codes::describe(*code))]
    Reset {
        /// The code.
        code: u64,
    },
    /// The peer stopped reading this stream with a code (see [`codes::describe`]); it
    /// usually means the peer found this side's frames invalid.
    #[error("peer stopped reading the stream (code {code}: {})", codes::describe(*code))]
    Stopped {
        /// The code.
        code: u64,
    },
    /// The connection ended.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Opening the stream took longer than `stream_open_timeout`.
    #[error("opening a {kind:?} stream timed out after {timeout:?}")]
    OpenTimeout {
        /// The kind being opened.
        kind: StreamKind,
        /// The limit.
        timeout: Duration,
    },
    /// The peer ended the stream before answering its header.
    #[error("peer ended the stream before accepting it")]
    EndedBeforeAccept,
}

impl StreamError {
    /// The connection-level reason, if the stream failed because the connection did.
    pub fn link_error(&self) -> Option<&LinkError> {
        match self {
            StreamError::Link(link) => Some(link),
            _ => None,
        }
    }

    /// The code to stop the peer's stream with when this side found its input invalid;
    /// `None` when the failure was not the peer's input.
    fn code_for_peer(&self) -> Option<u32> {
        match self {
            StreamError::Frame(FrameError::TooLarge { .. }) => Some(codes::FRAME_TOO_LARGE),
            StreamError::Frame(FrameError::Truncated { .. }) => Some(codes::FRAME_TRUNCATED),
            StreamError::Frame(FrameError::Io(_)) => Some(codes::STREAM_FAILED),
            StreamError::Envelope(EnvelopeError::VersionMismatch { .. }) => {
                Some(codes::VERSION_MISMATCH)
            }
            StreamError::Envelope(_) => Some(codes::MESSAGE_MALFORMED),
            _ => None,
        }
    }
}

impl From<FrameError> for StreamError {
    fn from(err: FrameError) -> Self {
        // quinn reports stream failures through io::Error; unwrap them so callers see the
        // stream code or the connection reason instead of "connection reset".
        if let FrameError::Io(io) = &err
            && let Some(inner) = io.get_ref()
        {
            if let Some(read) = inner.downcast_ref::<quinn::ReadError>() {
                match read {
                    quinn::ReadError::Reset(code) => {
                        return StreamError::Reset {
                            code: code.into_inner(),
                        };
                    }
                    quinn::ReadError::ConnectionLost(conn) => {
                        return StreamError::Link(conn.clone().into());
                    }
                    _ => {}
                }
            }
            if let Some(write) = inner.downcast_ref::<quinn::WriteError>() {
                match write {
                    quinn::WriteError::Stopped(code) => {
                        return StreamError::Stopped {
                            code: code.into_inner(),
                        };
                    }
                    quinn::WriteError::ConnectionLost(conn) => {
                        return StreamError::Link(conn.clone().into());
                    }
                    _ => {}
                }
            }
        }
        StreamError::Frame(err)
    }
}

/// Why accepting streams stopped.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The peer opened a stream its role may not use; the connection has been closed with
    /// [`codes::ROLE_REFUSED`].
    #[error("refused {kind:?} stream from {peer}: {reason}")]
    RoleRefused {
        /// Who tried.
        peer: Identity,
        /// What they tried to open.
        kind: StreamKind,
        /// The reason sent to the peer.
        reason: String,
    },
    /// The connection ended.
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// A QUIC endpoint: serves (if built with [`Endpoint::server`]) and connects, always with
/// mutual TLS from the cluster CA. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    identity: Identity,
    config: Arc<TransportConfig>,
}

impl Endpoint {
    /// Binds `addr` and serves connections from members of the cluster; also connects.
    pub fn server(
        addr: SocketAddr,
        credentials: &Credentials,
        config: TransportConfig,
    ) -> Result<Endpoint, EndpointError> {
        if credentials.identity().role() == Role::Operator {
            return Err(EndpointError::CannotServe {
                identity: credentials.identity().clone(),
            });
        }
        let transport = config.quinn_transport()?;
        let crypto = QuicServerConfig::try_from(Arc::new(credentials.server_config()?))
            .map_err(|err| CredentialError::Tls(rustls::Error::General(err.to_string())))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server
            .transport_config(transport)
            .max_incoming(config.max_pending_handshakes);
        let mut inner = bind(addr, credentials, Some(server))?;
        inner.set_default_client_config(client_config(credentials, &config)?);
        Ok(Endpoint {
            inner,
            identity: credentials.identity().clone(),
            config: Arc::new(config),
        })
    }

    /// Binds `addr` (use port 0) for outgoing connections only.
    pub fn client(
        addr: SocketAddr,
        credentials: &Credentials,
        config: TransportConfig,
    ) -> Result<Endpoint, EndpointError> {
        config.validate()?;
        let mut inner = bind(addr, credentials, None)?;
        inner.set_default_client_config(client_config(credentials, &config)?);
        Ok(Endpoint {
            inner,
            identity: credentials.identity().clone(),
            config: Arc::new(config),
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// This endpoint's own identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The transport settings.
    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// Connects to `addr`, verifying that the server's certificate is from the cluster CA and
    /// carries `server_name`: [`Identity::server_name`] for a specific member
    /// (`2.orchestrator.umbra`), [`Role::server_name`] for any member of a role.
    ///
    /// A client certificate the server refuses may surface here or on the first
    /// [`Connection::open_stream`] (TLS 1.3 lets the client finish before the server has
    /// checked it); both report [`LinkError::CertificateRefused`].
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connection, ConnectError> {
        let connecting = self
            .inner
            .connect(addr, server_name)
            .map_err(|source| ConnectError::Start { addr, source })?;
        let timeout = self.config.handshake_timeout;
        let connection = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| ConnectError::HandshakeTimeout { addr, timeout })?
            .map_err(|err| ConnectError::Link {
                addr,
                source: err.into(),
            })?;
        Connection::new(connection, self.config.clone())
    }

    /// Waits for the next incoming connection; `None` once the endpoint is closed. Finish the
    /// handshake with [`IncomingConnection::establish`], in a task of its own so that one slow
    /// peer does not hold up the others.
    pub async fn accept(&self) -> Option<IncomingConnection> {
        let incoming = self.inner.accept().await?;
        Some(IncomingConnection {
            incoming,
            config: self.config.clone(),
        })
    }

    /// Closes every connection with [`codes::NORMAL`] and stops accepting.
    pub fn close(&self) {
        self.inner
            .close(VarInt::from_u32(codes::NORMAL), b"endpoint closing");
    }

    /// Waits until every connection has been cleanly shut down (after [`Endpoint::close`]).
    pub async fn wait_idle(&self) {
        self.inner.wait_idle().await;
    }
}

/// Binds a UDP socket and starts a quinn endpoint whose stateless-reset key and
/// connection-id key are derived from the member's private key (see
/// `Credentials::stateless_reset_key`), so peers of a member that crashed and restarted learn
/// at once that their old connections are gone.
fn bind(
    addr: SocketAddr,
    credentials: &Credentials,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, EndpointError> {
    let wrap = |source| EndpointError::Bind { addr, source };
    let runtime = quinn::default_runtime()
        .ok_or_else(|| wrap(std::io::Error::other("no tokio runtime is running")))?;
    let socket = std::net::UdpSocket::bind(addr).map_err(wrap)?;
    let mut config = quinn::EndpointConfig::new(Arc::new(credentials.stateless_reset_key()));
    let cid_key = credentials.connection_id_key();
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            as Box<dyn quinn::ConnectionIdGenerator>
    });
    quinn::Endpoint::new(config, server, socket, runtime).map_err(wrap)
}

fn client_config(
    credentials: &Credentials,
    config: &TransportConfig,
) -> Result<quinn::ClientConfig, EndpointError> {
    let crypto = QuicClientConfig::try_from(Arc::new(credentials.client_config()?))
        .map_err(|err| CredentialError::Tls(rustls::Error::General(err.to_string())))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(config.quinn_transport()?);
    Ok(client)
}

/// A connection attempt that has arrived but not finished its handshake.
#[derive(Debug)]
pub struct IncomingConnection {
    incoming: quinn::Incoming,
    config: Arc<TransportConfig>,
}

impl IncomingConnection {
    /// Where the attempt comes from.
    pub fn remote_address(&self) -> SocketAddr {
        self.incoming.remote_address()
    }

    /// Finishes the handshake: the client must present a certificate from the cluster CA.
    pub async fn establish(self) -> Result<Connection, ConnectError> {
        let addr = self.incoming.remote_address();
        let connecting = self.incoming.accept().map_err(|err| ConnectError::Link {
            addr,
            source: err.into(),
        })?;
        let timeout = self.config.handshake_timeout;
        let connection = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| ConnectError::HandshakeTimeout { addr, timeout })?
            .map_err(|err| ConnectError::Link {
                addr,
                source: err.into(),
            })?;
        Connection::new(connection, self.config)
    }
}

/// An established connection with a verified peer. Cheap to clone. Dropping the last clone
/// closes the connection at once and abandons data not yet delivered, so a side that sends
/// a final answer keeps the connection until the peer has read it (e.g. wait for
/// [`Connection::closed`] with a timeout).
#[derive(Debug, Clone)]
pub struct Connection {
    inner: quinn::Connection,
    peer: Identity,
    config: Arc<TransportConfig>,
}

impl Connection {
    fn new(
        inner: quinn::Connection,
        config: Arc<TransportConfig>,
    ) -> Result<Connection, ConnectError> {
        let addr = inner.remote_address();
        // rustls verified the chain against the cluster CA before quinn handed this over;
        // what is left is reading the role and id out of the leaf certificate.
        let peer = inner
            .peer_identity()
            .and_then(|any| {
                any.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|chain| chain.first().cloned())
            .ok_or(IdentityError::NoIdentity)
            .and_then(|leaf| Identity::from_certificate(&leaf));
        match peer {
            Ok(peer) => Ok(Connection {
                inner,
                peer,
                config,
            }),
            Err(source) => {
                inner.close(
                    VarInt::from_u32(codes::ROLE_REFUSED),
                    b"certificate carries no umbra identity",
                );
                Err(ConnectError::Identity { addr, source })
            }
        }
    }

    /// The verified identity of the peer.
    pub fn peer(&self) -> &Identity {
        &self.peer
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// Opens a stream of `kind` and waits for the peer to accept it. A peer that refuses
    /// this side's role answers with [`LinkError::RoleRefused`] (inside
    /// [`StreamError::Link`]).
    pub async fn open_stream(&self, kind: StreamKind) -> Result<FramedStream, StreamError> {
        let timeout = self.config.stream_open_timeout;
        tokio::time::timeout(timeout, self.open_stream_inner(kind))
            .await
            .map_err(|_| StreamError::OpenTimeout { kind, timeout })?
    }

    async fn open_stream_inner(&self, kind: StreamKind) -> Result<FramedStream, StreamError> {
        let (send, recv) = self
            .inner
            .open_bi()
            .await
            .map_err(|err| StreamError::Link(err.into()))?;
        let mut stream = FramedStream::new(send, recv, kind, &self.peer, &self.config);
        stream.send(&StreamHeader { kind }).await?;
        match stream.recv::<StreamOpenReply>().await {
            Ok(Some(StreamOpenReply::Accepted)) => Ok(stream),
            Ok(None) => Err(StreamError::EndedBeforeAccept),
            // A refusal closes the connection; the stream then reports the connection's
            // reason, but prefer the close reason if the stream error came first.
            Err(err) => Err(match self.inner.close_reason() {
                Some(close) => StreamError::Link(close.into()),
                None => err,
            }),
        }
    }

    /// Waits for the peer's next stream, checks its header and the peer's role, and returns
    /// it. Streams with a bad header (garbage, wrong version, too slow) are stopped with a
    /// code and skipped: the connection stays up. A role that may not open the kind gets the
    /// connection closed with [`codes::ROLE_REFUSED`] and a reason.
    pub async fn accept_stream(&self) -> Result<FramedStream, AcceptError> {
        loop {
            let (send, recv) = self
                .inner
                .accept_bi()
                .await
                .map_err(|err| AcceptError::Link(err.into()))?;
            // The kind is unknown until the header is read; Raft is a placeholder only.
            let mut stream =
                FramedStream::new(send, recv, StreamKind::Raft, &self.peer, &self.config);
            let timeout = self.config.stream_open_timeout;
            let header = match tokio::time::timeout(timeout, stream.recv::<StreamHeader>()).await {
                Ok(Ok(Some(header))) => header,
                Ok(Ok(None)) => continue,
                Ok(Err(StreamError::Link(link))) => return Err(AcceptError::Link(link)),
                Ok(Err(err)) => {
                    // `recv` already stopped the stream with the matching code.
                    tracing::warn!(peer = %self.peer, error = %err, "refused a stream with a bad header");
                    continue;
                }
                Err(_) => {
                    stream.abort(codes::HEADER_TIMEOUT);
                    tracing::warn!(peer = %self.peer, ?timeout, "stream header did not arrive in time");
                    continue;
                }
            };
            let kind = header.kind;
            if !kind.permits(self.peer.role()) {
                let reason = format!(
                    "role {} may not open {} streams",
                    self.peer.role(),
                    format!("{kind:?}").to_lowercase()
                );
                tracing::warn!(peer = %self.peer, ?kind, "{reason}");
                self.inner
                    .close(VarInt::from_u32(codes::ROLE_REFUSED), reason.as_bytes());
                return Err(AcceptError::RoleRefused {
                    peer: self.peer.clone(),
                    kind,
                    reason,
                });
            }
            stream.kind = kind;
            match stream.send(&StreamOpenReply::Accepted).await {
                Ok(()) => return Ok(stream),
                Err(StreamError::Link(link)) => return Err(AcceptError::Link(link)),
                Err(err) => {
                    tracing::debug!(peer = %self.peer, error = %err, "stream ended while being accepted");
                    continue;
                }
            }
        }
    }

    /// Closes the connection with `code` and `reason` (use [`codes::NORMAL`] to say goodbye).
    pub fn close(&self, code: u32, reason: &str) {
        self.inner.close(VarInt::from_u32(code), reason.as_bytes());
    }

    /// Waits for the connection to end, and says why.
    pub async fn closed(&self) -> LinkError {
        self.inner.closed().await.into()
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<LinkError> {
        self.inner.close_reason().map(Into::into)
    }

    /// The underlying quinn connection, for diagnostics and for tests that must send raw,
    /// unframed bytes. Protocol code uses [`Connection::open_stream`].
    pub fn quinn(&self) -> &quinn::Connection {
        &self.inner
    }
}

/// A bidirectional stream of envelopes, of a known [`StreamKind`], with a verified peer.
/// Split it with [`FramedStream::split`] to send and receive from different tasks.
#[derive(Debug)]
pub struct FramedStream {
    sender: FrameSender,
    receiver: FrameReceiver,
    kind: StreamKind,
    peer: Identity,
}

impl FramedStream {
    fn new(
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        kind: StreamKind,
        peer: &Identity,
        config: &TransportConfig,
    ) -> FramedStream {
        FramedStream {
            sender: FrameSender {
                inner: FramedWrite::new(send, FrameCodec::new(config.max_frame_bytes)),
            },
            receiver: FrameReceiver {
                inner: FramedRead::new(recv, FrameCodec::new(config.max_frame_bytes)),
            },
            kind,
            peer: peer.clone(),
        }
    }

    /// What the stream carries.
    pub fn kind(&self) -> StreamKind {
        self.kind
    }

    /// Who is on the other end.
    pub fn peer(&self) -> &Identity {
        &self.peer
    }

    /// Sends one message.
    pub async fn send<T: Serialize + ?Sized>(&mut self, message: &T) -> Result<(), StreamError> {
        self.sender.send(message).await
    }

    /// Receives one message; `Ok(None)` when the peer finished the stream cleanly. Invalid
    /// input stops the stream with a code from [`codes`] and is returned as an error.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, StreamError> {
        let result = self.receiver.recv().await;
        if let Err(err) = &result
            && let Some(code) = err.code_for_peer()
        {
            self.sender.reset(code);
        }
        result
    }

    /// Ends the sending side cleanly; the peer's `recv` returns `Ok(None)` after the
    /// messages already sent.
    pub fn finish(&mut self) {
        self.sender.finish();
    }

    /// Abandons both directions with `code`.
    pub fn abort(&mut self, code: u32) {
        self.sender.reset(code);
        self.receiver.stop(code);
    }

    /// Splits into halves that can be moved to different tasks.
    pub fn split(self) -> (FrameSender, FrameReceiver) {
        (self.sender, self.receiver)
    }
}

/// The sending half of a [`FramedStream`].
#[derive(Debug)]
pub struct FrameSender {
    inner: FramedWrite<quinn::SendStream, FrameCodec>,
}

impl FrameSender {
    /// Sends one message. A message above the maximum frame size is refused here, before
    /// anything is written, with [`FrameError::TooLarge`].
    pub async fn send<T: Serialize + ?Sized>(&mut self, message: &T) -> Result<(), StreamError> {
        let frame = Bytes::from(envelope::encode(message)?);
        self.inner.send(frame).await.map_err(StreamError::from)
    }

    /// Ends the stream cleanly after the messages already sent.
    pub fn finish(&mut self) {
        // Finishing an already-finished or reset stream is harmless; nothing to report.
        let _ = self.inner.get_mut().finish();
    }

    /// Abandons the stream with `code`.
    pub fn reset(&mut self, code: u32) {
        let _ = self.inner.get_mut().reset(VarInt::from_u32(code));
    }
}

/// The receiving half of a [`FramedStream`].
#[derive(Debug)]
pub struct FrameReceiver {
    inner: FramedRead<quinn::RecvStream, FrameCodec>,
}

impl FrameReceiver {
    /// Receives one message; `Ok(None)` when the peer finished the stream cleanly. Invalid
    /// input stops the stream with a code from [`codes`] and is returned as an error.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, StreamError> {
        let result = match self.inner.next().await {
            None => Ok(None),
            Some(Err(err)) => Err(StreamError::from(err)),
            Some(Ok(frame)) => envelope::decode(&frame)
                .map(Some)
                .map_err(StreamError::from),
        };
        if let Err(err) = &result
            && let Some(code) = err.code_for_peer()
        {
            self.stop(code);
        }
        result
    }

    /// Stops reading with `code`; the peer's sends fail with [`StreamError::Stopped`].
    pub fn stop(&mut self, code: u32) {
        let _ = self.inner.get_mut().stop(VarInt::from_u32(code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        TransportConfig::default().validate().unwrap();
    }

    #[test]
    fn unworkable_settings_are_refused_with_the_field_named() {
        let base = TransportConfig::default();
        let cases: [(&str, TransportConfig); 6] = [
            (
                "max_frame_bytes",
                TransportConfig {
                    max_frame_bytes: 10,
                    ..base.clone()
                },
            ),
            (
                "idle_timeout",
                TransportConfig {
                    idle_timeout: Duration::ZERO,
                    ..base.clone()
                },
            ),
            (
                "keep_alive_interval",
                TransportConfig {
                    keep_alive_interval: base.idle_timeout,
                    ..base.clone()
                },
            ),
            (
                "stream_open_timeout",
                TransportConfig {
                    stream_open_timeout: Duration::ZERO,
                    ..base.clone()
                },
            ),
            (
                "max_concurrent_streams",
                TransportConfig {
                    max_concurrent_streams: 0,
                    ..base.clone()
                },
            ),
            (
                "max_pending_handshakes",
                TransportConfig {
                    max_pending_handshakes: 0,
                    ..base.clone()
                },
            ),
        ];
        for (field, config) in cases {
            let err = config.validate().expect_err(field);
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn only_orchestrators_may_open_raft_streams() {
        let table = [
            (StreamKind::Raft, Role::Orchestrator, true),
            (StreamKind::Raft, Role::Agent, false),
            (StreamKind::Raft, Role::Operator, false),
            (StreamKind::Client, Role::Orchestrator, true),
            (StreamKind::Client, Role::Agent, false),
            (StreamKind::Client, Role::Operator, true),
            (StreamKind::Agent, Role::Orchestrator, true),
            (StreamKind::Agent, Role::Agent, true),
            (StreamKind::Agent, Role::Operator, false),
            (StreamKind::Operator, Role::Orchestrator, false),
            (StreamKind::Operator, Role::Agent, false),
            (StreamKind::Operator, Role::Operator, true),
            (StreamKind::RaftSnapshot, Role::Orchestrator, true),
            (StreamKind::RaftSnapshot, Role::Agent, false),
            (StreamKind::RaftSnapshot, Role::Operator, false),
            (StreamKind::RaftSnapshotResumable, Role::Orchestrator, true),
            (StreamKind::RaftSnapshotResumable, Role::Agent, false),
            (StreamKind::RaftSnapshotResumable, Role::Operator, false),
        ];
        for (kind, role, allowed) in table {
            assert_eq!(kind.permits(role), allowed, "{kind:?} by {role}");
        }
    }

    #[test]
    fn every_code_has_a_meaning() {
        for code in [
            codes::NORMAL,
            codes::FRAME_TOO_LARGE,
            codes::FRAME_TRUNCATED,
            codes::MESSAGE_MALFORMED,
            codes::VERSION_MISMATCH,
            codes::HEADER_TIMEOUT,
            codes::STREAM_FAILED,
            codes::KIND_NOT_SERVED,
            codes::ROLE_REFUSED,
        ] {
            assert_ne!(
                codes::describe(u64::from(code)),
                "unknown error code",
                "{code}"
            );
        }
    }
}
