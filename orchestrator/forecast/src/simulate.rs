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
use crate::sizing::{PoolTarget, instances_for};

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

/// Idle times a hybrid-histogram histogram covers: 4 hours in 1-minute bins (Shahrad et al.,
/// "Serverless in the Wild", USENIX ATC 2020, § 4.2).
pub const HISTOGRAM_RANGE_MINS: usize = 240;
/// Percentile of idle times that sets the pre-warm window (the paper's "head").
pub const HISTOGRAM_HEAD_PERCENTILE: f64 = 0.05;
/// Percentile of idle times that sets the end of the keep-alive window (the paper's "tail").
pub const HISTOGRAM_TAIL_PERCENTILE: f64 = 0.99;
/// The paper's margin: the head is lowered and the tail raised by 10 %.
pub const HISTOGRAM_MARGIN: f64 = 0.10;
/// Idle times a histogram needs before it is trusted. The paper leaves the number open; ten
/// is the fewest for which the 5th and 99th percentiles are not both the extreme samples.
pub const HISTOGRAM_MIN_SAMPLES: u32 = 10;
/// Coefficient of variation of the bin counts below which a histogram is too flat to predict
/// anything (the paper's representativeness check; its threshold is 2).
pub const HISTOGRAM_MIN_BIN_CV: f64 = 2.0;
/// Share of idle times beyond the range above which the histogram is abandoned for the
/// forecast (the paper switches such applications to an ARIMA forecast of the next idle time;
/// "too many" is ours: half).
pub const HISTOGRAM_MAX_OUT_OF_BOUNDS: f64 = 0.5;

/// The hybrid-histogram keep-alive policy of Shahrad et al. (USENIX ATC 2020), generalised
/// from one function to a pool: capacity level k (the k-th instance, needed while demand
/// needs at least k) is one application with its own histogram of idle times (steps between
/// two of its busy runs). Per level, while its histogram is representative: after a busy run
/// it is unloaded, loaded again one launch delay before the pre-warm window (the 5th
/// percentile of its idle times, less 10 %) has passed, and kept until the keep-alive window
/// ends (the 99th percentile, plus 10 %); with no pre-warm window it simply stays loaded until
/// then. With too few idle times, or a flat histogram, it falls back to a fixed keep-alive of
/// the histogram's whole range (the paper's conservative default). A level whose idle times
/// mostly exceed the range is held from the forecast instead (the paper's time-series
/// fallback): loaded while the forecast mean within one launch delay needs it.
pub struct HybridHistogram {
    /// Demand units one instance serves per step.
    pub capacity: f64,
    /// Step width, seconds (idle times are binned by minute).
    pub step_secs: u32,
    /// Steps a cold launch takes: loading starts that much before the pre-warm window ends.
    pub lead_steps: usize,
    levels: Vec<LevelHistory>,
}

/// One capacity level's idle times.
#[derive(Debug, Clone)]
struct LevelHistory {
    /// The last step the level was busy.
    last_busy: Option<usize>,
    /// Idle times within the range, by whole minute.
    bins: Vec<u32>,
    /// Idle times beyond the range.
    out_of_bounds: u32,
}

/// What a level's idle times say, in steps since it was last busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Windows {
    /// Loaded from `from` to `until` steps idle (inclusive).
    Histogram { from: usize, until: usize },
    /// Loaded until `until` steps idle.
    KeepAlive { until: usize },
    /// Loaded while the forecast needs it.
    Forecast,
}

impl LevelHistory {
    fn new() -> Self {
        Self {
            last_busy: None,
            bins: vec![0; HISTOGRAM_RANGE_MINS],
            out_of_bounds: 0,
        }
    }

    fn samples(&self) -> u32 {
        self.bins.iter().sum::<u32>() + self.out_of_bounds
    }

    /// The level is busy at `step`: an idle time ended if it was idle since its last use.
    fn handle_busy(&mut self, step: usize, step_secs: u32) {
        if let Some(last) = self.last_busy
            && step > last + 1
        {
            let idle_mins = (step - last - 1) * step_secs as usize / 60;
            match self.bins.get_mut(idle_mins) {
                Some(bin) => *bin += 1,
                None => self.out_of_bounds += 1,
            }
        }
        self.last_busy = Some(step);
    }

    fn windows(&self, step_secs: u32, lead_steps: usize) -> Windows {
        let to_steps = |mins: f64| (mins * 60.0 / f64::from(step_secs)).ceil() as usize;
        let range = KeepAlive {
            until: to_steps(HISTOGRAM_RANGE_MINS as f64),
        };
        use Windows::KeepAlive;
        let samples = self.samples();
        if samples < HISTOGRAM_MIN_SAMPLES {
            return range;
        }
        if f64::from(self.out_of_bounds) > HISTOGRAM_MAX_OUT_OF_BOUNDS * f64::from(samples) {
            return Windows::Forecast;
        }
        let within: u32 = self.bins.iter().sum();
        let mean = f64::from(within) / self.bins.len() as f64;
        let variance = self
            .bins
            .iter()
            .map(|&c| (f64::from(c) - mean).powi(2))
            .sum::<f64>()
            / self.bins.len() as f64;
        if variance.sqrt() < HISTOGRAM_MIN_BIN_CV * mean {
            return range;
        }
        // Percentiles of all idle times: the out-of-bounds ones lie beyond the last bin.
        let percentile_bin = |p: f64| {
            let wanted = (p * f64::from(samples)).ceil().max(1.0) as u32;
            let mut seen = 0;
            self.bins
                .iter()
                .position(|&c| {
                    seen += c;
                    seen >= wanted
                })
                .unwrap_or(HISTOGRAM_RANGE_MINS - 1)
        };
        let head_mins = percentile_bin(HISTOGRAM_HEAD_PERCENTILE) as f64;
        let tail_mins = (percentile_bin(HISTOGRAM_TAIL_PERCENTILE) + 1) as f64;
        let head =
            ((head_mins * (1.0 - HISTOGRAM_MARGIN)) * 60.0 / f64::from(step_secs)).floor() as usize;
        let until = to_steps(tail_mins * (1.0 + HISTOGRAM_MARGIN));
        // Loading takes a launch delay: start it that much before the pre-warm window ends.
        Windows::Histogram {
            from: head.saturating_sub(lead_steps),
            until,
        }
    }
}

impl HybridHistogram {
    /// A policy that has seen no demand yet.
    pub fn new(capacity: f64, step_secs: u32, lead_steps: usize) -> Self {
        Self {
            capacity,
            step_secs,
            lead_steps,
            levels: Vec::new(),
        }
    }

    /// Whether level `k` (1-based) should be loaded after `step`, whose demand needs `needed`.
    fn loaded(&self, k: usize, step: usize, needed: usize, outlook: &dyn DemandOutlook) -> bool {
        if k <= needed {
            return true;
        }
        let level = &self.levels[k - 1];
        let Some(last) = level.last_busy else {
            return false;
        };
        let idle = step - last;
        match level.windows(self.step_secs, self.lead_steps) {
            Windows::Histogram { from, until } => (from..=until).contains(&idle),
            Windows::KeepAlive { until } => idle <= until,
            Windows::Forecast => (step + 1..=step + self.lead_steps)
                .any(|s| instances_for(outlook.mean(s), self.capacity) as usize >= k),
        }
    }
}

impl Policy for HybridHistogram {
    fn name(&self) -> String {
        "hybrid-histogram".into()
    }

    fn decide(&mut self, step: usize, observed: &[f64], outlook: &dyn DemandOutlook) -> PoolTarget {
        let needed = instances_for(observed[step], self.capacity) as usize;
        while self.levels.len() < needed {
            self.levels.push(LevelHistory::new());
        }
        for level in &mut self.levels[..needed] {
            level.handle_busy(step, self.step_secs);
        }
        let warm = (1..=self.levels.len())
            .filter(|&k| self.loaded(k, step, needed, outlook))
            .count() as u32;
        PoolTarget { warm, dormant: 0 }
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

/// What a pool held during one step, as the bill and the users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolSample {
    /// Instances serving: the warm capacity that counts against demand.
    pub serving: u32,
    /// Instances billed as warm that do not serve yet (booting, activating).
    pub booting: u32,
    /// Instances that exist without running (dormant, or being created dormant).
    pub dormant: u32,
}

/// The accounting of one replay, shared by every policy (the simulator's own pools and the
/// product's controller driving a simulated agent): hand it each step's demand and what the
/// pool held, then [`Scorer::finish`].
pub struct Scorer {
    config: SimConfig,
    result: SimResult,
    served_total: f64,
}

impl Scorer {
    /// An empty score of `policy` under `config`.
    pub fn new(config: &SimConfig, policy: String) -> Self {
        Self {
            config: *config,
            result: SimResult {
                policy,
                steps: 0,
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
                warm_by_step: Vec::new(),
                dormant_by_step: Vec::new(),
            },
            served_total: 0.0,
        }
    }

    /// One step: `demand` units met `pool`.
    pub fn handle_step(&mut self, demand: f64, pool: PoolSample) {
        let capacity = self.config.capacity_per_step;
        let hours_per_step = f64::from(self.config.step_secs) / 3600.0;
        let r = &mut self.result;
        let served = demand.min(f64::from(pool.serving) * capacity);
        self.served_total += served;
        r.steps += 1;
        r.demand_total += demand;
        if demand - served > 1e-9 {
            r.missed += demand - served;
            r.steps_with_misses += 1;
        }
        let warm_billed = f64::from(pool.serving + pool.booting);
        r.warm_instance_hours += warm_billed * hours_per_step;
        r.idle_instance_hours += (warm_billed - served / capacity).max(0.0) * hours_per_step;
        r.dormant_instance_hours += f64::from(pool.dormant) * hours_per_step;
        r.warm_by_step.push(pool.serving);
        r.dormant_by_step.push(pool.dormant);
    }

    /// The policy changed the pool it asks for.
    pub fn handle_resize(&mut self) {
        self.result.resizes += 1;
    }

    /// The totals and costs.
    pub fn finish(self) -> SimResult {
        let mut r = self.result;
        let prices = self.config.prices;
        r.served_share = if r.demand_total > 0.0 {
            self.served_total / r.demand_total
        } else {
            1.0
        };
        r.cost_warm = r.warm_instance_hours * prices.warm_per_instance_hour;
        r.cost_dormant = r.dormant_instance_hours * prices.dormant_per_instance_hour;
        r.cost_misses = r.missed * prices.miss_per_unit;
        r.cost_total = r.cost_warm + r.cost_dormant + r.cost_misses;
        r
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
    let mut ready: u32 = initial.warm;
    let mut dormant_ready: u32 = initial.dormant;
    // Arrival step of each warm instance on its way (cold launches and activations), and of
    // dormant instances being created. Newest at the back.
    let mut warm_coming: VecDeque<usize> = VecDeque::new();
    let mut dormant_coming: VecDeque<usize> = VecDeque::new();
    let mut score = Scorer::new(config, policy.name());
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
        score.handle_step(
            d,
            PoolSample {
                serving: ready,
                booting: warm_coming.len() as u32,
                dormant: dormant_ready + dormant_coming.len() as u32,
            },
        );

        let target = policy.decide(step, &demand[..=step], outlook);
        if target != previous_target {
            score.handle_resize();
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
    score.finish()
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

    /// A trace of `steps` steps, with demand for one instance at every step in `busy`.
    fn bursts(steps: usize, busy: impl Fn(usize) -> bool) -> Vec<f64> {
        (0..steps)
            .map(|s| if busy(s) { 10.0 } else { 0.0 })
            .collect()
    }

    /// The warm pool hybrid-histogram asks for after each step of `demand`.
    fn hybrid_targets(demand: &[f64]) -> Vec<u32> {
        let outlook = Perfect(demand.to_vec());
        let mut policy = HybridHistogram::new(10.0, 60, config().launch_steps());
        (0..demand.len())
            .map(|step| policy.decide(step, &demand[..=step], &outlook).warm)
            .collect()
    }

    #[test]
    fn hybrid_histogram_pre_warms_and_keeps_alive_as_its_idle_times_say() {
        struct Case {
            name: &'static str,
            demand: Vec<f64>,
            /// (step, the warm pool asked for after it).
            want: Vec<(usize, u32)>,
        }
        // Launch delay: 2 steps.
        let table = [
            Case {
                // A burst every 30 steps: idle times of 29 minutes. With 10 of them learned,
                // the head is 26 steps (29 less 10 %) and the tail 33 (30 plus 10 %): unloaded
                // after a burst, loaded again 2 steps (the launch) before the head.
                name: "periodic, long gaps: unload, then pre-warm before the next burst",
                demand: bursts(600, |s| s % 30 == 0),
                want: vec![(450, 1), (451, 0), (473, 0), (474, 1), (479, 1)],
            },
            Case {
                // A burst every 3 steps: idle times of 2 minutes. The head rounds down to
                // one step, less than the launch: no unloading, kept alive through the gaps.
                name: "periodic, short gaps: kept alive between bursts",
                demand: bursts(200, |s| s % 3 == 0),
                want: vec![(151, 1), (152, 1), (153, 1)],
            },
            Case {
                // Two idle times only: not representative, so the fixed keep-alive of the
                // histogram's range (240 minutes) holds the instance.
                name: "too few idle times: fixed keep-alive of the whole range",
                demand: bursts(400, |s| s == 0 || s == 10 || s == 20),
                want: vec![(100, 1), (260, 1), (261, 0)],
            },
            Case {
                // Idle times of 299 minutes, beyond the range: the forecast (here perfect)
                // decides, loading the instance one launch ahead of the next burst.
                name: "idle times beyond the range: held from the forecast",
                demand: bursts(3_601, |s| s % 300 == 0),
                want: vec![(3_310, 0), (3_597, 0), (3_598, 1), (3_599, 1)],
            },
        ];
        for case in table {
            let targets = hybrid_targets(&case.demand);
            for (step, want) in case.want {
                assert_eq!(targets[step], want, "{}: after step {step}", case.name);
            }
        }
    }

    #[test]
    fn hybrid_histogram_misses_no_periodic_burst_once_it_has_learned_the_period() {
        let demand = bursts(1_200, |s| s % 30 == 0);
        let outlook = Perfect(demand.clone());
        let r = simulate(
            &config(),
            &demand,
            &outlook,
            &mut HybridHistogram::new(10.0, 60, config().launch_steps()),
            PoolTarget::default(),
        );
        let keepalive = simulate(
            &config(),
            &demand,
            &outlook,
            &mut KeepAlive {
                capacity: 10.0,
                keep_steps: 10,
            },
            PoolTarget::default(),
        );
        // Learning costs a few bursts; a 10-minute keep-alive misses every one of them.
        assert!(r.steps_with_misses <= 3, "{}", r.steps_with_misses);
        assert_eq!(keepalive.steps_with_misses, 40);
    }

    #[test]
    fn resampling_interpolates_between_slice_starts() {
        let v = resample_linear(&[0.0, 30.0], 1800, 60, 31);
        assert_eq!(v[0], 0.0);
        assert!((v[15] - 15.0).abs() < 1e-9);
        assert_eq!(v[30], 30.0);
    }
}
