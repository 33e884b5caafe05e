use std::borrow::{Borrow, Cow};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::kernel::{apply_keyed_delta, ensure_unique_dots, merge_keyed, validated};
use super::{Member, OpBased, ReplicatedData};
use crate::causal::{CausalContext, Dot, ReplicaId};

/// An observed-remove map from keys to CRDT values.
///
/// Keys behave like an [`ORSet`](super::ORSet): an update concurrent with a
/// remove of the same key wins. Each update stores the updated value under a
/// fresh dot and supersedes the dots its writer had seen; concurrent updates
/// leave several dotted values under one key, and reading the key merges them.
/// Because every dot names one immutable value, merge is a true join
/// (associative and commutative even with removes), and a remove leaves no
/// tombstone. A remove concurrent with an update keeps the update, including the
/// value history it was built on, as in Akka's ORMap.
///
/// Space: per key, one value per concurrent update not yet seen by a later
/// update (usually one), plus one causal context for the whole map.
///
/// ```
/// use ractor_replicated::{GCounter, OpBased, ORMap, ReplicaId, ReplicatedData};
///
/// let (a, b) = (ReplicaId::new("a", 1), ReplicaId::new("b", 1));
/// let mut left: ORMap<String, GCounter> = ORMap::new();
/// let mut right = ORMap::new();
/// left.apply(left.update(&a, "hits".into(), |c: &mut GCounter| c.apply(c.increment(&a, 2))));
/// right.apply(right.update(&b, "hits".into(), |c: &mut GCounter| c.apply(c.increment(&b, 3))));
/// left.merge(&right);
/// assert_eq!(left.get("hits").map(|c| c.value()), Some(5));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    bound(deserialize = "K: Member, V: ReplicatedData"),
    try_from = "Wire<K, V>"
)]
pub struct ORMap<K: Ord, V> {
    context: CausalContext,
    entries: BTreeMap<K, Vec<(Dot, V)>>,
}

/// The decoded form, checked before it becomes a map.
#[derive(Deserialize)]
struct Wire<K: Ord, V> {
    context: CausalContext,
    entries: BTreeMap<K, Vec<(Dot, V)>>,
}

impl<K: Member, V: ReplicatedData> TryFrom<Wire<K, V>> for ORMap<K, V> {
    type Error = String;

    fn try_from(wire: Wire<K, V>) -> Result<Self, String> {
        let mut entries = BTreeMap::new();
        for (key, values) in wire.entries {
            let values = validated(values, &wire.context)?;
            if !values.is_empty() {
                entries.insert(key, values);
            }
        }
        ensure_unique_dots(entries.values().flatten().map(|(dot, _)| dot))?;
        Ok(Self {
            context: wire.context,
            entries,
        })
    }
}

/// An operation on an [`ORMap`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ORMapOp<K, V> {
    /// Stores `value` for `key` under a new dot, superseding the observed dots.
    Update {
        /// The new dot.
        dot: Dot,
        /// The key.
        key: K,
        /// The key's value after the update.
        value: V,
        /// The dots of the key's values the updater had seen.
        observed: Vec<Dot>,
    },
    /// Removes the key's values the remover had seen.
    Remove {
        /// The key.
        key: K,
        /// The dots of the key's values the remover had seen.
        observed: Vec<Dot>,
    },
}

impl<K: Ord, V> Default for ORMap<K, V> {
    fn default() -> Self {
        Self {
            context: CausalContext::new(),
            entries: BTreeMap::new(),
        }
    }
}

fn merged_value<V: ReplicatedData>(values: &[(Dot, V)]) -> Option<Cow<'_, V>> {
    match values {
        [] => None,
        [(_, only)] => Some(Cow::Borrowed(only)),
        [(_, first), rest @ ..] => {
            let mut joined = first.clone();
            rest.iter().for_each(|(_, v)| joined.merge(v));
            Some(Cow::Owned(joined))
        }
    }
}

impl<K: Member, V: ReplicatedData> ORMap<K, V> {
    /// The empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operation that updates `key`'s value with `modify`, starting from the
    /// current value or `V::default()` if the key is absent.
    pub fn update(&self, replica: &ReplicaId, key: K, modify: impl FnOnce(&mut V)) -> ORMapOp<K, V>
    where
        V: Default,
    {
        let mut value = self.get(&key).map(Cow::into_owned).unwrap_or_default();
        modify(&mut value);
        ORMapOp::Update {
            dot: self.context.next_dot(replica),
            observed: self.dots_of(&key),
            key,
            value,
        }
    }

    /// The operation that removes `key` as seen here.
    pub fn remove(&self, key: &K) -> ORMapOp<K, V> {
        ORMapOp::Remove {
            key: key.clone(),
            observed: self.dots_of(key),
        }
    }

    fn dots_of(&self, key: &K) -> Vec<Dot> {
        self.entries
            .get(key)
            .map(|values| values.iter().map(|(dot, _)| dot.clone()).collect())
            .unwrap_or_default()
    }

    /// The value of `key`: borrowed when one update is current, merged when
    /// concurrent updates are.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<Cow<'_, V>>
    where
        K: Borrow<Q>,
    {
        self.entries
            .get(key)
            .and_then(|values| merged_value(values))
    }

    /// Whether `key` is present.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.entries.contains_key(key)
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &K> + '_ {
        self.entries.keys()
    }

    /// Keys with their (merged) values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, Cow<'_, V>)> + '_ {
        self.entries
            .iter()
            .filter_map(|(key, values)| merged_value(values).map(|v| (key, v)))
    }

    /// How many keys the map holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Everything this map has observed.
    pub fn context(&self) -> &CausalContext {
        &self.context
    }

    /// The dotted values under `key`: more than one after concurrent updates.
    pub fn versions_of<Q: Ord + ?Sized>(&self, key: &Q) -> &[(Dot, V)]
    where
        K: Borrow<Q>,
    {
        self.entries.get(key).map_or(&[], Vec::as_slice)
    }
}

impl<K: Member, V: ReplicatedData> ReplicatedData for ORMap<K, V> {
    fn merge(&mut self, other: &Self) {
        merge_keyed(
            &mut self.entries,
            &self.context,
            &other.entries,
            &other.context,
        );
        self.context.merge(&other.context);
    }
}

impl<K: Member, V: ReplicatedData> OpBased for ORMap<K, V> {
    type Op = ORMapOp<K, V>;

    fn apply(&mut self, op: ORMapOp<K, V>) {
        match op {
            ORMapOp::Update {
                dot,
                key,
                value,
                observed,
            } => apply_keyed_delta(
                &mut self.entries,
                &mut self.context,
                key,
                Some((dot, value)),
                &observed,
            ),
            ORMapOp::Remove { key, observed } => {
                apply_keyed_delta(&mut self.entries, &mut self.context, key, None, &observed)
            }
        }
    }
}

/// Law-harness check shared by every map type: each dotted value of `before`
/// survives in `merged` unless `other` observed its dot and superseded it.
#[cfg(test)]
pub(crate) fn keeps_dotted_versions<K: Member, V: ReplicatedData>(
    before: &ORMap<K, V>,
    other: &ORMap<K, V>,
    merged: &ORMap<K, V>,
) -> bool {
    let holds =
        |map: &ORMap<K, V>, key: &K, dot: &Dot| map.versions_of(key).iter().any(|(d, _)| d == dot);
    before.keys().all(|key| {
        before.versions_of(key).iter().all(|(dot, _)| {
            let superseded = other.context().contains(dot) && !holds(other, key, dot);
            superseded || holds(merged, key, dot)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::laws::{self, LawSubject};
    use crate::crdt::{GCounter, ORSet};
    use quickcheck::{Arbitrary, Gen};

    #[derive(Clone, Debug)]
    pub(crate) enum MapAction {
        Add { key: u8, member: u8 },
        RemoveMember { key: u8, member: u8 },
        RemoveKey(u8),
    }

    impl Arbitrary for MapAction {
        fn arbitrary(g: &mut Gen) -> Self {
            let (key, member) = (u8::arbitrary(g) % 4, u8::arbitrary(g) % 4);
            match u8::arbitrary(g) % 10 {
                0..=5 => MapAction::Add { key, member },
                6..=7 => MapAction::RemoveMember { key, member },
                _ => MapAction::RemoveKey(key),
            }
        }
    }

    /// A map of sets: nested dots make it the hardest composition to get right.
    impl LawSubject for ORMap<u8, ORSet<u8>> {
        type Action = MapAction;
        fn act(&self, replica: &ReplicaId, action: &MapAction) -> Vec<ORMapOp<u8, ORSet<u8>>> {
            vec![match *action {
                MapAction::Add { key, member } => {
                    self.update(replica, key, |set| set.apply(set.add(replica, member)))
                }
                MapAction::RemoveMember { key, member } => {
                    self.update(replica, key, |set| set.apply(set.remove(&member)))
                }
                MapAction::RemoveKey(key) => self.remove(&key),
            }]
        }
        fn keeps_observations(before: &Self, other: &Self, merged: &Self) -> bool {
            keeps_dotted_versions(before, other, merged)
        }
    }

    laws::law_tests!(ORMap<u8, ORSet<u8>>);

    #[test]
    fn concurrent_updates_to_one_key_merge_their_values() {
        let (a, b) = (laws::replica(0), laws::replica(1));
        let mut x: ORMap<char, GCounter> = ORMap::new();
        x.apply(x.update(&a, 'k', |c| c.apply(c.increment(&a, 1))));
        let mut y = x.clone();
        x.apply(x.update(&a, 'k', |c| c.apply(c.increment(&a, 1))));
        y.apply(y.update(&b, 'k', |c| c.apply(c.increment(&b, 5))));
        let merged = x.merged(&y);
        assert_eq!(merged.versions_of(&'k').len(), 2);
        assert_eq!(merged.get(&'k').map(|c| c.value()), Some(7));
        let mut next = merged.clone();
        next.apply(next.update(&a, 'k', |c| c.apply(c.increment(&a, 1))));
        assert_eq!(next.versions_of(&'k').len(), 1, "a later update folds them");
        assert_eq!(next.get(&'k').map(|c| c.value()), Some(8));
    }

    #[test]
    fn an_update_wins_over_a_concurrent_remove_of_the_key() {
        let (a, b) = (laws::replica(0), laws::replica(1));
        let mut x: ORMap<u8, GCounter> = ORMap::new();
        x.apply(x.update(&a, 1, |c| c.apply(c.increment(&a, 1))));
        let mut y = x.clone();
        x.apply(x.remove(&1));
        assert!(!x.contains_key(&1));
        y.apply(y.update(&b, 1, |c| c.apply(c.increment(&b, 1))));
        let merged = x.merged(&y);
        assert_eq!(merged.get(&1).map(|c| c.value()), Some(2));
    }

    #[test]
    fn a_removed_key_stays_removed_and_can_be_added_again() {
        let a = laws::replica(0);
        let mut map: ORMap<u8, GCounter> = ORMap::new();
        map.apply(map.update(&a, 1, |c| c.apply(c.increment(&a, 3))));
        let stale = map.clone();
        map.apply(map.remove(&1));
        assert!(!map.merged(&stale).contains_key(&1));
        map.apply(map.update(&a, 1, |c| c.apply(c.increment(&a, 1))));
        assert_eq!(map.get(&1).map(|c| c.value()), Some(1), "starts from empty");
        assert_eq!(map.len(), 1);
    }
}
