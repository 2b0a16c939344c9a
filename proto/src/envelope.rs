//! The versioned envelope that wraps every message Umbra puts on the wire, and its encoding.
//!
//! Encoding is postcard. Why postcard: its wire format is specified and documented
//! (<https://postcard.jamesmunns.com/wire-format>) and stable since 1.0, integers are compact
//! varints (a Raft term or a node id costs one or two bytes, not eight), it is serde-native so
//! wire types are plain `#[derive(Serialize, Deserialize)]` structs with no schema compiler or
//! generated code in the build, and decoding untrusted input returns errors instead of
//! panicking. The envelope puts the protocol version first, so a peer speaking another
//! version is recognised and refused before the body is interpreted.
//!
//! This module must not do I/O or know about streams; framing lives in `frame`.

use serde::{Serialize, de::DeserializeOwned};

/// Version of Umbra's wire protocol. Bump it for any change that is not purely additive
/// (a new enum variant at the end, a new message type); a peer at another version is
/// refused with [`EnvelopeError::VersionMismatch`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Why an envelope could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The peer speaks another protocol version. Upgrade the older side; mixed versions are
    /// not supported within a cluster.
    #[error(
        "peer speaks Umbra protocol version {theirs}, this build speaks {ours}; run the same Umbra version on every node"
    )]
    VersionMismatch {
        /// The version the frame carried.
        theirs: u16,
        /// [`PROTOCOL_VERSION`].
        ours: u16,
    },
    /// The frame is not a valid envelope for the expected message type.
    #[error("malformed message ({expected}): {source}")]
    Malformed {
        /// Name of the Rust type the receiver expected.
        expected: &'static str,
        /// What postcard found wrong.
        #[source]
        source: postcard::Error,
    },
    /// The body decoded but bytes were left over, so the frame was not what the sender
    /// meant it to be (or the two sides disagree on the message type).
    #[error("malformed message ({expected}): {trailing} unexpected trailing bytes")]
    TrailingBytes {
        /// Name of the Rust type the receiver expected.
        expected: &'static str,
        /// Number of bytes left after the body.
        trailing: usize,
    },
    /// The message could not be serialized (a programmer's mistake in a wire type, such as
    /// a map with non-string keys that postcard cannot express).
    #[error("could not encode message: {0}")]
    Encode(#[source] postcard::Error),
}

/// Encodes `body` as an envelope: the protocol version (varint) followed by the postcard
/// encoding of the body.
pub fn encode<T: Serialize + ?Sized>(body: &T) -> Result<Vec<u8>, EnvelopeError> {
    encode_with_version(PROTOCOL_VERSION, body)
}

/// Opens an envelope: checks the protocol version, then decodes the whole remainder as a `T`.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, EnvelopeError> {
    let (theirs, body) = split_version::<T>(frame)?;
    if theirs != PROTOCOL_VERSION {
        return Err(EnvelopeError::VersionMismatch {
            theirs,
            ours: PROTOCOL_VERSION,
        });
    }
    decode_body(body)
}

/// Encodes `body` under `version` instead of [`PROTOCOL_VERSION`]: for encodings that keep
/// their own version numbers in the same shape (the Raft log schema, [`crate::log`]), and for
/// tests that need a frame from "another version" of Umbra.
pub fn encode_with_version<T: Serialize + ?Sized>(
    version: u16,
    body: &T,
) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = postcard::to_stdvec(&version).map_err(EnvelopeError::Encode)?;
    out.extend_from_slice(&postcard::to_stdvec(body).map_err(EnvelopeError::Encode)?);
    Ok(out)
}

/// Reads the version an envelope starts with and returns it with the body's bytes, for a
/// caller that picks the body's type by version. `T` names the type expected, for errors.
pub fn split_version<T>(frame: &[u8]) -> Result<(u16, &[u8]), EnvelopeError> {
    postcard::take_from_bytes::<u16>(frame).map_err(|source| EnvelopeError::Malformed {
        expected: std::any::type_name::<T>(),
        source,
    })
}

/// Decodes the whole of `body` (what [`split_version`] left) as a `T`; bytes left over are
/// refused.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, EnvelopeError> {
    let expected = std::any::type_name::<T>();
    let (value, rest) = postcard::take_from_bytes::<T>(body)
        .map_err(|source| EnvelopeError::Malformed { expected, source })?;
    if !rest.is_empty() {
        return Err(EnvelopeError::TrailingBytes {
            expected,
            trailing: rest.len(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Probe {
        term: u64,
        note: String,
    }

    #[test]
    fn round_trip_keeps_the_body() {
        let probe = Probe {
            term: 7,
            note: "hello".into(),
        };
        let bytes = encode(&probe).unwrap();
        assert_eq!(decode::<Probe>(&bytes).unwrap(), probe);
    }

    #[test]
    fn other_version_is_refused_with_both_versions_named() {
        let bytes = encode_with_version(
            PROTOCOL_VERSION + 1,
            &Probe {
                term: 1,
                note: String::new(),
            },
        )
        .unwrap();
        let err = decode::<Probe>(&bytes).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::VersionMismatch { theirs, ours } if theirs == PROTOCOL_VERSION + 1 && ours == PROTOCOL_VERSION),
            "{err}"
        );
        assert!(err.to_string().contains("same Umbra version"));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&5u64).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u64>(&bytes),
            Err(EnvelopeError::TrailingBytes { trailing: 1, .. })
        ));
    }

    #[test]
    fn empty_frame_is_malformed() {
        assert!(matches!(
            decode::<u64>(&[]),
            Err(EnvelopeError::Malformed { .. })
        ));
    }
}
