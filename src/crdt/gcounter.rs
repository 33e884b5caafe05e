use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{OpBased, ReplicatedData};
use crate::causal::{Dot, ReplicaId, Retired, VersionVector};

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
///
/// Retired incarnations ([`Retired`]) leave their counts folded into one
/// total per node name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GCounter {
    counts: VersionVector,
    retired: Retired,
    /// Per node name, the sum of its retired incarnations' counts.
    folded: BTreeMap<String, u64>,
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
        let live: u128 = self.counts.iter().map(|(_, n)| u128::from(n)).sum();
        live + self.folded.values().map(|n| u128::from(*n)).sum::<u128>()
    }

    /// How much `replica` has added (0 for a retired one: its count is in
    /// its node's [`retired_total`](Self::retired_total)).
    pub fn count_of(&self, replica: &ReplicaId) -> u64 {
        self.counts.get(replica)
    }

    /// Each live replica's count, in replica order.
    pub fn counts(&self) -> &VersionVector {
        &self.counts
    }

    /// What the retired incarnations of `node` added, together.
    pub fn retired_total(&self, node: &str) -> u64 {
        self.folded.get(node).copied().unwrap_or(0)
    }

    /// The retired incarnations.
    pub fn retired(&self) -> &Retired {
        &self.retired
    }

    /// Drops the counts of retired incarnations (their node's total holds
    /// them).
    fn drop_retired(&mut self) {
        let retired = &self.retired;
        self.counts.retain(|replica| !retired.covers(replica));
    }
}

impl ReplicatedData for GCounter {
    fn merge(&mut self, other: &Self) {
        self.counts.merge(&other.counts);
        if self.retired.is_empty() && other.retired.is_empty() {
            return;
        }
        // A total counts every incarnation below its bound, with the count
        // it ended with (it was retired only once final): the total with the
        // higher bound holds the other's total and every count between.
        // Equal bounds have equal totals; the larger is kept all the same.
        for (node, below) in other.retired.iter() {
            let mine = self.retired.below(node);
            let theirs = other.retired_total(node);
            if below > mine || (below == mine && theirs > self.retired_total(node)) {
                self.folded.insert(node.to_string(), theirs);
            }
        }
        self.retired.merge(&other.retired);
        self.drop_retired();
    }

    fn retire(&mut self, node: &str, below: u64) {
        if below <= self.retired.below(node) {
            return;
        }
        let mut total = self.retired_total(node);
        for (replica, n) in self.counts.iter() {
            if replica.is_earlier_incarnation_of(node, below) {
                total = total.saturating_add(n);
            }
        }
        self.folded.insert(node.to_string(), total);
        self.retired.retire(node, below);
        self.drop_retired();
    }

    fn mentions(&self, node: &str, below: u64) -> bool {
        self.retired.below(node) > 0
            || self
                .counts
                .iter()
                .any(|(replica, _)| replica.is_earlier_incarnation_of(node, below))
    }
}

impl OpBased for GCounter {
    /// A replica's new total.
    type Op = Dot;

    fn apply(&mut self, op: Dot) {
        if !self.retired.covers(&op.replica) {
            self.counts.observe(&op);
        }
    }
}

/// The encoding: the counts alone (a map) while nothing is retired, as
/// before retirement existed; otherwise `[counts, retired, totals]`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Wire<C, R, F> {
    Counts(C),
    Retiring(C, R, F),
}

impl Serialize for GCounter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.retired.is_empty() {
            Wire::<_, (), ()>::Counts(&self.counts).serialize(serializer)
        } else {
            Wire::Retiring(&self.counts, &self.retired, &self.folded).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for GCounter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire: Wire<VersionVector, Retired, BTreeMap<String, u64>> =
            Wire::deserialize(deserializer)?;
        Ok(match wire {
            Wire::Counts(counts) => Self {
                counts,
                ..Self::default()
            },
            Wire::Retiring(counts, retired, folded) => {
                // Canonical whatever a peer sent: totals only for retired
                // nodes, no count of a retired incarnation.
                let folded = folded
                    .into_iter()
                    .filter(|(node, _)| retired.below(node) > 0)
                    .collect();
                let mut counter = Self {
                    counts,
                    retired,
                    folded,
                };
                let retired = &counter.retired;
                counter.counts.retain(|replica| !retired.covers(replica));
                counter
            }
        })
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
        fn view(&self) -> String {
            self.value().to_string()
        }

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
