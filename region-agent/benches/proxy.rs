//! Proxy overhead benchmark: the same backend reached directly, through the embedded proxy
//! and through HAProxy, each a separate process on this box, under the same load.
//!
//! Two measurements per path: (1) added latency at a fixed offered rate, open-loop, from
//! `umbra-load run` (latency from the scheduled send time, so queueing counts), reported as
//! p50/p99 minus the direct path's; (2) the most requests per second a closed-loop `wrk`
//! gets with a fixed number of connections. Needs `wrk`: `apt-get install -y wrk` first
//! (`.ci/install-deps` leaves it out: this bench does not run in CI). All processes share the
//! same two cores, so the numbers compare paths, not machines. Run with
//! `cargo bench -p umbra-agent --bench proxy -- [--rate N] [--secs S] [--connections C]`.
//! It must not be run as a test (it takes tens of seconds and saturates the CPU).

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

const UMBRA_LOAD: &str = env!("CARGO_BIN_EXE_umbra-load");

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `umbra-load <args>` and reads the bound address it prints first.
fn spawn_umbra_load(what: &'static str, args: &[String]) -> Result<(Proc, SocketAddr)> {
    let mut child = Command::new(UMBRA_LOAD)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let addr = line
        .trim()
        .parse()
        .with_context(|| format!("{what} printed {line:?}"))?;
    Ok((Proc { child }, addr))
}

fn spawn_haproxy(dir: &std::path::Path, backend: SocketAddr) -> Result<(Proc, SocketAddr)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cfg = format!(
        "global\n  maxconn 4096\n  stats socket {}/admin.sock mode 600 level admin\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
         frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
         backend be\n  balance roundrobin\n  server a {backend} weight 1\n",
        dir.display()
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting haproxy (apt-get install -y haproxy)")?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        ensure!(
            Instant::now() < deadline,
            "haproxy did not listen on {addr} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((Proc { child }, addr))
}

struct FixedRate {
    p50_us: u64,
    p99_us: u64,
    achieved: f64,
    failed: u64,
}

fn fixed_rate(addr: SocketAddr, rate: u64, secs: u64) -> Result<FixedRate> {
    let out = Command::new(UMBRA_LOAD)
        .args([
            "run",
            "--url",
            &format!("http://{addr}"),
            "--rate",
            &rate.to_string(),
        ])
        .args([
            "--requests",
            &(rate * secs).to_string(),
            "--duration-secs",
            &(secs + 5).to_string(),
            "--json",
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "umbra-load run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let counts = &v["counts"];
    let failed = [
        "http_error",
        "connect_error",
        "timeout",
        "resolve_error",
        "io_error",
    ]
    .iter()
    .map(|k| counts[k].as_u64().unwrap_or(0))
    .sum();
    Ok(FixedRate {
        p50_us: v["latency_ok"]["p50_us"].as_u64().context("p50")?,
        p99_us: v["latency_ok"]["p99_us"].as_u64().context("p99")?,
        achieved: v["achieved_rate_per_sec"].as_f64().context("rate")?,
        failed,
    })
}

struct Closed {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn wrk_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    for (unit, factor) in [("us", 0.001), ("ms", 1.0), ("s", 1000.0)] {
        if let Some(n) = s.strip_suffix(unit) {
            return n.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    None
}

fn max_rate(addr: SocketAddr, secs: u64, connections: u32) -> Result<Closed> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
        ])
        .arg(format!("http://{addr}/"))
        .output()
        .context("running wrk (apt-get install -y wrk)")?;
    ensure!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut closed = Closed {
        rps: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
    };
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(n)) => closed.rps = n.parse()?,
            (Some("50%"), Some(t)) => closed.p50_ms = wrk_ms(t).unwrap_or(f64::NAN),
            (Some("99%"), Some(t)) => closed.p99_ms = wrk_ms(t).unwrap_or(f64::NAN),
            _ => {}
        }
        if line.contains("Non-2xx") || line.contains("Socket errors") {
            println!("  wrk: {}", line.trim());
        }
    }
    if closed.rps.is_nan() {
        bail!("wrk printed no Requests/sec:\n{text}");
    }
    Ok(closed)
}

fn main() -> Result<()> {
    let mut rate = 2000_u64;
    let mut secs = 5_u64;
    let mut connections = 32_u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rate" => rate = args.next().context("--rate N")?.parse()?,
            "--secs" => secs = args.next().context("--secs S")?.parse()?,
            "--connections" => connections = args.next().context("--connections C")?.parse()?,
            // cargo bench passes --bench; nothing else is expected.
            "--bench" => {}
            other => bail!("unknown argument {other:?}; use --rate N --secs S --connections C"),
        }
    }
    ensure!(
        rate > 0 && secs > 0 && secs <= 120 && connections > 0 && connections <= 1024,
        "out-of-range arguments"
    );

    let dir = tempfile::tempdir()?;
    let (_backend, backend) =
        spawn_umbra_load("backend", &["serve".into(), "--name".into(), "a".into()])?;
    let (_proxy, proxy) = spawn_umbra_load(
        "embedded proxy",
        &["proxy".into(), "--backend".into(), format!("a={backend}=1")],
    )?;
    let (_haproxy, haproxy) = spawn_haproxy(dir.path(), backend)?;

    let paths = [
        ("direct", backend),
        ("embedded", proxy),
        ("haproxy", haproxy),
    ];
    println!(
        "proxy overhead, {} cores, open-loop {rate} req/s for {secs} s; wrk -c{connections} for {secs} s",
        num_cpus()
    );
    let mut direct: Option<FixedRate> = None;
    println!(
        "{:<10} {:>9} {:>9} {:>11} {:>11} {:>8} {:>7} | {:>10} {:>9} {:>9}",
        "path",
        "p50 ms",
        "p99 ms",
        "+p50 ms",
        "+p99 ms",
        "rate/s",
        "failed",
        "max req/s",
        "p50 ms",
        "p99 ms"
    );
    for (name, addr) in paths {
        // Warm connections and caches before measuring.
        fixed_rate(addr, rate.min(500), 1)?;
        let f = fixed_rate(addr, rate, secs)?;
        let c = max_rate(addr, secs, connections)?;
        let (added50, added99) = match &direct {
            Some(d) => (
                (f.p50_us as f64 - d.p50_us as f64) / 1000.0,
                (f.p99_us as f64 - d.p99_us as f64) / 1000.0,
            ),
            None => (0.0, 0.0),
        };
        println!(
            "{name:<10} {:>9.3} {:>9.3} {:>11.3} {:>11.3} {:>8.0} {:>7} | {:>10.0} {:>9.3} {:>9.3}",
            f.p50_us as f64 / 1000.0,
            f.p99_us as f64 / 1000.0,
            added50,
            added99,
            f.achieved,
            f.failed,
            c.rps,
            c.p50_ms,
            c.p99_ms
        );
        if direct.is_none() {
            direct = Some(f);
        }
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
