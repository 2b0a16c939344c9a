//! The demo's synthetic demand history: two weeks per region whose daily peak follows the sun
//! (each region peaks in its own early afternoon, local time), with a weekend dip and seeded
//! noise, so the executor's forecast-based sizing has realistic, reproducible input. Written
//! as long-form CSV (`timestamp,service,region,value`), the format `demand::csv_source` reads.
//!
//! This module only computes series and writes files; it must not decide pool sizes (that is
//! `executor::shadow_sizing` on the leader, from what this wrote).

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Duration, Timelike, Utc, Weekday};
use rand::{Rng, SeedableRng};

use umbra_forecast::history::{DemandSeries, SeriesKey};

/// Two weeks: the shortest history that shows the weekly season twice, which the forecaster
/// needs before it trusts a weekly pattern.
pub const DEFAULT_HISTORY_DAYS: u32 = 14;
/// Width of the history's slices: five minutes, the demand module's default slice.
pub const DEFAULT_SLICE_SECS: u32 = umbra_forecast::history::DEFAULT_SLICE_SECS;
/// Width (standard deviation, hours) of the daily peak: about a working afternoon.
const PEAK_WIDTH_HOURS: f64 = 3.0;
/// Weekend demand relative to a weekday's.
const WEEKEND_FACTOR: f64 = 0.8;
/// Relative noise on every slice (uniform ±).
const NOISE: f64 = 0.05;

/// One region's demand shape.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionDemand {
    /// Region name.
    pub region: String,
    /// UTC hour of the daily peak (fractional), e.g. 8.5 for ap-south's early afternoon.
    pub peak_hour_utc: f64,
    /// Requests per second at night.
    pub base_rps: f64,
    /// Requests per second at the peak of a weekday.
    pub peak_rps: f64,
}

impl RegionDemand {
    /// Mean demand (requests per second) at `at`, before noise.
    pub fn mean_rps(&self, at: DateTime<Utc>) -> f64 {
        let hour = f64::from(at.hour()) + f64::from(at.minute()) / 60.0;
        // Distance to the peak on the 24-hour circle, so a 23:00 peak is near 01:00.
        let raw = (hour - self.peak_hour_utc).rem_euclid(24.0);
        let distance = raw.min(24.0 - raw);
        let daily = (-(distance * distance) / (2.0 * PEAK_WIDTH_HOURS * PEAK_WIDTH_HOURS)).exp();
        let weekly = match at.weekday() {
            Weekday::Sat | Weekday::Sun => WEEKEND_FACTOR,
            _ => 1.0,
        };
        (self.base_rps + (self.peak_rps - self.base_rps) * daily) * weekly
    }
}

/// The demo's three regions, each peaking at about 13:30 local time: ap-south (IST, UTC+5:30)
/// at 08:00 UTC, eu-west (UTC+0/1) at 13:00 UTC, us-east (UTC−5) at 18:30 UTC.
pub fn demo_regions(base_rps: f64, peak_rps: f64) -> Vec<RegionDemand> {
    [("us-east", 18.5), ("eu-west", 13.0), ("ap-south", 8.0)]
        .into_iter()
        .map(|(region, peak_hour_utc)| RegionDemand {
            region: region.to_owned(),
            peak_hour_utc,
            base_rps,
            peak_rps,
        })
        .collect()
}

/// `days` of history for `service` in every region, ending at the slice boundary at or before
/// `end` (so the forecast's next slice is the current one). Deterministic for a `seed`.
pub fn follow_the_sun(
    service: &str,
    regions: &[RegionDemand],
    end: DateTime<Utc>,
    days: u32,
    slice_secs: u32,
    seed: u64,
) -> Vec<DemandSeries> {
    assert!(
        slice_secs > 0 && 86_400 % slice_secs == 0,
        "slices tile a day"
    );
    let slice = i64::from(slice_secs);
    let end_secs = end.timestamp().div_euclid(slice) * slice;
    let count = i64::from(days) * 86_400 / slice;
    let start = DateTime::<Utc>::from_timestamp(end_secs - count * slice, 0)
        .expect("two weeks before a valid time is valid");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    regions
        .iter()
        .map(|region| {
            let values = (0..count)
                .map(|k| {
                    let at = start + Duration::seconds(k * slice);
                    let noise = 1.0 + rng.random_range(-NOISE..=NOISE);
                    (region.mean_rps(at) * noise).max(0.0)
                })
                .collect();
            DemandSeries {
                key: SeriesKey::new(service, region.region.clone()),
                start,
                slice_secs,
                values,
            }
        })
        .collect()
}

/// Writes `series` as one long-form CSV file `demand.csv` in `dir`; returns its path.
pub fn write_csv(dir: &Path, series: &[DemandSeries]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("demand.csv");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    writeln!(out, "timestamp,service,region,value")?;
    for s in series {
        for (k, value) in s.values.iter().enumerate() {
            let at = s.start + Duration::seconds(k as i64 * i64::from(s.slice_secs));
            writeln!(
                out,
                "{},{},{},{value:.3}",
                at.format("%Y-%m-%dT%H:%M:%SZ"),
                s.key.service,
                s.key.region
            )?;
        }
    }
    out.flush()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_forecast::history::csv_source::read_csv;

    fn end() -> DateTime<Utc> {
        "2026-11-22T13:07:00Z".parse().unwrap()
    }

    #[test]
    fn each_region_peaks_in_its_own_afternoon_and_weekends_dip() {
        let series = follow_the_sun("shop", &demo_regions(20.0, 200.0), end(), 14, 300, 7);
        assert_eq!(series.len(), 3);
        for (s, expected_peak) in series.iter().zip([18.5, 13.0, 8.0]) {
            assert_eq!(s.values.len(), 14 * 288, "two weeks of five-minute slices");
            assert_eq!(
                s.start,
                "2026-11-08T13:05:00Z".parse::<DateTime<Utc>>().unwrap()
            );
            // Mean by hour of day over the two weeks: the busiest hour is the region's peak.
            let mut by_hour = [0.0; 24];
            for (k, v) in s.values.iter().enumerate() {
                let at = s.start + Duration::seconds(k as i64 * 300);
                by_hour[at.hour() as usize] += v;
            }
            let busiest = (0..24)
                .max_by(|a, b| by_hour[*a].total_cmp(&by_hour[*b]))
                .unwrap();
            assert!(
                (busiest as f64 - expected_peak).abs() <= 1.0,
                "{} peaks at {busiest}:00 UTC, expected about {expected_peak}",
                s.key.region
            );
            let max = s.values.iter().copied().fold(0.0, f64::max);
            let min = s.values.iter().copied().fold(f64::MAX, f64::min);
            assert!(max > 180.0 && max < 215.0, "peak {max}");
            assert!(min > 14.0 && min < 22.0, "night {min}");
        }
        let region = &demo_regions(20.0, 200.0)[1];
        let saturday: DateTime<Utc> = "2026-11-21T13:00:00Z".parse().unwrap();
        let friday: DateTime<Utc> = "2026-11-20T13:00:00Z".parse().unwrap();
        assert_eq!(region.mean_rps(saturday), 0.8 * region.mean_rps(friday));
    }

    #[test]
    fn the_same_seed_gives_the_same_history_and_the_csv_reads_back() {
        let regions = demo_regions(10.0, 100.0);
        let a = follow_the_sun("shop", &regions, end(), 2, 300, 42);
        assert_eq!(a, follow_the_sun("shop", &regions, end(), 2, 300, 42));
        assert_ne!(a, follow_the_sun("shop", &regions, end(), 2, 300, 43));
        let dir = tempfile::tempdir().unwrap();
        let path = write_csv(dir.path(), &a).unwrap();
        let read = read_csv(&path, None).unwrap();
        assert_eq!(read.len(), 3);
        for s in &a {
            let observations = &read[&s.key];
            assert_eq!(observations.len(), s.values.len());
            assert_eq!(observations[0].at, s.start);
            for (o, v) in observations.iter().zip(&s.values) {
                assert!((o.value - v).abs() < 0.001);
            }
        }
    }
}
