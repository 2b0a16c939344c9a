//! Demand history from CSV files. Two layouts are accepted: the long form
//! `timestamp,service,region,value` (any number of series), and the two-column form
//! `timestamp,<value column>` (one series; its service and region come from the caller,
//! e.g. the command line). Timestamps are RFC 3339 or Unix seconds. A malformed row is an
//! error naming the line and column, never skipped. This module only parses; bucketing,
//! duplicates and gaps are handled by [`super::build_series`].

use std::collections::BTreeMap;
use std::io::Read;

use chrono::{DateTime, TimeZone, Utc};

use super::{Observation, SeriesKey};

/// Largest CSV file read into memory (64 MiB: years of 5-minute slices for hundreds of series).
pub const MAX_CSV_BYTES: u64 = 64 * 1024 * 1024;

/// Errors while reading a demand CSV.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_CSV_BYTES} bytes; split it or use the Prometheus source")]
    TooLarge { path: String },
    #[error("{path}: line {line}, column {column} ({name}): {message}")]
    Field {
        path: String,
        line: u64,
        column: usize,
        name: String,
        message: String,
    },
    #[error("{path}: line {line}: {message}")]
    Row {
        path: String,
        line: u64,
        message: String,
    },
    #[error(
        "{path}: header {header:?} is neither `timestamp,service,region,value` nor a two-column \
         `timestamp,<value>` file"
    )]
    Header { path: String, header: Vec<String> },
    #[error(
        "{path}: a two-column file holds one series; give its service and region \
         (--service and --region)"
    )]
    NeedsKey { path: String },
}

/// Read a demand CSV. `single_key` names the series of a two-column file; it is ignored for
/// the long form. Observations come back per series, in file order.
pub fn read_csv(
    path: &std::path::Path,
    single_key: Option<&SeriesKey>,
) -> Result<BTreeMap<SeriesKey, Vec<Observation>>, CsvError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| CsvError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut text = String::new();
    file.take(MAX_CSV_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| CsvError::Io {
            path: shown.clone(),
            source,
        })?;
    if text.len() as u64 > MAX_CSV_BYTES {
        return Err(CsvError::TooLarge { path: shown });
    }
    parse_csv(&shown, &text, single_key)
}

/// Parse CSV text; `path` is only used in error messages.
pub fn parse_csv(
    path: &str,
    text: &str,
    single_key: Option<&SeriesKey>,
) -> Result<BTreeMap<SeriesKey, Vec<Observation>>, CsvError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| CsvError::Row {
            path: path.into(),
            line: 1,
            message: e.to_string(),
        })?
        .iter()
        .map(str::to_string)
        .collect();
    let find = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    enum Layout {
        Long {
            ts: usize,
            service: usize,
            region: usize,
            value: usize,
        },
        Single {
            ts: usize,
            value: usize,
            key: SeriesKey,
        },
    }
    let layout = match (
        find("timestamp"),
        find("service"),
        find("region"),
        find("value"),
    ) {
        (Some(ts), Some(service), Some(region), Some(value)) => Layout::Long {
            ts,
            service,
            region,
            value,
        },
        (Some(ts), _, _, _) if header.len() == 2 => Layout::Single {
            ts,
            value: 1 - ts,
            key: single_key
                .cloned()
                .ok_or_else(|| CsvError::NeedsKey { path: path.into() })?,
        },
        _ => {
            return Err(CsvError::Header {
                path: path.into(),
                header,
            });
        }
    };
    let mut out: BTreeMap<SeriesKey, Vec<Observation>> = BTreeMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| CsvError::Row {
            path: path.into(),
            line: e.position().map(|p| p.line()).unwrap_or(0),
            message: e.to_string(),
        })?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let field_error = |column: usize, message: String| CsvError::Field {
            path: path.into(),
            line,
            column: column + 1,
            name: header[column].clone(),
            message,
        };
        let (ts_col, value_col) = match &layout {
            Layout::Long { ts, value, .. } | Layout::Single { ts, value, .. } => (*ts, *value),
        };
        let at = parse_timestamp(&record[ts_col]).map_err(|m| field_error(ts_col, m))?;
        let raw = &record[value_col];
        let value: f64 = raw.parse().map_err(|_| {
            field_error(
                value_col,
                format!(
                    "{raw:?} is not a number (demand must be numeric; use NaN for a missing value)"
                ),
            )
        })?;
        let key = match &layout {
            Layout::Long {
                service, region, ..
            } => {
                if record[*service].is_empty() {
                    return Err(field_error(*service, "empty service name".into()));
                }
                if record[*region].is_empty() {
                    return Err(field_error(*region, "empty region name".into()));
                }
                SeriesKey::new(&record[*service], &record[*region])
            }
            Layout::Single { key, .. } => key.clone(),
        };
        out.entry(key).or_default().push(Observation { at, value });
    }
    Ok(out)
}

fn parse_timestamp(raw: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(secs) = raw.parse::<i64>()
        && let Some(t) = Utc.timestamp_opt(secs, 0).single()
    {
        return Ok(t);
    }
    Err(format!(
        "{raw:?} is not a timestamp; use RFC 3339 (2000-06-05T00:30:00Z) or Unix seconds"
    ))
}

/// Why one series could not be read from a CSV file.
#[derive(Debug, thiserror::Error)]
pub enum SeriesReadError {
    /// The file could not be read or parsed.
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// The file holds no rows of the series.
    #[error("{path} holds no rows of {key}")]
    Missing { path: String, key: SeriesKey },
    /// The rows do not make a regular series.
    #[error(transparent)]
    History(#[from] super::HistoryError),
}

/// Reads series `key` from the CSV file at `path` (long form, or two columns named by `key`
/// as in [`read_csv`]) and builds it into regular slices with `config`; also says what the
/// slicing had to fill or drop.
pub fn read_series(
    path: &std::path::Path,
    key: &SeriesKey,
    config: &super::HistoryConfig,
) -> Result<(super::DemandSeries, super::HistoryReport), SeriesReadError> {
    let observations =
        read_csv(path, Some(key))?
            .remove(key)
            .ok_or_else(|| SeriesReadError::Missing {
                path: path.display().to_string(),
                key: key.clone(),
            })?;
    Ok(super::build_series(key.clone(), &observations, config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_form_groups_by_service_and_region() {
        let text = "timestamp,service,region,value\n\
                    2026-01-01T00:00:00Z,shop,eu,1\n\
                    2026-01-01T00:00:00Z,shop,us,2\n\
                    2026-01-01T00:05:00Z,shop,eu,3\n";
        let out = parse_csv("t.csv", text, None).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[&SeriesKey::new("shop", "eu")].len(), 2);
    }

    #[test]
    fn bad_value_names_line_and_column() {
        let text = "timestamp,demand\n2026-01-01T00:00:00Z,1\n2026-01-01T00:05:00Z,abc\n";
        let key = SeriesKey::new("shop", "eu");
        let err = parse_csv("t.csv", text, Some(&key))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3, column 2 (demand)"), "{err}");
    }

    #[test]
    fn bad_timestamp_names_line_and_column() {
        let text = "timestamp,service,region,value\nyesterday,shop,eu,1\n";
        let err = parse_csv("t.csv", text, None).unwrap_err().to_string();
        assert!(err.contains("line 2, column 1 (timestamp)"), "{err}");
    }
}
