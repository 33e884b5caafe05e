use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;

use super::{Journal, StoredSnapshot};
use crate::causal::ReplicaId;
use crate::codec;
use crate::error::{DecodeFailure, Error, Record, Result, StoreFailure};
use crate::persistence::EventEnvelope;

/// Keys of events: this byte, then the local sequence number (8 bytes,
/// big-endian, so they iterate in order). The first byte leaves room for
/// other kinds of records in the same tree.
const EVENT: u8 = 0;

/// The key of the snapshot, after every event key.
const SNAPSHOT: [u8; 1] = [1];

/// The key of the local sequence number events were deleted before (8
/// bytes, big-endian), once some were (see [`Journal::delete_before`]).
const DELETED_BEFORE: [u8; 1] = [2];

/// A [`Journal`] in a sled (0.34) database.
///
/// Each persistence id has its tree, `journal/<id>`, mapping local sequence
/// numbers to encoded [`EventEnvelope`]s, plus one key for its latest
/// [`StoredSnapshot`] and, once events were deleted, one for where its
/// history starts. An append is one sled insert, or
/// one atomic sled batch for several events; sled's log is sequential, so a
/// crash before [`Journal::flush`] loses a suffix of the appends.
///
/// Appends are made idempotent by an index of the stored (origin, origin
/// sequence number) pairs, built in memory when a handle first appends to a
/// persistence id, from its snapshot's version and the events after where
/// the snapshot's recovery starts (the events an entity reads when it
/// starts); it takes a few words per origin, since an origin's events
/// arrive in order. A sled transaction keeping that index on disk cost four
/// times the time of the append itself. One `SledJournal` must so be the only
/// writer of a persistence id, as an entity is.
///
/// Clones share the database, so entities of different persistence ids can
/// journal in one; each persistence id must be written through one handle.
pub struct SledJournal {
    location: String,
    db: sled::Db,
    /// The open trees and the next local sequence number, per persistence id
    /// this handle appended to.
    appending: HashMap<String, Appending>,
}

struct Appending {
    tree: sled::Tree,
    next: u64,
    stored: StoredIds,
}

/// The (origin, origin sequence number) pairs a journal holds: per origin,
/// the run 1..=n it holds without a gap, and the few it holds beyond a gap.
#[derive(Default)]
struct StoredIds(HashMap<ReplicaId, OriginRun>);

#[derive(Default)]
struct OriginRun {
    contiguous: u64,
    beyond: BTreeSet<u64>,
}

impl StoredIds {
    /// Records the pair; false if it was there already.
    fn insert(&mut self, origin: &ReplicaId, sequence: u64) -> bool {
        let run = match self.0.get_mut(origin) {
            Some(run) => run,
            None => self.0.entry(origin.clone()).or_default(),
        };
        if sequence <= run.contiguous || run.beyond.contains(&sequence) {
            return false;
        }
        if sequence == run.contiguous + 1 {
            run.contiguous = sequence;
            while run.beyond.remove(&(run.contiguous + 1)) {
                run.contiguous += 1;
            }
        } else {
            run.beyond.insert(sequence);
        }
        true
    }
}

impl Clone for SledJournal {
    /// Another handle on the same database, with nothing cached: the cache
    /// is only valid for the handle that writes.
    fn clone(&self) -> Self {
        Self {
            location: self.location.clone(),
            db: self.db.clone(),
            appending: HashMap::new(),
        }
    }
}

fn event_key(sequence: u64) -> [u8; 9] {
    let mut key = [EVENT; 9];
    key[1..].copy_from_slice(&sequence.to_be_bytes());
    key
}

impl SledJournal {
    /// Opens (or creates) the journal at `path`, with the library's
    /// settings ([`sled_db::config`](crate::sled_db::config)).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(&crate::sled_db::config(path))
    }

    /// Opens (or creates) the journal in the database `config` describes:
    /// start from [`sled_db::config`](crate::sled_db::config) to change the
    /// cache size or another setting.
    pub fn open_with(config: &sled::Config) -> Result<Self> {
        let db = crate::sled_db::open(config)?;
        Ok(Self::in_db(db, config.get_path().display().to_string()))
    }

    /// The journal in an open database, which a durable store and other
    /// journals may share (see [`sled_db`](crate::sled_db)).
    pub fn with_db(db: sled::Db) -> Self {
        Self::in_db(db, "a shared sled database".into())
    }

    fn in_db(db: sled::Db, location: String) -> Self {
        Self {
            location,
            db,
            appending: HashMap::new(),
        }
    }

    /// The journal failed for `persistence_id` (none: for every entity), at
    /// `record` if one.
    fn error(
        &self,
        persistence_id: Option<&str>,
        record: Option<Record>,
    ) -> impl Fn(StoreFailure) -> Error + '_ {
        let persistence_id = persistence_id.map(str::to_string);
        move |failure| {
            Error::journal(
                &self.location,
                persistence_id.as_deref(),
                record.clone(),
                failure,
            )
        }
    }

    /// The storage engine failed for `persistence_id`, at `record` if one.
    fn failed(
        &self,
        persistence_id: Option<&str>,
        record: Option<Record>,
    ) -> impl Fn(sled::Error) -> Error + '_ {
        let error = self.error(persistence_id, record);
        move |err| error(StoreFailure::engine(err))
    }

    /// `persistence_id`'s `record` cannot be read back.
    fn unreadable(&self, persistence_id: &str, record: Record) -> impl Fn(Error) -> Error + '_ {
        let error = self.error(Some(persistence_id), Some(record));
        move |err| error(StoreFailure::unreadable(err))
    }

    fn tree(&self, persistence_id: &str) -> Result<sled::Tree> {
        self.db
            .open_tree(format!("journal/{persistence_id}"))
            .map_err(self.failed(Some(persistence_id), None))
    }

    fn sequence_of(&self, persistence_id: &str, key: &[u8]) -> Result<u64> {
        key.strip_prefix(&[EVENT])
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| {
                self.error(Some(persistence_id), None)(StoreFailure::unreadable(
                    not_a_sequence_number("an event key", key.len(), 9),
                ))
            })
    }

    /// The tree, its next sequence number and its index of stored events.
    /// The index of what the journal holds, from its snapshot and the
    /// events after it: every event of a snapshot's prefix was journaled
    /// here before the prefix was compacted, and every event journaled
    /// before where its recovery starts is in the prefix. A journal of a
    /// long-lived entity is then not read whole at its first append after
    /// each start.
    fn start_appending(&self, persistence_id: &str) -> Result<Appending> {
        let tree = self.tree(persistence_id)?;
        let next = self.highest_in(persistence_id, &tree)? + 1;
        let mut stored = StoredIds::default();
        // A snapshot that does not decode indexes nothing: the scan from 1.
        let from = match self.load_snapshot(persistence_id) {
            Ok(Some(snapshot)) => {
                for (origin, count) in snapshot.version.iter() {
                    stored.0.entry(origin.clone()).or_default().contiguous = count;
                }
                snapshot.from_sequence
            }
            Ok(None) | Err(_) => 1,
        };
        for (_, envelope) in self.read_from::<IgnoredAny>(persistence_id, from)? {
            stored.insert(&envelope.origin, envelope.origin_seq);
        }
        Ok(Appending { tree, next, stored })
    }

    /// The highest local sequence number given: that of the last event, or
    /// one before where the history starts if every event was deleted.
    fn highest_in(&self, persistence_id: &str, tree: &sled::Tree) -> Result<u64> {
        let last = tree
            .range(event_key(0)..=event_key(u64::MAX))
            .next_back()
            .transpose()
            .map_err(self.failed(Some(persistence_id), None))?;
        let last = match last {
            None => 0,
            Some((key, _)) => self.sequence_of(persistence_id, &key)?,
        };
        let deleted = self.deleted_in(persistence_id, tree)?.unwrap_or(1);
        Ok(last.max(deleted - 1))
    }

    fn deleted_in(&self, persistence_id: &str, tree: &sled::Tree) -> Result<Option<u64>> {
        let Some(bytes) = tree
            .get(DELETED_BEFORE)
            .map_err(self.failed(Some(persistence_id), Some(Record::HistoryStart)))?
        else {
            return Ok(None);
        };
        <[u8; 8]>::try_from(bytes.as_ref())
            .map(|bytes| Some(u64::from_be_bytes(bytes).max(1)))
            .map_err(|_| {
                self.unreadable(persistence_id, Record::HistoryStart)(not_a_sequence_number(
                    "the history start",
                    bytes.len(),
                    8,
                ))
            })
    }
}

/// The error of `what`, stored as `found` bytes where a big-endian sequence
/// number takes `expected`.
fn not_a_sequence_number(what: &'static str, found: usize, expected: usize) -> Error {
    Error::Decode {
        what,
        failure: DecodeFailure::Length { expected, found },
    }
}

impl Journal for SledJournal {
    fn append<E: Serialize>(
        &mut self,
        persistence_id: &str,
        events: &[EventEnvelope<E>],
    ) -> Result<usize> {
        // Taken out while in use; an append that fails rebuilds it, so the
        // index never holds an event that was not written.
        let mut appending = match self.appending.remove(persistence_id) {
            Some(appending) => appending,
            None => self.start_appending(persistence_id)?,
        };
        let mut fresh = Vec::new();
        for envelope in events {
            if appending
                .stored
                .insert(&envelope.origin, envelope.origin_seq)
            {
                fresh.push(codec::encode(envelope)?);
            }
        }
        let mut sequence = appending.next;
        let written = match fresh.as_slice() {
            [] => Ok(()),
            [bytes] => appending
                .tree
                .insert(&event_key(sequence)[..], bytes.as_slice())
                .map(|_| ()),
            many => {
                let mut batch = sled::Batch::default();
                for (offset, bytes) in (0u64..).zip(many) {
                    batch.insert(&event_key(sequence + offset)[..], bytes.as_slice());
                }
                appending.tree.apply_batch(batch)
            }
        };
        written.map_err(self.failed(Some(persistence_id), None))?;
        let added = fresh.len();
        // Lossless: usize is at most 64 bits wide.
        sequence += added as u64;
        appending.next = sequence;
        self.appending.insert(persistence_id.to_string(), appending);
        Ok(added)
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn flush(&mut self) -> Result<()> {
        self.db.flush().map_err(self.failed(None, None))?;
        Ok(())
    }

    fn read_from<E: DeserializeOwned>(
        &self,
        persistence_id: &str,
        from: u64,
    ) -> Result<Vec<(u64, EventEnvelope<E>)>> {
        let tree = self.tree(persistence_id)?;
        let mut events = Vec::new();
        for item in tree.range(event_key(from)..=event_key(u64::MAX)) {
            let (key, bytes) = item.map_err(self.failed(Some(persistence_id), None))?;
            let sequence = self.sequence_of(persistence_id, &key)?;
            let envelope = codec::decode(&bytes)
                .map_err(self.unreadable(persistence_id, Record::Event(sequence)))?;
            events.push((sequence, envelope));
        }
        Ok(events)
    }

    fn highest_sequence(&self, persistence_id: &str) -> Result<u64> {
        self.highest_in(persistence_id, &self.tree(persistence_id)?)
    }

    fn save_snapshot(&mut self, persistence_id: &str, snapshot: &StoredSnapshot) -> Result<()> {
        let bytes = codec::encode(snapshot)?;
        self.tree(persistence_id)?
            .insert(SNAPSHOT, bytes)
            .map_err(self.failed(Some(persistence_id), Some(Record::Snapshot)))?;
        Ok(())
    }

    /// One atomic batch: the events' removal and the new start of the
    /// history land together or not at all.
    fn delete_before(&mut self, persistence_id: &str, before: u64) -> Result<()> {
        let tree = self.tree(persistence_id)?;
        let from = self.deleted_in(persistence_id, &tree)?.unwrap_or(1);
        let before = before.max(from);
        let mut batch = sled::Batch::default();
        for key in tree.range(event_key(from)..event_key(before)).keys() {
            batch.remove(key.map_err(self.failed(Some(persistence_id), None))?);
        }
        batch.insert(&DELETED_BEFORE[..], &before.to_be_bytes()[..]);
        tree.apply_batch(batch)
            .map_err(self.failed(Some(persistence_id), None))
    }

    fn deleted_before(&self, persistence_id: &str) -> Result<Option<u64>> {
        self.deleted_in(persistence_id, &self.tree(persistence_id)?)
    }

    fn load_snapshot(&self, persistence_id: &str) -> Result<Option<StoredSnapshot>> {
        let Some(bytes) = self
            .tree(persistence_id)?
            .get(SNAPSHOT)
            .map_err(self.failed(Some(persistence_id), Some(Record::Snapshot)))?
        else {
            return Ok(None);
        };
        codec::decode(&bytes)
            .map(Some)
            .map_err(self.unreadable(persistence_id, Record::Snapshot))
    }
}
