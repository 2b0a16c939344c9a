//! `umbra demo --dns bind`: BIND 9's `named` on loopback as the one authority for
//! `umbra.test.`, taking RFC 2136 updates signed with a TSIG key that `tsig-keygen` makes.
//! The zone starts as an operator's would before Umbra: `shop` at the primary region's front,
//! with the service's TTL; from then on only the leading orchestrator changes it.
//!
//! This is the demo's own small launcher rather than the test kit's (`umbra_testkit::bind`):
//! the demo is part of the product and depends on no test crate. It must not change records
//! itself: the orchestrators do.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::processes::Supervisor;
use crate::{DemoError, io};

/// The name of the key `named` takes updates signed with (and the orchestrators' key file).
pub const KEY_NAME: &str = "umbra-update";
/// How long `named` may take to load the zone and answer for it.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Where Debian keeps daemons, which a user's `PATH` may leave out (`named` is in /usr/sbin).
const SYSTEM_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];

/// A running `named` the demo started.
#[derive(Debug, Clone)]
pub struct DemoBind {
    /// Where it answers, UDP and TCP.
    pub addr: SocketAddr,
    /// The key file the orchestrators sign their updates with.
    pub orchestrator_key_file: PathBuf,
}

/// Writes the key, `named.conf` and the zone under `dir`, starts `named` on `addr` under
/// `supervisor` and waits until it answers for the zone. With `wrong_key`, the orchestrators
/// get a key of the same name with another secret (a drill: every update gets NOTAUTH).
pub async fn start(
    dir: &Path,
    addr: SocketAddr,
    zone: &str,
    initial_records: &[String],
    wrong_key: bool,
    supervisor: &mut Supervisor,
) -> Result<DemoBind, DemoError> {
    let named = program("named")?;
    let keygen = program("tsig-keygen")?;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let server_key = dir.join(format!("{KEY_NAME}.key"));
    write_key(&keygen, &server_key)?;
    let orchestrator_key_file = if wrong_key {
        let other = dir.join(format!("{KEY_NAME}.wrong.key"));
        write_key(&keygen, &other)?;
        other
    } else {
        server_key.clone()
    };
    let zone = zone.trim_end_matches('.');
    let d = dir.display();
    let conf = format!(
        r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    listen-on port {port} {{ {ip}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
include "{key}";
zone "{zone}" {{
    type primary;
    file "{d}/{zone}.zone";
    allow-update {{ key "{KEY_NAME}"; }};
}};
"#,
        port = addr.port(),
        ip = addr.ip(),
        key = server_key.display(),
    );
    let mut lines = vec![
        "$TTL 300".to_owned(),
        format!("@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 1209600 5"),
        format!("@ IN NS ns1.{zone}."),
        "ns1 IN A 127.0.0.1".to_owned(),
    ];
    lines.extend(initial_records.iter().cloned());
    lines.push(String::new());
    std::fs::write(dir.join(format!("{zone}.zone")), lines.join("\n"))
        .map_err(io("writing the zone file"))?;
    let conf_path = dir.join("named.conf");
    std::fs::write(&conf_path, conf).map_err(io("writing named.conf"))?;
    // -g: foreground, log to stderr; no -u, so it keeps this user and can write the zone's
    // journal in the demo's directory.
    let mut command = Command::new(named);
    command.args(["-g", "-4", "-c"]).arg(&conf_path);
    supervisor.spawn("named", command, &dir.join("named.log"), None)?;

    let resolver = umbra_dns::verify::resolver_for(addr)
        .map_err(|e| DemoError::Setup(format!("a resolver for named: {e}")))?;
    let started = Instant::now();
    loop {
        supervisor.check()?;
        // The zone's own name server record: answered once the zone is loaded.
        if resolver.lookup_ip(format!("ns1.{zone}.")).await.is_ok() {
            break;
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(DemoError::Timeout {
                what: format!("named answering for {zone} on {addr}"),
                waited_secs: START_TIMEOUT.as_secs(),
                dir: dir.display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(DemoBind {
        addr,
        orchestrator_key_file,
    })
}

/// A loopback address for `named` on `port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Runs `tsig-keygen -a hmac-sha256 umbra-update` into `path` (the file BIND and the
/// orchestrators read).
fn write_key(keygen: &Path, path: &Path) -> Result<(), DemoError> {
    let out = Command::new(keygen)
        .args(["-a", "hmac-sha256", KEY_NAME])
        .output()
        .map_err(io("running tsig-keygen"))?;
    if !out.status.success() {
        return Err(DemoError::Setup(format!(
            "tsig-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    std::fs::write(path, &out.stdout).map_err(io(format!("writing {}", path.display())))
}

/// The path of a BIND program, from `PATH` or the system directories, or an error saying how
/// to install it.
fn program(name: &str) -> Result<PathBuf, DemoError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            DemoError::Setup(format!(
                "`{name}` is not installed; `umbra demo --dns bind` runs BIND 9: \
                 `apt-get install -y bind9`"
            ))
        })
}
