//! A child process owned by a test: killed (SIGKILL) and reaped when dropped, also when the
//! test panics; paused with SIGSTOP only as far as the kernel confirms it; waited on with
//! deadlines, and when it dies before it is ready the error shows the end of its log.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a SIGSTOPped process may take to stop in every thread.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many lines of its log a failed wait on a process shows.
const LOG_TAIL_LINES: usize = 30;

/// See the module docs.
pub struct Process {
    name: String,
    child: Child,
    log: Option<PathBuf>,
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
            log: Some(log.to_owned()),
        })
    }

    /// Takes ownership of a child spawned elsewhere (e.g. with its standard output piped).
    pub fn adopt(name: &str, child: Child) -> Process {
        Process {
            name: name.to_owned(),
            child,
            log: None,
        }
    }

    /// The log file both outputs go to, when [`Process::spawn`] started it.
    pub fn log(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The last lines of its log, for error messages (empty when it has none).
    pub fn log_tail(&self) -> String {
        let Some(text) = self.log.as_ref().and_then(|p| std::fs::read(p).ok()) else {
            return String::new();
        };
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// [`crate::wait_for`] a condition the process should bring about (a port file, an
    /// answering socket), but fails at once if the process exits first; either failure shows
    /// the end of its log.
    pub async fn wait_for<T, F, Fut>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let child = &mut self.child;
        let outcome = crate::wait_for(what, timeout, || {
            let exited = child.try_wait();
            let probe = check();
            async move {
                match exited {
                    Ok(None) => probe.await.map(Ok),
                    Ok(Some(status)) => Some(Err(anyhow!("exited with {status} before {what}"))),
                    Err(e) => Some(Err(e.into())),
                }
            }
        })
        .await;
        outcome.and_then(|ready| ready).map_err(|e| {
            let log = self
                .log
                .as_ref()
                .map(|p| format!("; its log {} ends:\n{}", p.display(), self.log_tail()))
                .unwrap_or_default();
            anyhow!("{}: {e:#}{log}", self.name)
        })
    }

    /// Waits (bounded, blocking) for it to exit on its own, e.g. a tool run to completion.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
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
    pub fn terminate(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.wait_exit(timeout)
            .with_context(|| format!("{} after SIGTERM", self.name))
    }

    /// SIGKILL now (no shutdown code runs), and reaps it: a crash, where the test needs one
    /// at a chosen moment rather than when the guard drops.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child
            .kill()
            .with_context(|| format!("killing {}", self.name))?;
        self.child.wait()?;
        Ok(())
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

    #[tokio::test]
    async fn waiting_on_a_process_that_dies_fails_at_once_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "echo cannot bind its port >&2; exit 3"]);
        let mut process = Process::spawn("failing", command, &dir.path().join("log")).unwrap();
        let started = Instant::now();
        let err = process
            .wait_for("a port file", Duration::from_secs(60), || async {
                None::<()>
            })
            .await
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(30), "{err}");
        assert!(err.contains("failing: exited with exit status: 3"), "{err}");
        assert!(err.contains("cannot bind its port"), "{err}");
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
