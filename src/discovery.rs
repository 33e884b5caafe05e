//! How an actor finds its counterparts on the other nodes: the Replicator
//! finds the other Replicators, an entity the other replicas of its
//! persistence id.
//!
//! Counterparts form a [`PeerGroup`]: one actor per node, registered under a
//! name made of the group and the node, which is what travels with ractor_cluster's
//! proxies. Each joins the group's process group and monitors it, so ractor
//! tells it when a counterpart appears or goes anywhere in the cluster; it
//! then runs a discovery round. Nothing polls.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use ractor::{ActorCell, ActorRef, ActorStatus, SupervisionEvent};
use ractor_cluster::NodeServerMessage;

use crate::ddata::PeerName;

const NAME_PREFIX: &str = "ractor_replicated.";

/// A set of actors, at most one per node, that replicate the same thing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerGroup(String);

impl PeerGroup {
    /// The Replicators of Distributed Data.
    pub fn replicators() -> Self {
        Self(format!("{NAME_PREFIX}replicator"))
    }

    /// The replicas of the entity `persistence_id`.
    pub fn entity(persistence_id: &str) -> Self {
        Self(format!("{NAME_PREFIX}entity/{persistence_id}"))
    }

    /// The routers of the entity type `name`.
    pub fn entity_type(name: &str) -> Self {
        Self(format!("{NAME_PREFIX}entities/{name}"))
    }

    /// The group's name, also its process-group name (in ractor's default
    /// scope, the only one whose groups can be monitored one by one).
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The registered name of the group's actor on `node`. Names are
    /// process-global in ractor, so they carry the node name.
    pub fn actor_name(&self, node: &str) -> String {
        format!("{}@{node}", self.0)
    }

    /// The node of an actor of this group, from its registered name.
    pub fn node_of<'a>(&self, actor_name: &'a str) -> Option<&'a str> {
        actor_name.strip_prefix(self.0.as_str())?.strip_prefix('@')
    }

    /// Whether `event` says that this group's process group changed.
    pub fn changed(&self, event: &SupervisionEvent) -> bool {
        matches!(event, SupervisionEvent::ProcessGroupChanged(change)
            if change.get_scope() == ractor::pg::DEFAULT_SCOPE && change.get_group() == self.0)
    }
}

/// The registered name of the Replicator of node `node`.
pub fn replicator_name(node: &str) -> String {
    PeerGroup::replicators().actor_name(node)
}

/// A reachable counterpart.
#[derive(Clone, Debug)]
pub struct DiscoveredPeer {
    /// The peer's node name.
    pub node: PeerName,
    /// Where to send it messages (a ractor_cluster proxy).
    pub actor: ActorCell,
}

/// A future returned by [`Discovery::discover`].
pub type DiscoveryFuture<'a> = Pin<Box<dyn Future<Output = Vec<DiscoveredPeer>> + Send + 'a>>;

/// Lists the counterparts reachable right now. Replicators and entities run
/// a discovery round when they learn that something changed, and turn
/// appearances and disappearances into peer-up and peer-down events.
///
/// They learn of changes from ractor: a member joining or leaving the
/// group's process group anywhere in the cluster
/// ([`PeerGroup::changed`]); from a message of a peer they do not know; and
/// from a send through a proxy that stopped. A discovery that cannot be told
/// of changes this way can be polled too (`with_discovery_interval` on the
/// Replicator's and the entity's configurations).
pub trait Discovery: Send + Sync + 'static {
    /// Called once when `actor`, this node's member of `group`, starts: makes
    /// it findable and has ractor tell it of changes to the group. By
    /// default it joins the group's process group and monitors it.
    fn register(&self, group: &PeerGroup, actor: &ActorCell) {
        ractor::pg::join(group.name().into(), vec![actor.clone()]);
        ractor::pg::monitor(group.name().into(), actor.clone());
    }

    /// The members of `group` on other nodes reachable now.
    fn discover(&self, group: &PeerGroup) -> DiscoveryFuture<'_>;
}

/// Finds peers among the remote actors of a NodeServer's sessions: every
/// session holds a proxy for each remotable actor of its peer node, named as
/// the peer named it. The local node name must be the NodeServer's node name
/// (the part before `@`).
///
/// Unlike process groups, which are process-global, this works with several
/// NodeServers in one process, as in tests. Members still join and monitor
/// their process groups: with several nodes in one process, the groups'
/// contents are unreliable, but each change is a reliable signal to look at
/// the sessions again.
#[derive(Clone)]
pub struct SessionDiscovery {
    server: ractor::ActorRef<NodeServerMessage>,
}

impl SessionDiscovery {
    /// Discovery through the sessions of `server`.
    pub fn new(server: ractor::ActorRef<NodeServerMessage>) -> Self {
        Self { server }
    }
}

impl Discovery for SessionDiscovery {
    fn discover(&self, group: &PeerGroup) -> DiscoveryFuture<'_> {
        let group = group.clone();
        Box::pin(async move {
            let sessions = match self
                .server
                .call(NodeServerMessage::GetSessions, Some(Duration::from_secs(1)))
                .await
            {
                Ok(ractor::rpc::CallResult::Success(sessions)) => sessions,
                Ok(_) | Err(_) => {
                    tracing::debug!("the node server did not list its sessions");
                    return Vec::new();
                }
            };
            let mut found = Vec::new();
            for session in sessions.values() {
                let Some(peer) = &session.peer_name else {
                    continue;
                };
                let peer_node = peer.name.split('@').next().unwrap_or_default();
                // A session advertises every remotable actor of its peer's
                // process; with several nodes in one process that includes
                // other nodes' actors. Only the peer's own is taken.
                found.extend(
                    session
                        .actor
                        .get_children()
                        .into_iter()
                        .filter_map(|proxy| {
                            // A proxy leaves its groups as it starts stopping,
                            // before its session forgets it.
                            if proxy.get_status() >= ActorStatus::Stopping {
                                return None;
                            }
                            let name = proxy.get_name()?;
                            let node = group.node_of(&name)?;
                            (node == peer_node).then(|| DiscoveredPeer {
                                node: node.to_string(),
                                actor: proxy,
                            })
                        }),
                );
            }
            found
        })
    }
}

/// Finds peers through ractor's process groups, one per [`PeerGroup`], which
/// ractor_cluster keeps in sync across sessions. Members join and monitor
/// their group when they start.
///
/// Process groups are process-global: use this with one NodeServer per
/// process. Several nodes in one process (tests) use
/// [`SessionDiscovery`] instead.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessGroupDiscovery;

impl ProcessGroupDiscovery {
    /// The discovery; all instances share the process groups.
    pub fn new() -> Self {
        Self
    }
}

impl Discovery for ProcessGroupDiscovery {
    fn discover(&self, group: &PeerGroup) -> DiscoveryFuture<'_> {
        let group = group.clone();
        Box::pin(async move {
            ractor::pg::get_members(&group.name().to_string())
                .into_iter()
                .filter(|cell| !cell.get_id().is_local())
                .filter_map(|actor| {
                    let node = group.node_of(&actor.get_name()?)?.to_string();
                    Some(DiscoveredPeer { node, actor })
                })
                .collect()
        })
    }
}

/// What a discovery round changed.
pub(crate) enum PeerChange<M> {
    /// The peer on this node is gone, or its route broke.
    Down(PeerName),
    /// A peer came up, or came back through a new proxy (after its own
    /// `Down`): it should get everything it may have missed.
    Up(PeerName, ActorRef<M>),
}

/// An actor's counterparts: the routes it knows, by node, and the discovery
/// rounds that keep them current. A round runs when asked, at most one
/// waiting at a time however often it is asked.
pub(crate) struct Peers<M> {
    discovery: Option<Box<dyn Discovery>>,
    group: PeerGroup,
    node: PeerName,
    routes: BTreeMap<PeerName, ActorRef<M>>,
    requested: bool,
}

impl<M> Peers<M> {
    /// The counterparts of `node`'s member of `group`.
    pub(crate) fn new(
        discovery: Option<Box<dyn Discovery>>,
        group: PeerGroup,
        node: PeerName,
    ) -> Self {
        Self {
            discovery,
            group,
            node,
            routes: BTreeMap::new(),
            requested: false,
        }
    }

    /// Registers `actor` with the discovery; false without one (the actor
    /// is then alone).
    pub(crate) fn register(&self, actor: &ActorCell) -> bool {
        let Some(discovery) = &self.discovery else {
            return false;
        };
        discovery.register(&self.group, actor);
        true
    }

    /// The route to `node`'s counterpart.
    pub(crate) fn get(&self, node: &str) -> Option<&ActorRef<M>> {
        self.routes.get(node)
    }

    /// Whether the route to `node` is known.
    pub(crate) fn contains(&self, node: &str) -> bool {
        self.routes.contains_key(node)
    }

    /// The nodes with a known route.
    pub(crate) fn nodes(&self) -> Vec<PeerName> {
        self.routes.keys().cloned().collect()
    }

    /// Forgets the route to `node` (its proxy stopped); true if there was
    /// one.
    pub(crate) fn forget(&mut self, node: &str) -> bool {
        self.routes.remove(node).is_some()
    }

    /// Asks for a round (see [`request`](Self::request)) if `event` says
    /// the group changed.
    pub(crate) fn on_supervision(
        &mut self,
        event: &SupervisionEvent,
        actor: &ActorRef<M>,
        round: impl FnOnce() -> M,
    ) where
        M: ractor::Message,
    {
        if self.group.changed(event) {
            self.request(actor, round);
        }
    }

    /// Asks for a round: sends `actor` the message `round` builds, unless
    /// one is on its way already (or there is no discovery).
    pub(crate) fn request(&mut self, actor: &ActorRef<M>, round: impl FnOnce() -> M)
    where
        M: ractor::Message,
    {
        if self.discovery.is_some() && !self.requested {
            self.requested = actor.cast(round()).is_ok();
        }
    }

    /// Runs a discovery round: the routes now match what the discovery
    /// found, and the changes say how. A peer whose proxy changed restarted
    /// or reconnected: it goes down and comes up again, so that it gets
    /// everything it may have missed.
    pub(crate) async fn round(&mut self) -> Vec<PeerChange<M>>
    where
        M: ractor::Message,
    {
        self.requested = false;
        let Some(discovery) = &self.discovery else {
            return Vec::new();
        };
        let found: BTreeMap<PeerName, ActorCell> = discovery
            .discover(&self.group)
            .await
            .into_iter()
            .filter(|peer| peer.node != self.node)
            .map(|DiscoveredPeer { node, actor }| (node, actor))
            .collect();
        let mut changes: Vec<PeerChange<M>> = Vec::new();
        self.routes.retain(|node, _| {
            let stays = found.contains_key(node);
            if !stays {
                tracing::debug!(node, group = self.group.name(), "peer gone");
                changes.push(PeerChange::Down(node.clone()));
            }
            stays
        });
        for (node, actor) in found {
            let known = self.routes.get(&node).map(|known| known.get_id());
            if known == Some(actor.get_id()) {
                continue;
            }
            if known.is_some() {
                changes.push(PeerChange::Down(node.clone()));
            }
            tracing::debug!(node, group = self.group.name(), "peer up");
            let actor: ActorRef<M> = actor.into();
            self.routes.insert(node.clone(), actor.clone());
            changes.push(PeerChange::Up(node, actor));
        }
        changes
    }
}
