//! Durable Raft state on raft-engine (TiKV's log store for raft-rs): the log, the hard state,
//! the configuration and the latest snapshot, all written through raft-engine's checksummed,
//! fsynced log batches. Implements raft-rs's `Storage`. It must not apply entries or know
//! what a command means; the node decides when to persist and when to snapshot.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use raft_engine::{Command, Engine, LogBatch, MessageExt};

/// raft-engine group holding the log entries. Kept apart from the state group so a snapshot
/// can drop the whole log with `Command::Clean` without touching the hard state.
const LOG_GROUP: u64 = 1;
/// raft-engine group holding the hard state, configuration, snapshot and peer addresses.
const STATE_GROUP: u64 = 2;
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const KEY_PEER_PREFIX: &[u8] = b"peer/";

/// Tells raft-engine how to find the index of a raft-rs entry.
struct EntryCodec;

impl MessageExt for EntryCodec {
    type Entry = Entry;

    fn index(entry: &Entry) -> u64 {
        entry.index
    }
}

/// A failure of the durable store. The node stops on any of these: Raft cannot continue
/// safely with a log it cannot write.
#[derive(Debug, thiserror::Error)]
pub enum StorageOpenError {
    #[error("cannot open the raft log in {dir}: {source}")]
    Open {
        dir: String,
        source: raft_engine::Error,
    },
    #[error("the raft log in {dir} is damaged: {reason}")]
    Corrupt { dir: String, reason: String },
}

/// The log, hard state and snapshot of one node on disk, with the terms of live entries
/// cached in memory (raft-rs asks for terms on every message; reading them from disk each
/// time would cost a file read per call).
pub struct DiskStorage {
    engine: Arc<Engine>,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_metadata: SnapshotMetadata,
    /// Terms of the entries `first_index()..=last_index()`.
    terms: VecDeque<u64>,
    /// Set when raft-rs asked for a snapshot the stored one cannot serve (a peer newer than
    /// it); the node takes a fresh one at its next turn.
    snapshot_wanted: Cell<bool>,
}

fn engine_error(error: raft_engine::Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(error)))
}

impl DiskStorage {
    /// Opens (or creates) the store in `dir`. A new store starts with `initial_voters` as its
    /// configuration; a node joining an existing cluster passes an empty list and learns the
    /// configuration from the leader.
    pub fn open(dir: &Path, initial_voters: &[u64]) -> Result<Self, StorageOpenError> {
        let dir_name = dir.display().to_string();
        let engine = Engine::open(raft_engine::Config {
            dir: dir_name.clone(),
            ..raft_engine::Config::default()
        })
        .map_err(|source| StorageOpenError::Open {
            dir: dir_name.clone(),
            source,
        })?;
        let corrupt = |reason: String| StorageOpenError::Corrupt {
            dir: dir_name.clone(),
            reason,
        };
        let hard_state: Option<HardState> = engine
            .get_message(STATE_GROUP, KEY_HARD_STATE)
            .map_err(|e| corrupt(format!("hard state: {e}")))?;
        let conf_state: Option<ConfState> = engine
            .get_message(STATE_GROUP, KEY_CONF_STATE)
            .map_err(|e| corrupt(format!("configuration: {e}")))?;
        let snapshot: Option<Snapshot> = engine
            .get_message(STATE_GROUP, KEY_SNAPSHOT)
            .map_err(|e| corrupt(format!("snapshot: {e}")))?;
        let mut storage = Self {
            engine: Arc::new(engine),
            hard_state: hard_state.unwrap_or_default(),
            conf_state: conf_state.unwrap_or_default(),
            snapshot_metadata: snapshot.map(|mut s| s.take_metadata()).unwrap_or_default(),
            terms: VecDeque::new(),
            snapshot_wanted: Cell::new(false),
        };
        let first = storage.snapshot_metadata.index + 1;
        if let Some(last) = storage.engine.last_index(LOG_GROUP)
            && last >= first
        {
            let mut entries = Vec::new();
            storage
                .engine
                .fetch_entries_to::<EntryCodec>(LOG_GROUP, first, last + 1, None, &mut entries)
                .map_err(|e| corrupt(format!("entries {first}..={last}: {e}")))?;
            storage.terms = entries.iter().map(|e| e.term).collect();
        }
        let fresh = storage.hard_state == HardState::default()
            && storage.conf_state == ConfState::default()
            && storage.terms.is_empty();
        if fresh && !initial_voters.is_empty() {
            storage.conf_state.voters = initial_voters.to_vec();
            let mut batch = LogBatch::default();
            batch
                .put_message(STATE_GROUP, KEY_CONF_STATE.to_vec(), &storage.conf_state)
                .map_err(|e| corrupt(format!("writing the initial configuration: {e}")))?;
            storage
                .engine
                .write(&mut batch, true)
                .map_err(|e| corrupt(format!("writing the initial configuration: {e}")))?;
        }
        Ok(storage)
    }

    /// The latest snapshot on disk, if any (data included).
    pub fn load_snapshot(&self) -> raft::Result<Option<Snapshot>> {
        self.engine
            .get_message(STATE_GROUP, KEY_SNAPSHOT)
            .map_err(engine_error)
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Whether raft-rs asked for a newer snapshot than the stored one (and clears the flag).
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_metadata.index
    }

    fn first(&self) -> u64 {
        self.snapshot_metadata.index + 1
    }

    fn last(&self) -> u64 {
        self.snapshot_metadata.index + self.terms.len() as u64
    }

    /// Appends `entries` (replacing any conflicting suffix) and records `hard_state`, in one
    /// batch, fsynced when `sync` is set. Raft requires this before it acknowledges the
    /// entries or the vote to anyone.
    pub fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> raft::Result<()> {
        let mut batch = LogBatch::default();
        if let Some(first) = entries.first() {
            assert!(
                first.index >= self.first() && first.index <= self.last() + 1,
                "append at {} outside the log {}..={}",
                first.index,
                self.first(),
                self.last()
            );
            batch
                .add_entries::<EntryCodec>(LOG_GROUP, entries)
                .map_err(engine_error)?;
        }
        if let Some(hs) = hard_state {
            batch
                .put_message(STATE_GROUP, KEY_HARD_STATE.to_vec(), hs)
                .map_err(engine_error)?;
        }
        self.engine.write(&mut batch, sync).map_err(engine_error)?;
        if let Some(first) = entries.first() {
            self.terms.truncate((first.index - self.first()) as usize);
            self.terms.extend(entries.iter().map(|e| e.term));
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Records a newer commit index (not fsynced: a lost commit index is relearned from the
    /// leader, and replaying fewer entries after a crash is safe).
    pub fn set_commit(&mut self, commit: u64) -> raft::Result<()> {
        if commit <= self.hard_state.commit {
            return Ok(());
        }
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.persist(&[], Some(&hs), false)
    }

    /// Records the configuration produced by applying a configuration change, with the new
    /// member's address when it has one.
    pub fn set_conf_state(
        &mut self,
        conf_state: ConfState,
        peer: Option<(u64, &str)>,
    ) -> raft::Result<()> {
        let mut batch = LogBatch::default();
        batch
            .put_message(STATE_GROUP, KEY_CONF_STATE.to_vec(), &conf_state)
            .map_err(engine_error)?;
        if let Some((id, address)) = peer {
            batch
                .put(STATE_GROUP, peer_key(id), address.as_bytes().to_vec())
                .map_err(engine_error)?;
        }
        self.engine.write(&mut batch, true).map_err(engine_error)?;
        self.conf_state = conf_state;
        Ok(())
    }

    /// Peer addresses learnt from configuration changes.
    pub fn peer_addresses(&self) -> raft::Result<BTreeMap<u64, String>> {
        let mut peers = BTreeMap::new();
        let mut end = KEY_PEER_PREFIX.to_vec();
        *end.last_mut().expect("non-empty prefix") += 1;
        self.engine
            .scan_raw_messages(
                STATE_GROUP,
                Some(KEY_PEER_PREFIX),
                Some(&end),
                false,
                |key, value| {
                    let id = std::str::from_utf8(&key[KEY_PEER_PREFIX.len()..])
                        .ok()
                        .and_then(|s| s.parse().ok());
                    if let (Some(id), Ok(address)) = (id, std::str::from_utf8(value)) {
                        peers.insert(id, address.to_owned());
                    }
                    true
                },
            )
            .map_err(engine_error)?;
        Ok(peers)
    }

    /// Installs a snapshot received from the leader: the log before and at its index is
    /// dropped, and the hard state moves forward to it.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> raft::Result<()> {
        let meta = snapshot.get_metadata();
        if meta.index <= self.snapshot_metadata.index {
            return Err(raft::Error::Store(StorageError::SnapshotOutOfDate));
        }
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        let mut batch = LogBatch::default();
        batch.add_command(LOG_GROUP, Command::Clean);
        batch
            .put_message(STATE_GROUP, KEY_SNAPSHOT.to_vec(), snapshot)
            .map_err(engine_error)?;
        batch
            .put_message(STATE_GROUP, KEY_HARD_STATE.to_vec(), &hs)
            .map_err(engine_error)?;
        batch
            .put_message(STATE_GROUP, KEY_CONF_STATE.to_vec(), meta.get_conf_state())
            .map_err(engine_error)?;
        self.engine.write(&mut batch, true).map_err(engine_error)?;
        self.hard_state = hs;
        self.conf_state = meta.get_conf_state().clone();
        self.snapshot_metadata = meta.clone();
        self.terms.clear();
        Ok(())
    }

    /// Stores a snapshot of the state machine taken after applying `index`, then compacts
    /// the log up to it.
    pub fn create_snapshot(&mut self, index: u64, data: Vec<u8>) -> raft::Result<()> {
        if index <= self.snapshot_metadata.index {
            return Ok(());
        }
        let term = raft::Storage::term(self, index)?;
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        let mut batch = LogBatch::default();
        batch
            .put_message(STATE_GROUP, KEY_SNAPSHOT.to_vec(), &snapshot)
            .map_err(engine_error)?;
        self.engine.write(&mut batch, true).map_err(engine_error)?;
        // Entries up to the snapshot index are now redundant. `compact_to(i)` drops entries
        // before `i`.
        self.engine.compact_to(LOG_GROUP, index + 1);
        let dropped = (index + 1 - self.first()) as usize;
        self.terms.drain(..dropped.min(self.terms.len()));
        self.snapshot_metadata = snapshot.take_metadata();
        // Reclaims whole log files whose entries are all compacted; best effort.
        if let Err(error) = self.engine.purge_expired_files() {
            tracing::warn!(%error, "raft log purge failed; will retry at the next snapshot");
        }
        Ok(())
    }
}

fn peer_key(id: u64) -> Vec<u8> {
    let mut key = KEY_PEER_PREFIX.to_vec();
    key.extend_from_slice(id.to_string().as_bytes());
    key
}

impl raft::Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.last() + 1,
            "entries {low}..{high} beyond the last index {}",
            self.last()
        );
        let mut entries = Vec::with_capacity((high - low) as usize);
        self.engine
            .fetch_entries_to::<EntryCodec>(
                LOG_GROUP,
                low,
                high,
                max_size.into().map(|m| m as usize),
                &mut entries,
            )
            .map_err(engine_error)?;
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.snapshot_metadata.index {
            return Ok(self.snapshot_metadata.term);
        }
        if index < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.terms[(index - self.first()) as usize])
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // raft-rs refuses a snapshot whose configuration does not list the receiver, so a
        // member added after the stored snapshot needs a fresh one.
        match self.load_snapshot()? {
            Some(snapshot)
                if snapshot.get_metadata().index >= request_index
                    && snapshot
                        .get_metadata()
                        .get_conf_state()
                        .voters
                        .contains(&to) =>
            {
                Ok(snapshot)
            }
            _ => {
                self.snapshot_wanted.set(true);
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

/// Encodes a protobuf message (raft-rs types) to bytes.
pub(crate) fn encode_pb<M: protobuf::Message>(message: &M) -> Vec<u8> {
    message
        .write_to_bytes()
        .expect("raft messages always encode")
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Entry::default()
        }
    }

    #[test]
    fn entries_and_hard_state_survive_reopen_and_conflicts_truncate() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
            let hs = HardState {
                term: 2,
                vote: 1,
                commit: 2,
                ..HardState::default()
            };
            s.persist(&[entry(1, 1), entry(2, 1), entry(3, 2)], Some(&hs), true)
                .unwrap();
            // A new leader overwrites index 3 and beyond.
            s.persist(&[entry(3, 3), entry(4, 3)], None, true).unwrap();
            assert_eq!(s.last_index().unwrap(), 4);
            assert_eq!(s.term(3).unwrap(), 3);
        }
        let s = DiskStorage::open(dir.path(), &[9]).unwrap();
        let state = s.initial_state().unwrap();
        assert_eq!(state.hard_state.term, 2);
        assert_eq!(state.hard_state.commit, 2);
        assert_eq!(
            state.conf_state.voters,
            vec![1, 2, 3],
            "bootstrap only once"
        );
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 4));
        let ents = s
            .entries(2, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        let terms: Vec<u64> = ents.iter().map(|e| e.term).collect();
        assert_eq!(terms, vec![1, 3, 3]);
    }

    #[test]
    fn snapshot_compacts_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = DiskStorage::open(dir.path(), &[1, 2]).unwrap();
            let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
            s.persist(&ents, None, true).unwrap();
            s.create_snapshot(6, b"state@6".to_vec()).unwrap();
            assert_eq!(s.first_index().unwrap(), 7);
            assert_eq!(s.term(6).unwrap(), 1);
            assert!(
                s.entries(5, 8, None, GetEntriesContext::empty(false))
                    .is_err()
            );
        }
        let s = DiskStorage::open(dir.path(), &[]).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (7, 10));
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 6);
        assert_eq!(&snap.data[..], b"state@6");
    }

    #[test]
    fn received_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStorage::open(dir.path(), &[]).unwrap();
        s.persist(&[entry(1, 1), entry(2, 1)], None, true).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 50;
        snap.mut_metadata().term = 4;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3, 4];
        s.apply_snapshot(&snap).unwrap();
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (51, 50)
        );
        s.persist(&[entry(51, 4)], None, true).unwrap();
        drop(s);
        let s = DiskStorage::open(dir.path(), &[]).unwrap();
        assert_eq!(s.last_index().unwrap(), 51);
        assert_eq!(
            s.initial_state().unwrap().conf_state.voters,
            vec![1, 2, 3, 4]
        );
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 50);
    }

    #[test]
    fn peer_addresses_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStorage::open(dir.path(), &[1]).unwrap();
        let mut cs = s.conf_state().clone();
        cs.voters.push(4);
        s.set_conf_state(cs, Some((4, "127.0.0.1:7004"))).unwrap();
        drop(s);
        let s = DiskStorage::open(dir.path(), &[]).unwrap();
        assert_eq!(
            s.peer_addresses().unwrap().get(&4).map(String::as_str),
            Some("127.0.0.1:7004")
        );
        assert_eq!(s.conf_state().voters, vec![1, 4]);
    }
}
