//! The entity: an actor that runs one replica of one persistence id, turning
//! commands into journaled events.

use std::marker::PhantomData;
use std::time::{SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::{ConflictResolver, EventHandler, ReplicatedLog};
use crate::causal::ReplicaId;
use crate::error::{Error, Result};
use crate::persistence::journal::Journal;

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
}

/// A replicated event-sourced entity: an [`EventHandler`] plus a command
/// handler. The command handler must be deterministic only in what it
/// persists; it may read the clock or anything else to decide.
pub trait ReplicatedEventSourcedActor: EventHandler {
    /// The commands the entity takes.
    type Command: Send + 'static;
    /// What it replies.
    type Reply: Send + 'static;

    /// Decides what a command does, given the current state.
    fn handle_command(
        &self,
        state: &Self::State,
        command: Self::Command,
        context: ReplicationContext<'_>,
    ) -> Effect<Self::Event, Self::Reply>;
}

/// The entity actor's messages.
pub enum EntityMessage<B: ReplicatedEventSourcedActor> {
    /// A command; the reply is `None` if the handler gave none, an error if
    /// the journal refused the events (which are then not applied).
    Command(B::Command, RpcReplyPort<Result<Option<B::Reply>>>),
    /// The current state.
    State(RpcReplyPort<B::State>),
}

impl<B: ReplicatedEventSourcedActor> ractor::Message for EntityMessage<B> {}

/// The entity's type parameters, held without owning any of them.
type Parameters<B, R, J> = PhantomData<fn() -> (B, R, J)>;

/// Spawns entity actors.
pub struct ReplicatedEntity<B, R, J>(Parameters<B, R, J>);

/// What an entity starts with.
pub struct EntityArguments<B, R, J> {
    behaviour: B,
    resolver: R,
    journal: J,
    persistence_id: String,
    replica: ReplicaId,
}

/// A running entity's state: its replication core and its journal.
pub struct EntityState<B: EventHandler, R, J> {
    log: ReplicatedLog<B, R>,
    journal: J,
    persistence_id: String,
}

impl<B, R, J> ReplicatedEntity<B, R, J>
where
    B: ReplicatedEventSourcedActor + Sync,
    B::State: Sync,
    R: ConflictResolver<B::Event> + Sync,
    J: Journal + Sync,
{
    /// Spawns the replica `replica` of `persistence_id`, first replaying its
    /// journal. Keep the replica id across restarts: the journal holds every
    /// event it persisted, so its sequence numbers continue.
    pub async fn spawn(
        behaviour: B,
        resolver: R,
        journal: J,
        persistence_id: impl Into<String>,
        replica: ReplicaId,
    ) -> Result<ActorRef<EntityMessage<B>>> {
        let arguments = EntityArguments {
            behaviour,
            resolver,
            journal,
            persistence_id: persistence_id.into(),
            replica,
        };
        let (actor, _) = Actor::spawn(None, Self(PhantomData), arguments)
            .await
            .map_err(|err| Error::Start {
                what: "a replicated entity",
                reason: err.to_string(),
            })?;
        Ok(actor)
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

impl<B, R, J> Actor for ReplicatedEntity<B, R, J>
where
    B: ReplicatedEventSourcedActor + Sync,
    B::State: Sync,
    R: ConflictResolver<B::Event> + Sync,
    J: Journal + Sync,
{
    type Msg = EntityMessage<B>;
    type State = EntityState<B, R, J>;
    type Arguments = EntityArguments<B, R, J>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> std::result::Result<Self::State, ActorProcessingErr> {
        let mut log = ReplicatedLog::new(args.replica, args.behaviour, args.resolver);
        for (_, envelope) in args.journal.read_from(&args.persistence_id, 1)? {
            log.receive(envelope);
        }
        Ok(EntityState {
            log,
            journal: args.journal,
            persistence_id: args.persistence_id,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match message {
            EntityMessage::State(reply) => {
                let _ = reply.send(state.log.state().clone());
            }
            EntityMessage::Command(command, reply) => {
                let context = ReplicationContext {
                    replica: state.log.replica(),
                    persistence_id: &state.persistence_id,
                };
                let effect =
                    state
                        .log
                        .handler()
                        .handle_command(state.log.state(), command, context);
                let outcome = persist(state, effect.events).map(|()| effect.reply);
                let _ = reply.send(outcome);
            }
        }
        Ok(())
    }
}

/// Journals the events, then applies them: an event the journal refused is
/// never applied.
fn persist<B, R, J>(state: &mut EntityState<B, R, J>, events: Vec<B::Event>) -> Result<()>
where
    B: EventHandler,
    R: ConflictResolver<B::Event>,
    J: Journal,
{
    if events.is_empty() {
        return Ok(());
    }
    let stamped = state.log.stamp(events, now_millis());
    state.journal.append(&state.persistence_id, &stamped)?;
    for envelope in stamped {
        state.log.receive(envelope);
    }
    Ok(())
}
