//! A child process owned by a test: killed (SIGKILL) and reaped when dropped, also when the
//! test panics; paused with SIGSTOP only as far as the kernel confirms it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a SIGSTOPped process may take to stop in every thread.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// See the module docs.
pub struct Process {
    name: String,
    child: Child,
}

impl Process {
    /// Spawns `command` with no standard input and both outputs appended to `log`; `name`
    /// says which process it is in errors.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Process> {
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Process {
            name: name.to_owned(),
            child,
        })
    }

    /// Takes ownership of a child spawned elsewhere.
    pub fn adopt(name: &str, child: Child) -> Process {
        Process {
            name: name.to_owned(),
            child,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The child, e.g. to read its piped output.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Whether it has exited (and reaps it if so).
    pub fn has_exited(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        kill(self.pid(), signal).with_context(|| format!("sending {signal} to {}", self.name))
    }

    /// SIGSTOP, then waits until every thread is stopped. `kill` returns as soon as the signal
    /// is queued, while threads still running may answer a request for a while; a test that
    /// relies on the pause must not go on before the kernel reports it.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)?;
        wait_until_stopped(self.pid(), PAUSE_TIMEOUT)
    }

    /// SIGCONT.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGKILL: no shutdown code runs. A stopped process dies from it too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until every thread of `pid` is in the stopped state (`T` in `/proc/PID/task/*/stat`).
pub fn wait_until_stopped(pid: Pid, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let tasks = format!("/proc/{pid}/task");
    loop {
        let mut all_stopped = true;
        for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
            let stat = std::fs::read_to_string(task?.path().join("stat")).unwrap_or_default();
            // "tid (comm) STATE ...": comm may hold spaces and parentheses, so the state is
            // the first field after the last ')'. A thread that exited meanwhile has no stat
            // left and needs no stopping.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            if state.is_some_and(|state| state != "T") {
                all_stopped = false;
                break;
            }
        }
        if all_stopped {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("process {pid} did not stop within {timeout:?} of SIGSTOP");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_returns_once_the_process_is_stopped_and_resume_lets_it_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sleep");
        command.arg("30");
        let process = Process::spawn("sleep", command, &dir.path().join("log")).unwrap();
        process.pause().unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", process.pid())).unwrap();
        let state = stat.rsplit_once(')').unwrap().1.split_whitespace().next();
        assert_eq!(state, Some("T"));
        process.resume().unwrap();
        wait_for_state(&process, "S");
    }

    fn wait_for_state(process: &Process, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", process.pid())).unwrap();
            if stat.rsplit_once(')').unwrap().1.split_whitespace().next() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never reached state {want}: {stat}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
