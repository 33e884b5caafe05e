//! The event journal: every event of an entity, in the order this replica
//! stored it, with what replication needs (origin, origin sequence number,
//! version vector, timestamp).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::causal::VersionVector;
use crate::error::Result;
use crate::persistence::replicated::EventEnvelope;

mod memory_journal;
mod sled_journal;

pub use memory_journal::MemoryJournal;
pub use sled_journal::SledJournal;

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
}
