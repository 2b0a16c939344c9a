//! The simulator's baselines on the Taylor series scaled to requests (1 MW = 1 request per
//! minute, 1,000 requests per instance-minute), replayed per minute over its last 28 days with
//! a 2-minute launch delay and forecasts made at each midnight from the history before it:
//! hybrid-histogram, which pre-warms from what it learned and the forecast, has fewer
//! cold-start misses than reactive and a 10-minute keep-alive, and less idle instance-time
//! than the smallest fixed pool that misses no more than it does. (The product's own policy,
//! `umbra`, is the orchestrator's controller and is replayed by `umbra simulate`.)

use std::path::PathBuf;
use std::time::Instant;

use umbra_forecast::backtest::forecasts_at_origins;
use umbra_forecast::calendar::EventCalendar;
use umbra_forecast::history::{HistoryConfig, SeriesKey, csv_source};
use umbra_forecast::simulate::{
    DEFAULT_PRICES, ForecastOutlook, HybridHistogram, KeepAlive, Reactive, SimConfig,
    fixed_pool_matching, resample_linear, simulate,
};
use umbra_forecast::sizing::{PoolTarget, instances_for};
use umbra_forecast::{ForecastConfig, Forecaster};

#[test]
fn hybrid_histogram_beats_reactive_keepalive_and_fixed_on_taylor() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/taylor_halfhourly.csv");
    let history = HistoryConfig {
        slice_secs: 1800,
        ..HistoryConfig::default()
    };
    let (series, _) =
        csv_source::read_series(&path, &SeriesKey::new("taylor", "uk"), &history).unwrap();

    let days = 28;
    let daily = 48;
    let first = series.len() - days * daily;
    let config = SimConfig {
        step_secs: 60,
        capacity_per_step: 1000.0,
        launch_delay_secs: 120,
        activation_secs: 20,
        prices: DEFAULT_PRICES,
    };
    let forecaster = Forecaster::new(
        ForecastConfig::for_slice_secs(1800),
        EventCalendar::default(),
    )
    .unwrap();
    let positions: Vec<usize> = (0..days).map(|d| first + d * daily).collect();
    let start = Instant::now();
    let forecasts = forecasts_at_origins(
        &forecaster,
        &series,
        &positions,
        daily + 3,
        28,
        &mut || start.elapsed().as_secs_f64(),
        &mut |_, _| {},
    )
    .unwrap();
    let steps = days * 1440;
    let demand = resample_linear(&series.values[first..], 1800, 60, steps);
    let outlook = ForecastOutlook {
        forecasts,
        origin_steps: 1440,
        lag_steps: config.launch_steps(),
        step_secs: 60,
        scale: 1.0,
    };
    let start_pool = PoolTarget {
        warm: instances_for(demand[0], 1000.0),
        dormant: 0,
    };
    let hybrid = simulate(
        &config,
        &demand,
        &outlook,
        &mut HybridHistogram::new(1000.0, 60, config.launch_steps()),
        start_pool,
    );
    let reactive = simulate(
        &config,
        &demand,
        &outlook,
        &mut Reactive::new(1000.0, 5),
        start_pool,
    );
    let keepalive = simulate(
        &config,
        &demand,
        &outlook,
        &mut KeepAlive {
            capacity: 1000.0,
            keep_steps: 10,
        },
        start_pool,
    );
    let (fixed_pool, fixed) =
        fixed_pool_matching(&config, &demand, &outlook, 1.0 - hybrid.served_share);
    for r in [&hybrid, &reactive, &keepalive, &fixed] {
        eprintln!(
            "{:<24} served {:.6} missed {:>9.0} idle {:>8.1} dormant {:>7.1} cost {:>8.2} resizes {}",
            r.policy,
            r.served_share,
            r.missed,
            r.idle_instance_hours,
            r.dormant_instance_hours,
            r.cost_total,
            r.resizes
        );
    }
    assert!(
        hybrid.missed < reactive.missed,
        "hybrid-histogram {} vs reactive {}",
        hybrid.missed,
        reactive.missed
    );
    assert!(
        hybrid.missed < keepalive.missed,
        "hybrid-histogram {} vs keepalive {}",
        hybrid.missed,
        keepalive.missed
    );
    assert!(1.0 - fixed.served_share <= 1.0 - hybrid.served_share);
    assert!(fixed_pool > 0);
    assert!(
        hybrid.idle_all_instance_hours() < fixed.idle_all_instance_hours(),
        "hybrid-histogram idle {} vs fixed({fixed_pool}) idle {}",
        hybrid.idle_all_instance_hours(),
        fixed.idle_all_instance_hours()
    );
}
