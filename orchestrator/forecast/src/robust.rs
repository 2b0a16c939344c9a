//! Robust training: what a forecast is fitted on is the history with its one-off days
//! adjusted out. Two sources. Declared past events of the calendar: a scaled window is divided
//! by its scale, an overridden one (`value`) is replaced. Detected anomalies: the history is
//! decomposed once (MSTL, the seasons the model uses), the remainder is taken relative to the
//! fitted level and smoothed over an hour, and the hours further than
//! [`ANOMALY_THRESHOLD`] robust deviations (median absolute deviation) from its median are
//! replaced, with an hour of margin either side, by the decomposition's trend + seasons. A
//! holiday at −45 % or a campaign hour at +120 % is then not copied into next week by the
//! seasonal components, nor into the level by ETS. The last [`RECENT_UNTOUCHED_DAY_FRACTION`]
//! of a day is never adjusted for an anomaly: a shift that is still going on may be the new
//! level, and the forecast must follow it.
//!
//! Future events still apply to the forecast as before (`calendar`); this module only makes
//! the past look like an ordinary past.

use crate::Seasons;
use crate::calendar::SliceAdjustment;
use crate::models::{Decomposition, decompose, mstl_periods};

/// Robust deviations (MAD × 1.4826) of the hourly-smoothed relative remainder beyond which an
/// hour is an anomaly. Ordinary days of the synthetic benchmark stay below 3.5; its holiday
/// (−45 %) is about 15 and its campaign (+120 %) about 40.
pub const ANOMALY_THRESHOLD: f64 = 5.0;
/// Smallest hourly relative deviation from the fitted level that can be an anomaly (10 %): on a
/// nearly noiseless series the robust deviation is close to zero, and rounding must not count.
pub const MIN_ANOMALY_DEVIATION: f64 = 0.10;
/// The fraction of a day at the end of the history never adjusted for an anomaly.
pub const RECENT_UNTOUCHED_DAY_FRACTION: f64 = 0.25;

/// The history a model is fitted on, and what was adjusted.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingHistory {
    pub values: Vec<f64>,
    /// Slices adjusted because a declared event covered them.
    pub declared_slices: usize,
    /// Slices replaced because they were detected as anomalies.
    pub anomaly_slices: usize,
    /// The decomposition of `values` itself, when nothing was adjusted (the forecast reuses
    /// it instead of decomposing the same history again).
    pub decomposition: Option<Decomposition>,
}

impl TrainingHistory {
    /// All slices adjusted.
    pub fn adjusted_slices(&self) -> usize {
        self.declared_slices + self.anomaly_slices
    }
}

/// `history` with the declared events (`declared[i]` is the calendar's adjustment of slice
/// `i`, shorter than the history for none) and the detected anomalies adjusted out.
pub fn training_history(
    history: &[f64],
    declared: &[SliceAdjustment],
    seasons: Seasons,
) -> TrainingHistory {
    let mut values = history.to_vec();
    // Declared events first: a scale is undone exactly; an override leaves a hole that the
    // decomposition fills like an anomaly.
    let mut replace = vec![false; values.len()];
    let mut declared_slices = 0;
    for (i, adjustment) in declared.iter().enumerate().take(values.len()) {
        if adjustment.event.is_none() {
            continue;
        }
        declared_slices += 1;
        match adjustment.value {
            Some(_) => replace[i] = true,
            None if adjustment.scale > 0.0 => values[i] /= adjustment.scale,
            None => replace[i] = true,
        }
    }
    let periods = mstl_periods(seasons, values.len());
    if periods.is_empty() {
        return TrainingHistory {
            values,
            declared_slices,
            anomaly_slices: 0,
            decomposition: None,
        };
    }
    let Some(decomposition) = fitted_level(&values, &replace, &periods) else {
        return TrainingHistory {
            values,
            declared_slices,
            anomaly_slices: 0,
            decomposition: None,
        };
    };
    let fitted: Vec<f64> = (0..values.len()).map(|i| decomposition.fitted(i)).collect();
    let hour = (seasons.daily / 24).max(1);
    let anomalies = detect(&values, &fitted, &replace, hour);
    let untouched_from = values.len()
        - ((seasons.daily as f64 * RECENT_UNTOUCHED_DAY_FRACTION) as usize).min(values.len());
    let suspects = |anomalies: &[bool]| {
        let mut holes = replace.clone();
        for i in 0..untouched_from {
            holes[i] |= anomalies[i];
        }
        holes
    };
    let mut holes = suspects(&anomalies);
    let mut fitted = fitted;
    if holes != replace {
        // The first decomposition spread part of each anomaly into its trend and seasons (so
        // the same hours a week away look anomalous too). A second one, fitted with the
        // suspects filled from the nearest ordinary slice a week or a day away, is the clean
        // level: the anomalies are what still stands out from it, and it replaces them.
        if let Some(d) = fitted_level(&values, &holes, &periods) {
            fitted = (0..values.len()).map(|i| d.fitted(i)).collect();
            holes = suspects(&detect(&values, &fitted, &replace, hour));
        }
    }
    let anomaly_slices = holes
        .iter()
        .zip(&replace)
        .filter(|(h, r)| **h && !**r)
        .count();
    for i in 0..values.len() {
        if holes[i] {
            values[i] = fitted[i].max(0.0);
        }
    }
    let unchanged = declared_slices == 0 && anomaly_slices == 0;
    TrainingHistory {
        values,
        declared_slices,
        anomaly_slices,
        decomposition: unchanged.then_some(decomposition),
    }
}

/// Trend + seasons of an MSTL decomposition of `values`, with the slices in `holes` first
/// filled by the same slice a week (or a day) earlier or later, so that a shutdown does not
/// drag the seasons down.
fn fitted_level(values: &[f64], holes: &[bool], periods: &[usize]) -> Option<Decomposition> {
    if !holes.iter().any(|&h| h) {
        return decompose(values, periods).ok();
    }
    let mut y = values.to_vec();
    let n = y.len();
    for i in (0..n).filter(|&i| holes[i]) {
        // The nearest slice whole weeks away that is not itself a hole, else whole days.
        let found = periods.iter().rev().find_map(|&period| {
            (1..=n / period)
                .flat_map(|k| [i.checked_sub(k * period), Some(i + k * period)])
                .flatten()
                .find(|&j| j < n && !holes[j])
        });
        if let Some(j) = found {
            y[i] = values[j];
        }
    }
    decompose(&y, periods).ok()
}

/// Slices inside an anomalous hour (with an hour of margin either side).
fn detect(values: &[f64], fitted: &[f64], skip: &[bool], hour: usize) -> Vec<bool> {
    let n = values.len();
    let floor = fitted.iter().map(|f| f.abs()).sum::<f64>() / n.max(1) as f64 * 0.05;
    let relative: Vec<f64> = values
        .iter()
        .zip(fitted)
        .map(|(v, f)| (v - f) / f.abs().max(floor).max(f64::EPSILON))
        .collect();
    // Centred moving average over an hour: a level that holds for an hour, not one slice.
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    for r in &relative {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + r);
    }
    let half = hour / 2;
    let smoothed: Vec<f64> = (0..n)
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + hour - half).min(n);
            (prefix[hi] - prefix[lo]) / (hi - lo) as f64
        })
        .collect();
    let mut usable: Vec<f64> = smoothed
        .iter()
        .zip(skip)
        .filter(|(_, s)| !**s)
        .map(|(v, _)| *v)
        .collect();
    if usable.len() < 2 * hour {
        return vec![false; n];
    }
    let centre = median(&mut usable);
    let mut deviations: Vec<f64> = usable.iter().map(|v| (v - centre).abs()).collect();
    let mad = median(&mut deviations) * 1.4826;
    if !mad.is_finite() {
        return vec![false; n];
    }
    let threshold = (ANOMALY_THRESHOLD * mad).max(MIN_ANOMALY_DEVIATION);
    let mut out = vec![false; n];
    for (i, v) in smoothed.iter().enumerate() {
        if (v - centre).abs() > threshold {
            let lo = i.saturating_sub(hour);
            let hi = (i + hour + 1).min(n);
            out[lo..hi].iter_mut().for_each(|o| *o = true);
        }
    }
    out
}

fn median(v: &mut [f64]) -> f64 {
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    *m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three weeks of a 24-slice day with a clean daily shape and a little noise.
    fn series() -> Vec<f64> {
        (0..21 * 24)
            .map(|i| {
                let h = (i % 24) as f64;
                let wobble = ((i * 7919) % 13) as f64 / 13.0 - 0.5;
                100.0 + 50.0 * (h / 24.0 * std::f64::consts::TAU).sin() + 2.0 * wobble
            })
            .collect()
    }

    const SEASONS: Seasons = Seasons {
        daily: 24,
        weekly: 168,
    };

    #[test]
    fn a_holiday_is_replaced_and_ordinary_days_are_left_alone() {
        let clean = series();
        let untouched = training_history(&clean, &[], SEASONS);
        assert_eq!(untouched.adjusted_slices(), 0, "no anomaly in plain data");
        let mut holiday = clean.clone();
        holiday[240..264].iter_mut().for_each(|v| *v *= 0.55);
        let trained = training_history(&holiday, &[], SEASONS);
        assert!(trained.anomaly_slices >= 24, "{}", trained.anomaly_slices);
        for (i, (got, want)) in trained.values.iter().zip(&clean).enumerate().skip(240) {
            if i < 264 {
                assert!(
                    (got - want).abs() < 0.15 * want,
                    "slice {i}: {got} vs {want}"
                );
            }
        }
        // The same hours a week away are ordinary and stay as they were.
        assert_eq!(trained.values[72..96], holiday[72..96]);
    }

    #[test]
    fn declared_scales_are_undone_and_the_newest_hours_are_kept() {
        let clean = series();
        let mut campaign = clean.clone();
        campaign[100..103].iter_mut().for_each(|v| *v *= 2.0);
        let mut declared = vec![SliceAdjustment::NONE; 103];
        for d in &mut declared[100..103] {
            d.event = Some("campaign".into());
            d.scale = 2.0;
        }
        let trained = training_history(&campaign, &declared, SEASONS);
        assert_eq!(trained.declared_slices, 3);
        assert!((trained.values[101] - clean[101]).abs() < 1e-9);
        // The same jump in the last hours is the newest data, not an anomaly.
        let mut recent = clean.clone();
        let n = recent.len();
        recent[n - 3..].iter_mut().for_each(|v| *v *= 2.0);
        let trained = training_history(&recent, &[], SEASONS);
        assert_eq!(trained.values[n - 3..], recent[n - 3..]);
    }
}
