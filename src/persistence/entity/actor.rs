use std::marker::PhantomData;

use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, Message, RpcReplyPort, SupervisionEvent,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::core::{CommandResult, EntityCore, EntityIo, EventApplied, Snapshots};
use super::handle::{Entity, EntityConfig, EntityStats};
use super::ReplicatedEventSourcedActor;
use crate::cluster::MemberEvent;
use crate::ddata::PeerName;
use crate::discovery::{PeerChange, PeerGroup, Peers};
use crate::disk_wait::disk_wait;
use crate::error::{catch_panic, Error, Result};
use crate::persistence::journal::Journal;
use crate::persistence::{ConflictResolver, ReplicatedLog, ReplicationMessage};
use crate::remote_cast::remote_message;
use crate::reply::ReplyTo;
use crate::timers::Timers;

/// The ractor message variant of replication messages between entities.
pub const ENTITY_MESSAGE_VARIANT: &str = "ractor_replicated.entity.v1";

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
    pub(super) fn new<M>(listener: ActorRef<M>, from: Option<u64>) -> Self
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

impl<E> Subscription<E> {
    /// The subscriber.
    pub(super) fn listener(&self) -> ActorId {
        self.listener
    }

    /// Sends the subscriber `event`; false once it is gone.
    pub(super) fn notify(&mut self, event: &EventApplied<E>) -> bool {
        (self.notify)(event)
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

impl<E: Send + 'static> ractor::Message for EventApplied<E> {}

/// A replication message with its sender, as it travels.
#[derive(Serialize, Deserialize)]
pub(super) struct PeerEnvelope<E> {
    persistence_id: String,
    from: PeerName,
    message: ReplicationMessage<E>,
}

remote_message!(
    [B: ReplicatedEventSourcedActor] EntityMessage<B>,
    ENTITY_MESSAGE_VARIANT,
    Self::Internal(Internal(Inbound::Peer(envelope))) => envelope
);

/// The entity's type parameters, held without owning any of them.
pub(super) type Parameters<B, R, J> = PhantomData<fn() -> (B, R, J)>;

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
        self.snapshots = Some(Snapshots::every(every));
        self
    }

    /// The name to spawn the entity under: unique per persistence id and
    /// node, and where replicas and handles find it.
    pub fn actor_name(&self) -> String {
        PeerGroup::entity(&self.config.persistence_id).actor_name(self.config.replica.node())
    }
}

/// A running entity's state: its core, and the shell that connects it to
/// its peers and subscribers.
pub struct EntityState<B: ReplicatedEventSourcedActor, R, J> {
    core: EntityCore<B, R, J>,
    shell: Shell<B>,
}

/// What an entity's core asks of the actor: routes to the peers, the
/// mailbox for group commit, and the subscribers.
struct Shell<B: ReplicatedEventSourcedActor> {
    myself: ActorRef<EntityMessage<B>>,
    persistence_id: String,
    node: PeerName,
    peers: Peers<EntityMessage<B>>,
    subscribers: Vec<Subscription<B::Event>>,
    rejected_messages: u64,
    timers: Timers,
}

impl<B: ReplicatedEventSourcedActor> EntityIo<B::Event> for Shell<B> {
    fn send(&mut self, to: &str, message: ReplicationMessage<B::Event>) -> bool {
        let Some(peer) = self.peers.get(to) else {
            tracing::debug!(
                peer = to,
                "no route to the replica; anti-entropy will cover it"
            );
            return true;
        };
        let envelope = PeerEnvelope {
            persistence_id: self.persistence_id.clone(),
            from: self.node.clone(),
            message,
        };
        if peer.cast(Inbound::Peer(envelope).into()).is_err() {
            // The next round finds its new proxy, if any.
            tracing::debug!(peer = to, "replica proxy stopped");
            self.peers.forget(to);
            return false;
        }
        true
    }

    /// The flush goes behind the messages already queued, so that one disk
    /// sync covers every command among them.
    fn schedule_flush(&mut self) -> bool {
        self.myself
            .cast(EntityMessage::from(Inbound::Flush))
            .is_ok()
    }

    fn publishing(&self) -> bool {
        !self.subscribers.is_empty()
    }

    /// Subscribers that are gone are dropped.
    fn publish(&mut self, events: Vec<EventApplied<B::Event>>) {
        self.subscribers
            .retain_mut(|subscription| events.iter().all(|event| subscription.notify(event)));
    }
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
            .map_err(|err| Error::start("a replicated entity", err))?;
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
        let log = ReplicatedLog::new(config.replica.clone(), args.behaviour, args.resolver);
        let mut core = EntityCore::recover(
            config.persistence_id.clone(),
            log,
            args.journal,
            args.snapshots
                .map(|snapshots| snapshots.with_retention(config.retention)),
            config.max_message_bytes,
        )?;
        if let Some(replicas) = config.replicas {
            core = core.with_replicas(replicas);
        }
        if let Some(time) = config.stability_time {
            let interval = config.anti_entropy_interval.as_nanos().max(1);
            let ticks = time.as_nanos().div_ceil(interval);
            core = core.with_stability_ticks(u64::try_from(ticks).unwrap_or(u64::MAX));
        }
        let mut shell = Shell {
            myself: myself.clone(),
            peers: Peers::new(
                config.discovery,
                PeerGroup::entity(&config.persistence_id),
                config.replica.node().to_string(),
            ),
            persistence_id: config.persistence_id,
            node: config.replica.node().to_string(),
            subscribers: Vec::new(),
            rejected_messages: 0,
            timers: Timers::default(),
        };
        if shell.peers.register(&myself.get_cell()) {
            shell.peers.request(&myself, || Inbound::Discover.into());
            if let Some(interval) = config.discovery_interval {
                shell
                    .timers
                    .every(&myself, interval, || Inbound::Discover.into());
            }
            shell
                .timers
                .every(&myself, config.anti_entropy_interval, || {
                    Inbound::AntiEntropy.into()
                });
        }
        if let Some(events) = config.membership {
            events.subscribe(myself.clone());
        }
        Ok(EntityState { core, shell })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        state.core.stop(&mut state.shell);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let EntityState { core, shell } = state;
        let inbound = match message {
            EntityMessage::Command(command, reply) => {
                core.command(
                    shell,
                    command,
                    crate::wall_clock::signed_millis(),
                    move |result| reply.send(result),
                )?;
                return Ok(());
            }
            EntityMessage::State(reply) => {
                let current = core.log().state().clone();
                // If the flush fails, the state may hold events that are
                // lost: no answer.
                core.answer_after_flush(shell, move |flushed| {
                    if flushed.is_ok() {
                        let _ = reply.send(current);
                    }
                });
                return Ok(());
            }
            EntityMessage::Stats(reply) => {
                let _ = reply.send(stats(core, shell.peers.nodes(), shell.rejected_messages));
                return Ok(());
            }
            EntityMessage::Subscribe(subscription) => {
                if let Some(subscription) = replay_to(core, shell, subscription)? {
                    shell.subscribers.push(subscription);
                }
                return Ok(());
            }
            EntityMessage::Unsubscribe(listener) => {
                shell
                    .subscribers
                    .retain(|subscription| subscription.listener() != listener);
                return Ok(());
            }
            EntityMessage::Internal(Internal(inbound)) => inbound,
        };
        match inbound {
            Inbound::Peer(envelope) => {
                if envelope.persistence_id == core.persistence_id() {
                    if !shell.peers.contains(&envelope.from) {
                        // A replica this one does not know yet (its process
                        // group entry is still on its way): answers would
                        // have nowhere to go.
                        shell.peers.request(&myself, || Inbound::Discover.into());
                    }
                    core.received(shell, &envelope.from, envelope.message)?;
                } else {
                    reject(shell, "a message for another persistence id");
                }
            }
            Inbound::Undecodable(reason) => reject(shell, &reason),
            Inbound::Discover => {
                for change in shell.peers.round().await {
                    match change {
                        PeerChange::Down(node) => core.peer_down(&node),
                        PeerChange::Up(node, _) => core.peer_up(shell, &node)?,
                    }
                }
            }
            Inbound::Removed(node) => {
                tracing::info!(
                    node,
                    persistence_id = core.persistence_id(),
                    "replica removed"
                );
                core.peer_removed(&node);
            }
            Inbound::AntiEntropy => core.tick(shell)?,
            Inbound::Flush => disk_wait(|| core.scheduled_flush(shell))?,
        }
        Ok(())
    }

    /// An entity supervises nothing; ractor tells it here that its replicas'
    /// process group changed.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        state
            .shell
            .peers
            .on_supervision(&event, &myself, || Inbound::Discover.into());
        Ok(())
    }
}

/// Replays the journal to a new subscriber if it asked (see
/// [`EntityCore::replay`]), and gives it back to be added (`None` if it went
/// away meanwhile).
pub(super) fn replay_to<B, R, J>(
    core: &mut EntityCore<B, R, J>,
    io: &mut impl EntityIo<B::Event>,
    mut subscription: Subscription<B::Event>,
) -> Result<Option<Subscription<B::Event>>>
where
    B: ReplicatedEventSourcedActor,
    R: ConflictResolver<B::Event>,
    J: Journal,
{
    let kept = match subscription.from {
        Some(from) => core.replay(io, from, |event| subscription.notify(event))?,
        None => true,
    };
    Ok(kept.then_some(subscription))
}

fn reject<B: ReplicatedEventSourcedActor>(shell: &mut Shell<B>, reason: &str) {
    shell.rejected_messages += 1;
    tracing::warn!(
        persistence_id = shell.persistence_id,
        reason,
        "rejected an undecodable replication message"
    );
}

/// What an entity has done, with what its runner knows of its peers.
pub(super) fn stats<B, R, J>(
    core: &EntityCore<B, R, J>,
    reachable_peers: Vec<PeerName>,
    rejected_messages: u64,
) -> EntityStats
where
    B: ReplicatedEventSourcedActor,
    R: ConflictResolver<B::Event>,
    J: Journal,
{
    let log = core.log();
    EntityStats {
        events: log.applied_events(),
        compacted_events: log.compacted_events(),
        waiting: log.waiting(),
        version: log.version().clone(),
        reachable_peers,
        rejected_messages,
        history_reloads: core.history_reloads(),
        refused_events: log.refused_events(),
        catching_up: core.holds_commands(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{a, b, events, pinned_encoding, pinned_text, version};
    use crate::persistence::SnapshotOffer;

    #[test]
    fn golden_replication_messages() {
        let messages: [(&str, ReplicationMessage<String>); 7] = [
            ("events", ReplicationMessage::Events(events())),
            ("version", ReplicationMessage::Version(version(&[(a(), 3)]))),
            ("report", ReplicationMessage::Report(version(&[(b(), 1)]))),
            (
                "in_sync",
                ReplicationMessage::InSync(version(&[(a(), 1), (b(), 2)])),
            ),
            (
                "snapshot",
                ReplicationMessage::Snapshot(SnapshotOffer {
                    version: version(&[(a(), 2)]),
                    events: 2,
                    state: vec![0xc0, 0x01],
                    holds: version(&[(a(), 3), (b(), 1)]),
                }),
            ),
            (
                "introduce",
                ReplicationMessage::Introduce {
                    replica: b(),
                    version: version(&[(a(), 3)]),
                },
            ),
            (
                "welcome",
                ReplicationMessage::Welcome {
                    replica: b(),
                    version: version(&[(a(), 3), (b(), 1)]),
                },
            ),
        ];
        for (name, message) in messages {
            let envelope = PeerEnvelope {
                persistence_id: "account-1".into(),
                from: "node-a".into(),
                message,
            };
            pinned_encoding(&format!("entity_{name}"), &envelope);
        }
        pinned_text("entity_variant.txt", &format!("{ENTITY_MESSAGE_VARIANT}\n"));
    }
}
