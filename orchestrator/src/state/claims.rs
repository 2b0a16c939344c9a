//! Capacity claims: serving capacity an operator asked for, on top of what the forecast
//! holds. A *request* holds instances from now (`POST /v1/capacity` without a start); a
//! *reservation* holds them for a future window (the guaranteed tier). The leader's pool
//! controller raises the serving pool to the sum of the claims in force, activating dormant
//! instances first; this module only keeps and checks them.
//!
//! A claim names the service's serving region: capacity elsewhere would serve nothing. Claims
//! are bounded (count, window length) and leave the state once their window has ended, at
//! the next claim command, so the state does not grow with history.

use serde::{Deserialize, Serialize};

/// Most claims in force at once.
pub const MAX_CLAIMS: usize = 1_000;
/// Longest window a claim may hold, and how far ahead it may start: 31 days.
pub const MAX_CLAIM_MS: u64 = 31 * 86_400_000;
/// How long a request holds its instances when it does not say: one hour.
pub const DEFAULT_REQUEST_HOLD_MS: u64 = 3_600_000;
/// A reservation's start may lie this far in the past (clock skew between the operator's
/// machine and the leader); earlier is a mistake.
pub const START_SKEW_MS: u64 = 60_000;

/// What an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// The service.
    pub service: String,
    /// The region (the service's serving region).
    pub region: String,
    /// Serving instances to hold.
    pub instances: u32,
    /// Start of the window, Unix ms; `None`: a request, from when it applies.
    pub start_ms: Option<u64>,
    /// End of the window, Unix ms; `None` (requests only): [`DEFAULT_REQUEST_HOLD_MS`] after
    /// it applies.
    pub end_ms: Option<u64>,
}

/// Whether a claim was for now or for a window ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ClaimKind {
    /// From when it applied.
    Request,
    /// For a window given in advance.
    Reservation,
}

/// A claim in force or ahead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityClaim {
    /// `cap-{n}`, in the order claims were made.
    pub id: String,
    /// The service.
    pub service: String,
    /// Its serving region when claimed.
    pub region: String,
    /// Serving instances held.
    pub instances: u32,
    /// Request or reservation.
    pub kind: ClaimKind,
    /// Window start, Unix ms.
    pub start_ms: u64,
    /// Window end (exclusive), Unix ms.
    pub end_ms: u64,
    /// When it was made, Unix ms.
    pub created_ms: u64,
}

impl CapacityClaim {
    /// Whether the claim holds at `t_ms`.
    pub fn holds_at(&self, t_ms: u64) -> bool {
        self.start_ms <= t_ms && t_ms < self.end_ms
    }

    /// Whether the claim's window meets `[start_ms, end_ms)`.
    pub fn overlaps(&self, start_ms: u64, end_ms: u64) -> bool {
        self.start_ms < end_ms && start_ms < self.end_ms
    }
}

/// The most instances `claims` hold at once within `[start_ms, end_ms)`.
pub fn peak<'a>(
    claims: impl IntoIterator<Item = &'a CapacityClaim>,
    start_ms: u64,
    end_ms: u64,
) -> u32 {
    // (time, change): an end sorts before a start at the same time (windows are half-open).
    let mut edges: Vec<(u64, i64)> = Vec::new();
    for claim in claims.into_iter().filter(|c| c.overlaps(start_ms, end_ms)) {
        edges.push((claim.start_ms.max(start_ms), i64::from(claim.instances)));
        edges.push((claim.end_ms, -i64::from(claim.instances)));
    }
    edges.sort_unstable();
    let (mut held, mut most) = (0i64, 0i64);
    for (_, change) in edges {
        held += change;
        most = most.max(held);
    }
    most as u32
}

/// `t_ms` as RFC 3339 (UTC, seconds), for messages a person reads.
pub fn rfc3339(t_ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(t_ms as i64).map_or_else(
        || format!("{t_ms} ms"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// The instances `claims` hold at `t_ms`.
pub fn held_at<'a>(claims: impl IntoIterator<Item = &'a CapacityClaim>, t_ms: u64) -> u32 {
    claims
        .into_iter()
        .filter(|c| c.holds_at(t_ms))
        .map(|c| c.instances)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(start_ms: u64, end_ms: u64, instances: u32) -> CapacityClaim {
        CapacityClaim {
            id: "cap-1".into(),
            service: "shop".into(),
            region: "us-east".into(),
            instances,
            kind: ClaimKind::Reservation,
            start_ms,
            end_ms,
            created_ms: 0,
        }
    }

    #[test]
    fn peaks_count_only_what_overlaps_at_once() {
        let claims = [claim(0, 10, 2), claim(5, 15, 3), claim(10, 20, 4)];
        // (window, peak): 5..10 holds the first two; at 10 the first ends as the third starts.
        for (start, end, want) in [
            (0, 5, 2),
            (0, 10, 5),
            (10, 15, 7),
            (15, 20, 4),
            (20, 30, 0),
            (0, 30, 7),
        ] {
            assert_eq!(peak(&claims, start, end), want, "window {start}..{end}");
        }
        assert_eq!(held_at(&claims, 9), 5);
        assert_eq!(held_at(&claims, 10), 7);
        assert_eq!(held_at(&claims, 20), 0);
    }
}
