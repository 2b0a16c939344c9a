//! HAProxy on loopback, for the tests of the HAProxy load balancer: a real `haproxy` started
//! with a configuration written for one HTTP frontend on a free port and one round-robin
//! backend of named servers, with its runtime API on an admin socket (level admin); returned
//! once that socket lists every server.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Process, free_port, installed};

/// How long `haproxy` may take until its admin socket answers.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// One `server` line of the backend.
pub struct Server<'a> {
    /// Its name in the backend (`server NAME ...`).
    pub name: &'a str,
    /// Where it sends requests.
    pub addr: SocketAddr,
    /// Its starting weight (0: none of the traffic).
    pub weight: u32,
}

/// A running `haproxy`; see the module docs.
pub struct HaproxyProcess {
    _process: Process,
    frontend: SocketAddr,
    admin_socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl HaproxyProcess {
    /// Writes the configuration (backend `backend` with `servers`; connect timeout 2 s, one
    /// redispatch and two retries on a failed connection), starts `haproxy` in the foreground
    /// with its log in the temporary directory, and waits until `show stat` on the admin
    /// socket names every server.
    pub async fn start(backend: &str, servers: &[Server<'_>]) -> anyhow::Result<HaproxyProcess> {
        let haproxy = installed("haproxy", "haproxy")?;
        let dir = tempfile::tempdir()?;
        let frontend = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let admin_socket = dir.path().join("admin.sock");
        let config = write_config(dir.path(), frontend, &admin_socket, backend, servers)?;
        let mut command = Command::new(haproxy);
        command.arg("-db").arg("-f").arg(&config);
        let mut process = Process::spawn("haproxy", command, &dir.path().join("haproxy.log"))?;
        let rows: Vec<String> = servers
            .iter()
            .map(|s| format!("\n{backend},{},", s.name))
            .collect();
        process
            .wait_for(
                "its admin socket to list every server",
                START_TIMEOUT,
                || {
                    let (socket, rows) = (admin_socket.clone(), rows.clone());
                    async move {
                        let stat = admin_command(&socket, "show stat").await.ok()?;
                        rows.iter().all(|row| stat.contains(row)).then_some(())
                    }
                },
            )
            .await?;
        Ok(HaproxyProcess {
            _process: process,
            frontend,
            admin_socket,
            _dir: dir,
        })
    }

    /// The HTTP frontend's address.
    pub fn frontend(&self) -> SocketAddr {
        self.frontend
    }

    /// The runtime API's socket.
    pub fn admin_socket(&self) -> &Path {
        &self.admin_socket
    }
}

/// One runtime-API command and the whole answer.
async fn admin_command(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}

fn write_config(
    dir: &Path,
    frontend: SocketAddr,
    admin_socket: &Path,
    backend: &str,
    servers: &[Server<'_>],
) -> anyhow::Result<PathBuf> {
    let mut config = format!(
        "global\n\
         \x20 stats socket {socket} mode 600 level admin\n\
         \x20 maxconn 2048\n\
         defaults\n\
         \x20 mode http\n\
         \x20 timeout connect 2s\n\
         \x20 timeout client 30s\n\
         \x20 timeout server 30s\n\
         \x20 option redispatch\n\
         \x20 retries 2\n\
         frontend fe\n\
         \x20 bind {frontend}\n\
         \x20 default_backend {backend}\n\
         backend {backend}\n\
         \x20 balance roundrobin\n",
        socket = admin_socket.display()
    );
    for server in servers {
        config.push_str(&format!(
            "  server {} {} weight {}\n",
            server.name, server.addr, server.weight
        ));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config)?;
    Ok(path)
}
