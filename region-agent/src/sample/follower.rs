//! The replica side of log shipping: while an instance is in `Replica` mode, one task pulls
//! `GET {source}/wal?from=<last+1>` (a long poll) and hands each batch to the WAL writer, which
//! appends it under the same seq numbers. The offset is simply the replica's own last seq, read
//! back from its WAL after a restart, so a killed replica resumes exactly where its durable log
//! ends: records it already holds are skipped, a gap is never written.
//!
//! It must not apply anything itself (the writer does, so a promote is a clean cut) and must not
//! retry without bound in time: failures back off up to [`MAX_BACKOFF`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Mode, Shared, WalBatch, WriteRefused, WriterMsg};

/// Records asked for per pull.
pub const PULL_BATCH: usize = 1_000;
/// How long the source may hold a pull open when it has nothing new.
pub const PULL_WAIT_MS: u64 = 1_000;
/// Timeout of one pull: the long-poll wait plus a margin for the transfer.
pub const PULL_TIMEOUT: Duration = Duration::from_millis(PULL_WAIT_MS + 5_000);
/// First retry delay after a failed pull.
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest retry delay: a restarted source is picked up within this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Starts the follower task if the instance is a replica and none is running.
pub(super) fn ensure_running(shared: &Arc<Shared>) {
    // In PostgreSQL mode the database's subscription follows the source.
    if shared.pg.is_some() || !matches!(*shared.mode.borrow(), Mode::Replica { .. }) {
        return;
    }
    let mut slot = shared.follower.lock().expect("follower lock");
    if slot.as_ref().is_some_and(|h| !h.is_finished()) {
        return;
    }
    *slot = Some(tokio::spawn(run(shared.clone())));
}

async fn run(shared: Arc<Shared>) {
    let client = match reqwest::Client::builder()
        .timeout(PULL_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the replication HTTP client");
            return;
        }
    };
    let mut mode_rx = shared.mode.subscribe();
    let mut backoff = MIN_BACKOFF;
    loop {
        let Mode::Replica { source } = mode_rx.borrow_and_update().clone() else {
            tracing::info!("no longer a replica: follower stops");
            return;
        };
        let from = *shared.last_seq.borrow() + 1;
        let url = format!("{source}/wal?from={from}&max={PULL_BATCH}&wait_ms={PULL_WAIT_MS}");
        let pulled = tokio::select! {
            r = pull(&client, &url) => r,
            changed = mode_rx.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        };
        let failure = match pulled {
            Ok(batch) => {
                shared
                    .source_last_seq
                    .store(batch.last_seq, Ordering::Relaxed);
                if batch.last_seq + 1 < from {
                    Some(format!(
                        "source {source} has only {} records but this replica holds {}: wrong \
                         source or a diverged log",
                        batch.last_seq,
                        from - 1
                    ))
                } else {
                    let records: Vec<_> = batch
                        .records
                        .into_iter()
                        .filter(|r| r.seq >= from)
                        .collect();
                    if records.is_empty() {
                        backoff = MIN_BACKOFF;
                        continue;
                    }
                    let (ack, rx) = oneshot::channel();
                    let msg = WriterMsg::Replicated {
                        source: source.clone(),
                        records,
                        ack,
                    };
                    if shared.writer.send(msg).await.is_err() {
                        return;
                    }
                    match rx.await {
                        Ok(Ok(())) => {
                            backoff = MIN_BACKOFF;
                            continue;
                        }
                        // The mode changed between the pull and the append: loop re-reads it.
                        Ok(Err(WriteRefused::ReadOnly(_))) => continue,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => return,
                    }
                }
            }
            Err(e) => Some(e),
        };
        if let Some(reason) = failure {
            tracing::warn!(%source, %reason, retry_in = ?backoff, "replication pull failed");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                changed = mode_rx.changed() => if changed.is_err() { return; },
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

async fn pull(client: &reqwest::Client, url: &str) -> Result<WalBatch, String> {
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("{status}: {body}"));
    }
    resp.json::<WalBatch>().await.map_err(|e| e.to_string())
}
