//! Helpers shared by the region-agent integration tests: finding the instance processes of a
//! provider state directory (by the marker every instance carries in its environment), and a
//! guard that SIGKILLs any left when a test ends — also when it fails half-way, since
//! instances run in their own sessions and would otherwise outlive the test.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::path::{Path, PathBuf};

use umbra_agent::provider::process::ENV_PROVIDER_STATE;

/// Pids of live (not zombie) processes whose environment names this provider state directory.
pub fn processes_of(state_dir: &Path) -> Vec<u32> {
    let Ok(state_dir) = std::fs::canonicalize(state_dir) else {
        return Vec::new();
    };
    let marker = format!("{ENV_PROVIDER_STATE}={}", state_dir.display());
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if !zombie && env.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// SIGKILLs every instance process of a state directory when dropped.
pub struct Reaper(PathBuf);

impl Reaper {
    /// A guard for `state_dir` (which may not exist yet).
    pub fn new(state_dir: &Path) -> Self {
        Reaper(state_dir.to_owned())
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in processes_of(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
