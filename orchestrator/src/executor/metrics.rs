//! The executor's Prometheus metrics, registered in the node's registry. Labels are bounded:
//! migration ids (one series per migration the leader ran), phase names, action kinds and
//! outcome classes. This module must not decide anything.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Buckets of the time a migration spends in a phase, seconds: from a sub-second rollback to
/// an hour of provisioning.
const PHASE_SECONDS_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Buckets of the writer's move, seconds: milliseconds when replication keeps up, up to the
/// sample service's hold of a write (3 s) and past it.
const WRITER_MOVE_SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0,
];

/// Buckets of a rollback (rollback started → all traffic back on the source), seconds: one
/// share change confirmed by the source's agent takes milliseconds; past a few seconds the
/// agent was slow or unreachable.
const ROLLBACK_SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The executor's metric families.
#[derive(Clone)]
pub struct ExecutorMetrics {
    /// Lifecycle stage (`api::progress`) per migration; a rolled-back migration reads its
    /// terminal stage count.
    pub phase: IntGaugeVec,
    /// Seconds spent in each phase, observed when the migration leaves it.
    pub phase_seconds: HistogramVec,
    /// Rollbacks started, by cause (`slo`, `deadline`, `operator`, `dns`).
    pub rollbacks: IntCounterVec,
    /// Agent commands by action and outcome class.
    pub commands: IntCounterVec,
    /// Rollback time: rollback started → share 0 confirmed, seconds (one observation per
    /// rollback; the id of each is in the audit log, not in a label).
    pub rollback_seconds: prometheus::Histogram,
    /// Transitions proposed, by result (`applied`, `rejected`, `error`).
    pub proposals: IntCounterVec,
    /// DNS verifications after a weight change, by result.
    pub dns_verifications: IntCounterVec,
    /// Prometheus SLO queries by result (`ok`, `no_data`, `error`).
    pub slo_queries: IntCounterVec,
    /// The single writer's move (first fence → last promotion confirmed), by direction.
    pub writer_move_seconds: HistogramVec,
    /// Instances a serving pool should hold, by service, region and state (warm, dormant).
    pub pool_target: IntGaugeVec,
    /// Instances a serving pool holds as its agent reports them, same labels.
    pub pool_instances: IntGaugeVec,
    /// The demand quantile the pool holds for the slice now, requests per second.
    pub pool_demand: GaugeVec,
    /// Per pool (service, region): the mean MASE of the chosen model's scored forecasts.
    pub forecast_mase: GaugeVec,
    /// Per pool: the share of those forecasts' slices inside their 90 % interval.
    pub forecast_coverage: GaugeVec,
    /// Per pool: how many of the chosen model's recent forecasts were scored (wholly or in
    /// part).
    pub forecast_scored: IntGaugeVec,
    /// Per pool: 1 for the model the latest forecast chose (service, region, model).
    pub forecast_model: IntGaugeVec,
    /// Pool forecasts' refits by kind (`full`, `incremental`).
    pub forecast_refits: IntCounterVec,
}

impl ExecutorMetrics {
    /// Exports one pool's target, what it holds and the demand it is sized for.
    pub fn observe_pool(&self, view: &super::pools::PoolView) {
        let labels = |state| [view.service.as_str(), view.region.as_str(), state];
        for (state, target, actual) in [
            ("warm", view.target.warm, view.actual.warm),
            ("dormant", view.target.dormant, view.actual.dormant),
        ] {
            self.pool_target
                .with_label_values(&labels(state))
                .set(i64::from(target));
            self.pool_instances
                .with_label_values(&labels(state))
                .set(i64::from(actual));
        }
        if let Some(slice) = &view.slice {
            self.pool_demand
                .with_label_values(&[view.service.as_str(), view.region.as_str()])
                .set(slice.quantile);
        }
    }

    /// Exports how one pool's forecasts fare: the chosen `model`, and once its earlier
    /// forecasts were scored against the actuals, their `accuracy`.
    pub fn observe_forecast(
        &self,
        service: &str,
        region: &str,
        model: Option<umbra_forecast::ModelKind>,
        accuracy: Option<&umbra_forecast::Accuracy>,
    ) {
        if let Some(model) = model {
            for other in umbra_forecast::ModelKind::ALL {
                if other != model {
                    let _ =
                        self.forecast_model
                            .remove_label_values(&[service, region, other.name()]);
                }
            }
            self.forecast_model
                .with_label_values(&[service, region, model.name()])
                .set(1);
        }
        if let Some(accuracy) = accuracy {
            let labels = [service, region];
            self.forecast_mase
                .with_label_values(&labels)
                .set(accuracy.mase);
            self.forecast_coverage
                .with_label_values(&labels)
                .set(accuracy.coverage_90);
            self.forecast_scored
                .with_label_values(&labels)
                .set(accuracy.scored as i64);
        }
    }

    /// Creates the families and registers them in `registry` (a family already registered
    /// there by an earlier executor of this process is an error the caller reports).
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            phase: IntGaugeVec::new(
                Opts::new(
                    "umbra_executor_migration_stage",
                    "Lifecycle stages a migration finished (planned=0 … completed), as the leader sees it",
                ),
                &["migration", "phase"],
            )?,
            phase_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "umbra_executor_phase_seconds",
                    "Time a migration spent in a phase, observed when it left the phase",
                )
                .buckets(PHASE_SECONDS_BUCKETS.to_vec()),
                &["phase"],
            )?,
            rollbacks: IntCounterVec::new(
                Opts::new(
                    "umbra_executor_rollbacks_total",
                    "Rollbacks started, by cause",
                ),
                &["cause"],
            )?,
            commands: IntCounterVec::new(
                Opts::new(
                    "umbra_executor_agent_commands_total",
                    "Agent commands sent, by action and outcome",
                ),
                &["action", "outcome"],
            )?,
            rollback_seconds: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "umbra_executor_rollback_seconds",
                    "Rollback started to all traffic back on the source (share 0 confirmed), seconds",
                )
                .buckets(ROLLBACK_SECONDS_BUCKETS.to_vec()),
            )?,
            proposals: IntCounterVec::new(
                Opts::new(
                    "umbra_executor_proposals_total",
                    "Commands the executor proposed to the replicated state, by result",
                ),
                &["command", "result"],
            )?,
            slo_queries: IntCounterVec::new(
                Opts::new(
                    "umbra_executor_slo_queries_total",
                    "Prometheus SLO queries of cutover steps by result: ok (data), no_data (empty or NaN: the step holds), error (unreachable or refused: the step holds).",
                ),
                &["result"],
            )?,
            dns_verifications: IntCounterVec::new(
                Opts::new(
                    "umbra_executor_dns_verifications_total",
                    "Checks that every DNS server serves the new weights, by result",
                ),
                &["result"],
            )?,
            writer_move_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "umbra_executor_writer_move_seconds",
                    "The single writer's move: first fence to last promotion confirmed, seconds",
                )
                .buckets(WRITER_MOVE_SECONDS_BUCKETS.to_vec()),
                &["direction"],
            )?,
            pool_target: IntGaugeVec::new(
                Opts::new(
                    "umbra_pool_target_instances",
                    "Instances a service's serving pool should hold now (forecast, lead times, hysteresis), by state",
                ),
                &["service", "region", "state"],
            )?,
            pool_instances: IntGaugeVec::new(
                Opts::new(
                    "umbra_pool_instances",
                    "Instances a service's serving pool holds, as its agent reports them, by state",
                ),
                &["service", "region", "state"],
            )?,
            pool_demand: GaugeVec::new(
                Opts::new(
                    "umbra_pool_forecast_requests_per_second",
                    "Forecast demand of the slice now that the pool is sized for (the tier's quantile)",
                ),
                &["service", "region"],
            )?,
            forecast_mase: GaugeVec::new(
                Opts::new(
                    "umbra_forecast_mase",
                    "Mean absolute scaled error (against the daily seasonal naive) of the chosen model's recent forecasts of a pool, on the slices whose actuals arrived",
                ),
                &["service", "region"],
            )?,
            forecast_coverage: GaugeVec::new(
                Opts::new(
                    "umbra_forecast_interval_coverage_ratio",
                    "Share of the scored forecast slices whose actual demand fell inside the 90 % interval given",
                ),
                &["service", "region"],
            )?,
            forecast_scored: IntGaugeVec::new(
                Opts::new(
                    "umbra_forecast_scored_forecasts",
                    "Recent forecasts of the chosen model scored against actuals, wholly or on the slices that arrived",
                ),
                &["service", "region"],
            )?,
            forecast_model: IntGaugeVec::new(
                Opts::new(
                    "umbra_forecast_model_info",
                    "1 for the model the latest forecast of a pool chose, by its rolling error",
                ),
                &["service", "region", "model"],
            )?,
            forecast_refits: IntCounterVec::new(
                Opts::new(
                    "umbra_forecast_refits_total",
                    "Pool forecasts by how their models were refitted: full (robust training, decomposition, every model) or incremental (the last full refit's seasons carried over the new slices, the level model refitted)",
                ),
                &["kind"],
            )?,
        };
        registry.register(Box::new(metrics.forecast_mase.clone()))?;
        registry.register(Box::new(metrics.forecast_coverage.clone()))?;
        registry.register(Box::new(metrics.forecast_scored.clone()))?;
        registry.register(Box::new(metrics.forecast_model.clone()))?;
        registry.register(Box::new(metrics.forecast_refits.clone()))?;
        registry.register(Box::new(metrics.pool_target.clone()))?;
        registry.register(Box::new(metrics.pool_instances.clone()))?;
        registry.register(Box::new(metrics.pool_demand.clone()))?;
        registry.register(Box::new(metrics.writer_move_seconds.clone()))?;
        registry.register(Box::new(metrics.phase.clone()))?;
        registry.register(Box::new(metrics.phase_seconds.clone()))?;
        registry.register(Box::new(metrics.rollbacks.clone()))?;
        registry.register(Box::new(metrics.commands.clone()))?;
        registry.register(Box::new(metrics.rollback_seconds.clone()))?;
        registry.register(Box::new(metrics.proposals.clone()))?;
        registry.register(Box::new(metrics.dns_verifications.clone()))?;
        registry.register(Box::new(metrics.slo_queries.clone()))?;
        Ok(metrics)
    }
}
