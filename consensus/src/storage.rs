//! Durable Raft state on raft-engine (TiKV's log store for raft-rs): the log, the hard state,
//! the configuration and the latest snapshot's metadata, all written through raft-engine's
//! checksummed, fsynced log batches. The snapshot's data is a file of its own under
//! `snapshots/` ([`SnapshotFiles`]), as TiKV keeps its snapshots beside its log: a state of
//! hundreds of MiB is written once, by the thread that encoded it, and never passes through
//! the log engine. Implements raft-rs's `Storage`. It must not apply entries or know what a
//! command means; the node decides when to persist and when to snapshot.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
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
/// The latest snapshot: its metadata, and its data too when a build before snapshot files
/// wrote it (read as before; the next snapshot moves the data to a file).
const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// The name of the file in `snapshots/` holding the latest snapshot's data.
const KEY_SNAPSHOT_FILE: &[u8] = b"snapshot_file";
/// The directory, inside the node's data directory, holding snapshot data files.
const SNAPSHOT_DIR: &str = "snapshots";
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
    /// Where snapshot data is written, and the file holding the latest snapshot's (none when
    /// there is no snapshot, or an older build stored its data in the log engine).
    files: SnapshotFiles,
    snapshot_file: Option<String>,
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
        let snapshot_file = engine
            .get(STATE_GROUP, KEY_SNAPSHOT_FILE)
            .map(|name| {
                String::from_utf8(name).map_err(|_| corrupt("snapshot file name".to_owned()))
            })
            .transpose()?;
        let files = SnapshotFiles::open(&dir.join(SNAPSHOT_DIR))
            .map_err(|e| corrupt(format!("snapshot directory: {e}")))?;
        if let Some(name) = &snapshot_file
            && !files.path(name).is_file()
        {
            return Err(corrupt(format!(
                "the latest snapshot's data file {} is missing",
                files.path(name).display()
            )));
        }
        // Files of older snapshots, or of one whose metadata never got written (a crash in
        // between), are of no use.
        files.remove_all_but(snapshot_file.as_deref(), u64::MAX);
        let mut storage = Self {
            engine: Arc::new(engine),
            hard_state: hard_state.unwrap_or_default(),
            conf_state: conf_state.unwrap_or_default(),
            snapshot_metadata: snapshot.map(|mut s| s.take_metadata()).unwrap_or_default(),
            files,
            snapshot_file,
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
        let Some(mut snapshot) = self
            .engine
            .get_message::<Snapshot>(STATE_GROUP, KEY_SNAPSHOT)
            .map_err(engine_error)?
        else {
            return Ok(None);
        };
        if let Some(name) = &self.snapshot_file {
            snapshot.set_data(self.files.read(name)?.into());
        }
        Ok(Some(snapshot))
    }

    /// Where a snapshot taken by this node writes its data (from any thread).
    pub fn snapshot_files(&self) -> SnapshotFiles {
        self.files.clone()
    }

    /// The metadata of a snapshot of the state after applying `index`: its term and the
    /// configuration as of now (the node captures both with the state, at the same index).
    pub fn snapshot_metadata(&self, index: u64) -> raft::Result<SnapshotMetadata> {
        let mut meta = SnapshotMetadata {
            index,
            term: raft::Storage::term(self, index)?,
            ..SnapshotMetadata::default()
        };
        meta.set_conf_state(self.conf_state.clone());
        Ok(meta)
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

    /// Installs a snapshot received from the leader: its data is written to a file, then the
    /// log before and at its index is dropped, and the hard state moves forward to it.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> raft::Result<()> {
        let meta = snapshot.get_metadata();
        if meta.index <= self.snapshot_metadata.index {
            return Err(raft::Error::Store(StorageError::SnapshotOutOfDate));
        }
        let file = self
            .files
            .write(meta.index, SnapshotOrigin::Received, &snapshot.data)?;
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        let mut batch = LogBatch::default();
        batch.add_command(LOG_GROUP, Command::Clean);
        self.put_snapshot(&mut batch, meta, &file)?;
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
        self.files.remove_all_but(Some(&file), meta.index);
        self.snapshot_file = Some(file);
        Ok(())
    }

    /// Records a snapshot this node took (its data already in `file`, written by
    /// [`SnapshotFiles::write`]) as the latest, then compacts the log up to it. A snapshot no
    /// newer than the stored one (one from the leader was installed meanwhile) is dropped, and
    /// `false` returned.
    pub fn record_snapshot(&mut self, meta: SnapshotMetadata, file: String) -> raft::Result<bool> {
        let index = meta.index;
        if index <= self.snapshot_metadata.index {
            if self.snapshot_file.as_deref() != Some(file.as_str()) {
                self.files.remove(&file);
            }
            return Ok(false);
        }
        let mut batch = LogBatch::default();
        self.put_snapshot(&mut batch, &meta, &file)?;
        self.engine.write(&mut batch, true).map_err(engine_error)?;
        // Entries up to the snapshot index are now redundant. `compact_to(i)` drops entries
        // before `i`.
        self.engine.compact_to(LOG_GROUP, index + 1);
        let dropped = (index + 1 - self.first()) as usize;
        self.terms.drain(..dropped.min(self.terms.len()));
        self.snapshot_metadata = meta;
        self.files.remove_all_but(Some(&file), index);
        self.snapshot_file = Some(file);
        // Reclaims whole log files whose entries are all compacted; best effort.
        if let Err(error) = self.engine.purge_expired_files() {
            tracing::warn!(%error, "raft log purge failed; will retry at the next snapshot");
        }
        Ok(true)
    }

    /// Adds the latest snapshot's metadata and data file name to `batch`.
    fn put_snapshot(
        &self,
        batch: &mut LogBatch,
        meta: &SnapshotMetadata,
        file: &str,
    ) -> raft::Result<()> {
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(meta.clone());
        batch
            .put_message(STATE_GROUP, KEY_SNAPSHOT.to_vec(), &snapshot)
            .map_err(engine_error)?;
        batch
            .put(
                STATE_GROUP,
                KEY_SNAPSHOT_FILE.to_vec(),
                file.as_bytes().to_vec(),
            )
            .map_err(engine_error)
    }
}

/// Whether this node took a snapshot itself or received it from its leader; part of the
/// file name, so the two never write the same file.
#[derive(Debug, Clone, Copy)]
pub enum SnapshotOrigin {
    Taken,
    Received,
}

/// Snapshot data files: `<index>-<origin>.snap`, each written whole to a temporary name,
/// fsynced and renamed, so a file with its final name is complete. Only the file the store
/// names as the latest snapshot's is kept.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    dir: PathBuf,
}

impl SnapshotFiles {
    fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes the data of the snapshot at `index` and returns the file's name, once the file
    /// and its directory entry are on disk.
    pub fn write(
        &self,
        index: u64,
        origin: SnapshotOrigin,
        data: &[u8],
    ) -> std::io::Result<String> {
        let origin = match origin {
            SnapshotOrigin::Taken => "taken",
            SnapshotOrigin::Received => "received",
        };
        let name = format!("{index:020}-{origin}.snap");
        let partial = self.dir.join(format!("{name}.partial"));
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&partial, self.path(&name))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(name)
    }

    fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(name))
    }

    fn remove(&self, name: &str) {
        if let Err(error) = std::fs::remove_file(self.path(name)) {
            tracing::warn!(%error, file = name, "cannot remove a stale snapshot file");
        }
    }

    /// Removes the files other than `keep` of snapshots at or below `up_to` (and, with
    /// `u64::MAX`, partial files: only at open, when no snapshot is being written).
    fn remove_all_but(&self, keep: Option<&str>, up_to: u64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if Some(name.as_str()) == keep {
                continue;
            }
            let index = name.split('-').next().and_then(|i| i.parse::<u64>().ok());
            let stale = match index {
                Some(index) => index <= up_to && (up_to == u64::MAX || name.ends_with(".snap")),
                None => false,
            };
            if stale {
                self.remove(&name);
            }
        }
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
        // member added after the stored snapshot needs a fresh one. Judged from the metadata
        // in memory: raft-rs asks again at every answer from the follower while a fresh one
        // is being written, and reading hundreds of MiB each time would stall the leader.
        let meta = &self.snapshot_metadata;
        let usable = meta.index > 0
            && meta.index >= request_index
            && meta.get_conf_state().voters.contains(&to);
        match usable.then(|| self.load_snapshot()).transpose()?.flatten() {
            Some(snapshot) => Ok(snapshot),
            None => {
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
            let file = s
                .snapshot_files()
                .write(6, SnapshotOrigin::Taken, b"state@6")
                .unwrap();
            assert!(
                s.record_snapshot(s.snapshot_metadata(6).unwrap(), file)
                    .unwrap()
            );
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
    fn a_snapshot_taken_before_a_received_newer_one_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStorage::open(dir.path(), &[1, 2]).unwrap();
        let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
        s.persist(&ents, None, true).unwrap();
        // Captured at 8, written while the leader's snapshot at 20 was installed.
        let meta = s.snapshot_metadata(8).unwrap();
        let taken = s
            .snapshot_files()
            .write(8, SnapshotOrigin::Taken, b"state@8")
            .unwrap();
        let mut received = Snapshot::default();
        received.mut_metadata().index = 20;
        received.mut_metadata().term = 2;
        received.mut_metadata().mut_conf_state().voters = vec![1, 2];
        received.set_data(b"state@20".to_vec().into());
        s.apply_snapshot(&received).unwrap();
        assert!(!s.record_snapshot(meta, taken).unwrap());
        drop(s);
        let s = DiskStorage::open(dir.path(), &[]).unwrap();
        let snapshot = s.load_snapshot().unwrap().unwrap();
        assert_eq!(snapshot.get_metadata().index, 20);
        assert_eq!(&snapshot.data[..], b"state@20");
        let files: Vec<_> = std::fs::read_dir(dir.path().join(SNAPSHOT_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, vec![format!("{:020}-received.snap", 20)]);
    }

    #[test]
    fn a_snapshot_stored_in_the_log_engine_by_an_older_build_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = DiskStorage::open(dir.path(), &[1]).unwrap();
            let mut snapshot = Snapshot::default();
            snapshot.mut_metadata().index = 6;
            snapshot.mut_metadata().term = 1;
            snapshot.mut_metadata().mut_conf_state().voters = vec![1];
            snapshot.set_data(b"state@6".to_vec().into());
            let mut batch = LogBatch::default();
            batch
                .put_message(STATE_GROUP, KEY_SNAPSHOT.to_vec(), &snapshot)
                .unwrap();
            s.engine.write(&mut batch, true).unwrap();
        }
        let s = DiskStorage::open(dir.path(), &[]).unwrap();
        assert_eq!(s.first_index().unwrap(), 7);
        let snapshot = s.load_snapshot().unwrap().unwrap();
        assert_eq!(&snapshot.data[..], b"state@6");
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
