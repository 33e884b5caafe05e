use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Journal, StoredSnapshot};
use crate::causal::ReplicaId;
use crate::codec;
use crate::error::{Error, Record, Result, StoreFailure};
use crate::persistence::EventEnvelope;

/// A [`Journal`] in memory, for tests and simulations. Clones share the same
/// events, so a clone kept aside outlives an entity the way a disk does, and
/// [`lose_unflushed`](Self::lose_unflushed) plays a crash.
///
/// Events are stored encoded, as on disk, so reading them back goes through
/// the codec.
#[derive(Clone, Default)]
pub struct MemoryJournal {
    inner: Arc<Mutex<Entities>>,
}

#[derive(Default)]
struct Entities {
    stored: HashMap<String, Stored>,
    /// The persistence ids written since the last flush: a flush looks at
    /// those only, so that the many entities of a router flushing one after
    /// the other do not each walk every persistence id.
    unflushed: HashSet<String>,
}

#[derive(Default)]
struct Stored {
    /// Encoded envelopes in local order; local sequence number = index + 1.
    events: Vec<Vec<u8>>,
    origins: HashSet<(ReplicaId, u64)>,
    origin_of: Vec<(ReplicaId, u64)>,
    /// How many events the last flush made durable.
    durable: usize,
    snapshot: Option<Vec<u8>>,
    durable_snapshot: Option<Vec<u8>>,
    /// Events before this local sequence number were deleted (their bytes
    /// freed; their ids stay known, so that appending one again is still a
    /// no-op). Deleting is immediately durable: only events a durable
    /// snapshot covers are deleted.
    deleted_before: Option<u64>,
}

impl MemoryJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the stored snapshot of `persistence_id` with raw bytes, to
    /// test what a damaged one does.
    pub fn put_raw_snapshot(&self, persistence_id: &str, bytes: Vec<u8>) {
        let mut entities = self.lock();
        let stored = entities
            .stored
            .entry(persistence_id.to_string())
            .or_default();
        stored.snapshot = Some(bytes.clone());
        stored.durable_snapshot = Some(bytes);
    }

    /// Forgets every event appended and snapshot saved since the last flush,
    /// as a crash would.
    pub fn lose_unflushed(&self) {
        let mut entities = self.lock();
        entities.unflushed.clear();
        for stored in entities.stored.values_mut() {
            for origin in stored.origin_of.drain(stored.durable..) {
                stored.origins.remove(&origin);
            }
            stored.events.truncate(stored.durable);
            stored.snapshot.clone_from(&stored.durable_snapshot);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entities> {
        // The data stays consistent even if a holder panicked: every mutation
        // below completes before anything can panic.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Journal for MemoryJournal {
    fn append<E: Serialize>(
        &mut self,
        persistence_id: &str,
        events: &[EventEnvelope<E>],
    ) -> Result<usize> {
        let encoded = events
            .iter()
            .map(|envelope| {
                Ok((
                    (envelope.origin.clone(), envelope.origin_seq),
                    codec::encode(envelope)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut entities = self.lock();
        let stored = entities
            .stored
            .entry(persistence_id.to_string())
            .or_default();
        let mut added = 0;
        for (origin, bytes) in encoded {
            if stored.origins.insert(origin.clone()) {
                stored.origin_of.push(origin);
                stored.events.push(bytes);
                added += 1;
            }
        }
        if added > 0 {
            entities.unflushed.insert(persistence_id.to_string());
        }
        Ok(added)
    }

    fn location(&self) -> String {
        "memory".into()
    }

    fn flush(&mut self) -> Result<()> {
        let mut entities = self.lock();
        let Entities { stored, unflushed } = &mut *entities;
        for persistence_id in unflushed.drain() {
            if let Some(stored) = stored.get_mut(&persistence_id) {
                stored.durable = stored.events.len();
                stored.durable_snapshot.clone_from(&stored.snapshot);
            }
        }
        Ok(())
    }

    fn read_from<E: DeserializeOwned>(
        &self,
        persistence_id: &str,
        from: u64,
    ) -> Result<Vec<(u64, EventEnvelope<E>)>> {
        let entities = self.lock();
        let Some(stored) = entities.stored.get(persistence_id) else {
            return Ok(Vec::new());
        };
        let from = from.max(stored.deleted_before.unwrap_or(1));
        let skip = usize::try_from(from.saturating_sub(1)).unwrap_or(usize::MAX);
        (1u64..)
            .zip(&stored.events)
            .skip(skip)
            .map(|(sequence, bytes)| {
                let envelope = codec::decode(bytes)
                    .map_err(|err| unreadable(persistence_id, Record::Event(sequence), err))?;
                Ok((sequence, envelope))
            })
            .collect()
    }

    fn highest_sequence(&self, persistence_id: &str) -> Result<u64> {
        let entities = self.lock();
        let count = entities
            .stored
            .get(persistence_id)
            .map_or(0, |s| s.events.len());
        Ok(u64::try_from(count).unwrap_or(u64::MAX))
    }

    fn save_snapshot(&mut self, persistence_id: &str, snapshot: &StoredSnapshot) -> Result<()> {
        let bytes = codec::encode(snapshot)?;
        let mut entities = self.lock();
        entities
            .stored
            .entry(persistence_id.to_string())
            .or_default()
            .snapshot = Some(bytes);
        entities.unflushed.insert(persistence_id.to_string());
        Ok(())
    }

    fn delete_before(&mut self, persistence_id: &str, before: u64) -> Result<()> {
        let mut entities = self.lock();
        let stored = entities
            .stored
            .entry(persistence_id.to_string())
            .or_default();
        let from = stored.deleted_before.unwrap_or(1);
        let end = usize::try_from(before.saturating_sub(1))
            .unwrap_or(usize::MAX)
            .min(stored.events.len());
        let start = usize::try_from(from.saturating_sub(1)).unwrap_or(usize::MAX);
        for bytes in stored.events.iter_mut().take(end).skip(start) {
            *bytes = Vec::new();
        }
        stored.deleted_before = Some(before.max(from));
        Ok(())
    }

    fn deleted_before(&self, persistence_id: &str) -> Result<Option<u64>> {
        Ok(self
            .lock()
            .stored
            .get(persistence_id)
            .and_then(|stored| stored.deleted_before))
    }

    fn load_snapshot(&self, persistence_id: &str) -> Result<Option<StoredSnapshot>> {
        let entities = self.lock();
        let Some(bytes) = entities
            .stored
            .get(persistence_id)
            .and_then(|s| s.snapshot.as_ref())
        else {
            return Ok(None);
        };
        codec::decode(bytes)
            .map(Some)
            .map_err(|err| unreadable(persistence_id, Record::Snapshot, err))
    }
}

/// `persistence_id`'s `record` does not decode.
fn unreadable(persistence_id: &str, record: Record, err: Error) -> Error {
    Error::journal(
        "memory",
        Some(persistence_id),
        Some(record),
        StoreFailure::unreadable(err),
    )
}
