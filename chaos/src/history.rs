//! A linearizability checker for a history of key-value operations recorded by concurrent
//! clients, in the way of Porcupine (Athalye) and Knossos: Wing & Gong's search with Lowe's
//! just-in-time linearization and a cache of the states already tried, run separately on each
//! key (a key-value store is linearizable when each key is a linearizable register:
//! Herlihy & Wing's locality, which Porcupine calls P-compositionality).
//!
//! A history is a list of [`Operation`]s, each with the instant it was invoked and the
//! instant its answer came, measured on one clock by the clients. An operation whose outcome
//! the client could not learn (the server died with the request in flight, a timeout) is
//! [`Outcome::Unknown`]: a write may have taken effect at any time after it was invoked, or
//! never; an unknown read constrains nothing and is left out. Values written must be unique
//! per key, as Jepsen's register tests write them, so that a read names the write it saw.
//!
//! Hand-written rather than taken from a crate: the Rust testers we found (stateright's
//! `LinearizabilityTester`) search every interleaving without remembering the states already
//! tried and take no operation of unknown outcome in the middle of a client's history, while
//! a recorded history under faults has hundreds of operations per key and such writes in it.

use std::collections::{BTreeMap, HashSet};

/// What a client asked of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// Read the key.
    Get,
    /// Write the value (unique among the key's writes).
    Put(u64),
}

/// What the client learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A read's answer: the value, or `None` for a key never written.
    Value(Option<u64>),
    /// A write was acknowledged.
    Written,
    /// The client cannot know whether the operation took effect.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client that ran it (a client runs one operation at a time).
    pub client: u64,
    /// The key.
    pub key: String,
    /// What was asked.
    pub call: Call,
    /// When it was invoked (any monotonic clock shared by the clients, e.g. ns since start).
    pub invoked: u64,
    /// When the answer came (ignored for an unknown outcome).
    pub completed: u64,
    /// What the client learnt.
    pub outcome: Outcome,
}

/// Most search states tried per key before the checker gives up (a history this hard to
/// decide is reported as undecided, never as linearizable).
pub const MAX_STATES_PER_KEY: usize = 2_000_000;

/// The checker's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's operations can be ordered so that each takes effect at one instant between
    /// its invocation and its answer, and every read returns the last value written.
    Linearizable {
        /// Keys checked.
        keys: usize,
        /// Operations checked (unknown reads left out).
        operations: usize,
    },
    /// No such order exists for `key`.
    NotLinearizable {
        /// The key.
        key: String,
        /// The deepest order the search found held this many of the key's operations...
        linearized: usize,
        /// ...and could not place this one (its answer came before it could take effect in
        /// any order the search tried).
        stuck_at: Operation,
    },
    /// The search for `key` tried [`MAX_STATES_PER_KEY`] states without an answer.
    Undecided {
        /// The key.
        key: String,
    },
}

impl Verdict {
    /// Whether the history is linearizable.
    pub fn holds(&self) -> bool {
        matches!(self, Verdict::Linearizable { .. })
    }
}

/// Checks `history`, key by key.
pub fn check(history: &[Operation]) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        if op.call == Call::Get && op.outcome == Outcome::Unknown {
            continue;
        }
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let keys = by_key.len();
    let mut operations = 0;
    for (key, ops) in by_key {
        operations += ops.len();
        match check_key(&ops) {
            KeyVerdict::Holds => {}
            KeyVerdict::Stuck { linearized, at } => {
                return Verdict::NotLinearizable {
                    key: key.to_owned(),
                    linearized,
                    stuck_at: ops[at].clone(),
                };
            }
            KeyVerdict::Undecided => {
                return Verdict::Undecided {
                    key: key.to_owned(),
                };
            }
        }
    }
    Verdict::Linearizable { keys, operations }
}

enum KeyVerdict {
    Holds,
    Stuck { linearized: usize, at: usize },
    Undecided,
}

/// One entry of the doubly linked list of calls and returns, in time order.
#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    /// For a call, the index of its return entry.
    partner: usize,
    prev: usize,
    next: usize,
}

/// The register's step: whether `call` answered `outcome` is possible from `state`, and the
/// state after it.
fn step(state: Option<u64>, call: Call, outcome: Outcome) -> Option<Option<u64>> {
    match (call, outcome) {
        (Call::Get, Outcome::Value(seen)) => (seen == state).then_some(state),
        (Call::Get, _) => None,
        (Call::Put(value), Outcome::Written | Outcome::Unknown) => Some(Some(value)),
        (Call::Put(_), Outcome::Value(_)) => None,
    }
}

fn check_key(ops: &[&Operation]) -> KeyVerdict {
    // Events: each call at its invocation, each return at its answer (unknown: after all).
    // At equal instants calls come first, so touching operations count as concurrent.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoked, true, i));
        let end = match op.outcome {
            Outcome::Unknown => u64::MAX,
            _ => op.completed.max(op.invoked),
        };
        events.push((end, false, i));
    }
    events.sort_by_key(|&(at, is_call, op)| (at, !is_call, op));
    // Entry 0 is the head sentinel; entries 1..=2n are the events.
    let n = events.len();
    let mut list: Vec<Entry> = Vec::with_capacity(n + 1);
    list.push(Entry {
        op: usize::MAX,
        is_call: false,
        partner: 0,
        prev: 0,
        next: if n > 0 { 1 } else { usize::MAX },
    });
    let mut return_of = vec![0usize; ops.len()];
    for (k, &(_, is_call, op)) in events.iter().enumerate() {
        let idx = k + 1;
        if !is_call {
            return_of[op] = idx;
        }
        list.push(Entry {
            op,
            is_call,
            partner: 0,
            prev: idx - 1,
            next: if idx < n { idx + 1 } else { usize::MAX },
        });
    }
    for entry in list.iter_mut().skip(1) {
        if entry.is_call {
            entry.partner = return_of[entry.op];
        }
    }

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut count = 0usize;
    let mut state: Option<u64> = None;
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    // (call entry lifted, state before it)
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut deepest = (0usize, 0usize);
    let mut entry = list[0].next;
    while list[0].next != usize::MAX {
        if seen.len() > MAX_STATES_PER_KEY {
            return KeyVerdict::Undecided;
        }
        let e = list[entry];
        if e.is_call {
            let op = ops[e.op];
            if let Some(next_state) = step(state, op.call, op.outcome) {
                let (word, bit) = (e.op / 64, 1u64 << (e.op % 64));
                linearized[word] |= bit;
                if seen.insert((linearized.clone(), next_state)) {
                    stack.push((entry, state));
                    state = next_state;
                    count += 1;
                    lift(&mut list, entry);
                    entry = list[0].next;
                    continue;
                }
                linearized[word] &= !bit;
            }
            entry = e.next;
        } else {
            // A return whose call is not yet placed: the order so far cannot go on.
            if count >= deepest.0 {
                deepest = (count, e.op);
            }
            let Some((lifted, before)) = stack.pop() else {
                return KeyVerdict::Stuck {
                    linearized: deepest.0,
                    at: deepest.1,
                };
            };
            let op = list[lifted].op;
            linearized[op / 64] &= !(1u64 << (op % 64));
            count -= 1;
            state = before;
            unlift(&mut list, lifted);
            entry = list[lifted].next;
        }
    }
    KeyVerdict::Holds
}

/// Takes call `entry` and its return out of the list.
fn lift(list: &mut [Entry], entry: usize) {
    for at in [entry, list[entry].partner] {
        let Entry { prev, next, .. } = list[at];
        list[prev].next = next;
        if next != usize::MAX {
            list[next].prev = prev;
        }
    }
}

/// Puts call `entry` and its return back where they were (the reverse of [`lift`]).
fn unlift(list: &mut [Entry], entry: usize) {
    for at in [list[entry].partner, entry] {
        let Entry { prev, next, .. } = list[at];
        list[prev].next = at;
        if next != usize::MAX {
            list[next].prev = at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, call: Call, invoked: u64, completed: u64, outcome: Outcome) -> Operation {
        Operation {
            client,
            key: "k".to_owned(),
            call,
            invoked,
            completed,
            outcome,
        }
    }

    fn get(client: u64, invoked: u64, completed: u64, seen: Option<u64>) -> Operation {
        op(client, Call::Get, invoked, completed, Outcome::Value(seen))
    }

    fn put(client: u64, value: u64, invoked: u64, completed: u64) -> Operation {
        op(
            client,
            Call::Put(value),
            invoked,
            completed,
            Outcome::Written,
        )
    }

    #[test]
    fn sequential_reads_see_the_last_write() {
        let history = [
            get(1, 0, 1, None),
            put(1, 7, 2, 3),
            get(2, 4, 5, Some(7)),
            put(2, 8, 6, 7),
            get(1, 8, 9, Some(8)),
        ];
        assert!(check(&history).holds(), "{:?}", check(&history));
    }

    #[test]
    fn a_read_after_a_write_finished_must_not_see_the_older_value() {
        // The stale read: put 8 was acknowledged before the read began.
        let history = [put(1, 7, 0, 1), put(1, 8, 2, 3), get(2, 4, 5, Some(7))];
        let verdict = check(&history);
        let Verdict::NotLinearizable { key, stuck_at, .. } = verdict else {
            panic!("{verdict:?}");
        };
        assert_eq!(key, "k");
        assert_eq!(stuck_at.call, Call::Get);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // Two reads overlap a write: one sees the old value, one the new.
        let history = [
            put(1, 1, 0, 1),
            put(1, 2, 10, 20),
            get(2, 11, 12, Some(2)),
            get(3, 13, 14, Some(2)),
            get(4, 9, 19, Some(1)),
        ];
        assert!(check(&history).holds());
        // But once a reader saw the new value, a later reader cannot see the old one.
        let history = [
            put(1, 1, 0, 1),
            put(1, 2, 10, 20),
            get(2, 11, 12, Some(2)),
            get(3, 13, 14, Some(1)),
        ];
        assert!(!check(&history).holds());
    }

    #[test]
    fn a_write_of_unknown_outcome_may_or_may_not_have_happened() {
        let lost = op(1, Call::Put(5), 5, 0, Outcome::Unknown);
        // Seen much later: it took effect.
        let history = [put(2, 1, 0, 1), lost.clone(), get(2, 100, 101, Some(5))];
        assert!(check(&history).holds());
        // Never seen: it did not.
        let history = [put(2, 1, 0, 1), lost.clone(), get(2, 100, 101, Some(1))];
        assert!(check(&history).holds());
        // But it cannot have taken effect before it was invoked.
        let history = [put(2, 1, 0, 1), get(3, 2, 3, Some(5)), lost];
        assert!(!check(&history).holds());
    }

    #[test]
    fn a_value_nobody_wrote_is_not_linearizable() {
        let history = [put(1, 1, 0, 1), get(2, 2, 3, Some(99))];
        assert!(!check(&history).holds());
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut other = put(1, 1, 0, 1);
        other.key = "other".to_owned();
        let history = [put(1, 1, 0, 1), other, get(2, 2, 3, Some(1))];
        assert_eq!(
            check(&history),
            Verdict::Linearizable {
                keys: 2,
                operations: 3
            }
        );
    }

    #[test]
    fn a_long_concurrent_history_is_decided_quickly() {
        // 8 clients, 2,000 operations, every write overlapping the next: the cache keeps the
        // search linear in practice.
        let mut history = Vec::new();
        let mut value = 0;
        for round in 0..250u64 {
            let t = round * 10;
            value += 1;
            history.push(put(0, value, t, t + 15));
            for client in 1..8 {
                let seen = if round == 0 { None } else { Some(value - 1) };
                history.push(get(client, t + 1, t + 2, seen));
            }
        }
        assert!(check(&history).holds(), "{:?}", check(&history));
    }
}
