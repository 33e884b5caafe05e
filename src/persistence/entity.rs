//! The entity: an actor that runs one replica of one persistence id, turning
//! commands into journaled events and replicating them to the replicas of the
//! same persistence id on other nodes.

use super::EventHandler;
use crate::causal::ReplicaId;

#[cfg(feature = "cluster")]
mod actor;
mod core;
#[cfg(feature = "cluster")]
mod handle;
#[cfg(feature = "cluster")]
mod router;

pub use self::core::{
    CommandResult, EntityCore, EntityIo, EventApplied, PendingReply, Retention, Snapshots,
    HOLD_TICKS,
};
#[cfg(feature = "cluster")]
pub use actor::{
    EntityArguments, EntityMessage, ReplicatedEntity, Subscription, ENTITY_MESSAGE_VARIANT,
};
#[cfg(feature = "cluster")]
pub use handle::{Entity, EntityConfig, EntityStats};
#[cfg(feature = "cluster")]
pub use router::{
    Entities, EntityRouter, EntityType, RouterMessage, DEFAULT_MAX_RUNNING, ROUTER_MESSAGE_VARIANT,
};

/// What a command handler knows besides the state.
#[derive(Clone, Copy, Debug)]
pub struct ReplicationContext<'a> {
    /// The replica the entity runs as.
    pub replica: &'a ReplicaId,
    /// The persistence id.
    pub persistence_id: &'a str,
}

/// What a command handler decides: events to persist, a reply, both, or neither.
/// Events are journaled and applied before the reply is sent.
#[derive(Debug)]
pub struct Effect<E, R> {
    events: Vec<E>,
    reply: Option<R>,
}

impl<E, R> Effect<E, R> {
    /// Nothing to persist, no reply.
    pub fn none() -> Self {
        Self {
            events: Vec::new(),
            reply: None,
        }
    }

    /// Persist `events` (atomically).
    pub fn persist(events: impl IntoIterator<Item = E>) -> Self {
        Self {
            events: events.into_iter().collect(),
            reply: None,
        }
    }

    /// Reply `reply` without persisting anything.
    pub fn reply(reply: R) -> Self {
        Self {
            events: Vec::new(),
            reply: Some(reply),
        }
    }

    /// Reply `reply` once the events are journaled.
    pub fn then_reply(mut self, reply: R) -> Self {
        self.reply = Some(reply);
        self
    }

    /// The events to persist and the reply, for whatever runs the command
    /// handler.
    pub fn into_parts(self) -> (Vec<E>, Option<R>) {
        (self.events, self.reply)
    }
}

/// The behaviour of a replicated event-sourced entity: an [`EventHandler`]
/// plus a command handler. The command handler must be deterministic only
/// in what it persists; it may read the clock or anything else to decide.
///
/// Despite its name this is not a ractor `Actor`: the actor is
/// [`ReplicatedEntity`](super::ReplicatedEntity), one replica of one
/// persistence id, which runs this behaviour (spawn it with
/// `ReplicatedEntity::spawn`, or under your own supervisor with
/// [`EntityArguments`](super::EntityArguments)); an
/// [`EntityRouter`](super::EntityRouter) runs many.
pub trait ReplicatedEventSourcedActor: EventHandler {
    /// The commands the entity takes.
    type Command: Send + 'static;
    /// What it replies.
    type Reply: Send + 'static;

    /// Decides what a command does, given the current state. A panic here
    /// is caught: the command's caller gets [`Error::Panicked`](crate::Error::Panicked),
    /// nothing is persisted, and the entity goes on.
    fn handle_command(
        &self,
        state: &Self::State,
        command: Self::Command,
        context: ReplicationContext<'_>,
    ) -> Effect<Self::Event, Self::Reply>;
}
