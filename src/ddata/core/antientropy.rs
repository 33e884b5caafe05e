//! Anti-entropy that costs almost nothing when replicas agree, and moves
//! about one copy of what differs when they do not.
//!
//! Keys are hashed into [`BUCKETS`] buckets; a bucket's hash is the XOR of
//! [`key_hash`] over its keys, kept up to date incrementally (a change only
//! marks its key stale; the key's digest is folded in again when a hash is
//! next needed). An exchange narrows down in steps, each of which only goes
//! on where the previous one found a difference:
//!
//! 1. the initiator sends the hash of each of [`GROUPS`] groups of buckets
//!    (`Summary`, about 600 bytes whatever the number of keys);
//! 2. the receiver answers with its bucket hashes of the groups that differ
//!    (`Buckets`);
//! 3. for each bucket that differs the initiator sends the whole bucket if
//!    the receiver's is empty, asks for the whole bucket if its own is empty,
//!    and otherwise sends the key digests of the bucket (`Digests`);
//! 4. the receiver asks for the keys it lacks or holds in another state, and
//!    answers with its own digests of keys the initiator lacks or holds in
//!    another state; the initiator then asks for those.
//!
//! States only travel when asked for or into an empty bucket. A bucket empty
//! here is filled from one peer at a time (a *claim*, for two gossip rounds),
//! and a key asked for is not asked of another peer while the answer may be
//! on its way, so a node that joins or restarts receives each key about once
//! however many peers hold it.

use std::collections::{BTreeMap, BTreeSet};

use xxhash_rust::xxh3::xxh3_64;

use super::{entry_digest, Entry, PeerName, ReplicatorCore, NEVER};
use crate::ddata::wire::{
    digest_budget, key_hash, Digest, PeerMessage, BUCKETS, BUCKETS_PER_GROUP, BUCKET_BUDGET,
    GROUPS, HASH_BUDGET, TOMBSTONE_DIGEST,
};

/// For how many gossip rounds a claim on a bucket, or a key asked for, keeps
/// other peers from being asked (a message of the exchange may be lost).
const CLAIM_ROUNDS: u64 = 2;

/// At most this many buckets are named in one `Buckets` or `Request`
/// message. A node that lacks many buckets then asks for them in parts, and
/// the peer answers each part on its own, so the first states arrive while
/// the peer still encodes the rest.
const BUCKETS_PER_MESSAGE: usize = 512;

/// For how many gossip rounds in a row anti-entropy leaves out a key that
/// keeps changing (see `Entry::put_off`): at least this many, and one more
/// per [`PUT_OFF_BYTES_PER_ROUND`] of its encoding.
pub(super) const PUT_OFF_ROUNDS: u64 = 30;

/// Comparing a key that keeps changing encodes it, and nearly always moves
/// it whole (a delta is in flight): a key that large is put off for longer,
/// so that this costs each node about this many bytes per round at most.
pub(super) const PUT_OFF_BYTES_PER_ROUND: usize = 16 * 1024;

/// The incremental hashes of the key space.
pub(crate) struct KeyHashes {
    /// Per bucket, the XOR of what each key whose digest is known adds.
    buckets: Vec<u64>,
    /// Per group, the XOR of its buckets.
    groups: Vec<u64>,
    /// Per bucket, keys changed since their digest was last folded in.
    stale: Vec<Vec<String>>,
    /// Buckets whose list of stale keys may not be empty.
    dirty: Vec<u16>,
    /// How many keys the lists of stale keys hold.
    stale_keys: usize,
    /// Per bucket, the peer it is being reconciled with (by the hash of its
    /// name; 0 for none) and until which round.
    claims: Vec<(u64, u64)>,
    /// Keys asked for and not received yet: of which peer, until which round.
    asked: BTreeMap<String, (u64, u64)>,
}

impl KeyHashes {
    pub(super) fn new() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            groups: vec![0; GROUPS],
            stale: vec![Vec::new(); BUCKETS],
            dirty: Vec::new(),
            stale_keys: 0,
            claims: vec![(0, 0); BUCKETS],
            asked: BTreeMap::new(),
        }
    }

    /// Marks `entry` (of `key`) as changed in gossip round `round`: its
    /// digest is computed and folded into its bucket's hash when next needed.
    pub(super) fn changed(&mut self, key: &str, entry: &mut Entry, round: u64) {
        entry.changed_in = round;
        entry.digest = None;
        if !entry.stale {
            entry.stale = true;
            self.list_stale(entry.bucket, key.to_string());
        }
    }

    /// Adds `key` to the stale keys of `bucket`.
    fn list_stale(&mut self, bucket: u16, key: String) {
        let stale = &mut self.stale[usize::from(bucket)];
        if stale.is_empty() {
            self.dirty.push(bucket);
        }
        stale.push(key);
        self.stale_keys += 1;
    }

    /// Takes the share of a removed entry out of its bucket's hash. (A key
    /// left among the stale ones is skipped when they are refreshed.)
    pub(super) fn forget(&mut self, entry: &Entry) {
        let bucket = usize::from(entry.bucket);
        self.buckets[bucket] ^= entry.folded;
        self.groups[bucket / BUCKETS_PER_GROUP] ^= entry.folded;
    }

    /// Records `digest` as the digest of `entry` (of `key`) and updates its
    /// bucket's hash.
    pub(super) fn fold(&mut self, key: &str, entry: &mut Entry, digest: Digest, round: u64) {
        let hash = key_hash(key, digest);
        let bucket = usize::from(entry.bucket);
        self.buckets[bucket] ^= entry.folded ^ hash;
        self.groups[bucket / BUCKETS_PER_GROUP] ^= entry.folded ^ hash;
        entry.folded = hash;
        entry.digest = Some(digest);
        entry.folded_in = round;
    }
}

/// A set of bucket numbers.
struct BucketSet([u64; BUCKETS / 64]);

impl BucketSet {
    fn new(buckets: impl IntoIterator<Item = u16>) -> Self {
        let mut set = Self([0; BUCKETS / 64]);
        for bucket in buckets {
            let bucket = usize::from(bucket);
            set.0[bucket / 64] |= 1 << (bucket % 64);
        }
        set
    }

    fn contains(&self, bucket: u16) -> bool {
        let bucket = usize::from(bucket);
        self.0[bucket / 64] & (1 << (bucket % 64)) != 0
    }
}

/// A peer as the holder of a claim: two peers whose names hash alike would
/// at worst both send what one bucket lacks.
fn claimant(peer: &str) -> u64 {
    xxh3_64(peer.as_bytes()).max(1)
}

/// Bucket numbers a peer may name: below [`BUCKETS`], each once.
fn valid_buckets(buckets: Vec<u16>) -> BTreeSet<u16> {
    buckets
        .into_iter()
        .filter(|bucket| usize::from(*bucket) < BUCKETS)
        .collect()
}

impl ReplicatorCore {
    /// One anti-entropy round: a summary to one random reachable peer.
    pub(super) fn gossip_round(&mut self) {
        let reachable: Vec<PeerName> = self.reachable_peers().map(str::to_string).collect();
        if reachable.is_empty() {
            return;
        }
        let peer = reachable[self.rng.below(reachable.len())].clone();
        self.send_summary(&peer);
    }

    /// Starts an exchange with `peer` (step 1).
    pub(super) fn send_summary(&mut self, peer: &str) {
        let round = self.round;
        self.hashes.asked.retain(|_, (_, until)| *until >= round);
        self.refresh_all();
        let groups = self.hashes.groups.clone();
        self.send(peer, PeerMessage::Summary { groups });
    }

    /// Step 2: the bucket hashes of the groups that differ, but for buckets
    /// empty here that another peer is filling. An empty bucket is claimed
    /// for `from`, which will fill it.
    pub(super) fn summary_received(&mut self, from: &str, groups: Vec<u64>) {
        if groups.len() != GROUPS {
            self.stats.rejected_entries += 1;
            tracing::warn!(
                peer = from,
                groups = groups.len(),
                "rejected an anti-entropy summary of the wrong size"
            );
            return;
        }
        self.refresh_all();
        let mut hashes = Vec::new();
        for (group, theirs) in groups.into_iter().enumerate() {
            if self.hashes.groups[group] == theirs {
                continue;
            }
            for bucket in group * BUCKETS_PER_GROUP..(group + 1) * BUCKETS_PER_GROUP {
                let bucket = u16::try_from(bucket).unwrap_or(u16::MAX);
                let ours = self.hashes.buckets[usize::from(bucket)];
                if ours == 0 && !self.claim(bucket, from) {
                    continue;
                }
                hashes.push((bucket, ours));
            }
        }
        self.send_bucket_parts(
            from,
            hashes,
            |_| BUCKET_BUDGET + HASH_BUDGET + 1,
            |hashes| PeerMessage::Buckets { hashes },
        );
    }

    /// Sends `items`, each naming a bucket, in messages of at most
    /// [`BUCKETS_PER_MESSAGE`] items (and within the budget).
    fn send_bucket_parts<T>(
        &mut self,
        to: &str,
        items: Vec<T>,
        budget: impl Fn(&T) -> usize,
        message: impl Fn(Vec<T>) -> PeerMessage,
    ) {
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let part: Vec<T> = items.by_ref().take(BUCKETS_PER_MESSAGE).collect();
            self.send_in_parts(to, part, &budget, &message);
        }
    }

    /// Step 3: reconciles each bucket that differs, by the cheapest way its
    /// two hashes allow.
    pub(super) fn buckets_received(&mut self, from: &str, hashes: Vec<(u16, u64)>) {
        let hashes: BTreeMap<u16, u64> = hashes
            .into_iter()
            .filter(|(bucket, _)| usize::from(*bucket) < BUCKETS)
            .collect();
        self.refresh_buckets(hashes.keys().map(|bucket| usize::from(*bucket)));
        let (mut give, mut take, mut compare) = (Vec::new(), Vec::new(), Vec::new());
        for (bucket, theirs) in hashes {
            let ours = self.hashes.buckets[usize::from(bucket)];
            if ours == theirs {
                continue;
            }
            if theirs == 0 {
                give.push(bucket);
            } else if ours == 0 {
                if self.claim(bucket, from) {
                    take.push(bucket);
                }
            } else {
                compare.push(bucket);
            }
        }
        if !give.is_empty() {
            let keys = self.keys_in(&BucketSet::new(give));
            self.send_entries(from, keys);
        }
        self.send_bucket_parts(
            from,
            take,
            |_| BUCKET_BUDGET,
            |buckets| {
                let keys = Vec::new();
                PeerMessage::Request { keys, buckets }
            },
        );
        if !compare.is_empty() {
            let digests = self.digests_in(&BucketSet::new(compare.iter().copied()));
            self.send_digests(from, compare, digests);
        }
    }

    /// Sends this node's `digests` of `buckets` and asks for the answer. The
    /// answer leaves out the keys listed with the same digest in the message
    /// that asks for it, so everything travels in one message when it fits.
    fn send_digests(&mut self, to: &str, buckets: Vec<u16>, digests: Vec<(String, Digest)>) {
        let message = PeerMessage::Digests { buckets, digests };
        if message.budget() <= self.config.max_message_bytes {
            self.send(to, message);
            return;
        }
        let PeerMessage::Digests { buckets, digests } = message else {
            return;
        };
        self.send_digest_lines(to, digests);
        self.send_in_parts(
            to,
            buckets,
            |_| BUCKET_BUDGET,
            |buckets| {
                let digests = Vec::new();
                PeerMessage::Digests { buckets, digests }
            },
        );
    }

    /// Sends digest lines that ask for no answer.
    fn send_digest_lines(&mut self, to: &str, digests: Vec<(String, Digest)>) {
        self.send_in_parts(
            to,
            digests,
            |(key, _)| digest_budget(key),
            |digests| {
                let buckets = Vec::new();
                PeerMessage::Digests { buckets, digests }
            },
        );
    }

    /// Step 4 (and its answer): asks for what differs or is missing here,
    /// and answers with this node's digests of `buckets`.
    pub(super) fn digests_received(
        &mut self,
        from: &str,
        buckets: Vec<u16>,
        digests: Vec<(String, Digest)>,
    ) {
        let mut wanted = Vec::new();
        for (key, theirs) in &digests {
            let ours = if self.entries.contains_key(key) {
                self.digest(key)
            } else {
                None
            };
            let differs = match ours {
                None => true,
                Some(ours) => ours != *theirs && ours != TOMBSTONE_DIGEST,
            };
            if differs && self.ask(key, from) {
                wanted.push(key.clone());
            }
        }
        self.send_in_parts(
            from,
            wanted,
            |key| digest_budget(key),
            |keys| {
                let buckets = Vec::new();
                PeerMessage::Request { keys, buckets }
            },
        );
        let buckets = valid_buckets(buckets);
        if buckets.is_empty() {
            return;
        }
        self.refresh_buckets(buckets.iter().map(|bucket| usize::from(*bucket)));
        let listed: BTreeMap<String, Digest> = digests.into_iter().collect();
        let answer: Vec<(String, Digest)> = self
            .digests_in(&BucketSet::new(buckets))
            .into_iter()
            .filter(|(key, ours)| listed.get(key) != Some(ours))
            .collect();
        self.send_digest_lines(from, answer);
    }

    /// Answers a request with the states of the keys and of every key in the
    /// buckets.
    pub(super) fn request_received(
        &mut self,
        from: &str,
        mut keys: Vec<String>,
        buckets: Vec<u16>,
    ) {
        let buckets = valid_buckets(buckets);
        if !buckets.is_empty() {
            keys.extend(self.keys_in(&BucketSet::new(buckets)));
        }
        self.send_entries(from, keys);
    }

    /// Peer `peer` went away: the buckets it was reconciling are free.
    pub(super) fn release_claims(&mut self, peer: &str) {
        let peer = claimant(peer);
        for claim in &mut self.hashes.claims {
            if claim.0 == peer {
                *claim = (0, 0);
            }
        }
    }

    /// The state of `key` arrived: another peer may be asked for it again.
    pub(super) fn received(&mut self, key: &str) {
        if !self.hashes.asked.is_empty() {
            self.hashes.asked.remove(key);
        }
    }

    /// Whether to ask `peer` for `key`: not while another peer may still be
    /// answering for it.
    fn ask(&mut self, key: &str, peer: &str) -> bool {
        let (round, peer) = (self.round, claimant(peer));
        if let Some((asked, until)) = self.hashes.asked.get(key) {
            if *asked != peer && *until >= round {
                return false;
            }
        }
        self.hashes
            .asked
            .insert(key.to_string(), (peer, round + CLAIM_ROUNDS));
        true
    }

    /// Claims the empty `bucket` for `peer` to fill; false if another peer
    /// holds an unexpired claim on it.
    fn claim(&mut self, bucket: u16, peer: &str) -> bool {
        let (round, peer) = (self.round, claimant(peer));
        let claim = &mut self.hashes.claims[usize::from(bucket)];
        if claim.0 != 0 && claim.0 != peer && claim.1 >= round {
            return false;
        }
        *claim = (peer, round + CLAIM_ROUNDS);
        true
    }

    /// Folds the digests of every stale key into the hashes: key by key, or
    /// in one pass over all keys when many are stale (after a catch-up, say),
    /// which saves looking each up.
    fn refresh_all(&mut self) {
        if self.hashes.stale_keys > self.entries.len() / 8 {
            self.refresh_by_scan();
            return;
        }
        let dirty = std::mem::take(&mut self.hashes.dirty);
        self.refresh_buckets(dirty.into_iter().map(usize::from));
    }

    /// `refresh_all` in one pass over the keys.
    fn refresh_by_scan(&mut self) {
        let round = self.round;
        let hashes = &mut self.hashes;
        for bucket in std::mem::take(&mut hashes.dirty) {
            hashes.stale[usize::from(bucket)].clear();
        }
        hashes.stale_keys = 0;
        for (key, entry) in self.entries.iter_mut() {
            if !entry.stale {
                continue;
            }
            if entry.put_off(round) {
                hashes.list_stale(entry.bucket, key.clone());
                continue;
            }
            entry.stale = false;
            entry_digest(hashes, key, entry, round);
        }
    }

    /// Folds the digests of the stale keys of `buckets` into their hashes.
    /// A key put off keeps its old share (and stays stale): its digest would
    /// be out of date again within the round, and computing it encodes the
    /// whole value.
    fn refresh_buckets(&mut self, buckets: impl IntoIterator<Item = usize>) {
        let round = self.round;
        for bucket in buckets {
            let mut still_stale = Vec::new();
            let keys = std::mem::take(&mut self.hashes.stale[bucket]);
            self.hashes.stale_keys -= keys.len();
            for key in keys {
                let Some(entry) = self.entries.get_mut(&key) else {
                    continue;
                };
                if entry.put_off(round) {
                    still_stale.push(key);
                    continue;
                }
                entry.stale = false;
                entry_digest(&mut self.hashes, &key, entry, round);
            }
            if !still_stale.is_empty() {
                self.hashes.stale_keys += still_stale.len();
                self.hashes.dirty.push(bucket as u16);
                self.hashes.stale[bucket] = still_stale;
            }
        }
    }

    /// The keys of `buckets`.
    fn keys_in(&self, buckets: &BucketSet) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, entry)| buckets.contains(entry.bucket))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The keys of `buckets` with their digests, leaving out the keys put
    /// off (see `Entry::put_off`): only a current digest is worth comparing.
    fn digests_in(&mut self, buckets: &BucketSet) -> Vec<(String, Digest)> {
        let round = self.round;
        let mut digests = Vec::new();
        for key in self.keys_in(buckets) {
            if let Some(entry) = self.entries.get_mut(&key) {
                if entry.put_off(round) {
                    continue;
                }
                entry.compare_in = NEVER;
            }
            if let Some(digest) = self.digest(&key) {
                digests.push((key, digest));
            }
        }
        digests
    }
}
