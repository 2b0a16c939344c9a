//! The traffic client following DNS: `loadgen` resolves the service name through
//! hickory-resolver against a real BIND `named` (started by the test), honours the record's
//! TTL, and moves to the new address after an RFC 2136 update made with `nsupdate`, with no
//! failed request. Two backends listen on the same port at 127.0.0.2 and 127.0.0.3, as two
//! regions' fronts would.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hyper::header::HeaderName;
use umbra_agent::lb::named_backend::{BACKEND_HEADER, NamedBackend};
use umbra_agent::loadgen::{
    LoadConfig, LoadGenerator, LoadProgress, RequestSpec, ServiceTarget, Target,
};

const TTL_SECS: u64 = 1;

struct Named {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_named(dir: &Path, port: u16) -> Result<std::path::PathBuf> {
    let d = dir.display();
    let conf = format!(
        "options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; listen-on port {port} {{ 127.0.0.1; }};\n\
         listen-on-v6 {{ none; }}; recursion no; dnssec-validation no; notify no; }};\n\
         controls {{ }};\n\
         zone \"umbra.test\" {{ type primary; file \"{d}/umbra.test.zone\"; allow-update {{ 127.0.0.1; }}; }};\n"
    );
    let zone = [
        "$TTL 300".to_string(),
        "@ IN SOA ns1.umbra.test. hostmaster.umbra.test. 1 3600 600 1209600 1".to_string(),
        "@ IN NS ns1.umbra.test.".to_string(),
        "ns1 IN A 127.0.0.1".to_string(),
        format!("shop {TTL_SECS} IN A 127.0.0.2"),
        String::new(),
    ]
    .join("\n");
    std::fs::write(dir.join("umbra.test.zone"), zone)?;
    let path = dir.join("named.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

fn start_named() -> Result<Named> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = write_named(dir.path(), port)?;
    let child = Command::new("named")
        .args(["-g", "-4", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting named; install it with `apt-get install -y bind9`")?;
    let named = Named {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &port.to_string(),
                "shop.umbra.test.",
                "A",
                "+short",
                "+time=1",
                "+tries=1",
            ])
            .output()
            .context("running dig (apt-get install -y bind9-dnsutils)")?;
        if String::from_utf8_lossy(&out.stdout).trim() == "127.0.0.2" {
            return Ok(named);
        }
        ensure!(
            Instant::now() < deadline,
            "named did not serve the zone within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn nsupdate(port: u16, script: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("nsupdate")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nsupdate (apt-get install -y bind9-dnsutils)")?;
    let full = format!("server 127.0.0.1 {port}\nzone umbra.test\n{script}\nsend\n");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(full.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nsupdate failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

async fn snapshot_at(
    progress: &mut tokio::sync::watch::Receiver<LoadProgress>,
    secs: f64,
) -> LoadProgress {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let p = progress.borrow_and_update().clone();
            if p.elapsed_secs >= secs || p.finished {
                return p;
            }
            progress
                .changed()
                .await
                .expect("generator alive until finished");
        }
    })
    .await
    .expect("load generator progressed within 30 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_follows_a_dns_change_within_the_ttl() -> Result<()> {
    // Same port on two loopback addresses: the DNS answer alone decides where traffic goes.
    let a = NamedBackend::start("a", "127.0.0.2:0".parse()?).await?;
    let port = a.local_addr().port();
    let b = NamedBackend::start("b", SocketAddr::new("127.0.0.3".parse()?, port))
        .await
        .context("binding 127.0.0.3 on the same port as 127.0.0.2")?;
    let named = start_named()?;

    let target = Target::Service(ServiceTarget {
        name: "shop.umbra.test.".into(),
        port,
        dns_servers: vec![format!("127.0.0.1:{}", named.port).parse()?],
    });
    let mut config = LoadConfig::new(target, 200.0, 1200, Duration::from_secs(6));
    config.tally_header = Some(HeaderName::from_static(BACKEND_HEADER));
    config.progress_interval = Duration::from_millis(50);
    let generator = LoadGenerator::new(config, |_| RequestSpec::get("/"))?;
    let mut progress = generator.progress();
    let run = tokio::spawn(generator.run());

    let before = snapshot_at(&mut progress, 2.0).await;
    ensure!(
        !before.by_tally.contains_key("b"),
        "b served before the change: {before:?}"
    );
    nsupdate(
        named.port,
        "update delete shop.umbra.test. A\nupdate add shop.umbra.test. 1 A 127.0.0.3",
    )?;
    // Every client cache expires within the TTL; one more second covers query and scheduling.
    let settled_at = before.elapsed_secs + TTL_SECS as f64 + 1.0;
    let settled = snapshot_at(&mut progress, settled_at).await;
    let report = run.await??;
    println!("{report}");
    let a_after = report.by_tally.get("a").copied().unwrap_or(0)
        - settled.by_tally.get("a").copied().unwrap_or(0);
    assert_eq!(
        a_after, 0,
        "a still served {a_after} requests more than TTL + 1 s after the change"
    );
    assert!(
        report.by_tally.get("b").copied().unwrap_or(0) > 200,
        "{report}"
    );
    assert_eq!(report.counts.failed(), 0, "{report}");
    assert_eq!(report.by_address.len(), 2, "{report}");
    // The servers agree with the client about who served what.
    assert_eq!(
        (a.requests(), b.requests()),
        (report.by_tally["a"], report.by_tally["b"])
    );
    Ok(())
}
