//! The embedded front as a process of its own (`[front] kind = "embedded"`): the agent runs
//! `umbra-agent front --listen ADDR --dir DIR`, which serves the embedded weighted proxy
//! ([`crate::lb::proxy`]) on the front's address, and drives it over a control socket. Like the
//! agent's instances and its haproxy, the front outlives the agent on purpose (static
//! stability: a region keeps serving through an agent restart or crash, with no orchestrator
//! up), and the next agent on the state directory adopts it instead of starting another.
//!
//! The front process keeps its routing (the backends, their weights and the generation the
//! agent gave them) in `DIR/routing.json`, written atomically (a temporary file, fsync,
//! rename, fsync of the directory) on a blocking thread before the new routing is applied, and
//! on start restores it before it accepts a single connection. A routing file it cannot read
//! stops it with an error naming the file: serving an empty table in its place would answer
//! every request with 503, which is worse than a front that refuses to start and says why.
//!
//! The control channel is a Unix socket, `DIR/control.sock`, mode 0600 in a directory of mode
//! 0700: only the agent's user (and root) can reach it, with no port to allocate and nothing
//! reachable from the network, the same trust haproxy's admin socket gets. One JSON request
//! per connection, one JSON reply. Setting a routing is idempotent: the generation the front
//! holds again is a no-op, an older one is refused (a late request of a previous agent never
//! undoes a newer routing).
//!
//! What the front served: `Stats` answers its per-backend counters and the p99 of the local
//! backends' requests over its recent-latency window, both kept by the front itself, so they
//! run on through an agent restart. For the agent's Prometheus histogram the front also sends
//! one datagram per answered request (`backend microseconds`) to the agent's `DIR/log.sock`,
//! read by [`super::child::RequestLog`] as haproxy's log is (a datagram sent while no agent
//! listens is a sample missing from the histogram only).
//!
//! This module must not decide weights (`super::weights` does).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::REMOTE_PREFIX;
use super::child::{RequestLog, Running, not_ready, read_pid, runs_marked, spawn_marked, stop};
use crate::agent::config::EmbeddedSettings;
use crate::lb::proxy::{EmbeddedProxy, LatencyObserver, ProxyConfig};
use crate::lb::{BackendStats, BackendWeight, LbError, LoadBalancer, validate_backends};
use crate::provider::process::ENV_PROVIDER_STATE;

/// The front's routing, in its directory.
pub const ROUTING_FILE: &str = "routing.json";
/// The control socket, in the front's directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// The agent's latency log socket, in the front's directory.
const LOG_SOCKET: &str = "log.sock";
/// The front's pid, written by the agent that started it.
pub const PID_FILE: &str = "front.pid";
/// The front's stdout and stderr.
const LOG_FILE: &str = "front.log";
/// The routing file's format; a newer one is refused with "upgrade".
const ROUTING_VERSION: u32 = 1;
/// Largest control request or reply: 64 backends are a few KiB.
const MAX_CONTROL_BYTES: u64 = 1 << 20;
/// One control exchange: the front answers locally in microseconds; 5 s is room for a loaded
/// machine and for the fsync of a routing change.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a started front may take until its control socket answers.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The backends the front serves and the generation the agent gave them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    /// Grows with each change the agent makes; 0 before the first.
    pub generation: u64,
    /// The complete backend set with weights.
    pub backends: Vec<BackendWeight>,
}

#[derive(Serialize, Deserialize)]
struct RoutingFile {
    version: u32,
    routing: Routing,
}

/// Why the routing file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RoutingFileError {
    /// The file exists but could not be read.
    #[error("cannot read the front's routing {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a routing this front wrote (torn, edited, another program's).
    #[error(
        "the front's routing {path} is damaged ({message}); the front does not serve an empty \
         routing in its place: move the file away to start with no routing, and the agent sets \
         it again at its next heartbeat"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A newer umbra-agent wrote it.
    #[error(
        "the front's routing {path} has format {version}, newer than this umbra-agent's {ROUTING_VERSION}; upgrade umbra-agent"
    )]
    Newer {
        /// The file.
        path: PathBuf,
        /// Its format.
        version: u32,
    },
    /// The new routing could not be written (the front still serves the previous one).
    #[error("cannot write the front's routing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// The routing kept in `path`: the empty routing (generation 0) when there is no file yet.
pub fn load_routing(path: &Path) -> Result<Routing, RoutingFileError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Routing::default()),
        Err(source) => {
            return Err(RoutingFileError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let damaged = |message: String| RoutingFileError::Damaged {
        path: path.to_owned(),
        message,
    };
    let version: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
    let version = version
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| damaged("it has no format version".into()))?;
    if version > u64::from(ROUTING_VERSION) {
        return Err(RoutingFileError::Newer {
            path: path.to_owned(),
            version: u32::try_from(version).unwrap_or(u32::MAX),
        });
    }
    let file: RoutingFile = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
    validate_backends(&file.routing.backends).map_err(|e| damaged(e.to_string()))?;
    Ok(file.routing)
}

/// Writes `routing` to `path` atomically: a temporary file beside it, fsynced, renamed over
/// it, and the directory fsynced, so a crash leaves the old routing or the new one, never a
/// torn file. Blocking: call it off the async threads.
pub fn store_routing(path: &Path, routing: &Routing) -> Result<(), RoutingFileError> {
    let write = || -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec(&RoutingFile {
            version: ROUTING_VERSION,
            routing: routing.clone(),
        })?;
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, &body)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|source| RoutingFileError::Write {
        path: path.to_owned(),
        source,
    })
}

/// What the agent asks the front.
#[derive(Debug, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Where the front listens and the routing it serves.
    Status,
    /// Serve this routing (kept in the routing file first).
    Set(Routing),
    /// Every backend's counters since the front started, and the local backends' recent p99.
    Stats,
}

/// What the front answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum ControlReply {
    /// The front's address and the routing it serves now.
    Status {
        /// The bound address (the configured one, or the port the kernel chose for port 0).
        listen: SocketAddr,
        /// What it serves.
        routing: Routing,
    },
    /// Per-backend counters and the recent latency of the local backends.
    Stats {
        /// Every backend's counters since the front started.
        backends: Vec<BackendStats>,
        /// p99 time to response headers of the local backends' requests in the recent
        /// window, ms; `None` when none was answered.
        local_p99_ms: Option<f64>,
    },
    /// The request was refused; nothing changed.
    Refused(String),
}

/// Why the front process stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The routing file.
    #[error(transparent)]
    Routing(#[from] RoutingFileError),
    /// The proxy could not start.
    #[error(transparent)]
    Lb(#[from] LbError),
    /// The control socket.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What failed.
        source: std::io::Error,
    },
}

struct Served {
    proxy: EmbeddedProxy,
    routing: tokio::sync::Mutex<Routing>,
    routing_path: PathBuf,
}

/// Runs the front (`umbra-agent front`): restores the routing from `dir`'s routing file, only
/// then listens on `listen`, and answers the agent on the control socket until killed.
pub async fn serve(listen: SocketAddr, dir: &Path) -> Result<(), ServeError> {
    let io = |what: String| move |source| ServeError::Io { what, source };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let routing_path = dir.join(ROUTING_FILE);
    let routing = load_routing(&routing_path)?;
    let log = std::os::unix::net::UnixDatagram::unbound()
        .map_err(io("opening the latency log socket".into()))?;
    // A full or absent agent socket drops the sample instead of holding up the request.
    log.set_nonblocking(true)
        .map_err(io("opening the latency log socket".into()))?;
    let log_path = dir.join(LOG_SOCKET);
    let mut config = ProxyConfig::new(listen);
    config.latency_observer = Some(LatencyObserver(Arc::new(move |name, took| {
        let _ = log.send_to(format!("{name} {}", took.as_micros()).as_bytes(), &log_path);
    })));
    let proxy = EmbeddedProxy::start(config, &routing.backends).await?;
    tracing::info!(
        listen = %proxy.local_addr(),
        generation = routing.generation,
        backends = ?routing.backends,
        "front serving the routing kept in {}",
        routing_path.display()
    );
    let control_path = dir.join(CONTROL_SOCKET);
    let _ = std::fs::remove_file(&control_path);
    let listener = UnixListener::bind(&control_path)
        .map_err(io(format!("binding {}", control_path.display())))?;
    std::fs::set_permissions(&control_path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("restricting {}", control_path.display())))?;
    let served = Arc::new(Served {
        proxy,
        routing: tokio::sync::Mutex::new(routing),
        routing_path,
    });
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(io(format!("accepting on {}", control_path.display())))?;
        let served = served.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(&served, stream).await {
                tracing::warn!(error = %e, "control request failed");
            }
        });
    }
}

/// Reads one request from `stream` and writes the reply.
async fn answer(served: &Served, mut stream: UnixStream) -> std::io::Result<()> {
    let request = tokio::time::timeout(CONTROL_TIMEOUT, read_message(&mut stream))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let reply = match serde_json::from_slice::<ControlRequest>(&request) {
        Ok(request) => handle_request(served, request).await,
        Err(e) => ControlReply::Refused(format!("not a control request: {e}")),
    };
    stream.write_all(&serde_json::to_vec(&reply)?).await?;
    stream.shutdown().await
}

async fn read_message(stream: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    stream
        .take(MAX_CONTROL_BYTES + 1)
        .read_to_end(&mut bytes)
        .await?;
    if bytes.len() as u64 > MAX_CONTROL_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a control message is at most {MAX_CONTROL_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

async fn handle_request(served: &Served, request: ControlRequest) -> ControlReply {
    let status = |routing: &Routing| ControlReply::Status {
        listen: served.proxy.local_addr(),
        routing: routing.clone(),
    };
    match request {
        ControlRequest::Status => status(&*served.routing.lock().await),
        ControlRequest::Stats => match served.proxy.stats().await {
            Ok(backends) => ControlReply::Stats {
                backends,
                local_p99_ms: served
                    .proxy
                    .recent_latency(|name| !name.starts_with(REMOTE_PREFIX))
                    .latency_ms_p99,
            },
            Err(e) => ControlReply::Refused(e.to_string()),
        },
        ControlRequest::Set(new) => {
            // Held across the write, so two changes are kept and applied in one order.
            let mut current = served.routing.lock().await;
            if new.generation == current.generation && new.backends == current.backends {
                return status(&current);
            }
            if new.generation <= current.generation {
                return ControlReply::Refused(format!(
                    "generation {} is not newer than the front's {}; ask for its status and \
                     set generation {}",
                    new.generation,
                    current.generation,
                    current.generation + 1
                ));
            }
            if let Err(e) = validate_backends(&new.backends) {
                return ControlReply::Refused(e.to_string());
            }
            let path = served.routing_path.clone();
            let kept = new.clone();
            match tokio::task::spawn_blocking(move || store_routing(&path, &kept)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return ControlReply::Refused(e.to_string()),
                Err(e) => return ControlReply::Refused(format!("writing the routing: {e}")),
            }
            if let Err(e) = served.proxy.set_backends(&new.backends).await {
                return ControlReply::Refused(e.to_string());
            }
            *current = new;
            status(&current)
        }
    }
}

/// One exchange with the front at `socket`.
async fn control(socket: &Path, request: &ControlRequest) -> Result<ControlReply, LbError> {
    let io = |source| LbError::Io {
        what: format!("the front's control socket {}", socket.display()),
        source,
    };
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await.map_err(io)?;
        let body = serde_json::to_vec(request).map_err(|e| io(e.into()))?;
        stream.write_all(&body).await.map_err(io)?;
        stream.shutdown().await.map_err(io)?;
        let reply = read_message(&mut stream).await.map_err(io)?;
        serde_json::from_slice(&reply)
            .map_err(|e| LbError::Parse(format!("the front's control reply: {e}")))
    };
    tokio::time::timeout(CONTROL_TIMEOUT, exchange)
        .await
        .map_err(|_| LbError::Timeout {
            what: format!("the front's control socket {}", socket.display()),
            timeout_ms: CONTROL_TIMEOUT.as_millis() as u64,
        })?
}

/// The agent's handle on the front process.
pub struct EmbeddedFront {
    /// The configured address (port 0: the kernel chooses).
    configured: SocketAddr,
    /// The address the front is bound to.
    listen: SocketAddr,
    settings: EmbeddedSettings,
    /// `ENV_PROVIDER_STATE=<state_dir>`, the agent's marker.
    marker: String,
    process: std::sync::Mutex<Running>,
    /// The generation the front serves; held across a change so changes go out in order.
    generation: tokio::sync::Mutex<u64>,
    /// The front's per-request latency log (the Prometheus histogram; held to keep it open).
    _log: RequestLog,
}

impl EmbeddedFront {
    /// Adopts the front a previous agent started on this directory and address, or starts
    /// one, and returns once its control socket answers. `state_dir` is the agent's (the
    /// marker).
    pub async fn start(
        listen: SocketAddr,
        settings: &EmbeddedSettings,
        state_dir: &Path,
        observer: Option<LatencyObserver>,
    ) -> Result<EmbeddedFront, LbError> {
        let io = |what: String| move |source| LbError::Io { what, source };
        std::fs::create_dir_all(&settings.dir)
            .map_err(io(format!("creating {}", settings.dir.display())))?;
        // Only the agent's user reaches the control socket in it.
        std::fs::set_permissions(&settings.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("restricting {}", settings.dir.display())))?;
        let dir = std::fs::canonicalize(&settings.dir)
            .map_err(io(format!("resolving {}", settings.dir.display())))?;
        let state_dir = std::fs::canonicalize(state_dir)
            .map_err(io(format!("resolving {}", state_dir.display())))?;
        let log = RequestLog::bind(&dir.join(LOG_SOCKET), observer, local_log_line, false)?;
        let mut front = EmbeddedFront {
            configured: listen,
            listen,
            settings: EmbeddedSettings {
                binary: settings.binary.clone(),
                dir,
            },
            marker: format!("{ENV_PROVIDER_STATE}={}", state_dir.display()),
            // Replaced below before anyone reads it.
            process: std::sync::Mutex::new(Running {
                pid: 0,
                child: None,
            }),
            generation: tokio::sync::Mutex::new(0),
            _log: log,
        };
        let running = match front.adoptable().await {
            Some(pid) => {
                tracing::info!(pid, "adopting the front a previous agent started");
                Running { pid, child: None }
            }
            None => front.spawn()?,
        };
        *front.process.get_mut().expect("process lock") = running;
        let (listen, routing) = front.wait_ready().await?;
        front.listen = listen;
        *front.generation.get_mut() = routing.generation;
        tracing::info!(%listen, generation = routing.generation, backends = ?routing.backends, "the front serves");
        Ok(front)
    }

    /// The address the front listens on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn control_path(&self) -> PathBuf {
        self.settings.dir.join(CONTROL_SOCKET)
    }

    fn pid_path(&self) -> PathBuf {
        self.settings.dir.join(PID_FILE)
    }

    /// The arguments the front runs with.
    fn args(&self) -> [String; 5] {
        [
            "front".into(),
            "--listen".into(),
            self.configured.to_string(),
            "--dir".into(),
            self.settings.dir.display().to_string(),
        ]
    }

    /// The pid of a live front of ours on this directory with these arguments; one of ours on
    /// this directory with other arguments (another address) is stopped.
    async fn adoptable(&self) -> Option<u32> {
        let pid = read_pid(&self.pid_path())?;
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if runs_marked(pid, &self.marker, &args) {
            return Some(pid);
        }
        let dir = self.settings.dir.display().to_string();
        let ours = |pid| runs_marked(pid, &self.marker, &["--dir", &dir]);
        if ours(pid) {
            tracing::info!(
                pid,
                "stopping the front of a previous agent: it listens on another address"
            );
            stop(pid, ours).await;
        }
        None
    }

    /// Starts `umbra-agent front`, marked as the agent's (see [`spawn_marked`]).
    fn spawn(&self) -> Result<Running, LbError> {
        let mut command = Command::new(&self.settings.binary);
        command.args(self.args());
        let running = spawn_marked(
            command,
            &self.marker,
            &self.settings.dir.join(LOG_FILE),
            &self.pid_path(),
            |e| {
                format!(
                    "cannot run the front {:?}: {e}; build umbra-agent or set \
                     front.front_binary to its path",
                    self.settings.binary
                )
            },
        )?;
        tracing::info!(pid = running.pid, listen = %self.configured, dir = %self.settings.dir.display(), "front started");
        Ok(running)
    }

    /// Waits until the control socket answers its status; an error quoting the front's log if
    /// it exits or does not answer in time.
    async fn wait_ready(&self) -> Result<(SocketAddr, Routing), LbError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(ControlReply::Status { listen, routing }) =
                control(&self.control_path(), &ControlRequest::Status).await
            {
                return Ok((listen, routing));
            }
            let alive = self.process.lock().expect("process lock").alive();
            if !alive || Instant::now() >= deadline {
                return Err(not_ready(
                    &format!(
                        "the front ({} {})",
                        self.settings.binary.display(),
                        self.args().join(" ")
                    ),
                    "control socket",
                    alive,
                    START_TIMEOUT,
                    &self.settings.dir.join(LOG_FILE),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the front again if it died; true when it did (it restored its routing from its
    /// file, and its counters restarted at 0).
    pub async fn ensure_running(&self) -> Result<bool, LbError> {
        let alive = self.process.lock().expect("process lock").alive();
        if alive {
            return Ok(false);
        }
        tracing::warn!(dir = %self.settings.dir.display(), "the front exited; starting it again");
        let running = self.spawn()?;
        *self.process.lock().expect("process lock") = running;
        let (_, routing) = self.wait_ready().await?;
        *self.generation.lock().await = routing.generation;
        Ok(true)
    }

    /// Makes `backends` the front's routing, under the next generation.
    pub async fn set_backends(&self, backends: &[BackendWeight]) -> Result<(), LbError> {
        let mut generation = self.generation.lock().await;
        let routing = Routing {
            generation: *generation + 1,
            backends: backends.to_vec(),
        };
        match control(&self.control_path(), &ControlRequest::Set(routing)).await? {
            ControlReply::Status { routing, .. } => {
                *generation = routing.generation;
                Ok(())
            }
            ControlReply::Refused(reply) => Err(LbError::Runtime {
                command: "set routing".into(),
                reply,
            }),
            ControlReply::Stats { .. } => Err(LbError::Parse(
                "the front answered a routing change with its counters".into(),
            )),
        }
    }

    /// Every backend's counters since the front started, and the p99 of the local backends'
    /// recent requests (ms).
    pub async fn stats(&self) -> Result<(Vec<BackendStats>, Option<f64>), LbError> {
        match control(&self.control_path(), &ControlRequest::Stats).await? {
            ControlReply::Stats {
                backends,
                local_p99_ms,
            } => Ok((backends, local_p99_ms)),
            ControlReply::Refused(reply) => Err(LbError::Runtime {
                command: "stats".into(),
                reply,
            }),
            ControlReply::Status { .. } => Err(LbError::Parse(
                "the front answered a stats request with its status".into(),
            )),
        }
    }
}

/// A line of the front's latency log for a local backend: its name and time to headers.
fn local_log_line(line: &str) -> Option<(&str, Duration)> {
    let (name, us) = line.trim().split_once(' ')?;
    let us: u64 = us.parse().ok()?;
    (!name.starts_with(REMOTE_PREFIX)).then(|| (name, Duration::from_micros(us)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(generation: u64) -> Routing {
        Routing {
            generation,
            backends: vec![
                BackendWeight::new("shop-1", "127.0.0.1:9001".parse().unwrap(), 3),
                BackendWeight::new("front-shop", "127.0.0.12:8000".parse().unwrap(), 1),
            ],
        }
    }

    #[test]
    fn a_routing_comes_back_as_it_was_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ROUTING_FILE);
        assert_eq!(load_routing(&path).unwrap(), Routing::default());
        store_routing(&path, &routing(7)).unwrap();
        assert_eq!(load_routing(&path).unwrap(), routing(7));
        store_routing(&path, &routing(8)).unwrap();
        assert_eq!(load_routing(&path).unwrap(), routing(8));
        // Nothing but the file is left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [ROUTING_FILE]);
    }

    #[test]
    fn a_damaged_routing_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ROUTING_FILE);
        store_routing(&path, &routing(3)).unwrap();
        let whole = std::fs::read(&path).unwrap();
        let bad_weight = String::from_utf8(whole.clone())
            .unwrap()
            .replace("\"weight\":3", "\"weight\":999");
        let damaged: Vec<Vec<u8>> = vec![
            // Torn at every length but the whole.
            whole[..whole.len() / 2].to_vec(),
            whole[..1].to_vec(),
            Vec::new(),
            b"{\"routing\":{\"generation\":1,\"backends\":[]}}".to_vec(),
            bad_weight.into_bytes(),
        ];
        for bytes in damaged {
            std::fs::write(&path, &bytes).unwrap();
            let err = load_routing(&path).unwrap_err();
            assert!(
                matches!(err, RoutingFileError::Damaged { .. }),
                "{:?}: {err}",
                String::from_utf8_lossy(&bytes)
            );
            let message = err.to_string();
            assert!(
                message.contains(&path.display().to_string())
                    && message.contains("move the file away"),
                "{message}"
            );
        }
        std::fs::write(&path, b"{\"version\":2,\"routing\":{}}").unwrap();
        assert!(
            matches!(
                load_routing(&path),
                Err(RoutingFileError::Newer { version: 2, .. })
            ),
            "a newer format is refused with upgrade"
        );
    }

    #[tokio::test]
    async fn a_front_with_a_damaged_routing_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ROUTING_FILE), b"{\"version\":1,\"rout").unwrap();
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let err = serve(listen, dir.path()).await.unwrap_err();
        assert!(
            matches!(err, ServeError::Routing(RoutingFileError::Damaged { .. })),
            "{err}"
        );
        // It never opened its control socket: the agent sees a front that did not start.
        assert!(!dir.path().join(CONTROL_SOCKET).exists());
    }

    #[tokio::test]
    async fn a_front_restores_its_routing_and_refuses_older_generations() {
        let dir = tempfile::tempdir().unwrap();
        store_routing(&dir.path().join(ROUTING_FILE), &routing(4)).unwrap();
        let served = tokio::spawn({
            let dir = dir.path().to_owned();
            async move { serve("127.0.0.1:0".parse().unwrap(), &dir).await }
        });
        let socket = dir.path().join(CONTROL_SOCKET);
        let status = loop {
            if let Ok(reply) = control(&socket, &ControlRequest::Status).await {
                break reply;
            }
            assert!(!served.is_finished(), "the front stopped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(
            matches!(&status, ControlReply::Status { routing: r, .. } if *r == routing(4)),
            "{status:?}"
        );
        // The same generation again is a no-op; an older one is refused and changes nothing.
        let again = control(&socket, &ControlRequest::Set(routing(4)))
            .await
            .unwrap();
        assert!(matches!(again, ControlReply::Status { .. }), "{again:?}");
        let mut older = routing(3);
        older.backends.pop();
        let refused = control(&socket, &ControlRequest::Set(older)).await.unwrap();
        assert!(matches!(refused, ControlReply::Refused(_)), "{refused:?}");
        assert_eq!(
            load_routing(&dir.path().join(ROUTING_FILE)).unwrap(),
            routing(4)
        );
        // A newer one is kept before it is answered.
        let mut newer = routing(5);
        newer.backends.pop();
        let set = control(&socket, &ControlRequest::Set(newer.clone()))
            .await
            .unwrap();
        assert!(matches!(set, ControlReply::Status { routing: r, .. } if r == newer));
        assert_eq!(load_routing(&dir.path().join(ROUTING_FILE)).unwrap(), newer);
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        served.abort();
    }
}
