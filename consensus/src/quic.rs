//! The production `Transport`: Raft messages over QUIC with mutual TLS (`umbra-proto`), one
//! `StreamKind::Raft` stream per peer, and the receiving side (`serve_raft_stream`) that
//! checks each message really comes from the certificate's node before handing it to the
//! mailbox. Only orchestrator-role certificates may open Raft streams; `umbra-proto` enforces
//! that at accept time. It must not interpret messages beyond their addressing.
//!
//! A snapshot (`MsgSnapshot`) travels on a `StreamKind::RaftSnapshot` stream of its own, its
//! data in chunks, so a state larger than one frame still reaches a follower and heartbeats
//! are not held up behind it. The receiver (`SnapshotInbox`) reassembles the data within a
//! bound, checks its CRC-32 and only then steps the message into Raft; a transfer cut off
//! mid-way is dropped whole and raft-rs sends the snapshot again after it hears of the loss.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};
use tokio::sync::{Semaphore, mpsc};
use umbra_proto::liveness::{self, PortState};
use umbra_proto::raft::{SnapshotChunk, SnapshotHeader, SnapshotReceipt, SnapshotResume};
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
/// Snapshot data per chunk frame: far below the 16 MiB frame limit, and large enough that
/// framing costs nothing next to the data (TiKV streams snapshots in 1 MiB chunks too).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
const _: () = assert!(SNAPSHOT_CHUNK_BYTES * 2 <= umbra_proto::frame::DEFAULT_MAX_FRAME_BYTES);
/// Largest snapshot a node accepts. The receiver holds the whole data in memory while it
/// reassembles it (the state machine restores from one buffer), so this bounds the memory one
/// transfer may take; 1 GiB leaves room above the several hundred MiB of state the control
/// plane is sized for.
pub const MAX_SNAPSHOT_BYTES: u64 = 1024 * 1024 * 1024;
/// Snapshots received at once by one node: each may hold up to `MAX_SNAPSHOT_BYTES` in
/// memory, and a node only ever needs the one its leader sends.
const MAX_CONCURRENT_SNAPSHOT_RECEIVES: usize = 1;
/// How long one step of a snapshot transfer (connecting, one chunk, the receipt) may take
/// before the transfer is abandoned, on either side, and raft-rs is told it failed (it sends
/// again). A stalled peer must not hold the leader's snapshot slot for that follower, or the
/// receiver's memory, for ever; 30 s is far above a chunk's time on any link a cluster runs on.
const SNAPSHOT_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a receiver keeps the data of an interrupted transfer for the sender to resume,
/// before it frees the memory: raft-rs sends again within a few heartbeats of hearing of the
/// failure, and a leader that changed meanwhile sends another snapshot, which replaces it.
/// Bounded in memory by `MAX_SNAPSHOT_BYTES`, as one transfer in progress is.
const PARTIAL_SNAPSHOT_KEPT: Duration = Duration::from_secs(120);

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
    /// Set while a liveness probe of this peer is out, so probes never pile up.
    probing: Arc<AtomicBool>,
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
        self.peers.insert(
            id,
            PeerLink {
                address,
                queue,
                probing: Arc::default(),
            },
        );
    }

    fn remove_peer(&mut self, id: u64) {
        self.peers.remove(&id);
    }

    fn probe(&mut self, peer: u64) {
        let Some(link) = self.peers.get(&peer) else {
            return;
        };
        // A partitioned peer is not known dead: a cut (like a real partition) answers nothing.
        if self.cut.is_cut(peer) || link.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (address, probing, mailbox) =
            (link.address, link.probing.clone(), self.mailbox.clone());
        self.runtime.spawn(async move {
            let state = liveness::probe(address, liveness::PROBE_WAIT).await;
            probing.store(false, Ordering::Release);
            if let Ok(PortState::Closed) = state {
                tracing::debug!(peer, %address, "peer's port is closed");
                mailbox.report_down(peer);
            }
        });
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
            if message.get_msg_type() == MessageType::MsgSnapshot {
                let transfer = SnapshotTransfer {
                    from: self.from,
                    to: self.to,
                    address: self.address,
                    endpoint: self.endpoint.clone(),
                };
                let mailbox = self.mailbox.clone();
                tokio::spawn(async move {
                    let to = transfer.to;
                    match transfer.send(message).await {
                        Ok(bytes) => {
                            tracing::info!(peer = to, bytes, "snapshot sent");
                            mailbox.report_snapshot(to, true);
                        }
                        Err(error) => {
                            tracing::warn!(peer = to, %error, "snapshot not delivered; raft will send it again");
                            mailbox.report_snapshot(to, false);
                            mailbox.report_unreachable(to);
                        }
                    }
                });
                continue;
            }
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
                Ok(()) => {}
                Err(error) => {
                    tracing::debug!(peer = self.to, %error, "raft stream failed; reconnecting");
                    self.report_failure(&message);
                    stream = None;
                }
            }
        }
    }
}

/// Why a snapshot did not reach its follower.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotSendError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error(transparent)]
    Stream(#[from] umbra_proto::StreamError),
    #[error("no progress within {timeout:?} while {0}", timeout = SNAPSHOT_STEP_TIMEOUT)]
    Stalled(&'static str),
    #[error("the receiver refused it: {0}")]
    Refused(String),
    #[error("the receiver ended the stream without a receipt")]
    NoReceipt,
}

/// One snapshot on its way to one follower, on a connection of its own.
struct SnapshotTransfer {
    from: u64,
    to: u64,
    address: SocketAddr,
    endpoint: Endpoint,
}

/// Runs one step of a snapshot transfer within `SNAPSHOT_STEP_TIMEOUT`.
async fn step<T, E>(
    doing: &'static str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, SnapshotSendError>
where
    SnapshotSendError: From<E>,
{
    match tokio::time::timeout(SNAPSHOT_STEP_TIMEOUT, work).await {
        Ok(done) => Ok(done?),
        Err(_) => Err(SnapshotSendError::Stalled(doing)),
    }
}

impl SnapshotTransfer {
    /// Sends `message` (a `MsgSnapshot`): the header, then the data in chunks from where the
    /// receiver says it stopped before (the start, unless an earlier transfer of this very
    /// snapshot was cut off), then waits for the receiver's receipt. Returns the data's size.
    async fn send(&self, mut message: Message) -> Result<usize, SnapshotSendError> {
        let data = std::mem::take(&mut message.mut_snapshot().data);
        let header = SnapshotHeader {
            from: self.from,
            to: self.to,
            message: encode_message(&message),
            data_bytes: data.len() as u64,
            crc32: crc32fast::hash(&data),
        };
        let server_name = Identity::orchestrator(self.to).server_name();
        let connection = step("connecting", async {
            self.endpoint
                .connect(self.address, &server_name)
                .await
                .map_err(|e| SnapshotSendError::Connect(e.to_string()))
        })
        .await?;
        let mut stream = step(
            "opening the stream",
            connection.open_stream(StreamKind::RaftSnapshotResumable),
        )
        .await?;
        step("sending the header", stream.send(&header)).await?;
        let resume = match step(
            "awaiting the resume offset",
            stream.recv::<SnapshotResume>(),
        )
        .await?
        {
            Some(resume) if resume.offset <= data.len() as u64 => resume.offset as usize,
            Some(resume) => {
                return Err(SnapshotSendError::Refused(format!(
                    "the receiver asked to resume at byte {} of {}",
                    resume.offset,
                    data.len()
                )));
            }
            None => return Err(SnapshotSendError::NoReceipt),
        };
        if resume > 0 {
            tracing::info!(
                peer = self.to,
                resume,
                bytes = data.len(),
                "snapshot transfer resumed"
            );
        }
        for chunk in data[resume..].chunks(SNAPSHOT_CHUNK_BYTES) {
            let chunk = SnapshotChunk {
                data: chunk.to_vec(),
            };
            step("sending a chunk", stream.send(&chunk)).await?;
        }
        stream.finish();
        match step("awaiting the receipt", stream.recv::<SnapshotReceipt>()).await? {
            Some(SnapshotReceipt::Delivered) => Ok(data.len()),
            Some(SnapshotReceipt::Refused { reason }) => Err(SnapshotSendError::Refused(reason)),
            None => Err(SnapshotSendError::NoReceipt),
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

/// Why an inbound snapshot was refused. The sender hears the reason in its receipt (unless
/// the stream itself failed); nothing reaches Raft.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotRefusal {
    #[error("peer {peer} may not send raft snapshots (not an orchestrator)")]
    NotOrchestrator { peer: Identity },
    #[error("peer {peer} sent a snapshot claiming to be from node {claimed}")]
    Impersonation { peer: Identity, claimed: u64 },
    #[error("the snapshot is for node {to}, and this is node {id}")]
    WrongNode { to: u64, id: u64 },
    #[error("raft traffic from node {0} is cut (fault injection)")]
    Cut(u64),
    #[error(
        "a snapshot of {bytes} bytes exceeds the {max} bytes a node accepts (MAX_SNAPSHOT_BYTES); shrink the replicated state",
        max = MAX_SNAPSHOT_BYTES
    )]
    TooLarge { bytes: u64 },
    #[error("another snapshot is being received; send again later")]
    Busy,
    #[error("not a snapshot message: {0}")]
    Malformed(String),
    #[error("the stream ended after {received} of {expected} bytes")]
    Truncated { received: u64, expected: u64 },
    #[error("the chunks hold more than the {expected} bytes the header announced")]
    Overlong { expected: u64 },
    #[error("the data's CRC-32 is {actual:08x}, the header says {expected:08x}")]
    Checksum { expected: u32, actual: u32 },
    #[error("no progress within {timeout:?}", timeout = SNAPSHOT_STEP_TIMEOUT)]
    Stalled,
    #[error("the node's mailbox is full or it has stopped")]
    MailboxFull,
    #[error(transparent)]
    Stream(#[from] umbra_proto::StreamError),
}

/// Receives snapshots on accepted `StreamKind::RaftSnapshotResumable` (and, from a sender of
/// the build before, `RaftSnapshot`) streams for node `id`, at most
/// `MAX_CONCURRENT_SNAPSHOT_RECEIVES` at once, keeping the data of the last interrupted
/// transfer for its sender to resume. Cheap to clone.
#[derive(Clone)]
pub struct SnapshotInbox {
    id: u64,
    mailbox: Mailbox,
    cut: TrafficCut,
    receiving: Arc<Semaphore>,
    partial: Arc<std::sync::Mutex<Option<Partial>>>,
}

/// The data of a transfer that stopped mid-way, and which snapshot it belongs to.
struct Partial {
    from: u64,
    /// The header's Raft message (index, term, configuration) with its size and CRC-32:
    /// a resumed transfer must be of the very same snapshot.
    message: Vec<u8>,
    data_bytes: u64,
    crc32: u32,
    data: Vec<u8>,
    kept_at: std::time::Instant,
}

impl Partial {
    fn is_of(&self, header: &SnapshotHeader) -> bool {
        self.from == header.from
            && self.message == header.message
            && self.data_bytes == header.data_bytes
            && self.crc32 == header.crc32
    }
}

/// A snapshot received whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Size of its data.
    pub bytes: u64,
    /// Bytes kept from an earlier, interrupted transfer of it (0 when sent whole).
    pub resumed_from: u64,
}

impl SnapshotInbox {
    /// An inbox delivering to node `id`'s `mailbox`, dropping snapshots from peers in `cut`.
    pub fn new(id: u64, mailbox: Mailbox, cut: TrafficCut) -> Self {
        Self {
            id,
            mailbox,
            cut,
            receiving: Arc::new(Semaphore::new(MAX_CONCURRENT_SNAPSHOT_RECEIVES)),
            partial: Arc::default(),
        }
    }

    /// Reads one snapshot from `stream`, checks it whole and steps it into Raft, then answers
    /// with a receipt. A refusal is answered with its reason (so the leader logs why); the data
    /// received so far is dropped, unless the stream broke off (then it is kept for the sender
    /// to resume).
    pub async fn serve(&self, mut stream: FramedStream) -> Result<Received, SnapshotRefusal> {
        let peer = stream.peer().clone();
        if peer.role() != Role::Orchestrator {
            stream.abort(umbra_proto::codes::ROLE_REFUSED);
            return Err(SnapshotRefusal::NotOrchestrator { peer });
        }
        let outcome = self.receive(&mut stream, &peer).await;
        let receipt = match &outcome {
            Ok(_) => SnapshotReceipt::Delivered,
            Err(SnapshotRefusal::Stream(_)) => return outcome,
            Err(refusal) => SnapshotReceipt::Refused {
                reason: refusal.to_string(),
            },
        };
        // The receipt only tells the sender sooner; a lost one looks like a failed transfer,
        // after which raft-rs sends again, which is safe.
        if stream.send(&receipt).await.is_ok() {
            stream.finish();
        }
        outcome
    }

    async fn receive(
        &self,
        stream: &mut FramedStream,
        peer: &Identity,
    ) -> Result<Received, SnapshotRefusal> {
        let resumable = stream.kind() == StreamKind::RaftSnapshotResumable;
        let header: SnapshotHeader = match recv_step(stream).await? {
            Some(header) => header,
            None => return Err(SnapshotRefusal::Malformed("no header".into())),
        };
        if peer.id() != header.from.to_string() {
            return Err(SnapshotRefusal::Impersonation {
                peer: peer.clone(),
                claimed: header.from,
            });
        }
        if header.to != self.id {
            return Err(SnapshotRefusal::WrongNode {
                to: header.to,
                id: self.id,
            });
        }
        if self.cut.is_cut(header.from) {
            return Err(SnapshotRefusal::Cut(header.from));
        }
        if header.data_bytes > MAX_SNAPSHOT_BYTES {
            return Err(SnapshotRefusal::TooLarge {
                bytes: header.data_bytes,
            });
        }
        let _permit = self
            .receiving
            .try_acquire()
            .map_err(|_| SnapshotRefusal::Busy)?;
        let mut message = decode_message(&header.message)
            .map_err(|e| SnapshotRefusal::Malformed(e.to_string()))?;
        if message.get_msg_type() != MessageType::MsgSnapshot
            || message.from != header.from
            || message.to != self.id
        {
            return Err(SnapshotRefusal::Malformed(format!(
                "a {:?} from {} to {} in a snapshot header from {} to {}",
                message.get_msg_type(),
                message.from,
                message.to,
                header.from,
                header.to
            )));
        }
        let expected = header.data_bytes;
        // Grown as chunks arrive, not reserved from the header: a header alone must not
        // claim memory. A kept partial of another snapshot is of no use any more.
        let kept = self.partial.lock().expect("partial lock").take();
        let mut data = match kept {
            Some(partial) if resumable && partial.is_of(&header) => partial.data,
            _ => Vec::new(),
        };
        let resumed_from = data.len() as u64;
        if resumable {
            let resume = SnapshotResume {
                offset: resumed_from,
            };
            if let Err(error) = send_step(stream, &resume).await {
                self.keep(&header, data);
                return Err(error);
            }
        }
        if let Err(error) = read_chunks(stream, &mut data, expected).await {
            if resumable && error.is_interruption() {
                self.keep(&header, data);
            }
            return Err(error);
        }
        let actual = crc32fast::hash(&data);
        if actual != header.crc32 {
            return Err(SnapshotRefusal::Checksum {
                expected: header.crc32,
                actual,
            });
        }
        message.mut_snapshot().data = data.into();
        if !self.mailbox.deliver(message) {
            return Err(SnapshotRefusal::MailboxFull);
        }
        Ok(Received {
            bytes: expected,
            resumed_from,
        })
    }

    /// Keeps the data of an interrupted transfer for its sender to resume, and frees it after
    /// `PARTIAL_SNAPSHOT_KEPT` unless a transfer took it meanwhile.
    fn keep(&self, header: &SnapshotHeader, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        let kept_at = std::time::Instant::now();
        *self.partial.lock().expect("partial lock") = Some(Partial {
            from: header.from,
            message: header.message.clone(),
            data_bytes: header.data_bytes,
            crc32: header.crc32,
            data,
            kept_at,
        });
        let partial = Arc::downgrade(&self.partial);
        tokio::spawn(async move {
            tokio::time::sleep(PARTIAL_SNAPSHOT_KEPT).await;
            if let Some(partial) = partial.upgrade() {
                let mut partial = partial.lock().expect("partial lock");
                if partial.as_ref().is_some_and(|p| p.kept_at == kept_at) {
                    *partial = None;
                }
            }
        });
    }
}

/// Appends chunks to `data` until it holds `expected` bytes.
async fn read_chunks(
    stream: &mut FramedStream,
    data: &mut Vec<u8>,
    expected: u64,
) -> Result<(), SnapshotRefusal> {
    while (data.len() as u64) < expected {
        let chunk: SnapshotChunk = match recv_step(stream).await? {
            Some(chunk) => chunk,
            None => {
                return Err(SnapshotRefusal::Truncated {
                    received: data.len() as u64,
                    expected,
                });
            }
        };
        if data.len() as u64 + chunk.data.len() as u64 > expected {
            return Err(SnapshotRefusal::Overlong { expected });
        }
        data.extend_from_slice(&chunk.data);
    }
    Ok(())
}

/// Sends one frame of a snapshot stream within `SNAPSHOT_STEP_TIMEOUT`.
async fn send_step<T: serde::Serialize>(
    stream: &mut FramedStream,
    frame: &T,
) -> Result<(), SnapshotRefusal> {
    tokio::time::timeout(SNAPSHOT_STEP_TIMEOUT, stream.send(frame))
        .await
        .map_err(|_| SnapshotRefusal::Stalled)?
        .map_err(SnapshotRefusal::from)
}

impl SnapshotRefusal {
    /// Whether the transfer broke off (the data so far is sound and worth resuming), rather
    /// than being refused for what it held.
    fn is_interruption(&self) -> bool {
        matches!(
            self,
            SnapshotRefusal::Truncated { .. }
                | SnapshotRefusal::Stalled
                | SnapshotRefusal::Stream(_)
        )
    }
}

/// Receives the next frame of a snapshot stream within `SNAPSHOT_STEP_TIMEOUT`.
async fn recv_step<T: serde::de::DeserializeOwned>(
    stream: &mut FramedStream,
) -> Result<Option<T>, SnapshotRefusal> {
    tokio::time::timeout(SNAPSHOT_STEP_TIMEOUT, stream.recv::<T>())
        .await
        .map_err(|_| SnapshotRefusal::Stalled)?
        .map_err(SnapshotRefusal::from)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use raft::eraftpb::Snapshot;
    use umbra_proto::certs::Layout;
    use umbra_proto::{Credentials, TransportConfig};

    use super::*;
    use crate::transport::{Inbound, MailboxReceiver, mailbox};

    /// Node 2 serving snapshot streams on loopback, and node 1's endpoint to send from.
    struct Pair {
        _certs: tempfile::TempDir,
        sender: Endpoint,
        receiver: SocketAddr,
        inbox: MailboxReceiver,
        refusals: mpsc::UnboundedReceiver<Result<Received, String>>,
    }

    impl Pair {
        async fn new() -> Self {
            let certs = tempfile::tempdir().unwrap();
            let layout = Layout {
                orchestrators: 2,
                regions: Vec::new(),
                operators: Vec::new(),
            };
            umbra_proto::certs::init(&layout, certs.path()).unwrap();
            let load = |id| Credentials::load(certs.path(), &Identity::orchestrator(id)).unwrap();
            let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
            let server = Endpoint::server(loopback, &load(2), TransportConfig::default()).unwrap();
            let receiver = server.local_addr().unwrap();
            let sender = Endpoint::client(loopback, &load(1), TransportConfig::default()).unwrap();
            let (mailbox, inbox) = mailbox(16);
            let snapshots = SnapshotInbox::new(2, mailbox, TrafficCut::default());
            let (outcomes, refusals) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Some(incoming) = server.accept().await {
                    let snapshots = snapshots.clone();
                    let outcomes = outcomes.clone();
                    tokio::spawn(async move {
                        let connection = incoming.establish().await.unwrap();
                        while let Ok(stream) = connection.accept_stream().await {
                            let served = snapshots.serve(stream).await;
                            let _ = outcomes.send(served.map_err(|e| e.to_string()));
                        }
                    });
                }
            });
            Self {
                _certs: certs,
                sender,
                receiver,
                inbox,
                refusals,
            }
        }

        fn transfer(&self) -> SnapshotTransfer {
            SnapshotTransfer {
                from: 1,
                to: 2,
                address: self.receiver,
                endpoint: self.sender.clone(),
            }
        }

        async fn open(&self) -> (umbra_proto::Connection, FramedStream) {
            self.open_kind(StreamKind::RaftSnapshot).await
        }

        async fn open_kind(&self, kind: StreamKind) -> (umbra_proto::Connection, FramedStream) {
            let connection = self
                .sender
                .connect(self.receiver, &Identity::orchestrator(2).server_name())
                .await
                .unwrap();
            let stream = connection.open_stream(kind).await.unwrap();
            (connection, stream)
        }

        /// A resumable transfer of `data` whose sender ends the stream after `chunks` chunks;
        /// returns the offset the receiver offered.
        async fn interrupt(&mut self, data: &[u8], chunks: usize) -> u64 {
            let (_connection, mut stream) = self.open_kind(StreamKind::RaftSnapshotResumable).await;
            stream.send(&header_for(data)).await.unwrap();
            let resume: SnapshotResume = stream.recv().await.unwrap().unwrap();
            for chunk in data.chunks(SNAPSHOT_CHUNK_BYTES).take(chunks) {
                stream
                    .send(&SnapshotChunk {
                        data: chunk.to_vec(),
                    })
                    .await
                    .unwrap();
            }
            stream.finish();
            let refusal = self.outcome().await.unwrap_err();
            assert!(refusal.contains("ended after"), "{refusal}");
            resume.offset
        }

        /// The receiving side's outcome of the next stream.
        async fn outcome(&mut self) -> Result<Received, String> {
            tokio::time::timeout(Duration::from_secs(10), self.refusals.recv())
                .await
                .expect("the receiver finished the stream")
                .expect("the receiver runs")
        }
    }

    fn snapshot_message(data: Vec<u8>) -> Message {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 7;
        snapshot.mut_metadata().term = 2;
        snapshot.data = data.into();
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgSnapshot);
        message.from = 1;
        message.to = 2;
        message.term = 2;
        message.set_snapshot(snapshot);
        message
    }

    fn header_for(data: &[u8]) -> SnapshotHeader {
        SnapshotHeader {
            from: 1,
            to: 2,
            message: encode_message(&snapshot_message(Vec::new())),
            data_bytes: data.len() as u64,
            crc32: crc32fast::hash(data),
        }
    }

    #[tokio::test]
    async fn a_snapshot_larger_than_a_frame_arrives_whole_in_chunks() {
        let mut pair = Pair::new().await;
        let data: Vec<u8> = (0..umbra_proto::frame::DEFAULT_MAX_FRAME_BYTES + 3 * 1000)
            .map(|i| (i % 251) as u8)
            .collect();
        let sent = pair
            .transfer()
            .send(snapshot_message(data.clone()))
            .await
            .unwrap();
        assert_eq!(sent, data.len());
        let whole = Received {
            bytes: data.len() as u64,
            resumed_from: 0,
        };
        assert_eq!(pair.outcome().await, Ok(whole));
        match pair.inbox.receiver.try_recv() {
            Ok(Inbound::Message(message)) => {
                assert_eq!(message.get_msg_type(), MessageType::MsgSnapshot);
                assert_eq!(message.get_snapshot().get_metadata().index, 7);
                assert!(message.get_snapshot().data[..] == data[..], "data differs");
            }
            other => panic!("expected the snapshot in the mailbox, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn oversized_forged_and_corrupt_transfers_are_refused_and_change_nothing() {
        let mut pair = Pair::new().await;

        let (_connection, mut stream) = pair.open().await;
        let oversized = SnapshotHeader {
            data_bytes: MAX_SNAPSHOT_BYTES + 1,
            ..header_for(b"")
        };
        stream.send(&oversized).await.unwrap();
        let refusal = pair.outcome().await.unwrap_err();
        assert!(refusal.contains("MAX_SNAPSHOT_BYTES"), "{refusal}");
        match stream.recv::<SnapshotReceipt>().await.unwrap() {
            Some(SnapshotReceipt::Refused { reason }) => assert_eq!(reason, refusal),
            other => panic!("expected a refusal, got {other:?}"),
        }

        let (_connection, mut stream) = pair.open().await;
        let forged = SnapshotHeader {
            from: 3,
            ..header_for(b"")
        };
        stream.send(&forged).await.unwrap();
        let refusal = pair.outcome().await.unwrap_err();
        assert!(refusal.contains("claiming to be from node 3"), "{refusal}");

        let (_connection, mut stream) = pair.open().await;
        let data = vec![7u8; 1000];
        let corrupt = SnapshotHeader {
            crc32: crc32fast::hash(&data) ^ 1,
            ..header_for(&data)
        };
        stream.send(&corrupt).await.unwrap();
        stream.send(&SnapshotChunk { data }).await.unwrap();
        let refusal = pair.outcome().await.unwrap_err();
        assert!(refusal.contains("CRC-32"), "{refusal}");

        let (_connection, mut stream) = pair.open().await;
        stream.send(&header_for(&[1, 2, 3])).await.unwrap();
        stream
            .send(&SnapshotChunk {
                data: vec![1, 2, 3, 4],
            })
            .await
            .unwrap();
        let refusal = pair.outcome().await.unwrap_err();
        assert!(refusal.contains("more than the 3 bytes"), "{refusal}");

        assert!(
            pair.inbox.receiver.try_recv().is_err(),
            "nothing reached raft"
        );
    }

    #[tokio::test]
    async fn a_transfer_cut_off_midway_frees_its_slot_and_the_next_one_succeeds() {
        let mut pair = Pair::new().await;
        let data = vec![9u8; 3 * SNAPSHOT_CHUNK_BYTES];
        {
            let (connection, mut stream) = pair.open().await;
            stream.send(&header_for(&data)).await.unwrap();
            stream
                .send(&SnapshotChunk {
                    data: data[..SNAPSHOT_CHUNK_BYTES].to_vec(),
                })
                .await
                .unwrap();
            // The sender dies mid-way: its connection goes, with the stream.
            connection.close(umbra_proto::codes::NORMAL, "sender died");
        }
        assert!(pair.outcome().await.is_err());
        assert!(pair.inbox.receiver.try_recv().is_err());
        // raft-rs sends the whole snapshot again; the receiver's one slot is free for it.
        let sent = pair.transfer().send(snapshot_message(data.clone())).await;
        assert_eq!(sent.unwrap(), data.len());
        assert_eq!(pair.outcome().await.map(|r| r.bytes), Ok(data.len() as u64));
        assert!(matches!(
            pair.inbox.receiver.try_recv(),
            Ok(Inbound::Message(_))
        ));
    }

    #[tokio::test]
    async fn an_interrupted_transfer_resumes_where_it_stopped_and_only_for_the_same_snapshot() {
        let mut pair = Pair::new().await;
        let data: Vec<u8> = (0..3 * SNAPSHOT_CHUNK_BYTES + 77)
            .map(|i| (i % 253) as u8)
            .collect();
        let other = vec![5u8; 2 * SNAPSHOT_CHUNK_BYTES];

        assert_eq!(pair.interrupt(&data, 2).await, 0);
        // Another snapshot (a new leader's, say) is not resumed from the kept data, and
        // replaces it.
        pair.transfer()
            .send(snapshot_message(other.clone()))
            .await
            .unwrap();
        assert_eq!(
            pair.outcome().await.map(|r| r.resumed_from),
            Ok(0),
            "another snapshot starts afresh"
        );
        assert!(matches!(
            pair.inbox.receiver.try_recv(),
            Ok(Inbound::Message(_))
        ));

        assert_eq!(pair.interrupt(&data, 1).await, 0);
        let sent = pair.transfer().send(snapshot_message(data.clone())).await;
        assert_eq!(sent.unwrap(), data.len());
        assert_eq!(
            pair.outcome().await,
            Ok(Received {
                bytes: data.len() as u64,
                resumed_from: SNAPSHOT_CHUNK_BYTES as u64,
            })
        );
        match pair.inbox.receiver.try_recv() {
            Ok(Inbound::Message(message)) => {
                assert!(message.get_snapshot().data[..] == data[..], "data differs");
            }
            other => panic!("expected the snapshot in the mailbox, got {other:?}"),
        }
    }
}
