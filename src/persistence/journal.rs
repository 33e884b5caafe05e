//! The event journal: every event of an entity, in the order this replica
//! stored it, with what replication needs (origin, origin sequence number,
//! version vector, timestamp).

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use crate::causal::VersionVector;
use crate::error::{Error, Result, StoreFailure};
use crate::persistence::EventEnvelope;

mod memory_journal;
#[cfg(feature = "sled")]
mod sled_journal;

pub use memory_journal::MemoryJournal;
#[cfg(feature = "sled")]
pub use sled_journal::SledJournal;

/// A snapshot as a journal keeps it: the state after a prefix of the
/// canonical event order (see [`Snapshot`](crate::persistence::Snapshot)),
/// with the state encoded by the entity, so that journals need not know the
/// state's type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredSnapshot {
    /// The prefix the state reflects, as a version.
    pub version: VersionVector,
    /// How many events the prefix holds.
    pub events: u64,
    /// The local sequence number recovery reads from: every event stored
    /// before it is in the prefix.
    pub from_sequence: u64,
    /// The highest local sequence number when the snapshot was taken. Events
    /// stored after it must have seen the whole prefix for the snapshot to
    /// hold; those up to it were already placed after the prefix.
    pub sequence: u64,
    /// The state, encoded with the crate's codec.
    pub state: Vec<u8>,
}

/// Where replicated events are journaled.
///
/// Events of one persistence id get local sequence numbers 1, 2, ... in the
/// order this replica stored them. An event is identified across replicas by
/// its origin and origin sequence number; storing it twice is a no-op, so
/// replicated events may arrive duplicated.
///
/// Appends are atomic but need not be durable until [`flush`](Self::flush),
/// so that an entity can make a burst of commands durable with one disk sync
/// (group commit). A crash may lose appends since the last flush, but only a
/// suffix: never an event while keeping one appended after it.
///
/// Not usable as `dyn Journal`: [`append`](Self::append) and
/// [`read_from`](Self::read_from) are generic over the event type, so that
/// one journal serves entities of every event type and does the encoding.
/// To choose a journal at run time, implement `Journal` for an enum of the
/// choices that delegates to them.
pub trait Journal: Send + 'static {
    /// Stores `events` atomically (all or none), skipping those already
    /// stored, and returns how many were new.
    fn append<E: Serialize>(
        &mut self,
        persistence_id: &str,
        events: &[EventEnvelope<E>],
    ) -> Result<usize>;

    /// Makes every append so far durable.
    fn flush(&mut self) -> Result<()>;

    /// Where the journal keeps its data, for errors and logs (a directory,
    /// "memory"); by default the journal's type.
    fn location(&self) -> String {
        std::any::type_name::<Self>().to_string()
    }

    /// The events stored from local sequence number `from` on, with their
    /// local sequence numbers, in local order.
    fn read_from<E: DeserializeOwned>(
        &self,
        persistence_id: &str,
        from: u64,
    ) -> Result<Vec<(u64, EventEnvelope<E>)>>;

    /// The stored events a replica whose version is `peer` lacks, in local
    /// order (which respects causality: an event is stored after its past).
    fn missing_for<E: DeserializeOwned>(
        &self,
        persistence_id: &str,
        peer: &VersionVector,
    ) -> Result<Vec<EventEnvelope<E>>> {
        Ok(self
            .read_from(persistence_id, 1)?
            .into_iter()
            .map(|(_, envelope)| envelope)
            .filter(|envelope: &EventEnvelope<E>| envelope.origin_seq > peer.get(&envelope.origin))
            .collect())
    }

    /// The highest local sequence number of `persistence_id` (0 if none).
    fn highest_sequence(&self, persistence_id: &str) -> Result<u64>;

    /// Keeps `snapshot` as the snapshot of `persistence_id`, replacing the
    /// one before. Durable, like appends, at the next [`flush`](Self::flush).
    /// Until events are [deleted](Self::delete_before), a snapshot only
    /// shortens recovery. The default keeps none, for journals without
    /// snapshots: recovery then replays every event.
    fn save_snapshot(&mut self, persistence_id: &str, snapshot: &StoredSnapshot) -> Result<()> {
        let _ = (persistence_id, snapshot);
        Ok(())
    }

    /// The snapshot of `persistence_id`, if one was saved.
    fn load_snapshot(&self, persistence_id: &str) -> Result<Option<StoredSnapshot>> {
        let _ = persistence_id;
        Ok(None)
    }

    /// Deletes the events of `persistence_id` before local sequence number
    /// `before`, all of which its saved snapshot must cover, and records
    /// that the journal no longer holds its whole history: from then on its
    /// snapshot stands for the events before
    /// [`deleted_before`](Self::deleted_before), and recovery must start from
    /// it. Called with a `before` no greater than the snapshot's
    /// `from_sequence`, once that snapshot is durable; `before` = 1 deletes
    /// nothing and only records that the history starts at the snapshot (a
    /// replica that started from a peer's snapshot). Durable at the next
    /// [`flush`](Self::flush) at the latest; a crash that undoes it only keeps
    /// more events. Local sequence numbers are never reused. The default
    /// refuses: journals that do not implement it keep every event.
    fn delete_before(&mut self, persistence_id: &str, before: u64) -> Result<()> {
        let _ = before;
        Err(Error::journal(
            self.location(),
            Some(persistence_id),
            None,
            StoreFailure::Unsupported("deleting events"),
        ))
    }

    /// Where the history of `persistence_id` starts: `None` while the
    /// journal holds every event it stored, or the `before` of the last
    /// [`delete_before`](Self::delete_before): the snapshot then stands for
    /// the events before it, and no event before it can be read.
    fn deleted_before(&self, persistence_id: &str) -> Result<Option<u64>> {
        let _ = persistence_id;
        Ok(None)
    }

    /// The lowest local sequence number, from `from` on, of an event outside
    /// `prefix` (one past the highest if there is none): where recovery from
    /// a snapshot of `prefix` starts reading.
    fn first_sequence_outside(
        &self,
        persistence_id: &str,
        prefix: &VersionVector,
        from: u64,
    ) -> Result<u64> {
        let events = self.read_from::<IgnoredAny>(persistence_id, from)?;
        let outside = events
            .iter()
            .find(|(_, envelope)| envelope.origin_seq > prefix.get(&envelope.origin))
            .map(|(sequence, _)| *sequence);
        match outside {
            Some(sequence) => Ok(sequence),
            None => Ok(self.highest_sequence(persistence_id)?.saturating_add(1)),
        }
    }
}
