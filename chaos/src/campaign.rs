//! The judge of a real-process fault campaign (`umbra chaos campaign`, `umbra demo
//! --fault-plan`): what one run of the demo under a fault plan must show, checked from what
//! the run recorded (the audit log's phases and steps, the sample service's data read back
//! through the front, the traffic client's per-request outcomes, the replicas' applied state,
//! the agents' instance directories). It does no I/O: the runner fills in [`RunFacts`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::plan::FaultKind;

/// Every invariant a run is judged on, with what it means.
pub const INVARIANTS: [(&str, &str); 8] = [
    (
        "migration_ended",
        "the migration ends completed or rolled back, before the run's deadline, with every process alive",
    ),
    (
        "rollback_explained",
        "a rollback follows a fault in the migration's data plane: the source's or the target's instances (errors, latency) or agents",
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
];

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
    /// Whether the fault fired and acts on the data plane: the instances' fault switch.
    fn data_plane(&self) -> bool {
        self.hit.is_some()
            && matches!(
                self.kind,
                FaultKind::Errors { .. } | FaultKind::Latency { .. }
            )
    }

    /// Whether it fired on the instances or the agent of one of `regions`.
    fn on_regions(&self, regions: [&str; 2]) -> bool {
        let Some(hit) = &self.hit else {
            return false;
        };
        regions.iter().any(|region| match self.kind {
            FaultKind::Errors { .. } | FaultKind::Latency { .. } => hit == region,
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
            if !facts.faults.iter().any(|f| f.on_regions(regions)) {
                let fired: Vec<String> = facts
                    .faults
                    .iter()
                    .filter(|f| f.hit.is_some())
                    .map(|f| f.kind.to_string())
                    .collect();
                broke(
                    "rollback_explained",
                    format!(
                        "rolled back with no fault on {}'s or {}'s instances or agents (fired: {})",
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
    violations
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

    fn kill_leader() -> FaultFacts {
        fired(
            FaultKind::Kill {
                process: "leader".into(),
                restart_after_ms: 2000,
            },
            "orchestrator-2",
        )
    }

    fn clean() -> RunFacts {
        RunFacts {
            outcome: "completed".into(),
            source: "us-east".into(),
            target: "eu-west".into(),
            faults: vec![kill_leader()],
            step_counts: [("cutting_over[0]".to_owned(), 1)].into(),
            identical_state: true,
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
    fn each_broken_invariant_is_named() {
        let mut f = clean();
        f.outcome = "rolled_back".into();
        assert_eq!(
            invariants(&f),
            ["rollback_explained"],
            "a leader kill explains none"
        );
        f.faults.push(fired(
            FaultKind::Errors {
                region: "target".into(),
                service: "shop".into(),
                rate: 0.5,
            },
            "eu-west",
        ));
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
        f.faults = vec![fired(
            FaultKind::Errors {
                region: "us-east".into(),
                service: "shop".into(),
                rate: 0.1,
            },
            "us-east",
        )];
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
}
