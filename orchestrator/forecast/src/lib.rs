//! Umbra's capacity arithmetic, apart from the replicated cluster: demand history
//! ([`history`]: CSV and Prometheus sources), forecasting ("forecast demand for (service,
//! region, slice) → quantiles", this file, with [`backtest`] and the event [`calendar`]), pool
//! sizing ([`sizing`]) and the policy simulator ([`simulate`]). Architecture invariant: this
//! crate depends on neither Raft nor QUIC nor the agent; the orchestrator and the CLI use it.
//!
//! ## Forecasting
//!
//!
//! Each series has a [`SeriesState`] that remembers the forecasts it made and, once their
//! actuals are in the history, their errors. That record does two jobs. It picks the model:
//! the candidate with the lowest median MASE over its last scored origins wins (a median, so
//! that one bad day — a holiday in a model's history — cannot decide it), and the choice and
//! its reason are recorded in the forecast. The candidates are MSTL+ETS, the seasonal naives
//! and their combination (the average of MSTL+ETS and the weekly naive). And it calibrates
//! the quantiles: forecast errors divided by the model's own per-step sigma, from the last
//! origins, are split by the time of day of the slice they were made for (up to one bucket
//! per hour, each with at least [`MIN_BUCKET_ERRORS`] errors), and each bucket's empirical
//! quantiles (split conformal prediction) replace the model's normal-theory intervals for
//! the slices of its hours: a quiet night gets a narrow band and the peak a wide one, instead
//! of one width for the whole day. Until enough origins are scored the normal intervals are
//! used, and the forecast says so.
//!
//! Before fitting, robust training ([`robust`]) adjusts declared past events of the calendar
//! and detected anomalies out of the history; future events still scale the forecast.
//!
//! Fitting is full (robust training, the MSTL decomposition, every model) only now and then:
//! between full refits, a series' next forecast takes in the new slices and refits only the
//! level model on the last full refit's seasons ([`refit`]), and says which it was
//! ([`DemandForecast::refit`]).
//!
//! All of this is plain computation on slices of numbers and timestamps passed in; it reads
//! no clock and does no I/O. The event calendar ([`calendar`]) is applied last.

pub mod backtest;
pub mod calendar;
pub mod history;
pub mod models;
pub mod refit;
pub mod robust;
pub mod simulate;
pub mod sizing;
pub mod synthetic;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::history::{DemandSeries, SeriesKey};
use calendar::{EventCalendar, SliceAdjustment};
pub use models::{ModelKind, PointForecast};
pub use refit::Refit;

/// Default calibration window: the last 28 origins (four weeks of daily forecasts). On the
/// Taylor backtest, 7 origins under-cover (86 % in the 90 % band), 28 are close to nominal.
pub const DEFAULT_CALIBRATION_ORIGINS: usize = 28;
/// Scored origins needed before empirical quantiles replace the model's normal intervals.
pub const MIN_CALIBRATION_ORIGINS: usize = 7;
/// Scored origins a candidate needs before its rolling error can win the model choice (a
/// week of daily origins, so every weekday has been seen once).
pub const MIN_CHOICE_ORIGINS: usize = 7;
/// Days of deseasonalised history AutoETS is fitted on (see `models::MstlEtsFit`). On the
/// Taylor backtest 7 and 14 days (and all history) give the same forecasts to four digits.
pub const DEFAULT_ETS_WINDOW_DAYS: usize = 7;
/// Cap on that window in slices: AutoETS's fit time is linear in it (measured at 5-minute
/// slices: 4,032 points 80 ms, 2,016 points 37 ms, 1,008 points 42 ms and 288 points 10 ms
/// with another process on the second core), and the level-only models it picks need a day or
/// two, not weeks. 336 is the Taylor series' 7 days at 30 minutes, 28 hours at 5 minutes; on
/// the synthetic benchmark it forecast as well as 1,008 (chosen model's MASE 0.531 against
/// 0.535, three seeds) at a third of the ETS time.
pub const MAX_ETS_WINDOW_SLICES: usize = 336;
/// A full refit at least every quarter of a day by default ([`ForecastConfig::for_seasons`]):
/// robust training leaves the newest quarter of a day unadjusted anyway, so the slices an
/// incremental refit takes in as they are are the ones a full refit would not have adjusted.
pub const FULL_REFIT_DAY_DIVISOR: usize = 4;
/// Most buckets of the day that quantiles are calibrated in (one per hour).
pub const MAX_CALIBRATION_BUCKETS: usize = 24;
/// Fewest normalised errors a time-of-day bucket calibrates on; with fewer scored errors the
/// day is cut into fewer buckets (a 5 % tail of 100 errors rests on five of them).
pub const MIN_BUCKET_ERRORS: usize = 100;

/// Seasonal periods in slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Seasons {
    pub daily: usize,
    pub weekly: usize,
}

impl Seasons {
    /// Daily and weekly periods for a slice width: 288 and 2016 at 5 minutes, 48 and 336 at
    /// 30 minutes. Declared rather than detected: augurs' periodogram finds 25 for a 24-point
    /// day (CRATES.md), and request rates are daily and weekly by nature.
    pub fn for_slice_secs(slice_secs: u32) -> Seasons {
        let daily = (86_400 / slice_secs.max(1)) as usize;
        Seasons {
            daily,
            weekly: 7 * daily,
        }
    }
}

/// How forecasts are made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForecastConfig {
    pub seasons: Seasons,
    /// Slices of deseasonalised history the ETS trend model is fitted on.
    pub ets_window_slices: usize,
    /// Scored origins kept per model for model choice and calibration.
    pub calibration_origins: usize,
    /// Models considered, in order of preference when none has a score yet.
    pub candidates: Vec<ModelKind>,
    /// How the candidates' recent errors are summed up into the score that chooses.
    pub choice: ChoiceStatistic,
    /// Adjust declared past events and detected anomalies out of the history before fitting
    /// (`robust`).
    pub robust_training: bool,
    /// Calibrate quantiles per time of day (up to [`MAX_CALIBRATION_BUCKETS`] buckets of the
    /// day, each with at least [`MIN_BUCKET_ERRORS`] errors) instead of pooled over the day.
    pub calibrate_by_time_of_day: bool,
    /// New slices after which a series is refitted in full again; between full refits each
    /// forecast refits incrementally ([`refit`]). 1: every forecast refits in full.
    pub full_refit_every_slices: usize,
}

/// How a candidate's errors over its recent scored origins become the score the choice
/// compares (lowest wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChoiceStatistic {
    /// Mean MASE: one bad day (a holiday in the history) weighs as much as a week of good ones.
    Mean,
    /// Median MASE: what the model does on an ordinary day; one or two bad days cannot
    /// decide the choice.
    Median,
}

impl ChoiceStatistic {
    pub fn name(self) -> &'static str {
        match self {
            ChoiceStatistic::Mean => "mean",
            ChoiceStatistic::Median => "median",
        }
    }

    fn of(self, values: &mut [f64]) -> f64 {
        match self {
            ChoiceStatistic::Mean => values.iter().sum::<f64>() / values.len() as f64,
            ChoiceStatistic::Median => {
                values.sort_by(f64::total_cmp);
                let n = values.len();
                if n % 2 == 1 {
                    values[n / 2]
                } else {
                    (values[n / 2 - 1] + values[n / 2]) / 2.0
                }
            }
        }
    }
}

impl ForecastConfig {
    pub fn for_seasons(seasons: Seasons) -> ForecastConfig {
        ForecastConfig {
            seasons,
            ets_window_slices: (DEFAULT_ETS_WINDOW_DAYS * seasons.daily).min(MAX_ETS_WINDOW_SLICES),
            calibration_origins: DEFAULT_CALIBRATION_ORIGINS,
            candidates: ModelKind::ALL.to_vec(),
            choice: ChoiceStatistic::Median,
            robust_training: true,
            calibrate_by_time_of_day: true,
            full_refit_every_slices: (seasons.daily / FULL_REFIT_DAY_DIVISOR).max(1),
        }
    }

    pub fn for_slice_secs(slice_secs: u32) -> ForecastConfig {
        Self::for_seasons(Seasons::for_slice_secs(slice_secs))
    }

    pub fn validate(&self) -> Result<(), ForecastError> {
        let bad = |m: &str| Err(ForecastError::Config(m.to_string()));
        if self.seasons.daily < 2 || self.seasons.weekly < self.seasons.daily {
            return bad("seasons: daily must be at least 2 slices and weekly at least daily");
        }
        if self.candidates.is_empty() {
            return bad("at least one candidate model is needed");
        }
        if self.calibration_origins == 0 {
            return bad("calibration_origins must be at least 1");
        }
        if self.full_refit_every_slices == 0 {
            return bad(
                "full_refit_every_slices must be at least 1 (1 refits every forecast in full)",
            );
        }
        Ok(())
    }
}

/// Errors while forecasting.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForecastError {
    #[error("invalid forecast configuration: {0}")]
    Config(String),
    #[error(
        "too little history for {model}: {have} slices, need at least {need}; collect more \
         history or use a shorter slice width"
    )]
    TooLittleHistory {
        model: &'static str,
        have: usize,
        need: usize,
    },
    #[error("{model} failed: {message}")]
    Model {
        model: &'static str,
        message: String,
    },
    #[error("series {key}: no model could forecast it: {reasons}")]
    NoModel { key: String, reasons: String },
}

/// How a forecast's quantiles were obtained.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Calibration {
    /// Empirical quantiles of past normalised errors over `origins` scored origins, in
    /// `buckets` parts of the day (1: pooled over the day).
    Conformal { origins: usize, buckets: usize },
    /// The model's own normal-theory intervals (not enough scored origins yet).
    Parametric,
}

/// One past forecast of one model, waiting for its actuals or already scored.
#[derive(Debug, Clone)]
struct OriginRecord {
    origin: DateTime<Utc>,
    mean: Vec<f64>,
    sigma: Vec<f64>,
    /// In-sample MAE of the daily seasonal naive on the training data (the MASE scale).
    mase_scale: f64,
    /// Slice width, seconds (places each step in its time-of-day bucket).
    slice_secs: u32,
    /// The 90 % interval the forecast gave per step, as normalised errors (5 % and 95 %
    /// quantiles of its calibration at the time).
    band_90: Vec<(f64, f64)>,
    scored: Option<ScoredOrigin>,
    /// The steps whose actuals arrived while the rest of the horizon is still to come (not
    /// used for the choice, which compares whole horizons; feedback sees it at once).
    observed: Option<ScoredOrigin>,
}

impl OriginRecord {
    /// Scores the forecast's first `actual.len()` steps against `actual`.
    fn score(&self, actual: &[f64]) -> ScoredOrigin {
        let mae = actual
            .iter()
            .zip(&self.mean)
            .map(|(a, m)| (a - m).abs())
            .sum::<f64>()
            / actual.len().max(1) as f64;
        let normalised_errors: Vec<f64> = actual
            .iter()
            .zip(&self.mean)
            .zip(&self.sigma)
            .map(|((a, m), s)| (a - m) / s)
            .collect();
        let inside_90 = normalised_errors
            .iter()
            .zip(&self.band_90)
            .filter(|(e, (low, high))| (*low..=*high).contains(*e))
            .count();
        ScoredOrigin {
            mase: mae / self.mase_scale.max(f64::EPSILON),
            normalised_errors,
            inside_90,
        }
    }
}

#[derive(Debug, Clone)]
struct ScoredOrigin {
    mase: f64,
    /// (actual − mean) / sigma per step.
    normalised_errors: Vec<f64>,
    /// Steps whose actual fell inside the forecast's 90 % interval.
    inside_90: usize,
}

/// How a model's past forecasts of one series fared once their actuals arrived: the
/// feedback the running product exports (`umbra_forecast_*`). A forecast counts as soon as
/// the actual of its first slice arrived, scored on the slices that did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Accuracy {
    /// The model.
    pub model: ModelKind,
    /// Forecasts scored, wholly or on the slices whose actuals arrived (the newest kept).
    pub scored: usize,
    /// Slices scored over those forecasts.
    pub slices: usize,
    /// Their mean MASE (against the daily seasonal naive's in-sample error).
    pub mase: f64,
    /// Share of their slices whose actual fell inside the 90 % interval given at the time.
    pub coverage_90: f64,
}

/// What a series remembers between forecasts: each model's recent forecasts and errors.
/// Keep one per (service, region) and pass it to every [`Forecaster::forecast`] call.
#[derive(Debug, Clone, Default)]
pub struct SeriesState {
    records: BTreeMap<ModelKind, VecDeque<OriginRecord>>,
    /// The model the latest forecast chose.
    chosen: Option<ModelKind>,
    /// What the latest full refit learned, for the incremental refits that follow it.
    fit: Option<refit::FitCache>,
    /// The refit of the latest forecast, until [`SeriesState::take_refit`] hands it out.
    refit: Option<Refit>,
}

impl SeriesState {
    /// Score every pending record whose whole horizon is now in `history`, and drop the
    /// oldest scored records beyond `keep`.
    fn handle_history(&mut self, history: &DemandSeries, keep: usize) {
        let slice = i64::from(history.slice_secs);
        for records in self.records.values_mut() {
            for record in records.iter_mut().filter(|r| r.scored.is_none()) {
                let offset = (record.origin - history.start).num_seconds();
                if offset < 0 || offset % slice != 0 {
                    continue;
                }
                let first = (offset / slice) as usize;
                let available = history.values.len().saturating_sub(first);
                let Some(actual) = history
                    .values
                    .get(first..first + available.min(record.mean.len()))
                else {
                    continue;
                };
                if actual.is_empty() {
                    continue;
                }
                let score = record.score(actual);
                if actual.len() == record.mean.len() {
                    record.scored = Some(score);
                    record.observed = None;
                } else {
                    record.observed = Some(score);
                }
            }
            let scored = records.iter().filter(|r| r.scored.is_some()).count();
            let mut excess = scored.saturating_sub(keep);
            records.retain(|r| {
                if excess > 0 && r.scored.is_some() {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
            // Pending records that can never be scored (history restarted later) are bounded too.
            while records.len() > 2 * keep + 2 {
                records.pop_front();
            }
        }
    }

    /// Rolling MASE of `model` over its scored origins, if any, summed up by `statistic`.
    pub fn rolling_mase(&self, model: ModelKind, statistic: ChoiceStatistic) -> Option<f64> {
        let mut scores: Vec<f64> = self
            .records
            .get(&model)?
            .iter()
            .filter_map(|r| r.scored.as_ref().map(|s| s.mase))
            .collect();
        (!scores.is_empty()).then(|| statistic.of(&mut scores))
    }

    /// Scores the earlier forecasts against `history`'s newer actuals, as the next forecast
    /// would, without forecasting: what keeps the feedback current between forecasts.
    /// `keep` is the forecaster's `calibration_origins`.
    pub fn observe(&mut self, history: &DemandSeries, keep: usize) {
        self.handle_history(history, keep);
    }

    /// How the model the latest forecast chose has fared: `None` before the actual of any
    /// slice it forecast arrived.
    pub fn chosen_accuracy(&self) -> Option<Accuracy> {
        let model = self.chosen?;
        let scored: Vec<&ScoredOrigin> = self
            .records
            .get(&model)?
            .iter()
            .filter_map(|r| r.scored.as_ref().or(r.observed.as_ref()))
            .collect();
        if scored.is_empty() {
            return None;
        }
        let slices: usize = scored.iter().map(|s| s.normalised_errors.len()).sum();
        let inside: usize = scored.iter().map(|s| s.inside_90).sum();
        Some(Accuracy {
            model,
            scored: scored.len(),
            slices,
            mase: scored.iter().map(|s| s.mase).sum::<f64>() / scored.len() as f64,
            coverage_90: inside as f64 / slices.max(1) as f64,
        })
    }

    /// The model the latest forecast chose.
    pub fn chosen(&self) -> Option<ModelKind> {
        self.chosen
    }

    /// How the latest forecast refitted its models, once: `None` again until the next
    /// forecast (a driver counts each refit once).
    pub fn take_refit(&mut self) -> Option<Refit> {
        self.refit.take()
    }

    fn scored_origins(&self, model: ModelKind) -> usize {
        self.records
            .get(&model)
            .map(|r| r.iter().filter(|r| r.scored.is_some()).count())
            .unwrap_or(0)
    }

    /// `model`'s scored normalised errors, sorted, in `buckets` equal parts of the day by
    /// the time of day of the slice they were made for.
    fn bucketed_errors(&self, model: ModelKind, buckets: usize) -> Vec<Vec<f64>> {
        let buckets = buckets.max(1);
        let mut out = vec![Vec::new(); buckets];
        for record in self.records.get(&model).into_iter().flatten() {
            let Some(scored) = record.scored.as_ref() else {
                continue;
            };
            for (step, e) in scored.normalised_errors.iter().enumerate() {
                if e.is_finite() {
                    let at = record.origin
                        + chrono::Duration::seconds(step as i64 * i64::from(record.slice_secs));
                    out[day_bucket(at, buckets)].push(*e);
                }
            }
        }
        for bucket in &mut out {
            bucket.sort_by(f64::total_cmp);
        }
        out
    }

    fn scored_errors(&self, model: ModelKind) -> usize {
        self.records
            .get(&model)
            .into_iter()
            .flatten()
            .filter_map(|r| r.scored.as_ref())
            .map(|s| s.normalised_errors.len())
            .sum()
    }
}

/// The bucket (0..`buckets`) of the day that `at` falls in.
fn day_bucket(at: DateTime<Utc>, buckets: usize) -> usize {
    use chrono::Timelike;
    (at.num_seconds_from_midnight() as usize * buckets / 86_400).min(buckets - 1)
}

/// A demand forecast for one series: mean and any quantile per slice.
#[derive(Debug, Clone, Serialize)]
pub struct DemandForecast {
    pub key: SeriesKey,
    /// Start of the first forecast slice.
    pub start: DateTime<Utc>,
    pub slice_secs: u32,
    pub model: ModelKind,
    pub periods: Vec<usize>,
    pub calibration: Calibration,
    /// Rolling MASE of every candidate at the time of the choice, by the configured
    /// statistic (None: not scored yet).
    pub model_errors: Vec<(ModelKind, Option<f64>)>,
    /// Why this model was chosen, for a person.
    pub choice_reason: String,
    /// What robust training adjusted out of the history before fitting (at the latest full
    /// refit).
    pub adjusted: Adjusted,
    /// Whether the models were refitted in full or incrementally.
    pub refit: Refit,
    mean: Vec<f64>,
    sigma: Vec<f64>,
    /// Sorted normalised errors per bucket of the day (none: normal-theory quantiles).
    #[serde(skip)]
    sorted_errors: Arc<[Vec<f64>]>,
    adjustments: Vec<SliceAdjustment>,
}

/// Slices of history robust training adjusted before fitting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Adjusted {
    /// Covered by a declared event of the calendar.
    pub declared_slices: usize,
    /// Detected as anomalies and replaced by the decomposition's level.
    pub anomaly_slices: usize,
}

/// The numbers a consumer of one slice needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SliceForecast {
    pub start: DateTime<Utc>,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// Name of the calendar event that changed this slice, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

impl DemandForecast {
    pub fn horizon(&self) -> usize {
        self.mean.len()
    }

    pub fn slice_start(&self, step: usize) -> DateTime<Utc> {
        self.start + chrono::Duration::seconds(step as i64 * i64::from(self.slice_secs))
    }

    /// The step (0-based) of the slice that contains `at`, if the forecast covers it.
    pub fn step_at(&self, at: DateTime<Utc>) -> Option<usize> {
        let offset = (at - self.start).num_seconds();
        if offset < 0 {
            return None;
        }
        let step = (offset / i64::from(self.slice_secs)) as usize;
        (step < self.horizon()).then_some(step)
    }

    /// The quantile function of slice `step`, the input of
    /// [`crate::sizing::SizingPolicy::size`]: `policy.size(&forecast.quantile_fn(step))`.
    pub fn quantile_fn(&self, step: usize) -> impl Fn(f64) -> f64 + '_ {
        move |q| self.quantile(step, q)
    }

    /// Expected demand of slice `step` (0-based), after calendar events.
    pub fn mean(&self, step: usize) -> f64 {
        self.adjustments[step].apply(self.mean[step]).max(0.0)
    }

    /// The `q` quantile (0 < q < 1) of demand in slice `step`, after calendar events; never
    /// negative.
    pub fn quantile(&self, step: usize, q: f64) -> f64 {
        assert!(q > 0.0 && q < 1.0, "quantile {q} must be inside (0, 1)");
        let raw = self.mean[step] + self.normalised_quantile(step, q) * self.sigma[step];
        self.adjustments[step].apply(raw).max(0.0)
    }

    fn normalised_quantile(&self, step: usize, q: f64) -> f64 {
        let buckets = self.sorted_errors.len();
        if buckets == 0 {
            return normalised_quantile(&[], q);
        }
        normalised_quantile(
            &self.sorted_errors[day_bucket(self.slice_start(step), buckets)],
            q,
        )
    }

    /// Central prediction interval at `level` (e.g. 0.9) for slice `step`.
    pub fn interval(&self, step: usize, level: f64) -> (f64, f64) {
        let tail = (1.0 - level) / 2.0;
        (self.quantile(step, tail), self.quantile(step, 1.0 - tail))
    }

    pub fn slice(&self, step: usize) -> SliceForecast {
        SliceForecast {
            start: self.slice_start(step),
            mean: self.mean(step),
            p50: self.quantile(step, 0.5),
            p90: self.quantile(step, 0.9),
            p99: self.quantile(step, 0.99),
            event: self.adjustments[step].event.clone(),
        }
    }

    pub fn slices(&self) -> Vec<SliceForecast> {
        (0..self.horizon()).map(|s| self.slice(s)).collect()
    }
}

/// The `q` quantile of a forecast's normalised error: empirical over `sorted_errors` when the
/// forecast is calibrated on them (conformal), the standard normal's when there are none.
fn normalised_quantile(sorted_errors: &[f64], q: f64) -> f64 {
    if sorted_errors.is_empty() {
        distrs::Normal::ppf(q, 0.0, 1.0)
    } else {
        empirical_quantile(sorted_errors, q)
    }
}

/// Linear interpolation between order statistics (Hyndman–Fan type 7, numpy's default).
fn empirical_quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// In-sample mean absolute error of the seasonal naive with period `m` (the MASE scale).
pub fn seasonal_naive_mae(history: &[f64], m: usize) -> f64 {
    if history.len() <= m {
        return f64::NAN;
    }
    (m..history.len())
        .map(|i| (history[i] - history[i - m]).abs())
        .sum::<f64>()
        / (history.len() - m) as f64
}

/// Every candidate's forecast from one origin, and the chosen one.
#[derive(Debug, Clone)]
pub struct ForecastSet {
    pub chosen: DemandForecast,
    /// Each candidate that could be fitted, calibrated with its own errors.
    pub candidates: Vec<DemandForecast>,
    /// Fit + forecast wall time of each candidate (not read by the core: measured by the
    /// caller-supplied timer).
    pub seconds: Vec<(ModelKind, f64)>,
}

/// Why `chosen` won among `candidates`, for a person: the statistic and each candidate's
/// score, or that no candidate has been scored long enough yet; and what robust training
/// adjusted.
fn choice_reason(
    chosen: &DemandForecast,
    candidates: &[DemandForecast],
    state: &SeriesState,
    statistic: ChoiceStatistic,
    min_scored: usize,
) -> String {
    let scores: Vec<String> = candidates
        .iter()
        .filter(|c| state.scored_origins(c.model) >= min_scored)
        .filter_map(|c| {
            state
                .rolling_mase(c.model, statistic)
                .map(|m| format!("{} {m:.3}", c.model.name()))
        })
        .collect();
    let why = if scores.is_empty() {
        format!("first in order of preference: no candidate has {min_scored} scored forecasts yet")
    } else {
        format!(
            "lowest {} MASE over its last {} scored forecasts ({})",
            statistic.name(),
            state.scored_origins(chosen.model),
            scores.join(", ")
        )
    };
    let a = chosen.adjusted;
    if a.declared_slices + a.anomaly_slices == 0 {
        why
    } else {
        format!(
            "{why}; fitted with {} anomalous and {} declared-event slices adjusted out",
            a.anomaly_slices, a.declared_slices
        )
    }
}

/// Makes forecasts for series. Stateless apart from its configuration; per-series memory is
/// in [`SeriesState`].
#[derive(Debug, Clone)]
pub struct Forecaster {
    config: ForecastConfig,
    calendar: EventCalendar,
}

impl Forecaster {
    pub fn new(config: ForecastConfig, calendar: EventCalendar) -> Result<Self, ForecastError> {
        config.validate()?;
        Ok(Self { config, calendar })
    }

    pub fn config(&self) -> &ForecastConfig {
        &self.config
    }

    /// Forecast the `horizon` slices after the end of `history`, choosing the candidate with
    /// the lowest rolling error, and record every candidate's forecast in `state` for later
    /// scoring. The models are refitted incrementally from the fit `state` keeps when
    /// [`refit`] allows, else in full. `timer` returns seconds on a monotonic clock and times each candidate's fit;
    /// drivers pass one over `Instant`, tests may pass a fake.
    pub fn forecast(
        &self,
        state: &mut SeriesState,
        history: &DemandSeries,
        horizon: usize,
        timer: &mut dyn FnMut() -> f64,
    ) -> Result<ForecastSet, ForecastError> {
        state.handle_history(history, self.config.calibration_origins);
        let origin = history.slice_start(history.len());
        let mase_scale = seasonal_naive_mae(&history.values, self.config.seasons.daily);
        let mut candidates = Vec::new();
        let mut seconds = Vec::new();
        let statistic = self.config.choice;
        let model_errors: Vec<(ModelKind, Option<f64>)> = self
            .config
            .candidates
            .iter()
            .map(|&k| (k, state.rolling_mase(k, statistic)))
            .collect();
        // Single models first, then combinations of them (which reuse their parts' fits).
        let mut singles: Vec<ModelKind> = self
            .config
            .candidates
            .iter()
            .flat_map(|k| k.parts().iter().copied().chain(std::iter::once(*k)))
            .filter(|k| k.parts().is_empty())
            .collect();
        singles.sort();
        singles.dedup();
        let fitted = refit::fit_singles(
            &mut state.fit,
            history,
            &singles,
            horizon,
            &self.config,
            &self.calendar,
            timer,
        );
        let (points, reasons, adjusted, refit) =
            (fitted.points, fitted.reasons, fitted.adjusted, fitted.refit);
        state.refit = Some(refit);
        for &kind in &self.config.candidates {
            let (point, secs) = if kind.parts().is_empty() {
                match points.get(&kind) {
                    Some((p, secs)) => (p.clone(), *secs),
                    None => continue,
                }
            } else {
                let parts: Option<Vec<&(PointForecast, f64)>> =
                    kind.parts().iter().map(|p| points.get(p)).collect();
                let Some(parts) = parts else {
                    continue;
                };
                let fits: Vec<PointForecast> = parts.iter().map(|(p, _)| p.clone()).collect();
                (
                    models::combine(kind, &fits),
                    parts.iter().map(|(_, s)| s).sum(),
                )
            };
            seconds.push((kind, secs));
            let scored = state.scored_origins(kind);
            let (calibration, sorted_errors): (Calibration, Arc<[Vec<f64>]>) =
                if scored >= MIN_CALIBRATION_ORIGINS.min(self.config.calibration_origins) {
                    let buckets = if self.config.calibrate_by_time_of_day {
                        (state.scored_errors(kind) / MIN_BUCKET_ERRORS)
                            .clamp(1, MAX_CALIBRATION_BUCKETS.min(self.config.seasons.daily))
                    } else {
                        1
                    };
                    (
                        Calibration::Conformal {
                            origins: scored,
                            buckets,
                        },
                        state.bucketed_errors(kind, buckets).into(),
                    )
                } else {
                    (Calibration::Parametric, Arc::from(Vec::new()))
                };
            // A history the seasonal naive forecasts exactly gives no scale: no record, so
            // no MASE of infinity sways the choice or the feedback.
            if mase_scale.is_finite() && mase_scale > 0.0 {
                let band_90 = (0..horizon)
                    .map(|step| {
                        let at = origin
                            + chrono::Duration::seconds(
                                step as i64 * i64::from(history.slice_secs),
                            );
                        let errors: &[f64] = if sorted_errors.is_empty() {
                            &[]
                        } else {
                            &sorted_errors[day_bucket(at, sorted_errors.len())]
                        };
                        (
                            normalised_quantile(errors, 0.05),
                            normalised_quantile(errors, 0.95),
                        )
                    })
                    .collect();
                state
                    .records
                    .entry(kind)
                    .or_default()
                    .push_back(OriginRecord {
                        origin,
                        mean: point.mean.clone(),
                        sigma: point.sigma.clone(),
                        mase_scale,
                        slice_secs: history.slice_secs,
                        band_90,
                        scored: None,
                        observed: None,
                    });
            }
            let adjustments = (0..horizon)
                .map(|step| {
                    self.calendar.adjustment(
                        origin
                            + chrono::Duration::seconds(
                                step as i64 * i64::from(history.slice_secs),
                            ),
                    )
                })
                .collect();
            candidates.push(DemandForecast {
                key: history.key.clone(),
                start: origin,
                slice_secs: history.slice_secs,
                model: kind,
                periods: point.periods,
                calibration,
                model_errors: model_errors.clone(),
                choice_reason: String::new(),
                adjusted,
                refit,
                mean: point.mean,
                sigma: point.sigma,
                sorted_errors,
                adjustments,
            });
        }
        if candidates.is_empty() {
            return Err(if let Some(e) = self.too_little_history(history) {
                e
            } else {
                ForecastError::NoModel {
                    key: history.key.to_string(),
                    reasons: reasons.join("; "),
                }
            });
        }
        // Lowest rolling MASE wins among candidates with enough scored origins; the others
        // rank after them, in the configured order of preference. One or two origins are too
        // few to judge by: on the Taylor backtest without warm-up, choosing on them picked the
        // weekly naive twice and cost 0.012 of MASE.
        let min_scored = MIN_CHOICE_ORIGINS.min(self.config.calibration_origins);
        let rank = |f: &DemandForecast| {
            let position = self.config.candidates.iter().position(|&k| k == f.model);
            match state.rolling_mase(f.model, statistic) {
                Some(mase) if state.scored_origins(f.model) >= min_scored => (0, mase, position),
                _ => (1, 0.0, position),
            }
        };
        let chosen = candidates
            .iter()
            .min_by(|a, b| {
                let (ra, rb) = (rank(a), rank(b));
                ra.0.cmp(&rb.0)
                    .then(ra.1.total_cmp(&rb.1))
                    .then(ra.2.cmp(&rb.2))
            })
            .expect("at least one candidate")
            .clone();
        let mut chosen = chosen;
        chosen.choice_reason = choice_reason(&chosen, &candidates, state, statistic, min_scored);
        state.chosen = Some(chosen.model);
        Ok(ForecastSet {
            chosen,
            candidates,
            seconds,
        })
    }

    fn too_little_history(&self, history: &DemandSeries) -> Option<ForecastError> {
        let need = self.config.seasons.daily + 1;
        (history.len() < need).then(|| ForecastError::TooLittleHistory {
            model: "any model",
            have: history.len(),
            need,
        })
    }

    /// Warm a fresh series' state by forecasting from up to `origins` past origins, one day
    /// apart, ending one horizon before the end of `history`, so that the next
    /// [`Forecaster::forecast`] has a model choice and calibrated quantiles. Returns how many
    /// origins were run.
    pub fn calibrate(
        &self,
        state: &mut SeriesState,
        history: &DemandSeries,
        horizon: usize,
        origins: usize,
        timer: &mut dyn FnMut() -> f64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> usize {
        let step = self.config.seasons.daily;
        let last = history.len().saturating_sub(horizon);
        let mut run = 0;
        for (done, j) in (0..origins).rev().enumerate() {
            progress(done, origins);
            let Some(position) = last.checked_sub(j * step) else {
                continue;
            };
            if position <= step {
                continue;
            }
            if self
                .forecast(state, &history.prefix(position), horizon, timer)
                .is_ok()
            {
                run += 1;
            }
        }
        progress(origins, origins);
        run
    }
}
