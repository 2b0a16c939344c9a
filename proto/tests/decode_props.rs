//! Property tests of decoding untrusted bytes: the envelope and every wire type `proto`
//! defines (the Raft log schema's entries and snapshots too), alone and behind the frame
//! codec. Any input yields a value or a typed error, never a panic; encoded values come back
//! equal; another version is always refused.

use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::Decoder;
use umbra_proto::envelope::{self, EnvelopeError};
use umbra_proto::{
    ClientError, ClientErrorKind, ClientOutcome, ClientRequest, ClientRequestBody, ClientResponse,
    FrameCodec, LeaderHint, MembershipChange, PROTOCOL_VERSION, RaftMessage, StreamKind,
};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Socket addresses as serde carries them: IP and port (an IPv6 scope id or flow label is
/// not part of serde's encoding of `SocketAddr`, so it is not generated).
fn addr() -> impl Strategy<Value = std::net::SocketAddr> {
    (any::<std::net::IpAddr>(), any::<u16>()).prop_map(std::net::SocketAddr::from)
}

fn request() -> impl Strategy<Value = ClientRequest> {
    let body = prop_oneof![
        bytes(64).prop_map(|command| ClientRequestBody::Propose { command }),
        bytes(64).prop_map(|query| ClientRequestBody::Read { query }),
        Just(ClientRequestBody::LeaderInfo),
        (any::<u64>(), addr()).prop_map(|(node_id, addr)| {
            ClientRequestBody::ChangeMembership(MembershipChange::AddNode { node_id, addr })
        }),
        any::<u64>().prop_map(|node_id| {
            ClientRequestBody::ChangeMembership(MembershipChange::RemoveNode { node_id })
        }),
    ];
    (any::<u64>(), body).prop_map(|(id, body)| ClientRequest { id, body })
}

fn hint() -> impl Strategy<Value = LeaderHint> {
    (
        any::<Option<u64>>(),
        proptest::option::of(addr()),
        any::<u64>(),
    )
        .prop_map(|(leader_id, leader_addr, term)| LeaderHint {
            leader_id,
            leader_addr,
            term,
        })
}

fn response() -> impl Strategy<Value = ClientResponse> {
    let kind = prop_oneof![
        Just(ClientErrorKind::Timeout),
        Just(ClientErrorKind::Dropped),
        Just(ClientErrorKind::Invalid),
        Just(ClientErrorKind::ShuttingDown),
        Just(ClientErrorKind::Internal),
    ];
    let outcome = prop_oneof![
        bytes(64).prop_map(|result| ClientOutcome::Applied { result }),
        bytes(64).prop_map(|result| ClientOutcome::ReadResult { result }),
        hint().prop_map(ClientOutcome::Leader),
        hint().prop_map(ClientOutcome::NotLeader),
        (kind, ".{0,40}")
            .prop_map(|(kind, message)| ClientOutcome::Failed(ClientError { kind, message })),
    ];
    (any::<u64>(), outcome).prop_map(|(id, outcome)| ClientResponse { id, outcome })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(input in bytes(512)) {
        let _ = envelope::decode::<ClientRequest>(&input);
        let _ = envelope::decode::<ClientResponse>(&input);
        let _ = envelope::decode::<RaftMessage>(&input);
        let _ = envelope::decode::<StreamKind>(&input);
        // The Raft log's entries and snapshots: read back from disk, maybe written by another
        // version, maybe damaged.
        let _ = umbra_proto::log::decode_command(&input);
        let _ = umbra_proto::log::decode_snapshot(&input);
        let _ = umbra_proto::log::check_entry_version(&input);
    }

    #[test]
    fn arbitrary_bytes_through_the_frame_codec_never_panic(input in bytes(2048), chunk in 1usize..128) {
        let mut codec = FrameCodec::new(512);
        let mut buf = BytesMut::new();
        'feed: for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        let _ = envelope::decode::<ClientRequest>(&frame);
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }

    #[test]
    fn wire_types_round_trip(req in request(), resp in response(), from in any::<u64>(), to in any::<u64>(), message in bytes(256)) {
        prop_assert_eq!(envelope::decode::<ClientRequest>(&envelope::encode(&req).unwrap()).unwrap(), req);
        prop_assert_eq!(envelope::decode::<ClientResponse>(&envelope::encode(&resp).unwrap()).unwrap(), resp);
        let raft = RaftMessage { from, to, message };
        prop_assert_eq!(envelope::decode::<RaftMessage>(&envelope::encode(&raft).unwrap()).unwrap(), raft);
    }

    #[test]
    fn any_other_version_is_refused(version in any::<u16>(), req in request()) {
        prop_assume!(version != PROTOCOL_VERSION);
        let frame = envelope::encode_with_version(version, &req).unwrap();
        let refused = matches!(
            envelope::decode::<ClientRequest>(&frame),
            Err(EnvelopeError::VersionMismatch { theirs, ours }) if theirs == version && ours == PROTOCOL_VERSION
        );
        prop_assert!(refused);
    }

    /// Flipping any single byte of a valid frame gives a typed error or some value, never a
    /// panic; and a frame cut short is never mistaken for a complete one.
    #[test]
    fn corrupted_or_cut_frames_are_handled(req in request(), index in any::<usize>(), flip in 1u8..=255) {
        let mut frame = envelope::encode(&req).unwrap();
        let cut = index % frame.len();
        prop_assert!(envelope::decode::<ClientRequest>(&frame[..cut]).is_err());
        let at = index % frame.len();
        frame[at] ^= flip;
        let _ = envelope::decode::<ClientRequest>(&frame);
    }
}
