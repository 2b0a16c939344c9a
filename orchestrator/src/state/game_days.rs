//! Game days: drills the plan schedules (`[[game_day]]`), which the leader runs at their time
//! through the product's own migrations and records like any drill (`state::drills`). This
//! module holds the plan's type, how a game day's migrations are keyed, and the view of one
//! game day's progress the leader decides from (`executor::game_day`); the state keeps the
//! specs and, once recorded, each one's verdict.
//!
//! A game day runs once: its verdict is keyed by its name, and a plan that changes a game day
//! that already ran is refused (give the new one a new name). Its migrations carry a
//! `schedule_key` of their own (`game-day:NAME:SERVICE`, and `…:back` for a move back into the
//! region after a failure), so the state creates each at most once whichever leader proposes
//! it, as for schedules. Schedule keys always hold a `/` and game-day names and service names
//! never do, so the two cannot collide.

use serde::{Deserialize, Serialize};

use crate::migration::Phase;

/// Game days the state holds, run or to come: a quarterly game day per region for years. The
/// overview walks each one's keys, so their number is bounded.
pub const MAX_GAME_DAYS: usize = 100;

/// A drill the plan schedules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GameDaySpec {
    /// Game day name, unique; its verdict is kept under it.
    pub name: String,
    /// The drill: `evacuate` moves every service served from `region` out of it.
    pub drill: String,
    /// The region it acts on.
    pub region: String,
    /// Where the services go (default: for each, the other region serving the fewest
    /// services, then by name).
    #[serde(default)]
    pub to: Option<String>,
    /// When it starts, an RFC 3339 time (e.g. `"2027-01-15T14:00:00Z"`).
    #[serde(rename = "at", with = "rfc3339_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub at_ms: u64,
}

/// `at` in plan files and the API's JSON: an RFC 3339 string (milliseconds only when it has
/// them), held as Unix ms. Encodings that are not for people (postcard: the store protocol)
/// carry the number, as the log schema does.
mod rfc3339_ms {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        if !serializer.is_human_readable() {
            return serializer.serialize_u64(*ms);
        }
        let at = i64::try_from(*ms)
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .ok_or_else(|| serde::ser::Error::custom(format!("{ms} ms is past chrono's range")))?;
        serializer.collect_str(&at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        if !deserializer.is_human_readable() {
            return u64::deserialize(deserializer);
        }
        let text = String::deserialize(deserializer)?;
        chrono::DateTime::parse_from_rfc3339(&text)
            .ok()
            .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{text:?} is not an RFC 3339 time after 1970, e.g. \"2027-01-15T14:00:00Z\""
                ))
            })
    }
}

/// The key of the migration that moves `service` out for game day `name`.
pub fn forward_key(name: &str, service: &str) -> String {
    format!("game-day:{name}:{service}")
}

/// The key of the migration that moves `service` back in after game day `name` failed.
pub fn back_key(name: &str, service: &str) -> String {
    format!("game-day:{name}:{service}:back")
}

/// One game day as the state holds it: its spec, its verdict once recorded, and the
/// migrations it created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GameDayRun {
    /// What the plan says.
    pub spec: GameDaySpec,
    /// The drill its verdict was recorded as.
    pub verdict: Option<String>,
    /// The services it moved (or tried to), by service name.
    pub moves: Vec<GameDayMove>,
}

impl GameDayRun {
    /// Whether it is due and has no verdict yet.
    pub fn running(&self, now_ms: u64) -> bool {
        self.verdict.is_none() && now_ms >= self.spec.at_ms
    }
}

/// One service a game day moved out of its region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GameDayMove {
    /// The service.
    pub service: String,
    /// The migration out.
    pub out: MoveState,
    /// The migration back in, after the game day failed.
    pub back: Option<MoveState>,
}

/// Where one of a game day's migrations is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveState {
    /// The migration.
    pub id: String,
    /// Its target region.
    pub to: String,
    /// Its phase.
    pub phase: Phase,
    /// Since when, Unix ms.
    pub since_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_is_rfc3339_in_plan_files_and_a_bad_one_says_how() {
        let spec: GameDaySpec = toml::from_str(
            "name = \"q1\"\ndrill = \"evacuate\"\nregion = \"us-east\"\nat = \"2027-01-15T15:00:00+01:00\"\n",
        )
        .unwrap();
        assert_eq!(spec.at_ms, 1_800_021_600_000);
        assert_eq!(spec.to, None);
        let text = toml::to_string(&spec).unwrap();
        assert!(text.contains("at = \"2027-01-15T14:00:00Z\""), "{text}");
        let err = toml::from_str::<GameDaySpec>(
            "name = \"q1\"\ndrill = \"evacuate\"\nregion = \"us-east\"\nat = \"tomorrow\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("not an RFC 3339 time"), "{err}");
        assert_ne!(forward_key("q1", "shop"), back_key("q1", "shop"));
        assert!(!forward_key("q1", "shop").contains('/'));
    }
}
