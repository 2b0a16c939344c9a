//! Bridges raft-rs's `slog` logging into `tracing`, so Raft's own messages (elections, term
//! changes, rejected appends) land in the process's one log stream with the node's fields. It
//! must not buffer or drop records on its own: it formats and forwards, and formats only what
//! `tracing` will emit, each field cut at `MAX_FIELD_CHARS`: raft-rs passes whole messages as
//! fields at debug level, and a snapshot message printed whole (hundreds of MiB as escaped
//! text) would stall the driver thread for longer than an election timeout.

use std::fmt::{self, Write as _};

/// Longest text of one field; the rest is cut and marked with `…`. A Raft message with a few
/// entries fits; a snapshot's data does not need to be in a log.
const MAX_FIELD_CHARS: usize = 2048;

/// A `slog::Drain` that re-emits every record as a `tracing` event on target `raft`.
pub struct TracingDrain;

/// Collects a record's key-value pairs as `key=value` text.
struct KeyValues(String);

/// A writer that takes `room` more bytes, then fails, which stops the formatting of a long
/// value early rather than after it was printed whole.
struct Bounded<'a> {
    out: &'a mut String,
    room: usize,
}

impl fmt::Write for Bounded<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if text.len() <= self.room {
            self.out.push_str(text);
            self.room -= text.len();
            return Ok(());
        }
        let mut end = self.room;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.out.push_str(&text[..end]);
        self.room = 0;
        Err(fmt::Error)
    }
}

impl slog::Serializer for KeyValues {
    fn emit_arguments(&mut self, key: slog::Key, value: &fmt::Arguments<'_>) -> slog::Result {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        self.0.push_str(key);
        self.0.push('=');
        let mut bounded = Bounded {
            out: &mut self.0,
            room: MAX_FIELD_CHARS,
        };
        if write!(bounded, "{value}").is_err() {
            self.0.push('…');
        }
        Ok(())
    }
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let enabled = match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::enabled!(target: "raft", tracing::Level::ERROR)
            }
            slog::Level::Warning => tracing::enabled!(target: "raft", tracing::Level::WARN),
            slog::Level::Info => tracing::enabled!(target: "raft", tracing::Level::INFO),
            slog::Level::Debug => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            slog::Level::Trace => tracing::enabled!(target: "raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut fields = KeyValues(String::new());
        let _ = slog::KV::serialize(&record.kv(), record, &mut fields);
        let _ = slog::KV::serialize(values, record, &mut fields);
        let message = record.msg();
        let fields = fields.0;
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", %fields, "{message}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", %fields, "{message}"),
            slog::Level::Info => tracing::info!(target: "raft", %fields, "{message}"),
            slog::Level::Debug => tracing::debug!(target: "raft", %fields, "{message}"),
            slog::Level::Trace => tracing::trace!(target: "raft", %fields, "{message}"),
        }
        Ok(())
    }
}

/// A logger for raft-rs tagged with the node id.
pub fn raft_logger(node_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("raft_id" => node_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use slog::Serializer as _;

    #[test]
    fn a_long_field_is_cut_and_marked() {
        let mut fields = KeyValues(String::new());
        let long = "é".repeat(MAX_FIELD_CHARS);
        fields.emit_arguments("m", &format_args!("{long}")).unwrap();
        fields.emit_arguments("to", &format_args!("{}", 2)).unwrap();
        let (m, to) = fields.0.split_once(' ').unwrap();
        assert!(m.starts_with("m=é") && m.ends_with('…'), "{m}");
        assert!(m.len() <= "m=".len() + MAX_FIELD_CHARS + '…'.len_utf8());
        assert_eq!(to, "to=2");
    }
}
