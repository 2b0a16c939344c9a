//! Length-delimited framing with a maximum frame size: a 4-byte big-endian length, then that
//! many bytes (one envelope). Built on tokio-util's `LengthDelimitedCodec`; this module adds
//! typed errors (oversized, truncated) so a misbehaving peer is reported precisely.
//!
//! This module must not interpret frame contents (that is `envelope`) and must never panic on
//! input: every byte sequence yields frames, "need more bytes", or a [`FrameError`].

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec, LengthDelimitedCodecError};

/// Default maximum frame size: 16 MiB. Large enough for a Raft append batch or a snapshot
/// chunk of the orchestrator's state (which is kilobytes to a few megabytes), small enough
/// that a forged length cannot make a node allocate without bound.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Size of the length prefix in bytes (big-endian u32, `LengthDelimitedCodec`'s default).
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the configured maximum.
    #[error(
        "frame of {announced_bytes} bytes exceeds the maximum of {max_bytes} bytes; raise max_frame_bytes on both sides if this is legitimate"
    )]
    TooLarge {
        /// Length the prefix announced (or the sender tried to write).
        announced_bytes: u64,
        /// The configured maximum.
        max_bytes: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error(
        "stream ended in the middle of a frame ({buffered_bytes} bytes of an incomplete frame)"
    )]
    Truncated {
        /// Bytes of the incomplete frame that had arrived.
        buffered_bytes: usize,
    },
    /// The underlying stream failed.
    #[error("stream I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A codec for length-prefixed frames with a maximum size, yielding and taking whole frames
/// as [`Bytes`].
#[derive(Debug, Clone)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max_frame_bytes: usize,
    /// The inner codec has consumed a length prefix and waits for the body; tracked here
    /// because an end of stream right after a prefix leaves the buffer empty, yet the frame
    /// is truncated.
    mid_frame: bool,
}

impl FrameCodec {
    /// A codec that refuses frames longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .length_field_length(LENGTH_PREFIX_BYTES)
            .max_frame_length(max_frame_bytes)
            .new_codec();
        Self {
            inner,
            max_frame_bytes,
            mid_frame: false,
        }
    }

    /// The maximum frame size this codec accepts and emits.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let buffered_before = src.len();
        match self.inner.decode(src) {
            Ok(Some(frame)) => {
                self.mid_frame = false;
                Ok(Some(frame.freeze()))
            }
            Ok(None) => {
                self.mid_frame |= src.len() < buffered_before;
                Ok(None)
            }
            // The inner codec refuses an oversized head without consuming it, so the
            // announced length can still be read for the error message.
            Err(err)
                if err
                    .get_ref()
                    .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
                    && src.len() >= LENGTH_PREFIX_BYTES =>
            {
                Err(FrameError::TooLarge {
                    announced_bytes: u64::from((&src[..LENGTH_PREFIX_BYTES]).get_u32()),
                    max_bytes: self.max_frame_bytes,
                })
            }
            Err(err) => Err(FrameError::Io(err)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && !self.mid_frame => Ok(None),
            None => Err(FrameError::Truncated {
                buffered_bytes: src.len(),
            }),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        if frame.len() > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                announced_bytes: frame.len() as u64,
                max_bytes: self.max_frame_bytes,
            });
        }
        Ok(self.inner.encode(frame, dst)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framed(payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        FrameCodec::new(1024)
            .encode(Bytes::copy_from_slice(payload), &mut buf)
            .unwrap();
        buf
    }

    #[test]
    fn oversized_announcement_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        let err = FrameCodec::new(1024).decode(&mut buf).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::TooLarge {
                    announced_bytes: 0xffff_ffff,
                    max_bytes: 1024
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn oversized_frame_is_refused_on_send() {
        let mut buf = BytesMut::new();
        let err = FrameCodec::new(8)
            .encode(Bytes::from_static(&[0; 9]), &mut buf)
            .unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLarge {
                announced_bytes: 9,
                max_bytes: 8
            }
        ));
        assert!(buf.is_empty(), "nothing may be written for a refused frame");
    }

    #[test]
    fn truncated_frame_at_eof_is_an_error() {
        let mut buf = framed(b"hello world");
        buf.truncate(buf.len() - 3);
        let err = FrameCodec::new(1024).decode_eof(&mut buf).unwrap_err();
        assert!(
            matches!(err, FrameError::Truncated { buffered_bytes: 8 }),
            "{err}"
        );
    }

    #[test]
    fn clean_eof_is_the_end_of_the_stream() {
        let mut buf = BytesMut::new();
        assert!(
            FrameCodec::new(1024)
                .decode_eof(&mut buf)
                .unwrap()
                .is_none()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Any byte sequence, fed in any chunking, yields frames, "need more" or a typed
        /// error; never a panic, and never a frame above the maximum.
        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            chunk in 1usize..64,
        ) {
            let mut codec = FrameCodec::new(256);
            let mut buf = BytesMut::new();
            'feed: for piece in bytes.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(frame)) => prop_assert!(frame.len() <= 256),
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
            let _ = codec.decode_eof(&mut buf);
        }

        /// Frames written by the encoder come back byte-for-byte, whatever the chunking.
        #[test]
        fn encoded_frames_round_trip(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..16),
            chunk in 1usize..97,
        ) {
            let mut codec = FrameCodec::new(300);
            let mut wire = BytesMut::new();
            for frame in &frames {
                codec.encode(Bytes::copy_from_slice(frame), &mut wire).unwrap();
            }
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(frame) = codec.decode(&mut buf).unwrap() {
                    decoded.push(frame.to_vec());
                }
            }
            prop_assert!(codec.decode_eof(&mut buf).unwrap().is_none());
            prop_assert_eq!(decoded, frames);
        }

        /// Cutting a valid stream anywhere inside a frame is reported as truncation.
        #[test]
        fn any_cut_inside_a_frame_is_truncation(payload in proptest::collection::vec(any::<u8>(), 1..200), cut in 1usize..1000) {
            let full = framed(&payload);
            let cut = cut % full.len();
            prop_assume!(cut > 0);
            let mut buf = BytesMut::from(&full[..cut]);
            let is_truncated = matches!(FrameCodec::new(1024).decode_eof(&mut buf), Err(FrameError::Truncated { .. }));
            prop_assert!(is_truncated);
        }
    }
}
