//! Forecasting and planning benchmarks (a bench binary, `harness = false`):
//!
//! 1. the issue's Taylor protocol (48-step horizon, 28 daily origins): fit + forecast time
//!    per origin, beside MASE and coverage;
//! 2. fit + forecast for one series of 4 weeks at 5-minute slices (8,064 points, seasons 288
//!    and 2,016), MSTL+ETS alone and the full candidate set;
//! 3. a planning cycle over 10,000 services × 10 regions: (a) refitting every series'
//!    forecast in full (robust training, every candidate, the choice) on rayon's pool over all
//!    cores, and then, one new slice later, refitting each incrementally (the full refit's
//!    seasons carried over, the level model refitted: `umbra_forecast::refit`), both measured
//!    in full for the 100,000 series, [`REFIT_CHUNK`] series at a time to bound the memory
//!    their states take (`--refit-series N` measures fewer, for a quick look; nothing is
//!    extrapolated); then, on [`ACCURACY_SERIES`] of them, how far the incremental forecast is
//!    from a full refit of the same history and how their errors on the next day compare;
//!    (b) sizing every series' next slice from its current forecast (what runs every slice),
//!    measured in full.
//!
//! Run: `cargo bench -p umbra-forecast --bench forecast [-- --refit-series N]`.
//! The 5-minute series are the Taylor series interpolated to 5 minutes, scaled and perturbed
//! by seeded noise per series, so every fit sees realistic daily and weekly shapes.

#[path = "common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use std::time::Instant;

use chrono::{TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use umbra_forecast::backtest::{BacktestConfig, CHOSEN_MODEL_NAME, run_backtest};
use umbra_forecast::calendar::EventCalendar;
use umbra_forecast::history::{DemandSeries, SeriesKey};
use umbra_forecast::models::fit_predict;
use umbra_forecast::simulate::resample_linear;
use umbra_forecast::sizing::{
    DEFAULT_HYSTERESIS, DEFAULT_LIMITS, InstanceProfile, PoolState, SizingPolicy, Tier,
};
use umbra_forecast::{DemandForecast, ForecastConfig, Forecaster, ModelKind, Refit, SeriesState};

const SERVICES: usize = 10_000;
const REGIONS: usize = 10;
const FIVE_MINUTES: u32 = 300;
/// Days of history each planning series is fitted on.
const DAYS: usize = 28;
/// Slices in a day at 5 minutes (the forecast horizon).
const DAY_SLICES: usize = 288;
/// Series refitted at a time: their states (recorded forecasts and fit caches, tens of
/// kilobytes each) are held from the full refit to the incremental one.
const REFIT_CHUNK: usize = 5_000;
/// Series on which the incremental forecast is compared with a full refit.
const ACCURACY_SERIES: usize = 200;

/// 30 days at 5-minute slices: the last 30 days of Taylor, interpolated, scaled by `scale` and
/// perturbed by ±`noise` relative Gaussian-ish noise from `seed`. The first [`DAYS`] are the
/// history; after them come the new slice of an incremental refit and the next day's actuals.
fn five_minute_series(taylor: &DemandSeries, seed: u64, scale: f64, noise: f64) -> DemandSeries {
    let days = DAYS + 2;
    let base = &taylor.values[taylor.len() - days * 48..];
    let steps = days * 288;
    let mut rng = StdRng::seed_from_u64(seed);
    let values = resample_linear(base, 1800, FIVE_MINUTES, steps)
        .into_iter()
        .map(|v| {
            // Sum of uniforms: cheap, bounded, roughly normal.
            let n: f64 = (0..4).map(|_| rng.random_range(-0.5..0.5)).sum::<f64>() * 0.7;
            (v * scale * (1.0 + noise * n)).max(0.0)
        })
        .collect();
    DemandSeries {
        key: SeriesKey::new(format!("svc{seed}"), "r"),
        start: Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
        slice_secs: FIVE_MINUTES,
        values,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let refit_series: usize = args
        .iter()
        .position(|a| a == "--refit-series")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("--refit-series takes a number"))
        .unwrap_or(SERVICES * REGIONS);
    let cores = cores();
    println!(
        "cores available: {cores}; build: {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    let taylor = common::taylor();

    // 1. The Taylor protocol.
    let forecaster = Forecaster::new(
        ForecastConfig::for_slice_secs(1800),
        EventCalendar::default(),
    )
    .unwrap();
    let start = Instant::now();
    let report = run_backtest(
        &forecaster,
        &taylor,
        &BacktestConfig {
            horizon: 48,
            n_origins: 28,
            origin_step: 48,
            warmup_origins: 28,
        },
        &mut || start.elapsed().as_secs_f64(),
        &mut |_, _| {},
    )
    .unwrap();
    for name in [CHOSEN_MODEL_NAME, "mstl_ets"] {
        let s = report.score(name).unwrap();
        println!(
            "taylor protocol {name:<9}: MASE {:.4} sMAPE {:.3} % cov80 {:.3} cov90 {:.3}; fit+forecast {:.1} ms per origin (mean of 28)",
            s.mase,
            s.smape,
            s.cov80,
            s.cov90,
            s.seconds_mean * 1e3
        );
    }

    // 2. One 4-week series at 5-minute slices.
    let series = five_minute_series(&taylor, 1, 1.0, 0.02).prefix(DAYS * DAY_SLICES);
    let config = ForecastConfig::for_slice_secs(FIVE_MINUTES);
    let runs = 10;
    let mut mstl_ms = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let f = fit_predict(ModelKind::MstlEts, &series.values, 288, &config, None).unwrap();
        mstl_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(f.periods, vec![288, 2016]);
    }
    mstl_ms.sort_by(f64::total_cmp);
    let forecaster5 = Forecaster::new(config.clone(), EventCalendar::default()).unwrap();
    let mut all_ms = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        forecaster5
            .forecast(&mut SeriesState::default(), &series, 288, &mut || {
                t0.elapsed().as_secs_f64()
            })
            .unwrap();
        all_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    all_ms.sort_by(f64::total_cmp);
    println!(
        "one series, 4 weeks at 5 min ({} points), horizon 288: MSTL+ETS fit+forecast median {:.1} ms (p90 {:.1}); the product's forecast (robust training, all candidates) median {:.1} ms (p90 {:.1}); {runs} runs, 1 core",
        series.len(),
        percentile(&mstl_ms, 0.5),
        percentile(&mstl_ms, 0.9),
        percentile(&all_ms, 0.5),
        percentile(&all_ms, 0.9)
    );

    // 3a. Refit: every series' forecast in full, then one slice later incrementally, on
    // rayon's pool (all cores), a chunk at a time.
    let total_series = SERVICES * REGIONS;
    let refit_series = refit_series.min(total_series);
    let history_slices = DAYS * DAY_SLICES;
    let planning_series = |i: usize| {
        let scale = 0.001 + (i % 97) as f64 * 0.0005;
        five_minute_series(&taylor, i as u64, scale, 0.05)
    };
    let timer = |t0: Instant| move || t0.elapsed().as_secs_f64();
    let adjusted = AtomicUsize::new(0);
    let mut full_secs = 0.0;
    let mut incremental_secs = 0.0;
    let mut incremental = 0;
    let mut templates: Vec<DemandForecast> = Vec::new();
    for chunk in (0..refit_series).step_by(REFIT_CHUNK) {
        let ids = chunk..(chunk + REFIT_CHUNK).min(refit_series);
        let t = Instant::now();
        let mut states: Vec<(usize, SeriesState, Option<DemandForecast>)> = ids
            .into_par_iter()
            .map(|i| {
                let s = planning_series(i).prefix(history_slices);
                let mut state = SeriesState::default();
                let set = forecaster5
                    .forecast(&mut state, &s, DAY_SLICES, &mut timer(Instant::now()))
                    .unwrap();
                if set.chosen.adjusted.anomaly_slices > 0 {
                    adjusted.fetch_add(1, Ordering::Relaxed);
                }
                // Keep a few forecasts as the sizing cycle's inputs.
                (i, state, (i < 64).then_some(set.chosen))
            })
            .collect();
        full_secs += t.elapsed().as_secs_f64();
        // The new slices' histories are made before the clock starts: the refit is timed,
        // not the series generator.
        let histories: Vec<DemandSeries> = states
            .par_iter()
            .map(|(i, _, _)| planning_series(*i).prefix(history_slices + 1))
            .collect();
        let t = Instant::now();
        incremental += states
            .par_iter_mut()
            .zip(&histories)
            .map(|((_, state, _), s)| {
                let set = forecaster5
                    .forecast(state, s, DAY_SLICES, &mut timer(Instant::now()))
                    .unwrap();
                usize::from(matches!(set.chosen.refit, Refit::Incremental { .. }))
            })
            .sum::<usize>();
        incremental_secs += t.elapsed().as_secs_f64();
        templates.extend(states.into_iter().filter_map(|(_, _, f)| f));
        eprintln!(
            "refit: {} series, full {full_secs:.0} s, incremental {incremental_secs:.0} s",
            chunk + histories.len()
        );
    }
    let refit_total_secs = full_secs;
    let threads = rayon::current_num_threads();
    println!(
        "planning refit: {refit_series} series (4 weeks at 5 min, robust training + {} candidates each; {} had anomalies adjusted out) measured in {full_secs:.1} s ({:.1} min) on {threads} rayon threads = {:.2} ms per series",
        ModelKind::ALL.len(),
        adjusted.load(Ordering::Relaxed),
        full_secs / 60.0,
        full_secs * 1e3 / refit_series as f64
    );
    println!(
        "incremental refit one slice later: {refit_series} series ({incremental} incremental) measured in {incremental_secs:.1} s ({:.1} min) on {threads} rayon threads = {:.2} ms per series, {:.1}x faster than the full refit",
        incremental_secs / 60.0,
        incremental_secs * 1e3 / refit_series as f64,
        full_secs / incremental_secs
    );

    // 3a'. Accuracy: the incremental forecast against a full refit of the same history.
    let sample = ACCURACY_SERIES.min(refit_series);
    let mut comparisons: Vec<(f64, f64)> = (0..sample)
        .into_par_iter()
        .map(|i| {
            let s = planning_series(i);
            let history = s.prefix(history_slices + 1);
            let actual = &s.values[history.len()..history.len() + DAY_SLICES];
            let mut state = SeriesState::default();
            let forecast = |state: &mut SeriesState, history: &DemandSeries| {
                forecaster5
                    .forecast(state, history, DAY_SLICES, &mut timer(Instant::now()))
                    .unwrap()
                    .chosen
            };
            forecast(&mut state, &s.prefix(history_slices));
            let incremental = forecast(&mut state, &history);
            let full = forecast(&mut SeriesState::default(), &history);
            assert!(matches!(incremental.refit, Refit::Incremental { .. }));
            assert_eq!(incremental.model, full.model);
            let mae = |f: &DemandForecast| {
                (0..DAY_SLICES)
                    .map(|h| (f.mean(h) - actual[h]).abs())
                    .sum::<f64>()
                    / DAY_SLICES as f64
            };
            let gap = (0..DAY_SLICES)
                .map(|h| (incremental.mean(h) - full.mean(h)).abs())
                .sum::<f64>()
                / (0..DAY_SLICES).map(|h| full.mean(h)).sum::<f64>();
            (gap * 100.0, mae(&incremental) / mae(&full))
        })
        .collect();
    comparisons.sort_by(|a, b| a.0.total_cmp(&b.0));
    let gaps: Vec<f64> = comparisons.iter().map(|c| c.0).collect();
    let mut ratios: Vec<f64> = comparisons.iter().map(|c| c.1).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "incremental vs full refit on {sample} series (next day's forecast, chosen model): mean gap median {:.2} %, max {:.2} %; MAE against the actuals, incremental / full: median {:.3}, p90 {:.3}, max {:.3}",
        percentile(&gaps, 0.5),
        gaps[gaps.len() - 1],
        percentile(&ratios, 0.5),
        percentile(&ratios, 0.9),
        ratios[ratios.len() - 1]
    );

    // 3b. Sizing cycle: every series' next slice from its forecast, on all cores.
    let policy = SizingPolicy {
        tier: Tier::Probabilistic {
            cost_miss: 0.5,
            cost_idle: 0.0083,
        },
        profile: InstanceProfile {
            capacity: 10.0,
            warm_cost_per_slice: 0.0083,
            dormant_cost_per_slice: 0.00083,
            dormant_activation_secs: 20.0,
        },
        limits: DEFAULT_LIMITS,
        cost_miss: 0.5,
        slice_secs: 300.0,
    };
    policy.validate().unwrap();
    let mut pools = vec![PoolState::default(); total_series];
    let t = Instant::now();
    let instances: u64 = pools
        .par_iter_mut()
        .enumerate()
        .map(|(i, pool)| {
            let f = &templates[i % templates.len()];
            let scale = 1.0 + (i % 13) as f64 * 0.01;
            let desired = policy.size(&|q| scale * f.quantile(0, q));
            u64::from(pool.handle_target(desired, &DEFAULT_HYSTERESIS).total())
        })
        .sum();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "planning cycle (size next slice + hysteresis) for {total_series} series ({SERVICES} services × {REGIONS} regions): {:.1} ms on {} rayon threads ({instances} instances planned); with the refit above, a full cycle with forecasts took {:.1} s",
        secs * 1e3,
        rayon::current_num_threads(),
        refit_total_secs + secs
    );
}
