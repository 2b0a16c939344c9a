//! Processes a product starts in sessions of their own (the process provider's instances),
//! which outlive the test and its own children: found by the marker they carry in their
//! environment (`VAR=<directory>`), and SIGKILLed by a [`Reaper`] when the test ends, also
//! when it fails half-way.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Pids of the live (not zombie) processes whose environment holds `var=<dir>`, `dir` made
/// canonical as a product does before it hands the path to its processes.
pub fn processes_marked(var: &str, dir: &Path) -> Vec<u32> {
    pids_with(&marker(var, dir))
}

/// SIGKILLs every process marked `var=<dir>` when dropped. The marker is fixed when the reaper
/// is made, so it still matches after the directory is gone (a temporary directory dropped
/// before the reaper); `dir` need not exist yet.
pub struct Reaper {
    marker: String,
}

impl Reaper {
    /// A guard for the processes marked `var=<dir>`.
    pub fn new(var: &str, dir: &Path) -> Reaper {
        Reaper {
            marker: marker(var, dir),
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in pids_with(&self.marker) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

fn marker(var: &str, dir: &Path) -> String {
    format!("{var}={}", canonical(dir).display())
}

/// `path` with its longest existing prefix made canonical, and the rest kept as it is.
fn canonical(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut prefix = path;
    loop {
        if let Ok(mut found) = std::fs::canonicalize(prefix) {
            found.extend(rest.iter().rev());
            return found;
        }
        match (prefix.parent(), prefix.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                prefix = parent;
            }
            _ => return path.to_owned(),
        }
    }
}

fn pids_with(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            // "pid (comm) STATE ...": the state is the first field after the last ')'.
            let live = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state != "Z")
            });
            live && std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::Duration;

    use super::*;
    use crate::Process;

    #[tokio::test]
    async fn a_reaper_kills_the_marked_processes_and_only_those() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        // Not created yet when the reaper is made, as a provider's state directory.
        let state = dir.path().join("state");
        let reaper = Reaper::new("UMBRA_TESTKIT_MARK", &state);
        std::fs::create_dir(&state)?;
        let start = |marked: bool| {
            let mut command = Command::new("sleep");
            command.arg("30");
            if marked {
                command.env("UMBRA_TESTKIT_MARK", std::fs::canonicalize(&state)?);
            }
            Process::spawn("sleep", command, &dir.path().join("log"))
        };
        let mut marked = start(true)?;
        let mut unmarked = start(false)?;
        assert_eq!(
            processes_marked("UMBRA_TESTKIT_MARK", &state),
            vec![marked.pid().as_raw() as u32]
        );
        drop(reaper);
        crate::wait_for("the marked process to die", Duration::from_secs(10), || {
            let dead = marked.has_exited().unwrap_or(false);
            async move { dead.then_some(()) }
        })
        .await?;
        assert!(!unmarked.has_exited()?);
        Ok(())
    }
}
