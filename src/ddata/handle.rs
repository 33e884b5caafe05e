//! The typed handle users hold: [`DistributedData`].

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorRef, Message, RpcReplyPort};
use tokio::sync::oneshot;

use super::consistency::{ReadConsistency, WriteConsistency};
use super::core::{CoreConfig, CoreStats, PeerName, ReplicatorCore};
use super::durable::Durability;
use super::key::Key;
use super::registry::TypeRegistry;
use super::replicator::{
    Inbound, Prepared, Replicator, ReplicatorArguments, ReplicatorMessage, Written,
};
use super::tracked::Tracked;
use crate::causal::ReplicaId;
use crate::cluster::MemberEvents;
use crate::crdt::ReplicatedData;
use crate::discovery::{replicator_name, Discovery};
use crate::error::{Component, Error, Result, StoreFailure, Unavailability};
use crate::followed::Followed;

/// What a listener hears about a key it subscribed to.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Change<T> {
    /// The key's value changed (a local update, a merge from a peer, a read
    /// repair), or the listener just subscribed and the key has a value.
    Changed {
        /// The key.
        key: Key<T>,
        /// Its current value, shared with the Replicator rather than copied:
        /// a listener that keeps it past the key's next change makes that
        /// change copy the value.
        value: Arc<T>,
    },
    /// The key was deleted.
    Deleted {
        /// The key.
        key: Key<T>,
    },
    /// The key (or its tombstone) went unused for its time to live and was
    /// removed (see [`Expiry`](super::Expiry)); it may be written again.
    Expired {
        /// The key.
        key: Key<T>,
    },
}

impl<T: Send + Sync + 'static> Message for Change<T> {}

/// How to start a Replicator: [`ReplicatorConfig::new`] then `with_*`.
pub struct ReplicatorConfig {
    node: PeerName,
    replica: Option<ReplicaId>,
    types: TypeRegistry,
    core: CoreConfig,
    discovery: Option<Box<dyn Discovery>>,
    discovery_interval: Option<Duration>,
    members: Vec<PeerName>,
    seed: Option<u64>,
    durability: Option<Durability>,
    membership: Option<MemberEvents>,
}

impl ReplicatorConfig {
    /// A Replicator for node `node` (unique in the cluster) with the built-in
    /// types, the default [`CoreConfig`] and no peers.
    pub fn new(node: impl Into<PeerName>) -> Self {
        Self {
            node: node.into(),
            replica: None,
            types: TypeRegistry::with_builtins(),
            core: CoreConfig::default(),
            discovery: None,
            discovery_interval: None,
            members: Vec::new(),
            seed: None,
            durability: None,
            membership: None,
        }
    }

    /// Subscribes the Replicator, once started, to membership events.
    pub(crate) fn with_membership(mut self, events: MemberEvents) -> Self {
        self.membership = Some(events);
        self
    }

    /// Keeps the selected keys in a durable store. On start, every stored key
    /// is loaded and merged before the Replicator serves anything, and the
    /// node writes under an incarnation above every one it used before.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
        self
    }

    /// Finds peers with `discovery`, asked again whenever ractor reports a
    /// change to the Replicators' process group, a message arrives from an
    /// unknown peer or a peer's proxy stops (see [`Discovery`]).
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

    /// Protocol settings (gossip interval, push window, notification interval,
    /// message budget).
    pub fn with_core(mut self, core: CoreConfig) -> Self {
        self.core = core;
        self
    }

    /// Which keys expire after a time without use, and how long tombstones
    /// are kept (see [`Expiry`](super::Expiry)); by default nothing expires.
    /// Give every node the same expiry.
    pub fn with_expiry(mut self, expiry: super::Expiry) -> Self {
        self.core.expiry = expiry;
        self
    }

    /// Nodes that count as members from the start, reachable or not, so that
    /// `Majority` and `All` mean the whole configured cluster even before every
    /// node is up.
    pub fn with_members(mut self, members: impl IntoIterator<Item = impl Into<PeerName>>) -> Self {
        self.members = members.into_iter().map(Into::into).collect();
        self
    }

    /// Writes as `replica` instead of a fresh incarnation of the node. Only for
    /// a replica whose complete state was recovered: re-using an id whose
    /// writes were lost hides new writes.
    pub fn with_replica(mut self, replica: ReplicaId) -> Self {
        self.replica = Some(replica);
        self
    }

    /// Registers a user type under a stable tag (see [`TypeRegistry::register`]).
    pub fn register<T: ReplicatedData>(mut self, tag: &str) -> Result<Self> {
        self.types.register::<T>(tag)?;
        Ok(self)
    }

    /// Seeds the Replicator's random peer choices (default: from the replica id).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

impl ReplicatorConfig {
    /// Everything the Replicator starts from: its durable state loaded,
    /// its incarnation chosen and stored, its core built and recovered.
    pub(crate) fn prepare(self) -> Result<Prepared> {
        let mut core_config = self.core;
        let mut durability = self.durability;
        let mut recovered = None;
        let replica = match (&mut durability, self.replica) {
            (_, Some(replica)) => replica,
            (None, None) => ReplicaId::fresh(self.node.clone()),
            (Some(durability), None) => {
                let loaded = durability.store.load()?;
                let fresh = ReplicaId::fresh(self.node.clone()).incarnation();
                let incarnation = loaded
                    .last_incarnation
                    .map_or(fresh, |last| fresh.max(last.saturating_add(1)));
                durability.store.set_incarnation(incarnation)?;
                recovered = Some(loaded);
                ReplicaId::new(self.node.clone(), incarnation)
            }
        };
        if let Some(durability) = &durability {
            core_config.durable = durability.keys.clone();
        }
        let types = Arc::new(self.types);
        // Random unless given: a node started again under a replica id it
        // was given must still use other request numbers and another delta
        // epoch than in its last run.
        let seed = self.seed.unwrap_or_else(|| {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new()
                .hash_one((&self.node, replica.incarnation()))
        });
        let mut core = ReplicatorCore::new(
            self.node.clone(),
            replica.clone(),
            types.clone(),
            core_config,
            seed,
        );
        core.advance_clock(crate::wall_clock::millis());
        for member in &self.members {
            core.peer_down(member);
        }
        if let (Some(recovered), Some(durability)) = (recovered, &mut durability) {
            for (key, entry) in recovered.entries {
                let recovered = core
                    .recover(&key, entry.value, entry.lifetime)
                    .map_err(|err| {
                        Error::store(
                            durability.store.location(),
                            Some(&key),
                            StoreFailure::unreadable(err),
                        )
                    })?;
                if !recovered {
                    durability.store.remove(&key)?;
                }
            }
        }
        Ok(Prepared {
            core,
            discovery: self.discovery,
            discovery_interval: self.discovery_interval,
            store: durability.map(|durability| (durability.store, durability.mode)),
            membership: self.membership,
        })
    }
}

/// A handle to the local Replicator: cheap to clone, safe to share between tasks.
///
/// ```no_run
/// use std::time::Duration;
/// use ractor_replicated::ddata::{DistributedData, Key, ReadConsistency, ReplicatorConfig, WriteConsistency};
/// use ractor_replicated::{GCounter, OpBased};
///
/// # async fn demo() -> ractor_replicated::Result<()> {
/// let dd = DistributedData::start(ReplicatorConfig::new("node-a")).await?;
/// let hits: Key<GCounter> = Key::new("hits");
/// dd.update(&hits, WriteConsistency::Local, |c, me| c.apply(c.increment(me, 1))).await?;
/// let majority = WriteConsistency::majority(Duration::from_secs(1));
/// dd.update(&hits, majority, |c, me| c.apply(c.increment(me, 1))).await?;
/// assert_eq!(dd.get(&hits, ReadConsistency::Local).await?.map(|c| c.value()), Some(2));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DistributedData {
    /// The Replicator, replaced by its successor after a restart.
    actor: Arc<Followed<ReplicatorMessage>>,
    node: Arc<str>,
    types: Arc<TypeRegistry>,
}

impl DistributedData {
    /// Starts the node's Replicator, registered under a node-unique name
    /// ([`replicator_name`]) so that peers find it and this handle finds a
    /// successor the Replicator's supervisor starts. To run it under a
    /// supervisor of your own instead, spawn [`Replicator`] with
    /// [`ReplicatorArguments`] and [`connect`](Self::connect) to it.
    pub async fn start(config: ReplicatorConfig) -> Result<Self> {
        let name = replicator_name(&config.node);
        let (actor, _) = Actor::spawn(Some(name), Replicator, ReplicatorArguments::from(config))
            .await
            .map_err(|err| match err {
                // What `pre_start` failed with: a store that cannot be read.
                ractor::SpawnErr::StartupFailed(failure) => match failure.downcast::<Error>() {
                    Ok(err) => *err,
                    Err(failure) => Error::Start {
                        what: "the Replicator actor",
                        source: Arc::from(failure),
                    },
                },
                err => Error::start("the Replicator actor", err),
            })?;
        Self::connect(actor).await
    }

    /// A handle on a running Replicator, such as one spawned under your own
    /// supervisor. If the actor was spawned with a name, a handle whose
    /// Replicator stopped looks for a successor under that name (a restart by
    /// its supervisor) and carries on with it; until one is there, calls fail
    /// with [`Error::Unavailable`].
    pub async fn connect(actor: ActorRef<ReplicatorMessage>) -> Result<Self> {
        let (sender, receiver) = oneshot::channel();
        actor
            .cast(Inbound::Describe(sender).into())
            .map_err(|_| unavailable(Unavailability::Stopped))?;
        let (node, types) = receiver.await.map_err(|_| stopped())?;
        Ok(Self {
            actor: Arc::new(Followed::new(actor)),
            node,
            types,
        })
    }

    /// The node this Replicator runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The replica id local updates write with now (a restarted Replicator
    /// writes under a new incarnation).
    pub async fn replica_id(&self) -> Result<ReplicaId> {
        self.call(ReplicatorMessage::ReplicaId).await
    }

    /// The Replicator actor (its successor, once this handle found one).
    pub fn actor(&self) -> ActorRef<ReplicatorMessage> {
        self.actor.current()
    }

    /// Sends the Replicator (or its successor, if it stopped) the message
    /// `request` builds, and waits for the answer.
    async fn call<R: Send + 'static>(
        &self,
        request: impl FnOnce(RpcReplyPort<R>) -> ReplicatorMessage,
    ) -> Result<R> {
        let (sender, receiver) = oneshot::channel();
        self.actor
            .cast(request(sender.into()))
            .map_err(unavailable)?;
        receiver.await.map_err(|_| stopped())
    }

    /// Applies `modify` to the local value of `key` (its type's default if the
    /// key is new) inside the Replicator, then spreads it at `level`.
    ///
    /// `modify` gets the value and this replica's id (the writer of every dot
    /// and counter entry it mints). Operations applied with
    /// [`Tracked::apply`](super::Tracked::apply) travel to the other replicas
    /// as they are, whatever the size of the value; changes made any other
    /// way send the whole value. The local write happens first and stands
    /// even if `level` is not reached: [`Error::Timeout`] then only says that
    /// not enough replicas confirmed in time; gossip spreads the write later.
    /// A deleted key gives [`Error::Deleted`], a key of another type
    /// [`Error::WrongType`], a value too large for one message
    /// [`Error::ValueTooLarge`]; these change nothing. A `modify` that panics
    /// gives [`Error::Panicked`] and the Replicator goes on; what it changed
    /// before panicking may stand and spread like any update (each operation
    /// applied is a valid change of the value), so let `modify` decide
    /// before it applies.
    pub async fn update<T, F>(
        &self,
        key: &Key<T>,
        level: WriteConsistency,
        modify: F,
    ) -> Result<Written>
    where
        T: ReplicatedData + Default,
        F: FnOnce(&mut Tracked<'_, T>, &ReplicaId) + Send + 'static,
    {
        self.call(|reply| ReplicatorMessage::update(key, level, modify, reply))
            .await?
            .result
    }

    /// Deletes `key` for good at `level`. Its tombstone wins every merge, and
    /// every later update of the key fails with [`Error::Deleted`].
    pub async fn delete<T: ReplicatedData>(
        &self,
        key: &Key<T>,
        level: WriteConsistency,
    ) -> Result<Written> {
        self.call(|reply| ReplicatorMessage::delete(key, level, reply))
            .await?
            .result
    }

    /// Reads `key` at `level`: `Ok(None)` if no replica asked has it,
    /// [`Error::Deleted`] if it was deleted. Above `Local`, the answers are
    /// merged and the merge repairs this replica and those that answered with
    /// less.
    pub async fn get<T: ReplicatedData>(
        &self,
        key: &Key<T>,
        level: ReadConsistency,
    ) -> Result<Option<T>> {
        let response = self
            .call(|reply| ReplicatorMessage::get(key, level, reply))
            .await?;
        response.result.map(|retrieved| retrieved.value)
    }

    /// Sends `listener` a [`Change`] whenever `key` changes or is deleted, and
    /// the current value right away if the key has one. Changes of one key are
    /// coalesced within the notification interval. A listener that stopped is
    /// dropped at the next notification.
    pub async fn subscribe<T, M>(&self, key: &Key<T>, listener: ActorRef<M>) -> Result<()>
    where
        T: ReplicatedData,
        M: Message + From<Change<T>>,
    {
        self.types.require_tag_of::<T>()?;
        self.actor
            .cast(ReplicatorMessage::subscribe(key, listener))
            .map_err(unavailable)
    }

    /// Stops sending changes of `key` to `listener`.
    pub async fn unsubscribe<T>(&self, key: &Key<T>, listener: ActorId) -> Result<()> {
        self.actor
            .cast(ReplicatorMessage::unsubscribe(key, listener))
            .map_err(unavailable)
    }

    /// The names of the keys this replica holds, deleted ones included.
    pub async fn keys(&self) -> Result<Vec<String>> {
        self.call(ReplicatorMessage::GetKeys).await
    }

    /// Node `node` left the cluster for good (decommissioned): it no longer
    /// counts as a member, so `Majority` and `All` are reached without it
    /// (requests already waiting keep their count). Without this, a node
    /// that is gone for good counts forever, and `All` always times out.
    /// Losing sight of it later does not make it a member again; being
    /// reachable again (a node restarted under that name) does. Tell every
    /// Replicator that should stop counting it.
    pub fn remove_member(&self, node: impl Into<PeerName>) -> Result<()> {
        self.actor
            .cast(ReplicatorMessage::RemoveMember(node.into()))
            .map_err(unavailable)
    }

    /// The peers this Replicator can reach now, by node name.
    pub async fn reachable_peers(&self) -> Result<Vec<PeerName>> {
        self.call(ReplicatorMessage::ReachablePeers).await
    }

    /// Counters of rejected input and work done, and the number of keys.
    pub async fn stats(&self) -> Result<CoreStats> {
        self.call(ReplicatorMessage::Stats).await
    }

    /// Stops the Replicator and waits until it has stopped. In-memory state is lost.
    pub async fn stop(&self) {
        let _ = self.actor().stop_and_wait(None, None).await;
    }
}

fn unavailable(reason: Unavailability) -> Error {
    Error::Unavailable {
        actor: Component::Replicator,
        reason,
    }
}

/// The error of a request whose Replicator stopped before answering.
fn stopped() -> Error {
    unavailable(Unavailability::StoppedBeforeAnswering)
}
