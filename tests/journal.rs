//! The sled event journal, and recovery of a replicated entity from it.

use ractor_replicated::ddata::{
    DistributedData, Durability, Key, KeySelection, ReadConsistency, ReplicatorConfig, SledStore,
    WriteConsistency,
};
use ractor_replicated::error::{Record, StoreFailure};
use ractor_replicated::persistence::{
    recover_from_journal, DecodeState, EventEnvelope, EventHandler, EventMeta, Journal,
    LastWriterWins, MemoryJournal, ReplicatedLog, SledJournal, StoredSnapshot,
};
use ractor_replicated::{codec, sled_db, Error, GCounter, ReplicaId, VersionVector};
use test_support::{temp_dir, TempDir};

/// Appends names to a list: the order of events shows in the state.
struct Names;

impl EventHandler for Names {
    type Event = String;
    type State = Vec<String>;

    fn apply(&self, state: &mut Vec<String>, event: &String, _: EventMeta<'_>) {
        state.push(event.clone());
    }
}

fn two_replicas() -> (
    ReplicatedLog<Names, LastWriterWins>,
    Vec<EventEnvelope<String>>,
) {
    let mut a = ReplicatedLog::new(ReplicaId::new("a", 1), Names, LastWriterWins);
    let mut b = ReplicatedLog::new(ReplicaId::new("b", 1), Names, LastWriterWins);
    let from_a = a.apply_local(vec!["a1".into(), "a2".into()], 5);
    let from_b = b.apply_local(vec!["b1".into()], 3);
    for envelope in &from_b {
        a.receive(envelope.clone());
    }
    let later = a.apply_local(vec!["a3".into()], 9);
    // a's journal, in a's local order: its own events, then b's, then its own.
    let journaled = from_a.into_iter().chain(from_b).chain(later).collect();
    (a, journaled)
}

#[test]
fn appends_are_atomic_ordered_and_idempotent() {
    let dir = temp_dir("journal");
    let (_, events) = two_replicas();
    let mut journal = SledJournal::open(dir.path()).unwrap();
    assert_eq!(journal.append("cart-1", &events[..2]).unwrap(), 2);
    assert_eq!(
        journal.append("cart-1", &events).unwrap(),
        2,
        "the first two are known"
    );
    assert_eq!(journal.append("cart-1", &events).unwrap(), 0);
    assert_eq!(journal.highest_sequence("cart-1").unwrap(), 4);
    assert_eq!(journal.highest_sequence("cart-2").unwrap(), 0);

    let read: Vec<(u64, EventEnvelope<String>)> = journal.read_from("cart-1", 3).unwrap();
    let sequences: Vec<u64> = read.iter().map(|(s, _)| *s).collect();
    assert_eq!(sequences, [3, 4]);
    assert_eq!(read[0].1, events[2]);

    let mut peer = VersionVector::new();
    peer.increment(&ReplicaId::new("a", 1));
    let missing: Vec<EventEnvelope<String>> = journal.missing_for("cart-1", &peer).unwrap();
    let names: Vec<&str> = missing.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["a2", "b1", "a3"]);
}

#[test]
fn appends_stay_idempotent_out_of_order_and_after_reopening() {
    let dir = temp_dir("journal-gaps");
    let (_, events) = two_replicas();
    // events: a1, a2, b1, a3. a3 first, past a gap in a's sequence.
    {
        let mut journal = SledJournal::open(dir.path()).unwrap();
        assert_eq!(journal.append("cart-1", &events[3..]).unwrap(), 1);
        assert_eq!(journal.append("cart-1", &events[..1]).unwrap(), 1);
        journal.flush().unwrap();
    }
    // A new handle rebuilds its index from the tree.
    let mut journal = SledJournal::open(dir.path()).unwrap();
    let doubled: Vec<_> = events.iter().chain(&events).cloned().collect();
    assert_eq!(
        journal.append("cart-1", &doubled).unwrap(),
        2,
        "only a2 and b1 are new, once each"
    );
    assert_eq!(journal.append("cart-1", &events).unwrap(), 0);
    assert_eq!(journal.highest_sequence("cart-1").unwrap(), 4);
}

#[test]
fn an_entity_rebuilt_from_its_journal_has_the_same_state() {
    let dir = temp_dir("recovery");
    let (original, events) = two_replicas();
    {
        let mut journal = SledJournal::open(dir.path()).unwrap();
        journal.append("cart-1", &events).unwrap();
        journal.flush().unwrap();
    }
    let journal = SledJournal::open(dir.path()).unwrap();
    let mut recovered = ReplicatedLog::new(ReplicaId::new("a", 1), Names, LastWriterWins);
    for (_, envelope) in journal.read_from::<String>("cart-1", 1).unwrap() {
        recovered.receive(envelope);
    }
    assert_eq!(recovered.state(), original.state());
    assert_eq!(recovered.version(), original.version());
    // The recovered replica continues its own sequence instead of re-using it.
    let next = recovered.apply_local(vec!["a4".into()], 10);
    assert_eq!(next[0].origin_seq, 4);
}

/// Writes `bytes` under `key` in the journal tree of `persistence_id`, past
/// the journal's own checks.
fn write_raw(dir: &TempDir, persistence_id: &str, key: &[u8], bytes: &[u8]) {
    // Waits, as the journal does, for the lock of a handle just dropped.
    let db = sled_db::open(&sled_db::config(dir.path())).unwrap();
    let tree = db.open_tree(format!("journal/{persistence_id}")).unwrap();
    tree.insert(key, bytes).unwrap();
    db.flush().unwrap();
}

/// After a restart, the first append indexes what the journal holds from
/// its snapshot and the events after where the snapshot's recovery starts,
/// not from the whole journal: an event before that is not even read (here
/// it is garbage, which a whole read would refuse), and appends stay
/// idempotent on both sides of it.
#[test]
fn the_first_append_after_reopening_reads_only_past_the_snapshot() {
    let dir = temp_dir("journal-index");
    let (_, events) = two_replicas();
    // events: a1, a2, b1, a3; a snapshot of the prefix {a1, a2, b1},
    // whose recovery reads from a3 (#4).
    {
        let mut journal = SledJournal::open(dir.path()).unwrap();
        assert_eq!(journal.append("cart-1", &events).unwrap(), 4);
        let prefix: VersionVector = [(ReplicaId::new("a", 1), 2), (ReplicaId::new("b", 1), 1)]
            .into_iter()
            .collect();
        let snapshot = StoredSnapshot {
            version: prefix,
            events: 3,
            from_sequence: 4,
            sequence: 4,
            state: codec::encode(&vec!["a1", "a2", "b1"]).unwrap(),
        };
        journal.save_snapshot("cart-1", &snapshot).unwrap();
        journal.flush().unwrap();
    }
    let mut key = vec![0];
    key.extend(2u64.to_be_bytes());
    write_raw(&dir, "cart-1", &key, &[codec::WIRE_VERSION, 0xc1]);

    let mut journal = SledJournal::open(dir.path()).unwrap();
    assert_eq!(
        journal.append("cart-1", &events).unwrap(),
        0,
        "all four are known, two of them from the snapshot alone"
    );
    let mut b = ReplicatedLog::new(ReplicaId::new("b", 1), Names, LastWriterWins);
    b.receive_all(events.iter().cloned());
    let b2 = b.apply_local(vec!["b2".into()], 11);
    assert_eq!(journal.append("cart-1", &b2).unwrap(), 1);
    assert_eq!(journal.append("cart-1", &b2).unwrap(), 0);
    assert_eq!(journal.highest_sequence("cart-1").unwrap(), 5);
}

#[test]
fn malformed_journal_bytes_are_an_error_naming_the_event() {
    let dir = temp_dir("malformed");
    let mut key = vec![0];
    key.extend(1u64.to_be_bytes());
    write_raw(&dir, "cart-1", &key, &[codec::WIRE_VERSION, 0xc1]);
    let journal = SledJournal::open(dir.path()).unwrap();
    let err = journal.read_from::<String>("cart-1", 1).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Journal {
                persistence_id: Some(id),
                record: Some(Record::Event(1)),
                failure: StoreFailure::Unreadable(_),
                ..
            } if id == "cart-1"
        ),
        "{err:?}"
    );
}

#[test]
fn malformed_replication_messages_are_decode_errors() {
    let (_, events) = two_replicas();
    let bytes = codec::encode(&events[0]).unwrap();
    for cut in 0..bytes.len() {
        assert!(codec::decode::<EventEnvelope<String>>(&bytes[..cut]).is_err());
    }
    let mut flipped = bytes.clone();
    for i in 1..flipped.len() {
        flipped[i] ^= 0xff;
        // Must not panic; a flip may still decode to some other envelope.
        let _ = codec::decode::<EventEnvelope<String>>(&flipped);
        flipped[i] ^= 0xff;
    }
}

#[test]
fn snapshots_are_kept_replaced_and_read_back_after_reopening() {
    let dir = temp_dir("snapshots");
    let (_, events) = two_replicas();
    let mut prefix = VersionVector::new();
    prefix.increment(&ReplicaId::new("a", 1));
    prefix.increment(&ReplicaId::new("a", 1));
    let snapshot = |state: &[&str], events: u64, from_sequence: u64| StoredSnapshot {
        version: prefix.clone(),
        events,
        from_sequence,
        sequence: 4,
        state: codec::encode(&state).unwrap(),
    };
    {
        let mut journal = SledJournal::open(dir.path()).unwrap();
        journal.append("cart-1", &events).unwrap();
        assert_eq!(journal.load_snapshot("cart-1").unwrap(), None);
        // events: a1, a2, b1, a3; the prefix holds a1 and a2.
        let from = journal
            .first_sequence_outside("cart-1", &prefix, 1)
            .unwrap();
        assert_eq!(from, 3);
        journal
            .save_snapshot("cart-1", &snapshot(&["a1"], 1, 2))
            .unwrap();
        journal
            .save_snapshot("cart-1", &snapshot(&["a1", "a2"], 2, from))
            .unwrap();
        journal.flush().unwrap();
    }
    let journal = SledJournal::open(dir.path()).unwrap();
    assert_eq!(
        journal.load_snapshot("cart-1").unwrap(),
        Some(snapshot(&["a1", "a2"], 2, 3)),
        "the last one saved"
    );
    assert_eq!(journal.load_snapshot("cart-2").unwrap(), None);
    assert_eq!(
        journal.highest_sequence("cart-1").unwrap(),
        4,
        "a snapshot is not an event"
    );
    assert_eq!(journal.read_from::<String>("cart-1", 1).unwrap().len(), 4);
    let everything = events[3].version.clone();
    assert_eq!(
        journal
            .first_sequence_outside("cart-1", &everything, 1)
            .unwrap(),
        5,
        "past the end when the prefix holds every event"
    );
}

#[test]
fn a_malformed_snapshot_is_an_error_naming_it() {
    let dir = temp_dir("malformed-snapshot");
    write_raw(&dir, "cart-1", &[1], &[codec::WIRE_VERSION, 0x93, 0x01]);
    let journal = SledJournal::open(dir.path()).unwrap();
    let err = journal.load_snapshot("cart-1").unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Journal {
                persistence_id: Some(id),
                record: Some(Record::Snapshot),
                failure: StoreFailure::Unreadable(_),
                ..
            } if id == "cart-1"
        ),
        "{err:?}"
    );
    assert_eq!(
        journal.highest_sequence("cart-1").unwrap(),
        0,
        "events are apart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_store_and_a_journal_share_one_database() {
    let dir = temp_dir("shared-db");
    let (_, events) = two_replicas();
    let hits: Key<GCounter> = Key::new("hits");
    let open = || {
        let db = sled_db::open(&sled_db::config(dir.path()).cache_capacity(8 << 20)).unwrap();
        let store = SledStore::with_db(db.clone(), "shared").unwrap();
        let config = ReplicatorConfig::new("shared")
            .with_durability(Durability::new(store, KeySelection::All));
        (config, SledJournal::with_db(db))
    };
    for life in 0..2 {
        let (config, mut journal) = open();
        let dd = DistributedData::start(config).await.unwrap();
        dd.update(&hits, WriteConsistency::Local, |c, me| {
            c.apply(c.increment(me, 1))
        })
        .await
        .unwrap();
        journal
            .append("cart-1", &events[life * 2..life * 2 + 2])
            .unwrap();
        journal.flush().unwrap();
        dd.stop().await;
    }
    let (config, journal) = open();
    let dd = DistributedData::start(config).await.unwrap();
    let value = dd.get(&hits, ReadConsistency::Local).await.unwrap();
    assert_eq!(value.map(|c| c.value()), Some(2), "both lives' updates");
    let read: Vec<(u64, EventEnvelope<String>)> = journal.read_from("cart-1", 1).unwrap();
    let read: Vec<EventEnvelope<String>> = read.into_iter().map(|(_, e)| e).collect();
    assert_eq!(read, events, "both lives' events");
    dd.stop().await;
}

/// Deletes the events a snapshot covers from `journal` (opened again by
/// `reopen` to check what lasts), as retention does.
fn deleting_events_keeps_the_rest_and_the_numbering<J: Journal>(mut reopen: impl FnMut() -> J) {
    let (original, events) = two_replicas();
    // Journaled a1, a2, b1, a3; in the canonical order b1 (the earliest
    // timestamp), a1, a2, a3. The snapshot holds the first three: recovery
    // reads from a3, the 4th.
    let mut prefix = events[2].version.clone();
    prefix.increment(&ReplicaId::new("a", 1));
    prefix.increment(&ReplicaId::new("a", 1));
    let stored = StoredSnapshot {
        version: prefix,
        events: 3,
        from_sequence: 4,
        sequence: 4,
        state: codec::encode(&["b1", "a1", "a2"]).unwrap(),
    };
    {
        let mut journal = reopen();
        journal.append("cart-1", &events).unwrap();
        journal.save_snapshot("cart-1", &stored).unwrap();
        journal.flush().unwrap();
        assert_eq!(journal.deleted_before("cart-1").unwrap(), None);
        journal.delete_before("cart-1", 4).unwrap();
        journal.delete_before("cart-1", 2).unwrap();
        journal.flush().unwrap();
    }
    let mut journal = reopen();
    assert_eq!(
        journal.deleted_before("cart-1").unwrap(),
        Some(4),
        "kept, and never moved back"
    );
    let read: Vec<(u64, EventEnvelope<String>)> = journal.read_from("cart-1", 1).unwrap();
    let sequences: Vec<u64> = read.iter().map(|(s, _)| *s).collect();
    assert_eq!(sequences, [4], "the events before 4 are gone");
    assert_eq!(journal.append("cart-1", &events).unwrap(), 0, "still known");

    let mut log = ReplicatedLog::new(ReplicaId::new("a", 1), Names, LastWriterWins);
    let decode: DecodeState<Vec<String>> = |bytes| codec::decode(bytes);
    let recovered = recover_from_journal(&mut log, &journal, "cart-1", Some(decode)).unwrap();
    assert_eq!(recovered.snapshot_from, Some(4));
    assert_eq!(log.state(), original.state());
    assert_eq!(log.version(), original.version());
    assert!(log.history_forgotten());
    let mut without_snapshots = ReplicatedLog::new(ReplicaId::new("a", 1), Names, LastWriterWins);
    assert!(
        recover_from_journal(&mut without_snapshots, &journal, "cart-1", None).is_err(),
        "the events alone no longer give the state"
    );

    // Deleting every event keeps the numbering going.
    journal.delete_before("cart-1", 5).unwrap();
    journal.flush().unwrap();
    drop(journal);
    let mut journal = reopen();
    assert!(journal.read_from::<String>("cart-1", 1).unwrap().is_empty());
    assert_eq!(journal.highest_sequence("cart-1").unwrap(), 4);
    let next = original.stamp(vec!["a4".into()], 10);
    assert_eq!(journal.append("cart-1", &next).unwrap(), 1);
    let read: Vec<(u64, EventEnvelope<String>)> = journal.read_from("cart-1", 1).unwrap();
    assert_eq!(read[0].0, 5);
}

#[test]
fn a_sled_journal_deletes_events_a_snapshot_covers() {
    let dir = temp_dir("delete-before");
    deleting_events_keeps_the_rest_and_the_numbering(|| SledJournal::open(dir.path()).unwrap());
}

#[test]
fn a_memory_journal_deletes_events_a_snapshot_covers() {
    let journal = MemoryJournal::new();
    deleting_events_keeps_the_rest_and_the_numbering(|| journal.clone());
}
