//! One orchestrator replica: a tikv raft-rs `RawNode` over a `MemStorage` (its disk: hard
//! state and log) and the product's `OrchestratorState`, fed committed entries through the
//! encoded path the product's node uses (`StateMachine::readable`, then `apply` on the log
//! entry bytes). A crash drops the `RawNode` and the state machine and keeps the disk; a
//! restart restores the replica's own latest state-machine snapshot and replays the log after
//! it. Raft is configured as `umbra-consensus` configures it (pre-vote, check-quorum, the
//! default ticks), except that each start draws its election timeout from the simulation's
//! seeded generator: raft-rs draws it from the thread's generator, which no seed controls.
//! This module must not read a clock or the thread's random generator in a way that shows.

use raft::prelude::{ConfState, Entry, EntryType, Message};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};
use umbra_consensus::StateMachine;
use umbra_orchestrator::state::OrchestratorState;

/// A state-machine snapshot is written to the replica's disk every this many applied entries,
/// so restarts exercise restore-then-replay (the product snapshots every 10 000; a simulated
/// run applies a few hundred).
const SNAPSHOT_EVERY: u64 = 16;

/// What the state machine did with one committed entry.
#[derive(Debug, Clone)]
pub(crate) struct AppliedEntry {
    /// Log index.
    pub index: u64,
    /// The term of the leader that appended it.
    pub term: u64,
    /// The encoded outcome (`None`: an empty entry, a new leader's no-op).
    pub outcome: Option<Vec<u8>>,
    /// The state machine's snapshot bytes after it.
    pub state: std::rc::Rc<Vec<u8>>,
}

/// What one round of `Ready` handling produced.
#[derive(Debug, Default)]
pub(crate) struct ReadyOut {
    /// Raft messages to send, after the entries and hard state they depend on were persisted.
    pub messages: Vec<Message>,
    /// Entries applied, in order.
    pub applied: Vec<AppliedEntry>,
    /// Read-index answers: (request context, index to apply up to).
    pub reads: Vec<(Vec<u8>, u64)>,
}

/// The running part of a replica, lost on a crash.
struct Live {
    raw: RawNode<MemStorage>,
    state: OrchestratorState,
    applied: u64,
    /// Snapshot bytes after `applied` (shared, not copied, with what is reported).
    state_bytes: std::rc::Rc<Vec<u8>>,
}

/// One replica. See the module docs.
pub(crate) struct Replica {
    id: u64,
    /// The disk: Raft's hard state and log.
    storage: MemStorage,
    /// The disk: the state machine's latest snapshot and the index it holds.
    snapshot: (u64, Vec<u8>),
    live: Option<Live>,
    logger: slog::Logger,
    /// Planted bug: every non-empty entry is handed to the state machine twice.
    apply_twice: bool,
}

impl Replica {
    /// A replica of a group whose voters are `voters`, with an empty disk, not started.
    pub fn new(id: u64, voters: &[u64], apply_twice: bool) -> Self {
        Self {
            id,
            storage: MemStorage::new_with_conf_state(ConfState::from((voters.to_vec(), vec![]))),
            snapshot: (0, OrchestratorState::default().snapshot()),
            live: None,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            apply_twice,
        }
    }

    /// Starts (or restarts) from the disk with an election timeout of `election_ticks`.
    pub fn start(&mut self, election_ticks: usize) -> Result<(), String> {
        let defaults = umbra_consensus::Config::default();
        assert!(election_ticks >= defaults.election_ticks);
        let (applied, bytes) = &self.snapshot;
        let mut state = OrchestratorState::default();
        state.restore(bytes).map_err(|e| e.to_string())?;
        let config = raft::Config {
            id: self.id,
            election_tick: defaults.election_ticks,
            heartbeat_tick: defaults.heartbeat_ticks,
            applied: *applied,
            max_size_per_msg: defaults.max_batch_bytes,
            max_inflight_msgs: defaults.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            min_election_tick: election_ticks,
            max_election_tick: election_ticks + 1,
            ..raft::Config::default()
        };
        let raw =
            RawNode::new(&config, self.storage.clone(), &self.logger).map_err(|e| e.to_string())?;
        self.live = Some(Live {
            raw,
            state,
            applied: *applied,
            state_bytes: std::rc::Rc::new(bytes.clone()),
        });
        Ok(())
    }

    /// The process dies: everything not on the disk is gone.
    pub fn crash(&mut self) {
        self.live = None;
    }

    /// Whether it runs.
    pub fn is_up(&self) -> bool {
        self.live.is_some()
    }

    /// Its term, when it runs and leads.
    pub fn leads(&self) -> Option<u64> {
        let live = self.live.as_ref()?;
        (live.raw.raft.state == StateRole::Leader).then_some(live.raw.raft.term)
    }

    /// The state machine, when it runs.
    pub fn state(&self) -> Option<&OrchestratorState> {
        self.live.as_ref().map(|l| &l.state)
    }

    /// Last applied index, when it runs.
    pub fn applied(&self) -> Option<u64> {
        self.live.as_ref().map(|l| l.applied)
    }

    /// One Raft tick.
    pub fn tick(&mut self) {
        if let Some(live) = &mut self.live {
            live.raw.tick();
        }
    }

    /// A Raft message arrived (ignored when down; raft-rs refuses what it cannot use).
    pub fn step(&mut self, message: Message) {
        if let Some(live) = &mut self.live {
            let _ = live.raw.step(message);
        }
    }

    /// Proposes `data`; the index and term the entry will have if it commits, or `None` when
    /// this replica cannot propose (down, or raft-rs dropped it: no leader known).
    pub fn propose(&mut self, data: Vec<u8>) -> Option<(u64, u64)> {
        let live = self.live.as_mut()?;
        live.raw.propose(Vec::new(), data).ok()?;
        Some((live.raw.raft.raft_log.last_index(), live.raw.raft.term))
    }

    /// Asks for a linearizable read point, answered in [`ReadyOut::reads`].
    pub fn read_index(&mut self, context: Vec<u8>) {
        if let Some(live) = &mut self.live {
            live.raw.read_index(context);
        }
    }

    /// The entry at `index` in the log on disk: its term and data.
    pub fn entry(&self, index: u64) -> Option<(u64, Vec<u8>)> {
        use raft::{GetEntriesContext, Storage};
        let entries = self
            .storage
            .entries(index, index + 1, None, GetEntriesContext::empty(false))
            .ok()?;
        entries.first().map(|e| (e.term, e.data.to_vec()))
    }

    /// Handles everything raft-rs has ready: persists entries and hard state, applies what
    /// committed, and hands back the messages to send and what was applied.
    pub fn handle_ready(&mut self) -> Result<ReadyOut, String> {
        let mut out = ReadyOut::default();
        let Some(live) = &mut self.live else {
            return Ok(out);
        };
        if !live.raw.has_ready() {
            return Ok(out);
        }
        let mut ready = live.raw.ready();
        if !ready.snapshot().is_empty() {
            // The log is never compacted here, so no leader sends one.
            return Err("a Raft snapshot arrived, which the simulation never sends".to_owned());
        }
        out.reads.extend(
            ready
                .read_states()
                .iter()
                .map(|r| (r.request_ctx.clone(), r.index)),
        );
        let messages = ready.take_messages();
        let committed = ready.take_committed_entries();
        if !ready.entries().is_empty() {
            self.storage
                .wl()
                .append(ready.entries())
                .map_err(|e| e.to_string())?;
        }
        if let Some(hard_state) = ready.hs() {
            self.storage.wl().set_hardstate(hard_state.clone());
        }
        out.messages.extend(messages);
        out.messages.extend(ready.take_persisted_messages());
        let mut light = live.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.storage.wl().mut_hard_state().set_commit(commit);
        }
        out.messages.extend(light.take_messages());
        let mut entries = committed;
        entries.extend(light.take_committed_entries());
        apply(
            live,
            &mut self.snapshot,
            entries,
            self.apply_twice,
            &mut out,
        )?;
        live.raw.advance_apply();
        Ok(out)
    }
}

/// Applies committed `entries` as the product's node does: empty ones (a new leader's no-op)
/// only move the applied index; others are checked readable and applied from their bytes.
fn apply(
    live: &mut Live,
    snapshot: &mut (u64, Vec<u8>),
    entries: Vec<Entry>,
    apply_twice: bool,
    out: &mut ReadyOut,
) -> Result<(), String> {
    for entry in entries {
        if entry.index <= live.applied {
            continue;
        }
        if entry.get_entry_type() != EntryType::EntryNormal {
            return Err(format!(
                "entry {} is a membership change, which the simulation never makes",
                entry.index
            ));
        }
        let times = if apply_twice && !entry.data.is_empty() {
            2
        } else {
            1
        };
        for _ in 0..times {
            let outcome = if entry.data.is_empty() {
                None
            } else {
                live.state
                    .readable(&entry.data)
                    .map_err(|e| format!("entry {}: {e}", entry.index))?;
                let outcome = live.state.apply(entry.index, &entry.data);
                live.state_bytes = std::rc::Rc::new(live.state.snapshot());
                Some(outcome)
            };
            live.applied = entry.index;
            out.applied.push(AppliedEntry {
                index: entry.index,
                term: entry.term,
                outcome,
                state: live.state_bytes.clone(),
            });
        }
        if live.applied.is_multiple_of(SNAPSHOT_EVERY) {
            *snapshot = (live.applied, live.state_bytes.as_ref().clone());
        }
    }
    Ok(())
}
