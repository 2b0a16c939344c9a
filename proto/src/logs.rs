//! How every Umbra binary logs: `tracing` events as text on stderr, filtered by `RUST_LOG`
//! (else the binary's own default), in colour only on a terminal (logs usually go to files).
//!
//! An event that cannot be written is dropped. By default tracing-subscriber reports a failed
//! write with `eprintln!`, which panics when stderr itself cannot be written: with the log
//! file on a full disk, whichever thread logged died. The chaos campaign's `disk_full` fault
//! showed it: the sample service's write-ahead-log writer logged the refused write and was
//! gone, so the instance refused every write after the disk had room again.

use tracing_subscriber::EnvFilter;

/// Installs the process's subscriber; `default_filter` (e.g. `"info"`) when `RUST_LOG` is
/// unset or not a filter.
pub fn init(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .init();
}
