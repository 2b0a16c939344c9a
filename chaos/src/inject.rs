//! Injectors of faults into real processes on this machine: a pause (SIGSTOP, confirmed by
//! the kernel before it counts, then SIGCONT), and a network cut or packet loss on a
//! process's UDP ports through nftables (its QUIC traffic: Raft peers, agents, clients).
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
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
}
