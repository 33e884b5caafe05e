use crate::discovery::{DiscoveredPeer, Discovery, DiscoveryFuture, PeerGroup};

/// Finds peers through ractor's process groups, one per [`PeerGroup`], which
/// ractor_cluster keeps in sync across sessions. Members join and monitor
/// their group when they start.
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
