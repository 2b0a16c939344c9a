//! The schema of what the orchestrators' Raft log and snapshots hold, versioned on its own.
//!
//! A log entry or snapshot outlives the build that wrote it: it is read back after an
//! upgrade, by every later build, for as long as the cluster's data directories exist. So
//! its types are plain data defined here, apart from the plan file's and the API's types
//! (which change with their formats) and apart from the wire protocol's version (peers of
//! one cluster agree on [`crate::PROTOCOL_VERSION`]; a data directory holds every version
//! its cluster ever ran). The orchestrator converts its own types to and from
//! [`current`] where it encodes and decodes, and nowhere else.
//!
//! Every entry and snapshot is an [`envelope`](crate::envelope) whose version is the log
//! schema version ([`CURRENT_VERSION`] when written), then the postcard encoding of that
//! version's type. Decoding dispatches on the version; a version newer than this build
//! knows is [`LogError::Newer`] (upgrade this node), never a guess.
//!
//! Rules for change, so that nothing committed to Raft is ever lost:
//! - A version's module is frozen once released: no field, type, order or variant of it
//!   changes, ever (postcard is not self-describing and has no defaults; an edit in place
//!   silently changes how every existing entry decodes). The orchestrator's `log_schema`
//!   test compares this build's encoding with bytes committed under
//!   `orchestrator/tests/fixtures/log-v{N}/` and fails on such an edit.
//! - Any other change is a new version: a module `vN+1` (copy the previous one and change
//!   the copy), [`CURRENT_VERSION`] and [`current`] pointing at it, an upgrade from every
//!   older version's types (`From<vN::Command> for vN+1::Command`, and the snapshot) used by
//!   the dispatch below, and a fixture directory for the new version. Older versions stay
//!   decodable forever; their modules are never deleted.
//! - An enum may gain a variant only in a new version, too: an older build must refuse an
//!   entry it cannot read by its version, not by a variant index it does not know.
//! - Mixed versions: a cluster upgraded one node at a time writes entries at the leader's
//!   version. A node that meets a newer one stops applying (it cannot know what the entry
//!   means) and says to upgrade it; after the upgrade it applies the entry from its log.
//!
//! This module does no I/O and knows nothing about what the state means.

pub mod v1;
pub mod v2;

use crate::envelope::{self, EnvelopeError};

/// Version 1: the encoding of every build before the log schema was versioned on its own
/// (which wrote protocol version 1 in the same place).
pub const V1: u16 = 1;

/// Version 2: version 1 and recorded drills (see [`v2`]).
pub const V2: u16 = 2;

/// The version this build writes.
pub const CURRENT_VERSION: u16 = V2;

/// The types of [`CURRENT_VERSION`], which the orchestrator converts to and from.
pub use v2 as current;

/// Why a log entry or snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Written by a newer Umbra, at a schema version this build does not know.
    #[error(
        "this {what} was written by a newer Umbra, at log schema version {theirs}; this build reads versions {V1} to {newest}. Upgrade this node to the Umbra version the rest of the cluster runs, then start it again: the data is kept"
    )]
    Newer {
        /// What was being read: `log entry` or `snapshot`.
        what: &'static str,
        /// The version it carries.
        theirs: u16,
        /// [`CURRENT_VERSION`].
        newest: u16,
    },
    /// A version no Umbra build ever wrote (below [`V1`]): the bytes are not an entry.
    #[error(
        "this {what} carries log schema version {theirs}, which no Umbra build writes: it is not an orchestrator {what}"
    )]
    Unknown {
        /// What was being read.
        what: &'static str,
        /// The version it carries.
        theirs: u16,
    },
    /// The bytes carry a known version but do not decode as it.
    #[error("this {what} (log schema version {version}) is malformed: {source}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// The version it carries.
        version: u16,
        /// What is wrong with it.
        #[source]
        source: EnvelopeError,
    },
    /// The bytes do not even start with a version.
    #[error("this {what} is malformed: {source}")]
    NoVersion {
        /// What was being read.
        what: &'static str,
        /// What is wrong with it.
        #[source]
        source: EnvelopeError,
    },
    /// A value could not be encoded (a programmer's mistake in a schema type).
    #[error("could not encode a {what}: {source}")]
    Encode {
        /// What was being written.
        what: &'static str,
        /// What postcard refused.
        #[source]
        source: EnvelopeError,
    },
}

const ENTRY: &str = "log entry";
const SNAPSHOT: &str = "snapshot";

/// Encodes a command as a log entry at [`CURRENT_VERSION`].
pub fn encode_command(command: &current::Command) -> Result<Vec<u8>, LogError> {
    envelope::encode_with_version(CURRENT_VERSION, command).map_err(|source| LogError::Encode {
        what: ENTRY,
        source,
    })
}

/// Decodes a log entry of any version this build knows, as the current version's command.
pub fn decode_command(entry: &[u8]) -> Result<current::Command, LogError> {
    let (version, body) = versioned::<current::Command>(ENTRY, entry)?;
    match version {
        V1 => body_of::<v1::Command>(ENTRY, version, body).map(Into::into),
        V2 => body_of::<v2::Command>(ENTRY, version, body),
        _ => Err(LogError::Unknown {
            what: ENTRY,
            theirs: version,
        }),
    }
}

/// Refuses a log entry of a schema version newer than this build's, reading only the version:
/// what a node checks before it applies an entry. Anything else passes here (a malformed
/// entry is refused alike by every build when [`decode_command`] reads it).
pub fn check_entry_version(entry: &[u8]) -> Result<(), LogError> {
    match versioned::<current::Command>(ENTRY, entry) {
        Err(newer @ LogError::Newer { .. }) => Err(newer),
        _ => Ok(()),
    }
}

/// Encodes the state as a snapshot at [`CURRENT_VERSION`].
pub fn encode_snapshot(snapshot: &current::Snapshot) -> Result<Vec<u8>, LogError> {
    envelope::encode_with_version(CURRENT_VERSION, snapshot).map_err(|source| LogError::Encode {
        what: SNAPSHOT,
        source,
    })
}

/// Decodes a snapshot of any version this build knows, as the current version's state.
pub fn decode_snapshot(snapshot: &[u8]) -> Result<current::Snapshot, LogError> {
    let (version, body) = versioned::<current::Snapshot>(SNAPSHOT, snapshot)?;
    match version {
        V1 => body_of::<v1::Snapshot>(SNAPSHOT, version, body).map(Into::into),
        V2 => body_of::<v2::Snapshot>(SNAPSHOT, version, body),
        _ => Err(LogError::Unknown {
            what: SNAPSHOT,
            theirs: version,
        }),
    }
}

/// The version `bytes` carry and the body after it; a version above [`CURRENT_VERSION`] is
/// refused here, before anything reads the body.
fn versioned<'a, T>(what: &'static str, bytes: &'a [u8]) -> Result<(u16, &'a [u8]), LogError> {
    let (version, body) = envelope::split_version::<T>(bytes)
        .map_err(|source| LogError::NoVersion { what, source })?;
    if version > CURRENT_VERSION {
        return Err(LogError::Newer {
            what,
            theirs: version,
            newest: CURRENT_VERSION,
        });
    }
    Ok((version, body))
}

fn body_of<T: serde::de::DeserializeOwned>(
    what: &'static str,
    version: u16,
    body: &[u8],
) -> Result<T, LogError> {
    envelope::decode_body(body).map_err(|source| LogError::Malformed {
        what,
        version,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_entry_and_snapshot_read_as_version_2() {
        let v1_release = v1::Command::ReleaseCapacity {
            id: "cap-1".into(),
            at_ms: 7,
        };
        let bytes = envelope::encode_with_version(V1, &v1_release).unwrap();
        assert_eq!(decode_command(&bytes).unwrap(), release());
        let v1_snapshot = v1::Snapshot {
            next_claim: 3,
            applied_index: 9,
            ..Default::default()
        };
        let bytes = envelope::encode_with_version(V1, &v1_snapshot).unwrap();
        let upgraded = decode_snapshot(&bytes).unwrap();
        assert_eq!((upgraded.next_claim, upgraded.applied_index), (3, 9));
        assert!(upgraded.drills.is_empty());
        assert_eq!(upgraded.next_drill, 0);
    }

    fn release() -> current::Command {
        current::Command::ReleaseCapacity {
            id: "cap-1".into(),
            at_ms: 7,
        }
    }

    #[test]
    fn an_entry_round_trips_at_the_current_version() {
        let bytes = encode_command(&release()).unwrap();
        assert_eq!(bytes[0], 2, "version 2 leads, as a one-byte varint");
        assert_eq!(decode_command(&bytes).unwrap(), release());
        let snapshot = current::Snapshot {
            next_claim: 3,
            ..Default::default()
        };
        let bytes = encode_snapshot(&snapshot).unwrap();
        assert_eq!(decode_snapshot(&bytes).unwrap(), snapshot);
    }

    #[test]
    fn a_newer_version_says_to_upgrade_this_node_and_reads_nothing_more() {
        // The body is a valid v1 command: a newer version must not be read as one.
        let bytes = envelope::encode_with_version(CURRENT_VERSION + 1, &release()).unwrap();
        let err = decode_command(&bytes).unwrap_err();
        assert!(
            matches!(err, LogError::Newer { theirs, newest, .. } if theirs == CURRENT_VERSION + 1 && newest == CURRENT_VERSION),
            "{err:?}"
        );
        assert!(err.to_string().contains("Upgrade this node"), "{err}");
        let bytes = envelope::encode_with_version(u16::MAX, &current::Snapshot::default()).unwrap();
        let err = decode_snapshot(&bytes).unwrap_err();
        assert!(err.to_string().contains("snapshot"), "{err}");
        assert!(err.to_string().contains("Upgrade this node"), "{err}");
    }

    #[test]
    fn version_zero_garbage_and_trailing_bytes_are_refused() {
        let zero = envelope::encode_with_version(0, &release()).unwrap();
        assert!(matches!(
            decode_command(&zero),
            Err(LogError::Unknown { theirs: 0, .. })
        ));
        assert!(matches!(
            decode_command(&[]),
            Err(LogError::NoVersion { .. })
        ));
        assert!(matches!(
            decode_command(b"\x01garbage"),
            Err(LogError::Malformed { version: 1, .. })
        ));
        assert!(matches!(
            decode_command(b"\x02garbage"),
            Err(LogError::Malformed { version: 2, .. })
        ));
        let mut long = encode_command(&release()).unwrap();
        long.push(0);
        assert!(matches!(
            decode_command(&long),
            Err(LogError::Malformed {
                source: EnvelopeError::TrailingBytes { trailing: 1, .. },
                ..
            })
        ));
    }
}
