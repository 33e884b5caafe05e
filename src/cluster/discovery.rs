use ractor::ActorCell;

use super::SCOPE;
use crate::ddata::{replicator_name, DiscoveredPeer, Discovery, DiscoveryFuture};

const REPLICATOR_GROUP: &str = "replicators";

/// Finds peer Replicators through a process group of the [`SCOPE`] scope,
/// which ractor_cluster keeps in sync across sessions. The Replicator joins the
/// group when it starts.
///
/// Process groups are process-global: use this with one NodeServer per
/// process. Several nodes in one process (tests) use
/// [`SessionDiscovery`](crate::ddata::SessionDiscovery) instead.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessGroupDiscovery;

impl ProcessGroupDiscovery {
    /// The discovery; all instances share the one process group.
    pub fn new() -> Self {
        Self
    }
}

impl Discovery for ProcessGroupDiscovery {
    fn register(&self, replicator: &ActorCell) {
        ractor::pg::join_scoped(
            SCOPE.into(),
            REPLICATOR_GROUP.into(),
            vec![replicator.clone()],
        );
    }

    fn discover(&self) -> DiscoveryFuture<'_> {
        Box::pin(async move {
            let prefix = replicator_name("");
            ractor::pg::get_scoped_members(&SCOPE.to_string(), &REPLICATOR_GROUP.to_string())
                .into_iter()
                .filter(|cell| !cell.get_id().is_local())
                .filter_map(|cell| {
                    let node = cell.get_name()?.strip_prefix(&prefix)?.to_string();
                    Some(DiscoveredPeer {
                        node,
                        replicator: cell.into(),
                    })
                })
                .collect()
        })
    }
}
