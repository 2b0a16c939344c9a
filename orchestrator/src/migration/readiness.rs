//! The readiness score an operator sees before cutover: one line per gate (shadow pool
//! serving, warm-up gates, replication lag) and a 0–100 score, computed from the same
//! observations [`super::decide`] uses, so the score can never say "ready" while the state
//! machine waits. Pure; no I/O.

use serde::{Deserialize, Serialize};

use super::{MigrationRecord, Observations};

/// One gate's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Gate {
    /// Which gate: `shadow_serving`, `warm`, `replication`.
    pub name: String,
    /// Whether it holds.
    pub holds: bool,
    /// How far along, 0..=1.
    pub progress: f64,
    /// What an operator reads, e.g. "2 of 3 instances serving".
    pub detail: String,
}

/// The readiness of a migration's target region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Readiness {
    /// 0–100: the mean progress of the gates, 100 only when every gate holds.
    pub score: u8,
    /// Each gate.
    pub gates: Vec<Gate>,
}

fn fraction(done: u64, of: u64) -> f64 {
    if of == 0 {
        1.0
    } else {
        (done as f64 / of as f64).min(1.0)
    }
}

/// Computes the readiness of `record`'s target from `seen`.
pub fn readiness(record: &MigrationRecord, seen: &Observations) -> Readiness {
    let spec = &record.spec;
    let n = u64::from(record.shadow_instances);
    let mut gates = vec![Gate {
        name: "shadow_serving".to_owned(),
        holds: u64::from(seen.shadow_serving) >= n,
        progress: fraction(seen.shadow_serving.into(), n),
        detail: format!("{} of {n} shadow instances serving", seen.shadow_serving),
    }];
    if spec.warm_up {
        gates.push(Gate {
            name: "warm".to_owned(),
            holds: u64::from(seen.shadow_warm) >= n,
            progress: fraction(seen.shadow_warm.into(), n),
            detail: match &seen.warmup {
                Some(reading) if u64::from(seen.shadow_warm) < n => format!(
                    "{} of {n} shadow instances pass the warm-up gate; {}",
                    seen.shadow_warm,
                    reading.describe()
                ),
                _ => format!(
                    "{} of {n} shadow instances pass the warm-up gate",
                    seen.shadow_warm
                ),
            },
        });
    }
    let bound = spec.max_replication_lag;
    gates.push(match seen.replication {
        Some(r) => Gate {
            name: "replication".to_owned(),
            holds: r.lag <= bound,
            // Progress toward the bound: a lag of twice the bound reads as half-way there.
            progress: if r.lag <= bound {
                1.0
            } else {
                (bound.max(1) as f64 / r.lag as f64).min(1.0)
            },
            detail: format!("lag {} entries (bound {bound})", r.lag),
        },
        None => Gate {
            name: "replication".to_owned(),
            holds: false,
            progress: 0.0,
            detail: "replication not started".to_owned(),
        },
    });
    let all_hold = gates.iter().all(|g| g.holds);
    let mean = gates.iter().map(|g| g.progress).sum::<f64>() / gates.len() as f64;
    // A score of 100 is a promise that every gate holds; rounding must not make it one.
    let score = if all_hold {
        100
    } else {
        ((mean * 100.0).floor() as u8).min(99)
    };
    Readiness { score, gates }
}
