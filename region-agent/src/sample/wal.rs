//! The sample service's write-ahead log: one JSON line per record, appended by a single writer
//! task that batches concurrent writes into one `fsync` (group commit), so a write is
//! acknowledged only once it is durable under the chosen [`FsyncPolicy`].
//!
//! This module owns the file format and recovery. It must not know about HTTP or replication:
//! the writer accepts records from clients and from a replication stream alike, and the mode
//! check (primary, fenced, replica) happens here, in the one task that orders every append, so
//! that a fence is a clean cut: every write acknowledged before the fence is in the log, and no
//! client write is accepted after it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The WAL file name inside the data directory.
pub const WAL_FILE_NAME: &str = "wal.jsonl";

/// Largest single WAL line accepted on recovery. Keys and values are bounded far below this by
/// the HTTP layer; a longer line means the file is not ours or is corrupt.
pub const MAX_WAL_LINE_BYTES: usize = 4 * 1024 * 1024;

/// When appended records reach stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// `fdatasync` after every batch, before any write of the batch is acknowledged. Survives
    /// power loss. Concurrent writes share one sync (group commit), so throughput stays usable.
    Always,
    /// Written to the OS before acknowledging, never synced: survives a crash of the process
    /// (the page cache keeps the data) but not of the machine. For benchmarks only.
    Never,
}

/// One logged change. `value: None` is a delete. `seq` starts at 1 and has no gaps: the
/// replica's offset is simply the last `seq` it holds.
///
/// Each record is stamped with the instance that accepted the write first-hand and when
/// (`writer`, `at_ms`); a replica keeps the stamp of the record it received, so every copy of
/// a log says who wrote each position. That is what lets a chaos run check, from the data
/// alone, that no two instances accepted writes at the same time. Records written before the
/// stamps existed read back with an empty `writer` and `at_ms` 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalRecord {
    /// Position in the log, 1-based, contiguous.
    pub seq: u64,
    /// The key written.
    pub key: String,
    /// The new value, or `None` for a delete.
    pub value: Option<String>,
    /// The name of the instance that accepted the write from a client (`umbra-sample
    /// --name`); empty in a record written before records were stamped.
    #[serde(default)]
    pub writer: String,
    /// When the writer accepted it, Unix ms (by the writer's clock); 0 when unstamped.
    #[serde(default)]
    pub at_ms: u64,
}

/// Decodes one WAL line (without or with its newline).
pub fn decode_line(line: &[u8]) -> Result<WalRecord, String> {
    if line.len() > MAX_WAL_LINE_BYTES {
        return Err(format!("line longer than {MAX_WAL_LINE_BYTES} bytes"));
    }
    serde_json::from_slice::<WalRecord>(line).map_err(|e| e.to_string())
}

/// Errors of the log file.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The file could not be read or written.
    #[error("write-ahead log {path}: {source}")]
    Io {
        /// The WAL file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A complete line in the middle of the file does not parse: the file is corrupt (a torn
    /// last line is repaired instead, see [`Wal::open`]).
    #[error(
        "write-ahead log {path} is corrupt at line {line}: {reason}; move the data directory \
         aside and restore from a replica"
    )]
    Corrupt {
        /// The WAL file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What was wrong.
        reason: String,
    },
    /// The disk is full: nothing of the refused records is in the file (it was cut back to
    /// its last whole record), so the log can take writes again once there is room.
    #[error(
        "the disk holding write-ahead log {path} is full: the write was refused and nothing of it \
         kept; free space on it and retry"
    )]
    Full {
        /// The WAL file.
        path: PathBuf,
    },
    /// A record to append does not follow the last one (replication gap or overlap).
    #[error("record seq {got} does not follow the log's last seq {last}")]
    OutOfOrder {
        /// The last seq in the log.
        last: u64,
        /// The seq offered.
        got: u64,
    },
}

/// An open, append-only log plus its recovered records.
pub struct Wal {
    path: PathBuf,
    file: File,
    /// The file's length: whole records only.
    len: u64,
    last_seq: u64,
    policy: FsyncPolicy,
}

impl Wal {
    /// Opens (or creates) the log in `data_dir` and returns it with every record it holds, in
    /// order. A torn final line (a crash in the middle of an append that was therefore never
    /// acknowledged) is cut off; any other damage is an error.
    pub fn open(data_dir: &Path, policy: FsyncPolicy) -> Result<(Wal, Vec<WalRecord>), WalError> {
        let path = data_dir.join(WAL_FILE_NAME);
        let io = |source| WalError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let mut records = Vec::new();
        let mut good_len: u64 = 0;
        let mut torn_at: Option<u64> = None;
        {
            let mut reader = BufReader::new(&mut file);
            let mut line = Vec::new();
            let mut line_no = 0u64;
            loop {
                line.clear();
                let n = reader.read_until(b'\n', &mut line).map_err(io)?;
                if n == 0 {
                    break;
                }
                line_no += 1;
                let complete = line.last() == Some(&b'\n');
                match decode_line(&line) {
                    Ok(rec) if complete => {
                        let expected = records.last().map_or(1, |r: &WalRecord| r.seq + 1);
                        if rec.seq != expected {
                            return Err(WalError::Corrupt {
                                path,
                                line: line_no,
                                reason: format!("seq {} where {expected} was expected", rec.seq),
                            });
                        }
                        good_len += n as u64;
                        records.push(rec);
                    }
                    // Only the final line may be torn: an append that died half-way.
                    _ if !complete => {
                        torn_at = Some(good_len);
                        break;
                    }
                    Err(reason) => {
                        return Err(WalError::Corrupt {
                            path,
                            line: line_no,
                            reason,
                        });
                    }
                    Ok(_) => unreachable!("complete and incomplete lines are handled above"),
                }
            }
        }
        if let Some(len) = torn_at {
            tracing::warn!(path = %path.display(), len, "cutting a torn final WAL line");
            file.set_len(len).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        let len = file.seek(SeekFrom::End(0)).map_err(io)?;
        let last_seq = records.last().map_or(0, |r| r.seq);
        Ok((
            Wal {
                path,
                file,
                len,
                last_seq,
                policy,
            },
            records,
        ))
    }

    /// The last seq in the log (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends records, which must continue the log without gap or overlap, and makes them
    /// durable under the policy before returning. One call is one sync.
    ///
    /// A write that fails because the disk is full is cut back off the file and answered
    /// [`WalError::Full`]: the log stays whole and takes the next append once there is room.
    /// Any other failure, and every failed sync, leaves the log unusable ([`WalError::Io`]):
    /// after a failed `fsync` the kernel may have dropped the dirty pages, so what the file
    /// holds is no longer known (PostgreSQL's lesson of 2018: it stops rather than retry).
    pub fn append(&mut self, records: &[WalRecord]) -> Result<(), WalError> {
        let mut buf = Vec::with_capacity(records.len() * 64);
        let mut expected = self.last_seq + 1;
        for rec in records {
            if rec.seq != expected {
                return Err(WalError::OutOfOrder {
                    last: expected - 1,
                    got: rec.seq,
                });
            }
            expected += 1;
            serde_json::to_writer(&mut buf, rec).expect("a WAL record always serializes");
            buf.push(b'\n');
        }
        let io = |source| WalError::Io {
            path: self.path.clone(),
            source,
        };
        if let Err(e) = self.file.write_all(&buf) {
            // Part of the batch may have landed: cut it off, so the file holds whole,
            // acknowledged records only.
            self.file.set_len(self.len).map_err(io)?;
            return Err(match e.raw_os_error() {
                Some(nix::libc::ENOSPC | nix::libc::EDQUOT) => WalError::Full {
                    path: self.path.clone(),
                },
                _ => io(e),
            });
        }
        if self.policy == FsyncPolicy::Always {
            self.file.sync_data().map_err(io)?;
        }
        self.len += buf.len() as u64;
        self.last_seq = expected - 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, key: &str) -> WalRecord {
        WalRecord {
            seq,
            key: key.to_owned(),
            value: Some(format!("v{seq}")),
            writer: "shop-us-east-1".to_owned(),
            at_ms: 1_700_000_000_000 + seq,
        }
    }

    /// A data directory whose log file holds `text`.
    fn log_holding(text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(WAL_FILE_NAME), text).unwrap();
        dir
    }

    #[test]
    fn a_log_written_before_the_stamps_reads_back_unstamped_and_takes_stamped_records() {
        // Two lines exactly as builds before the stamps wrote them.
        let dir = log_holding(
            "{\"seq\":1,\"key\":\"a\",\"value\":\"x\"}\n{\"seq\":2,\"key\":\"b\",\"value\":null}\n",
        );
        let (mut wal, recs) = Wal::open(dir.path(), FsyncPolicy::Always).unwrap();
        assert_eq!(recs.len(), 2);
        assert!(
            recs.iter().all(|r| r.writer.is_empty() && r.at_ms == 0),
            "{recs:?}"
        );
        assert_eq!(recs[0].value.as_deref(), Some("x"));
        assert_eq!(recs[1].value, None);
        wal.append(&[rec(3, "c")]).unwrap();
        drop(wal);
        let (_, recs) = Wal::open(dir.path(), FsyncPolicy::Always).unwrap();
        assert_eq!(recs[2], rec(3, "c"));
        assert!(!recs[2].writer.is_empty());
    }

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, recs) = Wal::open(dir.path(), FsyncPolicy::Always).unwrap();
        assert!(recs.is_empty());
        wal.append(&[rec(1, "a"), rec(2, "b")]).unwrap();
        drop(wal);
        // Simulate a crash half-way through the third append.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(WAL_FILE_NAME))
            .unwrap();
        f.write_all(br#"{"seq":3,"key":"c","va"#).unwrap();
        drop(f);
        let (mut wal, recs) = Wal::open(dir.path(), FsyncPolicy::Always).unwrap();
        assert_eq!(recs, vec![rec(1, "a"), rec(2, "b")]);
        assert_eq!(wal.last_seq(), 2);
        wal.append(&[rec(3, "c")]).unwrap();
        let (_, recs) = Wal::open(dir.path(), FsyncPolicy::Always).unwrap();
        assert_eq!(recs.len(), 3);
    }

    /// Needs root (a tmpfs mount), as CI has: fails otherwise.
    #[test]
    fn a_full_disk_refuses_a_write_keeps_the_log_whole_and_takes_writes_once_freed() {
        use nix::mount::{MntFlags, MsFlags, mount, umount2};
        let scratch = tempfile::tempdir().unwrap();
        let disk = scratch.path().join("disk");
        std::fs::create_dir(&disk).unwrap();
        mount(
            Some("tmpfs"),
            &disk,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=256k"),
        )
        .unwrap();
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = umount2(self.0, MntFlags::MNT_DETACH);
            }
        }
        let _unmount = Unmount(&disk);
        let big = |seq| WalRecord {
            value: Some("x".repeat(3_000)),
            ..rec(seq, "k")
        };
        let (mut wal, _) = Wal::open(&disk, FsyncPolicy::Always).unwrap();
        wal.append(&[rec(1, "a")]).unwrap();
        // Fill the disk, then free 4 KiB: room for part of the next batch, not all of it.
        std::fs::write(disk.join("room"), vec![0u8; 4096]).unwrap();
        let mut ballast = std::fs::File::create(disk.join("ballast")).unwrap();
        let full = (0..1_000)
            .find_map(|_| ballast.write_all(&[0u8; 4096]).err())
            .expect("a 256 KiB disk fills");
        assert_eq!(full.raw_os_error(), Some(nix::libc::ENOSPC));
        std::fs::remove_file(disk.join("room")).unwrap();

        let refused = wal.append(&[big(2), big(3), big(4)]).unwrap_err();
        assert!(matches!(refused, WalError::Full { .. }), "{refused}");
        assert!(refused.to_string().contains("free space on it and retry"));
        assert_eq!(wal.last_seq(), 1);
        // Nothing of the refused batch is in the file: it reads back whole, record 1 only.
        let (_, recs) = Wal::open(&disk, FsyncPolicy::Always).unwrap();
        assert_eq!(recs, vec![rec(1, "a")]);

        drop(ballast);
        std::fs::remove_file(disk.join("ballast")).unwrap();
        wal.append(&[big(2), big(3)]).unwrap();
        drop(wal);
        let (_, recs) = Wal::open(&disk, FsyncPolicy::Always).unwrap();
        assert_eq!(recs, vec![rec(1, "a"), big(2), big(3)]);
    }

    #[test]
    fn gaps_and_overlaps_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), FsyncPolicy::Never).unwrap();
        wal.append(&[rec(1, "a")]).unwrap();
        assert!(matches!(
            wal.append(&[rec(3, "c")]),
            Err(WalError::OutOfOrder { last: 1, got: 3 })
        ));
        assert!(matches!(
            wal.append(&[rec(1, "a")]),
            Err(WalError::OutOfOrder { last: 1, got: 1 })
        ));
        assert_eq!(wal.last_seq(), 1);
    }

    #[test]
    fn a_corrupt_middle_line_is_an_error_not_a_silent_cut() {
        let dir = log_holding(
            "{\"seq\":1,\"key\":\"a\",\"value\":null}\nnot json\n{\"seq\":2,\"key\":\"b\",\"value\":null}\n",
        );
        let err = Wal::open(dir.path(), FsyncPolicy::Always).err().unwrap();
        assert!(matches!(err, WalError::Corrupt { line: 2, .. }), "{err}");
    }
}
