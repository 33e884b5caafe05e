//! What journal retention buys: the journal, the start and the catch-up of
//! a replica that lost its disk, against the number of events, keeping
//! every event or deleting those every replica passed. Prints JSON.
//!
//! `cargo run --release --example retention_bench`
//! (`RETENTION_BENCH_EVENTS=10000,1000000` for other sizes)
//!
//! One replica of one persistence id, driven through its sans-IO core
//! ([`EntityCore`]) with a [`SledJournal`] in the system's temporary
//! directory, snapshotting every 1,000 events and listing only its own node,
//! so that it alone has to pass a snapshot. For each size it records
//! commands of 100-byte entries (100 per journal flush, as group commit
//! does) with an anti-entropy tick every 5,000 (when retention runs),
//! and reports the events the
//! journal still holds, sled's size on disk, the time a start takes (from
//! the snapshot either way), and the bytes it sends a peer that starts
//! empty (its snapshot, or every event).

use std::path::PathBuf;
use std::time::Instant;

use ractor_replicated::codec;
use ractor_replicated::persistence::{
    Effect, EntityCore, EntityIo, EventApplied, EventHandler, EventMeta, Journal, LastWriterWins,
    ReplicatedEventSourcedActor, ReplicatedLog, ReplicationContext, ReplicationMessage, Retention,
    SledJournal, Snapshots,
};
use ractor_replicated::{sled_db, ReplicaId, VersionVector};
use serde_json::{json, Value};

const ENTITY: &str = "tally";
const SNAPSHOT_EVERY: usize = 1_000;

/// A count of entries and their total length.
struct Tally;

impl EventHandler for Tally {
    type Event = String;
    type State = (u64, u64);

    fn apply(&self, state: &mut (u64, u64), entry: &String, _: EventMeta<'_>) {
        state.0 += 1;
        state.1 += entry.len() as u64;
    }
}

impl ReplicatedEventSourcedActor for Tally {
    type Command = String;
    type Reply = ();

    fn handle_command(
        &self,
        _: &(u64, u64),
        entry: String,
        _: ReplicationContext<'_>,
    ) -> Effect<String, ()> {
        Effect::persist([entry])
    }
}

/// Collects what the core sends; flushes run when the bench says so.
#[derive(Default)]
struct Outbox {
    sent: Vec<ReplicationMessage<String>>,
}

impl EntityIo<String> for Outbox {
    fn send(&mut self, _: &str, message: ReplicationMessage<String>) -> bool {
        self.sent.push(message);
        true
    }

    fn schedule_flush(&mut self) -> bool {
        true
    }

    fn publishing(&self) -> bool {
        false
    }

    fn publish(&mut self, _: Vec<EventApplied<String>>) {}
}

type Core = EntityCore<Tally, LastWriterWins, SledJournal>;

fn start(journal: SledJournal, retention: Retention) -> Core {
    let log = ReplicatedLog::new(ReplicaId::new("a", 1), Tally, LastWriterWins);
    let snapshots = Snapshots::every(SNAPSHOT_EVERY).with_retention(retention);
    EntityCore::recover(ENTITY, log, journal, Some(snapshots), 4 << 20)
        .expect("the journal reads")
        .with_replicas(["a"])
}

fn run(events: usize, retention: Retention) -> Value {
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "ractor_replicated-retention-{events}-{retention:?}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let db = sled_db::open(&sled_db::config(&dir)).expect("sled opens");
    let mut core = start(SledJournal::with_db(db.clone()), retention);
    let mut io = Outbox::default();
    let entry = "x".repeat(100);
    for n in 0..events {
        core.command(&mut io, entry.clone(), 0, |_| {})
            .expect("a command");
        if n % 100 == 99 {
            core.scheduled_flush(&mut io).expect("a flush");
        }
        // Anti-entropy ticks come along while the commands do.
        if n % 5_000 == 4_999 {
            core.tick(&mut io).expect("a tick");
        }
    }
    core.scheduled_flush(&mut io).expect("a flush");
    // The first tick makes the last snapshot durable, the second deletes.
    core.tick(&mut io).expect("a tick");
    core.scheduled_flush(&mut io).expect("a flush");
    core.tick(&mut io).expect("a tick");
    core.stop(&mut io);
    let journaled = core
        .journal()
        .read_from::<String>(ENTITY, 1)
        .expect("reads")
        .len();
    drop(core);
    db.flush().expect("flushes");
    let size_on_disk = db.size_on_disk().expect("a size");
    drop(db);
    let db = sled_db::open(&sled_db::config(&dir)).expect("sled opens again");
    let size_reopened = db.size_on_disk().expect("a size");

    let started = Instant::now();
    let mut core = start(SledJournal::with_db(db.clone()), retention);
    let start_us = started.elapsed().as_secs_f64() * 1e6;
    assert_eq!(core.log().state().0, events as u64, "every event counted");

    // A peer that starts empty asks; what it is sent.
    let mut io = Outbox::default();
    core.received(
        &mut io,
        "b",
        ReplicationMessage::Version(VersionVector::new()),
    )
    .expect("answers");
    let catch_up_bytes: usize = io
        .sent
        .iter()
        .map(|message| codec::encode(message).expect("encodes").len())
        .sum();
    let snapshot_sent = io
        .sent
        .iter()
        .any(|message| matches!(message, ReplicationMessage::Snapshot(_)));
    drop(core);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    json!({
        "events": events,
        "retention": format!("{retention:?}"),
        "events_in_journal": journaled,
        "size_on_disk_mib": mib(size_on_disk),
        "size_reopened_mib": mib(size_reopened),
        "start_us": start_us.round(),
        "catch_up_bytes": catch_up_bytes,
        "snapshot_sent": snapshot_sent,
    })
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1 << 20) as f64 * 10.0).round() / 10.0
}

fn main() {
    let mut results = Vec::new();
    let sizes: Vec<usize> = std::env::var("RETENTION_BENCH_EVENTS")
        .ok()
        .map(|list| list.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 300_000]);
    for events in sizes {
        for retention in [
            Retention::KeepAll,
            Retention::KeepLast(1_000),
            Retention::DeleteCovered,
        ] {
            results.push(run(events, retention));
        }
    }
    println!("{}", serde_json::to_string_pretty(&results).expect("JSON"));
}
