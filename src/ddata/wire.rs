//! The messages Replicators exchange, and the size budget that keeps every
//! message far below ractor_cluster's frame limit (a frame one byte over the
//! limit kills the whole session).
//!
//! Every message travels as [`codec::encode`](crate::codec::encode) of an
//! [`Envelope`]; each value inside it is itself a codec encoding, tagged with
//! its type so a node can decode a key it has never used.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::causal::ReplicaId;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The ractor variant name every Replicator message travels under. Peer
/// messages are ractor casts whose arguments are one codec-encoded [`Envelope`].
/// Version 2 added deltas, version 3 hashed anti-entropy, version 4 the time
/// of a key's last use and deltas numbered in one sequence per node; nodes of
/// different versions do not understand each other's messages.
pub const MESSAGE_VARIANT: &str = "ractor_replicated.ddata.v5";

/// A stable 64-bit hash of a value's encoding. Two replicas whose digests of a
/// key agree hold the same state (up to a 2⁻⁶⁴ collision).
pub type Digest = u64;

/// The digest every tombstone has.
pub const TOMBSTONE_DIGEST: Digest = u64::MAX;

/// Bytes of framing counted per entry on top of its key, tag and state: the
/// MessagePack headers of the entry, generously rounded up.
pub const ENTRY_OVERHEAD: usize = 32;

/// Bytes counted per message on top of its entries.
pub const MESSAGE_OVERHEAD: usize = 64;

/// One message from a Replicator, with the node name it comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending node's name, which identifies it as a peer.
    pub from: String,
    /// What it says.
    pub message: PeerMessage,
}

/// What Replicators say to each other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// States to merge: an answer to a [`Request`](Self::Request), the
    /// contents of buckets the receiver showed to be empty (see
    /// [`Buckets`](Self::Buckets)), or a read repair.
    Entries {
        /// The sender's delta epoch (see [`Deltas`](Self::Deltas)).
        epoch: u64,
        /// The states, at most one per key. On the wire each type tag is
        /// written once per message (see [`packed_entries`]).
        #[serde(with = "packed_entries")]
        entries: Vec<WireEntry>,
    },
    /// A write above `Local` consistency, to apply and acknowledge: the
    /// written key's next delta in the writer's sequence. A receiver that
    /// lacks an earlier delta answers [`DeltaNack`](Self::DeltaNack) instead,
    /// and gets the write again carrying the whole state.
    Write {
        /// The writer's request number, echoed in the acknowledgement.
        request: u64,
        /// The writer's delta epoch (see [`Deltas`](Self::Deltas)).
        epoch: u64,
        /// The write.
        delta: WireDelta,
    },
    /// The state of a [`Write`](Self::Write) is merged here.
    WriteAck {
        /// The writer's request number.
        request: u64,
    },
    /// Asks for one key's state, for a read above `Local` consistency.
    Read {
        /// The reader's request number, echoed in the answer.
        request: u64,
        /// The key.
        key: String,
    },
    /// The answer to a [`Read`](Self::Read): the key's state, or `None` if absent.
    ReadReply {
        /// The reader's request number.
        request: u64,
        /// The state, if this replica has the key.
        entry: Option<WireEntry>,
    },
    /// Anti-entropy, first step: the hash of each of the sender's
    /// [`GROUPS`] groups of buckets. A receiver whose hash of a group differs
    /// answers with [`Buckets`](Self::Buckets).
    Summary {
        /// One hash per group, [`GROUPS`] of them.
        groups: Vec<u64>,
    },
    /// Anti-entropy, second step: the hashes of the sender's buckets in the
    /// groups found to differ. The receiver reconciles each bucket whose hash
    /// differs: it sends the whole bucket if the sender's is empty (hash 0),
    /// asks for it if its own is empty, and otherwise sends its
    /// [`Digests`](Self::Digests) of the bucket.
    Buckets {
        /// Bucket numbers (below [`BUCKETS`]) with their hash.
        hashes: Vec<(u16, u64)>,
    },
    /// Anti-entropy, third and fourth step: key digests. The receiver asks for
    /// every listed key it lacks or holds in another state (unless it holds
    /// the tombstone). If `buckets` is not empty, it also answers with its own
    /// digests of those buckets, leaving out keys listed here with the same
    /// digest.
    Digests {
        /// Buckets whose digests the receiver should send back.
        buckets: Vec<u16>,
        /// Key names with the digest of their state.
        digests: Vec<(String, Digest)>,
    },
    /// Asks for the states of keys and of whole buckets.
    Request {
        /// Key names, found to differ or missing.
        keys: Vec<String>,
        /// Buckets in which the sender holds no key.
        buckets: Vec<u16>,
    },
    /// Eager push: what changed in keys updated on the sender since its last
    /// push, each change numbered in the sender's sequence for its key.
    Deltas {
        /// The sender's delta epoch, new at every start: numbers of another
        /// epoch say nothing about these.
        epoch: u64,
        /// At most one per key.
        deltas: Vec<WireDelta>,
    },
    /// The receiver lacks a delta that came before those it got for these
    /// keys, so it cannot apply them: the sender answers with their whole
    /// states, numbered.
    DeltaNack {
        /// The key names.
        keys: Vec<String>,
    },
    /// The replica id the sender writes under, told to a peer that came up:
    /// every earlier incarnation of its node is dead, and may be retired
    /// (see [`Retire`](Self::Retire)).
    Hello {
        /// The sender's replica id.
        replica: ReplicaId,
    },
    /// Retirement, first step: asks about every key that mentions an
    /// incarnation of `node` below `below` (an entry, a dot, a retirement
    /// of `node`). A replica that has those keys' states from every member
    /// holds all those dead incarnations wrote, and retires them.
    Retire {
        /// The node whose earlier incarnations are dead.
        node: String,
        /// Its incarnation now.
        below: u64,
        /// The digest of the asker's list of those keys with their
        /// digests: a member whose list is the same answers in one line.
        digest: Digest,
    },
    /// Retirement, second step: the digests of the keys a
    /// [`Retire`](Self::Retire) asked about, in `parts` messages (at least
    /// one, empty if no key mentions them), or, if the member's list is the
    /// asker's, that alone. The asker requests the states whose digests
    /// differ from its own ([`Request`](Self::Request)); the member has
    /// answered once every part and every such state arrived.
    Retiring {
        /// The node asked about.
        node: String,
        /// The bound asked about.
        below: u64,
        /// Which answer of the sender's this is part of: an answer counts
        /// once all its parts arrived, not parts of two answers.
        answer: u64,
        /// This message's number, from 0.
        part: u32,
        /// How many messages the answer takes.
        parts: u32,
        /// The asker's digest, if the member's list is the same (then
        /// `digests` is empty).
        alike: Option<Digest>,
        /// Key names with the digest of their state.
        digests: Vec<(String, Digest)>,
    },
}

/// One key's change in a [`PeerMessage::Deltas`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireDelta {
    /// The key's name.
    pub key: String,
    /// The number of the sender's previous change of this key (0 for its
    /// first in this epoch, or since the key expired there). A receiver
    /// applies operations only if this is the last number it applied.
    pub prev: u64,
    /// The change's number in the sender's sequence, one for all its keys
    /// (growing within each epoch). A whole state covers every number of
    /// its key up to its own.
    pub seq: u64,
    /// The change.
    pub change: WireChange,
    /// When the key began and was last used, as far as the sender knows:
    /// only for a key that expires or a tombstone that is collected.
    pub lifetime: Option<Lifetime>,
}

/// When a key that expires began its life and was last used, in wall-clock
/// milliseconds since the Unix epoch (see [`Expiry`](super::Expiry)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifetime {
    /// When the key was written while absent, on the replica that did. A
    /// key that expired and is written again begins a new life, which
    /// replaces the old one where a replica still holds it.
    pub created: u64,
    /// When the key was last written, deleted or read, on any replica.
    pub used: u64,
}

impl Lifetime {
    /// What two replicas know together: the later creation, the later use.
    pub fn join(self, other: Self) -> Self {
        Self {
            created: self.created.max(other.created),
            used: self.used.max(other.used),
        }
    }
}

/// A change carried by a [`WireDelta`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireChange {
    /// Operations to apply in order, each a codec encoding of the type's
    /// operation.
    Ops {
        /// The type tag from the [`TypeRegistry`](super::TypeRegistry).
        tag: String,
        /// The encoded operations.
        ops: Vec<ByteBuf>,
    },
    /// The sender's whole state of the key.
    State(WireValue),
}

impl WireDelta {
    /// An upper bound of the delta's share of a message's encoded size.
    pub fn budget(&self) -> usize {
        let change = match &self.change {
            WireChange::Ops { tag, ops } => {
                tag.len() + ops.iter().map(|op| op.len() + OP_OVERHEAD).sum::<usize>()
            }
            WireChange::State(value) => entry_budget("", value),
        };
        self.key.len() + change + 4 * SEQ_BUDGET + ENTRY_OVERHEAD
    }
}

/// Bytes counted for a sequence number or a time.
const SEQ_BUDGET: usize = 9;

/// Bytes of framing counted per operation inside a [`WireChange::Ops`].
pub const OP_OVERHEAD: usize = 5;

/// One key's state on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireEntry {
    /// The key's name.
    pub key: String,
    /// Its state.
    pub value: WireValue,
    /// The number of the sender's last push of this key (0 if none): the
    /// state holds every delta the sender numbered up to it.
    pub seq: u64,
    /// When the key began and was last used (see [`WireDelta::lifetime`]).
    pub lifetime: Option<Lifetime>,
}

/// The encoding of the entries of a [`PeerMessage::Entries`], by columns:
/// the distinct type tags once, then the keys, the index of each one's tag
/// (none for a tombstone), the states, the numbers and the lifetimes. Catching up on many small values then costs little more than the
/// values themselves.
pub mod packed_entries {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    use super::{Lifetime, WireEntry, WireValue};

    /// Writes `entries` packed.
    pub fn serialize<S: Serializer>(
        entries: &[WireEntry],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut tags: Vec<&str> = Vec::new();
        let mut tag_of = Vec::with_capacity(entries.len());
        let mut states = Vec::with_capacity(entries.len());
        for entry in entries {
            match &entry.value {
                WireValue::Live { tag, state } => {
                    let index = match tags.iter().position(|known| known == tag) {
                        Some(index) => index,
                        None => {
                            tags.push(tag);
                            tags.len() - 1
                        }
                    };
                    tag_of.push(Some(index));
                    states.push(Bytes::new(state));
                }
                WireValue::Deleted => {
                    tag_of.push(None);
                    states.push(Bytes::new(&[]));
                }
            }
        }
        let keys: Vec<&str> = entries.iter().map(|entry| entry.key.as_str()).collect();
        let seqs: Vec<u64> = entries.iter().map(|entry| entry.seq).collect();
        let lifetimes: Vec<Option<Lifetime>> = entries.iter().map(|entry| entry.lifetime).collect();
        (tags, keys, tag_of, states, seqs, lifetimes).serialize(serializer)
    }

    /// Reads packed entries; columns of different lengths or a tag index
    /// out of range fail the message.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<WireEntry>, D::Error> {
        type Columns = (
            Vec<String>,
            Vec<String>,
            Vec<Option<usize>>,
            Vec<ByteBuf>,
            Vec<u64>,
            Vec<Option<Lifetime>>,
        );
        let (tags, keys, tag_of, states, seqs, lifetimes): Columns =
            Deserialize::deserialize(deserializer)?;
        let rows = keys.len();
        if tag_of.len() != rows
            || states.len() != rows
            || seqs.len() != rows
            || lifetimes.len() != rows
        {
            return Err(D::Error::custom("entry columns of different lengths"));
        }
        keys.into_iter()
            .zip(tag_of)
            .zip(states)
            .zip(seqs)
            .zip(lifetimes)
            .map(|((((key, tag), state), seq), lifetime)| {
                let value = match tag {
                    None => WireValue::Deleted,
                    Some(index) => WireValue::Live {
                        tag: tags
                            .get(index)
                            .cloned()
                            .ok_or_else(|| D::Error::custom("a type tag index out of range"))?,
                        state: state.into_vec(),
                    },
                };
                Ok(WireEntry {
                    key,
                    value,
                    seq,
                    lifetime,
                })
            })
            .collect()
    }
}

/// A key's state on the wire: a tagged encoding, or the tombstone of a deleted key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireValue {
    /// A live value.
    Live {
        /// The type tag from the [`TypeRegistry`](super::TypeRegistry).
        tag: String,
        /// The value's codec encoding.
        #[serde(with = "serde_bytes")]
        state: Vec<u8>,
    },
    /// The key was deleted; this wins every merge.
    Deleted,
}

impl WireValue {
    /// The size of the encoded state (0 for a tombstone).
    pub fn encoded_len(&self) -> usize {
        match self {
            WireValue::Live { state, .. } => state.len(),
            WireValue::Deleted => 0,
        }
    }
}

impl PeerMessage {
    /// An upper bound of the message's encoded size, envelope included.
    pub fn budget(&self) -> usize {
        let entries = match self {
            Self::Entries { entries, .. } => entries.iter().map(WireEntry::budget).sum(),
            Self::Write { delta, .. } => delta.budget(),
            Self::ReadReply { entry, .. } => entry.as_ref().map_or(0, WireEntry::budget),
            Self::Read { key, .. } => key.len(),
            Self::Digests { buckets, digests } => {
                BUCKET_BUDGET * buckets.len()
                    + digests
                        .iter()
                        .map(|(key, _)| digest_budget(key))
                        .sum::<usize>()
            }
            Self::Request { keys, buckets } => {
                BUCKET_BUDGET * buckets.len()
                    + keys.iter().map(|key| digest_budget(key)).sum::<usize>()
            }
            Self::DeltaNack { keys } => keys.iter().map(|key| digest_budget(key)).sum(),
            Self::Hello { replica } => digest_budget(replica.node()) + 2 * HASH_BUDGET,
            Self::Retire { node, .. } => digest_budget(node) + HASH_BUDGET,
            Self::Retiring { node, digests, .. } => {
                digest_budget(node)
                    + 4 * HASH_BUDGET
                    + digests
                        .iter()
                        .map(|(key, _)| digest_budget(key))
                        .sum::<usize>()
            }
            Self::Summary { groups } => HASH_BUDGET * groups.len(),
            // Each pair also has a one-byte array header.
            Self::Buckets { hashes } => (BUCKET_BUDGET + HASH_BUDGET + 1) * hashes.len(),
            Self::Deltas { deltas, .. } => deltas.iter().map(WireDelta::budget).sum(),
            Self::WriteAck { .. } => 0,
        };
        MESSAGE_OVERHEAD + entries
    }
}

impl WireEntry {
    /// An upper bound of the entry's share of a message's encoded size.
    pub fn budget(&self) -> usize {
        entry_budget(&self.key, &self.value) + 3 * SEQ_BUDGET
    }
}

/// An upper bound of an entry's share of a message's encoded size.
pub fn entry_budget(key: &str, value: &WireValue) -> usize {
    let value_bytes = match value {
        WireValue::Live { tag, state } => tag.len() + state.len(),
        WireValue::Deleted => 0,
    };
    key.len() + value_bytes + ENTRY_OVERHEAD
}

/// An upper bound of a digest line's share of a message's encoded size.
pub fn digest_budget(key: &str) -> usize {
    key.len() + 16
}

/// The digest of a live value's encoding.
pub fn digest_of(state: &[u8]) -> Digest {
    // A live value must never share the tombstone's digest, or a tombstone and
    // that value would be taken for equal and the deletion would not spread.
    xxh3_64(state).min(TOMBSTONE_DIGEST - 1)
}

/// How many buckets anti-entropy hashes the key space into. Part of the
/// protocol: both sides of an exchange must agree.
pub const BUCKETS: usize = 4096;

/// How many groups of consecutive buckets a [`PeerMessage::Summary`] hashes.
pub const GROUPS: usize = 64;

/// Buckets per group.
pub const BUCKETS_PER_GROUP: usize = BUCKETS / GROUPS;

/// Bytes counted for a bucket number.
pub const BUCKET_BUDGET: usize = 3;

/// Bytes counted for a 64-bit hash.
pub const HASH_BUDGET: usize = 9;

/// The bucket of `key`. Stable across nodes and builds.
pub fn bucket_of(key: &str) -> u16 {
    // The top 12 bits of the hash: BUCKETS is 2^12.
    u16::try_from(xxh3_64(key.as_bytes()) >> 52).unwrap_or(0)
}

/// What a key in the state with `digest` adds (by XOR) to its bucket's hash.
/// Seeding with the digest makes equal digests of different keys differ, so
/// two keys cannot cancel out.
pub fn key_hash(key: &str, digest: Digest) -> u64 {
    xxh3_64_with_seed(key.as_bytes(), digest)
}

/// Splits `items` into consecutive groups whose budgets each stay within
/// `limit` bytes (a group always takes at least one item).
pub fn split_by_budget<T>(
    items: Vec<T>,
    limit: usize,
    budget: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    let mut used = MESSAGE_OVERHEAD;
    for item in items {
        let cost = budget(&item);
        if !current.is_empty() && used + cost > limit {
            groups.push(std::mem::take(&mut current));
            used = MESSAGE_OVERHEAD;
        }
        used += cost;
        current.push(item);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn entry(key: &str, state_len: usize) -> WireEntry {
        WireEntry {
            key: key.to_string(),
            value: WireValue::Live {
                tag: "ORSet<String>".to_string(),
                state: vec![0xA5; state_len],
            },
            seq: u64::MAX,
            lifetime: Some(Lifetime {
                created: u64::MAX,
                used: u64::MAX,
            }),
        }
    }

    /// Checks that `message`'s budget bounds its encoding in an envelope.
    fn assert_within_budget(message: PeerMessage) {
        let budget = message.budget();
        let envelope = Envelope {
            from: "some-node-name".into(),
            message,
        };
        let encoded = codec::encode(&envelope).unwrap().len();
        assert!(
            encoded <= budget,
            "{encoded} bytes encoded, budget {budget}"
        );
    }

    #[test]
    fn the_budget_bounds_the_encoded_size_of_a_message() {
        for (count, state_len) in [(1, 0), (1, 70_000), (50, 10), (200, 300), (3, 1 << 17)] {
            let entries: Vec<WireEntry> = (0..count)
                .map(|i| entry(&format!("key-{i}"), state_len))
                .collect();
            assert_within_budget(PeerMessage::Entries {
                epoch: u64::MAX,
                entries,
            });
        }
    }

    #[test]
    fn the_budget_bounds_the_encoded_size_of_a_delta_message() {
        let op = |len: usize| ByteBuf::from(vec![0x5A; len]);
        let deltas = vec![
            WireDelta {
                key: "cart".into(),
                prev: u64::MAX - 1,
                seq: u64::MAX,
                change: WireChange::Ops {
                    tag: "ORSet<String>".into(),
                    ops: vec![op(0), op(30), op(300), op(70_000)],
                },
                lifetime: Some(Lifetime {
                    created: u64::MAX,
                    used: u64::MAX,
                }),
            },
            WireDelta {
                key: "gone".into(),
                prev: 0,
                seq: 1,
                change: WireChange::State(WireValue::Deleted),
                lifetime: None,
            },
            WireDelta {
                key: "k".repeat(300),
                prev: u64::MAX,
                seq: 1 << 40,
                change: WireChange::State(entry("x", 1 << 17).value),
                lifetime: Some(Lifetime {
                    created: 1 << 40,
                    used: 1 << 41,
                }),
            },
        ];
        let message = PeerMessage::Deltas {
            epoch: u64::MAX,
            deltas,
        };
        assert_within_budget(message);
    }

    #[test]
    fn digest_lines_stay_within_their_budget() {
        let digests: Vec<(String, Digest)> =
            (0..500).map(|i| (format!("k{i}"), u64::MAX - 1)).collect();
        assert_within_budget(PeerMessage::Digests {
            buckets: Vec::new(),
            digests,
        });
    }

    #[test]
    fn anti_entropy_messages_stay_within_their_budget() {
        let top = u16::try_from(BUCKETS - 1).unwrap();
        for message in [
            PeerMessage::Summary {
                groups: vec![u64::MAX; GROUPS],
            },
            PeerMessage::Buckets {
                hashes: vec![(top, u64::MAX); BUCKETS],
            },
            PeerMessage::Request {
                keys: vec!["k".repeat(40); 30],
                buckets: vec![top; BUCKETS],
            },
            PeerMessage::Digests {
                buckets: vec![top; BUCKETS],
                digests: vec![("k".repeat(20), u64::MAX - 1); 100],
            },
        ] {
            assert_within_budget(message);
        }
    }

    #[test]
    fn packed_entries_round_trip_and_reject_a_bad_tag_index() {
        let mut entries: Vec<WireEntry> = (0..5).map(|i| entry(&format!("k{i}"), i)).collect();
        entries[1].value = WireValue::Deleted;
        entries[2].lifetime = None;
        entries[3].value = WireValue::Live {
            tag: "GCounter".into(),
            state: vec![1, 2, 3],
        };
        let message = Envelope {
            from: "n".into(),
            message: PeerMessage::Entries { epoch: 9, entries },
        };
        let bytes = codec::encode(&message).unwrap();
        assert_eq!(codec::decode::<Envelope>(&bytes).unwrap(), message);

        type Columns = (
            Vec<String>,
            Vec<String>,
            Vec<Option<u32>>,
            Vec<ByteBuf>,
            Vec<u64>,
            Vec<Option<u64>>,
        );
        #[derive(Serialize)]
        enum Forged {
            Entries(u64, Columns),
        }
        let forged = |index: u32, seqs: Vec<u64>| {
            let columns = (
                vec!["GCounter".to_string()],
                vec!["k".to_string()],
                vec![Some(index)],
                vec![ByteBuf::new()],
                seqs,
                vec![None],
            );
            codec::encode(&("n", Forged::Entries(1, columns))).unwrap()
        };
        assert!(codec::decode::<Envelope>(&forged(0, vec![0])).is_ok());
        assert!(codec::decode::<Envelope>(&forged(7, vec![0])).is_err());
        assert!(codec::decode::<Envelope>(&forged(0, vec![0, 1])).is_err());
    }

    #[test]
    fn split_by_budget_keeps_every_group_under_the_limit_and_the_order() {
        let items: Vec<usize> = (0..100).map(|i| (i * 37) % 500).collect();
        let groups = split_by_budget(items.clone(), 2_000, |n| *n);
        assert_eq!(groups.concat(), items);
        for group in &groups {
            let used: usize = MESSAGE_OVERHEAD + group.iter().sum::<usize>();
            assert!(group.len() == 1 || used <= 2_000);
        }
    }

    /// That a key's bucket is the same on every node and build is pinned
    /// with the other formats (`golden::tests::hashes_and_buckets`).
    #[test]
    fn buckets_are_in_range_and_all_used() {
        let used: std::collections::BTreeSet<u16> =
            (0..100_000).map(|i| bucket_of(&format!("k{i}"))).collect();
        assert_eq!(used.len(), BUCKETS);
        assert!(used.iter().all(|b| usize::from(*b) < BUCKETS));
    }

    #[test]
    fn a_live_digest_never_equals_the_tombstone_digest() {
        assert_ne!(digest_of(b"whatever"), TOMBSTONE_DIGEST);
    }
}
