//! The held-out synthetic benchmark (issue 10): writes the seeded three-region series of
//! `umbra_forecast::synthetic` as CSV and backtests Umbra's forecaster on it with the protocol
//! of `shared/bench/forecast_baseline.py` (14 daily origins, horizon 288, 28 warm-up origins as
//! `umbra backtest` runs by default), writing every forecast as the CSV that script scores.
//!
//! Run: `cargo bench -p umbra-forecast --bench synthetic -- --seeds 1,2,3 --out DIR
//! [--declare-events] [--choice mean|median] [--no-robust] [--pooled-calibration]`; the last
//! three switch off this issue's changes one by one, to measure each (the product runs the
//! defaults). The Taylor protocol (horizon 48, 28 origins) runs first with the same
//! configuration, as the acceptance's other line. Per seed it writes `DIR/seed<N>/demand.csv` (long form:
//! `timestamp,service,region,value`), `DIR/seed<N>/umbra.csv` (the forecasts) and
//! `DIR/seed<N>/events.toml` (the holiday and the campaign as an event calendar), and prints
//! Umbra's own scores per region. `--declare-events` forecasts with that calendar. Score
//! against statsforecast with:
//!
//! ```text
//! forecast_baseline.py --data DIR/seed1/demand.csv --format long --horizon 288 \
//!     --seasons 288,2016 --n-origins 14 --models mstl,snaive_weekly --json-out sf.json
//! forecast_baseline.py --data DIR/seed1/demand.csv --format long --horizon 288 \
//!     --seasons 288,2016 --n-origins 14 --score-forecasts DIR/seed1/umbra.csv --json-out umbra.json
//! forecast_baseline.py --merge sf.json,umbra.json --markdown-out table.md
//! ```

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use umbra_forecast::backtest::{BacktestConfig, CHOSEN_MODEL_NAME, run_backtest};
use umbra_forecast::calendar::{Event, EventCalendar};
use umbra_forecast::synthetic::{self, SyntheticSeries};
use umbra_forecast::{ChoiceStatistic, DEFAULT_CALIBRATION_ORIGINS, ForecastConfig, Forecaster};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn calendar_toml(series: &[SyntheticSeries]) -> String {
    // The events of every region: each region's holiday and campaign are at its local time.
    let mut out = String::new();
    for s in series {
        for e in &s.events {
            out.push_str(&format!(
                "[[event]]\nname = \"{} {}\"\nstart = \"{}\"\nend = \"{}\"\nscale = {}\n\n",
                s.series.key.region,
                e.name,
                e.start.to_rfc3339(),
                e.end.to_rfc3339(),
                e.scale
            ));
        }
    }
    out
}

/// The forecasting configuration for `slice_secs`, with the switches of the command line.
fn forecast_config(args: &[String], slice_secs: u32) -> ForecastConfig {
    let mut config = ForecastConfig::for_slice_secs(slice_secs);
    match arg(args, "--choice").as_deref() {
        None => {}
        Some("mean") => config.choice = ChoiceStatistic::Mean,
        Some("median") => config.choice = ChoiceStatistic::Median,
        Some(other) => panic!("--choice takes mean or median, not {other}"),
    }
    if let Some(w) = arg(args, "--ets-window") {
        config.ets_window_slices = w.parse().expect("--ets-window takes a number of slices");
    }
    if args.iter().any(|a| a == "--no-robust") {
        config.robust_training = false;
    }
    if args.iter().any(|a| a == "--pooled-calibration") {
        config.calibrate_by_time_of_day = false;
    }
    config
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let taylor_forecaster =
        Forecaster::new(forecast_config(&args, 1800), EventCalendar::default()).unwrap();
    let started = Instant::now();
    let report = run_backtest(
        &taylor_forecaster,
        &common::taylor(),
        &BacktestConfig {
            horizon: 48,
            n_origins: 28,
            origin_step: 48,
            warmup_origins: DEFAULT_CALIBRATION_ORIGINS,
        },
        &mut || started.elapsed().as_secs_f64(),
        &mut |_, _| {},
    )
    .expect("the Taylor backtest runs");
    for s in &report.scores {
        println!(
            "taylor {:<14} MASE {:.4} cov80 {:.3} cov90 {:.3} width90 {:.4}",
            s.model, s.mase, s.cov80, s.cov90, s.width90
        );
    }
    println!("taylor chose {:?}", report.choices);
    let seeds: Vec<u64> = arg(&args, "--seeds")
        .unwrap_or_else(|| "1,2,3".into())
        .split(',')
        .map(|s| s.trim().parse().expect("--seeds takes numbers, e.g. 1,2,3"))
        .collect();
    let out = PathBuf::from(arg(&args, "--out").expect("--out DIR is required"));
    let declare = args.iter().any(|a| a == "--declare-events");
    let config = BacktestConfig {
        horizon: 288,
        n_origins: synthetic::TEST_DAYS,
        origin_step: 288,
        warmup_origins: DEFAULT_CALIBRATION_ORIGINS,
    };
    let mut mean_rows: BTreeMap<String, Vec<[f64; 5]>> = BTreeMap::new();
    for seed in seeds {
        let dir = out.join(format!("seed{seed}"));
        std::fs::create_dir_all(&dir).expect("creating the output directory");
        let series = synthetic::generate(seed);
        let mut demand = std::io::BufWriter::new(
            std::fs::File::create(dir.join("demand.csv")).expect("demand.csv"),
        );
        writeln!(demand, "timestamp,service,region,value").unwrap();
        for s in &series {
            for (i, v) in s.series.values.iter().enumerate() {
                writeln!(
                    demand,
                    "{},{},{},{v}",
                    s.series.slice_start(i).format("%Y-%m-%dT%H:%M:%SZ"),
                    s.series.key.service,
                    s.series.key.region
                )
                .unwrap();
            }
        }
        demand.flush().unwrap();
        let toml = calendar_toml(&series);
        std::fs::write(dir.join("events.toml"), &toml).expect("events.toml");
        let calendar = if declare {
            EventCalendar::from_toml(&toml).expect("the generated calendar is valid")
        } else {
            EventCalendar::default()
        };
        let mut csv = Vec::new();
        for (k, s) in series.iter().enumerate() {
            // A region's calendar holds its own events only.
            let calendar = if declare {
                let region = &s.series.key.region;
                let own: Vec<Event> = calendar
                    .events()
                    .iter()
                    .filter(|e| e.name.starts_with(region.as_str()))
                    .cloned()
                    .collect();
                EventCalendar::new(own).unwrap()
            } else {
                EventCalendar::default()
            };
            let forecaster =
                Forecaster::new(forecast_config(&args, synthetic::SLICE_SECS), calendar).unwrap();
            let started = Instant::now();
            let report = run_backtest(
                &forecaster,
                &s.series,
                &config,
                &mut || started.elapsed().as_secs_f64(),
                &mut |_, _| {},
            )
            .expect("the synthetic series backtests");
            let mut part = Vec::new();
            umbra_forecast::backtest::write_forecasts_csv(
                &mut part,
                &report.unique_id,
                &report.forecasts,
            )
            .unwrap();
            // One header for the whole file.
            let text = String::from_utf8(part).unwrap();
            let body = if k == 0 {
                text.as_str()
            } else {
                text.split_once('\n').map(|(_, b)| b).unwrap_or("")
            };
            csv.extend_from_slice(body.as_bytes());
            println!(
                "seed {seed} {}: chose {:?}",
                report.unique_id, report.choices
            );
            println!(
                "  {:<14} {:>7} {:>8} {:>7} {:>8} {:>9}",
                "model", "MASE", "sMAPE %", "cov90", "width90", "ms/origin"
            );
            for sc in &report.scores {
                println!(
                    "  {:<14} {:>7.3} {:>8.2} {:>7.3} {:>8.3} {:>9.1}",
                    sc.model,
                    sc.mase,
                    sc.smape,
                    sc.cov90,
                    sc.width90,
                    sc.seconds_mean * 1e3
                );
                mean_rows.entry(sc.model.clone()).or_default().push([
                    sc.mase,
                    sc.smape,
                    sc.cov90,
                    sc.width90,
                    sc.seconds_mean,
                ]);
            }
        }
        std::fs::write(dir.join("umbra.csv"), csv).expect("umbra.csv");
    }
    println!("mean over seeds and regions:");
    for (model, rows) in &mean_rows {
        let m = |i: usize| rows.iter().map(|r| r[i]).sum::<f64>() / rows.len() as f64;
        println!(
            "  {model:<14} MASE {:.3} sMAPE {:.2} % cov90 {:.3} width90 {:.3} {:.1} ms/origin{}",
            m(0),
            m(1),
            m(2),
            m(3),
            m(4) * 1e3,
            if model == CHOSEN_MODEL_NAME {
                " (the product's forecast)"
            } else {
                ""
            }
        );
    }
}
