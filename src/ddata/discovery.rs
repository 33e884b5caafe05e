//! How a Replicator finds the Replicators of the other nodes.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use ractor::{ActorCell, ActorRef};
use ractor_cluster::NodeServerMessage;

use super::replicator::ReplicatorMessage;
use super::PeerName;

/// The registered name of the Replicator of node `node`. Names are
/// process-global in ractor, so they carry the node name.
pub fn replicator_name(node: &str) -> String {
    format!("{REPLICATOR_NAME_PREFIX}{node}")
}

const REPLICATOR_NAME_PREFIX: &str = "ractor_replicated.replicator@";

/// A reachable peer Replicator.
#[derive(Clone, Debug)]
pub struct DiscoveredPeer {
    /// The peer's node name.
    pub node: PeerName,
    /// Where to send it messages (a ractor_cluster proxy).
    pub replicator: ActorRef<ReplicatorMessage>,
}

/// A future returned by [`Discovery::discover`].
pub type DiscoveryFuture<'a> = Pin<Box<dyn Future<Output = Vec<DiscoveredPeer>> + Send + 'a>>;

/// Lists the peer Replicators reachable right now. The Replicator polls it and
/// turns appearances and disappearances into peer-up and peer-down events.
pub trait Discovery: Send + Sync + 'static {
    /// Called once when the Replicator starts, e.g. to make it findable.
    fn register(&self, replicator: &ActorCell) {
        let _ = replicator;
    }

    /// The peers reachable now.
    fn discover(&self) -> DiscoveryFuture<'_>;
}

/// Finds peers among the remote actors of a NodeServer's sessions: every
/// session holds a proxy for each remotable actor of its peer node, named as
/// the peer named it. The Replicator's node name must be the NodeServer's
/// node name (the part before `@`).
///
/// Unlike process groups, which are process-global, this works with several
/// NodeServers in one process, as in tests.
pub struct SessionDiscovery {
    server: ActorRef<NodeServerMessage>,
}

impl SessionDiscovery {
    /// Discovery through the sessions of `server`.
    pub fn new(server: ActorRef<NodeServerMessage>) -> Self {
        Self { server }
    }
}

impl Discovery for SessionDiscovery {
    fn discover(&self) -> DiscoveryFuture<'_> {
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
                // other nodes' Replicators. Only the peer's own is taken.
                found.extend(
                    session
                        .actor
                        .get_children()
                        .into_iter()
                        .filter_map(|proxy| {
                            let name = proxy.get_name()?;
                            let node = name.strip_prefix(REPLICATOR_NAME_PREFIX)?;
                            (node == peer_node).then(|| DiscoveredPeer {
                                node: node.to_string(),
                                replicator: proxy.into(),
                            })
                        }),
                );
            }
            found
        })
    }
}
