use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ReplicaId;

/// Incarnations that wrote their last and were pruned: per node name, every
/// incarnation below a bound.
///
/// A restarted node writes under a new, larger incarnation, so each earlier
/// one is dead: nothing it wrote changes any more. Once a replica holds all
/// that a node's earlier incarnations wrote, it can *retire* them (see
/// [`ReplicatedData::retire`](crate::ReplicatedData::retire)): their entries
/// leave its version vectors and counters, every dot of theirs counts as
/// seen, and their counts are folded into one total per node. The bound is a
/// single number per node name, so a state no longer grows with restarts.
/// Merging keeps the larger bound of each node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Retired(BTreeMap<String, u64>);

impl Retired {
    /// Nothing retired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every incarnation of `node` below this one is retired (0: none).
    pub fn below(&self, node: &str) -> u64 {
        self.0.get(node).copied().unwrap_or(0)
    }

    /// Whether `replica` (or the child identity of one) is retired.
    pub fn covers(&self, replica: &ReplicaId) -> bool {
        !self.0.is_empty() && replica.incarnation() < self.below(replica.node())
    }

    /// Retires the incarnations of `node` below `below`; says whether that
    /// retired any not retired before.
    pub fn retire(&mut self, node: &str, below: u64) -> bool {
        if below <= self.below(node) {
            return false;
        }
        self.0.insert(node.to_string(), below);
        true
    }

    /// Retires everything `other` retired; says whether that changed `self`.
    pub fn merge(&mut self, other: &Retired) -> bool {
        let mut changed = false;
        for (node, below) in &other.0 {
            changed |= self.retire(node, *below);
        }
        changed
    }

    /// Whether nothing is retired.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bounds, by node name.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, u64)> + '_ {
        self.0.iter().map(|(node, below)| (node.as_str(), *below))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_covers_the_earlier_incarnations_of_its_node_and_their_children() {
        let mut retired = Retired::new();
        assert!(retired.retire("a", 5));
        assert!(!retired.retire("a", 3), "a lower bound adds nothing");
        assert!(retired.covers(&ReplicaId::new("a", 4)));
        assert!(retired.covers(&ReplicaId::new("a", 4).child(9)));
        assert!(!retired.covers(&ReplicaId::new("a", 5)));
        assert!(!retired.covers(&ReplicaId::new("b", 1)));
        let mut other = Retired::new();
        other.retire("a", 7);
        other.retire("b", 2);
        assert!(retired.merge(&other));
        assert_eq!((retired.below("a"), retired.below("b")), (7, 2));
        assert!(!retired.merge(&other), "merging is idempotent");
    }
}
