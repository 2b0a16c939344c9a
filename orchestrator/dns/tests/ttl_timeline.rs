//! Table-driven tests of the TTL plan: each row is a cutover as an operator would schedule it
//! and the times a careful human would compute by hand. No I/O.

use chrono::{DateTime, TimeDelta, Utc};
use umbra_dns::ttl_timeline::{
    DnsStep, TimedAction, TtlAction, TtlTimelineError, TtlTimelineInput, TtlWarning, ttl_timeline,
};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn steps(list: &[(u32, u8)]) -> Vec<DnsStep> {
    list.iter()
        .map(|&(offset_secs, target_share_pct)| DnsStep {
            offset_secs,
            target_share_pct,
        })
        .collect()
}

fn input(
    now: &str,
    current: u32,
    low: u32,
    margin: u32,
    cutover: &str,
    s: &[(u32, u8)],
) -> TtlTimelineInput {
    TtlTimelineInput {
        now: t(now),
        current_ttl_secs: current,
        low_ttl_secs: low,
        margin_secs: margin,
        cutover_at: t(cutover),
        steps: steps(s),
    }
}

fn at(s: &str, action: TtlAction) -> TimedAction {
    TimedAction { at: t(s), action }
}

struct Row {
    name: &'static str,
    input: TtlTimelineInput,
    actions: Vec<TimedAction>,
    drain_old_at: &'static str,
    late: Option<&'static str>,
}

#[test]
fn plans_match_hand_computed_times() {
    use TtlAction::*;
    let rows = vec![
        Row {
            name: "hour TTL, planned a day ahead: lower one TTL + margin before, drain one low TTL + margin after the last step",
            input: input(
                "2026-11-22T06:00:00Z",
                3600,
                60,
                60,
                "2026-11-23T06:00:00Z",
                &[(0, 10), (600, 50), (1200, 100)],
            ),
            actions: vec![
                at("2026-11-23T04:59:00Z", LowerTtl { ttl_secs: 60 }),
                at(
                    "2026-11-23T06:00:00Z",
                    Shift {
                        target_share_pct: 10,
                        ttl_secs: 60,
                    },
                ),
                at(
                    "2026-11-23T06:10:00Z",
                    Shift {
                        target_share_pct: 50,
                        ttl_secs: 60,
                    },
                ),
                at(
                    "2026-11-23T06:20:00Z",
                    Shift {
                        target_share_pct: 100,
                        ttl_secs: 60,
                    },
                ),
                at("2026-11-23T06:22:00Z", DrainOld),
                at("2026-11-23T06:22:00Z", RestoreTtl { ttl_secs: 3600 }),
            ],
            drain_old_at: "2026-11-23T06:22:00Z",
            late: None,
        },
        Row {
            name: "TTL already low: nothing to lower or restore",
            input: input(
                "2026-11-23T05:00:00Z",
                30,
                60,
                10,
                "2026-11-23T06:00:00Z",
                &[(0, 50), (300, 100)],
            ),
            actions: vec![
                at(
                    "2026-11-23T06:00:00Z",
                    Shift {
                        target_share_pct: 50,
                        ttl_secs: 30,
                    },
                ),
                at(
                    "2026-11-23T06:05:00Z",
                    Shift {
                        target_share_pct: 100,
                        ttl_secs: 30,
                    },
                ),
                at("2026-11-23T06:05:40Z", DrainOld),
            ],
            drain_old_at: "2026-11-23T06:05:40Z",
            late: None,
        },
        Row {
            name: "planned too late: lower now, warn, and a last step before the low TTL is everywhere drains after the old TTL",
            input: input(
                "2026-11-23T05:50:00Z",
                3600,
                60,
                60,
                "2026-11-23T06:00:00Z",
                &[(0, 100)],
            ),
            actions: vec![
                at("2026-11-23T05:50:00Z", LowerTtl { ttl_secs: 60 }),
                at(
                    "2026-11-23T06:00:00Z",
                    Shift {
                        target_share_pct: 100,
                        ttl_secs: 60,
                    },
                ),
                at("2026-11-23T07:01:00Z", DrainOld),
                at("2026-11-23T07:01:00Z", RestoreTtl { ttl_secs: 3600 }),
            ],
            drain_old_at: "2026-11-23T07:01:00Z",
            late: Some("2026-11-23T06:50:00Z"),
        },
        Row {
            name: "planned late but the last step comes after the low TTL took hold: drain after the low TTL",
            input: input(
                "2026-11-23T05:30:00Z",
                3600,
                60,
                0,
                "2026-11-23T06:00:00Z",
                &[(0, 10), (3600, 100)],
            ),
            actions: vec![
                at("2026-11-23T05:30:00Z", LowerTtl { ttl_secs: 60 }),
                at(
                    "2026-11-23T06:00:00Z",
                    Shift {
                        target_share_pct: 10,
                        ttl_secs: 60,
                    },
                ),
                at(
                    "2026-11-23T07:00:00Z",
                    Shift {
                        target_share_pct: 100,
                        ttl_secs: 60,
                    },
                ),
                at("2026-11-23T07:01:00Z", DrainOld),
                at("2026-11-23T07:01:00Z", RestoreTtl { ttl_secs: 3600 }),
            ],
            drain_old_at: "2026-11-23T07:01:00Z",
            late: Some("2026-11-23T06:30:00Z"),
        },
        Row {
            name: "rollback schedule (share back to 0) is planned the same way",
            input: input(
                "2026-11-23T00:00:00Z",
                300,
                30,
                30,
                "2026-11-23T06:00:00Z",
                &[(0, 0)],
            ),
            actions: vec![
                at("2026-11-23T05:54:30Z", LowerTtl { ttl_secs: 30 }),
                at(
                    "2026-11-23T06:00:00Z",
                    Shift {
                        target_share_pct: 0,
                        ttl_secs: 30,
                    },
                ),
                at("2026-11-23T06:01:00Z", DrainOld),
                at("2026-11-23T06:01:00Z", RestoreTtl { ttl_secs: 300 }),
            ],
            drain_old_at: "2026-11-23T06:01:00Z",
            late: None,
        },
    ];
    for row in rows {
        let plan = ttl_timeline(&row.input).unwrap_or_else(|e| panic!("{}: {e}", row.name));
        assert_eq!(plan.actions, row.actions, "{}", row.name);
        assert_eq!(plan.drain_old_at, t(row.drain_old_at), "{}", row.name);
        let expected_warnings: Vec<TtlWarning> = row
            .late
            .map(|s| TtlWarning::LateLowering {
                low_ttl_effective_at: t(s),
            })
            .into_iter()
            .collect();
        assert_eq!(plan.warnings, expected_warnings, "{}", row.name);
        // Invariant: actions are in time order, and draining never precedes the last shift.
        assert!(
            plan.actions.windows(2).all(|w| w[0].at <= w[1].at),
            "{}: out of order",
            row.name
        );
    }
}

#[test]
fn bad_inputs_get_typed_errors() {
    let base = input(
        "2026-11-23T00:00:00Z",
        300,
        30,
        30,
        "2026-11-23T06:00:00Z",
        &[(0, 50)],
    );
    let rows: Vec<(&str, TtlTimelineInput, TtlTimelineError)> = vec![
        (
            "no steps",
            TtlTimelineInput {
                steps: vec![],
                ..base.clone()
            },
            TtlTimelineError::NoSteps,
        ),
        (
            "steps out of order",
            TtlTimelineInput {
                steps: steps(&[(60, 10), (60, 50)]),
                ..base.clone()
            },
            TtlTimelineError::StepsOutOfOrder {
                index: 1,
                offset_secs: 60,
            },
        ),
        (
            "share over 100",
            TtlTimelineInput {
                steps: steps(&[(0, 101)]),
                ..base.clone()
            },
            TtlTimelineError::ShareOutOfRange {
                index: 0,
                share_pct: 101,
            },
        ),
        (
            "zero low TTL",
            TtlTimelineInput {
                low_ttl_secs: 0,
                ..base.clone()
            },
            TtlTimelineError::TtlOutOfRange { ttl_secs: 0 },
        ),
        (
            "TTL over RFC 2181 limit",
            TtlTimelineInput {
                current_ttl_secs: u32::MAX,
                ..base.clone()
            },
            TtlTimelineError::TtlOutOfRange { ttl_secs: u32::MAX },
        ),
    ];
    for (name, input, expected) in rows {
        assert_eq!(ttl_timeline(&input), Err(expected.clone()), "{name}");
        // The message tells the operator what to do, not just what is wrong.
        assert!(!expected.to_string().is_empty());
    }
}

#[test]
fn drain_is_never_before_last_change_plus_low_ttl() {
    // A sweep over lead times: whatever the plan, the old region is kept at least one TTL of
    // the replaced records plus the margin after the final change.
    for lead_secs in [0_i64, 30, 600, 3600, 7200, 86_400] {
        let cutover = t("2026-11-23T06:00:00Z");
        let i = TtlTimelineInput {
            now: cutover - TimeDelta::seconds(lead_secs),
            current_ttl_secs: 3600,
            low_ttl_secs: 60,
            margin_secs: 60,
            cutover_at: cutover,
            steps: steps(&[(0, 10), (900, 100)]),
        };
        let plan = ttl_timeline(&i).unwrap();
        let last = cutover + TimeDelta::seconds(900);
        assert!(
            plan.drain_old_at >= last + TimeDelta::seconds(120),
            "lead {lead_secs}s"
        );
        let late = lead_secs < 3600;
        assert_eq!(!plan.warnings.is_empty(), late, "lead {lead_secs}s");
    }
}
