use std::borrow::Borrow;

use serde::{Deserialize, Serialize};

use super::or_map::delegate_to_map;
use super::{Member, ORMap, ORMapOp, OpBased, PNCounter};
use crate::causal::ReplicaId;

/// A map of counters: an [`ORMap`] of [`PNCounter`]s with a counter-shaped API.
///
/// Increments to one key from different replicas all count. Removing a key
/// resets it, except for increments concurrent with the remove (add wins).
///
/// ```
/// use ractor_replicated::{OpBased, PNCounterMap, ReplicaId, ReplicatedData};
///
/// let (a, b) = (ReplicaId::new("a", 1), ReplicaId::new("b", 1));
/// let mut votes = PNCounterMap::new();
/// let mut elsewhere = PNCounterMap::new();
/// votes.apply(votes.increment(&a, "rust".to_string(), 2));
/// elsewhere.apply(elsewhere.increment(&b, "rust".to_string(), 1));
/// elsewhere.apply(elsewhere.decrement(&b, "go".to_string(), 1));
/// votes.merge(&elsewhere);
/// assert_eq!(votes.get("rust"), Some(3));
/// assert_eq!(votes.get("go"), Some(-1));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
#[serde(bound(deserialize = "K: Member"))]
pub struct PNCounterMap<K: Ord> {
    map: ORMap<K, PNCounter>,
}

impl<K: Ord> Default for PNCounterMap<K> {
    fn default() -> Self {
        Self {
            map: ORMap::default(),
        }
    }
}

impl<K: Member> PNCounterMap<K> {
    /// The empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operation that adds `by` to `key`'s counter.
    pub fn increment(&self, replica: &ReplicaId, key: K, by: u64) -> ORMapOp<K, PNCounter> {
        self.map
            .update(replica, key, |c, me| c.apply(c.increment(me, by)))
    }

    /// The operation that subtracts `by` from `key`'s counter.
    pub fn decrement(&self, replica: &ReplicaId, key: K, by: u64) -> ORMapOp<K, PNCounter> {
        self.map
            .update(replica, key, |c, me| c.apply(c.decrement(me, by)))
    }

    /// The operation that removes `key` (and so resets its counter) as seen here.
    pub fn remove(&self, key: &K) -> ORMapOp<K, PNCounter> {
        self.map.remove(key)
    }

    /// The value of `key`'s counter.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<i128>
    where
        K: Borrow<Q>,
    {
        self.map.get(key).map(|c| c.value())
    }

    /// Keys with their counter values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, i128)> + '_ {
        self.map.iter().map(|(key, c)| (key, c.value()))
    }

    /// How many keys the map holds.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The underlying map of counters.
    pub fn as_or_map(&self) -> &ORMap<K, PNCounter> {
        &self.map
    }
}

delegate_to_map!([K: Member] PNCounterMap<K>, ORMapOp<K, PNCounter>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::laws::{self, LawSubject};
    use crate::crdt::ReplicatedData;

    impl LawSubject for PNCounterMap<u8> {
        fn view(&self) -> String {
            format!("{:?}", self.iter().collect::<Vec<_>>())
        }

        /// `(key, Some(delta))` changes a counter, `(key, None)` removes the key.
        type Action = (u8, Option<i8>);
        fn act(&self, replica: &ReplicaId, action: &Self::Action) -> Vec<Self::Op> {
            let key = action.0 % 4;
            vec![match action.1 {
                Some(delta) if delta >= 0 => {
                    self.increment(replica, key, delta.unsigned_abs().into())
                }
                Some(delta) => self.decrement(replica, key, delta.unsigned_abs().into()),
                None => self.remove(&key),
            }]
        }
        fn keeps_observations(before: &Self, other: &Self, merged: &Self) -> bool {
            crate::crdt::or_map::keeps_dotted_versions(&before.map, &other.map, &merged.map)
        }
    }

    laws::law_tests!(PNCounterMap<u8>);

    #[test]
    fn counts_per_key_from_every_replica() {
        let replicas: Vec<_> = (0..3).map(laws::replica).collect();
        let merged = replicas.iter().fold(PNCounterMap::new(), |acc, r| {
            let mut mine = PNCounterMap::new();
            mine.apply(mine.increment(r, 'a', 2));
            mine.apply(mine.decrement(r, 'b', 1));
            acc.merged(&mine)
        });
        assert_eq!(merged.iter().collect::<Vec<_>>(), [(&'a', 6), (&'b', -3)]);
    }

    #[test]
    fn a_count_restarted_after_removing_the_key_adds_to_a_concurrent_update() {
        let (a, b) = (laws::replica(0), laws::replica(1));
        let mut x = PNCounterMap::new();
        x.apply(x.increment(&a, 0, 5));
        let mut y = x.clone();
        x.apply(x.remove(&0));
        x.apply(x.increment(&a, 0, 3));
        y.apply(y.increment(&b, 0, 1));
        assert_eq!(x.merged(&y).get(&0), Some(9));
        assert_eq!(y.merged(&x).get(&0), Some(9));
    }
}

#[cfg(test)]
mod retirement_tests {
    use super::*;
    use crate::crdt::laws;
    use crate::crdt::ReplicatedData;

    /// Writes of a dead incarnation `a` in key 0: what `r` and `x` hold
    /// when `r` retires it. `x` still holds a value of `a`'s first lineage
    /// that `r` removed; `r` holds only `a`'s second lineage.
    fn diverged() -> (PNCounterMap<u8>, PNCounterMap<u8>, ReplicaId) {
        let (a, x_id, r_id) = (laws::replica(0), laws::replica(1), laws::replica(2));
        let mut a_map = PNCounterMap::new();
        a_map.apply(a_map.increment(&a, 0, 1));
        let mut x = a_map.clone();
        let mut r = a_map.clone();
        x.apply(x.increment(&x_id, 0, 1));
        r.merge(&x);
        r.apply(r.remove(&0));
        a_map.apply(a_map.remove(&0));
        a_map.apply(a_map.increment(&a, 0, 1));
        r.merge(&a_map);
        r.apply(r.increment(&r_id, 1, 1));
        (r, x, x_id)
    }

    #[test]
    fn a_value_that_another_replica_holds_differently_is_not_settled() {
        let dead = laws::replica(0);
        let (node, below) = (dead.node(), dead.incarnation() + 1);
        let (mut r, mut x, x_id) = diverged();
        assert_eq!(r.get(&0), Some(1));
        let elsewhere = x.unsettled(node, below);
        assert_eq!(elsewhere.len(), 1, "x holds the value r removed");
        let mut careless = r.clone();
        careless.retire_settled(node, below, &[]);
        r.retire_settled(node, below, &elsewhere);
        assert!(
            !r.unsettled(node, below).is_empty(),
            "r's value is not settled"
        );
        // x goes on from its value: a's first count is in it.
        x.apply(x.increment(&x_id, 0, 1));
        assert_eq!(r.merged(&x).get(&0), Some(4), "a 1, x 1, a 1 anew, x 1");
        assert_eq!(
            careless.merged(&x).get(&0),
            Some(3),
            "settling regardless of x loses a's first count"
        );
    }

    #[test]
    fn once_every_replica_holds_one_version_it_is_settled_and_spreads() {
        let dead = laws::replica(0);
        let (node, below) = (dead.node(), dead.incarnation() + 1);
        let (mut r, mut x, _) = diverged();
        x.merge(&r);
        r.retire_settled(node, below, &x.unsettled(node, below));
        assert!(r.unsettled(node, below).is_empty());
        let counter = r.map.get(&0).map(|c| c.increments().clone());
        assert_eq!(counter.as_ref().map(|c| c.counts().len()), Some(0));
        assert_eq!(counter.map(|c| c.retired_total(node)), Some(1));
        assert_eq!(r.get(&0), Some(1));
        x.merge(&r);
        assert_eq!(x, r, "the settled value replaces the unsettled copy");
    }
}
