//! Umbra's test kit: what every crate's tests share, written once.
//!
//! - [`binary`] finds a binary that `cargo build --workspace --bins` built beside the test.
//! - [`free_port`] draws a loopback port below the ephemeral range (`umbra_proto::ports`).
//! - [`wait_for`] polls a condition with a deadline: tests wait on conditions, never on sleeps.
//! - [`Process`] is a child process that dies with the test (also on panic), whose
//!   [`Process::pause`] returns only once the kernel reports every thread stopped.
//! - [`Reaper`] kills the processes a product started in sessions of their own.
//! - [`sample::SampleProcess`] runs `umbra-sample` on a data directory of the test's.
//! - The real third-party parts, each started on loopback with files the test writes:
//!   [`bind`] (`named`, `nsupdate`, `dig`), [`haproxy`], [`postgres`], [`prometheus`]. A
//!   missing one fails the test with a message saying how to install it ([`installed`]); none
//!   is ever skipped.
//!
//! It holds no product logic and depends on no product crate but `umbra-proto`, so the
//! tests of every crate (agent, DNS, CLI) can use it without building the orchestrator.

pub mod agent;
pub mod bind;
pub mod haproxy;
pub mod postgres;
mod process;
pub mod prometheus;
mod reaper;
pub mod sample;
mod secrets;
mod tools;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub use process::{Process, wait_until_stopped};
pub use reaper::{Reaper, processes_marked};
pub use secrets::{Secrets, TEST_TOKEN, write_secrets};
pub use tools::installed;
pub use umbra_proto::ports::{free_loopback_port as free_port, free_tcp_port_on};

/// Finds a binary built by `cargo build --workspace --bins` next to the running test.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    // Test executables live in target/<profile>/deps; binaries one level up.
    let mut dir = exe.parent().map(Path::to_path_buf);
    while let Some(candidate) = dir {
        let path = candidate.join(name);
        if path.is_file() {
            return Ok(path);
        }
        dir = candidate.parent().map(Path::to_path_buf);
        if candidate.file_name().is_some_and(|n| n == "target") {
            break;
        }
    }
    bail!(
        "binary `{name}` not found next to {}; run `cargo build --workspace --bins` first",
        exe.display()
    )
}

/// The directory holding the workspace's binaries (`umbra-orchestrator`, `umbra-agent`,
/// `umbra-sample`, ...), as [`binary`] finds them: what the demo's `bin_dir` names.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let orchestrator = binary("umbra-orchestrator")?;
    Ok(orchestrator
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default())
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
