use std::borrow::Borrow;
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::kernel::{self, apply_keyed_delta, merge_keyed};
use super::{Member, OpBased, ReplicatedData};
use crate::causal::{CausalContext, Dot, ReplicaId, Retired, VersionVector};

/// An add-wins observed-remove set, in its optimised form (Bieniusa et al. 2012).
///
/// Every add tags the element with a fresh [`Dot`]; a remove drops the dots it
/// observed. One [`CausalContext`] records every dot ever observed, so "in the
/// context but not in the set" means removed: removes leave no per-element
/// tombstone, and the state's size is O(elements + replicas) whatever the number
/// of adds and removes. An add concurrent with a remove of the same element wins,
/// because the remove cannot have observed the add's new dot.
///
/// Operations are delta states, so they may arrive duplicated and in any order:
/// a remove that arrives before the add it observed records the add's dot in the
/// context, and the add is dropped when it arrives (the remove is deferred
/// without any bookkeeping of its own).
///
/// ```
/// use ractor_replicated::{OpBased, ORSet, ReplicaId, ReplicatedData};
///
/// let (a, b) = (ReplicaId::new("a", 1), ReplicaId::new("b", 1));
/// let mut left = ORSet::new();
/// left.apply(left.add(&a, "milk".to_string()));
/// let mut right = left.clone();
/// // Concurrently: a removes milk, b adds it again.
/// left.apply(left.remove("milk"));
/// right.apply(right.add(&b, "milk".to_string()));
/// left.merge(&right);
/// assert!(left.contains("milk"), "add wins over a concurrent remove");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ORSet<T: Ord> {
    context: CausalContext,
    entries: BTreeMap<T, Vec<Dot>>,
}

/// An operation on an [`ORSet`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ORSetOp<T> {
    /// Adds `member` under a new dot, replacing the dots of it the adder had seen.
    Add {
        /// The new dot.
        dot: Dot,
        /// The element.
        member: T,
        /// Dots of `member` the adder had observed; they are superseded.
        observed: Vec<Dot>,
    },
    /// Removes each listed element's observed dots.
    Remove {
        /// Elements with the dots the remover had observed of them.
        members: Vec<(T, Vec<Dot>)>,
    },
}

impl<T: Ord> Default for ORSet<T> {
    fn default() -> Self {
        Self {
            context: CausalContext::new(),
            entries: BTreeMap::new(),
        }
    }
}

impl<T: Member> ORSet<T> {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operation that adds `member` on behalf of `replica`.
    pub fn add(&self, replica: &ReplicaId, member: T) -> ORSetOp<T> {
        let observed = self.entries.get(&member).cloned().unwrap_or_default();
        ORSetOp::Add {
            dot: self.context.next_dot(replica),
            member,
            observed,
        }
    }

    /// The operation that removes `member` as seen here. Removing an absent
    /// element is a no-op operation.
    pub fn remove<Q: Ord + ?Sized>(&self, member: &Q) -> ORSetOp<T>
    where
        T: Borrow<Q>,
    {
        let members = self
            .entries
            .get_key_value(member)
            .map(|(m, dots)| (m.clone(), dots.clone()))
            .into_iter()
            .collect();
        ORSetOp::Remove { members }
    }

    /// The operation that removes every element seen here. Elements added
    /// concurrently elsewhere survive it (add wins).
    pub fn clear(&self) -> ORSetOp<T> {
        ORSetOp::Remove {
            members: self
                .entries
                .iter()
                .map(|(m, dots)| (m.clone(), dots.clone()))
                .collect(),
        }
    }

    /// Whether `member` is in the set.
    pub fn contains<Q: Ord + ?Sized>(&self, member: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.entries.contains_key(member)
    }

    /// The elements, in order (from either end).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator + '_ {
        self.entries.keys()
    }

    /// How many elements the set holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Everything this set has observed.
    pub fn context(&self) -> &CausalContext {
        &self.context
    }

    /// The dots currently supporting `member`.
    pub fn dots_of<Q: Ord + ?Sized>(&self, member: &Q) -> &[Dot]
    where
        T: Borrow<Q>,
    {
        self.entries.get(member).map_or(&[], Vec::as_slice)
    }
}

impl<T: Member> ReplicatedData for ORSet<T> {
    fn merge(&mut self, other: &Self) {
        merge_keyed(
            &mut self.entries,
            &self.context,
            &other.entries,
            &other.context,
        );
        self.context.merge(&other.context);
    }

    fn retire(&mut self, node: &str, below: u64) {
        self.context.retire(node, below);
    }

    fn mentions(&self, node: &str, below: u64) -> bool {
        kernel::mentions(&self.context, self.entries.values().flatten(), node, below)
    }
}

impl<T: Member> OpBased for ORSet<T> {
    type Op = ORSetOp<T>;

    fn apply(&mut self, op: ORSetOp<T>) {
        match op {
            ORSetOp::Add {
                dot,
                member,
                observed,
            } => apply_keyed_delta(
                &mut self.entries,
                &mut self.context,
                member,
                Some(dot),
                &observed,
            ),
            ORSetOp::Remove { members } => {
                for (member, observed) in members {
                    apply_keyed_delta(
                        &mut self.entries,
                        &mut self.context,
                        member,
                        None,
                        &observed,
                    );
                }
            }
        }
    }
}

/// The encoded form: replica ids once in a table, dots as (table index, counter).
/// This keeps a set of many elements from repeating node names per element.
#[derive(Serialize)]
struct WireRef<'a, T> {
    replicas: Vec<&'a ReplicaId>,
    vector: Vec<(u32, u64)>,
    cloud: Vec<(u32, u64)>,
    entries: Vec<(&'a T, Vec<(u32, u64)>)>,
    /// Left out while empty: a set without retired incarnations encodes as
    /// before retirement existed.
    #[serde(skip_serializing_if = "Retired::is_empty")]
    retired: &'a Retired,
}

#[derive(Deserialize)]
struct Wire<T> {
    replicas: Vec<ReplicaId>,
    vector: Vec<(u32, u64)>,
    cloud: Vec<(u32, u64)>,
    entries: Vec<(T, Vec<(u32, u64)>)>,
    #[serde(default)]
    retired: Retired,
}

impl<T: Member> Serialize for ORSet<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut replicas: Vec<&ReplicaId> = self
            .context
            .vector()
            .iter()
            .map(|(r, _)| r)
            .chain(self.context.cloud().map(|d| &d.replica))
            .collect();
        // Dots of retired incarnations stay on their elements, outside the
        // context's entries.
        let retired = self.context.retired();
        if !retired.is_empty() {
            replicas.extend(
                self.entries
                    .values()
                    .flatten()
                    .map(|dot| &dot.replica)
                    .filter(|replica| retired.covers(replica)),
            );
        }
        replicas.sort_unstable();
        replicas.dedup();
        let index = |replica: &ReplicaId| -> Result<u32, S::Error> {
            replicas
                .binary_search(&replica)
                .ok()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| serde::ser::Error::custom("dot outside the causal context"))
        };
        let compact = |dot: &Dot| index(&dot.replica).map(|i| (i, dot.counter));
        let vector = self
            .context
            .vector()
            .iter()
            .map(|(r, n)| index(r).map(|i| (i, n)))
            .collect::<Result<_, _>>()?;
        let cloud = self
            .context
            .cloud()
            .map(compact)
            .collect::<Result<_, _>>()?;
        let entries = self
            .entries
            .iter()
            .map(|(member, dots)| Ok((member, dots.iter().map(compact).collect::<Result<_, _>>()?)))
            .collect::<Result<_, S::Error>>()?;
        WireRef {
            replicas,
            vector,
            cloud,
            entries,
            retired,
        }
        .serialize(serializer)
    }
}

impl<'de, T: Member> Deserialize<'de> for ORSet<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::<T>::deserialize(deserializer)?;
        ORSet::try_from(wire).map_err(serde::de::Error::custom)
    }
}

impl<T: Member> TryFrom<Wire<T>> for ORSet<T> {
    type Error = String;

    /// Checks the decoded parts on their compact dots (replica index and
    /// counter) and builds the set in one pass: a large set decodes in time
    /// linear in its elements, apart from one sort of integer pairs.
    fn try_from(wire: Wire<T>) -> Result<Self, String> {
        let replicas = wire.replicas;
        // The encoder writes the table sorted and without repeats; relying on
        // it makes index order dot order, and an index one replica.
        if replicas.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err("the replica table is out of order or repeats a replica".into());
        }
        let index = |i: u32| -> Result<usize, String> {
            usize::try_from(i)
                .ok()
                .filter(|&i| i < replicas.len())
                .ok_or_else(|| format!("replica index {i} outside a table of {}", replicas.len()))
        };
        let dot = |(i, counter): (u32, u64)| -> Result<Dot, String> {
            let replica = &replicas[index(i)?];
            if counter == 0 {
                return Err(format!("dot counter 0 for replica {replica}"));
            }
            Ok(Dot::new(replica.clone(), counter))
        };
        let vector: VersionVector = wire
            .vector
            .iter()
            .map(|&entry| dot(entry).map(|d| (d.replica, d.counter)))
            .collect::<Result<_, _>>()?;
        let cloud = wire
            .cloud
            .iter()
            .map(|&entry| dot(entry))
            .collect::<Result<Vec<_>, _>>()?;
        let mut context = CausalContext::from_parts(vector, cloud);
        for (node, below) in wire.retired.iter() {
            context.retire(node, below);
        }
        let mut cloud = wire.cloud;
        cloud.sort_unstable();
        let seen: Vec<u64> = replicas
            .iter()
            .map(|replica| context.vector().get(replica))
            .collect();
        let retired: Vec<bool> = replicas
            .iter()
            .map(|replica| context.retired().covers(replica))
            .collect();
        let observed = |(i, counter): (u32, u64)| {
            counter <= seen[i as usize]
                || cloud.binary_search(&(i, counter)).is_ok()
                || retired[i as usize]
        };
        let mut all_dots = Vec::with_capacity(wire.entries.len());
        let mut entries: Vec<(T, Vec<Dot>)> = Vec::with_capacity(wire.entries.len());
        for (member, mut compact_dots) in wire.entries {
            if entries.last().is_some_and(|(last, _)| *last >= member) {
                return Err("elements out of order, or an element twice".into());
            }
            compact_dots.sort_unstable();
            let mut dots = Vec::with_capacity(compact_dots.len());
            for compact in compact_dots {
                let full = dot(compact)?;
                if !observed(compact) {
                    return Err(format!("dot {full:?} is outside the causal context"));
                }
                all_dots.push(compact);
                dots.push(full);
            }
            if !dots.is_empty() {
                entries.push((member, dots));
            }
        }
        all_dots.sort_unstable();
        if let Some(pair) = all_dots.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(format!("dot {:?} tags two entries", dot(pair[0])?));
        }
        Ok(ORSet {
            context,
            entries: entries.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests;
