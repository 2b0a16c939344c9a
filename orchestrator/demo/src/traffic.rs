//! The demo's traffic client: constant-rate requests at the service name, resolved through
//! the orchestrators' DNS, for the whole run: GETs of the seeded keys, and beside them PUTs of
//! fresh keys, each written once, so a lost write shows when they are read back at the end. It runs the region agent's open-loop `loadgen` in
//! back-to-back one-second segments (each a fresh generator with its own resolver, started on
//! the segment's schedule whatever the previous one is still finishing), so every second has
//! its own latency histogram and outcome counts: the report can then give the p99 of any
//! window (steady state, the first 10 s after the cutover) without keeping every request.
//! A fresh resolver per segment re-asks DNS at least every second, so no answer is ever used
//! past its TTL.
//!
//! This module must not judge the results; `report` does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use umbra_agent::loadgen::{LoadConfig, LoadGenerator, RequestSpec, Target};

use crate::report::TrafficSegment;

/// One segment per second: fine enough for "the first 10 s after the cutover".
pub const SEGMENT: Duration = Duration::from_secs(1);
/// Longest a request may take before it counts as failed: the loadgen's default (5 s), far
/// above any healthy answer, below the demo's patience.
pub const REQUEST_TIMEOUT: Duration = umbra_agent::loadgen::DEFAULT_REQUEST_TIMEOUT;

/// Running totals, for progress lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveTotals {
    /// Requests of finished segments.
    pub requests: u64,
    /// Failed requests of finished segments.
    pub failed: u64,
}

/// What a run sends: request number `seq` (counted from 0 over the whole run).
pub type Requests = Arc<dyn Fn(u64) -> RequestSpec + Send + Sync>;

/// The key the `seq`-th write of a run writes (each written once).
pub fn written_key(seq: u64) -> String {
    format!("written-{seq}")
}

/// PUTs of fresh keys: request `seq` writes [`written_key`]`(seq)` with value `v{seq}`.
pub fn writes() -> Requests {
    Arc::new(|seq| RequestSpec {
        method: reqwest::Method::PUT,
        path: format!("/kv/{}", written_key(seq)),
        headers: reqwest::header::HeaderMap::new(),
        body: bytes::Bytes::from(format!("v{seq}")),
    })
}

/// A traffic run in progress.
pub struct TrafficRun {
    cancel: CancellationToken,
    totals: Arc<Mutex<LiveTotals>>,
    task: tokio::task::JoinHandle<Vec<TrafficSegment>>,
}

impl TrafficRun {
    /// Starts offering `rate_per_sec` of `requests` at `target` until [`Self::finish`].
    pub fn start(target: Target, rate_per_sec: f64, requests: Requests) -> Self {
        let cancel = CancellationToken::new();
        let totals = Arc::new(Mutex::new(LiveTotals::default()));
        let task = tokio::spawn(run_segments(
            target,
            rate_per_sec,
            requests,
            cancel.clone(),
            totals.clone(),
        ));
        Self {
            cancel,
            totals,
            task,
        }
    }

    /// Totals of the segments finished so far.
    pub fn totals(&self) -> LiveTotals {
        *self.totals.lock().expect("totals lock")
    }

    /// Stops scheduling; waits for requests in flight (bounded by the request timeout) and
    /// returns every segment in time order.
    pub async fn finish(self) -> Vec<TrafficSegment> {
        self.cancel.cancel();
        self.task.await.unwrap_or_default()
    }
}

async fn run_segments(
    target: Target,
    rate_per_sec: f64,
    requests: Requests,
    cancel: CancellationToken,
    totals: Arc<Mutex<LiveTotals>>,
) -> Vec<TrafficSegment> {
    let per_segment = (rate_per_sec * SEGMENT.as_secs_f64()).round().max(1.0) as u64;
    let mut running = JoinSet::new();
    let mut segments = Vec::new();
    let mut ticker = tokio::time::interval(SEGMENT);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut k: u64 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let mut config = LoadConfig::new(target.clone(), rate_per_sec, per_segment, SEGMENT);
        config.request_timeout = REQUEST_TIMEOUT;
        let first_seq = k * per_segment;
        let requests = requests.clone();
        let generator = match LoadGenerator::new(config, move |seq| requests(first_seq + seq)) {
            Ok(g) => g,
            Err(error) => {
                tracing::error!(%error, "traffic segment refused its config");
                break;
            }
        };
        let totals = totals.clone();
        running.spawn(async move {
            let start_ms = crate::unix_ms();
            let report = generator.run().await;
            let end_ms = start_ms + SEGMENT.as_millis() as u64;
            let segment = match report {
                Ok(report) => TrafficSegment {
                    first_seq,
                    start_ms,
                    end_ms,
                    counts: report.counts,
                    latency_us: report.latency_ok_histogram,
                    by_address: report.by_address,
                    failed_requests: report.failed_requests,
                    failed_seqs: report.failed_seqs.iter().map(|k| first_seq + k).collect(),
                },
                Err(error) => {
                    // The generator could not even start (e.g. no resolver): every request of
                    // the segment counts as failed to resolve, as a user would see it.
                    tracing::warn!(%error, "traffic segment failed to start");
                    TrafficSegment {
                        first_seq,
                        start_ms,
                        end_ms,
                        counts: umbra_agent::loadgen::OutcomeCounts {
                            scheduled: per_segment,
                            completed: per_segment,
                            resolve_error: per_segment,
                            ..Default::default()
                        },
                        latency_us: hdrhistogram::Histogram::new(3)
                            .expect("3 significant figures is valid"),
                        by_address: Default::default(),
                        failed_requests: Vec::new(),
                        failed_seqs: (first_seq..first_seq + per_segment).collect(),
                    }
                }
            };
            let mut t = totals.lock().expect("totals lock");
            t.requests += segment.counts.scheduled;
            t.failed += segment.counts.failed();
            drop(t);
            segment
        });
        k += 1;
        while let Some(done) = running.try_join_next() {
            if let Ok(segment) = done {
                segments.push(segment);
            }
        }
    }
    while let Some(done) = running.join_next().await {
        if let Ok(segment) = done {
            segments.push(segment);
        }
    }
    segments.sort_by_key(|s| s.start_ms);
    segments
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_agent::warmer::MixSource;
    use umbra_proto::agent::{RequestMix, RequestTemplate};

    /// A tiny HTTP server that answers 200 to everything (what the loadgen needs to count).
    async fn ok_server() -> std::net::SocketAddr {
        let app = axum::Router::new().fallback(|| async { "ok" });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_cover_the_run_at_the_offered_rate() {
        let addr = ok_server().await;
        let mix = MixSource::new(
            RequestMix {
                requests: vec![RequestTemplate {
                    method: "GET".into(),
                    path: "/kv/{key}".into(),
                    weight: 1.0,
                }],
                key_count: 10,
                zipf_exponent: 0.5,
                rate_per_sec: 100.0,
                max_duration_ms: 60_000,
            },
            1,
        )
        .unwrap();
        let target = Target::Urls(vec![format!("http://{addr}").parse().unwrap()]);
        let mix = Arc::new(mix);
        let run = TrafficRun::start(target, 100.0, Arc::new(move |seq| mix.request(seq)));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while run.totals().requests < 250 {
            assert!(std::time::Instant::now() < deadline, "no traffic finished");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let segments = run.finish().await;
        assert!(segments.len() >= 3, "{} segments", segments.len());
        for pair in segments.windows(2) {
            assert!(pair[0].start_ms <= pair[1].start_ms, "in time order");
        }
        let total: u64 = segments.iter().map(|s| s.counts.scheduled).sum();
        let failed: u64 = segments.iter().map(|s| s.counts.failed()).sum();
        assert_eq!(failed, 0);
        for s in &segments {
            // A segment stops at 100 requests or after its second, whichever comes first.
            assert!((90..=100).contains(&s.counts.scheduled), "{:?}", s.counts);
        }
        assert!(total >= 250);
        assert!(crate::report::p99_ms(&segments) > 0.0);
    }
}
