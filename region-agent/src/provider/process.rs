//! The process runtime (the default provider): each instance is a local process of a
//! configured command — the sample service by default — on its own loopback port, with its own
//! data directory under the provider's state directory. Paused is SIGSTOP, resumed SIGCONT,
//! stopped SIGTERM then SIGKILL after [`STOP_GRACE`].
//!
//! The command learns where to write its port through `{port_file}` in its arguments (the
//! sample service's `--port-file`), so ports are chosen by the kernel (`--listen
//! 127.0.0.1:0`) and never raced. Every process carries `UMBRA_INSTANCE_ID` and
//! `UMBRA_PROVIDER_STATE` in its environment: after an agent restart an instance is adopted
//! only if the recorded pid still runs *with those values*, so a recycled pid is never
//! signalled. Instances run in their own session, so a Ctrl-C aimed at the agent does
//! not kill them (the agent adopts them when it comes back); see `start` for why each has its own
//! session.
//!
//! It must not signal any pid it has not verified as its own instance.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use super::{InstanceLimits, InstanceRecord, Observed, ProviderError, Runtime};

/// How long a stopped instance gets between SIGTERM and SIGKILL: the sample service drains in
/// well under a second; 5 s is the common container-runtime default halved.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a started process may take to write its port file.
pub const PORT_FILE_TIMEOUT: Duration = Duration::from_secs(15);
/// Environment variable naming the instance inside its process.
pub const ENV_INSTANCE_ID: &str = "UMBRA_INSTANCE_ID";
/// Environment variable naming the provider's state directory inside an instance's process.
pub const ENV_PROVIDER_STATE: &str = "UMBRA_PROVIDER_STATE";

/// What to run for each instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessConfig {
    /// The program.
    pub command: PathBuf,
    /// Its arguments; `{data_dir}`, `{port_file}` and `{id}` are replaced per instance.
    pub args: Vec<String>,
    /// The PostgreSQL server the instances keep their data on (the sample's `--postgres`):
    /// removing an instance drops its database there, as it deletes its directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<String>,
}

impl ProcessConfig {
    /// Runs the sample service at `sample_binary` with the given backing latency, keeping its
    /// data in PostgreSQL on the server `postgres` names, if given (`--postgres`).
    pub fn sample(sample_binary: PathBuf, backing_latency_ms: u64, postgres: Option<&str>) -> Self {
        let mut args: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "{data_dir}",
            "--port-file",
            "{port_file}",
            "--backing-latency-ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([backing_latency_ms.to_string()])
        .collect();
        if let Some(conninfo) = postgres {
            args.extend(["--postgres".to_owned(), conninfo.to_owned()]);
        }
        ProcessConfig {
            command: sample_binary,
            args,
            postgres: postgres.map(str::to_owned),
        }
    }

    /// Checks that the command exists and reports its port.
    pub fn validate(&self) -> Result<(), ProviderError> {
        let err = |message: String| ProviderError::Runtime {
            runtime: "process",
            message,
        };
        if !self.command.is_file() {
            return Err(err(format!(
                "command {} does not exist; build it (cargo build -p umbra-agent) or set \
                 provider.process.command",
                self.command.display()
            )));
        }
        if !self.args.iter().any(|a| a.contains("{port_file}")) {
            return Err(err(
                "the arguments must contain {port_file}: the instance writes its bound port \
                 there"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Instances as local processes.
pub struct ProcessRuntime {
    config: ProcessConfig,
    state_dir: PathBuf,
    /// Children started by this agent process, kept so they are reaped. Adopted instances are
    /// not our children (their parent died); init reaps them.
    children: Mutex<HashMap<String, Child>>,
}

impl ProcessRuntime {
    /// A runtime whose instances live under `state_dir` (which must be the provider's).
    pub fn new(config: ProcessConfig, state_dir: &Path) -> Result<Self, ProviderError> {
        config.validate()?;
        let state_dir = std::fs::canonicalize(state_dir)
            .or_else(|_| {
                std::fs::create_dir_all(state_dir)?;
                std::fs::canonicalize(state_dir)
            })
            .map_err(|e| ProviderError::State {
                path: state_dir.to_owned(),
                message: e.to_string(),
            })?;
        Ok(ProcessRuntime {
            config,
            state_dir,
            children: Mutex::new(HashMap::new()),
        })
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("processes").join(id)
    }

    fn err(message: impl Into<String>) -> ProviderError {
        ProviderError::Runtime {
            runtime: "process",
            message: message.into(),
        }
    }

    /// Whether `pid` is a live process of this provider's instance `id`.
    fn is_ours(&self, pid: u32, id: &str) -> bool {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            return false;
        };
        let want_id = format!("{ENV_INSTANCE_ID}={id}");
        let want_state = format!("{ENV_PROVIDER_STATE}={}", self.state_dir.display());
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        vars.contains(&want_id.as_bytes()) && vars.contains(&want_state.as_bytes())
    }

    fn signal(&self, rec: &InstanceRecord, sig: Signal) -> Result<(), ProviderError> {
        let pid = rec
            .pid
            .ok_or_else(|| Self::err(format!("instance {:?} has no process", rec.id)))?;
        if !self.is_ours(pid, &rec.id) {
            return Err(Self::err(format!(
                "process {pid} of instance {:?} is gone",
                rec.id
            )));
        }
        kill(Pid::from_raw(pid as i32), sig)
            .map_err(|e| Self::err(format!("{sig} to pid {pid}: {e}")))
    }

    /// Whether the process has exited (reaping it if it is our child).
    fn exited(&self, id: &str, pid: u32) -> bool {
        if let Some(child) = self.children.lock().expect("children lock").get_mut(id) {
            return !matches!(child.try_wait(), Ok(None));
        }
        !matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
    }
}

/// The state letter of `/proc/PID/stat` (R, S, D, T, t, Z, X...), or None if there is none.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: the state follows the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

async fn wait_until(
    deadline: Instant,
    mut done: impl FnMut() -> bool,
) -> Result<(), ProviderError> {
    while !done() {
        if Instant::now() >= deadline {
            return Err(ProcessRuntime::err("timed out"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn initial_limits(&self) -> Option<InstanceLimits> {
        None
    }

    async fn set_limits(&self, _: &InstanceRecord, _: InstanceLimits) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported {
            runtime: "process",
            what: "limit an instance's CPU or memory",
            advice: "run the region's agent with the docker provider ([provider] kind = \"docker\") for adaptive limits",
        })
    }

    async fn create(&self, rec: &mut InstanceRecord) -> Result<(), ProviderError> {
        let dir = self.instance_dir(&rec.id);
        std::fs::create_dir_all(dir.join("data"))
            .map_err(|e| Self::err(format!("creating {}: {e}", dir.display())))
    }

    async fn start(&self, rec: &mut InstanceRecord) -> Result<(), ProviderError> {
        let dir = self.instance_dir(&rec.id);
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| Self::err(format!("creating {}: {e}", data_dir.display())))?;
        let port_file = dir.join("port");
        let _ = std::fs::remove_file(&port_file);
        let args: Vec<String> = self
            .config
            .args
            .iter()
            .map(|a| {
                a.replace("{data_dir}", &data_dir.to_string_lossy())
                    .replace("{port_file}", &port_file.to_string_lossy())
                    .replace("{id}", &rec.id)
            })
            .collect();
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .map_err(|e| Self::err(format!("opening {name}: {e}")))
        };
        let mut command = Command::new(&self.config.command);
        command
            .args(&args)
            .env(ENV_INSTANCE_ID, &rec.id)
            .env(ENV_PROVIDER_STATE, &self.state_dir)
            .stdin(Stdio::null())
            .stdout(log("stdout.log")?)
            .stderr(log("stderr.log")?)
            .kill_on_drop(false);
        // Each instance gets its own session. A new process group alone is not enough: when
        // the agent dies, Linux sends SIGHUP + SIGCONT to a process group that becomes orphaned
        // while it has a stopped member *in the parent's session* — killing (or silently
        // resuming) a paused instance. In its own session the rule does not apply, and a Ctrl-C
        // at the agent's terminal does not reach it either.
        #[allow(unsafe_code)]
        // SAFETY: the closure runs between fork and exec and only calls setsid(2), which is
        // async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| Self::err(format!("spawning {}: {e}", self.config.command.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| Self::err("the child exited at once"))?;
        rec.pid = Some(pid);
        // The pid file covers a crash of the agent before the provider records the pid:
        // adoption finds the process through it (and checks it is ours).
        std::fs::write(dir.join("pid"), format!("{pid}\n"))
            .map_err(|e| Self::err(format!("writing the pid file: {e}")))?;
        let deadline = Instant::now() + PORT_FILE_TIMEOUT;
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Ok(port) = text.trim().parse::<u16>()
            {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                let tail: String = stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                return Err(Self::err(format!(
                    "instance {:?} exited with {status} before serving: {tail}",
                    rec.id
                )));
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(Self::err(format!(
                    "instance {:?} wrote no port to {} within {PORT_FILE_TIMEOUT:?}",
                    rec.id,
                    port_file.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        rec.addr = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        self.children
            .lock()
            .expect("children lock")
            .insert(rec.id.clone(), child);
        Ok(())
    }

    async fn freeze(&self, rec: &InstanceRecord) -> Result<(), ProviderError> {
        self.signal(rec, Signal::SIGSTOP)?;
        let pid = rec.pid.expect("signal checked the pid");
        // SIGSTOP is asynchronous: report paused only once the kernel says so.
        wait_until(Instant::now() + Duration::from_secs(5), || {
            matches!(proc_state(pid), Some('T') | Some('t'))
        })
        .await
    }

    async fn thaw(&self, rec: &InstanceRecord) -> Result<(), ProviderError> {
        self.signal(rec, Signal::SIGCONT)
    }

    async fn stop(&self, rec: &mut InstanceRecord) -> Result<(), ProviderError> {
        let Some(pid) = rec.pid else { return Ok(()) };
        if !self.is_ours(pid, &rec.id) || self.exited(&rec.id, pid) {
            self.children.lock().expect("children lock").remove(&rec.id);
            rec.pid = None;
            let _ = std::fs::remove_file(self.instance_dir(&rec.id).join("pid"));
            return Ok(());
        }
        // A stopped process handles SIGTERM only once continued.
        self.signal(rec, Signal::SIGTERM)?;
        let _ = self.signal(rec, Signal::SIGCONT);
        let graceful = wait_until(Instant::now() + STOP_GRACE, || self.exited(&rec.id, pid)).await;
        if graceful.is_err() {
            tracing::warn!(id = %rec.id, pid, "no exit after SIGTERM; sending SIGKILL");
            let _ = self.signal(rec, Signal::SIGKILL);
            wait_until(Instant::now() + STOP_GRACE, || self.exited(&rec.id, pid))
                .await
                .map_err(|_| Self::err(format!("pid {pid} survived SIGKILL")))?;
        }
        self.children.lock().expect("children lock").remove(&rec.id);
        rec.pid = None;
        let _ = std::fs::remove_file(self.instance_dir(&rec.id).join("pid"));
        Ok(())
    }

    async fn remove(&self, rec: &InstanceRecord) -> Result<(), ProviderError> {
        let mut rec = rec.clone();
        self.stop(&mut rec).await?;
        if let Some(conninfo) = &self.config.postgres {
            let dropped = crate::sample::postgres::drop_instance_database(conninfo, &rec.id)
                .await
                .map_err(|e| {
                    Self::err(format!(
                        "dropping instance {}'s PostgreSQL database: {e}",
                        rec.id
                    ))
                })?;
            if dropped {
                tracing::info!(id = %rec.id, "dropped the removed instance's PostgreSQL database");
            }
        }
        let dir = self.instance_dir(&rec.id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::err(format!("removing {}: {e}", dir.display()))),
        }
    }

    async fn observe(&self, rec: &mut InstanceRecord) -> Result<Observed, ProviderError> {
        let dir = self.instance_dir(&rec.id);
        if rec.pid.is_none()
            && let Ok(text) = std::fs::read_to_string(dir.join("pid"))
            && let Ok(pid) = text.trim().parse::<u32>()
            && self.is_ours(pid, &rec.id)
        {
            rec.pid = Some(pid);
            if let Ok(port) = std::fs::read_to_string(dir.join("port"))
                && let Ok(port) = port.trim().parse::<u16>()
            {
                rec.addr = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
            }
        }
        let Some(pid) = rec.pid else {
            return Ok(Observed::Absent);
        };
        if !self.is_ours(pid, &rec.id) {
            return Ok(Observed::Absent);
        }
        Ok(match proc_state(pid) {
            Some('T') | Some('t') => Observed::Frozen,
            Some('Z') | Some('X') | None => Observed::Exited,
            Some(_) => Observed::Running,
        })
    }
}
