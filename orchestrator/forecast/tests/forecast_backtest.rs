//! The forecaster on real data: the issue's rolling-origin protocol on the Taylor series
//! (horizon 48, 28 daily origins, MASE scaled by the daily seasonal naive), the model choice,
//! the short-history fallbacks, the event calendar and the forecast CSV. Timing targets are
//! in the bench binary (`benches/forecast.rs`), not here.

use std::path::PathBuf;
use std::time::Instant;

use umbra_forecast::backtest::{
    BacktestConfig, CHOSEN_MODEL_NAME, run_backtest, write_forecasts_csv,
};
use umbra_forecast::calendar::{Event, EventCalendar};
use umbra_forecast::history::{DemandSeries, HistoryConfig, SeriesKey, csv_source};
use umbra_forecast::sizing::{DEFAULT_LIMITS, InstanceProfile, SizingPolicy, Tier};
use umbra_forecast::{
    Calibration, ForecastConfig, ForecastError, Forecaster, ModelKind, SeriesState,
};

fn taylor() -> DemandSeries {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/taylor_halfhourly.csv");
    let config = HistoryConfig {
        slice_secs: 1800,
        ..HistoryConfig::default()
    };
    let (series, report) = csv_source::read_series(&path, &SeriesKey::new("taylor", "uk"), &config)
        .expect("the Taylor CSV reads as a regular series");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(series.len(), 4032);
    series
}

fn timer() -> impl FnMut() -> f64 {
    let start = Instant::now();
    move || start.elapsed().as_secs_f64()
}

#[test]
fn taylor_backtest_meets_the_issue_targets() {
    let series = taylor();
    let forecaster = Forecaster::new(
        ForecastConfig::for_slice_secs(1800),
        EventCalendar::default(),
    )
    .unwrap();
    let config = BacktestConfig {
        horizon: 48,
        n_origins: 28,
        origin_step: 48,
        warmup_origins: 28,
    };
    let report = run_backtest(&forecaster, &series, &config, &mut timer(), &mut |_, _| {})
        .expect("backtest runs");
    assert_eq!(
        report.first_origin.to_rfc3339(),
        "2000-07-31T00:00:00+00:00"
    );
    assert_eq!(report.last_origin.to_rfc3339(), "2000-08-27T00:00:00+00:00");
    let umbra = report.score(CHOSEN_MODEL_NAME).expect("umbra row");
    let weekly = report.score("snaive_weekly").expect("weekly naive row");
    let daily = report.score("snaive_daily").expect("daily naive row");
    eprintln!("{:#?}", report.scores);
    assert_eq!(umbra.n_origins, 28);
    assert!(umbra.mase <= 0.15, "MASE {}", umbra.mase);
    assert!(
        (0.85..=0.95).contains(&umbra.cov90),
        "90 % coverage {}",
        umbra.cov90
    );
    assert!(umbra.cov80 < umbra.cov90);
    // The seasonal naive anchors of the issue: weekly about 0.34, daily about 0.96.
    assert!((weekly.mase - 0.34).abs() < 0.01, "weekly {}", weekly.mase);
    assert!((daily.mase - 0.96).abs() < 0.01, "daily {}", daily.mase);
    // The rolling error picks MSTL+ETS at every origin, and says so.
    assert_eq!(
        report.choices.get("mstl_ets"),
        Some(&28),
        "{:?}",
        report.choices
    );
}

#[test]
fn forecast_csv_has_the_scorer_schema() {
    let series = taylor();
    let forecaster = Forecaster::new(
        ForecastConfig::for_slice_secs(1800),
        EventCalendar::default(),
    )
    .unwrap();
    let config = BacktestConfig {
        horizon: 48,
        n_origins: 2,
        origin_step: 48,
        warmup_origins: 0,
    };
    let report = run_backtest(&forecaster, &series, &config, &mut timer(), &mut |_, _| {}).unwrap();
    let mut out = Vec::new();
    write_forecasts_csv(&mut out, "demand_mw", &report.forecasts).unwrap();
    let text = String::from_utf8(out).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("unique_id,origin,step,model,mean,lo-80,hi-80,lo-90,hi-90,seconds")
    );
    // 2 origins × 5 rows (4 candidates + umbra) × 48 steps.
    assert_eq!(lines.clone().count(), 2 * 5 * 48);
    let first: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(
        first[..4],
        ["demand_mw", "2000-08-26T00:00:00Z", "1", "mstl_ets"]
    );
    let values: Vec<f64> = first[4..].iter().map(|v| v.parse().unwrap()).collect();
    let (mean, lo80, hi80, lo90, hi90) = (values[0], values[1], values[2], values[3], values[4]);
    assert!(
        lo90 <= lo80 && lo80 <= mean && mean <= hi80 && hi80 <= hi90,
        "{values:?}"
    );
}

#[test]
fn short_history_falls_back_and_too_little_is_a_clear_error() {
    let series = taylor();
    let forecaster = Forecaster::new(
        ForecastConfig::for_slice_secs(1800),
        EventCalendar::default(),
    )
    .unwrap();
    // Three days: MSTL with the daily season only (two weekly periods are not there).
    let set = forecaster
        .forecast(
            &mut SeriesState::default(),
            &series.prefix(144),
            48,
            &mut timer(),
        )
        .unwrap();
    let mstl = set
        .candidates
        .iter()
        .find(|f| f.model == ModelKind::MstlEts)
        .unwrap();
    assert_eq!(mstl.periods, vec![48]);
    assert!(
        set.candidates
            .iter()
            .all(|f| f.model != ModelKind::SeasonalNaiveWeekly)
    );
    // A day and a half: only the daily seasonal naive can forecast.
    let set = forecaster
        .forecast(
            &mut SeriesState::default(),
            &series.prefix(72),
            48,
            &mut timer(),
        )
        .unwrap();
    assert_eq!(set.chosen.model, ModelKind::SeasonalNaiveDaily);
    assert_eq!(set.chosen.calibration, Calibration::Parametric);
    // Less than a day and a slice: nothing can.
    let err = forecaster
        .forecast(
            &mut SeriesState::default(),
            &series.prefix(30),
            48,
            &mut timer(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            ForecastError::TooLittleHistory {
                have: 30,
                need: 49,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("collect more history"), "{err}");
}

#[test]
fn calibration_and_quantiles_are_ordered() {
    let series = taylor();
    let forecaster = Forecaster::new(
        ForecastConfig::for_slice_secs(1800),
        EventCalendar::default(),
    )
    .unwrap();
    let mut state = SeriesState::default();
    let run = forecaster.calibrate(&mut state, &series, 48, 10, &mut timer(), &mut |_, _| {});
    assert_eq!(run, 10);
    let set = forecaster
        .forecast(&mut state, &series, 48, &mut timer())
        .unwrap();
    let f = &set.chosen;
    assert_eq!(f.model, ModelKind::MstlEts);
    // The last calibration origin's horizon ends where the history ends, so all 10 are scored.
    // 10 origins × 48 errors: four buckets of the day with at least 100 errors each.
    assert_eq!(
        f.calibration,
        Calibration::Conformal {
            origins: 10,
            buckets: 4
        }
    );
    assert!(f.model_errors.iter().all(|(_, e)| e.is_some()));
    // What the running product exports: how the chosen model's past forecasts fared.
    let accuracy = state
        .chosen_accuracy()
        .expect("the chosen model was scored");
    assert_eq!((accuracy.model, accuracy.scored), (ModelKind::MstlEts, 10));
    assert!(accuracy.mase > 0.0 && accuracy.mase < 0.5, "{accuracy:?}");
    assert!(
        (0.7..=1.0).contains(&accuracy.coverage_90),
        "the 90 % intervals held most actuals: {accuracy:?}"
    );
    for s in f.slices() {
        assert!(s.p50 <= s.p90 && s.p90 <= s.p99, "{s:?}");
        assert!(s.p50 > 10_000.0 && s.p99 < 60_000.0, "{s:?}");
    }
    // The executor's path: slice time → step → pool size.
    let noon = f.start + chrono::Duration::hours(12);
    assert_eq!(f.step_at(f.start), Some(0));
    assert_eq!(f.step_at(noon + chrono::Duration::minutes(10)), Some(24));
    assert_eq!(f.step_at(f.start + chrono::Duration::hours(24)), None);
    assert_eq!(f.step_at(f.start - chrono::Duration::minutes(1)), None);
    let policy = SizingPolicy {
        tier: Tier::Guaranteed { quantile: 0.99 },
        profile: InstanceProfile {
            capacity: 1_000.0,
            warm_cost_per_slice: 1.0,
            dormant_cost_per_slice: 1.0,
            dormant_activation_secs: 0.0,
        },
        limits: DEFAULT_LIMITS,
        cost_miss: 10.0,
        slice_secs: 1800.0,
    };
    let pool = policy.size(&f.quantile_fn(24));
    assert_eq!(pool.total(), (f.quantile(24, 0.99) / 1_000.0).ceil() as u32);
}

#[test]
fn calendar_events_scale_and_override_forecast_slices() {
    let series = taylor();
    let end = series.slice_start(series.len());
    let events = vec![
        Event {
            name: "campaign".into(),
            start: end,
            end: end + chrono::Duration::hours(2),
            scale: Some(2.0),
            value: None,
        },
        Event {
            name: "backup".into(),
            start: end + chrono::Duration::hours(5),
            end: end + chrono::Duration::hours(6),
            scale: None,
            value: Some(0.0),
        },
    ];
    let config = ForecastConfig::for_slice_secs(1800);
    let plain = Forecaster::new(config.clone(), EventCalendar::default()).unwrap();
    let with_events = Forecaster::new(config, EventCalendar::new(events).unwrap()).unwrap();
    let a = plain
        .forecast(&mut SeriesState::default(), &series, 48, &mut timer())
        .unwrap()
        .chosen;
    let b = with_events
        .forecast(&mut SeriesState::default(), &series, 48, &mut timer())
        .unwrap()
        .chosen;
    for step in 0..4 {
        assert!((b.quantile(step, 0.9) - 2.0 * a.quantile(step, 0.9)).abs() < 1e-6);
        assert_eq!(b.slice(step).event.as_deref(), Some("campaign"));
    }
    assert_eq!(b.mean(4), a.mean(4));
    assert_eq!(b.quantile(10, 0.99), 0.0);
    assert_eq!(b.slice(10).event.as_deref(), Some("backup"));
}

#[test]
fn model_choice_waits_for_a_week_of_scores() {
    // Without warm-up, the first origins have one or two scored days; judged on those, the
    // weekly naive won twice (MASE 0.161 instead of 0.149). The choice must wait for a week.
    let series = taylor();
    let forecaster = Forecaster::new(
        ForecastConfig::for_slice_secs(1800),
        EventCalendar::default(),
    )
    .unwrap();
    let config = BacktestConfig {
        horizon: 48,
        n_origins: 28,
        origin_step: 48,
        warmup_origins: 0,
    };
    let report = run_backtest(&forecaster, &series, &config, &mut timer(), &mut |_, _| {}).unwrap();
    assert_eq!(
        report.choices.get("mstl_ets"),
        Some(&28),
        "{:?}",
        report.choices
    );
    let umbra = report.score(CHOSEN_MODEL_NAME).unwrap();
    assert!(umbra.mase <= 0.15, "MASE {}", umbra.mase);
    // Quantiles start from the model's normal intervals and turn conformal after a week;
    // coverage still lands in the target band.
    assert!((0.85..=0.95).contains(&umbra.cov90), "{}", umbra.cov90);
}
