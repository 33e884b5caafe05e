use std::borrow::{Borrow, Cow};

use serde::{Deserialize, Serialize};

use super::or_map::delegate_to_map;
use super::{Member, ORMap, ORMapOp, ORSet, OpBased};
use crate::causal::ReplicaId;

/// A multimap: each key holds an add-wins set of values; an [`ORMap`] of
/// [`ORSet`]s with a binding-shaped API.
///
/// A key whose last binding was removed reads as absent.
///
/// ```
/// use ractor_replicated::{OpBased, ORMultiMap, ReplicaId, ReplicatedData};
///
/// let (a, b) = (ReplicaId::new("a", 1), ReplicaId::new("b", 1));
/// let mut tags = ORMultiMap::new();
/// tags.apply(tags.add_binding(&a, 1, "rust".to_string()));
/// let mut other = tags.clone();
/// other.apply(other.add_binding(&b, 1, "crdt".to_string()));
/// tags.apply(tags.remove_binding(&a, 1, "rust"));
/// tags.merge(&other);
/// let values: Vec<String> = tags.get(&1).map(|set| set.iter().cloned().collect()).unwrap_or_default();
/// assert_eq!(values, ["crdt"]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
#[serde(bound(
    serialize = "K: Member, V: Member",
    deserialize = "K: Member, V: Member"
))]
pub struct ORMultiMap<K: Ord, V: Ord> {
    map: ORMap<K, ORSet<V>>,
}

impl<K: Ord, V: Ord> Default for ORMultiMap<K, V> {
    fn default() -> Self {
        Self {
            map: ORMap::default(),
        }
    }
}

impl<K: Member, V: Member> ORMultiMap<K, V> {
    /// The empty multimap.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operation that binds `value` to `key`.
    pub fn add_binding(&self, replica: &ReplicaId, key: K, value: V) -> ORMapOp<K, ORSet<V>> {
        self.map
            .update(replica, key, |set, me| set.apply(set.add(me, value)))
    }

    /// The operation that unbinds `value` from `key` as seen here.
    pub fn remove_binding<R: Ord + ?Sized>(
        &self,
        replica: &ReplicaId,
        key: K,
        value: &R,
    ) -> ORMapOp<K, ORSet<V>>
    where
        V: Borrow<R>,
    {
        self.map
            .update(replica, key, |set, _| set.apply(set.remove(value)))
    }

    /// The operation that removes `key` with all its bindings as seen here.
    pub fn remove(&self, key: &K) -> ORMapOp<K, ORSet<V>> {
        self.map.remove(key)
    }

    /// The values bound to `key`, if any.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<Cow<'_, ORSet<V>>>
    where
        K: Borrow<Q>,
    {
        self.map.get(key).filter(|set| !set.is_empty())
    }

    /// Whether `value` is bound to `key`.
    pub fn contains_binding<Q: Ord + ?Sized, R: Ord + ?Sized>(&self, key: &Q, value: &R) -> bool
    where
        K: Borrow<Q>,
        V: Borrow<R>,
    {
        self.map.get(key).is_some_and(|set| set.contains(value))
    }

    /// Keys with their sets of values, in key order; keys without bindings are skipped.
    pub fn iter(&self) -> impl Iterator<Item = (&K, Cow<'_, ORSet<V>>)> + '_ {
        self.map.iter().filter(|(_, set)| !set.is_empty())
    }

    /// How many keys have at least one binding.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether no key has a binding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The underlying map of sets.
    pub fn as_or_map(&self) -> &ORMap<K, ORSet<V>> {
        &self.map
    }
}

delegate_to_map!([K: Member, V: Member] ORMultiMap<K, V>, ORMapOp<K, ORSet<V>>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::laws::{self, LawSubject};
    use crate::crdt::ReplicatedData;

    impl LawSubject for ORMultiMap<u8, u8> {
        fn view(&self) -> String {
            // The map of sets it is made of reads the same.
            self.map.view()
        }

        /// `(key, Some((value, bind)))` binds or unbinds a value, `(key, None)` removes the key.
        type Action = (u8, Option<(u8, bool)>);
        fn act(&self, replica: &ReplicaId, action: &Self::Action) -> Vec<Self::Op> {
            let key = action.0 % 4;
            vec![match action.1 {
                Some((value, true)) => self.add_binding(replica, key, value % 4),
                Some((value, false)) => self.remove_binding(replica, key, &(value % 4)),
                None => self.remove(&key),
            }]
        }
        fn keeps_observations(before: &Self, other: &Self, merged: &Self) -> bool {
            crate::crdt::or_map::keeps_dotted_versions(&before.map, &other.map, &merged.map)
        }
    }

    laws::law_tests!(ORMultiMap<u8, u8>);

    #[test]
    fn concurrent_bindings_to_one_key_are_all_kept() {
        let (a, b) = (laws::replica(0), laws::replica(1));
        let mut x = ORMultiMap::new();
        let mut y = ORMultiMap::new();
        x.apply(x.add_binding(&a, 'k', 1));
        y.apply(y.add_binding(&b, 'k', 2));
        let merged = x.merged(&y);
        assert!(merged.contains_binding(&'k', &1) && merged.contains_binding(&'k', &2));
        let mut emptied = merged.clone();
        emptied.apply(emptied.remove_binding(&a, 'k', &1));
        emptied.apply(emptied.remove_binding(&a, 'k', &2));
        assert!(emptied.get(&'k').is_none() && emptied.is_empty());
    }

    #[test]
    fn a_binding_added_after_removing_the_key_survives_a_concurrent_update() {
        let (a, b) = (laws::replica(0), laws::replica(1));
        let mut x = ORMultiMap::new();
        x.apply(x.add_binding(&a, 0, 1));
        let mut y = x.clone();
        x.apply(x.remove(&0));
        x.apply(x.add_binding(&a, 0, 2));
        y.apply(y.add_binding(&b, 0, 3));
        let expected = [1, 2, 3];
        for merged in [x.merged(&y), y.merged(&x)] {
            let bindings: Vec<u8> = merged
                .get(&0)
                .map_or(Vec::new(), |s| s.iter().copied().collect());
            assert_eq!(bindings, expected);
        }
    }
}
