//! `umbra forecast`: load a demand series (CSV or Prometheus), forecast the next slices and
//! print mean and quantiles per slice (table, `--json`, or an SVG plot). Also holds the
//! series-loading arguments and helpers that `umbra backtest` and `umbra simulate` share.
//! Forecasting logic lives in the library (`umbra_orchestrator::forecast`), not here.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::plot::{Band, FORECAST_COLOR, Figure, INK, Line, PALETTE, Panel, TimeAxis, render_svg};
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use umbra_forecast::calendar::EventCalendar;
use umbra_forecast::history::{
    DEFAULT_MAX_GAP_SECS, DEFAULT_SLICE_SECS, DemandSeries, HistoryConfig, HistoryReport,
    SeriesKey, build_series, csv_source, median_spacing_secs, prometheus,
};
use umbra_forecast::simulate::DEFAULT_ACTIVATION_SECS;
use umbra_forecast::sizing::instances_for;
use umbra_forecast::{
    DEFAULT_CALIBRATION_ORIGINS, DemandForecast, ForecastConfig, Forecaster, SeriesState,
    SliceForecast,
};
use umbra_orchestrator::executor::shadow_sizing::{pool_slice_secs, pool_slices, sizing_policy};
use umbra_orchestrator::state::Plan;

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
    /// Slice width in seconds (must divide a day). Default: the data's own spacing (the
    /// median spacing of a CSV's timestamps, or of the Prometheus samples behind the query,
    /// no finer than 300 s).
    #[arg(long)]
    pub slice_secs: Option<u32>,
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
    pub slice: SliceWidth,
}

/// The slice width a series was built at, and where it came from (`--json` shows it).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SliceWidth {
    pub secs: u32,
    pub from: SliceWidthFrom,
    /// The median spacing of the data's timestamps, seconds (none for fewer than two).
    pub data_spacing_secs: Option<u32>,
}

/// Where a slice width came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SliceWidthFrom {
    /// The median spacing of the data's timestamps.
    Data,
    /// `--slice-secs`.
    Flag,
    /// The spacing of the Prometheus samples behind the query
    /// (`prometheus::sample_spacing`): a computed expression's is the probe's step.
    PrometheusSamples,
}

impl SliceWidth {
    /// The width for observations spaced `data_spacing_secs` apart, given `--slice-secs`.
    fn choose(flag: Option<u32>, data_spacing_secs: Option<u32>) -> anyhow::Result<Self> {
        if let Some(secs) = flag {
            return Ok(Self {
                secs,
                from: SliceWidthFrom::Flag,
                data_spacing_secs,
            });
        }
        let Some(secs) = data_spacing_secs else {
            bail!(
                "the data has fewer than two distinct timestamps, so no slice width can be inferred; give --slice-secs"
            );
        };
        if secs == 0 || 86_400 % secs != 0 {
            bail!(
                "the data's timestamps are {secs} s apart (the median spacing), which does not divide a day; give --slice-secs, e.g. 300 or 1800, and the data will be bucketed and interpolated to it"
            );
        }
        Ok(Self {
            secs,
            from: SliceWidthFrom::Data,
            data_spacing_secs,
        })
    }

    /// One line for a person: the width, and why.
    pub fn describe(&self) -> String {
        match (self.from, self.data_spacing_secs) {
            (SliceWidthFrom::Data, _) => format!(
                "slice width {} s, inferred from the data (the median spacing of its timestamps; --slice-secs overrides it)",
                self.secs
            ),
            (SliceWidthFrom::Flag, Some(data)) if data > self.secs => format!(
                "slice width {} s from --slice-secs; the data's timestamps are {data} s apart, so slices between them are filled by interpolation",
                self.secs
            ),
            (SliceWidthFrom::Flag, Some(data)) if data < self.secs => format!(
                "slice width {} s from --slice-secs; the data's timestamps are {data} s apart, so the rows in each slice are averaged",
                self.secs
            ),
            (SliceWidthFrom::Flag, _) => format!("slice width {} s from --slice-secs", self.secs),
            (SliceWidthFrom::PrometheusSamples, _) => format!(
                "slice width {} s, inferred from the spacing of the Prometheus samples behind the query (a computed expression is read at {} s; --slice-secs overrides it)",
                self.secs,
                prometheus::SPACING_PROBE_STEP_SECS
            ),
        }
    }
}

/// Load the series named by `args`.
pub fn load_series(args: &SourceArgs) -> anyhow::Result<LoadedSeries> {
    if let Some(slice_secs) = args.slice_secs {
        HistoryConfig {
            slice_secs,
            max_gap_secs: args.max_gap_secs,
        }
        .validate()?;
    }
    // A CSV's slice width comes from its rows once read; Prometheus's before the query.
    let (key, observations, default_id, slice) = if let Some(path) = &args.csv {
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
        (key, observations, id, None)
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
        let mut range = prometheus::RangeQuery {
            query: query.clone(),
            start,
            end,
            step_secs: args.slice_secs.unwrap_or(DEFAULT_SLICE_SECS),
        };
        let slice = match args.slice_secs {
            Some(secs) => SliceWidth {
                secs,
                from: SliceWidthFrom::Flag,
                data_spacing_secs: None,
            },
            None => {
                let Some((spacing, last)) =
                    runtime.block_on(prometheus::sample_spacing(&client, url, &range))?
                else {
                    bail!(
                        "Prometheus has fewer than two samples of {query} in the last day of the range ({start} to {end}), so no slice width can be inferred; check --start and --end, or give --slice-secs"
                    );
                };
                let mut slice = SliceWidth::choose(None, Some(spacing))?;
                slice.from = SliceWidthFrom::PrometheusSamples;
                // Evaluate on the samples' own phase: a range query looks back only 5
                // minutes from each step, so steps between sparse samples would find none.
                let offset = (last.timestamp() - start.timestamp()).rem_euclid(i64::from(spacing));
                range.start = start + chrono::Duration::seconds(offset);
                range.step_secs = spacing;
                slice
            }
        };
        let observations = runtime.block_on(prometheus::query_range(&client, url, &range))?;
        let id = key_string(&key);
        (key, observations, id, Some(slice))
    } else {
        bail!("give a series: --csv FILE, or --prometheus URL --query PROMQL");
    };
    let slice = match slice {
        Some(slice) => slice,
        None => SliceWidth::choose(args.slice_secs, median_spacing_secs(&observations))?,
    };
    let config = HistoryConfig {
        slice_secs: slice.secs,
        max_gap_secs: args.max_gap_secs,
    };
    let (series, report) = build_series(key, &observations, &config)?;
    Ok(LoadedSeries {
        series,
        report,
        unique_id: args.unique_id.clone().unwrap_or(default_id),
        slice,
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

/// Print the slice width and what `build_series` repaired, on stderr: two lines, whatever
/// the number of gaps (they are summed up, never listed).
pub fn print_history_report(loaded: &LoadedSeries) {
    let (series, report) = (&loaded.series, &loaded.report);
    eprintln!("{}", loaded.slice.describe());
    let gaps = report.gap_summary(series.slice_secs);
    let gap_text = if gaps.count == 0 {
        "no gaps".to_string()
    } else {
        format!(
            "{} gaps filled by interpolation ({} slices, {} in all)",
            gaps.count,
            gaps.slices,
            span_text(gaps.total_secs)
        )
    };
    eprintln!(
        "{}: {} slices of {} s from {} to {}; {gap_text}; {} duplicates merged, {} non-finite values",
        loaded.unique_id,
        series.len(),
        series.slice_secs,
        series.start.format("%Y-%m-%d %H:%M UTC"),
        series
            .slice_start(series.len())
            .format("%Y-%m-%d %H:%M UTC"),
        report.duplicates,
        report.non_finite
    );
}

/// A length of time for a person: `3 d 4 h 30 min`, leaving out what is zero.
pub fn span_text(secs: u64) -> String {
    let (days, hours, mins) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    let mut parts = Vec::new();
    for (n, unit) in [(days, "d"), (hours, "h"), (mins, "min")] {
        if n > 0 {
            parts.push(format!("{n} {unit}"));
        }
    }
    if parts.is_empty() {
        format!("{secs} s")
    } else {
        parts.join(" ")
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
    /// Also draw the history tail, the forecast band and the pool it sizes as SVG.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Requests per second one instance serves (the plan's `capacity_rps_per_instance`):
    /// the plot's pool panel sizes the pool from the forecast with it, as the leader does.
    /// Default: the example plan's.
    #[arg(long)]
    pub capacity_rps: Option<f64>,
}

#[derive(Serialize)]
struct ForecastOutput<'a> {
    unique_id: &'a str,
    slice: &'a SliceWidth,
    /// The SVG written by `--plot` (absolute path).
    plot: Option<String>,
    history: &'a HistoryReport,
    history_slices: usize,
    model: &'static str,
    periods: &'a [usize],
    calibration: &'a umbra_forecast::Calibration,
    model_errors: Vec<(&'static str, Option<f64>)>,
    /// Why the model was chosen.
    choice_reason: &'a str,
    /// What robust training adjusted out of the history before fitting.
    adjusted: umbra_forecast::Adjusted,
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
    let capacity_rps = match args.capacity_rps {
        Some(c) if !c.is_finite() || c <= 0.0 => {
            bail!("--capacity-rps must be a positive number of requests per second, not {c}")
        }
        Some(c) => c,
        None => Plan::example().services[0].capacity_rps_per_instance,
    };
    let loaded = load_series(&args.source)?;
    let series = &loaded.series;
    if !args.json {
        print_history_report(&loaded);
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
    let plot = match &args.plot {
        Some(path) => {
            let title = format!(
                "{}: forecast ({}) and the pool it sizes",
                loaded.unique_id,
                f.model.name()
            );
            let svg = render_svg(&forecast_figure(series, f, title, capacity_rps)?, 1400, 360)?;
            Some(write_plot(path, &svg)?)
        }
        None => None,
    };
    if args.json {
        let out = ForecastOutput {
            unique_id: &loaded.unique_id,
            slice: &loaded.slice,
            plot,
            history: &loaded.report,
            history_slices: series.len(),
            model: f.model.name(),
            periods: &f.periods,
            calibration: &f.calibration,
            model_errors: f.model_errors.iter().map(|(k, e)| (k.name(), *e)).collect(),
            choice_reason: &f.choice_reason,
            adjusted: f.adjusted,
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
    println!("chosen: {}", f.choice_reason);
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
    if let Some(plot) = plot {
        println!("plot written to {plot}");
    }
    Ok(())
}

/// Write `svg` to `path`; its absolute path, for the user to open.
pub fn write_plot(path: &Path, svg: &str) -> anyhow::Result<String> {
    std::fs::write(path, svg).with_context(|| format!("writing the plot to {}", path.display()))?;
    let written = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(written.display().to_string())
}

/// Two panels over the last two horizons of history and the forecast horizon: demand (the
/// actuals, the forecast mean and its 80 % interval) in requests per second, and the pool in
/// instances: what the actuals needed at `capacity_rps` each, and the warm and total target
/// the product's sizing (`shadow_sizing::pool_slices`, before hysteresis) takes from the
/// forecast, in the executor's pool slices.
fn forecast_figure(
    series: &DemandSeries,
    f: &DemandForecast,
    title: String,
    capacity_rps: f64,
) -> anyhow::Result<Figure> {
    let horizon = f.horizon();
    let tail = (2 * horizon).min(series.len());
    let pool_secs = pool_slice_secs(series.slice_secs);
    // The axis runs at the pool slices' width; a demand slice's value sits at its start.
    let per_slice = (series.slice_secs / pool_secs) as usize;
    let axis = TimeAxis {
        start: series.slice_start(series.len() - tail),
        step_secs: pool_secs,
        steps: (tail + horizon) * per_slice,
    };
    let at_slices = |values: &mut dyn Iterator<Item = f64>| -> Vec<f64> {
        let mut out = vec![f64::NAN; axis.steps];
        for (i, v) in values.enumerate() {
            out[i * per_slice] = v;
        }
        out
    };
    let history = at_slices(&mut series.values[series.len() - tail..].iter().copied());
    let future = |value: &dyn Fn(usize) -> f64| {
        at_slices(
            &mut (0..tail + horizon).map(|i| if i < tail { f64::NAN } else { value(i - tail) }),
        )
    };
    let mean = future(&|s| f.mean(s));
    let lower = future(&|s| f.interval(s, 0.8).0);
    let upper = future(&|s| f.interval(s, 0.8).1);
    let needed = history.iter().map(|v| v / capacity_rps).collect();

    let plan = Plan::example();
    let mut service = plan.services[0].clone();
    service.capacity_rps_per_instance = capacity_rps;
    let peak = (0..horizon)
        .map(|s| f.quantile(s, 0.99))
        .chain(series.values.iter().copied())
        .fold(0.0, f64::max);
    service.max_instances = 2 * instances_for(peak, capacity_rps).max(1);
    let policy = sizing_policy(
        &service,
        &plan.regions[0],
        pool_secs,
        f64::from(DEFAULT_ACTIVATION_SECS),
    )
    .context("sizing the plot's pool")?;
    let targets = pool_slices(&policy, f, 0, horizon - 1, 1.0);
    let offset = tail * per_slice;
    let mut warm = vec![f64::NAN; axis.steps];
    let mut total = vec![f64::NAN; axis.steps];
    for (i, t) in targets.iter().enumerate().take(axis.steps - offset) {
        warm[offset + i] = f64::from(t.target.warm);
        total[offset + i] = f64::from(t.target.total());
    }
    let line = |label: &str, values: Vec<f64>, color, stroke_px| Line {
        label: label.to_string(),
        values,
        color,
        stroke_px,
    };
    Ok(Figure {
        title,
        axis,
        panels: vec![
            Panel {
                title: "demand: actuals, forecast mean and 80 % interval".into(),
                unit: "requests/s",
                band: Some(Band {
                    label: "forecast p10–p90".into(),
                    lower,
                    upper,
                    color: FORECAST_COLOR,
                }),
                lines: vec![
                    line("actual demand", history, INK, 1),
                    line("forecast mean", mean, FORECAST_COLOR, 2),
                ],
                misses: Vec::new(),
            },
            Panel {
                title: format!(
                    "pool: instances at {capacity_rps} requests/s each, sized to the {:.2} quantile of demand (the example plan's tier)",
                    service.tier.quantile().unwrap_or(0.0)
                ),
                unit: "instances",
                band: None,
                lines: vec![
                    line("needed by the actuals", needed, INK, 1),
                    line("target: warm + dormant", total, PALETTE[2], 5),
                    line("target: warm (serving)", warm, PALETTE[1], 2),
                ],
                misses: Vec::new(),
            },
        ],
    })
}
