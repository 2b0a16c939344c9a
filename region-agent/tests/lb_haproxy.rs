//! HAProxy driven through its runtime API: a real `haproxy` (Debian's 2.6) started by the test
//! with a config the test writes, the same weight sequence as the embedded proxy test under
//! 500 req/s, shares read back from `show stat`, drain, and the errors a user gets for a
//! server that is not in the config.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hyper::header::HeaderName;
use umbra_agent::lb::haproxy::{Haproxy, HaproxyConfig};
use umbra_agent::lb::named_backend::{BACKEND_HEADER, NamedBackend};
use umbra_agent::lb::{BackendState, BackendWeight, LbError, LoadBalancer};
use umbra_agent::loadgen::{LoadConfig, LoadGenerator, LoadProgress, RequestSpec, Target};

const RATE_PER_SEC: f64 = 500.0;

struct HaproxyProcess {
    child: Child,
    frontend: SocketAddr,
    _dir: tempfile::TempDir,
    lb: Haproxy,
}

impl Drop for HaproxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn write_config(dir: &Path, port: u16, a: SocketAddr, b: SocketAddr) -> Result<std::path::PathBuf> {
    let cfg = format!(
        "global\n\
         \x20 stats socket {sock} mode 600 level admin\n\
         \x20 maxconn 2048\n\
         defaults\n\
         \x20 mode http\n\
         \x20 timeout connect 2s\n\
         \x20 timeout client 30s\n\
         \x20 timeout server 30s\n\
         \x20 option redispatch\n\
         \x20 retries 2\n\
         frontend fe\n\
         \x20 bind 127.0.0.1:{port}\n\
         \x20 default_backend be\n\
         backend be\n\
         \x20 balance roundrobin\n\
         \x20 server a {a} weight 100\n\
         \x20 server b {b} weight 0\n\
         \x20 server spare 127.0.0.1:1 weight 0\n",
        sock = dir.join("admin.sock").display()
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    Ok(path)
}

async fn start_haproxy(a: SocketAddr, b: SocketAddr) -> Result<HaproxyProcess> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let cfg = write_config(dir.path(), port, a, b)?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting haproxy; install it with `apt-get install -y haproxy`")?;
    let lb = Haproxy::new(HaproxyConfig::new(dir.path().join("admin.sock"), "be"))?;
    let mut process = HaproxyProcess {
        child,
        frontend: format!("127.0.0.1:{port}").parse()?,
        _dir: dir,
        lb,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(servers) = process.lb.servers().await
            && servers.len() == 3
        {
            return Ok(process);
        }
        if let Some(status) = process.child.try_wait()? {
            bail!("haproxy exited with {status} before its admin socket answered");
        }
        if Instant::now() > deadline {
            bail!("haproxy's admin socket did not answer within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn requests_by_server(lb: &Haproxy) -> Result<(u64, u64)> {
    let stats = lb.stats().await?;
    let get = |n: &str| {
        stats
            .iter()
            .find(|s| s.name == n)
            .map(|s| s.requests)
            .unwrap_or(0)
    };
    Ok((get("a"), get("b")))
}

async fn wait_until(progress: &mut tokio::sync::watch::Receiver<LoadProgress>, elapsed_secs: f64) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let p = progress.borrow_and_update().clone();
            if p.elapsed_secs >= elapsed_secs || p.finished {
                return;
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
async fn haproxy_weight_steps_read_back_from_show_stat() -> Result<()> {
    let a = NamedBackend::start("a", "127.0.0.1:0".parse()?).await?;
    let b = NamedBackend::start("b", "127.0.0.1:0".parse()?).await?;
    let haproxy = start_haproxy(a.local_addr(), b.local_addr()).await?;
    let lb = &haproxy.lb;
    let set = |wa: u32, wb: u32| {
        vec![
            BackendWeight::new("a", a.local_addr(), wa),
            BackendWeight::new("b", b.local_addr(), wb),
        ]
    };

    let steps: [(u32, u32); 7] = [
        (100, 0),
        (90, 10),
        (50, 50),
        (0, 100),
        (50, 50),
        (90, 10),
        (100, 0),
    ];
    let step_secs = 2.0;
    let settle_secs = 0.25;
    let run_for = Duration::from_secs_f64(step_secs * steps.len() as f64 + 0.5);
    let mut config = LoadConfig::new(
        Target::Urls(vec![format!("http://{}", haproxy.frontend).parse()?]),
        RATE_PER_SEC,
        (RATE_PER_SEC * run_for.as_secs_f64()) as u64,
        run_for,
    );
    config.tally_header = Some(HeaderName::from_static(BACKEND_HEADER));
    config.progress_interval = Duration::from_millis(50);
    let generator = LoadGenerator::new(config, |_| RequestSpec::get("/"))?;
    let mut progress = generator.progress();
    let run = tokio::spawn(generator.run());

    for (i, &(wa, wb)) in steps.iter().enumerate() {
        let step_start = i as f64 * step_secs;
        wait_until(&mut progress, step_start).await;
        lb.set_backends(&set(wa, wb)).await?;
        wait_until(&mut progress, step_start + settle_secs).await;
        let (a0, b0) = requests_by_server(lb).await?;
        wait_until(&mut progress, step_start + step_secs - 0.05).await;
        let (a1, b1) = requests_by_server(lb).await?;
        let (da, db) = (a1 - a0, b1 - b0);
        let total = (da + db) as f64;
        assert!(
            total >= 0.5 * RATE_PER_SEC,
            "step {i}: only {total} requests in the window"
        );
        let share_a = 100.0 * da as f64 / total;
        let want_a = 100.0 * wa as f64 / (wa + wb) as f64;
        println!("step {i}: weights {wa}/{wb}: show stat says a {share_a:.1}% of {total}");
        assert!(
            (share_a - want_a).abs() <= 5.0,
            "step {i}: a got {share_a:.1}%, weight says {want_a:.1}%"
        );
    }
    let report = run.await??;
    println!("{report}");
    assert_eq!(report.counts.failed(), 0, "{report}");
    assert!(
        report.achieved_rate_per_sec >= 0.9 * RATE_PER_SEC,
        "{report}"
    );
    // What HAProxy counted is what the client received.
    let (a_total, b_total) = requests_by_server(lb).await?;
    assert_eq!(a_total + b_total, report.counts.ok);
    assert_eq!(report.by_tally.get("b").copied().unwrap_or(0), b_total);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_drain_and_user_errors() -> Result<()> {
    let a = NamedBackend::start("a", "127.0.0.1:0".parse()?).await?;
    let b = NamedBackend::start("b", "127.0.0.1:0".parse()?).await?;
    let haproxy = start_haproxy(a.local_addr(), b.local_addr()).await?;
    let lb = &haproxy.lb;

    // Moving a server slot to a new address works through `set server ... addr`.
    let c = NamedBackend::start("c", "127.0.0.1:0".parse()?).await?;
    lb.set_backends(&[
        BackendWeight::new("a", a.local_addr(), 1),
        BackendWeight::new("spare", c.local_addr(), 1),
    ])
    .await?;
    let stats = lb.stats().await?;
    let spare = stats.iter().find(|s| s.name == "spare").unwrap();
    assert_eq!(
        (spare.addr, spare.weight),
        (Some(c.local_addr()), 1),
        "{stats:?}"
    );
    let b_row = stats.iter().find(|s| s.name == "b").unwrap();
    assert_eq!(
        (b_row.weight, b_row.state),
        (0, BackendState::Draining),
        "left-out servers get weight 0"
    );

    let client = reqwest::Client::new();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let r = client
            .get(format!("http://{}/", haproxy.frontend))
            .send()
            .await?;
        seen.insert(r.headers()[BACKEND_HEADER].to_str()?.to_string());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["a", "c"]);

    lb.drain("spare").await?;
    let stats = lb.stats().await?;
    assert_eq!(
        stats.iter().find(|s| s.name == "spare").unwrap().state,
        BackendState::Draining,
        "{stats:?}"
    );
    for _ in 0..10 {
        let r = client
            .get(format!("http://{}/", haproxy.frontend))
            .send()
            .await?;
        assert_eq!(r.headers()[BACKEND_HEADER], "a");
    }

    let unknown = lb
        .set_backends(&[BackendWeight::new("zzz", a.local_addr(), 1)])
        .await;
    assert!(
        matches!(&unknown, Err(LbError::UnknownBackend(m)) if m.contains("declare it in haproxy.cfg")),
        "{unknown:?}"
    );
    assert!(matches!(
        lb.drain("zzz").await,
        Err(LbError::UnknownBackend(_))
    ));
    // The runtime API's own refusals surface with HAProxy's words.
    let refused = lb.command("set server be/nosuch weight 1").await?;
    assert!(!refused.trim().is_empty());
    Ok(())
}
