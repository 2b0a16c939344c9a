//! What the two front processes the agent runs (`umbra-agent front`, [`super::embedded`], and
//! `haproxy`, [`super::haproxy`]) share: knowing whether the process lives, recognising a
//! process a previous agent started (its marker in the environment and its command line),
//! stopping one that must be replaced, and the per-request latency log each front sends to a
//! datagram socket of the agent's, which feeds the front's Prometheus histogram (and, for
//! haproxy, which keeps no quantiles, the front's windowed p99).
//!
//! It must not signal a pid it has not checked is ours.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::UnixDatagram;

use crate::lb::LbError;
use crate::lb::proxy::{
    DEFAULT_LATENCY_WINDOW, DEFAULT_LATENCY_WINDOW_BUCKETS, LatencyObserver, WindowHistogram,
};

/// How long a front process being replaced gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Largest latency log line read; haproxy's and ours are under 64 bytes.
pub(super) const MAX_LOG_LINE: usize = 1024;

/// A front process and how the agent knows it is alive.
pub(super) struct Running {
    pub(super) pid: u32,
    /// `None` when adopted from a previous agent (not our child: its /proc state tells).
    pub(super) child: Option<Child>,
}

impl Running {
    pub(super) fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => match child.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) => {
                    tracing::warn!(pid = self.pid, %status, "a front process exited");
                    false
                }
                // Reaped elsewhere: whether it lives is /proc's to say.
                Err(_) => proc_alive(self.pid),
            },
            None => proc_alive(self.pid),
        }
    }
}

/// Whether `pid` runs and is not a zombie.
pub(super) fn proc_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Whether `pid` is alive, carries `marker` (`VAR=value`) in its environment and has `args`
/// among its command-line arguments, in that order and next to each other.
pub(super) fn runs_marked(pid: u32, marker: &str, args: &[&str]) -> bool {
    let marked = std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()));
    let runs = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
        let cmd: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        cmd.windows(args.len())
            .any(|w| w.iter().zip(args).all(|(a, b)| *a == b.as_bytes()))
    });
    marked && runs && proc_alive(pid)
}

/// The pid written in `path`, if it holds one.
pub(super) fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`], to `pid` while `ours(pid)` holds.
pub(super) async fn stop(pid: u32, ours: impl Fn(u32) -> bool) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while ours(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if ours(pid) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// Starts `command` (program and arguments) as a front process: `marker` (`VAR=value`) in its
/// environment, stdout and stderr appended to `log_path`, in a process group of its own so a
/// Ctrl-C at the agent's terminal does not reach it; its pid goes to `pid_path`. `cannot_run`
/// says what to do when the program does not start.
pub(super) fn spawn_marked(
    mut command: Command,
    marker: &str,
    log_path: &Path,
    pid_path: &Path,
    cannot_run: impl FnOnce(std::io::Error) -> String,
) -> Result<Running, LbError> {
    use std::os::unix::process::CommandExt;
    let io = |what: String| move |source| LbError::Io { what, source };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(io(format!("opening {}", log_path.display())))?;
    let err = log
        .try_clone()
        .map_err(io(format!("opening {}", log_path.display())))?;
    let (var, value) = marker.split_once('=').expect("the marker is VAR=value");
    let child = command
        .env(var, value)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| LbError::Process(cannot_run(e)))?;
    let pid = child.id();
    std::fs::write(pid_path, format!("{pid}\n"))
        .map_err(io(format!("writing {}", pid_path.display())))?;
    Ok(Running {
        pid,
        child: Some(child),
    })
}

/// The error for a front `what` that did not open `interface` within `timeout`: whether it
/// exited, and the last lines of its log.
pub(super) fn not_ready(
    what: &str,
    interface: &str,
    alive: bool,
    timeout: Duration,
    log_path: &Path,
) -> LbError {
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(10).collect();
    LbError::Process(format!(
        "{what} {} its {interface} within {} s; its log ends:\n{}",
        if alive {
            "did not open"
        } else {
            "exited before opening"
        },
        timeout.as_secs(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    ))
}

/// Reads one latency log line: the local backend (or slot) that answered and its time to
/// response headers; `None` for a line of a remote backend or without a response.
pub(super) type ParseLine = fn(&str) -> Option<(&str, Duration)>;

/// The agent's end of a front's per-request latency log: a datagram socket the front sends one
/// line per answered request to, and the recent-latency window those lines fill. A line the
/// front could not send (the agent down, the socket full) is a sample missing from the p99,
/// never a request missing from the counts (those come from the front's own counters).
pub(super) struct RequestLog {
    /// The recent-latency window, when kept.
    latency: Option<Arc<Mutex<WindowHistogram>>>,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RequestLog {
    /// Binds `path` (replacing a stale socket) and passes each line `parse` accepts to
    /// `observer`. With `window`, it also keeps the recent-latency window [`Self::p99_ms`]
    /// reads (haproxy's front; the embedded front keeps its own).
    pub(super) fn bind(
        path: &Path,
        observer: Option<LatencyObserver>,
        parse: ParseLine,
        window: bool,
    ) -> Result<RequestLog, LbError> {
        let _ = std::fs::remove_file(path);
        let socket = UnixDatagram::bind(path).map_err(|source| LbError::Io {
            what: format!("binding the front's log socket {}", path.display()),
            source,
        })?;
        let latency = window.then(|| {
            Arc::new(Mutex::new(WindowHistogram::new(
                DEFAULT_LATENCY_WINDOW,
                DEFAULT_LATENCY_WINDOW_BUCKETS,
            )))
        });
        let started = Instant::now();
        let task = tokio::spawn(receive(socket, latency.clone(), started, observer, parse));
        Ok(RequestLog {
            latency,
            started,
            task,
        })
    }

    /// p99 time to response headers of the requests logged in the recent window, ms; `None`
    /// when none was (or no window is kept).
    pub(super) fn p99_ms(&self) -> Option<f64> {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let window = self.latency.as_ref()?.lock().expect("latency lock");
        let mut merged: Histogram<u64> = window.empty_like();
        window.add_to(&mut merged, now_ms);
        (!merged.is_empty()).then(|| merged.value_at_quantile(0.99) as f64 / 1000.0)
    }
}

/// Records each accepted line into `latency` until the task is aborted.
async fn receive(
    socket: UnixDatagram,
    latency: Option<Arc<Mutex<WindowHistogram>>>,
    started: Instant,
    observer: Option<LatencyObserver>,
    parse: ParseLine,
) {
    let mut buf = vec![0u8; MAX_LOG_LINE];
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "the front's log socket failed; the front's p99 stops");
                return;
            }
        };
        let line = String::from_utf8_lossy(&buf[..n]);
        if let Some((key, took)) = parse(&line) {
            if let Some(latency) = &latency {
                let now_ms = started.elapsed().as_millis() as u64;
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
                latency.lock().expect("latency lock").record(us, now_ms);
            }
            if let Some(observer) = &observer {
                (observer.0)(key, took);
            }
        }
    }
}
