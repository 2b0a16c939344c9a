//! The judge of a real-process fault campaign (`umbra chaos campaign`, `umbra demo
//! --fault-plan`): what one run of the demo under a fault plan must show, checked from what
//! the run recorded (the audit log's phases and steps, the sample service's data read back
//! through the front, the traffic client's per-request outcomes, the replicas' applied state,
//! the agents' instance directories, every instance's write-ahead log). It does no I/O: the
//! runner fills in [`RunFacts`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::plan::FaultKind;

/// Every invariant a run is judged on, with what it means.
pub const INVARIANTS: [(&str, &str); 9] = [
    (
        "migration_ended",
        "the migration ends completed or rolled back, before the run's deadline, with every process alive",
    ),
    (
        "rollback_explained",
        "a rollback follows a fault in the migration's data plane: the source's or the target's instances (errors, latency) or agents (a clock jump explains none: nothing may depend on a wall clock being right), or the operator's abort",
    ),
    ("steps_once", "each step of the migration is applied once"),
    (
        "no_acknowledged_write_lost",
        "every write answered 2xx reads back where the service ended up",
    ),
    (
        "no_failed_request",
        "with faults only in the control plane (orchestrators, agents), no request fails outside the fence window",
    ),
    (
        "replicas_identical",
        "every orchestrator applied the same log and serves the same DNS answer",
    ),
    (
        "shadows_released",
        "no instance of a rolled-back migration's shadow pool is left",
    ),
    (
        "faults_injected",
        "every fault that came due was injected and undone",
    ),
    (
        "single_writer",
        "at most one instance accepts writes at a time, judged from the writer stamps of every \
         instance's write-ahead log: no two copies of a sequence number name different writers, \
         and in the union of the logs, cut into runs of consecutive sequence numbers stamped by \
         one writer (a writer that hands over and later takes back has two runs), the spans from \
         a run's earliest to its latest stamp of two different writers do not overlap (sharing \
         one millisecond is allowed)",
    ),
];

/// Violations of one kind described in full; the rest are counted.
const DETAILS_SHOWN: usize = 3;

/// One fault of the run's plan, as the runner carried it out.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultFacts {
    /// What the plan asked for (roles unresolved).
    pub kind: FaultKind,
    /// What it hit, roles resolved (`orchestrator-2`, `agent-eu-west`, `eu-west`); `None`
    /// when it never fired.
    pub hit: Option<String>,
    /// Why it could not be injected or undone.
    pub error: Option<String>,
}

/// What one run recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFacts {
    /// Why the run stopped before the migration's end (a deadline, a process that exited on
    /// its own); `None` when it ran to the end.
    pub error: Option<String>,
    /// The migration's last phase.
    pub outcome: String,
    /// The migration's source region (its writer serves the target's writes until the last
    /// step, so its faults reach the target's SLO too).
    pub source: String,
    /// The migration's target region.
    pub target: String,
    /// The plan's faults.
    pub faults: Vec<FaultFacts>,
    /// Requests that failed, and those in the writer's fence window (allowed: counted apart).
    pub requests_failed: u64,
    /// Of those, in the fence window.
    pub failed_in_fence_window: u64,
    /// The first failed requests, described.
    pub first_failures: Vec<String>,
    /// Writes answered 2xx and not read back, and the first missing keys' numbers.
    pub acknowledged_missing: u64,
    /// The first written keys not found.
    pub first_missing: Vec<u64>,
    /// How often the audit shows each step.
    pub step_counts: BTreeMap<String, usize>,
    /// Whether the live orchestrators agree.
    pub identical_state: bool,
    /// Shadow instances left in the target at the end.
    pub shadow_instances_left: usize,
    /// Every instance's write-ahead log the run kept, cut into writer runs.
    pub wals: Vec<InstanceWal>,
}

/// Consecutive records of one instance's write-ahead log stamped by one writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriterRun {
    /// The instance that accepted these writes from clients.
    pub writer: String,
    /// The run's first sequence number.
    pub first_seq: u64,
    /// Its last.
    pub last_seq: u64,
    /// Its earliest stamp, Unix ms.
    pub from_ms: u64,
    /// Its latest stamp, Unix ms.
    pub to_ms: u64,
}

/// Longest time between two accepted writes of one writer run, ms: the campaign's traffic
/// writes many times a second, so a longer pause is the service refusing or holding writes.
pub const RUN_PAUSE_MS: u64 = 1_000;

/// One instance's write-ahead log as the runner read it: its stamped records as writer runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InstanceWal {
    /// The instance (`region/id`), as the runner names it.
    pub instance: String,
    /// Its stamped records, in sequence order, cut at every change of writer, at every gap in
    /// the sequence numbers and where no write was accepted for more than [`RUN_PAUSE_MS`]
    /// (a fence that held every write).
    pub runs: Vec<WriterRun>,
    /// Records without a stamp (written before records were stamped): not judged.
    pub unstamped: u64,
}

impl InstanceWal {
    /// Cuts `records` (sequence number, writer, stamp in Unix ms; an empty writer for an
    /// unstamped record), in log order, into writer runs.
    pub fn of<'a>(
        instance: String,
        records: impl IntoIterator<Item = (u64, &'a str, u64)>,
    ) -> InstanceWal {
        let mut wal = InstanceWal {
            instance,
            ..InstanceWal::default()
        };
        let mut open = false;
        for (seq, writer, at_ms) in records {
            if writer.is_empty() {
                wal.unstamped += 1;
                open = false;
                continue;
            }
            match wal.runs.last_mut() {
                Some(run)
                    if open
                        && run.writer == writer
                        && run.last_seq + 1 == seq
                        && at_ms <= run.to_ms + RUN_PAUSE_MS =>
                {
                    run.last_seq = seq;
                    run.from_ms = run.from_ms.min(at_ms);
                    run.to_ms = run.to_ms.max(at_ms);
                }
                _ => wal.runs.push(WriterRun {
                    writer: writer.to_owned(),
                    first_seq: seq,
                    last_seq: seq,
                    from_ms: at_ms,
                    to_ms: at_ms,
                }),
            }
            open = true;
        }
        wal
    }
}

impl std::fmt::Display for WriterRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (seq {}..={}, from {} to {} ms)",
            self.writer, self.first_seq, self.last_seq, self.from_ms, self.to_ms
        )
    }
}

/// An invariant a run broke.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    /// The seed whose plan the run carried out (`None`: a plan written by hand).
    pub seed: Option<u64>,
    /// Which invariant ([`INVARIANTS`]).
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

impl FaultFacts {
    /// Whether the fault fired and acts on the data plane: the instances' fault switch, or
    /// their full data disk (each write fails).
    fn data_plane(&self) -> bool {
        self.hit.is_some()
            && matches!(
                self.kind,
                FaultKind::Errors { .. } | FaultKind::Latency { .. } | FaultKind::DiskFull { .. }
            )
    }

    /// Whether it fired on the instances or the agent of one of `regions` in a way that may
    /// make a migration roll back. A clock jump may not: a migration's deadlines and windows
    /// must not hang on a wall clock being right, so a step of one is no reason to stop it.
    fn on_regions(&self, regions: [&str; 2]) -> bool {
        let Some(hit) = &self.hit else {
            return false;
        };
        regions.iter().any(|region| match self.kind {
            FaultKind::Abort => false,
            FaultKind::Errors { .. } | FaultKind::Latency { .. } | FaultKind::DiskFull { .. } => {
                hit == region
            }
            FaultKind::ClockJump { .. } => false,
            _ => *hit == format!("agent-{region}"),
        })
    }
}

/// Every invariant `facts` break; empty when the run held them all.
pub fn judge(seed: Option<u64>, facts: &RunFacts) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut broke = |invariant: &'static str, detail: String| {
        violations.push(Violation {
            seed,
            invariant,
            detail,
        });
    };
    for (i, fault) in facts.faults.iter().enumerate() {
        if let Some(error) = &fault.error {
            broke(
                "faults_injected",
                format!("fault {} ({}): {error}", i + 1, fault.kind),
            );
        }
    }
    if let Some(error) = &facts.error {
        // Nothing else can be judged of a run that did not end.
        broke("migration_ended", error.clone());
        return violations;
    }
    match facts.outcome.as_str() {
        "completed" => {}
        "rolled_back" => {
            let regions = [facts.source.as_str(), facts.target.as_str()];
            let aborted = facts
                .faults
                .iter()
                .any(|f| f.kind == FaultKind::Abort && f.hit.is_some());
            if !aborted && !facts.faults.iter().any(|f| f.on_regions(regions)) {
                let fired: Vec<String> = facts
                    .faults
                    .iter()
                    .filter(|f| f.hit.is_some())
                    .map(|f| f.kind.to_string())
                    .collect();
                broke(
                    "rollback_explained",
                    format!(
                        "rolled back with no fault on {}'s or {}'s instances or agents and no \
                         abort (fired: {})",
                        facts.source,
                        facts.target,
                        if fired.is_empty() {
                            "none".to_owned()
                        } else {
                            fired.join("; ")
                        }
                    ),
                );
            }
        }
        other => broke("migration_ended", format!("the migration ended {other}")),
    }
    for (step, count) in &facts.step_counts {
        if *count > 1 {
            broke("steps_once", format!("{step} applied {count} times"));
        }
    }
    if facts.acknowledged_missing > 0 {
        broke(
            "no_acknowledged_write_lost",
            format!(
                "{} acknowledged writes not found (first missing keys: {:?})",
                facts.acknowledged_missing, facts.first_missing
            ),
        );
    }
    let outside_fence = facts
        .requests_failed
        .saturating_sub(facts.failed_in_fence_window);
    if outside_fence > 0 && !facts.faults.iter().any(FaultFacts::data_plane) {
        broke(
            "no_failed_request",
            format!(
                "{outside_fence} requests failed outside the fence window with faults only in \
                 the control plane (first: {})",
                facts.first_failures.join("; ")
            ),
        );
    }
    if !facts.identical_state {
        broke(
            "replicas_identical",
            "the orchestrators did not agree on the applied index or the DNS answer".to_owned(),
        );
    }
    if facts.outcome == "rolled_back" && facts.shadow_instances_left > 0 {
        broke(
            "shadows_released",
            format!(
                "{} shadow instances left after the rollback",
                facts.shadow_instances_left
            ),
        );
    }
    for detail in single_writer(&facts.wals) {
        broke("single_writer", detail);
    }
    violations
}

/// What breaks `single_writer` in `wals`, described (at most one line per kind of breach).
fn single_writer(wals: &[InstanceWal]) -> Vec<String> {
    let mut runs: Vec<(&str, &WriterRun)> = wals
        .iter()
        .flat_map(|w| w.runs.iter().map(move |run| (w.instance.as_str(), run)))
        .collect();
    if runs.is_empty() {
        return vec![
            "no instance's write-ahead log held a stamped record: nothing to judge".into(),
        ];
    }
    runs.sort_by_key(|(_, run)| (run.first_seq, run.last_seq));
    let mut out = Vec::new();
    if let Some(line) = summary(
        "copies of one sequence number name two writers",
        seq_claims(&runs),
    ) {
        out.push(line);
    }
    let overlaps = overlapping_writers(&union(&runs));
    if let Some(line) = summary("two writers accepted writes at the same time", overlaps) {
        out.push(line);
    }
    out
}

/// One line for `details`: the first few and how many there were.
fn summary(what: &str, details: Vec<String>) -> Option<String> {
    let first = details.first()?;
    let mut line = format!("{what}: {first}");
    for more in details.iter().skip(1).take(DETAILS_SHOWN - 1) {
        line.push_str("; ");
        line.push_str(more);
    }
    if details.len() > DETAILS_SHOWN {
        line.push_str(&format!(" (and {} more)", details.len() - DETAILS_SHOWN));
    }
    Some(line)
}

/// Pairs of runs in different instances' logs that hold one sequence number with different
/// writers. `runs` is sorted by first sequence number; runs of one log never overlap, so at
/// most one run per log is open at a time.
fn seq_claims(runs: &[(&str, &WriterRun)]) -> Vec<String> {
    let mut claims = Vec::new();
    let mut open: Vec<(&str, &WriterRun)> = Vec::new();
    for &(instance, run) in runs {
        open.retain(|(_, o)| o.last_seq >= run.first_seq);
        for &(other, o) in &open {
            if o.writer != run.writer {
                claims.push(format!(
                    "seq {}: {other} holds it from {o}, {instance} from {run}",
                    run.first_seq
                ));
            }
        }
        open.push((instance, run));
    }
    claims
}

/// The union of every log, one run per stretch of one writer: copies of the same records
/// (overlapping or adjacent sequence numbers of one writer) joined.
fn union(runs: &[(&str, &WriterRun)]) -> Vec<WriterRun> {
    let mut joined: Vec<WriterRun> = Vec::new();
    for &(_, run) in runs {
        match joined.last_mut() {
            Some(last) if last.writer == run.writer && run.first_seq <= last.last_seq + 1 => {
                last.last_seq = last.last_seq.max(run.last_seq);
                last.from_ms = last.from_ms.min(run.from_ms);
                last.to_ms = last.to_ms.max(run.to_ms);
            }
            // Already held by the union (a copy of a shorter log, or a conflicting claim
            // reported by `seq_claims`).
            Some(last) if run.last_seq <= last.last_seq => {}
            _ => joined.push(run.clone()),
        }
    }
    joined
}

/// Pairs of runs of different writers whose spans overlap by more than one shared
/// millisecond. A sweep in order of start: each run is compared with the latest-ending run
/// of any other writer seen so far.
fn overlapping_writers(runs: &[WriterRun]) -> Vec<String> {
    let mut by_start: Vec<&WriterRun> = runs.iter().collect();
    by_start.sort_by_key(|run| (run.from_ms, run.to_ms));
    // The latest-ending run seen, and the latest-ending one of another writer than it.
    let mut latest: Option<&WriterRun> = None;
    let mut latest_other: Option<&WriterRun> = None;
    let mut overlaps = Vec::new();
    for run in by_start {
        let rival = match latest {
            Some(l) if l.writer != run.writer => Some(l),
            _ => latest_other,
        };
        if let Some(rival) = rival
            && run.from_ms < rival.to_ms
        {
            overlaps.push(format!("{rival} and {run}"));
        }
        match latest {
            Some(l) if run.to_ms <= l.to_ms => {
                if l.writer != run.writer && latest_other.is_none_or(|o| run.to_ms > o.to_ms) {
                    latest_other = Some(run);
                }
            }
            Some(l) => {
                if l.writer != run.writer {
                    latest_other = Some(l);
                }
                latest = Some(run);
            }
            None => latest = Some(run),
        }
    }
    overlaps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fired(kind: FaultKind, hit: &str) -> FaultFacts {
        FaultFacts {
            kind,
            hit: Some(hit.to_owned()),
            error: None,
        }
    }

    /// The instances of `region` (a role or a name) failing a share `rate`, fired on `hit`.
    fn errors(region: &str, rate: f64, hit: &str) -> FaultFacts {
        fired(
            FaultKind::Errors {
                region: region.into(),
                service: "shop".into(),
                rate,
            },
            hit,
        )
    }

    fn kill_leader() -> FaultFacts {
        fired(
            FaultKind::Kill {
                process: "leader".into(),
                restart_after_ms: 2000,
            },
            "orchestrator-2",
        )
    }

    /// A log of `(writer, first seq, records, first stamp ms)` stretches, one record a ms.
    fn wal(instance: &str, stretches: &[(&str, u64, u64, u64)]) -> InstanceWal {
        let records: Vec<(u64, &str, u64)> = stretches
            .iter()
            .flat_map(|&(writer, first, n, at)| (0..n).map(move |i| (first + i, writer, at + i)))
            .collect();
        InstanceWal::of(instance.to_owned(), records)
    }

    /// A completed migration's logs: the source's writer, then the target's first shadow
    /// promoted 50 ms after the source's last write; the source's follower and the removed
    /// source writer's log hold a prefix.
    fn handed_over() -> Vec<InstanceWal> {
        vec![
            wal(
                "us-east/shop-us-east-1",
                &[("shop-us-east-1", 1, 100, 1_000)],
            ),
            wal(
                "us-east/shop-us-east-2",
                &[("shop-us-east-1", 1, 60, 1_000)],
            ),
            wal(
                "eu-west/m1-1",
                &[("shop-us-east-1", 1, 100, 1_000), ("m1-1", 101, 50, 1_150)],
            ),
        ]
    }

    fn clean() -> RunFacts {
        RunFacts {
            outcome: "completed".into(),
            source: "us-east".into(),
            target: "eu-west".into(),
            faults: vec![kill_leader()],
            step_counts: [("cutting_over[0]".to_owned(), 1)].into(),
            identical_state: true,
            wals: handed_over(),
            ..RunFacts::default()
        }
    }

    fn invariants(facts: &RunFacts) -> Vec<&'static str> {
        judge(Some(7), facts).iter().map(|v| v.invariant).collect()
    }

    #[test]
    fn a_clean_run_holds_every_invariant() {
        assert_eq!(invariants(&clean()), Vec::<&str>::new());
    }

    #[test]
    fn a_log_is_cut_at_each_change_of_writer_and_at_each_gap() {
        let records = [
            (1, "", 0),
            (2, "a", 10),
            (3, "a", 9),
            (4, "b", 20),
            (5, "b", 21),
            (7, "b", 30),
            (8, "", 0),
            (9, "b", 40),
        ];
        let wal = InstanceWal::of("r/i".into(), records);
        assert_eq!(wal.unstamped, 2);
        let spans: Vec<(&str, u64, u64, u64, u64)> = wal
            .runs
            .iter()
            .map(|r| {
                (
                    r.writer.as_str(),
                    r.first_seq,
                    r.last_seq,
                    r.from_ms,
                    r.to_ms,
                )
            })
            .collect();
        assert_eq!(
            spans,
            [
                ("a", 2, 3, 9, 10),
                ("b", 4, 5, 20, 21),
                ("b", 7, 7, 30, 30),
                ("b", 9, 9, 40, 40)
            ]
        );
    }

    #[test]
    fn a_writer_that_takes_back_after_a_promotion_keeps_a_single_writer() {
        // Rolled back after the promotion: the target wrote seq 101..=150, then the source
        // followed it, was promoted once the target was fenced, and wrote on.
        let mut f = clean();
        f.outcome = "rolled_back".into();
        f.faults = vec![errors("target", 1.0, "eu-west")];
        let back = [
            ("shop-us-east-1", 1, 100, 1_000),
            ("m1-1", 101, 50, 1_150),
            ("shop-us-east-1", 151, 40, 1_300),
        ];
        f.wals = handed_over();
        f.wals.push(wal("us-east/shop-us-east-1", &back));
        assert_eq!(invariants(&f), Vec::<&str>::new());
        // Sharing one millisecond at each hand-over is allowed.
        f.wals = vec![wal(
            "us-east/shop-us-east-1",
            &[
                ("shop-us-east-1", 1, 100, 1_000),
                ("m1-1", 101, 50, 1_099),
                ("shop-us-east-1", 151, 40, 1_148),
            ],
        )];
        assert_eq!(invariants(&f), Vec::<&str>::new());
    }

    #[test]
    fn interleaved_writers_break_single_writer_naming_both_and_their_times() {
        let mut f = clean();
        // The target's shadow took writes while the source's writer still did.
        f.wals[2] = wal(
            "eu-west/m1-1",
            &[("shop-us-east-1", 1, 100, 1_000), ("m1-1", 101, 50, 1_080)],
        );
        let v = judge(Some(3), &f);
        assert_eq!(
            v.iter().map(|v| v.invariant).collect::<Vec<_>>(),
            ["single_writer"]
        );
        let detail = &v[0].detail;
        assert!(detail.contains("at the same time"), "{detail}");
        assert!(
            detail.contains("shop-us-east-1 (seq 1..=100, from 1000 to 1099 ms)"),
            "{detail}"
        );
        assert!(
            detail.contains("m1-1 (seq 101..=150, from 1080 to 1129 ms)"),
            "{detail}"
        );
        // A writer taking back while the other still writes is caught too.
        let mut f = clean();
        f.wals.push(wal(
            "us-east/shop-us-east-1",
            &[
                ("shop-us-east-1", 1, 100, 1_000),
                ("m1-1", 101, 50, 1_150),
                ("shop-us-east-1", 151, 40, 1_190),
            ],
        ));
        let v = judge(None, &f);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].detail.contains("m1-1 (seq 101..=150, from 1150 to 1199 ms) and shop-us-east-1 (seq 151..=190, from 1190 to 1229 ms)"),
            "{}",
            v[0].detail
        );
    }

    #[test]
    fn two_writers_claiming_one_sequence_number_break_single_writer() {
        let mut f = clean();
        // The source's follower holds seq 61.. from a writer the others never saw: a split
        // brain, even though the times do not overlap.
        f.wals[1] = wal(
            "us-east/shop-us-east-2",
            &[
                ("shop-us-east-1", 1, 60, 1_000),
                ("shop-us-east-2", 61, 10, 5_000),
            ],
        );
        let v = judge(None, &f);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].invariant, "single_writer");
        assert!(
            v[0].detail
                .starts_with("copies of one sequence number name two writers: seq 61:"),
            "{}",
            v[0].detail
        );
        assert!(
            v[0].detail.contains("shop-us-east-2 (seq 61..=70"),
            "{}",
            v[0].detail
        );
    }

    #[test]
    fn a_run_with_no_stamped_record_cannot_hold_single_writer() {
        let mut f = clean();
        f.wals = vec![InstanceWal::of("r/i".into(), [(1, "", 0)])];
        assert_eq!(invariants(&f), ["single_writer"]);
    }

    #[test]
    fn each_broken_invariant_is_named() {
        let mut f = clean();
        f.outcome = "rolled_back".into();
        assert_eq!(
            invariants(&f),
            ["rollback_explained"],
            "a leader kill explains none"
        );
        f.faults.push(errors("target", 0.5, "eu-west"));
        assert_eq!(invariants(&f), Vec::<&str>::new());
        f.shadow_instances_left = 2;
        assert_eq!(invariants(&f), ["shadows_released"]);

        let mut f = clean();
        f.step_counts.insert("cutting_over[1]".into(), 2);
        f.acknowledged_missing = 1;
        f.identical_state = false;
        f.requests_failed = 3;
        f.failed_in_fence_window = 1;
        assert_eq!(
            invariants(&f),
            [
                "steps_once",
                "no_acknowledged_write_lost",
                "no_failed_request",
                "replicas_identical"
            ]
        );

        let mut f = clean();
        f.outcome = "failed".into();
        assert_eq!(invariants(&f), ["migration_ended"]);
        f.error = Some("the demo timed out".into());
        f.faults[0].error = Some("nft missing".into());
        let v = judge(None, &f);
        assert_eq!(
            v.iter().map(|v| v.invariant).collect::<Vec<_>>(),
            ["faults_injected", "migration_ended"]
        );
        assert!(v[0].detail.contains("nft missing"), "{v:?}");
    }

    #[test]
    fn failures_in_the_fence_window_or_under_a_data_plane_fault_are_allowed() {
        let mut f = clean();
        f.requests_failed = 2;
        f.failed_in_fence_window = 2;
        assert_eq!(invariants(&f), Vec::<&str>::new());
        f.requests_failed = 50;
        f.faults.push(fired(
            FaultKind::Latency {
                region: "source".into(),
                service: "shop".into(),
                added_ms: 300,
            },
            "us-east",
        ));
        assert_eq!(invariants(&f), Vec::<&str>::new());
        // A data-plane fault that never fired excuses nothing.
        f.faults[1].hit = None;
        assert_eq!(invariants(&f), ["no_failed_request"]);
    }

    #[test]
    fn errors_in_the_source_explain_a_rollback_but_not_in_a_third_region() {
        let mut f = clean();
        f.outcome = "rolled_back".into();
        f.faults = vec![errors("us-east", 0.1, "us-east")];
        assert_eq!(invariants(&f), Vec::<&str>::new());
        f.faults[0].hit = Some("ap-south".into());
        assert_eq!(invariants(&f), ["rollback_explained"]);
    }

    #[test]
    fn a_fault_on_the_target_agent_explains_a_rollback() {
        let mut f = clean();
        f.outcome = "rolled_back".into();
        f.faults = vec![fired(
            FaultKind::Pause {
                process: "agent-target".into(),
                for_ms: 3000,
            },
            "agent-eu-west",
        )];
        assert_eq!(invariants(&f), Vec::<&str>::new());
        f.faults[0].hit = Some("agent-ap-south".into());
        assert_eq!(invariants(&f), ["rollback_explained"]);
    }

    #[test]
    fn a_clock_jump_explains_no_rollback_and_no_failed_request() {
        let jump = fired(
            FaultKind::ClockJump {
                process: "agent-target".into(),
                ms: 600_000,
                for_ms: Some(3000),
            },
            "agent-eu-west",
        );
        let mut f = clean();
        f.faults.push(jump.clone());
        assert_eq!(invariants(&f), Vec::<&str>::new());
        f.requests_failed = 5;
        assert_eq!(invariants(&f), ["no_failed_request"]);
        let mut f = clean();
        f.outcome = "rolled_back".into();
        f.faults = vec![jump];
        assert_eq!(invariants(&f), ["rollback_explained"]);
    }

    #[test]
    fn an_abort_the_api_took_explains_a_rollback_and_no_failed_request() {
        let mut f = clean();
        f.outcome = "rolled_back".into();
        f.faults = vec![fired(FaultKind::Abort, "shop-1")];
        assert_eq!(invariants(&f), Vec::<&str>::new());
        f.requests_failed = 1;
        assert_eq!(invariants(&f), ["no_failed_request"]);
        f.requests_failed = 0;
        // Refused (the migration was already rolling back or had ended): it explains nothing.
        f.faults[0].hit = None;
        assert_eq!(invariants(&f), ["rollback_explained"]);
    }
}
