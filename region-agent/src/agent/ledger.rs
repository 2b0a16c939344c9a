//! The command core's journal: `<state_dir>/ledger.jsonl`, one [`LedgerRecord`] per line,
//! appended and fsynced by a thread of its own, so no async task ever waits on the disk.
//!
//! Why a journal: the whole core used to be rewritten (twice per command, without fsync) from
//! the async handlers. Appending the one or two records a command changes costs one write and
//! one `fdatasync`, wherever the core's size. When the journal holds more than
//! [`COMPACT_FACTOR`] times the records the core needs, the writer replaces it with the core's
//! snapshot (written to a temporary file, fsynced, renamed over it, directory fsynced), so the
//! file stays bounded. Records are acknowledged only once they are on disk.
//!
//! Reading tolerates what a crash can leave: a last line cut short (the record was never
//! acknowledged) is dropped, and opening rewrites the file without it. A bad line anywhere
//! else is an error that names the file and changes nothing. An agent upgraded from the whole-core file
//! (`ledger.json`) imports it once and removes it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::core::{CommandCore, DEFAULT_LEDGER_CAPACITY, LedgerRecord};

/// The journal in the state directory.
pub const JOURNAL_FILE: &str = "ledger.jsonl";
/// The whole-core file earlier agents wrote; imported once, then removed.
pub const OLD_LEDGER_FILE: &str = "ledger.json";
/// The journal is compacted once it holds this many times the records of the core's snapshot
/// plus the ledger's capacity (so a young journal is not compacted at every command): at the
/// default capacity, at most about 12,000 lines of a few hundred bytes.
const COMPACT_FACTOR: usize = 2;

/// Why the journal cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct JournalError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong and what to do.
    pub message: String,
}

fn fail(path: &Path, message: impl std::fmt::Display) -> JournalError {
    JournalError {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The records of `path`, oldest first; a cut-short last line is dropped (opening rewrites the
/// file without it).
fn read_journal(path: &Path) -> Result<Vec<LedgerRecord>, JournalError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fail(path, e)),
    };
    let mut reader = BufReader::new(file);
    let (mut records, mut line) = (Vec::new(), String::new());
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|e| fail(path, e))?;
        if n == 0 {
            break;
        }
        let complete = line.ends_with('\n');
        match serde_json::from_str::<LedgerRecord>(line.trim_end()) {
            Ok(record) if complete => records.push(record),
            _ if !complete => {
                // Never acknowledged: the writer acknowledges only what it fsynced.
                tracing::warn!(path = %path.display(), "dropping a journal record cut short by a crash");
                break;
            }
            Ok(_) => unreachable!("complete lines are handled above"),
            Err(e) => {
                return Err(fail(
                    path,
                    format!(
                        "record {} is not a ledger record ({e}); move the file away to start \
                         over (the agent then forgets its newest term and finished operations)",
                        records.len() + 1
                    ),
                ));
            }
        }
    }
    Ok(records)
}

/// Writes `records` to a new file at `path` in one go: temporary file, fsync, rename, directory
/// fsync.
fn write_whole(path: &Path, records: &[LedgerRecord]) -> std::io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut file = File::create(&tmp)?;
    for record in records {
        file.write_all(&line(record))?;
    }
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn line(record: &LedgerRecord) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(record).expect("ledger records serialize");
    bytes.push(b'\n');
    bytes
}

type Reply = oneshot::Sender<std::io::Result<()>>;

/// The journal's writer: a thread that appends, fsyncs and compacts, in the order it is given
/// records. Dropping the handle stops the thread once it wrote what it was given.
pub struct Journal {
    tx: mpsc::Sender<(Vec<LedgerRecord>, Reply)>,
}

impl Journal {
    /// Opens the journal in `state_dir` (importing an earlier agent's whole-core file) and
    /// returns the core it describes for `region`, with the writer running.
    pub fn open(state_dir: &Path, region: &str) -> Result<(Journal, CommandCore), JournalError> {
        Journal::open_with_capacity(state_dir, region, DEFAULT_LEDGER_CAPACITY)
    }

    /// Same, with a ledger capacity (the journal is compacted relative to it).
    pub fn open_with_capacity(
        state_dir: &Path,
        region: &str,
        capacity: usize,
    ) -> Result<(Journal, CommandCore), JournalError> {
        let path = state_dir.join(JOURNAL_FILE);
        let old = state_dir.join(OLD_LEDGER_FILE);
        let mut records = read_journal(&path)?;
        if records.is_empty() && old.exists() {
            let bytes = std::fs::read(&old).map_err(|e| fail(&old, e))?;
            let mut core: CommandCore = serde_json::from_slice(&bytes).map_err(|e| {
                fail(
                    &old,
                    format!("{e}; move the file away to start over with an empty ledger"),
                )
            })?;
            core.handle_restart();
            records = core.snapshot();
            tracing::info!(from = %old.display(), to = %path.display(), "importing the ledger");
        }
        match records.first() {
            Some(LedgerRecord::Region(theirs)) if theirs != region => {
                return Err(fail(
                    if old.exists() { &old } else { &path },
                    format!(
                        "it belongs to region {theirs:?}, this agent serves {region:?}; use \
                         another state directory"
                    ),
                ));
            }
            Some(LedgerRecord::Region(_)) => {}
            Some(_) => {
                return Err(fail(
                    &path,
                    "it does not start with its region; move the file away to start over",
                ));
            }
            None => records = CommandCore::new(region).snapshot(),
        }
        let core = CommandCore::replay(region, capacity, records.iter().cloned());
        // The file on disk starts with the region and holds exactly `records` from here on.
        write_whole(&path, &records).map_err(|e| fail(&path, e))?;
        if old.exists() {
            std::fs::remove_file(&old).map_err(|e| fail(&old, e))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| fail(&path, e))?;
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            path: path.clone(),
            file,
            written: records.len(),
            mirror: core.clone(),
            capacity,
        };
        std::thread::Builder::new()
            .name("agent-ledger".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| fail(&path, format!("cannot start the writer thread: {e}")))?;
        Ok((Journal { tx }, core))
    }

    /// Queues `records` (in the order of the calls) and returns when they are on disk.
    /// Call it while holding the core's lock and await the answer after releasing it, so the
    /// journal's order is the core's.
    pub fn append(
        &self,
        records: Vec<LedgerRecord>,
    ) -> impl Future<Output = std::io::Result<()>> + use<> {
        let (reply, done) = oneshot::channel();
        let sent = self.tx.send((records, reply));
        async move {
            sent.map_err(|_| std::io::Error::other("the ledger writer stopped"))?;
            done.await
                .map_err(|_| std::io::Error::other("the ledger writer stopped"))?
        }
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    /// Records in the file.
    written: usize,
    /// The core the file describes, for compaction.
    mirror: CommandCore,
    capacity: usize,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<(Vec<LedgerRecord>, Reply)>) {
        while let Ok((records, reply)) = rx.recv() {
            let result = self.write(records);
            if let Err(e) = &result {
                tracing::error!(path = %self.path.display(), error = %e, "cannot write the ledger");
            }
            let _ = reply.send(result);
        }
    }

    fn write(&mut self, records: Vec<LedgerRecord>) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let bytes: Vec<u8> = records.iter().flat_map(line).collect();
        self.file.write_all(&bytes)?;
        self.file.sync_data()?;
        self.written += records.len();
        for record in records {
            self.mirror.apply_record(record);
        }
        if self.written > COMPACT_FACTOR * self.mirror.snapshot_len() + self.capacity {
            let needed = self.mirror.snapshot();
            write_whole(&self.path, &needed)?;
            self.file = OpenOptions::new().append(true).open(&self.path)?;
            self.written = needed.len();
            tracing::debug!(records = needed.len(), "compacted the ledger");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_proto::agent::{AgentAction, AgentCommand, CommandResult};

    use crate::agent::core::Admission;

    const CAPACITY: usize = 4;

    fn cmd(op: &str, term: u64) -> AgentCommand {
        AgentCommand {
            op_id: op.into(),
            term,
            region: "r".into(),
            action: AgentAction::Start {
                instance: "i-1".into(),
            },
        }
    }

    fn done() -> umbra_proto::agent::CommandOutcome {
        umbra_proto::agent::CommandOutcome::Done(CommandResult::Instances(vec![]))
    }

    /// Runs `ops` through a core whose records go to the journal in `dir`.
    async fn run(dir: &Path, ops: std::ops::Range<u64>, term: u64) -> CommandCore {
        let (journal, mut core) = Journal::open_with_capacity(dir, "r", CAPACITY).unwrap();
        for i in ops {
            let op = format!("op-{i}");
            assert_eq!(core.handle_command(&cmd(&op, term)), Admission::Execute);
            core.handle_outcome(&op, &done());
            journal.append(core.take_records()).await.unwrap();
        }
        core
    }

    #[tokio::test]
    async fn a_reopened_journal_gives_back_the_same_core() {
        let dir = tempfile::tempdir().unwrap();
        let core = run(dir.path(), 0..10, 3).await;
        let (_, back) = Journal::open_with_capacity(dir.path(), "r", CAPACITY).unwrap();
        assert_eq!(back, core);
        assert_eq!(back.newest_term(), 3);
        let err = Journal::open(dir.path(), "other")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("belongs to region \"r\""), "{err}");
    }

    #[tokio::test]
    async fn the_journal_is_compacted_and_keeps_the_newest_operations() {
        let dir = tempfile::tempdir().unwrap();
        let n = 20 * CAPACITY as u64;
        let core = run(dir.path(), 0..n, 1).await;
        let lines = std::fs::read_to_string(dir.path().join(JOURNAL_FILE))
            .unwrap()
            .lines()
            .count();
        let bound = COMPACT_FACTOR * (CAPACITY + 2) + CAPACITY + 1;
        assert!(
            lines <= bound,
            "{lines} lines for {n} operations (bound {bound})"
        );
        let (_, mut back) = Journal::open_with_capacity(dir.path(), "r", CAPACITY).unwrap();
        assert_eq!(back, core);
        let newest = format!("op-{}", n - 1);
        assert_eq!(
            back.handle_command(&cmd(&newest, 1)),
            Admission::Reply(done())
        );
        assert_eq!(back.handle_command(&cmd("op-0", 1)), Admission::Execute);
    }

    #[tokio::test]
    async fn a_line_cut_short_is_dropped_and_a_bad_line_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let core = run(dir.path(), 0..3, 2).await;
        let path = dir.path().join(JOURNAL_FILE);
        let good = std::fs::read(&path).unwrap();
        let mut torn = good.clone();
        torn.extend_from_slice(br#"{"finished":{"op_id":"op-9","outc"#);
        std::fs::write(&path, &torn).unwrap();
        let (_, back) = Journal::open_with_capacity(dir.path(), "r", CAPACITY).unwrap();
        assert_eq!(back, core);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            good,
            "truncated to the good part"
        );

        let mut bad = good.clone();
        bad.extend_from_slice(b"not json\n{\"term\":2}\n");
        std::fs::write(&path, &bad).unwrap();
        let err = Journal::open(dir.path(), "r").err().unwrap().to_string();
        assert!(err.contains("is not a ledger record"), "{err}");
        assert!(err.contains("move the file away"), "{err}");
    }

    #[tokio::test]
    async fn an_earlier_agents_whole_core_file_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = CommandCore::new("r");
        for op in ["a", "b"] {
            old.handle_command(&cmd(op, 5));
            old.handle_outcome(op, &done());
        }
        old.handle_command(&cmd("running", 5));
        let file = dir.path().join(OLD_LEDGER_FILE);
        std::fs::write(&file, serde_json::to_vec(&old).unwrap()).unwrap();
        let (_, mut back) = Journal::open(dir.path(), "r").unwrap();
        assert!(!file.exists(), "the old file is gone once imported");
        assert_eq!(back.newest_term(), 5);
        assert_eq!(back.handle_command(&cmd("a", 5)), Admission::Reply(done()));
        assert_eq!(back.handle_command(&cmd("running", 5)), Admission::Execute);
        let (_, again) = Journal::open(dir.path(), "r").unwrap();
        assert_eq!(again.newest_term(), 5);
    }
}
