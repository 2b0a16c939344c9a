//! The candidate models, each a pure function from a history to a point forecast with a
//! per-step spread (`sigma`, the model's own standard error of the h-step forecast). MSTL
//! (augurs/stlrs) removes the daily and weekly seasons; AutoETS (augurs) forecasts the
//! deseasonalised rest; the seasonal components are carried forward. Seasonal naive models are
//! the fallbacks and the yardsticks. This module knows nothing about calibration, model choice
//! or events; `super` does that.

use std::borrow::Cow;
use std::collections::VecDeque;

use augurs::ets::AutoETS;
use augurs::mstl::stlrs;
use augurs::{Fit, Predict};
use serde::Serialize;

use super::{ForecastConfig, ForecastError};

/// z of the two-sided 90 % normal interval: converts augurs' interval half-width to sigma.
const Z_90: f64 = 1.644_853_626_951_472_2;

/// A forecasting model Umbra can choose for a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// MSTL decomposition (daily and weekly seasons, whichever have two periods of history)
    /// with AutoETS on the deseasonalised series.
    MstlEts,
    /// Next week repeats last week.
    SeasonalNaiveWeekly,
    /// Tomorrow repeats today.
    SeasonalNaiveDaily,
    /// The average of `MstlEts` and `SeasonalNaiveWeekly`: a combination that neither
    /// model's bad day ruins.
    Combined,
}

impl ModelKind {
    pub const ALL: [ModelKind; 4] = [
        ModelKind::MstlEts,
        ModelKind::Combined,
        ModelKind::SeasonalNaiveWeekly,
        ModelKind::SeasonalNaiveDaily,
    ];

    /// The models a combination averages (empty for a single model).
    pub fn parts(self) -> &'static [ModelKind] {
        match self {
            ModelKind::Combined => &[ModelKind::MstlEts, ModelKind::SeasonalNaiveWeekly],
            _ => &[],
        }
    }

    /// Stable name used in CSV output, JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::MstlEts => "mstl_ets",
            ModelKind::SeasonalNaiveWeekly => "snaive_weekly",
            ModelKind::SeasonalNaiveDaily => "snaive_daily",
            ModelKind::Combined => "combined",
        }
    }
}

/// One model's raw forecast from one origin.
#[derive(Debug, Clone, PartialEq)]
pub struct PointForecast {
    pub model: ModelKind,
    /// Seasonal periods (in slices) the model used.
    pub periods: Vec<usize>,
    pub mean: Vec<f64>,
    /// Standard error of each step's forecast under the model's own assumptions.
    pub sigma: Vec<f64>,
}

/// An MSTL decomposition of a history: what robust training detects anomalies on and what
/// `mstl_ets` forecasts from, computed once when both need the same one.
#[derive(Debug, Clone, PartialEq)]
pub struct Decomposition {
    pub periods: Vec<usize>,
    /// Trend + remainder.
    pub deseasonalised: Vec<f64>,
    /// One component per period.
    pub seasonal: Vec<Vec<f32>>,
    pub trend: Vec<f64>,
}

impl Decomposition {
    /// Trend + seasons (the history minus the remainder) at slice `i`.
    pub fn fitted(&self, i: usize) -> f64 {
        self.trend[i] + self.seasonal.iter().map(|c| f64::from(c[i])).sum::<f64>()
    }
}

/// MSTL iterations (stlrs's and statsmodels' default). One would take 45 % of the time, but
/// measured on the Taylor protocol it raised the MASE from 0.150 to 0.187.
pub const MSTL_ITERATIONS: usize = 2;

/// Decompose `history` by `periods` (each with two full periods of history).
pub fn decompose(history: &[f64], periods: &[usize]) -> Result<Decomposition, ForecastError> {
    let y: Vec<f32> = history.iter().map(|&v| v as f32).collect();
    let d = stlrs::MstlParams::new()
        .iterations(MSTL_ITERATIONS)
        .fit(&y, periods)
        .map_err(|e| ForecastError::Model {
            model: ModelKind::MstlEts.name(),
            message: e.to_string(),
        })?;
    Ok(Decomposition {
        periods: periods.to_vec(),
        deseasonalised: d
            .trend()
            .iter()
            .zip(d.remainder())
            .map(|(t, r)| f64::from(t + r))
            .collect(),
        trend: d.trend().iter().map(|&t| f64::from(t)).collect(),
        seasonal: d.seasonal().to_vec(),
    })
}

/// Seasonal periods an MSTL fit of `len` slices can estimate: those with two full periods
/// of history (stlrs refuses fewer).
pub fn mstl_periods(seasons: crate::Seasons, len: usize) -> Vec<usize> {
    [seasons.daily, seasons.weekly]
        .into_iter()
        .filter(|&p| p >= 2 && len >= 2 * p)
        .collect()
}

/// Fit `kind` on `history` and forecast `horizon` slices. `decomposition`, when given, is
/// `history`'s own MSTL decomposition with the periods `mstl_ets` would use (saves one).
pub fn fit_predict(
    kind: ModelKind,
    history: &[f64],
    horizon: usize,
    config: &ForecastConfig,
    decomposition: Option<&Decomposition>,
) -> Result<PointForecast, ForecastError> {
    match kind {
        ModelKind::Combined => {
            let parts = kind
                .parts()
                .iter()
                .map(|&p| fit_predict(p, history, horizon, config, decomposition))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(combine(kind, &parts))
        }
        _ => SingleFit::new(kind, history, config, decomposition)?.forecast(horizon),
    }
}

/// A single model (not a combination) fitted on a history: what its forecasts, and its
/// incremental refits (`crate::refit`), start from.
#[derive(Debug, Clone, PartialEq)]
pub enum SingleFit {
    /// MSTL + AutoETS.
    MstlEts(MstlEtsFit),
    /// A seasonal naive, daily or weekly.
    SeasonalNaive(SeasonalNaiveFit),
}

impl SingleFit {
    /// Fits single model `kind` on `history`; `decomposition` as for [`fit_predict`].
    pub fn new(
        kind: ModelKind,
        history: &[f64],
        config: &ForecastConfig,
        decomposition: Option<&Decomposition>,
    ) -> Result<Self, ForecastError> {
        match kind {
            ModelKind::MstlEts => {
                let decomposition = mstl_decomposition(history, config.seasons, decomposition)?;
                Ok(Self::MstlEts(MstlEtsFit::new(
                    &decomposition,
                    config.ets_window_slices,
                )))
            }
            ModelKind::SeasonalNaiveWeekly | ModelKind::SeasonalNaiveDaily => Ok(
                Self::SeasonalNaive(SeasonalNaiveFit::new(kind, history, config.seasons)?),
            ),
            ModelKind::Combined => unreachable!("a combination is made of its parts' fits"),
        }
    }

    /// Adds the slices that followed the history.
    pub fn extend(&mut self, values: &[f64]) {
        match self {
            Self::MstlEts(fit) => fit.extend(values),
            Self::SeasonalNaive(fit) => fit.extend(values),
        }
    }

    /// Forecasts `horizon` slices.
    pub fn forecast(&self, horizon: usize) -> Result<PointForecast, ForecastError> {
        match self {
            Self::MstlEts(fit) => fit.forecast(horizon),
            Self::SeasonalNaive(fit) => Ok(fit.forecast(horizon)),
        }
    }
}

/// The equal-weight average of `parts` (non-empty, same horizon): the mean of their means, and
/// of their sigmas (the errors of the parts are strongly correlated; the conformal
/// calibration rescales whatever spread is given).
pub fn combine(kind: ModelKind, parts: &[PointForecast]) -> PointForecast {
    let n = parts.len() as f64;
    let horizon = parts[0].mean.len();
    let avg = |f: &dyn Fn(&PointForecast, usize) -> f64| -> Vec<f64> {
        (0..horizon)
            .map(|h| parts.iter().map(|p| f(p, h)).sum::<f64>() / n)
            .collect()
    };
    let mut periods: Vec<usize> = parts.iter().flat_map(|p| p.periods.clone()).collect();
    periods.sort_unstable();
    periods.dedup();
    PointForecast {
        model: kind,
        periods,
        mean: avg(&|p, h| p.mean[h]),
        sigma: avg(&|p, h| p.sigma[h]),
    }
}

/// The decomposition `mstl_ets` forecasts `history` from: `given` when it is `history`'s own
/// with the periods `mstl_ets` uses, else a new one. Only seasons with two full periods of
/// history can be estimated (stlrs refuses fewer); with less than two days the caller falls
/// back to a seasonal naive.
pub fn mstl_decomposition<'a>(
    history: &[f64],
    seasons: crate::Seasons,
    given: Option<&'a Decomposition>,
) -> Result<Cow<'a, Decomposition>, ForecastError> {
    let periods = mstl_periods(seasons, history.len());
    if periods.is_empty() {
        return Err(ForecastError::TooLittleHistory {
            model: ModelKind::MstlEts.name(),
            have: history.len(),
            need: 2 * seasons.daily,
        });
    }
    match given {
        Some(d) if d.periods == periods && d.deseasonalised.len() == history.len() => {
            Ok(Cow::Borrowed(d))
        }
        _ => decompose(history, &periods).map(Cow::Owned),
    }
}

/// What `mstl_ets` learned from a decomposition: each season's last full cycle, carried
/// forward periodically, and the recent deseasonalised history the ETS level model is fitted
/// on. New slices extend it without a new decomposition: each is deseasonalised by the
/// carried-forward seasons (an incremental refit, `crate::refit`).
#[derive(Debug, Clone, PartialEq)]
pub struct MstlEtsFit {
    /// The seasonal periods, in slices.
    pub periods: Vec<usize>,
    /// One cycle per period: `cycles[p][i]` is the season of the slices `i` (mod the period)
    /// after the end of the decomposed history.
    cycles: Vec<Vec<f32>>,
    /// Slices added since the decomposition (the phase of the cycles).
    phase: usize,
    /// The newest deseasonalised slices, at most `window_slices`.
    window: VecDeque<f64>,
    window_slices: usize,
}

impl MstlEtsFit {
    /// The fit of `decomposition`, with ETS fitted on its last `ets_window_slices`.
    pub fn new(decomposition: &Decomposition, ets_window_slices: usize) -> Self {
        let window_slices = ets_window_slices.max(1);
        let d = &decomposition.deseasonalised;
        let cycles = decomposition
            .periods
            .iter()
            .zip(&decomposition.seasonal)
            .map(|(&period, component)| component[component.len() - period..].to_vec())
            .collect();
        Self {
            periods: decomposition.periods.clone(),
            cycles,
            phase: 0,
            window: d[d.len().saturating_sub(window_slices)..]
                .iter()
                .copied()
                .collect(),
            window_slices,
        }
    }

    /// The seasons' sum `steps` slices after the end of the history seen so far.
    fn season(&self, steps: usize) -> f64 {
        self.periods
            .iter()
            .zip(&self.cycles)
            .map(|(&period, cycle)| f64::from(cycle[(self.phase + steps) % period]))
            .sum()
    }

    /// Adds the slices that followed the history, deseasonalised by the carried-forward seasons.
    pub fn extend(&mut self, values: &[f64]) {
        for &v in values {
            let deseasonalised = v - self.season(0);
            self.window.push_back(deseasonalised);
            if self.window.len() > self.window_slices {
                self.window.pop_front();
            }
            self.phase += 1;
        }
    }

    /// Fits AutoETS on the deseasonalised window and forecasts `horizon` slices with the
    /// seasons added back.
    pub fn forecast(&self, horizon: usize) -> Result<PointForecast, ForecastError> {
        let model_error = |message: String| ForecastError::Model {
            model: ModelKind::MstlEts.name(),
            message,
        };
        // The trend model only needs the recent level: on the Taylor series AutoETS picks a
        // level-only model either way, and fitting it on the last week instead of all history
        // gives the same forecasts at a tenth of the time.
        let window: Vec<f64> = self.window.iter().copied().collect();
        let ets = AutoETS::non_seasonal()
            .fit(&window)
            .map_err(|e| model_error(format!("AutoETS: {e}")))?;
        let trend = ets
            .predict(horizon, 0.9)
            .map_err(|e| model_error(format!("AutoETS forecast: {e}")))?;
        let intervals = trend
            .intervals
            .ok_or_else(|| model_error("AutoETS gave no intervals".into()))?;
        let sigma: Vec<f64> = intervals
            .upper
            .iter()
            .zip(&intervals.lower)
            .map(|(u, l)| ((u - l) / (2.0 * Z_90)).max(f64::EPSILON))
            .collect();
        let mean = trend
            .point
            .iter()
            .enumerate()
            .map(|(step, m)| m + self.season(step))
            .collect();
        Ok(PointForecast {
            model: ModelKind::MstlEts,
            periods: self.periods.clone(),
            mean,
            sigma,
        })
    }
}

/// Sum of the squared seasonal differences `history[i] - history[i - period]`, and how many:
/// the seasonal naive's one-step error, kept as a sum so that new slices add to it.
pub fn naive_square_sum(history: &[f64], period: usize) -> (f64, usize) {
    let sum = (period..history.len())
        .map(|i| (history[i] - history[i - period]).powi(2))
        .sum();
    (sum, history.len().saturating_sub(period))
}

/// A seasonal naive model: the last period, repeated, and the squared one-step errors that
/// give its spread. New slices extend it in constant time each.
#[derive(Debug, Clone, PartialEq)]
pub struct SeasonalNaiveFit {
    kind: ModelKind,
    /// The newest `period` slices.
    last_period: VecDeque<f64>,
    square_sum: f64,
    count: usize,
}

impl SeasonalNaiveFit {
    /// The fit of seasonal naive `kind` on `history`.
    pub fn new(
        kind: ModelKind,
        history: &[f64],
        seasons: crate::Seasons,
    ) -> Result<Self, ForecastError> {
        let period = match kind {
            ModelKind::SeasonalNaiveDaily => seasons.daily,
            ModelKind::SeasonalNaiveWeekly => seasons.weekly,
            ModelKind::MstlEts | ModelKind::Combined => {
                unreachable!("{} is not a seasonal naive model", kind.name())
            }
        };
        // One period to repeat and at least one more to measure the spread of the differences.
        if period == 0 || history.len() <= period {
            return Err(ForecastError::TooLittleHistory {
                model: kind.name(),
                have: history.len(),
                need: period + 1,
            });
        }
        let (square_sum, count) = naive_square_sum(history, period);
        Ok(Self {
            kind,
            last_period: history[history.len() - period..].iter().copied().collect(),
            square_sum,
            count,
        })
    }

    /// Adds the slices that followed the history.
    pub fn extend(&mut self, values: &[f64]) {
        for &v in values {
            let before = self
                .last_period
                .pop_front()
                .expect("a period is never empty");
            self.square_sum += (v - before).powi(2);
            self.count += 1;
            self.last_period.push_back(v);
        }
    }

    /// Forecasts `horizon` slices.
    pub fn forecast(&self, horizon: usize) -> PointForecast {
        let period = self.last_period.len();
        let sigma1 = (self.square_sum / self.count as f64).sqrt();
        let mean = (0..horizon).map(|h| self.last_period[h % period]).collect();
        // The h-step error of a seasonal naive forecast sums one difference per full period ahead.
        let sigma = (0..horizon)
            .map(|h| (sigma1 * ((h / period + 1) as f64).sqrt()).max(f64::EPSILON))
            .collect();
        PointForecast {
            model: self.kind,
            periods: vec![period],
            mean,
            sigma,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Seasons;

    #[test]
    fn seasonal_naive_repeats_the_last_period() {
        let config = ForecastConfig::for_seasons(Seasons {
            daily: 2,
            weekly: 4,
        });
        let f = fit_predict(
            ModelKind::SeasonalNaiveDaily,
            &[1.0, 2.0, 3.0, 4.0],
            3,
            &config,
            None,
        )
        .unwrap();
        assert_eq!(f.mean, vec![3.0, 4.0, 3.0]);
        assert!(f.sigma[2] > f.sigma[0]);
    }

    #[test]
    fn mstl_needs_two_days() {
        let config = ForecastConfig::for_seasons(Seasons {
            daily: 48,
            weekly: 336,
        });
        let err = fit_predict(ModelKind::MstlEts, &[1.0; 50], 3, &config, None).unwrap_err();
        assert!(matches!(
            err,
            ForecastError::TooLittleHistory { need: 96, .. }
        ));
    }
}
