//! Rolling-origin backtest with the protocol of `shared/bench/forecast_baseline.py`, so that
//! Umbra's figures can be compared with statsforecast's: origins at `n − j·step` for
//! `j = N..1`, each fitted on all data before it; MASE scaled by the in-sample MAE of the daily
//! seasonal naive on that origin's training data; sMAPE; coverage and width of the 80 % and
//! 90 % intervals; every metric averaged over origins with equal weight.
//!
//! Before the first scored origin, `warmup_origins` earlier origins are forecast the same way
//! (and not scored) so that the series state has a rolling error per model and calibrated
//! quantiles from the start, as a long-running orchestrator would. Those warm-up forecasts use
//! only data before the first scored origin. The module computes; it does not print or write.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{DemandForecast, ForecastError, Forecaster, SeriesState};
use crate::history::DemandSeries;

/// Name of the row that holds Umbra's chosen forecast at each origin.
pub const CHOSEN_MODEL_NAME: &str = "umbra";

/// Interval levels scored (percent), as in the baseline script.
pub const LEVELS: [u32; 2] = [80, 90];

/// The protocol.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BacktestConfig {
    pub horizon: usize,
    pub n_origins: usize,
    /// Slices between origins (the daily season by default).
    pub origin_step: usize,
    /// Unscored origins run first to warm the series state.
    pub warmup_origins: usize,
}

impl BacktestConfig {
    pub fn validate(&self, series_len: usize) -> Result<(), ForecastError> {
        let bad = |m: String| Err(ForecastError::Config(m));
        if self.horizon == 0 || self.n_origins == 0 || self.origin_step == 0 {
            return bad("horizon, origins and origin step must be positive".into());
        }
        let first = series_len as i64 - (self.n_origins * self.origin_step) as i64;
        if first <= 0 {
            return bad(format!(
                "{} origins {} slices apart do not fit in {} slices of history; use fewer origins",
                self.n_origins, self.origin_step, series_len
            ));
        }
        if self.horizon > self.origin_step {
            // The last origin is n − step; its horizon must end inside the data.
            return bad(format!(
                "horizon {} is longer than the origin step {}: the last origin would run past the data",
                self.horizon, self.origin_step
            ));
        }
        Ok(())
    }

    /// Origin positions (number of training slices) of the scored origins.
    pub fn origin_positions(&self, series_len: usize) -> Vec<usize> {
        (1..=self.n_origins)
            .rev()
            .map(|j| series_len - j * self.origin_step)
            .collect()
    }
}

/// One model's forecast from one origin, in the external-forecast CSV schema.
#[derive(Debug, Clone, Serialize)]
pub struct OriginForecast {
    pub model: String,
    /// Timestamp of the first forecast slice.
    pub origin: DateTime<Utc>,
    pub mean: Vec<f64>,
    pub lo80: Vec<f64>,
    pub hi80: Vec<f64>,
    pub lo90: Vec<f64>,
    pub hi90: Vec<f64>,
    /// Fit + forecast wall time of this origin.
    pub seconds: f64,
}

/// One model's figures averaged over origins.
#[derive(Debug, Clone, Serialize)]
pub struct ModelScore {
    pub model: String,
    pub mase: f64,
    pub smape: f64,
    pub cov80: f64,
    pub cov90: f64,
    pub width80: f64,
    pub width90: f64,
    pub seconds_mean: f64,
    pub n_origins: usize,
}

/// A whole backtest.
#[derive(Debug, Clone, Serialize)]
pub struct BacktestReport {
    pub unique_id: String,
    pub config: BacktestConfig,
    pub first_origin: DateTime<Utc>,
    pub last_origin: DateTime<Utc>,
    pub warmup_origins_run: usize,
    /// Scores, best MASE first; includes the `umbra` row (the chosen model at each origin).
    pub scores: Vec<ModelScore>,
    /// How often each model was chosen over the scored origins.
    pub choices: BTreeMap<String, usize>,
    #[serde(skip)]
    pub forecasts: Vec<OriginForecast>,
}

impl BacktestReport {
    pub fn score(&self, model: &str) -> Option<&ModelScore> {
        self.scores.iter().find(|s| s.model == model)
    }
}

#[derive(Default)]
struct Accumulator {
    mase: Vec<f64>,
    smape: Vec<f64>,
    cov80: Vec<f64>,
    cov90: Vec<f64>,
    width80: Vec<f64>,
    width90: Vec<f64>,
    seconds: Vec<f64>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Run the protocol on `series` with `forecaster`. `timer` returns seconds on a monotonic
/// clock (drivers pass a real one); `progress(done, total)` is called after every origin.
pub fn run_backtest(
    forecaster: &Forecaster,
    series: &DemandSeries,
    config: &BacktestConfig,
    timer: &mut dyn FnMut() -> f64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<BacktestReport, ForecastError> {
    config.validate(series.len())?;
    let positions = config.origin_positions(series.len());
    let daily = forecaster.config().seasons.daily;
    let mut state = SeriesState::default();
    let total = config.warmup_origins + positions.len();
    let mut done = 0;
    let mut warmup_run = 0;
    for j in (1..=config.warmup_origins).rev() {
        let Some(position) = positions[0].checked_sub(j * config.origin_step) else {
            done += 1;
            continue;
        };
        if position > daily
            && forecaster
                .forecast(&mut state, &series.prefix(position), config.horizon, timer)
                .is_ok()
        {
            warmup_run += 1;
        }
        done += 1;
        progress(done, total);
    }
    let mut acc: BTreeMap<String, Accumulator> = BTreeMap::new();
    let mut choices: BTreeMap<String, usize> = BTreeMap::new();
    let mut forecasts = Vec::new();
    for &position in &positions {
        let history = series.prefix(position);
        let set = forecaster.forecast(&mut state, &history, config.horizon, timer)?;
        let actual = &series.values[position..position + config.horizon];
        let scale = super::seasonal_naive_mae(&history.values, daily);
        *choices
            .entry(set.chosen.model.name().to_string())
            .or_default() += 1;
        // A combination's time is its parts'; the chosen forecast cost every single model.
        let total_seconds: f64 = set
            .seconds
            .iter()
            .filter(|(k, _)| k.parts().is_empty())
            .map(|(_, s)| s)
            .sum();
        let mut rows: Vec<(String, &DemandForecast, f64)> = set
            .candidates
            .iter()
            .map(|f| {
                let secs = set
                    .seconds
                    .iter()
                    .find(|(k, _)| *k == f.model)
                    .map(|(_, s)| *s)
                    .unwrap_or(0.0);
                (f.model.name().to_string(), f, secs)
            })
            .collect();
        rows.push((CHOSEN_MODEL_NAME.to_string(), &set.chosen, total_seconds));
        for (name, forecast, seconds) in rows {
            let row = origin_forecast(&name, forecast, seconds);
            let a = acc.entry(name).or_default();
            score_into(a, &row, actual, scale);
            forecasts.push(row);
        }
        done += 1;
        progress(done, total);
    }
    let mut scores: Vec<ModelScore> = acc
        .into_iter()
        .map(|(model, a)| ModelScore {
            model,
            mase: mean(&a.mase),
            smape: mean(&a.smape),
            cov80: mean(&a.cov80),
            cov90: mean(&a.cov90),
            width80: mean(&a.width80),
            width90: mean(&a.width90),
            seconds_mean: mean(&a.seconds),
            n_origins: a.mase.len(),
        })
        .collect();
    scores.sort_by(|a, b| a.mase.total_cmp(&b.mase).then(a.model.cmp(&b.model)));
    Ok(BacktestReport {
        unique_id: series.key.to_string(),
        config: config.clone(),
        first_origin: series.slice_start(positions[0]),
        last_origin: series.slice_start(*positions.last().expect("origins")),
        warmup_origins_run: warmup_run,
        scores,
        choices,
        forecasts,
    })
}

fn origin_forecast(name: &str, f: &DemandForecast, seconds: f64) -> OriginForecast {
    let h = f.horizon();
    let interval =
        |level: f64| -> (Vec<f64>, Vec<f64>) { (0..h).map(|s| f.interval(s, level)).unzip() };
    let (lo80, hi80) = interval(0.8);
    let (lo90, hi90) = interval(0.9);
    OriginForecast {
        model: name.to_string(),
        origin: f.start,
        mean: (0..h).map(|s| f.mean(s)).collect(),
        lo80,
        hi80,
        lo90,
        hi90,
        seconds,
    }
}

/// The metrics of `score_origin` in forecast_baseline.py, for one origin.
fn score_into(a: &mut Accumulator, f: &OriginForecast, actual: &[f64], scale: f64) {
    let h = actual.len() as f64;
    let mae = actual
        .iter()
        .zip(&f.mean)
        .map(|(y, m)| (y - m).abs())
        .sum::<f64>()
        / h;
    let smape = actual
        .iter()
        .zip(&f.mean)
        .map(|(y, m)| {
            let den = y.abs() + m.abs();
            if den > 0.0 {
                200.0 * (y - m).abs() / den
            } else {
                0.0
            }
        })
        .sum::<f64>()
        / h;
    let mean_actual = actual.iter().sum::<f64>() / h;
    let coverage = |lo: &[f64], hi: &[f64]| {
        actual
            .iter()
            .zip(lo.iter().zip(hi))
            .filter(|(y, (l, u))| *y >= *l && *y <= *u)
            .count() as f64
            / h
    };
    let width = |lo: &[f64], hi: &[f64]| {
        lo.iter().zip(hi).map(|(l, u)| u - l).sum::<f64>() / h / mean_actual
    };
    a.mase.push(mae / scale);
    a.smape.push(smape);
    a.cov80.push(coverage(&f.lo80, &f.hi80));
    a.cov90.push(coverage(&f.lo90, &f.hi90));
    a.width80.push(width(&f.lo80, &f.hi80));
    a.width90.push(width(&f.lo90, &f.hi90));
    a.seconds.push(f.seconds);
}

/// Write forecasts as the CSV `forecast_baseline.py --score-forecasts` reads:
/// `unique_id,origin,step,model,mean,lo-80,hi-80,lo-90,hi-90,seconds`.
pub fn write_forecasts_csv<W: std::io::Write>(
    out: W,
    unique_id: &str,
    forecasts: &[OriginForecast],
) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "unique_id",
        "origin",
        "step",
        "model",
        "mean",
        "lo-80",
        "hi-80",
        "lo-90",
        "hi-90",
        "seconds",
    ])?;
    for f in forecasts {
        let origin = f.origin.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        for step in 0..f.mean.len() {
            w.write_record([
                unique_id.to_string(),
                origin.clone(),
                (step + 1).to_string(),
                f.model.clone(),
                f.mean[step].to_string(),
                f.lo80[step].to_string(),
                f.hi80[step].to_string(),
                f.lo90[step].to_string(),
                f.hi90[step].to_string(),
                f.seconds.to_string(),
            ])?;
        }
    }
    w.flush()?;
    Ok(())
}

/// The chosen forecast at each of `positions` (slices of history before each origin), after
/// warming the series state on `warmup_origins` earlier origins `step` apart. For replaying a
/// trace with the forecasts an orchestrator would have had at the time.
pub fn forecasts_at_origins(
    forecaster: &Forecaster,
    series: &DemandSeries,
    positions: &[usize],
    horizon: usize,
    warmup_origins: usize,
    timer: &mut dyn FnMut() -> f64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<DemandForecast>, ForecastError> {
    let Some(&first) = positions.first() else {
        return Ok(Vec::new());
    };
    let step = forecaster.config().seasons.daily;
    let mut state = SeriesState::default();
    let total = warmup_origins + positions.len();
    let mut done = 0;
    for j in (1..=warmup_origins).rev() {
        if let Some(position) = first.checked_sub(j * step).filter(|&p| p > step) {
            // A warm-up origin that cannot be forecast only leaves the state colder.
            let _ = forecaster.forecast(&mut state, &series.prefix(position), horizon, timer);
        }
        done += 1;
        progress(done, total);
    }
    let mut out = Vec::with_capacity(positions.len());
    for &position in positions {
        let set = forecaster.forecast(&mut state, &series.prefix(position), horizon, timer)?;
        out.push(set.chosen);
        done += 1;
        progress(done, total);
    }
    Ok(out)
}
