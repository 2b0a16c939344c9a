//! The seam between a Raft node and the network. The node hands outgoing raft-rs messages to a
//! `Transport`; whatever carries them delivers incoming messages (and delivery failures) to the
//! receiving node's `Mailbox`. The QUIC transport (`quic.rs`) and the in-memory network of the
//! layer-2 tests (`memory.rs`) both sit behind it. Nothing here may block the Raft driver.

use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::mpsc;

/// Inbound mailbox depth: raft-rs tolerates lost messages (it retries on heartbeats), so a
/// full mailbox drops rather than stalls the network task; 4096 covers a burst of appends
/// from a leader with 256 inflight messages to each of several peers.
pub const MAILBOX_CAPACITY: usize = 4096;

/// Something for the Raft driver from outside.
#[derive(Debug)]
pub enum Inbound {
    /// A message from a peer.
    Message(Message),
    /// A message to this peer could not be delivered; raft-rs slows down replication to it.
    Unreachable(u64),
    /// A snapshot sent to this peer was delivered (`true`) or lost (`false`).
    SnapshotStatus { to: u64, delivered: bool },
    /// A probe found this peer's port closed: its process is gone (see `Transport::probe`).
    PeerDown(u64),
}

/// The sending side of a node's inbound queue. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct Mailbox {
    sender: mpsc::Sender<Inbound>,
}

/// The receiving side, owned by the node's driver.
#[derive(Debug)]
pub struct MailboxReceiver {
    pub(crate) receiver: mpsc::Receiver<Inbound>,
}

/// A bounded mailbox pair.
pub fn mailbox(capacity: usize) -> (Mailbox, MailboxReceiver) {
    let (sender, receiver) = mpsc::channel(capacity);
    (Mailbox { sender }, MailboxReceiver { receiver })
}

impl Mailbox {
    /// Queues an inbound message; returns `false` (and drops it) when the queue is full or
    /// the node has stopped.
    pub fn deliver(&self, message: Message) -> bool {
        self.sender.try_send(Inbound::Message(message)).is_ok()
    }

    pub fn report_unreachable(&self, peer: u64) {
        let _ = self.sender.try_send(Inbound::Unreachable(peer));
    }

    /// Whether the receiving node has stopped.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub fn report_down(&self, peer: u64) {
        let _ = self.sender.try_send(Inbound::PeerDown(peer));
    }

    pub fn report_snapshot(&self, to: u64, delivered: bool) {
        let _ = self
            .sender
            .try_send(Inbound::SnapshotStatus { to, delivered });
    }
}

/// Carries a node's outgoing messages to its peers.
pub trait Transport: Send + 'static {
    /// Sends messages without waiting; failures come back through the mailbox.
    fn send(&mut self, messages: Vec<Message>);
    /// Learns (or updates) the address of a peer.
    fn set_peer(&mut self, id: u64, address: &str);
    /// Forgets a peer that left the cluster.
    fn remove_peer(&mut self, id: u64);
    /// Checks, without waiting, whether the peer's process is gone; if it is (its port is
    /// closed), reports `Inbound::PeerDown` through the mailbox. Reports nothing when in
    /// doubt: only proof of a dead process may shorten an election.
    fn probe(&mut self, peer: u64);
}

/// A peer message that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("not a raft message: {0}")]
pub struct DecodeError(String);

/// Encodes a raft-rs message for the wire.
pub fn encode_message(message: &Message) -> Vec<u8> {
    crate::storage::encode_pb(message)
}

/// Decodes a raft-rs message from the wire.
pub fn decode_message(bytes: &[u8]) -> Result<Message, DecodeError> {
    Message::parse_from_bytes(bytes).map_err(|e| DecodeError(e.to_string()))
}
