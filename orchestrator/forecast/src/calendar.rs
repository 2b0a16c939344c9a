//! The event calendar: declared windows (a campaign, a holiday, a scheduled backup) that
//! scale or override the forecast for the slices they cover. History cannot predict a
//! campaign that has never happened, so operators declare it. Events are read from TOML
//! (`[[event]]` tables) and validated; overlapping scales multiply and an override wins over
//! everything. This module only maps a slice's start time to an adjustment; it does not
//! forecast.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One declared event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub name: String,
    /// First instant covered (inclusive).
    pub start: DateTime<Utc>,
    /// End of the window (exclusive).
    pub end: DateTime<Utc>,
    /// Multiply the forecast (mean and every quantile) by this factor, e.g. 1.8 for a campaign.
    #[serde(default)]
    pub scale: Option<f64>,
    /// Replace the forecast with this demand, e.g. 0 for a planned shutdown.
    #[serde(default)]
    pub value: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CalendarFile {
    #[serde(default)]
    event: Vec<Event>,
}

/// Errors in an event calendar.
#[derive(Debug, thiserror::Error)]
pub enum CalendarError {
    #[error("event calendar: {0}")]
    Parse(String),
    #[error("event {name:?}: {message}")]
    Invalid { name: String, message: String },
}

/// What the calendar does to one slice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SliceAdjustment {
    pub event: Option<String>,
    pub scale: f64,
    pub value: Option<f64>,
}

impl SliceAdjustment {
    pub const NONE: SliceAdjustment = SliceAdjustment {
        event: None,
        scale: 1.0,
        value: None,
    };

    pub fn apply(&self, demand: f64) -> f64 {
        self.value.unwrap_or(demand * self.scale)
    }
}

/// Declared events, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventCalendar {
    events: Vec<Event>,
}

impl EventCalendar {
    pub fn new(events: Vec<Event>) -> Result<Self, CalendarError> {
        for e in &events {
            let invalid = |message: &str| CalendarError::Invalid {
                name: e.name.clone(),
                message: message.to_string(),
            };
            if e.end <= e.start {
                return Err(invalid("end must be after start"));
            }
            match (e.scale, e.value) {
                (Some(s), None) if s.is_finite() && s >= 0.0 => {}
                (None, Some(v)) if v.is_finite() && v >= 0.0 => {}
                (Some(_), Some(_)) | (None, None) => {
                    return Err(invalid("give exactly one of `scale` or `value`"));
                }
                _ => return Err(invalid("scale and value must be finite and not negative")),
            }
        }
        Ok(Self { events })
    }

    /// Parse a TOML calendar: `[[event]]` tables with `name`, `start`, `end` and one of
    /// `scale` or `value`.
    pub fn from_toml(text: &str) -> Result<Self, CalendarError> {
        let file: CalendarFile =
            toml::from_str(text).map_err(|e| CalendarError::Parse(e.to_string()))?;
        Self::new(file.event)
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The adjustment for the slice starting at `at`.
    pub fn adjustment(&self, at: DateTime<Utc>) -> SliceAdjustment {
        let mut out = SliceAdjustment::NONE;
        let mut names = Vec::new();
        for e in self.events.iter().filter(|e| e.start <= at && at < e.end) {
            names.push(e.name.as_str());
            if let Some(s) = e.scale {
                out.scale *= s;
            }
            if let Some(v) = e.value {
                out.value = Some(v);
            }
        }
        if !names.is_empty() {
            out.event = Some(names.join("+"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALENDAR: &str = r#"
        [[event]]
        name = "campaign"
        start = "2026-11-27T00:00:00Z"
        end = "2026-11-28T00:00:00Z"
        scale = 2.0

        [[event]]
        name = "sale-hour"
        start = "2026-11-27T12:00:00Z"
        end = "2026-11-27T13:00:00Z"
        scale = 1.5

        [[event]]
        name = "backup"
        start = "2026-11-29T02:00:00Z"
        end = "2026-11-29T03:00:00Z"
        value = 0.0
    "#;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn scales_multiply_and_overrides_replace() {
        let cal = EventCalendar::from_toml(CALENDAR).unwrap();
        let table = [
            ("2026-11-26T23:55:00Z", 100.0, None),
            ("2026-11-27T00:00:00Z", 200.0, Some("campaign")),
            ("2026-11-27T12:30:00Z", 300.0, Some("campaign+sale-hour")),
            ("2026-11-29T02:00:00Z", 0.0, Some("backup")),
            ("2026-11-29T03:00:00Z", 100.0, None),
        ];
        for (when, expected, event) in table {
            let adj = cal.adjustment(at(when));
            assert_eq!(adj.apply(100.0), expected, "{when}");
            assert_eq!(adj.event.as_deref(), event, "{when}");
        }
    }

    #[test]
    fn invalid_events_are_refused() {
        let both = r#"[[event]]
            name = "x"
            start = "2026-01-01T00:00:00Z"
            end = "2026-01-02T00:00:00Z"
            scale = 1.0
            value = 2.0"#;
        assert!(EventCalendar::from_toml(both).is_err());
        let backwards = r#"[[event]]
            name = "x"
            start = "2026-01-02T00:00:00Z"
            end = "2026-01-01T00:00:00Z"
            scale = 1.0"#;
        assert!(EventCalendar::from_toml(backwards).is_err());
    }
}
