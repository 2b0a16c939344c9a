//! The demo's final report, computed from what the traffic client saw (one segment of
//! constant-rate load per second, each with its own latency histogram) and from the replicated
//! audit log (every phase transition of the migration, with the leader's timestamp). Pure
//! functions of those inputs, so the numbers the acceptance lines quote are tested here.
//!
//! This module must not read clocks or talk to processes.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;
use umbra_agent::loadgen::{FailedRequest, Outcome, OutcomeCounts};
use umbra_chaos::campaign::InstanceWal;

use umbra_orchestrator::api::Timestamp;
use umbra_orchestrator::migration::Phase;
use umbra_orchestrator::state::{AuditEntry, AuditEvent};

/// Writes an instant kept as Unix ms as a person reads it (RFC 3339, UTC, milliseconds), as
/// the operator API does.
fn rfc3339<S: serde::Serializer>(ms: &u64, to: S) -> Result<S::Ok, S::Error> {
    Timestamp::from_unix_ms(*ms).serialize(to)
}

fn rfc3339_opt<S: serde::Serializer>(ms: &Option<u64>, to: S) -> Result<S::Ok, S::Error> {
    ms.map(Timestamp::from_unix_ms).serialize(to)
}

/// Failed requests the report describes one by one (the first ones of the run).
pub const FAILED_REQUESTS_KEPT: usize = 10;

/// How long after the first cutover step the "first 10 s after cutover" p99 looks.
pub const AFTER_CUTOVER_WINDOW_MS: u64 = 10_000;

/// What the traffic client saw in one segment of the run (requests scheduled in
/// `start_ms..end_ms`, Unix ms).
#[derive(Debug, Clone)]
pub struct TrafficSegment {
    /// The run's number of the segment's first request (request `k` of the segment is
    /// `first_seq + k`).
    pub first_seq: u64,
    /// When the segment's schedule started.
    pub start_ms: u64,
    /// When its schedule ended.
    pub end_ms: u64,
    /// Every outcome.
    pub counts: OutcomeCounts,
    /// Latency of successful requests, µs from the scheduled send time.
    pub latency_us: Histogram<u64>,
    /// Requests by the front address DNS gave.
    pub by_address: BTreeMap<String, u64>,
    /// The first failed requests of the segment, described one by one.
    pub failed_requests: Vec<FailedRequest>,
    /// The run's number of every failed request of the segment.
    pub failed_seqs: Vec<u64>,
}

/// Writes of fresh keys sent during the run, each read back at the end from the region the
/// service ended in. A write acknowledged but not found there is a lost write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WriteCheck {
    /// Writes sent.
    pub sent: u64,
    /// Writes answered 2xx.
    pub acknowledged: u64,
    /// Written keys found with their value at the end (a write answered with an error may
    /// still have applied, so this can exceed `acknowledged`).
    pub found: u64,
    /// The first few written keys not found (their numbers).
    pub first_missing: Vec<u64>,
    /// Writes answered 2xx and not found at the end: lost writes (0 is the promise).
    pub acknowledged_missing: u64,
}

/// One phase of the migration, from the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseSpan {
    /// Phase name as the state shows it, e.g. `warming` or `cutting_over[1]`.
    pub name: String,
    /// Entered (Unix ms, the proposing leader's clock; RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub start: u64,
    /// Left; `None` for the phase the migration is still in (or ended in).
    #[serde(serialize_with = "rfc3339_opt")]
    pub end: Option<u64>,
    /// Why it was entered, as the audit log says (e.g. a rollback's cause).
    pub reason: String,
}

/// The phases of migration `id` in order, from its audit entries (its creation opens
/// `planned`; every transition closes one phase and opens the next).
pub fn phases_from_audit(audit: &[AuditEntry], id: &str) -> Vec<PhaseSpan> {
    let mut phases: Vec<PhaseSpan> = Vec::new();
    for entry in audit.iter().filter(|e| e.subject == id) {
        let entered = match &entry.event {
            AuditEvent::MigrationCreated { .. } => Phase::Planned,
            AuditEvent::Transition { to, .. } => *to,
            _ => continue,
        };
        if let Some(last) = phases.last_mut() {
            last.end = Some(entry.at_ms);
        }
        phases.push(PhaseSpan {
            name: entered.to_string(),
            start: entry.at_ms,
            end: None,
            reason: entry.reason.clone(),
        });
    }
    phases
}

/// The single writer's move to the target of migration `id`: when it was recorded (Unix ms)
/// and the fence window the leader measured, if one leader did the whole move.
pub fn writer_move(audit: &[AuditEntry], id: &str) -> Option<(u64, Option<u64>)> {
    audit
        .iter()
        .filter(|e| e.subject == id)
        .find_map(|e| match e.event {
            AuditEvent::WriterMoved {
                to_target: true,
                fence_window_ms,
            } => Some((e.at_ms, fence_window_ms)),
            _ => None,
        })
}

/// The single writer's move to the target of migration `id` as the instances' logs show it:
/// the end of the move (the first write a shadow of `id`, named `{id}-N`, accepted, Unix ms)
/// and its length (from the last write another writer accepted before that). What the data
/// saw, whichever leaders carried the move out; `None` when no shadow accepted a write.
pub fn logged_writer_move(wals: &[InstanceWal], id: &str) -> Option<(u64, u64)> {
    let shadow = format!("{id}-");
    let runs = || wals.iter().flat_map(|w| &w.runs);
    let first_on_target = runs()
        .filter(|r| r.writer.starts_with(&shadow))
        .map(|r| r.from_ms)
        .min()?;
    let last_before = runs()
        .filter(|r| !r.writer.starts_with(&shadow) && r.to_ms <= first_on_target)
        .map(|r| r.to_ms)
        .max()
        .unwrap_or(first_on_target);
    Some((first_on_target, first_on_target - last_before))
}

/// The longest pause, as `(end, length)` in ms, in the writes that writers other than the
/// shadows of migration `id` accepted, among pauses that overlap `within` (Unix ms): a fence
/// on the source that a rollback lifted before the writer moved, as the instances' logs show
/// it (the leader records no writer move then). `None` when there is no such pause, or when
/// writes never resumed (that is no fence window but a service left without a writer).
pub fn logged_source_pause(
    wals: &[InstanceWal],
    id: &str,
    within: (u64, u64),
) -> Option<(u64, u64)> {
    let shadow = format!("{id}-");
    let mut spans: Vec<(u64, u64)> = wals
        .iter()
        .flat_map(|w| &w.runs)
        .filter(|r| !r.writer.starts_with(&shadow))
        .map(|r| (r.from_ms, r.to_ms))
        .collect();
    spans.sort_unstable();
    // Replicas log the same records: merge the spans, then read the pauses between them.
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (from, to) in spans {
        match merged.last_mut() {
            Some(last) if from <= last.1 + umbra_chaos::campaign::RUN_PAUSE_MS => {
                last.1 = last.1.max(to)
            }
            _ => merged.push((from, to)),
        }
    }
    merged
        .windows(2)
        .map(|pair| (pair[0].1, pair[1].0))
        .filter(|(paused, resumed)| *paused <= within.1 && *resumed >= within.0)
        .max_by_key(|(paused, resumed)| resumed - paused)
        .map(|(paused, resumed)| (resumed, resumed - paused))
}

/// The window, as `(end, length)` in ms, that covers both `window` and `other`.
pub fn widest(window: (u64, u64), other: Option<(u64, u64)>) -> (u64, u64) {
    let Some(other) = other else {
        return window;
    };
    let start = window
        .0
        .saturating_sub(window.1)
        .min(other.0.saturating_sub(other.1));
    let end = window.0.max(other.0);
    (end, end - start)
}

/// Audit events of migration `id` that must appear exactly once in a run (entering
/// provisioning and each cutover step), with how often each did.
pub fn step_counts(audit: &[AuditEntry], id: &str, steps: usize) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = std::iter::once("provisioning".to_owned())
        .chain((0..steps).map(|k| format!("cutting_over[{k}]")))
        .map(|name| (name, 0))
        .collect();
    for entry in audit.iter().filter(|e| e.subject == id) {
        if let AuditEvent::Transition { to, .. } = &entry.event
            && let Some(count) = counts.get_mut(&to.to_string())
        {
            *count += 1;
        }
    }
    counts
}

/// Breach detected → all weights restored: from entering `rolling_back` to entering
/// `rolled_back` (the executor proposes that only once the source front reports share 0 and
/// the DNS weights are back on the source).
pub fn rollback_ms(phases: &[PhaseSpan]) -> Option<u64> {
    let start = phases.iter().find(|p| p.name == "rolling_back")?.start;
    let end = phases.iter().find(|p| p.name == "rolled_back")?.start;
    Some(end.saturating_sub(start))
}

/// Start of the first cutover step.
pub fn cutover_start(phases: &[PhaseSpan]) -> Option<u64> {
    phases
        .iter()
        .find(|p| p.name == "cutting_over[0]")
        .map(|p| p.start)
}

/// p99 (ms) of the successful requests of `segments`; 0 when there are none.
pub fn p99_ms<'a>(segments: impl IntoIterator<Item = &'a TrafficSegment>) -> f64 {
    let mut merged: Option<Histogram<u64>> = None;
    for s in segments {
        match &mut merged {
            None => merged = Some(s.latency_us.clone()),
            Some(h) => h
                .add(&s.latency_us)
                .expect("segments share the loadgen's histogram bounds"),
        }
    }
    merged.map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0)
}

/// The traffic numbers of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrafficSummary {
    /// Requests scheduled over the run.
    pub requests_total: u64,
    /// Requests a user would have seen fail (HTTP 5xx, refused, timed out, unresolved).
    pub requests_failed: u64,
    /// Failures by kind.
    pub failures: BTreeMap<String, u64>,
    /// p99 before the first cutover step (the whole run when there was none).
    pub p99_ms_steady: f64,
    /// p99 of the requests sent in the first 10 s of the cutover.
    pub p99_ms_first_10s_after_cutover: Option<f64>,
    /// Requests by front address over the whole run.
    pub by_front: BTreeMap<String, u64>,
    /// Requests by front address once the migration ended and one DNS TTL passed.
    pub by_front_at_end: BTreeMap<String, u64>,
    /// The run's first failed requests ([`FAILED_REQUESTS_KEPT`] at most), in time order.
    pub failed_requests: Vec<FailedRequestSeen>,
}

/// One failed request as the client saw it: what it was, when it was due, which front it
/// reached and what came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedRequestSeen {
    /// When it was due (Unix ms; RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub at: u64,
    pub method: String,
    pub path: String,
    pub outcome: Outcome,
    /// The answer's status, when there was one.
    pub status: Option<u16>,
    /// The front address DNS gave, when it got that far.
    pub front: Option<String>,
    /// The start of the answer's body, or the error.
    pub detail: String,
}

impl From<&FailedRequest> for FailedRequestSeen {
    fn from(f: &FailedRequest) -> Self {
        Self {
            at: f.due_unix_ms,
            method: f.method.clone(),
            path: f.path.clone(),
            outcome: f.outcome,
            status: f.status,
            front: f.address.clone(),
            detail: f.detail.clone(),
        }
    }
}

fn add_counts(into: &mut OutcomeCounts, c: &OutcomeCounts) {
    into.scheduled += c.scheduled;
    into.completed += c.completed;
    into.ok += c.ok;
    into.http_error += c.http_error;
    into.connect_error += c.connect_error;
    into.timeout += c.timeout;
    into.resolve_error += c.resolve_error;
    into.io_error += c.io_error;
}

/// Two runs offered side by side (the reads and the writes) as one run: each segment of
/// `extra` is added into the segment of `into` that started nearest to it, so the timeline
/// has one entry per second and the run's length is counted once.
pub fn merge_runs(mut into: Vec<TrafficSegment>, extra: &[TrafficSegment]) -> Vec<TrafficSegment> {
    if into.is_empty() {
        return extra.to_vec();
    }
    into.sort_by_key(|s| s.start_ms);
    for e in extra {
        let after = into.partition_point(|s| s.start_ms < e.start_ms);
        let nearest = [after.checked_sub(1), (after < into.len()).then_some(after)]
            .into_iter()
            .flatten()
            .min_by_key(|&i| into[i].start_ms.abs_diff(e.start_ms))
            .expect("into is not empty");
        let s = &mut into[nearest];
        add_counts(&mut s.counts, &e.counts);
        s.latency_us
            .add(&e.latency_us)
            .expect("latency histograms share their bounds");
        for (addr, n) in &e.by_address {
            *s.by_address.entry(addr.clone()).or_insert(0) += n;
        }
        s.failed_requests.extend(e.failed_requests.iter().cloned());
    }
    into
}

/// Sums the segments; `cutover_at_ms` splits steady from after-cutover; segments that
/// started at or after `settled_at_ms` (the migration's end plus one DNS TTL) show where the
/// traffic ended up.
pub fn summarize(
    segments: &[TrafficSegment],
    cutover_at_ms: Option<u64>,
    settled_at_ms: u64,
) -> TrafficSummary {
    let mut total = OutcomeCounts::default();
    let mut by_front = BTreeMap::new();
    for s in segments {
        add_counts(&mut total, &s.counts);
        for (addr, n) in &s.by_address {
            *by_front.entry(addr.clone()).or_insert(0) += n;
        }
    }
    let mut failed_requests: Vec<FailedRequestSeen> = segments
        .iter()
        .flat_map(|s| &s.failed_requests)
        .map(FailedRequestSeen::from)
        .collect();
    failed_requests.sort_by_key(|f| f.at);
    failed_requests.truncate(FAILED_REQUESTS_KEPT);
    let mut by_front_at_end = BTreeMap::new();
    for s in segments.iter().filter(|s| s.start_ms >= settled_at_ms) {
        for (addr, n) in &s.by_address {
            *by_front_at_end.entry(addr.clone()).or_insert(0) += n;
        }
    }
    let failures: BTreeMap<String, u64> = [
        ("http_error", total.http_error),
        ("connect_error", total.connect_error),
        ("timeout", total.timeout),
        ("resolve_error", total.resolve_error),
        ("io_error", total.io_error),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| (k.to_owned(), n))
    .collect();
    let (steady, after) = match cutover_at_ms {
        Some(c) => (
            p99_ms(segments.iter().filter(|s| s.end_ms <= c)),
            Some(p99_ms(segments.iter().filter(|s| {
                s.end_ms > c && s.start_ms < c + AFTER_CUTOVER_WINDOW_MS
            }))),
        ),
        None => (p99_ms(segments), None),
    };
    TrafficSummary {
        requests_total: total.scheduled,
        requests_failed: total.failed(),
        failures,
        p99_ms_steady: steady,
        p99_ms_first_10s_after_cutover: after,
        by_front,
        by_front_at_end,
        failed_requests,
    }
}

/// One second of traffic as the client saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecondOfTraffic {
    /// Start of the second (Unix ms; RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub start: u64,
    /// Requests sent.
    pub requests: u64,
    /// Of which failed.
    pub failed: u64,
    /// p99 of the successful ones, ms.
    pub p99_ms: f64,
}

/// Failed requests in the seconds of `timeline` that overlap the window of `window_ms` ending
/// at `end_ms` (Unix ms).
pub fn failed_in_window(timeline: &[SecondOfTraffic], end_ms: u64, window_ms: u64) -> u64 {
    let start_ms = end_ms.saturating_sub(window_ms);
    timeline
        .iter()
        .filter(|s| s.start <= end_ms && s.start + 1_000 > start_ms)
        .map(|s| s.failed)
        .sum()
}

/// Failed requests of `segments` that were due in the window of `window_ms` ending at `end_ms`
/// (Unix ms), the window included: request `k` of a segment is due `k / rate_per_sec` after
/// the segment's start, as the generator schedules it. Unlike [`failed_in_window`], a
/// failure in the same second for another reason (a fault before a rollback) is not counted.
pub fn failed_due_in_window(
    segments: &[TrafficSegment],
    rate_per_sec: f64,
    end_ms: u64,
    window_ms: u64,
) -> u64 {
    if rate_per_sec <= 0.0 {
        return 0;
    }
    let start_ms = end_ms.saturating_sub(window_ms);
    let due_ms = |s: &TrafficSegment, seq: u64| {
        s.start_ms + (seq.saturating_sub(s.first_seq) as f64 * 1_000.0 / rate_per_sec) as u64
    };
    segments
        .iter()
        .flat_map(|s| s.failed_seqs.iter().map(move |&seq| due_ms(s, seq)))
        .filter(|due| (start_ms..=end_ms).contains(due))
        .count() as u64
}

/// The run second by second.
pub fn timeline(segments: &[TrafficSegment]) -> Vec<SecondOfTraffic> {
    segments
        .iter()
        .map(|s| SecondOfTraffic {
            start: s.start_ms,
            requests: s.counts.scheduled,
            failed: s.counts.failed(),
            p99_ms: p99_ms(std::iter::once(s)),
        })
        .collect()
}

/// A serving pool during one forecast slice, as the leader held it (the last sample of the
/// slice).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolSample {
    /// The region.
    pub region: String,
    /// Start of the slice (RFC 3339); `null` while the pool had no forecast.
    pub slice_start: Option<String>,
    /// The service tier's quantile of forecast demand for the slice, requests per second.
    pub forecast_rps: Option<f64>,
    /// Instances the pool should serve with (after lead times and hysteresis).
    pub target_warm: u32,
    /// Dormant instances it should keep.
    pub target_dormant: u32,
    /// Instances serving, as the region's agent reported them.
    pub warm: u32,
    /// Dormant instances, as reported.
    pub dormant: u32,
}

impl PoolSample {
    /// The sample of `view`.
    pub fn of(view: &umbra_orchestrator::api::PoolStatus) -> Self {
        let slice = view.slice.as_ref();
        Self {
            region: view.region.clone(),
            slice_start: slice.map(|s| s.start.to_string()),
            forecast_rps: slice.map(|s| s.quantile),
            target_warm: view.target.warm,
            target_dormant: view.target.dormant,
            warm: view.actual.warm,
            dormant: view.actual.dormant,
        }
    }
}

/// The final report (`umbra demo --json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// `completed`, `rolled_back` or `failed`.
    pub outcome: String,
    /// Where the cutover steps' SLO was read from: `fronts` or `prometheus`.
    pub slo_source: String,
    /// Prometheus SLO queries that had data, summed over the orchestrators alive at the end.
    pub slo_queries_with_data: u64,
    /// Those that had none (the step held).
    pub slo_queries_no_data: u64,
    /// The migration's id.
    pub migration: String,
    /// Source region.
    pub from: String,
    /// Target region.
    pub to: String,
    /// Whether the shadow pool was warmed.
    pub warm_up: bool,
    /// Requests scheduled over the run.
    pub requests_total: u64,
    /// Requests a user would have seen fail.
    pub requests_failed: u64,
    /// Failures by kind.
    pub failures: BTreeMap<String, u64>,
    /// Offered rate.
    pub rate_per_sec: f64,
    /// How long traffic ran.
    pub traffic_secs: f64,
    /// p99 before the cutover.
    pub p99_ms_steady: f64,
    /// p99 in the first 10 s of the cutover (`null` when the migration never cut over).
    pub p99_ms_first_10s_after_cutover: Option<f64>,
    /// Shadow pool size the executor chose from the forecast.
    pub shadow_instances: u32,
    /// Every phase with its start and end (Unix ms).
    pub phases: Vec<PhaseSpan>,
    /// Breach detected → weights restored, when it rolled back.
    pub rollback_ms: Option<u64>,
    /// The single writer's move to the target: from the source's fence confirmed to the
    /// target's promotion confirmed, as the leader measured it (writes reaching the service
    /// meanwhile are held, up to the sample's hold time; any refused are counted in
    /// `failed_in_fence_window`). When leaders changed during the move, the window the
    /// instances' logs show: from the last write the source's writer accepted to the first
    /// the target's took. `null` when the writer never moved.
    pub fence_window_ms: Option<u64>,
    /// Failed requests in the traffic seconds that overlap the fence window, or the logs'
    /// window when it is wider (a leader that took over a move half done measures only its
    /// own part), counted apart; `requests_failed` includes them. When a rollback from the
    /// last step lifted the source's fence before the writer moved, the window is the pause
    /// the logs show in the source's writes during that step and the rollback.
    pub failed_in_fence_window: u64,
    /// Writes the traffic client sent inside that window (by each write's scheduled send
    /// time) that failed: a fenced writer holds writes until the new writer takes them, and
    /// these are the ones it did not. Counted in `failed_in_fence_window` too.
    pub writes_refused_while_fenced: u64,
    /// Writes answered 2xx (`writes.acknowledged`).
    pub writes_acknowledged: u64,
    /// Written keys found with their value on the target at the end, read through its front;
    /// set when the migration completed (`writes.found`).
    pub writes_found_on_target: Option<u64>,
    /// The same on the source, where the service ended up when the migration did not
    /// complete (rolled back or failed).
    pub writes_found_on_source: Option<u64>,
    /// Acknowledged writes not found where the service ended up: 0 unless a write was lost
    /// (`writes.acknowledged_missing`).
    pub writes_acknowledged_missing: u64,
    /// Requests by front over the run.
    pub by_front: BTreeMap<String, u64>,
    /// Requests by front once the migration ended and one DNS TTL passed (where the traffic
    /// ended up).
    pub by_front_at_end: BTreeMap<String, u64>,
    /// The run's first failed requests, described one by one (what, when, where, and what
    /// came back), so a failure can be placed on the migration's timeline.
    pub failed_requests: Vec<FailedRequestSeen>,
    /// How often the audit shows entering provisioning and each cutover step.
    pub audit_step_counts: BTreeMap<String, usize>,
    /// The orchestrator killed mid-cutover (`--kill-leader`).
    pub killed_leader: Option<u64>,
    /// The region whose agent was SIGKILLed while warming and started again
    /// (`--restart-target-agent`).
    pub restarted_agent: Option<String>,
    /// The fault plan's faults (`--fault-plan`): what each hit, when it fired and was undone.
    pub faults: Vec<crate::faults::FaultSeen>,
    /// `--data postgres`: the instance databases (`umbra_…`) each region's server holds at
    /// the end: one per instance left, since removing an instance drops its database.
    pub postgres_databases_left: Option<BTreeMap<String, usize>>,
    /// `--data postgres`: replication slots no subscriber reads, on every server at the end:
    /// 0 once the migration released what it left behind (such a slot keeps WAL on its
    /// server for ever; an in-region replica's slot is read and not counted).
    pub postgres_idle_slots_left: Option<usize>,
    /// The write traffic, read back where the service ended up.
    pub writes: WriteCheck,
    /// Every sample instance's write-ahead log, read while the demo ran (a released
    /// instance's before its removal), as runs of records by one writer: who accepted which
    /// writes, and when.
    pub wals: Vec<umbra_chaos::campaign::InstanceWal>,
    /// Instances each region's agent still keeps when the demo ends, by region: the old
    /// source's pool is removed after a completion, the shadow pool after a rollback.
    pub instances_left: BTreeMap<String, usize>,
    /// Instances of the migration's shadow pool still kept in the target region at the end
    /// (0 once a rolled-back migration's shadows were removed; the serving pool after a
    /// completion).
    pub shadow_instances_left: usize,
    /// The service's serving pool, per region and forecast slice, sampled while the demo ran.
    pub pools: Vec<PoolSample>,
    /// Whether every live orchestrator ended with the same migration state.
    pub identical_state: bool,
    /// Wall time of the whole demo.
    pub demo_secs: f64,
    /// The traffic second by second.
    pub timeline: Vec<SecondOfTraffic>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at_ms: u64, subject: &str, event: AuditEvent) -> AuditEntry {
        AuditEntry {
            index: at_ms,
            at_ms,
            term: 2,
            subject: subject.to_owned(),
            event,
            reason: String::new(),
        }
    }

    fn moved(from: Phase, to: Phase) -> AuditEvent {
        AuditEvent::Transition {
            from,
            to,
            shadow_instances: None,
            rollback_ms: None,
        }
    }

    fn segment(start_ms: u64, latency_ms: u64, failed: u64, front: &str) -> TrafficSegment {
        let mut latency_us = Histogram::new_with_bounds(1, 600_000_000, 3).unwrap();
        for _ in 0..100 {
            latency_us.record(latency_ms * 1000).unwrap();
        }
        TrafficSegment {
            first_seq: 0,
            start_ms,
            end_ms: start_ms + 1000,
            counts: OutcomeCounts {
                scheduled: 100 + failed,
                completed: 100 + failed,
                ok: 100,
                http_error: failed,
                ..OutcomeCounts::default()
            },
            latency_us,
            by_address: [(front.to_owned(), 100 + failed)].into(),
            failed_requests: (0..failed)
                .map(|k| FailedRequest {
                    seq: k,
                    due_unix_ms: start_ms + k,
                    method: "PUT".to_owned(),
                    path: format!("/kv/written-{k}"),
                    outcome: Outcome::HttpError,
                    status: Some(503),
                    address: Some(front.to_owned()),
                    detail: "read-only".to_owned(),
                })
                .collect(),
            failed_seqs: (0..failed).collect(),
        }
    }

    #[test]
    fn only_writes_due_inside_the_fence_window_count_as_refused_while_fenced() {
        // 100 writes a second; the first second fails requests 5, 50 and 95 (due at +50,
        // +500 and +950 ms), the next fails request 120 (due 200 ms into it).
        let mut first = segment(10_000, 1, 3, "f");
        first.failed_seqs = vec![5, 50, 95];
        let mut second = segment(11_000, 1, 1, "f");
        second.first_seq = 100;
        second.failed_seqs = vec![120];
        let segments = [first, second];
        // The writer moved between 10,400 and 11,000 ms.
        assert_eq!(failed_due_in_window(&segments, 100.0, 11_000, 600), 2);
        // Both edges count: [10,950, 11,200] holds requests 95 and 120.
        assert_eq!(failed_due_in_window(&segments, 100.0, 11_200, 250), 2);
        assert_eq!(failed_due_in_window(&segments, 100.0, 11_200, 249), 1);
        assert_eq!(failed_due_in_window(&segments, 100.0, 9_999, 5_000), 0);
        // The seconds the window overlaps hold all four failures: that count is wider.
        assert_eq!(failed_in_window(&timeline(&segments), 11_000, 600), 4);
        assert_eq!(failed_due_in_window(&segments, 0.0, 11_000, 600), 0);
    }

    #[test]
    fn writes_offered_beside_the_reads_land_in_the_reads_second() {
        let reads = vec![
            segment(2_000, 2, 0, "a"),
            segment(0, 2, 0, "a"),
            segment(1_000, 2, 0, "a"),
        ];
        let writes = [
            segment(3, 5, 1, "a"),
            segment(1_004, 5, 0, "b"),
            segment(1_998, 5, 2, "a"),
        ];
        let merged = merge_runs(reads, &writes);
        assert_eq!(
            merged.iter().map(|s| s.start_ms).collect::<Vec<_>>(),
            [0, 1_000, 2_000],
            "one entry per second"
        );
        let failed: Vec<u64> = merged.iter().map(|s| s.counts.failed()).collect();
        assert_eq!(failed, [1, 0, 2]);
        let described: Vec<usize> = merged.iter().map(|s| s.failed_requests.len()).collect();
        assert_eq!(
            described,
            [1, 0, 2],
            "failures are described where they are counted"
        );
        assert_eq!(merged[1].counts.scheduled, 200);
        assert_eq!(
            merged[1].by_address,
            [("a".into(), 100), ("b".into(), 100)].into()
        );
        assert_eq!(merged[2].latency_us.len(), 200);
    }

    #[test]
    fn phases_come_from_the_migrations_own_transitions() {
        use Phase::*;
        let audit = vec![
            entry(
                100,
                "plan",
                AuditEvent::PlanApplied {
                    regions: 3,
                    services: 1,
                    schedules: 0,
                },
            ),
            entry(
                200,
                "shop-1",
                AuditEvent::MigrationCreated {
                    service: "shop".into(),
                    from: "us-east".into(),
                    to: "eu-west".into(),
                    cutover_at_ms: 9_000,
                },
            ),
            entry(300, "shop-1", moved(Planned, Provisioning)),
            entry(400, "shop-1", moved(Provisioning, Warming)),
            entry(
                450,
                "shop",
                AuditEvent::DnsWeights {
                    weights: [("us-east".to_owned(), 100)].into(),
                    ttl_secs: 5,
                },
            ),
            entry(500, "shop-1", moved(Warming, Replicating)),
            entry(
                600,
                "shop-1",
                AuditEvent::WriterMoved {
                    to_target: true,
                    fence_window_ms: Some(42),
                },
            ),
            entry(700, "shop-1", moved(Replicating, Ready)),
            entry(800, "shop-1", moved(Ready, CuttingOver { step: 0 })),
            entry(
                900,
                "shop-1",
                moved(CuttingOver { step: 0 }, CuttingOver { step: 1 }),
            ),
            entry(950, "shop-2", moved(Planned, Provisioning)),
            entry(1000, "shop-1", moved(CuttingOver { step: 1 }, RollingBack)),
            entry(1400, "shop-1", moved(RollingBack, RolledBack)),
        ];
        assert_eq!(writer_move(&audit, "shop-1"), Some((600, Some(42))));
        assert_eq!(writer_move(&audit, "shop-2"), None);
        let phases = phases_from_audit(&audit, "shop-1");
        let names: Vec<&str> = phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "planned",
                "provisioning",
                "warming",
                "replicating",
                "ready",
                "cutting_over[0]",
                "cutting_over[1]",
                "rolling_back",
                "rolled_back"
            ]
        );
        assert_eq!(phases[0].start, 200);
        assert_eq!(phases[0].end, Some(300));
        assert_eq!(phases[3].end, Some(700), "the writer switch is not a phase");
        assert_eq!(phases.last().unwrap().end, None);
        assert_eq!(rollback_ms(&phases), Some(400));
        assert_eq!(cutover_start(&phases), Some(800));
        let counts = step_counts(&audit, "shop-1", 3);
        assert_eq!(counts["provisioning"], 1);
        assert_eq!(counts["cutting_over[1]"], 1);
        assert_eq!(counts["cutting_over[2]"], 0);
    }

    #[test]
    fn steady_and_after_cutover_p99_split_at_the_first_step() {
        // Ten steady seconds at 2 ms, the cutover at 10 s, ten seconds at 8 ms, then 3 ms.
        let mut segments = Vec::new();
        for k in 0..10 {
            segments.push(segment(k * 1000, 2, 0, "127.0.0.11:80"));
        }
        for k in 10..20 {
            segments.push(segment(k * 1000, 8, u64::from(k == 12), "127.0.0.12:80"));
        }
        for k in 20..25 {
            segments.push(segment(k * 1000, 3, 0, "127.0.0.12:80"));
        }
        let summary = summarize(&segments, Some(10_000), 23_000);
        assert_eq!(summary.requests_total, 2501);
        assert_eq!(summary.requests_failed, 1);
        assert_eq!(summary.failures["http_error"], 1);
        // The failure is described: when, what, which front, what came back.
        let [failed] = summary.failed_requests.as_slice() else {
            panic!("{:?}", summary.failed_requests);
        };
        assert_eq!(failed.at, 12_000);
        assert_eq!(failed.front.as_deref(), Some("127.0.0.12:80"));
        assert_eq!(
            (failed.status, failed.detail.as_str()),
            (Some(503), "read-only")
        );
        assert!((summary.p99_ms_steady - 2.0).abs() < 0.01);
        let after = summary.p99_ms_first_10s_after_cutover.unwrap();
        assert!((after - 8.0).abs() < 0.01, "{after}");
        assert_eq!(summary.by_front["127.0.0.11:80"], 1000);
        assert_eq!(
            summary.by_front_at_end,
            [("127.0.0.12:80".to_owned(), 200)].into()
        );
        let no_cutover = summarize(&segments, None, 24_000);
        assert!(no_cutover.p99_ms_first_10s_after_cutover.is_none());
        assert!((no_cutover.p99_ms_steady - 8.0).abs() < 0.01);
        assert_eq!(p99_ms(&[]), 0.0);
    }

    #[test]
    fn instants_in_the_json_report_are_rfc3339() {
        let span = PhaseSpan {
            name: "warming".into(),
            start: 1_764_579_600_123,
            end: None,
            reason: String::new(),
        };
        let json = serde_json::to_value(&span).unwrap();
        assert_eq!(json["start"], "2025-12-01T09:00:00.123Z");
        assert!(json["end"].is_null());
        let second = SecondOfTraffic {
            start: 1_764_579_601_000,
            requests: 1,
            failed: 0,
            p99_ms: 1.0,
        };
        assert_eq!(
            serde_json::to_value(&second).unwrap()["start"],
            "2025-12-01T09:00:01.000Z"
        );
    }

    /// Writer runs of one log: `(writer, from_ms, to_ms)`.
    fn wal(instance: &str, runs: &[(&str, u64, u64)]) -> InstanceWal {
        InstanceWal {
            instance: instance.to_owned(),
            runs: runs
                .iter()
                .enumerate()
                .map(
                    |(i, &(writer, from_ms, to_ms))| umbra_chaos::campaign::WriterRun {
                        writer: writer.to_owned(),
                        first_seq: i as u64 * 10 + 1,
                        last_seq: i as u64 * 10 + 10,
                        from_ms,
                        to_ms,
                    },
                )
                .collect(),
            unstamped: 0,
        }
    }

    #[test]
    fn the_logs_show_the_writer_move_from_the_last_source_write_to_the_first_shadow_write() {
        let wals = [
            // The source's primary: its own writes, then the shadow's replicated back after a
            // rollback, then its own again.
            wal(
                "us-east/shop-us-east-1",
                &[
                    ("shop-us-east-1", 1_000, 4_000),
                    ("shop-1-1", 6_500, 7_000),
                    ("shop-us-east-1", 9_000, 9_500),
                ],
            ),
            // A source replica lagging behind, and the shadow itself.
            wal(
                "us-east/shop-us-east-2",
                &[("shop-us-east-1", 1_000, 3_800)],
            ),
            wal(
                "ap-south/shop-1-1",
                &[("shop-us-east-1", 1_000, 4_000), ("shop-1-1", 6_500, 7_000)],
            ),
        ];
        assert_eq!(logged_writer_move(&wals, "shop-1"), Some((6_500, 2_500)));
        // No shadow of that migration ever wrote.
        assert_eq!(logged_writer_move(&wals, "shop-2"), None);
        assert_eq!(logged_writer_move(&wals[1..2], "shop-1"), None);
    }

    #[test]
    fn the_logs_show_a_lifted_fence_as_a_pause_in_the_sources_writes() {
        let wals = [
            // The source's primary: fenced from 17,000 to 21,000, then writing again.
            wal(
                "us-east/shop-us-east-1",
                &[
                    ("shop-us-east-1", 1_000, 17_000),
                    ("shop-us-east-1", 21_000, 25_000),
                ],
            ),
            // A replica saw the same records, the last ones a little later.
            wal(
                "us-east/shop-us-east-2",
                &[
                    ("shop-us-east-1", 1_000, 16_950),
                    ("shop-us-east-1", 21_000, 24_000),
                ],
            ),
            // The shadow replicated the source's writes until the rollback.
            wal("eu-west/shop-1-1", &[("shop-us-east-1", 1_000, 17_000)]),
        ];
        assert_eq!(
            logged_source_pause(&wals, "shop-1", (16_000, 22_000)),
            Some((21_000, 4_000))
        );
        // A pause outside the last step and the rollback is not that fence.
        assert_eq!(logged_source_pause(&wals, "shop-1", (22_000, 30_000)), None);
        // Writes that never resumed are no fence window.
        assert_eq!(
            logged_source_pause(&wals[2..], "shop-1", (16_000, 22_000)),
            None
        );
    }

    #[test]
    fn the_widest_window_covers_both() {
        assert_eq!(widest((1_000, 140), None), (1_000, 140));
        assert_eq!(widest((5_000, 140), Some((4_500, 3_000))), (5_000, 3_500));
        assert_eq!(widest((5_000, 4_000), Some((4_500, 100))), (5_000, 4_000));
        assert_eq!(widest((50, 100), Some((40, 10))), (50, 50));
    }
}
