//! The region front as a `haproxy` the agent runs (`[front] kind = "haproxy"`): the agent
//! writes haproxy's configuration (one frontend on the front's address, one backend of spare
//! server slots, the runtime API on an admin socket, a one-line log per request to a socket of
//! the agent's), starts haproxy as a child, and then only drives it through the runtime API
//! ([`crate::lb::haproxy::Haproxy`]): a slot takes an instance's or another region's front's
//! address and weight with `set server`. It never reloads haproxy, so a cutover step never
//! restarts a connection.
//!
//! Slots: instances' names are known only at run time and HAProxy 2.6 declares servers in its
//! config, so the backend holds [`LOCAL_SLOTS`] `local-N` slots for this region's instances and
//! [`REMOTE_SLOTS`] `remote-N` slots for other regions' fronts. A slot serves one kind only, so
//! the sum of the `local-*` counters is what this region's instances served since haproxy
//! started.
//!
//! Lifetime: haproxy carries [`ENV_PROVIDER_STATE`]`=<state_dir>` in its environment, like the
//! agent's instances, and, like them, outlives the agent on purpose (an agent restart does not
//! cut the region's traffic). The agent that starts next on the state directory adopts it when
//! its pid file names a live haproxy with that marker running the very configuration the agent
//! would write; otherwise it stops that one and starts its own. If haproxy dies, the next
//! reconcile (every heartbeat) starts it again and re-applies every weight. Whoever cleans up
//! an agent's instances by their marker (the demo's supervisor, the tests' `Reaper`) stops its
//! haproxy too.
//!
//! This module must not decide weights (`super::weights` does) nor read `show stat` text itself
//! (`lb::haproxy` parses it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::child::{
    MAX_LOG_LINE, RequestLog, Running, not_ready, read_pid, runs_marked, spawn_marked, stop,
};
use super::{LocalRow, REMOTE_PREFIX};
use crate::agent::config::HaproxySettings;
use crate::lb::haproxy::{Haproxy, HaproxyConfig};
use crate::lb::proxy::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_RESPONSE_TIMEOUT, LatencyObserver,
};
use crate::lb::{BackendWeight, LbError, LoadBalancer, MAX_BACKENDS};
use crate::provider::process::ENV_PROVIDER_STATE;

/// Slots for this region's instances: a region's pool is a few dozen instances at most.
pub const LOCAL_SLOTS: usize = 48;
/// Slots for other regions' fronts (one per service with a share).
pub const REMOTE_SLOTS: usize = MAX_BACKENDS - LOCAL_SLOTS;
/// The backend haproxy balances; the runtime API names servers `region/<slot>`.
const BACKEND: &str = "region";
const LOCAL_SLOT: &str = "local-";
const REMOTE_SLOT: &str = "remote-";
/// Where an unused slot points: port 1 on loopback, where nothing listens; its weight is 0.
const SPARE_ADDR: &str = "127.0.0.1:1";
/// How long haproxy may take until its runtime API lists the backend: it starts in
/// milliseconds; 15 s is room for a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Which slot each backend name holds. A name keeps its slot while it is wanted; a freed slot
/// goes to the next new name of its kind.
#[derive(Debug, Default)]
struct Slots {
    local: Vec<Option<String>>,
    remote: Vec<Option<String>>,
}

impl Slots {
    fn new() -> Self {
        Slots {
            local: vec![None; LOCAL_SLOTS],
            remote: vec![None; REMOTE_SLOTS],
        }
    }

    /// `wanted` renamed to slots (names starting with the remote prefix go to remote slots).
    fn assign(&mut self, wanted: &[BackendWeight]) -> Result<Vec<BackendWeight>, LbError> {
        let is_remote = |name: &str| name.starts_with(REMOTE_PREFIX);
        for slots in [&mut self.local, &mut self.remote] {
            for slot in slots.iter_mut() {
                if slot
                    .as_ref()
                    .is_some_and(|n| !wanted.iter().any(|b| &b.name == n))
                {
                    *slot = None;
                }
            }
        }
        let mut out = Vec::with_capacity(wanted.len());
        for b in wanted {
            let (slots, prefix) = if is_remote(&b.name) {
                (&mut self.remote, REMOTE_SLOT)
            } else {
                (&mut self.local, LOCAL_SLOT)
            };
            let index = match slots.iter().position(|s| s.as_ref() == Some(&b.name)) {
                Some(i) => i,
                None => {
                    let free = slots.iter().position(Option::is_none).ok_or_else(|| {
                        LbError::InvalidBackends(format!(
                            "the haproxy front has {} {prefix}slots and all are taken; \
                             {} cannot join",
                            slots.len(),
                            b.name
                        ))
                    })?;
                    slots[free] = Some(b.name.clone());
                    free
                }
            };
            out.push(BackendWeight::new(
                format!("{prefix}{index}"),
                b.addr,
                b.weight,
            ));
        }
        Ok(out)
    }
}

/// haproxy's configuration for a front on `listen` with its files in `dir`. Timeouts, retries
/// and the connection limit are the embedded proxy's defaults, so the two kinds behave alike:
/// a refused connection is retried on another server (`option redispatch`), a connection that
/// breaks before the response only for idempotent methods, and `X-Forwarded-For` names the
/// client. Unlike the embedded proxy, haproxy does not skip a server that refused a connection
/// for the next seconds (that would need health checks, which would delay a new slot's first
/// request); each request to it is redispatched instead.
pub fn config_text(listen: SocketAddr, dir: &Path) -> String {
    let mut text = format!(
        "# Written by umbra-agent, which rewrites it whenever it starts haproxy: do not edit.\n\
         global\n\
         \x20 stats socket {dir}/admin.sock mode 600 level admin\n\
         \x20 log {dir}/log.sock len {MAX_LOG_LINE} format raw local0\n\
         \x20 maxconn {maxconn}\n\
         defaults\n\
         \x20 mode http\n\
         \x20 log global\n\
         \x20 option dontlognull\n\
         \x20 option forwardfor\n\
         \x20 timeout connect {connect_ms}ms\n\
         \x20 timeout client {response_ms}ms\n\
         \x20 timeout server {response_ms}ms\n\
         \x20 timeout http-request {response_ms}ms\n\
         frontend front\n\
         \x20 bind {listen}\n\
         \x20 # server, queue, connect and response-header times (ms), status\n\
         \x20 log-format \"%s %Tw %Tc %Tr %ST\"\n\
         \x20 default_backend {BACKEND}\n\
         backend {BACKEND}\n\
         \x20 balance roundrobin\n\
         \x20 retries {retries}\n\
         \x20 option redispatch 1\n\
         \x20 retry-on conn-failure empty-response\n\
         \x20 http-request disable-l7-retry unless {{ method GET HEAD OPTIONS TRACE PUT DELETE }}\n",
        dir = dir.display(),
        maxconn = DEFAULT_MAX_CONNECTIONS,
        connect_ms = DEFAULT_CONNECT_TIMEOUT.as_millis(),
        response_ms = DEFAULT_RESPONSE_TIMEOUT.as_millis(),
        retries = DEFAULT_MAX_ATTEMPTS - 1,
    );
    for (prefix, count) in [(LOCAL_SLOT, LOCAL_SLOTS), (REMOTE_SLOT, REMOTE_SLOTS)] {
        for i in 0..count {
            text.push_str(&format!("  server {prefix}{i} {SPARE_ADDR} weight 0\n"));
        }
    }
    text
}

/// One request's line of haproxy's log: the slot that served it and its time to response
/// headers (queue + connect + response, ms), or `None` for a line without a server response.
fn parse_log_line(line: &str) -> Option<(&str, u64)> {
    let mut fields = line.split_whitespace();
    let slot = fields.next()?;
    let mut total: u64 = 0;
    for _ in 0..3 {
        // haproxy writes -1 for a phase the request never reached.
        total += u64::try_from(fields.next()?.parse::<i64>().ok()?).ok()?;
    }
    Some((slot, total))
}

/// The running haproxy front.
pub struct HaproxyFront {
    listen: SocketAddr,
    settings: HaproxySettings,
    /// `ENV_PROVIDER_STATE=<state_dir>`, the agent's marker.
    marker: String,
    config_path: PathBuf,
    lb: Haproxy,
    process: Mutex<Running>,
    slots: Mutex<Slots>,
    /// haproxy's per-request log (dropping it leaves haproxy serving: the next agent adopts
    /// it, see the module docs).
    log: RequestLog,
}

impl HaproxyFront {
    /// Writes the configuration into `settings.dir`, adopts or starts haproxy, and returns
    /// once its runtime API lists the backend. `state_dir` is the agent's (the marker).
    pub async fn start(
        listen: SocketAddr,
        settings: &HaproxySettings,
        state_dir: &Path,
        observer: Option<LatencyObserver>,
    ) -> Result<HaproxyFront, LbError> {
        let io = |what: String| move |source| LbError::Io { what, source };
        std::fs::create_dir_all(&settings.dir)
            .map_err(io(format!("creating {}", settings.dir.display())))?;
        let dir = std::fs::canonicalize(&settings.dir)
            .map_err(io(format!("resolving {}", settings.dir.display())))?;
        let state_dir = std::fs::canonicalize(state_dir)
            .map_err(io(format!("resolving {}", state_dir.display())))?;
        let settings = HaproxySettings {
            binary: settings.binary.clone(),
            dir,
        };
        let log = RequestLog::bind(
            &settings.dir.join("log.sock"),
            observer,
            local_log_line,
            true,
        )?;
        let lb = Haproxy::new(HaproxyConfig::new(settings.dir.join("admin.sock"), BACKEND))?;
        let mut front = HaproxyFront {
            listen,
            marker: format!("{ENV_PROVIDER_STATE}={}", state_dir.display()),
            config_path: settings.dir.join("haproxy.cfg"),
            settings,
            lb,
            // Replaced below before anyone reads it.
            process: Mutex::new(Running {
                pid: 0,
                child: None,
            }),
            slots: Mutex::new(Slots::new()),
            log,
        };
        let running = match front.adoptable().await {
            Some(pid) => {
                tracing::info!(pid, "adopting the haproxy front a previous agent started");
                Running { pid, child: None }
            }
            None => front.spawn()?,
        };
        *front.process.get_mut().expect("process lock") = running;
        front.wait_ready().await?;
        Ok(front)
    }

    /// The address haproxy listens on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn pid_path(&self) -> PathBuf {
        self.settings.dir.join("haproxy.pid")
    }

    /// Whether `pid` is a haproxy this agent's state directory started with our config file.
    fn is_ours(&self, pid: u32) -> bool {
        runs_marked(pid, &self.marker, &[&self.config_path.to_string_lossy()])
    }

    /// The pid of a live haproxy of ours running exactly the configuration we would write; a
    /// live one with another configuration is stopped.
    async fn adoptable(&self) -> Option<u32> {
        let pid = read_pid(&self.pid_path())?;
        if !self.is_ours(pid) {
            return None;
        }
        let wanted = config_text(self.listen, &self.settings.dir);
        if std::fs::read_to_string(&self.config_path).ok().as_deref() == Some(wanted.as_str()) {
            return Some(pid);
        }
        tracing::info!(
            pid,
            "stopping the haproxy front of a previous agent: its configuration differs"
        );
        stop(pid, |pid| self.is_ours(pid)).await;
        None
    }

    /// Writes the configuration and starts haproxy in the foreground (`-db`), marked as the
    /// agent's (see [`spawn_marked`]).
    fn spawn(&self) -> Result<Running, LbError> {
        let dir = &self.settings.dir;
        std::fs::write(&self.config_path, config_text(self.listen, dir)).map_err(|source| {
            LbError::Io {
                what: format!("writing {}", self.config_path.display()),
                source,
            }
        })?;
        let mut command = Command::new(&self.settings.binary);
        command.arg("-db").arg("-f").arg(&self.config_path);
        let running = spawn_marked(
            command,
            &self.marker,
            &dir.join("haproxy.log"),
            &self.pid_path(),
            |e| {
                format!(
                    "cannot run haproxy {:?}: {e}; install it (Debian: apt-get install haproxy) \
                     or set front.haproxy_binary to its path",
                    self.settings.binary
                )
            },
        )?;
        tracing::info!(pid = running.pid, listen = %self.listen, config = %self.config_path.display(), "haproxy front started");
        Ok(running)
    }

    /// Waits until the runtime API lists the backend's slots; an error quoting haproxy's log
    /// if it exits or does not answer in time.
    async fn wait_ready(&self) -> Result<(), LbError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self
                .lb
                .servers()
                .await
                .is_ok_and(|s| s.len() == MAX_BACKENDS)
            {
                return Ok(());
            }
            let alive = self.process.lock().expect("process lock").alive();
            if !alive || Instant::now() >= deadline {
                return Err(not_ready(
                    &format!("haproxy (config {})", self.config_path.display()),
                    "runtime API",
                    alive,
                    START_TIMEOUT,
                    &self.settings.dir.join("haproxy.log"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts haproxy again if it died; true when it did (every weight must be set again).
    pub async fn ensure_running(&self) -> Result<bool, LbError> {
        let alive = self.process.lock().expect("process lock").alive();
        if alive {
            return Ok(false);
        }
        tracing::warn!(config = %self.config_path.display(), "the haproxy front exited; starting it again");
        let running = self.spawn()?;
        *self.process.lock().expect("process lock") = running;
        *self.slots.lock().expect("slots lock") = Slots::new();
        self.wait_ready().await?;
        Ok(true)
    }

    /// Makes `backends` (instance ids and remote fronts) the slots' addresses and weights.
    pub async fn set_backends(&self, backends: &[BackendWeight]) -> Result<(), LbError> {
        let slotted = self.slots.lock().expect("slots lock").assign(backends)?;
        self.lb.set_backends(&slotted).await
    }

    /// Requests and errors of each `local-*` slot since haproxy started, from `show stat`,
    /// with the backend the slot holds now (`None`: empty).
    pub async fn local_rows(&self) -> Result<Vec<LocalRow>, LbError> {
        let stats = self.lb.stats().await?;
        let slots = self.slots.lock().expect("slots lock");
        Ok(stats
            .iter()
            .filter(|s| s.name.starts_with(LOCAL_SLOT))
            .map(|s| LocalRow {
                key: s.name.clone(),
                backend: s.name[LOCAL_SLOT.len()..]
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| slots.local.get(i).cloned().flatten()),
                requests: s.requests,
                errors: s.errors,
            })
            .collect())
    }

    /// The backend each `local-*` slot holds now.
    pub fn slot_backends(&self) -> Vec<(String, String)> {
        let slots = self.slots.lock().expect("slots lock");
        slots
            .local
            .iter()
            .enumerate()
            .filter_map(|(i, b)| Some((format!("{LOCAL_SLOT}{i}"), b.clone()?)))
            .collect()
    }

    /// p99 time to response headers of the `local-*` slots' requests logged in the recent
    /// window, ms; `None` when none was.
    pub fn local_p99_ms(&self) -> Option<f64> {
        self.log.p99_ms()
    }
}

/// A line of haproxy's log for a `local-*` slot: the slot and its time to response headers.
fn local_log_line(line: &str) -> Option<(&str, Duration)> {
    let (slot, ms) = parse_log_line(line)?;
    slot.starts_with(LOCAL_SLOT)
        .then(|| (slot, Duration::from_millis(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(name: &str, weight: u32) -> BackendWeight {
        BackendWeight::new(name, "127.0.0.1:9".parse().unwrap(), weight)
    }

    fn names(v: &[BackendWeight]) -> Vec<&str> {
        v.iter().map(|b| b.name.as_str()).collect()
    }

    #[test]
    fn names_keep_their_slots_and_kinds_never_share_one() {
        let mut slots = Slots::new();
        let first = slots
            .assign(&[b("shop-1", 50), b("shop-2", 50), b("front-shop", 10)])
            .unwrap();
        assert_eq!(names(&first), ["local-0", "local-1", "remote-0"]);
        // shop-1 leaves: shop-2 keeps its slot, a newcomer takes the freed one.
        let second = slots.assign(&[b("shop-2", 1), b("shop-3", 1)]).unwrap();
        assert_eq!(names(&second), ["local-1", "local-0"]);
        assert_eq!(second[0].weight, 1);
        let full: Vec<_> = (0..=LOCAL_SLOTS).map(|i| b(&format!("i-{i}"), 1)).collect();
        assert!(matches!(
            slots.assign(&full),
            Err(LbError::InvalidBackends(m)) if m.contains("local-")
        ));
    }

    #[test]
    fn log_lines_give_the_slot_and_its_time_to_headers() {
        let rows = [
            ("local-3 0 1 27 200\n", Some(("local-3", 28))),
            ("remote-0 2 0 5 200", Some(("remote-0", 7))),
            // No server answered (refused everywhere, aborted): no latency sample.
            ("local-1 0 -1 -1 503", None),
            ("<NOSRV> -1 -1 -1 503", None),
            ("garbage", None),
        ];
        for (line, expected) in rows {
            assert_eq!(parse_log_line(line), expected, "{line:?}");
        }
    }

    #[test]
    fn the_config_declares_every_slot_and_the_sockets() {
        let text = config_text("127.0.0.12:8000".parse().unwrap(), Path::new("/d"));
        assert!(text.contains("bind 127.0.0.12:8000"));
        assert!(text.contains("stats socket /d/admin.sock mode 600 level admin"));
        assert!(text.contains("log /d/log.sock"));
        assert_eq!(text.matches("  server ").count(), MAX_BACKENDS);
        assert!(text.contains(&format!("server local-{} ", LOCAL_SLOTS - 1)));
        assert!(text.contains(&format!("server remote-{} ", REMOTE_SLOTS - 1)));
    }
}
