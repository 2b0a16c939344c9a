//! The monitoring files a user loads next to a cluster (`examples/monitoring/`): Prometheus's
//! own `promtool` checks the alerting rules and runs their unit tests (each alert fires on the
//! series it is written for), checks every PromQL expression of the Grafana dashboard, and
//! every metric the two name is one the product registers (read from the registrations in
//! the source), so a renamed metric cannot leave a silent panel or a dead alert behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .join("examples/monitoring")
}

fn promtool(args: &[&str], dir: &Path) -> anyhow::Result<String> {
    let promtool = umbra_testkit::installed("promtool", "prometheus")?;
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "promtool {args:?}:\n{text}");
    Ok(text)
}

/// The `umbra_*` metric names an expression reads, with a histogram's `_bucket`, `_sum` and
/// `_count` series named by their family.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("umbra_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(family.to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every metric family the product registers: the `"umbra_…"` string literals of the crates
/// that serve `/metrics` (orchestrator with consensus, agent, sample service).
fn registered_families() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut names = BTreeSet::new();
    let mut stack: Vec<PathBuf> = ["consensus/src", "orchestrator/src", "region-agent/src"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for piece in text.split("\"umbra_").skip(1) {
                    if let Some(end) = piece.find('"') {
                        let name = &piece[..end];
                        if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                            names.insert(format!("umbra_{name}"));
                        }
                    }
                }
            }
        }
    }
    names
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_unit_tests() -> anyhow::Result<()> {
    let dir = monitoring_dir();
    let checked = promtool(&["check", "rules", "alerts.yml"], &dir)?;
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"], &dir)?;
    assert!(tested.contains("SUCCESS"), "{tested}");

    let rules = std::fs::read_to_string(dir.join("alerts.yml"))?;
    let registered = registered_families();
    let used = metric_names(&rules);
    assert!(used.len() >= 5, "{used:?}");
    let unknown: Vec<_> = used.difference(&registered).collect();
    assert!(
        unknown.is_empty(),
        "alerts read metrics nobody registers: {unknown:?}"
    );
    Ok(())
}

#[test]
fn every_dashboard_query_parses_and_reads_metrics_the_product_registers() -> anyhow::Result<()> {
    let dir = monitoring_dir();
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        dir.join("grafana-dashboard.json"),
    )?)?;
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("an expr").to_owned())
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");

    // promtool parses PromQL offline only inside rule files: one recording rule per query.
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            format!(
                "      - record: dashboard:query_{i}\n        expr: {}\n",
                serde_json::to_string(expr).unwrap()
            )
        })
        .collect();
    let scratch = tempfile::tempdir()?;
    std::fs::write(
        scratch.path().join("dashboard_rules.yml"),
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )?;
    let checked = promtool(&["check", "rules", "dashboard_rules.yml"], scratch.path())?;
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{checked}"
    );

    let registered = registered_families();
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    let unknown: Vec<_> = used.difference(&registered).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard reads metrics nobody registers: {unknown:?}"
    );
    Ok(())
}

#[test]
fn metric_names_are_read_by_family() {
    assert_eq!(
        metric_names("histogram_quantile(0.9, rate(umbra_x_seconds_bucket[5m])) / umbra_y_total"),
        BTreeSet::from(["umbra_x_seconds".to_owned(), "umbra_y_total".to_owned()])
    );
}
