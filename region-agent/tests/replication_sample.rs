//! Replication acceptance with real `umbra-sample` processes: 10,000 keys written to a source
//! under concurrent load while it ships its log to a target; the target is SIGKILLed
//! mid-stream and restarted (it resumes from its own offset); then fence, lag 0, promote. The
//! target holds every acknowledged write, its log is the source's log exactly (no loss, no
//! duplicate), and the fenced source refuses writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use umbra_agent::replication::{ReplicationDriver, SampleLogShipping};
use umbra_agent::sample::{SampleStatus, WalBatch};

const KEYS: u64 = 10_000;
const WRITERS: u64 = 16;

struct Sample {
    child: Child,
    port: u16,
}

impl Drop for Sample {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_sample(data_dir: &Path, listen: &str) -> anyhow::Result<Sample> {
    let port_file = data_dir.with_extension("port");
    let _ = std::fs::remove_file(&port_file);
    let mut child = Command::new(env!("CARGO_BIN_EXE_umbra-sample"))
        .args([
            "--listen",
            listen,
            "--backing-latency-ms",
            "1",
            "--data-dir",
        ])
        .arg(data_dir)
        .arg("--port-file")
        .arg(&port_file)
        .stdout(Stdio::null())
        .env("RUST_LOG", "warn")
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(p) = std::fs::read_to_string(&port_file)
            && let Ok(port) = p.trim().parse()
        {
            return Ok(Sample { child, port });
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("umbra-sample exited: {status}");
        }
        anyhow::ensure!(Instant::now() < deadline, "umbra-sample did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
}

async fn status(http: &reqwest::Client, port: u16) -> anyhow::Result<SampleStatus> {
    Ok(http
        .get(format!("http://127.0.0.1:{port}/admin/status"))
        .send()
        .await?
        .json()
        .await?)
}

async fn whole_log(
    http: &reqwest::Client,
    port: u16,
) -> anyhow::Result<Vec<umbra_agent::sample::wal::WalRecord>> {
    let mut out = Vec::new();
    loop {
        let batch: WalBatch = http
            .get(format!(
                "http://127.0.0.1:{port}/wal?from={}&max=5000",
                out.len() + 1
            ))
            .send()
            .await?
            .json()
            .await?;
        if batch.records.is_empty() {
            return Ok(out);
        }
        out.extend(batch.records);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_writes_replicate_through_a_replica_crash_then_fence_and_promote()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let source = spawn_sample(&dir.path().join("source"), "127.0.0.1:0")?;
    let target_dir: PathBuf = dir.path().join("target");
    let mut target = spawn_sample(&target_dir, "127.0.0.1:0")?;
    let target_port = target.port;
    let src_url = format!("http://127.0.0.1:{}", source.port);
    let dst_url = format!("http://127.0.0.1:{target_port}");
    let driver = SampleLogShipping::new(&src_url, &dst_url)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    // Writers: 16 tasks, each its share of the keys; every acknowledged write is recorded.
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (next, http, src_url) = (next.clone(), http.clone(), src_url.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = HashMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= KEYS {
                    return acked;
                }
                let (key, value) = (format!("key-{i}"), format!("value-{i}"));
                let r = http
                    .put(format!("{src_url}/kv/{key}"))
                    .body(value.clone())
                    .send()
                    .await;
                if matches!(&r, Ok(resp) if resp.status() == 200) {
                    acked.insert(key, value);
                }
            }
        }));
    }

    // Replication starts while the load runs.
    let deadline = Instant::now() + Duration::from_secs(120);
    while status(&http, source.port).await?.last_seq < 1_000 {
        anyhow::ensure!(Instant::now() < deadline, "writes are not progressing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    driver.start().await?;

    // Kill the replica mid-stream, then restart it on the same port and data directory.
    loop {
        let applied = status(&http, target_port).await?.last_seq;
        if applied >= 2_000 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the replica is not applying (at {applied})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    target.child.kill()?; // SIGKILL
    target.child.wait()?;
    let source_at_kill = status(&http, source.port).await?.last_seq;
    println!("replica killed; source at seq {source_at_kill}");
    drop(target);
    // Kept alive to the end of the test (dropping it kills the process).
    let _restarted = spawn_sample(&target_dir, &format!("127.0.0.1:{target_port}"))?;
    let resumed_at = status(&http, target_port).await?.last_seq;
    println!("replica restarted; applied {resumed_at} right after");

    let mut acked = HashMap::new();
    for w in writers {
        acked.extend(w.await?);
    }
    println!("acknowledged writes: {}", acked.len());
    assert_eq!(
        acked.len() as u64,
        KEYS,
        "the source acknowledged every write"
    );

    driver.fence_source().await?;
    let refused = http
        .put(format!("{src_url}/kv/late"))
        .body("x")
        .send()
        .await?;
    assert_eq!(refused.status(), 503, "a fenced source refuses writes");
    let started = Instant::now();
    let p = driver.wait_for_zero_lag(Duration::from_secs(60)).await?;
    println!("lag 0 at seq {} after {:?}", p.source, started.elapsed());
    driver.promote().await?;

    // Every acknowledged write is on the target, with its value.
    let dump: HashMap<String, String> = http
        .get(format!("{dst_url}/admin/dump"))
        .send()
        .await?
        .json()
        .await?;
    let missing: Vec<_> = acked
        .iter()
        .filter(|(k, v)| dump.get(*k) != Some(v))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes missing",
        missing.len()
    );
    // The target's log is the source's, record for record: nothing lost, nothing doubled.
    let (src_log, dst_log) = (
        whole_log(&http, source.port).await?,
        whole_log(&http, target_port).await?,
    );
    assert_eq!(src_log.len() as u64, KEYS);
    assert!(dst_log == src_log, "target log differs from source log");
    // The promoted target takes writes; the source still refuses them.
    let ok = http
        .put(format!("{dst_url}/kv/after"))
        .body("y")
        .send()
        .await?;
    assert_eq!(ok.status(), 200);
    let refused = http
        .put(format!("{src_url}/kv/after"))
        .body("y")
        .send()
        .await?;
    assert_eq!(refused.status(), 503);
    Ok(())
}

#[tokio::test]
async fn promote_is_refused_while_the_source_takes_writes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let source = spawn_sample(&dir.path().join("s"), "127.0.0.1:0")?;
    let target = spawn_sample(&dir.path().join("t"), "127.0.0.1:0")?;
    let driver = SampleLogShipping::new(
        &format!("http://127.0.0.1:{}", source.port),
        &format!("http://127.0.0.1:{}", target.port),
    )?;
    driver.start().await?;
    let err = driver.promote().await.unwrap_err().to_string();
    assert!(err.contains("fence it first"), "{err}");
    let http = reqwest::Client::new();
    assert_eq!(
        status(&http, target.port).await?.mode,
        umbra_agent::sample::Mode::Replica {
            source: format!("http://127.0.0.1:{}", source.port)
        }
    );
    Ok(())
}
