//! The processes `umbra demo` starts, and the guarantee that it stops them: every child is
//! registered here with its log file; dropping the [`Supervisor`] (normal end, error, Ctrl-C)
//! sends SIGTERM, waits a grace period, then SIGKILLs what is left, and finally kills the
//! sample-service instances the agents started (they run in their own sessions and outlive an
//! agent on purpose, for adoption, so they must be found by the marker in their environment),
//! and with them any haproxy front an agent ran (it carries the same marker).
//!
//! This module must not decide what to start; it only runs, watches and stops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use umbra_agent::provider::process::ENV_PROVIDER_STATE;
use umbra_chaos::inject::{self, ClockFile, DataDisk};

/// How long a process gets to exit after SIGTERM before it is killed: the orchestrator and
/// agent shut down in well under a second; five leave room on a loaded laptop.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Log lines quoted when a process dies unexpectedly.
const LOG_TAIL_LINES: usize = 20;

/// A process that stopped when it should not have.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// It could not be started.
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        /// Which one.
        name: String,
        /// The binary.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// It exited on its own.
    #[error("{name} exited ({status}); the end of its log {log}:\n{tail}")]
    Exited {
        /// Which one.
        name: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: String,
        /// The last lines of it.
        tail: String,
    },
    /// No process of that name is running.
    #[error("no running process named {0}")]
    Unknown(String),
    /// Its clock file could not be made.
    #[error("cannot start {name} under a clock of its own: {reason}")]
    Clock {
        /// Which one.
        name: String,
        /// Why.
        reason: String,
    },
}

struct Supervised {
    name: String,
    /// How it was started, to start it again ([`Supervisor::restart`]).
    recipe: Recipe,
    child: Child,
    log: PathBuf,
    /// Instance state directory of an agent, whose sample processes must go too.
    instances_of: Option<PathBuf>,
    /// Killed on purpose (`--kill-leader`): not an unexpected exit.
    killed: bool,
    /// The wall clock it reads, when it was started under one the run controls.
    clock: Option<ClockFile>,
}

/// A command's program, arguments, environment and directory: what starting it again needs
/// (a `Command` cannot be cloned).
struct Recipe {
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
    envs: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)>,
    dir: Option<PathBuf>,
}

impl Recipe {
    fn of(command: &Command) -> Self {
        Recipe {
            program: command.get_program().to_owned(),
            args: command.get_args().map(ToOwned::to_owned).collect(),
            envs: command
                .get_envs()
                .map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned)))
                .collect(),
            dir: command.get_current_dir().map(Path::to_owned),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        for (key, value) in &self.envs {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        command
    }
}

/// Every process the demo started.
#[derive(Default)]
pub struct Supervisor {
    children: Vec<Supervised>,
    /// Agent state directories whose instances are reaped at the end, also after the agent
    /// itself was stopped.
    instance_dirs: Vec<PathBuf>,
    /// Each region's instances' data disk, when the run may fill one: declared after the
    /// children, so it is unmounted only once every process is stopped.
    disks: std::collections::BTreeMap<String, DataDisk>,
}

impl Supervisor {
    /// A supervisor with nothing running.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts `command` as `name`, stdout and stderr into `log`. `instances_of` names an
    /// agent's provider state directory, whose instance processes are reaped at the end.
    pub fn spawn(
        &mut self,
        name: &str,
        mut command: Command,
        log: &Path,
        instances_of: Option<&Path>,
    ) -> Result<u32, ProcessError> {
        let spawn_error = |source| ProcessError::Spawn {
            name: name.to_owned(),
            program: command_program(&command),
            source,
        };
        let recipe = Recipe::of(&command);
        let file = std::fs::File::create(log).map_err(spawn_error)?;
        let child = start(&mut command, name, file)?;
        let pid = child.id();
        if let Some(dir) = instances_of {
            self.instance_dirs.push(dir.to_owned());
        }
        self.children.push(Supervised {
            name: name.to_owned(),
            recipe,
            child,
            log: log.to_owned(),
            instances_of: instances_of.map(Path::to_owned),
            killed: false,
            clock: None,
        });
        Ok(pid)
    }

    /// Starts `command` as [`Supervisor::spawn`] does, reading a wall clock of its own kept
    /// in `clock_file` (`+0`: the real one until [`Supervisor::clock`] jumps it). A restart
    /// reads the same clock, as a process started again on the same machine would. The
    /// processes it starts read it too, unless started through
    /// [`inject::write_real_clock_launcher`].
    pub fn spawn_under_clock(
        &mut self,
        name: &str,
        mut command: Command,
        log: &Path,
        instances_of: Option<&Path>,
        clock_file: &Path,
    ) -> Result<u32, ProcessError> {
        let clock = ClockFile::create(clock_file).map_err(|e| ProcessError::Clock {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        command.envs(clock.env());
        let pid = self.spawn(name, command, log, instances_of)?;
        self.children.last_mut().expect("just spawned").clock = Some(clock);
        Ok(pid)
    }

    /// The wall clock `name` reads, when it was started under one
    /// ([`Supervisor::spawn_under_clock`]), and its pid while it runs.
    pub fn clock(&mut self, name: &str) -> Option<(&mut ClockFile, Option<u32>)> {
        let s = self.children.iter_mut().find(|s| s.name == name)?;
        let pid = (!s.killed).then(|| s.child.id());
        s.clock.as_mut().map(|clock| (clock, pid))
    }

    /// Starts `name` again the way it was first started (a process manager restarting a
    /// crashed service), its output appended to the same log. Only a process killed on
    /// purpose ([`Supervisor::kill`]) is restarted.
    pub fn restart(&mut self, name: &str) -> Result<u32, ProcessError> {
        let s = self
            .children
            .iter_mut()
            .find(|s| s.name == name && s.killed)
            .ok_or_else(|| ProcessError::Unknown(name.to_owned()))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&s.log)
            .map_err(|source| ProcessError::Spawn {
                name: name.to_owned(),
                program: s.recipe.program.to_string_lossy().into_owned(),
                source,
            })?;
        s.child = start(&mut s.recipe.command(), name, file)?;
        s.killed = false;
        Ok(s.child.id())
    }

    /// An error for the first process that exited without being asked to.
    pub fn check(&mut self) -> Result<(), ProcessError> {
        for s in &mut self.children {
            if s.killed {
                continue;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(ProcessError::Exited {
                    name: s.name.clone(),
                    status: status.to_string(),
                    log: s.log.display().to_string(),
                    tail: log_tail(&s.log),
                });
            }
        }
        Ok(())
    }

    /// SIGKILLs `name` (a crash on purpose) and reaps it: it is gone when this returns. Its
    /// pid.
    pub fn kill(&mut self, name: &str) -> Result<u32, ProcessError> {
        let s = self
            .children
            .iter_mut()
            .find(|s| s.name == name && !s.killed)
            .ok_or_else(|| ProcessError::Unknown(name.to_owned()))?;
        s.killed = true;
        let _ = s.child.kill();
        let _ = s.child.wait();
        if s.clock.is_some() {
            inject::remove_faketime_shm(s.child.id());
        }
        Ok(s.child.id())
    }

    /// Stops everything: SIGTERM, a grace period, SIGKILL; then the agents' instances.
    /// Idempotent.
    pub fn stop_all(&mut self) {
        for s in &self.children {
            if !s.killed {
                let _ = kill(Pid::from_raw(s.child.id() as i32), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for s in &mut self.children {
            while Instant::now() < deadline && matches!(s.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = s.child.kill();
            let _ = s.child.wait();
            if s.clock.is_some() {
                inject::remove_faketime_shm(s.child.id());
            }
            if let Some(dir) = &s.instances_of {
                kill_instances(dir);
            }
        }
        self.children.clear();
        for dir in std::mem::take(&mut self.instance_dirs) {
            kill_instances(&dir);
        }
    }

    /// Mounts a data disk of `size_bytes` where `region`'s agent keeps its instances (its
    /// provider state directory's `processes`), before the agent starts.
    pub fn mount_data_disk(
        &mut self,
        region: &str,
        state_dir: &Path,
        size_bytes: u64,
    ) -> Result<(), umbra_chaos::inject::InjectError> {
        let disk = DataDisk::mount(&state_dir.join("processes"), size_bytes)?;
        self.disks.insert(region.to_owned(), disk);
        Ok(())
    }

    /// `region`'s data disk, when one was mounted.
    pub fn data_disk(&self, region: &str) -> Option<&DataDisk> {
        self.disks.get(region)
    }

    /// Each supervised process's pid by name (those not killed on purpose).
    pub fn pids(&self) -> std::collections::BTreeMap<String, u32> {
        self.children
            .iter()
            .filter(|s| !s.killed)
            .map(|s| (s.name.clone(), s.child.id()))
            .collect()
    }

    /// Names of the processes still running (not killed on purpose).
    pub fn running(&mut self) -> Vec<String> {
        self.children
            .iter_mut()
            .filter_map(|s| {
                (!s.killed && matches!(s.child.try_wait(), Ok(None))).then(|| s.name.clone())
            })
            .collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Spawns `command` with stdout and stderr into `log`.
fn start(command: &mut Command, name: &str, log: std::fs::File) -> Result<Child, ProcessError> {
    let spawn_error = |source| ProcessError::Spawn {
        name: name.to_owned(),
        program: command_program(command),
        source,
    };
    let err = log.try_clone().map_err(spawn_error)?;
    command
        // A child that fails prints its error, not a backtrace (which RUST_BACKTRACE in
        // a test environment would add): the last lines of its log are what the demo shows.
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            name: name.to_owned(),
            program: command_program(command),
            source,
        })
}

fn command_program(command: &Command) -> String {
    command.get_program().to_string_lossy().into_owned()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Pids of the live instance processes of a process-provider state directory: every process
/// whose environment carries the provider's marker for that directory.
pub fn instance_pids(state_dir: &Path) -> Vec<u32> {
    let Ok(state_dir) = std::fs::canonicalize(state_dir) else {
        return Vec::new();
    };
    let marker = format!("{ENV_PROVIDER_STATE}={}", state_dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let live = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            });
            live && std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
        })
        .collect()
}

fn kill_instances(state_dir: &Path) {
    for pid in instance_pids(state_dir) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unexpected_exit_is_reported_with_its_log_and_drop_stops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut supervisor = Supervisor::new();
        let mut sleeper = Command::new("sleep");
        sleeper.arg("600");
        let sleeper_pid = supervisor
            .spawn("sleeper", sleeper, &dir.path().join("sleeper.log"), None)
            .unwrap();
        let mut failing = Command::new("sh");
        failing.args(["-c", "echo the reason it failed; exit 3"]);
        supervisor
            .spawn("failing", failing, &dir.path().join("failing.log"), None)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let error = loop {
            if let Err(e) = supervisor.check() {
                break e.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "the failing process was not noticed"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(error.contains("failing exited"), "{error}");
        assert!(error.contains("the reason it failed"), "{error}");
        assert_eq!(supervisor.running(), vec!["sleeper".to_owned()]);
        supervisor.kill("sleeper").unwrap();
        assert!(supervisor.kill("sleeper").is_err(), "killed once");
        drop(supervisor);
        assert!(
            !Path::new(&format!("/proc/{sleeper_pid}")).exists(),
            "the sleeper is gone"
        );
    }

    #[test]
    fn instances_in_their_own_session_are_found_by_their_marker_and_killed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("agent-state");
        std::fs::create_dir_all(&state).unwrap();
        let canonical = std::fs::canonicalize(&state).unwrap();
        // Stands in for an instance the agent started: a grandchild the supervisor never saw.
        let mut shell = Command::new("sh");
        shell
            .args(["-c", "setsid sleep 600 & echo started"])
            .env(ENV_PROVIDER_STATE, &canonical);
        let mut supervisor = Supervisor::new();
        supervisor
            .spawn("agent", shell, &dir.path().join("agent.log"), Some(&state))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while instance_pids(&state).is_empty() {
            assert!(Instant::now() < deadline, "the instance did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        supervisor.stop_all();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !instance_pids(&state).is_empty() {
            assert!(Instant::now() < deadline, "the instance outlived the demo");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
