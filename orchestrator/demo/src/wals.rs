//! The sample instances' write-ahead logs, read for the campaign's `single_writer` invariant
//! (`umbra_chaos::campaign`): every record names the instance that accepted it and when
//! (`umbra_agent::sample::wal::WalRecord`), so the logs themselves show whether two instances
//! ever took writes at the same time.
//!
//! An agent removes an instance's directory with its log when it releases the instance (the
//! old source pool after a completion, the shadows after a rollback), so the logs are read
//! while the migration runs, a little more each poll, and once more at the end; a log whose
//! file was replaced (an instance removed and provisioned again under the same id) is read as
//! a log of its own. Only complete lines are taken: a line still being appended is read at
//! the next poll. It reads files and writes nothing: it must never open a log the way the
//! sample service does (`Wal::open` repairs a torn tail).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use umbra_agent::sample::wal::{WAL_FILE_NAME, decode_line};
use umbra_chaos::campaign::InstanceWal;

/// One log file as read so far.
#[derive(Debug)]
struct ReadLog {
    /// `region/instance`.
    instance: String,
    /// The file's inode and birth time: a log removed with its instance and written afresh
    /// under the same path is another file.
    file: (u64, Option<SystemTime>),
    /// Bytes consumed: up to the end of the last complete line.
    offset: u64,
    /// (seq, writer, stamp in Unix ms) of each record, in log order.
    records: Vec<(u64, String, u64)>,
}

/// Every instance's log seen in a run, one entry per log file.
#[derive(Debug, Default)]
pub struct WalReader {
    logs: Vec<ReadLog>,
    /// The entry of the file at each path now.
    current: BTreeMap<PathBuf, usize>,
}

impl WalReader {
    /// Reads what was appended since the last call to the log of every instance of the
    /// process providers under `agent_state_dirs` (region → the agent's state directory).
    pub fn read(&mut self, agent_state_dirs: &BTreeMap<String, PathBuf>) {
        for (region, state_dir) in agent_state_dirs {
            let Ok(entries) = std::fs::read_dir(state_dir.join("processes")) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path().join("data").join(WAL_FILE_NAME);
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                let file = (meta.ino(), meta.created().ok());
                // An inode number is reused at once; a file shorter than what was read of it
                // is a new one even where the birth time is not recorded.
                let same = |log: &ReadLog| log.file == file && meta.len() >= log.offset;
                let index = match self.current.get(&path) {
                    Some(&index) if same(&self.logs[index]) => index,
                    _ => {
                        self.logs.push(ReadLog {
                            instance: format!("{region}/{}", entry.file_name().to_string_lossy()),
                            file,
                            offset: 0,
                            records: Vec::new(),
                        });
                        self.current.insert(path.clone(), self.logs.len() - 1);
                        self.logs.len() - 1
                    }
                };
                // A log that vanished or cannot be read between two polls keeps what was read.
                let _ = read_more(&path, &mut self.logs[index]);
            }
        }
    }

    /// How many records were read, over every log.
    pub fn records(&self) -> usize {
        self.logs.iter().map(|log| log.records.len()).sum()
    }

    /// Every log read, cut into writer runs for the judge.
    pub fn wals(&self) -> Vec<InstanceWal> {
        self.logs
            .iter()
            .map(|log| {
                let records = log
                    .records
                    .iter()
                    .map(|(seq, writer, at_ms)| (*seq, writer.as_str(), *at_ms));
                InstanceWal::of(log.instance.clone(), records)
            })
            .collect()
    }
}

/// Reads `path` from `log.offset` to the end of its last complete line.
fn read_more(path: &Path, log: &mut ReadLog) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(log.offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else {
        return Ok(());
    };
    for line in bytes[..end].split(|b| *b == b'\n') {
        // A line that does not decode is a corrupt log, which the instance itself refuses
        // to start on; it holds no stamp to judge.
        if let Ok(record) = decode_line(line) {
            log.records.push((record.seq, record.writer, record.at_ms));
        }
    }
    log.offset += end as u64 + 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, writer: &str, at_ms: u64) -> String {
        format!(
            "{{\"seq\":{seq},\"key\":\"k{seq}\",\"value\":\"v\",\"writer\":\"{writer}\",\"at_ms\":{at_ms}}}\n"
        )
    }

    #[test]
    fn logs_are_read_a_line_at_a_time_as_they_grow_and_kept_when_removed() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("us-east");
        let data = state.join("processes").join("shop-us-east-1").join("data");
        std::fs::create_dir_all(&data).unwrap();
        let wal = data.join(WAL_FILE_NAME);
        // A log from before the stamps, then stamped lines and one still being appended.
        let mut text = "{\"seq\":1,\"key\":\"a\",\"value\":null}\n".to_owned();
        text.push_str(&line(2, "shop-us-east-1", 1_000));
        text.push_str("{\"seq\":3,\"ke");
        std::fs::write(&wal, &text).unwrap();
        let dirs = BTreeMap::from([("us-east".to_owned(), state.clone())]);
        let mut reader = WalReader::default();
        reader.read(&dirs);
        assert_eq!(reader.records(), 2);

        text.truncate(text.rfind('{').unwrap());
        text.push_str(&line(3, "shop-us-east-1", 1_001));
        std::fs::write(&wal, &text).unwrap();
        reader.read(&dirs);
        reader.read(&dirs);
        assert_eq!(reader.records(), 3, "each line read once");

        // Removed with its instance, then provisioned afresh: a second log.
        std::fs::remove_dir_all(state.join("processes")).unwrap();
        reader.read(&dirs);
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(&wal, line(1, "shop-us-east-1", 2_000)).unwrap();
        reader.read(&dirs);
        let wals = reader.wals();
        assert_eq!(wals.len(), 2, "{wals:?}");
        let first = wals
            .iter()
            .find(|w| w.unstamped == 1)
            .expect("the first log");
        assert_eq!(first.instance, "us-east/shop-us-east-1");
        assert_eq!(
            (
                first.runs[0].first_seq,
                first.runs[0].last_seq,
                first.runs[0].to_ms
            ),
            (2, 3, 1_001)
        );
    }
}
