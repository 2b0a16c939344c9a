//! The conversions between the state's types and the log schema are lossless both ways, and
//! the schema encodes every value exactly as the state's own serde types did before the
//! schema existed (so every entry an earlier build wrote decodes as version 1). Values are
//! generated on the schema's side, floats of every kind included, and compared as encoded
//! bytes so that NaN compares equal to itself.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde::Serialize;
use umbra_proto::log::current as schema;

use super::Logged;
use crate::migration::MigrationRecord;
use crate::state::{
    AuditEntry, CapacityClaim, Command, DrillRecord, OrchestratorState, ServiceState,
};

fn bytes<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encodes")
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9{}/-]{0,6}"
}

fn float() -> impl Strategy<Value = f64> {
    any::<f64>()
}

fn phase() -> impl Strategy<Value = schema::Phase> {
    use schema::Phase::*;
    prop_oneof![
        Just(Planned),
        Just(Provisioning),
        Just(Warming),
        Just(Replicating),
        Just(Ready),
        any::<u64>().prop_map(|step| CuttingOver { step }),
        Just(Draining),
        Just(Completed),
        Just(RollingBack),
        Just(RolledBack),
        Just(Failed),
    ]
}

fn slo() -> impl Strategy<Value = schema::Slo> {
    let source = prop_oneof![
        Just(schema::SloSource::Fronts),
        (text(), text(), text()).prop_map(|(url, error_ratio_query, latency_p99_query)| {
            schema::SloSource::Prometheus(schema::PrometheusSlo {
                url,
                error_ratio_query,
                latency_p99_query,
            })
        }),
    ];
    let judgement = prop_oneof![
        Just(schema::SloJudgement::Thresholds),
        Just(schema::SloJudgement::Compare)
    ];
    (float(), float(), any::<u64>(), source, judgement).prop_map(
        |(max_error_rate, max_p99_ms, min_samples, source, judgement)| schema::Slo {
            max_error_rate,
            max_p99_ms,
            min_samples,
            source,
            judgement,
        },
    )
}

fn warmup() -> impl Strategy<Value = schema::WarmupSpec> {
    let template =
        (text(), text(), float()).prop_map(|(method, path, weight)| schema::RequestTemplate {
            method,
            path,
            weight,
        });
    let mix = (
        vec(template, 0..3),
        any::<u64>(),
        float(),
        float(),
        any::<u64>(),
    )
        .prop_map(
            |(requests, key_count, zipf_exponent, rate_per_sec, max_duration_ms)| {
                schema::RequestMix {
                    requests,
                    key_count,
                    zipf_exponent,
                    rate_per_sec,
                    max_duration_ms,
                }
            },
        );
    let gate = (float(), float(), float(), any::<u64>()).prop_map(
        |(reference_p99_ms, p99_tolerance_pct, max_error_rate, min_requests)| {
            schema::ReadinessGate {
                reference_p99_ms,
                p99_tolerance_pct,
                max_error_rate,
                min_requests,
            }
        },
    );
    (mix, gate, any::<bool>()).prop_map(|(mix, gate, allow_writes)| schema::WarmupSpec {
        mix,
        gate,
        allow_writes,
    })
}

fn service() -> impl Strategy<Value = schema::ServiceSpec> {
    let tier = prop_oneof![
        float().prop_map(|quantile| schema::Tier::Guaranteed { quantile }),
        (float(), float()).prop_map(|(cost_miss, cost_idle)| schema::Tier::Probabilistic {
            cost_miss,
            cost_idle
        }),
        Just(schema::Tier::OnDemand),
    ];
    let limits = (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
        |(min_cpu_millis, max_cpu_millis, min_memory_mib, max_memory_mib)| schema::LimitsSpec {
            min_cpu_millis,
            max_cpu_millis,
            min_memory_mib,
            max_memory_mib,
        },
    );
    let names = (
        text(),
        text(),
        text(),
        float(),
        any::<u32>(),
        any::<u32>(),
        tier,
    );
    let dns = (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        vec(any::<u8>(), 0..4),
        any::<u64>(),
        any::<u64>(),
    );
    let rest = (
        slo(),
        warmup(),
        prop_oneof![
            Just(schema::ReplicationKind::None),
            Just(schema::ReplicationKind::SampleLogShipping)
        ],
        any::<u64>(),
        prop_oneof![
            Just(schema::PoolMode::Predictive),
            Just(schema::PoolMode::Reactive)
        ],
        proptest::option::of(limits),
    );
    (names, dns, rest).prop_map(
        |(
            (
                name,
                hostname,
                primary_region,
                capacity_rps_per_instance,
                min_instances,
                max_instances,
                tier,
            ),
            (
                dns_ttl_secs,
                cutover_ttl_secs,
                dns_margin_secs,
                steps_percent,
                analysis_window_secs,
                lead_time_secs,
            ),
            (slo, warmup, replication, max_replication_lag, pools, instance_limits),
        )| schema::ServiceSpec {
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
        },
    )
}

fn plan() -> impl Strategy<Value = schema::Plan> {
    let region = (text(), text(), float(), float(), any::<Option<u32>>()).prop_map(
        |(name, front, warm_instance_hour, dormant_instance_hour, max_instances)| {
            schema::RegionSpec {
                name,
                front,
                warm_instance_hour,
                dormant_instance_hour,
                max_instances,
            }
        },
    );
    let leg = (any::<u8>(), text()).prop_map(|(at_hour_utc, region)| schema::ScheduleLeg {
        at_hour_utc,
        region,
    });
    let schedule =
        (text(), text(), vec(leg, 0..3)).prop_map(|(name, service, legs)| schema::ScheduleSpec {
            name,
            service,
            legs,
        });
    (
        vec(region, 0..3),
        vec(service(), 0..2),
        vec(schedule, 0..2),
        vec(game_day(), 0..2),
    )
        .prop_map(|(regions, services, schedules, game_days)| schema::Plan {
            regions,
            services,
            schedules,
            game_days,
        })
}

fn game_day() -> impl Strategy<Value = schema::GameDaySpec> {
    (
        text(),
        text(),
        text(),
        proptest::option::of(text()),
        any::<u64>(),
    )
        .prop_map(|(name, drill, region, to, at_ms)| schema::GameDaySpec {
            name,
            drill,
            region,
            to,
            at_ms,
        })
}

fn opt_u64() -> impl Strategy<Value = Option<u64>> {
    any::<Option<u64>>()
}

fn weights() -> impl Strategy<Value = std::collections::BTreeMap<String, u32>> {
    btree_map(text(), any::<u32>(), 0..3)
}

fn command() -> impl Strategy<Value = schema::Command> {
    use schema::Command as C;
    let request = (
        text(),
        proptest::option::of(text()),
        text(),
        any::<u64>(),
        any::<bool>(),
        opt_u64(),
        opt_u64(),
        opt_u64(),
        proptest::option::of(text()),
    )
        .prop_map(
            |(
                service,
                from,
                to,
                cutover_at_ms,
                warm_up,
                lead_time_ms,
                analysis_window_ms,
                drain_ms,
                schedule_key,
            )| schema::MigrationRequest {
                service,
                from,
                to,
                cutover_at_ms,
                warm_up,
                lead_time_ms,
                analysis_window_ms,
                drain_ms,
                schedule_key,
            },
        );
    let claim = (text(), text(), any::<u32>(), opt_u64(), opt_u64()).prop_map(
        |(service, region, instances, start_ms, end_ms)| schema::ClaimRequest {
            service,
            region,
            instances,
            start_ms,
            end_ms,
        },
    );
    let t = any::<u64>;
    prop_oneof![
        (plan(), t()).prop_map(|(plan, at_ms)| C::ApplyPlan { plan, at_ms }),
        (request, t()).prop_map(|(request, at_ms)| C::CreateMigration { request, at_ms }),
        (
            text(),
            phase(),
            phase(),
            text(),
            any::<Option<u32>>(),
            opt_u64(),
            t(),
            t()
        )
            .prop_map(
                |(id, from, to, reason, shadow_instances, rollback_ms, term, at_ms)| {
                    C::Transition {
                        id,
                        from,
                        to,
                        reason,
                        shadow_instances,
                        rollback_ms,
                        term,
                        at_ms,
                    }
                }
            ),
        (text(), any::<bool>(), opt_u64(), t(), t()).prop_map(
            |(id, promoted, fence_window_ms, term, at_ms)| C::SetPromoted {
                id,
                promoted,
                fence_window_ms,
                term,
                at_ms,
            }
        ),
        (text(), text(), t()).prop_map(|(id, reason, at_ms)| C::RequestRollback {
            id,
            reason,
            at_ms
        }),
        (text(), weights(), any::<u32>(), text(), t(), t()).prop_map(
            |(service, weights, ttl_secs, reason, term, at_ms)| C::SetDnsWeights {
                service,
                dns: schema::DnsWeights { weights, ttl_secs },
                reason,
                term,
                at_ms,
            }
        ),
        (claim, t()).prop_map(|(request, at_ms)| C::ClaimCapacity { request, at_ms }),
        (text(), t()).prop_map(|(id, at_ms)| C::ReleaseCapacity { id, at_ms }),
        (drill_report(), t()).prop_map(|(drill, at_ms)| C::RecordDrill { drill, at_ms }),
    ]
}

fn drill_report() -> impl Strategy<Value = schema::DrillReport> {
    let service = (text(), text(), proptest::option::of(text()), text()).prop_map(
        |(service, to, migration, outcome)| schema::DrillService {
            service,
            to,
            migration,
            outcome,
        },
    );
    let words = (
        text(),
        text(),
        any::<bool>(),
        vec(text(), 0..3),
        vec(service, 0..3),
        proptest::option::of(text()),
    );
    let figures = (
        (
            any::<u64>(),
            any::<u64>(),
            opt_u64(),
            any::<u64>(),
            any::<u64>(),
        ),
        (float(), float(), proptest::option::of(float())),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            opt_u64(),
            proptest::option::of(text()),
        ),
    );
    (words, figures).prop_map(
        |(
            (drill, region, passed, reasons, services, stopped),
            (
                (started_ms, ended_ms, evacuate_ms, requests, failed_requests),
                (max_failed_ratio, max_p99_ms, p99_ms_max),
                (rollbacks, faults_fired, faults_planned, seed, game_day),
            ),
        )| schema::DrillReport {
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
        },
    )
}

fn drill_record() -> impl Strategy<Value = schema::DrillRecord> {
    (text(), any::<u64>(), any::<u64>(), drill_report()).prop_map(
        |(id, index, recorded_ms, report)| schema::DrillRecord {
            id,
            index,
            recorded_ms,
            report,
        },
    )
}

fn migration() -> impl Strategy<Value = schema::MigrationRecord> {
    let ids = (text(), text(), text(), text(), any::<u64>(), any::<u64>());
    let rules = (
        vec(any::<u8>(), 0..4),
        any::<u64>(),
        opt_u64(),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>()),
        any::<bool>(),
        any::<u64>(),
        slo(),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
    );
    let spec = (ids, rules).prop_map(
        |(
            (id, service, from, to, cutover_at_ms, lead_time_ms),
            (
                steps_percent,
                analysis_window_ms,
                drain_ms,
                (old_ttl_secs, low_ttl_secs, margin_secs, lower_at_ms),
                warm_up,
                max_replication_lag,
                slo,
                (provisioning_ms, warming_ms, replicating_ms, rolling_back_ms),
            ),
        )| schema::MigrationSpec {
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
            slo,
            deadlines: schema::PhaseDeadlines {
                provisioning_ms,
                warming_ms,
                replicating_ms,
                rolling_back_ms,
            },
        },
    );
    (
        spec,
        phase(),
        any::<u64>(),
        any::<u32>(),
        any::<bool>(),
        opt_u64(),
    )
        .prop_map(
            |(spec, phase, phase_since_ms, shadow_instances, promoted, ttl_lowered_at_ms)| {
                schema::MigrationRecord {
                    spec,
                    phase,
                    phase_since_ms,
                    shadow_instances,
                    promoted,
                    ttl_lowered_at_ms,
                }
            },
        )
}

fn audit_entry() -> impl Strategy<Value = schema::AuditEntry> {
    use schema::AuditEvent as E;
    let t = any::<u64>;
    let event = prop_oneof![
        (t(), t(), t()).prop_map(|(regions, services, schedules)| E::PlanApplied {
            regions,
            services,
            schedules
        }),
        (text(), text(), text(), t()).prop_map(|(service, from, to, cutover_at_ms)| {
            E::MigrationCreated {
                service,
                from,
                to,
                cutover_at_ms,
            }
        }),
        (phase(), phase(), any::<Option<u32>>(), opt_u64()).prop_map(
            |(from, to, shadow_instances, rollback_ms)| E::Transition {
                from,
                to,
                shadow_instances,
                rollback_ms
            }
        ),
        (any::<bool>(), opt_u64()).prop_map(|(to_target, fence_window_ms)| E::WriterMoved {
            to_target,
            fence_window_ms
        }),
        (weights(), any::<u32>())
            .prop_map(|(weights, ttl_secs)| E::DnsWeights { weights, ttl_secs }),
        (text(), text(), any::<u32>(), t(), t()).prop_map(
            |(service, region, instances, start_ms, end_ms)| E::CapacityClaimed {
                service,
                region,
                instances,
                start_ms,
                end_ms,
            }
        ),
        (text(), text(), any::<u32>()).prop_map(|(service, region, instances)| {
            E::CapacityReleased {
                service,
                region,
                instances,
            }
        }),
    ];
    (t(), t(), t(), text(), event, text()).prop_map(
        |(index, at_ms, term, subject, event, reason)| schema::AuditEntry {
            index,
            at_ms,
            term,
            subject,
            event,
            reason,
        },
    )
}

fn claim() -> impl Strategy<Value = schema::CapacityClaim> {
    let kind = prop_oneof![
        Just(schema::ClaimKind::Request),
        Just(schema::ClaimKind::Reservation)
    ];
    (
        text(),
        text(),
        text(),
        any::<u32>(),
        kind,
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(id, service, region, instances, kind, start_ms, end_ms, created_ms)| {
                schema::CapacityClaim {
                    id,
                    service,
                    region,
                    instances,
                    kind,
                    start_ms,
                    end_ms,
                    created_ms,
                }
            },
        )
}

fn service_state() -> impl Strategy<Value = schema::ServiceState> {
    (service(), text(), proptest::option::of(text())).prop_map(
        |(spec, primary_region, active_migration)| schema::ServiceState {
            spec,
            primary_region,
            active_migration,
        },
    )
}

fn snapshot() -> impl Strategy<Value = schema::Snapshot> {
    let regions = plan().prop_map(|p| p.regions.into_iter().map(|r| (r.name.clone(), r)).collect());
    let schedules = plan().prop_map(|p| {
        p.schedules
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect()
    });
    let dns = btree_map(
        text(),
        (weights(), any::<u32>())
            .prop_map(|(weights, ttl_secs)| schema::DnsWeights { weights, ttl_secs }),
        0..3,
    );
    let maps = (
        regions,
        btree_map(text(), service_state(), 0..2),
        btree_map(text(), migration(), 0..3),
        schedules,
        dns,
        btree_map(text(), text(), 0..3),
        vec(audit_entry(), 0..4),
        btree_map(text(), claim(), 0..3),
    );
    let counters = (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    );
    let game_days = (
        vec(drill_record(), 0..3),
        btree_map(text(), game_day(), 0..3),
        btree_map(text(), text(), 0..3),
    );
    (maps, counters, game_days).prop_map(
        |(
            (regions, services, migrations, schedules, dns, fired, audit, capacity),
            (next_migration, next_claim, highest_term, applied_index, next_drill),
            (drills, game_days, game_day_verdicts),
        )| schema::Snapshot {
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
        },
    )
}

/// `log` → state type → `log` gives the same bytes, and the state value it went through
/// encodes (with the serde derives earlier builds wrote entries with) to those bytes too.
fn round_trips<T>(log: &T::Log) -> Result<(), TestCaseError>
where
    T: Logged + Serialize,
    T::Log: Serialize + Clone,
{
    let ours = T::from_log(log.clone());
    prop_assert_eq!(bytes(&ours.to_log()), bytes(log), "schema → state → schema");
    prop_assert_eq!(bytes(&ours), bytes(log), "the state's own encoding is v1's");
    prop_assert_eq!(
        bytes(&T::from_log(ours.to_log())),
        bytes(&ours),
        "state → schema → state"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn commands_convert_losslessly_and_encode_as_earlier_builds_did(log in command()) {
        round_trips::<Command>(&log)?;
        // Whole entries too: the orchestrator's encoding is the schema's, byte for byte.
        let ours = Command::from_log(log.clone());
        prop_assert_eq!(
            crate::state::encode_command(&ours),
            umbra_proto::log::encode_command(&log).unwrap()
        );
        let back = crate::state::decode_command(&crate::state::encode_command(&ours)).unwrap();
        prop_assert_eq!(bytes(&back), bytes(&ours));
    }

    #[test]
    fn state_parts_convert_losslessly_and_encode_as_earlier_builds_did(
        migration in migration(),
        service in service_state(),
        entry in audit_entry(),
        claim in claim(),
        drill in drill_record(),
    ) {
        round_trips::<MigrationRecord>(&migration)?;
        round_trips::<ServiceState>(&service)?;
        round_trips::<AuditEntry>(&entry)?;
        round_trips::<CapacityClaim>(&claim)?;
        round_trips::<DrillRecord>(&drill)?;
    }

    #[test]
    fn snapshots_convert_losslessly(log in snapshot()) {
        let state = OrchestratorState::from_log(log.clone());
        prop_assert_eq!(bytes(&state.to_log()), bytes(&log));
        let again = OrchestratorState::from_log(state.to_log());
        prop_assert_eq!(bytes(&again.to_log()), bytes(&log));
    }
}
