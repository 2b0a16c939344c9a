//! Bridges raft-rs's `slog` logging into `tracing`, so Raft's own messages (elections, term
//! changes, rejected appends) land in the process's one log stream with the node's fields. It
//! must not buffer or drop records on its own: it formats and forwards.

use std::fmt::{self, Write as _};

/// A `slog::Drain` that re-emits every record as a `tracing` event on target `raft`.
pub struct TracingDrain;

/// Collects a record's key-value pairs as `key=value` text.
struct KeyValues(String);

impl slog::Serializer for KeyValues {
    fn emit_arguments(&mut self, key: slog::Key, value: &fmt::Arguments<'_>) -> slog::Result {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        // Writing to a String cannot fail.
        let _ = write!(self.0, "{key}={value}");
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
