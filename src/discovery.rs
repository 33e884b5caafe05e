//! How an actor finds its counterparts on the other nodes: the Replicator
//! finds the other Replicators, an entity the other replicas of its
//! persistence id.
//!
//! Counterparts form a [`PeerGroup`]: one actor per node, registered under a
//! name made of the group and the node, which is what travels with ractor_cluster's
//! proxies.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use ractor::ActorCell;
use ractor_cluster::NodeServerMessage;

use crate::ddata::PeerName;

const NAME_PREFIX: &str = "ractor_replicated.";

/// A set of actors, at most one per node, that replicate the same thing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerGroup(String);

impl PeerGroup {
    /// The Replicators of Distributed Data.
    pub fn replicators() -> Self {
        Self("replicator".into())
    }

    /// The replicas of the entity `persistence_id`.
    pub fn entity(persistence_id: &str) -> Self {
        Self(format!("entity/{persistence_id}"))
    }

    /// The group's name, also its process-group name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The registered name of the group's actor on `node`. Names are
    /// process-global in ractor, so they carry the node name.
    pub fn actor_name(&self, node: &str) -> String {
        format!("{NAME_PREFIX}{}@{node}", self.0)
    }

    /// The node of an actor of this group, from its registered name.
    pub fn node_of<'a>(&self, actor_name: &'a str) -> Option<&'a str> {
        actor_name
            .strip_prefix(NAME_PREFIX)?
            .strip_prefix(self.0.as_str())?
            .strip_prefix('@')
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

/// Lists the counterparts reachable right now. Replicators and entities poll
/// it and turn appearances and disappearances into peer-up and peer-down
/// events.
pub trait Discovery: Send + Sync + 'static {
    /// Called once when a member of `group` starts on this node, e.g. to make
    /// it findable.
    fn register(&self, group: &PeerGroup, actor: &ActorCell) {
        let _ = (group, actor);
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
/// NodeServers in one process, as in tests.
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
