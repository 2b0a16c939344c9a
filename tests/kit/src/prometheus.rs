//! Prometheus on loopback, serving history the test wrote, for the tests of the Prometheus
//! history source: `promtool tsdb create-blocks-from openmetrics` turns an OpenMetrics file
//! into TSDB blocks, and a real `prometheus` serves them on a free port (with a retention
//! long enough for samples from any year), returned once `/-/ready` answers.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::ensure;

use crate::{Process, free_port, installed};

/// How long promtool may take to write the blocks (about 40 ms per 2-hour block on a loaded
/// 2-core machine).
const CREATE_BLOCKS_TIMEOUT: Duration = Duration::from_secs(600);
/// How long Prometheus may take to open the blocks and report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running `prometheus`; see the module docs.
pub struct PrometheusProcess {
    _process: Process,
    url: String,
}

impl PrometheusProcess {
    /// Writes the samples of `openmetrics` as blocks into `dir/tsdb` and serves them. The
    /// configuration and both programs' logs go into `dir` too.
    pub async fn serve_openmetrics(
        openmetrics: &Path,
        dir: &Path,
    ) -> anyhow::Result<PrometheusProcess> {
        let prometheus = installed("prometheus", "prometheus")?;
        let promtool = installed("promtool", "prometheus")?;
        let data_dir = dir.join("tsdb");
        let mut create = Command::new(promtool);
        create
            .args(["tsdb", "create-blocks-from", "openmetrics", "-q"])
            .arg(openmetrics)
            .arg(&data_dir);
        let log = dir.join("promtool.log");
        let mut create = Process::spawn("promtool create-blocks-from", create, &log)?;
        let status = create.wait_exit(CREATE_BLOCKS_TIMEOUT)?;
        ensure!(
            status.success(),
            "promtool create-blocks-from failed ({status}); its log {} ends:\n{}",
            log.display(),
            create.log_tail()
        );

        let config = dir.join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 1m\n")?;
        let listen = format!("{}:{}", Ipv4Addr::LOCALHOST, free_port()?);
        let mut command = Command::new(prometheus);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data_dir.display()))
            // Without this, retention would delete old samples at start-up.
            .arg("--storage.tsdb.retention.time=100y")
            .arg(format!("--web.listen-address={listen}"));
        let mut process = Process::spawn("prometheus", command, &dir.join("prometheus.log"))?;
        let url = format!("http://{listen}");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let ready = format!("{url}/-/ready");
        process
            .wait_for("/-/ready to answer 200", READY_TIMEOUT, || {
                let request = client.get(&ready).send();
                async move {
                    request
                        .await
                        .is_ok_and(|r| r.status().is_success())
                        .then_some(())
                }
            })
            .await?;
        Ok(PrometheusProcess {
            _process: process,
            url,
        })
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }
}
