//! BIND 9 on loopback, for the tests of DNS providers and of clients that follow DNS: a real
//! `named` serving one primary zone that the test writes, on a free port, returned once it
//! answers for the zone; `nsupdate` to change that zone as an operator would, and `dig` to
//! query it (or any server) as a user would.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::{Process, free_port, installed};

/// How long `named` may take to load the zone and answer for it.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The zone `named` serves.
pub struct Zone {
    /// Its name, without the final dot: `umbra.test`.
    pub name: String,
    /// The records after its SOA, NS (`ns1`) and `ns1 A 127.0.0.1`, in zone-file syntax
    /// relative to the zone: `shop 300 IN A 127.0.0.9`. The default TTL is 300 s.
    pub records: Vec<String>,
    /// The SOA's last field: how long resolvers cache "no such name".
    pub negative_ttl_secs: u32,
    /// Who may change it with RFC 2136 updates.
    pub updates: Updates,
}

/// Who may send `named` updates for the zone.
pub enum Updates {
    /// Anyone on 127.0.0.1, unsigned (what [`NamedProcess::nsupdate`] sends).
    FromLoopback,
    /// Only updates signed with this TSIG key.
    SignedWith(TsigSecret),
}

/// A TSIG key as BIND's configuration declares it.
pub struct TsigSecret {
    /// The key's name.
    pub name: String,
    /// BIND's name of its algorithm, e.g. `hmac-sha256`.
    pub algorithm: String,
    /// The secret, base64-encoded.
    pub secret_base64: String,
}

/// A running `named`; see the module docs.
pub struct NamedProcess {
    _process: Process,
    addr: SocketAddr,
    zone: String,
    _dir: tempfile::TempDir,
}

impl NamedProcess {
    /// Checks the configuration with `named-checkconf`, starts `named` in the foreground (its
    /// log in the temporary directory with the zone), and waits until `dig` gets the zone's
    /// SOA from it.
    pub async fn start(zone: &Zone) -> anyhow::Result<NamedProcess> {
        let dir = tempfile::tempdir()?;
        // One port for UDP and TCP: free_port checks both.
        let port = free_port()?;
        let conf = write_config(dir.path(), port, zone)?;
        Self::launch(dir, port, conf, &zone.name).await
    }

    /// `named` on `port` as a secondary of `zone` (`umbra.test`, no final dot): it copies the
    /// zone by AXFR/IXFR from `primaries` (tried in order), signing every request to them with
    /// `key`, and takes their NOTIFY. Returned once it answers the zone's SOA, that is after
    /// its first transfer. `port` is chosen by the caller so the primaries can be told where
    /// to send NOTIFY before it starts (use [`free_port`]).
    pub async fn start_secondary(
        zone: &str,
        port: u16,
        primaries: &[SocketAddr],
        key: &TsigSecret,
    ) -> anyhow::Result<NamedProcess> {
        let dir = tempfile::tempdir()?;
        let conf = write_secondary_config(dir.path(), port, zone, primaries, key)?;
        Self::launch(dir, port, conf, zone).await
    }

    async fn launch(
        dir: tempfile::TempDir,
        port: u16,
        conf: PathBuf,
        zone: &str,
    ) -> anyhow::Result<NamedProcess> {
        let named = installed("named", "bind9")?;
        let checkconf = installed("named-checkconf", "bind9")?;
        installed("dig", "bind9-dnsutils")?;
        let check = Command::new(checkconf).arg(&conf).output()?;
        ensure!(
            check.status.success(),
            "named.conf does not check: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        // -g: foreground, log to stderr; no -u, so it keeps the test's user and can write the
        // zone's journal in the temporary directory.
        let mut command = Command::new(named);
        command.args(["-g", "-4", "-c"]).arg(&conf);
        let mut process = Process::spawn("named", command, &dir.path().join("named.log"))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let soa_query = format!("{zone}. SOA +short +time=1 +tries=1");
        let what = format!("zone {zone} served on {addr}");
        process
            .wait_for(&what, START_TIMEOUT, || {
                let query = soa_query.clone();
                async move {
                    let answer = tokio::task::spawn_blocking(move || dig(addr, &[query]))
                        .await
                        .ok()?
                        .ok()?;
                    (!answer.trim().is_empty()).then_some(())
                }
            })
            .await?;
        Ok(NamedProcess {
            _process: process,
            addr,
            zone: zone.to_owned(),
            _dir: dir,
        })
    }

    /// Where it answers, UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The end of `named`'s log, for a failure message.
    pub fn log_tail(&self) -> String {
        self._process.log_tail()
    }

    /// Sends the zone an unsigned update with `nsupdate` (for [`Updates::FromLoopback`]):
    /// `script` is its commands between the zone and `send`, e.g.
    /// `update delete shop.umbra.test. A`.
    pub fn nsupdate(&self, script: &str) -> anyhow::Result<()> {
        let nsupdate = installed("nsupdate", "bind9-dnsutils")?;
        let mut child = Command::new(nsupdate)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nsupdate")?;
        let full = format!(
            "server {} {}\nzone {}\n{script}\nsend\n",
            self.addr.ip(),
            self.addr.port(),
            self.zone
        );
        child
            .stdin
            .take()
            .context("nsupdate's stdin is piped")?
            .write_all(full.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nsupdate failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

/// Runs `dig` against `server` in batch mode (one process, however many queries: one a line,
/// each with its own options, e.g. `shop.umbra.test. A +short`) and returns what it printed.
pub fn dig(server: SocketAddr, queries: &[impl AsRef<str>]) -> anyhow::Result<String> {
    let dig = installed("dig", "bind9-dnsutils")?;
    let mut batch = tempfile::NamedTempFile::new()?;
    for query in queries {
        writeln!(batch, "{}", query.as_ref())?;
    }
    batch.flush()?;
    let out = Command::new(dig)
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "-f"])
        .arg(batch.path())
        .output()
        .context("running dig")?;
    ensure!(
        out.status.success(),
        "dig failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The serial of `zone`'s SOA (`umbra.test.`, with the final dot) as `server` answers it.
pub fn soa_serial(server: SocketAddr, zone: &str) -> anyhow::Result<u32> {
    let out = dig(server, &[format!("{zone} SOA +short")])?;
    let serial = out
        .split_whitespace()
        .nth(2)
        .with_context(|| format!("the SOA answer of {zone} has no serial: {out:?}"))?;
    Ok(serial.parse()?)
}

fn write_secondary_config(
    dir: &Path,
    port: u16,
    zone: &str,
    primaries: &[SocketAddr],
    key: &TsigSecret,
) -> anyhow::Result<PathBuf> {
    ensure!(
        !primaries.is_empty(),
        "a secondary needs at least one primary"
    );
    let d = dir.display();
    let name = &key.name;
    let primaries: String = primaries
        .iter()
        .map(|p| format!("{} port {} key \"{name}\"; ", p.ip(), p.port()))
        .collect();
    // notify no: it tells no one else. The copy is kept in a file of the temporary directory
    // (raw format, as BIND writes secondaries by default).
    let conf = format!(
        r#"{options}key "{name}" {{
    algorithm {};
    secret "{}";
}};
zone "{zone}" {{
    type secondary;
    file "{d}/{zone}.copy";
    primaries {{ {primaries}}};
    allow-notify {{ key "{name}"; }};
}};
"#,
        key.algorithm,
        key.secret_base64,
        options = options(dir, port),
    );
    let path = dir.join("named.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// The options every `named` the tests start shares: the directory, loopback only on `port`,
/// authoritative only, and it notifies no one (no rndc control channel either).
fn options(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
"#
    )
}

fn write_config(dir: &Path, port: u16, zone: &Zone) -> anyhow::Result<PathBuf> {
    let d = dir.display();
    let name = &zone.name;
    let (key, allow_update) = match &zone.updates {
        Updates::FromLoopback => (String::new(), "127.0.0.1;".to_string()),
        Updates::SignedWith(key) => (
            format!(
                "key \"{}\" {{\n    algorithm {};\n    secret \"{}\";\n}};\n",
                key.name, key.algorithm, key.secret_base64
            ),
            format!("key \"{}\";", key.name),
        ),
    };
    let options = options(dir, port);
    let conf = format!(
        r#"{options}{key}zone "{name}" {{
    type primary;
    file "{d}/{name}.zone";
    allow-update {{ {allow_update} }};
}};
"#
    );
    let mut lines = vec![
        "$TTL 300".to_string(),
        format!(
            "@ IN SOA ns1.{name}. hostmaster.{name}. 1 3600 600 1209600 {}",
            zone.negative_ttl_secs
        ),
        format!("@ IN NS ns1.{name}."),
        "ns1 IN A 127.0.0.1".to_string(),
    ];
    lines.extend(zone.records.iter().cloned());
    lines.push(String::new());
    std::fs::write(dir.join(format!("{name}.zone")), lines.join("\n"))?;
    let path = dir.join("named.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}
