//! What the leader does next for a game day, sans-IO: a plain function of the game day's
//! progress as the replicated state holds it (`state::GameDayRun`), the overview and the
//! traffic this leadership counted, so any leader decides the same from the same state.
//!
//! An `evacuate` game day moves the services served from its region out, one at a time in
//! name order, each through an ordinary migration keyed to the game day (so the state creates
//! it once whichever leader asks), judged by the service's own SLO at every step as any
//! migration is. It waits while one of its migrations is live, and while a service it must
//! move has a migration of someone else's in flight. When one of its migrations does not
//! complete, the game day has failed: it moves each service it already moved back into the
//! region (one at a time, keyed too), then records the verdict. When none is left to move, it
//! records a pass. The verdict is a drill report (`state::drills`) with the game day's name,
//! so the state records it once.

use std::collections::BTreeMap;

use crate::migration::Phase;
use crate::state::game_days::{back_key, forward_key};
use crate::state::{DrillReport, DrillService, GameDayRun, MigrationRequest, Overview};

/// Requests and failures the fronts reported while a game day ran, as one leadership counted
/// them (a new leader counts from when it took over).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    /// Requests the fronts served.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// The highest p99 of a front's report window, ms.
    pub p99_ms_max: Option<f64>,
}

impl Traffic {
    /// Adds one front report's window.
    pub fn add(&mut self, requests: u64, errors: u64, p99_ms: Option<f64>) {
        self.requests += requests;
        self.errors += errors.min(requests);
        if let Some(p99) = p99_ms.filter(|p| p.is_finite() && *p >= 0.0) {
            self.p99_ms_max = Some(self.p99_ms_max.map_or(p99, |m| m.max(p99)));
        }
    }
}

/// The leader's next step for one game day.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Not due, done, or waiting for a migration to end.
    Wait,
    /// Create this migration (a move out, or back after a failure).
    Migrate(MigrationRequest),
    /// Record this verdict.
    Record(Box<DrillReport>),
}

/// What to do next for `run` at `now_ms`.
pub fn next(run: &GameDayRun, overview: &Overview, traffic: &Traffic, now_ms: u64) -> Next {
    let spec = &run.spec;
    if !run.running(now_ms) {
        return Next::Wait;
    }
    let live = |phase: Phase| !phase.is_terminal();
    if run
        .moves
        .iter()
        .any(|m| live(m.out.phase) || m.back.as_ref().is_some_and(|b| live(b.phase)))
    {
        return Next::Wait;
    }
    let failed = run.moves.iter().any(|m| m.out.phase != Phase::Completed);
    let lead_ms = |service: &str| {
        overview
            .services
            .get(service)
            .map_or(0, |s| s.spec.lead_time_secs.saturating_mul(1_000))
    };
    if failed {
        // Move back what moved, one at a time; then the verdict.
        if let Some(m) = run
            .moves
            .iter()
            .find(|m| m.out.phase == Phase::Completed && m.back.is_none())
        {
            return Next::Migrate(MigrationRequest {
                schedule_key: Some(back_key(&spec.name, &m.service)),
                ..MigrationRequest::new(&m.service, &spec.region, now_ms + lead_ms(&m.service))
            });
        }
        return Next::Record(Box::new(report(run, overview, traffic, now_ms, None)));
    }
    let moved: Vec<&str> = run.moves.iter().map(|m| m.service.as_str()).collect();
    let mut left = overview
        .services
        .values()
        .filter(|s| s.primary_region == spec.region && !moved.contains(&s.spec.name.as_str()));
    let Some(service) = left.next() else {
        return Next::Record(Box::new(report(run, overview, traffic, now_ms, None)));
    };
    if service.active_migration.is_some() {
        // Someone else's migration of it is in flight: wait for it to end.
        return Next::Wait;
    }
    let to = spec
        .to
        .clone()
        .or_else(|| least_busy(overview, &spec.region))
        .unwrap_or_default();
    if to.is_empty() {
        let unmoved = DrillService {
            service: service.spec.name.clone(),
            to: spec.region.clone(),
            migration: None,
            outcome: "not_started".to_owned(),
        };
        return Next::Record(Box::new(report(
            run,
            overview,
            traffic,
            now_ms,
            Some(unmoved),
        )));
    }
    let name = &service.spec.name;
    Next::Migrate(MigrationRequest {
        schedule_key: Some(forward_key(&spec.name, name)),
        ..MigrationRequest::new(name, &to, now_ms + lead_ms(name))
    })
}

/// The region other than `region` serving the fewest services, then by name.
fn least_busy(overview: &Overview, region: &str) -> Option<String> {
    let mut serving: BTreeMap<&str, usize> = overview
        .regions
        .keys()
        .filter(|r| *r != region)
        .map(|r| (r.as_str(), 0))
        .collect();
    for service in overview.services.values() {
        if let Some(n) = serving.get_mut(service.primary_region.as_str()) {
            *n += 1;
        }
    }
    serving
        .into_iter()
        .min_by_key(|(name, n)| (*n, *name))
        .map(|(name, _)| name.to_owned())
}

/// The verdict of a game day whose migrations have all ended; `unmoved` is a service it could
/// not move at all (there is no other region).
fn report(
    run: &GameDayRun,
    overview: &Overview,
    traffic: &Traffic,
    now_ms: u64,
    unmoved: Option<DrillService>,
) -> DrillReport {
    let spec = &run.spec;
    // A move back that did not complete leaves the service out of the region: `completed`,
    // with a reason of its own below.
    let outcome = |m: &crate::state::GameDayMove| match (m.out.phase, &m.back) {
        (Phase::Completed, Some(back)) if back.phase == Phase::Completed => "moved_back",
        (Phase::Completed, _) => "completed",
        (Phase::RolledBack, _) => "rolled_back",
        _ => "failed",
    };
    let mut services: Vec<DrillService> = run
        .moves
        .iter()
        .map(|m| DrillService {
            service: m.service.clone(),
            to: m.out.to.clone(),
            migration: Some(m.out.id.clone()),
            outcome: outcome(m).to_owned(),
        })
        .collect();
    let slos: Vec<_> = run
        .moves
        .iter()
        .filter_map(|m| overview.services.get(&m.service))
        .map(|s| &s.spec.slo)
        .collect();
    let max_failed_ratio = slos
        .iter()
        .map(|s| s.max_error_rate)
        .fold(1.0_f64, f64::min)
        .clamp(0.0, 1.0);
    let max_p99_ms = slos
        .iter()
        .map(|s| s.max_p99_ms)
        .fold(f64::INFINITY, f64::min);
    let max_p99_ms = if max_p99_ms.is_finite() && max_p99_ms > 0.0 {
        max_p99_ms
    } else {
        f64::MAX
    };
    let mut reasons: Vec<String> = run
        .moves
        .iter()
        .filter(|m| outcome(m) != "completed")
        .map(|m| format!("{} ended {} ({})", m.service, outcome(m), m.out.id))
        .collect();
    reasons.extend(run.moves.iter().filter_map(|m| {
        let back = m.back.as_ref().filter(|b| b.phase != Phase::Completed)?;
        Some(format!(
            "{} could not be moved back: {} ended {}",
            m.service, back.id, back.phase
        ))
    }));
    let stopped = run
        .moves
        .iter()
        .find(|m| m.out.phase != Phase::Completed)
        .map(|m| {
            format!(
                "{}'s migration {} ended {}",
                m.service, m.out.id, m.out.phase
            )
        });
    let ratio = if traffic.requests == 0 {
        0.0
    } else {
        traffic.errors as f64 / traffic.requests as f64
    };
    if ratio > max_failed_ratio {
        reasons.push(format!(
            "{} of {} requests failed, above the {:.2} % budget",
            traffic.errors,
            traffic.requests,
            max_failed_ratio * 100.0
        ));
    }
    if let Some(unmoved) = unmoved {
        reasons.push(format!(
            "{} could not move: {} is the only region",
            unmoved.service, spec.region
        ));
        services.push(unmoved);
    }
    let passed = reasons.is_empty();
    let evacuate_ms = passed
        .then(|| run.moves.iter().map(|m| m.out.since_ms).max())
        .flatten()
        .map(|end| end.saturating_sub(spec.at_ms));
    DrillReport {
        drill: spec.drill.clone(),
        region: spec.region.clone(),
        passed,
        reasons,
        started_ms: spec.at_ms,
        ended_ms: now_ms.max(spec.at_ms),
        evacuate_ms,
        services,
        requests: traffic.requests,
        failed_requests: traffic.errors,
        max_failed_ratio,
        max_p99_ms,
        p99_ms_max: traffic.p99_ms_max,
        stopped,
        rollbacks: run.moves.iter().filter(|m| m.back.is_some()).count() as u64,
        faults_fired: 0,
        faults_planned: 0,
        seed: None,
        game_day: Some(spec.name.clone()),
    }
}

#[cfg(test)]
mod tests;
