use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::{SystemTime, UNIX_EPOCH};

use ractor::concurrency::JoinHandle;
use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, Message, RpcReplyPort, SupervisionEvent,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::handle::{Entity, EntityConfig, EntityStats};
use super::{ReplicatedEventSourcedActor, ReplicationContext};
use crate::causal::ReplicaId;
use crate::cluster::MemberEvent;
use crate::codec;
use crate::ddata::PeerName;
use crate::discovery::{PeerChange, PeerGroup, Peers};
use crate::error::{catch_panic, Error, Result};
use crate::persistence::journal::{Journal, StoredSnapshot};
use crate::persistence::replicated::{
    recover_from_journal, ConflictResolver, DecodeState, Effects, EventEnvelope, ReplicatedLog,
    Replication, ReplicationEffect, ReplicationMessage, Snapshot,
};
use crate::remote_cast;
use crate::reply::ReplyTo;

/// The ractor message variant of replication messages between entities.
pub const ENTITY_MESSAGE_VARIANT: &str = "ractor_replicated.entity.replication";

/// The entity actor's messages, for `call!`, `cast!` and the [`Entity`]
/// handle alike.
///
/// A command is answered after its events are durable, which can take a
/// journal flush: an actor that must not wait for it sends the command with
/// itself as the reply target (see [`ReplyTo`]) and gets the answer later
/// as one of its messages. Only replication messages between replicas cross
/// the network; they travel in the hidden internal variant.
pub enum EntityMessage<B: ReplicatedEventSourcedActor> {
    /// Run a command: see [`EntityMessage::command`].
    Command(B::Command, ReplyTo<CommandResult<B::Reply>>),
    /// The current state, once everything it holds is durable.
    State(RpcReplyPort<B::State>),
    /// What the entity has done.
    Stats(RpcReplyPort<EntityStats>),
    /// Send the subscriber the events this replica applies: see
    /// [`EntityMessage::subscribe`] and [`EntityMessage::subscribe_from`].
    Subscribe(Subscription<B::Event>),
    /// Stop sending events to this subscriber.
    Unsubscribe(ActorId),
    /// Replication between replicas, and the entity's own timers.
    #[doc(hidden)]
    Internal(Internal<B>),
}

/// What a command comes to: the handler's reply (`None` if it gave none)
/// once its events are durable, or why they are not (see
/// [`Entity::command`]).
pub type CommandResult<R> = Result<Option<R>>;

impl<B: ReplicatedEventSourcedActor> EntityMessage<B> {
    /// Runs `command`; sends its outcome to `reply` once its events are
    /// durable. Works with `call!(entity, EntityMessage::command, command)`.
    pub fn command(
        command: B::Command,
        reply: impl Into<ReplyTo<CommandResult<B::Reply>>>,
    ) -> Self {
        Self::Command(command, reply.into())
    }

    /// Sends `listener` every event this replica applies from now on, local
    /// and replicated, as an [`EventApplied`] converted into its message
    /// type: the feed for projections and read models. A listener that
    /// stopped, or whose conversion panics, is dropped.
    pub fn subscribe<M>(listener: ActorRef<M>) -> Self
    where
        M: Message + From<EventApplied<B::Event>>,
    {
        Self::Subscribe(Subscription::new(listener, None))
    }

    /// As [`subscribe`](Self::subscribe), first replaying the journaled
    /// events from local sequence number `sequence` on (1 for all of them):
    /// a projection that stored the [`sequence`](EventApplied::sequence) of
    /// the last event it handled resumes from the one after it, without a
    /// gap or a repeat between the replay and what follows.
    pub fn subscribe_from<M>(listener: ActorRef<M>, sequence: u64) -> Self
    where
        M: Message + From<EventApplied<B::Event>>,
    {
        Self::Subscribe(Subscription::new(listener, Some(sequence)))
    }
}

/// A listener of an entity's events, made by [`EntityMessage::subscribe`]
/// or [`EntityMessage::subscribe_from`].
pub struct Subscription<E> {
    listener: ActorId,
    from: Option<u64>,
    notify: Notify<E>,
}

/// Sends one event to a subscriber; false once the subscriber is gone.
type Notify<E> = Box<dyn FnMut(&EventApplied<E>) -> bool + Send>;

impl<E: Clone + Send + 'static> Subscription<E> {
    fn new<M>(listener: ActorRef<M>, from: Option<u64>) -> Self
    where
        M: Message + From<EventApplied<E>>,
    {
        Self {
            listener: listener.get_id(),
            from,
            notify: Box::new(move |applied| {
                let target = "an entity subscriber's conversion";
                catch_panic(target, || M::from(applied.clone()))
                    .is_ok_and(|message| listener.cast(message).is_ok())
            }),
        }
    }
}

/// The entity's messages to itself and to its peers: not for users.
#[doc(hidden)]
pub struct Internal<B: ReplicatedEventSourcedActor>(Inbound<B>);

/// Membership events drive an entity: a node connecting or disconnecting
/// starts a discovery round, and a removed node no longer holds compaction
/// back.
impl<B: ReplicatedEventSourcedActor> From<MemberEvent> for EntityMessage<B> {
    fn from(event: MemberEvent) -> Self {
        match event {
            MemberEvent::Up(_) | MemberEvent::Down(_) => Inbound::Discover.into(),
            MemberEvent::Removed(node) => Inbound::Removed(node).into(),
        }
    }
}

impl<B: ReplicatedEventSourcedActor> From<Inbound<B>> for EntityMessage<B> {
    fn from(inbound: Inbound<B>) -> Self {
        Self::Internal(Internal(inbound))
    }
}

enum Inbound<B: ReplicatedEventSourcedActor> {
    /// A message from another replica of the persistence id.
    Peer(PeerEnvelope<B::Event>),
    /// Bytes from the network that are not a replication message.
    Undecodable(String),
    Discover,
    /// The node left the cluster for good.
    Removed(PeerName),
    AntiEntropy,
    /// Group commit: make what the commands before it journaled durable.
    Flush,
}

/// An event the entity applied, as its subscribers receive it: once it is
/// durable in this replica's journal, in the journal's order (which respects
/// causality but, for concurrent events, may differ from the canonical order
/// the state is computed in).
#[derive(Clone, Debug)]
pub struct EventApplied<E> {
    /// The event's local sequence number in this replica's journal, from 1:
    /// where [`EntityMessage::subscribe_from`] resumes.
    pub sequence: u64,
    /// The event.
    pub envelope: EventEnvelope<E>,
}

impl<E: Send + 'static> ractor::Message for EventApplied<E> {}

/// A replication message with its sender, as it travels.
#[derive(Serialize, Deserialize)]
pub(super) struct PeerEnvelope<E> {
    persistence_id: String,
    from: PeerName,
    message: ReplicationMessage<E>,
}

impl<B: ReplicatedEventSourcedActor> ractor::Message for EntityMessage<B> {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> std::result::Result<SerializedMessage, BoxedDowncastErr> {
        match self {
            Self::Internal(Internal(Inbound::Peer(envelope))) => {
                remote_cast::encode(ENTITY_MESSAGE_VARIANT, &envelope)
            }
            _ => Err(BoxedDowncastErr),
        }
    }

    /// Never fails: bytes that are not a replication message become an
    /// undecodable message, so the entity counts and logs them instead of
    /// ractor dropping them silently.
    fn deserialize(message: SerializedMessage) -> std::result::Result<Self, BoxedDowncastErr> {
        Ok(match remote_cast::decode(ENTITY_MESSAGE_VARIANT, message) {
            Ok(envelope) => Inbound::Peer(envelope),
            Err(reason) => Inbound::Undecodable(reason),
        }
        .into())
    }
}

/// The entity's type parameters, held without owning any of them.
type Parameters<B, R, J> = PhantomData<fn() -> (B, R, J)>;

/// The entity actor: one replica of one persistence id. Spawn it with
/// [`ReplicatedEntity::spawn`], or yourself with [`EntityArguments`] (under
/// a supervisor, say).
pub struct ReplicatedEntity<B, R, J>(Parameters<B, R, J>);

/// What an entity starts with: its behaviour, conflict resolver, journal
/// and configuration.
///
/// The entity replays its journal in `pre_start`, so it can run under a
/// supervisor of your own: spawn [`ReplicatedEntity`] with
/// `Actor::spawn_linked(Some(name), ReplicatedEntity::new(), arguments,
/// supervisor)`, with `name` from [`EntityArguments::actor_name`] (peers and
/// restarted handles find it by that name), and after a failure spawn it
/// again with new arguments (the same journal and replica id): it resumes
/// with what the journal holds. Drop the supervision event first: ractor
/// hands a stopped actor's state to its supervisor, and that state holds
/// the journal open. [`Entity::for_actor`] makes a handle for it.
pub struct EntityArguments<B: ReplicatedEventSourcedActor, R, J> {
    behaviour: B,
    resolver: R,
    journal: J,
    config: EntityConfig,
    snapshots: Option<Snapshots<B::State>>,
}

impl<B: ReplicatedEventSourcedActor, R, J> EntityArguments<B, R, J> {
    /// A replica of `config`'s persistence id, with `behaviour`, resolving
    /// concurrent events with `resolver` and journaling in `journal`.
    pub fn new(behaviour: B, resolver: R, journal: J, config: EntityConfig) -> Self {
        Self {
            behaviour,
            resolver,
            journal,
            config,
            snapshots: None,
        }
    }

    /// Keeps memory and recovery time bounded with a snapshot about every
    /// `every` events (see [`ReplicatedEntity::spawn_with_snapshots`]).
    pub fn with_snapshots(mut self, every: usize) -> Self
    where
        B::State: Serialize + DeserializeOwned,
    {
        self.snapshots = Some(Snapshots {
            every,
            encode: |state| codec::encode(state),
            decode: |bytes| codec::decode(bytes),
        });
        self
    }

    /// The name to spawn the entity under: unique per persistence id and
    /// node, and where replicas and handles find it.
    pub fn actor_name(&self) -> String {
        PeerGroup::entity(&self.config.persistence_id).actor_name(self.config.replica.node())
    }
}

/// How an entity that snapshots encodes its state, and how often.
pub struct Snapshots<S> {
    every: usize,
    encode: fn(&S) -> Result<Vec<u8>>,
    decode: DecodeState<S>,
}

/// A reply that waits for the journal flush that makes what it reveals durable.
type PendingReply = Box<dyn FnOnce(std::result::Result<(), &Error>) + Send>;

/// A running entity's state: its replication core, journal and peers.
pub struct EntityState<B: ReplicatedEventSourcedActor, R, J> {
    replication: Replication<B, R>,
    journal: J,
    persistence_id: String,
    node: PeerName,
    peers: Peers<EntityMessage<B>>,
    /// Appended since the last flush.
    unflushed: bool,
    flush_scheduled: bool,
    /// Local events to push to peers once durable: a peer must never hold an
    /// event its origin could lose in a crash and then mint again.
    unannounced: Vec<EventEnvelope<B::Event>>,
    pending_replies: Vec<PendingReply>,
    subscribers: Vec<Subscription<B::Event>>,
    /// Journaled events the subscribers get once they are durable, in the
    /// journal's order.
    unpublished: Vec<EventApplied<B::Event>>,
    /// The local sequence number the journal gives the next event.
    next_sequence: u64,
    rejected_messages: u64,
    history_reloads: u64,
    timers: Vec<JoinHandle<()>>,
    snapshots: Option<Snapshots<B::State>>,
    /// Where the last snapshot's recovery starts reading the journal: every
    /// event before it is covered by that snapshot and the ones to come.
    snapshot_from: u64,
    /// The size of the last snapshot saved: one no larger is stale.
    snapshot_events: u64,
    /// When snapshotting: the local sequence number, origin and origin
    /// sequence number of each event journaled from `positions_from` on, so
    /// that where a snapshot's recovery starts is found in memory instead
    /// of by reading the journal back.
    positions: VecDeque<(u64, ReplicaId, u64)>,
    positions_from: u64,
}

impl<B, R, J> ReplicatedEntity<B, R, J>
where
    B: ReplicatedEventSourcedActor + Sync,
    B::State: Sync,
    R: ConflictResolver<B::Event> + Sync,
    J: Journal + Sync,
{
    /// Spawns a replica of a persistence id, first replaying its journal.
    /// It is registered under a node-unique name made of the persistence id
    /// and the node, so replicas find each other through `config`'s
    /// discovery: spawn one per persistence id per node.
    pub async fn spawn(
        behaviour: B,
        resolver: R,
        journal: J,
        config: EntityConfig,
    ) -> Result<Entity<B>> {
        Self::start(EntityArguments::new(behaviour, resolver, journal, config)).await
    }

    /// Spawns a replica as [`spawn`](Self::spawn) does, which also keeps its
    /// memory and recovery time bounded with snapshots: about every
    /// `snapshot_every` events, it drops from memory the events that every
    /// replica it hears from has seen, keeping the state after them, and
    /// saves that state in the journal. It then starts from the snapshot and
    /// the events after it. Peers that lack dropped events are answered from
    /// the journal, and an event that may sort among them (from a replica cut
    /// off for long) makes the entity read its journal back once.
    pub async fn spawn_with_snapshots(
        behaviour: B,
        resolver: R,
        journal: J,
        config: EntityConfig,
        snapshot_every: usize,
    ) -> Result<Entity<B>>
    where
        B::State: Serialize + DeserializeOwned,
    {
        let arguments = EntityArguments::new(behaviour, resolver, journal, config)
            .with_snapshots(snapshot_every);
        Self::start(arguments).await
    }

    async fn start(arguments: EntityArguments<B, R, J>) -> Result<Entity<B>> {
        let persistence_id = arguments.config.persistence_id.clone();
        let (actor, _) = Actor::spawn(Some(arguments.actor_name()), Self::new(), arguments)
            .await
            .map_err(|err| Error::Start {
                what: "a replicated entity",
                reason: err.to_string(),
            })?;
        Ok(Entity::for_actor(actor, persistence_id))
    }
}

impl<B, R, J> ReplicatedEntity<B, R, J> {
    /// The entity actor, to spawn with [`EntityArguments`].
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<B, R, J> Default for ReplicatedEntity<B, R, J> {
    fn default() -> Self {
        Self::new()
    }
}

/// Saves a snapshot the log compacted. Everything it covers must be durable
/// first: a snapshot claiming events that a crash took back would make the
/// replica mint their ids again. A snapshot that cannot be saved is logged
/// and skipped; the journal still holds every event.
fn save_snapshot<B, R, J>(state: &mut EntityState<B, R, J>, snapshot: Snapshot<B::State>)
where
    B: ReplicatedEventSourcedActor,
    R: ConflictResolver<B::Event>,
    J: Journal,
{
    let Some(snapshots) = &state.snapshots else {
        return;
    };
    // A snapshot taken before the last one saved would come with a read
    // position past events it does not cover.
    if snapshot.events <= state.snapshot_events {
        return;
    }
    let persistence_id = state.persistence_id.as_str();
    let stored = (snapshots.encode)(&snapshot.state).and_then(|encoded| {
        let from_sequence = if state.snapshot_from >= state.positions_from {
            let outside = state
                .positions
                .iter()
                .filter(|(sequence, ..)| *sequence >= state.snapshot_from)
                .find(|(_, origin, origin_seq)| *origin_seq > snapshot.version.get(origin));
            let from_sequence = outside.map_or(state.next_sequence, |(sequence, ..)| *sequence);
            debug_assert!(
                state
                    .journal
                    .first_sequence_outside(persistence_id, &snapshot.version, state.snapshot_from)
                    .ok()
                    .is_none_or(|read| read == from_sequence),
                "the journal positions kept in memory agree with the journal"
            );
            from_sequence
        } else {
            state.journal.first_sequence_outside(
                persistence_id,
                &snapshot.version,
                state.snapshot_from,
            )?
        };
        Ok(StoredSnapshot {
            version: snapshot.version,
            events: snapshot.events,
            from_sequence,
            sequence: state.journal.highest_sequence(persistence_id)?,
            state: encoded,
        })
    });
    let saved = stored.and_then(|stored| {
        state.journal.save_snapshot(persistence_id, &stored)?;
        Ok(stored.from_sequence)
    });
    match saved {
        Ok(from_sequence) => {
            tracing::debug!(
                persistence_id,
                events = snapshot.events,
                from_sequence,
                "saved a snapshot"
            );
            state.snapshot_from = from_sequence;
            state.snapshot_events = snapshot.events;
            while state
                .positions
                .front()
                .is_some_and(|(sequence, ..)| *sequence < from_sequence)
            {
                state.positions.pop_front();
            }
            state.positions_from = state.positions_from.max(from_sequence);
            // Durable with the next flush, at the latest when the entity stops.
            state.unflushed = true;
        }
        Err(err) => {
            tracing::warn!(persistence_id, error = %err, "cannot save a snapshot; recovery replays more events")
        }
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
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> std::result::Result<Self::State, ActorProcessingErr> {
        let config = args.config;
        let mut log = ReplicatedLog::new(config.replica.clone(), args.behaviour, args.resolver);
        let decode = args.snapshots.as_ref().map(|snapshots| snapshots.decode);
        let recovered =
            recover_from_journal(&mut log, &args.journal, &config.persistence_id, decode)?;
        let next_sequence = args
            .journal
            .highest_sequence(&config.persistence_id)?
            .saturating_add(1);
        let mut replication = Replication::new(log, config.max_message_bytes);
        if let Some(snapshots) = &args.snapshots {
            replication = replication.with_snapshots(snapshots.every);
        }
        if let Some(replicas) = config.replicas {
            replication = replication.with_replicas(replicas);
        }
        if let Some(time) = config.stability_time {
            let interval = config.anti_entropy_interval.as_nanos().max(1);
            let ticks = time.as_nanos().div_ceil(interval);
            replication =
                replication.with_stability_ticks(u64::try_from(ticks).unwrap_or(u64::MAX));
        }
        let mut state = EntityState {
            replication,
            journal: args.journal,
            peers: Peers::new(
                config.discovery,
                PeerGroup::entity(&config.persistence_id),
                config.replica.node().to_string(),
            ),
            persistence_id: config.persistence_id,
            node: config.replica.node().to_string(),
            unflushed: false,
            flush_scheduled: false,
            unannounced: Vec::new(),
            pending_replies: Vec::new(),
            subscribers: Vec::new(),
            unpublished: Vec::new(),
            next_sequence,
            rejected_messages: 0,
            history_reloads: 0,
            timers: Vec::new(),
            snapshots: args.snapshots,
            snapshot_from: recovered.snapshot_from.unwrap_or(1),
            positions: VecDeque::new(),
            positions_from: next_sequence,
            snapshot_events: 0,
        };
        if state.peers.register(&myself.get_cell()) {
            state.peers.request(&myself, || Inbound::Discover.into());
            if let Some(interval) = config.discovery_interval {
                state.timers.push(
                    myself.send_interval(interval, || EntityMessage::from(Inbound::Discover)),
                );
            }
            state
                .timers
                .push(myself.send_interval(config.anti_entropy_interval, || {
                    EntityMessage::from(Inbound::AntiEntropy)
                }));
        }
        if let Some(events) = config.membership {
            events.subscribe(myself.clone());
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        for timer in state.timers.drain(..) {
            timer.abort();
        }
        // Drained commands may wait for their flush, which may save a
        // snapshot, made durable by a second one.
        let _ = flush(state);
        if state.unflushed {
            let _ = state.journal.flush();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let inbound = match message {
            EntityMessage::Command(command, reply) => {
                handle_command(&myself, state, command, reply)?;
                return Ok(());
            }
            EntityMessage::State(reply) => {
                let current = state.replication.log().state().clone();
                // If the flush fails, the state may hold events that are
                // lost: no answer.
                answer_after_flush(&myself, state, move |flushed| {
                    if flushed.is_ok() {
                        let _ = reply.send(current);
                    }
                });
                return Ok(());
            }
            EntityMessage::Stats(reply) => {
                let _ = reply.send(stats(state));
                return Ok(());
            }
            EntityMessage::Subscribe(subscription) => {
                subscribe(state, subscription)?;
                return Ok(());
            }
            EntityMessage::Unsubscribe(listener) => {
                state
                    .subscribers
                    .retain(|subscription| subscription.listener != listener);
                return Ok(());
            }
            EntityMessage::Internal(Internal(inbound)) => inbound,
        };
        let effects = match inbound {
            Inbound::Peer(envelope) => {
                if envelope.persistence_id == state.persistence_id {
                    if !state.peers.contains(&envelope.from) {
                        // A replica this one does not know yet (its process
                        // group entry is still on its way): answers would
                        // have nowhere to go.
                        state.peers.request(&myself, || Inbound::Discover.into());
                    }
                    state
                        .replication
                        .handle_message(&envelope.from, envelope.message)
                } else {
                    reject(state, "a message for another persistence id");
                    Vec::new()
                }
            }
            Inbound::Undecodable(reason) => {
                reject(state, &reason);
                Vec::new()
            }
            Inbound::Discover => discover(state).await,
            Inbound::Removed(node) => {
                tracing::info!(
                    node,
                    persistence_id = state.persistence_id,
                    "replica removed"
                );
                state.replication.peer_removed(&node);
                Vec::new()
            }
            Inbound::AntiEntropy => state.replication.tick(),
            Inbound::Flush => {
                state.flush_scheduled = false;
                flush(state)?;
                Vec::new()
            }
        };
        run_effects(&myself, state, effects)
    }

    /// An entity supervises nothing; ractor tells it here that its replicas'
    /// process group changed.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        if state.peers.changed(&event) {
            state.peers.request(&myself, || Inbound::Discover.into());
        }
        Ok(())
    }
}

fn handle_command<B, R, J>(
    myself: &ActorRef<EntityMessage<B>>,
    state: &mut EntityState<B, R, J>,
    command: B::Command,
    reply: ReplyTo<CommandResult<B::Reply>>,
) -> Result<()>
where
    B: ReplicatedEventSourcedActor,
    R: ConflictResolver<B::Event>,
    J: Journal,
{
    let log = state.replication.log();
    let context = ReplicationContext {
        replica: log.replica(),
        persistence_id: &state.persistence_id,
    };
    let decided = catch_panic(&state.persistence_id, || {
        log.handler().handle_command(log.state(), command, context)
    });
    let (events, answer) = match decided {
        Ok(effect) => effect.into_parts(),
        Err(err) => {
            // The handler only decides: nothing was journaled or applied.
            reply.send(Err(err));
            return Ok(());
        }
    };
    if events.is_empty() {
        answer_after_flush(myself, state, move |flushed| {
            reply.send(flushed.map(|()| answer).map_err(Error::clone));
        });
        return Ok(());
    }
    let stamped = state.replication.log().stamp(events, now_millis());
    match state.journal.append(&state.persistence_id, &stamped) {
        Err(err) => {
            // Atomic: nothing of the command reached the journal, so nothing
            // is applied and the entity can go on.
            tracing::error!(persistence_id = state.persistence_id, error = %err, "the journal refused a command's events");
            reply.send(Err(err));
            return Ok(());
        }
        Ok(added) if added != stamped.len() => {
            // The journal already holds events under these ids: this replica
            // is behind its own journal (a reused replica id, or a write
            // reported failed that landed). Restarting from the journal is
            // the way back.
            let err = Error::Store {
                path: state.persistence_id.clone(),
                key: stamped
                    .first()
                    .map(|e| format!("{}#{}", e.origin, e.origin_seq)),
                reason: "the journal already holds an event with this id; the entity stops".into(),
            };
            tracing::error!(persistence_id = state.persistence_id, error = %err, "event id already journaled");
            reply.send(Err(err.clone()));
            return Err(err);
        }
        Ok(_) => {}
    }
    state.unflushed = true;
    journaled(state, &stamped);
    state
        .replication
        .log_mut()
        .receive_all(stamped.iter().cloned());
    state.unannounced.extend(stamped);
    answer_after_flush(myself, state, move |flushed| {
        reply.send(flushed.map(|()| answer).map_err(Error::clone));
    });
    Ok(())
}

/// Answers once everything the answer may reveal is durable: at once if
/// nothing waits for the journal, else after the next flush, in order.
fn answer_after_flush<B, R, J>(
    myself: &ActorRef<EntityMessage<B>>,
    state: &mut EntityState<B, R, J>,
    answer: impl FnOnce(std::result::Result<(), &Error>) + Send + 'static,
) where
    B: ReplicatedEventSourcedActor,
    J: Journal,
{
    if !state.unflushed && state.pending_replies.is_empty() {
        answer(Ok(()));
        return;
    }
    state.pending_replies.push(Box::new(answer));
    schedule_flush(myself, state);
}

/// The flush goes behind the messages already queued, so that one disk sync
/// covers every command among them (group commit).
fn schedule_flush<B, R, J>(myself: &ActorRef<EntityMessage<B>>, state: &mut EntityState<B, R, J>)
where
    B: ReplicatedEventSourcedActor,
{
    if !state.flush_scheduled {
        state.flush_scheduled = myself.cast(EntityMessage::from(Inbound::Flush)).is_ok();
    }
}

/// Makes the journal durable, then answers the waiting replies and pushes the
/// new local events. A journal that cannot flush stops the entity: what it
/// holds in memory may be ahead of its disk.
fn flush<B, R, J>(state: &mut EntityState<B, R, J>) -> Result<()>
where
    B: ReplicatedEventSourcedActor,
    R: ConflictResolver<B::Event>,
    J: Journal,
{
    let outcome = if state.unflushed {
        state.journal.flush()
    } else {
        Ok(())
    };
    state.unflushed = false;
    for reply in state.pending_replies.drain(..) {
        reply(outcome.as_ref().map(|_| ()));
    }
    if let Err(err) = outcome {
        // Maybe not durable: never pushed, so no peer can hold an event this
        // replica might mint again. If it was durable, anti-entropy carries
        // it after the restart.
        state.unannounced.clear();
        state.unpublished.clear();
        tracing::error!(persistence_id = state.persistence_id, error = %err, "cannot flush the journal; the entity stops");
        return Err(err);
    }
    let events = std::mem::take(&mut state.unannounced);
    let effects = state.replication.persisted(&events);
    let (snapshots, sends): (Vec<_>, Vec<_>) = effects
        .into_iter()
        .partition(|effect| matches!(effect, ReplicationEffect::Snapshot(_)));
    send(state, sends);
    publish(state);
    // Everything applied is durable now.
    for effect in snapshots {
        if let ReplicationEffect::Snapshot(snapshot) = effect {
            save_snapshot(state, snapshot);
        }
    }
    Ok(())
}

fn run_effects<B, R, J>(
    myself: &ActorRef<EntityMessage<B>>,
    state: &mut EntityState<B, R, J>,
    effects: Effects<B>,
) -> std::result::Result<(), ActorProcessingErr>
where
    B: ReplicatedEventSourcedActor,
    R: ConflictResolver<B::Event>,
    J: Journal,
{
    let mut sends = Vec::new();
    let mut effects = VecDeque::from(effects);
    while let Some(effect) = effects.pop_front() {
        match effect {
            ReplicationEffect::Journal(events) => {
                // Already applied: a journal that refuses them stops the
                // entity, which recovers from its journal and the peers.
                match state.journal.append(&state.persistence_id, &events) {
                    Err(err) => {
                        tracing::error!(persistence_id = state.persistence_id, error = %err, "cannot journal replicated events; the entity stops");
                        return Err(err.into());
                    }
                    Ok(added) if added != events.len() => {
                        // The journal held some already (two entities on one
                        // persistence id and journal): numbering from it.
                        tracing::warn!(
                            persistence_id = state.persistence_id,
                            "the journal already held replicated events the log did not"
                        );
                        state.next_sequence = state
                            .journal
                            .highest_sequence(&state.persistence_id)?
                            .saturating_add(1);
                        state.positions.clear();
                        state.positions_from = state.next_sequence;
                    }
                    Ok(_) => journaled(state, &events),
                }
                state.unflushed = true;
                schedule_flush(myself, state);
            }
            send @ ReplicationEffect::Send { .. } => sends.push(send),
            ReplicationEffect::Snapshot(snapshot) => {
                if state.unflushed || !state.unannounced.is_empty() {
                    flush(state)?;
                }
                save_snapshot(state, snapshot);
            }
            ReplicationEffect::ServeFromJournal { to, version } => {
                match state.journal.missing_for(&state.persistence_id, &version) {
                    Ok(missing) => sends.extend(state.replication.events_for(&to, &missing)),
                    // Other replicas can serve the peer.
                    Err(err) => {
                        tracing::error!(persistence_id = state.persistence_id, peer = to, error = %err, "cannot read the journal to answer a peer")
                    }
                }
            }
            ReplicationEffect::LoadHistory => {
                // Delivery waits for the history: without it the entity
                // would stop taking in replicated events for good.
                let journaled = state
                    .journal
                    .read_from(&state.persistence_id, 1)
                    .inspect_err(|err| {
                        tracing::error!(persistence_id = state.persistence_id, error = %err, "cannot read the journal back for a late event; the entity stops")
                    })?;
                tracing::info!(
                    persistence_id = state.persistence_id,
                    events = journaled.len(),
                    "an event may sort among compacted events; read the journal back"
                );
                // The next snapshot may cover less than the last one.
                state.snapshot_from = 1;
                state.snapshot_events = 0;
                state.history_reloads += 1;
                effects.extend(
                    state
                        .replication
                        .history_loaded(journaled.into_iter().map(|(_, envelope)| envelope)),
                );
            }
        }
    }
    if !sends.is_empty() {
        // Answers to peers may carry local events: durable first.
        if state.unflushed || !state.unannounced.is_empty() {
            flush(state)?;
        }
        send(state, sends);
    }
    Ok(())
}

fn send<B, R, J>(state: &mut EntityState<B, R, J>, effects: Effects<B>)
where
    B: ReplicatedEventSourcedActor,
    R: ConflictResolver<B::Event>,
{
    for effect in effects {
        let ReplicationEffect::Send { to, message } = effect else {
            continue;
        };
        let Some(peer) = state.peers.get(&to) else {
            tracing::debug!(
                peer = to,
                "no route to the replica; anti-entropy will cover it"
            );
            continue;
        };
        let envelope = PeerEnvelope {
            persistence_id: state.persistence_id.clone(),
            from: state.node.clone(),
            message,
        };
        if peer.cast(Inbound::Peer(envelope).into()).is_err() {
            // The next round finds its new proxy, if any.
            tracing::debug!(peer = to, "replica proxy stopped");
            state.peers.forget(&to);
            state.replication.peer_down(&to);
        }
    }
}

/// Numbers events just appended to the journal, for the subscribers.
fn journaled<B: ReplicatedEventSourcedActor, R, J>(
    state: &mut EntityState<B, R, J>,
    events: &[EventEnvelope<B::Event>],
) {
    for envelope in events {
        if state.snapshots.is_some() {
            state.positions.push_back((
                state.next_sequence,
                envelope.origin.clone(),
                envelope.origin_seq,
            ));
        }
        // A subscriber that comes later gets only events journaled after
        // it, or replays the journal.
        if !state.subscribers.is_empty() {
            state.unpublished.push(EventApplied {
                sequence: state.next_sequence,
                envelope: envelope.clone(),
            });
        }
        state.next_sequence = state.next_sequence.saturating_add(1);
    }
}

/// Tells the subscribers of the events made durable; those gone are
/// dropped.
fn publish<B, R, J>(state: &mut EntityState<B, R, J>)
where
    B: ReplicatedEventSourcedActor,
{
    let events = std::mem::take(&mut state.unpublished);
    if events.is_empty() {
        return;
    }
    state
        .subscribers
        .retain_mut(|subscription| events.iter().all(|event| (subscription.notify)(event)));
}

/// Adds a subscriber, after replaying the journal to it if it asked. The
/// flush first publishes what the journal holds to the subscribers before
/// it, so the replay ends where the new one's live events begin.
fn subscribe<B, R, J>(
    state: &mut EntityState<B, R, J>,
    mut subscription: Subscription<B::Event>,
) -> Result<()>
where
    B: ReplicatedEventSourcedActor,
    R: ConflictResolver<B::Event>,
    J: Journal,
{
    if let Some(from) = subscription.from {
        flush(state)?;
        let journaled = match state.journal.read_from(&state.persistence_id, from.max(1)) {
            Ok(journaled) => journaled,
            Err(err) => {
                tracing::error!(persistence_id = state.persistence_id, error = %err, "cannot read the journal to replay it to a subscriber; not subscribed");
                return Ok(());
            }
        };
        for (sequence, envelope) in journaled {
            if !(subscription.notify)(&EventApplied { sequence, envelope }) {
                return Ok(());
            }
        }
    }
    state.subscribers.push(subscription);
    Ok(())
}

fn reject<B: ReplicatedEventSourcedActor, R, J>(state: &mut EntityState<B, R, J>, reason: &str) {
    state.rejected_messages += 1;
    tracing::warn!(
        persistence_id = state.persistence_id,
        reason,
        "rejected an undecodable replication message"
    );
}

fn stats<B, R, J>(state: &EntityState<B, R, J>) -> EntityStats
where
    B: ReplicatedEventSourcedActor,
    R: ConflictResolver<B::Event>,
{
    let log = state.replication.log();
    EntityStats {
        events: log.applied_events(),
        compacted_events: log.compacted_events(),
        waiting: log.waiting(),
        version: log.version().clone(),
        reachable_peers: state.peers.nodes(),
        rejected_messages: state.rejected_messages,
        history_reloads: state.history_reloads,
    }
}

/// Runs a discovery round and tells replication which replicas came and
/// went.
async fn discover<B, R, J>(state: &mut EntityState<B, R, J>) -> Effects<B>
where
    B: ReplicatedEventSourcedActor,
    R: ConflictResolver<B::Event>,
{
    let mut effects = Vec::new();
    for change in state.peers.round().await {
        match change {
            PeerChange::Down(node) => state.replication.peer_down(&node),
            PeerChange::Up(node, _) => effects.extend(state.replication.peer_up(&node)),
        }
    }
    effects
}
