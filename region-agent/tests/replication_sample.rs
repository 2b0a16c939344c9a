//! Replication acceptance with real `umbra-sample` processes: 10,000 keys written to a source
//! under concurrent load while it ships its log to a target; the target is SIGKILLed
//! mid-stream and restarted (it resumes from its own offset); then fence, lag 0, promote. The
//! target holds every acknowledged write, its log is the source's log exactly (no loss, no
//! duplicate), and the fenced source refuses writes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use umbra_agent::replication::{ReplicationDriver, SampleLogShipping};
use umbra_agent::sample::{SampleStatus, WalBatch};
use umbra_testkit::sample::SampleProcess;
use umbra_testkit::wait_for;

const KEYS: u64 = 10_000;
const WRITERS: u64 = 16;
/// A cold read's cost: small, this test is about the log, not the cache.
const BACKING_LATENCY_MS: u64 = 1;
/// How long the writes and the replica may take to reach the points the test waits for.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(120);

async fn status(http: &reqwest::Client, port: u16) -> anyhow::Result<SampleStatus> {
    Ok(http
        .get(format!("http://127.0.0.1:{port}/admin/status"))
        .send()
        .await?
        .json()
        .await?)
}

/// Waits (bounded) until the instance at `port` has `seq` records in its log; a failed status
/// request fails the test at once.
async fn reached(http: &reqwest::Client, port: u16, seq: u64, what: &str) -> anyhow::Result<()> {
    wait_for(what, PROGRESS_TIMEOUT, || async {
        match status(http, port).await {
            Ok(s) if s.last_seq < seq => None,
            other => Some(other.map(drop)),
        }
    })
    .await?
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
    let sample = common::sample_binary();
    let source =
        SampleProcess::start(sample, &dir.path().join("source"), BACKING_LATENCY_MS).await?;
    let target_dir: PathBuf = dir.path().join("target");
    // The replica restarts on the port it had, so that port comes from below the ephemeral
    // range: no outgoing connection can take it while the replica is down.
    let target_port = umbra_testkit::free_port()?;
    let target =
        SampleProcess::start_on(sample, &target_dir, BACKING_LATENCY_MS, target_port).await?;
    let src_url = source.url();
    let dst_url = target.url();
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
    reached(
        &http,
        source.port(),
        1_000,
        "the source to take 1,000 writes",
    )
    .await?;
    driver.start().await?;

    // Kill the replica mid-stream, then restart it on the same port and data directory.
    reached(
        &http,
        target_port,
        2_000,
        "the replica to apply 2,000 records",
    )
    .await?;
    target.kill()?; // SIGKILL
    let source_at_kill = status(&http, source.port()).await?.last_seq;
    println!("replica killed; source at seq {source_at_kill}");
    // Kept alive to the end of the test (dropping it kills the process).
    let _restarted =
        SampleProcess::start_on(sample, &target_dir, BACKING_LATENCY_MS, target_port).await?;
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
    // Passed on to the target, which is still a replica: held, then refused.
    assert_eq!(
        refused.status(),
        503,
        "nobody takes writes while the writer moves"
    );
    assert!(
        refused
            .headers()
            .contains_key(umbra_agent::sample::READ_ONLY_HEADER)
    );
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
        whole_log(&http, source.port()).await?,
        whole_log(&http, target_port).await?,
    );
    assert_eq!(src_log.len() as u64, KEYS);
    assert!(dst_log == src_log, "target log differs from source log");
    // Every record names the writer that accepted it (an unnamed instance is named by its
    // data directory), and the replica kept those stamps.
    let source_name = dir.path().join("source").display().to_string();
    assert!(
        src_log
            .iter()
            .all(|r| r.writer == source_name && r.at_ms > 0),
        "every write stamped by the source: {:?}",
        src_log.first()
    );
    // The promoted target takes writes; the source still refuses them.
    let ok = http
        .put(format!("{dst_url}/kv/after"))
        .body("y")
        .send()
        .await?;
    assert_eq!(ok.status(), 200);
    let dst_log = whole_log(&http, target_port).await?;
    let after = dst_log.last().expect("the target's log");
    assert_eq!(
        (after.key.as_str(), after.writer.as_str()),
        ("after", target_dir.display().to_string().as_str()),
        "a write the promoted target accepted carries its name"
    );
    assert!(after.at_ms >= src_log.last().map_or(0, |r| r.at_ms));
    // The fenced source passes writes on to the new writer instead of refusing them, and
    // applies none itself.
    let passed_on = http
        .put(format!("{src_url}/kv/passed-on"))
        .body("z")
        .send()
        .await?;
    assert_eq!(passed_on.status(), 200);
    let on_target = http.get(format!("{dst_url}/kv/passed-on")).send().await?;
    assert_eq!(on_target.text().await?, "z");
    assert_eq!(whole_log(&http, source.port()).await?.len() as u64, KEYS);
    // A write that already took the most hops is refused, never passed on again, and so is
    // one whose hop count is garbled.
    for hops in [
        umbra_agent::sample::MAX_WRITE_HOPS.to_string(),
        "x".to_owned(),
    ] {
        let looped = http
            .put(format!("{src_url}/kv/loop"))
            .header(umbra_agent::sample::FORWARDED_HEADER, hops)
            .body("w")
            .send()
            .await?;
        assert_eq!(looped.status(), 503);
    }
    let on_target = http.get(format!("{dst_url}/kv/loop")).send().await?;
    assert_eq!(
        on_target.status(),
        404,
        "a refused write is applied nowhere"
    );
    Ok(())
}

/// A source and a target sample instance under `dir`, the target replicating the source.
async fn replicating_pair(
    dir: &std::path::Path,
) -> anyhow::Result<(SampleProcess, SampleProcess, SampleLogShipping)> {
    let sample = common::sample_binary();
    let source = SampleProcess::start(sample, &dir.join("s"), BACKING_LATENCY_MS).await?;
    let target = SampleProcess::start(sample, &dir.join("t"), BACKING_LATENCY_MS).await?;
    let driver = SampleLogShipping::new(&source.url(), &target.url())?;
    driver.start().await?;
    Ok((source, target, driver))
}

#[tokio::test]
async fn promote_is_refused_while_the_source_takes_writes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (source, target, driver) = replicating_pair(dir.path()).await?;
    let err = driver.promote().await.unwrap_err().to_string();
    assert!(err.contains("fence it first"), "{err}");
    let http = reqwest::Client::new();
    assert_eq!(
        status(&http, target.port()).await?.mode,
        umbra_agent::sample::Mode::Replica {
            source: source.url()
        }
    );
    Ok(())
}

/// A region's pool of a stateful service: the writer, and a follower that replicates the
/// writer (a replica of a replica while the writer itself still follows the source region).
#[tokio::test]
async fn a_follower_of_a_replica_passes_writes_up_the_chain_and_holds_the_whole_log()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (source, writer, _driver) = replicating_pair(dir.path()).await?;
    let sample = common::sample_binary();
    let follower = SampleProcess::start(sample, &dir.path().join("f"), BACKING_LATENCY_MS).await?;
    SampleLogShipping::new(&writer.url(), &follower.url())?
        .start()
        .await?;
    let http = reqwest::Client::new();
    for k in 0..20 {
        let written = http
            .put(format!("{}/kv/chain-{k}", follower.url()))
            .body(format!("v{k}"))
            .send()
            .await?;
        assert_eq!(written.status(), 200, "write {k} through the follower");
    }
    reached(
        &http,
        follower.port(),
        20,
        "the follower to apply the writes",
    )
    .await?;
    let logs = [
        whole_log(&http, source.port()).await?,
        whole_log(&http, writer.port()).await?,
        whole_log(&http, follower.port()).await?,
    ];
    assert_eq!(
        logs[0].len(),
        20,
        "every write applied once, on the primary"
    );
    assert!(
        logs[1] == logs[0] && logs[2] == logs[0],
        "the chain holds the same log"
    );
    Ok(())
}

#[tokio::test]
async fn a_replica_passes_client_writes_on_to_its_primary() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (source, target, _driver) = replicating_pair(dir.path()).await?;
    let http = reqwest::Client::new();
    let written = http
        .put(format!("{}/kv/via-replica", target.url()))
        .body("v")
        .send()
        .await?;
    assert_eq!(written.status(), 200, "acknowledged by the primary");
    // Written once, on the primary, and replicated back like any other write.
    let on_source = http
        .get(format!("{}/kv/via-replica", source.url()))
        .send()
        .await?;
    assert_eq!(on_source.text().await?, "v");
    reached(&http, target.port(), 1, "the replica to apply the write").await?;
    assert_eq!(whole_log(&http, target.port()).await?.len(), 1);
    Ok(())
}
