//! The operator API's answer shapes: one JSON shape per resource, converted from the
//! replicated state's types. A migration looks the same in `GET /v1/status`, in the CLI's
//! `migrate --json` and `rollback --json`; a claim the same in `GET /v1/capacity` and `umbra
//! capacity --json`. Every instant a person reads is an RFC 3339 UTC string with millisecond
//! precision ([`Timestamp`]) in a field without a unit suffix (`phase_since`, `cutover_at`);
//! durations stay numbers with their unit in the name (`rollback_ms`, `ttl_secs`).
//!
//! This module must not decide anything: it only reshapes what `state`, `migration` and the
//! executor's pools say. The state's own types keep their encoding (the Raft log and
//! snapshots depend on it); they are never sent to an operator as they are.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::capacity::{ClaimFulfilment, ClaimMember, MemberWas, PoolView, SliceTarget};
use crate::migration::{MigrationRecord, Observations, Phase, Readiness, progress};
use crate::state::{
    Applied, AuditEntry, AuditEvent, CapacityClaim, ClaimKind, DnsWeights, DrillRecord,
    DrillReport, DrillService, GameDayRun, MigrationRequest, Overview, RegionSpec, ScheduleSpec,
    ServiceState,
};
use crate::store::LeaderInfo;

/// An instant, sent as an RFC 3339 UTC string with millisecond precision
/// (`2026-12-01T09:00:00.000Z`) and read from any RFC 3339 time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// The instant `ms` milliseconds after the Unix epoch (the state's encoding); past
    /// chrono's range it is the last instant chrono can show.
    pub fn from_unix_ms(ms: u64) -> Self {
        let at = i64::try_from(ms)
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        Self(at)
    }

    /// Milliseconds after the Unix epoch (0 for an instant before it).
    pub fn unix_ms(self) -> u64 {
        u64::try_from(self.0.timestamp_millis()).unwrap_or(0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| Self(t.with_timezone(&Utc)))
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{text:?} is not an RFC 3339 time ({e}), e.g. 2026-12-01T09:00:00Z"
                ))
            })
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some(
                "An instant, RFC 3339 in UTC with milliseconds, e.g. 2026-12-01T09:00:00.000Z",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

/// A migration, as every answer and `--json` output shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigrationStatus {
    /// Its id.
    pub id: String,
    /// The service it moves.
    pub service: String,
    /// Source region.
    pub from: String,
    /// Target region.
    pub to: String,
    /// Where it is, e.g. `cutting_over[1]`.
    pub phase: String,
    /// Since when it is in that phase.
    pub phase_since: Timestamp,
    /// Nothing more will happen to it.
    pub terminal: bool,
    /// Share of traffic (percent) the target should carry in this phase.
    pub target_share_percent: u8,
    /// The cutover steps, percent of traffic in the target at each.
    pub steps_percent: Vec<u8>,
    /// Lifecycle stages finished.
    pub stages_done: u64,
    /// Lifecycle stages in all: planned, provisioning, warming, replicating, ready, one per
    /// cutover step, draining, completed.
    pub stages_total: u64,
    /// When the traffic should be in the target.
    pub cutover_at: Timestamp,
    /// Shadow pool size.
    pub shadow_instances: u32,
    /// Whether the target is the single writer.
    pub promoted: bool,
    /// Readiness of the target before cutover, when this node's executor observed it.
    pub readiness: Option<Readiness>,
    /// The DNS TTL plan: when the record's TTL goes down and whether that is late.
    pub dns_ttl: DnsTtlStatus,
}

/// The answer to `GET /v1/migrations/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigrationAnswer {
    /// The migration.
    pub migration: MigrationStatus,
    /// It is finished and in the archive: `GET /v1/status` no longer lists it, and it leaves
    /// the archive once enough newer ones finish.
    pub archived: bool,
}

/// Default page of `GET /v1/migrations`.
pub const DEFAULT_MIGRATION_PAGE: usize = 100;
/// Largest page of `GET /v1/migrations`: a thousand records is about a megabyte of JSON,
/// the same bound as an audit page.
pub const MAX_MIGRATION_PAGE: usize = 1_000;

/// A migration's DNS TTL plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DnsTtlStatus {
    /// TTL outside migrations, seconds.
    pub old_ttl_secs: u32,
    /// TTL during the cutover, seconds (equal to the old one: never lowered).
    pub low_ttl_secs: u32,
    /// When the TTL plan lowers it.
    pub lower_at: Timestamp,
    /// When the low TTL was first published, once it was.
    pub lowered_at: Option<Timestamp>,
    /// From when every cache holds the low TTL (as planned until it was published).
    pub low_ttl_everywhere_at: Timestamp,
    /// That time is after the cutover starts: steps before it take up to the old TTL to reach
    /// every client.
    pub late: bool,
}

impl MigrationStatus {
    /// The status of `record`, with the readiness computed from `seen` when given.
    pub fn of(record: &MigrationRecord, seen: Option<&Observations>) -> Self {
        let (stages_done, stages_total) = progress(record);
        let spec = &record.spec;
        let plan = &spec.dns_ttl;
        let lowered = record.ttl_lowered_at_ms;
        Self {
            id: spec.id.clone(),
            service: spec.service.clone(),
            from: spec.from.clone(),
            to: spec.to.clone(),
            phase: record.phase.to_string(),
            phase_since: Timestamp::from_unix_ms(record.phase_since_ms),
            terminal: record.phase.is_terminal(),
            target_share_percent: spec.target_share(record.phase),
            steps_percent: spec.steps_percent.clone(),
            stages_done,
            stages_total,
            cutover_at: Timestamp::from_unix_ms(spec.cutover_at_ms),
            shadow_instances: record.shadow_instances,
            promoted: record.promoted,
            readiness: seen.map(|seen| crate::migration::readiness(record, seen)),
            dns_ttl: DnsTtlStatus {
                old_ttl_secs: plan.old_ttl_secs,
                low_ttl_secs: plan.low_ttl_secs,
                lower_at: Timestamp::from_unix_ms(plan.lower_at_ms),
                lowered_at: lowered.map(Timestamp::from_unix_ms),
                low_ttl_everywhere_at: Timestamp::from_unix_ms(
                    plan.low_ttl_everywhere_at_ms(lowered.unwrap_or(plan.lower_at_ms)),
                ),
                late: plan.lowers() && plan.late(lowered, spec.cutover_at_ms),
            },
        }
    }
}

/// The body of `POST /v1/migrations`: what to move, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationBody {
    /// The service to move.
    pub service: String,
    /// Expected source region (leave out: wherever the service is now).
    #[serde(default)]
    pub from: Option<String>,
    /// Target region.
    pub to: String,
    /// Start of the slice the traffic should be in the target for (at most 5 minutes ago).
    pub cutover_at: Timestamp,
    /// Warm the shadow pool (off only to show the cold baseline).
    #[serde(default = "warm_by_default")]
    pub warm_up: bool,
    /// Override the service's lead time, milliseconds (at most a day).
    #[serde(default)]
    #[schema(maximum = 86_400_000)]
    pub lead_time_ms: Option<u64>,
    /// Override the service's analysis window, milliseconds (at most a day).
    #[serde(default)]
    #[schema(maximum = 86_400_000)]
    pub analysis_window_ms: Option<u64>,
    /// Override the drain time, milliseconds (default: the service's DNS TTL plus 10 %; at
    /// most a day).
    #[serde(default)]
    #[schema(maximum = 86_400_000)]
    pub drain_ms: Option<u64>,
}

/// Longest duration a migration request may override (lead time, analysis window, drain):
/// a day. Longer is a typo (seconds given as milliseconds times a thousand), and unbounded
/// durations would overflow the executor's time arithmetic.
pub const MAX_MIGRATION_OVERRIDE_MS: u64 = 86_400_000;

impl MigrationBody {
    /// The first override past [`MAX_MIGRATION_OVERRIDE_MS`], by name.
    pub(super) fn too_long(&self) -> Option<(&'static str, u64)> {
        [
            ("lead_time_ms", self.lead_time_ms),
            ("analysis_window_ms", self.analysis_window_ms),
            ("drain_ms", self.drain_ms),
        ]
        .into_iter()
        .find_map(|(name, ms)| {
            ms.filter(|&ms| ms > MAX_MIGRATION_OVERRIDE_MS)
                .map(|ms| (name, ms))
        })
    }
}

fn warm_by_default() -> bool {
    true
}

impl From<&MigrationRequest> for MigrationBody {
    fn from(request: &MigrationRequest) -> Self {
        Self {
            service: request.service.clone(),
            from: request.from.clone(),
            to: request.to.clone(),
            cutover_at: Timestamp::from_unix_ms(request.cutover_at_ms),
            warm_up: request.warm_up,
            lead_time_ms: request.lead_time_ms,
            analysis_window_ms: request.analysis_window_ms,
            drain_ms: request.drain_ms,
        }
    }
}

impl From<MigrationBody> for MigrationRequest {
    fn from(body: MigrationBody) -> Self {
        Self {
            from: body.from,
            warm_up: body.warm_up,
            lead_time_ms: body.lead_time_ms,
            analysis_window_ms: body.analysis_window_ms,
            drain_ms: body.drain_ms,
            ..MigrationRequest::new(&body.service, &body.to, body.cutover_at.unix_ms())
        }
    }
}

/// What a write did, the answer of every `POST` and `DELETE`: the resource it created or
/// changed, named by `resource`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "resource", rename_all = "snake_case")]
pub enum Written {
    /// A plan was applied: how many regions, services and schedules it created or updated.
    Plan {
        /// Regions created or updated.
        regions: usize,
        /// Services created or updated.
        services: usize,
        /// Schedules created or updated.
        schedules: usize,
    },
    /// A migration was created or asked to roll back.
    Migration {
        /// Its id.
        id: String,
    },
    /// A capacity claim was made or released.
    Capacity {
        /// Its id.
        id: String,
    },
    /// A drill's verdict was recorded.
    Drill {
        /// Its id, `drill-N`.
        id: String,
    },
}

impl Written {
    /// The answer for a write that `applied`, where `subject` names the resource a command
    /// without an id of its own (a rollback, a release) acted on; `None` when the two do not
    /// fit (a bug, or a version skew between orchestrators).
    pub(super) fn of(applied: Applied, subject: Subject) -> Option<Self> {
        Some(match (applied, subject) {
            (
                Applied::Plan {
                    regions,
                    services,
                    schedules,
                },
                _,
            ) => Written::Plan {
                regions,
                services,
                schedules,
            },
            (Applied::Migration { id }, _) | (Applied::Done, Subject::Migration(id)) => {
                Written::Migration { id }
            }
            (Applied::Capacity { id }, _) | (Applied::Done, Subject::Capacity(id)) => {
                Written::Capacity { id }
            }
            (Applied::Drill { id }, _) => Written::Drill { id },
            (Applied::Done, Subject::InAnswer) => return None,
        })
    }
}

/// The resource a write acts on, when the state's answer does not name it.
#[derive(Debug, Clone)]
pub(super) enum Subject {
    /// The answer names it (a plan, a new migration or claim).
    InAnswer,
    /// The migration in the path.
    Migration(String),
    /// The capacity claim in the path.
    Capacity(String),
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntryView {
    /// Raft log index of the command.
    pub index: u64,
    /// When (the proposer's clock).
    pub at: Timestamp,
    /// Raft term of the proposing leader (0 for operator commands).
    pub term: u64,
    /// What it is about: a migration id, a service, a claim id, or `plan`.
    pub subject: String,
    /// What happened.
    pub event: AuditEventView,
    /// What happened, in one line a person reads.
    pub summary: String,
    /// Why.
    pub reason: String,
}

/// What an audit entry records, by kind (`{"transition": {...}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditEventView {
    /// A plan created or updated this many regions, services and schedules.
    PlanApplied {
        /// Regions in the plan.
        regions: usize,
        /// Services in the plan.
        services: usize,
        /// Schedules in the plan.
        schedules: usize,
    },
    /// A migration was created.
    MigrationCreated {
        /// The service it moves.
        service: String,
        /// Source region.
        from: String,
        /// Target region.
        to: String,
        /// When the traffic should be in the target.
        cutover_at: Timestamp,
    },
    /// A migration changed phase.
    Transition {
        /// The phase it left, as `phase` in a migration.
        from: String,
        /// The phase it entered.
        to: String,
        /// The shadow pool's size, set when provisioning starts.
        shadow_instances: Option<u32>,
        /// Entering `rolled_back`: from the breach detected to share 0 confirmed, ms.
        rollback_ms: Option<u64>,
    },
    /// The single writer moved.
    WriterMoved {
        /// `true`: to the target; `false`: back to the source.
        to_target: bool,
        /// From the source's fence to the promotion confirmed, ms, when one leader did both.
        fence_window_ms: Option<u64>,
    },
    /// A service's DNS record got new weights.
    DnsWeights {
        /// Weight per region.
        weights: BTreeMap<String, u32>,
        /// The record's TTL, seconds.
        ttl_secs: u32,
    },
    /// Serving capacity was claimed.
    CapacityClaimed {
        /// The service.
        service: String,
        /// The region.
        region: String,
        /// Serving instances held.
        instances: u32,
        /// Window start.
        start: Timestamp,
        /// Window end.
        end: Timestamp,
    },
    /// A claim was given back.
    CapacityReleased {
        /// The service.
        service: String,
        /// The region.
        region: String,
        /// Serving instances it held.
        instances: u32,
    },
}

impl From<&AuditEntry> for AuditEntryView {
    fn from(entry: &AuditEntry) -> Self {
        let event = match entry.event.clone() {
            AuditEvent::PlanApplied {
                regions,
                services,
                schedules,
            } => AuditEventView::PlanApplied {
                regions,
                services,
                schedules,
            },
            AuditEvent::MigrationCreated {
                service,
                from,
                to,
                cutover_at_ms,
            } => AuditEventView::MigrationCreated {
                service,
                from,
                to,
                cutover_at: Timestamp::from_unix_ms(cutover_at_ms),
            },
            AuditEvent::Transition {
                from,
                to,
                shadow_instances,
                rollback_ms,
            } => AuditEventView::Transition {
                from: from.to_string(),
                to: to.to_string(),
                shadow_instances,
                rollback_ms,
            },
            AuditEvent::WriterMoved {
                to_target,
                fence_window_ms,
            } => AuditEventView::WriterMoved {
                to_target,
                fence_window_ms,
            },
            AuditEvent::DnsWeights { weights, ttl_secs } => {
                AuditEventView::DnsWeights { weights, ttl_secs }
            }
            AuditEvent::CapacityClaimed {
                service,
                region,
                instances,
                start_ms,
                end_ms,
            } => AuditEventView::CapacityClaimed {
                service,
                region,
                instances,
                start: Timestamp::from_unix_ms(start_ms),
                end: Timestamp::from_unix_ms(end_ms),
            },
            AuditEvent::CapacityReleased {
                service,
                region,
                instances,
            } => AuditEventView::CapacityReleased {
                service,
                region,
                instances,
            },
        };
        Self {
            index: entry.index,
            at: Timestamp::from_unix_ms(entry.at_ms),
            term: entry.term,
            subject: entry.subject.clone(),
            event,
            summary: entry.event.to_string(),
            reason: entry.reason.clone(),
        }
    }
}

/// A phase from its name as a migration's `phase` shows it (`cutting_over[1]`).
fn parse_phase(text: &str) -> Option<Phase> {
    if let Some(step) = text
        .strip_prefix("cutting_over[")
        .and_then(|rest| rest.strip_suffix(']'))
    {
        return step.parse().ok().map(|step| Phase::CuttingOver { step });
    }
    [
        Phase::Planned,
        Phase::Provisioning,
        Phase::Warming,
        Phase::Replicating,
        Phase::Ready,
        Phase::Draining,
        Phase::Completed,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Failed,
    ]
    .into_iter()
    .find(|phase| phase.name() == text)
}

impl TryFrom<AuditEntryView> for AuditEntry {
    type Error = String;

    /// The typed entry back, for the tests and the demo, which match on events.
    fn try_from(view: AuditEntryView) -> Result<Self, String> {
        let phase = |text: &str| parse_phase(text).ok_or_else(|| format!("no phase {text:?}"));
        let event = match view.event {
            AuditEventView::PlanApplied {
                regions,
                services,
                schedules,
            } => AuditEvent::PlanApplied {
                regions,
                services,
                schedules,
            },
            AuditEventView::MigrationCreated {
                service,
                from,
                to,
                cutover_at,
            } => AuditEvent::MigrationCreated {
                service,
                from,
                to,
                cutover_at_ms: cutover_at.unix_ms(),
            },
            AuditEventView::Transition {
                from,
                to,
                shadow_instances,
                rollback_ms,
            } => AuditEvent::Transition {
                from: phase(&from)?,
                to: phase(&to)?,
                shadow_instances,
                rollback_ms,
            },
            AuditEventView::WriterMoved {
                to_target,
                fence_window_ms,
            } => AuditEvent::WriterMoved {
                to_target,
                fence_window_ms,
            },
            AuditEventView::DnsWeights { weights, ttl_secs } => {
                AuditEvent::DnsWeights { weights, ttl_secs }
            }
            AuditEventView::CapacityClaimed {
                service,
                region,
                instances,
                start,
                end,
            } => AuditEvent::CapacityClaimed {
                service,
                region,
                instances,
                start_ms: start.unix_ms(),
                end_ms: end.unix_ms(),
            },
            AuditEventView::CapacityReleased {
                service,
                region,
                instances,
            } => AuditEvent::CapacityReleased {
                service,
                region,
                instances,
            },
        };
        Ok(AuditEntry {
            index: view.index,
            at_ms: view.at.unix_ms(),
            term: view.term,
            subject: view.subject,
            event,
            reason: view.reason,
        })
    }
}

/// The regions, services, schedules and DNS weights the cluster holds. Migrations are in
/// `migrations` beside it, capacity claims in `GET /v1/capacity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OverviewView {
    /// Regions by name.
    pub regions: BTreeMap<String, RegionSpec>,
    /// Services by name.
    pub services: BTreeMap<String, ServiceState>,
    /// Schedules by name.
    pub schedules: BTreeMap<String, ScheduleSpec>,
    /// DNS weights by service.
    pub dns: BTreeMap<String, DnsWeights>,
    /// Game days (drills the plan schedules), by time.
    pub game_days: Vec<GameDayView>,
    /// Index of the last applied command.
    pub applied_index: u64,
}

impl From<Overview> for OverviewView {
    fn from(overview: Overview) -> Self {
        let mut game_days: Vec<GameDayView> = overview
            .game_days
            .into_values()
            .map(GameDayView::from)
            .collect();
        game_days.sort_by(|a, b| (a.at, &a.name).cmp(&(b.at, &b.name)));
        Self {
            regions: overview.regions,
            services: overview.services,
            schedules: overview.schedules,
            dns: overview.dns,
            game_days,
            applied_index: overview.applied_index,
        }
    }
}

/// A game day: a drill the plan schedules, which the leader runs at `at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GameDayView {
    /// Its name.
    pub name: String,
    /// The drill: `evacuate`.
    pub drill: String,
    /// The region it acts on.
    pub region: String,
    /// Where the services go (absent: each to the least busy other region).
    pub to: Option<String>,
    /// When it starts.
    pub at: Timestamp,
    /// `scheduled`, `running` (it created a migration) or `done` (its verdict is recorded).
    pub state: String,
    /// The drill its verdict was recorded as (`GET /v1/drills`).
    pub verdict: Option<String>,
    /// The migrations it created: each service's move out and, after a failure, back.
    pub migrations: Vec<String>,
}

impl From<GameDayRun> for GameDayView {
    fn from(run: GameDayRun) -> Self {
        let state = match (&run.verdict, run.moves.is_empty()) {
            (Some(_), _) => "done",
            (None, false) => "running",
            (None, true) => "scheduled",
        };
        Self {
            migrations: run
                .moves
                .iter()
                .flat_map(|m| {
                    std::iter::once(m.out.id.clone()).chain(m.back.as_ref().map(|b| b.id.clone()))
                })
                .collect(),
            name: run.spec.name,
            drill: run.spec.drill,
            region: run.spec.region,
            to: run.spec.to,
            at: Timestamp::from_unix_ms(run.spec.at_ms),
            state: state.to_owned(),
            verdict: run.verdict,
        }
    }
}

/// Warm and dormant instances: a pool's target or what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolSize {
    /// Instances serving (or ready to).
    pub warm: u32,
    /// Instances created but not started.
    pub dormant: u32,
}

impl From<umbra_forecast::sizing::PoolTarget> for PoolSize {
    fn from(target: umbra_forecast::sizing::PoolTarget) -> Self {
        Self {
            warm: target.warm,
            dormant: target.dormant,
        }
    }
}

/// The pool target of one forecast slice, and the demand it was sized for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SliceView {
    /// Start of the slice.
    pub start: Timestamp,
    /// Forecast mean demand, requests per second.
    pub mean: f64,
    /// The tier's quantile of demand the pool holds, requests per second (0 for on-demand).
    pub quantile: f64,
    /// Warm and dormant instances for it, within the service's limits.
    pub target: PoolSize,
}

impl From<SliceTarget> for SliceView {
    fn from(slice: SliceTarget) -> Self {
        Self {
            start: Timestamp::from_unix_ms(slice.start_ms),
            mean: slice.mean,
            quantile: slice.quantile,
            target: slice.target.into(),
        }
    }
}

/// A service's serving pool: what it should hold and holds, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolStatus {
    /// The service.
    pub service: String,
    /// The region.
    pub region: String,
    /// The instance id prefix (the generation).
    pub prefix: String,
    /// The target in force (after lead times and hysteresis).
    pub target: PoolSize,
    /// What the region's agent reports: serving and dormant instances of the pool.
    pub actual: PoolSize,
    /// The slice now, from the forecast (none without usable history).
    pub slice: Option<SliceView>,
    /// The model the forecast came from, or why there is none.
    pub forecast: String,
    /// The forecast's coming slices, from now's.
    pub upcoming: Vec<SliceView>,
    /// The capacity claims in force (or about to be) and how the pool met each.
    pub claims: Vec<FulfilmentView>,
}

impl From<PoolView> for PoolStatus {
    fn from(pool: PoolView) -> Self {
        Self {
            service: pool.service,
            region: pool.region,
            prefix: pool.prefix,
            target: pool.target.into(),
            actual: pool.actual.into(),
            slice: pool.slice.map(SliceView::from),
            forecast: pool.forecast,
            upcoming: pool.upcoming.into_iter().map(SliceView::from).collect(),
            claims: pool.claims.into_iter().map(FulfilmentView::from).collect(),
        }
    }
}

/// How a pool met one capacity claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FulfilmentView {
    /// The claim's id.
    pub claim: String,
    /// Start of its window.
    pub start: Timestamp,
    /// When the leader started to hold it.
    pub effective: Timestamp,
    /// Whether every member serves.
    pub fulfilled: bool,
    /// The instances that hold it, in pool order.
    pub members: Vec<MemberView>,
}

impl From<ClaimFulfilment> for FulfilmentView {
    fn from(fulfilment: ClaimFulfilment) -> Self {
        let start_ms = fulfilment.start_ms;
        Self {
            fulfilled: fulfilment.fulfilled(),
            claim: fulfilment.claim,
            start: Timestamp::from_unix_ms(start_ms),
            effective: Timestamp::from_unix_ms(fulfilment.effective_ms),
            members: fulfilment
                .members
                .into_iter()
                .map(|member| MemberView::of(member, start_ms))
                .collect(),
        }
    }
}

/// One instance holding a claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    /// The instance.
    pub instance: String,
    /// What it was when the claim took effect.
    pub was: MemberWas,
    /// When a report first showed it serving (absent: not yet).
    pub serving_at: Option<Timestamp>,
    /// From the window's start to serving, ms: 0 when it served by then.
    pub ready_after_ms: Option<u64>,
}

impl MemberView {
    fn of(member: ClaimMember, start_ms: u64) -> Self {
        Self {
            ready_after_ms: member.ready_after_ms(start_ms),
            instance: member.instance,
            was: member.was,
            serving_at: member.serving_at_ms.map(Timestamp::from_unix_ms),
        }
    }
}

/// One capacity claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClaimStatus {
    /// `cap-{n}`, in the order claims were made.
    pub id: String,
    /// The service.
    pub service: String,
    /// Its serving region when claimed.
    pub region: String,
    /// Serving instances held.
    pub instances: u32,
    /// `request` (from when it applied) or `reservation` (a window given in advance).
    pub kind: ClaimKind,
    /// Window start.
    pub start: Timestamp,
    /// Window end (exclusive).
    pub end: Timestamp,
    /// When it was made.
    pub created: Timestamp,
    /// How the pool met it, as the leader's executor saw it (absent before it takes effect,
    /// or on a node that does not lead).
    pub fulfilment: Option<FulfilmentView>,
}

impl ClaimStatus {
    /// The claim as replicated, with how `pools` met it.
    pub fn of(claim: CapacityClaim, pools: &[PoolView]) -> Self {
        let fulfilment = pools
            .iter()
            .flat_map(|p| &p.claims)
            .find(|f| f.claim == claim.id)
            .cloned()
            .map(FulfilmentView::from);
        Self {
            id: claim.id,
            service: claim.service,
            region: claim.region,
            instances: claim.instances,
            kind: claim.kind,
            start: Timestamp::from_unix_ms(claim.start_ms),
            end: Timestamp::from_unix_ms(claim.end_ms),
            created: Timestamp::from_unix_ms(claim.created_ms),
            fulfilment,
        }
    }
}

/// The answer of `GET /v1/capacity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CapacityReport {
    /// Who leads (fulfilment and pools come from the leader's executor only).
    pub leader: LeaderInfo,
    /// The claims in force or ahead, in the order they were made.
    pub claims: Vec<ClaimStatus>,
    /// Each service's serving pool.
    pub pools: Vec<PoolStatus>,
}

/// The answer of `GET /v1/forecast?service=S&region=R`: the demand forecast the leader holds
/// for a serving pool, slice by slice from now's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ForecastReport {
    /// The service.
    pub service: String,
    /// The region.
    pub region: String,
    /// The model, or why there is no forecast.
    pub model: String,
    /// The coming slices.
    pub slices: Vec<SliceView>,
}

/// The answer of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always true when the API answers.
    pub ok: bool,
    /// Who leads.
    pub leader: LeaderInfo,
}

/// A drill's verdict: the body of `POST /v1/drills` (what `umbra drill` sends when it ends)
/// and the `report` of a recorded drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillBody {
    /// The drill: `evacuate`.
    pub drill: String,
    /// The region it acted on (a declared region).
    pub region: String,
    /// `pass` or `fail`.
    pub verdict: DrillVerdict,
    /// Why it failed (empty on a pass, at least one on a fail).
    #[serde(default)]
    pub reasons: Vec<String>,
    /// When it started.
    pub started: Timestamp,
    /// When it ended (not before `started`).
    pub ended: Timestamp,
    /// From the start until every service was out of the region, ms.
    #[serde(default)]
    pub evacuate_ms: Option<u64>,
    /// Each service's outcome, in the drill's order.
    pub services: Vec<DrillServiceView>,
    /// Requests the region fronts served during the drill.
    pub requests: u64,
    /// Of which failed (at most `requests`).
    pub failed_requests: u64,
    /// The error budget it judged against, a share from 0 to 1.
    pub max_failed_ratio: f64,
    /// The p99 bound it judged each window against, ms (above 0).
    pub max_p99_ms: f64,
    /// The highest window p99 it saw, ms.
    #[serde(default)]
    pub p99_ms_max: Option<f64>,
    /// The stop condition that tripped, in words.
    #[serde(default)]
    pub stopped: Option<String>,
    /// Rollbacks it asked for.
    pub rollbacks: u64,
    /// Faults of its plan that fired (at most `faults_planned`).
    pub faults_fired: u64,
    /// Faults in its plan.
    pub faults_planned: u64,
    /// The seed of a generated fault plan (`umbra chaos plan --seed S` prints it again).
    #[serde(default)]
    pub seed: Option<u64>,
}

/// Whether a drill passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DrillVerdict {
    /// Every service moved out, within the budget, nothing left running.
    Pass,
    /// Anything else; `reasons` says what.
    Fail,
}

/// One service of a drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillServiceView {
    /// The service.
    pub service: String,
    /// The region it was moved to.
    pub to: String,
    /// The migration that moved it (absent when the drill stopped before it).
    #[serde(default)]
    pub migration: Option<String>,
    /// `completed`, `rolled_back`, `failed`, `moved_back`, `error` or `not_started`.
    pub outcome: String,
}

impl From<DrillBody> for DrillReport {
    fn from(body: DrillBody) -> Self {
        Self {
            drill: body.drill,
            region: body.region,
            passed: body.verdict == DrillVerdict::Pass,
            reasons: body.reasons,
            started_ms: body.started.unix_ms(),
            ended_ms: body.ended.unix_ms(),
            evacuate_ms: body.evacuate_ms,
            services: body
                .services
                .into_iter()
                .map(|s| DrillService {
                    service: s.service,
                    to: s.to,
                    migration: s.migration,
                    outcome: s.outcome,
                })
                .collect(),
            requests: body.requests,
            failed_requests: body.failed_requests,
            max_failed_ratio: body.max_failed_ratio,
            max_p99_ms: body.max_p99_ms,
            p99_ms_max: body.p99_ms_max,
            stopped: body.stopped,
            rollbacks: body.rollbacks,
            faults_fired: body.faults_fired,
            faults_planned: body.faults_planned,
            seed: body.seed,
            // Only the leader runs game days; an operator's report is a drill of their own.
            game_day: None,
        }
    }
}

impl From<DrillReport> for DrillBody {
    fn from(report: DrillReport) -> Self {
        Self {
            drill: report.drill,
            region: report.region,
            verdict: if report.passed {
                DrillVerdict::Pass
            } else {
                DrillVerdict::Fail
            },
            reasons: report.reasons,
            started: Timestamp::from_unix_ms(report.started_ms),
            ended: Timestamp::from_unix_ms(report.ended_ms),
            evacuate_ms: report.evacuate_ms,
            services: report
                .services
                .into_iter()
                .map(|s| DrillServiceView {
                    service: s.service,
                    to: s.to,
                    migration: s.migration,
                    outcome: s.outcome,
                })
                .collect(),
            requests: report.requests,
            failed_requests: report.failed_requests,
            max_failed_ratio: report.max_failed_ratio,
            max_p99_ms: report.max_p99_ms,
            p99_ms_max: report.p99_ms_max,
            stopped: report.stopped,
            rollbacks: report.rollbacks,
            faults_fired: report.faults_fired,
            faults_planned: report.faults_planned,
            seed: report.seed,
        }
    }
}

/// A recorded drill, as `GET /v1/drills` and `GET /v1/status` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DrillView {
    /// `drill-N`, in the order drills were recorded.
    pub id: String,
    /// Raft log index of the command that recorded it.
    pub index: u64,
    /// When it was recorded.
    pub recorded: Timestamp,
    /// The game day the leader ran it for (absent for a drill an operator ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub game_day: Option<String>,
    /// The verdict, as the drill reported it.
    pub report: DrillBody,
}

impl From<DrillRecord> for DrillView {
    fn from(record: DrillRecord) -> Self {
        Self {
            id: record.id,
            index: record.index,
            recorded: Timestamp::from_unix_ms(record.recorded_ms),
            game_day: record.report.game_day.clone(),
            report: DrillBody::from(record.report),
        }
    }
}

/// The answer of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatusReport {
    /// Who leads.
    pub leader: LeaderInfo,
    /// Regions, services, schedules and DNS weights.
    pub overview: OverviewView,
    /// Every migration, newest first.
    pub migrations: Vec<MigrationStatus>,
    /// The most recent audit entries, oldest first.
    pub recent_audit: Vec<AuditEntryView>,
    /// Each service's serving pool: target and what its region holds (from the leader's
    /// executor; empty on a node that does not lead).
    pub pools: Vec<PoolStatus>,
    /// The most recently recorded drills, newest first.
    pub drills: Vec<DrillView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_rfc3339_utc_with_milliseconds_and_read_back() {
        let at = Timestamp::from_unix_ms(1_764_579_600_123);
        let json = serde_json::to_string(&at).unwrap();
        assert_eq!(json, "\"2025-12-01T09:00:00.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), at);
        let offset: Timestamp = serde_json::from_str("\"2025-12-01T10:00:00.123+01:00\"").unwrap();
        assert_eq!(offset.unix_ms(), 1_764_579_600_123);
        let whole = Timestamp::from_unix_ms(0).to_string();
        assert_eq!(whole, "1970-01-01T00:00:00.000Z");
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
    }

    #[test]
    fn every_phase_reads_back_from_its_name() {
        for phase in [
            Phase::Planned,
            Phase::Provisioning,
            Phase::Warming,
            Phase::Replicating,
            Phase::Ready,
            Phase::CuttingOver { step: 2 },
            Phase::Draining,
            Phase::Completed,
            Phase::RollingBack,
            Phase::RolledBack,
            Phase::Failed,
        ] {
            assert_eq!(parse_phase(&phase.to_string()), Some(phase));
        }
        assert_eq!(parse_phase("cutting_over[x]"), None);
    }

    #[test]
    fn an_audit_entry_goes_out_with_rfc3339_times_and_comes_back_the_same() {
        let entry = AuditEntry {
            index: 7,
            at_ms: 1_000,
            term: 2,
            subject: "shop-1".to_owned(),
            event: AuditEvent::Transition {
                from: Phase::CuttingOver { step: 1 },
                to: Phase::RollingBack,
                shadow_instances: None,
                rollback_ms: Some(40),
            },
            reason: "slo".to_owned(),
        };
        let view = AuditEntryView::from(&entry);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["at"], "1970-01-01T00:00:01.000Z");
        assert_eq!(json["event"]["transition"]["from"], "cutting_over[1]");
        assert_eq!(json["summary"], "cutting_over[1] → rolling_back");
        assert!(json.get("at_ms").is_none());
        assert_eq!(AuditEntry::try_from(view), Ok(entry));
    }
}
