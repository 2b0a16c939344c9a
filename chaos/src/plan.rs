//! Fault plans: the faults a drill injects into a running cluster, as data. A plan is a TOML
//! file, written by hand or generated from a seed ([`FaultPlan::generate`], printed by `umbra
//! chaos plan --seed S`); the same seed and scope always give the same plan, so a drill's
//! verdict names the seed that replays it.
//!
//! ```toml
//! seed = 7                     # only in generated plans
//! [[faults]]
//! kind = "errors"              # the sample service's fault switch: a share of requests fail
//! region = "us-east"
//! service = "shop"
//! rate = 0.2
//! at_phase = "cutting_over[1]" # or after_ms = 5000 (from the drill's start)
//! ```
//!
//! This module only parses, checks and generates plans; it injects nothing (the drill does).

use std::collections::BTreeSet;
use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The fault kinds a plan may name, as they are spelled in TOML.
pub const FAULT_KINDS: [&str; 3] = ["errors", "latency", "pause"];

/// Migration phases a generated plan fires faults at: the ones a migration always passes
/// through with traffic at stake (the demo plan's three cutover steps included).
const GENERATED_PHASES: [&str; 5] = [
    "warming",
    "replicating",
    "cutting_over[0]",
    "cutting_over[1]",
    "cutting_over[2]",
];

/// A set of faults and when each fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    /// The seed the plan was generated from (absent in a plan written by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The faults, in the order they were written.
    #[serde(default)]
    pub faults: Vec<Fault>,
}

/// One fault: what it does and when it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawFault", into = "RawFault")]
pub struct Fault {
    /// What it does.
    pub kind: FaultKind,
    /// When it fires.
    pub when: Trigger,
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Every instance of `service` in `region` answers a share `rate` (0..1] of its requests
    /// with a 500, through the sample service's fault switch (`POST /admin/fault`).
    Errors {
        /// The region whose instances fail.
        region: String,
        /// The service.
        service: String,
        /// Share of requests that fail.
        rate: f64,
    },
    /// Every instance of `service` in `region` adds `added_ms` to each request (the same
    /// switch).
    Latency {
        /// The region whose instances slow down.
        region: String,
        /// The service.
        service: String,
        /// Latency added to every request, ms.
        added_ms: u64,
    },
    /// The named process is stopped with SIGSTOP and continued with SIGCONT `for_ms` later.
    Pause {
        /// The process's name, as the drill was told its pid (`--pid NAME=PID`).
        process: String,
        /// How long it stays stopped, ms.
        for_ms: u64,
    },
}

/// When a fault fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// This long after the drill started, ms.
    AfterMs(u64),
    /// When a migration the drill runs is first seen in this phase (e.g. `warming`,
    /// `cutting_over[1]`, as `umbra status` spells phases).
    AtPhase(String),
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Errors {
                region,
                service,
                rate,
            } => write!(
                f,
                "errors: {service} in {region} fails {:.0} %",
                rate * 100.0
            ),
            FaultKind::Latency {
                region,
                service,
                added_ms,
            } => write!(f, "latency: {service} in {region} +{added_ms} ms"),
            FaultKind::Pause { process, for_ms } => {
                write!(f, "pause: {process} stopped for {for_ms} ms")
            }
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::AfterMs(ms) => write!(f, "{ms} ms after the start"),
            Trigger::AtPhase(phase) => write!(f, "at phase {phase}"),
        }
    }
}

/// Why a plan was refused. Nothing was injected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// Not TOML, or not a plan's shape.
    #[error("the fault plan is not valid: {0}")]
    Malformed(String),
    /// A fault names a region the cluster does not have.
    #[error(
        "fault {index} names region {region:?}, which the cluster does not have (regions: {known})"
    )]
    UnknownRegion {
        /// Its position, from 1.
        index: usize,
        /// The name.
        region: String,
        /// The cluster's regions.
        known: String,
    },
    /// A fault names a service the cluster does not have.
    #[error(
        "fault {index} names service {service:?}, which the cluster does not have (services: {known})"
    )]
    UnknownService {
        /// Its position, from 1.
        index: usize,
        /// The name.
        service: String,
        /// The cluster's services.
        known: String,
    },
    /// A pause names a process whose pid the drill was not given.
    #[error(
        "fault {index} pauses process {process:?}, whose pid the drill was not given: add --pid {process}=PID (given: {known})"
    )]
    UnknownProcess {
        /// Its position, from 1.
        index: usize,
        /// The name.
        process: String,
        /// The names given.
        known: String,
    },
}

/// What a plan may name: the cluster's regions and services, and the processes the drill
/// knows a pid for.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Region names.
    pub regions: BTreeSet<String>,
    /// Service names.
    pub services: BTreeSet<String>,
    /// Process names.
    pub processes: BTreeSet<String>,
}

impl FaultPlan {
    /// Parses a plan; a malformed one, or one naming an unknown fault kind, is refused with
    /// the position of the mistake.
    pub fn from_toml(text: &str) -> Result<Self, PlanError> {
        toml::from_str(text).map_err(|e| PlanError::Malformed(e.to_string()))
    }

    /// The plan as TOML, in the form [`FaultPlan::from_toml`] reads.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a fault plan is plain data")
    }

    /// Checks that every fault names a region, service and process of `scope`.
    pub fn check(&self, scope: &Scope) -> Result<(), PlanError> {
        let list = |set: &BTreeSet<String>| {
            if set.is_empty() {
                "none".to_owned()
            } else {
                set.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        };
        for (i, fault) in self.faults.iter().enumerate() {
            let index = i + 1;
            match &fault.kind {
                FaultKind::Errors {
                    region, service, ..
                }
                | FaultKind::Latency {
                    region, service, ..
                } => {
                    if !scope.regions.contains(region) {
                        return Err(PlanError::UnknownRegion {
                            index,
                            region: region.clone(),
                            known: list(&scope.regions),
                        });
                    }
                    if !scope.services.contains(service) {
                        return Err(PlanError::UnknownService {
                            index,
                            service: service.clone(),
                            known: list(&scope.services),
                        });
                    }
                }
                FaultKind::Pause { process, .. } => {
                    if !scope.processes.contains(process) {
                        return Err(PlanError::UnknownProcess {
                            index,
                            process: process.clone(),
                            known: list(&scope.processes),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// A plan of one to three faults drawn from `seed` within `scope` (pauses only when it
    /// names processes); the same seed and scope give the same plan.
    pub fn generate(seed: u64, scope: &Scope) -> Self {
        assert!(
            !scope.regions.is_empty() && !scope.services.is_empty(),
            "a generated plan needs a region and a service"
        );
        let mut rng = StdRng::seed_from_u64(seed);
        let pick = |rng: &mut StdRng, set: &BTreeSet<String>| {
            set.iter()
                .nth(rng.random_range(0..set.len()))
                .expect("in range")
                .clone()
        };
        let kinds = if scope.processes.is_empty() { 2 } else { 3 };
        let faults = (0..rng.random_range(1..=3))
            .map(|_| {
                let kind = match rng.random_range(0..kinds) {
                    0 => FaultKind::Errors {
                        region: pick(&mut rng, &scope.regions),
                        service: pick(&mut rng, &scope.services),
                        // Whole percent, so the plan prints as it was drawn.
                        rate: f64::from(rng.random_range(2..=50u32)) / 100.0,
                    },
                    1 => FaultKind::Latency {
                        region: pick(&mut rng, &scope.regions),
                        service: pick(&mut rng, &scope.services),
                        added_ms: rng.random_range(5..=40) * 10,
                    },
                    _ => FaultKind::Pause {
                        process: pick(&mut rng, &scope.processes),
                        for_ms: rng.random_range(5..=30) * 100,
                    },
                };
                let when = if rng.random_bool(0.5) {
                    Trigger::AfterMs(rng.random_range(2..=30) * 1_000)
                } else {
                    Trigger::AtPhase(
                        GENERATED_PHASES[rng.random_range(0..GENERATED_PHASES.len())].to_owned(),
                    )
                };
                Fault { kind, when }
            })
            .collect();
        Self {
            seed: Some(seed),
            faults,
        }
    }
}

/// A fault as TOML spells it: one flat table, `kind` saying which fields it needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    added_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    process: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    for_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at_phase: Option<String>,
}

impl TryFrom<RawFault> for Fault {
    type Error = String;

    fn try_from(raw: RawFault) -> Result<Self, String> {
        let kind_name = raw.kind.clone();
        let need = |field: Option<String>, name: &str| {
            field.ok_or_else(|| format!("a {kind_name:?} fault needs `{name}`"))
        };
        let allowed: &[&str] = match raw.kind.as_str() {
            "errors" => &["region", "service", "rate"],
            "latency" => &["region", "service", "added_ms"],
            "pause" => &["process", "for_ms"],
            other => {
                return Err(format!(
                    "unknown fault kind {other:?}; the kinds are {}",
                    FAULT_KINDS.join(", ")
                ));
            }
        };
        let given = [
            ("region", raw.region.is_some()),
            ("service", raw.service.is_some()),
            ("rate", raw.rate.is_some()),
            ("added_ms", raw.added_ms.is_some()),
            ("process", raw.process.is_some()),
            ("for_ms", raw.for_ms.is_some()),
        ];
        if let Some((stray, _)) = given
            .iter()
            .find(|(name, set)| *set && !allowed.contains(name))
        {
            return Err(format!(
                "a {kind_name:?} fault takes {}, not `{stray}`",
                allowed.join(", ")
            ));
        }
        let kind = match raw.kind.as_str() {
            "errors" => {
                let rate = raw.rate.ok_or("an \"errors\" fault needs `rate`")?;
                if !(rate > 0.0 && rate <= 1.0) {
                    return Err(format!("rate {rate} must be in (0, 1]"));
                }
                FaultKind::Errors {
                    region: need(raw.region, "region")?,
                    service: need(raw.service, "service")?,
                    rate,
                }
            }
            "latency" => FaultKind::Latency {
                region: need(raw.region, "region")?,
                service: need(raw.service, "service")?,
                added_ms: match raw.added_ms {
                    Some(0) | None => {
                        return Err("a \"latency\" fault needs `added_ms` above 0".to_owned());
                    }
                    Some(ms) => ms,
                },
            },
            _ => FaultKind::Pause {
                process: need(raw.process, "process")?,
                for_ms: match raw.for_ms {
                    Some(0) | None => {
                        return Err("a \"pause\" fault needs `for_ms` above 0".to_owned());
                    }
                    Some(ms) => ms,
                },
            },
        };
        let when = match (raw.after_ms, raw.at_phase) {
            (Some(ms), None) => Trigger::AfterMs(ms),
            (None, Some(phase)) if !phase.is_empty() => Trigger::AtPhase(phase),
            _ => {
                return Err(format!(
                    "a {kind_name:?} fault needs exactly one of `after_ms` (from the drill's start) \
                     or `at_phase` (e.g. \"cutting_over[1]\")"
                ));
            }
        };
        Ok(Fault { kind, when })
    }
}

impl From<Fault> for RawFault {
    fn from(fault: Fault) -> Self {
        let mut raw = match fault.kind {
            FaultKind::Errors {
                region,
                service,
                rate,
            } => RawFault {
                kind: "errors".into(),
                region: Some(region),
                service: Some(service),
                rate: Some(rate),
                ..RawFault::default()
            },
            FaultKind::Latency {
                region,
                service,
                added_ms,
            } => RawFault {
                kind: "latency".into(),
                region: Some(region),
                service: Some(service),
                added_ms: Some(added_ms),
                ..RawFault::default()
            },
            FaultKind::Pause { process, for_ms } => RawFault {
                kind: "pause".into(),
                process: Some(process),
                for_ms: Some(for_ms),
                ..RawFault::default()
            },
        };
        match fault.when {
            Trigger::AfterMs(ms) => raw.after_ms = Some(ms),
            Trigger::AtPhase(phase) => raw.at_phase = Some(phase),
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo_scope() -> Scope {
        Scope {
            regions: ["us-east", "eu-west", "ap-south"].map(String::from).into(),
            services: ["shop".to_owned()].into(),
            processes: ["agent-eu-west".to_owned()].into(),
        }
    }

    #[test]
    fn a_written_plan_parses_and_checks() {
        let plan = FaultPlan::from_toml(
            r#"
            [[faults]]
            kind = "errors"
            region = "us-east"
            service = "shop"
            rate = 0.25
            at_phase = "cutting_over[1]"

            [[faults]]
            kind = "pause"
            process = "agent-eu-west"
            for_ms = 1500
            after_ms = 4000
            "#,
        )
        .unwrap();
        assert_eq!(plan.seed, None);
        assert_eq!(
            plan.faults,
            vec![
                Fault {
                    kind: FaultKind::Errors {
                        region: "us-east".into(),
                        service: "shop".into(),
                        rate: 0.25
                    },
                    when: Trigger::AtPhase("cutting_over[1]".into()),
                },
                Fault {
                    kind: FaultKind::Pause {
                        process: "agent-eu-west".into(),
                        for_ms: 1500
                    },
                    when: Trigger::AfterMs(4000),
                },
            ]
        );
        plan.check(&demo_scope()).unwrap();
    }

    #[test]
    fn mistakes_are_refused_with_what_to_do() {
        let table = [
            (
                "[[faults]]\nkind = \"flood\"\nafter_ms = 1",
                "unknown fault kind \"flood\"; the kinds are errors, latency, pause",
            ),
            (
                "[[faults]]\nkind = \"errors\"\nregion = \"us-east\"\nservice = \"shop\"\nafter_ms = 1",
                "needs `rate`",
            ),
            (
                "[[faults]]\nkind = \"errors\"\nregion = \"us-east\"\nservice = \"shop\"\nrate = 1.5\nafter_ms = 1",
                "rate 1.5 must be in (0, 1]",
            ),
            (
                "[[faults]]\nkind = \"errors\"\nregion = \"us-east\"\nservice = \"shop\"\nrate = 0.5",
                "exactly one of `after_ms`",
            ),
            (
                "[[faults]]\nkind = \"errors\"\nregion = \"us-east\"\nservice = \"shop\"\nrate = 0.5\nafter_ms = 1\nat_phase = \"warming\"",
                "exactly one of `after_ms`",
            ),
            (
                "[[faults]]\nkind = \"pause\"\nprocess = \"p\"\nfor_ms = 5\nrate = 0.5\nafter_ms = 1",
                "takes process, for_ms, not `rate`",
            ),
            (
                "[[faults]]\nkind = \"latency\"\nregion = \"us-east\"\nservice = \"shop\"\nafter_ms = 1",
                "`added_ms` above 0",
            ),
            (
                "[[faults]]\nkind = \"errors\"\nregoin = \"us-east\"",
                "unknown field `regoin`",
            ),
            ("faults = 3", "invalid type"),
            ("[[faults]", "the fault plan is not valid"),
        ];
        for (text, expected) in table {
            let error = FaultPlan::from_toml(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn unknown_regions_services_and_processes_are_named() {
        let scope = demo_scope();
        let plan = |body: &str| {
            FaultPlan::from_toml(&format!("[[faults]]\n{body}\nafter_ms = 1")).unwrap()
        };
        let error = plan("kind = \"errors\"\nregion = \"mars\"\nservice = \"shop\"\nrate = 0.5")
            .check(&scope)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "fault 1 names region \"mars\", which the cluster does not have (regions: ap-south, eu-west, us-east)"
        );
        let error =
            plan("kind = \"latency\"\nregion = \"us-east\"\nservice = \"cart\"\nadded_ms = 50")
                .check(&scope)
                .unwrap_err();
        assert!(matches!(error, PlanError::UnknownService { .. }), "{error}");
        let error = plan("kind = \"pause\"\nprocess = \"orchestrator-1\"\nfor_ms = 50")
            .check(&scope)
            .unwrap_err();
        assert!(
            error.to_string().contains("add --pid orchestrator-1=PID"),
            "{error}"
        );
    }

    #[test]
    fn a_seed_gives_one_plan_that_reads_back_and_checks() {
        let scope = demo_scope();
        let mut kinds = BTreeSet::new();
        for seed in 0..200 {
            let plan = FaultPlan::generate(seed, &scope);
            assert_eq!(
                plan,
                FaultPlan::generate(seed, &scope),
                "seed {seed} replays"
            );
            assert!((1..=3).contains(&plan.faults.len()));
            assert_eq!(FaultPlan::from_toml(&plan.to_toml()).unwrap(), plan);
            plan.check(&scope).unwrap();
            for fault in &plan.faults {
                kinds.insert(RawFault::from(fault.clone()).kind);
            }
        }
        assert_eq!(kinds, FAULT_KINDS.map(String::from).into());
        assert_ne!(
            FaultPlan::generate(1, &scope),
            FaultPlan::generate(2, &scope)
        );
    }
}
