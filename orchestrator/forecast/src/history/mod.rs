//! Demand history: one regular time series per (service, region) at a fixed slice width,
//! built from raw observations (a CSV file or a Prometheus range query) by bucketing them into
//! slices, merging duplicates and filling short gaps. Every repair is counted in a
//! [`HistoryReport`] so that callers can show it; nothing is silently dropped. Longer gaps
//! than the configured limit are an error, because a forecast fitted across a day of
//! invented data would be worse than no forecast. This module does no I/O; the sources
//! (`csv_source`, `prometheus`) do.

pub mod csv_source;
pub mod prometheus;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

/// Default slice width: 5 minutes, the planning granularity in DESIGN.md (short enough for
/// a 2-minute launch delay to matter, long enough to smooth per-second noise).
pub const DEFAULT_SLICE_SECS: u32 = 300;

/// Default longest gap that is filled by interpolation: 2 hours. Longer outages of the
/// metrics pipeline are reported as errors rather than papered over.
pub const DEFAULT_MAX_GAP_SECS: u32 = 2 * 3600;

/// Which series: a service in a region.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SeriesKey {
    pub service: String,
    pub region: String,
}

impl SeriesKey {
    pub fn new(service: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            region: region.into(),
        }
    }
}

impl fmt::Display for SeriesKey {
    /// `service/region`, the `unique_id` of the forecast CSV.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.region)
    }
}

/// One raw observation before bucketing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub at: DateTime<Utc>,
    pub value: f64,
}

/// How raw observations become a regular series.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryConfig {
    /// Width of one slice in seconds.
    pub slice_secs: u32,
    /// Longest run of missing slices (in seconds) that is filled by linear interpolation.
    pub max_gap_secs: u32,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            slice_secs: DEFAULT_SLICE_SECS,
            max_gap_secs: DEFAULT_MAX_GAP_SECS,
        }
    }
}

impl HistoryConfig {
    pub fn validate(&self) -> Result<(), HistoryError> {
        if self.slice_secs == 0 || 86_400 % self.slice_secs != 0 {
            return Err(HistoryError::Config(format!(
                "slice width {} s must be positive and divide a day (86400 s) evenly, e.g. 300 or 1800",
                self.slice_secs
            )));
        }
        Ok(())
    }
}

/// What was repaired while building a series.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HistoryReport {
    /// Observations read.
    pub observations: usize,
    /// Observations that fell into a slice that already had one (merged by averaging).
    pub duplicates: usize,
    /// Missing slices filled by linear interpolation.
    pub filled_slices: usize,
    /// Each filled gap: first missing slice (RFC 3339) and how many slices were missing.
    pub gaps: Vec<(String, usize)>,
    /// Observations that were not finite numbers (NaN, ±Inf) and were treated as missing.
    pub non_finite: usize,
}

impl HistoryReport {
    pub fn is_clean(&self) -> bool {
        self.duplicates == 0 && self.filled_slices == 0 && self.non_finite == 0
    }
}

/// A regular demand series: `values[i]` is the demand of the slice starting at
/// `start + i * slice_secs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemandSeries {
    pub key: SeriesKey,
    pub start: DateTime<Utc>,
    pub slice_secs: u32,
    pub values: Vec<f64>,
}

impl DemandSeries {
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Start of slice `index` (which may be past the end, for forecast slices).
    pub fn slice_start(&self, index: usize) -> DateTime<Utc> {
        self.start + chrono::Duration::seconds(index as i64 * i64::from(self.slice_secs))
    }

    /// The first `len` slices, as a new series (used by backtests: "all data before the origin").
    pub fn prefix(&self, len: usize) -> DemandSeries {
        DemandSeries {
            key: self.key.clone(),
            start: self.start,
            slice_secs: self.slice_secs,
            values: self.values[..len.min(self.values.len())].to_vec(),
        }
    }
}

/// Errors while building a series.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("invalid history configuration: {0}")]
    Config(String),
    #[error("series {key}: no observations; check the service/region names or the query")]
    Empty { key: SeriesKey },
    #[error(
        "series {key}: a gap of {missing} slices ({secs} s) starting {from} is longer than the \
         {max_secs} s that may be interpolated; fill the data, raise --max-gap-secs, or start \
         the history after the gap"
    )]
    GapTooLong {
        key: SeriesKey,
        from: String,
        missing: usize,
        secs: u64,
        max_secs: u32,
    },
    #[error("series {key}: slice {at} is outside the range of timestamps this program handles")]
    OutOfRange { key: SeriesKey, at: String },
}

/// The data's own slice width: the median spacing, in whole seconds, between consecutive
/// distinct timestamps of `observations` (in any order). The median, not the minimum, so a
/// few duplicated or jittered rows and a few gaps do not change it. `None` with fewer than two
/// distinct timestamps. Callers still check the width with [`HistoryConfig::validate`].
pub fn median_spacing_secs(observations: &[Observation]) -> Option<u32> {
    let mut times: Vec<i64> = observations.iter().map(|o| o.at.timestamp()).collect();
    times.sort_unstable();
    times.dedup();
    let mut spacings: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    if spacings.is_empty() {
        return None;
    }
    let middle = (spacings.len() - 1) / 2;
    let (_, median, _) = spacings.select_nth_unstable(middle);
    u32::try_from(*median).ok()
}

/// Gaps a report filled, in one line's worth: how many and how long in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GapSummary {
    /// Gaps filled by interpolation.
    pub count: usize,
    /// Slices they held.
    pub slices: usize,
    /// Their total length in seconds.
    pub total_secs: u64,
}

impl HistoryReport {
    /// The filled gaps summed up, for slices of `slice_secs`.
    pub fn gap_summary(&self, slice_secs: u32) -> GapSummary {
        GapSummary {
            count: self.gaps.len(),
            slices: self.filled_slices,
            total_secs: self.filled_slices as u64 * u64::from(slice_secs),
        }
    }
}

/// Bucket observations into slices of `config.slice_secs` (floor of the timestamp), average
/// duplicates, interpolate gaps up to `config.max_gap_secs`, and report what was done.
pub fn build_series(
    key: SeriesKey,
    observations: &[Observation],
    config: &HistoryConfig,
) -> Result<(DemandSeries, HistoryReport), HistoryError> {
    config.validate()?;
    let slice = i64::from(config.slice_secs);
    let mut report = HistoryReport {
        observations: observations.len(),
        ..HistoryReport::default()
    };
    // slice index (seconds since epoch / slice) -> (sum, count)
    let mut buckets: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
    for obs in observations {
        if !obs.value.is_finite() {
            report.non_finite += 1;
            continue;
        }
        let bucket = obs.at.timestamp().div_euclid(slice);
        let entry = buckets.entry(bucket).or_insert((0.0, 0));
        if entry.1 > 0 {
            report.duplicates += 1;
        }
        entry.0 += obs.value;
        entry.1 += 1;
    }
    let (Some(&first), Some(&last)) = (buckets.keys().next(), buckets.keys().next_back()) else {
        return Err(HistoryError::Empty { key });
    };
    let len = (last - first + 1) as usize;
    let mut values = vec![f64::NAN; len];
    for (&bucket, &(sum, count)) in &buckets {
        values[(bucket - first) as usize] = sum / count as f64;
    }
    let start = Utc
        .timestamp_opt(first * slice, 0)
        .single()
        .ok_or_else(|| HistoryError::OutOfRange {
            key: key.clone(),
            at: first.to_string(),
        })?;
    let max_missing = (config.max_gap_secs / config.slice_secs) as usize;
    let mut i = 0;
    while i < len {
        if !values[i].is_nan() {
            i += 1;
            continue;
        }
        // values[0] and values[len-1] are present by construction, so a gap has both ends.
        let gap_start = i;
        while values[i].is_nan() {
            i += 1;
        }
        let missing = i - gap_start;
        let from = (start + chrono::Duration::seconds(gap_start as i64 * slice)).to_rfc3339();
        if missing > max_missing {
            return Err(HistoryError::GapTooLong {
                key,
                from,
                missing,
                secs: missing as u64 * config.slice_secs as u64,
                max_secs: config.max_gap_secs,
            });
        }
        let before = values[gap_start - 1];
        let after = values[i];
        for (k, v) in values[gap_start..i].iter_mut().enumerate() {
            let t = (k + 1) as f64 / (missing + 1) as f64;
            *v = before + (after - before) * t;
        }
        report.filled_slices += missing;
        report.gaps.push((from, missing));
    }
    Ok((
        DemandSeries {
            key,
            start,
            slice_secs: config.slice_secs,
            values,
        },
        report,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    #[test]
    fn duplicates_are_averaged_and_gaps_interpolated() {
        let obs = [
            Observation {
                at: at(0),
                value: 10.0,
            },
            Observation {
                at: at(60),
                value: 20.0,
            }, // same 300 s slice: duplicate
            Observation {
                at: at(900),
                value: 45.0,
            }, // slices 1 and 2 missing
        ];
        let (series, report) =
            build_series(SeriesKey::new("s", "r"), &obs, &HistoryConfig::default()).unwrap();
        assert_eq!(series.values, vec![15.0, 25.0, 35.0, 45.0]);
        assert_eq!(report.duplicates, 1);
        assert_eq!(report.filled_slices, 2);
        assert_eq!(
            report.gaps,
            vec![("1970-01-01T00:05:00+00:00".to_string(), 2)]
        );
    }

    #[test]
    fn median_spacing_is_the_datas_slice_width() {
        let every = |secs: i64, n: i64| -> Vec<Observation> {
            (0..n)
                .map(|i| Observation {
                    at: at(i * secs),
                    value: 1.0,
                })
                .collect()
        };
        assert_eq!(median_spacing_secs(&every(1800, 48)), Some(1800));
        // A duplicated row, a missing one and unsorted input leave the median alone.
        let mut obs = every(300, 20);
        obs.remove(7);
        obs.push(obs[3]);
        obs.reverse();
        assert_eq!(median_spacing_secs(&obs), Some(300));
        assert_eq!(median_spacing_secs(&every(60, 1)), None);
        assert_eq!(median_spacing_secs(&[]), None);
    }

    #[test]
    fn long_gap_is_an_error() {
        let obs = [
            Observation {
                at: at(0),
                value: 1.0,
            },
            Observation {
                at: at(86_400),
                value: 1.0,
            },
        ];
        let err = build_series(SeriesKey::new("s", "r"), &obs, &HistoryConfig::default());
        assert!(
            matches!(err, Err(HistoryError::GapTooLong { .. })),
            "{err:?}"
        );
    }
}
