//! Recorded drills: the verdict of each drill run against the cluster (`umbra drill
//! evacuate`), kept in the replicated state so that every operator sees the cluster's drills
//! (`umbra status`, `GET /v1/drills`), not only the one who ran it. The drill runs outside the
//! cluster and reports its verdict when it ends (`POST /v1/drills`); this module only checks
//! and keeps them.
//!
//! A report is bounded (services, reasons, text lengths) and checked for sense (an end after
//! its start, no more failed requests than requests, a ratio in 0..=1, a known region) before
//! it costs a log entry. The state keeps the newest [`MAX_DRILLS`], so it does not grow with
//! history.

use serde::{Deserialize, Serialize};

use super::Rejected;

/// Drills the state keeps; the oldest leaves when a newer one is recorded past it.
pub const MAX_DRILLS: usize = 100;
/// Most services one report may name.
pub const MAX_DRILL_SERVICES: usize = 1_000;
/// Most failure reasons one report may carry.
pub const MAX_DRILL_REASONS: usize = 64;
/// Longest text field (a reason, a stop condition, a name), in bytes.
pub const MAX_DRILL_TEXT: usize = 1_024;
/// The drills there are.
pub const DRILL_KINDS: [&str; 1] = ["evacuate"];
/// What a service's outcome may be: as `umbra drill` reports it.
pub const DRILL_OUTCOMES: [&str; 6] = [
    "completed",
    "rolled_back",
    "failed",
    "moved_back",
    "error",
    "not_started",
];

/// A drill's verdict as its runner reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// The kind of drill (one of [`DRILL_KINDS`]).
    pub drill: String,
    /// The region it acted on.
    pub region: String,
    /// Whether it passed.
    pub passed: bool,
    /// Why it failed (empty on a pass).
    pub reasons: Vec<String>,
    /// Start, Unix ms.
    pub started_ms: u64,
    /// End, Unix ms.
    pub ended_ms: u64,
    /// From the start until every service was out of the region, ms.
    pub evacuate_ms: Option<u64>,
    /// Each service's outcome, in the drill's order.
    pub services: Vec<DrillService>,
    /// Requests the region fronts served during the drill.
    pub requests: u64,
    /// Of which failed.
    pub failed_requests: u64,
    /// The error budget it judged against, 0..1.
    pub max_failed_ratio: f64,
    /// The p99 bound it judged each window against, ms.
    pub max_p99_ms: f64,
    /// The highest window p99 it saw, ms.
    pub p99_ms_max: Option<f64>,
    /// The stop condition that tripped, in words.
    pub stopped: Option<String>,
    /// Rollbacks it asked for.
    pub rollbacks: u64,
    /// Faults of its plan that fired.
    pub faults_fired: u64,
    /// Faults in its plan.
    pub faults_planned: u64,
    /// The seed of a generated fault plan (`umbra chaos plan --seed S` prints it again).
    pub seed: Option<u64>,
    /// The game day the leader ran it for (none for a drill an operator ran).
    pub game_day: Option<String>,
}

/// One service of a drill and how its move ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillService {
    /// The service.
    pub service: String,
    /// The region it was moved to.
    pub to: String,
    /// The migration that moved it (none when the drill stopped before it).
    pub migration: Option<String>,
    /// How it ended (one of [`DRILL_OUTCOMES`]).
    pub outcome: String,
}

/// A recorded drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// `drill-{n}`, in the order drills were recorded.
    pub id: String,
    /// Raft log index of the command that recorded it.
    pub index: u64,
    /// When recorded, Unix ms (the proposer's clock).
    pub recorded_ms: u64,
    /// The verdict.
    pub report: DrillReport,
}

/// Checks a report on its own; the state checks its region. Every refusal says which field
/// and what it must be.
pub fn validate(report: &DrillReport) -> Result<(), Rejected> {
    let bad = |message: String| Err(Rejected::invalid(format!("drill report: {message}")));
    if !DRILL_KINDS.contains(&report.drill.as_str()) {
        return bad(format!(
            "drill {:?} is not a drill Umbra runs; drills: {}",
            report.drill,
            DRILL_KINDS.join(", ")
        ));
    }
    if report.ended_ms < report.started_ms {
        return bad("it ends before it starts".to_owned());
    }
    if report.failed_requests > report.requests {
        return bad(format!(
            "{} failed requests of {}: more failed than were sent",
            report.failed_requests, report.requests
        ));
    }
    if !(report.max_failed_ratio.is_finite() && (0.0..=1.0).contains(&report.max_failed_ratio)) {
        return bad("max_failed_ratio must be a share from 0 to 1".to_owned());
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !positive(report.max_p99_ms)
        || report
            .p99_ms_max
            .is_some_and(|p| !(p.is_finite() && p >= 0.0))
    {
        return bad("p99 figures must be finite milliseconds, the bound above zero".to_owned());
    }
    if report.faults_fired > report.faults_planned {
        return bad(format!(
            "{} faults fired of {} planned",
            report.faults_fired, report.faults_planned
        ));
    }
    if report.passed != report.reasons.is_empty() {
        return bad(if report.passed {
            "a passed drill has no reasons to fail".to_owned()
        } else {
            "a failed drill says why (reasons)".to_owned()
        });
    }
    if report.services.len() > MAX_DRILL_SERVICES || report.reasons.len() > MAX_DRILL_REASONS {
        return bad(format!(
            "at most {MAX_DRILL_SERVICES} services and {MAX_DRILL_REASONS} reasons"
        ));
    }
    for s in &report.services {
        if s.service.is_empty() || s.to.is_empty() {
            return bad("every service has a name and the region it went to".to_owned());
        }
        if !DRILL_OUTCOMES.contains(&s.outcome.as_str()) {
            return bad(format!(
                "service {:?} ended {:?}; outcomes: {}",
                s.service,
                s.outcome,
                DRILL_OUTCOMES.join(", ")
            ));
        }
    }
    let texts = report
        .reasons
        .iter()
        .chain(report.stopped.iter())
        .chain([&report.drill, &report.region])
        .chain(report.game_day.iter())
        .chain(report.services.iter().flat_map(|s| {
            [&s.service, &s.to]
                .into_iter()
                .chain(s.migration.iter())
                .chain([&s.outcome])
        }));
    for text in texts {
        if text.len() > MAX_DRILL_TEXT {
            return bad(format!(
                "a text field is longer than {MAX_DRILL_TEXT} bytes"
            ));
        }
    }
    Ok(())
}

/// A passed evacuation of us-east, for tests.
#[cfg(test)]
pub(super) fn passed() -> DrillReport {
    DrillReport {
        drill: "evacuate".to_owned(),
        region: "us-east".to_owned(),
        passed: true,
        reasons: Vec::new(),
        started_ms: 1_000,
        ended_ms: 41_000,
        evacuate_ms: Some(39_000),
        services: vec![DrillService {
            service: "shop".to_owned(),
            to: "eu-west".to_owned(),
            migration: Some("shop-1".to_owned()),
            outcome: "completed".to_owned(),
        }],
        requests: 9_000,
        failed_requests: 0,
        max_failed_ratio: 0.01,
        max_p99_ms: 500.0,
        p99_ms_max: Some(31.5),
        stopped: None,
        rollbacks: 0,
        faults_fired: 0,
        faults_planned: 0,
        seed: None,
        game_day: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sound_report_passes_and_each_nonsense_is_named() {
        assert_eq!(validate(&passed()), Ok(()));
        let refused = |edit: &dyn Fn(&mut DrillReport), says: &str| {
            let mut report = passed();
            edit(&mut report);
            let err = validate(&report).expect_err(says);
            assert!(err.message.contains(says), "{err}");
        };
        refused(&|r| r.drill = "fire".to_owned(), "not a drill Umbra runs");
        refused(&|r| r.ended_ms = 0, "ends before it starts");
        refused(&|r| r.failed_requests = 9_001, "more failed than were sent");
        refused(&|r| r.max_failed_ratio = f64::NAN, "share from 0 to 1");
        refused(&|r| r.max_p99_ms = 0.0, "p99 figures");
        refused(&|r| r.p99_ms_max = Some(f64::INFINITY), "p99 figures");
        refused(&|r| r.faults_fired = 1, "faults fired");
        refused(&|r| r.passed = false, "says why");
        refused(&|r| r.reasons.push("x".to_owned()), "no reasons to fail");
        refused(&|r| r.services[0].outcome = "fine".to_owned(), "outcomes:");
        refused(&|r| r.services[0].to.clear(), "has a name");
        refused(&|r| r.stopped = Some("x".repeat(2_000)), "longer than");
        refused(
            &|r| r.services = vec![r.services[0].clone(); MAX_DRILL_SERVICES + 1],
            "at most",
        );
    }
}
