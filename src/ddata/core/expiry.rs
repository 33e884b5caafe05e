//! Expiry: a key left unused for its configured time is removed on every
//! replica, and so is a tombstone, after which the key can be used again.
//!
//! Every entry remembers when it was last used (written, deleted or read) on
//! any replica, in wall-clock milliseconds: the time travels with its deltas
//! and states, and a merge keeps the later one. Replicas so agree on when a
//! key expires, up to their clock skew, without talking about it. A state
//! that arrives already expired is ignored: it cannot bring back a key the
//! receiver removed. A key written again after it expired begins a new life
//! (its creation time travels too): a replica still holding the old life,
//! its clock behind, drops it for the new one instead of merging the two,
//! whose dots would clash. What no replica can tell is a *live* state from
//! a replica that never heard of a deletion whose tombstone is gone; a node
//! away longer than the tombstones' time must rejoin empty (see
//! docs/durability.md).

use std::cmp::Reverse;
use std::time::Duration;

use super::{KeySelection, ReplicatorCore, Slot, NEVER};
use crate::ddata::wire::Lifetime;

/// Which keys expire after a time without use, and how long the tombstone of
/// a deleted key is kept. Give every node the same expiry.
///
/// The default expires nothing and keeps tombstones for ever.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expiry {
    keys: Vec<(KeySelection, Duration)>,
    tombstones: Option<Duration>,
}

impl Expiry {
    /// Nothing expires; tombstones are kept for ever.
    pub fn never() -> Self {
        Self::default()
    }

    /// Keys in `selection` are removed once unused (not written, deleted or
    /// read on any replica) for `after`, tombstones included, and can then
    /// be used again. A key in several selections expires after the time of
    /// the first one given.
    pub fn keys(mut self, selection: KeySelection, after: Duration) -> Self {
        self.keys.push((selection, after));
        self
    }

    /// The tombstone of any deleted key is removed `after` its deletion (or
    /// its last use, if that came later), and the key can then be used
    /// again. A replica that did not hear of the deletion within that time
    /// brings the key back (see docs/durability.md).
    pub fn tombstones(mut self, after: Duration) -> Self {
        self.tombstones = Some(after);
        self
    }

    /// How long `key` lives without use, as a tombstone if `deleted`; `None`
    /// if it does not expire.
    pub fn time_to_live(&self, key: &str, deleted: bool) -> Option<Duration> {
        let by_key = self
            .keys
            .iter()
            .find(|(selection, _)| selection.contains(key))
            .map(|(_, after)| *after);
        match (by_key, deleted.then_some(self.tombstones).flatten()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether anything expires.
    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty() || self.tombstones.is_some()
    }
}

/// A duration in whole milliseconds, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

// Without expiry, none of this runs: lifetimes are neither kept nor sent.

/// A read spreads its use only once the last use spread is this fraction
/// of the key's time to live old: reads then cost a message per key a few
/// times per time to live, not one each.
const SPREAD_USE_FRACTION: u64 = 8;

impl ReplicatorCore {
    /// Tells the core the wall-clock time, in milliseconds since the Unix
    /// epoch. Expiry measures time by it and stamps local uses with it; a
    /// clock that goes back is ignored. The actor calls it before each
    /// message; a core that is never told the time expires nothing.
    pub fn advance_clock(&mut self, now: u64) {
        self.now = self.now.max(now);
    }

    /// The time the core was last told.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// How long `key` lives unused in `slot`, in milliseconds.
    fn time_to_live(&self, key: &str, slot: &Slot) -> Option<u64> {
        self.config
            .expiry
            .time_to_live(key, matches!(slot, Slot::Deleted))
            .map(millis)
    }

    /// When `key` began and was last used, as far as this replica knows:
    /// only for a key that expires in its current state. It travels with the
    /// key's changes and is stored with a durable key.
    pub fn lifetime(&self, key: &str) -> Option<Lifetime> {
        let entry = self.entries.get(key)?;
        self.time_to_live(key, &entry.slot)?;
        Some(Lifetime {
            created: entry.created,
            used: entry.used,
        })
    }

    /// Whether a state of `key` (a tombstone if `deleted`) that lived
    /// `lifetime` has expired here already: it is then ignored.
    pub(super) fn arrived_expired(
        &mut self,
        key: &str,
        deleted: bool,
        lifetime: Option<Lifetime>,
    ) -> bool {
        let (Some(lifetime), Some(ttl)) = (lifetime, self.config.expiry.time_to_live(key, deleted))
        else {
            return false;
        };
        let expired = lifetime.used.saturating_add(millis(ttl)) <= self.now;
        if expired {
            self.stats.expired_arrivals += 1;
            tracing::debug!(
                key,
                used = lifetime.used,
                "ignored a state that expired already"
            );
        }
        expired
    }

    /// Drops the local entry of `key` if its life ended before the one of an
    /// arriving state began: the arriving state is then taken as it is, not
    /// merged with a life it does not continue.
    pub(super) fn make_way(&mut self, key: &str, arriving: Option<Lifetime>) {
        if !self.config.expiry.is_enabled() {
            return;
        }
        let Some(arriving) = arriving else {
            return;
        };
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        let Some(ttl) = self.time_to_live(key, &entry.slot) else {
            return;
        };
        if entry.used.saturating_add(ttl) <= arriving.created {
            tracing::debug!(key, "a new life of an expired key replaces the old");
            self.drop_expired(key);
        }
    }

    /// A local use of `key`, now; a key written while absent begins its
    /// life.
    pub(super) fn touch(&mut self, key: &str) {
        if !self.config.expiry.is_enabled() {
            return;
        }
        let now = self.now;
        if let Some(entry) = self.entries.get_mut(key) {
            entry.used = entry.used.max(now);
            if entry.created == 0 {
                entry.created = now;
            }
        }
        self.queue_expiry(key);
    }

    /// A local read of `key`: a use, spread to the other replicas (as an
    /// empty change) once the last use they heard of is old enough.
    pub(super) fn read_use(&mut self, key: &str) {
        if !self.config.expiry.is_enabled() {
            return;
        }
        self.touch(key);
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        let Some(ttl) = self.time_to_live(key, &entry.slot) else {
            return;
        };
        if !matches!(entry.slot, Slot::Live { .. })
            || entry.used < entry.spread_used.saturating_add(ttl / SPREAD_USE_FRACTION)
        {
            return;
        }
        if let Some(entry) = self.entries.get_mut(key) {
            entry.record(
                crate::ddata::tracked::Recording::Ops {
                    ops: Vec::new(),
                    bytes: 0,
                },
                usize::MAX,
            );
        }
        if self.config.durable.contains(key) {
            self.out.push(super::Output::Persist { key: key.into() });
        }
        self.mark_for_push(key);
    }

    /// A state of `key` that lived `lifetime` (unknown: begun and used
    /// now) was merged here.
    pub(super) fn merged_use(&mut self, key: &str, lifetime: Option<Lifetime>) {
        if !self.config.expiry.is_enabled() {
            return;
        }
        let now = self.now;
        if let Some(entry) = self.entries.get_mut(key) {
            match lifetime {
                Some(lifetime) => {
                    let known = Lifetime {
                        created: entry.created,
                        used: entry.used,
                    }
                    .join(lifetime);
                    (entry.created, entry.used) = (known.created, known.used);
                }
                None => {
                    entry.used = entry.used.max(now);
                    if entry.created == 0 {
                        entry.created = now;
                    }
                }
            }
        }
        self.queue_expiry(key);
    }

    /// Makes sure `key` is checked when it may expire: the expiry queue
    /// holds one item per entry, for the earliest time it may expire, and
    /// an item found early is queued again for the entry's current time.
    fn queue_expiry(&mut self, key: &str) {
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        let Some(ttl) = self.time_to_live(key, &entry.slot) else {
            return;
        };
        let deadline = entry.used.saturating_add(ttl);
        if deadline < entry.expires {
            self.expiring.push(Reverse((deadline, key.to_string())));
            if let Some(entry) = self.entries.get_mut(key) {
                entry.expires = deadline;
            }
        }
    }

    /// Removes the entries whose time without use ran out.
    pub(super) fn expire_due(&mut self) {
        if !self.config.expiry.is_enabled() {
            return;
        }
        while let Some(Reverse((deadline, _))) = self.expiring.peek() {
            if *deadline > self.now {
                return;
            }
            let Some(Reverse((deadline, key))) = self.expiring.pop() else {
                return;
            };
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.expires != deadline {
                continue;
            }
            entry.expires = NEVER;
            let used = entry.used;
            match self.time_to_live(&key, &self.entries[&key].slot) {
                Some(ttl) if used.saturating_add(ttl) <= self.now => {
                    tracing::debug!(key, "expired");
                    self.drop_expired(&key);
                    // Listeners hear of it; a durable key leaves the store.
                    self.changed_beyond_entry(&key);
                }
                Some(_) => self.queue_expiry(&key),
                None => {}
            }
        }
    }

    /// Removes `key`, as if it had never been written.
    fn drop_expired(&mut self, key: &str) {
        let Some(entry) = self.entries.remove(key) else {
            return;
        };
        self.hashes.forget(&entry);
        self.to_push.remove(key);
        self.stats.expired += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_selection_and_the_shorter_time_win() {
        let second = Duration::from_secs(1);
        let expiry = Expiry::never()
            .keys(KeySelection::prefixes(["cache/"]), 10 * second)
            .keys(KeySelection::All, 60 * second)
            .tombstones(5 * second);
        assert_eq!(expiry.time_to_live("cache/a", false), Some(10 * second));
        assert_eq!(expiry.time_to_live("cache/a", true), Some(5 * second));
        assert_eq!(expiry.time_to_live("other", false), Some(60 * second));
        let tombstones_only = Expiry::never().tombstones(second);
        assert_eq!(tombstones_only.time_to_live("k", false), None);
        assert_eq!(tombstones_only.time_to_live("k", true), Some(second));
        assert!(!Expiry::never().is_enabled());
        assert_eq!(Expiry::never().time_to_live("k", true), None);
    }
}
