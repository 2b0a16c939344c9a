//! `umbra forecast`: load a demand series (CSV or Prometheus), forecast the next slices and
//! print mean and quantiles per slice (table, `--json`, or an SVG plot). Also holds the
//! series-loading arguments and helpers that `umbra backtest` and `umbra simulate` share.
//! Forecasting logic lives in the library (`umbra_orchestrator::forecast`), not here.

use std::path::PathBuf;
use std::time::Instant;

use crate::plot::{PlotInput, PlotSeries, render_svg};
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use umbra_forecast::calendar::EventCalendar;
use umbra_forecast::history::{
    DEFAULT_MAX_GAP_SECS, DEFAULT_SLICE_SECS, DemandSeries, HistoryConfig, HistoryReport,
    SeriesKey, build_series, csv_source, prometheus,
};
use umbra_forecast::{
    DEFAULT_CALIBRATION_ORIGINS, ForecastConfig, Forecaster, SeriesState, SliceForecast,
};

/// Where a demand series comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// CSV file: `timestamp,service,region,value`, or `timestamp,<value>` for one series.
    #[arg(long, value_name = "FILE", conflicts_with = "prometheus")]
    pub csv: Option<PathBuf>,
    /// Prometheus server root URL, e.g. http://127.0.0.1:9090 (needs --query).
    #[arg(long, value_name = "URL", requires = "query")]
    pub prometheus: Option<String>,
    /// PromQL expression giving exactly one series (the demand of one service in one region).
    #[arg(long, value_name = "PROMQL")]
    pub query: Option<String>,
    /// Service name (picks the series of a long CSV; names the series otherwise).
    #[arg(long)]
    pub service: Option<String>,
    /// Region name (picks the series of a long CSV; names the series otherwise).
    #[arg(long)]
    pub region: Option<String>,
    /// Slice width in seconds (must divide a day).
    #[arg(long, default_value_t = DEFAULT_SLICE_SECS)]
    pub slice_secs: u32,
    /// Longest gap filled by interpolation; longer gaps are errors.
    #[arg(long, default_value_t = DEFAULT_MAX_GAP_SECS)]
    pub max_gap_secs: u32,
    /// Start of the Prometheus range (RFC 3339); default: 28 days before --end.
    #[arg(long)]
    pub start: Option<DateTime<Utc>>,
    /// End of the Prometheus range (RFC 3339); default: now.
    #[arg(long)]
    pub end: Option<DateTime<Utc>>,
    /// Name of the series in CSV output (default: the value column of a two-column CSV,
    /// otherwise service/region).
    #[arg(long)]
    pub unique_id: Option<String>,
}

/// A loaded series with its repair report and output name.
pub struct LoadedSeries {
    pub series: DemandSeries,
    pub report: HistoryReport,
    pub unique_id: String,
}

/// Load the series named by `args`.
pub fn load_series(args: &SourceArgs) -> anyhow::Result<LoadedSeries> {
    let config = HistoryConfig {
        slice_secs: args.slice_secs,
        max_gap_secs: args.max_gap_secs,
    };
    config.validate()?;
    let (key, observations, default_id) = if let Some(path) = &args.csv {
        let header = std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let columns: Vec<&str> = header.split(',').map(str::trim).collect();
        let value_column = (columns.len() == 2)
            .then(|| {
                columns
                    .iter()
                    .find(|c| !c.eq_ignore_ascii_case("timestamp"))
                    .copied()
            })
            .flatten()
            .map(str::to_string);
        // A two-column file is one series: it is named by --service/--region, or by its value
        // column when they are not given.
        let single_key = SeriesKey::new(
            args.service
                .clone()
                .or_else(|| value_column.clone())
                .unwrap_or_else(|| "demand".into()),
            args.region.clone().unwrap_or_else(|| "default".into()),
        );
        let mut all = csv_source::read_csv(path, Some(&single_key))?;
        let key = if value_column.is_some() {
            single_key
        } else {
            match (&args.service, &args.region) {
                (Some(s), Some(r)) => SeriesKey::new(s, r),
                _ if all.len() == 1 => all.keys().next().expect("one").clone(),
                _ => bail!(
                    "{} holds {} series ({}); pick one with --service and --region",
                    path.display(),
                    all.len(),
                    all.keys()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        };
        let observations = all
            .remove(&key)
            .with_context(|| format!("{} has no rows for {key}", path.display()))?;
        let default_id = value_column.filter(|_| args.service.is_none() && args.region.is_none());
        let id = default_id.unwrap_or_else(|| key_string(&key));
        (key, observations, id)
    } else if let (Some(url), Some(query)) = (&args.prometheus, &args.query) {
        let end = args.end.unwrap_or_else(Utc::now);
        let start = args.start.unwrap_or(end - chrono::Duration::days(28));
        let key = SeriesKey::new(
            args.service.clone().unwrap_or_else(|| "prometheus".into()),
            args.region.clone().unwrap_or_else(|| "default".into()),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = reqwest::Client::new();
        let range = prometheus::RangeQuery {
            query: query.clone(),
            start,
            end,
            step_secs: args.slice_secs,
        };
        let observations = runtime.block_on(prometheus::query_range(&client, url, &range))?;
        let id = key_string(&key);
        (key, observations, id)
    } else {
        bail!("give a series: --csv FILE, or --prometheus URL --query PROMQL");
    };
    let (series, report) = build_series(key, &observations, &config)?;
    Ok(LoadedSeries {
        series,
        report,
        unique_id: args.unique_id.clone().unwrap_or(default_id),
    })
}

fn key_string(key: &SeriesKey) -> String {
    key.to_string()
}

/// A progress bar on stderr for `total` steps; hidden when stderr is not a terminal or in
/// `--json` mode, so scripts see clean output.
pub fn progress_bar(total: usize, message: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// Seconds on a monotonic clock since the first call; the library's cores take a timer
/// rather than reading the clock themselves.
pub fn monotonic_timer() -> impl FnMut() -> f64 {
    let start = Instant::now();
    move || start.elapsed().as_secs_f64()
}

/// Print what `build_series` repaired, on stderr.
pub fn print_history_report(unique_id: &str, series: &DemandSeries, report: &HistoryReport) {
    eprintln!(
        "{unique_id}: {} slices of {} s from {}; {} duplicates merged, {} missing slices filled in {} gaps, {} non-finite values",
        series.len(),
        series.slice_secs,
        series.start.to_rfc3339(),
        report.duplicates,
        report.filled_slices,
        report.gaps.len(),
        report.non_finite
    );
    for (from, missing) in report.gaps.iter().take(10) {
        eprintln!("  gap: {missing} slices from {from}");
    }
}

/// Arguments of `umbra forecast`.
#[derive(Debug, clap::Args)]
pub struct ForecastArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Slices to forecast (default: one day).
    #[arg(long)]
    pub horizon: Option<usize>,
    /// Event calendar (TOML, `[[event]]` tables with name, start, end and scale or value).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Past daily origins replayed to choose the model and calibrate the quantiles.
    #[arg(long, default_value_t = DEFAULT_CALIBRATION_ORIGINS)]
    pub calibration_origins: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also draw the history tail and the forecast band as SVG.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

#[derive(Serialize)]
struct ForecastOutput<'a> {
    unique_id: &'a str,
    history: &'a HistoryReport,
    history_slices: usize,
    model: &'static str,
    periods: &'a [usize],
    calibration: &'a umbra_forecast::Calibration,
    model_errors: Vec<(&'static str, Option<f64>)>,
    slices: Vec<SliceForecast>,
}

pub fn load_calendar(path: Option<&PathBuf>) -> anyhow::Result<EventCalendar> {
    match path {
        None => Ok(EventCalendar::default()),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            EventCalendar::from_toml(&text).with_context(|| format!("in {}", p.display()))
        }
    }
}

pub fn run(args: ForecastArgs) -> anyhow::Result<()> {
    let loaded = load_series(&args.source)?;
    let series = &loaded.series;
    if !args.json {
        print_history_report(&loaded.unique_id, series, &loaded.report);
    }
    let config = ForecastConfig::for_slice_secs(series.slice_secs);
    let horizon = args.horizon.unwrap_or(config.seasons.daily);
    if horizon == 0 {
        bail!("--horizon must be at least 1");
    }
    let forecaster = Forecaster::new(config, load_calendar(args.events.as_ref())?)?;
    let mut state = SeriesState::default();
    let mut timer = monotonic_timer();
    let bar = progress_bar(args.calibration_origins, "calibrating", args.json);
    forecaster.calibrate(
        &mut state,
        series,
        horizon,
        args.calibration_origins,
        &mut timer,
        &mut |done, _| bar.set_position(done as u64),
    );
    bar.finish_and_clear();
    let set = forecaster.forecast(&mut state, series, horizon, &mut monotonic_timer())?;
    let f = &set.chosen;
    let slices = f.slices();
    if let Some(path) = &args.plot {
        let tail = (2 * horizon).min(series.len());
        let mut demand: Vec<f64> = series.values[series.len() - tail..].to_vec();
        demand.extend(std::iter::repeat_n(f64::NAN, horizon));
        let pad = |v: Vec<f64>| -> Vec<f64> {
            let mut out = vec![f64::NAN; tail];
            out.extend(v);
            out
        };
        let mean = pad(slices.iter().map(|s| s.mean).collect());
        let lo = pad((0..horizon).map(|s| f.interval(s, 0.8).0).collect());
        let hi = pad(slices.iter().map(|s| s.p90).collect());
        let p99 = pad(slices.iter().map(|s| s.p99).collect());
        let title = format!("{} forecast ({})", loaded.unique_id, f.model.name());
        let svg = render_svg(
            &PlotInput {
                title: &title,
                y_label: "demand",
                hours_per_step: f64::from(series.slice_secs) / 3600.0,
                demand: PlotSeries {
                    label: "history",
                    values: &demand,
                },
                band: Some((
                    PlotSeries {
                        label: "p10",
                        values: &lo,
                    },
                    PlotSeries {
                        label: "p90",
                        values: &hi,
                    },
                )),
                forecast_mean: Some(PlotSeries {
                    label: "forecast mean",
                    values: &mean,
                }),
                pools: vec![PlotSeries {
                    label: "p99",
                    values: &p99,
                }],
            },
            1200,
            500,
        )?;
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        let out = ForecastOutput {
            unique_id: &loaded.unique_id,
            history: &loaded.report,
            history_slices: series.len(),
            model: f.model.name(),
            periods: &f.periods,
            calibration: &f.calibration,
            model_errors: f.model_errors.iter().map(|(k, e)| (k.name(), *e)).collect(),
            slices,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let errors: Vec<String> = f
        .model_errors
        .iter()
        .map(|(k, e)| match e {
            Some(e) => format!("{} {e:.3}", k.name()),
            None => format!("{} n/a", k.name()),
        })
        .collect();
    println!(
        "model: {} (periods {:?}); rolling MASE: {}; quantiles: {:?}",
        f.model.name(),
        f.periods,
        errors.join(", "),
        f.calibration
    );
    println!(
        "{:<26} {:>12} {:>12} {:>12} {:>12}  event",
        "slice", "mean", "p50", "p90", "p99"
    );
    for s in &slices {
        println!(
            "{:<26} {:>12.2} {:>12.2} {:>12.2} {:>12.2}  {}",
            s.start.to_rfc3339(),
            s.mean,
            s.p50,
            s.p90,
            s.p99,
            s.event.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
