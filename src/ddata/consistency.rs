//! How many replicas must take part in a write or a read before it returns.

use std::time::Duration;

/// How many replicas, this one included, must hold a write before
/// [`update`](super::DistributedData::update) or
/// [`delete`](super::DistributedData::delete) returns.
///
/// Whatever the level, the write is applied locally first and stands: a write
/// that times out is not rolled back and still spreads by gossip. The error only
/// says that the level was not confirmed in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteConsistency {
    /// Only the local replica; returns at once.
    Local,
    /// `n` replicas, this one included.
    To {
        /// Replicas required, this one included.
        n: usize,
        /// How long to wait for acknowledgements.
        timeout: Duration,
    },
    /// A majority of the known members (`members / 2 + 1`), but at least
    /// `min_cap` if the cluster has that many members.
    Majority {
        /// How long to wait for acknowledgements.
        timeout: Duration,
        /// A floor for small clusters; 0 for none.
        min_cap: usize,
    },
    /// Every known member, reachable or not.
    All {
        /// How long to wait for acknowledgements.
        timeout: Duration,
    },
}

/// How many replicas, this one included, must answer a
/// [`get`](super::DistributedData::get). The answers are merged, and the merge
/// repairs the local replica and the replicas that answered with less.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Only the local replica; answers at once.
    Local,
    /// `n` replicas, this one included.
    From {
        /// Replicas required, this one included.
        n: usize,
        /// How long to wait for answers.
        timeout: Duration,
    },
    /// A majority of the known members, but at least `min_cap` if the cluster
    /// has that many members.
    Majority {
        /// How long to wait for answers.
        timeout: Duration,
        /// A floor for small clusters; 0 for none.
        min_cap: usize,
    },
    /// Every known member, reachable or not.
    All {
        /// How long to wait for answers.
        timeout: Duration,
    },
}

impl WriteConsistency {
    /// A majority with no floor.
    pub fn majority(timeout: Duration) -> Self {
        Self::Majority {
            timeout,
            min_cap: 0,
        }
    }

    /// How many replicas must hold the write in a cluster of `members` (this one
    /// included), and how long to wait.
    pub fn required(&self, members: usize) -> (usize, Duration) {
        match *self {
            Self::Local => (1, Duration::ZERO),
            Self::To { n, timeout } => (n.max(1), timeout),
            Self::Majority { timeout, min_cap } => (majority(members, min_cap), timeout),
            Self::All { timeout } => (members, timeout),
        }
    }
}

impl ReadConsistency {
    /// A majority with no floor.
    pub fn majority(timeout: Duration) -> Self {
        Self::Majority {
            timeout,
            min_cap: 0,
        }
    }

    /// How many replicas must answer in a cluster of `members` (this one
    /// included), and how long to wait.
    pub fn required(&self, members: usize) -> (usize, Duration) {
        match *self {
            Self::Local => (1, Duration::ZERO),
            Self::From { n, timeout } => (n.max(1), timeout),
            Self::Majority { timeout, min_cap } => (majority(members, min_cap), timeout),
            Self::All { timeout } => (members, timeout),
        }
    }
}

fn majority(members: usize, min_cap: usize) -> usize {
    (members / 2 + 1).max(min_cap.min(members))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_overlaps_every_other_majority() {
        for members in 1..20 {
            let (needed, _) = WriteConsistency::majority(Duration::ZERO).required(members);
            assert!(2 * needed > members, "{members} members, {needed} needed");
        }
    }

    #[test]
    fn min_cap_raises_a_majority_but_never_above_the_cluster() {
        let level = WriteConsistency::Majority {
            timeout: Duration::ZERO,
            min_cap: 5,
        };
        assert_eq!(level.required(3).0, 3);
        assert_eq!(level.required(7).0, 5);
        assert_eq!(level.required(20).0, 11);
    }
}
