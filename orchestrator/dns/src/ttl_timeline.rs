//! The TTL plan: when to lower a service record's TTL ahead of a cutover, what each DNS step
//! publishes, when the old region may be drained, and when the TTL goes back up.
//!
//! DNS is eventual: a client that fetched the record just before a change keeps using the old
//! answer for up to the TTL it was given. So the TTL has to be low *one old TTL before* the
//! first step (caches holding the long-TTL answer must have expired by then), and the old
//! region has to keep serving until the last change plus the TTL that was on the replaced
//! records plus a margin. This is a pure function of its inputs (time is passed in); it must
//! not talk to DNS or read the clock — the DNS controller executes the plan.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// TTL used during a cutover unless configured: 60 s is the value commonly used for records
/// that must move quickly (health-checked failover records at the large DNS providers), short
/// enough that a step converges within a typical analysis window.
pub const DEFAULT_LOW_TTL_SECS: u32 = 60;
/// Slack added after every TTL wait unless configured: resolvers round TTLs up, forwarders add
/// their own cache hop, and clocks drift; one minute covers all three on ordinary networks.
pub const DEFAULT_MARGIN_SECS: u32 = 60;
/// The largest TTL RFC 2181 § 8 allows (2^31 - 1 seconds).
pub const MAX_TTL_SECS: u32 = i32::MAX as u32;

/// One DNS step of the cutover, relative to the cutover start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStep {
    /// Seconds after the cutover start when this step's records are published.
    pub offset_secs: u32,
    /// Share of answers pointing at the target region, 0..=100.
    pub target_share_pct: u8,
}

/// What the plan is computed from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlTimelineInput {
    /// When the plan is made; lowering cannot happen before this.
    pub now: DateTime<Utc>,
    /// TTL the service records carry today.
    pub current_ttl_secs: u32,
    /// TTL wanted during the cutover.
    pub low_ttl_secs: u32,
    /// Slack after each TTL wait.
    pub margin_secs: u32,
    /// When the first DNS step may happen at the earliest.
    pub cutover_at: DateTime<Utc>,
    /// Steps in increasing offset order; at least one.
    pub steps: Vec<DnsStep>,
}

/// One thing to do to the record set, at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TtlAction {
    /// Republish the current answers with a lower TTL.
    LowerTtl { ttl_secs: u32 },
    /// Publish the step's weighted answers.
    Shift { target_share_pct: u8, ttl_secs: u32 },
    /// No client can still hold an answer from before the last change: the old region may be
    /// drained (if the last step moved everything away from it).
    DrainOld,
    /// Put the original TTL back on the final answers.
    RestoreTtl { ttl_secs: u32 },
}

/// An action and when to take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimedAction {
    pub at: DateTime<Utc>,
    pub action: TtlAction,
}

/// Something the operator should know about the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TtlWarning {
    /// The TTL is lowered too late for every cache to have the low TTL by the cutover: steps
    /// before `low_ttl_effective_at` converge only after the old TTL.
    LateLowering { low_ttl_effective_at: DateTime<Utc> },
}

/// The plan: actions in time order, plus the facts the executor gates on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlTimeline {
    pub actions: Vec<TimedAction>,
    /// From this time on every cache holds the low TTL (equals `now` if nothing was lowered).
    pub low_ttl_effective_at: DateTime<Utc>,
    /// Last change + the TTL on the records it replaced + margin.
    pub drain_old_at: DateTime<Utc>,
    pub warnings: Vec<TtlWarning>,
}

/// Inputs the plan cannot be made from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TtlTimelineError {
    #[error("the cutover has no DNS steps; give at least one (e.g. 100% at offset 0)")]
    NoSteps,
    #[error(
        "step {index} has offset {offset_secs}s, not after the previous step's; list steps in time order"
    )]
    StepsOutOfOrder { index: usize, offset_secs: u32 },
    #[error("step {index} asks for {share_pct}% of answers; shares are 0..=100")]
    ShareOutOfRange { index: usize, share_pct: u8 },
    #[error("TTL {ttl_secs}s is out of range; use 1..={MAX_TTL_SECS} seconds")]
    TtlOutOfRange { ttl_secs: u32 },
}

impl TtlTimelineInput {
    pub fn validate(&self) -> Result<(), TtlTimelineError> {
        for ttl_secs in [self.current_ttl_secs, self.low_ttl_secs] {
            if ttl_secs == 0 || ttl_secs > MAX_TTL_SECS {
                return Err(TtlTimelineError::TtlOutOfRange { ttl_secs });
            }
        }
        if self.steps.is_empty() {
            return Err(TtlTimelineError::NoSteps);
        }
        for (index, step) in self.steps.iter().enumerate() {
            if step.target_share_pct > 100 {
                return Err(TtlTimelineError::ShareOutOfRange {
                    index,
                    share_pct: step.target_share_pct,
                });
            }
            if index > 0 && step.offset_secs <= self.steps[index - 1].offset_secs {
                return Err(TtlTimelineError::StepsOutOfOrder {
                    index,
                    offset_secs: step.offset_secs,
                });
            }
        }
        Ok(())
    }
}

fn secs(s: u32) -> TimeDelta {
    TimeDelta::seconds(i64::from(s))
}

/// How long the old region must keep serving after the last change of the records, at
/// `last_change_at`: the TTL on the records that change replaced plus the margin. Those
/// records carried the low TTL only if the lowering had reached every cache by then
/// (`low_ttl_effective_at`); otherwise some clients still hold an answer with the original
/// TTL. What the plan drains by, and what the executor drains by once it knows when the last
/// change really happened.
pub fn drain_secs(
    current_ttl_secs: u32,
    low_ttl_secs: u32,
    margin_secs: u32,
    low_ttl_effective_at: DateTime<Utc>,
    last_change_at: DateTime<Utc>,
) -> u32 {
    let replaced_ttl_secs = if last_change_at >= low_ttl_effective_at {
        low_ttl_secs.min(current_ttl_secs)
    } else {
        current_ttl_secs
    };
    replaced_ttl_secs.saturating_add(margin_secs)
}

/// Computes the plan. Pure: the same input always gives the same plan.
pub fn ttl_timeline(input: &TtlTimelineInput) -> Result<TtlTimeline, TtlTimelineError> {
    input.validate()?;
    let mut actions = Vec::with_capacity(input.steps.len() + 3);
    let mut warnings = Vec::new();

    // Lowering only helps when it shortens the TTL; a record already at or below the low TTL
    // keeps its own value throughout.
    let step_ttl_secs = input.low_ttl_secs.min(input.current_ttl_secs);
    let low_ttl_effective_at = if input.low_ttl_secs < input.current_ttl_secs {
        let ideal = input.cutover_at - secs(input.current_ttl_secs) - secs(input.margin_secs);
        let lower_at = ideal.max(input.now);
        actions.push(TimedAction {
            at: lower_at,
            action: TtlAction::LowerTtl {
                ttl_secs: step_ttl_secs,
            },
        });
        let effective = lower_at + secs(input.current_ttl_secs);
        if effective > input.cutover_at {
            warnings.push(TtlWarning::LateLowering {
                low_ttl_effective_at: effective,
            });
        }
        effective
    } else {
        input.now
    };

    for step in &input.steps {
        actions.push(TimedAction {
            at: input.cutover_at + secs(step.offset_secs),
            action: TtlAction::Shift {
                target_share_pct: step.target_share_pct,
                ttl_secs: step_ttl_secs,
            },
        });
    }

    let last_change_at =
        input.cutover_at + secs(input.steps.last().expect("validated non-empty").offset_secs);
    let drain_old_at = last_change_at
        + secs(drain_secs(
            input.current_ttl_secs,
            step_ttl_secs,
            input.margin_secs,
            low_ttl_effective_at,
            last_change_at,
        ));
    actions.push(TimedAction {
        at: drain_old_at,
        action: TtlAction::DrainOld,
    });
    if step_ttl_secs < input.current_ttl_secs {
        actions.push(TimedAction {
            at: drain_old_at,
            action: TtlAction::RestoreTtl {
                ttl_secs: input.current_ttl_secs,
            },
        });
    }

    Ok(TtlTimeline {
        actions,
        low_ttl_effective_at,
        drain_old_at,
        warnings,
    })
}
