//! The replicated store's history under faults, checked for linearizability: three real
//! `umbra-orchestrator` processes (key-value mode: QUIC + mTLS, raft-engine with fsync), six
//! concurrent clients writing unique values to and reading four keys through
//! `umbra_orchestrator::store::StoreClient` (writes are Raft proposals, reads go through
//! ReadIndex), while the leader is SIGKILLed and started again, and later cut off from the
//! other two (its Raft traffic dropped both ways) and healed. Each operation is recorded with
//! the instant it was invoked and answered; one the client could not learn the outcome of (an
//! error of any kind) is recorded as unknown. `umbra_chaos::history::check` must find an order
//! for the whole history, and must refuse it once one stale read is planted in it.
//!
//! Run `cargo build --workspace --bins` first. Deadlines are liveness limits, never latency
//! bounds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::ensure;
use umbra_chaos::history::{Call, Operation, Outcome, Verdict, check};
use umbra_consensus::kv::{KvAnswer, KvCommand, KvQuery};
use umbra_orchestrator::store::StoreClient;
use umbra_tests::{Cluster, wait_for};

const CLIENTS: u64 = 6;
const KEYS: u64 = 4;
/// Operations recorded before the leader is killed, before it is cut off, and in all.
const BEFORE_KILL: usize = 250;
const BEFORE_CUT: usize = 600;
const TOTAL: usize = 1_300;
/// Liveness limits of each stage on a loaded 2-core machine.
const STAGE: Duration = Duration::from_secs(60);

/// A small seeded generator (xorshift64*), so each client's mix of keys and calls repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// What the clients share: the clock, the recorded history, the next value to write.
struct Recorder {
    start: Instant,
    history: Mutex<Vec<Operation>>,
    next_value: AtomicU64,
    stop: AtomicBool,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn len(&self) -> usize {
        self.history.lock().expect("history lock").len()
    }
}

/// One client: operations one at a time until told to stop.
async fn client(id: u64, mut store: StoreClient, recorder: Arc<Recorder>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id + 1));
    while !recorder.stop.load(Ordering::Relaxed) {
        let key = format!("k{}", rng.next() % KEYS);
        let write = rng.next() % 10 < 4;
        let invoked = recorder.now();
        let (call, outcome) = if write {
            let value = recorder.next_value.fetch_add(1, Ordering::Relaxed);
            let command = KvCommand::Put {
                key: key.clone(),
                value: value.to_be_bytes().to_vec(),
            };
            let outcome = match store.propose(command.encode()).await {
                Ok(_) => Outcome::Written,
                Err(_) => Outcome::Unknown,
            };
            (Call::Put(value), outcome)
        } else {
            let query = KvQuery::Get { key: key.clone() }.encode();
            let outcome = match store.read(query).await.map(|a| KvAnswer::decode(&a)) {
                Ok(Ok(KvAnswer::Value(None))) => Outcome::Value(None),
                Ok(Ok(KvAnswer::Value(Some(bytes)))) => match <[u8; 8]>::try_from(bytes) {
                    Ok(bytes) => Outcome::Value(Some(u64::from_be_bytes(bytes))),
                    // Not a value any client wrote: kept as read, so the check fails on it.
                    Err(_) => Outcome::Value(Some(u64::MAX)),
                },
                _ => Outcome::Unknown,
            };
            (Call::Get, outcome)
        };
        let completed = recorder.now();
        recorder
            .history
            .lock()
            .expect("history lock")
            .push(Operation {
                client: id,
                key,
                call,
                invoked,
                completed,
                outcome,
            });
    }
}

/// Waits until the clients have recorded `n` operations.
async fn recorded(recorder: &Recorder, n: usize) -> anyhow::Result<()> {
    wait_for(&format!("{n} operations recorded"), STAGE, || async {
        (recorder.len() >= n).then_some(())
    })
    .await
}

/// `history` with one stale read planted after its end: a write of a fresh value is
/// acknowledged, and then a read returns a value whose write was acknowledged before that
/// write began. No order can explain it.
fn with_stale_read(history: &[Operation]) -> Option<Vec<Operation>> {
    let stale = history
        .iter()
        .find(|op| matches!(op.call, Call::Put(_)) && op.outcome == Outcome::Written)?;
    let Call::Put(old) = stale.call else {
        return None;
    };
    let end = history.iter().map(|op| op.completed).max()? + 1;
    let fresh = history
        .iter()
        .filter_map(|op| match op.call {
            Call::Put(v) => Some(v),
            Call::Get => None,
        })
        .max()?
        + 1;
    let mut planted = history.to_vec();
    planted.push(Operation {
        client: 0,
        key: stale.key.clone(),
        call: Call::Put(fresh),
        invoked: end,
        completed: end + 1,
        outcome: Outcome::Written,
    });
    planted.push(Operation {
        client: 1,
        key: stale.key.clone(),
        call: Call::Get,
        invoked: end + 2,
        completed: end + 3,
        outcome: Outcome::Value(Some(old)),
    });
    Some(planted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_under_a_leader_kill_and_a_partition_is_linearizable() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let first = cluster.wait_for_leader(STAGE).await?;
    let recorder = Arc::new(Recorder {
        start: Instant::now(),
        history: Mutex::new(Vec::new()),
        next_value: AtomicU64::new(1),
        stop: AtomicBool::new(false),
    });
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let store = cluster.client_starting_at(id % 3 + 1)?;
        clients.push(tokio::spawn(client(id, store, recorder.clone())));
    }

    recorded(&recorder, BEFORE_KILL).await?;
    cluster.kill(first)?;
    let survivors = cluster.live();
    let second = cluster.wait_for_leader_among(&survivors, STAGE).await?;
    eprintln!(
        "killed leader {first} after {} operations; {second} leads",
        recorder.len()
    );
    cluster.spawn(first)?;

    recorded(&recorder, BEFORE_CUT).await?;
    let leader = cluster.wait_for_leader(STAGE).await?;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    cluster.cut(leader, &others).await?;
    let during = cluster.wait_for_leader_among(&others, STAGE).await?;
    eprintln!(
        "cut leader {leader} off after {} operations; {during} leads the other side",
        recorder.len()
    );
    let at_cut = recorder.len();
    recorded(&recorder, at_cut + 150).await?;
    cluster.heal(leader).await?;

    recorded(&recorder, TOTAL).await?;
    recorder.stop.store(true, Ordering::Relaxed);
    for client in clients {
        // Each client finishes the operation in flight (a proposal stranded on the cut-off
        // leader ends by the node's request timeout at the latest).
        tokio::time::timeout(STAGE, client).await??;
    }

    let history = recorder.history.lock().expect("history lock").clone();
    let count = |f: &dyn Fn(&Operation) -> bool| history.iter().filter(|op| f(op)).count();
    let unknown = count(&|op| op.outcome == Outcome::Unknown);
    let writes = count(&|op| matches!(op.call, Call::Put(_)));
    eprintln!(
        "{} operations: {writes} writes, {} reads, {unknown} of unknown outcome",
        history.len(),
        history.len() - writes
    );
    ensure!(
        history.len() - unknown >= 1_000,
        "at least 1,000 operations with a known outcome"
    );
    let started = Instant::now();
    let verdict = check(&history);
    eprintln!("checked in {:?}: {verdict:?}", started.elapsed());
    ensure!(
        matches!(verdict, Verdict::Linearizable { .. }),
        "not linearizable: {verdict:?}"
    );

    let planted = with_stale_read(&history).expect("the history has an acknowledged write");
    let verdict = check(&planted);
    ensure!(
        matches!(&verdict, Verdict::NotLinearizable { stuck_at, .. } if stuck_at.call == Call::Get),
        "the planted stale read must be refused: {verdict:?}"
    );
    Ok(())
}
