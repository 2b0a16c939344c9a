//! The production `Transport`: Raft messages over QUIC with mutual TLS (`umbra-proto`), one
//! `StreamKind::Raft` stream per peer, and the receiving side (`serve_raft_stream`) that
//! checks each message really comes from the certificate's node before handing it to the
//! mailbox. Only orchestrator-role certificates may open Raft streams; `umbra-proto` enforces
//! that at accept time. It must not interpret messages beyond their addressing.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use umbra_proto::{Endpoint, FramedStream, Identity, RaftMessage, Role, StreamKind};

use crate::transport::{Mailbox, Transport, decode_message, encode_message};

/// Messages queued per peer while its stream is busy or reconnecting. A full queue drops
/// and reports the peer unreachable so raft-rs backs off (it resends from its log).
pub const PEER_QUEUE_CAPACITY: usize = 1024;
/// First reconnect delay after a failed connection; doubled up to the maximum below.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest reconnect delay: a restarted peer is reached within a second of coming back,
/// about one default election timeout.
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Peers whose Raft traffic this node drops, both ways, as a partitioned network would.
/// Empty unless fault injection (tests, drills) cuts links; consulted per message.
#[derive(Debug, Clone, Default)]
pub struct TrafficCut {
    peers: Arc<RwLock<BTreeSet<u64>>>,
}

impl TrafficCut {
    /// Drops all Raft traffic to and from `peers` (replacing any earlier cut).
    pub fn cut(&self, peers: impl IntoIterator<Item = u64>) {
        *self.peers.write().unwrap_or_else(|p| p.into_inner()) = peers.into_iter().collect();
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn is_cut(&self, peer: u64) -> bool {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&peer)
    }

    pub fn peers(&self) -> BTreeSet<u64> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Sends Raft messages to peers over QUIC.
pub struct QuicTransport {
    id: u64,
    endpoint: Endpoint,
    mailbox: Mailbox,
    runtime: tokio::runtime::Handle,
    peers: HashMap<u64, PeerLink>,
    cut: TrafficCut,
}

struct PeerLink {
    address: SocketAddr,
    queue: mpsc::Sender<Message>,
}

impl QuicTransport {
    /// A transport for node `id` sending from `endpoint`; delivery failures go to `mailbox`.
    /// Peer tasks run on the runtime current at construction (not the Raft driver's thread).
    /// Messages to peers in `cut` are dropped silently, as a partition would.
    pub fn new(id: u64, endpoint: Endpoint, mailbox: Mailbox, cut: TrafficCut) -> Self {
        Self {
            id,
            endpoint,
            mailbox,
            runtime: tokio::runtime::Handle::current(),
            peers: HashMap::new(),
            cut,
        }
    }
}

impl Transport for QuicTransport {
    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            if self.cut.is_cut(to) {
                continue;
            }
            let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let queued = self
                .peers
                .get(&to)
                .is_some_and(|peer| peer.queue.try_send(message).is_ok());
            if !queued {
                if is_snapshot {
                    self.mailbox.report_snapshot(to, false);
                }
                self.mailbox.report_unreachable(to);
            }
        }
    }

    fn set_peer(&mut self, id: u64, address: &str) {
        let Ok(address) = address.parse::<SocketAddr>() else {
            tracing::warn!(peer = id, address, "peer address is not host:port; ignored");
            return;
        };
        if self.peers.get(&id).is_some_and(|p| p.address == address) {
            return;
        }
        let (queue, outbox) = mpsc::channel(PEER_QUEUE_CAPACITY);
        let link = PeerSender {
            from: self.id,
            to: id,
            address,
            endpoint: self.endpoint.clone(),
            mailbox: self.mailbox.clone(),
        };
        self.runtime.spawn(link.run(outbox));
        // Replacing the entry drops the old queue, which ends the old task.
        self.peers.insert(id, PeerLink { address, queue });
    }

    fn remove_peer(&mut self, id: u64) {
        self.peers.remove(&id);
    }
}

struct PeerSender {
    from: u64,
    to: u64,
    address: SocketAddr,
    endpoint: Endpoint,
    mailbox: Mailbox,
}

impl PeerSender {
    async fn connect(&self) -> Result<FramedStream, String> {
        let server_name = Identity::orchestrator(self.to).server_name();
        let connection = self
            .endpoint
            .connect(self.address, &server_name)
            .await
            .map_err(|e| e.to_string())?;
        connection
            .open_stream(StreamKind::Raft)
            .await
            .map_err(|e| e.to_string())
    }

    fn report_failure(&self, message: &Message) {
        if message.get_msg_type() == MessageType::MsgSnapshot {
            self.mailbox.report_snapshot(self.to, false);
        }
        self.mailbox.report_unreachable(self.to);
    }

    async fn run(self, mut outbox: mpsc::Receiver<Message>) {
        let mut stream: Option<FramedStream> = None;
        let mut backoff = RECONNECT_BACKOFF_MIN;
        while let Some(message) = outbox.recv().await {
            if stream.is_none() {
                match self.connect().await {
                    Ok(opened) => {
                        tracing::debug!(peer = self.to, address = %self.address, "raft stream open");
                        stream = Some(opened);
                        backoff = RECONNECT_BACKOFF_MIN;
                    }
                    Err(error) => {
                        tracing::debug!(peer = self.to, address = %self.address, %error, "cannot reach peer");
                        self.report_failure(&message);
                        // Messages queued meanwhile are stale by the time the peer is back;
                        // raft-rs resends what matters from its log.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                        while let Ok(stale) = outbox.try_recv() {
                            self.report_failure(&stale);
                        }
                        continue;
                    }
                }
            }
            let Some(open) = stream.as_mut() else {
                continue;
            };
            let frame = RaftMessage {
                from: self.from,
                to: self.to,
                message: encode_message(&message),
            };
            match open.send(&frame).await {
                Ok(()) => {
                    if message.get_msg_type() == MessageType::MsgSnapshot {
                        self.mailbox.report_snapshot(self.to, true);
                    }
                }
                Err(error) => {
                    tracing::debug!(peer = self.to, %error, "raft stream failed; reconnecting");
                    self.report_failure(&message);
                    stream = None;
                }
            }
        }
    }
}

/// Why an inbound Raft stream was closed.
#[derive(Debug, thiserror::Error)]
pub enum RaftStreamError {
    #[error("peer {peer} may not send raft messages (not an orchestrator)")]
    NotOrchestrator { peer: Identity },
    #[error("peer {peer} sent a message claiming to be from node {claimed}")]
    Impersonation { peer: Identity, claimed: u64 },
    #[error(transparent)]
    Stream(#[from] umbra_proto::StreamError),
    #[error(transparent)]
    Decode(#[from] crate::transport::DecodeError),
}

/// Reads Raft messages from an accepted `StreamKind::Raft` stream into node `id`'s mailbox
/// until the peer ends it. A message whose sender differs from the certificate's node id is
/// a forgery: the stream is aborted. Messages for another node id are dropped (a node that
/// used to live at this address), and so are messages from peers in `cut`.
pub async fn serve_raft_stream(
    mut stream: FramedStream,
    id: u64,
    mailbox: Mailbox,
    cut: TrafficCut,
) -> Result<(), RaftStreamError> {
    let peer = stream.peer().clone();
    if peer.role() != Role::Orchestrator {
        stream.abort(umbra_proto::codes::ROLE_REFUSED);
        return Err(RaftStreamError::NotOrchestrator { peer });
    }
    while let Some(frame) = stream.recv::<RaftMessage>().await? {
        if peer.id() != frame.from.to_string() {
            stream.abort(umbra_proto::codes::ROLE_REFUSED);
            return Err(RaftStreamError::Impersonation {
                peer,
                claimed: frame.from,
            });
        }
        if frame.to != id || cut.is_cut(frame.from) {
            continue;
        }
        let message = match decode_message(&frame.message) {
            Ok(message) => message,
            Err(error) => {
                stream.abort(umbra_proto::codes::MESSAGE_MALFORMED);
                return Err(error.into());
            }
        };
        if message.from != frame.from || message.to != id {
            stream.abort(umbra_proto::codes::MESSAGE_MALFORMED);
            return Err(RaftStreamError::Impersonation {
                peer,
                claimed: message.from,
            });
        }
        // A full mailbox drops the message; raft-rs recovers lost messages by retrying.
        mailbox.deliver(message);
    }
    Ok(())
}
