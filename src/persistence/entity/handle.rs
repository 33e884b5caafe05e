use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorId, ActorRef, Message, RpcReplyPort};
use tokio::sync::oneshot;

use super::actor::EntityMessage;
use super::core::{EventApplied, Retention};
use super::ReplicatedEventSourcedActor;
use crate::causal::{ReplicaId, VersionVector};
use crate::cluster::MemberEvents;
use crate::ddata::PeerName;
use crate::discovery::Discovery;
use crate::error::{Error, Result, Unavailability};
use crate::followed::Followed;

/// How one replica of one persistence id runs.
pub struct EntityConfig {
    pub(super) persistence_id: String,
    pub(super) replica: ReplicaId,
    pub(super) discovery: Option<Box<dyn Discovery>>,
    pub(super) discovery_interval: Option<Duration>,
    pub(super) anti_entropy_interval: Duration,
    pub(super) max_message_bytes: usize,
    pub(super) stability_time: Option<Duration>,
    pub(super) replicas: Option<Vec<PeerName>>,
    pub(super) retention: Retention,
    pub(super) membership: Option<MemberEvents>,
}

impl EntityConfig {
    /// The replica `replica` of `persistence_id`, alone until
    /// [`with_discovery`](Self::with_discovery) lets it find the others.
    ///
    /// A replica id belongs to its journal: keep it across restarts (the
    /// journal holds every event it persisted, so its sequence numbers
    /// continue), and take a new one for a new or wiped journal, or the
    /// replica would mint event ids its peers already hold. The replica's
    /// node name (`replica.node()`) must be its ractor_cluster node name.
    pub fn new(persistence_id: impl Into<String>, replica: ReplicaId) -> Self {
        Self {
            persistence_id: persistence_id.into(),
            replica,
            discovery: None,
            discovery_interval: None,
            anti_entropy_interval: Duration::from_secs(1),
            max_message_bytes: 4 * 1024 * 1024,
            stability_time: None,
            replicas: None,
            retention: Retention::KeepAll,
            membership: None,
        }
    }

    /// Subscribes the entity, once started, to membership events.
    pub(crate) fn with_membership(mut self, events: MemberEvents) -> Self {
        self.membership = Some(events);
        self
    }

    /// Finds the other replicas of the persistence id with `discovery`, the
    /// same one the node's Replicator uses, asked again whenever ractor
    /// reports a change to the replicas' process group or a message arrives
    /// from an unknown replica (see [`Discovery`]).
    pub fn with_discovery(mut self, discovery: impl Discovery) -> Self {
        self.discovery = Some(Box::new(discovery));
        self
    }

    /// Also polls discovery every `interval` (by default it is never
    /// polled), for a [`Discovery`] whose changes ractor does not report.
    pub fn with_discovery_interval(mut self, interval: Duration) -> Self {
        self.discovery_interval = Some(interval);
        self
    }

    /// How often the replica sends its version to a peer, which answers with
    /// the events it lacks (default 1 s). New events are pushed at once; this
    /// repairs what pushes lost.
    pub fn with_anti_entropy_interval(mut self, interval: Duration) -> Self {
        self.anti_entropy_interval = interval;
        self
    }

    /// For an entity with snapshots: how long a replica that is no longer
    /// heard of still holds compaction back (default
    /// [`DEFAULT_STABILITY_TICKS`](crate::persistence::DEFAULT_STABILITY_TICKS)
    /// anti-entropy intervals, 30 s by default). A replica back within that
    /// time finds its events' places in memory; one back later makes the
    /// others read their journals back once. Longer keeps more in memory
    /// while a replica is away.
    pub fn with_stability_time(mut self, time: Duration) -> Self {
        self.stability_time = Some(time);
        self
    }

    /// For an entity with snapshots: the nodes that run a replica of the
    /// persistence id (this one's node may be among them). Compaction then
    /// waits for each of them, however long it is away, instead of guessing
    /// with the [stability time](Self::with_stability_time), so no
    /// replica's events ever make the others read their journals back; a
    /// replica away for long keeps the others' memory growing meanwhile.
    /// A replica on a node not listed still replicates, but does not hold
    /// compaction back: its concurrent events may make the others read
    /// their journals back. A node
    /// [removed](crate::cluster::ClusterNode::remove_member) from the
    /// cluster stops holding compaction back.
    pub fn with_replicas(mut self, nodes: impl IntoIterator<Item = impl Into<PeerName>>) -> Self {
        self.replicas = Some(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// For an entity with snapshots and [listed replicas](Self::with_replicas):
    /// which events the journal keeps once every listed replica has passed
    /// a snapshot (default [`Retention::KeepAll`]; read its price before
    /// deleting). Give every replica the same.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The largest replication message, in bytes (default 4 MiB, well under
    /// ractor_cluster's 16 MiB frame limit, which closes the session when
    /// exceeded). A single larger event still travels alone.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }
}

/// What an entity has done, for tests and monitoring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntityStats {
    /// Events applied, local and replicated.
    pub events: u64,
    /// Of those, the events compacted into a snapshot (dropped from memory).
    pub compacted_events: u64,
    /// Replicated events waiting for their causal past.
    pub waiting: usize,
    /// What the replica has applied, per origin.
    pub version: VersionVector,
    /// The nodes whose replica is reachable now.
    pub reachable_peers: Vec<PeerName>,
    /// Replication messages from peers that could not be decoded.
    pub rejected_messages: u64,
    /// Times a replicated event that may sort among compacted events made
    /// the entity read its whole journal back (see
    /// [`ReplicatedEntity::spawn_with_snapshots`](super::ReplicatedEntity::spawn_with_snapshots)).
    pub history_reloads: u64,
    /// Replicated events refused because they sort among events the
    /// journal deleted (see [`Retention`]): each one means a replica made
    /// an event concurrently with history the listed replicas had all
    /// passed.
    pub refused_events: u64,
    /// Commands wait because the replica catches up (see
    /// [`Retention`]): it has made no event yet and not caught up with
    /// every listed replica, or it is taking in a peer's snapshot.
    pub catching_up: bool,
}

/// A handle to a running entity: one replica of one persistence id.
pub struct Entity<B: ReplicatedEventSourcedActor> {
    /// The entity actor, replaced by its successor after a restart.
    actor: Arc<Followed<EntityMessage<B>>>,
    persistence_id: String,
}

impl<B: ReplicatedEventSourcedActor> Clone for Entity<B> {
    fn clone(&self) -> Self {
        Self {
            actor: self.actor.clone(),
            persistence_id: self.persistence_id.clone(),
        }
    }
}

impl<B: ReplicatedEventSourcedActor> Entity<B> {
    /// A handle on the entity `actor`, a replica of `persistence_id` (which
    /// its errors name), such as one spawned under your own supervisor with
    /// [`EntityArguments`](super::EntityArguments). If the actor was spawned
    /// with a name, a handle whose entity stopped looks for a successor under
    /// that name (a restart by its supervisor) and carries on with it; until
    /// one is there, calls fail with [`Error::EntityUnavailable`].
    pub fn for_actor(actor: ActorRef<EntityMessage<B>>, persistence_id: impl Into<String>) -> Self {
        Self {
            actor: Arc::new(Followed::new(actor)),
            persistence_id: persistence_id.into(),
        }
    }

    /// Runs a command. Its events are journaled durably and applied before
    /// the reply: `Ok(None)` if the handler gave no reply, an error if the
    /// journal refused the events (which are then not applied).
    pub async fn command(&self, command: B::Command) -> Result<Option<B::Reply>> {
        self.call(|reply| EntityMessage::command(command, reply))
            .await?
    }

    /// The current state.
    pub async fn state(&self) -> Result<B::State> {
        self.call(EntityMessage::State).await
    }

    /// What the entity has done.
    pub async fn stats(&self) -> Result<EntityStats> {
        self.call(EntityMessage::Stats).await
    }

    /// Sends `listener` every event this replica applies from now on, local
    /// and replicated, once durable (see [`EventApplied`]): the feed for
    /// projections and read models. See [`EntityMessage::subscribe`].
    pub fn subscribe<M>(&self, listener: ActorRef<M>) -> Result<()>
    where
        M: Message + From<EventApplied<B::Event>>,
    {
        self.tell(EntityMessage::subscribe(listener))
    }

    /// As [`subscribe`](Self::subscribe), first replaying the journaled
    /// events from local sequence number `sequence` on. See
    /// [`EntityMessage::subscribe_from`].
    pub fn subscribe_from<M>(&self, listener: ActorRef<M>, sequence: u64) -> Result<()>
    where
        M: Message + From<EventApplied<B::Event>>,
    {
        self.tell(EntityMessage::subscribe_from(listener, sequence))
    }

    /// Stops sending events to `listener`.
    pub fn unsubscribe(&self, listener: ActorId) -> Result<()> {
        self.tell(EntityMessage::Unsubscribe(listener))
    }

    fn tell(&self, message: EntityMessage<B>) -> Result<()> {
        self.actor
            .cast(message)
            .map_err(|reason| self.unavailable(reason))
    }

    /// The persistence id.
    pub fn persistence_id(&self) -> &str {
        &self.persistence_id
    }

    /// The entity actor (its successor, once this handle found one).
    pub fn actor(&self) -> ActorRef<EntityMessage<B>> {
        self.actor.current()
    }

    /// Stops the entity after the commands already sent, and waits. Their
    /// events are durable: the entity flushes its journal when it stops.
    pub async fn stop(&self) {
        let _ = self.actor().drain_and_wait(None).await;
    }

    fn unavailable(&self, reason: Unavailability) -> Error {
        Error::EntityUnavailable {
            persistence_id: self.persistence_id.clone(),
            reason,
        }
    }

    /// Sends the entity (or its successor, if it stopped) the message
    /// `request` builds, and waits for the answer.
    async fn call<R: Send + 'static>(
        &self,
        request: impl FnOnce(RpcReplyPort<R>) -> EntityMessage<B>,
    ) -> Result<R> {
        let (sender, receiver) = oneshot::channel();
        self.actor
            .cast(request(sender.into()))
            .map_err(|reason| self.unavailable(reason))?;
        receiver
            .await
            .map_err(|_| self.unavailable(Unavailability::StoppedBeforeAnswering))
    }
}
