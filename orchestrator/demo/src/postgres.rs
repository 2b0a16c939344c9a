//! `umbra demo --data postgres`: one real PostgreSQL server per region, on loopback, for the
//! sample instances to keep their data in (`[provider] postgres` of each agent; the sample's
//! PostgreSQL mode, `umbra_agent::sample::postgres`). Each server is initialised in the run's
//! directory (`initdb`, trust authentication for loopback connections only) and started with
//! `wal_level = logical`; run as the `postgres` user when the demo runs as root (PostgreSQL
//! refuses root).
//!
//! This is the demo's own small launcher rather than the test kit's
//! (`umbra_testkit::postgres`): the demo is part of the product and depends on no test crate.
//! It starts servers and hands their conninfo to the agents; it never touches their data.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::processes::Supervisor;
use crate::{DemoError, io};

/// How long a server may take to initialise and accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The replication lag, in bytes of WAL, under which the migration may cut over: positions
/// are WAL positions in this mode, and a server's WAL also moves with what other databases
/// write, so "0" would wait for a quiet moment. The cutover itself still waits for the
/// fenced source's exact position.
pub const MAX_REPLICATION_LAG_BYTES: u64 = 1 << 20;

/// A region's running server.
#[derive(Debug, Clone)]
pub struct DemoPostgres {
    /// Its conninfo for `[provider] postgres` (the `postgres` superuser, no password).
    pub conninfo: String,
}

/// The newest installed PostgreSQL's program directory, or how to install it.
fn bin_dir() -> Result<PathBuf, DemoError> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        DemoError::Setup(
            "--data postgres runs a PostgreSQL server per region, and none is installed: \
             `apt-get install -y postgresql` (or `bash .ci/install-deps`)"
                .into(),
        )
    })
}

/// The user the servers run as: `postgres` when the demo runs as root.
fn run_as() -> Result<Option<(u32, u32)>, DemoError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some((user.uid.as_raw(), user.gid.as_raw()))),
        _ => Err(DemoError::Setup(
            "the demo runs as root, which PostgreSQL refuses, and there is no `postgres` user \
             to run it as (Debian's postgresql package makes one)"
                .into(),
        )),
    }
}

/// Initialises and starts `region`'s server in `dir` on `port`.
pub async fn start(
    dir: &Path,
    region: &str,
    port: u16,
    supervisor: &mut Supervisor,
) -> Result<DemoPostgres, DemoError> {
    let bin = bin_dir()?;
    let user = run_as()?;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io(format!(
            "handing {} to the postgres user",
            dir.display()
        )))?;
    }
    let data = dir.join("data");
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        .current_dir(dir);
    if let Some((uid, gid)) = user {
        initdb.uid(uid).gid(gid);
    }
    let out = initdb.output().map_err(io("running initdb"))?;
    if !out.status.success() {
        return Err(DemoError::Setup(format!(
            "initdb for {region} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut command = Command::new(bin.join("postgres"));
    command
        .arg("-D")
        .arg(&data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-c")
        .arg(format!("listen_addresses={}", Ipv4Addr::LOCALHOST))
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        .args([
            "-c",
            "wal_level=logical",
            "-c",
            "max_replication_slots=64",
            "-c",
            "max_wal_senders=64",
            "-c",
            "max_worker_processes=32",
            "-c",
            "max_logical_replication_workers=16",
            "-c",
            "shared_buffers=32MB",
        ])
        .current_dir(dir);
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    let log = dir.join("postgres.log");
    supervisor.spawn(&format!("postgres-{region}"), command, &log, None)?;
    let started = Instant::now();
    loop {
        supervisor.check()?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("database system is ready to accept connections") {
            break;
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(DemoError::Timeout {
                what: format!("PostgreSQL for {region} accepting connections on port {port}"),
                waited_secs: START_TIMEOUT.as_secs(),
                dir: dir.display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(DemoPostgres {
        conninfo: format!("host={} port={port} user=postgres", Ipv4Addr::LOCALHOST),
    })
}

/// The demo's plan with the replication-lag bound in bytes ([`MAX_REPLICATION_LAG_BYTES`]).
pub fn plan_on_postgres(plan: &str) -> String {
    plan.replace(
        "max_replication_lag = 0\n",
        &format!("max_replication_lag = {MAX_REPLICATION_LAG_BYTES}\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_on_postgres_bounds_the_lag_in_bytes() {
        let topology = crate::scenario::DemoTopology::new(8000);
        let plan = crate::scenario::plan_toml(
            &topology,
            &crate::scenario::DemoTiming::default(),
            &crate::scenario::DemoLoad::default(),
        );
        let changed = plan_on_postgres(&plan);
        assert_ne!(
            changed, plan,
            "the plan's lag line moved: update plan_on_postgres"
        );
        assert!(changed.contains(&format!(
            "max_replication_lag = {MAX_REPLICATION_LAG_BYTES}"
        )));
    }
}
