//! The migration state machine, sans-IO: a plain function of (replicated migration record,
//! what the executor observed, now) that says which transition to propose and which side
//! effects must hold in the current phase.
//!
//! It is level-triggered, like a Kubernetes controller rather than a script: [`decide`]
//! returns the actions that must be *ensured* in the current phase (each idempotent, keyed by
//! migration, phase and step), not a one-shot list. A leader that takes over mid-migration
//! calls it again on the replicated record and the agents' fresh reports and lands exactly
//! where its predecessor was. This module must not do I/O or read a clock: time comes in as
//! [`DecisionTime`] (the wall clock, Unix ms, for what the plan schedules; the phase's elapsed
//! time from the leader's monotonic phase clock for its deadlines and windows), so replay and
//! tests are deterministic.

pub mod compare;
mod readiness;

pub use readiness::{Gate, Readiness, readiness};

use serde::{Deserialize, Serialize};

/// The default cutover schedule: 10 % → 50 % → 100 % of traffic to the target region (the
/// common canary shape; DESIGN.md "Cut over in steps").
pub const DEFAULT_STEPS_PERCENT: [u8; 3] = [10, 50, 100];

/// Where a migration is. Terminal phases are `Completed`, `RolledBack` and `Failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Created; waiting for `start − lead time`.
    Planned,
    /// Shadow instances are being created and started in the target region.
    Provisioning,
    /// Synthetic traffic warms every shadow instance until its readiness gate holds, while
    /// replication already streams the source's data into them.
    Warming,
    /// The target's data catches up with the source's (lag under its bound).
    Replicating,
    /// Every gate holds; waiting for the cutover time.
    Ready,
    /// The source region's load balancer sends `steps_percent[step]` % to the target.
    CuttingOver {
        /// Index into the migration's `steps_percent`.
        step: usize,
    },
    /// All traffic is on the target; the source keeps forwarding until DNS caches expire.
    Draining,
    /// Done: traffic and data live in the target region.
    Completed,
    /// Traffic is going back to the source.
    RollingBack,
    /// Traffic is back on the source; the shadow is kept for a retry or released.
    RolledBack,
    /// A rollback did not complete in time: an operator must look.
    Failed,
}

impl Phase {
    /// True once nothing more will happen to the migration.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::RolledBack | Phase::Failed)
    }

    /// A stable lower-case name for logs, metrics, operation ids and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Planned => "planned",
            Phase::Provisioning => "provisioning",
            Phase::Warming => "warming",
            Phase::Replicating => "replicating",
            Phase::Ready => "ready",
            Phase::CuttingOver { .. } => "cutting_over",
            Phase::Draining => "draining",
            Phase::Completed => "completed",
            Phase::RollingBack => "rolling_back",
            Phase::RolledBack => "rolled_back",
            Phase::Failed => "failed",
        }
    }

    /// Whether `self → to` is an edge of the state machine. The replicated state refuses any
    /// other transition, so a confused or deposed leader cannot corrupt a migration.
    pub fn may_become(self, to: Phase, steps: usize) -> bool {
        use Phase::*;
        match (self, to) {
            (Planned, Provisioning) => true,
            (Provisioning, Warming | Replicating) => true,
            (Warming, Replicating) => true,
            (Replicating, Ready) => true,
            (Ready, CuttingOver { step: 0 }) => true,
            (CuttingOver { step: a }, CuttingOver { step: b }) => b == a + 1 && b < steps,
            (CuttingOver { step }, Draining) => step + 1 == steps,
            (Draining, Completed) => true,
            (RollingBack, RolledBack | Failed) => true,
            (from, RollingBack) => !from.is_terminal() && from != RollingBack,
            _ => false,
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::CuttingOver { step } => write!(f, "cutting_over[{step}]"),
            other => f.write_str(other.name()),
        }
    }
}

/// The service-level objective judged during each cutover step, on the target's traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Slo {
    /// Highest tolerated share of failed requests, 0..1.
    pub max_error_rate: f64,
    /// Highest tolerated 99th-percentile latency, milliseconds.
    pub max_p99_ms: f64,
    /// Fewest requests a reading needs before it can judge: fewer gives no verdict, and a
    /// step does not pass until this many requests were judged at its share (0: a step may
    /// pass on time alone, for services that may see no traffic). Fronts only: a Prometheus
    /// query gives a ratio, not a count.
    pub min_samples: u64,
    /// Where the readings come from (`"fronts"` when absent: plans and replicated records
    /// written before the field existed read as before).
    #[serde(default)]
    pub source: SloSource,
    /// How the latency is judged: against `max_p99_ms` (`"thresholds"`, the default), or
    /// against the source region's over the same step (`"compare"`, Prometheus only).
    #[serde(default)]
    pub judgement: SloJudgement,
}

/// How a step's latency is judged. The error ratio is always held to `max_error_rate`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SloJudgement {
    /// The p99 must stay within `max_p99_ms`.
    #[default]
    Thresholds,
    /// The target's p99 samples must not be significantly above the source's over the step
    /// (one-sided Mann-Whitney U, [`compare`]), as Kayenta judges a canary against its
    /// baseline; `max_p99_ms` is not used.
    Compare,
}

/// Where a service's SLO readings come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SloSource {
    /// The target region's front, as its agent reports it (requests since the step's share
    /// applied, and the front's recent p99).
    #[default]
    Fronts,
    /// Two PromQL queries evaluated about once a second while a step is judged.
    Prometheus(PrometheusSlo),
}

/// The placeholders a [`PrometheusSlo`] query may hold.
pub const SLO_QUERY_PLACEHOLDERS: [&str; 3] = ["service", "region", "window"];

/// An SLO judged from Prometheus. In each query `{service}` becomes the service, `{region}`
/// the target region and `{window}` the step's analysis window as a PromQL duration (`5s`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSlo {
    /// The server's base URL, `http://` or `https://` (its `/api/v1/query` is asked).
    pub url: String,
    /// An instant query giving the target's failed share of requests, 0..1.
    pub error_ratio_query: String,
    /// An instant query giving the target's 99th-percentile latency in seconds.
    pub latency_p99_query: String,
}

/// A duration in PromQL's syntax: whole seconds when it is a whole number of them.
pub fn promql_duration(ms: u64) -> String {
    if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

impl PrometheusSlo {
    /// Checks the URL and the queries; the error says what to change.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |m: String| Err(SpecError::BadSlo(m));
        match reqwest::Url::parse(&self.url) {
            Ok(url) if url.scheme() == "http" && url.host().is_some() => {}
            Ok(url) if url.scheme() == "https" => {
                return bad(format!(
                    "source.prometheus.url {:?}: https is not supported yet (the orchestrator's HTTP client has no TLS); use an http:// URL, e.g. a Prometheus on the orchestrator's host or behind a local proxy",
                    self.url
                ));
            }
            Ok(_) | Err(_) => {
                return bad(format!(
                    "source.prometheus.url {:?} must be the http:// URL of the Prometheus server, e.g. \"http://127.0.0.1:9090\"",
                    self.url
                ));
            }
        }
        for (name, query) in [
            ("error_ratio_query", &self.error_ratio_query),
            ("latency_p99_query", &self.latency_p99_query),
        ] {
            if query.trim().is_empty() {
                return bad(format!(
                    "source.prometheus.{name} is empty: give a PromQL query, e.g. one over umbra_front_requests_total{{service=\"{{service}}\",region=\"{{region}}\"}}"
                ));
            }
            if let Some(unknown) = placeholders(query)
                .into_iter()
                .find(|p| !SLO_QUERY_PLACEHOLDERS.contains(p))
            {
                return bad(format!(
                    "source.prometheus.{name} has the placeholder {{{unknown}}}; the known ones are {{service}}, {{region}} and {{window}}"
                ));
            }
        }
        Ok(())
    }

    /// The two queries for `service` in `region` over a window of `window_ms`: (error ratio,
    /// p99 latency).
    pub fn render(&self, service: &str, region: &str, window_ms: u64) -> (String, String) {
        let window = promql_duration(window_ms);
        let fill = |q: &str| {
            q.replace("{service}", service)
                .replace("{region}", region)
                .replace("{window}", &window)
        };
        (fill(&self.error_ratio_query), fill(&self.latency_p99_query))
    }
}

/// The `{name}` placeholders of a query: a brace around a bare word (a PromQL label matcher
/// always holds `=` or quotes, so it is never one).
fn placeholders(query: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = query;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            Some(end) if end > 0 && after[end..].starts_with('}') => found.push(&after[..end]),
            _ => {}
        }
        rest = after;
    }
    found
}

/// How long each phase may take before the migration gives up and rolls back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseDeadlines {
    /// Creating and starting every shadow instance.
    pub provisioning_ms: u64,
    /// Warming every shadow instance until its gate holds.
    pub warming_ms: u64,
    /// Replication lag coming under its bound; also, at the last step, the single writer's
    /// move (source fenced, lag 0, target promoted).
    pub replicating_ms: u64,
    /// Traffic back on the source after a rollback starts; past it the migration is Failed,
    /// but never while the single writer is moving back to the source (a rollback after
    /// promotion) or the source's fence is being lifted (a rollback before it): those are
    /// retried until they are done.
    pub rolling_back_ms: u64,
}

/// Everything fixed when a migration is created: what to move, when, and the rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationSpec {
    /// Unique id, assigned by the replicated state (e.g. `shop-3`).
    pub id: String,
    /// The service being moved.
    pub service: String,
    /// Source region.
    pub from: String,
    /// Target region.
    pub to: String,
    /// Start of the time slice the traffic should be in the target for (Unix ms).
    pub cutover_at_ms: u64,
    /// How long before `cutover_at_ms` provisioning starts.
    pub lead_time_ms: u64,
    /// Cutover schedule: strictly increasing shares (percent) ending at 100.
    pub steps_percent: Vec<u8>,
    /// How long each step holds while the SLO is judged.
    pub analysis_window_ms: u64,
    /// How long the source keeps serving after the last step, when the operator fixed it;
    /// `None`: from the TTL plan ([`DnsTtlPlan::drain_ms`]).
    pub drain_ms: Option<u64>,
    /// When the service record's TTL goes down, and what the drain waits for.
    pub dns_ttl: DnsTtlPlan,
    /// Whether shadow instances are warmed with synthetic traffic (off only to show the cold
    /// baseline).
    pub warm_up: bool,
    /// Highest replication lag (entries) at which the target counts as caught up.
    pub max_replication_lag: u64,
    /// The SLO judged at each step.
    pub slo: Slo,
    /// Phase deadlines.
    pub deadlines: PhaseDeadlines,
}

/// Why a migration spec is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// Source and target are the same region.
    #[error(
        "source and target region are both {0:?}: a migration moves traffic between two regions"
    )]
    SameRegion(String),
    /// The step schedule is not strictly increasing, or does not end at 100.
    #[error(
        "cutover steps {0:?} must be strictly increasing percentages in 1..=100 ending at 100, e.g. [10, 50, 100]"
    )]
    BadSteps(Vec<u8>),
    /// An SLO bound is out of range.
    #[error("SLO {0}")]
    BadSlo(String),
    /// A duration is zero where it must not be.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
}

/// Checks a cutover schedule: strictly increasing percentages in 1..=100 ending at 100.
pub fn validate_steps(steps: &[u8]) -> Result<(), SpecError> {
    let increasing = steps.windows(2).all(|w| w[0] < w[1]);
    if steps.is_empty() || !increasing || steps[0] == 0 || steps.last() != Some(&100) {
        return Err(SpecError::BadSteps(steps.to_vec()));
    }
    Ok(())
}

impl Slo {
    /// Checks the bounds are in range.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return Err(SpecError::BadSlo(format!(
                "max_error_rate {} must be within 0..=1",
                self.max_error_rate
            )));
        }
        if self.max_p99_ms.is_nan() || self.max_p99_ms <= 0.0 {
            return Err(SpecError::BadSlo(format!(
                "max_p99_ms {} must be positive",
                self.max_p99_ms
            )));
        }
        match (&self.source, self.judgement) {
            (SloSource::Fronts, SloJudgement::Compare) => Err(SpecError::BadSlo(
                "judgement = \"compare\" needs source = { prometheus = { ... } }: the fronts give one reading per step, not latency samples of both regions".to_owned(),
            )),
            (SloSource::Fronts, SloJudgement::Thresholds) => Ok(()),
            (SloSource::Prometheus(prometheus), _) => prometheus.validate(),
        }
    }
}

impl MigrationSpec {
    /// Checks the spec's own consistency (regions and services are checked against the
    /// replicated state by its caller).
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.from == self.to {
            return Err(SpecError::SameRegion(self.from.clone()));
        }
        validate_steps(&self.steps_percent)?;
        self.slo.validate()?;
        for (name, value) in [
            ("analysis_window_ms", self.analysis_window_ms),
            ("deadlines.provisioning_ms", self.deadlines.provisioning_ms),
            ("deadlines.warming_ms", self.deadlines.warming_ms),
            ("deadlines.replicating_ms", self.deadlines.replicating_ms),
            ("deadlines.rolling_back_ms", self.deadlines.rolling_back_ms),
        ] {
            if value == 0 {
                return Err(SpecError::ZeroDuration(name));
            }
        }
        Ok(())
    }

    /// The share (percent) of traffic the target should get in `phase`.
    pub fn target_share(&self, phase: Phase) -> u8 {
        match phase {
            Phase::CuttingOver { step } => self.steps_percent[step],
            Phase::Draining | Phase::Completed => 100,
            _ => 0,
        }
    }
}

/// The DNS side of a migration, fixed at creation from the TTL plan
/// (`umbra_dns::ttl_timeline`): a client may cache an answer for the TTL it came with, so the
/// record's TTL is lowered one old TTL plus a margin before the cutover, and the source keeps
/// serving after the last change for the TTL on the answers that change replaced plus the
/// margin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsTtlPlan {
    /// TTL the record carries outside migrations: what a cache may hold from before.
    pub old_ttl_secs: u32,
    /// TTL published from the lowering until the migration ends.
    pub low_ttl_secs: u32,
    /// Slack after each TTL wait (resolvers round up, forwarders add a hop, clocks drift).
    pub margin_secs: u32,
    /// When the low TTL is published (Unix ms): one old TTL plus the margin before the
    /// cutover, or at creation if that has passed.
    pub lower_at_ms: u64,
}

impl DnsTtlPlan {
    /// Whether the record's TTL goes down at all (the low TTL is shorter).
    pub fn lowers(&self) -> bool {
        self.low_ttl_secs < self.old_ttl_secs
    }

    /// From when every cache holds the low TTL, had it been published at `lowered_at_ms`.
    pub fn low_ttl_everywhere_at_ms(&self, lowered_at_ms: u64) -> u64 {
        if self.lowers() {
            lowered_at_ms.saturating_add(u64::from(self.old_ttl_secs) * 1_000)
        } else {
            lowered_at_ms
        }
    }

    /// Whether the low TTL (published at `lowered_at_ms`, or as planned when `None`) reaches
    /// every cache only after `cutover_at_ms`: steps before then converge after the old TTL.
    pub fn late(&self, lowered_at_ms: Option<u64>, cutover_at_ms: u64) -> bool {
        self.low_ttl_everywhere_at_ms(lowered_at_ms.unwrap_or(self.lower_at_ms)) > cutover_at_ms
    }

    /// How long the source keeps serving after the last change of the record, at
    /// `last_change_ms`, when the low TTL was published at `lowered_at_ms` (`None`: never).
    pub fn drain_ms(&self, lowered_at_ms: Option<u64>, last_change_ms: u64) -> u64 {
        let at = utc_of_ms;
        let everywhere_at = match lowered_at_ms {
            Some(lowered) => at(self.low_ttl_everywhere_at_ms(lowered)),
            None if self.lowers() => chrono::DateTime::<chrono::Utc>::MAX_UTC,
            None => at(0),
        };
        let secs = umbra_dns::ttl_timeline::drain_secs(
            self.old_ttl_secs,
            self.low_ttl_secs,
            self.margin_secs,
            everywhere_at,
            at(last_change_ms),
        );
        u64::from(secs) * 1_000
    }
}

/// Unix ms as a UTC time (the latest representable one past it).
pub(crate) fn utc_of_ms(ms: u64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

/// A migration as replicated: its spec, where it is, and since when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationRecord {
    /// What was asked.
    pub spec: MigrationSpec,
    /// Where it is.
    pub phase: Phase,
    /// When the current phase was entered (Unix ms, the proposing leader's clock).
    pub phase_since_ms: u64,
    /// Shadow pool size, fixed by the sizing at the start of provisioning.
    pub shadow_instances: u32,
    /// Whether the target was promoted to single writer (rolling back past this point
    /// means promoting the source again).
    pub promoted: bool,
    /// When the record's low TTL was first published for this migration (Unix ms); `None`
    /// until then.
    #[serde(default)]
    pub ttl_lowered_at_ms: Option<u64>,
}

/// What the executor saw this round. Nothing here is replicated: a new leader gathers it
/// afresh from the agents, the load balancers and the SLO source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observations {
    /// Shadow instances created and serving in the target region.
    pub shadow_serving: u32,
    /// Shadow instances whose warm-up readiness gate holds.
    pub shadow_warm: u32,
    /// Shadow instances whose warm-up ran its whole duration cap without the gate holding
    /// (a shadow that cannot serve as the plan asks: failing or too slow).
    pub shadow_warm_failed: u32,
    /// Replication from the source into the target, once it runs.
    pub replication: Option<ReplicationObserved>,
    /// Share (percent) the source region's load balancer currently sends to the target, as
    /// the agent last confirmed it.
    pub share_applied: Option<u8>,
    /// The SLO reading for the target's traffic since the current step's share applied.
    pub slo: Option<SloReading>,
    /// An operator asked for a rollback, with this reason.
    pub rollback_requested: Option<String>,
    /// Whether the zone's authority serves the current step's DNS weights.
    pub dns: DnsObserved,
    /// With a Prometheus SLO source, what it answered since the step's share applied
    /// (`None` with the fronts as source, or before the share applied).
    pub slo_queried: Option<QueriedSlo>,
    /// While warming: the warm-up gate's last reading on the shadow instance furthest from
    /// passing it, against the gate's thresholds (what `umbra status` shows as the reason a
    /// migration waits).
    pub warmup: Option<WarmupReading>,
}

/// One shadow instance's warm-up, as its gate last measured it, beside the gate's thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmupReading {
    /// The instance.
    pub instance: String,
    /// How long its warm-up has run, ms.
    pub elapsed_ms: u64,
    /// Requests answered so far.
    pub requests: u64,
    /// Requests the gate needs before it may hold.
    pub min_requests: u64,
    /// p99 over the gate's recent windows, ms.
    pub window_p99_ms: f64,
    /// The highest p99 the gate accepts, ms (the reference p99 plus its tolerance).
    pub max_p99_ms: f64,
    /// Failed share over the recent windows, 0..1.
    pub window_error_rate: f64,
    /// The highest failed share the gate accepts, 0..1.
    pub max_error_rate: f64,
}

impl WarmupReading {
    /// What an operator reads: each number against its threshold, with what still falls
    /// short named.
    pub fn describe(&self) -> String {
        let mut short = Vec::new();
        if self.requests < self.min_requests {
            short.push("requests");
        }
        if self.window_p99_ms > self.max_p99_ms {
            short.push("p99");
        }
        if self.window_error_rate > self.max_error_rate {
            short.push("errors");
        }
        let verdict = if short.is_empty() {
            "within every threshold, waiting for the gate's windows".to_owned()
        } else {
            format!("short on {}", short.join(", "))
        };
        format!(
            "{} after {:.1} s: {} of {} requests, p99 {:.1} ms (limit {:.1} ms), errors {:.2} % \
             (limit {:.2} %): {verdict}",
            self.instance,
            self.elapsed_ms as f64 / 1_000.0,
            self.requests,
            self.min_requests,
            self.window_p99_ms,
            self.max_p99_ms,
            self.window_error_rate * 100.0,
            self.max_error_rate * 100.0,
        )
    }
}

/// A Prometheus SLO source's answers for the current step.
#[derive(Debug, Clone, PartialEq)]
pub struct QueriedSlo {
    /// When this leadership first saw the step's share applied (Unix ms on the migration's
    /// phase clock): the analysis window counts from here.
    pub share_applied_at_ms: u64,
    /// The newest answer to a query asked since then, and when it was asked (the same
    /// clock).
    pub newest: Option<(u64, SloAnswer)>,
    /// The target's p99 samples, milliseconds, answered since then (for the comparison
    /// judgement; bounded by the controller).
    pub target_p99_ms: Vec<f64>,
    /// The source's latest p99 samples with data, milliseconds, over this migration's steps:
    /// the baseline. It carries over from earlier steps because at 100 % the source serves
    /// nothing of its own to measure.
    pub source_p99_ms: Vec<f64>,
}

/// One answer of an SLO source queried apart from the fronts.
#[derive(Debug, Clone, PartialEq)]
pub enum SloAnswer {
    /// Both queries gave a number.
    Data {
        /// Failed share, 0..1.
        error_ratio: f64,
        /// 99th-percentile latency, milliseconds.
        p99_ms: f64,
        /// The source region's 99th-percentile latency by the same query, milliseconds (asked
        /// for the comparison judgement; `None` otherwise or without data).
        source_p99_ms: Option<f64>,
    },
    /// A query gave no sample or NaN (nothing scraped yet, a metric that does not exist):
    /// which one.
    NoData(String),
    /// The server could not be asked or answered badly: why.
    Error(String),
}

impl SloAnswer {
    /// `ok`, `no_data` or `error` (a metric label).
    pub fn label(&self) -> &'static str {
        match self {
            SloAnswer::Data { .. } => "ok",
            SloAnswer::NoData(_) => "no_data",
            SloAnswer::Error(_) => "error",
        }
    }
}

/// The DNS check of the current step's weights, as the executor knows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum DnsObserved {
    /// DNS does not gate steps: the embedded servers of every orchestrator serve the
    /// replicated weights by themselves, so their check is advisory (a killed orchestrator's
    /// server must not hold a cutover back).
    #[default]
    Ungated,
    /// The zone has one authority (a standard server the leader updates), and it is not yet
    /// confirmed to serve the step's weights: they are being proposed, published or checked.
    Pending,
    /// The authority was seen serving exactly the step's weights.
    Served,
    /// The authority did not serve them in time, or refused the update: why.
    Failed(String),
}

/// Replication as observed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicationObserved {
    /// Entries the target still lacks.
    pub lag: u64,
    /// The target is the writer.
    pub promoted: bool,
    /// The source may refuse writes: fenced for the writer's move, as the target's report
    /// shows or as this leadership asked.
    pub source_fenced: bool,
    /// While rolling back: the target's agent lifted that fence for this leadership (and will
    /// take no fence or promotion of the writer after it).
    pub fence_lifted: bool,
}

/// One SLO reading: error rate and p99 over the requests in its window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SloReading {
    /// Requests counted.
    pub samples: u64,
    /// Failed share, 0..1.
    pub error_rate: f64,
    /// 99th-percentile latency, milliseconds.
    pub p99_ms: f64,
}

impl Slo {
    /// `Some(reason)` when the reading breaks the SLO; `None` when it holds or has too few
    /// samples to say.
    pub fn breach(&self, reading: &SloReading) -> Option<String> {
        if reading.samples < self.min_samples {
            return None;
        }
        if reading.error_rate > self.max_error_rate {
            return Some(format!(
                "error rate {:.2}% over {} requests exceeds the SLO's {:.2}%",
                reading.error_rate * 100.0,
                reading.samples,
                self.max_error_rate * 100.0
            ));
        }
        if reading.p99_ms > self.max_p99_ms {
            return Some(format!(
                "p99 {:.1} ms over {} requests exceeds the SLO's {:.1} ms",
                reading.p99_ms, reading.samples, self.max_p99_ms
            ));
        }
        None
    }
}

/// A side effect that must hold in the current phase. The executor makes each one true
/// idempotently (operation id = migration id, phase, step and action), so ensuring it twice
/// does nothing the second time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `instances` shadow instances exist and serve in the target region.
    EnsureShadow {
        /// Pool size.
        instances: u32,
    },
    /// Every shadow instance is being warmed (or already passed its gate).
    EnsureWarm,
    /// The target replicates from the source.
    EnsureReplication,
    /// Source fenced, lag 0, target promoted: the single writer moves to the target.
    PromoteTarget,
    /// Source fenced, lag 0, source promoted: the single writer moves back (rollback after
    /// promotion).
    PromoteSource,
    /// The source's fence is lifted: it takes writes again (rollback after the fence, before
    /// the promotion).
    UnfenceSource,
    /// The source's load balancer sends `percent` % to the target's front, and DNS follows.
    SetShare {
        /// Share for the target, percent.
        percent: u8,
    },
    /// Shadow instances leave the front at once, and are stopped and removed after the
    /// executor's keep time (after a rollback).
    ReleaseShadow,
    /// The source's instances leave the front, stop and are removed (after a completed
    /// migration has drained).
    ReleaseSource,
}

/// A proposed phase change with the reason the audit log keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The phase to move to.
    pub to: Phase,
    /// Why, in words an operator reads in `umbra status`.
    pub reason: String,
}

/// What [`decide`] concluded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// The transition to propose, if any. Actions are for the *current* phase; once the
    /// transition applies, the next round returns the new phase's actions.
    pub transition: Option<Transition>,
    /// What must hold now.
    pub actions: Vec<Action>,
    /// A change of the replicated `promoted` flag to propose: the agents confirmed that the
    /// single writer moved. Replicated so the audit log has it and a rollback knows it must
    /// move the writer back.
    pub promoted: Option<bool>,
}

impl Decision {
    /// Stay in the phase; make `actions` hold.
    fn hold(actions: Vec<Action>) -> Self {
        Decision {
            actions,
            ..Decision::default()
        }
    }

    /// Make `actions` hold, and move on (or not) as `transition` says.
    fn advance(transition: Option<Transition>, actions: Vec<Action>) -> Self {
        Decision {
            transition,
            actions,
            promoted: None,
        }
    }

    /// Record that the single writer moved (`true`: to the target) before anything else.
    fn record_promoted(promoted: bool) -> Self {
        Decision {
            promoted: Some(promoted),
            ..Decision::default()
        }
    }
}

fn to(phase: Phase, reason: impl Into<String>) -> Option<Transition> {
    Some(Transition {
        to: phase,
        reason: reason.into(),
    })
}

/// When a decision is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionTime {
    /// The wall clock, Unix ms: compared with what the plan schedules (the cutover time).
    pub wall_ms: u64,
    /// How long the migration has been in its phase, ms, by the leader's monotonic phase
    /// clock: compared with deadlines, windows and the drain.
    pub in_phase_ms: u64,
}

/// [`decide_at`] with the phase timed on the same wall clock (`now_ms` minus the record's
/// `phase_since_ms`), as a single clock that never steps gives it.
pub fn decide(record: &MigrationRecord, seen: &Observations, now_ms: u64) -> Decision {
    decide_at(
        record,
        seen,
        DecisionTime {
            wall_ms: now_ms,
            in_phase_ms: now_ms.saturating_sub(record.phase_since_ms),
        },
    )
}

/// The heart of the executor: given the replicated record, this round's observations and
/// the time, what must hold and what comes next.
pub fn decide_at(record: &MigrationRecord, seen: &Observations, time: DecisionTime) -> Decision {
    let spec = &record.spec;
    let now_ms = time.wall_ms;
    let elapsed_ms = time.in_phase_ms;
    let n = record.shadow_instances;
    let shadow = Action::EnsureShadow { instances: n };

    if let Some(reason) = &seen.rollback_requested
        && record
            .phase
            .may_become(Phase::RollingBack, spec.steps_percent.len())
    {
        return Decision::advance(
            to(Phase::RollingBack, format!("operator asked: {reason}")),
            Vec::new(),
        );
    }

    let deadline_passed = |limit_ms: u64, what: &str| {
        (elapsed_ms > limit_ms).then(|| Transition {
            to: Phase::RollingBack,
            reason: format!("{what} did not finish within {limit_ms} ms"),
        })
    };

    match record.phase {
        Phase::Planned => {
            let transition =
                (now_ms + spec.lead_time_ms >= spec.cutover_at_ms).then(|| Transition {
                    to: Phase::Provisioning,
                    reason: format!(
                        "lead time reached: cutover in {} ms",
                        spec.cutover_at_ms.saturating_sub(now_ms)
                    ),
                });
            Decision::advance(transition, Vec::new())
        }
        Phase::Provisioning => {
            let transition = if seen.shadow_serving < n {
                deadline_passed(spec.deadlines.provisioning_ms, "provisioning")
            } else if spec.warm_up {
                to(Phase::Warming, format!("{n} shadow instances serving"))
            } else {
                to(
                    Phase::Replicating,
                    format!("{n} shadow instances serving; warm-up skipped by the plan"),
                )
            };
            Decision::advance(transition, vec![shadow])
        }
        Phase::Warming => {
            let transition = if seen.shadow_warm >= n {
                to(
                    Phase::Replicating,
                    format!("readiness gate holds on all {n} shadow instances"),
                )
            } else if seen.shadow_warm_failed > 0 {
                // The warm-up ran its cap and the gate still does not hold: waiting for the
                // phase's deadline would only hold the service for nothing.
                to(
                    Phase::RollingBack,
                    format!(
                        "the warm-up of {} of {n} shadow instances reached its duration cap \
                         without the readiness gate holding",
                        seen.shadow_warm_failed
                    ),
                )
            } else {
                deadline_passed(spec.deadlines.warming_ms, "warm-up")
            };
            // Replication starts with warm-up, not after it: a read-through cache warmed
            // on an empty replica learns "absent" for every key, and the readiness gate would
            // judge an instance that holds none of the data it is about to serve.
            Decision::advance(
                transition,
                vec![shadow, Action::EnsureReplication, Action::EnsureWarm],
            )
        }
        Phase::Replicating => {
            let transition = match seen.replication {
                Some(r) if r.lag <= spec.max_replication_lag => to(
                    Phase::Ready,
                    format!(
                        "replication lag {} within the bound of {}",
                        r.lag, spec.max_replication_lag
                    ),
                ),
                _ => deadline_passed(spec.deadlines.replicating_ms, "replication catch-up"),
            };
            Decision::advance(transition, vec![shadow, Action::EnsureReplication])
        }
        Phase::Ready => {
            let transition = (now_ms >= spec.cutover_at_ms).then(|| Transition {
                to: Phase::CuttingOver { step: 0 },
                reason: format!(
                    "cutover time reached; first step {}%",
                    spec.steps_percent[0]
                ),
            });
            Decision::advance(transition, vec![shadow, Action::EnsureReplication])
        }
        Phase::CuttingOver { step } => cutting_over(record, seen, step, elapsed_ms),
        Phase::Draining => {
            // Counted from the start of draining, after the last step's window: later than
            // the last change of the record, so never short.
            let (drain_ms, why) = match spec.drain_ms {
                Some(ms) => (ms, "as asked".to_owned()),
                None => {
                    let plan = &spec.dns_ttl;
                    let ms = plan.drain_ms(record.ttl_lowered_at_ms, record.phase_since_ms);
                    let margin = u64::from(plan.margin_secs);
                    let ttl = (ms / 1_000).saturating_sub(margin);
                    (
                        ms,
                        format!("{ttl} s TTL on the replaced answers + {margin} s margin"),
                    )
                }
            };
            let transition = (elapsed_ms >= drain_ms).then(|| Transition {
                to: Phase::Completed,
                reason: format!("source drained for {drain_ms} ms ({why})"),
            });
            Decision::advance(transition, vec![Action::SetShare { percent: 100 }])
        }
        Phase::RollingBack => rolling_back(record, seen, elapsed_ms),
        // The shadow leaves the front at once: it no longer replicates, so anything it
        // answered from now on would be stale.
        Phase::RolledBack => {
            Decision::hold(vec![Action::SetShare { percent: 0 }, Action::ReleaseShadow])
        }
        Phase::Completed => Decision::hold(vec![
            Action::SetShare { percent: 100 },
            Action::ReleaseSource,
        ]),
        Phase::Failed => Decision::default(),
    }
}

fn cutting_over(
    record: &MigrationRecord,
    seen: &Observations,
    step: usize,
    elapsed_ms: u64,
) -> Decision {
    let spec = &record.spec;
    let percent = spec.steps_percent[step];
    let mut actions = vec![Action::EnsureShadow {
        instances: record.shadow_instances,
    }];
    // The single writer moves before the target takes all traffic, never after: at 100 %
    // the source serves nothing, and a write it accepted after the move would be lost.
    if percent == 100 && !record.promoted {
        if seen.replication.is_some_and(|r| r.promoted) {
            return Decision::record_promoted(true);
        }
        actions.extend([Action::EnsureReplication, Action::PromoteTarget]);
        // While the move waits, the fenced source takes no write of its own: bounded like the
        // catch-up it waits on. The rollback lifts the fence (or hands the writer back if the
        // promotion lands after all).
        let limit_ms = spec.deadlines.replicating_ms;
        let transition = (elapsed_ms > limit_ms).then(|| Transition {
            to: Phase::RollingBack,
            reason: format!(
                "the single writer did not move within {limit_ms} ms (source fenced, catch-up \
                 to lag 0, target promoted)"
            ),
        });
        return Decision::advance(transition, actions);
    }
    if !record.promoted {
        actions.push(Action::EnsureReplication);
    }
    actions.push(Action::SetShare { percent });

    if seen.share_applied != Some(percent) {
        return Decision::hold(actions);
    }
    if let SloSource::Prometheus(_) = &spec.slo.source {
        return judged_by_query(record, seen, step, elapsed_ms, actions);
    }
    if let Some(reason) = seen.slo.as_ref().and_then(|r| spec.slo.breach(r)) {
        let reason = format!("SLO breach at {percent}%: {reason}");
        return Decision::advance(to(Phase::RollingBack, reason), actions);
    }
    // With one DNS authority a step counts only once clients can be sent to it by name: the
    // authority must serve the step's weights. A refusal (a wrong key, a zone the server does
    // not hold) will not heal by waiting, and clients would never follow, so it rolls back.
    let actions = match dns_gate(&seen.dns, percent, actions) {
        Ok(actions) => actions,
        Err(decision) => return decision,
    };
    // A step passes on evidence, not on time alone: the window must have passed AND the SLO
    // must have judged at least `min_samples` requests at this share. Without the second half,
    // a new leader (whose reading starts from zero) would pass a step whose window elapsed
    // under its predecessor with nothing judged. `min_samples = 0` opts out, for services
    // that may see no traffic.
    let judged_samples = seen.slo.map_or(0, |r| r.samples);
    if elapsed_ms < spec.analysis_window_ms || judged_samples < spec.slo.min_samples {
        return Decision::hold(actions);
    }
    let judged = seen.slo.map_or_else(
        || "no traffic to judge".to_owned(),
        |r| {
            format!(
                "{} requests, error rate {:.2}%, p99 {:.1} ms",
                r.samples,
                r.error_rate * 100.0,
                r.p99_ms
            )
        },
    );
    step_held(spec, step, &judged, actions)
}

/// A cutover step judged by Prometheus. A breach rolls back as with the fronts. No data and
/// an unreachable server are neither a pass nor a rollback: the step holds until an answer
/// with data, asked once the window elapsed since the share applied, says it is within the
/// SLO.
fn judged_by_query(
    record: &MigrationRecord,
    seen: &Observations,
    step: usize,
    elapsed_ms: u64,
    actions: Vec<Action>,
) -> Decision {
    let spec = &record.spec;
    let percent = spec.steps_percent[step];
    let Some(queried) = &seen.slo_queried else {
        return Decision::hold(actions);
    };
    let Some((
        asked_at_ms,
        SloAnswer::Data {
            error_ratio,
            p99_ms,
            ..
        },
    )) = &queried.newest
    else {
        return Decision::hold(actions);
    };
    // NaN is no data (0/0 over a window with no requests), never a number within the SLO.
    if !error_ratio.is_finite() || !p99_ms.is_finite() {
        return Decision::hold(actions);
    }
    let mut judged = format!(
        "judged by Prometheus: error ratio {:.2} %, p99 {:.1} ms",
        error_ratio * 100.0,
        p99_ms
    );
    let compare = spec.slo.judgement == SloJudgement::Compare;
    if *error_ratio > spec.slo.max_error_rate || (!compare && *p99_ms > spec.slo.max_p99_ms) {
        let reason = format!(
            "SLO breach at {percent}%: {judged}, over the SLO's {:.2} % and {:.1} ms",
            spec.slo.max_error_rate * 100.0,
            spec.slo.max_p99_ms
        );
        return Decision::advance(to(Phase::RollingBack, reason), actions);
    }
    let actions = match dns_gate(&seen.dns, percent, actions) {
        Ok(actions) => actions,
        Err(decision) => return decision,
    };
    let window = spec.analysis_window_ms;
    let covers_window = *asked_at_ms >= queried.share_applied_at_ms.saturating_add(window);
    if elapsed_ms < window || !covers_window {
        return Decision::hold(actions);
    }
    if compare {
        let (target, source) = (&queried.target_p99_ms, &queried.source_p99_ms);
        let Some(comparison) = compare::mann_whitney_greater(target, source) else {
            return Decision::hold(actions);
        };
        let versus = format!(
            "p99 against the source's over {} and {} samples: Mann-Whitney U {:.1}, p {:.3}",
            target.len(),
            source.len(),
            comparison.u,
            comparison.p_value
        );
        if comparison.target_greater() {
            let reason = format!(
                "SLO breach at {percent}%: judged by Prometheus: the target's {versus}, significantly slower (p < {})",
                compare::ALPHA
            );
            return Decision::advance(to(Phase::RollingBack, reason), actions);
        }
        judged = format!("{judged}; {versus}");
    }
    step_held(spec, step, &judged, actions)
}

/// The DNS gate of a step at `percent`: `Ok` gives the actions back when DNS does not hold the
/// step; `Err` is the decision when the authority has not served the weights yet (hold) or
/// refused them (roll back).
fn dns_gate(dns: &DnsObserved, percent: u8, actions: Vec<Action>) -> Result<Vec<Action>, Decision> {
    match dns {
        DnsObserved::Ungated | DnsObserved::Served => Ok(actions),
        DnsObserved::Pending => Err(Decision::hold(actions)),
        DnsObserved::Failed(why) => {
            let reason = format!("DNS not served at {percent}%: {why}");
            Err(Decision::advance(to(Phase::RollingBack, reason), actions))
        }
    }
}

/// Step `step` held its window within the SLO (`judged` says on what): on to the next step,
/// or to draining after the last.
fn step_held(spec: &MigrationSpec, step: usize, judged: &str, actions: Vec<Action>) -> Decision {
    let percent = spec.steps_percent[step];
    let window = spec.analysis_window_ms;
    let transition = match spec.steps_percent.get(step + 1) {
        Some(next) => to(
            Phase::CuttingOver { step: step + 1 },
            format!("{percent}% held {window} ms within the SLO ({judged}); next {next}%"),
        ),
        None => to(
            Phase::Draining,
            format!("100% held {window} ms within the SLO ({judged})"),
        ),
    };
    Decision::advance(transition, actions)
}

fn rolling_back(record: &MigrationRecord, seen: &Observations, elapsed_ms: u64) -> Decision {
    let spec = &record.spec;
    let mut actions = vec![Action::SetShare { percent: 0 }];
    if !record.promoted && seen.replication.is_some_and(|r| r.promoted) {
        // The promotion landed after the rollback began (an operator's, asked while the
        // promotion's answer was on its way): the target is the writer and must hand it back
        // before its shadow is released, or the writes it took would go with it.
        return Decision::record_promoted(true);
    }
    if record.promoted {
        if seen.replication.is_some_and(|r| !r.promoted) {
            return Decision::record_promoted(false);
        }
        // No deadline while the writer goes back: Failed is terminal and ensures nothing, so
        // giving up mid-move would leave the source following a fenced target and no region
        // accepting writes. Each step of the move (follow, fence, wait for lag 0, promote) is
        // idempotent, has its own timeout and is retried, so the move ends once the regions
        // can be reached again. Only then does the deadline judge whether the traffic is back.
        // The shadow pool is ensured as well: its writer holds the writes to hand back, and a
        // crashed writer must serve again before the source can follow it.
        actions.extend([
            Action::EnsureShadow {
                instances: record.shadow_instances,
            },
            Action::PromoteSource,
        ]);
        return Decision::hold(actions);
    }
    if seen
        .replication
        .is_some_and(|r| r.source_fenced && !r.fence_lifted)
    {
        // Rolled back after the source was fenced and before the target was promoted (an
        // operator's rollback while the writer's move waited): no region takes writes until
        // the fence is lifted, and none will once the shadow is released. No deadline either:
        // Failed ensures nothing. The target's agent lifts it only after any promotion it is
        // running, and refuses if the target became the writer (then the writer is handed
        // back, above).
        actions.push(Action::UnfenceSource);
        return Decision::hold(actions);
    }
    let transition = if seen.share_applied == Some(0) {
        to(Phase::RolledBack, "all traffic back on the source")
    } else if elapsed_ms > spec.deadlines.rolling_back_ms {
        to(
            Phase::Failed,
            format!(
                "traffic not confirmed back on the source within {} ms: operator needed",
                spec.deadlines.rolling_back_ms
            ),
        )
    } else {
        None
    };
    Decision::advance(transition, actions)
}

/// The phases a migration with `steps` cutover steps passes through when nothing goes wrong,
/// in order: planned, provisioning, warming, replicating, ready, each cutover step, draining,
/// completed.
pub fn happy_path(steps: usize) -> Vec<Phase> {
    let mut path = vec![
        Phase::Planned,
        Phase::Provisioning,
        Phase::Warming,
        Phase::Replicating,
        Phase::Ready,
    ];
    path.extend((0..steps).map(|step| Phase::CuttingOver { step }));
    path.extend([Phase::Draining, Phase::Completed]);
    path
}

/// A migration's place in its lifecycle as (stages done, stages in all), for progress bars:
/// its position on the [`happy_path`]. A rollback counts as finished when it is terminal and
/// as not started otherwise, so a bar never runs backwards while the traffic is still going
/// back.
pub fn progress(record: &MigrationRecord) -> (u64, u64) {
    let path = happy_path(record.spec.steps_percent.len());
    let total = path.len() as u64 - 1;
    let done = match record.phase {
        Phase::RolledBack | Phase::Failed => total,
        Phase::RollingBack => 0,
        phase => path.iter().position(|p| *p == phase).unwrap_or(0) as u64,
    };
    (done, total)
}

#[cfg(test)]
mod tests;
