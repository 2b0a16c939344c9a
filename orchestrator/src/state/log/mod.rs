//! The edge between the replicated state's types and the Raft log schema
//! (`umbra_proto::log`): a command or the whole state becomes the current schema version's
//! plain data to be encoded, and decoded data becomes them again. Nothing else in the
//! orchestrator encodes or decodes a log entry or a snapshot.
//!
//! Every conversion is total and lossless both ways. Each struct is taken apart whole
//! (`let ServiceSpec { name, .. } = ...` with no `..`), so a field added to a state, plan or
//! migration type does not compile here until the schema has a place for it, which is a new
//! schema version (see `umbra_proto::log`). This module must not change a value on its way
//! through: defaults, validation and upgrades of older versions live elsewhere.

use std::collections::BTreeMap;

use umbra_forecast::sizing::Tier;
use umbra_proto::agent::{ReadinessGate, RequestMix, RequestTemplate, WarmupSpec};
use umbra_proto::log::current as schema;

use super::{
    AuditEntry, AuditEvent, CapacityClaim, ClaimKind, ClaimRequest, Command, DnsWeights,
    DrillRecord, DrillReport, DrillService, GameDaySpec, LimitsSpec, MigrationRequest,
    OrchestratorState, Plan, PoolMode, RegionSpec, ReplicationKind, Retention, ScheduleSpec,
    ServiceSpec, ServiceState, plan::ScheduleLeg, retention::MigrationIndex,
};
use crate::migration::{
    DnsTtlPlan, MigrationRecord, MigrationSpec, Phase, PhaseDeadlines, PrometheusSlo, Slo,
    SloJudgement, SloSource,
};

// The schema keeps counts (`usize` here) as u64, and converts them back with `as`: lossless
// only where usize is 64 bits wide, the only targets Umbra is built for.
#[cfg(not(target_pointer_width = "64"))]
compile_error!(
    "umbra-orchestrator keeps counts as u64 in its Raft log schema and supports 64-bit targets only"
);

/// A type of the replicated state and its counterpart in the log schema.
pub(super) trait Logged: Sized {
    /// The schema's type.
    type Log;
    /// This value as the schema holds it.
    fn to_log(&self) -> Self::Log;
    /// The value the schema's `log` holds.
    fn from_log(log: Self::Log) -> Self;
}

impl<T: Logged> Logged for Vec<T> {
    type Log = Vec<T::Log>;
    fn to_log(&self) -> Self::Log {
        self.iter().map(T::to_log).collect()
    }
    fn from_log(log: Self::Log) -> Self {
        log.into_iter().map(T::from_log).collect()
    }
}

impl<T: Logged> Logged for Option<T> {
    type Log = Option<T::Log>;
    fn to_log(&self) -> Self::Log {
        self.as_ref().map(T::to_log)
    }
    fn from_log(log: Self::Log) -> Self {
        log.map(T::from_log)
    }
}

impl<T: Logged> Logged for BTreeMap<String, T> {
    type Log = BTreeMap<String, T::Log>;
    fn to_log(&self) -> Self::Log {
        self.iter().map(|(k, v)| (k.clone(), v.to_log())).collect()
    }
    fn from_log(log: Self::Log) -> Self {
        log.into_iter().map(|(k, v)| (k, T::from_log(v))).collect()
    }
}

impl Logged for Command {
    type Log = schema::Command;
    fn to_log(&self) -> Self::Log {
        use schema::Command as L;
        match self.clone() {
            Command::ApplyPlan { plan, at_ms } => L::ApplyPlan {
                plan: plan.to_log(),
                at_ms,
            },
            Command::CreateMigration { request, at_ms } => L::CreateMigration {
                request: request.to_log(),
                at_ms,
            },
            Command::Transition {
                id,
                from,
                to,
                reason,
                shadow_instances,
                rollback_ms,
                term,
                at_ms,
            } => L::Transition {
                id,
                from: from.to_log(),
                to: to.to_log(),
                reason,
                shadow_instances,
                rollback_ms,
                term,
                at_ms,
            },
            Command::SetPromoted {
                id,
                promoted,
                fence_window_ms,
                term,
                at_ms,
            } => L::SetPromoted {
                id,
                promoted,
                fence_window_ms,
                term,
                at_ms,
            },
            Command::RequestRollback { id, reason, at_ms } => {
                L::RequestRollback { id, reason, at_ms }
            }
            Command::SetDnsWeights {
                service,
                dns,
                reason,
                term,
                at_ms,
            } => L::SetDnsWeights {
                service,
                dns: dns.to_log(),
                reason,
                term,
                at_ms,
            },
            Command::ClaimCapacity { request, at_ms } => L::ClaimCapacity {
                request: request.to_log(),
                at_ms,
            },
            Command::ReleaseCapacity { id, at_ms } => L::ReleaseCapacity { id, at_ms },
            Command::RecordDrill { drill, at_ms } => L::RecordDrill {
                drill: drill.to_log(),
                at_ms,
            },
        }
    }
    fn from_log(log: Self::Log) -> Self {
        use schema::Command as L;
        match log {
            L::ApplyPlan { plan, at_ms } => Command::ApplyPlan {
                plan: Plan::from_log(plan),
                at_ms,
            },
            L::CreateMigration { request, at_ms } => Command::CreateMigration {
                request: MigrationRequest::from_log(request),
                at_ms,
            },
            L::Transition {
                id,
                from,
                to,
                reason,
                shadow_instances,
                rollback_ms,
                term,
                at_ms,
            } => Command::Transition {
                id,
                from: Phase::from_log(from),
                to: Phase::from_log(to),
                reason,
                shadow_instances,
                rollback_ms,
                term,
                at_ms,
            },
            L::SetPromoted {
                id,
                promoted,
                fence_window_ms,
                term,
                at_ms,
            } => Command::SetPromoted {
                id,
                promoted,
                fence_window_ms,
                term,
                at_ms,
            },
            L::RequestRollback { id, reason, at_ms } => {
                Command::RequestRollback { id, reason, at_ms }
            }
            L::SetDnsWeights {
                service,
                dns,
                reason,
                term,
                at_ms,
            } => Command::SetDnsWeights {
                service,
                dns: DnsWeights::from_log(dns),
                reason,
                term,
                at_ms,
            },
            L::ClaimCapacity { request, at_ms } => Command::ClaimCapacity {
                request: ClaimRequest::from_log(request),
                at_ms,
            },
            L::ReleaseCapacity { id, at_ms } => Command::ReleaseCapacity { id, at_ms },
            L::RecordDrill { drill, at_ms } => Command::RecordDrill {
                drill: DrillReport::from_log(drill),
                at_ms,
            },
        }
    }
}

impl Logged for OrchestratorState {
    type Log = schema::Snapshot;
    fn to_log(&self) -> Self::Log {
        let OrchestratorState {
            regions,
            services,
            migrations,
            archive,
            schedules,
            dns,
            fired,
            audit,
            capacity,
            next_migration,
            next_claim,
            highest_term,
            applied_index,
            drills,
            next_drill,
            game_days,
            game_day_verdicts,
            index: _,
            retention: _,
        } = self;
        // The schema keeps current and archived migrations in one map.
        let every_migration = migrations
            .iter()
            .chain(archive.iter().map(|((_, id), record)| (id, record)))
            .map(|(id, record)| (id.clone(), record.to_log()))
            .collect();
        schema::Snapshot {
            regions: regions.to_log(),
            services: services.to_log(),
            migrations: every_migration,
            schedules: schedules.to_log(),
            dns: dns.to_log(),
            fired: fired.clone(),
            audit: audit.iter().map(Logged::to_log).collect(),
            capacity: capacity.to_log(),
            next_migration: *next_migration,
            next_claim: *next_claim,
            highest_term: *highest_term,
            applied_index: *applied_index,
            drills: drills.iter().map(Logged::to_log).collect(),
            next_drill: *next_drill,
            game_days: game_days.to_log(),
            game_day_verdicts: game_day_verdicts.clone(),
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::Snapshot {
            regions,
            services,
            migrations,
            schedules,
            dns,
            fired,
            audit,
            capacity,
            next_migration,
            next_claim,
            highest_term,
            applied_index,
            drills,
            next_drill,
            game_days,
            game_day_verdicts,
        } = log;
        let (index, migrations, archive) =
            MigrationIndex::split(Logged::from_log(migrations), &fired);
        OrchestratorState {
            regions: Logged::from_log(regions),
            services: Logged::from_log(services),
            migrations,
            archive,
            schedules: Logged::from_log(schedules),
            dns: Logged::from_log(dns),
            fired,
            audit: audit.into_iter().map(Logged::from_log).collect(),
            capacity: Logged::from_log(capacity),
            next_migration,
            next_claim,
            highest_term,
            applied_index,
            drills: drills.into_iter().map(Logged::from_log).collect(),
            next_drill,
            game_days: Logged::from_log(game_days),
            game_day_verdicts,
            index,
            retention: Retention::default(),
        }
    }
}

impl Logged for Plan {
    type Log = schema::Plan;
    fn to_log(&self) -> Self::Log {
        let Plan {
            regions,
            services,
            schedules,
            game_days,
        } = self;
        schema::Plan {
            regions: regions.to_log(),
            services: services.to_log(),
            schedules: schedules.to_log(),
            game_days: game_days.to_log(),
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::Plan {
            regions,
            services,
            schedules,
            game_days,
        } = log;
        Plan {
            regions: Logged::from_log(regions),
            services: Logged::from_log(services),
            schedules: Logged::from_log(schedules),
            game_days: Logged::from_log(game_days),
        }
    }
}

impl Logged for RegionSpec {
    type Log = schema::RegionSpec;
    fn to_log(&self) -> Self::Log {
        let RegionSpec {
            name,
            front,
            warm_instance_hour,
            dormant_instance_hour,
            max_instances,
        } = self.clone();
        schema::RegionSpec {
            name,
            front,
            warm_instance_hour,
            dormant_instance_hour,
            max_instances,
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::RegionSpec {
            name,
            front,
            warm_instance_hour,
            dormant_instance_hour,
            max_instances,
        } = log;
        RegionSpec {
            name,
            front,
            warm_instance_hour,
            dormant_instance_hour,
            max_instances,
        }
    }
}

impl Logged for ServiceSpec {
    type Log = schema::ServiceSpec;
    fn to_log(&self) -> Self::Log {
        let ServiceSpec {
            name,
            hostname,
            primary_region,
            capacity_rps_per_instance,
            min_instances,
            max_instances,
            tier,
            dns_ttl_secs,
            cutover_ttl_secs,
            dns_margin_secs,
            steps_percent,
            analysis_window_secs,
            lead_time_secs,
            slo,
            warmup,
            replication,
            max_replication_lag,
            pools,
            instance_limits,
        } = self.clone();
        schema::ServiceSpec {
            name,
            hostname,
            primary_region,
            capacity_rps_per_instance,
            min_instances,
            max_instances,
            tier: tier.to_log(),
            dns_ttl_secs,
            cutover_ttl_secs,
            dns_margin_secs,
            steps_percent,
            analysis_window_secs,
            lead_time_secs,
            slo: slo.to_log(),
            warmup: warmup.to_log(),
            replication: replication.to_log(),
            max_replication_lag,
            pools: pools.to_log(),
            instance_limits: instance_limits.to_log(),
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::ServiceSpec {
            name,
            hostname,
            primary_region,
            capacity_rps_per_instance,
            min_instances,
            max_instances,
            tier,
            dns_ttl_secs,
            cutover_ttl_secs,
            dns_margin_secs,
            steps_percent,
            analysis_window_secs,
            lead_time_secs,
            slo,
            warmup,
            replication,
            max_replication_lag,
            pools,
            instance_limits,
        } = log;
        ServiceSpec {
            name,
            hostname,
            primary_region,
            capacity_rps_per_instance,
            min_instances,
            max_instances,
            tier: Tier::from_log(tier),
            dns_ttl_secs,
            cutover_ttl_secs,
            dns_margin_secs,
            steps_percent,
            analysis_window_secs,
            lead_time_secs,
            slo: Slo::from_log(slo),
            warmup: WarmupSpec::from_log(warmup),
            replication: ReplicationKind::from_log(replication),
            max_replication_lag,
            pools: PoolMode::from_log(pools),
            instance_limits: Logged::from_log(instance_limits),
        }
    }
}

impl Logged for Tier {
    type Log = schema::Tier;
    fn to_log(&self) -> Self::Log {
        match *self {
            Tier::Guaranteed { quantile } => schema::Tier::Guaranteed { quantile },
            Tier::Probabilistic {
                cost_miss,
                cost_idle,
            } => schema::Tier::Probabilistic {
                cost_miss,
                cost_idle,
            },
            Tier::OnDemand => schema::Tier::OnDemand,
        }
    }
    fn from_log(log: Self::Log) -> Self {
        match log {
            schema::Tier::Guaranteed { quantile } => Tier::Guaranteed { quantile },
            schema::Tier::Probabilistic {
                cost_miss,
                cost_idle,
            } => Tier::Probabilistic {
                cost_miss,
                cost_idle,
            },
            schema::Tier::OnDemand => Tier::OnDemand,
        }
    }
}

impl Logged for Slo {
    type Log = schema::Slo;
    fn to_log(&self) -> Self::Log {
        let Slo {
            max_error_rate,
            max_p99_ms,
            min_samples,
            source,
            judgement,
        } = self;
        schema::Slo {
            max_error_rate: *max_error_rate,
            max_p99_ms: *max_p99_ms,
            min_samples: *min_samples,
            source: source.to_log(),
            judgement: judgement.to_log(),
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::Slo {
            max_error_rate,
            max_p99_ms,
            min_samples,
            source,
            judgement,
        } = log;
        Slo {
            max_error_rate,
            max_p99_ms,
            min_samples,
            source: SloSource::from_log(source),
            judgement: SloJudgement::from_log(judgement),
        }
    }
}

impl Logged for SloSource {
    type Log = schema::SloSource;
    fn to_log(&self) -> Self::Log {
        match self {
            SloSource::Fronts => schema::SloSource::Fronts,
            SloSource::Prometheus(PrometheusSlo {
                url,
                error_ratio_query,
                latency_p99_query,
            }) => schema::SloSource::Prometheus(schema::PrometheusSlo {
                url: url.clone(),
                error_ratio_query: error_ratio_query.clone(),
                latency_p99_query: latency_p99_query.clone(),
            }),
        }
    }
    fn from_log(log: Self::Log) -> Self {
        match log {
            schema::SloSource::Fronts => SloSource::Fronts,
            schema::SloSource::Prometheus(schema::PrometheusSlo {
                url,
                error_ratio_query,
                latency_p99_query,
            }) => SloSource::Prometheus(PrometheusSlo {
                url,
                error_ratio_query,
                latency_p99_query,
            }),
        }
    }
}

/// A fieldless enum and its schema twin, variant for variant.
macro_rules! logged_unit_enum {
    ($ours:ident => $log:ident { $($variant:ident),+ $(,)? }) => {
        impl Logged for $ours {
            type Log = schema::$log;
            fn to_log(&self) -> Self::Log {
                match self {
                    $($ours::$variant => schema::$log::$variant,)+
                }
            }
            fn from_log(log: Self::Log) -> Self {
                match log {
                    $(schema::$log::$variant => $ours::$variant,)+
                }
            }
        }
    };
}

logged_unit_enum!(SloJudgement => SloJudgement { Thresholds, Compare });
logged_unit_enum!(ReplicationKind => ReplicationKind { None, SampleLogShipping });
logged_unit_enum!(PoolMode => PoolMode { Predictive, Reactive });
logged_unit_enum!(ClaimKind => ClaimKind { Request, Reservation });

impl Logged for WarmupSpec {
    type Log = schema::WarmupSpec;
    fn to_log(&self) -> Self::Log {
        let WarmupSpec {
            mix:
                RequestMix {
                    requests,
                    key_count,
                    zipf_exponent,
                    rate_per_sec,
                    max_duration_ms,
                },
            gate:
                ReadinessGate {
                    reference_p99_ms,
                    p99_tolerance_pct,
                    max_error_rate,
                    min_requests,
                },
            allow_writes,
        } = self.clone();
        schema::WarmupSpec {
            mix: schema::RequestMix {
                requests: requests
                    .into_iter()
                    .map(
                        |RequestTemplate {
                             method,
                             path,
                             weight,
                         }| schema::RequestTemplate {
                            method,
                            path,
                            weight,
                        },
                    )
                    .collect(),
                key_count,
                zipf_exponent,
                rate_per_sec,
                max_duration_ms,
            },
            gate: schema::ReadinessGate {
                reference_p99_ms,
                p99_tolerance_pct,
                max_error_rate,
                min_requests,
            },
            allow_writes,
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::WarmupSpec {
            mix:
                schema::RequestMix {
                    requests,
                    key_count,
                    zipf_exponent,
                    rate_per_sec,
                    max_duration_ms,
                },
            gate:
                schema::ReadinessGate {
                    reference_p99_ms,
                    p99_tolerance_pct,
                    max_error_rate,
                    min_requests,
                },
            allow_writes,
        } = log;
        WarmupSpec {
            mix: RequestMix {
                requests: requests
                    .into_iter()
                    .map(
                        |schema::RequestTemplate {
                             method,
                             path,
                             weight,
                         }| RequestTemplate {
                            method,
                            path,
                            weight,
                        },
                    )
                    .collect(),
                key_count,
                zipf_exponent,
                rate_per_sec,
                max_duration_ms,
            },
            gate: ReadinessGate {
                reference_p99_ms,
                p99_tolerance_pct,
                max_error_rate,
                min_requests,
            },
            allow_writes,
        }
    }
}

impl Logged for LimitsSpec {
    type Log = schema::LimitsSpec;
    fn to_log(&self) -> Self::Log {
        let LimitsSpec {
            min_cpu_millis,
            max_cpu_millis,
            min_memory_mib,
            max_memory_mib,
        } = *self;
        schema::LimitsSpec {
            min_cpu_millis,
            max_cpu_millis,
            min_memory_mib,
            max_memory_mib,
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::LimitsSpec {
            min_cpu_millis,
            max_cpu_millis,
            min_memory_mib,
            max_memory_mib,
        } = log;
        LimitsSpec {
            min_cpu_millis,
            max_cpu_millis,
            min_memory_mib,
            max_memory_mib,
        }
    }
}

impl Logged for ScheduleSpec {
    type Log = schema::ScheduleSpec;
    fn to_log(&self) -> Self::Log {
        let ScheduleSpec {
            name,
            service,
            legs,
        } = self.clone();
        schema::ScheduleSpec {
            name,
            service,
            legs: legs
                .into_iter()
                .map(
                    |ScheduleLeg {
                         at_hour_utc,
                         region,
                     }| schema::ScheduleLeg {
                        at_hour_utc,
                        region,
                    },
                )
                .collect(),
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::ScheduleSpec {
            name,
            service,
            legs,
        } = log;
        ScheduleSpec {
            name,
            service,
            legs: legs
                .into_iter()
                .map(
                    |schema::ScheduleLeg {
                         at_hour_utc,
                         region,
                     }| ScheduleLeg {
                        at_hour_utc,
                        region,
                    },
                )
                .collect(),
        }
    }
}

impl Logged for MigrationRequest {
    type Log = schema::MigrationRequest;
    fn to_log(&self) -> Self::Log {
        let MigrationRequest {
            service,
            from,
            to,
            cutover_at_ms,
            warm_up,
            lead_time_ms,
            analysis_window_ms,
            drain_ms,
            schedule_key,
        } = self.clone();
        schema::MigrationRequest {
            service,
            from,
            to,
            cutover_at_ms,
            warm_up,
            lead_time_ms,
            analysis_window_ms,
            drain_ms,
            schedule_key,
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::MigrationRequest {
            service,
            from,
            to,
            cutover_at_ms,
            warm_up,
            lead_time_ms,
            analysis_window_ms,
            drain_ms,
            schedule_key,
        } = log;
        MigrationRequest {
            service,
            from,
            to,
            cutover_at_ms,
            warm_up,
            lead_time_ms,
            analysis_window_ms,
            drain_ms,
            schedule_key,
        }
    }
}

impl Logged for Phase {
    type Log = schema::Phase;
    fn to_log(&self) -> Self::Log {
        use schema::Phase as L;
        match *self {
            Phase::Planned => L::Planned,
            Phase::Provisioning => L::Provisioning,
            Phase::Warming => L::Warming,
            Phase::Replicating => L::Replicating,
            Phase::Ready => L::Ready,
            Phase::CuttingOver { step } => L::CuttingOver { step: step as u64 },
            Phase::Draining => L::Draining,
            Phase::Completed => L::Completed,
            Phase::RollingBack => L::RollingBack,
            Phase::RolledBack => L::RolledBack,
            Phase::Failed => L::Failed,
        }
    }
    fn from_log(log: Self::Log) -> Self {
        use schema::Phase as L;
        match log {
            L::Planned => Phase::Planned,
            L::Provisioning => Phase::Provisioning,
            L::Warming => Phase::Warming,
            L::Replicating => Phase::Replicating,
            L::Ready => Phase::Ready,
            L::CuttingOver { step } => Phase::CuttingOver {
                step: step as usize,
            },
            L::Draining => Phase::Draining,
            L::Completed => Phase::Completed,
            L::RollingBack => Phase::RollingBack,
            L::RolledBack => Phase::RolledBack,
            L::Failed => Phase::Failed,
        }
    }
}

impl Logged for DnsWeights {
    type Log = schema::DnsWeights;
    fn to_log(&self) -> Self::Log {
        let DnsWeights { weights, ttl_secs } = self.clone();
        schema::DnsWeights { weights, ttl_secs }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::DnsWeights { weights, ttl_secs } = log;
        DnsWeights { weights, ttl_secs }
    }
}

impl Logged for ClaimRequest {
    type Log = schema::ClaimRequest;
    fn to_log(&self) -> Self::Log {
        let ClaimRequest {
            service,
            region,
            instances,
            start_ms,
            end_ms,
        } = self.clone();
        schema::ClaimRequest {
            service,
            region,
            instances,
            start_ms,
            end_ms,
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::ClaimRequest {
            service,
            region,
            instances,
            start_ms,
            end_ms,
        } = log;
        ClaimRequest {
            service,
            region,
            instances,
            start_ms,
            end_ms,
        }
    }
}

impl Logged for ServiceState {
    type Log = schema::ServiceState;
    fn to_log(&self) -> Self::Log {
        let ServiceState {
            spec,
            primary_region,
            active_migration,
        } = self;
        schema::ServiceState {
            spec: spec.to_log(),
            primary_region: primary_region.clone(),
            active_migration: active_migration.clone(),
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::ServiceState {
            spec,
            primary_region,
            active_migration,
        } = log;
        ServiceState {
            spec: ServiceSpec::from_log(spec),
            primary_region,
            active_migration,
        }
    }
}

impl Logged for MigrationRecord {
    type Log = schema::MigrationRecord;
    fn to_log(&self) -> Self::Log {
        let MigrationRecord {
            spec,
            phase,
            phase_since_ms,
            shadow_instances,
            promoted,
            ttl_lowered_at_ms,
        } = self;
        schema::MigrationRecord {
            spec: spec.to_log(),
            phase: phase.to_log(),
            phase_since_ms: *phase_since_ms,
            shadow_instances: *shadow_instances,
            promoted: *promoted,
            ttl_lowered_at_ms: *ttl_lowered_at_ms,
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::MigrationRecord {
            spec,
            phase,
            phase_since_ms,
            shadow_instances,
            promoted,
            ttl_lowered_at_ms,
        } = log;
        MigrationRecord {
            spec: MigrationSpec::from_log(spec),
            phase: Phase::from_log(phase),
            phase_since_ms,
            shadow_instances,
            promoted,
            ttl_lowered_at_ms,
        }
    }
}

impl Logged for MigrationSpec {
    type Log = schema::MigrationSpec;
    fn to_log(&self) -> Self::Log {
        let MigrationSpec {
            id,
            service,
            from,
            to,
            cutover_at_ms,
            lead_time_ms,
            steps_percent,
            analysis_window_ms,
            drain_ms,
            dns_ttl,
            warm_up,
            max_replication_lag,
            slo,
            deadlines,
        } = self.clone();
        let DnsTtlPlan {
            old_ttl_secs,
            low_ttl_secs,
            margin_secs,
            lower_at_ms,
        } = dns_ttl;
        let PhaseDeadlines {
            provisioning_ms,
            warming_ms,
            replicating_ms,
            rolling_back_ms,
        } = deadlines;
        schema::MigrationSpec {
            id,
            service,
            from,
            to,
            cutover_at_ms,
            lead_time_ms,
            steps_percent,
            analysis_window_ms,
            drain_ms,
            dns_ttl: schema::DnsTtlPlan {
                old_ttl_secs,
                low_ttl_secs,
                margin_secs,
                lower_at_ms,
            },
            warm_up,
            max_replication_lag,
            slo: slo.to_log(),
            deadlines: schema::PhaseDeadlines {
                provisioning_ms,
                warming_ms,
                replicating_ms,
                rolling_back_ms,
            },
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::MigrationSpec {
            id,
            service,
            from,
            to,
            cutover_at_ms,
            lead_time_ms,
            steps_percent,
            analysis_window_ms,
            drain_ms,
            dns_ttl:
                schema::DnsTtlPlan {
                    old_ttl_secs,
                    low_ttl_secs,
                    margin_secs,
                    lower_at_ms,
                },
            warm_up,
            max_replication_lag,
            slo,
            deadlines:
                schema::PhaseDeadlines {
                    provisioning_ms,
                    warming_ms,
                    replicating_ms,
                    rolling_back_ms,
                },
        } = log;
        MigrationSpec {
            id,
            service,
            from,
            to,
            cutover_at_ms,
            lead_time_ms,
            steps_percent,
            analysis_window_ms,
            drain_ms,
            dns_ttl: DnsTtlPlan {
                old_ttl_secs,
                low_ttl_secs,
                margin_secs,
                lower_at_ms,
            },
            warm_up,
            max_replication_lag,
            slo: Slo::from_log(slo),
            deadlines: PhaseDeadlines {
                provisioning_ms,
                warming_ms,
                replicating_ms,
                rolling_back_ms,
            },
        }
    }
}

impl Logged for AuditEntry {
    type Log = schema::AuditEntry;
    fn to_log(&self) -> Self::Log {
        let AuditEntry {
            index,
            at_ms,
            term,
            subject,
            event,
            reason,
        } = self;
        schema::AuditEntry {
            index: *index,
            at_ms: *at_ms,
            term: *term,
            subject: subject.clone(),
            event: event.to_log(),
            reason: reason.clone(),
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::AuditEntry {
            index,
            at_ms,
            term,
            subject,
            event,
            reason,
        } = log;
        AuditEntry {
            index,
            at_ms,
            term,
            subject,
            event: AuditEvent::from_log(event),
            reason,
        }
    }
}

impl Logged for AuditEvent {
    type Log = schema::AuditEvent;
    fn to_log(&self) -> Self::Log {
        use schema::AuditEvent as L;
        match self.clone() {
            AuditEvent::PlanApplied {
                regions,
                services,
                schedules,
            } => L::PlanApplied {
                regions: regions as u64,
                services: services as u64,
                schedules: schedules as u64,
            },
            AuditEvent::MigrationCreated {
                service,
                from,
                to,
                cutover_at_ms,
            } => L::MigrationCreated {
                service,
                from,
                to,
                cutover_at_ms,
            },
            AuditEvent::Transition {
                from,
                to,
                shadow_instances,
                rollback_ms,
            } => L::Transition {
                from: from.to_log(),
                to: to.to_log(),
                shadow_instances,
                rollback_ms,
            },
            AuditEvent::WriterMoved {
                to_target,
                fence_window_ms,
            } => L::WriterMoved {
                to_target,
                fence_window_ms,
            },
            AuditEvent::DnsWeights { weights, ttl_secs } => L::DnsWeights { weights, ttl_secs },
            AuditEvent::CapacityClaimed {
                service,
                region,
                instances,
                start_ms,
                end_ms,
            } => L::CapacityClaimed {
                service,
                region,
                instances,
                start_ms,
                end_ms,
            },
            AuditEvent::CapacityReleased {
                service,
                region,
                instances,
            } => L::CapacityReleased {
                service,
                region,
                instances,
            },
        }
    }
    fn from_log(log: Self::Log) -> Self {
        use schema::AuditEvent as L;
        match log {
            L::PlanApplied {
                regions,
                services,
                schedules,
            } => AuditEvent::PlanApplied {
                regions: regions as usize,
                services: services as usize,
                schedules: schedules as usize,
            },
            L::MigrationCreated {
                service,
                from,
                to,
                cutover_at_ms,
            } => AuditEvent::MigrationCreated {
                service,
                from,
                to,
                cutover_at_ms,
            },
            L::Transition {
                from,
                to,
                shadow_instances,
                rollback_ms,
            } => AuditEvent::Transition {
                from: Phase::from_log(from),
                to: Phase::from_log(to),
                shadow_instances,
                rollback_ms,
            },
            L::WriterMoved {
                to_target,
                fence_window_ms,
            } => AuditEvent::WriterMoved {
                to_target,
                fence_window_ms,
            },
            L::DnsWeights { weights, ttl_secs } => AuditEvent::DnsWeights { weights, ttl_secs },
            L::CapacityClaimed {
                service,
                region,
                instances,
                start_ms,
                end_ms,
            } => AuditEvent::CapacityClaimed {
                service,
                region,
                instances,
                start_ms,
                end_ms,
            },
            L::CapacityReleased {
                service,
                region,
                instances,
            } => AuditEvent::CapacityReleased {
                service,
                region,
                instances,
            },
        }
    }
}

impl Logged for CapacityClaim {
    type Log = schema::CapacityClaim;
    fn to_log(&self) -> Self::Log {
        let CapacityClaim {
            id,
            service,
            region,
            instances,
            kind,
            start_ms,
            end_ms,
            created_ms,
        } = self.clone();
        schema::CapacityClaim {
            id,
            service,
            region,
            instances,
            kind: kind.to_log(),
            start_ms,
            end_ms,
            created_ms,
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::CapacityClaim {
            id,
            service,
            region,
            instances,
            kind,
            start_ms,
            end_ms,
            created_ms,
        } = log;
        CapacityClaim {
            id,
            service,
            region,
            instances,
            kind: ClaimKind::from_log(kind),
            start_ms,
            end_ms,
            created_ms,
        }
    }
}

impl Logged for DrillReport {
    type Log = schema::DrillReport;
    fn to_log(&self) -> Self::Log {
        let DrillReport {
            drill,
            region,
            passed,
            reasons,
            started_ms,
            ended_ms,
            evacuate_ms,
            services,
            requests,
            failed_requests,
            max_failed_ratio,
            max_p99_ms,
            p99_ms_max,
            stopped,
            rollbacks,
            faults_fired,
            faults_planned,
            seed,
            game_day,
        } = self.clone();
        schema::DrillReport {
            drill,
            region,
            passed,
            reasons,
            started_ms,
            ended_ms,
            evacuate_ms,
            services: services.to_log(),
            requests,
            failed_requests,
            max_failed_ratio,
            max_p99_ms,
            p99_ms_max,
            stopped,
            rollbacks,
            faults_fired,
            faults_planned,
            seed,
            game_day,
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::DrillReport {
            drill,
            region,
            passed,
            reasons,
            started_ms,
            ended_ms,
            evacuate_ms,
            services,
            requests,
            failed_requests,
            max_failed_ratio,
            max_p99_ms,
            p99_ms_max,
            stopped,
            rollbacks,
            faults_fired,
            faults_planned,
            seed,
            game_day,
        } = log;
        DrillReport {
            drill,
            region,
            passed,
            reasons,
            started_ms,
            ended_ms,
            evacuate_ms,
            services: Logged::from_log(services),
            requests,
            failed_requests,
            max_failed_ratio,
            max_p99_ms,
            p99_ms_max,
            stopped,
            rollbacks,
            faults_fired,
            faults_planned,
            seed,
            game_day,
        }
    }
}

impl Logged for DrillService {
    type Log = schema::DrillService;
    fn to_log(&self) -> Self::Log {
        let DrillService {
            service,
            to,
            migration,
            outcome,
        } = self.clone();
        schema::DrillService {
            service,
            to,
            migration,
            outcome,
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::DrillService {
            service,
            to,
            migration,
            outcome,
        } = log;
        DrillService {
            service,
            to,
            migration,
            outcome,
        }
    }
}

impl Logged for DrillRecord {
    type Log = schema::DrillRecord;
    fn to_log(&self) -> Self::Log {
        let DrillRecord {
            id,
            index,
            recorded_ms,
            report,
        } = self;
        schema::DrillRecord {
            id: id.clone(),
            index: *index,
            recorded_ms: *recorded_ms,
            report: report.to_log(),
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::DrillRecord {
            id,
            index,
            recorded_ms,
            report,
        } = log;
        DrillRecord {
            id,
            index,
            recorded_ms,
            report: DrillReport::from_log(report),
        }
    }
}

impl Logged for GameDaySpec {
    type Log = schema::GameDaySpec;
    fn to_log(&self) -> Self::Log {
        let GameDaySpec {
            name,
            drill,
            region,
            to,
            at_ms,
        } = self.clone();
        schema::GameDaySpec {
            name,
            drill,
            region,
            to,
            at_ms,
        }
    }
    fn from_log(log: Self::Log) -> Self {
        let schema::GameDaySpec {
            name,
            drill,
            region,
            to,
            at_ms,
        } = log;
        GameDaySpec {
            name,
            drill,
            region,
            to,
            at_ms,
        }
    }
}

#[cfg(test)]
mod tests;
