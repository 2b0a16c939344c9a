//! The agent's Prometheus endpoint (`/metrics`, plus `/healthz`). Families kept by the parts as
//! they act are registered here ([`AgentMetrics::register`]): the region front's
//! (`umbra_front_*`), the instances' transition times and the warm-ups' requests. The rest are
//! gauges refreshed from [`Agent::report`] at scrape time, so they can never drift from what the
//! leader is told: instances by service and state, warm-ups by phase, replications and their
//! largest lag, the newest leader term; plus the link to the leader, set by the session. Labels
//! stay bounded: region (on every series), service, state, phase, result; never an instance.
//! It must not do work on its own schedule.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::core::Collector;
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use umbra_proto::agent::{AgentReport, CommandOutcome, InstanceState, WarmupPhase};

use super::Agent;
use super::front::telemetry::service_of_instance;

/// What became of one attempt to follow the leader (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkAttempt {
    /// It led, and the agent followed it until the link ended.
    Followed,
    /// It does not lead and named (or did not know) who does.
    Redirected,
    /// It claimed leadership for a term older than the newest seen.
    Stale,
    /// It could not be reached or did not answer the hello.
    Failed,
}

impl LinkAttempt {
    fn name(self) -> &'static str {
        match self {
            LinkAttempt::Followed => "followed",
            LinkAttempt::Redirected => "redirected",
            LinkAttempt::Stale => "stale",
            LinkAttempt::Failed => "failed",
        }
    }
}

/// The agent's metric families.
pub struct AgentMetrics {
    registry: Registry,
    commands: IntCounterVec,
    newest_term: IntGauge,
    leader_connected: IntGauge,
    leader_attempts: IntCounterVec,
    instances: IntGaugeVec,
    warmups: IntGaugeVec,
    replications: IntGauge,
    replication_lag: IntGauge,
}

impl AgentMetrics {
    /// Registers the agent's own families in a registry of its own, each series labelled with
    /// `region`.
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
        let leader_connected = IntGauge::new(
            "umbra_agent_leader_connected",
            "1 while the agent follows a leader over a live link, 0 while it looks for one.",
        )
        .expect("valid metric");
        let leader_attempts = IntCounterVec::new(
            Opts::new(
                "umbra_agent_leader_attempts_total",
                "Attempts to follow the leader by result (followed, redirected, stale, failed).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let instances = IntGaugeVec::new(
            Opts::new("umbra_agent_instances", "Instances by service and state."),
            &["service", "state"],
        )
        .expect("valid metric");
        let warmups = IntGaugeVec::new(
            Opts::new(
                "umbra_agent_warmups",
                "Warm-ups in progress or finished recently, by phase (running, ready, \
                 cap_reached).",
            ),
            &["phase"],
        )
        .expect("valid metric");
        let replications = IntGauge::new(
            "umbra_agent_replications",
            "Replications this agent drives into its region's instances.",
        )
        .expect("valid metric");
        let replication_lag = IntGauge::new(
            "umbra_agent_replication_lag_records",
            "Largest lag among the replications driven: the source's last record minus the \
             target's, in records (0 with none).",
        )
        .expect("valid metric");
        let metrics = AgentMetrics {
            registry,
            commands,
            newest_term,
            leader_connected,
            leader_attempts,
            instances,
            warmups,
            replications,
            replication_lag,
        };
        metrics.register(vec![
            Box::new(metrics.commands.clone()),
            Box::new(metrics.newest_term.clone()),
            Box::new(metrics.leader_connected.clone()),
            Box::new(metrics.leader_attempts.clone()),
            Box::new(metrics.instances.clone()),
            Box::new(metrics.warmups.clone()),
            Box::new(metrics.replications.clone()),
            Box::new(metrics.replication_lag.clone()),
        ]);
        metrics
    }

    /// Adds families kept elsewhere (the executor's parts) to the endpoint.
    pub fn register(&self, collectors: Vec<Box<dyn Collector>>) {
        for c in collectors {
            self.registry.register(c).expect("metric names are unique");
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

    /// Counts one attempt to follow the leader.
    pub fn count_leader_attempt(&self, attempt: LinkAttempt) {
        self.leader_attempts
            .with_label_values(&[attempt.name()])
            .inc();
    }

    /// Whether the agent follows a leader over a live link now.
    pub fn set_leader_connected(&self, connected: bool) {
        self.leader_connected.set(i64::from(connected));
    }

    /// Sets every report-derived gauge from a report.
    pub fn update(&self, report: &AgentReport) {
        self.newest_term.set(report.newest_term as i64);
        self.instances.reset();
        let services: BTreeSet<&str> = report
            .instances
            .iter()
            .map(|i| service_of_instance(&i.id, Some(&report.region)))
            .collect();
        for service in services {
            for state in InstanceState::ALL {
                let n = report
                    .instances
                    .iter()
                    .filter(|i| {
                        i.state == state
                            && service_of_instance(&i.id, Some(&report.region)) == service
                    })
                    .count();
                self.instances
                    .with_label_values(&[service, state.name()])
                    .set(n as i64);
            }
        }
        for phase in [
            WarmupPhase::Running,
            WarmupPhase::Ready,
            WarmupPhase::CapReached,
        ] {
            let n = report.warmups.iter().filter(|w| w.phase == phase).count();
            self.warmups
                .with_label_values(&[phase.name()])
                .set(n as i64);
        }
        self.replications.set(report.replication.len() as i64);
        let lag = report
            .replication
            .iter()
            .map(|r| r.source_position.saturating_sub(r.target_position))
            .max()
            .unwrap_or(0);
        self.replication_lag.set(lag as i64);
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
