//! `umbra-sample`, the sample key-value service, as a process of the test's own: started on a
//! data directory the test chooses, with a port file, and returned only once it serves (its
//! port is in the file); SIGKILLed with the test. For tests that drive instances directly
//! rather than through a provider (which starts its own).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::Process;

/// How long `umbra-sample` may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `umbra-sample`; see the module docs.
pub struct SampleProcess {
    process: Process,
    port: u16,
}

impl SampleProcess {
    /// Starts `binary` (the test's `umbra-sample`) on a port it picks, with its write-ahead log
    /// in `data_dir`, a cold read costing `backing_latency_ms`, and its port file and log
    /// beside `data_dir` (`<data_dir>.port`, `<data_dir>.log`).
    pub async fn start(
        binary: &Path,
        data_dir: &Path,
        backing_latency_ms: u64,
    ) -> anyhow::Result<SampleProcess> {
        SampleProcess::start_on(binary, data_dir, backing_latency_ms, 0).await
    }

    /// [`SampleProcess::start`] on loopback port `port` (0: one it picks), e.g. to restart an
    /// instance where its clients and replicas know it.
    pub async fn start_on(
        binary: &Path,
        data_dir: &Path,
        backing_latency_ms: u64,
        port: u16,
    ) -> anyhow::Result<SampleProcess> {
        SampleProcess::start_with(binary, data_dir, backing_latency_ms, port, &[]).await
    }

    /// [`SampleProcess::start`] keeping its data in PostgreSQL: the database `umbra_<name>` on
    /// the server `conninfo` names (`umbra-sample --postgres`).
    pub async fn start_postgres(
        binary: &Path,
        data_dir: &Path,
        name: &str,
        conninfo: &str,
    ) -> anyhow::Result<SampleProcess> {
        let args = ["--name", name, "--postgres", conninfo].map(str::to_owned);
        SampleProcess::start_with(binary, data_dir, 1, 0, &args).await
    }

    async fn start_with(
        binary: &Path,
        data_dir: &Path,
        backing_latency_ms: u64,
        port: u16,
        extra: &[String],
    ) -> anyhow::Result<SampleProcess> {
        let port_file = data_dir.with_extension("port");
        // A file left by an earlier run of the same instance would name its old port.
        let _ = std::fs::remove_file(&port_file);
        let mut command = Command::new(binary);
        command
            .arg("--listen")
            .arg(format!("{}:{port}", Ipv4Addr::LOCALHOST))
            .arg("--backing-latency-ms")
            .arg(backing_latency_ms.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--port-file")
            .arg(&port_file)
            .args(extra)
            .env("RUST_LOG", "warn");
        let mut process = Process::spawn("umbra-sample", command, &data_dir.with_extension("log"))?;
        let port = process
            .wait_for("its port file", START_TIMEOUT, || {
                let port = read_port(&port_file);
                async move { port }
            })
            .await?;
        Ok(SampleProcess { process, port })
    }

    /// The loopback port it serves on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}:{}", Ipv4Addr::LOCALHOST, self.port)
    }

    /// SIGKILLs it now: a crash, with nothing flushed or closed.
    pub fn kill(self) -> anyhow::Result<()> {
        self.process.kill()
    }
}

/// The port `umbra-sample` wrote (it writes the file atomically, once it accepts connections).
fn read_port(port_file: &Path) -> Option<u16> {
    std::fs::read_to_string(port_file).ok()?.trim().parse().ok()
}
