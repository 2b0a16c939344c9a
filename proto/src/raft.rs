//! The Raft peer message carrier: what one orchestrator sends another on a
//! [`StreamKind::Raft`](crate::StreamKind::Raft) stream.
//!
//! The Raft message itself travels as opaque bytes (raft-rs's `eraftpb::Message` in its
//! protobuf encoding); this crate must not depend on `raft`, so that only `consensus` knows
//! which Raft library and which protobuf version is in use.

use serde::{Deserialize, Serialize};

/// One Raft message between two orchestrators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMessage {
    /// Raft node id of the sender.
    pub from: u64,
    /// Raft node id of the intended receiver; a receiver that is not `to` drops the message
    /// (it was meant for a node that used to live at this address).
    pub to: u64,
    /// The protobuf encoding of raft-rs's `eraftpb::Message`.
    pub message: Vec<u8>,
}

/// The first frame on a [`StreamKind::RaftSnapshot`](crate::StreamKind::RaftSnapshot)
/// stream: a Raft snapshot message whose data follows in [`SnapshotChunk`]s, because a
/// state machine's snapshot may be larger than one frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// Raft node id of the sender (the leader).
    pub from: u64,
    /// Raft node id of the intended receiver.
    pub to: u64,
    /// The protobuf encoding of raft-rs's `eraftpb::Message` (a `MsgSnapshot`) with the
    /// snapshot's data left empty: the data is the concatenation of the chunks.
    pub message: Vec<u8>,
    /// Total length of the snapshot's data, in bytes. A receiver refuses a transfer larger
    /// than it accepts before reading any chunk.
    pub data_bytes: u64,
    /// CRC-32 (IEEE) of the whole data, checked once every chunk arrived.
    pub crc32: u32,
}

/// The receiver's answer to a [`SnapshotHeader`] on a
/// [`StreamKind::RaftSnapshotResumable`](crate::StreamKind::RaftSnapshotResumable) stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResume {
    /// How many bytes of this snapshot's data (the same sender, Raft index and term, size and
    /// CRC-32) the receiver kept from an interrupted transfer: the sender's chunks start
    /// there. 0 for a transfer that starts afresh.
    pub offset: u64,
}

/// One piece of a snapshot's data, in order, after the [`SnapshotHeader`] (and, on a resumable
/// stream, the [`SnapshotResume`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The next bytes of the snapshot's data.
    pub data: Vec<u8>,
}

/// The receiver's last frame on a snapshot stream, once it has the whole data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotReceipt {
    /// The snapshot reached the receiver's Raft node.
    Delivered,
    /// The receiver dropped the snapshot; the reason in words. The leader sends it again.
    Refused {
        /// Why, for the sender's log.
        reason: String,
    },
}
