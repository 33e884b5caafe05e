use std::fmt;

use serde::{Deserialize, Serialize};

use super::ReplicaId;

/// One event of one replica: the `counter`-th event minted by `replica`.
///
/// Dots order by replica, then counter. The first dot of a replica has counter 1.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The replica that minted the dot.
    pub replica: ReplicaId,
    /// Its position in that replica's sequence, starting at 1.
    pub counter: u64,
}

impl Dot {
    /// The dot `(replica, counter)`.
    pub fn new(replica: ReplicaId, counter: u64) -> Self {
        Self { replica, counter }
    }
}

impl fmt::Debug for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.replica, self.counter)
    }
}

/// A contiguous run of one replica's dots, `first..=last`: what a version vector
/// lacks before it can take a dot in order (see [`VersionVector::gap_before`]).
///
/// [`VersionVector::gap_before`]: super::VersionVector::gap_before
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DotRange {
    /// The replica whose dots are missing.
    pub replica: ReplicaId,
    /// The first missing counter.
    pub first: u64,
    /// The last missing counter (inclusive).
    pub last: u64,
}

impl DotRange {
    /// Whether `dot` lies in the range.
    pub fn contains(&self, dot: &Dot) -> bool {
        dot.replica == self.replica && (self.first..=self.last).contains(&dot.counter)
    }

    /// How many dots the range spans.
    pub fn len(&self) -> u64 {
        self.last.saturating_sub(self.first).saturating_add(1)
    }

    /// Always false: a range holds at least one dot. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The dots of the range, in order.
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        (self.first..=self.last).map(|counter| Dot::new(self.replica.clone(), counter))
    }
}
