use std::borrow::Borrow;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Member, OpBased, ReplicatedData};

/// A grow-only set: elements can be added, never removed; merge is union.
///
/// ```
/// use ractor_replicated::{GSet, OpBased, ReplicatedData};
///
/// let mut left = GSet::new();
/// let mut right = GSet::new();
/// left.apply(left.insert("apple".to_string()));
/// right.apply(right.insert("pear".to_string()));
/// left.merge(&right);
/// assert!(left.contains("pear"));
/// assert_eq!(left.len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
#[serde(bound(deserialize = "T: Member"))]
pub struct GSet<T: Ord> {
    members: BTreeSet<T>,
}

impl<T: Ord> Default for GSet<T> {
    fn default() -> Self {
        Self {
            members: BTreeSet::new(),
        }
    }
}

impl<T: Member> GSet<T> {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operation that adds `member`.
    pub fn insert(&self, member: T) -> T {
        member
    }

    /// Whether `member` was added.
    pub fn contains<Q: Ord + ?Sized>(&self, member: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.members.contains(member)
    }

    /// The elements, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &T> + '_ {
        self.members.iter()
    }

    /// How many elements the set holds.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

impl<T: Member> ReplicatedData for GSet<T> {
    fn merge(&mut self, other: &Self) {
        self.members.extend(other.members.iter().cloned());
    }
}

impl<T: Member> OpBased for GSet<T> {
    /// The element to add.
    type Op = T;

    fn apply(&mut self, member: T) {
        self.members.insert(member);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::ReplicaId;
    use crate::crdt::laws::{self, LawSubject};

    impl LawSubject for GSet<u8> {
        fn view(&self) -> String {
            format!("{:?}", self.iter().collect::<Vec<_>>())
        }

        type Action = u8;
        fn act(&self, _: &ReplicaId, member: &u8) -> Vec<u8> {
            vec![self.insert(*member % 16)]
        }
        fn keeps_observations(before: &Self, _: &Self, merged: &Self) -> bool {
            before.iter().all(|m| merged.contains(m))
        }
    }

    laws::law_tests!(GSet<u8>);

    #[test]
    fn union_of_replicas_holds_every_addition() {
        let mut a = GSet::new();
        let mut b = GSet::new();
        a.apply(a.insert(1));
        a.apply(a.insert(2));
        b.apply(b.insert(2));
        b.apply(b.insert(3));
        assert_eq!(a.merged(&b).iter().copied().collect::<Vec<_>>(), [1, 2, 3]);
    }
}
