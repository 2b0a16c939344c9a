//! HAProxy as a region load balancer, driven through its runtime API (the admin-level stats
//! socket): `set server <backend>/<server> addr|weight|state`, and `show stat` for counters.
//!
//! Umbra only changes weights, addresses and drain state of servers that the config declares
//! (missing servers are an error telling the user to declare spare slots); the agent's
//! HAProxy front (`crate::agent::front::haproxy`) writes a config of such slots. Each command opens the socket, sends one line and reads the reply to EOF,
//! with a timeout. This module must not write or reload HAProxy's config file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{BackendState, BackendStats, BackendWeight, LbError, LoadBalancer, validate_backends};

/// Time allowed for one runtime API command unless configured; the socket is local and
/// HAProxy answers in microseconds, so a second means it is stuck or gone.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Attempts per runtime API command: haproxy resets a connection to its admin socket now and
/// then when commands come back to back (seen with 2.6 right after a restart); every command
/// Umbra sends sets an absolute value or reads, so sending it again is safe.
const COMMAND_ATTEMPTS: u32 = 3;
/// Pause before the second attempt, doubled before each further one.
const COMMAND_RETRY_BACKOFF: Duration = Duration::from_millis(10);
/// Largest reply read from the socket (`show stat` for 64 servers is ~40 KiB).
const MAX_REPLY_BYTES: u64 = 4 * 1024 * 1024;

/// Where HAProxy's admin socket is and which backend Umbra drives.
#[derive(Clone, Debug)]
pub struct HaproxyConfig {
    /// `stats socket <path> level admin` from haproxy.cfg.
    pub admin_socket: PathBuf,
    /// The `backend` section whose servers carry the region's traffic.
    pub backend: String,
    pub command_timeout: Duration,
}

impl HaproxyConfig {
    pub fn new(admin_socket: impl Into<PathBuf>, backend: impl Into<String>) -> Self {
        Self {
            admin_socket: admin_socket.into(),
            backend: backend.into(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    pub fn validate(&self) -> Result<(), LbError> {
        if self.backend.is_empty()
            || self.backend.contains(char::is_whitespace)
            || self.backend.contains('/')
        {
            return Err(LbError::InvalidConfig(format!(
                "{:?} is not an HAProxy backend name",
                self.backend
            )));
        }
        if self.command_timeout.is_zero() {
            return Err(LbError::InvalidConfig(
                "command_timeout must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// A load balancer that is a running HAProxy.
pub struct Haproxy {
    config: HaproxyConfig,
}

/// One server row of `show stat`, the fields Umbra uses.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerRow {
    pub name: String,
    pub addr: Option<SocketAddr>,
    pub status: String,
    pub weight: u32,
    pub current_sessions: u64,
    /// Total sessions; in HTTP mode each request is a stream and counts once.
    pub total_sessions: u64,
    /// Responses by class (1xx..5xx and other), the per-server request count HAProxy keeps.
    pub responses: u64,
    pub responses_5xx: u64,
    pub connect_errors: u64,
    pub response_errors: u64,
    /// Average response time over the last 1024 requests, in ms.
    pub response_time_ms_avg: u64,
}

impl Haproxy {
    pub fn new(config: HaproxyConfig) -> Result<Self, LbError> {
        config.validate()?;
        Ok(Self { config })
    }

    /// Sends one runtime API command and returns the reply text; an I/O error is retried up to
    /// [`COMMAND_ATTEMPTS`] times in all, with a short backoff.
    pub async fn command(&self, command: &str) -> Result<String, LbError> {
        let mut backoff = COMMAND_RETRY_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.command_once(command).await {
                Err(LbError::Io { source, .. }) if attempt < COMMAND_ATTEMPTS => {
                    tracing::debug!(command, error = %source, attempt, "HAProxy admin socket failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn command_once(&self, command: &str) -> Result<String, LbError> {
        assert!(!command.contains('\n'), "one command per call");
        let what = format!(
            "HAProxy admin socket {}",
            self.config.admin_socket.display()
        );
        let exchange = async {
            let mut stream = UnixStream::connect(&self.config.admin_socket).await?;
            stream.write_all(format!("{command}\n").as_bytes()).await?;
            let mut reply = String::new();
            // HAProxy closes the connection after answering a non-interactive command.
            (&mut stream)
                .take(MAX_REPLY_BYTES)
                .read_to_string(&mut reply)
                .await?;
            Ok::<_, std::io::Error>(reply)
        };
        match tokio::time::timeout(self.config.command_timeout, exchange).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(source)) => Err(LbError::Io { what, source }),
            Err(_) => Err(LbError::Timeout {
                what: format!("{what}: {command}"),
                timeout_ms: self.config.command_timeout.as_millis() as u64,
            }),
        }
    }

    /// Sends a command whose success reply is empty (weight, state).
    async fn command_expect_empty(&self, command: &str) -> Result<(), LbError> {
        let reply = self.command(command).await?;
        if reply.trim().is_empty() {
            Ok(())
        } else {
            Err(LbError::Runtime {
                command: command.to_string(),
                reply: reply.trim().to_string(),
            })
        }
    }

    /// The servers of the configured backend, from `show stat`.
    pub async fn servers(&self) -> Result<Vec<ServerRow>, LbError> {
        let csv = self.command("show stat").await?;
        parse_show_stat(&csv, &self.config.backend)
    }

    async fn set_addr(&self, name: &str, addr: SocketAddr) -> Result<(), LbError> {
        let command = format!(
            "set server {}/{} addr {} port {}",
            self.config.backend,
            name,
            addr.ip(),
            addr.port()
        );
        let reply = self.command(&command).await?;
        // Success replies describe the change ("IP changed from ...", "no need to change ...").
        if reply.contains("changed") || reply.contains("no need to change") {
            Ok(())
        } else {
            Err(LbError::Runtime {
                command,
                reply: reply.trim().to_string(),
            })
        }
    }
}

/// Parses `show stat` CSV and keeps the server rows of `backend`.
pub fn parse_show_stat(csv: &str, backend: &str) -> Result<Vec<ServerRow>, LbError> {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .ok_or_else(|| {
            LbError::Parse(format!(
                "show stat reply has no header line: {:?}",
                csv.lines().next()
            ))
        })?;
    let columns: HashMap<&str, usize> =
        header.split(',').enumerate().map(|(i, c)| (c, i)).collect();
    let col = |name: &str| {
        columns
            .get(name)
            .copied()
            .ok_or_else(|| LbError::Parse(format!("show stat has no {name} column")))
    };
    let (pxname, svname, status, weight) = (
        col("pxname")?,
        col("svname")?,
        col("status")?,
        col("weight")?,
    );
    let (scur, stot, addr) = (col("scur")?, col("stot")?, col("addr")?);
    let hrsp: Vec<usize> = [
        "hrsp_1xx",
        "hrsp_2xx",
        "hrsp_3xx",
        "hrsp_4xx",
        "hrsp_5xx",
        "hrsp_other",
    ]
    .iter()
    .map(|c| col(c))
    .collect::<Result<_, _>>()?;
    let (hrsp_5xx, econ, eresp, rtime) =
        (col("hrsp_5xx")?, col("econ")?, col("eresp")?, col("rtime")?);

    let mut rows = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("");
        let num = |i: usize| get(i).parse::<u64>().unwrap_or(0);
        if get(pxname) != backend || matches!(get(svname), "FRONTEND" | "BACKEND") {
            continue;
        }
        rows.push(ServerRow {
            name: get(svname).to_string(),
            addr: get(addr).parse().ok(),
            status: get(status).to_string(),
            weight: u32::try_from(num(weight)).unwrap_or(u32::MAX),
            current_sessions: num(scur),
            total_sessions: num(stot),
            responses: hrsp.iter().map(|&i| num(i)).sum(),
            responses_5xx: num(hrsp_5xx),
            connect_errors: num(econ),
            response_errors: num(eresp),
            response_time_ms_avg: num(rtime),
        });
    }
    if rows.is_empty() && !csv.lines().any(|l| l.split(',').next() == Some(backend)) {
        return Err(LbError::Parse(format!(
            "HAProxy has no backend named {backend}; check haproxy.cfg"
        )));
    }
    Ok(rows)
}

impl LoadBalancer for Haproxy {
    fn set_backends<'a>(
        &'a self,
        backends: &'a [BackendWeight],
    ) -> BoxFuture<'a, Result<(), LbError>> {
        async move {
            validate_backends(backends)?;
            let servers = self.servers().await?;
            for b in backends {
                if !servers.iter().any(|s| s.name == b.name) {
                    return Err(LbError::UnknownBackend(format!(
                        "{}/{} (declare it in haproxy.cfg, e.g. as a spare `server {} 127.0.0.1:1 weight 0`)",
                        self.config.backend, b.name, b.name
                    )));
                }
            }
            let be = &self.config.backend;
            // HAProxy applies each command on its own, so for the microseconds between two
            // commands a few requests see a mix of old and new weights; shares settle with the
            // last command. (The embedded proxy swaps the whole table at once.)
            for b in backends {
                if servers.iter().find(|s| s.name == b.name).and_then(|s| s.addr) != Some(b.addr) {
                    self.set_addr(&b.name, b.addr).await?;
                }
                self.command_expect_empty(&format!("set server {be}/{} weight {}", b.name, b.weight)).await?;
                if b.weight > 0 {
                    self.command_expect_empty(&format!("set server {be}/{} state ready", b.name)).await?;
                }
            }
            // Only servers that still take requests: a front of spare slots would otherwise
            // send one command per idle slot on every change.
            for s in servers
                .iter()
                .filter(|s| s.weight != 0 && !backends.iter().any(|b| b.name == s.name))
            {
                self.command_expect_empty(&format!("set server {be}/{} weight 0", s.name)).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn drain<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), LbError>> {
        async move {
            if !self.servers().await?.iter().any(|s| s.name == name) {
                return Err(LbError::UnknownBackend(format!(
                    "{}/{name}",
                    self.config.backend
                )));
            }
            self.command_expect_empty(&format!(
                "set server {}/{name} state drain",
                self.config.backend
            ))
            .await
        }
        .boxed()
    }

    fn stats(&self) -> BoxFuture<'_, Result<Vec<BackendStats>, LbError>> {
        async move {
            Ok(self
                .servers()
                .await?
                .into_iter()
                .map(|s| {
                    let state = if s.status.starts_with("DOWN") || s.status.starts_with("MAINT") {
                        BackendState::Down
                    } else if s.status.starts_with("DRAIN") || s.weight == 0 {
                        BackendState::Draining
                    } else {
                        BackendState::Ready
                    };
                    BackendStats {
                        name: s.name,
                        addr: s.addr,
                        weight: s.weight,
                        state,
                        requests: s.responses + s.connect_errors + s.response_errors,
                        errors: s.responses_5xx + s.connect_errors + s.response_errors,
                        in_flight: s.current_sessions,
                        latency_ms_mean: (s.responses > 0).then_some(s.response_time_ms_avg as f64),
                        // HAProxy keeps no latency quantiles per server.
                        latency_ms_p50: None,
                        latency_ms_p99: None,
                    }
                })
                .collect())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_stat_rows_of_the_backend_are_parsed() {
        let csv = "# pxname,svname,qcur,scur,stot,econ,eresp,weight,status,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,rtime,addr,\n\
fe,FRONTEND,,1,10,,,,OPEN,0,10,0,0,0,0,,,\n\
be,a,0,1,90,0,0,90,UP,0,89,0,0,1,0,2,127.0.0.1:8081,\n\
be,b,0,0,10,3,0,10,DRAIN,0,10,0,0,0,0,1,127.0.0.1:8082,\n\
be,BACKEND,0,1,100,3,0,100,UP,0,99,0,0,1,0,2,,\n";
        let rows = parse_show_stat(csv, "be").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].name.as_str(),
                rows[0].responses,
                rows[0].responses_5xx
            ),
            ("a", 90, 1)
        );
        assert_eq!(rows[1].addr, Some("127.0.0.1:8082".parse().unwrap()));
        assert_eq!(
            (rows[1].status.as_str(), rows[1].connect_errors),
            ("DRAIN", 3)
        );
        assert!(matches!(
            parse_show_stat(csv, "nope"),
            Err(LbError::Parse(_))
        ));
        assert!(matches!(
            parse_show_stat("garbage", "be"),
            Err(LbError::Parse(_))
        ));
    }
}
