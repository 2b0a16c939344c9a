//! The candidate models, each a pure function from a history to a point forecast with a
//! per-step spread (`sigma`, the model's own standard error of the h-step forecast). MSTL
//! (augurs/stlrs) removes the daily and weekly seasons; AutoETS (augurs) forecasts the
//! deseasonalised rest; the seasonal components are carried forward. Seasonal naive models are
//! the fallbacks and the yardsticks. This module knows nothing about calibration, model choice
//! or events; `super` does that.

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
}

impl ModelKind {
    pub const ALL: [ModelKind; 3] = [
        ModelKind::MstlEts,
        ModelKind::SeasonalNaiveWeekly,
        ModelKind::SeasonalNaiveDaily,
    ];

    /// Stable name used in CSV output, JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::MstlEts => "mstl_ets",
            ModelKind::SeasonalNaiveWeekly => "snaive_weekly",
            ModelKind::SeasonalNaiveDaily => "snaive_daily",
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

/// Fit `kind` on `history` and forecast `horizon` slices.
pub fn fit_predict(
    kind: ModelKind,
    history: &[f64],
    horizon: usize,
    config: &ForecastConfig,
) -> Result<PointForecast, ForecastError> {
    let seasons = config.seasons;
    match kind {
        ModelKind::MstlEts => {
            // Only seasons with two full periods of history can be estimated (stlrs refuses
            // fewer); with less than two days the caller falls back to a seasonal naive.
            let periods: Vec<usize> = [seasons.daily, seasons.weekly]
                .into_iter()
                .filter(|&p| p >= 2 && history.len() >= 2 * p)
                .collect();
            if periods.is_empty() {
                return Err(ForecastError::TooLittleHistory {
                    model: kind.name(),
                    have: history.len(),
                    need: 2 * seasons.daily,
                });
            }
            mstl_ets(history, horizon, periods, config.ets_window_slices)
        }
        ModelKind::SeasonalNaiveWeekly => seasonal_naive(kind, history, horizon, seasons.weekly),
        ModelKind::SeasonalNaiveDaily => seasonal_naive(kind, history, horizon, seasons.daily),
    }
}

fn mstl_ets(
    history: &[f64],
    horizon: usize,
    periods: Vec<usize>,
    ets_window_slices: usize,
) -> Result<PointForecast, ForecastError> {
    let model_error = |message: String| ForecastError::Model {
        model: ModelKind::MstlEts.name(),
        message,
    };
    let y: Vec<f32> = history.iter().map(|&v| v as f32).collect();
    let decomposition = stlrs::MstlParams::new()
        .fit(&y, &periods)
        .map_err(|e| model_error(e.to_string()))?;
    let deseasonalised: Vec<f64> = decomposition
        .trend()
        .iter()
        .zip(decomposition.remainder())
        .map(|(t, r)| f64::from(t + r))
        .collect();
    // The trend model only needs the recent level: on the Taylor series AutoETS picks a
    // level-only model either way, and fitting it on the last week instead of all history
    // gives the same forecasts at a tenth of the time.
    let window_start = deseasonalised
        .len()
        .saturating_sub(ets_window_slices.max(1));
    let ets = AutoETS::non_seasonal()
        .fit(&deseasonalised[window_start..])
        .map_err(|e| model_error(format!("AutoETS: {e}")))?;
    let trend = ets
        .predict(horizon, 0.9)
        .map_err(|e| model_error(format!("AutoETS forecast: {e}")))?;
    let intervals = trend
        .intervals
        .ok_or_else(|| model_error("AutoETS gave no intervals".into()))?;
    let mut mean = trend.point;
    let sigma: Vec<f64> = intervals
        .upper
        .iter()
        .zip(&intervals.lower)
        .map(|(u, l)| ((u - l) / (2.0 * Z_90)).max(f64::EPSILON))
        .collect();
    for (&period, component) in periods.iter().zip(decomposition.seasonal()) {
        let last_cycle = &component[component.len() - period..];
        for (step, m) in mean.iter_mut().enumerate() {
            *m += f64::from(last_cycle[step % period]);
        }
    }
    Ok(PointForecast {
        model: ModelKind::MstlEts,
        periods,
        mean,
        sigma,
    })
}

fn seasonal_naive(
    kind: ModelKind,
    history: &[f64],
    horizon: usize,
    period: usize,
) -> Result<PointForecast, ForecastError> {
    // One period to repeat and at least one more to measure the spread of the differences.
    if period == 0 || history.len() <= period {
        return Err(ForecastError::TooLittleHistory {
            model: kind.name(),
            have: history.len(),
            need: period + 1,
        });
    }
    let n = history.len();
    let diffs: Vec<f64> = (period..n)
        .map(|i| history[i] - history[i - period])
        .collect();
    let sigma1 = (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt();
    let mean = (0..horizon)
        .map(|h| history[n - period + h % period])
        .collect();
    // The h-step error of a seasonal naive forecast sums one difference per full period ahead.
    let sigma = (0..horizon)
        .map(|h| (sigma1 * ((h / period + 1) as f64).sqrt()).max(f64::EPSILON))
        .collect();
    Ok(PointForecast {
        model: kind,
        periods: vec![period],
        mean,
        sigma,
    })
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
        let err = fit_predict(ModelKind::MstlEts, &[1.0; 50], 3, &config).unwrap_err();
        assert!(matches!(
            err,
            ForecastError::TooLittleHistory { need: 96, .. }
        ));
    }
}
