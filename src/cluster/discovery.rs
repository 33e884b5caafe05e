use ractor::ActorCell;

use super::SCOPE;
use crate::discovery::{DiscoveredPeer, Discovery, DiscoveryFuture, PeerGroup};

/// Finds peers through process groups of the [`SCOPE`] scope, one per
/// [`PeerGroup`], which ractor_cluster keeps in sync across sessions. Members
/// join their group when they start.
///
/// Process groups are process-global: use this with one NodeServer per
/// process. Several nodes in one process (tests) use
/// [`SessionDiscovery`](crate::discovery::SessionDiscovery) instead.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessGroupDiscovery;

impl ProcessGroupDiscovery {
    /// The discovery; all instances share the process groups.
    pub fn new() -> Self {
        Self
    }
}

impl Discovery for ProcessGroupDiscovery {
    fn register(&self, group: &PeerGroup, actor: &ActorCell) {
        ractor::pg::join_scoped(SCOPE.into(), group.name().into(), vec![actor.clone()]);
    }

    fn discover(&self, group: &PeerGroup) -> DiscoveryFuture<'_> {
        let group = group.clone();
        Box::pin(async move {
            ractor::pg::get_scoped_members(&SCOPE.to_string(), &group.name().to_string())
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
