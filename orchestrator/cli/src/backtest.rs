//! `umbra backtest`: rolling-origin evaluation of Umbra's forecaster against seasonal naive
//! baselines with the protocol of `shared/bench/forecast_baseline.py` (MASE, sMAPE, interval
//! coverage and width, seconds per origin), printed as a table or `--json`, and optionally
//! every forecast as the CSV that script scores (`--emit-forecasts`). The computation is the
//! library's (`forecast::backtest`); this file parses, reports progress and prints.

use std::path::PathBuf;

use anyhow::Context;
use umbra_forecast::backtest::{BacktestConfig, run_backtest, write_forecasts_csv};
use umbra_forecast::{DEFAULT_CALIBRATION_ORIGINS, ForecastConfig, Forecaster};

use crate::forecast::{
    SliceWidth, SourceArgs, load_calendar, load_series, monotonic_timer, print_history_report,
    progress_bar,
};

/// `umbra backtest --json`: the library's report and the slice width it ran at.
#[derive(serde::Serialize)]
struct BacktestOutput<'a> {
    slice: &'a SliceWidth,
    #[serde(flatten)]
    report: &'a umbra_forecast::backtest::BacktestReport,
}

/// Arguments of `umbra backtest`.
#[derive(Debug, clap::Args)]
pub struct BacktestArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Slices forecast from each origin (default: one day).
    #[arg(long)]
    pub horizon: Option<usize>,
    /// Scored origins, one every --origin-step slices, ending one step before the data ends.
    #[arg(long, default_value_t = 28)]
    pub origins: usize,
    /// Slices between origins (default: one day).
    #[arg(long)]
    pub origin_step: Option<usize>,
    /// Unscored origins run first so model choice and calibration start warm.
    #[arg(long, default_value_t = DEFAULT_CALIBRATION_ORIGINS)]
    pub warmup_origins: usize,
    /// Event calendar applied to every forecast (TOML).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Write every origin's forecasts as CSV:
    /// unique_id,origin,step,model,mean,lo-80,hi-80,lo-90,hi-90,seconds.
    #[arg(long, value_name = "FILE")]
    pub emit_forecasts: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BacktestArgs) -> anyhow::Result<()> {
    let loaded = load_series(&args.source)?;
    let series = &loaded.series;
    if !args.json {
        print_history_report(&loaded);
    }
    let forecast_config = ForecastConfig::for_slice_secs(series.slice_secs);
    let daily = forecast_config.seasons.daily;
    let config = BacktestConfig {
        horizon: args.horizon.unwrap_or(daily),
        n_origins: args.origins,
        origin_step: args.origin_step.unwrap_or(daily),
        warmup_origins: args.warmup_origins,
    };
    config.validate(series.len())?;
    let forecaster = Forecaster::new(forecast_config, load_calendar(args.events.as_ref())?)?;
    let bar = progress_bar(
        config.n_origins + config.warmup_origins,
        "backtest",
        args.json,
    );
    let mut report = run_backtest(
        &forecaster,
        series,
        &config,
        &mut monotonic_timer(),
        &mut |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    report.unique_id = loaded.unique_id.clone();
    if let Some(path) = &args.emit_forecasts {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        write_forecasts_csv(
            std::io::BufWriter::new(file),
            &loaded.unique_id,
            &report.forecasts,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        let out = BacktestOutput {
            slice: &loaded.slice,
            report: &report,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{}: {} origins from {} to {}, horizon {} slices, {} warm-up origins",
        report.unique_id,
        config.n_origins,
        report.first_origin.to_rfc3339(),
        report.last_origin.to_rfc3339(),
        config.horizon,
        report.warmup_origins_run
    );
    println!(
        "{:<14} {:>7} {:>8} {:>7} {:>7} {:>9} {:>9} {:>11}",
        "model", "MASE", "sMAPE %", "cov80", "cov90", "width80", "width90", "ms/origin"
    );
    for s in &report.scores {
        println!(
            "{:<14} {:>7.4} {:>8.3} {:>7.3} {:>7.3} {:>9.4} {:>9.4} {:>11.1}",
            s.model,
            s.mase,
            s.smape,
            s.cov80,
            s.cov90,
            s.width80,
            s.width90,
            s.seconds_mean * 1e3
        );
    }
    let choices: Vec<String> = report
        .choices
        .iter()
        .map(|(m, n)| format!("{m} ×{n}"))
        .collect();
    println!("umbra chose: {}", choices.join(", "));
    Ok(())
}
