use serde::{Deserialize, Serialize};

use super::{GCounter, OpBased, ReplicatedData};
use crate::causal::{Dot, ReplicaId};

/// A counter that goes up and down: two [`GCounter`]s, one for increments and one
/// for decrements; the value is their difference.
///
/// Overflow: per-replica totals saturate at `u64::MAX`; the value is an `i128`,
/// which holds any difference of two `u128` sums that can actually occur.
///
/// ```
/// use ractor_replicated::{OpBased, PNCounter, ReplicaId, ReplicatedData};
///
/// let (a, b) = (ReplicaId::new("a", 1), ReplicaId::new("b", 1));
/// let mut left = PNCounter::new();
/// let mut right = PNCounter::new();
/// left.apply(left.increment(&a, 5));
/// right.apply(right.decrement(&b, 7));
/// left.merge(&right);
/// assert_eq!(left.value(), -2);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PNCounter {
    increments: GCounter,
    decrements: GCounter,
}

/// An operation on a [`PNCounter`]: a replica's new increment or decrement total.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PNCounterOp {
    /// Raises the replica's increment total.
    Increment(Dot),
    /// Raises the replica's decrement total.
    Decrement(Dot),
}

impl PNCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operation that adds `by`.
    pub fn increment(&self, replica: &ReplicaId, by: u64) -> PNCounterOp {
        PNCounterOp::Increment(self.increments.increment(replica, by))
    }

    /// The operation that subtracts `by`.
    pub fn decrement(&self, replica: &ReplicaId, by: u64) -> PNCounterOp {
        PNCounterOp::Decrement(self.decrements.increment(replica, by))
    }

    /// The operation that adds `delta`, which may be negative.
    pub fn change(&self, replica: &ReplicaId, delta: i64) -> PNCounterOp {
        if delta >= 0 {
            self.increment(replica, delta.unsigned_abs())
        } else {
            self.decrement(replica, delta.unsigned_abs())
        }
    }

    /// Increments minus decrements.
    pub fn value(&self) -> i128 {
        // Each sum is below 2^64 * (number of replicas), far inside i128.
        let up = i128::try_from(self.increments.value()).unwrap_or(i128::MAX);
        let down = i128::try_from(self.decrements.value()).unwrap_or(i128::MAX);
        up.saturating_sub(down)
    }

    /// The increments alone.
    pub fn increments(&self) -> &GCounter {
        &self.increments
    }

    /// The decrements alone.
    pub fn decrements(&self) -> &GCounter {
        &self.decrements
    }
}

impl ReplicatedData for PNCounter {
    fn merge(&mut self, other: &Self) {
        self.increments.merge(&other.increments);
        self.decrements.merge(&other.decrements);
    }

    fn retire(&mut self, node: &str, below: u64) {
        self.increments.retire(node, below);
        self.decrements.retire(node, below);
    }

    fn mentions(&self, node: &str, below: u64) -> bool {
        self.increments.mentions(node, below) || self.decrements.mentions(node, below)
    }
}

impl OpBased for PNCounter {
    type Op = PNCounterOp;

    fn apply(&mut self, op: PNCounterOp) {
        match op {
            PNCounterOp::Increment(total) => self.increments.apply(total),
            PNCounterOp::Decrement(total) => self.decrements.apply(total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::laws::{self, LawSubject};
    use quickcheck::{Arbitrary, Gen};

    #[derive(Clone, Debug)]
    pub(crate) struct Change(i64);

    impl Arbitrary for Change {
        fn arbitrary(g: &mut Gen) -> Self {
            Change(i64::from(i8::arbitrary(g)))
        }
    }

    impl LawSubject for PNCounter {
        fn view(&self) -> String {
            self.value().to_string()
        }

        type Action = Change;
        fn act(&self, replica: &ReplicaId, action: &Change) -> Vec<PNCounterOp> {
            vec![self.change(replica, action.0)]
        }
        fn keeps_observations(before: &Self, other: &Self, merged: &Self) -> bool {
            GCounter::keeps_observations(&before.increments, &other.increments, &merged.increments)
                && GCounter::keeps_observations(
                    &before.decrements,
                    &other.decrements,
                    &merged.decrements,
                )
        }
    }

    laws::law_tests!(PNCounter);

    #[test]
    fn increments_and_decrements_from_many_replicas_net_out() {
        let mut counters = vec![PNCounter::new(); 3];
        for (i, counter) in counters.iter_mut().enumerate() {
            let me = laws::replica(i);
            counter.apply(counter.increment(&me, 10));
            counter.apply(counter.change(&me, -3));
        }
        let total = counters
            .iter()
            .fold(PNCounter::new(), |acc, c| acc.merged(c));
        assert_eq!(total.value(), 21);
        assert_eq!(total.increments().value(), 30);
        assert_eq!(total.decrements().value(), 9);
    }

    #[test]
    fn extreme_totals_do_not_panic() {
        let a = laws::replica(0);
        let mut counter = PNCounter::new();
        counter.apply(counter.decrement(&a, u64::MAX));
        counter.apply(counter.decrement(&a, u64::MAX));
        assert_eq!(counter.value(), -i128::from(u64::MAX));
    }
}
