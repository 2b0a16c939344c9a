//! The policy simulator: replays a demand trace step by step (typically per minute) against
//! a pool policy and counts what users and the bill would see: the share of demand served by
//! warm capacity (the rest hit a cold start), idle instance-time, and the cost under a price
//! table. Capacity asked for arrives late: a cold launch takes `launch_delay_secs`, a dormant
//! instance `activation_secs`; removal is immediate. Policies only see demand up to the
//! current step and the forecast; they never see the future trace.
//!
//! Plain computation over vectors: no clock, no I/O (the plot is in [`plot`], the CLI reads
//! files). The forecast reaches policies through [`DemandOutlook`], so the simulator does not
//! depend on how forecasts are made.

use std::collections::VecDeque;

use serde::Serialize;

use crate::DemandForecast;
use crate::sizing::{
    Hysteresis, InstanceProfile, PoolLimits, PoolState, PoolTarget, SizingPolicy, Tier,
    instances_for,
};

/// Forecast demand per simulation step, as seen by policies.
pub trait DemandOutlook {
    fn mean(&self, step: usize) -> f64;
    fn quantile(&self, step: usize, q: f64) -> f64;
}

/// Prices: what the bill counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PriceTable {
    pub warm_per_instance_hour: f64,
    pub dormant_per_instance_hour: f64,
    /// Cost of one unit of demand (one request) that met a cold start.
    pub miss_per_unit: f64,
}

/// Default prices: $0.10 per warm instance-hour (a small cloud VM), $0.01 per dormant
/// instance-hour (its disk only), $0.0001 per request that meets a cold start (a lost sale
/// or an SLO credit in a hundred).
pub const DEFAULT_PRICES: PriceTable = PriceTable {
    warm_per_instance_hour: 0.10,
    dormant_per_instance_hour: 0.01,
    miss_per_unit: 0.0001,
};

/// Simulation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SimConfig {
    pub step_secs: u32,
    /// Demand units one warm instance serves per step.
    pub capacity_per_step: f64,
    pub launch_delay_secs: u32,
    pub activation_secs: u32,
    pub prices: PriceTable,
}

/// Default launch delay: 2 minutes, a typical VM boot plus application start (the issue's).
pub const DEFAULT_LAUNCH_DELAY_SECS: u32 = 120;
/// Default dormant activation: 20 s, starting a stopped, pre-provisioned instance.
pub const DEFAULT_ACTIVATION_SECS: u32 = 20;

impl SimConfig {
    fn delay_steps(&self, secs: u32) -> usize {
        (secs as usize).div_ceil(self.step_secs as usize).max(1)
    }

    /// Steps from a decision to the capacity serving, for a cold launch.
    pub fn launch_steps(&self) -> usize {
        self.delay_steps(self.launch_delay_secs)
    }

    pub fn activation_steps(&self) -> usize {
        self.delay_steps(self.activation_secs)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.step_secs == 0 || self.capacity_per_step.is_nan() || self.capacity_per_step <= 0.0 {
            return Err("step and capacity must be positive".into());
        }
        if self.activation_secs > self.launch_delay_secs {
            return Err("activating a dormant instance cannot be slower than a cold launch".into());
        }
        Ok(())
    }

    /// Cost of one idle warm instance for one step.
    pub fn cost_idle_per_step(&self) -> f64 {
        self.prices.warm_per_instance_hour * f64::from(self.step_secs) / 3600.0
    }

    /// Cost of one instance-step of demand that meets a cold start.
    pub fn cost_miss_per_step(&self) -> f64 {
        self.prices.miss_per_unit * self.capacity_per_step
    }
}

/// A pool policy: after each step, the pool wanted from the next step on.
pub trait Policy {
    fn name(&self) -> String;
    /// `observed` is the demand of steps `0..=step`.
    fn decide(&mut self, step: usize, observed: &[f64], outlook: &dyn DemandOutlook) -> PoolTarget;
}

/// Scale to the last observed demand, like a horizontal autoscaler; shrink only to the largest
/// recommendation of the last `stabilisation_steps` (the Kubernetes HPA's 5-minute default).
pub struct Reactive {
    pub capacity: f64,
    pub stabilisation_steps: usize,
    recent: VecDeque<u32>,
}

impl Reactive {
    pub fn new(capacity: f64, stabilisation_steps: usize) -> Self {
        Self {
            capacity,
            stabilisation_steps: stabilisation_steps.max(1),
            recent: VecDeque::new(),
        }
    }
}

impl Policy for Reactive {
    fn name(&self) -> String {
        "reactive".into()
    }

    fn decide(&mut self, step: usize, observed: &[f64], _: &dyn DemandOutlook) -> PoolTarget {
        self.recent
            .push_back(instances_for(observed[step], self.capacity));
        while self.recent.len() > self.stabilisation_steps {
            self.recent.pop_front();
        }
        PoolTarget {
            warm: self.recent.iter().copied().max().unwrap_or(0),
            dormant: 0,
        }
    }
}

/// A constant warm pool.
pub struct Fixed {
    pub pool: u32,
}

impl Policy for Fixed {
    fn name(&self) -> String {
        format!("fixed({})", self.pool)
    }

    fn decide(&mut self, _: usize, _: &[f64], _: &dyn DemandOutlook) -> PoolTarget {
        PoolTarget {
            warm: self.pool,
            dormant: 0,
        }
    }
}

/// Launch on demand, keep each instance `keep_steps` after its last use (serverless-style).
pub struct KeepAlive {
    pub capacity: f64,
    pub keep_steps: usize,
}

impl Policy for KeepAlive {
    fn name(&self) -> String {
        format!("keepalive({} steps)", self.keep_steps)
    }

    fn decide(&mut self, step: usize, observed: &[f64], _: &dyn DemandOutlook) -> PoolTarget {
        let from = (step + 1).saturating_sub(self.keep_steps.max(1));
        let warm = observed[from..=step]
            .iter()
            .map(|&d| instances_for(d, self.capacity))
            .max()
            .unwrap_or(0);
        PoolTarget { warm, dormant: 0 }
    }
}

/// Pool = forecast mean, launched one launch delay ahead (AWS predictive scaling).
pub struct PredictiveMean {
    pub capacity: f64,
    pub lead_steps: usize,
}

impl Policy for PredictiveMean {
    fn name(&self) -> String {
        "predictive-mean".into()
    }

    fn decide(&mut self, step: usize, _: &[f64], outlook: &dyn DemandOutlook) -> PoolTarget {
        // Capacity removed now is gone at once but capacity added arrives after the lead, so
        // hold enough for every step until then.
        let peak = (step + 1..=step + self.lead_steps)
            .map(|s| outlook.mean(s))
            .fold(0.0, f64::max);
        PoolTarget {
            warm: instances_for(peak, self.capacity),
            dormant: 0,
        }
    }
}

/// Umbra's policy: the tiered newsvendor sizing of [`crate::sizing`] on demand quantiles one
/// launch delay ahead, split into warm and dormant, with hysteresis; dormant instances are
/// promoted when observed demand outgrows the warm ones. The quantiles are the day-ahead
/// forecast's until the nowcast (below) has six hours of errors, then the nowcast's: on the
/// Taylor trace that turned a policy that cost 2.5 % more than `reactive` into the cheapest.
pub struct Umbra {
    pub sizing: SizingPolicy,
    pub hysteresis: Hysteresis,
    pub lead_steps: usize,
    pool: PoolState,
    nowcast: Nowcast,
}

/// Steps of nowcast errors kept: one day at 1-minute steps, so every hour of the day is in it.
pub const NOWCAST_WINDOW_STEPS: usize = 1_440;
/// Nowcast errors needed before the nowcast replaces the day-ahead quantiles: six hours.
pub const NOWCAST_MIN_STEPS: usize = 360;
/// Steps between re-sorting the nowcast errors (their quantiles move slowly).
const NOWCAST_REFRESH_STEPS: usize = 30;

/// The short-horizon demand distribution. The day-ahead forecast's quantiles hold the whole
/// day's uncertainty, most of it a level error that persists for hours and is visible in the
/// latest observation. A nowcast for `lead` steps ahead is the last observation plus the
/// forecast's expected change, `observed(t) + mean(t + k) − mean(t)`; its own errors, measured
/// as the trace is replayed, give the quantiles (the same conformal idea as the forecaster's,
/// at a two-minute horizon). Only errors whose outcome has been observed are used.
struct Nowcast {
    /// (step the prediction is for, predicted demand), oldest first.
    pending: VecDeque<(usize, f64)>,
    errors: VecDeque<f64>,
    sorted: Vec<f64>,
    refreshed_at: usize,
}

impl Nowcast {
    fn new() -> Self {
        Self {
            pending: VecDeque::new(),
            errors: VecDeque::new(),
            sorted: Vec::new(),
            refreshed_at: 0,
        }
    }

    /// Score predictions whose step has been observed; predict `lead` steps ahead.
    fn handle_observation(
        &mut self,
        step: usize,
        observed: &[f64],
        outlook: &dyn DemandOutlook,
        lead: usize,
    ) {
        while let Some(&(at, predicted)) = self.pending.front() {
            if at > step {
                break;
            }
            self.pending.pop_front();
            self.errors.push_back(observed[at] - predicted);
            if self.errors.len() > NOWCAST_WINDOW_STEPS {
                self.errors.pop_front();
            }
        }
        self.pending.push_back((
            step + lead,
            self.predict(step, observed, outlook, step + lead),
        ));
        if self.sorted.is_empty() || step >= self.refreshed_at + NOWCAST_REFRESH_STEPS {
            self.sorted = self.errors.iter().copied().collect();
            self.sorted.sort_by(f64::total_cmp);
            self.refreshed_at = step;
        }
    }

    fn predict(
        &self,
        step: usize,
        observed: &[f64],
        outlook: &dyn DemandOutlook,
        at: usize,
    ) -> f64 {
        observed[step] + outlook.mean(at) - outlook.mean(step)
    }

    fn ready(&self) -> bool {
        self.sorted.len() >= NOWCAST_MIN_STEPS
    }

    /// Quantile `q` of demand at step `at`, seen from `step`.
    fn quantile(
        &self,
        step: usize,
        observed: &[f64],
        outlook: &dyn DemandOutlook,
        at: usize,
        q: f64,
    ) -> f64 {
        let pos = q * (self.sorted.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        let error = self.sorted[lo] + (self.sorted[hi] - self.sorted[lo]) * (pos - lo as f64);
        (self.predict(step, observed, outlook, at) + error).max(0.0)
    }
}

impl Umbra {
    pub fn new(sizing: SizingPolicy, hysteresis: Hysteresis, lead_steps: usize) -> Self {
        Self {
            sizing,
            hysteresis,
            lead_steps,
            pool: PoolState::default(),
            nowcast: Nowcast::new(),
        }
    }

    /// The probabilistic-tier policy for a simulation's prices and delays.
    pub fn for_config(config: &SimConfig, hysteresis: Hysteresis) -> Self {
        let cost_idle = config.cost_idle_per_step();
        let cost_miss = config.cost_miss_per_step();
        let sizing = SizingPolicy {
            tier: Tier::Probabilistic {
                cost_miss,
                cost_idle,
            },
            profile: InstanceProfile {
                capacity: config.capacity_per_step,
                warm_cost_per_slice: cost_idle,
                dormant_cost_per_slice: config.prices.dormant_per_instance_hour
                    * f64::from(config.step_secs)
                    / 3600.0,
                dormant_activation_secs: f64::from(config.activation_secs),
            },
            limits: PoolLimits {
                max_pool: u32::MAX / 2,
                max_dormant_age_secs: u64::MAX,
            },
            cost_miss,
            slice_secs: f64::from(config.step_secs),
        };
        Self::new(sizing, hysteresis, config.launch_steps())
    }
}

impl Policy for Umbra {
    fn name(&self) -> String {
        "umbra".into()
    }

    fn decide(&mut self, step: usize, observed: &[f64], outlook: &dyn DemandOutlook) -> PoolTarget {
        // Hold, at every step until new capacity could arrive, the largest pool any of
        // them needs.
        self.nowcast
            .handle_observation(step, observed, outlook, self.lead_steps);
        let (mut warm, mut total) = (0, 0);
        for s in step + 1..=step + self.lead_steps {
            let t = if self.nowcast.ready() {
                self.sizing
                    .size(&|q| self.nowcast.quantile(step, observed, outlook, s, q))
            } else {
                self.sizing.size(&|q| outlook.quantile(s, q))
            };
            warm = warm.max(t.warm);
            total = total.max(t.total());
        }
        let desired = PoolTarget {
            warm,
            dormant: total - warm,
        };
        let mut target = self.pool.handle_target(desired, &self.hysteresis);
        // A surprise: demand above the warm pool right now. Promote dormant instances (fast)
        // rather than wait for the forecast to catch up.
        let now_needed = instances_for(observed[step], self.sizing.profile.capacity);
        if now_needed > target.warm {
            let promote = (now_needed - target.warm).min(target.dormant);
            target.warm += promote;
            target.dormant -= promote;
            // Anything beyond the dormant pool must be launched cold.
            target.warm = target.warm.max(now_needed);
        }
        target
    }
}

/// What one policy did over a trace.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    pub policy: String,
    pub steps: usize,
    pub demand_total: f64,
    /// Share of demand served by warm capacity (no cold start).
    pub served_share: f64,
    /// Demand that met no warm capacity.
    pub missed: f64,
    /// Steps in which some demand was missed.
    pub steps_with_misses: usize,
    pub warm_instance_hours: f64,
    /// Warm instance-hours (including booting ones) that served nothing.
    pub idle_instance_hours: f64,
    pub dormant_instance_hours: f64,
    pub cost_warm: f64,
    pub cost_dormant: f64,
    pub cost_misses: f64,
    pub cost_total: f64,
    /// Decisions that changed the pool (warm or dormant target) from the previous one: how
    /// much the policy churns instances.
    pub resizes: usize,
    /// Warm instances serving at each step (for plots).
    #[serde(skip)]
    pub warm_by_step: Vec<u32>,
    #[serde(skip)]
    pub dormant_by_step: Vec<u32>,
}

impl SimResult {
    /// Idle instance-hours of every kind: warm ones serving nothing plus dormant ones.
    pub fn idle_all_instance_hours(&self) -> f64 {
        self.idle_instance_hours + self.dormant_instance_hours
    }
}

/// Replay `demand` (units per step) against `policy`. `initial` is the pool at step 0
/// (already serving); a fair start is the first step's needs.
pub fn simulate(
    config: &SimConfig,
    demand: &[f64],
    outlook: &dyn DemandOutlook,
    policy: &mut dyn Policy,
    initial: PoolTarget,
) -> SimResult {
    let launch = config.launch_steps();
    let activation = config.activation_steps();
    let capacity = config.capacity_per_step;
    let mut ready: u32 = initial.warm;
    let mut dormant_ready: u32 = initial.dormant;
    // Arrival step of each warm instance on its way (cold launches and activations), and of
    // dormant instances being created. Newest at the back.
    let mut warm_coming: VecDeque<usize> = VecDeque::new();
    let mut dormant_coming: VecDeque<usize> = VecDeque::new();
    let mut r = SimResult {
        policy: policy.name(),
        steps: demand.len(),
        demand_total: 0.0,
        served_share: 0.0,
        missed: 0.0,
        steps_with_misses: 0,
        warm_instance_hours: 0.0,
        idle_instance_hours: 0.0,
        dormant_instance_hours: 0.0,
        cost_warm: 0.0,
        cost_dormant: 0.0,
        cost_misses: 0.0,
        cost_total: 0.0,
        resizes: 0,
        warm_by_step: Vec::with_capacity(demand.len()),
        dormant_by_step: Vec::with_capacity(demand.len()),
    };
    let hours_per_step = f64::from(config.step_secs) / 3600.0;
    let mut served_total = 0.0;
    let mut previous_target = initial;
    for (step, &d) in demand.iter().enumerate() {
        while warm_coming.front().is_some_and(|&at| at <= step) {
            warm_coming.pop_front();
            ready += 1;
        }
        while dormant_coming.front().is_some_and(|&at| at <= step) {
            dormant_coming.pop_front();
            dormant_ready += 1;
        }
        let served = d.min(f64::from(ready) * capacity);
        served_total += served;
        r.demand_total += d;
        if d - served > 1e-9 {
            r.missed += d - served;
            r.steps_with_misses += 1;
        }
        let warm_billed = f64::from(ready) + warm_coming.len() as f64;
        r.warm_instance_hours += warm_billed * hours_per_step;
        r.idle_instance_hours += (warm_billed - served / capacity).max(0.0) * hours_per_step;
        r.dormant_instance_hours +=
            (f64::from(dormant_ready) + dormant_coming.len() as f64) * hours_per_step;
        r.warm_by_step.push(ready);
        r.dormant_by_step.push(dormant_ready);

        let target = policy.decide(step, &demand[..=step], outlook);
        if target != previous_target {
            r.resizes += 1;
            previous_target = target;
        }
        // Warm side: activate dormant instances first, then launch cold; shrink by cancelling
        // launches first, then stopping serving instances.
        let warm_now = ready + warm_coming.len() as u32;
        if target.warm > warm_now {
            let mut need = target.warm - warm_now;
            let promote = need.min(dormant_ready);
            dormant_ready -= promote;
            need -= promote;
            // Activations arrive before launches ordered earlier only if faster; keep the
            // queue sorted by arrival.
            for _ in 0..promote {
                insert_sorted(&mut warm_coming, step + 1 + activation);
            }
            for _ in 0..need {
                insert_sorted(&mut warm_coming, step + 1 + launch);
            }
        } else {
            let mut excess = warm_now - target.warm;
            while excess > 0 && warm_coming.pop_back().is_some() {
                excess -= 1;
            }
            ready -= excess.min(ready);
        }
        let dormant_now = dormant_ready + dormant_coming.len() as u32;
        if target.dormant > dormant_now {
            for _ in 0..target.dormant - dormant_now {
                insert_sorted(&mut dormant_coming, step + 1 + launch);
            }
        } else {
            let mut excess = dormant_now - target.dormant;
            while excess > 0 && dormant_coming.pop_back().is_some() {
                excess -= 1;
            }
            dormant_ready -= excess.min(dormant_ready);
        }
    }
    r.served_share = if r.demand_total > 0.0 {
        served_total / r.demand_total
    } else {
        1.0
    };
    r.cost_warm = r.warm_instance_hours * config.prices.warm_per_instance_hour;
    r.cost_dormant = r.dormant_instance_hours * config.prices.dormant_per_instance_hour;
    r.cost_misses = r.missed * config.prices.miss_per_unit;
    r.cost_total = r.cost_warm + r.cost_dormant + r.cost_misses;
    r
}

fn insert_sorted(queue: &mut VecDeque<usize>, at: usize) {
    let pos = queue.partition_point(|&x| x <= at);
    queue.insert(pos, at);
}

/// The smallest fixed pool whose missed share is at most `max_missed_share`.
pub fn fixed_pool_matching(
    config: &SimConfig,
    demand: &[f64],
    outlook: &dyn DemandOutlook,
    max_missed_share: f64,
) -> (u32, SimResult) {
    let peak = demand.iter().copied().fold(0.0, f64::max);
    let run = |pool: u32| {
        simulate(
            config,
            demand,
            outlook,
            &mut Fixed { pool },
            PoolTarget {
                warm: pool,
                dormant: 0,
            },
        )
    };
    let (mut lo, mut hi) = (0u32, instances_for(peak, config.capacity_per_step));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if 1.0 - run(mid).served_share <= max_missed_share {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    (lo, run(lo))
}

/// A trace resampled from slices to simulation steps by linear interpolation between slice
/// starts (the last slice is held). Used for demand and for forecast quantiles alike.
pub fn resample_linear(values: &[f64], slice_secs: u32, step_secs: u32, steps: usize) -> Vec<f64> {
    (0..steps)
        .map(|s| {
            interpolate(
                values,
                s as f64 * f64::from(step_secs) / f64::from(slice_secs),
            )
        })
        .collect()
}

fn interpolate(values: &[f64], x: f64) -> f64 {
    let i = x.floor() as usize;
    if i + 1 >= values.len() {
        return values[values.len() - 1];
    }
    let t = x - i as f64;
    values[i] + (values[i + 1] - values[i]) * t
}

/// Forecasts made at regular origins (e.g. one [`DemandForecast`] per day at midnight), seen
/// per simulation step by interpolating between slice starts like [`resample_linear`].
///
/// A policy deciding at step `t` may look up to `lag_steps` ahead; the forecast used for a
/// target step is the one from the last origin at or before `target − lag_steps`, so no
/// decision ever uses a forecast made after it. Forecasts must therefore reach
/// `lag_steps` (plus one slice) past the next origin.
pub struct ForecastOutlook {
    /// One forecast per origin; origin `i` starts at simulation step `i * origin_steps`.
    pub forecasts: Vec<DemandForecast>,
    pub origin_steps: usize,
    pub lag_steps: usize,
    pub step_secs: u32,
    /// Multiplies every forecast value (trace units → demand units per step).
    pub scale: f64,
}

impl ForecastOutlook {
    fn locate(&self, step: usize) -> (&DemandForecast, usize, usize, f64) {
        let origin = (step.saturating_sub(self.lag_steps) / self.origin_steps.max(1))
            .min(self.forecasts.len() - 1);
        let f = &self.forecasts[origin];
        let offset = (step - (origin * self.origin_steps).min(step)) as f64;
        let x = offset * f64::from(self.step_secs) / f64::from(f.slice_secs);
        let last = f.horizon() - 1;
        let i = (x.floor() as usize).min(last);
        let j = (i + 1).min(last);
        (f, i, j, (x - i as f64).clamp(0.0, 1.0))
    }
}

impl DemandOutlook for ForecastOutlook {
    fn mean(&self, step: usize) -> f64 {
        let (f, i, j, t) = self.locate(step);
        self.scale * (f.mean(i) + (f.mean(j) - f.mean(i)) * t)
    }

    fn quantile(&self, step: usize, q: f64) -> f64 {
        let (f, i, j, t) = self.locate(step);
        let (a, b) = (f.quantile(i, q), f.quantile(j, q));
        self.scale * (a + (b - a) * t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Perfect(Vec<f64>);
    impl DemandOutlook for Perfect {
        fn mean(&self, step: usize) -> f64 {
            self.0[step.min(self.0.len() - 1)]
        }
        fn quantile(&self, step: usize, _: f64) -> f64 {
            self.mean(step)
        }
    }

    fn config() -> SimConfig {
        SimConfig {
            step_secs: 60,
            capacity_per_step: 10.0,
            launch_delay_secs: 120,
            activation_secs: 20,
            prices: DEFAULT_PRICES,
        }
    }

    #[test]
    fn reactive_misses_a_step_up_for_the_launch_delay() {
        // 10 steps at 10 (one instance), then 30 (three instances).
        let demand: Vec<f64> = (0..20).map(|s| if s < 10 { 10.0 } else { 30.0 }).collect();
        let outlook = Perfect(demand.clone());
        let r = simulate(
            &config(),
            &demand,
            &outlook,
            &mut Reactive::new(10.0, 5),
            PoolTarget {
                warm: 1,
                dormant: 0,
            },
        );
        // Step 10 is observed at its end; two more instances serve from step 13: steps 10, 11
        // and 12 each miss 20.
        assert_eq!(r.steps_with_misses, 3);
        assert!((r.missed - 60.0).abs() < 1e-9, "{}", r.missed);
    }

    #[test]
    fn a_fixed_pool_at_peak_misses_nothing() {
        let demand = vec![5.0, 25.0, 15.0];
        let outlook = Perfect(demand.clone());
        let (pool, r) = fixed_pool_matching(&config(), &demand, &outlook, 0.0);
        assert_eq!(pool, 3);
        assert_eq!(r.served_share, 1.0);
        // 3 instances × 3 minutes, serving 4.5 instance-minutes.
        assert!((r.idle_instance_hours - 4.5 / 60.0).abs() < 1e-9);
    }

    #[test]
    fn nowcast_removes_a_persistent_level_error() {
        // The forecast has the right shape (a ramp) but is 100 too low everywhere.
        struct Ramp;
        impl DemandOutlook for Ramp {
            fn mean(&self, step: usize) -> f64 {
                step as f64
            }
            fn quantile(&self, step: usize, _: f64) -> f64 {
                self.mean(step)
            }
        }
        let observed: Vec<f64> = (0..500).map(|s| s as f64 + 100.0).collect();
        let mut nowcast = Nowcast::new();
        for step in 0..=NOWCAST_MIN_STEPS + 40 {
            nowcast.handle_observation(step, &observed, &Ramp, 2);
        }
        assert!(nowcast.ready());
        let step = NOWCAST_MIN_STEPS + 40;
        let q99 = nowcast.quantile(step, &observed, &Ramp, step + 2, 0.99);
        assert!((q99 - observed[step + 2]).abs() < 1e-9, "{q99}");
    }

    #[test]
    fn resampling_interpolates_between_slice_starts() {
        let v = resample_linear(&[0.0, 30.0], 1800, 60, 31);
        assert_eq!(v[0], 0.0);
        assert!((v[15] - 15.0).abs() < 1e-9);
        assert_eq!(v[30], 30.0);
    }
}
