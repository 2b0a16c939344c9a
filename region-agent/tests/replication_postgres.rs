//! The sample service's PostgreSQL mode against two real PostgreSQL servers (one per region),
//! driven by the agent's replication driver as a cutover drives it: the target subscribes
//! (initial copy, then streaming) while writers keep writing to the source; fence, lag 0 by
//! WAL position, promote; then the way back, the source following its promoted target through
//! the slot made at promotion. Every acknowledged write is found where the writer moved, the
//! promoted side's sequence is past the source's, and a database holding data is never
//! overwritten by a copy. Removing the old writer's instance drops its database, and the new
//! writer then drops the slot it kept for the way back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod common;

use tokio::sync::Mutex;
use tokio_postgres::NoTls;
use umbra_agent::replication::{ReplicationDriver, SampleLogShipping};
use umbra_agent::sample::postgres::drop_instance_database;
use umbra_agent::sample::{Mode, SampleStatus};
use umbra_testkit::postgres::PostgresProcess;
use umbra_testkit::sample::SampleProcess;
use umbra_testkit::wait_for;

/// Keys written before the replica subscribes (they arrive by the initial copy).
const SEEDED: u64 = 300;
/// Concurrent writers while the replica streams and the writer moves.
const WRITERS: u64 = 4;
/// Most writes each writer makes (a bounded loop), whatever happens.
const MAX_WRITES_PER_WRITER: u64 = 2_000;
/// How long the copy and the streaming may take to reach the points the test waits for.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(120);
/// A fenced source holds a write up to 3 s while the writer moves; the move must fit in it.
const LAG_TIMEOUT: Duration = Duration::from_secs(30);

type Acked = Arc<Mutex<BTreeMap<String, (String, u64)>>>;

async fn status(http: &reqwest::Client, url: &str) -> anyhow::Result<SampleStatus> {
    Ok(http
        .get(format!("{url}/admin/status"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn dump(http: &reqwest::Client, url: &str) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(http
        .get(format!("{url}/admin/dump"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// One write; its sequence number when acknowledged (2xx), else the failure.
async fn put(http: &reqwest::Client, url: &str, key: &str, value: &str) -> anyhow::Result<u64> {
    let answer = http
        .put(format!("{url}/kv/{key}"))
        .body(value.to_owned())
        .send()
        .await?;
    let code = answer.status();
    let body = answer.text().await?;
    anyhow::ensure!(code.is_success(), "PUT {key}: {code} {body}");
    let seq: serde_json::Value = serde_json::from_str(&body)?;
    seq["seq"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("PUT {key}: no seq in {body}"))
}

/// Writers that keep writing to `url` until `stop`, recording every acknowledged write and
/// counting every refusal.
fn start_writers(
    http: &reqwest::Client,
    url: &str,
    prefix: &str,
    acked: &Acked,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..WRITERS)
        .map(|w| {
            let (http, url, prefix) = (http.clone(), url.to_owned(), prefix.to_owned());
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for i in 0..MAX_WRITES_PER_WRITER {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // A few keys are written again, so updates replicate as well as inserts.
                    let key = format!("{prefix}-{w}-{}", i % 500);
                    let value = format!("{prefix}{w}.{i}");
                    match put(&http, &url, &key, &value).await {
                        Ok(seq) => {
                            acked.lock().await.insert(key, (value, seq));
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                failures
            })
        })
        .collect()
}

async fn stop_writers(
    stop: &AtomicBool,
    writers: Vec<tokio::task::JoinHandle<Vec<String>>>,
) -> anyhow::Result<Vec<String>> {
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in writers {
        failures.extend(w.await?);
    }
    Ok(failures)
}

/// Waits until the replica at `url` finished its initial copy and is within `bound` bytes of
/// its source.
async fn streaming(driver: &SampleLogShipping, bound: u64) -> anyhow::Result<()> {
    wait_for(
        "the replica to copy and catch up",
        PROGRESS_TIMEOUT,
        || async {
            match driver.positions().await {
                Ok(p) if p.target == 0 || p.lag() > bound => None,
                other => Some(other.map(drop)),
            }
        },
    )
    .await?
    .map_err(Into::into)
}

fn missing(acked: &BTreeMap<String, (String, u64)>, found: &BTreeMap<String, String>) -> usize {
    acked
        .iter()
        .filter(|(k, (v, _))| found.get(*k) != Some(v))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_writer_moves_to_the_target_and_back_through_logical_replication_losing_nothing()
-> anyhow::Result<()> {
    let (east, west) = tokio::try_join!(PostgresProcess::start(), PostgresProcess::start())?;
    let dir = tempfile::tempdir()?;
    let binary = common::sample_binary();
    let source = SampleProcess::start_postgres(
        binary,
        &dir.path().join("source"),
        "svc-east-1",
        &east.conninfo(),
    )
    .await?;
    let target = SampleProcess::start_postgres(
        binary,
        &dir.path().join("target"),
        "svc-west-1",
        &west.conninfo(),
    )
    .await?;
    let (source_url, target_url) = (source.url(), target.url());
    let http = reqwest::Client::new();
    let acked: Acked = Arc::default();
    for i in 0..SEEDED {
        let (key, value) = (format!("seed-{i}"), format!("s{i}"));
        let seq = put(&http, &source_url, &key, &value).await?;
        acked.lock().await.insert(key, (value, seq));
    }

    // Forward: the target copies, then streams under writes; the writer moves under them.
    let forward = SampleLogShipping::new(&source_url, &target_url)?;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&http, &source_url, "fwd", &acked, &stop);
    forward.start().await?;
    forward.start().await?; // idempotent: the same subscription
    streaming(&forward, u64::MAX).await?;
    forward.fence_source().await?;
    let at_fence = forward.wait_for_zero_lag(LAG_TIMEOUT).await?;
    forward.promote().await?;
    let failures = stop_writers(&stop, writers).await?;
    assert!(
        failures.is_empty(),
        "writes failed across the move: {failures:?}"
    );
    assert!(
        at_fence.source > 0 && at_fence.source_fenced,
        "{at_fence:?}"
    );

    let acked_forward = acked.lock().await.clone();
    eprintln!(
        "forward: {} keys acknowledged, fenced at WAL position {}",
        acked_forward.len(),
        at_fence.source
    );
    let on_target = dump(&http, &target_url).await?;
    assert_eq!(
        missing(&acked_forward, &on_target),
        0,
        "acknowledged writes missing on the promoted target ({} acknowledged)",
        acked_forward.len()
    );
    let target_status = status(&http, &target_url).await?;
    assert_eq!(target_status.mode, Mode::Primary);
    let pg = target_status
        .postgres
        .expect("the target runs on PostgreSQL");
    assert!(pg.back_slot.is_some(), "no slot kept for the way back");
    // The promoted writer numbers its writes past every number the source gave.
    let highest_source_seq = acked_forward.values().map(|(_, s)| *s).max().unwrap_or(0);
    let seq = put(&http, &target_url, "after-promote", "t").await?;
    assert!(
        seq > highest_source_seq,
        "seq {seq} <= {highest_source_seq}"
    );
    acked
        .lock()
        .await
        .insert("after-promote".into(), ("t".into(), seq));

    // Back: the source follows its promoted target through the slot, without a copy.
    let back = SampleLogShipping::new(&target_url, &source_url)?;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&http, &target_url, "back", &acked, &stop);
    back.start().await?;
    streaming(&back, u64::MAX).await?;
    back.fence_source().await?;
    back.wait_for_zero_lag(LAG_TIMEOUT).await?;
    back.promote().await?;
    let failures = stop_writers(&stop, writers).await?;
    assert!(
        failures.is_empty(),
        "writes failed across the way back: {failures:?}"
    );
    let all = acked.lock().await.clone();
    eprintln!("back: {} keys acknowledged in all", all.len());
    let on_source = dump(&http, &source_url).await?;
    assert_eq!(
        missing(&all, &on_source),
        0,
        "acknowledged writes missing on the source after the way back ({} acknowledged)",
        all.len()
    );
    assert_eq!(status(&http, &source_url).await?.mode, Mode::Primary);

    // The old writer's instance is removed, as a completed migration's source pool is: its
    // database goes, and the new writer drops the slot it kept for a way back to it.
    let source_pg = status(&http, &source_url)
        .await?
        .postgres
        .expect("the source runs on PostgreSQL");
    let back_slot = source_pg.back_slot.expect("a slot kept for the way back");
    assert_eq!(slots(&east).await?, vec![back_slot.clone()]);
    target.kill()?;
    assert!(drop_instance_database(&west.conninfo(), "svc-west-1").await?);
    assert!(!drop_instance_database(&west.conninfo(), "svc-west-1").await?);
    let left = databases(&west).await?;
    assert!(
        !left.iter().any(|d| d.starts_with("umbra_svc_west_1")),
        "the removed instance's database is still there: {left:?}"
    );
    assert!(
        databases(&east)
            .await?
            .iter()
            .any(|d| d.starts_with("umbra_svc_east_1")),
        "the writer's database went too"
    );
    assert_eq!(slots(&west).await?, Vec::<String>::new());
    wait_for(
        "the new writer to drop its slot for the way back",
        PROGRESS_TIMEOUT,
        || async { slots(&east).await.ok().filter(Vec::is_empty).map(|_| ()) },
    )
    .await?;
    let source_pg = status(&http, &source_url).await?.postgres;
    assert_eq!(source_pg.and_then(|p| p.back_slot), None);
    let seq = put(&http, &source_url, "after-release", "s").await?;
    assert!(seq > 0);
    Ok(())
}

/// A query's first column on server `pg`'s `postgres` database.
async fn names(pg: &PostgresProcess, query: &str) -> anyhow::Result<Vec<String>> {
    let (client, connection) =
        tokio_postgres::connect(&format!("{} dbname=postgres", pg.conninfo()), NoTls).await?;
    tokio::spawn(connection);
    let rows = client.query(query, &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn slots(pg: &PostgresProcess) -> anyhow::Result<Vec<String>> {
    names(
        pg,
        "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1",
    )
    .await
}

async fn databases(pg: &PostgresProcess) -> anyhow::Result<Vec<String>> {
    names(pg, "SELECT datname::text FROM pg_database ORDER BY 1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_holding_data_is_not_overwritten_by_a_copy() -> anyhow::Result<()> {
    let (east, west) = tokio::try_join!(PostgresProcess::start(), PostgresProcess::start())?;
    let dir = tempfile::tempdir()?;
    let binary = common::sample_binary();
    let a =
        SampleProcess::start_postgres(binary, &dir.path().join("a"), "a", &east.conninfo()).await?;
    let b =
        SampleProcess::start_postgres(binary, &dir.path().join("b"), "b", &west.conninfo()).await?;
    let http = reqwest::Client::new();
    put(&http, &a.url(), "k", "from-a").await?;
    put(&http, &b.url(), "k", "from-b").await?;
    let answer = http
        .post(format!("{}/admin/follow", b.url()))
        .json(&serde_json::json!({ "source": a.url() }))
        .send()
        .await?;
    let code = answer.status();
    let body = answer.text().await?;
    assert!(!code.is_success(), "{code} {body}");
    assert!(body.contains("overwrite"), "{body}");
    // Nothing changed: b is still the writer of its own data.
    assert_eq!(status(&http, &b.url()).await?.mode, Mode::Primary);
    assert_eq!(dump(&http, &b.url()).await?["k"], "from-b");
    Ok(())
}

/// A second shadow follows the first while that one still follows the source (the migration's
/// chain: one writer per region once promoted). The second reads the first one's own server,
/// whose WAL positions have nothing to do with the source server's: it is measured against
/// the position the first one publishes, and catches up. The source's server is moved a WAL
/// segment ahead first, so a measure against the first one's `last_seq` (a source position)
/// could never come within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_a_replica_is_measured_on_the_replica_s_own_server() -> anyhow::Result<()> {
    /// The bound the demo's plan gives a PostgreSQL migration's catch-up, bytes.
    const BOUND: u64 = 1 << 20;
    let (east, west) = tokio::try_join!(PostgresProcess::start(), PostgresProcess::start())?;
    let dir = tempfile::tempdir()?;
    let binary = common::sample_binary();
    let start = |name: &'static str, pg: &PostgresProcess| {
        let (state, conninfo) = (dir.path().join(name), pg.conninfo());
        async move { SampleProcess::start_postgres(binary, &state, name, &conninfo).await }
    };
    let (source, first, second) = tokio::try_join!(
        start("svc-east-1", &east),
        start("svc-west-1", &west),
        start("svc-west-2", &west)
    )?;
    let http = reqwest::Client::new();
    let acked: Acked = Arc::default();
    for i in 0..SEEDED {
        let (key, value) = (format!("seed-{i}"), format!("s{i}"));
        let seq = put(&http, &source.url(), &key, &value).await?;
        acked.lock().await.insert(key, (value, seq));
    }
    let switched = names(&east, "SELECT pg_switch_wal()::text").await?;
    eprintln!("the source's server switched WAL segments at {switched:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&http, &source.url(), "chain", &acked, &stop);
    let to_first = SampleLogShipping::new(&source.url(), &first.url())?;
    to_first.start().await?;
    let to_second = SampleLogShipping::new(&first.url(), &second.url())?;
    to_second.start().await?;
    streaming(&to_first, BOUND).await?;
    streaming(&to_second, BOUND).await?;
    let failures = stop_writers(&stop, writers).await?;
    assert!(failures.is_empty(), "writes failed: {failures:?}");

    // Each replica holds every write the source acknowledged once it has caught up again.
    let all = acked.lock().await.clone();
    for (name, replica) in [("first", &first), ("second", &second)] {
        wait_for(
            "the replica to hold every acknowledged write",
            PROGRESS_TIMEOUT,
            || async {
                let found = dump(&http, &replica.url()).await.ok()?;
                (missing(&all, &found) == 0).then_some(())
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    }
    let first_status = status(&http, &first.url()).await?;
    let published = first_status
        .postgres
        .and_then(|pg| pg.published_position)
        .expect("a replica on PostgreSQL publishes its own server's position");
    assert!(
        published < first_status.last_seq,
        "the first shadow's server ({published}) should be behind the source's ({}), which \
         switched WAL segments",
        first_status.last_seq
    );
    Ok(())
}
