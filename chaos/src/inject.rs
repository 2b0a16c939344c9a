//! Injectors of faults into real processes on this machine: a pause (SIGSTOP, confirmed by
//! the kernel before it counts, then SIGCONT), a network cut or packet loss on a
//! process's UDP ports through nftables (its QUIC traffic: Raft peers, agents, clients), or
//! only on the packets between two processes' ports ([`Link`]), a delay of such packets
//! through a netfilter queue this process reads ([`Delay`]),
//! and a full data disk: a size-limited tmpfs ([`DataDisk`]) mounted where the processes keep
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
//!
//! A clock jump steps one process's wall clock, as an NTP step would, through libfaketime
//! (Debian's `faketime`): the standard, packaged way to give one process a clock the test
//! controls, with no change to the process. A process the runner may jump is started with the
//! environment of a [`ClockFile`], which preloads the library and points it at a file the
//! runner owns holding the offset from the real clock (`+0` until a jump); the library reads
//! the file again at every wall-clock call, so a jump is in force once [`ClockFile::jump`]
//! returns. Only `CLOCK_REALTIME` and its kin move: the monotonic clock (tokio's timers,
//! `Instant`) stays the kernel's. The processes it starts inherit the environment, and with it
//! the clock, unless they are started through a launcher that removes it
//! ([`write_real_clock_launcher`]): libfaketime's own way to leave a child alone,
//! `FAKETIME_ONLY_CMDS`, makes every `clock_gettime` of that child fail with EAGAIN in Debian's
//! 0.9.10 (measured: a threaded python3 so excluded failed 8,000 of 8,000 reads; a Rust child
//! panics in `SystemTime::now`). Without the library, creating a clock file fails with what to
//! install.

use std::ffi::OsString;
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
    /// libfaketime is not installed.
    #[error("clock jumps need libfaketime, and {LIBFAKETIME} is missing: apt-get install faketime")]
    NoFaketime,
    /// A clock file could not be written.
    #[error("clock file {file}: {source}")]
    Clock {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// Jumps added up past the bound of a clock's offset.
    #[error(
        "clock file {file}: an offset of {offset_ms} ms from the real clock is past the bound of {MAX_CLOCK_OFFSET_MS} ms (a day): the plan's jumps of one process add up to too much"
    )]
    ClockOffset {
        /// The file.
        file: String,
        /// The offset the jump would have set.
        offset_ms: i64,
    },
    /// A process that should read the runner's clock does not have libfaketime loaded.
    #[error(
        "pid {pid} does not have {LIBFAKETIME} loaded (not in /proc/{pid}/maps): it reads the \
         real clock, so a jump would not reach it (is it statically linked, or was it started \
         without the clock file's environment?)"
    )]
    NotPreloaded {
        /// The process.
        pid: u32,
    },
    /// `nft` is missing or refused the rules.
    #[error(
        "nftables refused the cut ({0}); partitions and packet loss need root and the nft program: apt-get install nftables"
    )]
    Nft(String),
    /// The packet queue or the iptables rules that feed it could not be set up or removed.
    #[error(
        "could not delay packets ({0}); a delay needs root, the iptables program with its NFQUEUE target, and the kernel's nfnetlink_queue: apt-get install iptables"
    )]
    Delay(String),
    /// The packets to act on were badly named.
    #[error("cannot act on these packets: {0}")]
    Link(String),
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

/// The source name of a [`DataDisk`]'s tmpfs, before the mounting process's pid: what tells
/// an orphan (its owner killed before it could unmount) from any other mount.
const DISK_SOURCE_PREFIX: &str = "umbra-disk.";

/// A size-limited tmpfs mounted on a directory: the data disk of the processes that keep
/// their files there, which a fault can fill. Unmounted (lazily, so files still open in it
/// do not keep it) when dropped; one whose owner was killed first is unmounted by the next
/// [`DataDisk::mount`] on the machine (see [`DataDisk::reap_orphans`]).
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
        Self::reap_orphans();
        mount(
            Some(format!("{DISK_SOURCE_PREFIX}{}", std::process::id()).as_str()),
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

    /// Unmounts (lazily) every data disk whose mounting process is gone: one killed
    /// (SIGKILL, a crash) before its drop could unmount it leaves the tmpfs and its memory
    /// behind. Returns the mount points it unmounted. A recycled pid keeps an orphan until
    /// that process exits too.
    pub fn reap_orphans() -> Vec<PathBuf> {
        let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return Vec::new();
        };
        // `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE …`: each
        // mount's point, type and source, in mount order.
        let entries: Vec<(&str, &str, &str)> = mounts
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let dash = fields.iter().position(|f| *f == "-")?;
                Some((
                    *fields.get(4)?,
                    *fields.get(dash + 1)?,
                    *fields.get(dash + 2)?,
                ))
            })
            .collect();
        let mut reaped = Vec::new();
        for (i, (point, fstype, source)) in entries.iter().enumerate() {
            let Some(pid) = source
                .strip_prefix(DISK_SOURCE_PREFIX)
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            // Unmounting a point detaches its topmost mount: an orphan something else was
            // mounted over is left alone.
            let topmost = !entries[i + 1..].iter().any(|(p, _, _)| p == point);
            if *fstype != "tmpfs" || !topmost || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let point = PathBuf::from(unescape_mountinfo(point));
            if umount2(&point, MntFlags::MNT_DETACH).is_ok() {
                reaped.push(point);
            }
        }
        reaped
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

/// A mount point as `/proc/self/mountinfo` writes it: space, tab, newline and backslash as
/// three octal digits after a backslash.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

/// The packets a network fault acts on: every UDP packet to or from `ports` (the processes
/// listening there are cut off from every other process on this machine), or, with `peers`,
/// only those between a port of `ports` and a port of `peers`, both ways (a partition between
/// named processes: each still reaches every other). An orchestrator's QUIC endpoint sends
/// from the port it listens on (its peers, agents and clients all use it), and an agent's from
/// the one its `quic_bind` fixes, so a pair of ports is a pair of processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    ports: Vec<u16>,
    peers: Vec<u16>,
}

impl Link {
    /// Every packet to or from `ports`.
    pub fn all(ports: &[u16]) -> Result<Self, InjectError> {
        Self::between(ports, &[])
    }

    /// The packets between `ports` and `peers` (every packet of `ports` when `peers` is
    /// empty); a port on both sides is refused, as a process cannot be cut from itself.
    pub fn between(ports: &[u16], peers: &[u16]) -> Result<Self, InjectError> {
        if ports.is_empty() {
            return Err(InjectError::Link("no port to act on".to_owned()));
        }
        if let Some(both) = ports.iter().find(|p| peers.contains(p)) {
            return Err(InjectError::Link(format!(
                "port {both} is on both ends of the link: name two different processes"
            )));
        }
        Ok(Self {
            ports: ports.to_vec(),
            peers: peers.to_vec(),
        })
    }

    /// The nftables matches of the link's packets, one per rule: a packet passes the input
    /// hook once, so a packet of the link matches one of them whichever way it goes.
    fn nft_matches(&self) -> Vec<String> {
        let set = |ports: &[u16]| {
            let list = ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            format!("{{ {list} }}")
        };
        let (near, far) = (set(&self.ports), set(&self.peers));
        if self.peers.is_empty() {
            vec![format!("udp dport {near}"), format!("udp sport {near}")]
        } else {
            vec![
                format!("udp sport {near} udp dport {far}"),
                format!("udp sport {far} udp dport {near}"),
            ]
        }
    }

    /// The iptables matches of the link's packets, one per rule (iptables matches one port
    /// per option).
    fn iptables_matches(&self) -> Vec<Vec<String>> {
        let mut rules = Vec::new();
        for near in &self.ports {
            let near = near.to_string();
            if self.peers.is_empty() {
                rules.push(vec!["--dport".to_owned(), near.clone()]);
                rules.push(vec!["--sport".to_owned(), near]);
                continue;
            }
            for far in &self.peers {
                let far = far.to_string();
                let rule = |from: &str, to: &str| {
                    vec![
                        "--sport".to_owned(),
                        from.to_owned(),
                        "--dport".to_owned(),
                        to.to_owned(),
                    ]
                };
                rules.push(rule(&near, &far));
                rules.push(rule(&far, &near));
            }
        }
        rules
    }
}

/// Tables made by this process, numbered so that two cuts never share a name.
static NEXT_TABLE: AtomicU64 = AtomicU64::new(0);

/// Packets of a [`Link`] dropped, until healed (or dropped).
#[derive(Debug)]
pub struct Cut {
    table: String,
    healed: bool,
}

impl Cut {
    /// Drops every UDP packet of `link`.
    pub fn partition(link: &Link) -> Result<Self, InjectError> {
        Self::install(link, None)
    }

    /// Drops `percent` (1..=100) of the UDP packets of `link`, each packet drawn on its own.
    pub fn loss(link: &Link, percent: u8) -> Result<Self, InjectError> {
        Self::install(link, Some(percent.clamp(1, 100)))
    }

    fn install(link: &Link, percent: Option<u8>) -> Result<Self, InjectError> {
        let table = format!(
            "umbra_chaos_{}_{}",
            std::process::id(),
            NEXT_TABLE.fetch_add(1, Ordering::Relaxed)
        );
        // `numgen random mod 100` draws 0..=99 per packet: below `p` is a p % chance.
        let draw = match percent {
            Some(p) if p < 100 => format!("numgen random mod 100 < {p} "),
            _ => String::new(),
        };
        let rules = link
            .nft_matches()
            .iter()
            .map(|matches| format!("    {matches} {draw}drop\n"))
            .collect::<String>();
        let rules = format!(
            "table inet {table} {{\n  chain out {{\n    type filter hook input priority 0; policy accept;\n{rules}  }}\n}}\n"
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

/// Longest delay a [`Delay`] adds to each packet, ms: far past any inter-region round trip.
pub const MAX_DELAY_MS: u64 = 10_000;
/// Packets a [`Delay`] holds at once; past that the kernel lets them through undelayed
/// (fail-open), so a flood cannot grow the holder's memory without bound.
const DELAY_QUEUE_MAX: u32 = 16_384;
/// Bytes of each held packet copied to user space: the holder reads none of it, and the
/// kernel sends the packet on as it was.
const DELAY_COPY_BYTES: u16 = 64;
/// Prefix of the iptables chains delays add (`UMBRA_DLY_<pid>_<n>`), so that a runner can
/// find the chains a killed runner left behind.
const DELAY_CHAIN_PREFIX: &str = "UMBRA_DLY_";
/// First packet-queue number a delay tries; it takes the next free one.
const DELAY_QUEUE_BASE: u16 = 31_000;

/// Chains made by this process, numbered so that two delays never share a name.
static NEXT_CHAIN: AtomicU64 = AtomicU64::new(0);

/// Packets of a [`Link`] held for a fixed time before the kernel delivers them, until healed
/// (or dropped): a slow link to and from the process listening there, or between two.
///
/// The kernel has no delay of its own here (`tc netem` needs `sch_netem`, which this kind of
/// machine lacks), so the packets go through a netfilter packet queue (NFQUEUE) that a thread
/// of this process reads: it holds each packet `added` and then accepts it, in arrival order.
/// The iptables rules (a chain of their own in the `mangle` table, jumped to from `INPUT`, so
/// every loopback packet is matched once on arrival, by its ports) send
/// the packets to the queue with `--queue-bypass`: with nobody reading it, as after a runner
/// was SIGKILLed, packets pass undelayed. Healing removes the rules, then lets every held
/// packet go at once. The kernel drops the packets queued at the moment the machine's
/// netfilter hooks change (an nftables table of a [`Cut`] added or removed): those few are
/// lost, as they would be on a real link. IPv4 only, as the processes' QUIC endpoints here
/// are.
#[derive(Debug)]
pub struct Delay {
    chain: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    holder: Option<std::thread::JoinHandle<Result<u64, String>>>,
    healed: bool,
}

impl Delay {
    /// Holds every UDP packet of `link` for `added` (1 ms to [`MAX_DELAY_MS`]) before it is
    /// delivered.
    pub fn install(link: &Link, added: Duration) -> Result<Self, InjectError> {
        if added.is_zero() || added > Duration::from_millis(MAX_DELAY_MS) {
            return Err(InjectError::Delay(format!(
                "a delay must be 1 to {MAX_DELAY_MS} ms, not {} ms",
                added.as_millis()
            )));
        }
        reap_orphan_delays();
        let (queue, num) = bind_free_queue()?;
        let chain = format!(
            "{DELAY_CHAIN_PREFIX}{}_{}",
            std::process::id(),
            NEXT_CHAIN.fetch_add(1, Ordering::Relaxed)
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let holder = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("delay-{num}"))
                .spawn(move || hold_packets(queue, added, &stop))
                .map_err(|e| InjectError::Delay(format!("starting the packet holder: {e}")))?
        };
        let delay = Self {
            chain,
            stop,
            holder: Some(holder),
            healed: false,
        };
        // Dropping `delay` on an error below removes whatever part of the rules was added.
        let queue_num = num.to_string();
        iptables(&["-N", &delay.chain])?;
        for matches in link.iptables_matches() {
            let mut rule = vec!["-A", &delay.chain, "-p", "udp"];
            rule.extend(matches.iter().map(String::as_str));
            rule.extend(["-j", "NFQUEUE", "--queue-num", &queue_num, "--queue-bypass"]);
            iptables(&rule)?;
        }
        iptables(&["-I", "INPUT", "-j", &delay.chain])?;
        Ok(delay)
    }

    /// Removes the rules and lets every held packet go: the link is fast again. Returns how
    /// many packets were held.
    pub fn heal(mut self) -> Result<u64, InjectError> {
        self.healed = true;
        let removed = remove_delay_chain(&self.chain);
        let held = self.stop_holder();
        removed?;
        held
    }

    fn stop_holder(&mut self) -> Result<u64, InjectError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.holder.take().map(std::thread::JoinHandle::join) {
            None => Ok(0),
            Some(Ok(result)) => result.map_err(InjectError::Delay),
            Some(Err(_)) => Err(InjectError::Delay("the packet holder panicked".to_owned())),
        }
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        if !self.healed {
            let _ = remove_delay_chain(&self.chain);
        }
        let _ = self.stop_holder();
    }
}

/// Opens a packet queue on the first free number from [`DELAY_QUEUE_BASE`] (another process,
/// or another delay of this one, may hold a number).
fn bind_free_queue() -> Result<(nfq::Queue, u16), InjectError> {
    let mut queue = nfq::Queue::open()
        .map_err(|e| InjectError::Delay(format!("opening a netfilter queue socket: {e}")))?;
    let mut last = None;
    for num in DELAY_QUEUE_BASE..DELAY_QUEUE_BASE + 256 {
        match queue.bind(num) {
            Ok(()) => {
                let setup = queue
                    .set_copy_range(num, DELAY_COPY_BYTES)
                    .and_then(|()| queue.set_queue_max_len(num, DELAY_QUEUE_MAX))
                    .and_then(|()| queue.set_fail_open(num, true));
                setup.map_err(|e| InjectError::Delay(format!("setting up queue {num}: {e}")))?;
                queue.set_nonblocking(true);
                return Ok((queue, num));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(InjectError::Delay(format!(
        "no free packet queue from {DELAY_QUEUE_BASE}: {}",
        last.map_or_else(String::new, |e| e.to_string())
    )))
}

/// The holder's loop: reads packets as they arrive and accepts each once it has been held
/// `added`; when told to stop, accepts every one still held. Returns how many it held.
fn hold_packets(
    mut queue: nfq::Queue,
    added: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<u64, String> {
    let mut held: std::collections::VecDeque<(Instant, nfq::Message)> = Default::default();
    let mut count = 0u64;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        loop {
            match queue.recv() {
                Ok(mut message) => {
                    message.set_verdict(nfq::Verdict::Accept);
                    held.push_back((Instant::now() + added, message));
                    count += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // The answer to a verdict for a packet the kernel no longer holds: it drops
                // every queued packet when the machine's netfilter hooks change (another
                // cut healing, a container network going away), so those are lost, as on a
                // real link.
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {}
                Err(e) => return Err(format!("reading the packet queue: {e}")),
            }
        }
        let now = Instant::now();
        while let Some((due, _)) = held.front() {
            if *due > now && !stopping {
                break;
            }
            let (_, message) = held.pop_front().expect("front exists");
            queue
                .verdict(message)
                .map_err(|e| format!("letting a held packet go: {e}"))?;
        }
        if stopping {
            return Ok(count);
        }
        // The queue socket is read without blocking, so the wait is bounded by the next
        // packet due and by a millisecond for packets still to come.
        let wait = held
            .front()
            .map_or(Duration::from_millis(1), |(due, _)| {
                due.saturating_duration_since(now)
            })
            .min(Duration::from_millis(1));
        std::thread::sleep(wait);
    }
}

fn remove_delay_chain(chain: &str) -> Result<(), InjectError> {
    // The first two may fail on a chain only half added; deleting it then says whether it
    // is gone (a chain still jumped to cannot be deleted).
    let _ = iptables(&["-D", "INPUT", "-j", chain]);
    let _ = iptables(&["-F", chain]);
    iptables(&["-X", chain])
}

/// Removes the chains of delays whose runner is gone (SIGKILLed before it healed them): their
/// rules bypass a queue nobody reads, so they slow nothing, but they would stay for ever.
fn reap_orphan_delays() {
    let Ok(listing) = iptables_output(&["-S"]) else {
        return;
    };
    for line in listing.lines() {
        let Some(chain) = line.strip_prefix("-N ") else {
            continue;
        };
        let Some(pid) = chain
            .strip_prefix(DELAY_CHAIN_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = remove_delay_chain(chain);
        }
    }
}

fn iptables(args: &[&str]) -> Result<(), InjectError> {
    iptables_output(args).map(drop)
}

/// Runs `iptables -w -t mangle ARGS`; its standard output.
fn iptables_output(args: &[&str]) -> Result<String, InjectError> {
    let output = Command::new("iptables")
        .args(["-w", "-t", "mangle"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| InjectError::Delay(format!("cannot run iptables: {e}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(InjectError::Delay(format!(
            "iptables -t mangle {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Where Debian's `faketime` package puts libfaketime, its build for threaded programs: the
/// plain `libfaketime.so.1` parses the offset into static buffers with no lock, which the
/// threads of a tokio runtime reading the clock at once would tear.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// Largest offset a clock file takes, ms: a day, far past any step NTP would make.
pub const MAX_CLOCK_OFFSET_MS: i64 = 24 * 60 * 60 * 1_000;

/// The wall clock of the processes started with its [`ClockFile::env`]: the real clock plus
/// an offset the runner sets, kept in a file libfaketime reads at every wall-clock call.
#[derive(Debug)]
pub struct ClockFile {
    path: PathBuf,
    offset_ms: i64,
}

impl ClockFile {
    /// Creates the file at `path` with no offset (`+0`). Fails when libfaketime is missing,
    /// as a process started with [`ClockFile::env`] would then not start at all.
    pub fn create(path: &Path) -> Result<Self, InjectError> {
        if !Path::new(LIBFAKETIME).is_file() {
            return Err(InjectError::NoFaketime);
        }
        let clock = Self {
            path: path.to_owned(),
            offset_ms: 0,
        };
        clock.write()?;
        Ok(clock)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The offset in force from the real clock, ms.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms
    }

    /// Steps the clock by `ms` (back when negative) from where it is: in force for every
    /// process reading it once this returns. Refused when the offset from the real clock
    /// would pass [`MAX_CLOCK_OFFSET_MS`] either way (jumps that add up past a day).
    pub fn jump(&mut self, ms: i64) -> Result<(), InjectError> {
        let offset_ms = self.offset_ms.saturating_add(ms);
        if offset_ms.abs() > MAX_CLOCK_OFFSET_MS {
            return Err(InjectError::ClockOffset {
                file: self.path.display().to_string(),
                offset_ms,
            });
        }
        let before = self.offset_ms;
        self.offset_ms = offset_ms;
        self.write().inspect_err(|_| self.offset_ms = before)
    }

    /// Sets the clock back to the real one (`+0`).
    pub fn reset(&mut self) -> Result<(), InjectError> {
        self.jump(-self.offset_ms)
    }

    /// The environment that makes a process read this clock: libfaketime preloaded, this file
    /// re-read at every call, the monotonic clock and file times left alone.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        [
            ("LD_PRELOAD", OsString::from(LIBFAKETIME)),
            (
                "FAKETIME_TIMESTAMP_FILE",
                self.path.clone().into_os_string(),
            ),
            // Read at every call (about 20 µs a wall-clock read, measured, against 0.2 µs;
            // monotonic reads cost nothing more): a jump is in force when it returns, not up
            // to 10 s later as with the library's default cache.
            ("FAKETIME_NO_CACHE", "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
            // Files keep the times the kernel gave them, as across a real step (libfaketime
            // would otherwise shift every `stat` by the offset).
            ("NO_FAKE_STAT", "1".into()),
        ]
        .into_iter()
        .map(|(key, value)| (OsString::from(key), value))
        .collect()
    }

    /// Writes the offset as libfaketime reads it (seconds with a fraction, signed), through
    /// a temporary file renamed over the old one: a reader sees the old offset or the new,
    /// never a half-written one.
    fn write(&self) -> Result<(), InjectError> {
        let failed = |source| InjectError::Clock {
            file: self.path.display().to_string(),
            source,
        };
        let sign = if self.offset_ms < 0 { '-' } else { '+' };
        let ms = self.offset_ms.unsigned_abs();
        let text = format!("{sign}{}.{:03}\n", ms / 1_000, ms % 1_000);
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(".new");
        std::fs::write(&temporary, text).map_err(failed)?;
        std::fs::rename(&temporary, &self.path).map_err(failed)
    }
}

/// The environment variables that put a process on a clock file, with the one libfaketime
/// adds for the processes a faked one starts.
const CLOCK_VARS: [&str; 6] = [
    "LD_PRELOAD",
    "FAKETIME_TIMESTAMP_FILE",
    "FAKETIME_NO_CACHE",
    "FAKETIME_DONT_FAKE_MONOTONIC",
    "NO_FAKE_STAT",
    "FAKETIME_SHARED",
];

/// Writes an executable script at `launcher` that runs `program` with its arguments on the
/// machine's real clock, whatever clock file its parent reads: for the processes a process
/// under a [`ClockFile`] starts, such as an agent's instances.
pub fn write_real_clock_launcher(program: &Path, launcher: &Path) -> Result<(), InjectError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |source| InjectError::Clock {
        file: launcher.display().to_string(),
        source,
    };
    let unset: String = CLOCK_VARS.iter().map(|v| format!(" -u {v}")).collect();
    // Single quotes keep the path as it is; a quote in it is closed, escaped and reopened.
    let quoted = format!("'{}'", program.display().to_string().replace('\'', r"'\''"));
    let script =
        format!("#!/bin/sh\n# Runs {quoted} on the real clock.\nexec env{unset} {quoted} \"$@\"\n");
    std::fs::write(launcher, script).map_err(failed)?;
    std::fs::set_permissions(launcher, std::fs::Permissions::from_mode(0o755)).map_err(failed)
}

/// Removes the semaphore and shared memory libfaketime made in `/dev/shm` for `pid`, once
/// the process is gone: the library makes them for every process it loads in and leaves them
/// behind when the process is killed (and, in Debian's 0.9.10, often on a normal exit too),
/// where a later process given the same pid would find them.
pub fn remove_faketime_shm(pid: u32) {
    let _ = std::fs::remove_file(format!("/dev/shm/faketime_shm_{pid}"));
    let _ = std::fs::remove_file(format!("/dev/shm/sem.faketime_sem_{pid}"));
}

/// Longest wait for a process just started to show libfaketime loaded (it maps the library
/// as it execs; a jump may come right after a restart).
pub const PRELOAD_CONFIRM_WITHIN: Duration = Duration::from_secs(2);

/// Checks that `pid` has libfaketime loaded, so it reads its clock file and not the real
/// clock; waits up to [`PRELOAD_CONFIRM_WITHIN`] for a process still starting.
pub fn check_preloaded(pid: u32) -> Result<(), InjectError> {
    let started = Instant::now();
    loop {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        if maps.lines().any(|line| line.ends_with(LIBFAKETIME)) {
            return Ok(());
        }
        if started.elapsed() >= PRELOAD_CONFIRM_WITHIN {
            return Err(InjectError::NotPreloaded { pid });
        }
        std::thread::sleep(Duration::from_millis(2));
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
        let cut =
            Cut::partition(&Link::all(&[cut_off.local_addr().unwrap().port()]).unwrap()).unwrap();
        assert!(!delivered(&other, &cut_off), "inbound dropped");
        assert!(!delivered(&cut_off, &other), "outbound dropped");
        cut.heal().unwrap();
        assert!(delivered(&other, &cut_off) && delivered(&cut_off, &other));
        // A dropped cut heals too.
        let port = cut_off.local_addr().unwrap().port();
        drop(Cut::loss(&Link::all(&[port]).unwrap(), 100).unwrap());
        assert!(delivered(&other, &cut_off));
    }

    /// Needs root and nft, as CI has: fails otherwise.
    #[test]
    fn a_partition_between_two_processes_leaves_each_reaching_the_others() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = |s: &UdpSocket| s.local_addr().unwrap().port();
        let link = Link::between(&[port(&a)], &[port(&b)]).unwrap();
        let cut = Cut::partition(&link).unwrap();
        assert!(
            !delivered(&a, &b) && !delivered(&b, &a),
            "a and b cut both ways"
        );
        for (from, to) in [(&a, &c), (&c, &a), (&b, &c), (&c, &b)] {
            assert!(
                delivered(from, to),
                "a third process still reaches both and is reached"
            );
        }
        cut.heal().unwrap();
        assert!(delivered(&a, &b) && delivered(&b, &a));
        // A process cannot be cut from itself, and a link needs a port: nothing installed.
        assert!(matches!(
            Link::between(&[port(&a)], &[port(&b), port(&a)]),
            Err(InjectError::Link(_))
        ));
        assert!(matches!(Link::all(&[]), Err(InjectError::Link(_))));
    }

    /// Needs root and iptables with NFQUEUE, as CI has. Only lower bounds, and the third
    /// process's packets are only checked to arrive.
    #[test]
    fn a_delay_between_two_processes_holds_only_their_packets() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = |s: &UdpSocket| s.local_addr().unwrap().port();
        let added = Duration::from_millis(150);
        let link = Link::between(&[port(&a)], &[port(&b)]).unwrap();
        let delay = Delay::install(&link, added).unwrap();
        assert!(took(&a, &b).expect("a to b delivered") >= added);
        assert!(took(&b, &a).expect("b to a delivered") >= added);
        assert!(took(&a, &c).is_some() && took(&c, &b).is_some());
        let held = delay.heal().unwrap();
        // Only a and b's packets went through the queue: the two above, and any sent again.
        assert!((2..=10).contains(&held), "held {held}");
    }

    /// When a datagram from `from` reached `to`, after it was sent. A held datagram is lost
    /// when any process changes the machine's netfilter hooks meanwhile (a cut of a test
    /// running beside this one), so it is sent again, up to five times, a second apart (a
    /// liveness limit, not a latency bound).
    fn took(from: &UdpSocket, to: &UdpSocket) -> Option<Duration> {
        to.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 8];
        (0..5).find_map(|_| {
            let sent = Instant::now();
            from.send_to(b"x", to.local_addr().unwrap()).unwrap();
            to.recv_from(&mut buf).ok().map(|_| sent.elapsed())
        })
    }

    /// Needs root and iptables with NFQUEUE, as CI has (`.ci/install-deps` installs iptables):
    /// fails otherwise. Only lower bounds: a delay is a floor, a loaded machine adds to it.
    #[test]
    fn a_delay_holds_both_directions_until_healed_and_keeps_the_order() {
        let slow = UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = slow.local_addr().unwrap().port();
        let added = Duration::from_millis(150);
        let delay = Delay::install(&Link::all(&[port]).unwrap(), added).unwrap();
        let inbound = took(&other, &slow).expect("inbound delivered");
        let outbound = took(&slow, &other).expect("outbound delivered");
        assert!(inbound >= added, "inbound took {inbound:?}");
        assert!(outbound >= added, "outbound took {outbound:?}");
        let held = delay.heal().unwrap();
        assert!(held >= 2, "held {held}");
        // Packets held when a delay heals are delivered at once, in the order they came. A
        // hook change elsewhere may drop some (see `took`): what arrives is still in order,
        // and one of five rounds arrives whole.
        slow.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let whole = (0..5).any(|_| {
            let delay =
                Delay::install(&Link::all(&[port]).unwrap(), Duration::from_secs(5)).unwrap();
            for k in 0..20u8 {
                other.send_to(&[k], slow.local_addr().unwrap()).unwrap();
            }
            delay.heal().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 8];
            while let Ok((n, _)) = slow.recv_from(&mut buf) {
                got.push(buf[..n][0]);
                if got.len() == 20 {
                    break;
                }
            }
            assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
            got.len() == 20
        });
        assert!(whole, "no round of 20 held datagrams arrived whole");
        // Healed: the rules are gone (the holder no longer reads the queue, so a rule left
        // behind would bypass it and show only in the listing).
        let mine = format!("{DELAY_CHAIN_PREFIX}{}_", std::process::id());
        assert!(!iptables_output(&["-S"]).unwrap().contains(&mine));
        // A dropped delay removes its rules too; bad arguments change nothing.
        drop(Delay::install(&Link::all(&[port]).unwrap(), added).unwrap());
        assert!(!iptables_output(&["-S"]).unwrap().contains(&mine));
        assert!(matches!(
            Delay::install(&Link::all(&[port]).unwrap(), Duration::ZERO),
            Err(InjectError::Delay(_))
        ));
        assert!(!iptables_output(&["-S"]).unwrap().contains(&mine));
    }

    /// Needs root, iptables and nft, as CI has. A cut healing while packets are held makes
    /// the kernel drop them (it drops every queued packet when netfilter hooks change): the
    /// delay goes on and heals without an error.
    #[test]
    fn a_delay_outlives_a_cut_healing_while_it_holds_packets() {
        let slow = UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let unrelated = UdpSocket::bind("127.0.0.1:0").unwrap();
        let added = Duration::from_millis(300);
        let link = Link::all(&[slow.local_addr().unwrap().port()]).unwrap();
        let delay = Delay::install(&link, added).unwrap();
        for k in 0..5u8 {
            other.send_to(&[k], slow.local_addr().unwrap()).unwrap();
        }
        Cut::partition(&Link::all(&[unrelated.local_addr().unwrap().port()]).unwrap())
            .unwrap()
            .heal()
            .unwrap();
        // Past the held packets' time (any the kernel kept are read and left aside), the
        // delay still works and heals without an error.
        std::thread::sleep(added * 2);
        slow.set_nonblocking(true).unwrap();
        while slow.recv_from(&mut [0u8; 8]).is_ok() {}
        slow.set_nonblocking(false).unwrap();
        assert!(took(&other, &slow).expect("delivered") >= added);
        delay.heal().unwrap();
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

    /// Needs root, as CI has: fails otherwise.
    #[test]
    fn a_disk_whose_owner_died_is_unmounted_by_the_next_mount() {
        let scratch = tempfile::tempdir().unwrap();
        let orphan = scratch.path().join("orphan dir");
        std::fs::create_dir_all(&orphan).unwrap();
        // A process that is gone, as a demo killed with SIGKILL is.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        mount(
            Some(format!("{DISK_SOURCE_PREFIX}{}", gone.id()).as_str()),
            &orphan,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("size=1048576"),
        )
        .unwrap();
        std::fs::write(orphan.join("left"), b"behind").unwrap();
        let mine = DataDisk::mount(&scratch.path().join("mine"), 1 << 20).unwrap();
        assert!(!orphan.join("left").exists(), "the orphan was unmounted");
        // A live owner's disk is left alone.
        assert_eq!(DataDisk::reap_orphans(), Vec::<PathBuf>::new());
        std::fs::write(mine.dir().join("kept"), b"yes").unwrap();
        assert!(mine.dir().join("kept").exists());
    }

    #[test]
    fn mount_points_are_unescaped_as_mountinfo_escapes_them() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b\134c"), r"/tmp/a b\c");
        assert_eq!(unescape_mountinfo(r"/plain\x"), r"/plain\x");
    }

    /// A python3 under the clock file that prints its wall clock, its monotonic clock and
    /// the wall clock of a `date` it starts through `date_launcher`, once per line it reads:
    /// no sleeps, each reading is asked for. Four threads read the clock first, as a tokio
    /// runtime's do.
    struct ClockReader {
        child: std::process::Child,
        lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    }

    impl ClockReader {
        fn start(clock: &ClockFile, date_launcher: &Path) -> Self {
            let script = "import subprocess, sys, threading, time\n\
                          def read():\n\
                          \x20   return [time.time() for _ in range(1000)]\n\
                          for _ in sys.stdin:\n\
                          \x20   threads = [threading.Thread(target=read) for _ in range(4)]\n\
                          \x20   [t.start() for t in threads]; [t.join() for t in threads]\n\
                          \x20   date = subprocess.check_output([sys.argv[1], '+%s%3N']).decode().strip()\n\
                          \x20   print(int(time.time() * 1000), int(time.monotonic() * 1000), date, flush=True)\n";
            let mut child = Command::new("python3")
                .args(["-c", script])
                .arg(date_launcher)
                .envs(clock.env())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let lines =
                std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
            Self { child, lines }
        }

        /// (wall, monotonic, its child's wall), ms.
        fn read(&mut self) -> (i64, i64, i64) {
            writeln!(self.child.stdin.as_mut().unwrap()).unwrap();
            let line = self.lines.next().unwrap().unwrap();
            let n: Vec<i64> = line.split(' ').map(|n| n.parse().unwrap()).collect();
            (n[0], n[1], n[2])
        }
    }

    fn real_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    /// Needs libfaketime and python3, as CI has (`.ci/install-deps`): fails otherwise.
    #[test]
    fn a_jump_moves_a_running_process_wall_clock_and_only_its_wall_clock() {
        let scratch = tempfile::tempdir().unwrap();
        let mut clock = ClockFile::create(&scratch.path().join("clock")).unwrap();
        assert_eq!(std::fs::read_to_string(clock.path()).unwrap(), "+0.000\n");
        let launcher = scratch.path().join("date on the real clock");
        write_real_clock_launcher(Path::new("/bin/date"), &launcher).unwrap();
        let mut reader = ClockReader::start(&clock, &launcher);
        // Within a minute of the real clock: a liveness margin, the jumps are 10 minutes.
        let near = |a: i64, b: i64| (a - b).abs() < 60_000;
        let (wall, monotonic, child) = reader.read();
        // It answered, so it runs python3, not the test's fork of itself before the exec.
        check_preloaded(reader.child.id()).unwrap();
        assert!(
            near(wall, real_ms()) && near(child, real_ms()),
            "{wall} {child}"
        );

        clock.jump(600_000).unwrap();
        assert_eq!(std::fs::read_to_string(clock.path()).unwrap(), "+600.000\n");
        let (jumped, monotonic_after, child_after) = reader.read();
        assert!(near(jumped, real_ms() + 600_000), "{jumped}");
        assert!(
            near(monotonic_after, monotonic),
            "the monotonic clock did not jump"
        );
        assert!(
            near(child_after, real_ms()),
            "the process it started keeps the real clock"
        );

        // A step back past the start, then back to the real clock.
        clock.jump(-690_250).unwrap();
        assert_eq!(clock.offset_ms(), -90_250);
        assert_eq!(std::fs::read_to_string(clock.path()).unwrap(), "-90.250\n");
        assert!(near(reader.read().0, real_ms() - 90_250));
        clock.reset().unwrap();
        assert_eq!(std::fs::read_to_string(clock.path()).unwrap(), "+0.000\n");
        // Jumps that add up past a day are refused and change nothing.
        clock.jump(MAX_CLOCK_OFFSET_MS).unwrap();
        assert!(matches!(
            clock.jump(1),
            Err(InjectError::ClockOffset { offset_ms, .. }) if offset_ms == MAX_CLOCK_OFFSET_MS + 1
        ));
        assert_eq!(clock.offset_ms(), MAX_CLOCK_OFFSET_MS);
        clock.reset().unwrap();
        assert!(near(reader.read().0, real_ms()));

        // A fresh process reads the offset in force when it starts.
        clock.jump(-3_600_000).unwrap();
        let date = Command::new("date")
            .arg("+%s")
            .envs(clock.env())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let date_pid = date.id();
        let date = date.wait_with_output().unwrap();
        remove_faketime_shm(date_pid);
        let secs: i64 = String::from_utf8(date.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(near(secs * 1_000, real_ms() - 3_600_000), "{secs}");

        let pid = reader.child.id();
        reader.child.kill().unwrap();
        reader.child.wait().unwrap();
        remove_faketime_shm(pid);
        assert!(!Path::new(&format!("/dev/shm/faketime_shm_{pid}")).exists());
        // A process started without the environment does not read the clock file.
        let mut plain = Command::new("sleep").arg("30").spawn().unwrap();
        assert!(matches!(
            check_preloaded(plain.id()),
            Err(InjectError::NotPreloaded { .. })
        ));
        plain.kill().unwrap();
        plain.wait().unwrap();
    }
}
