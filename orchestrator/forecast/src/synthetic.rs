//! A seeded synthetic demand set for forecast benchmarks: request rates of one service in
//! three regions at 5-minute slices over six weeks, with what real traffic has and the
//! Taylor series lacks. Daily peaks follow the sun (each region's shape is in its local
//! time), weekends dip, demand grows slowly, each day's level wanders, and the slices are
//! noisy. Two events a forecaster must survive: a one-day holiday dip of about −45 % in the
//! training window (weeks 3–4, a weekday) and a three-hour campaign spike of about +120 % in
//! the test window (the last two weeks). Every property that varies is drawn from the seed,
//! so three seeds are three different series, not one series with different noise.
//!
//! The benchmark binary `benches/synthetic.rs` writes it as CSV and scores Umbra on it; the
//! events are returned too, so a benchmark can declare them in an event calendar.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::history::{DemandSeries, SeriesKey};

/// Slice width of the synthetic series (5 minutes).
pub const SLICE_SECS: u32 = 300;
/// Days of history.
pub const DAYS: usize = 42;
/// Days at the end that hold the test origins (14 daily origins, horizon one day).
pub const TEST_DAYS: usize = 14;
/// Service name of every synthetic series.
pub const SERVICE: &str = "shop";

/// A region: its name, its offset from UTC (hours) and its base demand (requests per second).
const REGIONS: [(&str, i64, f64); 3] = [
    ("us-east", -5, 900.0),
    ("eu-west", 1, 650.0),
    ("ap-southeast", 8, 420.0),
];

/// An event the generator put into a series.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticEvent {
    pub name: &'static str,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// The factor demand was multiplied by inside the window.
    pub scale: f64,
}

/// One region's series and its events.
#[derive(Debug, Clone)]
pub struct SyntheticSeries {
    pub series: DemandSeries,
    /// The holiday (training window) and the campaign (test window).
    pub events: Vec<SyntheticEvent>,
}

/// First slice of every synthetic series: a Monday, midnight UTC.
pub fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 9, 7, 0, 0, 0).unwrap()
}

/// A standard normal draw.
fn normal(rng: &mut StdRng) -> f64 {
    rng.sample(StandardNormal)
}

/// A smooth bump around `centre` hours with width `width` hours, on a 24-hour circle.
fn bump(hour: f64, centre: f64, width: f64) -> f64 {
    let d = (hour - centre + 36.0).rem_euclid(24.0) - 12.0;
    (-0.5 * (d / width).powi(2)).exp()
}

/// The three regions' series for `seed`.
pub fn generate(seed: u64) -> Vec<SyntheticSeries> {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = start();
    let per_day = (86_400 / SLICE_SECS) as usize;
    let n = DAYS * per_day;
    REGIONS
        .iter()
        .map(|&(region, utc_offset, base)| {
            let base = base * rng.random_range(0.8..1.25);
            // Two peaks a day in local time (late morning and evening) of seeded size and hour.
            let morning = rng.random_range(9.5..12.0);
            let evening = rng.random_range(18.5..21.5);
            let evening_weight = rng.random_range(0.6..1.1);
            let trough = rng.random_range(0.18..0.32);
            let saturday = rng.random_range(0.62..0.78);
            let sunday = rng.random_range(0.55..0.72);
            let growth_per_day = rng.random_range(0.002..0.005);
            // The holiday: a weekday (local) in days 14..27, the two weeks before the first
            // test origin; the campaign: three hours of a local afternoon or evening in the test
            // window, not on its first day (so it is a surprise to at least one origin).
            let holiday_day = loop {
                let d = rng.random_range(14..28usize);
                if d % 7 < 5 {
                    break d;
                }
            };
            let holiday_scale = 1.0 - rng.random_range(0.40..0.50);
            let campaign_day = rng.random_range(DAYS - TEST_DAYS + 1..DAYS);
            let campaign_hour = rng.random_range(12..19) as f64;
            let campaign_scale = 1.0 + rng.random_range(1.1..1.3);
            let local = |day: usize, hour: f64| {
                start + Duration::days(day as i64) + Duration::minutes((hour * 60.0) as i64)
                    - Duration::hours(utc_offset)
            };
            let holiday = SyntheticEvent {
                name: "holiday",
                start: local(holiday_day, 0.0),
                end: local(holiday_day + 1, 0.0),
                scale: holiday_scale,
            };
            let campaign = SyntheticEvent {
                name: "campaign",
                start: local(campaign_day, campaign_hour),
                end: local(campaign_day, campaign_hour + 3.0),
                scale: campaign_scale,
            };
            let peak = (0..240)
                .map(|i| {
                    let h = i as f64 / 10.0;
                    bump(h, morning, 2.5) + evening_weight * bump(h, evening, 2.0)
                })
                .fold(0.0, f64::max);
            let mut day_level = 0.0;
            let mut slow = 0.0;
            let mut values = Vec::with_capacity(n);
            for i in 0..n {
                let at = start + Duration::seconds(i as i64 * i64::from(SLICE_SECS));
                let local_at = at + Duration::hours(utc_offset);
                let hour = f64::from(local_at.hour()) + f64::from(local_at.minute()) / 60.0;
                if i % per_day == 0 {
                    // Each day's level wanders a little (weather, news), persistently.
                    day_level = 0.6 * day_level + 0.03 * normal(&mut rng);
                }
                slow = 0.97 * slow + 0.012 * normal(&mut rng);
                let shape = trough
                    + (1.0 - trough)
                        * (bump(hour, morning, 2.5) + evening_weight * bump(hour, evening, 2.0))
                        / peak;
                let weekend = match local_at.weekday().num_days_from_monday() {
                    5 => saturday,
                    6 => sunday,
                    _ => 1.0,
                };
                let days = i as f64 / per_day as f64;
                let mut v = base * shape * weekend * (1.0 + growth_per_day * days);
                v *= (day_level + slow).exp();
                for e in [&holiday, &campaign] {
                    if e.start <= at && at < e.end {
                        v *= e.scale;
                    }
                }
                // Slice noise: a few percent, plus counting noise at low rates.
                v *= 1.0 + 0.035 * normal(&mut rng);
                v += v.max(0.0).sqrt() * 0.5 * normal(&mut rng);
                values.push((v.max(0.0) * 1000.0).round() / 1000.0);
            }
            SyntheticSeries {
                series: DemandSeries {
                    key: SeriesKey::new(SERVICE, region),
                    start,
                    slice_secs: SLICE_SECS,
                    values,
                },
                events: vec![holiday, campaign],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_six_weeks_of_three_regions_with_the_events_where_promised() {
        let a = generate(1);
        assert_eq!(a.len(), 3);
        let b = generate(1);
        assert_eq!(
            a[0].series.values, b[0].series.values,
            "same seed, same data"
        );
        assert_ne!(a[0].series.values, generate(2)[0].series.values);
        let test_start = start() + Duration::days((DAYS - TEST_DAYS) as i64);
        for s in &a {
            assert_eq!(s.series.len(), DAYS * 288);
            assert!(s.series.values.iter().all(|v| v.is_finite() && *v >= 0.0));
            let holiday = &s.events[0];
            let campaign = &s.events[1];
            assert!(holiday.end <= test_start, "holiday in the training window");
            assert!(campaign.start >= test_start, "campaign in the test window");
            assert_eq!((campaign.end - campaign.start).num_hours(), 3);
            assert!((0.5..=0.6).contains(&holiday.scale));
            assert!((2.1..=2.3).contains(&campaign.scale));
        }
    }
}
