//! Incremental refits: a series' next forecast reuses what its last full refit learned. A full
//! refit trains robustly (`robust`), decomposes the history (MSTL) and fits every model; the
//! [`FitCache`] keeps each model's state after it (`models::MstlEtsFit`: the seasons' last
//! cycles and the deseasonalised window; `models::SeasonalNaiveFit`: the last period and its
//! squared errors). An incremental refit takes in the slices that arrived since, as they are,
//! deseasonalises them by the carried-forward seasons and refits only AutoETS on the
//! deseasonalised window: the decomposition, the costly part, is not run again.
//!
//! A refit is full when: there is no cache; the slice width, the seasons or the ETS window
//! changed; the history ends earlier than the last fit, or the last fitted slice's value
//! changed (the history was rewritten); a model failed at the last fit for a reason other than
//! too little history; a model that had too little history then has enough now, or MSTL could
//! estimate other seasons; a declared event of the calendar covers a new slice (robust
//! training would adjust it); or [`ForecastConfig::full_refit_every_slices`] slices arrived
//! since the last full refit. The new slices an incremental refit takes in as they are fall,
//! by default, in the newest quarter of a day, which robust training leaves alone too.
//!
//! Like the rest of the crate this is computation on numbers passed in: no clock, no I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::calendar::{EventCalendar, SliceAdjustment};
use crate::history::DemandSeries;
use crate::models::{self, PointForecast, SingleFit};
use crate::{Adjusted, ForecastConfig, ForecastError, ModelKind, Seasons, robust};

/// How a forecast's models were fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Refit {
    /// Robust training, the decomposition and every model, on the whole history.
    Full,
    /// The last full refit's seasons carried forward over the new slices, and the level
    /// model refitted; `slices_since_full` slices arrived since that full refit.
    Incremental { slices_since_full: usize },
}

impl Refit {
    /// Stable name used in metrics (`kind` label).
    pub fn name(self) -> &'static str {
        match self {
            Refit::Full => "full",
            Refit::Incremental { .. } => "incremental",
        }
    }
}

/// What one single model learned at the last full refit, brought up to date by the
/// incremental refits since.
#[derive(Debug, Clone)]
enum ModelFit {
    Fitted(SingleFit),
    /// Too little history for it: `need` slices.
    Short {
        need: usize,
    },
    /// It failed for another reason.
    Failed,
}

/// What a series' last full refit learned (kept in its `SeriesState`).
#[derive(Debug, Clone)]
pub struct FitCache {
    slice_secs: u32,
    seasons: Seasons,
    ets_window_slices: usize,
    /// The end (exclusive) of the history fitted last.
    end: DateTime<Utc>,
    /// That history's last value, as it was.
    last_value: f64,
    slices_since_full: usize,
    /// What robust training adjusted at the full refit.
    adjusted: Adjusted,
    models: BTreeMap<ModelKind, ModelFit>,
}

/// The single models' forecasts from one origin.
pub(crate) struct SingleForecasts {
    /// Each model that could forecast, with its fit time (seconds, by the caller's timer).
    pub points: BTreeMap<ModelKind, (PointForecast, f64)>,
    /// Why the others could not.
    pub reasons: Vec<String>,
    pub adjusted: Adjusted,
    pub refit: Refit,
}

/// Fits the `singles` (single models, no combinations) on `history` and forecasts `horizon`
/// slices: incrementally from `cache` when it allows, else in full, which replaces `cache`.
pub(crate) fn fit_singles(
    cache: &mut Option<FitCache>,
    history: &DemandSeries,
    singles: &[ModelKind],
    horizon: usize,
    config: &ForecastConfig,
    calendar: &EventCalendar,
    timer: &mut dyn FnMut() -> f64,
) -> SingleForecasts {
    if let Some(cache) = cache.as_mut()
        && let Some(new) = cache.new_slices(history, singles, config, calendar)
    {
        return cache.refit_incremental(history, new, singles, horizon, timer);
    }
    let t0 = timer();
    let training = robust_training(history, config, calendar);
    // The training's time is shared by the models fitted on it.
    let training_secs = (timer() - t0) / singles.len().max(1) as f64;
    let (forecasts, fitted) = refit_full(
        history,
        &training,
        training_secs,
        singles,
        horizon,
        config,
        timer,
    );
    *cache = Some(fitted);
    forecasts
}

/// `history` with its declared events and detected anomalies adjusted out, when the
/// configuration asks for robust training.
fn robust_training(
    history: &DemandSeries,
    config: &ForecastConfig,
    calendar: &EventCalendar,
) -> robust::TrainingHistory {
    if config.robust_training {
        let declared: Vec<SliceAdjustment> = if calendar.events().is_empty() {
            Vec::new()
        } else {
            (0..history.len())
                .map(|i| calendar.adjustment(history.slice_start(i)))
                .collect()
        };
        robust::training_history(&history.values, &declared, config.seasons)
    } else {
        robust::TrainingHistory {
            values: history.values.clone(),
            declared_slices: 0,
            anomaly_slices: 0,
            decomposition: None,
        }
    }
}

/// Every single model fitted on `training`, the robust training of `history` that took
/// `training_secs` per model.
fn refit_full(
    history: &DemandSeries,
    training: &robust::TrainingHistory,
    training_secs: f64,
    singles: &[ModelKind],
    horizon: usize,
    config: &ForecastConfig,
    timer: &mut dyn FnMut() -> f64,
) -> (SingleForecasts, FitCache) {
    let adjusted = Adjusted {
        declared_slices: training.declared_slices,
        anomaly_slices: training.anomaly_slices,
    };
    let mut points = BTreeMap::new();
    let mut reasons = Vec::new();
    let mut fits = BTreeMap::new();
    for &kind in singles {
        let t0 = timer();
        // The decomposition that found the anomalies is reused when nothing was adjusted.
        let fitted = SingleFit::new(
            kind,
            &training.values,
            config,
            training.decomposition.as_ref(),
        )
        .and_then(|fit| Ok((fit.forecast(horizon)?, ModelFit::Fitted(fit))));
        let fit = match fitted {
            Ok((point, fit)) => {
                points.insert(kind, (point, timer() - t0 + training_secs));
                fit
            }
            Err(e) => {
                reasons.push(e.to_string());
                match e {
                    ForecastError::TooLittleHistory { need, .. } => ModelFit::Short { need },
                    _ => ModelFit::Failed,
                }
            }
        };
        fits.insert(kind, fit);
    }
    let cache = FitCache {
        slice_secs: history.slice_secs,
        seasons: config.seasons,
        ets_window_slices: config.ets_window_slices,
        end: history.slice_start(history.len()),
        last_value: history.values.last().copied().unwrap_or(f64::NAN),
        slices_since_full: 0,
        adjusted,
        models: fits,
    };
    let forecasts = SingleForecasts {
        points,
        reasons,
        adjusted,
        refit: Refit::Full,
    };
    (forecasts, cache)
}

impl FitCache {
    /// How many slices `history` has after the last fit, when an incremental refit may take
    /// them in; `None` when the refit must be full (see the module's list).
    fn new_slices(
        &self,
        history: &DemandSeries,
        singles: &[ModelKind],
        config: &ForecastConfig,
        calendar: &EventCalendar,
    ) -> Option<usize> {
        if history.slice_secs != self.slice_secs
            || config.seasons != self.seasons
            || config.ets_window_slices != self.ets_window_slices
        {
            return None;
        }
        let slice = i64::from(self.slice_secs);
        let gained = (history.slice_start(history.len()) - self.end).num_seconds();
        if gained < 0 || gained % slice != 0 {
            return None;
        }
        let new = (gained / slice) as usize;
        // The last fitted slice must still be there with the same value.
        let last = history.len().checked_sub(new + 1)?;
        if history.values[last].to_bits() != self.last_value.to_bits() {
            return None;
        }
        if self.slices_since_full + new >= config.full_refit_every_slices {
            return None;
        }
        for kind in singles {
            let fresh = match self.models.get(kind)? {
                ModelFit::Fitted(SingleFit::MstlEts(fit)) => {
                    models::mstl_periods(config.seasons, history.len()) == fit.periods
                }
                ModelFit::Fitted(SingleFit::SeasonalNaive(_)) => true,
                ModelFit::Short { need } => history.len() < *need,
                ModelFit::Failed => false,
            };
            if !fresh {
                return None;
            }
        }
        let declared = config.robust_training
            && !calendar.events().is_empty()
            && (history.len() - new..history.len())
                .any(|i| calendar.adjustment(history.slice_start(i)).event.is_some());
        (!declared).then_some(new)
    }

    /// Takes in the `new` newest slices of `history` and refits each model from its state.
    fn refit_incremental(
        &mut self,
        history: &DemandSeries,
        new: usize,
        singles: &[ModelKind],
        horizon: usize,
        timer: &mut dyn FnMut() -> f64,
    ) -> SingleForecasts {
        let fresh = &history.values[history.len() - new..];
        let mut points = BTreeMap::new();
        let mut reasons = Vec::new();
        for kind in singles {
            let Some(fit) = self.models.get_mut(kind) else {
                continue;
            };
            let t0 = timer();
            let point = match fit {
                ModelFit::Fitted(model) => {
                    model.extend(fresh);
                    model.forecast(horizon)
                }
                ModelFit::Short { need } => Err(ForecastError::TooLittleHistory {
                    model: kind.name(),
                    have: history.len(),
                    need: *need,
                }),
                ModelFit::Failed => unreachable!("a failed model refits in full"),
            };
            match point {
                Ok(point) => {
                    points.insert(*kind, (point, timer() - t0));
                }
                Err(e) => {
                    // The next forecast refits in full.
                    if !matches!(e, ForecastError::TooLittleHistory { .. }) {
                        *fit = ModelFit::Failed;
                    }
                    reasons.push(e.to_string());
                }
            }
        }
        self.end = history.slice_start(history.len());
        self.last_value = history.values[history.len() - 1];
        self.slices_since_full += new;
        SingleForecasts {
            points,
            reasons,
            adjusted: self.adjusted,
            refit: Refit::Incremental {
                slices_since_full: self.slices_since_full,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::calendar::Event;
    use crate::history::SeriesKey;
    use crate::{Forecaster, SeriesState};

    /// Hourly slices: a 24-slice day and a 168-slice week keep the fits quick.
    const SLICE_SECS: u32 = 3_600;
    const HORIZON: usize = 24;

    /// `len` hourly slices of a daily shape with quieter weekends, a slow rise and a little
    /// deterministic noise, around a level of 100.
    fn series(len: usize) -> DemandSeries {
        let values = (0..len)
            .map(|i| {
                let hour = (i % 24) as f64;
                let weekend = if (i / 24) % 7 >= 5 { 0.8 } else { 1.0 };
                let wobble = ((i * 7919) % 13) as f64 / 13.0 - 0.5;
                (100.0 + 50.0 * (hour / 24.0 * std::f64::consts::TAU).sin()) * weekend
                    + 0.01 * i as f64
                    + 3.0 * wobble
            })
            .collect();
        DemandSeries {
            key: SeriesKey::new("shop", "eu-west"),
            start: Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap(),
            slice_secs: SLICE_SECS,
            values,
        }
    }

    fn forecaster() -> Forecaster {
        Forecaster::new(
            ForecastConfig::for_slice_secs(SLICE_SECS),
            EventCalendar::default(),
        )
        .unwrap()
    }

    /// Forecasts `history` with `state` and says how it was refitted.
    fn refit(forecaster: &Forecaster, state: &mut SeriesState, history: &DemandSeries) -> Refit {
        let set = forecaster
            .forecast(state, history, HORIZON, &mut || 0.0)
            .unwrap();
        assert_eq!(state.take_refit(), Some(set.chosen.refit));
        assert_eq!(state.take_refit(), None, "handed out once");
        set.chosen.refit
    }

    /// Three weeks: every model, both seasons.
    const WEEKS_3: usize = 21 * 24;

    #[test]
    fn a_first_forecast_refits_in_full_and_the_next_slices_incrementally() {
        let (f, full) = (forecaster(), series(WEEKS_3 + 3));
        let mut state = SeriesState::default();
        assert_eq!(refit(&f, &mut state, &full.prefix(WEEKS_3)), Refit::Full);
        assert_eq!(
            refit(&f, &mut state, &full.prefix(WEEKS_3 + 1)),
            Refit::Incremental {
                slices_since_full: 1
            }
        );
        // Nothing new is an incremental refit of what is there.
        assert_eq!(
            refit(&f, &mut state, &full.prefix(WEEKS_3 + 1)),
            Refit::Incremental {
                slices_since_full: 1
            }
        );
        assert_eq!(
            refit(&f, &mut state, &full.prefix(WEEKS_3 + 3)),
            Refit::Incremental {
                slices_since_full: 3
            }
        );
    }

    #[test]
    fn a_full_refit_comes_every_full_refit_every_slices() {
        let f = forecaster();
        let every = f.config().full_refit_every_slices;
        assert_eq!(every, 6, "a quarter of a 24-slice day");
        let full = series(WEEKS_3 + 2 * every);
        let mut state = SeriesState::default();
        let kinds: Vec<Refit> = (0..=2 * every)
            .map(|k| refit(&f, &mut state, &full.prefix(WEEKS_3 + k)))
            .collect();
        let full_at: Vec<usize> = (0..kinds.len())
            .filter(|&k| kinds[k] == Refit::Full)
            .collect();
        assert_eq!(full_at, vec![0, every, 2 * every], "{kinds:?}");
        assert_eq!(
            kinds[every - 1],
            Refit::Incremental {
                slices_since_full: every - 1
            }
        );
        // Two new slices at once count as two.
        let mut state = SeriesState::default();
        refit(&f, &mut state, &full.prefix(WEEKS_3));
        refit(&f, &mut state, &full.prefix(WEEKS_3 + every - 2));
        assert_eq!(
            refit(&f, &mut state, &full.prefix(WEEKS_3 + every)),
            Refit::Full
        );
    }

    #[test]
    fn every_forecast_refits_in_full_at_one_slice_and_zero_is_refused() {
        let mut config = ForecastConfig::for_slice_secs(SLICE_SECS);
        config.full_refit_every_slices = 0;
        let e = Forecaster::new(config.clone(), EventCalendar::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("full_refit_every_slices must be at least 1"),
            "{e}"
        );
        config.full_refit_every_slices = 1;
        let f = Forecaster::new(config, EventCalendar::default()).unwrap();
        let full = series(WEEKS_3 + 1);
        let mut state = SeriesState::default();
        refit(&f, &mut state, &full.prefix(WEEKS_3));
        assert_eq!(refit(&f, &mut state, &full), Refit::Full);
    }

    #[test]
    fn a_rewritten_or_shortened_history_refits_in_full() {
        let (f, full) = (forecaster(), series(WEEKS_3 + 2));
        let fitted = full.prefix(WEEKS_3);
        // The last fitted slice's value changed (a late correction of the history).
        let mut state = SeriesState::default();
        refit(&f, &mut state, &fitted);
        let mut rewritten = full.prefix(WEEKS_3 + 1);
        rewritten.values[WEEKS_3 - 1] += 1.0;
        assert_eq!(refit(&f, &mut state, &rewritten), Refit::Full);
        // The history ends before the last fitted slice.
        let mut state = SeriesState::default();
        refit(&f, &mut state, &fitted);
        assert_eq!(
            refit(&f, &mut state, &full.prefix(WEEKS_3 - 1)),
            Refit::Full
        );
        // A history whose start moved on (a source's fixed window) is not rewritten.
        let mut state = SeriesState::default();
        refit(&f, &mut state, &fitted);
        let mut window = full.prefix(WEEKS_3 + 1);
        window.values.remove(0);
        window.start += chrono::Duration::seconds(i64::from(SLICE_SECS));
        assert_eq!(
            refit(&f, &mut state, &window),
            Refit::Incremental {
                slices_since_full: 1
            }
        );
    }

    #[test]
    fn another_slice_width_or_other_seasons_refit_in_full() {
        let (f, full) = (forecaster(), series(WEEKS_3 + 1));
        let mut state = SeriesState::default();
        refit(&f, &mut state, &full.prefix(WEEKS_3));
        let mut wider = series(WEEKS_3 / 2);
        wider.slice_secs = 2 * SLICE_SECS;
        let f2 = Forecaster::new(
            ForecastConfig::for_slice_secs(2 * SLICE_SECS),
            EventCalendar::default(),
        )
        .unwrap();
        assert_eq!(refit(&f2, &mut state, &wider), Refit::Full);
        // Same slices, other seasons.
        let mut state = SeriesState::default();
        refit(&f, &mut state, &full.prefix(WEEKS_3));
        let other = Forecaster::new(
            ForecastConfig::for_seasons(Seasons {
                daily: 12,
                weekly: 84,
            }),
            EventCalendar::default(),
        )
        .unwrap();
        assert_eq!(refit(&other, &mut state, &full), Refit::Full);
    }

    #[test]
    fn a_model_short_of_history_at_the_full_refit_refits_in_full_once_it_has_enough() {
        let f = forecaster();
        // 168 slices: the weekly naive needs 169.
        let full = series(170);
        let mut state = SeriesState::default();
        assert_eq!(refit(&f, &mut state, &full.prefix(168)), Refit::Full);
        assert_eq!(refit(&f, &mut state, &full.prefix(169)), Refit::Full);
        assert_eq!(
            refit(&f, &mut state, &full.prefix(170)),
            Refit::Incremental {
                slices_since_full: 1
            }
        );
        // Two weeks: MSTL can estimate the weekly season too.
        let full = series(2 * 168);
        let mut state = SeriesState::default();
        refit(&f, &mut state, &full.prefix(2 * 168 - 1));
        assert_eq!(refit(&f, &mut state, &full), Refit::Full);
    }

    #[test]
    fn a_model_that_failed_refits_in_full() {
        let (f, full) = (forecaster(), series(WEEKS_3 + 1));
        let mut state = SeriesState::default();
        refit(&f, &mut state, &full.prefix(WEEKS_3));
        let cache = state.fit.as_mut().unwrap();
        let singles: Vec<ModelKind> = cache.models.keys().copied().collect();
        let config = f.config();
        let calendar = EventCalendar::default();
        assert_eq!(
            cache.new_slices(&full, &singles, config, &calendar),
            Some(1)
        );
        cache.models.insert(ModelKind::MstlEts, ModelFit::Failed);
        assert_eq!(cache.new_slices(&full, &singles, config, &calendar), None);
        assert_eq!(refit(&f, &mut state, &full), Refit::Full);
    }

    #[test]
    fn a_declared_event_over_a_new_slice_refits_in_full() {
        let full = series(WEEKS_3 + 1);
        let event = Event {
            name: "campaign".into(),
            start: full.slice_start(WEEKS_3),
            end: full.slice_start(WEEKS_3 + 4),
            scale: Some(2.0),
            value: None,
        };
        let f = Forecaster::new(
            ForecastConfig::for_slice_secs(SLICE_SECS),
            EventCalendar::new(vec![event]).unwrap(),
        )
        .unwrap();
        let mut state = SeriesState::default();
        refit(&f, &mut state, &full.prefix(WEEKS_3));
        assert_eq!(refit(&f, &mut state, &full), Refit::Full);
    }

    #[test]
    fn an_incremental_forecast_stays_close_to_a_full_one() {
        let f = forecaster();
        let new = f.config().full_refit_every_slices - 1;
        let full = series(WEEKS_3 + new);
        let mut state = SeriesState::default();
        refit(&f, &mut state, &full.prefix(WEEKS_3));
        let incremental = f.forecast(&mut state, &full, HORIZON, &mut || 0.0).unwrap();
        assert_eq!(
            incremental.chosen.refit,
            Refit::Incremental {
                slices_since_full: new
            }
        );
        let refitted = f
            .forecast(&mut SeriesState::default(), &full, HORIZON, &mut || 0.0)
            .unwrap();
        assert_eq!(refitted.chosen.refit, Refit::Full);
        let level = full.values.iter().sum::<f64>() / full.len() as f64;
        for (a, b) in incremental.candidates.iter().zip(&refitted.candidates) {
            assert_eq!(a.model, b.model);
            let gap = (0..HORIZON)
                .map(|s| (a.mean(s) - b.mean(s)).abs())
                .sum::<f64>()
                / HORIZON as f64;
            // The seasonal naives see the same slices either way; MSTL's seasons move a little.
            assert!(
                gap < 0.03 * level,
                "{}: mean gap {gap:.2} at a level of {level:.1}",
                a.model.name()
            );
        }
    }
}
