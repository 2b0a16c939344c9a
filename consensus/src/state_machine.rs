//! The replicated state machine a Raft node drives: commands are applied in log order on
//! every member, so `apply` must be deterministic (no clocks, no randomness, no I/O).

/// A restore that failed because the snapshot bytes are not this machine's.
#[derive(Debug, thiserror::Error)]
#[error("snapshot cannot be restored: {0}")]
pub struct RestoreError(pub String);

/// A committed entry this build cannot apply at all: written by a newer version of the
/// machine's encoding, so its meaning is unknown here. The message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnreadableEntry(pub String);

/// Serialises a state captured by [`StateMachine::capture`] into the bytes
/// [`StateMachine::restore`] reads.
pub type SnapshotEncoder = Box<dyn FnOnce() -> Vec<u8> + Send>;

/// What a Raft node replicates. Every member applies the same commands in the same order and
/// must reach the same state and produce the same results.
pub trait StateMachine: Send + 'static {
    /// Applies the committed command at log `index` and returns the result the proposer gets.
    /// A command the machine does not understand must still return (an error result), never
    /// panic: it is in the log forever.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;

    /// Checked before each committed entry is applied. `Err` (an entry from a newer version of
    /// the machine, which this build cannot interpret) stops the node before the entry is
    /// applied, with the message as the node's failure: applying it as an error result, as a
    /// malformed command is, would leave this member's state behind the others' unnoticed.
    /// After an upgrade the node applies the entry from its log. The default reads every
    /// entry.
    fn readable(&self, _command: &[u8]) -> Result<(), UnreadableEntry> {
        Ok(())
    }

    /// Answers a read-only query against the current state (used after a ReadIndex round, so
    /// the answer is linearizable).
    fn query(&self, query: &[u8]) -> Vec<u8>;

    /// Captures the state as it is now, after the last applied entry, and returns the work
    /// that serialises it. The node calls this on its driver thread and runs the returned
    /// encoder on a thread of its own, so the capture must be cheap (a copy of shared
    /// pointers, or of a state small enough to copy), while the encoder may take as long as
    /// a state of hundreds of MiB needs: heartbeats go on meanwhile.
    fn capture(&self) -> SnapshotEncoder;

    /// Serialises the whole state (captures it and runs the encoder here).
    fn snapshot(&self) -> Vec<u8> {
        self.capture()()
    }

    /// Replaces the whole state with a snapshot produced by `snapshot`.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError>;
}
