//! PostgreSQL on loopback, for the tests of the sample service's PostgreSQL mode: a real
//! server from Debian's `postgresql` package, initialised in a temporary directory
//! (`initdb`, trust authentication for loopback), started with `wal_level = logical` on a free
//! port, and returned once its log says it accepts connections. Run as the `postgres` user
//! when the test runs as root (PostgreSQL refuses root), as the test's user otherwise.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{Process, free_port};

/// How long a server may take to initialise and accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running PostgreSQL server; see the module docs.
pub struct PostgresProcess {
    _process: Process,
    port: u16,
    _dir: tempfile::TempDir,
}

/// The directory of the newest installed PostgreSQL's programs (`initdb`, `postgres`), or an
/// error saying how to install them.
fn bin_dir() -> anyhow::Result<PathBuf> {
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
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL is not installed, and this test drives the real one: install it with \
             `bash .ci/install-deps` (all the tests' programs) or `apt-get install -y postgresql`"
        ),
    }
}

/// The user and group the server runs as: `postgres` when we are root.
fn run_as() -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")?
        .context("running as root, and there is no `postgres` user to run PostgreSQL as")?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

fn as_user(command: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
}

impl PostgresProcess {
    /// Initialises and starts a server; see the module docs.
    pub async fn start() -> anyhow::Result<PostgresProcess> {
        let bin = bin_dir()?;
        let user = run_as()?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .current_dir(dir.path());
        as_user(&mut initdb, user);
        let output = initdb.output().context("running initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let port = free_port()?;
        let log = dir.path().join("postgres.log");
        // The log is created here (as root) and handed over: the server appends to it.
        std::fs::File::create(&log)?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&log, Some(uid), Some(gid))?;
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
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args([
                "-c",
                "wal_level=logical",
                "-c",
                "max_replication_slots=32",
                "-c",
                "max_wal_senders=32",
                "-c",
                "max_worker_processes=32",
                "-c",
                "max_logical_replication_workers=16",
                "-c",
                "shared_buffers=32MB",
            ])
            .current_dir(dir.path());
        as_user(&mut command, user);
        let mut process = Process::spawn("postgres", command, &log)?;
        process
            .wait_for("it to accept connections", START_TIMEOUT, || {
                let ready = log_says_ready(&log);
                async move { ready.then_some(()) }
            })
            .await?;
        Ok(PostgresProcess {
            _process: process,
            port,
            _dir: dir,
        })
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A conninfo for its `postgres` superuser, as `umbra-sample --postgres` takes it.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres",
            Ipv4Addr::LOCALHOST,
            self.port
        )
    }
}

fn log_says_ready(log: &Path) -> bool {
    std::fs::read_to_string(log)
        .is_ok_and(|text| text.contains("database system is ready to accept connections"))
}
