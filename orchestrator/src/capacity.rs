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
}
