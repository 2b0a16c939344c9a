//! The Prometheus source against a real Prometheus (Debian's `prometheus` and `promtool`):
//! three weeks of the Taylor series are written as OpenMetrics, turned into TSDB blocks by
//! `promtool tsdb create-blocks-from openmetrics`, served by a Prometheus started on a free
//! loopback port, and read back through `/api/v1/query_range`. The series, and the output of
//! `umbra forecast --json`, must equal those of the CSV path on the same data. Bad PromQL and
//! a query matching two series must give clear errors.
//!
//! Skips (with a message) only when the binaries are missing; `.ci/test` installs them.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use umbra_forecast::history::prometheus::{PromError, RangeQuery, query_range};
use umbra_forecast::history::{HistoryConfig, SeriesKey, build_series, csv_source};

/// Days of the Taylor series loaded into Prometheus: enough for a weekly MSTL, few enough
/// that promtool writes its 2-hour blocks quickly (about 40 ms each on a loaded 2-core box).
const DAYS: usize = 21;

fn find_binary(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Kills the Prometheus it owns when dropped, so a failing test leaves no process behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_with_deadline(child: &mut Child, deadline: Duration, what: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("{what} failed: {status}");
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            bail!("{what} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (timestamp, value) rows of the last `DAYS` days of the Taylor series.
fn taylor_tail() -> Vec<(DateTime<Utc>, f64)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/taylor_halfhourly.csv");
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

#[test]
fn prometheus_history_and_forecast_equal_the_csv_path() -> anyhow::Result<()> {
    let (Some(prometheus), Some(promtool)) = (find_binary("prometheus"), find_binary("promtool"))
    else {
        eprintln!(
            "SKIPPED: prometheus and promtool are not installed (apt-get install prometheus); \
             .ci/test installs them"
        );
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let rows = taylor_tail();
    let (csv_path, om_path) = write_inputs(dir.path(), &rows)?;
    let data_dir = dir.path().join("tsdb");
    let mut create = Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics", "-q"])
        .arg(&om_path)
        .arg(&data_dir)
        .stdout(Stdio::null())
        .spawn()?;
    wait_with_deadline(
        &mut create,
        Duration::from_secs(600),
        "promtool create-blocks-from",
    )?;

    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1m\n")?;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
    let _prometheus = ChildGuard(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data_dir.display()))
            // The data is from 2000: without this, retention would delete it at start-up.
            .arg("--storage.tsdb.retention.time=100y")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = client.get(format!("{url}/-/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("Prometheus on {url} not ready within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })?;

    // Library: the history read from Prometheus equals the one read from the CSV.
    let (start, end) = (rows[0].0, rows[rows.len() - 1].0);
    let history = HistoryConfig {
        slice_secs: 1800,
        ..HistoryConfig::default()
    };
    let key = SeriesKey::new("taylor", "uk");
    let query = r#"demand{service="taylor",region="uk"}"#;
    let from_prometheus = runtime.block_on(query_range(
        &client,
        &url,
        &RangeQuery {
            query: query.into(),
            start,
            end,
            step_secs: 1800,
        },
    ))?;
    let (prom_series, prom_report) = build_series(key.clone(), &from_prometheus, &history)?;
    let mut from_csv = csv_source::read_csv(&csv_path, None)?;
    let (csv_series, _) = build_series(key.clone(), &from_csv.remove(&key).unwrap(), &history)?;
    assert!(prom_report.is_clean(), "{prom_report:?}");
    assert_eq!(prom_series, csv_series);

    // CLI: `umbra forecast` prints the same forecast from either source.
    let common = [
        "--service",
        "taylor",
        "--region",
        "uk",
        "--slice-secs",
        "1800",
        "--horizon",
        "48",
        "--calibration-origins",
        "3",
        "--json",
    ];
    let start_arg = start.to_rfc3339();
    let end_arg = end.to_rfc3339();
    let mut prom_args = vec!["forecast", "--prometheus", &url, "--query", query];
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
    let a: serde_json::Value = serde_json::from_slice(&prom_out.stdout)?;
    let b: serde_json::Value = serde_json::from_slice(&csv_out.stdout)?;
    assert_eq!(a["slices"].as_array().map(Vec::len), Some(48));
    assert_eq!(a, b);

    // A bad PromQL expression: Prometheus's own message reaches the user.
    let bad = umbra(&[
        "forecast",
        "--prometheus",
        &url,
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
    let err = runtime
        .block_on(query_range(
            &client,
            &url,
            &RangeQuery {
                query: "demand".into(),
                start,
                end,
                step_secs: 1800,
            },
        ))
        .unwrap_err();
    assert!(
        matches!(err, PromError::SeriesCount { count: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("aggregate it"), "{err}");

    // Nothing listening: a clear connection error, bounded by the request timeout.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let err = runtime
        .block_on(query_range(
            &client,
            &closed,
            &RangeQuery {
                query: query.into(),
                start,
                end,
                step_secs: 1800,
            },
        ))
        .unwrap_err();
    assert!(matches!(err, PromError::Http { .. }), "{err}");
    Ok(())
}
