//! `umbra simulate`: replay a demand trace against pool policies (reactive, fixed,
//! keepalive, predictive-mean, hybrid-histogram, umbra) with a launch delay, and print served
//! share, idle instance-time and cost as a table or `--json`, with an optional SVG plot. The
//! forecasts the policies see are made at each day's start from the history before it, as an
//! orchestrator would have had them. `umbra` is the product itself: the executor's controller
//! driving a simulated agent (`umbra_orchestrator::executor::simulated_agent::replay`), sized
//! by the product's own pool sizing; it is scored from the agent's instances. Simulation and
//! sizing are the libraries'; this file wires them up.

use std::path::PathBuf;

use crate::plot::{
    Band, FORECAST_COLOR, Figure, INK, Line, PALETTE, Panel, TimeAxis, render_svg, spans_where,
};
use anyhow::{Context, bail};
use serde::Serialize;
use umbra_forecast::backtest::forecasts_at_origins;
use umbra_forecast::calendar::EventCalendar;
use umbra_forecast::history::DEFAULT_MAX_GAP_SECS;
use umbra_forecast::simulate::{
    DEFAULT_ACTIVATION_SECS, DEFAULT_LAUNCH_DELAY_SECS, DEFAULT_PRICES, DemandOutlook, Fixed,
    ForecastOutlook, HybridHistogram, KeepAlive, PoolSample, PredictiveMean, PriceTable, Reactive,
    Scorer, SimConfig, SimResult, fixed_pool_matching, resample_linear, simulate,
};
use umbra_forecast::sizing::{PoolTarget, Tier, instances_for};
use umbra_forecast::{DEFAULT_CALIBRATION_ORIGINS, ForecastConfig, Forecaster};
use umbra_orchestrator::executor::ExecutorConfig;
use umbra_orchestrator::executor::controller::{ControllerConfig, PoolJob};
use umbra_orchestrator::executor::pools::PoolForecast;
use umbra_orchestrator::executor::shadow_sizing::{pool_slice_secs, pool_slices, sizing_policy};
use umbra_orchestrator::executor::simulated_agent::AgentDelays;
use umbra_orchestrator::executor::simulated_agent::replay::{ReplayCounts, ReplaySetup, replay};
use umbra_orchestrator::state::{Plan, PoolMode, ReplicationKind};

use crate::forecast::{
    SliceWidth, SourceArgs, load_series, monotonic_timer, print_history_report, progress_bar,
    write_plot,
};

const POLICIES: [&str; 6] = [
    "reactive",
    "fixed",
    "keepalive",
    "predictive-mean",
    "hybrid-histogram",
    "umbra",
];

/// Arguments of `umbra simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Demand trace CSV (`timestamp,<value>` or `timestamp,service,region,value`).
    #[arg(long, value_name = "FILE")]
    pub trace: PathBuf,
    /// Service of a long CSV trace.
    #[arg(long)]
    pub service: Option<String>,
    /// Region of a long CSV trace.
    #[arg(long)]
    pub region: Option<String>,
    /// Slice width of the trace and of the forecasts, seconds. Default: the trace's own
    /// spacing (the median spacing of its timestamps).
    #[arg(long)]
    pub slice_secs: Option<u32>,
    #[arg(long, default_value_t = DEFAULT_MAX_GAP_SECS)]
    pub max_gap_secs: u32,
    /// Policies to run: comma list of reactive, fixed, keepalive, predictive-mean,
    /// hybrid-histogram, umbra, or all.
    #[arg(long, default_value = "all")]
    pub policy: String,
    /// Days replayed: the last N days of the trace (earlier data is forecast history).
    #[arg(long, default_value_t = 28)]
    pub days: usize,
    /// Simulation step, seconds (the trace is interpolated between slice starts).
    #[arg(long, default_value_t = 60)]
    pub step_secs: u32,
    /// Demand units per step per trace unit (e.g. requests per minute per MW).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Demand units one instance serves per step.
    #[arg(long, default_value_t = 1000.0)]
    pub capacity: f64,
    /// Time from launching a cold instance to it serving, seconds.
    #[arg(long, default_value_t = DEFAULT_LAUNCH_DELAY_SECS)]
    pub launch_delay_secs: u32,
    /// Time from activating a dormant instance to it serving, seconds.
    #[arg(long, default_value_t = DEFAULT_ACTIVATION_SECS)]
    pub activation_secs: u32,
    #[arg(long, default_value_t = DEFAULT_PRICES.warm_per_instance_hour)]
    pub price_warm_per_hour: f64,
    #[arg(long, default_value_t = DEFAULT_PRICES.dormant_per_instance_hour)]
    pub price_dormant_per_hour: f64,
    /// Cost of one demand unit that meets a cold start.
    #[arg(long, default_value_t = DEFAULT_PRICES.miss_per_unit)]
    pub price_miss: f64,
    /// Pool of the fixed policy (default: the smallest that misses no more than umbra).
    #[arg(long)]
    pub fixed_pool: Option<u32>,
    /// Minutes an instance of the keepalive policy stays after its last use.
    #[arg(long, default_value_t = 10)]
    pub keepalive_mins: usize,
    /// Scale-down stabilisation of the reactive policy, minutes (Kubernetes HPA: 5).
    #[arg(long, default_value_t = 5)]
    pub stabilisation_mins: usize,
    /// umbra: slices in a row a smaller pool must be asked for before it shrinks (the
    /// executor's `pool_shrink_after_slices`).
    #[arg(long, default_value_t = umbra_forecast::sizing::DEFAULT_HYSTERESIS.shrink_after_slices)]
    pub pool_shrink_after_slices: u32,
    /// umbra: smallest shrink worth making, as a fraction of the pool (`pool_shrink_band`).
    #[arg(long, default_value_t = umbra_forecast::sizing::DEFAULT_HYSTERESIS.shrink_band)]
    pub pool_shrink_band: f64,
    /// umbra: how the service's pool is sized, `predictive` (the default) or `reactive`
    /// (the service's `pools`).
    #[arg(long, default_value = "predictive", value_parser = ["predictive", "reactive"])]
    pub umbra_pools: String,
    /// umbra: added to the measured lead times, ms (`pool_lead_margin_ms`).
    #[arg(long, default_value_t = umbra_orchestrator::executor::pools::DEFAULT_LEAD_MARGIN_MS)]
    pub pool_lead_margin_ms: u64,
    /// Scored past origins used to calibrate the forecasts before the replayed window.
    #[arg(long, default_value_t = DEFAULT_CALIBRATION_ORIGINS)]
    pub calibration_origins: usize,
    /// Draw the demand and the forecast, then one panel per policy of the instances it held
    /// against those needed, with its misses shaded, as SVG.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Days drawn by --plot, from the start of the replayed window.
    #[arg(long, default_value_t = 7)]
    pub plot_days: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct SimulateOutput<'a> {
    slice: &'a SliceWidth,
    /// The SVG written by `--plot` (absolute path).
    plot: Option<String>,
    config: &'a SimConfig,
    days: usize,
    umbra_quantile: Option<f64>,
    /// What the product's controller did in the `umbra` run.
    umbra_core: Option<ReplayCounts>,
    results: &'a [SimResult],
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let policies: Vec<&str> = if args.policy == "all" {
        POLICIES.to_vec()
    } else {
        args.policy.split(',').map(str::trim).collect()
    };
    for p in &policies {
        if !POLICIES.contains(p) {
            bail!(
                "unknown policy {p:?}; choose from {} or all",
                POLICIES.join(", ")
            );
        }
    }
    if args.days == 0 || args.scale.is_nan() || args.scale <= 0.0 {
        bail!("--days and --scale must be positive");
    }
    let config = SimConfig {
        step_secs: args.step_secs,
        capacity_per_step: args.capacity,
        launch_delay_secs: args.launch_delay_secs,
        activation_secs: args.activation_secs,
        prices: PriceTable {
            warm_per_instance_hour: args.price_warm_per_hour,
            dormant_per_instance_hour: args.price_dormant_per_hour,
            miss_per_unit: args.price_miss,
        },
    };
    config.validate().map_err(anyhow::Error::msg)?;
    let source = SourceArgs {
        csv: Some(args.trace.clone()),
        prometheus: None,
        query: None,
        service: args.service.clone(),
        region: args.region.clone(),
        slice_secs: args.slice_secs,
        max_gap_secs: args.max_gap_secs,
        start: None,
        end: None,
        unique_id: None,
    };
    let loaded = load_series(&source)?;
    let series = &loaded.series;
    if !args.json {
        print_history_report(&loaded);
    }
    let forecast_config = ForecastConfig::for_slice_secs(series.slice_secs);
    let daily = forecast_config.seasons.daily;
    let sim_slices = args.days * daily;
    if series.len() < sim_slices + 2 * daily {
        bail!(
            "the trace has {} slices; replaying {} days needs at least {} (two days of history before them); use fewer --days",
            series.len(),
            args.days,
            sim_slices + 2 * daily
        );
    }
    let first = series.len() - sim_slices;
    let positions: Vec<usize> = (0..args.days).map(|d| first + d * daily).collect();
    let lead_steps = config.launch_steps();
    // Each day's forecast must reach past the next origin by the policies' look-ahead.
    let lead_slices = (lead_steps * args.step_secs as usize).div_ceil(series.slice_secs as usize);
    let horizon = daily + lead_slices + 2;
    let forecaster = Forecaster::new(forecast_config, EventCalendar::default())?;
    let bar = progress_bar(
        args.calibration_origins + positions.len(),
        "forecasting",
        args.json,
    );
    let forecasts = forecasts_at_origins(
        &forecaster,
        series,
        &positions,
        horizon,
        args.calibration_origins,
        &mut monotonic_timer(),
        &mut |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    let steps = args.days * 86_400 / args.step_secs as usize;
    let demand: Vec<f64> = resample_linear(
        &series.values[first..],
        series.slice_secs,
        args.step_secs,
        steps,
    )
    .into_iter()
    .map(|v| v * args.scale)
    .collect();
    let outlook = ForecastOutlook {
        forecasts,
        origin_steps: 86_400 / args.step_secs as usize,
        lag_steps: lead_steps,
        step_secs: args.step_secs,
        scale: args.scale,
    };
    let start_pool = PoolTarget {
        warm: instances_for(demand[0], config.capacity_per_step),
        dormant: 0,
    };
    let core = CoreRun {
        args: &args,
        config: &config,
        slice_secs: series.slice_secs,
        start_ms: series.slice_start(first).timestamp_millis().max(0) as u64,
        peak: series.values.iter().copied().fold(0.0, f64::max) * args.scale,
    };
    let (umbra_quantile, setup) = core.setup(start_pool.warm);
    let needs_umbra =
        policies.contains(&"umbra") || (policies.contains(&"fixed") && args.fixed_pool.is_none());
    let umbra = needs_umbra
        .then(|| core.run(&setup, &demand, &outlook))
        .transpose()?;
    let mut results = Vec::new();
    for p in &policies {
        let r = match *p {
            "umbra" => umbra.as_ref().expect("umbra ran").0.clone(),
            "reactive" => simulate(
                &config,
                &demand,
                &outlook,
                &mut Reactive::new(
                    config.capacity_per_step,
                    args.stabilisation_mins * 60 / args.step_secs as usize,
                ),
                start_pool,
            ),
            "keepalive" => simulate(
                &config,
                &demand,
                &outlook,
                &mut KeepAlive {
                    capacity: config.capacity_per_step,
                    keep_steps: args.keepalive_mins * 60 / args.step_secs as usize,
                },
                start_pool,
            ),
            "predictive-mean" => simulate(
                &config,
                &demand,
                &outlook,
                &mut PredictiveMean {
                    capacity: config.capacity_per_step,
                    lead_steps,
                },
                start_pool,
            ),
            "hybrid-histogram" => simulate(
                &config,
                &demand,
                &outlook,
                &mut HybridHistogram::new(config.capacity_per_step, args.step_secs, lead_steps),
                start_pool,
            ),
            "fixed" => match args.fixed_pool {
                Some(pool) => simulate(
                    &config,
                    &demand,
                    &outlook,
                    &mut Fixed { pool },
                    PoolTarget {
                        warm: pool,
                        dormant: 0,
                    },
                ),
                None => {
                    let umbra_missed = 1.0 - umbra.as_ref().expect("umbra ran").0.served_share;
                    let (_, mut r) = fixed_pool_matching(&config, &demand, &outlook, umbra_missed);
                    r.policy = format!("{} =umbra miss", r.policy);
                    r
                }
            },
            _ => unreachable!("policies were checked above"),
        };
        results.push(r);
    }
    let plot = match &args.plot {
        Some(path) => {
            let steps =
                (args.plot_days.max(1) * 86_400 / args.step_secs as usize).min(demand.len());
            let figure = simulation_figure(
                series.slice_start(first),
                &demand[..steps],
                &outlook,
                &results,
                &config,
                &loaded.unique_id,
            );
            let svg = render_svg(&figure, 1400, 250)?;
            Some(write_plot(path, &svg)?)
        }
        None => None,
    };
    if args.json {
        let out = SimulateOutput {
            slice: &loaded.slice,
            plot,
            config: &config,
            days: args.days,
            umbra_quantile,
            umbra_core: umbra.as_ref().map(|(_, counts)| *counts),
            results: &results,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} days at {} s steps, launch delay {} s, dormant activation {} s, capacity {} per instance-step; umbra holds the {:.4} quantile",
        args.days,
        args.step_secs,
        args.launch_delay_secs,
        args.activation_secs,
        args.capacity,
        umbra_quantile.unwrap_or(0.0)
    );
    if let Some((_, counts)) = &umbra {
        println!(
            "umbra: the product's controller ran {} rounds, sent {} agent commands, asked for {} pool forecasts",
            counts.rounds, counts.commands, counts.pool_forecasts
        );
    }
    println!(
        "{:<26} {:>9} {:>12} {:>11} {:>11} {:>11} {:>11} {:>10} {:>8}",
        "policy",
        "served %",
        "missed",
        "miss steps",
        "warm inst-h",
        "idle inst-h",
        "dorm inst-h",
        "cost $",
        "resizes"
    );
    for r in &results {
        println!(
            "{:<26} {:>9.4} {:>12.0} {:>11} {:>11.1} {:>11.1} {:>11.1} {:>10.2} {:>8}",
            r.policy,
            100.0 * r.served_share,
            r.missed,
            r.steps_with_misses,
            r.warm_instance_hours,
            r.idle_instance_hours,
            r.dormant_instance_hours,
            r.cost_total,
            r.resizes
        );
    }
    if let Some(plot) = plot {
        println!("plot written to {plot}");
    }
    Ok(())
}

/// The `umbra` policy: the product's controller driving a simulated agent, in one region
/// whose only service matches the simulation.
struct CoreRun<'a> {
    args: &'a SimulateArgs,
    config: &'a SimConfig,
    /// The trace's slice width, seconds.
    slice_secs: u32,
    /// Unix ms of the first replayed step (the trace's own time, which the forecasts share).
    start_ms: u64,
    /// The trace's peak, demand units per step.
    peak: f64,
}

/// Name of the simulated service and region.
const SERVICE: &str = "simulated";
const REGION: &str = "simulated-region";

impl CoreRun<'_> {
    /// The replay's setup and the quantile its tier holds. The service serves
    /// `capacity / step` requests per second per instance, between one instance and twice the
    /// trace's peak, on the probabilistic tier at the simulation's prices (per instance and
    /// slice, as the product prices a pool), stateless, sized as `--umbra-pools` says; the
    /// executor's settings are the product's defaults but for the hysteresis and lead margin
    /// flags. `initial_serving`
    /// instances serve when the replay starts, like the other policies' first pool.
    fn setup(&self, initial_serving: u32) -> (Option<f64>, ReplaySetup) {
        let (args, config) = (self.args, self.config);
        let step_secs = f64::from(config.step_secs);
        let slice_secs = f64::from(self.slice_secs);
        let plan = Plan::example();
        let mut service = plan.services[0].clone();
        service.name = SERVICE.to_owned();
        service.primary_region = REGION.to_owned();
        service.capacity_rps_per_instance = config.capacity_per_step / step_secs;
        service.min_instances = 1;
        service.max_instances = 2 * instances_for(self.peak, config.capacity_per_step).max(1);
        service.replication = ReplicationKind::None;
        service.pools = match args.umbra_pools.as_str() {
            "reactive" => PoolMode::Reactive,
            _ => PoolMode::Predictive,
        };
        service.tier = Tier::Probabilistic {
            cost_miss: config.cost_miss_per_step() * slice_secs / step_secs,
            cost_idle: config.prices.warm_per_instance_hour * slice_secs / 3600.0,
        };
        let mut region = plan.regions[0].clone();
        region.name = REGION.to_owned();
        region.warm_instance_hour = config.prices.warm_per_instance_hour;
        region.dormant_instance_hour = config.prices.dormant_per_instance_hour;
        let executor = ExecutorConfig {
            schedules: false,
            pool_shrink_after_slices: args.pool_shrink_after_slices,
            pool_shrink_band: args.pool_shrink_band,
            pool_lead_margin_ms: args.pool_lead_margin_ms,
            ..ExecutorConfig::default()
        };
        let quantile = service.tier.quantile();
        let setup = ReplaySetup {
            service,
            region,
            controller: ControllerConfig::from(&executor),
            delays: AgentDelays::from_launch(
                u64::from(config.launch_delay_secs) * 1_000,
                u64::from(config.activation_secs) * 1_000,
            ),
            start_ms: self.start_ms,
            step_ms: u64::from(config.step_secs) * 1_000,
            initial_serving,
        };
        (quantile, setup)
    }

    /// Replays `demand` through the controller, answering its pool forecasts from the
    /// day-ahead forecasts the other policies see, and scores the agent's instances.
    fn run(
        &self,
        setup: &ReplaySetup,
        demand: &[f64],
        outlook: &ForecastOutlook,
    ) -> anyhow::Result<(SimResult, ReplayCounts)> {
        let requests: Vec<u64> = demand.iter().map(|d| d.max(0.0).round() as u64).collect();
        let bar = progress_bar(
            demand.len(),
            "umbra (the product's controller)",
            self.args.json,
        );
        let mut forecaster = |job: &PoolJob| self.pool_forecast(outlook, job);
        let (steps, counts) = replay(
            setup,
            &requests,
            std::time::Instant::now(),
            &mut forecaster,
            &mut |step| {
                if step % 1_440 == 0 {
                    bar.set_position(step as u64)
                }
            },
        )
        .context("the simulated service is not a valid plan")?;
        bar.finish_and_clear();
        let mut score = Scorer::new(self.config, "umbra".to_owned());
        for (step, &d) in steps.iter().zip(demand) {
            score.handle_step(
                d,
                PoolSample {
                    serving: step.census.serving,
                    booting: step.census.running,
                    dormant: step.census.parked,
                },
            );
        }
        for _ in 0..counts.target_changes {
            score.handle_resize();
        }
        Ok((score.finish(), counts))
    }

    /// A pool job answered as the product answers it ([`slice_target`] under the service's
    /// [`sizing_policy`]), from the day-ahead forecast made at the last origin before the job
    /// (so never from a forecast made later), in requests per second.
    fn pool_forecast(&self, outlook: &ForecastOutlook, job: &PoolJob) -> PoolForecast {
        let day = (job.from_ms.saturating_sub(self.start_ms) / 86_400_000) as usize;
        let forecast = &outlook.forecasts[day.min(outlook.forecasts.len() - 1)];
        let slice_ms = u64::from(forecast.slice_secs) * 1_000;
        let nothing = |reason: String| PoolForecast {
            slice_ms,
            slices: Vec::new(),
            reason,
        };
        let at = |ms: u64| chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default();
        let Some(first) = forecast.step_at(at(job.from_ms)) else {
            return nothing(format!(
                "the day's forecast does not cover {}",
                at(job.from_ms)
            ));
        };
        let last = forecast
            .step_at(at(job.from_ms + job.ahead_ms))
            .unwrap_or(forecast.horizon() - 1);
        let sub_secs = pool_slice_secs(forecast.slice_secs);
        let policy = match sizing_policy(&job.service, &job.region, sub_secs, job.activation_secs) {
            Ok(policy) => policy,
            Err(e) => return nothing(format!("sizing policy: {e}")),
        };
        // Forecasts are in trace units; the service counts requests per second.
        let rps = self.args.scale / f64::from(self.config.step_secs);
        PoolForecast {
            slice_ms: u64::from(sub_secs) * 1_000,
            slices: pool_slices(&policy, forecast, first, last, rps),
            reason: forecast.model.name().to_string(),
        }
    }
}

/// `value` rounded, with thin spaces between thousands: `1 548 487`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push('\u{2009}');
        }
        out.push(c);
    }
    if value < -0.5 {
        out.insert(0, '-');
    }
    out
}

/// `color` halfway to white, for a line that goes with `color`'s but matters less.
fn lighter(color: plotters::style::RGBColor) -> plotters::style::RGBColor {
    let half = |c: u8| c + (255 - c) / 2;
    plotters::style::RGBColor(half(color.0), half(color.1), half(color.2))
}

/// The simulation's figure: demand and the day-ahead forecast in requests per second, then
/// one panel per policy in instances: what it held serving (and dormant, where it keeps
/// any) against what the demand needed, its misses shaded and its totals in the title.
fn simulation_figure(
    start: chrono::DateTime<chrono::Utc>,
    demand: &[f64],
    outlook: &ForecastOutlook,
    results: &[SimResult],
    config: &SimConfig,
    unique_id: &str,
) -> Figure {
    let steps = demand.len();
    let step_secs = f64::from(config.step_secs);
    // Demand counts requests per step; the top panel shows requests per second.
    let per_second = |values: &mut dyn Iterator<Item = f64>| -> Vec<f64> {
        values.map(|v| v / step_secs).collect()
    };
    let line = |label: String, values: Vec<f64>, color, stroke_px| Line {
        label,
        values,
        color,
        stroke_px,
    };
    let needed: Vec<f64> = demand
        .iter()
        .map(|d| d / config.capacity_per_step)
        .collect();
    let mut panels = vec![Panel {
        title: "demand and the day-ahead forecast the policies saw".into(),
        unit: "requests/s",
        band: Some(Band {
            label: "forecast p10–p90".into(),
            lower: per_second(&mut (0..steps).map(|s| outlook.quantile(s, 0.1))),
            upper: per_second(&mut (0..steps).map(|s| outlook.quantile(s, 0.9))),
            color: FORECAST_COLOR,
        }),
        lines: vec![
            line(
                "demand".into(),
                per_second(&mut demand.iter().copied()),
                INK,
                1,
            ),
            line(
                "forecast mean".into(),
                per_second(&mut (0..steps).map(|s| outlook.mean(s))),
                FORECAST_COLOR,
                2,
            ),
        ],
        misses: Vec::new(),
    }];
    for (i, r) in results.iter().enumerate() {
        let serving: Vec<f64> = r
            .warm_by_step
            .iter()
            .take(steps)
            .map(|&w| f64::from(w))
            .collect();
        // A miss is a step whose demand the serving instances could not all serve, the
        // Scorer's rule.
        let misses = spans_where(
            demand
                .iter()
                .zip(&serving)
                .map(|(d, s)| d - d.min(s * config.capacity_per_step) > 1e-9),
        );
        let color = PALETTE[i % PALETTE.len()];
        let mut lines = vec![
            line("needed (demand ÷ capacity)".into(), needed.clone(), INK, 1),
            line("held: serving".into(), serving.clone(), color, 2),
        ];
        if r.dormant_by_step.iter().take(steps).any(|&d| d > 0) {
            let total = r
                .warm_by_step
                .iter()
                .zip(&r.dormant_by_step)
                .take(steps)
                .map(|(&w, &d)| f64::from(w + d))
                .collect();
            lines.push(line(
                "held: serving + dormant".into(),
                total,
                lighter(color),
                1,
            ));
        }
        panels.push(Panel {
            title: format!(
                "{}: missed {} requests ({:.4} %) in {} steps, idle {:.1} inst-h, dormant {:.1} inst-h (whole replay)",
                r.policy,
                thousands(r.missed),
                100.0 * (1.0 - r.served_share),
                r.steps_with_misses,
                r.idle_instance_hours,
                r.dormant_instance_hours
            ),
            unit: "instances",
            band: None,
            lines,
            misses,
        });
    }
    Figure {
        title: format!(
            "{unique_id}: instances each policy held against those needed ({:.1} requests/s per instance)",
            config.capacity_per_step / step_secs
        ),
        axis: TimeAxis {
            start,
            step_secs: config.step_secs,
            steps,
        },
        panels,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_are_spaced() {
        let cases = [
            (0.0, "0"),
            (999.4, "999"),
            (1_548_487.0, "1 548 487"),
            (-12_345.0, "-12 345"),
        ];
        for (value, want) in cases {
            assert_eq!(super::thousands(value), want.replace(' ', "\u{2009}"));
        }
    }
}
