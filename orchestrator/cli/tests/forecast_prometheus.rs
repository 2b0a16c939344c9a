//! The Prometheus source against a real Prometheus (Debian's `prometheus` and `promtool`):
//! three weeks of the Taylor series are written as OpenMetrics, turned into TSDB blocks by
//! `promtool tsdb create-blocks-from openmetrics`, served by a Prometheus started on a free
//! loopback port, and read back through `/api/v1/query_range`. The series, and the output of
//! `umbra forecast --json`, must equal those of the CSV path on the same data. Bad PromQL and
//! a query matching two series must give clear errors.
//!
//! Fails, saying how to install them, when the binaries are missing: `.ci/install-deps`
//! installs them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use umbra_forecast::history::prometheus::{PromError, RangeQuery, query_range};
use umbra_forecast::history::{HistoryConfig, Observation, SeriesKey, build_series, csv_source};
use umbra_testkit::prometheus::PrometheusProcess;

/// Days of the Taylor series loaded into Prometheus: enough for a weekly MSTL, few enough
/// that promtool writes its 2-hour blocks quickly (about 40 ms each on a loaded 2-core box).
const DAYS: usize = 21;

/// (timestamp, value) rows of the last `DAYS` days of the Taylor series.
fn taylor_tail() -> Vec<(DateTime<Utc>, f64)> {
    // Kept with umbra-forecast's tests.
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../forecast/tests/data/taylor_halfhourly.csv");
    let key = SeriesKey::new("taylor", "uk");
    let obs = csv_source::read_csv(&path, Some(&key))
        .unwrap()
        .remove(&key)
        .unwrap();
    obs[obs.len() - DAYS * 48..]
        .iter()
        .map(|o| (o.at, o.value))
        .collect()
}

fn write_inputs(dir: &Path, rows: &[(DateTime<Utc>, f64)]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let csv_path = dir.join("demand.csv");
    let mut csv = std::fs::File::create(&csv_path)?;
    writeln!(csv, "timestamp,service,region,value")?;
    let om_path = dir.join("demand.om");
    let mut om = std::fs::File::create(&om_path)?;
    writeln!(om, "# HELP demand Requests per slice.")?;
    writeln!(om, "# TYPE demand gauge")?;
    for (at, v) in rows {
        writeln!(csv, "{},taylor,uk,{v}", at.to_rfc3339())?;
        writeln!(
            om,
            "demand{{service=\"taylor\",region=\"uk\"}} {v} {}",
            at.timestamp()
        )?;
        // A second region, so that an unaggregated query matches two series.
        writeln!(
            om,
            "demand{{service=\"taylor\",region=\"eu\"}} {} {}",
            v / 2.0,
            at.timestamp()
        )?;
    }
    writeln!(om, "# EOF")?;
    Ok((csv_path, om_path))
}

fn umbra(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new(env!("CARGO_BIN_EXE_umbra"))
        .args(args)
        .output()
        .context("running umbra")
}

#[tokio::test]
async fn prometheus_history_and_forecast_equal_the_csv_path() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rows = taylor_tail();
    let (csv_path, om_path) = write_inputs(dir.path(), &rows)?;
    let prometheus = PrometheusProcess::serve_openmetrics(&om_path, dir.path()).await?;
    let url = prometheus.url();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    // Library: the history read from Prometheus equals the one read from the CSV.
    let (start, end) = (rows[0].0, rows[rows.len() - 1].0);
    let history = HistoryConfig {
        slice_secs: 1800,
        ..HistoryConfig::default()
    };
    let key = SeriesKey::new("taylor", "uk");
    let query = r#"demand{service="taylor",region="uk"}"#;
    // `query` at `url` over the whole series, at its 30-minute step.
    let range = |url: String, query: &str| {
        let range = RangeQuery {
            query: query.into(),
            start,
            end,
            step_secs: 1800,
        };
        let client = client.clone();
        async move { query_range(&client, &url, &range).await }
    };
    let from_prometheus: Vec<Observation> = range(url.to_owned(), query).await?;
    let (prom_series, prom_report) = build_series(key.clone(), &from_prometheus, &history)?;
    let mut from_csv = csv_source::read_csv(&csv_path, None)?;
    let (csv_series, _) = build_series(key.clone(), &from_csv.remove(&key).unwrap(), &history)?;
    assert!(prom_report.is_clean(), "{prom_report:?}");
    assert_eq!(prom_series, csv_series);

    // CLI: `umbra forecast` prints the same forecast from either source, each at the data's
    // own half-hourly slices (no --slice-secs): Prometheus's found by probing the samples.
    let common = [
        "--service",
        "taylor",
        "--region",
        "uk",
        "--horizon",
        "48",
        "--calibration-origins",
        "3",
        "--json",
    ];
    let start_arg = start.to_rfc3339();
    let end_arg = end.to_rfc3339();
    let mut prom_args = vec!["forecast", "--prometheus", url, "--query", query];
    prom_args.extend(["--start", &start_arg, "--end", &end_arg]);
    prom_args.extend(common);
    let prom_out = umbra(&prom_args)?;
    assert!(
        prom_out.status.success(),
        "{}",
        String::from_utf8_lossy(&prom_out.stderr)
    );
    let csv_arg = csv_path.display().to_string();
    let mut csv_args = vec!["forecast", "--csv", &csv_arg];
    csv_args.extend(common);
    let csv_out = umbra(&csv_args)?;
    assert!(
        csv_out.status.success(),
        "{}",
        String::from_utf8_lossy(&csv_out.stderr)
    );
    let mut a: serde_json::Value = serde_json::from_slice(&prom_out.stdout)?;
    let mut b: serde_json::Value = serde_json::from_slice(&csv_out.stdout)?;
    assert_eq!(a["slices"].as_array().map(Vec::len), Some(48));
    let (prom_slice, csv_slice) = (a["slice"].take(), b["slice"].take());
    assert_eq!(prom_slice["secs"], 1800, "{prom_slice}");
    assert_eq!(prom_slice["from"], "prometheus_samples", "{prom_slice}");
    assert_eq!(csv_slice["secs"], 1800, "{csv_slice}");
    assert_eq!(a, b);

    // The range need not start on a sample: the query follows the samples' phase.
    let late_start = (start + chrono::Duration::minutes(10)).to_rfc3339();
    let mut late_args = vec!["forecast", "--prometheus", url, "--query", query];
    late_args.extend(["--start", &late_start, "--end", &end_arg]);
    late_args.extend(common);
    let late = umbra(&late_args)?;
    assert!(
        late.status.success(),
        "{}",
        String::from_utf8_lossy(&late.stderr)
    );
    let late: serde_json::Value = serde_json::from_slice(&late.stdout)?;
    assert_eq!(late["slice"]["secs"], 1800);
    assert_eq!(late["history"]["filled_slices"], 0, "{}", late["history"]);
    assert_eq!(late["history_slices"], DAYS * 48 - 1);

    // A bad PromQL expression: Prometheus's own message reaches the user.
    let bad = umbra(&[
        "forecast",
        "--prometheus",
        url,
        "--query",
        "sum(",
        "--start",
        &start_arg,
        "--end",
        &end_arg,
        "--slice-secs",
        "1800",
    ])?;
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("rejected the query") && stderr.contains("parse error"),
        "{stderr}"
    );

    // A query matching two series is refused with advice, not silently merged.
    let err = range(url.to_owned(), "demand").await.unwrap_err();
    assert!(
        matches!(err, PromError::SeriesCount { count: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("aggregate it"), "{err}");

    // Nothing listening: a clear connection error, bounded by the request timeout.
    let closed = format!("http://127.0.0.1:{}", umbra_testkit::free_port()?);
    let err = range(closed, query).await.unwrap_err();
    assert!(matches!(err, PromError::Http { .. }), "{err}");
    Ok(())
}
