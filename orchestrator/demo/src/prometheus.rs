//! `umbra demo --slo-source prometheus`: a real Prometheus (Debian's `/usr/bin/prometheus`) on
//! loopback scraping every agent's `/metrics` once a second, with its storage in the demo's
//! directory, and the plan's SLO source pointed at it with queries over the fronts' metrics
//! (`umbra_front_*`). At the end the demo counts, from every live orchestrator's
//! `/metrics`, how many of the executor's Prometheus queries had data.
//!
//! This is the demo's own small launcher rather than the test kit's
//! (`umbra_testkit::prometheus`, which serves history written as blocks): the demo is part of
//! the product and depends on no test crate. It must not judge anything itself: the leading
//! orchestrator does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use umbra_orchestrator::migration::SloJudgement;

use crate::processes::Supervisor;
use crate::{DemoError, io};

/// How long Prometheus may take to answer `/-/ready`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Scrape interval: 1 s, so a 5 s analysis window holds about five scrapes of each front.
pub const SCRAPE_INTERVAL_SECS: u64 = 1;

/// The error-ratio query of the demo's plan: failed over all requests of the target's front in
/// the step's window (0/0, no request at all, is NaN: no data, the step holds).
pub const ERROR_RATIO_QUERY: &str = "sum(rate(umbra_front_request_errors_total{service=\"{service}\",region=\"{region}\"}[{window}])) / sum(rate(umbra_front_requests_total{service=\"{service}\",region=\"{region}\"}[{window}]))";
/// The p99 query of the demo's plan, seconds, from the fronts' latency histogram.
pub const LATENCY_P99_QUERY: &str = "histogram_quantile(0.99, sum by (le) (rate(umbra_front_request_duration_seconds_bucket{service=\"{service}\",region=\"{region}\"}[{window}])))";

/// A running Prometheus the demo started.
#[derive(Debug, Clone)]
pub struct DemoPrometheus {
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
}

/// Writes `prometheus.yml` (the agents' metrics endpoints as targets) under `dir`, starts
/// Prometheus on `listen` under `supervisor` and waits until it is ready.
pub async fn start(
    dir: &Path,
    listen: SocketAddr,
    targets: &[SocketAddr],
    supervisor: &mut Supervisor,
) -> Result<DemoPrometheus, DemoError> {
    let binary = PathBuf::from("/usr/bin/prometheus");
    if !binary.is_file() {
        return Err(DemoError::Setup(
            "/usr/bin/prometheus is not installed; `umbra demo --slo-source prometheus` runs \
             Prometheus: `apt-get install -y prometheus`"
                .to_owned(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let config = format!(
        "global:\n  scrape_interval: {SCRAPE_INTERVAL_SECS}s\n  evaluation_interval: {SCRAPE_INTERVAL_SECS}s\n\
         scrape_configs:\n  - job_name: umbra-agents\n    static_configs:\n      - targets: [{}]\n",
        list.join(", ")
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).map_err(io("writing prometheus.yml"))?;
    let mut command = Command::new(binary);
    command
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={listen}"));
    supervisor.spawn("prometheus", command, &dir.join("prometheus.log"), None)?;
    let url = format!("http://{listen}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| DemoError::Setup(format!("an HTTP client: {e}")))?;
    let started = Instant::now();
    loop {
        supervisor.check()?;
        let ready = http.get(format!("{url}/-/ready")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(DemoPrometheus { url });
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(DemoError::Timeout {
                what: format!("Prometheus ready on {listen}"),
                waited_secs: START_TIMEOUT.as_secs(),
                dir: dir.display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `plan` (the demo's) with its service's SLO judged by the Prometheus at `url`: the same
/// bounds, read from the fronts' metrics instead of the agents' reports, the latency judged as
/// `judgement` says.
pub fn plan_with_source(plan: &str, url: &str, judgement: SloJudgement) -> String {
    let judgement = match judgement {
        SloJudgement::Thresholds => "thresholds",
        SloJudgement::Compare => "compare",
    };
    plan.lines()
        .map(|line| match line.strip_prefix("slo = { ") {
            Some(rest) => format!(
                "slo = {{ {} judgement = \"{judgement}\", source = {{ prometheus = {{ url = \"{url}\", error_ratio_query = '{ERROR_RATIO_QUERY}', latency_p99_query = '{LATENCY_P99_QUERY}' }} }} }}",
                rest.trim_end_matches('}').trim_end().to_owned() + ","
            ),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The sum of `umbra_executor_slo_queries_total{result}` over the orchestrators whose admin
/// endpoints answer (a killed one's count is lost with it).
pub async fn slo_queries(admins: &[SocketAddr], result: &str) -> u64 {
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    else {
        return 0;
    };
    let series = format!("umbra_executor_slo_queries_total{{result=\"{result}\"}}");
    let mut total = 0;
    for admin in admins {
        let Ok(response) = http.get(format!("http://{admin}/metrics")).send().await else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        total += text
            .lines()
            .filter_map(|l| l.strip_prefix(series.as_str()))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    total
}

#[cfg(test)]
mod tests {
    use umbra_orchestrator::migration::{SloJudgement, SloSource};
    use umbra_orchestrator::state::{Command, OrchestratorState, Plan};

    use crate::scenario::{DemoLoad, DemoTiming, DemoTopology, plan_toml};

    #[test]
    fn the_demo_plan_with_prometheus_applies() {
        let text = plan_toml(
            &DemoTopology::new(18080),
            &DemoTiming::default(),
            &DemoLoad::default(),
        );
        for judgement in [SloJudgement::Thresholds, SloJudgement::Compare] {
            let text = super::plan_with_source(&text, "http://127.0.0.1:9090", judgement);
            let plan = Plan::from_toml(&text).expect("parses");
            let slo = &plan.services[0].slo;
            assert!(matches!(slo.source, SloSource::Prometheus(_)), "{slo:?}");
            assert_eq!((slo.min_samples, slo.judgement), (100, judgement));
            OrchestratorState::default()
                .apply_command(1, &Command::ApplyPlan { plan, at_ms: 1 })
                .expect("applies");
        }
    }
}
