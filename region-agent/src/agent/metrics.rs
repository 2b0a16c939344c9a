//! The agent's Prometheus endpoint (`/metrics`, plus `/healthz`): the region front's families
//! ([`super::front::FrontTelemetry`]), commands by result, the
//! newest leader term, instances by state with their last measured transition times, warm-up
//! progress and replication lag. Gauges are refreshed from [`Agent::report`] at scrape time, so
//! they can never drift from what the leader is told. It must not do work on its own schedule.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use umbra_proto::agent::{AgentReport, CommandOutcome, InstanceState, WarmupPhase};

use super::Agent;

/// The agent's metric families.
pub struct AgentMetrics {
    registry: Registry,
    commands: IntCounterVec,
    newest_term: IntGauge,
    instances: IntGaugeVec,
    transition_ms: GaugeVec,
    warmup_requests: IntGaugeVec,
    warmup_ready: IntGaugeVec,
    warmup_p99_ms: GaugeVec,
    replication_lag: IntGaugeVec,
}

impl AgentMetrics {
    /// Registers every family in a registry of its own, each series labelled with `region`.
    pub fn new(region: &str) -> Self {
        let labels = std::collections::HashMap::from([("region".to_owned(), region.to_owned())]);
        let registry = Registry::new_custom(None, Some(labels)).expect("a valid region label");
        let commands = IntCounterVec::new(
            Opts::new("umbra_agent_commands_total", "Commands by result."),
            &["result"],
        )
        .expect("valid metric");
        let newest_term =
            IntGauge::new("umbra_agent_newest_term", "Newest leader term seen.").expect("valid");
        let instances = IntGaugeVec::new(
            Opts::new("umbra_agent_instances", "Instances by state."),
            &["state"],
        )
        .expect("valid metric");
        let transition_ms = GaugeVec::new(
            Opts::new(
                "umbra_agent_last_transition_ms",
                "Last measured transition time per instance and transition.",
            ),
            &["instance", "from", "to"],
        )
        .expect("valid metric");
        let warmup_requests = IntGaugeVec::new(
            Opts::new("umbra_agent_warmup_requests", "Warm-up requests completed."),
            &["instance"],
        )
        .expect("valid metric");
        let warmup_ready = IntGaugeVec::new(
            Opts::new(
                "umbra_agent_warmup_ready",
                "1 once the readiness gate held.",
            ),
            &["instance"],
        )
        .expect("valid metric");
        let warmup_p99_ms = GaugeVec::new(
            Opts::new(
                "umbra_agent_warmup_p99_ms",
                "p99 over the gate's windows, ms.",
            ),
            &["instance"],
        )
        .expect("valid metric");
        let replication_lag = IntGaugeVec::new(
            Opts::new(
                "umbra_agent_replication_lag",
                "Source position minus target position.",
            ),
            &["instance"],
        )
        .expect("valid metric");
        for c in [
            Box::new(commands.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(newest_term.clone()),
            Box::new(instances.clone()),
            Box::new(transition_ms.clone()),
            Box::new(warmup_requests.clone()),
            Box::new(warmup_ready.clone()),
            Box::new(warmup_p99_ms.clone()),
            Box::new(replication_lag.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        AgentMetrics {
            registry,
            commands,
            newest_term,
            instances,
            transition_ms,
            warmup_requests,
            warmup_ready,
            warmup_p99_ms,
            replication_lag,
        }
    }

    /// Adds the region front's families (`umbra_front_*`) to the endpoint.
    pub fn register_front(&self, front: &super::front::FrontTelemetry) {
        for c in front.collectors() {
            self.registry
                .register(c)
                .expect("front metric names are unique");
        }
    }

    /// Counts one command's result (`replayed` when answered from the ledger).
    pub fn count_command(&self, outcome: &CommandOutcome, replayed: bool) {
        let result = match (outcome, replayed) {
            (_, true) => "replayed",
            (CommandOutcome::Done(_), false) => "done",
            (CommandOutcome::Refused(_), false) => "refused",
            (CommandOutcome::Failed { .. }, false) => "failed",
        };
        self.commands.with_label_values(&[result]).inc();
    }

    /// Sets every gauge from a report.
    pub fn update(&self, report: &AgentReport) {
        self.newest_term.set(report.newest_term as i64);
        self.instances.reset();
        for state in [
            InstanceState::Dormant,
            InstanceState::Paused,
            InstanceState::Warm,
            InstanceState::Active,
            InstanceState::Stopped,
        ] {
            let n = report.instances.iter().filter(|i| i.state == state).count();
            self.instances
                .with_label_values(&[&format!("{state:?}").to_lowercase()])
                .set(n as i64);
        }
        self.transition_ms.reset();
        for i in &report.instances {
            for t in &i.transitions {
                let from = format!("{:?}", t.from).to_lowercase();
                let to = format!("{:?}", t.to).to_lowercase();
                self.transition_ms
                    .with_label_values(&[i.id.as_str(), &from, &to])
                    .set(t.millis as f64);
            }
        }
        self.warmup_requests.reset();
        self.warmup_ready.reset();
        self.warmup_p99_ms.reset();
        for w in &report.warmups {
            let l = [w.instance.as_str()];
            self.warmup_requests
                .with_label_values(&l)
                .set(w.requests as i64);
            self.warmup_ready
                .with_label_values(&l)
                .set(i64::from(w.phase == WarmupPhase::Ready));
            self.warmup_p99_ms
                .with_label_values(&l)
                .set(w.window_p99_ms);
        }
        self.replication_lag.reset();
        for r in &report.replication {
            self.replication_lag
                .with_label_values(&[r.instance.as_str()])
                .set(r.source_position.saturating_sub(r.target_position) as i64);
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(buf)
    }
}

async fn scrape(State(agent): State<Arc<Agent>>) -> impl IntoResponse {
    let report = agent.report().await;
    agent.metrics().update(&report);
    match agent.metrics().encode() {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until the returned task is dropped or aborted.
pub async fn serve(
    agent: Arc<Agent>,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(agent);
    let task = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((local, task))
}
