//! An in-memory network for layer-2 tests: every node's transport delivers straight into the
//! other nodes' mailboxes, through faults the test sets — random drops, cut links, isolated
//! nodes and delays — drawn from a seeded generator so a failing run can be replayed from the
//! printed seed. Test support only: the production transport is QUIC (`quic.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::transport::{Mailbox, Transport};

struct NetworkState {
    mailboxes: HashMap<u64, Mailbox>,
    /// Directed links that drop everything: (from, to).
    cut: HashSet<(u64, u64)>,
    drop_probability: f64,
    delay_ms: Option<(u64, u64)>,
    rng: StdRng,
}

/// A shared in-memory network. Clone it to hand to each node's transport.
#[derive(Clone)]
pub struct MemoryNetwork {
    state: Arc<Mutex<NetworkState>>,
    seed: u64,
}

impl MemoryNetwork {
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(NetworkState {
                mailboxes: HashMap::new(),
                cut: HashSet::new(),
                drop_probability: 0.0,
                delay_ms: None,
                rng: StdRng::seed_from_u64(seed),
            })),
            seed,
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn lock(&self) -> MutexGuard<'_, NetworkState> {
        // A test that panicked while holding the lock already failed; keep the state usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches node `id` and returns its transport.
    pub fn attach(&self, id: u64, mailbox: Mailbox) -> MemoryTransport {
        self.lock().mailboxes.insert(id, mailbox);
        MemoryTransport {
            id,
            network: self.clone(),
        }
    }

    /// Cuts node `id` off from every other node, both ways.
    pub fn isolate(&self, id: u64) {
        let mut state = self.lock();
        let others: Vec<u64> = state
            .mailboxes
            .keys()
            .copied()
            .filter(|&o| o != id)
            .collect();
        for other in others {
            state.cut.insert((id, other));
            state.cut.insert((other, id));
        }
    }

    /// Cuts the link between `a` and `b`, both ways.
    pub fn cut(&self, a: u64, b: u64) {
        let mut state = self.lock();
        state.cut.insert((a, b));
        state.cut.insert((b, a));
    }

    /// Cuts the link from `from` to `to` only: `to` still reaches `from`.
    pub fn cut_one_way(&self, from: u64, to: u64) {
        self.lock().cut.insert((from, to));
    }

    /// Restores every link and removes random drops and delays.
    pub fn heal(&self) {
        let mut state = self.lock();
        state.cut.clear();
        state.drop_probability = 0.0;
        state.delay_ms = None;
    }

    /// Drops each message with this probability.
    pub fn set_drop_probability(&self, probability: f64) {
        assert!((0.0..=1.0).contains(&probability));
        self.lock().drop_probability = probability;
    }

    /// Delays each message by a uniform random time in `[min_ms, max_ms]`.
    pub fn set_delay_ms(&self, min_ms: u64, max_ms: u64) {
        assert!(min_ms <= max_ms);
        self.lock().delay_ms = Some((min_ms, max_ms));
    }
}

/// One node's end of a `MemoryNetwork`.
pub struct MemoryTransport {
    id: u64,
    network: MemoryNetwork,
}

impl Transport for MemoryTransport {
    fn send(&mut self, messages: Vec<Message>) {
        let mut state = self.network.lock();
        let sender = state.mailboxes.get(&self.id).cloned();
        for message in messages {
            let to = message.to;
            let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            let drop_probability = state.drop_probability;
            let dropped = state.cut.contains(&(self.id, to))
                || (drop_probability > 0.0 && state.rng.random_bool(drop_probability));
            let target = state.mailboxes.get(&to).cloned();
            let (Some(target), false) = (target, dropped) else {
                if let Some(sender) = &sender {
                    if is_snapshot {
                        sender.report_snapshot(to, false);
                    }
                    sender.report_unreachable(to);
                }
                continue;
            };
            let delay = state
                .delay_ms
                .map(|(min, max)| Duration::from_millis(state.rng.random_range(min..=max)));
            if let (true, Some(sender)) = (is_snapshot, &sender) {
                sender.report_snapshot(to, true);
            }
            match delay {
                Some(delay) if !delay.is_zero() => {
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        target.deliver(message);
                    });
                }
                _ => {
                    target.deliver(message);
                }
            }
        }
    }

    fn set_peer(&mut self, _id: u64, _address: &str) {}

    fn remove_peer(&mut self, _id: u64) {}

    /// A stopped node's mailbox is closed, as a killed process's port is; a cut link answers
    /// nothing, as a partition would.
    fn probe(&mut self, peer: u64) {
        let state = self.network.lock();
        let down = !state.cut.contains(&(self.id, peer))
            && state.mailboxes.get(&peer).is_some_and(Mailbox::is_closed);
        if let (true, Some(me)) = (down, state.mailboxes.get(&self.id)) {
            me.report_down(peer);
        }
    }
}
