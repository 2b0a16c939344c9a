//! Injectors of faults into real processes on this machine: a pause (SIGSTOP, confirmed by
//! the kernel before it counts, then SIGCONT), a network cut or packet loss on a
//! process's UDP ports through nftables (its QUIC traffic: Raft peers, agents, clients), and
//! a full data disk: a size-limited tmpfs ([`DataDisk`]) mounted where the processes keep
//! their data, filled to the last byte by a ballast file and freed by removing it.
//! Killing and starting again is the caller's supervisor's: it owns the child and its recipe.
//!
//! A cut is one nftables table of its own (`umbra_chaos_*`), so healing it removes exactly
//! what it added and nothing of the machine's own rules; dropping a [`Cut`] heals it. The
//! rules sit on the input hook, which every loopback packet passes once on arrival, so both
//! directions are covered by matching the ports as destination and as source, and the sender
//! sees its datagram leave as on a real partition (a drop on the output hook would answer
//! its `sendmsg` with EPERM instead). Partitions need root and
//! the `nft` program (Debian's `nftables`); without them a cut fails with what to do.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Longest wait for the kernel to show a SIGSTOPped process as stopped.
pub const STOP_CONFIRM_WITHIN: Duration = Duration::from_secs(5);

/// A fault that could not be injected or undone.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// A signal could not be sent.
    #[error("cannot send {signal} to pid {pid}: {source}")]
    Signal {
        /// The signal.
        signal: &'static str,
        /// The process.
        pid: u32,
        /// Why.
        source: nix::Error,
    },
    /// The process did not show as stopped in time (or is gone).
    #[error("pid {pid} was sent SIGSTOP but is not stopped after {waited_ms} ms (state {state})")]
    NotStopped {
        /// The process.
        pid: u32,
        /// How long it was watched.
        waited_ms: u64,
        /// Its last state letter in `/proc/PID/stat` (`gone` when it exited).
        state: String,
    },
    /// A data disk could not be mounted, filled or freed.
    #[error("data disk {dir}: {action} failed: {source}; disk faults need root (a tmpfs mount)")]
    Disk {
        /// The mount point.
        dir: String,
        /// What was tried.
        action: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// `nft` is missing or refused the rules.
    #[error(
        "nftables refused the cut ({0}); partitions and packet loss need root and the nft program: apt-get install nftables"
    )]
    Nft(String),
}

/// A process's state letter from `/proc/PID/stat` (`R`, `S`, `T` for stopped, `Z`...);
/// `None` when there is no such process.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces: the state follows the last `)`.
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// SIGSTOPs `pid` and returns once the kernel shows it stopped, so whatever the caller does
/// next happens while it is paused.
pub fn pause(pid: u32) -> Result<(), InjectError> {
    signal(pid, Signal::SIGSTOP, "SIGSTOP")?;
    let started = Instant::now();
    loop {
        let state = process_state(pid);
        if state == Some('T') {
            return Ok(());
        }
        if state.is_none() || started.elapsed() >= STOP_CONFIRM_WITHIN {
            return Err(InjectError::NotStopped {
                pid,
                waited_ms: started.elapsed().as_millis() as u64,
                state: state.map_or_else(|| "gone".to_owned(), String::from),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGCONTs `pid`.
pub fn resume(pid: u32) -> Result<(), InjectError> {
    signal(pid, Signal::SIGCONT, "SIGCONT")
}

fn signal(pid: u32, signal: Signal, name: &'static str) -> Result<(), InjectError> {
    kill(Pid::from_raw(pid as i32), signal).map_err(|source| InjectError::Signal {
        signal: name,
        pid,
        source,
    })
}

/// The ballast file's name in a data disk's root.
const BALLAST_FILE: &str = ".umbra-ballast";
/// How much of the ballast one write adds.
const BALLAST_CHUNK: usize = 1 << 20;

/// A size-limited tmpfs mounted on a directory: the data disk of the processes that keep
/// their files there, which a fault can fill. Unmounted (lazily, so files still open in it
/// do not keep it) when dropped.
#[derive(Debug)]
pub struct DataDisk {
    dir: PathBuf,
    size_bytes: u64,
}

impl DataDisk {
    /// Mounts a tmpfs of `size_bytes` on `dir` (created if missing; it should be empty, as
    /// the mount hides what it holds).
    pub fn mount(dir: &Path, size_bytes: u64) -> Result<Self, InjectError> {
        let failed = |action, source| InjectError::Disk {
            dir: dir.display().to_string(),
            action,
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| failed("creating the mount point", e))?;
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={size_bytes},mode=0755").as_str()),
        )
        .map_err(|e| failed("mounting a tmpfs", e.into()))?;
        Ok(Self {
            dir: dir.to_owned(),
            size_bytes,
        })
    }

    /// Where it is mounted.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fills the disk to its last byte with a ballast file: every write that needs a new
    /// page fails with ENOSPC until [`Ballast::remove`]. Returns the ballast and its size.
    pub fn fill(&self) -> Result<Ballast, InjectError> {
        let path = self.dir.join(BALLAST_FILE);
        let failed = |action, source| InjectError::Disk {
            dir: self.dir.display().to_string(),
            action,
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| failed("creating the ballast", e))?;
        let chunk = vec![0u8; BALLAST_CHUNK];
        // Bounded: the disk holds at most its size, so one chunk more than that must fail.
        for _ in 0..=self.size_bytes / BALLAST_CHUNK as u64 + 1 {
            match file.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => {
                    let bytes = file
                        .metadata()
                        .map_err(|e| failed("measuring the ballast", e))?
                        .len();
                    return Ok(Ballast { path, bytes });
                }
                Err(e) => return Err(failed("writing the ballast", e)),
            }
        }
        Err(failed(
            "filling",
            std::io::Error::other("more written than the disk's size: is it a tmpfs?"),
        ))
    }
}

impl Drop for DataDisk {
    fn drop(&mut self) {
        let _ = umount2(&self.dir, MntFlags::MNT_DETACH);
    }
}

/// The file that fills a [`DataDisk`].
#[derive(Debug)]
pub struct Ballast {
    path: PathBuf,
    bytes: u64,
}

impl Ballast {
    /// Its size, bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Removes it: the disk has room again.
    pub fn remove(self) -> Result<(), InjectError> {
        std::fs::remove_file(&self.path).map_err(|source| InjectError::Disk {
            dir: self
                .path
                .parent()
                .map_or_else(String::new, |d| d.display().to_string()),
            action: "removing the ballast",
            source,
        })
    }
}

/// Tables made by this process, numbered so that two cuts never share a name.
static NEXT_TABLE: AtomicU64 = AtomicU64::new(0);

/// Packets of some UDP ports dropped, until healed (or dropped).
#[derive(Debug)]
pub struct Cut {
    table: String,
    healed: bool,
}

impl Cut {
    /// Drops every UDP packet to or from `ports`: the process listening there is cut off
    /// from every other process on this machine.
    pub fn partition(ports: &[u16]) -> Result<Self, InjectError> {
        Self::install(ports, None)
    }

    /// Drops `percent` (1..=100) of the UDP packets to and from `ports`, each packet drawn
    /// on its own.
    pub fn loss(ports: &[u16], percent: u8) -> Result<Self, InjectError> {
        Self::install(ports, Some(percent.clamp(1, 100)))
    }

    fn install(ports: &[u16], percent: Option<u8>) -> Result<Self, InjectError> {
        if ports.is_empty() {
            return Err(InjectError::Nft("no port to cut".to_owned()));
        }
        let table = format!(
            "umbra_chaos_{}_{}",
            std::process::id(),
            NEXT_TABLE.fetch_add(1, Ordering::Relaxed)
        );
        let set = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        // `numgen random mod 100` draws 0..=99 per packet: below `p` is a p % chance.
        let draw = match percent {
            Some(p) if p < 100 => format!("numgen random mod 100 < {p} "),
            _ => String::new(),
        };
        let rules = format!(
            "table inet {table} {{\n  chain out {{\n    type filter hook input priority 0; policy accept;\n    udp dport {{ {set} }} {draw}drop\n    udp sport {{ {set} }} {draw}drop\n  }}\n}}\n"
        );
        nft(&["-f", "-"], Some(&rules))?;
        Ok(Self {
            table,
            healed: false,
        })
    }

    /// Removes the rules: the packets flow again.
    pub fn heal(mut self) -> Result<(), InjectError> {
        self.healed = true;
        nft(&["delete", "table", "inet", &self.table], None)
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        if !self.healed {
            let _ = nft(&["delete", "table", "inet", &self.table], None);
        }
    }
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<(), InjectError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| InjectError::Nft(format!("cannot run nft: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| InjectError::Nft(format!("writing to nft: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| InjectError::Nft(format!("waiting for nft: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(InjectError::Nft(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn a_paused_process_is_stopped_when_pause_returns_and_runs_after_resume() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        pause(pid).unwrap();
        assert_eq!(process_state(pid), Some('T'));
        resume(pid).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_state(pid) == Some('T') {
            assert!(Instant::now() < deadline, "still stopped after SIGCONT");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(process_state(pid), None, "reaped");
        assert!(matches!(pause(pid), Err(InjectError::Signal { .. })));
    }

    /// Whether a datagram from `from` reaches `to` within a second (loopback delivers at
    /// once, so a second is a liveness limit, not a latency bound).
    fn delivered(from: &UdpSocket, to: &UdpSocket) -> bool {
        from.send_to(b"x", to.local_addr().unwrap()).unwrap();
        to.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 8];
        to.recv_from(&mut buf).is_ok()
    }

    /// Needs root and nft, as CI has (`.ci/install-deps` installs nftables): fails otherwise.
    #[test]
    fn a_partition_drops_both_directions_until_healed() {
        let cut_off = UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(delivered(&other, &cut_off) && delivered(&cut_off, &other));
        let cut = Cut::partition(&[cut_off.local_addr().unwrap().port()]).unwrap();
        assert!(!delivered(&other, &cut_off), "inbound dropped");
        assert!(!delivered(&cut_off, &other), "outbound dropped");
        cut.heal().unwrap();
        assert!(delivered(&other, &cut_off) && delivered(&cut_off, &other));
        // A dropped cut heals too.
        let port = cut_off.local_addr().unwrap().port();
        drop(Cut::loss(&[port], 100).unwrap());
        assert!(delivered(&other, &cut_off));
    }

    /// Needs root, as CI has: fails otherwise.
    #[test]
    fn a_filled_disk_refuses_writes_until_its_ballast_is_removed() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("data");
        let disk = DataDisk::mount(&dir, 4 << 20).unwrap();
        std::fs::write(dir.join("before"), b"room").unwrap();
        let ballast = disk.fill().unwrap();
        assert!(ballast.bytes() > 3 << 20, "{} bytes", ballast.bytes());
        let full = std::fs::write(dir.join("during"), vec![1u8; 8192]).unwrap_err();
        assert_eq!(full.raw_os_error(), Some(nix::libc::ENOSPC), "{full}");
        assert_eq!(std::fs::read(dir.join("before")).unwrap(), b"room");
        ballast.remove().unwrap();
        std::fs::write(dir.join("after"), vec![1u8; 8192]).unwrap();
        drop(disk);
        // Unmounted: the directory shows what was under the mount (nothing).
        assert!(!dir.join("before").exists());
    }
}
