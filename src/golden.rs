//! Pinned formats: the bytes that leave a node or reach its disk, compared
//! with fixture files committed under `tests/fixtures/formats/v<N>/`, where
//! `N` is [`WIRE_VERSION`].
//!
//! A dependency update or a refactoring that changes any of them fails
//! here, instead of silently leaving nodes of two builds unable to read each
//! other's messages or a node unable to read its own journal. A deliberate
//! change is a version bump: a new fixture directory written with
//! `UPDATE_FORMAT_FIXTURES=1`, and the old one kept and still read (see
//! docs/protocol.md, "Format versions").

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::causal::VersionVector;
use crate::codec::{self, WIRE_VERSION};
use crate::persistence::EventEnvelope;
use crate::persistence::StoredSnapshot;
use crate::ReplicaId;

/// The fixture file `name` of the current version.
fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/formats")
        .join(format!("v{WIRE_VERSION}"))
        .join(name)
}

/// Checks `text` against the fixture `name`, or writes the fixture if
/// `UPDATE_FORMAT_FIXTURES` is set.
pub(crate) fn pinned_text(name: &str, text: &str) {
    let path = fixture_path(name);
    if std::env::var_os("UPDATE_FORMAT_FIXTURES").is_some() {
        std::fs::create_dir_all(path.parent().expect("a directory")).expect("fixtures writable");
        std::fs::write(&path, text).expect("fixture writable");
        return;
    }
    let fixture = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "{}: {err} (UPDATE_FORMAT_FIXTURES=1 writes it)",
            path.display()
        )
    });
    assert!(
        fixture == text,
        "the format of {name} changed: what one build writes, the other cannot read. \
         If that is deliberate, bump codec::WIRE_VERSION, \
         keep reading the old format and write new fixtures.\nfixture:\n{fixture}\nnow:\n{text}"
    );
}

/// Checks `bytes` against the fixture `<name>.hex`.
pub(crate) fn pinned_bytes(name: &str, bytes: &[u8]) {
    pinned_text(&format!("{name}.hex"), &hex(bytes));
}

/// Checks the codec encoding of `value` against the fixture `<name>.hex`,
/// and that the fixture decodes to a value that encodes the same.
pub(crate) fn pinned_encoding<T: Serialize + DeserializeOwned>(name: &str, value: &T) {
    let bytes = codec::encode(value).expect("encodes");
    pinned_bytes(name, &bytes);
    let fixture =
        unhex(&std::fs::read_to_string(fixture_path(&format!("{name}.hex"))).expect("written"));
    let decoded: T = codec::decode(&fixture).unwrap_or_else(|err| panic!("{name}: {err}"));
    assert_eq!(
        codec::encode(&decoded).expect("encodes"),
        fixture,
        "{name} decodes to another value"
    );
}

/// Lowercase hex, 32 bytes to a line.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.chunks(32).map(|line| hex_line(line) + "\n").collect()
}

/// Lowercase hex on one line.
pub(crate) fn hex_line(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// The bytes of [`hex`]'s output (whitespace ignored).
pub(crate) fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ascii");
            u8::from_str_radix(pair, 16).expect("hex digits")
        })
        .collect()
}

// Sample identities, versions, events and snapshots the fixtures hold.

/// A fixed wall clock for the registers.
pub(crate) fn at(millis: i64) -> impl Fn(Option<i64>) -> i64 {
    move |_| millis
}

/// A replica.
pub(crate) fn a() -> ReplicaId {
    ReplicaId::new("node-a", 7)
}

/// Another, with an incarnation too large for a small integer.
pub(crate) fn b() -> ReplicaId {
    ReplicaId::new("node-b", 1 << 40)
}

/// The version of these counts.
pub(crate) fn version(counts: &[(ReplicaId, u64)]) -> VersionVector {
    counts.iter().cloned().collect()
}

/// Two journaled events of two origins, the second after the first.
pub(crate) fn events() -> Vec<EventEnvelope<String>> {
    vec![
        EventEnvelope {
            origin: a(),
            origin_seq: 1,
            version: version(&[(a(), 1)]),
            timestamp: 1_700_000_000_000,
            event: "first".into(),
        },
        EventEnvelope {
            origin: b(),
            origin_seq: 1,
            version: version(&[(a(), 1), (b(), 1)]),
            timestamp: -1,
            event: "second".into(),
        },
    ]
}

/// A snapshot after the first of [`events`].
pub(crate) fn snapshot() -> StoredSnapshot {
    StoredSnapshot {
        version: version(&[(a(), 1)]),
        events: 1,
        from_sequence: 2,
        sequence: 2,
        state: codec::encode(&("state", 1u64)).expect("encodes"),
    }
}

mod tests {
    use super::*;
    use crate::causal::{CausalContext, Dot};
    use crate::crdt::{OpBased, ReplicatedData};
    use crate::ddata::wire::{
        bucket_of, digest_of, key_hash, Envelope, Lifetime, PeerMessage, WireChange, WireDelta,
        WireEntry, WireValue,
    };
    use crate::{
        Flag, GCounter, GSet, LWWMap, LWWRegister, MVRegister, ORMap, ORMultiMap, ORSet, PNCounter,
        PNCounterMap,
    };

    #[test]
    fn causal_identities_and_versions() {
        pinned_encoding("replica_id", &a());
        pinned_encoding(
            "dot",
            &Dot {
                replica: b(),
                counter: 3,
            },
        );
        pinned_encoding("version_vector", &version(&[(a(), 2), (b(), 9)]));
        let mut context = CausalContext::new();
        for counter in [1, 2, 4] {
            context.insert(Dot {
                replica: a(),
                counter,
            });
        }
        pinned_encoding("causal_context", &context);
    }

    #[test]
    fn crdt_states_and_operations() {
        let mut counter = GCounter::new();
        let dot = counter.increment(&a(), 5);
        pinned_encoding("gcounter_op", &dot);
        counter.apply(dot);
        counter.apply(counter.increment(&b(), 2));
        pinned_encoding("gcounter", &counter);
        // Retired incarnations: the counts alone no longer suffice.
        let mut retired = counter.clone();
        retired.apply(retired.increment(&ReplicaId::new("node-a", 9), 1));
        retired.retire("node-a", 9);
        pinned_encoding("gcounter_retired", &retired);

        let mut pn = PNCounter::new();
        let op = pn.change(&a(), -3);
        pinned_encoding("pn_counter_op", &op);
        pn.apply(op);
        pn.apply(pn.increment(&b(), 4));
        pinned_encoding("pn_counter", &pn);

        let mut gset = GSet::<String>::new();
        gset.apply(gset.insert("g".into()));
        pinned_encoding("gset", &gset);

        let mut flag = Flag::new();
        flag.apply(flag.switch_on());
        pinned_encoding("flag", &flag);

        let mut lww = LWWRegister::<String>::new();
        let write = lww.set_with_clock(&a(), "v".into(), &at(1_700_000_000_000));
        pinned_encoding("lww_register_op", &write);
        lww.apply(write);
        pinned_encoding("lww_register", &lww);

        let mut mv = MVRegister::<String>::new();
        let write = mv.write(&a(), "m".into());
        pinned_encoding("mv_register_op", &write);
        mv.apply(write);
        mv.apply(mv.write(&b(), "n".into()));
        pinned_encoding("mv_register", &mv);

        let mut set = ORSet::<String>::new();
        let add = set.add(&a(), "x".into());
        pinned_encoding("or_set_add", &add);
        set.apply(add);
        set.apply(set.add(&b(), "y".into()));
        let remove = set.remove("x");
        pinned_encoding("or_set_remove", &remove);
        set.apply(remove);
        pinned_encoding("or_set", &set);
        let mut retired = set.clone();
        retired.retire("node-a", 8);
        pinned_encoding("or_set_retired", &retired);

        let mut map = ORMap::<String, PNCounter>::new();
        let update = map.update(&a(), "k".into(), |counter, writer| {
            counter.apply(counter.change(writer, 2));
        });
        pinned_encoding("or_map_update", &update);
        map.apply(update);
        map.apply(map.update(&b(), "j".into(), |counter, writer| {
            counter.apply(counter.change(writer, -1));
        }));
        let remove = map.remove(&"j".to_string());
        pinned_encoding("or_map_remove", &remove);
        map.apply(remove);
        pinned_encoding("or_map", &map);

        let mut lww_map = LWWMap::<String, String>::new();
        lww_map.apply(lww_map.insert_with_clock(&a(), "k".into(), "v".into(), &at(5)));
        pinned_encoding("lww_map", &lww_map);

        let mut multi = ORMultiMap::<String, String>::new();
        multi.apply(multi.add_binding(&a(), "k".into(), "v".into()));
        multi.apply(multi.add_binding(&b(), "k".into(), "w".into()));
        pinned_encoding("or_multi_map", &multi);

        let mut counters = PNCounterMap::<String>::new();
        counters.apply(counters.increment(&a(), "k".into(), 4));
        counters.apply(counters.decrement(&b(), "k".into(), 1));
        pinned_encoding("pn_counter_map", &counters);
    }

    #[test]
    fn distributed_data_messages() {
        let live = WireValue::Live {
            tag: "ORSet<String>".into(),
            state: vec![1, 2, 3],
        };
        let messages = [
            (
                "entries",
                PeerMessage::Entries {
                    epoch: 11,
                    entries: vec![
                        WireEntry {
                            key: "cart".into(),
                            value: live.clone(),
                            seq: 4,
                            lifetime: None,
                        },
                        WireEntry {
                            key: "gone".into(),
                            value: WireValue::Deleted,
                            seq: 0,
                            lifetime: Some(Lifetime {
                                created: 1_600_000_000_000,
                                used: 1_700_000_000_000,
                            }),
                        },
                    ],
                },
            ),
            (
                "write",
                PeerMessage::Write {
                    request: 5,
                    epoch: 11,
                    delta: WireDelta {
                        key: "cart".into(),
                        prev: 1,
                        seq: 2,
                        change: WireChange::Ops {
                            tag: "ORSet<String>".into(),
                            ops: vec![vec![9, 8].into()],
                        },
                        lifetime: Some(Lifetime {
                            created: 1_600_000_000_000,
                            used: 1_700_000_000_000,
                        }),
                    },
                },
            ),
            ("write_ack", PeerMessage::WriteAck { request: 5 }),
            (
                "read",
                PeerMessage::Read {
                    request: 6,
                    key: "cart".into(),
                },
            ),
            (
                "read_reply",
                PeerMessage::ReadReply {
                    request: 6,
                    entry: Some(WireEntry {
                        key: "cart".into(),
                        value: live.clone(),
                        seq: 1,
                        lifetime: None,
                    }),
                },
            ),
            (
                "summary",
                PeerMessage::Summary {
                    groups: vec![0, u64::MAX, 77],
                },
            ),
            (
                "buckets",
                PeerMessage::Buckets {
                    hashes: vec![(0, 1), (4095, u64::MAX)],
                },
            ),
            (
                "digests",
                PeerMessage::Digests {
                    buckets: vec![3],
                    digests: vec![("cart".into(), 42)],
                },
            ),
            (
                "request",
                PeerMessage::Request {
                    keys: vec!["cart".into()],
                    buckets: vec![7, 8],
                },
            ),
            (
                "deltas",
                PeerMessage::Deltas {
                    epoch: 12,
                    deltas: vec![WireDelta {
                        key: "flag".into(),
                        prev: 0,
                        seq: 1,
                        change: WireChange::State(live.clone()),
                        lifetime: None,
                    }],
                },
            ),
            (
                "delta_nack",
                PeerMessage::DeltaNack {
                    keys: vec!["cart".into()],
                },
            ),
            ("hello", PeerMessage::Hello { replica: b() }),
            (
                "retire",
                PeerMessage::Retire {
                    node: "node-a".into(),
                    below: 8,
                    digest: 0x0fed_cba9_8765_4321,
                },
            ),
            (
                "retiring",
                PeerMessage::Retiring {
                    node: "node-a".into(),
                    below: 8,
                    answer: 3,
                    part: 1,
                    parts: 2,
                    alike: None,
                    digests: vec![("cart".into(), 0x0123_4567_89ab_cdef)],
                },
            ),
        ];
        for (name, message) in messages {
            let envelope = Envelope {
                from: "node-a".into(),
                message,
            };
            pinned_encoding(&format!("ddata_{name}"), &envelope);
        }
        pinned_text(
            "ddata_variant.txt",
            &format!("{}\n", crate::ddata::wire::MESSAGE_VARIANT),
        );
    }

    /// Digests, buckets and bucket hashes must agree between nodes of two
    /// builds, or anti-entropy finds differences everywhere.
    #[test]
    fn hashes_and_buckets() {
        let mut text = String::new();
        for state in [&b""[..], b"state", &[0xA5; 100]] {
            let _ = writeln!(
                text,
                "digest_of({}) = {:#018x}",
                hex_line(state),
                digest_of(state)
            );
        }
        for key in ["", "cart", "user/42", "ключ"] {
            let _ = writeln!(text, "bucket_of({key:?}) = {}", bucket_of(key));
            let _ = writeln!(text, "key_hash({key:?}, 7) = {:#018x}", key_hash(key, 7));
        }
        pinned_text("hashes.txt", &text);
    }

    #[test]
    fn journal_records() {
        pinned_encoding("event_envelope", &events()[1]);
        pinned_encoding("stored_snapshot", &snapshot());
    }

    /// An entity's state in a snapshot: fields by name.
    #[test]
    fn named_encoding() {
        #[derive(serde::Serialize)]
        struct Balance {
            owner: String,
            cents: i64,
            history: Vec<(u64, Option<String>)>,
        }
        let bytes = codec::encode_named(&Balance {
            owner: "alice".into(),
            cents: -250,
            history: vec![(1, None), (2, Some("refund".into()))],
        })
        .expect("encodes");
        pinned_bytes("named_state", &bytes);
    }

    #[cfg(feature = "sled")]
    mod on_disk {
        use super::*;
        use crate::ddata::{DurableEntry, DurableStore, SledStore};
        use crate::persistence::{Journal, SledJournal};
        use test_support::TempDir;

        /// Every tree of `db` but sled's default one, with its entries.
        fn dump(db: &sled::Db) -> String {
            let mut text = String::new();
            let mut names: Vec<_> = db
                .tree_names()
                .into_iter()
                .filter(|name| name != b"__sled__default")
                .collect();
            names.sort();
            for name in names {
                let _ = writeln!(text, "tree {}", String::from_utf8_lossy(&name));
                for entry in db.open_tree(&name).expect("opens").iter() {
                    let (key, value) = entry.expect("reads");
                    let _ = writeln!(text, "{} {}", hex_line(&key), hex_line(&value));
                }
            }
            text
        }

        /// A database holding what `dump` wrote.
        fn restore(dir: &TempDir, text: &str) -> sled::Db {
            let db = crate::sled_db::open(&crate::sled_db::config(dir.path())).expect("opens");
            let mut tree = None;
            for line in text.lines() {
                if let Some(name) = line.strip_prefix("tree ") {
                    tree = Some(db.open_tree(name).expect("opens"));
                } else if let Some((key, value)) = line.split_once(' ') {
                    let tree = tree.as_ref().expect("a tree first");
                    tree.insert(unhex(key), unhex(value)).expect("writes");
                }
            }
            db
        }

        fn fixture(name: &str) -> String {
            std::fs::read_to_string(fixture_path(name)).expect("written")
        }

        /// Writes the sample events and snapshot of `account-1` into a sled
        /// journal, deleting the events before `delete_before` if given,
        /// pins the database as `name`, and opens the journal the fixture
        /// holds.
        fn pinned_journal(name: &str, delete_before: Option<u64>) -> (TempDir, SledJournal) {
            let dir = test_support::temp_dir("golden-journal");
            let db = crate::sled_db::open(&crate::sled_db::config(dir.path())).expect("opens");
            let mut journal = SledJournal::with_db(db.clone());
            journal.append("account-1", &events()).expect("appends");
            journal
                .save_snapshot("account-1", &snapshot())
                .expect("saves");
            journal.flush().expect("flushes");
            if let Some(before) = delete_before {
                journal.delete_before("account-1", before).expect("deletes");
                journal.flush().expect("flushes");
            }
            pinned_text(name, &dump(&db));

            let dir = test_support::temp_dir("golden-journal-read");
            let journal = SledJournal::with_db(restore(&dir, &fixture(name)));
            (dir, journal)
        }

        #[test]
        fn a_sled_journal() {
            let (_dir, journal) = pinned_journal("sled_journal.txt", None);
            let read: Vec<(u64, EventEnvelope<String>)> =
                journal.read_from("account-1", 1).expect("reads");
            assert_eq!(read, (1..).zip(events()).collect::<Vec<_>>());
            assert_eq!(
                journal.load_snapshot("account-1").expect("reads"),
                Some(snapshot())
            );
        }

        #[test]
        fn a_sled_journal_that_deleted_events() {
            let (_dir, journal) = pinned_journal("sled_journal_deleted.txt", Some(2));
            let read: Vec<(u64, EventEnvelope<String>)> =
                journal.read_from("account-1", 1).expect("reads");
            assert_eq!(read, (1..).zip(events()).skip(1).collect::<Vec<_>>());
            assert_eq!(journal.deleted_before("account-1").expect("reads"), Some(2));
            assert_eq!(
                journal.highest_sequence("account-1").expect("reads"),
                u64::try_from(events().len()).expect("few")
            );
        }

        #[test]
        fn a_sled_store() {
            let live = WireValue::Live {
                tag: "GCounter".into(),
                state: codec::encode(&{
                    let mut counter = GCounter::new();
                    counter.apply(counter.increment(&a(), 3));
                    counter
                })
                .expect("encodes"),
            };
            let dir = test_support::temp_dir("golden-store");
            let db = crate::sled_db::open(&crate::sled_db::config(dir.path())).expect("opens");
            let mut store = SledStore::with_db(db.clone(), "node-a").expect("opens");
            let hits = DurableEntry {
                value: live.clone(),
                lifetime: None,
            };
            let gone = DurableEntry {
                value: WireValue::Deleted,
                lifetime: Some(Lifetime {
                    created: 1_600_000_000_000,
                    used: 1_700_000_000_000,
                }),
            };
            store.set_incarnation(7).expect("writes");
            store.store("hits", &hits).expect("writes");
            store.store("gone", &gone).expect("writes");
            store.flush().expect("flushes");
            pinned_text("sled_store.txt", &dump(&db));

            let read = |name: &str| {
                let dir = test_support::temp_dir("golden-store-read");
                let mut store =
                    SledStore::with_db(restore(&dir, &fixture(name)), "node-a").expect("opens");
                let recovered = store.load().expect("reads");
                assert_eq!(recovered.last_incarnation, Some(7));
                recovered.entries.into_iter().collect::<Vec<_>>()
            };
            assert_eq!(
                read("sled_store.txt"),
                vec![
                    ("gone".to_string(), gone),
                    ("hits".to_string(), hits.clone())
                ]
            );
            // Version 1 entries had no time of last use.
            let untimed = DurableEntry {
                value: WireValue::Deleted,
                lifetime: None,
            };
            assert_eq!(
                read("sled_store_v1.txt"),
                vec![("gone".to_string(), untimed), ("hits".to_string(), hits)]
            );
        }
    }
}
