//! Demand history from a Prometheus server through its HTTP API (`/api/v1/query_range`).
//! One PromQL expression gives one series (a service in a region); long ranges are split
//! into requests of at most [`MAX_POINTS_PER_REQUEST`] points (Prometheus refuses more than
//! 11,000). Every request has a timeout and every answer a size limit. An answer that is not
//! a single-series matrix is an error that says what the query returned, because forecasting
//! the wrong thing quietly is the worst outcome. This module does not bucket or repair data;
//! [`super::build_series`] does.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;

use super::Observation;

/// Points per request; Prometheus's own limit is 11,000 per series.
pub const MAX_POINTS_PER_REQUEST: i64 = 10_000;
/// Timeout of one HTTP request (Prometheus's default query timeout is 2 minutes; a range
/// query for one series should take well under a second).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer body accepted (a 10,000-point matrix is about 300 KB).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Errors from the Prometheus source.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("invalid Prometheus URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("Prometheus at {url} did not answer: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("Prometheus rejected the query {query:?} (HTTP {status}): {error_type}: {error}")]
    Rejected {
        query: String,
        status: u16,
        error_type: String,
        error: String,
    },
    #[error("bad answer from Prometheus to {query:?}: {message}")]
    BadAnswer { query: String, message: String },
    #[error(
        "the query {query:?} returned {count} series; it must return exactly one per service and \
         region (aggregate it, e.g. sum(rate(...)))"
    )]
    SeriesCount { query: String, count: usize },
    #[error("invalid range: {0}")]
    Range(String),
}

/// The envelope of every Prometheus HTTP API answer (`/api/v1/query`,
/// `/api/v1/query_range`); `R` is the shape of its result. The orchestrator's SLO source reads
/// instant queries with it too.
#[derive(Debug, Deserialize)]
pub struct ApiAnswer<R> {
    /// `success` or `error`.
    pub status: String,
    /// The result, on success (a missing field is `None`).
    pub data: Option<ApiData<R>>,
    /// Prometheus's error class (e.g. `bad_data`), on error.
    #[serde(default, rename = "errorType")]
    pub error_type: Option<String>,
    /// What Prometheus said, on error.
    #[serde(default)]
    pub error: Option<String>,
}

/// The `data` of an answer: the result's type (`vector`, `matrix`, `scalar`...) and the
/// result.
#[derive(Debug, Deserialize)]
pub struct ApiData<R> {
    /// `vector`, `matrix`, `scalar` or `string`.
    #[serde(rename = "resultType")]
    pub result_type: String,
    /// The result itself.
    pub result: R,
}

#[derive(Deserialize)]
struct MatrixSeries {
    #[serde(default)]
    values: Vec<(f64, String)>,
}

/// A range query: one PromQL expression over `[start, end]` at `step_secs`.
#[derive(Debug, Clone)]
pub struct RangeQuery {
    pub query: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub step_secs: u32,
}

/// Run a range query against `base_url` (e.g. `http://127.0.0.1:9090`) and return its one
/// series as observations.
pub async fn query_range(
    client: &reqwest::Client,
    base_url: &str,
    range: &RangeQuery,
) -> Result<Vec<Observation>, PromError> {
    if range.step_secs == 0 || range.end < range.start {
        return Err(PromError::Range(format!(
            "start {} must not be after end {} and the step must be positive",
            range.start, range.end
        )));
    }
    let url = format!("{}/api/v1/query_range", base_url.trim_end_matches('/'));
    reqwest::Url::parse(&url).map_err(|e| PromError::Url {
        url: base_url.into(),
        message: e.to_string(),
    })?;
    let step = i64::from(range.step_secs);
    let mut observations = Vec::new();
    let mut chunk_start = range.start.timestamp();
    let end = range.end.timestamp();
    while chunk_start <= end {
        let chunk_end = (chunk_start + step * (MAX_POINTS_PER_REQUEST - 1)).min(end);
        let chunk = query_chunk(client, &url, &range.query, chunk_start, chunk_end, step).await?;
        observations.extend(chunk);
        chunk_start = chunk_end + step;
    }
    Ok(observations)
}

/// Step of the probe [`sample_spacing`] runs: the planning default, so data sampled more
/// often than this is read at this width (a finer slice would only slow the forecaster).
pub const SPACING_PROBE_STEP_SECS: u32 = super::DEFAULT_SLICE_SECS;
/// Stretch of the range, at its end, that [`sample_spacing`] probes: a day shows any
/// sampling period that divides one.
pub const SPACING_PROBE_SECS: i64 = 86_400;

/// How the samples behind `range.query` are spaced, found without reading them all: the
/// query wrapped in `timestamp()` is evaluated at [`SPACING_PROBE_STEP_SECS`] over the last
/// [`SPACING_PROBE_SECS`] of the range. A stored series (a selector or a recording rule's
/// output) answers with its samples' own times, so their distinct values are as far apart as
/// the samples are; a computed expression (`sum(rate(...))`) answers with the evaluation
/// times, so the probe's step. Returns the median spacing in seconds and the time of the
/// last sample, whose phase a range query at that spacing must keep to land on the samples
/// (it looks back only 5 minutes); `None` with fewer than two samples in the probe.
pub async fn sample_spacing(
    client: &reqwest::Client,
    base_url: &str,
    range: &RangeQuery,
) -> Result<Option<(u32, DateTime<Utc>)>, PromError> {
    let probe = RangeQuery {
        query: format!("timestamp({})", range.query),
        start: range
            .start
            .max(range.end - chrono::Duration::seconds(SPACING_PROBE_SECS)),
        end: range.end,
        step_secs: SPACING_PROBE_STEP_SECS,
    };
    let stamps: Vec<Observation> = query_range(client, base_url, &probe)
        .await
        .map_err(|e| match e {
            // Name the user's query, not the wrapper, in what the user reads.
            PromError::SeriesCount { count, .. } => PromError::SeriesCount {
                query: range.query.clone(),
                count,
            },
            other => other,
        })?
        .into_iter()
        .filter(|o| o.value.is_finite())
        .filter_map(|o| {
            let at = Utc.timestamp_opt(o.value.round() as i64, 0).single()?;
            Some(Observation { at, value: 0.0 })
        })
        .collect();
    let last = stamps.iter().map(|o| o.at).max();
    Ok(super::median_spacing_secs(&stamps).zip(last))
}

async fn query_chunk(
    client: &reqwest::Client,
    url: &str,
    query: &str,
    start: i64,
    end: i64,
    step: i64,
) -> Result<Vec<Observation>, PromError> {
    let http_error = |source| PromError::Http {
        url: url.to_string(),
        source,
    };
    let response = client
        .get(url)
        .query(&[
            ("query", query.to_string()),
            ("start", start.to_string()),
            ("end", end.to_string()),
            ("step", step.to_string()),
        ])
        .timeout(DEFAULT_REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(http_error)?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(http_error)?;
    let bad = |message: String| PromError::BadAnswer {
        query: query.to_string(),
        message,
    };
    if body.len() > MAX_BODY_BYTES {
        return Err(bad(format!(
            "answer of {} bytes is over the limit",
            body.len()
        )));
    }
    let answer: ApiAnswer<Vec<MatrixSeries>> = serde_json::from_slice(&body).map_err(|e| {
        let preview: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        bad(format!(
            "HTTP {status}, not a Prometheus API answer ({e}): {preview:?}; is the URL the server's root?"
        ))
    })?;
    if answer.status != "success" {
        return Err(PromError::Rejected {
            query: query.to_string(),
            status,
            error_type: answer.error_type.unwrap_or_default(),
            error: answer.error.unwrap_or_default(),
        });
    }
    let data = answer
        .data
        .ok_or_else(|| bad("status success without data".into()))?;
    if data.result_type != "matrix" {
        return Err(bad(format!(
            "result type {:?}, expected a range vector (matrix)",
            data.result_type
        )));
    }
    match data.result.len() {
        // An empty chunk is a gap in the history, which build_series reports or refuses.
        0 => Ok(Vec::new()),
        1 => {
            let series = data.result.into_iter().next().expect("one series");
            series
                .values
                .into_iter()
                .map(|(ts, raw)| {
                    let at = Utc
                        .timestamp_millis_opt((ts * 1000.0).round() as i64)
                        .single()
                        .ok_or_else(|| bad(format!("timestamp {ts} out of range")))?;
                    let value = parse_sample_value(&raw)
                        .ok_or_else(|| bad(format!("sample value {raw:?} is not a number")))?;
                    Ok(Observation { at, value })
                })
                .collect()
        }
        count => Err(PromError::SeriesCount {
            query: query.to_string(),
            count,
        }),
    }
}

/// Prometheus writes sample values as strings, including `NaN`, `+Inf` and `-Inf`.
fn parse_sample_value(raw: &str) -> Option<f64> {
    match raw {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}
