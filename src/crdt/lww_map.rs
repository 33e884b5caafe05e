use std::borrow::Borrow;

use serde::{Deserialize, Serialize};

use super::or_map::delegate_to_map;
use super::{Clock, LWWRegister, Member, ORMap, ORMapOp, OpBased, Payload, WallClock};
use crate::causal::ReplicaId;

/// A map whose values are last-writer-wins registers: an [`ORMap`] of
/// [`LWWRegister`]s with a map-shaped API.
///
/// Keys are add-wins (a write concurrent with a remove keeps the key); values
/// are decided by timestamp, then replica id.
///
/// ```
/// use ractor_replicated::{LWWMap, OpBased, ReplicaId, ReplicatedData};
///
/// let (a, b) = (ReplicaId::new("a", 1), ReplicaId::new("b", 1));
/// let mut settings = LWWMap::new();
/// let theme = |v: &str| ("theme".to_string(), v.to_string());
/// let (key, value) = theme("dark");
/// settings.apply(settings.insert_with_clock(&a, key, value, &|_: Option<i64>| 1));
/// let mut other = settings.clone();
/// let (key, value) = theme("light");
/// other.apply(other.insert_with_clock(&b, key, value, &|_: Option<i64>| 2));
/// settings.merge(&other);
/// assert_eq!(settings.get("theme").as_deref(), Some("light"));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
#[serde(bound(deserialize = "K: Member, V: Payload"))]
pub struct LWWMap<K: Ord, V> {
    map: ORMap<K, LWWRegister<V>>,
}

impl<K: Ord, V> Default for LWWMap<K, V> {
    fn default() -> Self {
        Self {
            map: ORMap::default(),
        }
    }
}

impl<K: Member, V: Payload> LWWMap<K, V> {
    /// The empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operation that sets `key` to `value`, timestamped by the [`WallClock`].
    pub fn insert(&self, replica: &ReplicaId, key: K, value: V) -> ORMapOp<K, LWWRegister<V>> {
        self.insert_with_clock(replica, key, value, &WallClock)
    }

    /// The operation that sets `key` to `value`, timestamped by `clock`.
    pub fn insert_with_clock(
        &self,
        replica: &ReplicaId,
        key: K,
        value: V,
        clock: &impl Clock,
    ) -> ORMapOp<K, LWWRegister<V>> {
        self.map.update(replica, key, |register, me| {
            register.apply(register.set_with_clock(me, value, clock))
        })
    }

    /// The operation that removes `key` as seen here.
    pub fn remove(&self, key: &K) -> ORMapOp<K, LWWRegister<V>> {
        self.map.remove(key)
    }

    /// The winning value of `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.map
            .get(key)
            .and_then(|register| register.value().cloned())
    }

    /// Keys with their winning values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, V)> + '_ {
        self.map
            .iter()
            .filter_map(|(key, register)| register.value().cloned().map(|v| (key, v)))
    }

    /// How many keys the map holds.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The underlying map of registers.
    pub fn as_or_map(&self) -> &ORMap<K, LWWRegister<V>> {
        &self.map
    }
}

delegate_to_map!([K: Member, V: Payload] LWWMap<K, V>, ORMapOp<K, LWWRegister<V>>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::laws::{self, LawSubject};
    use crate::crdt::ReplicatedData;

    impl LawSubject for LWWMap<u8, u8> {
        fn view(&self) -> String {
            format!("{:?}", self.iter().collect::<Vec<_>>())
        }

        /// `(key, Some(value))` writes with a tiny logical clock, `(key, None)` removes.
        type Action = (u8, Option<(u8, u8)>);
        fn act(&self, replica: &ReplicaId, action: &Self::Action) -> Vec<Self::Op> {
            let key = action.0 % 4;
            vec![match action.1 {
                Some((value, at)) => {
                    let at = i64::from(at % 4);
                    self.insert_with_clock(replica, key, value, &move |_: Option<i64>| at)
                }
                None => self.remove(&key),
            }]
        }
        fn keeps_observations(before: &Self, other: &Self, merged: &Self) -> bool {
            crate::crdt::or_map::keeps_dotted_versions(&before.map, &other.map, &merged.map)
        }
    }

    laws::law_tests!(LWWMap<u8, u8>);

    #[test]
    fn the_later_write_to_a_key_wins_everywhere() {
        let (a, b) = (laws::replica(0), laws::replica(1));
        let mut x = LWWMap::new();
        let mut y = LWWMap::new();
        x.apply(x.insert_with_clock(&a, 1, 'o', &|_: Option<i64>| 10));
        y.apply(y.insert_with_clock(&b, 1, 'n', &|_: Option<i64>| 11));
        assert_eq!(x.merged(&y).get(&1), Some('n'));
        assert_eq!(y.merged(&x).get(&1), Some('n'));
        assert_eq!(x.merged(&y).iter().collect::<Vec<_>>(), [(&1, 'n')]);
    }
}
