//! A small key-value `StateMachine` used by the node binary, the tests and the benchmark until
//! the orchestrator's own replicated state replaces it. It also keeps an order-sensitive digest
//! of everything applied, so tests can check that members applied the same commands in the
//! same order. Commands and answers are postcard-encoded.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::state_machine::{RestoreError, SnapshotEncoder, StateMachine};

/// A write to the key-value store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// A read of the key-value store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvQuery {
    Get {
        key: String,
    },
    /// Digest and count of everything applied so far.
    Digest,
}

/// The answer to a command or a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvAnswer {
    /// A write was applied at this log index; `previous` is the value it replaced.
    Written {
        index: u64,
        previous: Option<Vec<u8>>,
    },
    Value(Option<Vec<u8>>),
    Digest(KvDigest),
    /// The bytes were not a command or query of this machine.
    Malformed(String),
}

/// An order-sensitive summary of the applied commands: equal digests at equal counts mean the
/// same commands were applied in the same order (up to FNV-1a collisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KvDigest {
    pub commands_applied: u64,
    pub last_index: u64,
    pub fnv1a: u64,
    pub keys: u64,
}

/// Values are shared, immutable byte strings: capturing the state for a snapshot copies the
/// map's pointers, not its hundreds of MiB of data, and they encode as postcard byte strings
/// (the same bytes as a sequence of `u8`, written in one call rather than one per byte).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KvStateMachine {
    entries: BTreeMap<String, Bytes>,
    digest: KvDigest,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    if hash == 0 {
        hash = FNV_OFFSET;
    }
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

fn encode(answer: &KvAnswer) -> Vec<u8> {
    postcard::to_stdvec(answer).expect("answers always encode")
}

impl KvStateMachine {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).map(|value| &value[..])
    }

    pub fn digest(&self) -> KvDigest {
        self.digest
    }
}

impl StateMachine for KvStateMachine {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        let answer = match postcard::from_bytes::<KvCommand>(command) {
            Ok(KvCommand::Put { key, value }) => {
                let previous = self.entries.insert(key, value.into());
                KvAnswer::Written {
                    index,
                    previous: previous.map(Vec::from),
                }
            }
            Ok(KvCommand::Delete { key }) => {
                let previous = self.entries.remove(&key);
                KvAnswer::Written {
                    index,
                    previous: previous.map(Vec::from),
                }
            }
            Err(error) => KvAnswer::Malformed(format!("not a key-value command: {error}")),
        };
        self.digest.commands_applied += 1;
        self.digest.last_index = index;
        self.digest.fnv1a = fnv1a(fnv1a(self.digest.fnv1a, &index.to_le_bytes()), command);
        self.digest.keys = self.entries.len() as u64;
        encode(&answer)
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        let answer = match postcard::from_bytes::<KvQuery>(query) {
            Ok(KvQuery::Get { key }) => KvAnswer::Value(self.get(&key).map(<[u8]>::to_vec)),
            Ok(KvQuery::Digest) => KvAnswer::Digest(self.digest),
            Err(error) => KvAnswer::Malformed(format!("not a key-value query: {error}")),
        };
        encode(&answer)
    }

    fn capture(&self) -> SnapshotEncoder {
        let captured = self.clone();
        Box::new(move || postcard::to_stdvec(&captured).expect("state always encodes"))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        *self = postcard::from_bytes(snapshot).map_err(|e| RestoreError(e.to_string()))?;
        Ok(())
    }
}

impl KvCommand {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("commands always encode")
    }
}

impl KvQuery {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("queries always encode")
    }
}

impl KvAnswer {
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Vec<u8> {
        KvCommand::Put {
            key: key.into(),
            value: value.into(),
        }
        .encode()
    }

    #[test]
    fn table_of_commands_and_answers() {
        let mut kv = KvStateMachine::new();
        let cases: Vec<(Vec<u8>, KvAnswer)> = vec![
            (
                put("a", "1"),
                KvAnswer::Written {
                    index: 1,
                    previous: None,
                },
            ),
            (
                put("a", "2"),
                KvAnswer::Written {
                    index: 2,
                    previous: Some(b"1".to_vec()),
                },
            ),
            (
                KvCommand::Delete { key: "a".into() }.encode(),
                KvAnswer::Written {
                    index: 3,
                    previous: Some(b"2".to_vec()),
                },
            ),
            (
                KvCommand::Delete { key: "zz".into() }.encode(),
                KvAnswer::Written {
                    index: 4,
                    previous: None,
                },
            ),
        ];
        for (i, (command, expected)) in cases.into_iter().enumerate() {
            let got = KvAnswer::decode(&kv.apply(i as u64 + 1, &command)).unwrap();
            assert_eq!(got, expected, "command {i}");
        }
        let garbage = KvAnswer::decode(&kv.apply(5, &[0xff, 0xff, 0xff])).unwrap();
        assert!(matches!(garbage, KvAnswer::Malformed(_)), "{garbage:?}");
        assert_eq!(kv.digest().commands_applied, 5);
    }

    /// The state as builds before shared values encoded it.
    #[derive(Serialize)]
    struct KvStateMachineOfVecs {
        entries: BTreeMap<String, Vec<u8>>,
        digest: KvDigest,
    }

    #[test]
    fn snapshots_encode_as_before_values_were_shared() {
        let mut kv = KvStateMachine::new();
        kv.apply(1, &put("a", "one"));
        kv.apply(2, &put("b", ""));
        let before = KvStateMachineOfVecs {
            entries: [("a", "one"), ("b", "")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
                .collect(),
            digest: kv.digest(),
        };
        let bytes = postcard::to_stdvec(&before).unwrap();
        assert_eq!(kv.snapshot(), bytes);
        let mut restored = KvStateMachine::new();
        restored.restore(&bytes).unwrap();
        assert_eq!(restored.get("a"), Some(&b"one"[..]));
    }

    #[test]
    fn digest_depends_on_order_and_survives_snapshots() {
        let mut ab = KvStateMachine::new();
        ab.apply(1, &put("a", "1"));
        ab.apply(2, &put("b", "1"));
        let mut ba = KvStateMachine::new();
        ba.apply(1, &put("b", "1"));
        ba.apply(2, &put("a", "1"));
        assert_ne!(ab.digest(), ba.digest());

        let mut restored = KvStateMachine::new();
        restored.restore(&ab.snapshot()).unwrap();
        assert_eq!(restored.digest(), ab.digest());
        assert_eq!(restored.get("a"), Some(&b"1"[..]));
        assert!(restored.restore(b"\xff\xff").is_err());
    }

    fn command_strategy() -> impl proptest::strategy::Strategy<Value = KvCommand> {
        use proptest::prelude::*;
        prop_oneof![
            ("[a-d]{1,2}", proptest::collection::vec(any::<u8>(), 0..8))
                .prop_map(|(key, value)| KvCommand::Put { key, value }),
            "[a-d]{1,2}".prop_map(|key| KvCommand::Delete { key }),
        ]
    }

    proptest::proptest! {
        /// A machine restored from a snapshot is indistinguishable from the original: same
        /// digest, same answers, and it stays so as more commands apply.
        #[test]
        fn snapshot_then_restore_is_indistinguishable(
            prefix in proptest::collection::vec(command_strategy(), 0..40),
            suffix in proptest::collection::vec(command_strategy(), 0..40),
        ) {
            let mut original = KvStateMachine::new();
            for (i, command) in prefix.iter().enumerate() {
                original.apply(i as u64 + 1, &command.encode());
            }
            let mut restored = KvStateMachine::new();
            restored.restore(&original.snapshot()).unwrap();
            for (i, command) in suffix.iter().enumerate() {
                let index = (prefix.len() + i) as u64 + 1;
                let bytes = command.encode();
                proptest::prop_assert_eq!(original.apply(index, &bytes), restored.apply(index, &bytes));
            }
            proptest::prop_assert_eq!(original.digest(), restored.digest());
            for key in ["a", "b", "c", "d", "ab"] {
                let query = KvQuery::Get { key: key.into() }.encode();
                proptest::prop_assert_eq!(original.query(&query), restored.query(&query));
            }
        }

        /// Arbitrary bytes as a command or query get an answer, never a panic, and a command
        /// still counts in the digest (it is in the log forever).
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut kv = KvStateMachine::new();
            let answer = KvAnswer::decode(&kv.apply(1, &bytes)).unwrap();
            let answered = matches!(answer, KvAnswer::Written { .. } | KvAnswer::Malformed(_));
            proptest::prop_assert!(answered, "unexpected answer {:?}", answer);
            proptest::prop_assert_eq!(kv.digest().commands_applied, 1);
            let _ = KvAnswer::decode(&kv.query(&bytes)).unwrap();
            let _ = KvAnswer::decode(&bytes);
            let _ = crate::transport::decode_message(&bytes);
        }
    }
}
