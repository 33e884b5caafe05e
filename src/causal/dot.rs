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
