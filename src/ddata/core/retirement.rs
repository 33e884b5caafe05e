//! Retirement of dead incarnations: the round that makes it safe.
//!
//! A node restarts under a new incarnation, so its earlier ones are dead, but
//! their entries stay in every key they wrote (see
//! [`ReplicatedData::retire`](crate::ReplicatedData::retire)). A replica may
//! retire them once it holds everything they wrote: they write no more, so
//! it suffices to have every member's states of the keys that mention them,
//! taken after they died. When a core learns a node's incarnation (a
//! [`PeerMessage::Hello`], or its own at start) it plans a round for the
//! node's earlier incarnations; a few gossip rounds later, so that whatever
//! the dead incarnation sent has arrived, it asks every member
//! ([`PeerMessage::Retire`]), merges their answers
//! ([`PeerMessage::Retiring`]), and once every member answered in full it
//! retires those incarnations in every key that mentions them, settling
//! the values nested in maps that no member named differently (see
//! [`ReplicatedData::retire_settled`](crate::ReplicatedData::retire_settled)).
//! The round
//! waits for a member that is down, as a majority does; a removed member
//! no longer counts. A member the core does not know at all cannot be
//! waited for, hence `CoreConfig::retire_incarnations` is for listed
//! members only. Merges then carry the retirement to the replicas that
//! have not run their own round yet.

use std::collections::{BTreeMap, BTreeSet};

use super::{Output, PeerName, ReplicatorCore, Slot};
use crate::causal::{Dot, ReplicaId};
use crate::ddata::wire::{
    digest_budget, digest_of, split_by_budget, Digest, PeerMessage, WireEntry,
};

/// Gossip rounds between learning a node's new incarnation and asking the
/// members about its earlier ones: what the dead incarnation sent before
/// it stopped has been delivered by then.
const GRACE_ROUNDS: u64 = 3;

/// Gossip rounds before a member that has not answered in full is asked
/// again (an answer may be large; asking every round would resend it).
const ASK_AGAIN_ROUNDS: u64 = 5;

/// A round for the earlier incarnations of one node.
pub(crate) struct Round {
    /// Incarnations below this one are dead.
    below: u64,
    /// The gossip round from which members are asked.
    asks_from: u64,
    /// Per member: the round it was last asked in, and the answer whose
    /// parts have arrived (its number, the parts seen, how many it has).
    members: BTreeMap<PeerName, Asked>,
    /// Per key: the nested values that the members' answers held unsettled
    /// (see [`ReplicatedData::unsettled`](crate::ReplicatedData::unsettled)).
    unsettled: BTreeMap<String, BTreeSet<Dot>>,
    /// Per digest sent in a [`PeerMessage::Retire`]: what this replica held
    /// unsettled when its list had that digest, which a member whose list
    /// is alike holds too.
    asked: BTreeMap<Digest, Vec<(String, Vec<Dot>)>>,
}

#[derive(Default)]
struct Asked {
    in_round: Option<u64>,
    answer: Option<(u64, BTreeSet<u32>, u32)>,
    /// Keys whose digests differed from this replica's: their states are
    /// requested, and the answer is complete once they arrived.
    wanted: BTreeSet<String>,
}

impl Asked {
    fn answered(&self) -> bool {
        self.wanted.is_empty()
            && self
                .answer
                .as_ref()
                .is_some_and(|(_, parts, expected)| parts.len() == *expected as usize)
    }
}

impl Round {
    /// Notes what a member holds unsettled, per key.
    fn note_unsettled(&mut self, keys: Vec<(String, Vec<Dot>)>) {
        for (key, dots) in keys.into_iter().filter(|(_, dots)| !dots.is_empty()) {
            self.unsettled.entry(key).or_default().extend(dots);
        }
    }
}

impl ReplicatorCore {
    /// Plans a round for the incarnations of `node` below `below`, unless
    /// one reaching as far is planned or done.
    pub(super) fn plan_retirement(&mut self, node: &str, below: u64) {
        if !self.config.retire_incarnations
            || below <= self.retired.below(node)
            || self
                .retiring
                .get(node)
                .is_some_and(|round| round.below >= below)
        {
            return;
        }
        self.retiring.insert(
            node.to_string(),
            Round {
                below,
                asks_from: self.round + GRACE_ROUNDS,
                members: BTreeMap::new(),
                unsettled: BTreeMap::new(),
                asked: BTreeMap::new(),
            },
        );
    }

    /// A peer said which incarnation it writes under: the earlier ones of
    /// its node are dead.
    pub(super) fn hello_received(&mut self, replica: &ReplicaId) {
        let (node, incarnation) = (replica.node(), replica.incarnation());
        if self.retired.covers(replica) {
            self.stats.retired_hellos += 1;
            tracing::error!(
                %replica,
                "a peer writes under a retired incarnation (it was removed, then came back \
                 without restarting); its writes are ignored: restart it"
            );
        }
        let latest = self.incarnations.entry(node.to_string()).or_insert(0);
        *latest = (*latest).max(incarnation);
        self.plan_retirement(node, incarnation);
    }

    /// At each gossip round: asks the members that have not answered, and
    /// retires where every member has.
    pub(super) fn drive_retirements(&mut self) {
        if self.retiring.is_empty() {
            return;
        }
        let round_now = self.round;
        let mut done = Vec::new();
        let mut asks = Vec::new();
        for (node, round) in &mut self.retiring {
            if round.asks_from > round_now {
                continue;
            }
            let mut complete = true;
            for (peer, reachable) in &self.peers {
                let asked = round.members.entry(peer.clone()).or_default();
                if asked.answered() {
                    continue;
                }
                complete = false;
                let due = asked
                    .in_round
                    .is_none_or(|last| round_now >= last + ASK_AGAIN_ROUNDS);
                if *reachable && due {
                    asked.in_round = Some(round_now);
                    asks.push((peer.clone(), node.clone(), round.below));
                }
            }
            if complete {
                done.push((node.clone(), round.below));
            }
        }
        let mut listed: BTreeMap<String, Digest> = BTreeMap::new();
        for (peer, node, below) in asks {
            let digest = match listed.get(&node) {
                Some(digest) => *digest,
                None => {
                    let digest = self.listed_for_round(&node, below);
                    listed.insert(node.clone(), digest);
                    digest
                }
            };
            self.send(
                &peer,
                PeerMessage::Retire {
                    node,
                    below,
                    digest,
                },
            );
        }
        for (node, below) in done {
            if let Some(round) = self.retiring.remove(&node) {
                self.retire_everywhere(&node, below, &round.unsettled);
            }
        }
    }

    /// The digest of this replica's list of the keys that mention `node`
    /// below `below`, to send in a [`PeerMessage::Retire`]; the round
    /// remembers what those keys held unsettled then.
    fn listed_for_round(&mut self, node: &str, below: u64) -> Digest {
        let (digest, keys) = self.mentioning(node, below);
        let unsettled = keys
            .iter()
            .map(|(key, _)| (key.clone(), self.unsettled_of(key, node, below)))
            .filter(|(_, dots)| !dots.is_empty())
            .collect();
        if let Some(round) = self.retiring.get_mut(node) {
            round.asked.entry(digest).or_insert(unsettled);
        }
        digest
    }

    /// The keys that mention `node` below `below`, with their digests, and
    /// the digest of that list.
    fn mentioning(&mut self, node: &str, below: u64) -> (Digest, Vec<(String, Digest)>) {
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, entry)| match &entry.slot {
                Slot::Live { data, .. } => data.mentions_erased(node, below),
                Slot::Deleted => false,
            })
            .map(|(key, _)| key.clone())
            .collect();
        let digests: Vec<(String, Digest)> = keys
            .into_iter()
            .filter_map(|key| self.digest(&key).map(|digest| (key, digest)))
            .collect();
        let mut listing = Vec::new();
        for (key, digest) in &digests {
            listing.extend_from_slice(key.as_bytes());
            listing.push(0);
            listing.extend_from_slice(&digest.to_le_bytes());
        }
        (digest_of(&listing), digests)
    }

    /// A member asks about the keys that mention `node` below `below`: it
    /// gets one line if this replica's list of them is its own (`digest`),
    /// else their digests, and asks for the states that differ.
    pub(super) fn retire_asked(&mut self, from: &str, node: &str, below: u64, digest: Digest) {
        let (mine, digests) = self.mentioning(node, below);
        let (alike, digests) = if mine == digest {
            (Some(digest), Vec::new())
        } else {
            (None, digests)
        };
        let limit = self.config.max_message_bytes;
        let mut parts = split_by_budget(digests, limit, |(key, _)| digest_budget(key));
        if parts.is_empty() {
            parts.push(Vec::new());
        }
        let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        self.answers += 1;
        let answer = self.answers;
        for (part, digests) in (0..count).zip(parts) {
            self.send(
                from,
                PeerMessage::Retiring {
                    node: node.to_string(),
                    below,
                    answer,
                    part,
                    parts: count,
                    alike,
                    digests,
                },
            );
        }
    }

    /// A part of a member's answer. A member whose whole list is alike
    /// holds what this replica held when it asked; a key whose digest is
    /// this replica's is held alike by both (and unsettled alike); the
    /// states of the others are requested, and the answer waits for them.
    pub(super) fn retiring_received(
        &mut self,
        from: &str,
        node: &str,
        below: u64,
        (answer, part, parts): (u64, u32, u32),
        alike: Option<Digest>,
        digests: Vec<(String, Digest)>,
    ) {
        let counts = self.retiring.get(node).is_some_and(|round| {
            round.below == below
                && part < parts
                && round.members.contains_key(from)
                && alike.is_none_or(|digest| round.asked.contains_key(&digest))
        });
        if !counts {
            return;
        }
        let mut same = Vec::new();
        let mut differing = Vec::new();
        for (key, digest) in digests {
            if self.digest(&key) == Some(digest) {
                let unsettled = self.unsettled_of(&key, node, below);
                same.push((key, unsettled));
            } else {
                differing.push(key);
            }
        }
        let Some(round) = self.retiring.get_mut(node) else {
            return;
        };
        if let Some(listed) = alike.and_then(|digest| round.asked.get(&digest)) {
            same.extend(listed.iter().cloned());
        }
        round.note_unsettled(same);
        let Some(asked) = round.members.get_mut(from) else {
            return;
        };
        match &mut asked.answer {
            Some((current, seen, _)) if *current == answer => {
                seen.insert(part);
            }
            _ => {
                asked.answer = Some((answer, BTreeSet::from([part]), parts));
                asked.wanted.clear();
            }
        }
        asked.wanted.extend(differing.iter().cloned());
        if !differing.is_empty() {
            self.send(
                from,
                PeerMessage::Request {
                    keys: differing,
                    buckets: Vec::new(),
                },
            );
        }
    }

    /// A peer's state of a key arrived: if a round waits for it from that
    /// peer, what it holds unsettled counts, and the round waits no more.
    pub(super) fn state_for_retirement(&mut self, from: &str, entry: &WireEntry) {
        let waiting: Vec<(String, u64)> = self
            .retiring
            .iter()
            .filter(|(_, round)| {
                round
                    .members
                    .get(from)
                    .is_some_and(|asked| asked.wanted.contains(&entry.key))
            })
            .map(|(node, round)| (node.clone(), round.below))
            .collect();
        if waiting.is_empty() {
            return;
        }
        let data = match self.decode_slot(entry.value.clone()) {
            Ok(Slot::Live { data, .. }) => Some(data),
            _ => None,
        };
        for (node, below) in waiting {
            let unsettled = data
                .as_ref()
                .map_or_else(Vec::new, |data| data.unsettled_erased(&node, below));
            if let Some(round) = self.retiring.get_mut(&node) {
                round.note_unsettled(vec![(entry.key.clone(), unsettled)]);
                if let Some(asked) = round.members.get_mut(from) {
                    asked.wanted.remove(&entry.key);
                }
            }
        }
    }

    /// What this replica's state of `key` holds unsettled.
    fn unsettled_of(&self, key: &str, node: &str, below: u64) -> Vec<Dot> {
        match self.entries.get(key).map(|entry| &entry.slot) {
            Some(Slot::Live { data, .. }) => data.unsettled_erased(node, below),
            _ => Vec::new(),
        }
    }

    /// Retires the incarnations of `node` below `below` in every key that
    /// mentions them, and in the nested values settled across the members
    /// (`unsettled`: what their answers held unsettled, per key). Values do
    /// not change, so listeners hear nothing; the keys' digests do, and
    /// durable keys are stored again.
    fn retire_everywhere(
        &mut self,
        node: &str,
        below: u64,
        unsettled: &BTreeMap<String, BTreeSet<Dot>>,
    ) {
        let round = self.round;
        let mut changed = Vec::new();
        for (key, entry) in &mut self.entries {
            if let Slot::Live { data, .. } = &mut entry.slot {
                let elsewhere: Vec<Dot> = unsettled
                    .get(key)
                    .map_or_else(Vec::new, |dots| dots.iter().cloned().collect());
                if data.retire_settled_erased(node, below, &elsewhere) {
                    entry.grew(None);
                    self.hashes.changed(key, entry, round);
                    changed.push(key.clone());
                }
            }
        }
        for key in changed {
            if self.config.durable.contains(&key) {
                self.out.push(Output::Persist { key });
            }
        }
        self.retired.retire(node, below);
        self.stats.retirements += 1;
        tracing::debug!(node, below, "retired dead incarnations");
    }
}
