use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::{OpBased, Payload, ReplicatedData};
use crate::causal::ReplicaId;

/// Where a [`LWWRegister`] gets the timestamp of a new write.
///
/// The register keeps the write with the highest timestamp, then the highest
/// replica id. A clock must return a timestamp strictly above `current` (the
/// register's timestamp) for a write to win over it; [`ReverseClock`] returns
/// timestamps below it, which turns the register into first-write-wins.
/// Closures `Fn(Option<i64>) -> i64` are clocks too.
pub trait Clock {
    /// The timestamp for a write to a register whose current timestamp is `current`.
    fn next_timestamp(&self, current: Option<i64>) -> i64;
}

impl<F: Fn(Option<i64>) -> i64> Clock for F {
    fn next_timestamp(&self, current: Option<i64>) -> i64 {
        self(current)
    }
}

/// The default clock: `max(wall-clock milliseconds, current + 1)`, so a replica's
/// own later write always wins even if the wall clock stepped back.
#[derive(Clone, Copy, Debug, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn next_timestamp(&self, current: Option<i64>) -> i64 {
        let now = crate::wall_clock::signed_millis();
        current.map_or(now, |t| now.max(t.saturating_add(1)))
    }
}

/// First-write-wins: `min(-wall-clock milliseconds, current - 1)`, so an earlier
/// write has the higher timestamp.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReverseClock;

impl Clock for ReverseClock {
    fn next_timestamp(&self, current: Option<i64>) -> i64 {
        let now = -crate::wall_clock::signed_millis();
        current.map_or(now, |t| now.min(t.saturating_sub(1)))
    }
}

/// A value with the timestamp and replica that wrote it: one write to a
/// [`LWWRegister`], and the operation that carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timestamped<T> {
    /// The written value.
    pub value: T,
    /// When it was written, by the writer's [`Clock`].
    pub timestamp: i64,
    /// Who wrote it; breaks timestamp ties.
    pub replica: ReplicaId,
}

impl<T: Payload> Timestamped<T> {
    /// Whether this write beats `other`: higher timestamp, then higher replica.
    ///
    /// Equal timestamp and replica only happen when a custom clock broke its
    /// contract; the encoded values decide then, so merge stays commutative.
    fn beats(&self, other: &Self) -> bool {
        match (self.timestamp, &self.replica).cmp(&(other.timestamp, &other.replica)) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => {
                let mine = rmp_serde::to_vec(&self.value).unwrap_or_default();
                let theirs = rmp_serde::to_vec(&other.value).unwrap_or_default();
                mine > theirs
            }
        }
    }
}

/// A register holding the last written value (last-writer-wins).
///
/// Concurrent writes are decided by timestamp, then by replica id, so every
/// replica picks the same winner. Use a [`Clock`] that fits: [`WallClock`] (the
/// default), [`ReverseClock`] for first-write-wins, or a logical clock of your own.
/// A register starts empty; [`value`](Self::value) is `None` until a write.
///
/// ```
/// use ractor_replicated::{LWWRegister, OpBased, ReplicaId, ReplicatedData};
///
/// let (a, b) = (ReplicaId::new("a", 1), ReplicaId::new("b", 1));
/// let mut left = LWWRegister::new();
/// let mut right = LWWRegister::new();
/// left.apply(left.set_with_clock(&a, 1, &|_: Option<i64>| 10));
/// right.apply(right.set_with_clock(&b, 2, &|_: Option<i64>| 20));
/// left.merge(&right);
/// assert_eq!(left.value(), Some(&2));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
#[serde(bound(deserialize = "T: Payload"))]
pub struct LWWRegister<T> {
    current: Option<Timestamped<T>>,
}

impl<T> Default for LWWRegister<T> {
    fn default() -> Self {
        Self { current: None }
    }
}

impl<T: Payload> LWWRegister<T> {
    /// An empty register.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operation that writes `value`, timestamped by the [`WallClock`].
    pub fn set(&self, replica: &ReplicaId, value: T) -> Timestamped<T> {
        self.set_with_clock(replica, value, &WallClock)
    }

    /// The operation that writes `value`, timestamped by `clock`.
    pub fn set_with_clock(
        &self,
        replica: &ReplicaId,
        value: T,
        clock: &impl Clock,
    ) -> Timestamped<T> {
        Timestamped {
            value,
            timestamp: clock.next_timestamp(self.timestamp()),
            replica: replica.clone(),
        }
    }

    /// The winning value, if anything was written.
    pub fn value(&self) -> Option<&T> {
        self.current.as_ref().map(|w| &w.value)
    }

    /// The winning write with its timestamp and writer.
    pub fn winner(&self) -> Option<&Timestamped<T>> {
        self.current.as_ref()
    }

    /// The timestamp of the winning write.
    pub fn timestamp(&self) -> Option<i64> {
        self.current.as_ref().map(|w| w.timestamp)
    }
}

impl<T: Payload> ReplicatedData for LWWRegister<T> {
    fn merge(&mut self, other: &Self) {
        if let Some(theirs) = &other.current {
            self.apply(theirs.clone());
        }
    }
}

impl<T: Payload> OpBased for LWWRegister<T> {
    type Op = Timestamped<T>;

    fn apply(&mut self, write: Timestamped<T>) {
        let wins = self.current.as_ref().is_none_or(|mine| write.beats(mine));
        if wins {
            self.current = Some(write);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::laws::{self, LawSubject};
    use crate::rng::SplitMix64;
    use quickcheck::{quickcheck, Arbitrary, Gen};

    /// A write with a timestamp drawn from a tiny range, so that ties between
    /// replicas (and broken clocks on one replica) happen often.
    #[derive(Clone, Debug)]
    pub(crate) struct Write {
        value: u8,
        timestamp: i64,
    }

    impl Arbitrary for Write {
        fn arbitrary(g: &mut Gen) -> Self {
            Write {
                value: u8::arbitrary(g),
                timestamp: i64::from(u8::arbitrary(g) % 8),
            }
        }
    }

    impl LawSubject for LWWRegister<u8> {
        fn view(&self) -> String {
            format!("{:?}", self.value())
        }

        type Action = Write;
        fn act(&self, replica: &ReplicaId, write: &Write) -> Vec<Timestamped<u8>> {
            let at = write.timestamp;
            vec![self.set_with_clock(replica, write.value, &move |_: Option<i64>| at)]
        }
        fn keeps_observations(before: &Self, _: &Self, merged: &Self) -> bool {
            merged.timestamp() >= before.timestamp()
        }
    }

    laws::law_tests!(LWWRegister<u8>);

    #[test]
    fn every_replica_picks_the_same_winner_whatever_the_order() {
        fn property(writes: Vec<(u8, u8, u8)>, seed: u64) -> bool {
            let ops: Vec<Timestamped<u8>> = writes
                .iter()
                .map(|&(value, replica, at)| Timestamped {
                    value,
                    timestamp: i64::from(at % 4),
                    replica: laws::replica(usize::from(replica % 3)),
                })
                .collect();
            let mut shuffled = ops.clone();
            SplitMix64::new(seed).shuffle(&mut shuffled);
            let mut forward = LWWRegister::new();
            ops.into_iter().for_each(|op| forward.apply(op));
            let mut other_order = LWWRegister::new();
            shuffled.into_iter().for_each(|op| other_order.apply(op));
            forward == other_order
        }
        quickcheck(property as fn(Vec<(u8, u8, u8)>, u64) -> bool);
    }

    #[test]
    fn timestamp_decides_then_replica_id() {
        let (a, b) = (laws::replica(0), laws::replica(1));
        let at = |t: i64| move |_: Option<i64>| t;
        let mut register = LWWRegister::new();
        register.apply(register.set_with_clock(&b, ('b', 5), &at(5)));
        register.apply(register.set_with_clock(&a, ('a', 4), &at(4)));
        assert_eq!(register.value(), Some(&('b', 5)));
        register.apply(register.set_with_clock(&a, ('a', 5), &at(5)));
        assert_eq!(register.value(), Some(&('b', 5)), "b > a breaks the tie");
        register.apply(register.set_with_clock(&a, ('a', 6), &at(6)));
        assert_eq!(register.value(), Some(&('a', 6)));
    }

    #[test]
    fn the_wall_clock_lets_a_replica_overwrite_itself_even_if_time_stands_still() {
        let a = laws::replica(0);
        let mut register = LWWRegister::new();
        let far_future = i64::MAX / 2;
        register.apply(register.set_with_clock(&a, 1, &move |_: Option<i64>| far_future));
        register.apply(register.set(&a, 2));
        assert_eq!(register.value(), Some(&2));
        assert!(register.timestamp() > Some(far_future));
    }

    #[test]
    fn the_reverse_clock_keeps_the_first_write() {
        let (a, b) = (laws::replica(0), laws::replica(1));
        let first = LWWRegister::new().set_with_clock(&a, 1, &ReverseClock);
        let mut register = LWWRegister::new();
        register.apply(first);
        let second = register.set_with_clock(&b, 2, &ReverseClock);
        register.apply(second);
        assert_eq!(register.value(), Some(&1));
    }
}
