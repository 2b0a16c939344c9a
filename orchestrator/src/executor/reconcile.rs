//! The executor's pure part: from the replicated overview and the agents' latest reports, what
//! the leader sees ([`observe`]), which agent commands make an [`Action`] hold ([`commands`]),
//! which DNS weights a service's record should carry ([`desired_dns`]), which instances form
//! a service's pool in a region ([`pool_of`]), and which schedule legs are due
//! ([`due_schedule_requests`]). No I/O, no clock: `now` comes in.
//!
//! Ids are deterministic so a new leader repeats its predecessor's: shadow instance
//! `{migration}-{k}`; operation `{migration}/{phase}/{step}/{action}[/{instance}]`, where an
//! action that belongs to one phase (provisioning, warming, replication) is keyed by that
//! phase even when a later phase ensures it again, so the agent answers from its ledger instead
//! of provisioning twice.

use std::collections::BTreeMap;

use umbra_proto::agent::{
    AgentAction, AgentReport, CommandOutcome, CommandResult, InstanceState, WarmupPhase, WarmupSpec,
};

use crate::migration::{
    Action, DnsObserved, MigrationRecord, Observations, Phase, ReplicationObserved,
};
use crate::state::{DnsWeights, MigrationRequest, Overview, ReplicationKind, ServiceState};

/// One agent command the executor wants to hold, with its deterministic id.
#[derive(Debug, Clone, PartialEq)]
pub struct DueCommand {
    /// Operation id before any retry suffix.
    pub op_id: String,
    /// The region whose agent runs it.
    pub region: String,
    /// What to do.
    pub action: AgentAction,
    /// An operation that must have succeeded first (same region or not).
    pub after: Option<String>,
    /// Its effect shows in the region's report (an instance exists, serves, left the front,
    /// stopped, is gone), so it is asked for again only while the effect is missing: a
    /// repeat after success means the effect was lost, and the controller heals it.
    pub observable: bool,
}

/// Shadow instance ids of a migration: `{id}-1` … `{id}-{n}`.
pub fn shadow_ids(record: &MigrationRecord) -> Vec<String> {
    (1..=record.shadow_instances)
        .map(|k| format!("{}-{k}", record.spec.id))
        .collect()
}

/// The instances that serve `service` in `region`: the shadow pool of the latest completed
/// migration into `region` if that is the service's latest completed migration, otherwise the
/// region's home pool `{service}-{region}-{k}` (k up to the service's `min_instances`).
/// `excluding` leaves one migration out (the pool a migration moves FROM is the one that
/// existed before it completed).
pub fn pool_of(
    overview: &Overview,
    service: &str,
    region: &str,
    excluding: Option<&str>,
) -> Vec<String> {
    match latest_completed_into(overview, service, region, excluding) {
        Some(m) => shadow_ids(m),
        None => home_pool(overview, service, region),
    }
}

/// The id prefix of the pool that serves `service` in `region` (see [`pool_of`]): the latest
/// completed migration's id when it moved the service into `region`, else `{service}-{region}`.
/// The pool controller grows and shrinks the pool under this prefix.
pub fn pool_prefix(
    overview: &Overview,
    service: &str,
    region: &str,
    excluding: Option<&str>,
) -> String {
    match latest_completed_into(overview, service, region, excluding) {
        Some(m) => m.spec.id.clone(),
        None => format!("{service}-{region}"),
    }
}

/// The service's latest completed migration (leaving `excluding` out), if it moved the service
/// into `region`.
fn latest_completed_into<'a>(
    overview: &'a Overview,
    service: &str,
    region: &str,
    excluding: Option<&str>,
) -> Option<&'a MigrationRecord> {
    overview
        .migrations
        .values()
        .filter(|m| m.spec.service == service && m.phase == Phase::Completed)
        .filter(|m| Some(m.spec.id.as_str()) != excluding)
        .max_by_key(|m| (m.phase_since_ms, migration_number(&m.spec.id)))
        .filter(|m| m.spec.to == region)
}

/// The home pool of a service in a region (see [`pool_of`]).
pub fn home_pool(overview: &Overview, service: &str, region: &str) -> Vec<String> {
    let n = overview
        .services
        .get(service)
        .map_or(1, |s| s.spec.min_instances);
    (1..=n).map(|k| format!("{service}-{region}-{k}")).collect()
}

/// The numeric suffix of a migration id (`shop-12` → 12), to order migrations created in the
/// same millisecond.
pub fn migration_number(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Whether a newer migration of `record`'s service exists (the one [`latest_migrations`]
/// names instead), so `record`'s terminal holds no longer apply.
fn superseded(overview: &Overview, record: &MigrationRecord) -> bool {
    let n = migration_number(&record.spec.id);
    overview
        .migrations
        .values()
        .any(|m| m.spec.service == record.spec.service && migration_number(&m.spec.id) > n)
}

/// The latest migration of every service (the one whose terminal holds still apply).
pub fn latest_migrations(overview: &Overview) -> BTreeMap<String, String> {
    let mut latest: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for m in overview.migrations.values() {
        let n = migration_number(&m.spec.id);
        let entry = latest
            .entry(m.spec.service.clone())
            .or_insert((n, m.spec.id.clone()));
        if n > entry.0 {
            *entry = (n, m.spec.id.clone());
        }
    }
    latest.into_iter().map(|(s, (_, id))| (s, id)).collect()
}

fn instance<'a>(
    report: Option<&'a AgentReport>,
    id: &str,
) -> Option<&'a umbra_proto::agent::InstanceReport> {
    report?.instances.iter().find(|i| i.id == id)
}

fn is_active(report: Option<&AgentReport>, id: &str) -> bool {
    instance(report, id).is_some_and(|i| i.state == InstanceState::Active && i.addr.is_some())
}

/// The base URL of `id` when it serves.
fn instance_url(report: Option<&AgentReport>, id: &str) -> Option<String> {
    instance(report, id)
        .filter(|i| i.state == InstanceState::Active)
        .and_then(|i| i.addr.as_ref())
        .map(|addr| format!("http://{addr}"))
}

/// The base URL of the first serving instance of `pool` (the single writer of a service in a
/// region: the sample service keeps its data per instance, and replication pulls from one).
pub fn primary_url(report: Option<&AgentReport>, pool: &[String]) -> Option<String> {
    pool.iter()
        .filter_map(|id| instance(report, id))
        .find(|i| i.state == InstanceState::Active)
        .and_then(|i| i.addr.as_ref())
        .map(|addr| format!("http://{addr}"))
}

/// The share (percent) of `service` a front report says it forwards; 0 when none.
pub fn share_in(front: &umbra_proto::agent::FrontReport, service: &str) -> u8 {
    front
        .shares
        .iter()
        .find(|s| s.service == service)
        .map_or(0, |s| s.percent)
}

/// What the executor knows beyond the reports: outcomes of its own operations this leadership.
pub trait OpView {
    /// The outcome of operation `op_id` (base id), if it succeeded.
    fn done(&self, op_id: &str) -> Option<&CommandOutcome>;
    /// Whether this leadership sent operation `op_id` (base id), whatever came of it.
    fn sent(&self, op_id: &str) -> bool;
}

/// Observations of `record` from the reports (by region) and this leadership's outcomes. The
/// SLO reading is left out: it needs a baseline the driver keeps.
pub fn observe(
    record: &MigrationRecord,
    service: &ServiceState,
    overview: &Overview,
    reports: &BTreeMap<String, AgentReport>,
    ops: &dyn OpView,
) -> Observations {
    let spec = &record.spec;
    let target = reports.get(&spec.to);
    let source = reports.get(&spec.from);
    let shadows = shadow_ids(record);
    let shadow_serving = shadows.iter().filter(|id| is_active(target, id)).count() as u32;
    // A shadow's warm-up phase, as its agent reports it or answered this leadership's command.
    let warmed = |phase: WarmupPhase| {
        shadows
            .iter()
            .filter(|id| {
                let reported = target.is_some_and(|r| {
                    r.warmups
                        .iter()
                        .any(|w| &w.instance == *id && w.phase == phase)
                });
                let answered = matches!(
                    ops.done(&warm_op(record, id)),
                    Some(CommandOutcome::Done(CommandResult::Warmup(p))) if p.phase == phase
                );
                reported || answered
            })
            .count() as u32
    };
    let shadow_warm = warmed(WarmupPhase::Ready);
    let shadow_warm_failed = warmed(WarmupPhase::CapReached);
    let replication = match service.spec.replication {
        ReplicationKind::None => Some(ReplicationObserved {
            lag: 0,
            // Nothing to move: the writer is wherever the state machine asks for it.
            promoted: match record.phase {
                Phase::RollingBack => false,
                Phase::CuttingOver { .. } => {
                    record.promoted || spec.target_share(record.phase) == 100
                }
                _ => record.promoted,
            },
            source_fenced: false,
            fence_lifted: false,
        }),
        ReplicationKind::SampleLogShipping => {
            sample_replication(record, &shadows, target, overview, ops)
        }
    };
    let share_applied = share_applied(record, source, ops);
    Observations {
        shadow_serving,
        shadow_warm,
        shadow_warm_failed,
        replication,
        share_applied,
        slo: None,
        rollback_requested: None,
        // The controller fills it in when DNS gates steps (`ControllerConfig::dns_gate`).
        dns: DnsObserved::Ungated,
        // The controller fills it in for a Prometheus SLO source.
        slo_queried: None,
        // The controller fills it in while warming, with the plan's thresholds.
        warmup: None,
    }
}

fn sample_replication(
    record: &MigrationRecord,
    shadows: &[String],
    target: Option<&AgentReport>,
    overview: &Overview,
    ops: &dyn OpView,
) -> Option<ReplicationObserved> {
    let reports: Vec<_> = shadows
        .iter()
        .map(|id| target?.replication.iter().find(|r| &r.instance == id))
        .collect::<Option<Vec<_>>>()?;
    if reports.is_empty() {
        return None;
    }
    let lag = reports
        .iter()
        .map(|r| r.source_position.saturating_sub(r.target_position))
        .max()
        .unwrap_or(0);
    // The first shadow is the writer to be; the others follow it, so they never promote.
    let mut promoted = reports[0].promoted;
    let mut source_fenced = reports[0].source_fenced;
    let mut fence_lifted = false;
    if record.phase == Phase::RollingBack {
        // The writer is back on the source once this rollback's hand-back promoted the
        // source's primary. Only that promotion counts, not the primary's report: a primary
        // that an earlier migration into the source region promoted keeps reporting itself
        // promoted (its replication entry stays), which says nothing about this migration's
        // writer. A leadership that did not see the hand-back asks for it again, and the
        // agent answers each stage from its ledger.
        let pool = pool_of(
            overview,
            &record.spec.service,
            &record.spec.from,
            Some(&record.spec.id),
        );
        let source_promoted = pool
            .first()
            .is_some_and(|primary| ops.done(&hand_back_op(record, primary)).is_some());
        // A rollback recorded before the promotion (an operator's, while the promotion's
        // answer was on its way) finds the target writing all the same, unless a hand-back
        // already promoted the source: the shadow's report need not change when the source's
        // agent fences it.
        promoted = (record.promoted || promoted) && !source_promoted;
        // A fence this leadership sent may have landed after the report it reads was taken
        // (the report is up to a heartbeat old): it counts as landed. The source's writer took
        // writes again by the hand-back, not by lifting its fence; the shadow's report may
        // still show it fenced.
        source_fenced =
            (source_fenced || ops.sent(&forward_fence_op(record, &shadows[0]))) && !source_promoted;
        fence_lifted = ops.done(&unfence_op(record, &shadows[0])).is_some();
    }
    Some(ReplicationObserved {
        lag,
        promoted,
        source_fenced,
        fence_lifted,
    })
}

fn share_applied(
    record: &MigrationRecord,
    source: Option<&AgentReport>,
    ops: &dyn OpView,
) -> Option<u8> {
    let wanted = match record.phase {
        Phase::RollingBack | Phase::RolledBack => 0,
        phase => record.spec.target_share(phase),
    };
    let op = set_share_op(record, wanted);
    if let Some(CommandOutcome::Done(CommandResult::Front(front))) = ops.done(&op) {
        return Some(share_in(front, &record.spec.service));
    }
    source
        .and_then(|r| r.front.as_ref())
        .map(|f| share_in(f, &record.spec.service))
}

fn op(record: &MigrationRecord, phase: Phase, action: &str) -> String {
    let step = match phase {
        Phase::CuttingOver { step } => step,
        _ => 0,
    };
    format!("{}/{}/{step}/{action}", record.spec.id, phase.name())
}

/// The id of the fence on the source in the move of the single writer to `writer` (the last
/// cutover step's; see [`move_writer`]).
fn forward_fence_op(record: &MigrationRecord, writer: &str) -> String {
    let last = Phase::CuttingOver {
        step: record.spec.steps_percent.len().saturating_sub(1),
    };
    format!("{}/fence/{writer}", op(record, last, "promote_target"))
}

/// The id of the hand-back's last stage: the rollback's promotion of the source's `primary`.
fn hand_back_op(record: &MigrationRecord, primary: &str) -> String {
    format!(
        "{}/promote/{primary}",
        op(record, Phase::RollingBack, "promote_source")
    )
}

/// The id of the rollback's lifting of that fence.
fn unfence_op(record: &MigrationRecord, writer: &str) -> String {
    format!(
        "{}/{writer}",
        op(record, Phase::RollingBack, "unfence_source")
    )
}

fn warm_op(record: &MigrationRecord, instance: &str) -> String {
    format!("{}/{instance}", op(record, Phase::Warming, "warm"))
}

/// The id of the `SetShare` operation of `record`'s current phase.
pub fn set_share_op(record: &MigrationRecord, percent: u8) -> String {
    format!("{}/{percent}", op(record, record.phase, "set_share"))
}

/// Everything the command planning needs besides the record.
pub struct CommandContext<'a> {
    /// The replicated overview.
    pub overview: &'a Overview,
    /// Latest reports by region.
    pub reports: &'a BTreeMap<String, AgentReport>,
    /// The warm-up plan with the reference p99 already chosen.
    pub warm_plan: WarmupSpec,
    /// `WaitForZeroLag` timeout.
    pub zero_lag_timeout_ms: u64,
    /// How long the migration has been in its phase, ms, by the controller's phase clock
    /// (monotonic).
    pub in_phase_ms: u64,
    /// How long a rolled-back migration's shadows are kept out of the front before they are
    /// stopped and removed, ms.
    pub shadow_keep_ms: u64,
}

/// The agent commands that make `action` hold for `record`, in dependency order.
pub fn commands(
    record: &MigrationRecord,
    action: &Action,
    ctx: &CommandContext<'_>,
) -> Vec<DueCommand> {
    let spec = &record.spec;
    let target = ctx.reports.get(&spec.to);
    let source = ctx.reports.get(&spec.from);
    let front = |region: &str| ctx.overview.regions.get(region).map(|r| r.front.clone());
    let shadows = shadow_ids(record);
    let source_pool = pool_of(ctx.overview, &spec.service, &spec.from, Some(&spec.id));
    let replication = ctx
        .overview
        .services
        .get(&spec.service)
        .map_or(ReplicationKind::None, |s| s.spec.replication);
    let cmd =
        |op_id: String, region: &str, action: AgentAction, after: Option<String>| DueCommand {
            op_id,
            region: region.to_owned(),
            action,
            after,
            observable: false,
        };
    let mut out = Vec::new();
    match action {
        Action::EnsureShadow { .. } => {
            // The target's front must not forward this service anywhere (an earlier migration
            // away from the target may have left a share behind).
            if let Some(source_front) = front(&spec.from) {
                out.push(cmd(
                    op(record, Phase::Provisioning, "clear_target_share"),
                    &spec.to,
                    AgentAction::SetShare {
                        service: spec.service.clone(),
                        target_front: source_front,
                        percent: 0,
                    },
                    None,
                ));
            }
            out.extend(ensure_pool(
                &op(record, Phase::Provisioning, "ensure_shadow"),
                &spec.to,
                &shadows,
                target,
            ));
        }
        Action::EnsureWarm => {
            for id in &shadows {
                if is_active(target, id) {
                    out.push(cmd(
                        warm_op(record, id),
                        &spec.to,
                        AgentAction::Warm {
                            instance: id.clone(),
                            plan: ctx.warm_plan.clone(),
                        },
                        None,
                    ));
                }
            }
        }
        Action::EnsureReplication => {
            // One writer per region: the first shadow follows the source's writer, the others
            // follow the first shadow (so the region has one writer once it is promoted).
            if replication == ReplicationKind::SampleLogShipping
                && let Some(source_url) = primary_url(source, &source_pool)
                && let Some((writer, followers)) = shadows.split_first()
            {
                let writer_url = instance_url(target, writer);
                // The writer is asked once (its promotion must never be undone by a repeat);
                // a follower again whenever its report does not show it following the writer
                // where it serves now (the writer restarted on a new address).
                let chain = std::iter::once((writer, Some(source_url), false))
                    .chain(followers.iter().map(|id| (id, writer_url.clone(), true)));
                for (id, upstream, level) in chain {
                    let Some(upstream) = upstream else { continue };
                    let following = target.is_some_and(|t| {
                        t.replication
                            .iter()
                            .any(|r| &r.instance == id && r.source == upstream)
                    });
                    if !is_active(target, id) || (level && following) {
                        continue;
                    }
                    out.push(DueCommand {
                        observable: level,
                        ..cmd(
                            format!("{}/{id}", op(record, Phase::Replicating, "replicate")),
                            &spec.to,
                            AgentAction::StartReplication {
                                instance: id.clone(),
                                source: upstream,
                            },
                            None,
                        )
                    });
                }
            }
        }
        Action::PromoteTarget => {
            // Only the writer moves: the other shadows keep following it.
            if replication == ReplicationKind::SampleLogShipping
                && let Some(writer) = shadows.first()
            {
                let base = op(record, record.phase, "promote_target");
                out.extend(move_writer(
                    &base,
                    &spec.to,
                    writer,
                    ctx.zero_lag_timeout_ms,
                ));
            }
        }
        Action::PromoteSource => {
            if replication == ReplicationKind::SampleLogShipping
                && let (Some(primary), Some(shadow_url)) = (
                    source_pool.first(),
                    shadows.first().and_then(|w| instance_url(target, w)),
                )
            {
                // The mirror image of the cutover: the source follows the target, then the
                // target is fenced and the source promoted once it caught up.
                let base = op(record, Phase::RollingBack, "promote_source");
                let follow = format!("{base}/follow/{primary}");
                out.push(cmd(
                    follow.clone(),
                    &spec.from,
                    AgentAction::StartReplication {
                        instance: primary.clone(),
                        source: shadow_url,
                    },
                    None,
                ));
                let mut moves = move_writer(&base, &spec.from, primary, ctx.zero_lag_timeout_ms);
                if let Some(first) = moves.first_mut() {
                    first.after = Some(follow);
                }
                out.extend(moves);
            }
        }
        Action::UnfenceSource => {
            // Asked until done: the agent takes it after any fence or promotion of the writer
            // it is running, and refuses both for that instance once it is done, so a fence
            // still on its way cannot land after it.
            if replication == ReplicationKind::SampleLogShipping
                && let Some(writer) = shadows.first()
            {
                out.push(cmd(
                    unfence_op(record, writer),
                    &spec.to,
                    AgentAction::UnfenceSource {
                        instance: writer.clone(),
                    },
                    None,
                ));
            }
        }
        Action::SetShare { percent } => {
            if let Some(target_front) = front(&spec.to) {
                out.push(cmd(
                    set_share_op(record, *percent),
                    &spec.from,
                    AgentAction::SetShare {
                        service: spec.service.clone(),
                        target_front,
                        percent: *percent,
                    },
                    None,
                ));
            }
        }
        Action::ReleaseShadow => {
            // Clients whose DNS answer still names the target's front (up to one TTL) are
            // sent on to the source's front: the target's front forwards the service there
            // first. Then the shadows leave the front, and only then does their replication
            // stop (a rolled-back shadow must never answer again: once it stops replicating
            // its reads go stale); stopped and removed once the keep time has passed. Not
            // once a newer migration of the service exists: it owns the fronts' shares now
            // (its provisioning cleared the target's), and sending the target's traffic back
            // could loop it between two fronts once the newer one completes.
            let share_back = op(record, Phase::RolledBack, "share_back");
            let mut after = None;
            if !superseded(ctx.overview, record)
                && let Some(source_front) = front(&spec.from)
            {
                out.push(cmd(
                    share_back.clone(),
                    &spec.to,
                    AgentAction::SetShare {
                        service: spec.service.clone(),
                        target_front: source_front,
                        percent: 100,
                    },
                    None,
                ));
                after = Some(share_back);
            }
            let remove = ctx.in_phase_ms >= ctx.shadow_keep_ms;
            out.extend(
                release_pool(
                    &op(record, Phase::RolledBack, "release_shadow"),
                    &spec.to,
                    &shadows,
                    target,
                    remove,
                )
                .into_iter()
                .map(|c| DueCommand {
                    after: after.clone(),
                    ..c
                }),
            );
        }
        Action::ReleaseSource => {
            // Every instance of the old pool: the ones it started with and the ones the pool
            // controller added.
            let prefix = pool_prefix(ctx.overview, &spec.service, &spec.from, Some(&spec.id));
            let mut old_pool = source_pool.clone();
            for (_, i) in super::pools::members(&prefix, source) {
                if !old_pool.contains(&i.id) {
                    old_pool.push(i.id.clone());
                }
            }
            out.extend(release_pool(
                &op(record, Phase::Completed, "release_source"),
                &spec.from,
                &old_pool,
                source,
                true,
            ));
        }
    }
    out
}

/// Commands that take `pool` out of service in `region` gracefully, one stage per report:
/// [`super::pools::leaving_stage`] (out of the front, then replication stopped), then (with
/// `remove`) stopped, then removed, so a heartbeat lists live instances only.
/// Level-triggered: each instance gets the command for the stage its report shows.
pub fn release_pool(
    base: &str,
    region: &str,
    pool: &[String],
    report: Option<&AgentReport>,
    remove: bool,
) -> Vec<DueCommand> {
    let mut out = Vec::new();
    for id in pool {
        let Some(found) = instance(report, id) else {
            continue;
        };
        let replicating = report.is_some_and(|r| r.replication.iter().any(|x| &x.instance == id));
        let id = id.clone();
        let (stage, action) = match super::pools::leaving_stage(&id, found.state, replicating) {
            Some(stage) => stage,
            None if !remove => continue,
            None if found.state == InstanceState::Stopped => {
                ("remove", AgentAction::Remove { instance: id })
            }
            None => ("stop", AgentAction::Stop { instance: id }),
        };
        out.push(DueCommand {
            op_id: format!("{base}/{stage}/{}", found.id),
            region: region.to_owned(),
            action,
            after: None,
            observable: true,
        });
    }
    out
}

/// Fence the source of `instance`'s replication, wait for lag 0, promote it: in that order.
fn move_writer(base: &str, region: &str, instance: &str, timeout_ms: u64) -> Vec<DueCommand> {
    let fence = format!("{base}/fence/{instance}");
    let wait = format!("{base}/zero_lag/{instance}");
    let promote = format!("{base}/promote/{instance}");
    vec![
        DueCommand {
            op_id: fence.clone(),
            region: region.to_owned(),
            action: AgentAction::FenceSource {
                instance: instance.to_owned(),
            },
            after: None,
            observable: false,
        },
        DueCommand {
            op_id: wait.clone(),
            region: region.to_owned(),
            action: AgentAction::WaitForZeroLag {
                instance: instance.to_owned(),
                timeout_ms,
            },
            after: Some(fence),
            observable: false,
        },
        DueCommand {
            op_id: promote,
            region: region.to_owned(),
            action: AgentAction::Promote {
                instance: instance.to_owned(),
            },
            after: Some(wait),
            observable: false,
        },
    ]
}

/// Commands that make `pool` exist and serve in `region`: provision the ids the report does
/// not list, activate the ones not active. Nothing until the region has reported (the report
/// is what tells which exist).
pub fn ensure_pool(
    base: &str,
    region: &str,
    pool: &[String],
    report: Option<&AgentReport>,
) -> Vec<DueCommand> {
    let Some(report) = report else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let missing: Vec<String> = pool
        .iter()
        .filter(|id| instance(Some(report), id).is_none())
        .cloned()
        .collect();
    let provision = format!("{base}/provision");
    if !missing.is_empty() {
        out.push(DueCommand {
            op_id: provision.clone(),
            region: region.to_owned(),
            action: AgentAction::Provision { instances: missing },
            after: None,
            observable: true,
        });
    }
    for id in pool {
        if !is_active(Some(report), id) {
            let exists = instance(Some(report), id).is_some();
            out.push(DueCommand {
                op_id: format!("{base}/activate/{id}"),
                region: region.to_owned(),
                action: AgentAction::Activate {
                    instance: id.clone(),
                },
                after: (!exists).then(|| provision.clone()),
                observable: true,
            });
        }
    }
    out
}

/// The weights and TTL a service's record should carry for `record` in its current phase at
/// `now_ms`, or `None` to leave the record alone. DNS follows the load balancer: a cutover
/// step's weights are published once the source front confirmed the step's share; a rollback
/// puts all weight back on the source at once. The TTL goes down at the time the migration's
/// TTL plan set (`DnsTtlPlan::lower_at_ms`: one old TTL plus the margin before the cutover).
pub fn desired_dns(
    record: &MigrationRecord,
    service: &ServiceState,
    share_applied: Option<u8>,
    now_ms: u64,
) -> Option<DnsWeights> {
    let spec = &record.spec;
    let weights = |target_percent: u8| {
        let mut w = BTreeMap::new();
        if target_percent < 100 {
            w.insert(spec.from.clone(), u32::from(100 - target_percent));
        }
        if target_percent > 0 {
            w.insert(spec.to.clone(), u32::from(target_percent));
        }
        w
    };
    let cutover_ttl = service.spec.cutover_ttl_secs;
    let normal_ttl = service.spec.dns_ttl_secs;
    let lowered = now_ms >= spec.dns_ttl.lower_at_ms || record.ttl_lowered_at_ms.is_some();
    let (percent, ttl_secs) = match record.phase {
        Phase::CuttingOver { .. } | Phase::Draining => {
            let p = spec.target_share(record.phase);
            if share_applied != Some(p) {
                return None;
            }
            (p, cutover_ttl)
        }
        Phase::Completed => (100, normal_ttl),
        Phase::RolledBack | Phase::Failed => (0, normal_ttl),
        Phase::RollingBack => (0, if lowered { cutover_ttl } else { normal_ttl }),
        Phase::Planned
        | Phase::Provisioning
        | Phase::Warming
        | Phase::Replicating
        | Phase::Ready => {
            if !lowered || !spec.dns_ttl.lowers() {
                return None;
            }
            (0, cutover_ttl)
        }
    };
    Some(DnsWeights {
        weights: weights(percent),
        ttl_secs,
    })
}

const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;

/// Migrations the follow-the-sun schedules ask for at `now_ms`: for each schedule, the next leg
/// (the first leg time at or after now) is due once `now ≥ leg − lead time`, if it moves the
/// service somewhere else and the service has no migration in flight. The `schedule_key`
/// (`schedule/leg-start-ms`) makes the state create it once per leg even when two leaders in a
/// row propose it.
pub fn due_schedule_requests(overview: &Overview, now_ms: u64) -> Vec<MigrationRequest> {
    let mut out = Vec::new();
    for schedule in overview.schedules.values() {
        let Some(service) = overview.services.get(&schedule.service) else {
            continue;
        };
        let day_start = now_ms - now_ms % DAY_MS;
        let next = schedule
            .legs
            .iter()
            .flat_map(|leg| {
                let today = day_start + u64::from(leg.at_hour_utc) * HOUR_MS;
                [(today, leg), (today + DAY_MS, leg)]
            })
            .filter(|(at, _)| *at >= now_ms)
            .min_by_key(|(at, _)| *at);
        let Some((at_ms, leg)) = next else {
            continue;
        };
        let lead_ms = service.spec.lead_time_secs.saturating_mul(1_000);
        if now_ms + lead_ms < at_ms
            || service.primary_region == leg.region
            || service.active_migration.is_some()
        {
            continue;
        }
        out.push(MigrationRequest {
            schedule_key: Some(format!("{}/{at_ms}", schedule.name)),
            ..MigrationRequest::new(&schedule.service, &leg.region, at_ms)
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::plan::ScheduleLeg;
    use crate::state::{Command, OrchestratorState, Plan};

    /// The example plan as these tests need it: a stateless `shop` with a pool of two, a
    /// 10-minute lead time, and legs at 06:00 (to eu-west) and 18:00 (back to us-east).
    fn plan() -> Plan {
        let mut plan = Plan::example();
        let shop = &mut plan.services[0];
        shop.min_instances = 2;
        shop.replication = ReplicationKind::None;
        shop.lead_time_secs = 600;
        plan.schedules[0].legs = [(6, "eu-west"), (18, "us-east")]
            .map(|(at_hour_utc, region)| ScheduleLeg {
                at_hour_utc,
                region: region.to_owned(),
            })
            .to_vec();
        plan
    }

    fn planned(plan: Plan) -> OrchestratorState {
        let mut state = OrchestratorState::default();
        state
            .apply_command(1, &Command::ApplyPlan { plan, at_ms: 1 })
            .unwrap();
        state
    }

    fn overview() -> Overview {
        planned(plan()).overview()
    }

    #[test]
    fn a_schedule_leg_is_due_one_lead_time_ahead_and_only_when_it_moves_the_service() {
        let ov = overview();
        let six = 6 * HOUR_MS;
        // Table: (now, due?). Lead time is 10 minutes.
        for (now, due) in [
            (six - 11 * 60_000, false),
            (six - 10 * 60_000, true),
            (six - 1, true),
            (six, true),
        ] {
            let got = due_schedule_requests(&ov, now);
            assert_eq!(got.len(), usize::from(due), "at {now}");
            if due {
                assert_eq!(got[0].to, "eu-west");
                assert_eq!(got[0].cutover_at_ms, six);
                assert_eq!(got[0].schedule_key.as_deref(), Some("sun/21600000"));
            }
        }
        // The 18:00 leg goes back to us-east, where the service already is: nothing to do.
        assert!(due_schedule_requests(&ov, 18 * HOUR_MS - 60_000).is_empty());
    }

    #[test]
    fn dns_follows_the_confirmed_share_and_goes_home_on_rollback() {
        let mut state = planned(plan());
        let ov = state.overview();
        let service = ov.services["shop"].clone();
        let request = due_schedule_requests(&ov, 6 * HOUR_MS - 60_000).remove(0);
        state
            .apply_command(2, &Command::CreateMigration { request, at_ms: 2 })
            .unwrap();
        let mut record = state.overview().migrations.values().next().unwrap().clone();
        // The TTL plan: 300 s old TTL + 60 s margin before the 06:00 cutover.
        let lower_at = 6 * HOUR_MS - 360_000;
        assert_eq!(record.spec.dns_ttl.lower_at_ms, lower_at);
        assert_eq!(
            desired_dns(&record, &service, None, lower_at - 1),
            None,
            "planned, before the lowering time: untouched"
        );
        let lowered = desired_dns(&record, &service, None, lower_at).unwrap();
        assert_eq!(
            (lowered.weights, lowered.ttl_secs),
            (BTreeMap::from([("us-east".to_owned(), 100)]), 5),
            "the same answer, with the low TTL, one old TTL + margin before the cutover"
        );
        let now = 6 * HOUR_MS;
        record.phase = Phase::CuttingOver { step: 1 };
        assert_eq!(
            desired_dns(&record, &service, Some(10), now),
            None,
            "50% not confirmed yet"
        );
        let at_50 = desired_dns(&record, &service, Some(50), now).unwrap();
        assert_eq!(at_50.ttl_secs, 5);
        assert_eq!(
            at_50.weights,
            BTreeMap::from([("us-east".to_owned(), 50), ("eu-west".to_owned(), 50)])
        );
        record.phase = Phase::RollingBack;
        let back = desired_dns(&record, &service, Some(50), now).unwrap();
        assert_eq!(back.weights, BTreeMap::from([("us-east".to_owned(), 100)]));
        record.phase = Phase::Completed;
        let done = desired_dns(&record, &service, None, now).unwrap();
        assert_eq!(done.weights, BTreeMap::from([("eu-west".to_owned(), 100)]));
        assert_eq!(done.ttl_secs, 300);
    }

    fn report(region: &str, instances: &[(&str, InstanceState)]) -> AgentReport {
        AgentReport {
            region: region.to_owned(),
            newest_term: 1,
            instances: instances
                .iter()
                .enumerate()
                .map(|(i, (id, state))| umbra_proto::agent::InstanceReport {
                    id: (*id).to_owned(),
                    state: *state,
                    addr: (*state != InstanceState::Dormant)
                        .then(|| format!("127.0.0.1:{}", 9000 + i)),
                    transitions: Vec::new(),
                    limits: None,
                })
                .collect(),
            warmups: Vec::new(),
            replication: Vec::new(),
            at_unix_ms: 0,
            front: None,
        }
    }

    fn migration(replication: ReplicationKind) -> (Overview, MigrationRecord) {
        let mut plan = plan();
        plan.services[0].replication = replication;
        let mut state = planned(plan);
        let request = due_schedule_requests(&state.overview(), 6 * HOUR_MS - 60_000).remove(0);
        state
            .apply_command(2, &Command::CreateMigration { request, at_ms: 2 })
            .unwrap();
        let overview = state.overview();
        let mut record = overview.migrations.values().next().unwrap().clone();
        record.shadow_instances = 2;
        (overview, record)
    }

    /// This leadership saw the operations in `.0` done, and sent nothing else.
    struct DoneOps(Vec<String>, CommandOutcome);
    impl DoneOps {
        fn of(ops: &[String]) -> Self {
            DoneOps(
                ops.to_vec(),
                CommandOutcome::Done(CommandResult::Instances(Vec::new())),
            )
        }
    }
    impl OpView for DoneOps {
        fn done(&self, op_id: &str) -> Option<&CommandOutcome> {
            self.0.iter().any(|o| o == op_id).then_some(&self.1)
        }
        fn sent(&self, op_id: &str) -> bool {
            self.0.iter().any(|o| o == op_id)
        }
    }

    struct NoOps;
    impl OpView for NoOps {
        fn done(&self, _: &str) -> Option<&CommandOutcome> {
            None
        }
        fn sent(&self, _: &str) -> bool {
            false
        }
    }

    #[test]
    fn shadows_are_provisioned_only_where_missing_and_activated_after_the_provision() {
        let (overview, mut record) = migration(ReplicationKind::None);
        record.phase = Phase::Provisioning;
        let id = record.spec.id.clone();
        let reports = BTreeMap::from([(
            "eu-west".to_owned(),
            report("eu-west", &[(&format!("{id}-1"), InstanceState::Active)]),
        )]);
        let ctx = CommandContext {
            overview: &overview,
            reports: &reports,
            warm_plan: overview.services["shop"].spec.warmup.clone(),
            zero_lag_timeout_ms: 1_000,
            in_phase_ms: 0,
            shadow_keep_ms: 0,
        };
        let got = commands(&record, &Action::EnsureShadow { instances: 2 }, &ctx);
        let provision = format!("{id}/provisioning/0/ensure_shadow/provision");
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].region, "eu-west");
        assert!(matches!(
            got[0].action,
            AgentAction::SetShare { percent: 0, .. }
        ));
        assert_eq!(got[1].op_id, provision);
        assert_eq!(
            got[1].action,
            AgentAction::Provision {
                instances: vec![format!("{id}-2")]
            }
        );
        assert_eq!(got[2].after.as_ref(), Some(&provision));
        // The same action in a later phase keeps the provisioning phase's ids: a new leader or
        // a later phase gets the agent's recorded answer instead of a second provision.
        record.phase = Phase::CuttingOver { step: 1 };
        let later = commands(&record, &Action::EnsureShadow { instances: 2 }, &ctx);
        assert_eq!(later, got);
    }

    #[test]
    fn the_writer_moves_fence_then_zero_lag_then_promote_on_the_first_shadow_only() {
        let (overview, mut record) = migration(ReplicationKind::SampleLogShipping);
        record.phase = Phase::CuttingOver { step: 2 };
        let reports = BTreeMap::new();
        let ctx = CommandContext {
            overview: &overview,
            reports: &reports,
            warm_plan: overview.services["shop"].spec.warmup.clone(),
            zero_lag_timeout_ms: 1_000,
            in_phase_ms: 0,
            shadow_keep_ms: 0,
        };
        let got = commands(&record, &Action::PromoteTarget, &ctx);
        assert_eq!(got.len(), 3, "one writer per region: {got:?}");
        assert!(
            got.iter()
                .all(|c| c.op_id.ends_with(&format!("/{}-1", record.spec.id)))
        );
        for chain in got.chunks(3) {
            assert!(matches!(chain[0].action, AgentAction::FenceSource { .. }));
            assert!(matches!(
                chain[1].action,
                AgentAction::WaitForZeroLag {
                    timeout_ms: 1_000,
                    ..
                }
            ));
            assert!(matches!(chain[2].action, AgentAction::Promote { .. }));
            assert_eq!(chain[0].after, None);
            assert_eq!(chain[1].after.as_ref(), Some(&chain[0].op_id));
            assert_eq!(chain[2].after.as_ref(), Some(&chain[1].op_id));
            assert!(chain[0].op_id.starts_with(&format!(
                "{}/cutting_over/2/promote_target/fence/",
                record.spec.id
            )));
        }
        // Nothing to move for a stateless service.
        let (overview, mut record) = migration(ReplicationKind::None);
        record.phase = Phase::CuttingOver { step: 2 };
        let ctx = CommandContext {
            overview: &overview,
            ..ctx
        };
        assert!(commands(&record, &Action::PromoteTarget, &ctx).is_empty());
        let seen = observe(
            &record,
            &overview.services["shop"],
            &overview,
            &reports,
            &NoOps,
        );
        assert_eq!(
            seen.replication,
            Some(ReplicationObserved {
                lag: 0,
                promoted: true,
                source_fenced: false,
                fence_lifted: false
            }),
            "a stateless target counts as promoted at 100 %"
        );
    }

    #[test]
    fn the_first_shadow_follows_the_source_and_the_others_follow_the_first() {
        let (overview, mut record) = migration(ReplicationKind::SampleLogShipping);
        record.phase = Phase::Replicating;
        let id = record.spec.id.clone();
        let (w, f) = (format!("{id}-1"), format!("{id}-2"));
        let reports = BTreeMap::from([
            (
                "eu-west".to_owned(),
                report(
                    "eu-west",
                    &[(&w, InstanceState::Active), (&f, InstanceState::Active)],
                ),
            ),
            (
                "us-east".to_owned(),
                report("us-east", &[("shop-us-east-1", InstanceState::Active)]),
            ),
        ]);
        let ctx = CommandContext {
            overview: &overview,
            reports: &reports,
            warm_plan: overview.services["shop"].spec.warmup.clone(),
            zero_lag_timeout_ms: 1_000,
            in_phase_ms: 0,
            shadow_keep_ms: 0,
        };
        let sources: Vec<(String, String)> = commands(&record, &Action::EnsureReplication, &ctx)
            .into_iter()
            .map(|c| match c.action {
                AgentAction::StartReplication { instance, source } => (instance, source),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            sources,
            vec![
                (w.clone(), "http://127.0.0.1:9000".to_owned()),
                (f.clone(), "http://127.0.0.1:9000".to_owned()),
            ],
            "the source's writer and the first shadow both listen on 9000 in this fake report"
        );
        // A follower already following the writer where it serves is left alone; the writer's
        // command is asked for once (it is not level-triggered: a repeat after its promotion
        // would undo it).
        let mut following = reports.clone();
        following.get_mut("eu-west").unwrap().replication.push(
            umbra_proto::agent::ReplicationReport {
                instance: f.clone(),
                source: "http://127.0.0.1:9000".into(),
                source_position: 5,
                target_position: 5,
                source_fenced: false,
                promoted: false,
            },
        );
        let ctx_following = CommandContext {
            reports: &following,
            warm_plan: overview.services["shop"].spec.warmup.clone(),
            ..ctx
        };
        let again = commands(&record, &Action::EnsureReplication, &ctx_following);
        assert_eq!(again.len(), 1, "{again:?}");
        assert!(!again[0].observable && again[0].op_id.ends_with(&w));
        // The writer's promotion is what counts: a follower never promotes.
        let mut with_replication = reports.clone();
        let target = with_replication.get_mut("eu-west").unwrap();
        for (instance, promoted) in [(&w, true), (&f, false)] {
            target
                .replication
                .push(umbra_proto::agent::ReplicationReport {
                    instance: instance.clone(),
                    source: String::new(),
                    source_position: 5,
                    target_position: 5,
                    source_fenced: promoted,
                    promoted,
                });
        }
        let seen = observe(
            &record,
            &overview.services["shop"],
            &overview,
            &with_replication,
            &NoOps,
        );
        assert_eq!(
            seen.replication,
            Some(ReplicationObserved {
                lag: 0,
                promoted: true,
                source_fenced: true,
                fence_lifted: false
            })
        );
    }

    #[test]
    fn a_rollback_recorded_before_the_promotion_sees_the_target_writing_until_the_hand_back() {
        let (overview, mut record) = migration(ReplicationKind::SampleLogShipping);
        record.phase = Phase::RollingBack;
        record.promoted = false;
        let id = record.spec.id.clone();
        let (w, f) = (format!("{id}-1"), format!("{id}-2"));
        let home = "shop-us-east-1";
        let writing = |instance: &str, promoted: bool| umbra_proto::agent::ReplicationReport {
            instance: instance.to_owned(),
            source: String::new(),
            source_position: 5,
            target_position: 5,
            source_fenced: true,
            promoted,
        };
        let mut target = report(
            "eu-west",
            &[(&w, InstanceState::Active), (&f, InstanceState::Active)],
        );
        target.replication = vec![writing(&w, true), writing(&f, false)];
        let mut source = report("us-east", &[(home, InstanceState::Active)]);
        let seen = |source: &AgentReport, ops: &dyn OpView| {
            let reports = BTreeMap::from([
                ("eu-west".to_owned(), target.clone()),
                ("us-east".to_owned(), source.clone()),
            ]);
            observe(
                &record,
                &overview.services["shop"],
                &overview,
                &reports,
                ops,
            )
            .replication
            .map(|r| r.promoted)
        };
        assert_eq!(
            seen(&source, &NoOps),
            Some(true),
            "the promotion landed after all"
        );
        // The source's primary reporting itself promoted is not the hand-back: an earlier
        // migration into us-east promoted it, and its replication entry stays.
        source.replication = vec![writing(home, true)];
        assert_eq!(seen(&source, &NoOps), Some(true), "an earlier promotion");
        let handed_back = DoneOps::of(&[hand_back_op(&record, home)]);
        assert_eq!(
            seen(&source, &handed_back),
            Some(false),
            "the source is the writer again, whatever the fenced shadow still reports"
        );
    }

    #[test]
    fn a_rollback_after_the_fence_sees_the_source_fenced_and_asks_the_targets_agent_to_lift_it() {
        let (overview, mut record) = migration(ReplicationKind::SampleLogShipping);
        record.phase = Phase::RollingBack;
        record.promoted = false;
        let id = record.spec.id.clone();
        let (w, f) = (format!("{id}-1"), format!("{id}-2"));
        let home = "shop-us-east-1";
        let fenced = |instance: &str, promoted: bool| umbra_proto::agent::ReplicationReport {
            instance: instance.to_owned(),
            source: String::new(),
            source_position: 5,
            target_position: 5,
            source_fenced: true,
            promoted,
        };
        let mut target = report(
            "eu-west",
            &[(&w, InstanceState::Active), (&f, InstanceState::Active)],
        );
        target.replication = vec![fenced(&w, false), fenced(&f, false)];
        let mut source = report("us-east", &[(home, InstanceState::Active)]);
        let seen = |source: &AgentReport, ops: &dyn OpView| {
            let reports = BTreeMap::from([
                ("eu-west".to_owned(), target.clone()),
                ("us-east".to_owned(), source.clone()),
            ]);
            observe(
                &record,
                &overview.services["shop"],
                &overview,
                &reports,
                ops,
            )
            .replication
        };
        let fenced_not_promoted = Some(ReplicationObserved {
            lag: 0,
            promoted: false,
            source_fenced: true,
            fence_lifted: false,
        });
        assert_eq!(seen(&source, &NoOps), fenced_not_promoted);
        // The source's primary promoted by an earlier migration: still fenced by this one.
        source.replication = vec![fenced(home, true)];
        assert_eq!(seen(&source, &NoOps), fenced_not_promoted);
        // After this rollback's hand-back the source's writer was promoted again: not fenced,
        // whatever the fenced shadow's replication still reports.
        let handed_back = DoneOps::of(&[hand_back_op(&record, home)]);
        assert!(seen(&source, &handed_back).is_some_and(|r| !r.source_fenced && !r.promoted));

        let reports = BTreeMap::from([("eu-west".to_owned(), target.clone())]);
        let ctx = CommandContext {
            overview: &overview,
            reports: &reports,
            warm_plan: overview.services["shop"].spec.warmup.clone(),
            zero_lag_timeout_ms: 1_000,
            in_phase_ms: 0,
            shadow_keep_ms: 0,
        };
        let lift = commands(&record, &Action::UnfenceSource, &ctx);
        assert_eq!(lift.len(), 1, "{lift:?}");
        assert_eq!(
            lift[0].region, "eu-west",
            "the agent that drives the replication"
        );
        assert_eq!(
            lift[0].action,
            AgentAction::UnfenceSource {
                instance: w.clone()
            }
        );
        assert_eq!(
            commands(&record, &Action::UnfenceSource, &ctx),
            lift,
            "the same operation each round"
        );

        // A fence this leadership sent counts before any report shows it (a report is up to a
        // heartbeat old), and the lifting counts once the agent answered it done.
        struct Sent(Vec<String>, BTreeMap<String, CommandOutcome>);
        impl OpView for Sent {
            fn done(&self, op_id: &str) -> Option<&CommandOutcome> {
                self.1.get(op_id)
            }
            fn sent(&self, op_id: &str) -> bool {
                self.0.iter().any(|o| o == op_id)
            }
        }
        target.replication = vec![
            umbra_proto::agent::ReplicationReport {
                source_fenced: false,
                ..fenced(&w, false)
            },
            umbra_proto::agent::ReplicationReport {
                source_fenced: false,
                ..fenced(&f, false)
            },
        ];
        let reports = BTreeMap::from([("eu-west".to_owned(), target.clone())]);
        let last = record.spec.steps_percent.len() - 1;
        let fence = format!("{id}/cutting_over/{last}/promote_target/fence/{w}");
        let mut ops = Sent(vec![fence], BTreeMap::new());
        let seen = |ops: &Sent| {
            observe(
                &record,
                &overview.services["shop"],
                &overview,
                &reports,
                ops,
            )
            .replication
        };
        assert!(seen(&ops).is_some_and(|r| r.source_fenced && !r.fence_lifted));
        let ok = CommandOutcome::Done(CommandResult::Instances(Vec::new()));
        ops.1.insert(lift[0].op_id.clone(), ok);
        assert!(seen(&ops).is_some_and(|r| r.fence_lifted));
    }

    #[test]
    fn a_pool_is_the_latest_completed_migrations_shadow_or_the_home_pool() {
        let mut ov = overview();
        assert_eq!(
            pool_of(&ov, "shop", "us-east", None),
            vec!["shop-us-east-1", "shop-us-east-2"]
        );
        let mut state = planned(plan());
        let request = due_schedule_requests(&ov, 6 * HOUR_MS - 60_000).remove(0);
        state
            .apply_command(2, &Command::CreateMigration { request, at_ms: 2 })
            .unwrap();
        ov = state.overview();
        let record = ov.migrations.values_mut().next().unwrap();
        record.phase = Phase::Completed;
        record.shadow_instances = 3;
        let id = record.spec.id.clone();
        assert_eq!(
            pool_of(&ov, "shop", "eu-west", None),
            vec![format!("{id}-1"), format!("{id}-2"), format!("{id}-3")]
        );
        assert_eq!(
            pool_of(&ov, "shop", "eu-west", Some(&id)),
            vec!["shop-eu-west-1", "shop-eu-west-2"],
            "the pool a migration moved from existed before it"
        );
    }
}
