//! What a service's serving pool should hold and holds, as plain data: the leader's executor
//! computes it (`executor::pools`), the observation board keeps it (`store`), and the API,
//! the CLI and the demo show it. No logic here, so every one of them can use it.

use umbra_forecast::sizing::PoolTarget;

/// The pool target of one slice, and the forecast it came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SliceTarget {
    /// Start of the slice, Unix ms.
    pub start_ms: u64,
    /// Forecast mean demand (requests per second).
    pub mean: f64,
    /// The tier's quantile of demand the pool holds (requests per second; 0 for on-demand).
    pub quantile: f64,
    /// Warm and dormant instances for it, within the service's limits.
    pub target: PoolTarget,
}

/// What a pool holds and should hold, as this leader sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PoolView {
    /// The service.
    pub service: String,
    /// The region.
    pub region: String,
    /// The instance id prefix (the generation).
    pub prefix: String,
    /// The target in force (after lead times and hysteresis).
    pub target: PoolTarget,
    /// What the region's agent reports: serving and dormant instances of the pool.
    pub actual: PoolTarget,
    /// The slice now, from the forecast (none without usable history).
    pub slice: Option<SliceTarget>,
    /// The model the forecast came from, or why there is none.
    pub forecast: String,
    /// The forecast's coming slices, from now's (what `GET /v1/forecast` answers).
    #[serde(default)]
    pub upcoming: Vec<SliceTarget>,
    /// The capacity claims in force (or about to be) and how the pool met each.
    #[serde(default)]
    pub claims: Vec<ClaimFulfilment>,
}

/// How a pool met one capacity claim: which of its instances hold the claim and how each
/// came to serve, as this leader saw it from when the claim took effect (one activation
/// lead before its window).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClaimFulfilment {
    /// The claim's id.
    pub claim: String,
    /// Start of its window, Unix ms.
    pub start_ms: u64,
    /// When this leader started to hold it, Unix ms.
    pub effective_ms: u64,
    /// The instances that hold it, in pool order.
    pub members: Vec<ClaimMember>,
}

impl ClaimFulfilment {
    /// Whether every member serves.
    pub fn fulfilled(&self) -> bool {
        self.members.iter().all(|m| m.serving_at_ms.is_some())
    }
}

/// One instance holding a claim.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClaimMember {
    /// The instance.
    pub instance: String,
    /// What it was when the claim took effect.
    pub was: MemberWas,
    /// When a report first showed it serving, Unix ms (`None`: not yet).
    pub serving_at_ms: Option<u64>,
}

impl ClaimMember {
    /// From the window's start to serving, ms: 0 when it served by then.
    pub fn ready_after_ms(&self, start_ms: u64) -> Option<u64> {
        self.serving_at_ms.map(|t| t.saturating_sub(start_ms))
    }
}

/// What an instance was when a claim took effect.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum MemberWas {
    /// Serving already.
    Serving,
    /// Created or stopped, not serving: activated for the claim.
    Dormant,
    /// Not there: launched cold for the claim.
    Cold,
}
