//! Many entities of one type on a node, in one actor: the entity router.
//!
//! A node that runs an account or a cart per user runs many entities of one
//! type. One actor per entity would cost one process group, one remote
//! proxy on every peer, one timer and one discovery per entity; the router
//! hosts every entity of its type on its node as an [`EntityCore`] instead,
//! and shares the rest: one process group per type (so one proxy per peer),
//! one anti-entropy timer whose version reports travel batched per peer,
//! one membership subscription, and one journal flush for every entity that
//! journaled since the last (group commit across entities). Entities start
//! on their first command or replicated message, from their journal, and
//! passivate after an idle time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, Message, RpcReplyPort, SupervisionEvent,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::actor::{replay_to, stats, Parameters, Subscription};
use super::core::{CommandResult, EntityCore, EntityIo, EventApplied, Retention, Snapshots};
use super::handle::EntityStats;
use super::ReplicatedEventSourcedActor;
use crate::causal::{ReplicaId, VersionVector};
use crate::cluster::{MemberEvent, MemberEvents};
use crate::codec;
use crate::ddata::wire::split_by_budget;
use crate::ddata::PeerName;
use crate::discovery::{Discovery, PeerChange, PeerGroup, Peers};
use crate::disk_wait::disk_wait;
use crate::error::{Chain, Error, Result, Unavailability};
use crate::persistence::journal::Journal;
use crate::persistence::{ConflictResolver, ReplicatedLog, ReplicationMessage};
use crate::remote_cast::remote_message;
use crate::reply::ReplyTo;
use crate::timers::Timers;

/// The ractor message variant of the messages between the routers of one
/// entity type.
pub const ROUTER_MESSAGE_VARIANT: &str = "ractor_replicated.entities.v1";

/// By default, how many entities a router runs at once (about 260 MiB of
/// entities with two peers and small states).
pub const DEFAULT_MAX_RUNNING: usize = 100_000;

/// Makes the behaviour and conflict resolver of the entity with a given
/// persistence id.
type Factory<B, R> = Box<dyn Fn(&str) -> (B, R) + Send + Sync>;

/// A type of entity that a node runs many of, each under its own
/// persistence id: what [`EntityRouter`] starts with.
pub struct EntityType<B: ReplicatedEventSourcedActor, R, J> {
    name: String,
    replica: ReplicaId,
    journal: J,
    factory: Factory<B, R>,
    snapshots: Option<Snapshots<B::State>>,
    retention: Retention,
    discovery: Option<Box<dyn Discovery>>,
    membership: Option<MemberEvents>,
    anti_entropy_interval: Duration,
    passivate_after: Option<Duration>,
    max_running: usize,
    max_message_bytes: usize,
    replicas: Option<Vec<PeerName>>,
}

impl<B: ReplicatedEventSourcedActor, R, J> EntityType<B, R, J> {
    /// The entity type `name` (the same on every node that runs it), run on
    /// this node as replica `replica` of each of its entities, journaled in
    /// `journal`; `factory` makes the behaviour and resolver of an entity
    /// from its persistence id.
    ///
    /// As with [`EntityConfig::new`](super::EntityConfig::new), a replica
    /// id belongs to its journal: keep it across restarts with the same
    /// journal, and take a new one for a new or wiped journal.
    pub fn new(
        name: impl Into<String>,
        replica: ReplicaId,
        journal: J,
        factory: impl Fn(&str) -> (B, R) + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            replica,
            journal,
            factory: Box::new(factory),
            snapshots: None,
            retention: Retention::KeepAll,
            discovery: None,
            membership: None,
            anti_entropy_interval: Duration::from_secs(1),
            passivate_after: Some(Duration::from_secs(120)),
            max_running: DEFAULT_MAX_RUNNING,
            max_message_bytes: 4 * 1024 * 1024,
            replicas: None,
        }
    }

    /// Snapshots each entity about every `events` events (see
    /// [`ReplicatedEntity::spawn_with_snapshots`](super::ReplicatedEntity::spawn_with_snapshots)).
    pub fn with_snapshots(mut self, events: usize) -> Self
    where
        B::State: Serialize + DeserializeOwned,
    {
        self.snapshots = Some(Snapshots::every(events));
        self
    }

    /// Finds the routers of the same type on other nodes with `discovery`
    /// (a [`ClusterNode`](crate::cluster::ClusterNode)'s, say).
    pub fn with_discovery(mut self, discovery: impl Discovery) -> Self {
        self.discovery = Some(Box::new(discovery));
        self
    }

    /// Subscribes the router to membership events, so that a node removed
    /// from the cluster no longer holds compaction back.
    pub(crate) fn with_membership(mut self, events: MemberEvents) -> Self {
        self.membership = Some(events);
        self
    }

    /// How often each entity that runs reports its version to a peer
    /// (default 1 s); the reports of all of them travel together.
    pub fn with_anti_entropy_interval(mut self, interval: Duration) -> Self {
        self.anti_entropy_interval = interval;
        self
    }

    /// How long an entity stays in memory without a command or a new
    /// event (default 120 s), or `None` to keep every entity that started.
    /// A passivated entity starts again from its journal when a command or
    /// a replicated event comes for it, or when a peer's version report
    /// shows that one of the two lacks events.
    pub fn with_passivation(mut self, after: Option<Duration>) -> Self {
        self.passivate_after = after;
        self
    }

    /// At most `entities` run at once (default [`DEFAULT_MAX_RUNNING`]):
    /// starting one more passivates the least recently active first. This
    /// bounds the router's memory whatever commands and peers ask of it.
    pub fn with_max_running(mut self, entities: usize) -> Self {
        self.max_running = entities.max(1);
        self
    }

    /// The largest message between routers, in bytes (default 4 MiB).
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// The nodes that run this entity type (see
    /// [`EntityConfig::with_replicas`](super::EntityConfig::with_replicas)).
    pub fn with_replicas(mut self, nodes: impl IntoIterator<Item = impl Into<PeerName>>) -> Self {
        self.replicas = Some(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// Which events the journal keeps (see
    /// [`EntityConfig::with_retention`](super::EntityConfig::with_retention)).
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The name to spawn the router under: unique per type and node, and
    /// how the routers of other nodes find it.
    pub fn actor_name(&self) -> String {
        PeerGroup::entity_type(&self.name).actor_name(self.replica.node())
    }
}

/// The router's messages. Each names the entity it is for by persistence
/// id; the entity starts if it is not running.
pub enum RouterMessage<B: ReplicatedEventSourcedActor> {
    /// Run a command on an entity; the outcome goes to the reply target
    /// once its events are durable.
    Command(String, B::Command, ReplyTo<CommandResult<B::Reply>>),
    /// An entity's state, once everything it holds is durable.
    State(String, RpcReplyPort<B::State>),
    /// What an entity has done.
    Stats(String, RpcReplyPort<EntityStats>),
    /// How many entities run now (not passivated).
    Running(RpcReplyPort<usize>),
    /// Send the subscriber the events this replica of an entity applies;
    /// they stop when the entity passivates.
    Subscribe(String, Subscription<B::Event>),
    /// Stop sending an entity's events to this subscriber.
    Unsubscribe(String, ActorId),
    /// Routers' messages to each other, and the router's own timers.
    #[doc(hidden)]
    Internal(RouterInternal<B>),
}

/// The router's messages to itself and to its peers: not for users.
#[doc(hidden)]
pub struct RouterInternal<B: ReplicatedEventSourcedActor>(Inbound<B>);

enum Inbound<B: ReplicatedEventSourcedActor> {
    Peer(Batch<B::Event>),
    Undecodable(String),
    Discover,
    Removed(PeerName),
    Tick,
    Flush,
    SendOutbound,
}

impl<B: ReplicatedEventSourcedActor> From<Inbound<B>> for RouterMessage<B> {
    fn from(inbound: Inbound<B>) -> Self {
        Self::Internal(RouterInternal(inbound))
    }
}

impl<B: ReplicatedEventSourcedActor> From<MemberEvent> for RouterMessage<B> {
    fn from(event: MemberEvent) -> Self {
        match event {
            MemberEvent::Up(_) | MemberEvent::Down(_) => Inbound::Discover.into(),
            MemberEvent::Removed(node) => Inbound::Removed(node).into(),
        }
    }
}

/// A replication message to the entity of a persistence id.
type Addressed<E> = (String, ReplicationMessage<E>);

/// Replication messages of many entities from one router to another.
#[derive(Serialize, Deserialize)]
struct Batch<E> {
    from: PeerName,
    messages: Vec<Addressed<E>>,
}

remote_message!(
    [B: ReplicatedEventSourcedActor] RouterMessage<B>,
    ROUTER_MESSAGE_VARIANT,
    Self::Internal(RouterInternal(Inbound::Peer(batch))) => batch
);

/// The entity router actor: every entity of one type on one node. Spawn it
/// with [`EntityRouter::spawn`], or yourself with an [`EntityType`] as
/// arguments (under a supervisor, say), named by
/// [`EntityType::actor_name`].
pub struct EntityRouter<B, R, J>(Parameters<B, R, J>);

impl<B, R, J> EntityRouter<B, R, J> {
    /// The router actor, to spawn with an [`EntityType`].
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<B, R, J> Default for EntityRouter<B, R, J> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B, R, J> EntityRouter<B, R, J>
where
    B: ReplicatedEventSourcedActor + Sync,
    B::State: Sync,
    R: ConflictResolver<B::Event> + Sync,
    J: Journal + Clone + Sync,
{
    /// Spawns the router of `entity_type` on this node.
    pub async fn spawn(entity_type: EntityType<B, R, J>) -> Result<Entities<B>> {
        let (router, _) = Actor::spawn(Some(entity_type.actor_name()), Self::new(), entity_type)
            .await
            .map_err(|err| Error::start("an entity router", err))?;
        Ok(Entities { router })
    }
}

/// An entity the router runs, and who listens to it.
struct Hosted<B: ReplicatedEventSourcedActor, R, J> {
    core: EntityCore<B, R, J>,
    subscribers: Vec<Subscription<B::Event>>,
    last_active: Instant,
}

/// What an entity that passivated had applied: enough to tell, from a
/// peer's version report, whether one of the two lacks events.
type Passivated = HashMap<String, VersionVector>;

/// A running router's state.
pub struct RouterState<B: ReplicatedEventSourcedActor, R, J> {
    entity_type: EntityType<B, R, J>,
    entities: HashMap<String, Hosted<B, R, J>>,
    passivated: Passivated,
    /// Nodes removed from the cluster (and not up since): entities that
    /// start later must not wait for them either.
    removed: BTreeSet<PeerName>,
    shared: Shared<B>,
    timers: Timers,
}

/// What the entities of a router share, apart from the entities.
struct Shared<B: ReplicatedEventSourcedActor> {
    myself: ActorRef<RouterMessage<B>>,
    node: PeerName,
    peers: Peers<RouterMessage<B>>,
    max_message_bytes: usize,
    /// Messages to peers, sent together once the mailbox gets to them.
    outbound: BTreeMap<PeerName, Vec<Addressed<B::Event>>>,
    outbound_scheduled: bool,
    /// Entities that asked for a flush.
    flush_due: BTreeSet<String>,
    flush_scheduled: bool,
    rejected_messages: u64,
}

impl<B: ReplicatedEventSourcedActor> Shared<B> {
    /// Queues `message` for the entity `persistence_id` on node `to`, sent
    /// with everything else queued once the mailbox gets to it.
    fn send(&mut self, to: &str, persistence_id: &str, message: ReplicationMessage<B::Event>) {
        if !self.peers.contains(to) {
            tracing::debug!(
                peer = to,
                "no route to the router; anti-entropy will cover it"
            );
            return;
        }
        self.outbound
            .entry(to.to_string())
            .or_default()
            .push((persistence_id.to_string(), message));
        if !self.outbound_scheduled {
            self.outbound_scheduled = self.myself.cast(Inbound::SendOutbound.into()).is_ok();
        }
    }
}

/// The I/O of one hosted entity, for its core.
struct Io<'a, B: ReplicatedEventSourcedActor> {
    shared: &'a mut Shared<B>,
    persistence_id: &'a str,
    subscribers: &'a mut Vec<Subscription<B::Event>>,
}

impl<B: ReplicatedEventSourcedActor> EntityIo<B::Event> for Io<'_, B> {
    fn send(&mut self, to: &str, message: ReplicationMessage<B::Event>) -> bool {
        self.shared.send(to, self.persistence_id, message);
        true
    }

    /// Behind the messages already queued, so that one flush covers every
    /// entity that journaled among them.
    fn schedule_flush(&mut self) -> bool {
        let shared = &mut *self.shared;
        shared.flush_due.insert(self.persistence_id.to_string());
        if !shared.flush_scheduled {
            shared.flush_scheduled = shared.myself.cast(Inbound::Flush.into()).is_ok();
        }
        shared.flush_scheduled
    }

    fn publishing(&self) -> bool {
        !self.subscribers.is_empty()
    }

    fn publish(&mut self, events: Vec<EventApplied<B::Event>>) {
        self.subscribers
            .retain_mut(|subscription| events.iter().all(|event| subscription.notify(event)));
    }
}

impl<B, R, J> RouterState<B, R, J>
where
    B: ReplicatedEventSourcedActor,
    R: ConflictResolver<B::Event>,
    J: Journal + Clone,
{
    /// Runs `step` on the entity `persistence_id` (see [`run`]), starting
    /// it from its journal first if it does not run.
    fn with_entity(
        &mut self,
        persistence_id: &str,
        used: bool,
        step: impl FnOnce(&mut EntityCore<B, R, J>, &mut Io<'_, B>) -> Result<()>,
    ) {
        if !self.entities.contains_key(persistence_id) {
            if let Err(err) = self.start(persistence_id) {
                tracing::error!(persistence_id, error = %Chain(&err), "cannot start an entity from its journal");
                return;
            }
        }
        let Some(hosted) = self.entities.get_mut(persistence_id) else {
            return;
        };
        if !run(&mut self.shared, persistence_id, hosted, used, step) {
            self.entities.remove(persistence_id);
        }
    }

    fn start(&mut self, persistence_id: &str) -> Result<()> {
        self.make_room();
        let entity_type = &self.entity_type;
        let (behaviour, resolver) = (entity_type.factory)(persistence_id);
        let log = ReplicatedLog::new(entity_type.replica.clone(), behaviour, resolver);
        let mut core = EntityCore::recover(
            persistence_id,
            log,
            entity_type.journal.clone(),
            entity_type
                .snapshots
                .clone()
                .map(|snapshots| snapshots.with_retention(entity_type.retention)),
            entity_type.max_message_bytes,
        )?;
        if let Some(replicas) = &entity_type.replicas {
            core = core.with_replicas(replicas.iter().cloned());
        }
        for node in &self.removed {
            core.peer_removed(node);
        }
        self.passivated.remove(persistence_id);
        let mut hosted = Hosted {
            core,
            subscribers: Vec::new(),
            last_active: Instant::now(),
        };
        let mut io = Io {
            shared: &mut self.shared,
            persistence_id,
            subscribers: &mut hosted.subscribers,
        };
        for peer in io.shared.peers.nodes() {
            hosted.core.peer_up(&mut io, &peer)?;
        }
        self.entities.insert(persistence_id.to_string(), hosted);
        Ok(())
    }

    /// Every running entity, one after the other.
    fn each_entity(
        &mut self,
        mut step: impl FnMut(&mut EntityCore<B, R, J>, &mut Io<'_, B>) -> Result<()>,
    ) {
        let shared = &mut self.shared;
        let mut failed = Vec::new();
        for (persistence_id, hosted) in &mut self.entities {
            if !run(shared, persistence_id, hosted, false, &mut step) {
                failed.push(persistence_id.clone());
            }
        }
        for persistence_id in failed {
            self.entities.remove(&persistence_id);
        }
    }

    /// A peer's messages: each goes to its entity, which starts if it must.
    /// A version report for a passivated entity wakes it only if one of
    /// the two replicas lacks events.
    fn received(&mut self, batch: Batch<B::Event>) {
        let from = batch.from;
        for (persistence_id, message) in batch.messages {
            if let Some(passivated) = self.passivated.get(&persistence_id) {
                // Nothing for the entity to do: the peer holds what it held,
                // and hears so on the entity's behalf.
                match &message {
                    ReplicationMessage::Report(version) | ReplicationMessage::Version(version)
                        if version == passivated =>
                    {
                        let in_sync = ReplicationMessage::InSync(version.clone());
                        self.shared.send(&from, &persistence_id, in_sync);
                        continue;
                    }
                    ReplicationMessage::InSync(_) => continue,
                    _ => {}
                }
            }
            self.with_entity(&persistence_id, false, |core, io| {
                core.received(io, &from, message)
            });
        }
    }

    /// Passivates the entities idle for longer than the type allows.
    fn passivate_idle(&mut self) {
        let Some(after) = self.entity_type.passivate_after else {
            return;
        };
        let idle: Vec<String> = self
            .entities
            .iter()
            .filter(|(_, hosted)| hosted.last_active.elapsed() >= after)
            .map(|(persistence_id, _)| persistence_id.clone())
            .collect();
        self.passivate(idle);
    }

    /// Makes room for one more running entity under the type's limit:
    /// passivates the least recently active, a hundredth of the limit at a
    /// time so that the search is paid once per many starts.
    fn make_room(&mut self) {
        let limit = self.entity_type.max_running;
        if self.entities.len() < limit {
            return;
        }
        let count = self.entities.len() + 1 - limit + limit / 100;
        let mut by_age: Vec<(Instant, &String)> = self
            .entities
            .iter()
            .map(|(persistence_id, hosted)| (hosted.last_active, persistence_id))
            .collect();
        let count = count.min(by_age.len());
        if count < by_age.len() {
            by_age.select_nth_unstable(count);
        }
        let oldest = by_age[..count]
            .iter()
            .map(|(_, persistence_id)| (*persistence_id).clone())
            .collect();
        self.passivate(oldest);
    }

    /// Flushes and drops the entities, keeping their versions.
    fn passivate(&mut self, persistence_ids: Vec<String>) {
        for persistence_id in persistence_ids {
            let Some(mut hosted) = self.entities.remove(&persistence_id) else {
                continue;
            };
            let mut io = Io {
                shared: &mut self.shared,
                persistence_id: &persistence_id,
                subscribers: &mut hosted.subscribers,
            };
            hosted.core.stop(&mut io);
            tracing::debug!(persistence_id, "entity passivated");
            let version = hosted.core.log().version();
            // An entity without events has nothing to report or catch up
            // on: a peer's report about it wakes it if the peer holds any.
            if !version.is_empty() {
                self.passivated.insert(persistence_id, version.clone());
            }
        }
    }

    /// The messages gathered for each peer, in as few messages as the
    /// budget allows.
    fn send_outbound(&mut self) {
        let shared = &mut self.shared;
        shared.outbound_scheduled = false;
        for (peer, messages) in std::mem::take(&mut shared.outbound) {
            let Some(route) = shared.peers.get(&peer).cloned() else {
                continue;
            };
            let sized: Vec<_> = messages
                .into_iter()
                .filter_map(|message| match codec::encoded_len(&message) {
                    Ok(len) => Some((len + 16, message)),
                    Err(err) => {
                        tracing::error!(error = %Chain(&err), "cannot encode a replication message");
                        None
                    }
                })
                .collect();
            for chunk in split_by_budget(sized, shared.max_message_bytes, |(len, _)| *len) {
                let batch = Batch {
                    from: shared.node.clone(),
                    messages: chunk.into_iter().map(|(_, message)| message).collect(),
                };
                if route.cast(Inbound::Peer(batch).into()).is_err() {
                    // A discovery round finds its new proxy, if any, and
                    // tells the entities it went down and came up.
                    tracing::debug!(peer, "router proxy stopped");
                    shared.peers.forget(&peer);
                    shared
                        .peers
                        .request(&shared.myself, || Inbound::Discover.into());
                    break;
                }
            }
        }
    }

    fn flush(&mut self) {
        self.shared.flush_scheduled = false;
        for persistence_id in std::mem::take(&mut self.shared.flush_due) {
            if self.entities.contains_key(&persistence_id) {
                self.with_entity(&persistence_id, false, |core, io| core.scheduled_flush(io));
            }
        }
    }

    fn stats(&mut self, persistence_id: &str) -> Option<EntityStats> {
        self.with_entity(persistence_id, true, |_, _| Ok(()));
        let hosted = self.entities.get(persistence_id)?;
        let shared = &self.shared;
        Some(stats(
            &hosted.core,
            shared.peers.nodes(),
            shared.rejected_messages,
        ))
    }
}

/// Runs `step` on a hosted entity; false if its core failed and it must
/// go (its next message starts it again from the journal). An entity stays
/// active (away from passivation) while it is `used` (commands and
/// queries) or takes in new events; anti-entropy alone does not keep it.
fn run<B, R, J>(
    shared: &mut Shared<B>,
    persistence_id: &str,
    hosted: &mut Hosted<B, R, J>,
    used: bool,
    step: impl FnOnce(&mut EntityCore<B, R, J>, &mut Io<'_, B>) -> Result<()>,
) -> bool
where
    B: ReplicatedEventSourcedActor,
    R: ConflictResolver<B::Event>,
    J: Journal,
{
    let applied = hosted.core.log().applied_events();
    let mut io = Io {
        shared,
        persistence_id,
        subscribers: &mut hosted.subscribers,
    };
    let outcome = step(&mut hosted.core, &mut io);
    if used || hosted.core.log().applied_events() != applied {
        hosted.last_active = Instant::now();
    }
    match outcome {
        Ok(()) => true,
        Err(err) => {
            tracing::error!(persistence_id, error = %Chain(&err), "an entity failed; it starts again from its journal with its next message");
            false
        }
    }
}

impl<B, R, J> Actor for EntityRouter<B, R, J>
where
    B: ReplicatedEventSourcedActor + Sync,
    B::State: Sync,
    R: ConflictResolver<B::Event> + Sync,
    J: Journal + Clone + Sync,
{
    type Msg = RouterMessage<B>;
    type State = RouterState<B, R, J>;
    type Arguments = EntityType<B, R, J>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        mut entity_type: Self::Arguments,
    ) -> std::result::Result<Self::State, ActorProcessingErr> {
        let node = entity_type.replica.node().to_string();
        let mut shared = Shared {
            myself: myself.clone(),
            node: node.clone(),
            peers: Peers::new(
                entity_type.discovery.take(),
                PeerGroup::entity_type(&entity_type.name),
                node,
            ),
            max_message_bytes: entity_type.max_message_bytes,
            outbound: BTreeMap::new(),
            outbound_scheduled: false,
            flush_due: BTreeSet::new(),
            flush_scheduled: false,
            rejected_messages: 0,
        };
        if shared.peers.register(&myself.get_cell()) {
            shared.peers.request(&myself, || Inbound::Discover.into());
        }
        if let Some(events) = entity_type.membership.take() {
            events.subscribe(myself.clone());
        }
        let mut state = RouterState {
            entity_type,
            entities: HashMap::new(),
            passivated: HashMap::new(),
            removed: BTreeSet::new(),
            shared,
            timers: Timers::default(),
        };
        let interval = state.entity_type.anti_entropy_interval;
        state
            .timers
            .every(&myself, interval, || Inbound::Tick.into());
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        state.each_entity(|core, io| {
            core.stop(io);
            Ok(())
        });
        state.send_outbound();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let inbound = match message {
            RouterMessage::Command(persistence_id, command, reply) => {
                state.with_entity(&persistence_id, true, |core, io| {
                    core.command(
                        io,
                        command,
                        crate::wall_clock::signed_millis(),
                        move |result| reply.send(result),
                    )
                });
                return Ok(());
            }
            RouterMessage::State(persistence_id, reply) => {
                state.with_entity(&persistence_id, true, |core, io| {
                    let current = core.log().state().clone();
                    core.answer_after_flush(io, move |flushed| {
                        if flushed.is_ok() {
                            let _ = reply.send(current);
                        }
                    });
                    Ok(())
                });
                return Ok(());
            }
            RouterMessage::Stats(persistence_id, reply) => {
                if let Some(stats) = state.stats(&persistence_id) {
                    let _ = reply.send(stats);
                }
                return Ok(());
            }
            RouterMessage::Running(reply) => {
                let _ = reply.send(state.entities.len());
                return Ok(());
            }
            RouterMessage::Subscribe(persistence_id, subscription) => {
                state.with_entity(&persistence_id, true, |core, io| {
                    if let Some(subscription) = replay_to(core, io, subscription)? {
                        io.subscribers.push(subscription);
                    }
                    Ok(())
                });
                return Ok(());
            }
            RouterMessage::Unsubscribe(persistence_id, listener) => {
                if let Some(hosted) = state.entities.get_mut(&persistence_id) {
                    hosted
                        .subscribers
                        .retain(|subscription| subscription.listener() != listener);
                }
                return Ok(());
            }
            RouterMessage::Internal(RouterInternal(inbound)) => inbound,
        };
        match inbound {
            Inbound::Peer(batch) => {
                if !state.shared.peers.contains(&batch.from) {
                    // A router this one does not know yet: answers would
                    // have nowhere to go.
                    state
                        .shared
                        .peers
                        .request(&myself, || Inbound::Discover.into());
                }
                state.received(batch);
            }
            Inbound::Undecodable(reason) => {
                state.shared.rejected_messages += 1;
                tracing::warn!(
                    entity_type = state.entity_type.name,
                    reason,
                    "rejected an undecodable message between entity routers"
                );
            }
            Inbound::Discover => {
                for change in state.shared.peers.round().await {
                    match change {
                        PeerChange::Down(node) => state.each_entity(|core, _| {
                            core.peer_down(&node);
                            Ok(())
                        }),
                        PeerChange::Up(node, _) => {
                            state.removed.remove(&node);
                            state.each_entity(|core, io| core.peer_up(io, &node));
                            // Passivated entities tell the new peer what
                            // they hold, so that either side can catch up.
                            let reports: Vec<_> = state
                                .passivated
                                .iter()
                                .map(|(persistence_id, version)| {
                                    (
                                        persistence_id.clone(),
                                        ReplicationMessage::Report(version.clone()),
                                    )
                                })
                                .collect();
                            if !reports.is_empty() {
                                state
                                    .shared
                                    .outbound
                                    .entry(node)
                                    .or_default()
                                    .extend(reports);
                                state.send_outbound();
                            }
                        }
                    }
                }
            }
            Inbound::Removed(node) => {
                tracing::info!(node, entity_type = state.entity_type.name, "node removed");
                state.each_entity(|core, _| {
                    core.peer_removed(&node);
                    Ok(())
                });
                state.removed.insert(node);
            }
            Inbound::Tick => {
                state.passivate_idle();
                state.each_entity(|core, io| core.tick(io));
            }
            Inbound::Flush => disk_wait(|| state.flush()),
            Inbound::SendOutbound => state.send_outbound(),
        }
        Ok(())
    }

    /// A router supervises nothing; ractor tells it here that its type's
    /// process group changed.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        state
            .shared
            .peers
            .on_supervision(&event, &myself, || Inbound::Discover.into());
        Ok(())
    }
}

/// A handle to a node's router of one entity type: commands and queries to
/// its entities by persistence id.
pub struct Entities<B: ReplicatedEventSourcedActor> {
    router: ActorRef<RouterMessage<B>>,
}

impl<B: ReplicatedEventSourcedActor> Clone for Entities<B> {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
        }
    }
}

impl<B: ReplicatedEventSourcedActor> Entities<B> {
    /// A handle on the router `router` (one spawned under your own
    /// supervisor, say).
    pub fn for_router(router: ActorRef<RouterMessage<B>>) -> Self {
        Self { router }
    }

    /// The router actor.
    pub fn router(&self) -> &ActorRef<RouterMessage<B>> {
        &self.router
    }

    /// Runs a command on the entity `persistence_id`, starting it if it does
    /// not run; answers once its events are durable (see
    /// [`Entity::command`](super::Entity::command)).
    pub async fn command(
        &self,
        persistence_id: impl Into<String>,
        command: B::Command,
    ) -> Result<Option<B::Reply>> {
        let persistence_id = persistence_id.into();
        let id = persistence_id.clone();
        self.call(&id, |reply| {
            RouterMessage::Command(persistence_id, command, reply.into())
        })
        .await?
    }

    /// The entity's current state.
    pub async fn state(&self, persistence_id: impl Into<String>) -> Result<B::State> {
        let persistence_id = persistence_id.into();
        let id = persistence_id.clone();
        self.call(&id, |reply| RouterMessage::State(persistence_id, reply))
            .await
    }

    /// What the entity has done.
    pub async fn stats(&self, persistence_id: impl Into<String>) -> Result<EntityStats> {
        let persistence_id = persistence_id.into();
        let id = persistence_id.clone();
        self.call(&id, |reply| RouterMessage::Stats(persistence_id, reply))
            .await
    }

    /// How many entities run now; the others are passivated or never
    /// started.
    pub async fn running(&self) -> Result<usize> {
        self.call("", RouterMessage::Running).await
    }

    /// Sends `listener` the events the entity applies from now on, until it
    /// passivates (see [`Entity::subscribe`](super::Entity::subscribe)).
    pub fn subscribe<M>(
        &self,
        persistence_id: impl Into<String>,
        listener: ActorRef<M>,
    ) -> Result<()>
    where
        M: Message + From<EventApplied<B::Event>>,
    {
        self.tell(persistence_id.into(), |id| {
            RouterMessage::Subscribe(id, Subscription::new(listener, None))
        })
    }

    /// As [`subscribe`](Self::subscribe), first replaying the entity's
    /// journaled events from local sequence number `sequence` on (see
    /// [`Entity::subscribe_from`](super::Entity::subscribe_from)): how a
    /// projection resumes after the entity passivated.
    pub fn subscribe_from<M>(
        &self,
        persistence_id: impl Into<String>,
        listener: ActorRef<M>,
        sequence: u64,
    ) -> Result<()>
    where
        M: Message + From<EventApplied<B::Event>>,
    {
        self.tell(persistence_id.into(), |id| {
            RouterMessage::Subscribe(id, Subscription::new(listener, Some(sequence)))
        })
    }

    /// Stops sending the entity's events to `listener`.
    pub fn unsubscribe(&self, persistence_id: impl Into<String>, listener: ActorId) -> Result<()> {
        self.tell(persistence_id.into(), |id| {
            RouterMessage::Unsubscribe(id, listener)
        })
    }

    fn tell(
        &self,
        persistence_id: String,
        message: impl FnOnce(String) -> RouterMessage<B>,
    ) -> Result<()> {
        self.router
            .cast(message(persistence_id.clone()))
            .map_err(|_| unavailable(&persistence_id, Unavailability::Stopped))
    }

    async fn call<T: Send + 'static>(
        &self,
        persistence_id: &str,
        request: impl FnOnce(RpcReplyPort<T>) -> RouterMessage<B>,
    ) -> Result<T> {
        let (sender, receiver) = oneshot::channel();
        self.router
            .cast(request(sender.into()))
            .map_err(|_| unavailable(persistence_id, Unavailability::Stopped))?;
        receiver
            .await
            .map_err(|_| unavailable(persistence_id, Unavailability::StoppedBeforeAnswering))
    }
}

fn unavailable(persistence_id: &str, reason: Unavailability) -> Error {
    Error::EntityUnavailable {
        persistence_id: persistence_id.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{a, events, pinned_encoding, pinned_text, version};

    #[test]
    fn golden_router_batches() {
        let batch: Batch<String> = Batch {
            from: "node-a".into(),
            messages: vec![
                ("account-1".into(), ReplicationMessage::Events(events())),
                (
                    "account-2".into(),
                    ReplicationMessage::Report(version(&[(a(), 3)])),
                ),
            ],
        };
        pinned_encoding("router_batch", &batch);
        pinned_text("router_variant.txt", &format!("{ROUTER_MESSAGE_VARIANT}\n"));
    }
}
