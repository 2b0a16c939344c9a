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
