//! Whether this node's wall clock agrees with its peers', and what the node does when it does
//! not. The leader schedules by its wall clock (a migration's cutover time, the TTL lowering,
//! follow-the-sun legs) and stamps each phase it enters; a leader whose clock was stepped by
//! minutes would start a cutover early or hold it back for as long as the step. So each node
//! reads every voter's clock over a [`StreamKind::Clock`] stream (Cristian's algorithm: the
//! reading against this node's wall time at the exchange's midpoint, within half the round
//! trip), and a node whose clock is off by more than `[executor] max_clock_offset_ms` from
//! most of the peers it could read (CockroachDB's rule) neither executes nor keeps leading: it
//! hands leadership to a peer whose clock agrees with the others'.
//!
//! A peer that cannot be read (down, cut off, a build without clock streams) counts for
//! nothing either way: no reading is not evidence. With one peer read and the two clocks
//! apart, neither node can tell whose is right: both refrain from executing until a third
//! reading settles it, and neither hands leadership over.
//!
//! The clock read is the executor's own (`NodeEnvironment::clock`), the one it plans by.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{GaugeVec, IntCounter, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use umbra_consensus::{RaftNode, Role as RaftRole};
use umbra_proto::clock::{ClockProbe, ClockReading};
use umbra_proto::{Endpoint, FramedStream, Identity, Role, StreamKind};

use crate::store::Clock;

/// Default bound on a clock's offset from its peers', ms. CockroachDB's default; far above
/// what NTP keeps servers within (a few ms) and far below the steps that hurt a schedule.
pub const DEFAULT_MAX_CLOCK_OFFSET_MS: u64 = 500;
/// How often each peer's clock is read.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Longest wait for one reading; a slower answer is too uncertain to judge by.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often this node checks its own wall clock against its monotonic clock (a step) and
/// judges the readings.
const STEP_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Longest time between the two monotonic readings around a wall-clock reading for the
/// three to be compared.
const SKEW_READ_WITHIN: Duration = Duration::from_millis(20);
/// A reading older than this no longer counts (the peer stopped answering).
const FRESH_FOR: Duration = Duration::from_secs(5);
/// Least time between two leadership transfers this node asks for: about one election, so a
/// transfer under way is not asked again.
const TRANSFER_EVERY: Duration = Duration::from_secs(2);

/// One peer's clock as this node last read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerOffset {
    /// The peer's wall clock minus this node's, ms.
    pub offset_ms: i64,
    /// How far off `offset_ms` may be: half the round trip, plus a millisecond of rounding.
    pub uncertainty_ms: u64,
    /// When the probe was sent (this node's monotonic clock).
    pub read_at: Instant,
}

impl PeerOffset {
    /// Whether the two clocks are surely more than `max_ms` apart.
    fn beyond(&self, max_ms: u64) -> bool {
        self.offset_ms
            .unsigned_abs()
            .saturating_sub(self.uncertainty_ms)
            > max_ms
    }
}

/// What this node concludes about its own clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum ClockVerdict {
    /// Within the bound of at least half the peers read (or no peer read).
    Agrees,
    /// Beyond the bound of most peers read: this node must not act on its clock.
    Disagrees {
        /// Each peer read, with its clock minus this node's, ms.
        offsets_ms: BTreeMap<u64, i64>,
        /// A peer to hand leadership to: one this node disagrees with whose clock agrees with
        /// most of the others'; `None` when no reading settles who is right.
        hand_to: Option<u64>,
    },
    /// This node's wall clock just stepped against its monotonic clock: whatever was read
    /// before is void, and it waits for its peers' clocks to be read again (at most
    /// [`FRESH_FOR`]; no reading by then is no evidence).
    Stepped {
        /// The step, ms (back when negative).
        by_ms: i64,
    },
}

impl ClockVerdict {
    /// Whether this node may act on its clock.
    pub fn agrees(&self) -> bool {
        matches!(self, ClockVerdict::Agrees)
    }
}

/// Judges this node's clock from its fresh readings of its peers'.
pub fn judge(
    readings: &BTreeMap<u64, PeerOffset>,
    now: Instant,
    max_offset_ms: u64,
) -> ClockVerdict {
    let fresh: BTreeMap<u64, PeerOffset> = readings
        .iter()
        .filter(|(_, r)| now.saturating_duration_since(r.read_at) <= FRESH_FOR)
        .map(|(id, r)| (*id, *r))
        .collect();
    let beyond = fresh.values().filter(|r| r.beyond(max_offset_ms)).count();
    if beyond * 2 <= fresh.len() {
        return ClockVerdict::Agrees;
    }
    // Two peers' clocks, both read against this one, agree when their offsets differ by no
    // more than the bound and both uncertainties.
    let together = |a: &PeerOffset, b: &PeerOffset| {
        a.offset_ms.abs_diff(b.offset_ms) <= max_offset_ms + a.uncertainty_ms + b.uncertainty_ms
    };
    let hand_to = fresh
        .iter()
        .filter(|(_, r)| r.beyond(max_offset_ms))
        .find(|(id, r)| {
            let others = fresh.len() - 1;
            let agreeing = fresh
                .iter()
                .filter(|(other, o)| other != id && together(r, o))
                .count();
            agreeing * 2 > others
        })
        .map(|(id, _)| *id);
    ClockVerdict::Disagrees {
        offsets_ms: fresh.iter().map(|(id, r)| (*id, r.offset_ms)).collect(),
        hand_to,
    }
}

/// Answers one peer's clock probes with this node's wall clock until the stream ends.
pub async fn serve_clock_stream(mut stream: FramedStream, clock: Arc<dyn Clock>) {
    let peer = stream.peer().clone();
    if peer.role() != Role::Orchestrator {
        stream.abort(umbra_proto::codes::ROLE_REFUSED);
        return;
    }
    loop {
        match stream.recv::<ClockProbe>().await {
            Ok(Some(probe)) => {
                let reading = ClockReading {
                    seq: probe.seq,
                    wall_ms: clock.now_ms(),
                };
                if stream.send(&reading).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(%peer, %error, "clock stream ended");
                return;
            }
        }
    }
}

/// The clock metrics, registered once per node.
#[derive(Clone)]
struct ClockMetrics {
    offsets: GaugeVec,
    disagrees: IntGauge,
    transfers: IntCounter,
}

impl ClockMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let offsets = GaugeVec::new(
            Opts::new(
                "umbra_clock_peer_offset_seconds",
                "Each voter's wall clock minus this node's, as last read",
            ),
            &["peer"],
        )?;
        let disagrees = IntGauge::new(
            "umbra_clock_disagrees",
            "1 while this node's wall clock is beyond [executor] max_clock_offset_ms of most \
             peers read: it neither executes nor keeps leading",
        )?;
        let transfers = IntCounter::new(
            "umbra_clock_leadership_transfers_total",
            "Leadership transfers this node asked for because its clock disagreed with its peers'",
        )?;
        registry.register(Box::new(offsets.clone()))?;
        registry.register(Box::new(disagrees.clone()))?;
        registry.register(Box::new(transfers.clone()))?;
        Ok(Self {
            offsets,
            disagrees,
            transfers,
        })
    }
}

/// The clock watch of one node.
pub struct ClockWatch {
    pub id: u64,
    pub raft: RaftNode,
    pub endpoint: Endpoint,
    /// The peers' QUIC addresses (kept up to date by the node as members come and go).
    pub addresses: Arc<Mutex<BTreeMap<u64, SocketAddr>>>,
    pub clock: Arc<dyn Clock>,
    pub max_offset_ms: u64,
}

/// What a running [`ClockWatch`] publishes.
pub struct ClockWatching {
    /// The latest verdict, in full (for `/status`).
    pub verdicts: watch::Receiver<ClockVerdict>,
    /// Whether this node may act on its clock (for the executor).
    pub agrees: watch::Receiver<bool>,
}

impl ClockWatch {
    /// Starts reading the peers' clocks (`Agrees` until a reading says otherwise). Runs until
    /// the Raft node stops.
    pub fn spawn(self, registry: &Registry) -> anyhow::Result<ClockWatching> {
        let metrics = ClockMetrics::new(registry)?;
        let (verdicts, verdicts_rx) = watch::channel(ClockVerdict::Agrees);
        let (agrees, agrees_rx) = watch::channel(true);
        tokio::spawn(self.run(metrics, verdicts, agrees));
        Ok(ClockWatching {
            verdicts: verdicts_rx,
            agrees: agrees_rx,
        })
    }

    async fn run(
        self,
        metrics: ClockMetrics,
        verdicts: watch::Sender<ClockVerdict>,
        agrees: watch::Sender<bool>,
    ) {
        let readings: Arc<Mutex<BTreeMap<u64, PeerOffset>>> = Arc::default();
        let mut readers: BTreeMap<u64, (SocketAddr, tokio::task::JoinHandle<()>)> = BTreeMap::new();
        let mut last_transfer: Option<Instant> = None;
        // The wall clock minus the monotonic one: it changes only when the wall clock steps
        // (NTP slews by well under a millisecond per tick). The wall clock is read between two
        // monotonic readings; when they are far apart (the process was descheduled or
        // SIGSTOPped in between) this tick does not judge.
        let origin = Instant::now();
        let skew = || {
            let before = origin.elapsed();
            let wall_ms = self.clock.now_ms() as i64;
            let after = origin.elapsed();
            ((after - before) < SKEW_READ_WITHIN)
                .then(|| wall_ms - ((before + after) / 2).as_millis() as i64)
        };
        let mut last_skew = skew();
        let mut stepped: Option<(Instant, i64)> = None;
        let mut tick = tokio::time::interval(STEP_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let raft = self.raft.clone();
        let mut closed = std::pin::pin!(raft.stopped());
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut closed => break,
            }
            let status = self.raft.status();
            let peers: BTreeMap<u64, SocketAddr> = {
                let addresses = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
                status
                    .voters
                    .iter()
                    .filter(|id| **id != self.id)
                    .filter_map(|id| Some((*id, *addresses.get(id)?)))
                    .collect()
            };
            readers.retain(|id, (address, task)| {
                let keep = peers.get(id) == Some(address) && !task.is_finished();
                if !keep {
                    task.abort();
                    readings
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(id);
                    let _ = metrics.offsets.remove_label_values(&[&id.to_string()]);
                }
                keep
            });
            for (id, address) in &peers {
                readers.entry(*id).or_insert_with(|| {
                    let reader = PeerReader {
                        peer: *id,
                        address: *address,
                        endpoint: self.endpoint.clone(),
                        clock: self.clock.clone(),
                        readings: readings.clone(),
                    };
                    (*address, tokio::spawn(reader.run()))
                });
            }
            let now_skew = skew();
            if let (Some(now), Some(last)) = (now_skew, last_skew)
                && now.abs_diff(last) > self.max_offset_ms
            {
                let by_ms = now - last;
                tracing::warn!(
                    by_ms,
                    "this node's wall clock stepped: it stops executing until its peers' clocks \
                     are read again"
                );
                stepped = Some((Instant::now(), by_ms));
            }
            last_skew = now_skew.or(last_skew);
            let snapshot = {
                let mut readings = readings.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((at, _)) = stepped {
                    // Readings whose probe left before the step compared the other clock with
                    // this one as it was.
                    readings.retain(|_, r| r.read_at > at);
                }
                readings.clone()
            };
            for (id, reading) in &snapshot {
                metrics
                    .offsets
                    .with_label_values(&[&id.to_string()])
                    .set(reading.offset_ms as f64 / 1_000.0);
            }
            let verdict = match stepped {
                Some((at, by_ms))
                    if snapshot.is_empty() && !peers.is_empty() && at.elapsed() < FRESH_FOR =>
                {
                    ClockVerdict::Stepped { by_ms }
                }
                _ => judge(&snapshot, Instant::now(), self.max_offset_ms),
            };
            if stepped.is_some_and(|(at, _)| at.elapsed() >= FRESH_FOR) {
                stepped = None;
            }
            let was = std::mem::discriminant(&*verdicts.borrow());
            if was != std::mem::discriminant(&verdict) {
                match &verdict {
                    // Said when it was seen, above.
                    ClockVerdict::Stepped { .. } => {}
                    ClockVerdict::Agrees => tracing::info!(
                        "this node's wall clock agrees with its peers' again: it may execute and lead"
                    ),
                    ClockVerdict::Disagrees { offsets_ms, .. } => tracing::warn!(
                        ?offsets_ms,
                        max_offset_ms = self.max_offset_ms,
                        "this node's wall clock disagrees with its peers' (offsets are theirs \
                         minus ours): it stops executing and hands leadership over; check its \
                         time source (NTP)"
                    ),
                }
            }
            metrics.disagrees.set(i64::from(!verdict.agrees()));
            if let ClockVerdict::Disagrees {
                hand_to: Some(to), ..
            } = verdict
                && status.role == RaftRole::Leader
                && last_transfer.is_none_or(|at| at.elapsed() >= TRANSFER_EVERY)
            {
                last_transfer = Some(Instant::now());
                match self.raft.transfer_leader(to).await {
                    Ok(()) => {
                        metrics.transfers.inc();
                        tracing::warn!(to, "handing leadership over: this node's clock is off");
                    }
                    Err(error) => tracing::debug!(to, %error, "leadership transfer not started"),
                }
            }
            agrees.send_if_modified(|current| {
                let changed = *current != verdict.agrees();
                *current = verdict.agrees();
                changed
            });
            verdicts.send_if_modified(|current| {
                let changed = *current != verdict;
                *current = verdict;
                changed
            });
        }
        for (_, (_, task)) in readers {
            task.abort();
        }
    }
}

/// Reads one peer's clock every [`PROBE_INTERVAL`] over one stream, reconnecting as needed.
struct PeerReader {
    peer: u64,
    address: SocketAddr,
    endpoint: Endpoint,
    clock: Arc<dyn Clock>,
    readings: Arc<Mutex<BTreeMap<u64, PeerOffset>>>,
}

impl PeerReader {
    async fn run(self) {
        let mut stream: Option<FramedStream> = None;
        let mut seq = 0u64;
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if stream.is_none() {
                stream = self.open().await;
            }
            let Some(open) = stream.as_mut() else {
                continue;
            };
            seq += 1;
            match tokio::time::timeout(PROBE_TIMEOUT, self.read(open, seq)).await {
                Ok(Ok(reading)) => {
                    self.readings
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(self.peer, reading);
                }
                Ok(Err(error)) => {
                    tracing::debug!(peer = self.peer, %error, "clock reading failed");
                    stream = None;
                }
                // A late answer would be taken for the next probe's: start a new stream.
                Err(_) => stream = None,
            }
        }
    }

    async fn open(&self) -> Option<FramedStream> {
        let name = Identity::orchestrator(self.peer).server_name();
        let connect = async {
            let connection = self.endpoint.connect(self.address, &name).await.ok()?;
            connection.open_stream(StreamKind::Clock).await.ok()
        };
        tokio::time::timeout(PROBE_TIMEOUT, connect)
            .await
            .ok()
            .flatten()
    }

    async fn read(&self, stream: &mut FramedStream, seq: u64) -> anyhow::Result<PeerOffset> {
        let sent = Instant::now();
        let sent_wall_ms = self.clock.now_ms();
        stream.send(&ClockProbe { seq }).await?;
        let reading: ClockReading = stream
            .recv()
            .await?
            .ok_or_else(|| anyhow::anyhow!("the peer closed its clock stream"))?;
        anyhow::ensure!(
            reading.seq == seq,
            "answer to probe {} where {seq} was asked",
            reading.seq
        );
        let round_trip_ms = sent.elapsed().as_millis() as u64;
        let midpoint_ms = sent_wall_ms + round_trip_ms / 2;
        Ok(PeerOffset {
            offset_ms: reading.wall_ms as i64 - midpoint_ms as i64,
            uncertainty_ms: round_trip_ms / 2 + 1,
            read_at: sent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(offset_ms: i64, uncertainty_ms: u64, at: Instant) -> PeerOffset {
        PeerOffset {
            offset_ms,
            uncertainty_ms,
            read_at: at,
        }
    }

    fn readings(list: &[(u64, i64)], at: Instant) -> BTreeMap<u64, PeerOffset> {
        list.iter().map(|(id, o)| (*id, read(*o, 2, at))).collect()
    }

    #[test]
    fn a_clock_agrees_with_no_reading_or_with_half_of_them() {
        let now = Instant::now();
        assert!(judge(&BTreeMap::new(), now, 500).agrees());
        // Three nodes, the other peer off: this one sides with the majority.
        assert!(judge(&readings(&[(2, 10), (3, -300_000)], now), now, 500).agrees());
        // Five nodes, two peers off.
        let five = readings(&[(2, 0), (3, 40), (4, 600_000), (5, -90_000)], now);
        assert!(judge(&five, now, 500).agrees());
    }

    #[test]
    fn a_clock_off_from_most_peers_disagrees_and_names_a_peer_the_others_agree_with() {
        let now = Instant::now();
        // This node stepped back 470 s: both peers read 470 s ahead.
        let verdict = judge(&readings(&[(2, 470_000), (3, 470_120)], now), now, 500);
        let ClockVerdict::Disagrees {
            offsets_ms,
            hand_to,
        } = verdict
        else {
            panic!("{verdict:?}");
        };
        assert_eq!(offsets_ms.len(), 2);
        assert_eq!(hand_to, Some(2));
        // The two peers are themselves apart: no reading says which one to trust.
        let split = judge(&readings(&[(2, 470_000), (3, -60_000)], now), now, 500);
        assert!(
            matches!(split, ClockVerdict::Disagrees { hand_to: None, .. }),
            "{split:?}"
        );
    }

    #[test]
    fn one_peer_apart_leaves_no_one_to_hand_leadership_to() {
        let now = Instant::now();
        let verdict = judge(&readings(&[(2, 10_000)], now), now, 500);
        assert!(
            matches!(verdict, ClockVerdict::Disagrees { hand_to: None, .. }),
            "{verdict:?}"
        );
    }

    #[test]
    fn an_uncertain_or_stale_reading_is_no_evidence() {
        let now = Instant::now();
        // 900 ms apart but read over a 1 s round trip: maybe within the bound.
        let slow: BTreeMap<u64, PeerOffset> = [(2, read(900, 501, now)), (3, read(900, 501, now))]
            .into_iter()
            .collect();
        assert!(judge(&slow, now, 500).agrees());
        let later = now + FRESH_FOR + Duration::from_millis(1);
        let old = readings(&[(2, 470_000), (3, 470_000)], now);
        assert!(judge(&old, later, 500).agrees());
    }
}
