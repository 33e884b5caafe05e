//! The Replicator's whole protocol as a sans-IO state machine.
//!
//! [`ReplicatorCore`] never reads a clock, a socket or a disk. Callers feed it
//! verbs (a local update, a message from a peer, a timer that fired, a peer that
//! came up or went down) and drain one ordered batch of [`Output`]s from each.
//! Time enters only as [`Timer`]s the core asks to be scheduled; randomness only
//! through the seed given to [`ReplicatorCore::new`]. The actor shell
//! ([`Replicator`](super::Replicator)) and the deterministic simulation drive the
//! very same code.
//!
//! Ordering rule of a batch: an [`Output::Persist`] comes before the
//! [`Output::Send`] and the [`Output::WriteDone`] that depend on it, so a caller
//! that runs outputs in order never announces a state it has not stored.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use crate::causal::{ReplicaId, Retired};
use crate::crdt::ReplicatedData;
use crate::error::{catch_panic, Chain, Error, Result};

use super::consistency::{ReadConsistency, WriteConsistency};
use super::key::Key;
use super::registry::{ErasedData, TypeRegistry};
use super::tracked::{Recording, Tracked};
use super::wire::{
    bucket_of, digest_of, Digest, Lifetime, PeerMessage, WireEntry, WireValue, TOMBSTONE_DIGEST,
};
use crate::rng::SplitMix64;

mod antientropy;
mod deltas;
mod expiry;
mod remote;
mod requests;
mod retirement;
#[cfg(test)]
mod tests;

pub use expiry::Expiry;
use requests::{PendingRead, PendingWrite};

/// A peer is named by its node name: after a restart it keeps its name and gets
/// new actor ids and a new replica incarnation.
pub type PeerName = String;

/// The caller's number for a write or read, echoed in its
/// [`Output::WriteDone`] / [`Output::ReadDone`].
pub type RequestId = u64;

/// Tunables of the protocol. [`Default`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// How often anti-entropy sends digests to one random reachable peer. Default 1 s.
    pub gossip_interval: Duration,
    /// The push window. An update when no push went out within the window is
    /// pushed to every reachable peer at once; updates during the window
    /// collect and travel together when it closes, one message per peer.
    /// Default 1 ms.
    pub push_window: Duration,
    /// The notification interval: a change when no notification went out
    /// within the interval is notified at once; later changes collect and are
    /// notified together (each key once) when it closes. Default 5 ms.
    pub notify_interval: Duration,
    /// The budget of one message in bytes. Must stay well below the receiving
    /// node's frame limit (ractor_cluster's default is 16 MiB). Default 4 MiB,
    /// at least [`MIN_MESSAGE_BYTES`] (a smaller budget counts as that); a
    /// value whose encoding does not fit is refused.
    pub max_message_bytes: usize,
    /// When a write or read above `Local` is sent again to the reachable
    /// peers that have not answered it, until its deadline: after this
    /// interval, then after twice as long, and so on up to 8 intervals. A
    /// message or its answer lost in a reconnect then costs an interval or a
    /// few, not the whole timeout, and a slow peer is not flooded. (A peer
    /// that comes back up gets the pending requests at once.) Default 200 ms.
    pub resend_interval: Duration,
    /// Which keys produce [`Output::Persist`]. Default: none.
    pub durable: KeySelection,
    /// Which keys expire after a time without use, and how long tombstones
    /// are kept. Default: nothing expires. Expiry needs the wall-clock time
    /// ([`ReplicatorCore::advance_clock`]).
    pub expiry: Expiry,
    /// Whether to retire the dead incarnations of restarted nodes (see
    /// [`ReplicatedData::retire`](crate::ReplicatedData::retire)), so that
    /// states stop growing with restarts. A retirement round waits for
    /// every member the core knows; one it does not know yet could hold
    /// what a dead incarnation wrote, and that would be lost. So turn it on
    /// only with every node listed from the start
    /// ([`ReplicatorConfig::with_members`](super::ReplicatorConfig::with_members),
    /// or [`ReplicatorCore::peer_down`] for each before anything else).
    /// Default: off.
    pub retire_incarnations: bool,
}

/// The smallest message budget: an anti-entropy summary must fit in one
/// message.
pub const MIN_MESSAGE_BYTES: usize = 1024;

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            gossip_interval: Duration::from_secs(1),
            push_window: Duration::from_millis(1),
            notify_interval: Duration::from_millis(5),
            max_message_bytes: 4 << 20,
            resend_interval: Duration::from_millis(200),
            durable: KeySelection::None,
            expiry: Expiry::never(),
            retire_incarnations: false,
        }
    }
}

/// A set of keys, by name or by name prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum KeySelection {
    /// No key.
    #[default]
    None,
    /// Every key.
    All,
    /// Keys with one of these exact names or starting with one of these
    /// prefixes.
    Matching {
        /// Exact names.
        names: BTreeSet<String>,
        /// Name prefixes.
        prefixes: Vec<String>,
    },
}

impl KeySelection {
    /// The keys with one of these exact names.
    pub fn names(names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self::Matching {
            names: names.into_iter().map(Into::into).collect(),
            prefixes: Vec::new(),
        }
    }

    /// The keys whose names start with one of these prefixes.
    pub fn prefixes(prefixes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self::Matching {
            names: BTreeSet::new(),
            prefixes: prefixes.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether `key` is in the selection.
    pub fn contains(&self, key: &str) -> bool {
        match self {
            Self::None => false,
            Self::All => true,
            Self::Matching { names, prefixes } => {
                names.contains(key) || prefixes.iter().any(|prefix| key.starts_with(prefix))
            }
        }
    }
}

/// A timer the core asked for, handed back through [`ReplicatorCore::handle_timer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Time for an anti-entropy round.
    Gossip,
    /// The push window closed: send the keys updated since the last push.
    Push,
    /// The notification interval closed: tell listeners what changed.
    Notify,
    /// The deadline of a write or read (the core's own request number).
    Deadline(u64),
    /// Time to send the pending writes and reads that are due again to the
    /// peers that have not answered. One timer serves every request.
    Resend,
}

/// A finished read: the merged state, and the nodes that answered (this one first).
pub type ReadOutcome = (KeyState, Vec<PeerName>);

/// What the caller must do, in order, after a verb.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Deliver `message` to the Replicator of node `to`.
    Send {
        /// The receiving node.
        to: PeerName,
        /// The message.
        message: PeerMessage,
    },
    /// Store the current state of `key` (durable keys only; see
    /// [`CoreConfig::durable`]). Read it with [`ReplicatorCore::lookup`].
    Persist {
        /// The key.
        key: String,
    },
    /// These keys changed (or were deleted) since the last notification; tell
    /// their listeners the current state, read with [`ReplicatorCore::lookup`].
    Notify {
        /// The keys, each once.
        keys: Vec<String>,
    },
    /// Call [`ReplicatorCore::handle_timer`] with `timer` after `after`.
    Schedule {
        /// The timer.
        timer: Timer,
        /// The delay.
        after: Duration,
    },
    /// A write finished: reached its consistency level, or timed out (the
    /// local write stands either way).
    WriteDone {
        /// The caller's request number.
        request: RequestId,
        /// The nodes known to hold the write (this one first), or why the level
        /// was not reached.
        result: Result<Vec<PeerName>>,
    },
    /// A read finished.
    ReadDone {
        /// The caller's request number.
        request: RequestId,
        /// The merged answer and the nodes that gave it (this one first).
        result: Result<ReadOutcome>,
    },
}

/// What a key holds, as an owned copy (see [`Lookup`] for a borrowed view).
#[derive(Debug)]
pub enum KeyState {
    /// The key was never written (or its writes have not arrived).
    Absent,
    /// The key was deleted.
    Deleted,
    /// A live value and its type tag.
    Live {
        /// The type tag.
        tag: String,
        /// The value.
        value: Box<dyn ErasedData>,
    },
}

impl KeyState {
    /// A borrowed view.
    pub fn as_lookup(&self) -> Lookup<'_> {
        match self {
            Self::Absent => Lookup::Absent,
            Self::Deleted => Lookup::Deleted,
            Self::Live { tag, value } => Lookup::Live {
                tag,
                value: value.as_ref(),
            },
        }
    }

    /// The state of `key` as a `T`: `Ok(None)` if absent, an error if
    /// deleted or of another type.
    pub fn into_typed<T: ReplicatedData>(self, key: &str) -> Result<Option<T>> {
        let value = self
            .as_lookup()
            .typed::<T>(key, std::any::type_name::<T>())?;
        Ok(value.cloned())
    }
}

/// What a key holds, borrowed from the core (see [`KeyState`] for an owned
/// copy).
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    /// The key was never written (or its writes have not arrived).
    Absent,
    /// The key was deleted.
    Deleted,
    /// A live value and its type tag.
    Live {
        /// The type tag.
        tag: &'a str,
        /// The value.
        value: &'a dyn ErasedData,
    },
}

impl<'a> Lookup<'a> {
    /// An owned copy.
    pub fn to_state(self) -> KeyState {
        match self {
            Self::Absent => KeyState::Absent,
            Self::Deleted => KeyState::Deleted,
            Self::Live { tag, value } => KeyState::Live {
                tag: tag.to_string(),
                value: value.clone_erased(),
            },
        }
    }

    /// The value of `key` as a `T`, whose type tag is `expected`: `Ok(None)`
    /// if absent, an error if deleted or of another type.
    pub fn typed<T: ReplicatedData>(self, key: &str, expected: &str) -> Result<Option<&'a T>> {
        match self {
            Self::Absent => Ok(None),
            Self::Deleted => Err(Error::Deleted { key: key.into() }),
            Self::Live { tag, value } => value
                .as_any()
                .downcast_ref::<T>()
                .map(Some)
                .ok_or_else(|| wrong_type(key, expected, tag)),
        }
    }
}

/// Counters of what the core did, and the number of keys it holds, for tests
/// and monitoring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Keys held, tombstones included.
    pub keys: usize,
    /// Messages from peers that could not be decoded at all.
    pub rejected_messages: u64,
    /// Entries inside decodable messages that were rejected (bad state bytes,
    /// unknown type tag, a type clash with the local value).
    pub rejected_entries: u64,
    /// Entries too large for one message, not sent.
    pub oversized_entries: u64,
    /// Remote states merged that changed a local value.
    pub changing_merges: u64,
    /// Messages handed out as [`Output::Send`].
    pub messages_sent: u64,
    /// Deltas of operations applied.
    pub deltas_applied: u64,
    /// Deltas of operations that could not be applied because an earlier one
    /// of the same key and sender had not arrived (the whole state was asked
    /// for instead).
    pub missing_deltas: u64,
    /// Whole states encoded to be sent: anti-entropy answers, answers to a
    /// missing delta, pushes that could not travel as operations, read
    /// repairs.
    pub states_sent: u64,
    /// Keys removed after their time without use, tombstones included (see
    /// [`Expiry`]).
    pub expired: u64,
    /// States ignored because they had expired already: from peers, or
    /// from the durable store at start.
    pub expired_arrivals: u64,
    /// Rounds that retired a node's dead incarnations here (see
    /// [`ReplicatedData::retire`](crate::ReplicatedData::retire)).
    pub retirements: u64,
    /// Retirement rounds under way (one per node with dead incarnations
    /// not retired here yet); a round waits for every member to answer.
    pub pending_retirements: usize,
    /// Peers that said hello under an incarnation retired here: a removed
    /// node back under its old identity. Its writes are ignored; restart it.
    pub retired_hellos: u64,
    /// Listeners subscribed to changes, over all keys. Kept by the
    /// Replicator actor, which drops a listener that stopped when it next
    /// has a change for it; 0 from a core without one.
    pub subscriptions: usize,
}

pub(crate) enum Slot {
    Live {
        tag: Arc<str>,
        data: Box<dyn ErasedData>,
    },
    Deleted,
}

/// The round of a change that did not happen.
const NEVER: u64 = u64::MAX;

/// Updates of a key accepted without measuring its encoding, at most.
const UNCHECKED_UPDATES: u32 = 64;

impl Slot {
    /// Merges `incoming` into this state of `key`; says whether it changed.
    /// A tombstone wins every merge; values of different types do not merge.
    fn merge(&mut self, incoming: Slot, key: &str) -> Result<bool> {
        match (&mut *self, incoming) {
            (Slot::Deleted, _) => Ok(false),
            (Slot::Live { .. }, Slot::Deleted) => {
                *self = Slot::Deleted;
                Ok(true)
            }
            (
                Slot::Live { tag, data },
                Slot::Live {
                    tag: other,
                    data: theirs,
                },
            ) => {
                if *tag != other {
                    return Err(wrong_type(key, tag, &other));
                }
                data.merge_erased(theirs.as_ref())
                    .ok_or_else(|| wrong_type(key, tag, &other))
            }
        }
    }
}

pub(crate) struct Entry {
    slot: Slot,
    /// Digest of the current state; `None` after a change until next needed.
    digest: Option<Digest>,
    /// The key's anti-entropy bucket.
    bucket: u16,
    /// What the key adds to its bucket's hash now.
    folded: u64,
    /// Listed among its bucket's stale keys.
    stale: bool,
    /// Encoded size when last encoded, and updates since: together with
    /// the growth below they decide whether an update must be checked
    /// against the message budget before it is accepted.
    encoded_len: usize,
    unchecked_updates: u32,
    /// What changes may have added to the value since it was last encoded:
    /// an operation, or a merged state, encodes to at least what it adds.
    grown_by: usize,
    /// Whether `encoded_len + grown_by` bounds the value's encoded size:
    /// true until a change of unknown size (a whole-value update, a read
    /// repair) since the last encoding.
    sized: bool,
    /// The most one local update has added to the value.
    largest_update: usize,
    /// The gossip round of the last change.
    changed_in: u64,
    /// The gossip round in which the digest was last folded in (`NEVER`).
    folded_in: u64,
    /// The round in which the key, put off for `put_off_rounds`, is
    /// listed with its digest all the same, once (`NEVER`).
    compare_in: u64,
    /// Local changes not pushed yet.
    unpushed: Option<Recording>,
    /// The number of this key's last push in this node's sequence.
    pushed: u64,
    /// How far each peer's sequence for this key has been applied here.
    heard: Vec<deltas::Heard>,
    /// When the key was last used on any replica, as far as this one knows
    /// (wall-clock milliseconds).
    used: u64,
    /// When the key's life began: it was written while absent.
    created: u64,
    /// The last use sent to the peers with a change of the key.
    spread_used: u64,
    /// When the key's item in the expiry queue falls due (`NEVER` if none).
    expires: u64,
}

impl Entry {
    fn new(key: &str, slot: Slot) -> Self {
        Self {
            slot,
            digest: None,
            bucket: bucket_of(key),
            folded: 0,
            stale: false,
            encoded_len: 0,
            unchecked_updates: 0,
            grown_by: 0,
            sized: true,
            largest_update: 0,
            changed_in: NEVER,
            folded_in: NEVER,
            compare_in: NEVER,
            unpushed: None,
            pushed: 0,
            heard: Vec::new(),
            used: 0,
            created: 0,
            spread_used: 0,
            expires: NEVER,
        }
    }

    /// Adds a local change to those waiting for the next push. Operations
    /// that outweigh the value, or a message, give way to the whole value.
    fn record(&mut self, change: Recording, limit: usize) {
        let joined = match (self.unpushed.take(), change) {
            (None, change) => change,
            (
                Some(Recording::Ops { mut ops, bytes }),
                Recording::Ops {
                    ops: more,
                    bytes: more_bytes,
                },
            ) => {
                ops.extend(more);
                Recording::Ops {
                    ops,
                    bytes: bytes + more_bytes,
                }
            }
            _ => Recording::Whole,
        };
        self.unpushed = Some(match joined {
            Recording::Ops { bytes, .. }
                if bytes > limit || (self.encoded_len > 0 && bytes >= self.encoded_len) =>
            {
                Recording::Whole
            }
            joined => joined,
        });
    }

    fn encoded(&mut self, len: usize) {
        self.encoded_len = len;
        self.unchecked_updates = 0;
        self.grown_by = 0;
        self.sized = true;
    }

    /// Whether the key changed in gossip round `round` or the one before,
    /// so that deltas of it may still be on their way.
    fn changed_lately(&self, round: u64) -> bool {
        self.changed_in
            .checked_add(1)
            .is_some_and(|next| next >= round)
    }

    /// Whether anti-entropy leaves the key out of comparisons in `round`: a
    /// key that changed lately, and was compared before, is compared in one
    /// round per `put_off_rounds` only (anti-entropy point 6 of
    /// docs/protocol.md).
    fn put_off(&mut self, round: u64) -> bool {
        if !self.changed_lately(round) || self.folded_in == NEVER || self.compare_in == round {
            return false;
        }
        if round.saturating_sub(self.folded_in) >= self.put_off_rounds() {
            self.compare_in = round;
            return false;
        }
        true
    }

    /// For how many rounds in a row the key may be put off: longer for a
    /// larger value.
    fn put_off_rounds(&self) -> u64 {
        let by_size = self.encoded_len / antientropy::PUT_OFF_BYTES_PER_ROUND;
        antientropy::PUT_OFF_ROUNDS.max(u64::try_from(by_size).unwrap_or(u64::MAX))
    }

    /// Counts a change that added at most `bytes` to the encoded value, or
    /// an unknown amount.
    fn grew(&mut self, bytes: Option<usize>) {
        match bytes {
            Some(bytes) => self.grown_by += bytes,
            None => self.sized = false,
        }
    }

    /// Whether the next update must be measured before it is accepted. With
    /// a known bound, only when the bound comes within a margin of `limit`:
    /// twice the largest update seen, and at least a sixteenth of the limit.
    /// Without one, when the value was near the limit or after a run of
    /// unmeasured updates.
    fn must_measure(&self, limit: usize) -> bool {
        let bound = self.encoded_len + self.grown_by;
        if self.sized {
            bound + (limit / 16).max(2 * self.largest_update) >= limit
        } else {
            bound >= limit / 2 || self.unchecked_updates >= UNCHECKED_UPDATES
        }
    }
}

/// The Replicator's protocol state for one node; the module docs describe the protocol.
pub struct ReplicatorCore {
    node: PeerName,
    replica: ReplicaId,
    config: CoreConfig,
    types: Arc<TypeRegistry>,
    entries: BTreeMap<String, Entry>,
    /// Known peers, reachable or not: all of them count as members for
    /// `Majority` and `All`, so a partition cannot shrink a majority.
    peers: BTreeMap<PeerName, bool>,
    /// Peers removed from the cluster: no longer members, whatever losing
    /// sight of them says, until one is reachable again.
    removed: BTreeSet<PeerName>,
    rng: SplitMix64,
    writes: BTreeMap<u64, PendingWrite>,
    reads: BTreeMap<u64, PendingRead>,
    /// A [`Timer::Resend`] is scheduled.
    resend_scheduled: bool,
    to_push: BTreeSet<String>,
    /// A push went out less than `push_window` ago: further keys wait.
    push_window_open: bool,
    to_notify: BTreeSet<String>,
    /// A notification went out less than `notify_interval` ago.
    notify_window_open: bool,
    hashes: antientropy::KeyHashes,
    /// This run's delta epoch (see [`PeerMessage::Deltas`]).
    epoch: u64,
    /// Gossip rounds so far: a peer is asked for a state it failed to
    /// deliver at most once a round.
    round: u64,
    /// The last number given to a push, of any key, in this epoch: a key
    /// that expired and comes back numbers on from it, so a peer that still
    /// holds the old key cannot take new changes for ones it applied.
    pushes: u64,
    /// The wall-clock time last given to [`advance_clock`](Self::advance_clock).
    now: u64,
    /// Keys that may expire, by the earliest time they may (see `expiry`).
    expiring: BinaryHeap<Reverse<(u64, String)>>,
    /// Rounds under way to retire nodes' dead incarnations, by node name
    /// (see `retirement`), and the incarnations retired here.
    retiring: BTreeMap<String, retirement::Round>,
    retired: Retired,
    /// The latest incarnation each peer said hello with.
    incarnations: BTreeMap<PeerName, u64>,
    /// Answers given to retirement rounds, to number them.
    answers: u64,
    stats: CoreStats,
    out: Vec<Output>,
}

impl ReplicatorCore {
    /// A core for node `node`, writing as `replica`, decoding values with
    /// `types`; `seed` drives its random choices.
    pub fn new(
        node: impl Into<PeerName>,
        replica: ReplicaId,
        types: Arc<TypeRegistry>,
        config: CoreConfig,
        seed: u64,
    ) -> Self {
        let mut config = config;
        config.max_message_bytes = config.max_message_bytes.max(MIN_MESSAGE_BYTES);
        let mut rng = SplitMix64::new(seed);
        Self {
            epoch: rng.next_u64(),
            round: 0,
            pushes: 0,
            now: 0,
            expiring: BinaryHeap::new(),
            retiring: BTreeMap::new(),
            retired: Retired::new(),
            incarnations: BTreeMap::new(),
            answers: 0,
            node: node.into(),
            replica,
            config,
            types,
            entries: BTreeMap::new(),
            peers: BTreeMap::new(),
            removed: BTreeSet::new(),
            rng,
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            resend_scheduled: false,
            to_push: BTreeSet::new(),
            push_window_open: false,
            to_notify: BTreeSet::new(),
            notify_window_open: false,
            hashes: antientropy::KeyHashes::new(),
            stats: CoreStats::default(),
            out: Vec::new(),
        }
    }

    /// Starts the gossip timer. Call once, before anything else. This
    /// node's earlier incarnations are dead: a round to retire them begins.
    pub fn start(&mut self) -> Vec<Output> {
        self.schedule(Timer::Gossip, self.config.gossip_interval);
        let replica = self.replica.clone();
        self.plan_retirement(replica.node(), replica.incarnation());
        self.take_outputs()
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The replica id local updates write with.
    pub fn replica(&self) -> &ReplicaId {
        &self.replica
    }

    /// The type registry values are decoded with.
    pub fn types(&self) -> &Arc<TypeRegistry> {
        &self.types
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Counters of rejected input and of work done, and the number of keys.
    pub fn stats(&self) -> CoreStats {
        CoreStats {
            keys: self.entries.len(),
            pending_retirements: self.retiring.len(),
            ..self.stats.clone()
        }
    }

    /// Members of the cluster as far as this node knows: itself and every
    /// known peer, reachable or not.
    pub fn members(&self) -> usize {
        1 + self.peers.len()
    }

    /// The names of peers currently reachable.
    pub fn reachable_peers(&self) -> impl Iterator<Item = &str> + '_ {
        self.peers
            .iter()
            .filter(|(_, reachable)| **reachable)
            .map(|(name, _)| name.as_str())
    }

    /// The names of every key this node holds, tombstones included.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.keys().map(String::as_str)
    }

    /// What `key` holds here.
    pub fn lookup(&self, key: &str) -> Lookup<'_> {
        match self.entries.get(key).map(|entry| &entry.slot) {
            None => Lookup::Absent,
            Some(Slot::Deleted) => Lookup::Deleted,
            Some(Slot::Live { tag, data }) => Lookup::Live {
                tag,
                value: data.as_ref(),
            },
        }
    }

    /// The local value of `key`: `Ok(None)` if absent, an error if deleted or
    /// of another type.
    pub fn get<T: ReplicatedData>(&self, key: &Key<T>) -> Result<Option<&T>> {
        let tag = self.types.require_tag_of::<T>()?;
        self.lookup(key.name()).typed::<T>(key.name(), &tag)
    }

    /// Applies `modify` to the local value of `key` (the type's default if
    /// absent) and starts spreading the result at consistency `level`.
    ///
    /// Operations applied through [`Tracked::apply`] travel as deltas when
    /// `T` is registered with them; any other change sends the whole value.
    ///
    /// Errors come back at once and change nothing: the key is deleted, holds
    /// another type, `T` is not registered, the new value would not fit in a
    /// message, or `modify` panicked before applying anything
    /// ([`Error::Panicked`]). Otherwise the outcome arrives later as
    /// [`Output::WriteDone`] (in the returned batch already for
    /// [`WriteConsistency::Local`]). A `modify` that panics after applying
    /// operations keeps them: they spread as after any local update, and the
    /// write is done with [`Error::Panicked`].
    pub fn update<T, F>(
        &mut self,
        request: RequestId,
        key: &Key<T>,
        level: WriteConsistency,
        modify: F,
    ) -> Result<Vec<Output>>
    where
        T: ReplicatedData + Default,
        F: FnOnce(&mut Tracked<'_, T>, &ReplicaId),
    {
        let created = !self.entries.contains_key(key.name());
        let updated = self.update_in_place(request, key, level, modify);
        if updated.is_err() && created {
            // The update was refused: the key it created is not there either.
            self.entries.remove(key.name());
        }
        updated
    }

    fn update_in_place<T, F>(
        &mut self,
        request: RequestId,
        key: &Key<T>,
        level: WriteConsistency,
        modify: F,
    ) -> Result<Vec<Output>>
    where
        T: ReplicatedData + Default,
        F: FnOnce(&mut Tracked<'_, T>, &ReplicaId),
    {
        let tag = self.types.require_tag_of::<T>()?;
        let deltas = self.types.has_deltas::<T>();
        let name = key.name();
        let limit = self.value_limit(name);
        let entry = match self.entries.get_mut(name) {
            Some(entry) => entry,
            None => self.entries.entry(name.to_string()).or_insert(Entry::new(
                name,
                Slot::Live {
                    tag: tag.clone(),
                    data: super::registry::erase(T::default()),
                },
            )),
        };
        let measure = entry.must_measure(limit);
        let value = match &mut entry.slot {
            Slot::Deleted => return Err(Error::Deleted { key: name.into() }),
            Slot::Live { tag: found, data } => {
                if *found != tag {
                    return Err(wrong_type(name, &tag, found));
                }
                data.as_any_mut()
                    .downcast_mut::<T>()
                    .ok_or_else(|| wrong_type(name, &tag, found))?
            }
        };
        // Encoding every update would cost as much as the update of a large
        // value, so an update is measured only when `must_measure` says so.
        // A single update far larger than those before it can slip past the
        // limit; the value then cannot travel whole, which is logged and
        // counted, and the next update is measured and refused. The update
        // happens in place (a value may know things about its own writes
        // that a copy does not carry), and a refused one is undone from a
        // backup. A panicking `modify` is refused the same way when there is
        // a backup, or when it applied nothing; otherwise the operations it
        // applied before panicking stand and spread at `Local`, as after a
        // successful update (each is a valid change of the value), and the
        // write is done with the panic as its error.
        let replica = &self.replica;
        let (recording, panicked) = if measure {
            let backup = value.clone();
            let mut tracked = Tracked::new(&mut *value, deltas);
            let outcome = catch_panic(name, || modify(&mut tracked, replica));
            let recording = tracked.into_recording();
            if let Err(err) = outcome {
                *value = backup;
                return Err(err);
            }
            let bytes = match crate::codec::encode(&*value) {
                Ok(encoded) => encoded.len(),
                Err(err) => {
                    *value = backup;
                    return Err(err);
                }
            };
            if bytes > limit {
                *value = backup;
                return Err(Error::ValueTooLarge {
                    key: name.into(),
                    bytes,
                    limit,
                });
            }
            entry.encoded(bytes);
            (recording, Ok(()))
        } else {
            let mut tracked = Tracked::new(value, deltas);
            let outcome = catch_panic(name, || modify(&mut tracked, replica));
            let recording = tracked.into_recording();
            if let (Err(err), Recording::Ops { ops, .. }) = (&outcome, &recording) {
                if ops.is_empty() {
                    return Err(err.clone());
                }
            }
            entry.unchecked_updates += 1;
            match &recording {
                Recording::Ops { bytes, .. } => {
                    entry.largest_update = entry.largest_update.max(*bytes);
                    entry.grew(Some(*bytes));
                }
                Recording::Whole => entry.grew(None),
            }
            (recording, outcome)
        };
        entry.record(recording, limit);
        self.touch(name);
        if let Err(err) = panicked {
            self.mark_changed(name);
            self.mark_for_push(name);
            self.out.push(Output::WriteDone {
                request,
                result: Err(err),
            });
            return Ok(self.take_outputs());
        }
        self.changed_locally(request, name, level);
        Ok(self.take_outputs())
    }

    /// Deletes `key` for good, at consistency `level`: a tombstone replaces the
    /// value and wins every merge, and later updates of the key fail.
    pub fn delete<T: ReplicatedData>(
        &mut self,
        request: RequestId,
        key: &Key<T>,
        level: WriteConsistency,
    ) -> Result<Vec<Output>> {
        let tag = self.types.require_tag_of::<T>()?;
        let name = key.name();
        match self.entries.get_mut(name) {
            Some(Entry {
                slot: Slot::Deleted,
                ..
            }) => return Err(Error::Deleted { key: name.into() }),
            Some(Entry {
                slot: Slot::Live { tag: found, .. },
                ..
            }) if *found != tag => return Err(wrong_type(name, &tag, found)),
            Some(entry) => {
                // The key's sequence goes on: receivers must not take the
                // tombstone's number for one they have applied.
                entry.slot = Slot::Deleted;
                entry.unpushed = Some(Recording::Whole);
            }
            None => {
                let mut entry = Entry::new(name, Slot::Deleted);
                entry.unpushed = Some(Recording::Whole);
                self.entries.insert(name.to_string(), entry);
            }
        }
        self.touch(name);
        self.changed_locally(request, name, level);
        Ok(self.take_outputs())
    }

    /// Reads `key` at consistency `level`; the answer arrives as
    /// [`Output::ReadDone`] (in the returned batch already for
    /// [`ReadConsistency::Local`]).
    pub fn read<T: ReplicatedData>(
        &mut self,
        request: RequestId,
        key: &Key<T>,
        level: ReadConsistency,
    ) -> Result<Vec<Output>> {
        let tag = self.types.require_tag_of::<T>()?;
        if let Lookup::Live { tag: found, .. } = self.lookup(key.name()) {
            if found != &*tag {
                return Err(wrong_type(key.name(), &tag, found));
            }
        }
        self.read_use(key.name());
        self.start_read(request, key.name(), level);
        Ok(self.take_outputs())
    }

    /// Merges a state recovered from a durable store, with its `lifetime`
    /// (unknown: begun and used now), before the core serves anything. The state is not
    /// persisted again; listeners will hear of it. Says whether it was
    /// taken: a state that expired while the node was down is not, and its
    /// caller removes it from the store.
    pub fn recover(
        &mut self,
        key: &str,
        value: WireValue,
        lifetime: Option<Lifetime>,
    ) -> Result<bool> {
        if self.arrived_expired(key, matches!(value, WireValue::Deleted), lifetime) {
            return Ok(false);
        }
        let bytes = value.encoded_len();
        let slot = self.decode_slot(value)?;
        self.merge_slot(key, slot, Some(bytes))?;
        self.merged_use(key, lifetime);
        self.out
            .retain(|output| !matches!(output, Output::Persist { .. }));
        Ok(true)
    }

    /// Counts a message from a peer that could not be decoded at all. Its bytes
    /// changed nothing; the shell logs it.
    pub fn record_undecodable_message(&mut self) {
        self.stats.rejected_messages += 1;
    }

    /// Peer `peer` is reachable (new, or back after being down): pending
    /// requests go to it too, and an anti-entropy exchange with it starts at
    /// once, so that whichever of the two missed something catches up. (Only
    /// the node whose name sorts first starts it: two exchanges at once would
    /// move what differs twice.)
    /// A removed peer that is reachable again (restarted under its name)
    /// is a member again.
    pub fn peer_up(&mut self, peer: &str) -> Vec<Output> {
        if peer == self.node {
            return Vec::new();
        }
        self.removed.remove(peer);
        let was_reachable = self.peers.insert(peer.to_string(), true);
        if was_reachable != Some(true) {
            let replica = self.replica.clone();
            self.send(peer, PeerMessage::Hello { replica });
            if self.node.as_str() < peer {
                self.send_summary(peer);
            }
            self.resend_pending_to(peer);
        }
        self.take_outputs()
    }

    /// Peer `peer` is unreachable, or a configured member not reached yet. It
    /// still counts as a member, so majorities keep their meaning during a
    /// partition. A removed peer stays removed.
    pub fn peer_down(&mut self, peer: &str) -> Vec<Output> {
        if peer != self.node && !self.removed.contains(peer) {
            self.peers.insert(peer.to_string(), false);
            self.release_claims(peer);
        }
        self.take_outputs()
    }

    /// Peer `peer` left the cluster for good (decommissioned): it no longer
    /// counts as a member, so `All` and `Majority` of later requests are
    /// reached without it, and losing sight of it does not make it one
    /// again. Requests already waiting keep the count they started with.
    ///
    /// With [`CoreConfig::retire_incarnations`], its incarnations up to the
    /// latest it said hello with are then retired like dead ones (see
    /// `retirement`): a node that comes back under its name must do so under
    /// a new incarnation, as a restart gives it.
    pub fn peer_removed(&mut self, peer: &str) -> Vec<Output> {
        if peer != self.node {
            self.removed.insert(peer.to_string());
            self.peers.remove(peer);
            self.release_claims(peer);
            if let Some(latest) = self.incarnations.get(peer).copied() {
                self.plan_retirement(peer, latest.saturating_add(1));
            }
        }
        self.take_outputs()
    }

    fn changed_locally(&mut self, request: RequestId, key: &str, level: WriteConsistency) {
        self.mark_changed(key);
        let (required, timeout) = level.required(self.members());
        if required <= 1 {
            self.mark_for_push(key);
            self.out.push(Output::WriteDone {
                request,
                result: Ok(vec![self.node.clone()]),
            });
        } else {
            self.start_write(request, key, required, timeout);
        }
    }

    /// Bookkeeping after the local state of `key` changed, by any path.
    fn mark_changed(&mut self, key: &str) {
        if let Some(entry) = self.entries.get_mut(key) {
            self.hashes.changed(key, entry, self.round);
        }
        self.changed_beyond_entry(key);
    }

    /// What a change of `key` sets off beyond its entry (marked already):
    /// storing it, telling listeners.
    fn changed_beyond_entry(&mut self, key: &str) {
        if self.config.durable.contains(key) {
            self.out.push(Output::Persist { key: key.into() });
        }
        // Most updates hit a key already waiting: look before allocating.
        if !self.to_notify.contains(key) {
            self.to_notify.insert(key.to_string());
        }
        if !self.notify_window_open {
            self.notify();
        }
    }

    /// Pushes at once when no push went out within the window, so a lone
    /// update travels without delay; during a burst, keys collect until the
    /// window closes and travel together.
    fn mark_for_push(&mut self, key: &str) {
        if !self.to_push.contains(key) {
            self.to_push.insert(key.to_string());
        }
        if !self.push_window_open {
            self.push();
        }
    }

    /// Notifies the changed keys and opens a window in which further changes
    /// collect (leading and trailing edge, like the push).
    pub(super) fn notify(&mut self) {
        let keys: Vec<String> = std::mem::take(&mut self.to_notify).into_iter().collect();
        self.notify_window_open = !keys.is_empty();
        if self.notify_window_open {
            self.out.push(Output::Notify { keys });
            self.schedule(Timer::Notify, self.config.notify_interval);
        }
    }

    fn schedule(&mut self, timer: Timer, after: Duration) {
        self.out.push(Output::Schedule { timer, after });
    }

    fn send(&mut self, to: &str, message: PeerMessage) {
        self.stats.messages_sent += 1;
        self.out.push(Output::Send {
            to: to.to_string(),
            message,
        });
    }

    /// Sends `items` to `to` in as many messages as the budget needs, each
    /// made by `message` from a run of items.
    fn send_in_parts<T>(
        &mut self,
        to: &str,
        items: Vec<T>,
        budget: impl Fn(&T) -> usize,
        message: impl Fn(Vec<T>) -> PeerMessage,
    ) {
        let limit = self.config.max_message_bytes;
        for part in super::wire::split_by_budget(items, limit, budget) {
            self.send(to, message(part));
        }
    }

    fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// The largest state a key may encode to and still travel in one message.
    fn value_limit(&self, key: &str) -> usize {
        self.config.max_message_bytes.saturating_sub(
            super::wire::MESSAGE_OVERHEAD + super::wire::ENTRY_OVERHEAD + key.len() + 64,
        )
    }

    /// The wire form of `key`'s state, refreshing its digest on the way.
    /// `None` (logged and counted) if it cannot be encoded or is too large.
    fn sendable_entry(&mut self, key: &str) -> Option<WireEntry> {
        let encoded = self.encode_entry(key)?;
        self.sendable(key, encoded)
    }

    /// What can be sent of `key`: `None` (logged and counted) when its state
    /// cannot be encoded or is too large.
    fn sendable<T>(&mut self, key: &str, encoded: Result<T>) -> Option<T> {
        match encoded {
            Ok(encoded) => Some(encoded),
            Err(err) => {
                if matches!(err, Error::ValueTooLarge { .. }) {
                    self.stats.oversized_entries += 1;
                }
                tracing::error!(key, error = %Chain(&err), "a value cannot be replicated");
                None
            }
        }
    }

    /// The wire form of `key`'s state (`None` if absent), refreshing its digest.
    fn encode_entry(&mut self, key: &str) -> Option<Result<WireEntry>> {
        let limit = self.value_limit(key);
        let entry = self.entries.get_mut(key)?;
        let value = match &entry.slot {
            Slot::Deleted => WireValue::Deleted,
            Slot::Live { tag, data } => match data.encode_erased() {
                Ok(state) => WireValue::Live {
                    tag: tag.to_string(),
                    state,
                },
                Err(err) => return Some(Err(err)),
            },
        };
        let digest = match &value {
            WireValue::Deleted => TOMBSTONE_DIGEST,
            WireValue::Live { state, .. } => {
                entry.encoded(state.len());
                digest_of(state)
            }
        };
        self.hashes.fold(key, entry, digest, self.round);
        if let WireValue::Live { state, .. } = &value {
            if state.len() > limit {
                return Some(Err(Error::ValueTooLarge {
                    key: key.into(),
                    bytes: state.len(),
                    limit,
                }));
            }
        }
        let seq = entry.pushed;
        self.stats.states_sent += 1;
        Some(Ok(WireEntry {
            key: key.to_string(),
            value,
            seq,
            lifetime: self.lifetime(key),
        }))
    }

    /// The digest of `key`'s state, computed if stale.
    fn digest(&mut self, key: &str) -> Option<Digest> {
        let entry = self.entries.get_mut(key)?;
        entry_digest(&mut self.hashes, key, entry, self.round)
    }
}

/// The digest of `entry` (of `key`), computed and folded into `hashes` if
/// not known; `None` (logged) if its value cannot be encoded.
fn entry_digest(
    hashes: &mut antientropy::KeyHashes,
    key: &str,
    entry: &mut Entry,
    round: u64,
) -> Option<Digest> {
    if let Some(digest) = entry.digest {
        return Some(digest);
    }
    let digest = match &entry.slot {
        Slot::Deleted => TOMBSTONE_DIGEST,
        Slot::Live { data, .. } => match data.encode_erased() {
            Ok(state) => {
                entry.encoded(state.len());
                digest_of(&state)
            }
            Err(err) => {
                tracing::error!(key, error = %Chain(&err), "cannot encode a value; it is not replicated");
                return None;
            }
        },
    };
    hashes.fold(key, entry, digest, round);
    Some(digest)
}

fn wrong_type(key: &str, expected: &str, found: &str) -> Error {
    Error::WrongType {
        key: key.into(),
        expected: expected.into(),
        found: found.into(),
    }
}
