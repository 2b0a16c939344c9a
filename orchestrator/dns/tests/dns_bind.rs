//! RFC 2136 + TSIG against a real BIND 9.18 `named` started by the test on a loopback port,
//! with a zone and a key the test writes: a signed update is applied, verified through
//! hickory-resolver and read back; an unsigned update is REFUSED and one signed with a wrong
//! key gets NOTAUTH, and neither changes what is served.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use rand::RngCore;
use umbra_dns::rfc2136::{Rfc2136Config, Rfc2136Provider, TsigKey};
use umbra_dns::verify::verify_served;
use umbra_dns::{DnsError, DnsProvider, WeightedAddress, WeightedRecordSet};

const ZONE: &str = "umbra.test.";
const KEY_NAME: &str = "umbra-update";

struct Named {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn random_key() -> TsigKey {
    let mut secret = vec![0_u8; 32];
    rand::rng().fill_bytes(&mut secret);
    TsigKey {
        name: KEY_NAME.to_string(),
        algorithm: TsigAlgorithm::HmacSha256,
        secret,
    }
}

fn write_files(dir: &Path, port: u16, key: &TsigKey) -> Result<std::path::PathBuf> {
    let d = dir.display();
    let conf = format!(
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
key "{KEY_NAME}" {{
    algorithm hmac-sha256;
    secret "{secret}";
}};
zone "umbra.test" {{
    type primary;
    file "{d}/umbra.test.zone";
    allow-update {{ key "{KEY_NAME}"; }};
}};
"#,
        secret = key.secret_base64()
    );
    let zone = [
        "$TTL 300",
        "@ IN SOA ns1.umbra.test. hostmaster.umbra.test. 1 3600 600 1209600 30",
        "@ IN NS ns1.umbra.test.",
        "ns1 IN A 127.0.0.1",
        "shop 300 IN A 127.0.0.9",
        "",
    ]
    .join("\n");
    std::fs::write(dir.join("umbra.test.zone"), zone)?;
    let path = dir.join("named.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

async fn start_named(key: &TsigKey) -> Result<Named> {
    let dir = tempfile::tempdir()?;
    // named needs the same port for UDP and TCP; a free TCP port is almost always free for UDP.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = write_files(dir.path(), port, key)?;
    let check = Command::new("named-checkconf")
        .arg(&conf)
        .output()
        .context("named-checkconf (bind9 package)")?;
    if !check.status.success() {
        bail!(
            "named.conf does not check: {}",
            String::from_utf8_lossy(&check.stdout)
        );
    }
    // -g: foreground, log to stderr; no -u, so it keeps the test's user and can write the
    // journal in the temporary directory.
    let mut child = Command::new("named")
        .args(["-g", "-4", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting named; install it with `apt-get install -y bind9`")?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let probe = Rfc2136Provider::new(Rfc2136Config::new(addr, ZONE, None))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last;
    loop {
        match probe.record_set("shop.umbra.test.").await {
            Ok(Some(_)) => {
                return Ok(Named {
                    child,
                    addr,
                    _dir: dir,
                });
            }
            other => last = format!("{other:?}"),
        }
        if let Some(status) = child.try_wait()? {
            let mut log = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                use std::io::Read;
                let _ = stderr.read_to_string(&mut log);
            }
            bail!("named exited with {status} before answering:\n{log}");
        }
        if Instant::now() > deadline {
            bail!("named did not answer on {addr} within 20 s; last probe: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn wa(addr: &str, weight: u8) -> WeightedAddress {
    WeightedAddress {
        addr: addr.parse().unwrap(),
        weight,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_update_is_applied_and_unsigned_or_wrong_key_is_refused() -> Result<()> {
    let key = random_key();
    let named = start_named(&key).await?;
    let provider = Rfc2136Provider::new(Rfc2136Config::new(named.addr, ZONE, Some(key.clone())))?;

    let mut set = WeightedRecordSet::new(
        "shop.umbra.test.",
        60,
        vec![
            wa("127.0.0.2", 90),
            wa("127.0.0.3", 10),
            wa("127.0.0.4", 0),
            wa("::2", 5),
        ],
    );
    provider.set_record_set(&set).await?;
    let verified = verify_served(
        &provider.authoritative_servers(),
        &set,
        Duration::from_secs(10),
    )
    .await?;
    println!("verified: {verified:?}");
    set.addresses.sort();
    assert_eq!(
        provider.record_set("shop.umbra.test.").await?,
        Some(set.clone()),
        "read back exactly"
    );

    // Unsigned: BIND refuses (allow-update names only the key).
    let unsigned = Rfc2136Provider::new(Rfc2136Config::new(named.addr, ZONE, None))?;
    let attack = WeightedRecordSet::new("shop.umbra.test.", 60, vec![wa("127.0.0.66", 1)]);
    assert_eq!(
        unsigned.send_update(&attack, false).await?,
        ResponseCode::Refused
    );
    let via_trait = unsigned.set_record_set(&attack).await;
    assert!(
        matches!(&via_trait, Err(DnsError::Rejected { rcode, .. }) if rcode.contains("Refused")),
        "{via_trait:?}"
    );

    // Same key name, wrong secret: BIND answers NOTAUTH (TSIG BADSIG).
    let wrong = Rfc2136Provider::new(Rfc2136Config::new(named.addr, ZONE, Some(random_key())))?;
    assert_eq!(
        wrong.send_update(&attack, true).await?,
        ResponseCode::NotAuth
    );
    let via_trait = wrong.set_record_set(&attack).await;
    assert!(
        matches!(&via_trait, Err(DnsError::Rejected { rcode, .. }) if rcode.contains("Not authorized")),
        "{via_trait:?}"
    );

    // Neither refused update changed what is served.
    verify_served(&[named.addr], &set, Duration::from_secs(5)).await?;
    assert_eq!(provider.record_set("shop.umbra.test.").await?, Some(set));

    // A second signed change replaces the whole set in one update.
    let moved = WeightedRecordSet::new("shop.umbra.test.", 30, vec![wa("127.0.0.3", 100)]);
    provider.set_record_set(&moved).await?;
    verify_served(&[named.addr], &moved, Duration::from_secs(10)).await?;
    assert_eq!(provider.record_set("shop.umbra.test.").await?, Some(moved));
    Ok(())
}

#[test]
fn key_secrets_are_never_printed_and_short_keys_are_refused() {
    let key = TsigKey::from_base64(
        KEY_NAME,
        TsigAlgorithm::HmacSha256,
        "c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
    )
    .unwrap();
    assert!(!format!("{key:?}").contains("c2Vj"));
    assert!(!format!("{key:?}").contains("secret-secret"));
    let short = TsigKey {
        secret: vec![1, 2, 3],
        ..key
    };
    let addr: SocketAddr = "127.0.0.1:53".parse().unwrap();
    assert!(matches!(
        Rfc2136Provider::new(Rfc2136Config::new(addr, ZONE, Some(short))),
        Err(DnsError::Invalid(m)) if m.contains("tsig-keygen")
    ));
    assert!(TsigKey::from_base64(KEY_NAME, TsigAlgorithm::HmacSha256, "not base64!").is_err());
}
