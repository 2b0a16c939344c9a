//! The executor's Prometheus SLO source: it evaluates a step's two instant queries
//! (`/api/v1/query`) and turns the answers into one [`SloAnswer`] for the controller. An empty
//! vector, NaN or ±Inf is [`SloAnswer::NoData`]; a server that cannot be reached, refuses the
//! query or answers something unreadable is [`SloAnswer::Error`]. Neither is ever a number a
//! step could pass on. This module only asks; what an answer means is the controller's and
//! the migration core's business. Every request has a timeout and every body a size limit.

use std::time::Duration;

use serde::Deserialize;

use umbra_forecast::history::prometheus::ApiAnswer;

use super::controller::SloQueryJob;
use crate::migration::SloAnswer;

/// Timeout of one query: 2 s, twice Prometheus's scrape interval in the demo and far above an
/// instant query over a few seconds of one service's series; a slower server is an error and
/// the step holds.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer accepted: an instant vector of one aggregated series is a few hundred bytes.
const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Deserialize)]
struct Sample {
    value: (f64, String),
}

/// What one query gave: a finite number, nothing, or a failure.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Number(f64),
    NoData(String),
    Error(String),
}

/// The value of an instant query's answer body (`status` from the HTTP response).
fn parse(status: u16, body: &[u8]) -> Value {
    let answer: ApiAnswer<serde_json::Value> = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        Err(e) => return Value::Error(format!("HTTP {status}, not a Prometheus answer: {e}")),
    };
    if answer.status != "success" {
        return Value::Error(format!(
            "HTTP {status}, {}: {}",
            answer.error_type.unwrap_or_default(),
            answer.error.unwrap_or_default()
        ));
    }
    let Some(data) = answer.data else {
        return Value::Error("an answer without data".to_owned());
    };
    let text = match data.result_type.as_str() {
        "vector" => {
            let samples: Vec<Sample> = match serde_json::from_value(data.result) {
                Ok(samples) => samples,
                Err(e) => return Value::Error(format!("a vector that does not parse: {e}")),
            };
            // Several series (a query not aggregated to one): the worst of them is judged.
            let values: Vec<f64> = samples
                .iter()
                .filter_map(|s| s.value.1.parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .collect();
            if samples.is_empty() {
                return Value::NoData("empty vector".to_owned());
            }
            match values.iter().copied().reduce(f64::max) {
                Some(v) => return Value::Number(v),
                None => return Value::NoData("NaN".to_owned()),
            }
        }
        "scalar" => match serde_json::from_value::<(f64, String)>(data.result) {
            Ok((_, text)) => text,
            Err(e) => return Value::Error(format!("a scalar that does not parse: {e}")),
        },
        other => {
            return Value::Error(format!(
                "a {other}, not an instant vector or scalar: drop the range selector around the whole expression"
            ));
        }
    };
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Value::Number(v),
        _ => Value::NoData(text),
    }
}

async fn query(client: &reqwest::Client, url: &str, promql: &str) -> Value {
    let endpoint = format!("{}/api/v1/query", url.trim_end_matches('/'));
    let response = client
        .get(&endpoint)
        .query(&[("query", promql)])
        .timeout(QUERY_TIMEOUT)
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(e) => return Value::Error(format!("{endpoint}: {e}")),
    };
    let status = response.status().as_u16();
    match response.bytes().await {
        Ok(body) if body.len() > MAX_BODY_BYTES => {
            Value::Error(format!("an answer of {} bytes", body.len()))
        }
        Ok(body) => parse(status, &body),
        Err(e) => Value::Error(format!("{endpoint}: {e}")),
    }
}

/// Asks `job`'s queries (the source's p99 too, for the comparison judgement); the latency
/// queries' seconds become milliseconds.
pub async fn ask(client: &reqwest::Client, job: &SloQueryJob) -> SloAnswer {
    let source_latency = async {
        match &job.source_latency_p99_query {
            Some(promql) => Some(query(client, &job.url, promql).await),
            None => None,
        }
    };
    let (errors, latency, source_latency) = tokio::join!(
        query(client, &job.url, &job.error_ratio_query),
        query(client, &job.url, &job.latency_p99_query),
        source_latency
    );
    match (errors, latency) {
        (Value::Number(error_ratio), Value::Number(p99_secs)) => SloAnswer::Data {
            error_ratio,
            p99_ms: p99_secs * 1_000.0,
            // Without data for the source this answer adds no pair to compare.
            source_p99_ms: match source_latency {
                Some(Value::Number(secs)) => Some(secs * 1_000.0),
                _ => None,
            },
        },
        (Value::Error(why), _) => SloAnswer::Error(format!("error_ratio_query: {why}")),
        (_, Value::Error(why)) => SloAnswer::Error(format!("latency_p99_query: {why}")),
        (Value::NoData(why), _) => SloAnswer::NoData(format!("error_ratio_query: {why}")),
        (_, Value::NoData(why)) => SloAnswer::NoData(format!("latency_p99_query: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_numbers_no_data_or_errors() {
        let rows: Vec<(&str, Value)> = vec![
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"0.25"]}]}}"#,
                Value::Number(0.25),
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"0.1"]},{"metric":{"a":"2"},"value":[1,"0.3"]}]}}"#,
                Value::Number(0.3),
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
                Value::NoData("empty vector".into()),
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#,
                Value::NoData("NaN".into()),
            ),
            (
                r#"{"status":"success","data":{"resultType":"scalar","result":[1,"+Inf"]}}"#,
                Value::NoData("+Inf".into()),
            ),
            (
                r#"{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}"#,
                Value::Number(2.0),
            ),
        ];
        for (body, expected) in rows {
            assert_eq!(parse(200, body.as_bytes()), expected, "{body}");
        }
        for body in [
            r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
            r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
            "<html>",
        ] {
            assert!(
                matches!(parse(400, body.as_bytes()), Value::Error(_)),
                "{body}"
            );
        }
    }
}
