//! Pools in the running product, the pure part: which target a (service, region) pool holds
//! now ([`desired`]), from its forecast slice by slice and the lead times its agent measured,
//! and which agent commands make the region's instances match it ([`pool_commands`]). No I/O,
//! no clock: `now` comes in; the controller keeps the hysteresis and the forecasts.
//!
//! A pool's instances are `{prefix}-{k}`, k = 1, 2, …: the prefix is the generation that
//! created the pool (the home pool `{service}-{region}`, or the migration whose shadows it grew
//! from). Instances 1..=warm serve (active, in the front); warm+1..=total are dormant (created
//! or stopped: no process, cheap, one activation time from serving); anything numbered beyond
//! the total is drained and removed. Instance 1 is the region's single writer of a stateful
//! service; every other serving instance first follows it (replicates from it) and joins the
//! front only once it caught up, so a fresh instance never answers a read with missing data.
//!
//! Level-triggered like the rest of the executor: each call looks at the latest report and
//! asks for the next stage of each instance, so a lost effect (a dead instance, an agent
//! restart) is asked for again and healed by the controller under a fresh operation id.

use std::collections::BTreeMap;

use umbra_forecast::sizing::PoolTarget;
use umbra_proto::agent::{AgentAction, AgentReport, InstanceLimits, InstanceReport, InstanceState};

use super::reconcile::DueCommand;
use crate::capacity::{ClaimFulfilment, ClaimMember, MemberWas};
pub use crate::capacity::{PoolView, SliceTarget};
use crate::state::claims::held_at;
use crate::state::{CapacityClaim, LimitsSpec};

/// Lead time assumed before the agent measured one: activating a dormant sample instance
/// takes well under a second; 5 s leaves margin.
pub const DEFAULT_LEAD_MS: u64 = 5_000;
/// Margin added to a measured lead time by default: a report is up to one heartbeat old, a
/// command takes a round to be sent, and a follower serves one report after it caught up.
pub const DEFAULT_LEAD_MARGIN_MS: u64 = 3_000;

/// A pool's targets for its coming slices, from one forecast.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolForecast {
    /// Slice width, ms.
    pub slice_ms: u64,
    /// Consecutive slices, oldest first (empty: no usable history).
    pub slices: Vec<SliceTarget>,
    /// The model and why it was chosen (`umbra_forecast::DemandForecast::choice_reason`), or
    /// why there is no forecast.
    pub reason: String,
}

impl PoolForecast {
    /// The slice that holds `t_ms`, if the forecast covers it.
    pub fn at(&self, t_ms: u64) -> Option<&SliceTarget> {
        self.slices
            .iter()
            .find(|s| s.start_ms <= t_ms && t_ms < s.start_ms.saturating_add(self.slice_ms))
    }

    /// Whether the forecast covers `t_ms`.
    pub fn covers(&self, t_ms: u64) -> bool {
        self.at(t_ms).is_some()
    }
}

/// How long the region's agent takes, measured: from dormant to serving, and to create a
/// dormant instance. Each is the longest the report shows plus a margin, or
/// [`DEFAULT_LEAD_MS`] before anything was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leads {
    /// Dormant (or stopped) → serving, ms.
    pub activation_ms: u64,
    /// Nothing → dormant, ms.
    pub provision_ms: u64,
}

/// The lead times `report` shows, each plus `margin_ms` (see [`Leads`]).
pub fn measured_leads(report: Option<&AgentReport>, margin_ms: u64) -> Leads {
    let longest = |wanted: &dyn Fn(InstanceState, InstanceState) -> bool| {
        report
            .into_iter()
            .flat_map(|r| &r.instances)
            .flat_map(|i| &i.transitions)
            .filter(|t| wanted(t.from, t.to))
            .map(|t| t.millis)
            .max()
            .map_or(DEFAULT_LEAD_MS, |ms| ms + margin_ms)
    };
    use InstanceState::*;
    Leads {
        activation_ms: longest(&|from, to| {
            matches!(from, Dormant | Stopped | Paused) && matches!(to, Active | Warm)
        }),
        provision_ms: longest(&|from, to| from == Stopped && to == Dormant),
    }
}

/// The target a pool should hold at `now_ms` before hysteresis: warm capacity for the slice
/// one activation lead ahead (so a dormant instance serves when the slice starts), total
/// capacity for the slice one provisioning-and-activation lead ahead, and never less than
/// now's. Within `floor..=ceiling` warm (a serving region keeps its minimum) and at most
/// `ceiling` in all. Without a forecast covering now: the floor, warm.
pub fn desired(
    forecast: Option<&PoolForecast>,
    now_ms: u64,
    leads: Leads,
    floor: u32,
    ceiling: u32,
) -> PoolTarget {
    let at = |t: u64| forecast.and_then(|f| f.at(t)).map(|s| s.target);
    let Some(current) = at(now_ms) else {
        return PoolTarget {
            warm: floor,
            dormant: 0,
        };
    };
    let soon = at(now_ms + leads.activation_ms).unwrap_or(current);
    let later = at(now_ms + leads.activation_ms + leads.provision_ms).unwrap_or(soon);
    let warm = current.warm.max(soon.warm).clamp(floor, ceiling.max(floor));
    let total = current
        .total()
        .max(soon.total())
        .max(later.total())
        .max(warm)
        .min(ceiling.max(warm));
    PoolTarget {
        warm,
        dormant: total - warm,
    }
}

/// `target` raised for capacity claims and measured load: warm holds the claims in force now
/// and one activation lead ahead and at least `needed_now` instances (a reactive pool's
/// measured load); the total also holds the claims one provisioning-and-activation lead
/// ahead, so a reserved window's instances are dormant before it opens and serve when it
/// does. At most `ceiling` (the service's `max_instances`), unless `target` already holds
/// more.
pub fn raise(
    target: PoolTarget,
    claims: &[CapacityClaim],
    now_ms: u64,
    leads: Leads,
    needed_now: u32,
    ceiling: u32,
) -> PoolTarget {
    let held = |t: u64| held_at(claims, t);
    let warm = target
        .warm
        .max(held(now_ms))
        .max(held(now_ms + leads.activation_ms))
        .max(needed_now)
        .min(ceiling.max(target.warm));
    let total = target
        .total()
        .max(warm)
        .max(held(now_ms + leads.activation_ms + leads.provision_ms))
        .min(ceiling.max(target.total()).max(warm));
    PoolTarget {
        warm,
        dormant: total - warm,
    }
}

/// The larger of two targets, part by part: warm the larger warm, total the larger total.
pub fn at_least(a: PoolTarget, b: PoolTarget) -> PoolTarget {
    let warm = a.warm.max(b.warm);
    PoolTarget {
        warm,
        dormant: a.total().max(b.total()) - warm,
    }
}

/// Instances needed for `rps` at `capacity_rps` each (0 for no load).
pub fn instances_for(rps: f64, capacity_rps: f64) -> u32 {
    if rps.is_finite() && rps > 0.0 && capacity_rps > 0.0 {
        (rps / capacity_rps).ceil().min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

/// Requests per second the region's front served from local backends in its latest window.
pub fn measured_rps(report: Option<&AgentReport>) -> Option<f64> {
    let front = report?.front.as_ref()?;
    (front.window_ms > 0).then(|| front.window_requests as f64 * 1_000.0 / front.window_ms as f64)
}

/// Keeps `progress` (claim id → how the pool met it) up to date: a claim whose window opens
/// within one activation lead of `now_ms` takes effect, held by the next pool instances in
/// claim order (`claims` sorted by creation), each noted as serving, dormant or absent
/// (launched cold) at that moment; a member is marked serving at the first report showing
/// it active; a claim that ended or was released is forgotten.
pub fn track_claims(
    progress: &mut BTreeMap<String, ClaimFulfilment>,
    claims: &[CapacityClaim],
    prefix: &str,
    report: Option<&AgentReport>,
    now_ms: u64,
    leads: Leads,
) {
    let effective: Vec<&CapacityClaim> = claims
        .iter()
        .filter(|c| c.start_ms <= now_ms + leads.activation_ms && now_ms < c.end_ms)
        .collect();
    progress.retain(|id, _| effective.iter().any(|c| &c.id == id));
    let found = |id: &str| report.and_then(|r| r.instances.iter().find(|i| i.id == id));
    let mut next = 1;
    for claim in effective {
        let first = next;
        next += claim.instances;
        progress.entry(claim.id.clone()).or_insert_with(|| {
            let members = (first..next)
                .map(|k| {
                    let instance = format!("{prefix}-{k}");
                    let (was, serving_at_ms) = match found(&instance) {
                        Some(i) if i.state == InstanceState::Active => {
                            (MemberWas::Serving, Some(now_ms))
                        }
                        Some(_) => (MemberWas::Dormant, None),
                        None => (MemberWas::Cold, None),
                    };
                    ClaimMember {
                        instance,
                        was,
                        serving_at_ms,
                    }
                })
                .collect();
            ClaimFulfilment {
                claim: claim.id.clone(),
                start_ms: claim.start_ms,
                effective_ms: now_ms,
                members,
            }
        });
    }
    let Some(report) = report else { return };
    for member in progress.values_mut().flat_map(|p| &mut p.members) {
        if member.serving_at_ms.is_none()
            && found(&member.instance).is_some_and(|i| i.state == InstanceState::Active)
        {
            member.serving_at_ms = Some(report.at_unix_ms);
        }
    }
}

/// The limits an instance gets for `rps` of load (per instance), between `spec`'s minimum at
/// no load and maximum at `capacity_rps`; CPU rounded up to 50 thousandths of a core and
/// memory to 16 MiB, so small changes of the forecast do not update containers.
pub fn limits_for(spec: &LimitsSpec, rps: f64, capacity_rps: f64) -> InstanceLimits {
    let load = if rps.is_finite() && capacity_rps > 0.0 {
        (rps / capacity_rps).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let between = |min: u32, max: u32, step: u32| {
        let raw = f64::from(min) + f64::from(max - min) * load;
        ((raw / f64::from(step)).ceil() as u32 * step).clamp(min, max)
    };
    InstanceLimits {
        cpu_millis: between(spec.min_cpu_millis, spec.max_cpu_millis, 50),
        memory_mib: between(spec.min_memory_mib, spec.max_memory_mib, 16),
    }
}

/// `SetLimits` for each of the pool's serving instances (1..=`warm`) whose provider enforces
/// limits (its report shows some) and whose limits are not `limits` yet. The operation id
/// names the limits, so each new size is a new operation.
pub fn limit_commands(
    pool: &PoolSpec<'_>,
    report: Option<&AgentReport>,
    limits: InstanceLimits,
) -> Vec<DueCommand> {
    members(pool.prefix, report)
        .into_iter()
        .filter(|(k, i)| *k <= pool.target.warm && i.limits.is_some_and(|l| l != limits))
        .map(|(_, i)| DueCommand {
            op_id: format!(
                "{}/limits/{}/{}m-{}Mi",
                pool.base, i.id, limits.cpu_millis, limits.memory_mib
            ),
            region: pool.region.to_owned(),
            action: AgentAction::SetLimits {
                instance: i.id.clone(),
                limits,
            },
            after: None,
            observable: true,
        })
        .collect()
}

/// The number of `id` within the pool `prefix` (`{prefix}-{k}` → k), if it belongs to it.
pub fn member(prefix: &str, id: &str) -> Option<u32> {
    let k = id.strip_prefix(prefix)?.strip_prefix('-')?;
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) || k.starts_with('0') {
        return None;
    }
    k.parse().ok()
}

/// The instances of pool `prefix` a report lists, by number.
pub fn members<'a>(
    prefix: &str,
    report: Option<&'a AgentReport>,
) -> Vec<(u32, &'a InstanceReport)> {
    let mut out: Vec<_> = report
        .into_iter()
        .flat_map(|r| &r.instances)
        .filter_map(|i| Some((member(prefix, &i.id)?, i)))
        .collect();
    out.sort_by_key(|(k, _)| *k);
    out
}

/// What a pool holds now, as its agent reports it: instances serving (warm) and instances
/// that exist without running (dormant).
pub fn actual(prefix: &str, report: Option<&AgentReport>) -> PoolTarget {
    let mut out = PoolTarget::default();
    for (_, i) in members(prefix, report) {
        match i.state {
            InstanceState::Active => out.warm += 1,
            InstanceState::Dormant | InstanceState::Stopped | InstanceState::Paused => {
                out.dormant += 1
            }
            InstanceState::Warm => {}
        }
    }
    out
}

/// A pool to reconcile.
#[derive(Debug, Clone, Copy)]
pub struct PoolSpec<'a> {
    /// Operation id prefix (`{service}/pool/{region}/{prefix}`).
    pub base: &'a str,
    /// The region.
    pub region: &'a str,
    /// The instance id prefix.
    pub prefix: &'a str,
    /// The target to hold.
    pub target: PoolTarget,
    /// The service keeps data: instances 2.. follow instance 1 and join once caught up.
    pub stateful: bool,
}

/// The agent commands that move the region's instances of `pool` toward its target, one
/// stage per instance per report (see the module docs). Nothing until the region reported.
pub fn pool_commands(pool: &PoolSpec<'_>, report: Option<&AgentReport>) -> Vec<DueCommand> {
    let Some(report) = report else {
        return Vec::new();
    };
    let total = pool.target.total();
    let id = |k: u32| format!("{}-{k}", pool.prefix);
    let found = |k: u32| report.instances.iter().find(|i| i.id == id(k));
    let cmd = |op: String, action: AgentAction, after: Option<String>| DueCommand {
        op_id: format!("{}/{op}", pool.base),
        region: pool.region.to_owned(),
        action,
        after,
        observable: true,
    };
    let mut out = Vec::new();
    let missing: Vec<String> = (1..=total)
        .filter(|k| found(*k).is_none())
        .map(id)
        .collect();
    let provision = format!("{}/provision", pool.base);
    if !missing.is_empty() {
        out.push(cmd(
            "provision".into(),
            AgentAction::Provision { instances: missing },
            None,
        ));
    }
    let writer_url = found(1)
        .filter(|i| i.state == InstanceState::Active)
        .and_then(|i| i.addr.as_ref())
        .map(|addr| format!("http://{addr}"));
    for k in 1..=pool.target.warm {
        let instance = id(k);
        let Some(current) = found(k) else {
            if !pool.stateful || k == 1 {
                out.push(cmd(
                    format!("activate/{instance}"),
                    AgentAction::Activate { instance },
                    Some(provision.clone()),
                ));
            }
            continue;
        };
        if !pool.stateful || k == 1 {
            if current.state != InstanceState::Active {
                out.push(cmd(
                    format!("activate/{instance}"),
                    AgentAction::Activate { instance },
                    None,
                ));
            }
            continue;
        }
        // A follower: running, replicating the writer (asked for as soon as the start
        // succeeded), caught up, then in the front.
        let running = matches!(current.state, InstanceState::Warm | InstanceState::Active);
        let start = format!("{}/start/{instance}", pool.base);
        if !running {
            out.push(cmd(
                format!("start/{instance}"),
                AgentAction::Start {
                    instance: instance.clone(),
                },
                None,
            ));
        }
        let replication = report.replication.iter().find(|r| r.instance == instance);
        let following = replication.is_some_and(|r| Some(&r.source) == writer_url.as_ref());
        if !following {
            if let Some(source) = writer_url.clone() {
                out.push(cmd(
                    format!("follow/{instance}"),
                    AgentAction::StartReplication { instance, source },
                    (!running).then_some(start),
                ));
            }
            continue;
        }
        if !running {
            continue;
        }
        let caught_up = replication.is_some_and(|r| r.target_position >= r.source_position);
        if caught_up && current.state != InstanceState::Active {
            out.push(cmd(
                format!("activate/{instance}"),
                AgentAction::Activate { instance },
                None,
            ));
        }
    }
    // Dormant: out of the front, replication stopped, then stopped (kept, not removed).
    for k in pool.target.warm + 1..=total {
        if let Some(current) = found(k) {
            out.extend(park(pool, report, current, false));
        }
    }
    // Beyond the target: drained the same way, then removed.
    for (k, current) in members(pool.prefix, Some(report)) {
        if k > total {
            out.extend(park(pool, report, current, true));
        }
    }
    out
}

/// The first stages of taking an instance out of service, in this order: out of the front
/// (deactivated), then its replication stopped. A follower that stopped following is
/// read-only with nobody to pass writes to and its reads go stale, so it must answer nobody by
/// then. `None` once it is out of the front and replicates nothing. Shared by pool parking
/// and by a migration's releases (`reconcile::release_pool`).
pub fn leaving_stage(
    id: &str,
    state: InstanceState,
    replicating: bool,
) -> Option<(&'static str, AgentAction)> {
    let instance = id.to_owned();
    match state {
        InstanceState::Active => Some(("deactivate", AgentAction::Deactivate { instance })),
        _ if replicating => Some(("unreplicate", AgentAction::StopReplication { instance })),
        _ => None,
    }
}

/// The next stage of taking `instance` out of service, one per report: [`leaving_stage`],
/// then stopped, then (with `remove`) removed.
fn park(
    pool: &PoolSpec<'_>,
    report: &AgentReport,
    instance: &InstanceReport,
    remove: bool,
) -> Vec<DueCommand> {
    let id = instance.id.clone();
    let replicating = report.replication.iter().any(|r| r.instance == id);
    let (stage, action) = match leaving_stage(&id, instance.state, replicating) {
        Some(stage) => stage,
        None => match instance.state {
            InstanceState::Warm | InstanceState::Paused => (
                "stop",
                AgentAction::Stop {
                    instance: id.clone(),
                },
            ),
            InstanceState::Dormant | InstanceState::Stopped if remove => (
                "remove",
                AgentAction::Remove {
                    instance: id.clone(),
                },
            ),
            _ => return Vec::new(),
        },
    };
    vec![DueCommand {
        op_id: format!("{}/{stage}/{id}", pool.base),
        region: pool.region.to_owned(),
        action,
        after: None,
        observable: true,
    }]
}

#[cfg(test)]
mod tests;
