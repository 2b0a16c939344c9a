//! Wall-clock readings between orchestrators, on a [`StreamKind::Clock`](crate::StreamKind::Clock)
//! stream: the asking node sends [`ClockProbe`]s, the other answers each with a
//! [`ClockReading`] of its wall clock. The asking node times the exchange on its monotonic
//! clock and estimates the other's offset as the reading minus its own wall time at the
//! exchange's midpoint, within half the round trip (Cristian's algorithm).

use serde::{Deserialize, Serialize};

/// A request for the receiver's wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockProbe {
    /// Chosen by the asking node and echoed, so a late answer is not taken for a newer probe's.
    pub seq: u64,
}

/// The answer to a [`ClockProbe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockReading {
    /// The probe's `seq`.
    pub seq: u64,
    /// The answering node's wall clock when it answered, ms since the Unix epoch.
    pub wall_ms: u64,
}
