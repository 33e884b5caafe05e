use std::cmp::Ordering;
use std::fmt;
use std::sync::atomic::{self, AtomicU64};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The identity of one writer: a node name plus an incarnation.
///
/// A replica that restarts without its state must not reuse its old identity:
/// it would re-mint dots and counter entries that peers already hold, and merges
/// would then hide its new writes. [`ReplicaId::fresh`] therefore draws a new
/// incarnation for every boot. Only a replica that recovered its complete state
/// from disk may keep its old id (build it with [`ReplicaId::new`]).
///
/// The node name is reference counted, so cloning a `ReplicaId` (which every
/// dot does) costs an increment, not an allocation.
///
/// A map hands the writer of one of its values a *child* identity
/// ([`ReplicaId::child`]), so that a value re-created after a remove never
/// re-mints the dots or counts of its previous life (see
/// [`ORMap::update`](crate::ORMap::update)).
///
/// ```
/// use ractor_replicated::ReplicaId;
///
/// let a = ReplicaId::fresh("node-a");
/// let b = ReplicaId::fresh("node-a");
/// assert_eq!(a.node(), b.node());
/// assert_ne!(a, b, "every boot gets its own incarnation");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplicaId {
    node: Arc<str>,
    incarnation: u64,
    /// Empty for a replica; for a child identity, the births of the values
    /// it writes in, outermost first.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "non_empty_lineage"
    )]
    lineage: Option<Arc<[u64]>>,
}

/// An empty lineage decodes as none, so that every identity has one form
/// (`Eq` and `Hash` compare the field, `Ord` its contents).
fn non_empty_lineage<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Arc<[u64]>>, D::Error> {
    let lineage: Option<Arc<[u64]>> = Deserialize::deserialize(deserializer)?;
    Ok(lineage.filter(|births| !births.is_empty()))
}

impl ReplicaId {
    /// An identity with an explicit incarnation, e.g. one recovered from disk.
    pub fn new(node: impl Into<Arc<str>>, incarnation: u64) -> Self {
        Self {
            node: node.into(),
            incarnation,
            lineage: None,
        }
    }

    /// An identity for a new boot of `node`.
    ///
    /// The incarnation is the wall clock in microseconds, raised above every
    /// incarnation this process handed out before, so two replicas created in the
    /// same process never collide and a restarted process gets a larger one unless
    /// the wall clock went back by more than the process's downtime.
    pub fn fresh(node: impl Into<Arc<str>>) -> Self {
        static LAST: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let previous = LAST
            .fetch_update(
                atomic::Ordering::Relaxed,
                atomic::Ordering::Relaxed,
                |last| Some(now.max(last.saturating_add(1))),
            )
            .unwrap_or_else(|last| last);
        Self::new(node, now.max(previous.saturating_add(1)))
    }

    /// The node name this replica runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Which boot of the node this identity belongs to.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Whether this identity (or the child identity of one) belongs to an
    /// incarnation of `node` below `below`: one a later boot left dead.
    pub fn is_earlier_incarnation_of(&self, node: &str, below: u64) -> bool {
        self.incarnation < below && &*self.node == node
    }

    /// The identity this replica writes with inside the value that a map
    /// created for it at `birth` (the counter of the map update that started
    /// the value's lineage). Distinct for every `birth`, and from every
    /// replica and every other child.
    pub fn child(&self, birth: u64) -> ReplicaId {
        let mut lineage = self.lineage().to_vec();
        lineage.push(birth);
        Self {
            node: self.node.clone(),
            incarnation: self.incarnation,
            lineage: Some(lineage.into()),
        }
    }

    /// The identity this child identity was derived from, `None` for a replica.
    pub fn parent(&self) -> Option<ReplicaId> {
        let (_, outer) = self.lineage().split_last()?;
        Some(Self {
            node: self.node.clone(),
            incarnation: self.incarnation,
            lineage: (!outer.is_empty()).then(|| outer.into()),
        })
    }

    /// The births of the nested values this identity writes in, outermost
    /// first; empty for a replica.
    pub fn lineage(&self) -> &[u64] {
        self.lineage.as_deref().unwrap_or_default()
    }
}

/// Replica ids order by incarnation, then node name: a total order, and since
/// fresh incarnations are unique per boot, one integer comparison nearly always
/// decides (version vectors compare ids on every lookup).
impl Ord for ReplicaId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.incarnation
            .cmp(&other.incarnation)
            .then_with(|| self.node.cmp(&other.node))
            .then_with(|| self.lineage().cmp(other.lineage()))
    }
}

impl PartialOrd for ReplicaId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.node, self.incarnation)?;
        self.lineage()
            .iter()
            .try_for_each(|birth| write!(f, "/{birth}"))
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_of_one_node_are_distinct_and_increasing() {
        let ids: Vec<_> = (0..100).map(|_| ReplicaId::fresh("n")).collect();
        for pair in ids.windows(2) {
            assert!(pair[0].incarnation() < pair[1].incarnation());
        }
    }

    #[test]
    fn order_is_total_and_agrees_with_equality() {
        let ids = [
            ReplicaId::new("b", 1),
            ReplicaId::new("a", 2),
            ReplicaId::new("a", 1),
        ];
        let mut sorted = ids.to_vec();
        sorted.sort();
        assert_eq!(sorted, [ids[2].clone(), ids[0].clone(), ids[1].clone()]);
        assert_eq!(ids[0].cmp(&ReplicaId::new("b", 1)), Ordering::Equal);
    }

    #[test]
    fn display_shows_node_and_incarnation() {
        assert_eq!(ReplicaId::new("node-a", 7).to_string(), "node-a#7");
        assert_eq!(
            ReplicaId::new("node-a", 7).child(3).child(1).to_string(),
            "node-a#7/3/1"
        );
    }

    #[test]
    fn children_are_distinct_from_their_parent_and_each_other() {
        let a = ReplicaId::new("a", 1);
        let (first, second) = (a.child(1), a.child(2));
        assert!(a != first && first != second && first != a.child(2).child(1));
        assert_eq!(first.parent(), Some(a.clone()));
        assert_eq!(second.child(9).parent(), Some(second.clone()));
        assert_eq!(a.parent(), None);
        assert!(
            a < first && first < second,
            "children sort after their parent"
        );
    }

    #[test]
    fn a_replica_encodes_as_before_and_a_child_round_trips() {
        let a = ReplicaId::new("a", 1);
        let old: Vec<u8> = rmp_serde::to_vec(&("a", 1u64)).expect("encodes");
        assert_eq!(rmp_serde::to_vec(&a).expect("encodes"), old);
        let child = a.child(4).child(2);
        let bytes = rmp_serde::to_vec(&child).expect("encodes");
        assert_eq!(rmp_serde::from_slice::<ReplicaId>(&bytes).ok(), Some(child));
        let empty: Vec<u8> = rmp_serde::to_vec(&("a", 1u64, Vec::<u64>::new())).expect("encodes");
        assert_eq!(rmp_serde::from_slice::<ReplicaId>(&empty).ok(), Some(a));
    }
}
