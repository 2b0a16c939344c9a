//! Pool sizing: "size the shadow pool" for one slice from its demand distribution.
//!
//! Pure functions and one small state machine (hysteresis), no I/O, no clock. The cost model
//! is DESIGN.md's: an instance-slice nobody uses costs `c_idle`, a slice of one instance's
//! worth of demand that finds no warm capacity (a cold start) costs `c_miss`; holding the
//! `c_miss / (c_miss + c_idle)` quantile of demand minimises the expected sum (the newsvendor
//! solution). Tiers choose the quantile: guaranteed (fixed, high), probabilistic (newsvendor),
//! on-demand (no pool). The pool is split into warm instances (costly, serve at once) and
//! dormant ones (cheap, take `dormant_activation_secs` to serve): the k-th instance is kept
//! warm while the chance it is needed, times the share of a slice lost while it activates,
//! times `c_miss` is worth more than the warm premium. Hysteresis stops the pool flapping;
//! limits cap it. Demand comes in as a quantile function, so this module does not depend on
//! how demand was forecast.

use serde::{Deserialize, Serialize};

/// Default guaranteed-tier quantile: p99, the quantile the issue names for guaranteed capacity.
pub const DEFAULT_GUARANTEED_QUANTILE: f64 = 0.99;
/// Highest quantile any tier may hold; above it the forecast tail is guesswork (the
/// calibration window holds about 1,300 errors, so p99.9 rests on one or two of them).
pub const MAX_POOL_QUANTILE: f64 = 0.999;

/// How much a service's capacity is guaranteed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
// Externally tagged: the replicated state stores tiers with postcard, which cannot decode
// internally tagged enums. In TOML: `tier = { probabilistic = { cost_miss = 4.0, cost_idle = 1.0 } }`.
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Hold a fixed high quantile of demand, whatever it costs.
    Guaranteed { quantile: f64 },
    /// Hold the newsvendor quantile of the two costs (per instance-slice).
    Probabilistic { cost_miss: f64, cost_idle: f64 },
    /// No pool: capacity is launched when demand arrives.
    OnDemand,
}

/// Errors in a sizing policy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SizingError {
    #[error("invalid sizing policy: {0}")]
    Invalid(String),
}

impl Tier {
    /// The demand quantile the pool must cover, or None for on-demand.
    pub fn quantile(&self) -> Option<f64> {
        match *self {
            Tier::Guaranteed { quantile } => Some(quantile.min(MAX_POOL_QUANTILE)),
            Tier::Probabilistic {
                cost_miss,
                cost_idle,
            } => Some(newsvendor_quantile(cost_miss, cost_idle).min(MAX_POOL_QUANTILE)),
            Tier::OnDemand => None,
        }
    }

    pub fn validate(&self) -> Result<(), SizingError> {
        match *self {
            Tier::Guaranteed { quantile } if !(positive(quantile) && quantile < 1.0) => Err(
                SizingError::Invalid(format!("guaranteed quantile {quantile} must be in (0, 1)")),
            ),
            Tier::Probabilistic {
                cost_miss,
                cost_idle,
            } if !(positive(cost_miss) && positive(cost_idle)) => {
                Err(SizingError::Invalid(format!(
                    "costs must be positive and finite (cost_miss {cost_miss}, cost_idle {cost_idle})"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// True for a finite number above zero (false for NaN).
fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// The critical ratio `c_miss / (c_miss + c_idle)`.
pub fn newsvendor_quantile(cost_miss: f64, cost_idle: f64) -> f64 {
    assert!(
        cost_miss > 0.0 && cost_idle > 0.0,
        "costs must be positive (validate the tier first)"
    );
    cost_miss / (cost_miss + cost_idle)
}

/// What one instance does and costs, from measurements.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InstanceProfile {
    /// Demand one warm instance serves per slice (same unit as the forecast).
    pub capacity: f64,
    /// Cost of keeping one instance warm for one slice.
    pub warm_cost_per_slice: f64,
    /// Cost of keeping one instance dormant (created, stopped) for one slice.
    pub dormant_cost_per_slice: f64,
    /// Measured time from "activate" to serving for a dormant instance.
    pub dormant_activation_secs: f64,
}

impl InstanceProfile {
    pub fn validate(&self) -> Result<(), SizingError> {
        let ok = self.capacity > 0.0
            && self.warm_cost_per_slice >= 0.0
            && self.dormant_cost_per_slice >= 0.0
            && self.dormant_cost_per_slice <= self.warm_cost_per_slice
            && self.dormant_activation_secs >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(SizingError::Invalid(format!(
                "instance profile {self:?}: capacity must be positive, costs not negative, a dormant \
                 instance no dearer than a warm one, activation time not negative"
            )))
        }
    }
}

/// Instances needed to serve `demand` at `capacity` each (at least zero).
pub fn instances_for(demand: f64, capacity: f64) -> u32 {
    assert!(capacity > 0.0, "capacity must be positive");
    if demand <= 0.0 || !demand.is_finite() {
        return 0;
    }
    // A hair of tolerance so that 10.0000000001 / 1 does not ask for an 11th instance.
    (demand / capacity - 1e-9).ceil().max(0.0) as u32
}

/// A pool size for one slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PoolTarget {
    pub warm: u32,
    pub dormant: u32,
}

impl PoolTarget {
    pub fn total(&self) -> u32 {
        self.warm + self.dormant
    }
}

/// Quantile of warm capacity: the k-th instance stays warm while
/// `P(needed) · activation_share · c_miss > warm premium`, i.e. up to the
/// `1 − premium / (activation_share · c_miss)` quantile of demand.
pub fn warm_quantile(
    pool_quantile: f64,
    profile: &InstanceProfile,
    cost_miss: f64,
    slice_secs: f64,
) -> f64 {
    let activation_share = (profile.dormant_activation_secs / slice_secs).clamp(0.0, 1.0);
    let premium = profile.warm_cost_per_slice - profile.dormant_cost_per_slice;
    let expected_loss = activation_share * cost_miss;
    if expected_loss <= 0.0 {
        return 0.0;
    }
    if premium <= 0.0 {
        return pool_quantile;
    }
    (1.0 - premium / expected_loss).clamp(0.0, pool_quantile)
}

/// Limits on a pool.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PoolLimits {
    /// Most instances (warm + dormant) a service may hold in a region.
    pub max_pool: u32,
    /// Oldest a dormant instance may get before it is recycled (stale image, certificates).
    pub max_dormant_age_secs: u64,
}

/// Default limits: 1,000 instances (a quota-sized bound, not a target) and a day for
/// dormant instances (images and certificates roll daily in most fleets).
pub const DEFAULT_LIMITS: PoolLimits = PoolLimits {
    max_pool: 1_000,
    max_dormant_age_secs: 86_400,
};

impl PoolLimits {
    /// Cap a target at `max_pool`, giving up dormant instances before warm ones.
    pub fn apply(&self, target: PoolTarget) -> PoolTarget {
        let warm = target.warm.min(self.max_pool);
        let dormant = target.dormant.min(self.max_pool - warm);
        PoolTarget { warm, dormant }
    }

    /// How many dormant instances must be recycled now, given their ages in seconds.
    pub fn dormant_to_recycle(&self, dormant_ages_secs: &[u64]) -> usize {
        dormant_ages_secs
            .iter()
            .filter(|&&age| age > self.max_dormant_age_secs)
            .count()
    }
}

/// A whole sizing policy for a service.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SizingPolicy {
    pub tier: Tier,
    pub profile: InstanceProfile,
    pub limits: PoolLimits,
    /// Cost of one instance-slice of unserved demand, used for the warm/dormant split (for the
    /// probabilistic tier this is its `cost_miss`).
    pub cost_miss: f64,
    pub slice_secs: f64,
}

impl SizingPolicy {
    pub fn validate(&self) -> Result<(), SizingError> {
        self.tier.validate()?;
        self.profile.validate()?;
        if !positive(self.slice_secs) || self.cost_miss.is_nan() || self.cost_miss < 0.0 {
            return Err(SizingError::Invalid(
                "slice_secs must be positive and cost_miss not negative".into(),
            ));
        }
        Ok(())
    }

    /// Size the pool for one slice whose demand has quantile function `demand_quantile`.
    pub fn size(&self, demand_quantile: &dyn Fn(f64) -> f64) -> PoolTarget {
        let Some(q) = self.tier.quantile() else {
            return PoolTarget::default();
        };
        let total = instances_for(demand_quantile(q), self.profile.capacity);
        let qw = warm_quantile(q, &self.profile, self.cost_miss, self.slice_secs);
        let warm = if qw <= 0.0 {
            0
        } else {
            instances_for(demand_quantile(qw), self.profile.capacity).min(total)
        };
        self.limits.apply(PoolTarget {
            warm,
            dormant: total - warm,
        })
    }
}

/// Hysteresis settings: grow at once, shrink only after the smaller size has been asked for
/// `shrink_after_slices` slices in a row and is at least `shrink_band` (a fraction) smaller.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hysteresis {
    pub shrink_after_slices: u32,
    pub shrink_band: f64,
}

/// Default hysteresis: a smaller size must be asked for two slices in a row (10 minutes at the
/// controller's 5-minute pool slices, twice the Kubernetes HPA's scale-down stabilisation:
/// targets come from a forecast, already smooth, so a longer wait only holds idle instances)
/// and be at least 3 % smaller (one instance for pools below 34). Chosen on the public Taylor
/// trace (`umbra simulate --trace taylor_halfhourly.csv --slice-secs 1800`): against the
/// earlier three slices and 10 %, idle instance-hours fall from 1,334 to 926 (below the
/// hybrid-histogram policy's 1,015) for 5,378 missed demand units instead of 4,848.
pub const DEFAULT_HYSTERESIS: Hysteresis = Hysteresis {
    shrink_after_slices: 2,
    shrink_band: 0.03,
};

/// The pool size in force, and how long a smaller one has been asked for.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PoolState {
    pub current: PoolTarget,
    /// Largest of the targets asked for during the current run of smaller targets.
    pending_shrink: Option<PoolTarget>,
    shrink_slices: u32,
}

impl PoolState {
    pub fn new(current: PoolTarget) -> Self {
        Self {
            current,
            pending_shrink: None,
            shrink_slices: 0,
        }
    }

    /// Take the next slice's desired target; return the target to hold.
    pub fn handle_target(&mut self, desired: PoolTarget, hysteresis: &Hysteresis) -> PoolTarget {
        let grows = desired.warm > self.current.warm || desired.total() > self.current.total();
        if grows {
            // Growth is never delayed: a late instance is a cold start. Keep whichever part
            // (warm or total) is larger from the current pool, so growth never shrinks the other.
            self.current = PoolTarget {
                warm: desired.warm.max(self.current.warm),
                dormant: desired.total().max(self.current.total())
                    - desired.warm.max(self.current.warm),
            };
            self.pending_shrink = None;
            self.shrink_slices = 0;
            return self.current;
        }
        let band = (f64::from(self.current.total()) * hysteresis.shrink_band).ceil() as u32;
        let significant = self.current.total() - desired.total() >= band.max(1)
            || self.current.warm - desired.warm >= band.max(1);
        if !significant {
            self.pending_shrink = None;
            self.shrink_slices = 0;
            return self.current;
        }
        let pending = match self.pending_shrink {
            Some(p) => PoolTarget {
                warm: p.warm.max(desired.warm),
                dormant: p.total().max(desired.total()) - p.warm.max(desired.warm),
            },
            None => desired,
        };
        self.shrink_slices += 1;
        if self.shrink_slices >= hysteresis.shrink_after_slices {
            // Shrink to the largest size asked for while waiting, not the last one.
            self.current = pending;
            self.pending_shrink = None;
            self.shrink_slices = 0;
        } else {
            self.pending_shrink = Some(pending);
        }
        self.current
    }
}
