use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Dot, ReplicaId};

/// How two version vectors (and so two histories) relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CausalOrder {
    /// `self` has seen strictly less: the other history extends it.
    Before,
    /// `self` has seen strictly more.
    After,
    /// Both have seen exactly the same events.
    Equal,
    /// Each has seen something the other has not.
    Concurrent,
}

/// For each replica, how many of its events (dots `1..=n`) have been seen.
///
/// A version vector is a join-semilattice: [`merge`](Self::merge) takes the
/// entry-wise maximum, and [`compare`](Self::compare) is the matching partial
/// order. Entries are kept sorted by replica with no zero entries, so equal
/// histories have equal (and equally encoded) vectors. Counters saturate at
/// `u64::MAX` instead of overflowing.
///
/// ```
/// use ractor_replicated::{CausalOrder, ReplicaId, VersionVector};
///
/// let (a, b) = (ReplicaId::new("a", 1), ReplicaId::new("b", 1));
/// let mut left = VersionVector::new();
/// left.increment(&a);
/// let mut right = left.clone();
/// right.increment(&b);
/// assert_eq!(left.compare(&right), CausalOrder::Before);
/// left.increment(&a);
/// assert_eq!(left.compare(&right), CausalOrder::Concurrent);
/// left.merge(&right);
/// assert_eq!(left.compare(&right), CausalOrder::After);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector {
    entries: Vec<(ReplicaId, u64)>,
}

impl VersionVector {
    /// The empty vector: nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    fn position(&self, replica: &ReplicaId) -> Result<usize, usize> {
        self.entries.binary_search_by(|(r, _)| r.cmp(replica))
    }

    /// How many events of `replica` have been seen (0 if none).
    pub fn get(&self, replica: &ReplicaId) -> u64 {
        match self.position(replica) {
            Ok(at) => self.entries[at].1,
            Err(_) => 0,
        }
    }

    /// Whether the event `dot` has been seen.
    pub fn contains(&self, dot: &Dot) -> bool {
        dot.counter <= self.get(&dot.replica)
    }

    /// Records the next event of `replica` and returns its dot.
    pub fn increment(&mut self, replica: &ReplicaId) -> Dot {
        let dot = Dot::new(replica.clone(), self.get(replica).saturating_add(1));
        self.observe(&dot);
        dot
    }

    /// Raises the entry of `dot.replica` to at least `dot.counter`.
    pub fn observe(&mut self, dot: &Dot) {
        if dot.counter == 0 {
            return;
        }
        match self.position(&dot.replica) {
            Ok(at) => self.entries[at].1 = self.entries[at].1.max(dot.counter),
            Err(at) => self.entries.insert(at, (dot.replica.clone(), dot.counter)),
        }
    }

    /// Entry-wise maximum: afterwards `self` has seen everything either side saw.
    pub fn merge(&mut self, other: &VersionVector) {
        if other.entries.is_empty() {
            return;
        }
        let mut merged = Vec::with_capacity(self.entries.len().max(other.entries.len()));
        let mut mine = std::mem::take(&mut self.entries).into_iter().peekable();
        let mut theirs = other.entries.iter().peekable();
        loop {
            let step = match (mine.peek(), theirs.peek()) {
                (Some((a, _)), Some((b, _))) => a.cmp(b),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => break,
            };
            match step {
                Ordering::Less => merged.extend(mine.next()),
                Ordering::Greater => merged.extend(theirs.next().cloned()),
                Ordering::Equal => {
                    if let (Some((replica, a)), Some((_, b))) = (mine.next(), theirs.next()) {
                        merged.push((replica, a.max(*b)));
                    }
                }
            }
        }
        self.entries = merged;
    }

    /// Where `self` stands relative to `other` in causal order.
    pub fn compare(&self, other: &VersionVector) -> CausalOrder {
        let (mut self_ahead, mut other_ahead) = (false, false);
        let mut mine = self.entries.iter().peekable();
        let mut theirs = other.entries.iter().peekable();
        loop {
            match (mine.peek(), theirs.peek()) {
                (Some((a, x)), Some((b, y))) => match a.cmp(b) {
                    Ordering::Less => {
                        self_ahead = true;
                        mine.next();
                    }
                    Ordering::Greater => {
                        other_ahead = true;
                        theirs.next();
                    }
                    Ordering::Equal => {
                        self_ahead |= x > y;
                        other_ahead |= y > x;
                        mine.next();
                        theirs.next();
                    }
                },
                (Some(_), None) => {
                    self_ahead = true;
                    break;
                }
                (None, Some(_)) => {
                    other_ahead = true;
                    break;
                }
                (None, None) => break,
            }
            if self_ahead && other_ahead {
                break;
            }
        }
        match (self_ahead, other_ahead) {
            (false, false) => CausalOrder::Equal,
            (true, false) => CausalOrder::After,
            (false, true) => CausalOrder::Before,
            (true, true) => CausalOrder::Concurrent,
        }
    }

    /// Whether `self` has seen everything `other` has (`After` or `Equal`).
    pub fn descends(&self, other: &VersionVector) -> bool {
        matches!(self.compare(other), CausalOrder::After | CausalOrder::Equal)
    }

    /// Keeps only the entries of the replicas `keep` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&ReplicaId) -> bool) {
        self.entries.retain(|(replica, _)| keep(replica));
    }

    /// The entries `(replica, events seen)`, in replica order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&ReplicaId, u64)> + '_ {
        self.entries.iter().map(|(replica, n)| (replica, *n))
    }

    /// How many replicas have an entry.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(ReplicaId, u64)> for VersionVector {
    /// Builds a vector from entries in any order; duplicates keep their maximum
    /// and zero entries are dropped, so the result is canonical.
    fn from_iter<I: IntoIterator<Item = (ReplicaId, u64)>>(entries: I) -> Self {
        let mut entries: Vec<_> = entries.into_iter().filter(|(_, n)| *n > 0).collect();
        entries.sort_unstable_by(|(a, x), (b, y)| a.cmp(b).then(y.cmp(x)));
        entries.dedup_by(|later, kept| later.0 == kept.0);
        Self { entries }
    }
}

/// Encoded as a map from replica to count: one header byte less per entry than
/// a list of pairs.
impl Serialize for VersionVector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.entries.iter().map(|(replica, n)| (replica, n)))
    }
}

impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<ReplicaId, u64>::deserialize(deserializer).map(Self::from_iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{quickcheck, Arbitrary, Gen};

    fn replica(i: u8) -> ReplicaId {
        ReplicaId::new(format!("r{}", i % 4), 1)
    }

    impl Arbitrary for VersionVector {
        fn arbitrary(g: &mut Gen) -> Self {
            Vec::<(u8, u8)>::arbitrary(g)
                .into_iter()
                .map(|(r, n)| (replica(r), u64::from(n % 6)))
                .collect()
        }
    }

    fn at_most(a: &VersionVector, b: &VersionVector) -> bool {
        matches!(a.compare(b), CausalOrder::Before | CausalOrder::Equal)
    }

    #[test]
    fn compare_is_a_partial_order() {
        fn property(a: VersionVector, b: VersionVector, c: VersionVector) -> bool {
            let reflexive = a.compare(&a) == CausalOrder::Equal;
            let antisymmetric = !(at_most(&a, &b) && at_most(&b, &a)) || a == b;
            let transitive = !(at_most(&a, &b) && at_most(&b, &c)) || at_most(&a, &c);
            reflexive && antisymmetric && transitive
        }
        quickcheck(property as fn(VersionVector, VersionVector, VersionVector) -> bool);
    }

    #[test]
    fn compare_is_consistent_with_merge() {
        fn property(a: VersionVector, b: VersionVector) -> bool {
            let joined = {
                let mut j = a.clone();
                j.merge(&b);
                j
            };
            let flipped = match b.compare(&a) {
                CausalOrder::Before => CausalOrder::After,
                CausalOrder::After => CausalOrder::Before,
                other => other,
            };
            at_most(&a, &joined)
                && at_most(&b, &joined)
                && (at_most(&a, &b) == (joined == b))
                && a.compare(&b) == flipped
                && (a.compare(&b) == CausalOrder::Concurrent) == (joined != a && joined != b)
        }
        quickcheck(property as fn(VersionVector, VersionVector) -> bool);
    }

    #[test]
    fn decoding_restores_the_canonical_form() {
        let (a, b) = (replica(0), replica(1));
        let messy: BTreeMap<ReplicaId, u64> =
            [(b.clone(), 5u64), (replica(2), 0), (a.clone(), 1)].into();
        let bytes = crate::codec::encode(&messy).unwrap();
        let vv: VersionVector = crate::codec::decode(&bytes).unwrap();
        assert_eq!(
            vv.iter().collect::<Vec<_>>(),
            [(&a, 1), (&b, 5)],
            "zero entries dropped"
        );
        let again = crate::codec::encode(&vv).unwrap();
        assert_eq!(crate::codec::decode::<VersionVector>(&again).unwrap(), vv);
    }
}
