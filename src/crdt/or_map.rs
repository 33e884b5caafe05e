use std::borrow::{Borrow, Cow};
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::kernel::{self, apply_keyed_delta, ensure_unique_dots, merge_keyed, validated, Dotted};
use super::{Member, OpBased, ReplicatedData};
use crate::causal::{CausalContext, Dot, ReplicaId, Retired, VersionVector};

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
/// Values are written under a child identity of the writing replica that the
/// map hands to [`update`](Self::update)'s closure. A value re-created after a
/// remove gets a new one, so its writes add to whatever history of the old
/// value survives elsewhere instead of colliding with it (a counter re-created
/// by the same replica counts from zero again, and its new increments must not
/// hide under the old ones).
///
/// Space: per key, one value per concurrent update not yet seen by a later
/// update (usually one), each with a version vector of the writers of its
/// history, plus one causal context for the whole map.
///
/// ```
/// use ractor_replicated::{GCounter, OpBased, ORMap, ReplicaId, ReplicatedData};
///
/// let (a, b) = (ReplicaId::new("a", 1), ReplicaId::new("b", 1));
/// let mut left: ORMap<String, GCounter> = ORMap::new();
/// let mut right = ORMap::new();
/// left.apply(left.update(&a, "hits".into(), |c: &mut GCounter, me| c.apply(c.increment(me, 2))));
/// right.apply(right.update(&b, "hits".into(), |c: &mut GCounter, me| c.apply(c.increment(me, 3))));
/// left.merge(&right);
/// assert_eq!(left.get("hits").map(|c| c.value()), Some(5));
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[serde(
    bound(deserialize = "K: Member, V: ReplicatedData"),
    try_from = "Wire<K, V>"
)]
pub struct ORMap<K: Ord, V> {
    context: CausalContext,
    entries: BTreeMap<K, Vec<DottedValue<V>>>,
    /// This copy's own knowledge, never replicated nor cloned: per key,
    /// each writer's latest update applied to this very copy. It lets a
    /// writer whose value was superseded by another writer's keep its child
    /// identity (the history shows whether its latest write is included).
    /// Without it (a restart, a clone, a nested map rebuilt from a value) the
    /// writer takes a new identity when its own value is not current, which
    /// is always safe.
    #[serde(skip)]
    latest_writes: BTreeMap<K, Vec<(Dot, u64)>>,
}

/// One value of an [`ORMap`] key, as written by one update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "DottedValueWire<V>")]
pub struct DottedValue<V> {
    dot: Dot,
    birth: u64,
    history: VersionVector,
    value: V,
}

impl<V> DottedValue<V> {
    /// Retires `retired` in the value's history; the writer's own entry
    /// stays, as every history must hold it. The value itself is left
    /// alone: it holds only what its own lineage of updates saw, not all
    /// the map holds, so a retired incarnation's dots must not count as
    /// seen in it, and counts of several writers cannot be folded into one
    /// total when two values of a key hold different ones.
    fn retire(&mut self, retired: &Retired) {
        let writer = self.writer();
        self.history
            .retain(|replica| !retired.covers(replica) || *replica == writer);
    }

    /// The value with the incarnations of `node` below `below` retired
    /// through and through, as if no other version of it existed; `None` if
    /// that changes nothing.
    fn settled(&self, node: &str, below: u64) -> Option<V>
    where
        V: ReplicatedData,
    {
        if !self.value.mentions(node, below) {
            return None;
        }
        let mut settled = self.value.clone();
        settled.retire_settled(node, below, &[]);
        (settled != self.value).then_some(settled)
    }

    /// The dot of the update that wrote the value.
    pub fn dot(&self) -> &Dot {
        &self.dot
    }

    /// The child identity the value was written under: the update's replica,
    /// in the lineage started by its update with counter `birth`.
    pub fn writer(&self) -> ReplicaId {
        self.dot.replica.child(self.birth)
    }

    /// For each writer identity in the value's history, the counter of its
    /// latest update the value includes.
    pub fn history(&self) -> &VersionVector {
        &self.history
    }

    /// The value.
    pub fn value(&self) -> &V {
        &self.value
    }
}

impl<V: ReplicatedData> Dotted for DottedValue<V> {
    const COPIES_MAY_DIFFER: bool = true;

    fn dot(&self) -> &Dot {
        &self.dot
    }

    /// A copy settled elsewhere joins this one into the settled value (a
    /// retired state holds the unretired one).
    fn join_copy(&mut self, other: &Self) {
        if self.value != other.value {
            self.value.merge(&other.value);
        }
    }
}

/// The decoded form of a [`DottedValue`], checked before it becomes one.
#[derive(Deserialize)]
struct DottedValueWire<V> {
    dot: Dot,
    birth: u64,
    history: VersionVector,
    value: V,
}

impl<V> TryFrom<DottedValueWire<V>> for DottedValue<V> {
    type Error = String;

    fn try_from(wire: DottedValueWire<V>) -> Result<Self, String> {
        let dotted = Self {
            dot: wire.dot,
            birth: wire.birth,
            history: wire.history,
            value: wire.value,
        };
        let counter = dotted.dot.counter;
        if dotted.birth == 0 || dotted.birth > counter {
            return Err(format!("value {:?} has birth {}", dotted.dot, dotted.birth));
        }
        if dotted.history.get(&dotted.writer()) != counter {
            return Err(format!(
                "value {:?} is missing from its history",
                dotted.dot
            ));
        }
        Ok(dotted)
    }
}

/// The decoded form, checked before it becomes a map.
#[derive(Deserialize)]
struct Wire<K: Ord, V> {
    context: CausalContext,
    entries: BTreeMap<K, Vec<DottedValue<V>>>,
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
        ensure_unique_dots(entries.values().flatten().map(|value| &value.dot))?;
        Ok(Self {
            context: wire.context,
            entries,
            latest_writes: BTreeMap::new(),
        })
    }
}

/// An operation on an [`ORMap`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "K: Member, V: ReplicatedData"))]
pub enum ORMapOp<K, V> {
    /// Stores a new value for `key`, superseding the observed dots.
    Update {
        /// The key.
        key: K,
        /// The key's value after the update, under the update's new dot.
        value: DottedValue<V>,
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
            latest_writes: BTreeMap::new(),
        }
    }
}

/// A copy of the replicated state. What the original knew of its writers'
/// latest writes stays behind: a copy can be written on apart from the
/// original (a fork, or a nested map's start value rebuilt from one of its
/// versions), and stale knowledge would let a writer re-mint counts.
impl<K: Ord + Clone, V: Clone> Clone for ORMap<K, V> {
    fn clone(&self) -> Self {
        Self {
            context: self.context.clone(),
            entries: self.entries.clone(),
            latest_writes: BTreeMap::new(),
        }
    }
}

/// Equal replicated state; what each copy knows of its own writes is not
/// compared.
impl<K: Ord, V: PartialEq> PartialEq for ORMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.context == other.context && self.entries == other.entries
    }
}

fn merged_value<V: ReplicatedData>(values: &[DottedValue<V>]) -> Option<Cow<'_, V>> {
    match values {
        [] => None,
        [only] => Some(Cow::Borrowed(&only.value)),
        [first, rest @ ..] => {
            let mut joined = first.value.clone();
            rest.iter().for_each(|v| joined.merge(&v.value));
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
    ///
    /// `modify` gets the value and the identity to write it with: a child of
    /// `replica` ([`ReplicaId::child`]) that the map keeps as long as the
    /// value's history includes this replica's latest write, and replaces when
    /// it does not (the key was removed and created again, or the replica
    /// restarted). Every mutator called inside must use it, not `replica`:
    ///
    /// ```
    /// use ractor_replicated::{OpBased, ORMap, PNCounter, ReplicaId};
    ///
    /// let a = ReplicaId::new("a", 1);
    /// let mut stock: ORMap<String, PNCounter> = ORMap::new();
    /// let apples = "apples".to_string();
    /// stock.apply(stock.update(&a, apples, |count, me| count.apply(count.increment(me, 5))));
    /// assert_eq!(stock.get("apples").map(|c| c.value()), Some(5));
    /// ```
    pub fn update(
        &self,
        replica: &ReplicaId,
        key: K,
        modify: impl FnOnce(&mut V, &ReplicaId),
    ) -> ORMapOp<K, V>
    where
        V: Default,
    {
        let dot = self.context.next_dot(replica);
        let current = self.versions_of(&key);
        let mut history = VersionVector::new();
        current.iter().for_each(|v| history.merge(&v.history));
        let birth = self
            .continued_lineage(&key, replica, current, &history)
            // A history that claims this identity wrote at or after the new
            // dot is not one this replica made: start afresh.
            .filter(|birth| history.get(&replica.child(*birth)) < dot.counter)
            .unwrap_or(dot.counter);
        let writer = replica.child(birth);
        let mut value = merged_value(current)
            .map(Cow::into_owned)
            .unwrap_or_default();
        modify(&mut value, &writer);
        history.observe(&Dot::new(writer, dot.counter));
        ORMapOp::Update {
            observed: current.iter().map(|v| v.dot.clone()).collect(),
            key,
            value: DottedValue {
                dot,
                birth,
                history,
                value,
            },
        }
    }

    /// The birth of `replica`'s lineage for `key` if the current values
    /// include its latest write (so the child identity may go on counting),
    /// `None` if a new lineage must start.
    fn continued_lineage(
        &self,
        key: &K,
        replica: &ReplicaId,
        current: &[DottedValue<V>],
        history: &VersionVector,
    ) -> Option<u64> {
        // A value of the writer's own that is still current is its latest
        // write for the key: a later one would have superseded it.
        if let Some(own) = current
            .iter()
            .filter(|v| &v.dot.replica == replica)
            .max_by_key(|v| v.dot.counter)
        {
            return Some(own.birth);
        }
        let (latest, birth) = self
            .latest_writes
            .get(key)?
            .iter()
            .find(|(dot, _)| &dot.replica == replica)?;
        (history.get(&replica.child(*birth)) >= latest.counter).then_some(*birth)
    }

    /// The operation that removes `key` as seen here.
    pub fn remove(&self, key: &K) -> ORMapOp<K, V> {
        ORMapOp::Remove {
            key: key.clone(),
            observed: self.dots_of(key),
        }
    }

    fn dots_of(&self, key: &K) -> Vec<Dot> {
        self.versions_of(key)
            .iter()
            .map(|v| v.dot.clone())
            .collect()
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
    pub fn versions_of<Q: Ord + ?Sized>(&self, key: &Q) -> &[DottedValue<V>]
    where
        K: Borrow<Q>,
    {
        self.entries.get(key).map_or(&[], Vec::as_slice)
    }

    /// Remembers `dot` (lineage `birth`) as its writer's latest update of
    /// `key` applied here.
    fn remember_write(&mut self, key: &K, dot: &Dot, birth: u64) {
        let writes = match self.latest_writes.get_mut(key) {
            Some(writes) => writes,
            None => self.latest_writes.entry(key.clone()).or_default(),
        };
        match writes.iter_mut().find(|(d, _)| d.replica == dot.replica) {
            Some(known) if known.0.counter >= dot.counter => {}
            Some(known) => *known = (dot.clone(), birth),
            None => writes.push((dot.clone(), birth)),
        }
    }

    /// Forgets what this copy knew of the writers that `context` has seen
    /// write something this copy did not apply: their latest write may be
    /// elsewhere now (a copy written on, then merged back).
    fn forget_writers_seen_elsewhere(&mut self, context: &CausalContext) {
        if self.latest_writes.is_empty() {
            return;
        }
        let mine = &self.context;
        let saw_more = |writer: &ReplicaId| {
            context.vector().get(writer) > mine.vector().get(writer)
                || context
                    .cloud()
                    .any(|dot| &dot.replica == writer && !mine.contains(dot))
        };
        let mut forgotten: Vec<ReplicaId> = Vec::new();
        for (dot, _) in self.latest_writes.values().flatten() {
            if !forgotten.contains(&dot.replica) && saw_more(&dot.replica) {
                forgotten.push(dot.replica.clone());
            }
        }
        if forgotten.is_empty() {
            return;
        }
        for writes in self.latest_writes.values_mut() {
            writes.retain(|(dot, _)| !forgotten.contains(&dot.replica));
        }
        self.latest_writes.retain(|_, writes| !writes.is_empty());
    }

    /// Retires, in the values of `key` (of every key if `None`), the
    /// incarnations this map's context retired. A value under a dot is the
    /// same on every replica, and must stay so: each replica retires it the
    /// same way once the retirement reaches it, whatever path it took.
    fn retire_values(&mut self, key: Option<&K>) {
        if self.context.retired().is_empty() {
            return;
        }
        let retired = self.context.retired();
        let values: Box<dyn Iterator<Item = &mut Vec<DottedValue<V>>>> = match key {
            Some(key) => Box::new(self.entries.get_mut(key).into_iter()),
            None => Box::new(self.entries.values_mut()),
        };
        for dotted in values.flatten() {
            dotted.retire(retired);
        }
    }

    /// Forgets what this copy knew of writes to keys it no longer holds: a
    /// writer re-creating such a key starts a new lineage anyway.
    fn forget_absent_keys(&mut self) {
        if !self.latest_writes.is_empty() {
            let entries = &self.entries;
            self.latest_writes
                .retain(|key, _| entries.contains_key(key));
        }
    }
}

impl<K: Member, V: ReplicatedData> ReplicatedData for ORMap<K, V> {
    fn merge(&mut self, other: &Self) {
        self.forget_writers_seen_elsewhere(&other.context);
        merge_keyed(
            &mut self.entries,
            &self.context,
            &other.entries,
            &other.context,
        );
        self.context.merge(&other.context);
        self.forget_absent_keys();
        self.retire_values(None);
    }

    fn retire(&mut self, node: &str, below: u64) {
        if self.context.retire(node, below) {
            self.retire_values(None);
        }
    }

    fn mentions(&self, node: &str, below: u64) -> bool {
        kernel::mentions(&self.context, self.entries.values().flatten(), node, below)
    }

    fn unsettled(&self, node: &str, below: u64) -> Vec<Dot> {
        self.entries
            .values()
            .flatten()
            .filter(|dotted| dotted.settled(node, below).is_some())
            .map(|dotted| dotted.dot.clone())
            .collect()
    }

    /// Settles the unsettled values of each key if settling them one by one
    /// reads the same as settling their merge (one of them holds all that
    /// the others hold of those incarnations), and if `elsewhere` names no
    /// value this map does not hold. Then every value that holds something
    /// of those incarnations, here or on any replica, is one of them or
    /// built on some of them (new values start empty, and the dead write no
    /// more), so that one holds all it holds of them.
    fn retire_settled(&mut self, node: &str, below: u64, elsewhere: &[Dot]) {
        self.retire(node, below);
        let mut unsettled = BTreeSet::new();
        let mut settled = Vec::new();
        for (key, values) in &self.entries {
            let changed: Vec<(usize, V)> = values
                .iter()
                .enumerate()
                .filter_map(|(at, dotted)| dotted.settled(node, below).map(|value| (at, value)))
                .collect();
            unsettled.extend(changed.iter().map(|(at, _)| values[*at].dot.clone()));
            if settling_commutes(values, &changed, node, below) {
                settled.extend(changed.into_iter().map(|change| (key.clone(), change)));
            }
        }
        if !elsewhere.iter().all(|dot| unsettled.contains(dot)) {
            return;
        }
        for (key, (at, value)) in settled {
            if let Some(dotted) = self
                .entries
                .get_mut(&key)
                .and_then(|values| values.get_mut(at))
            {
                dotted.value = value;
            }
        }
    }
}

/// Whether the merge of `changed` (the settled forms of some of `values`,
/// by index) equals the settled form of their merge.
fn settling_commutes<V: ReplicatedData>(
    values: &[DottedValue<V>],
    changed: &[(usize, V)],
    node: &str,
    below: u64,
) -> bool {
    let Some(((first_at, first), rest)) = changed.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let mut joined = values[*first_at].value.clone();
    let mut settled_joined = first.clone();
    for (at, settled) in rest {
        joined.merge(&values[*at].value);
        settled_joined.merge(settled);
    }
    joined.retire_settled(node, below, &[]);
    joined == settled_joined
}

impl<K: Member, V: ReplicatedData> OpBased for ORMap<K, V> {
    type Op = ORMapOp<K, V>;

    fn apply(&mut self, op: ORMapOp<K, V>) {
        match op {
            ORMapOp::Update {
                key,
                value,
                observed,
            } => {
                let (dot, birth) = (value.dot.clone(), value.birth);
                // Only a write new to this copy can be its writer's latest: an
                // old operation delivered again must not pass for it.
                let new_here = !self.context.contains(&dot);
                apply_keyed_delta(
                    &mut self.entries,
                    &mut self.context,
                    key.clone(),
                    Some(value),
                    &observed,
                );
                if !self.entries.contains_key(&key) {
                    self.latest_writes.remove(&key);
                } else if new_here {
                    self.remember_write(&key, &dot, birth);
                }
                self.retire_values(Some(&key));
            }
            ORMapOp::Remove { key, observed } => {
                apply_keyed_delta(
                    &mut self.entries,
                    &mut self.context,
                    key.clone(),
                    None,
                    &observed,
                );
                if !self.entries.contains_key(&key) {
                    self.latest_writes.remove(&key);
                }
            }
        }
    }
}

/// Implements [`ReplicatedData`] and [`OpBased`] for a type that wraps an
/// [`ORMap`] in its field `map` (LWWMap, ORMultiMap, PNCounterMap): each
/// method is the map's. `[generics] Type, Op`.
macro_rules! delegate_to_map {
    ([$($generics:tt)*] $wrapper:ty, $op:ty) => {
        impl<$($generics)*> $crate::crdt::ReplicatedData for $wrapper {
            fn merge(&mut self, other: &Self) {
                self.map.merge(&other.map);
            }

            fn retire(&mut self, node: &str, below: u64) {
                self.map.retire(node, below);
            }

            fn mentions(&self, node: &str, below: u64) -> bool {
                self.map.mentions(node, below)
            }

            fn unsettled(&self, node: &str, below: u64) -> Vec<$crate::causal::Dot> {
                self.map.unsettled(node, below)
            }

            fn retire_settled(
                &mut self,
                node: &str,
                below: u64,
                elsewhere: &[$crate::causal::Dot],
            ) {
                self.map.retire_settled(node, below, elsewhere);
            }
        }

        impl<$($generics)*> $crate::crdt::OpBased for $wrapper {
            type Op = $op;

            fn apply(&mut self, op: Self::Op) {
                self.map.apply(op);
            }
        }
    };
}

pub(crate) use delegate_to_map;

/// Law-harness check shared by every map type: each dotted value of `before`
/// survives in `merged` unless `other` observed its dot and superseded it.
#[cfg(test)]
pub(crate) fn keeps_dotted_versions<K: Member, V: ReplicatedData>(
    before: &ORMap<K, V>,
    other: &ORMap<K, V>,
    merged: &ORMap<K, V>,
) -> bool {
    let holds =
        |map: &ORMap<K, V>, key: &K, dot: &Dot| map.versions_of(key).iter().any(|v| v.dot() == dot);
    before.keys().all(|key| {
        before
            .versions_of(key)
            .iter()
            .map(DottedValue::dot)
            .all(|dot| {
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
        fn view(&self) -> String {
            format!(
                "{:?}",
                self.iter()
                    .map(|(k, v)| (*k, v.iter().copied().collect::<Vec<_>>()))
                    .collect::<Vec<_>>()
            )
        }

        type Action = MapAction;
        fn act(&self, replica: &ReplicaId, action: &MapAction) -> Vec<ORMapOp<u8, ORSet<u8>>> {
            vec![match *action {
                MapAction::Add { key, member } => {
                    self.update(replica, key, |set, me| set.apply(set.add(me, member)))
                }
                MapAction::RemoveMember { key, member } => {
                    self.update(replica, key, |set, _| set.apply(set.remove(&member)))
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
        x.apply(x.update(&a, 'k', |c, me| c.apply(c.increment(me, 1))));
        let mut y = x.clone();
        x.apply(x.update(&a, 'k', |c, me| c.apply(c.increment(me, 1))));
        y.apply(y.update(&b, 'k', |c, me| c.apply(c.increment(me, 5))));
        let merged = x.merged(&y);
        assert_eq!(merged.versions_of(&'k').len(), 2);
        assert_eq!(merged.get(&'k').map(|c| c.value()), Some(7));
        let mut next = merged.clone();
        next.apply(next.update(&a, 'k', |c, me| c.apply(c.increment(me, 1))));
        assert_eq!(next.versions_of(&'k').len(), 1, "a later update folds them");
        assert_eq!(next.get(&'k').map(|c| c.value()), Some(8));
    }

    #[test]
    fn an_update_wins_over_a_concurrent_remove_of_the_key() {
        let (a, b) = (laws::replica(0), laws::replica(1));
        let mut x: ORMap<u8, GCounter> = ORMap::new();
        x.apply(x.update(&a, 1, |c, me| c.apply(c.increment(me, 1))));
        let mut y = x.clone();
        x.apply(x.remove(&1));
        assert!(!x.contains_key(&1));
        y.apply(y.update(&b, 1, |c, me| c.apply(c.increment(me, 1))));
        let merged = x.merged(&y);
        assert_eq!(merged.get(&1).map(|c| c.value()), Some(2));
    }

    #[test]
    fn a_removed_key_stays_removed_and_can_be_added_again() {
        let a = laws::replica(0);
        let mut map: ORMap<u8, GCounter> = ORMap::new();
        map.apply(map.update(&a, 1, |c, me| c.apply(c.increment(me, 3))));
        let stale = map.clone();
        map.apply(map.remove(&1));
        assert!(!map.merged(&stale).contains_key(&1));
        map.apply(map.update(&a, 1, |c, me| c.apply(c.increment(me, 1))));
        assert_eq!(map.get(&1).map(|c| c.value()), Some(1), "starts from empty");
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn writers_taking_turns_keep_their_identities() {
        let replicas: Vec<ReplicaId> = (0..3).map(laws::replica).collect();
        let mut states: Vec<ORMap<u8, GCounter>> = vec![ORMap::new(); 3];
        for round in 0..30 {
            let (i, next) = (round % 3, (round + 1) % 3);
            let state = &mut states[i];
            state.apply(state.update(&replicas[i], 0, |c, me| c.apply(c.increment(me, 1))));
            let written = states[i].clone();
            states[next].merge(&written);
        }
        let last = &states[0];
        assert_eq!(last.get(&0).map(|c| c.value()), Some(30));
        let counts = last.get(&0).map(|c| c.counts().len());
        assert_eq!(counts, Some(3), "one count per writer, not one per turn");
        assert!(last.versions_of(&0).iter().all(|v| v.history().len() == 3));
    }

    #[test]
    fn a_restarted_writer_whose_value_was_superseded_takes_one_new_identity() {
        let (a, b) = (laws::replica(0), laws::replica(1));
        let mut x: ORMap<u8, GCounter> = ORMap::new();
        x.apply(x.update(&a, 0, |c, me| c.apply(c.increment(me, 1))));
        let mut y = x.clone();
        y.apply(y.update(&b, 0, |c, me| c.apply(c.increment(me, 1))));
        x.merge(&y);
        // What a copy knows of its own writes is not encoded: after a restart
        // it cannot tell whether its latest write is in the history.
        let mut x: ORMap<u8, GCounter> =
            crate::codec::decode(&crate::codec::encode(&x).unwrap()).unwrap();
        for _ in 0..5 {
            x.apply(x.update(&a, 0, |c, me| c.apply(c.increment(me, 1))));
        }
        assert_eq!(x.get(&0).map(|c| c.value()), Some(7));
        assert_eq!(x.get(&0).map(|c| c.counts().len()), Some(3));
    }

    #[test]
    fn decoding_rejects_a_value_without_its_lineage() {
        let a = laws::replica(0);
        let mut map: ORMap<u8, GCounter> = ORMap::new();
        map.apply(map.update(&a, 0, |c, me| c.apply(c.increment(me, 1))));
        let encode_with = |birth: u64, history: VersionVector| {
            let mut forged = map.clone();
            if let Some(values) = forged.entries.get_mut(&0) {
                values[0].birth = birth;
                values[0].history = history;
            }
            crate::codec::encode(&forged).unwrap()
        };
        let good = map.versions_of(&0)[0].history().clone();
        assert!(crate::codec::decode::<ORMap<u8, GCounter>>(&encode_with(1, good.clone())).is_ok());
        for (birth, history) in [(0, good.clone()), (2, good), (1, VersionVector::new())] {
            let bytes = encode_with(birth, history);
            assert!(crate::codec::decode::<ORMap<u8, GCounter>>(&bytes).is_err());
        }
    }

    type Nested = ORMap<u8, ORMap<u8, GCounter>>;

    fn bump(map: &mut Nested, replica: &ReplicaId) {
        map.apply(map.update(replica, 0, |inner, me| {
            inner.apply(inner.update(me, 2, |c, me| c.apply(c.increment(me, 1))))
        }));
    }

    fn total(map: &Nested) -> u128 {
        map.get(&0)
            .and_then(|inner| inner.get(&2).map(|c| c.value()))
            .unwrap_or(0)
    }

    #[test]
    fn a_nested_value_rebuilt_from_another_writers_copy_does_not_reuse_a_stale_identity() {
        let (t, r, u, v) = (
            laws::replica(0),
            laws::replica(1),
            laws::replica(2),
            laws::replica(3),
        );
        let mut r_map = Nested::new();
        bump(&mut r_map, &r);
        let mut t_map = r_map.clone();
        bump(&mut t_map, &t);
        bump(&mut r_map, &r);
        let mut u_map = r_map.clone();
        u_map.apply(u_map.update(&u, 0, |inner, _| inner.apply(inner.remove(&2))));
        let mut v_map = r_map.merged(&t_map);
        bump(&mut v_map, &v);
        r_map.merge(&t_map);
        r_map.merge(&u_map);
        bump(&mut r_map, &r);
        // r +1, t +1, r +1, v +1, r +1: v's value keeps r's second count,
        // r's last one is new.
        assert_eq!(total(&r_map.merged(&v_map)), 5);
    }

    #[test]
    fn a_writer_that_wrote_on_a_copy_and_merged_it_back_does_not_reuse_its_identity() {
        let (a, b, d) = (laws::replica(0), laws::replica(1), laws::replica(2));
        let increment = |map: &mut ORMap<u8, GCounter>, replica: &ReplicaId| {
            map.apply(map.update(replica, 0, |c, me| c.apply(c.increment(me, 1))))
        };
        let mut original = ORMap::new();
        increment(&mut original, &a);
        let mut b_map = original.clone();
        increment(&mut b_map, &b);
        let mut fork = original.clone();
        increment(&mut fork, &a);
        let mut d_map = fork.clone();
        increment(&mut d_map, &d);
        let mut e_map = fork.clone();
        e_map.apply(e_map.remove(&0));
        // b's value keeps the key present here while e's remove drops the
        // fork's write.
        original.merge(&b_map);
        original.merge(&fork);
        original.merge(&e_map);
        increment(&mut original, &a);
        let value = original.merged(&d_map).get(&0).map(|c| c.value());
        assert_eq!(value, Some(5), "a 1, b 1, a 1 (on the fork), d 1, a 1");
    }

    #[test]
    fn an_old_write_delivered_again_does_not_pass_for_its_writers_latest() {
        let (a, b, c) = (laws::replica(0), laws::replica(1), laws::replica(2));
        let add = |map: &ORMap<u8, ORSet<u8>>, replica: &ReplicaId, member: u8| {
            map.update(replica, 0, |set, me| set.apply(set.add(me, member)))
        };
        let mut a_map = ORMap::new();
        let first = add(&a_map, &a, 1);
        a_map.apply(first.clone());
        let mut b_map = a_map.clone();
        a_map.apply(add(&a_map, &a, 2));
        let mut c_map = a_map.clone();
        a_map.apply(a_map.remove(&0));
        c_map.apply(c_map.update(&c, 0, |set, _| set.apply(set.remove(&2))));
        b_map.apply(add(&b_map, &b, 3));
        a_map.merge(&b_map);
        a_map.apply(first);
        // a's new 2 must not take the identity of the 2 that c removed.
        a_map.apply(add(&a_map, &a, 2));
        let merged = a_map.merged(&b_map).merged(&c_map);
        let members = merged
            .get(&0)
            .map(|set| set.iter().copied().collect::<Vec<_>>());
        assert_eq!(members, Some(vec![1, 2, 3]));
    }
}
