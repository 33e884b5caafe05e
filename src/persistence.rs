//! Replicated event sourcing: several replicas of one entity accept commands
//! concurrently, journal vector-clock-tagged events and converge to the same
//! state.
//!
//! * the behaviour trait ([`ReplicatedEventSourcedActor`]), the entity actor
//!   that runs a replica ([`ReplicatedEntity`]), the router that runs the
//!   replicas of many entities on a node ([`EntityRouter`]) and conflict
//!   resolvers;
//! * the sans-IO cores: [`ReplicatedLog`] delivers events causally, orders
//!   them deterministically and recomputes the state when a late concurrent
//!   event sorts before events already applied; [`Replication`] exchanges
//!   events between replicas; [`EntityCore`] runs one replica's rules
//!   (journal first, then apply, reply and replicate);
//! * the [`Journal`] trait, its sled implementation and an in-memory one.
//!
//! The guide is `docs/replicated-event-sourcing.md`.

use std::cmp::Ordering;
use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::causal::{ReplicaId, VersionVector};

mod entity;
mod journal;
mod log;
mod protocol;
mod recovery;

pub use entity::{
    CommandResult, Effect, EntityCore, EntityIo, EventApplied, PendingReply,
    ReplicatedEventSourcedActor, ReplicationContext, Retention, Snapshots, HOLD_TICKS,
};
#[cfg(feature = "cluster")]
pub use entity::{
    Entities, Entity, EntityArguments, EntityConfig, EntityMessage, EntityRouter, EntityStats,
    EntityType, ReplicatedEntity, RouterMessage, Subscription, DEFAULT_MAX_RUNNING,
    ENTITY_MESSAGE_VARIANT, ROUTER_MESSAGE_VARIANT,
};
#[cfg(feature = "sled")]
pub use journal::SledJournal;
pub use journal::{Journal, MemoryJournal, StoredSnapshot};
pub use log::{ReplicatedLog, Snapshot};
pub use protocol::{
    Replication, ReplicationMessage, ReplicationOutput, ReplicationOutputs, SnapshotOffer,
    DEFAULT_STABILITY_TICKS,
};
pub use recovery::{recover_from_journal, DecodeState, Recovered};

/// One journaled event with what replication needs to know about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope<E> {
    /// The replica that persisted the event.
    pub origin: ReplicaId,
    /// Its number among the origin's events, from 1.
    pub origin_seq: u64,
    /// The event's causal past, itself included (`version[origin] == origin_seq`).
    pub version: VersionVector,
    /// The origin's wall clock when it persisted the event, in milliseconds;
    /// only used to resolve concurrent events.
    pub timestamp: i64,
    /// The event.
    pub event: E,
}

impl<E> EventEnvelope<E> {
    /// Whether `self` happened before `other`.
    pub fn happened_before(&self, other: &Self) -> bool {
        other.version.get(&self.origin) >= self.origin_seq
            && !(self.origin == other.origin && self.origin_seq == other.origin_seq)
    }
}

/// What the event handler learns about the event it applies.
#[derive(Clone, Copy, Debug)]
pub struct EventMeta<'a> {
    /// The replica that persisted the event.
    pub origin: &'a ReplicaId,
    /// The origin's timestamp of the event.
    pub timestamp: i64,
    /// Whether the event is concurrent with an event applied before it: its
    /// causal past does not include everything applied so far. Handlers that
    /// merge conflicting updates look at this.
    pub concurrent: bool,
}

/// The event side of a replicated event-sourced entity: a pure, deterministic
/// function from state and event to state. It need not commute: replicas
/// apply the same events in the same order.
pub trait EventHandler: Send + 'static {
    /// The events.
    type Event: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + 'static;
    /// The state events build.
    type State: Clone + Debug + Default + Send + 'static;

    /// Applies one event.
    ///
    /// It must not panic: an event is applied once it is journaled, so a
    /// panic leaves a state that no longer follows from the journal. The
    /// entity then stops as a failed actor (ractor reports the panic to its
    /// supervisor), and a restart replays the journal, where the same event
    /// panics again until the handler is fixed.
    fn apply(&self, state: &mut Self::State, event: &Self::Event, meta: EventMeta<'_>);
}

/// Decides the order of concurrent events. Every replica must use the same
/// resolver. The contract: `order` is a pure, deterministic total order (it
/// may look only at its arguments), so that replicas holding the same events
/// apply them in the same order, whatever order they arrived in.
pub trait ConflictResolver<E>: Send + 'static {
    /// Which of two concurrent events is applied first.
    fn order(&self, first: &EventEnvelope<E>, second: &EventEnvelope<E>) -> Ordering;
}

/// Last writer wins: of two concurrent events, the one with the later
/// timestamp (then the larger replica id) is applied last, so its output
/// stands where the events overwrite each other.
#[derive(Clone, Copy, Debug, Default)]
pub struct LastWriterWins;

impl<E> ConflictResolver<E> for LastWriterWins {
    fn order(&self, first: &EventEnvelope<E>, second: &EventEnvelope<E>) -> Ordering {
        (first.timestamp, &first.origin, first.origin_seq).cmp(&(
            second.timestamp,
            &second.origin,
            second.origin_seq,
        ))
    }
}

/// A resolver from a function; the function must keep the [`ConflictResolver`]
/// contract.
pub struct ResolveWith<F>(pub F);

impl<E, F> ConflictResolver<E> for ResolveWith<F>
where
    F: Fn(&EventEnvelope<E>, &EventEnvelope<E>) -> Ordering + Send + 'static,
{
    fn order(&self, first: &EventEnvelope<E>, second: &EventEnvelope<E>) -> Ordering {
        (self.0)(first, second).then_with(|| {
            (&first.origin, first.origin_seq).cmp(&(&second.origin, second.origin_seq))
        })
    }
}
