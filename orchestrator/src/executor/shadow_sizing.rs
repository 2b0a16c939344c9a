//! Sizing pools from demand: history for (service, region) from a [`DemandSource`], a
//! forecast of the coming slices (`umbra_forecast`), and the service's tier turned into a
//! warm and dormant target per slice (`umbra_forecast::sizing`) within the service's
//! `max_instances` ([`forecast_pool`], slice by slice with [`slice_target`], which
//! `umbra simulate` uses too); a migration's shadow pool is the target region's target for
//! the cutover slice ([`size_shadow_pool`]). History values are requests per second per
//! slice, the unit of `capacity_rps_per_instance`.
//!
//! Sources: [`CsvDirectory`] (every `*.csv` in a directory, long form
//! `timestamp,service,region,value`) and [`MemoryDemand`] (series handed over in process, e.g.
//! the demo's synthetic two weeks). This module reads files only in `CsvDirectory`; the
//! forecast itself is CPU work the driver runs off the async threads.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};

use super::pools::{PoolForecast, SliceTarget};
use crate::state::{RegionSpec, ServiceSpec};
use umbra_forecast::calendar::EventCalendar;
use umbra_forecast::history::{DemandSeries, HistoryConfig, SeriesKey, build_series, csv_source};
use umbra_forecast::sizing::{
    DEFAULT_LIMITS, InstanceProfile, PoolLimits, SizingError, SizingPolicy, Tier,
};
use umbra_forecast::{DemandForecast, ForecastConfig, Forecaster, SeriesState};

/// Longest forecast horizon computed to reach a cutover slice: two days. A migration planned
/// further ahead is sized when its lead time comes, not from a forecast that far out.
pub const MAX_HORIZON_SECS: i64 = 2 * 86_400;
/// Seconds a dormant instance takes to serve once activated, when nothing was measured: the
/// process provider starts a sample instance in well under a second; 5 s leaves margin.
pub const DEFAULT_ACTIVATION_SECS: f64 = super::pools::DEFAULT_LEAD_MS as f64 / 1_000.0;

/// Why history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DemandError {
    /// A CSV file could not be read or parsed.
    #[error(transparent)]
    Csv(#[from] csv_source::CsvError),
    /// The observations do not make a series.
    #[error(transparent)]
    History(#[from] umbra_forecast::history::HistoryError),
    /// The directory could not be listed.
    #[error("demand history directory {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where demand history comes from.
pub trait DemandSource: Send + Sync {
    /// The history of `key`, or `None` when the source has none.
    fn history(&self, key: &SeriesKey) -> Result<Option<DemandSeries>, DemandError>;
}

/// Series held in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryDemand {
    series: BTreeMap<SeriesKey, DemandSeries>,
}

impl MemoryDemand {
    /// A source holding `series`.
    pub fn new(series: impl IntoIterator<Item = DemandSeries>) -> Self {
        Self {
            series: series.into_iter().map(|s| (s.key.clone(), s)).collect(),
        }
    }
}

impl DemandSource for MemoryDemand {
    fn history(&self, key: &SeriesKey) -> Result<Option<DemandSeries>, DemandError> {
        Ok(self.series.get(key).cloned())
    }
}

/// Every `*.csv` file of a directory (long form), read when a migration is sized.
#[derive(Debug, Clone)]
pub struct CsvDirectory {
    /// The directory.
    pub dir: PathBuf,
    /// How observations become slices.
    pub history: HistoryConfig,
}

impl DemandSource for CsvDirectory {
    fn history(&self, key: &SeriesKey) -> Result<Option<DemandSeries>, DemandError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| DemandError::Dir {
            path: self.dir.display().to_string(),
            source,
        })?;
        let mut observations = Vec::new();
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "csv"))
            .collect();
        files.sort();
        for path in files {
            if let Some(found) = csv_source::read_csv(&path, None)?.remove(key) {
                observations.extend(found);
            }
        }
        if observations.is_empty() {
            return Ok(None);
        }
        let (series, _report) = build_series(key.clone(), &observations, &self.history)?;
        Ok(Some(series))
    }
}

/// A pool size and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowSize {
    /// Instances to provision.
    pub instances: u32,
    /// What it was computed from, for the audit log.
    pub reason: String,
}

/// Sizes the shadow pool of `service` in `region` for the slice containing `cutover_at`: the
/// largest pool target of that forecast slice ([`forecast_pool`]), warm and dormant together (every shadow is
/// started and warmed), within `min_instances..=max_instances`. Falls back to
/// `min_instances` (saying why) when there is no usable history.
pub fn size_shadow_pool(
    source: &dyn DemandSource,
    service: &ServiceSpec,
    region: &RegionSpec,
    cutover_at: DateTime<Utc>,
) -> ShadowSize {
    // A one-off sizing: no memory of earlier forecasts of the target region, so a full refit.
    let forecast = forecast_pool(
        source,
        service,
        region,
        cutover_at..=cutover_at,
        DEFAULT_ACTIVATION_SECS,
        &mut SeriesState::default(),
        None,
    );
    // The forecast slice may come as several pool slices: the largest of them.
    let Some(slice) = forecast.slices.iter().max_by_key(|s| s.target.total()) else {
        return ShadowSize {
            instances: service.min_instances,
            reason: format!(
                "{}; holding min_instances {}",
                forecast.reason, service.min_instances
            ),
        };
    };
    let instances = slice
        .target
        .total()
        .clamp(service.min_instances, service.max_instances);
    ShadowSize {
        instances,
        reason: format!(
            "forecast {} for the slice at {}: mean {:.1} rps, q{:.2} {:.1} rps at {} rps per instance → {} (clamped to {}..={})",
            forecast.reason,
            DateTime::from_timestamp_millis(slice.start_ms as i64)
                .unwrap_or_default()
                .to_rfc3339(),
            slice.mean,
            service.tier.quantile().unwrap_or(0.0),
            slice.quantile,
            service.capacity_rps_per_instance,
            instances,
            service.min_instances,
            service.max_instances
        ),
    }
}

/// The pool targets of `service` in `region` for the slices from the one containing the start
/// of `during` to the one containing its end: the forecast quantile of the service's tier
/// (newsvendor for probabilistic), split warm vs dormant by the region's costs and
/// `activation_secs`, at most `max_instances` in all. No slices (and the reason) when there is
/// no usable history or `during` starts beyond [`MAX_HORIZON_SECS`] of it. `state` is what the
/// series remembers of its earlier forecasts: they are scored against the history's newer
/// actuals, the model is chosen and its intervals calibrated by those errors, and its last full
/// refit is reused incrementally until `full_refit_every_slices` new slices (unset: the
/// forecaster's default) call for another (the leader keeps one per pool).
pub fn forecast_pool(
    source: &dyn DemandSource,
    service: &ServiceSpec,
    region: &RegionSpec,
    during: std::ops::RangeInclusive<DateTime<Utc>>,
    activation_secs: f64,
    state: &mut SeriesState,
    full_refit_every_slices: Option<usize>,
) -> PoolForecast {
    let (from, until) = during.into_inner();
    let key = SeriesKey::new(&service.name, &region.name);
    let nothing = |reason: String, slice_secs: u32| PoolForecast {
        slice_ms: u64::from(slice_secs) * 1_000,
        slices: Vec::new(),
        reason,
    };
    let history = match source.history(&key) {
        Ok(Some(h)) if h.len() >= 2 => h,
        Ok(_) => return nothing(format!("no demand history for {key}"), 1),
        Err(e) => return nothing(format!("demand history for {key} unusable: {e}"), 1),
    };
    let slice_secs = i64::from(history.slice_secs);
    let origin = history.slice_start(history.len());
    let ahead = (from - origin).num_seconds().max(0);
    if ahead > MAX_HORIZON_SECS {
        return nothing(
            format!(
                "demand history for {key} ends at {}, more than {} h before {}",
                origin.to_rfc3339(),
                MAX_HORIZON_SECS / 3_600,
                from.to_rfc3339()
            ),
            history.slice_secs,
        );
    }
    let first = (ahead / slice_secs) as usize;
    let last = ((ahead + (until - from).num_seconds().max(0)) / slice_secs) as usize;
    let horizon = last + 1;
    let mut config = ForecastConfig::for_slice_secs(history.slice_secs);
    if let Some(every) = full_refit_every_slices {
        config.full_refit_every_slices = every;
    }
    let forecaster = match Forecaster::new(config, EventCalendar::default()) {
        Ok(f) => f,
        Err(e) => return nothing(format!("forecaster: {e}"), history.slice_secs),
    };
    let started = std::time::Instant::now();
    let mut timer = move || started.elapsed().as_secs_f64();
    let set = match forecaster.forecast(state, &history, horizon, &mut timer) {
        Ok(set) => set,
        Err(e) => {
            return nothing(
                format!("forecast for {key} failed: {e}"),
                history.slice_secs,
            );
        }
    };
    let forecast = set.chosen;
    let sub_secs = pool_slice_secs(history.slice_secs);
    let policy = match sizing_policy(service, region, sub_secs, activation_secs) {
        Ok(policy) => policy,
        Err(e) => return nothing(format!("sizing policy: {e}"), history.slice_secs),
    };
    PoolForecast {
        slice_ms: u64::from(sub_secs) * 1_000,
        slices: pool_slices(&policy, &forecast, first, horizon - 1, 1.0),
        reason: format!("{} ({})", forecast.model.name(), forecast.choice_reason),
    }
}

/// Scores the earlier forecasts `state` remembers of `service` in `region` against the
/// actuals its demand history holds now (`umbra_forecast::SeriesState::observe`); nothing
/// changes without usable history. `state.chosen_accuracy()` then says how the chosen model
/// has fared.
pub fn score_pool(
    source: &dyn DemandSource,
    service: &ServiceSpec,
    region: &RegionSpec,
    state: &mut SeriesState,
) {
    let key = SeriesKey::new(&service.name, &region.name);
    if let Ok(Some(history)) = source.history(&key) {
        let keep = ForecastConfig::for_slice_secs(history.slice_secs).calibration_origins;
        state.observe(&history, keep);
    }
}

/// How the product sizes `service` in `region` per slice of `slice_secs`: the service's tier
/// at its capacity per instance, the region's warm and dormant prices (for the warm/dormant
/// split, weighed by `activation_secs`), at most `max_instances` in all.
pub fn sizing_policy(
    service: &ServiceSpec,
    region: &RegionSpec,
    slice_secs: u32,
    activation_secs: f64,
) -> Result<SizingPolicy, SizingError> {
    let slice_hours = f64::from(slice_secs) / 3600.0;
    let cost_miss = match service.tier {
        Tier::Probabilistic { cost_miss, .. } => cost_miss,
        _ => region.warm_instance_hour * slice_hours,
    };
    let policy = SizingPolicy {
        tier: service.tier,
        profile: InstanceProfile {
            capacity: service.capacity_rps_per_instance,
            warm_cost_per_slice: region.warm_instance_hour * slice_hours,
            dormant_cost_per_slice: region.dormant_instance_hour.min(region.warm_instance_hour)
                * slice_hours,
            dormant_activation_secs: activation_secs,
        },
        limits: PoolLimits {
            max_pool: service.max_instances,
            ..DEFAULT_LIMITS
        },
        cost_miss,
        slice_secs: f64::from(slice_secs),
    };
    policy.validate()?;
    Ok(policy)
}

/// One slice's pool target under `policy` (see [`sizing_policy`]), from the slice's forecast
/// `mean` and quantile function of demand (requests per second): what every pool forecast of
/// the product is made of, and what `umbra simulate` hands the controller.
pub fn slice_target(
    policy: &SizingPolicy,
    start_ms: u64,
    mean: f64,
    quantile: &dyn Fn(f64) -> f64,
) -> SliceTarget {
    SliceTarget {
        start_ms,
        mean,
        quantile: policy.tier.quantile().map_or(0.0, quantile),
        target: policy.size(quantile),
    }
}

/// Pool slices are at most this long (5 minutes): a longer forecast slice is cut into
/// sub-slices whose demand is interpolated between neighbouring slices' midpoints, so a pool
/// follows a ramp inside a half-hour slice instead of holding the whole slice's level from its
/// start (measured on the Taylor trace by `umbra simulate`: fewer misses and less idle time).
pub const MAX_POOL_SLICE_SECS: u32 = 300;

/// The width of the pool slices made from forecast slices of `slice_secs`.
pub fn pool_slice_secs(slice_secs: u32) -> u32 {
    if slice_secs > MAX_POOL_SLICE_SECS && slice_secs.is_multiple_of(MAX_POOL_SLICE_SECS) {
        MAX_POOL_SLICE_SECS
    } else {
        slice_secs
    }
}

/// The pool targets for `forecast`'s slices `first..=last`, each cut into sub-slices of
/// [`pool_slice_secs`] (`policy` must be sized for that width). A sub-slice's demand
/// distribution moves linearly from its slice's toward the next slice's by how far into the
/// slice it starts, so the pool reaches the next slice's level as that slice begins (held at
/// the horizon's end); `scale` turns forecast units into requests per second. On the Taylor
/// trace (`umbra simulate`, 2-minute launch delay) this missed 4,848 demand units where
/// interpolating between slice midpoints missed 62,271, at about the same idle time.
pub fn pool_slices(
    policy: &SizingPolicy,
    forecast: &DemandForecast,
    first: usize,
    last: usize,
    scale: f64,
) -> Vec<SliceTarget> {
    let slice = i64::from(forecast.slice_secs);
    let sub = i64::from(pool_slice_secs(forecast.slice_secs));
    let last = last.min(forecast.horizon().saturating_sub(1));
    let mut out = Vec::new();
    for step in first..=last {
        let start = forecast.slice_start(step).timestamp_millis().max(0);
        for k in 0..slice / sub {
            // How far into the slice the sub-slice starts: 0..1, toward the next slice.
            let w = (k * sub) as f64 / slice as f64;
            let other = (step + 1).min(forecast.horizon() - 1);
            let blend = |a: f64, b: f64| ((1.0 - w) * a + w * b) * scale;
            let quantile = |q: f64| blend(forecast.quantile(step, q), forecast.quantile(other, q));
            out.push(slice_target(
                policy,
                (start + k * sub * 1_000) as u64,
                blend(forecast.mean(step), forecast.mean(other)),
                &quantile,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// The example plan's `shop` at 50 rps per instance within `min..=max`, and its eu-west.
    fn spec(min: u32, max: u32) -> (ServiceSpec, RegionSpec) {
        let plan = crate::state::Plan::example();
        let mut service = plan.services[0].clone();
        service.capacity_rps_per_instance = 50.0;
        service.min_instances = min;
        service.max_instances = max;
        let region = plan.regions.into_iter().find(|r| r.name == "eu-west");
        (service, region.expect("the example plan declares eu-west"))
    }

    /// Two weeks of 30-minute slices with a daily peak of `peak` rps at 12:00 UTC.
    fn history(peak: f64) -> DemandSeries {
        let start = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let values = (0..14 * 48)
            .map(|i| {
                let hour = (i % 48) as f64 / 2.0;
                let phase = (hour - 12.0) / 24.0 * std::f64::consts::TAU;
                peak * (0.55 + 0.45 * phase.cos())
            })
            .collect();
        DemandSeries {
            key: SeriesKey::new("shop", "eu-west"),
            start,
            slice_secs: 1800,
            values,
        }
    }

    #[test]
    fn the_pool_follows_the_forecast_of_the_cutover_slice_within_the_limits() {
        let (service, region) = spec(1, 20);
        let source = MemoryDemand::new([history(400.0)]);
        let noon = Utc.with_ymd_and_hms(2026, 11, 15, 12, 0, 0).unwrap();
        let night = Utc.with_ymd_and_hms(2026, 11, 15, 0, 0, 0).unwrap();
        let at_noon = size_shadow_pool(&source, &service, &region, noon);
        let at_night = size_shadow_pool(&source, &service, &region, night);
        // 400 rps at 50 per instance is 8 at the peak; the night trough is 40 rps, 1.
        assert!((8..=10).contains(&at_noon.instances), "noon: {at_noon:?}");
        assert!(at_night.instances <= 2, "night: {at_night:?}");
        let (small, _) = spec(1, 3);
        assert_eq!(
            size_shadow_pool(&source, &small, &region, noon).instances,
            3,
            "clamped to max_instances"
        );
    }

    #[test]
    fn half_hour_slices_become_five_minute_pool_slices_that_lead_the_ramp() {
        let (service, region) = spec(1, 40);
        let source = MemoryDemand::new([history(400.0)]);
        // The morning ramp: demand rises every half hour until noon.
        let morning = Utc.with_ymd_and_hms(2026, 11, 15, 8, 0, 0).unwrap();
        let f = forecast_pool(
            &source,
            &service,
            &region,
            morning..=morning + chrono::Duration::hours(1),
            DEFAULT_ACTIVATION_SECS,
            &mut SeriesState::default(),
            None,
        );
        assert_eq!(f.slice_ms, 300_000, "{}", f.reason);
        assert_eq!(f.slices.len(), 3 * 6, "three half hours of six pool slices");
        let q: Vec<f64> = f.slices.iter().map(|s| s.quantile).collect();
        assert!(
            q.windows(2).all(|w| w[1] >= w[0]),
            "on a rising ramp each pool slice holds at least the one before: {q:?}"
        );
        // The last pool slice of a half hour is nearly the next half hour's level.
        let (end_of_first, next) = (q[5], q[6]);
        assert!(next - end_of_first < (q[6] - q[0]) / 3.0, "{q:?}");
    }

    #[test]
    fn no_history_holds_the_minimum_and_says_so() {
        let (service, region) = spec(2, 20);
        let noon = Utc.with_ymd_and_hms(2026, 11, 15, 12, 0, 0).unwrap();
        let size = size_shadow_pool(&MemoryDemand::default(), &service, &region, noon);
        assert_eq!(size.instances, 2);
        assert!(size.reason.contains("no demand history"), "{}", size.reason);
    }

    #[test]
    fn a_csv_directory_is_read_in_long_form() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("timestamp,service,region,value\n");
        let series = history(100.0);
        for (i, v) in series.values.iter().enumerate() {
            text.push_str(&format!(
                "{},shop,eu-west,{v}\n",
                series.slice_start(i).to_rfc3339()
            ));
        }
        std::fs::write(dir.path().join("demand.csv"), text).unwrap();
        let source = CsvDirectory {
            dir: dir.path().to_owned(),
            history: HistoryConfig {
                slice_secs: 1800,
                ..HistoryConfig::default()
            },
        };
        let read = source
            .history(&SeriesKey::new("shop", "eu-west"))
            .unwrap()
            .unwrap();
        assert_eq!(read.values.len(), series.values.len());
        assert!(
            source
                .history(&SeriesKey::new("shop", "us-east"))
                .unwrap()
                .is_none()
        );
    }
}
