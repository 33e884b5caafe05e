use serde::{Deserialize, Serialize};

use super::{OpBased, ReplicatedData};
use crate::causal::{Dot, ReplicaId, VersionVector};

/// A grow-only counter: each replica counts its own increments, the value is the
/// sum, and merge keeps each replica's highest count.
///
/// Overflow: a replica's own count saturates at `u64::MAX` (reaching it would take
/// centuries of increments); the sum is widened to `u128`, which cannot overflow.
///
/// ```
/// use ractor_replicated::{GCounter, OpBased, ReplicaId, ReplicatedData};
///
/// let (a, b) = (ReplicaId::new("a", 1), ReplicaId::new("b", 1));
/// let mut left = GCounter::new();
/// let mut right = GCounter::new();
/// left.apply(left.increment(&a, 2));
/// right.apply(right.increment(&b, 3));
/// left.merge(&right);
/// right.merge(&left);
/// assert_eq!(left.value(), 5);
/// assert_eq!(left, right);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GCounter {
    counts: VersionVector,
}

impl GCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operation that adds `by` to `replica`'s count.
    ///
    /// The operation carries the new total of that replica, so applying it twice
    /// or after a later increment changes nothing.
    pub fn increment(&self, replica: &ReplicaId, by: u64) -> Dot {
        Dot::new(replica.clone(), self.counts.get(replica).saturating_add(by))
    }

    /// The sum of every replica's count.
    pub fn value(&self) -> u128 {
        self.counts.iter().map(|(_, n)| u128::from(n)).sum()
    }

    /// How much `replica` has added.
    pub fn count_of(&self, replica: &ReplicaId) -> u64 {
        self.counts.get(replica)
    }

    /// Each replica's count, in replica order.
    pub fn counts(&self) -> &VersionVector {
        &self.counts
    }
}

impl ReplicatedData for GCounter {
    fn merge(&mut self, other: &Self) {
        self.counts.merge(&other.counts);
    }
}

impl OpBased for GCounter {
    /// A replica's new total.
    type Op = Dot;

    fn apply(&mut self, op: Dot) {
        self.counts.observe(&op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::laws::{self, LawSubject};
    use quickcheck::{Arbitrary, Gen};

    #[derive(Clone, Debug)]
    pub(crate) struct Increment(u64);

    impl Arbitrary for Increment {
        fn arbitrary(g: &mut Gen) -> Self {
            Increment(u64::from(u8::arbitrary(g)))
        }
    }

    impl LawSubject for GCounter {
        type Action = Increment;
        fn act(&self, replica: &ReplicaId, action: &Increment) -> Vec<Dot> {
            vec![self.increment(replica, action.0)]
        }
        fn keeps_observations(before: &Self, _other: &Self, merged: &Self) -> bool {
            before.counts.iter().all(|(r, n)| merged.count_of(r) >= n)
                && merged.value() >= before.value()
        }
    }

    laws::law_tests!(GCounter);

    #[test]
    fn concurrent_increments_all_count() {
        let (a, b, c) = (laws::replica(0), laws::replica(1), laws::replica(2));
        let mut x = GCounter::new();
        let mut y = GCounter::new();
        x.apply(x.increment(&a, 1));
        x.apply(x.increment(&c, 10));
        y.apply(y.increment(&b, 4));
        let joined = x.merged(&y);
        assert_eq!(joined.value(), 15);
        assert_eq!(joined.count_of(&b), 4);
    }

    #[test]
    fn a_replica_count_saturates_instead_of_overflowing() {
        let a = laws::replica(0);
        let mut counter = GCounter::new();
        counter.apply(counter.increment(&a, u64::MAX));
        counter.apply(counter.increment(&a, 5));
        assert_eq!(counter.count_of(&a), u64::MAX);
        counter.apply(counter.increment(&laws::replica(1), u64::MAX));
        assert_eq!(counter.value(), 2 * u128::from(u64::MAX));
    }
}
