use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Dot, ReplicaId, Retired, VersionVector};

/// Everything a replica has observed: a version vector for the contiguous prefix
/// of each replica's dots, plus the few dots seen out of order (the "dot cloud").
///
/// This is the causal context of the optimised OR-Set (Bieniusa et al. 2012) and
/// of delta-state CRDTs (Almeida et al. 2018). A dot in the context but absent
/// from a CRDT's entries means "added, then removed": that is how removes leave no
/// per-element tombstone. The cloud only holds dots whose predecessors have not
/// arrived yet; it folds into the vector as soon as the gap closes, so with state
/// merges it is empty and with operations it holds only what is in flight.
///
/// Retired incarnations ([`Retired`]) count as fully observed: their entries
/// and cloud dots are dropped, and each of their dots is contained.
///
/// The representation is canonical: equal sets of observed dots give equal values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "ContextParts")]
pub struct CausalContext {
    vector: VersionVector,
    cloud: BTreeSet<Dot>,
    /// Left out of the encoding while empty, so contexts without retired
    /// incarnations encode as they did before retirement existed.
    #[serde(default, skip_serializing_if = "Retired::is_empty")]
    retired: Retired,
}

impl CausalContext {
    /// The empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `dot` has been observed.
    pub fn contains(&self, dot: &Dot) -> bool {
        self.vector.contains(dot)
            || (!self.cloud.is_empty() && self.cloud.contains(dot))
            || self.retired.covers(&dot.replica)
    }

    /// The dot a new event of `replica` gets: one past everything observed of it.
    pub fn next_dot(&self, replica: &ReplicaId) -> Dot {
        let in_cloud = self
            .cloud
            .range(Dot::new(replica.clone(), 0)..)
            .take_while(|dot| &dot.replica == replica)
            .map(|dot| dot.counter)
            .last()
            .unwrap_or(0);
        let counter = self.vector.get(replica).max(in_cloud).saturating_add(1);
        Dot::new(replica.clone(), counter)
    }

    /// Records `dot` as observed.
    pub fn insert(&mut self, dot: Dot) {
        if self.vector.contains(&dot) || self.retired.covers(&dot.replica) {
            return;
        }
        if dot.counter == self.vector.get(&dot.replica) + 1 {
            let replica = dot.replica.clone();
            self.vector.observe(&dot);
            self.absorb_cloud_of(&replica);
        } else {
            self.cloud.insert(dot);
        }
    }

    /// Adds everything `other` observed.
    pub fn merge(&mut self, other: &CausalContext) {
        self.vector.merge(&other.vector);
        self.retired.merge(&other.retired);
        if !self.cloud.is_empty() || !other.cloud.is_empty() {
            self.cloud.extend(other.cloud.iter().cloned());
            self.compact();
        }
        if !self.retired.is_empty() {
            self.drop_retired();
        }
    }

    /// Retires the incarnations of `node` below `below` (see [`Retired`]):
    /// every dot of theirs counts as observed from now on. Says whether
    /// that raised the context's bound for `node`.
    pub fn retire(&mut self, node: &str, below: u64) -> bool {
        let raised = self.retired.retire(node, below);
        if raised {
            self.drop_retired();
        }
        raised
    }

    /// The retired incarnations.
    pub fn retired(&self) -> &Retired {
        &self.retired
    }

    /// Whether the context observed a dot of an incarnation of `node` below
    /// `below`, or retired some of `node`'s incarnations.
    pub fn mentions(&self, node: &str, below: u64) -> bool {
        let dead = |replica: &ReplicaId| replica.is_earlier_incarnation_of(node, below);
        self.retired.below(node) > 0
            || self.vector.iter().any(|(replica, _)| dead(replica))
            || self.cloud.iter().any(|dot| dead(&dot.replica))
    }

    /// Drops the entries and cloud dots of retired incarnations.
    fn drop_retired(&mut self) {
        let retired = &self.retired;
        self.vector.retain(|replica| !retired.covers(replica));
        self.cloud.retain(|dot| !retired.covers(&dot.replica));
    }

    /// The contiguous part: for each replica, how many of its first dots are observed.
    pub fn vector(&self) -> &VersionVector {
        &self.vector
    }

    /// Dots observed beyond a gap, in order.
    pub fn cloud(&self) -> impl ExactSizeIterator<Item = &Dot> + '_ {
        self.cloud.iter()
    }

    /// Builds a context from parts, restoring the canonical form.
    pub fn from_parts(vector: VersionVector, cloud: impl IntoIterator<Item = Dot>) -> Self {
        let mut context = Self {
            vector,
            cloud: cloud.into_iter().collect(),
            retired: Retired::new(),
        };
        context.compact();
        context
    }

    /// Moves cloud dots that became contiguous into the vector and drops cloud
    /// dots the vector already covers.
    fn compact(&mut self) {
        let replicas: Vec<ReplicaId> = {
            let mut replicas: Vec<_> = self.cloud.iter().map(|d| d.replica.clone()).collect();
            replicas.dedup();
            replicas
        };
        for replica in replicas {
            self.absorb_cloud_of(&replica);
        }
    }

    fn absorb_cloud_of(&mut self, replica: &ReplicaId) {
        loop {
            let seen = self.vector.get(replica);
            let Some(first) = self
                .cloud
                .range(Dot::new(replica.clone(), 0)..)
                .next()
                .filter(|dot| &dot.replica == replica)
                .cloned()
            else {
                return;
            };
            if first.counter <= seen {
                self.cloud.remove(&first);
            } else if first.counter == seen + 1 {
                self.cloud.remove(&first);
                self.vector.observe(&first);
            } else {
                return;
            }
        }
    }
}

/// The encoded shape of a context; decoding goes through [`CausalContext::from_parts`]
/// so that a peer cannot hand us a non-canonical context.
#[derive(Deserialize)]
struct ContextParts {
    vector: VersionVector,
    cloud: Vec<Dot>,
    #[serde(default)]
    retired: Retired,
}

impl From<ContextParts> for CausalContext {
    fn from(parts: ContextParts) -> Self {
        let mut context = Self::from_parts(parts.vector, parts.cloud);
        context.retired = parts.retired;
        context.drop_retired();
        context
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    fn dot(replica: u8, counter: u8) -> Dot {
        Dot::new(
            ReplicaId::new(format!("r{}", replica % 3), 1),
            1 + u64::from(counter % 12),
        )
    }

    #[test]
    fn any_insertion_order_gives_the_same_canonical_context() {
        fn property(dots: Vec<(u8, u8)>) -> bool {
            let dots: Vec<Dot> = dots.into_iter().map(|(r, c)| dot(r, c)).collect();
            let mut forward = CausalContext::new();
            dots.iter().cloned().for_each(|d| forward.insert(d));
            let mut backward = CausalContext::new();
            dots.iter().rev().cloned().for_each(|d| backward.insert(d));
            let mut halves = CausalContext::new();
            let (left, right) = dots.split_at(dots.len() / 2);
            let mut other = CausalContext::new();
            left.iter().cloned().for_each(|d| halves.insert(d));
            right.iter().cloned().for_each(|d| other.insert(d));
            halves.merge(&other);
            let cloud_is_beyond_gaps = forward
                .cloud()
                .all(|d| d.counter > forward.vector().get(&d.replica) + 1);
            forward == backward
                && forward == halves
                && dots.iter().all(|d| forward.contains(d))
                && cloud_is_beyond_gaps
        }
        quickcheck(property as fn(Vec<(u8, u8)>) -> bool);
    }

    #[test]
    fn the_cloud_folds_into_the_vector_when_the_gap_closes() {
        // dot(r, c) has counter c + 1.
        let mut context = CausalContext::new();
        context.insert(dot(0, 2));
        context.insert(dot(0, 0));
        assert_eq!(context.cloud().len(), 1, "3 waits for 2");
        assert_eq!(context.next_dot(&dot(0, 0).replica).counter, 4);
        context.insert(dot(0, 1));
        assert_eq!(context.cloud().len(), 0);
        assert_eq!(context.vector().get(&dot(0, 0).replica), 3);
    }
}
