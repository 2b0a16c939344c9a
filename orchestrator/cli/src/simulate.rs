//! `umbra simulate`: replay a demand trace against pool policies (reactive, fixed,
//! keepalive, predictive-mean, umbra) with a launch delay, and print served share, idle
//! instance-time and cost as a table or `--json`, with an optional SVG plot. The forecasts the
//! policies see are made at each day's start from the history before it, as an orchestrator
//! would have had them. Simulation and sizing are the library's; this file wires them up.

use std::path::PathBuf;

use crate::plot::{PlotInput, PlotSeries, render_svg};
use anyhow::{Context, bail};
use serde::Serialize;
use umbra_forecast::backtest::forecasts_at_origins;
use umbra_forecast::calendar::EventCalendar;
use umbra_forecast::history::{DEFAULT_MAX_GAP_SECS, DEFAULT_SLICE_SECS};
use umbra_forecast::simulate::{
    DEFAULT_ACTIVATION_SECS, DEFAULT_LAUNCH_DELAY_SECS, DEFAULT_PRICES, DemandOutlook, Fixed,
    ForecastOutlook, KeepAlive, PredictiveMean, PriceTable, Reactive, SimConfig, SimResult, Umbra,
    fixed_pool_matching, resample_linear, simulate,
};
use umbra_forecast::sizing::{Hysteresis, PoolTarget, instances_for};
use umbra_forecast::{DEFAULT_CALIBRATION_ORIGINS, ForecastConfig, Forecaster};

use crate::forecast::{
    SourceArgs, load_series, monotonic_timer, print_history_report, progress_bar,
};

const POLICIES: [&str; 5] = ["reactive", "fixed", "keepalive", "predictive-mean", "umbra"];

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
    /// Slice width of the trace and of the forecasts, seconds.
    #[arg(long, default_value_t = DEFAULT_SLICE_SECS)]
    pub slice_secs: u32,
    #[arg(long, default_value_t = DEFAULT_MAX_GAP_SECS)]
    pub max_gap_secs: u32,
    /// Policies to run: comma list of reactive, fixed, keepalive, predictive-mean, umbra, or all.
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
    /// Scored past origins used to calibrate the forecasts before the replayed window.
    #[arg(long, default_value_t = DEFAULT_CALIBRATION_ORIGINS)]
    pub calibration_origins: usize,
    /// Draw demand, forecast band and pools as SVG.
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
    config: &'a SimConfig,
    days: usize,
    umbra_quantile: Option<f64>,
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
        print_history_report(&loaded.unique_id, series, &loaded.report);
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
    let hysteresis = Hysteresis {
        // Decisions are per step here, so hold a smaller pool 5 minutes before shrinking (the
        // HPA's stabilisation window). No band beyond one instance: on the Taylor trace a 5 %
        // band kept one or two idle instances for hours and cost more than the resizes it saved.
        shrink_after_slices: (300 / args.step_secs).max(1),
        shrink_band: 0.0,
    };
    let mut umbra = Umbra::for_config(&config, hysteresis);
    let umbra_quantile = umbra.sizing.tier.quantile();
    let umbra_result = simulate(&config, &demand, &outlook, &mut umbra, start_pool);
    let mut results = Vec::new();
    for p in &policies {
        let r = match *p {
            "umbra" => umbra_result.clone(),
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
                    let (_, mut r) = fixed_pool_matching(
                        &config,
                        &demand,
                        &outlook,
                        1.0 - umbra_result.served_share,
                    );
                    r.policy = format!("{} =umbra miss", r.policy);
                    r
                }
            },
            _ => unreachable!("policies were checked above"),
        };
        results.push(r);
    }
    if let Some(path) = &args.plot {
        let steps = (args.plot_days.max(1) * 86_400 / args.step_secs as usize).min(demand.len());
        draw(
            path,
            &demand[..steps],
            &outlook,
            &results,
            &config,
            &loaded.unique_id,
        )?;
    }
    if args.json {
        let out = SimulateOutput {
            config: &config,
            days: args.days,
            umbra_quantile,
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
    Ok(())
}

fn draw(
    path: &PathBuf,
    demand: &[f64],
    outlook: &ForecastOutlook,
    results: &[SimResult],
    config: &SimConfig,
    unique_id: &str,
) -> anyhow::Result<()> {
    let steps = demand.len();
    let lo: Vec<f64> = (0..steps).map(|s| outlook.quantile(s, 0.1)).collect();
    let hi: Vec<f64> = (0..steps).map(|s| outlook.quantile(s, 0.9)).collect();
    let mean: Vec<f64> = (0..steps).map(|s| outlook.mean(s)).collect();
    let capacity_lines: Vec<(String, Vec<f64>)> = results
        .iter()
        .filter(|r| r.policy == "umbra" || r.policy == "reactive" || r.policy.starts_with("fixed"))
        .map(|r| {
            let values = r
                .warm_by_step
                .iter()
                .take(steps)
                .map(|&w| f64::from(w) * config.capacity_per_step)
                .collect();
            (format!("{} warm capacity", r.policy), values)
        })
        .collect();
    let mut pools: Vec<PlotSeries<'_>> = capacity_lines
        .iter()
        .map(|(label, values)| PlotSeries { label, values })
        .collect();
    let umbra_total: Option<Vec<f64>> = results.iter().find(|r| r.policy == "umbra").map(|r| {
        r.warm_by_step
            .iter()
            .zip(&r.dormant_by_step)
            .take(steps)
            .map(|(&w, &d)| f64::from(w + d) * config.capacity_per_step)
            .collect()
    });
    if let Some(values) = &umbra_total {
        pools.push(PlotSeries {
            label: "umbra warm + dormant capacity",
            values,
        });
    }
    let title = format!("{unique_id}: demand, forecast p10–p90, pool capacity");
    let svg = render_svg(
        &PlotInput {
            title: &title,
            y_label: "demand per step",
            hours_per_step: f64::from(config.step_secs) / 3600.0,
            demand: PlotSeries {
                label: "demand",
                values: demand,
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
            pools,
        },
        1600,
        600,
    )?;
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}
