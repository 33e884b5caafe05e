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

use super::{Effect, PeerName, ReplicatorCore, Slot};
use crate::causal::Dot;
use crate::ddata::wire::{PeerMessage, WireEntry};

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
}

#[derive(Default)]
struct Asked {
    in_round: Option<u64>,
    answer: Option<(u64, BTreeSet<u32>, u32)>,
}

impl Asked {
    fn answered(&self) -> bool {
        self.answer
            .as_ref()
            .is_some_and(|(_, parts, expected)| parts.len() == *expected as usize)
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
            },
        );
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
        for (peer, node, below) in asks {
            self.send(&peer, PeerMessage::Retire { node, below });
        }
        for (node, below) in done {
            if let Some(round) = self.retiring.remove(&node) {
                self.retire_everywhere(&node, below, &round.unsettled);
            }
        }
    }

    /// A member asks for the keys that mention `node` below `below`.
    pub(super) fn retire_asked(&mut self, from: &str, node: &str, below: u64) {
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, entry)| match &entry.slot {
                Slot::Live { data, .. } => data.mentions_erased(node, below),
                Slot::Deleted => false,
            })
            .map(|(key, _)| key.clone())
            .collect();
        let entries: Vec<WireEntry> = keys
            .iter()
            .filter_map(|key| self.sendable_entry(key))
            .collect();
        let limit = self.config.max_message_bytes;
        let mut parts = crate::ddata::wire::split_by_budget(entries, limit, WireEntry::budget);
        if parts.is_empty() {
            parts.push(Vec::new());
        }
        let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        self.answers += 1;
        let (epoch, answer) = (self.epoch, self.answers);
        for (part, entries) in (0..count).zip(parts) {
            self.send(
                from,
                PeerMessage::Retiring {
                    epoch,
                    node: node.to_string(),
                    below,
                    answer,
                    part,
                    parts: count,
                    entries,
                },
            );
        }
    }

    /// A part of a member's answer: its states are merged, and the part
    /// counts towards the round it answers.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn retiring_received(
        &mut self,
        from: &str,
        epoch: u64,
        node: &str,
        below: u64,
        answer: u64,
        part: u32,
        parts: u32,
        entries: Vec<WireEntry>,
    ) {
        let counts = self
            .retiring
            .get(node)
            .is_some_and(|round| round.below == below && part < parts);
        let mut unsettled = Vec::new();
        for entry in entries {
            if counts {
                if let Ok(Slot::Live { data, .. }) = self.decode_slot(entry.value.clone()) {
                    unsettled.push((entry.key.clone(), data.unsettled_erased(node, below)));
                }
            }
            self.merge_remote(from, epoch, entry);
        }
        let Some(round) = self.retiring.get_mut(node).filter(|_| counts) else {
            return;
        };
        for (key, dots) in unsettled.into_iter().filter(|(_, dots)| !dots.is_empty()) {
            round.unsettled.entry(key).or_default().extend(dots);
        }
        let Some(asked) = round.members.get_mut(from) else {
            return;
        };
        match &mut asked.answer {
            Some((current, seen, _)) if *current == answer => {
                seen.insert(part);
            }
            _ => asked.answer = Some((answer, BTreeSet::from([part]), parts)),
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
                self.out.push(Effect::Persist { key });
            }
        }
        self.retired.retire(node, below);
        self.stats.retirements += 1;
        tracing::debug!(node, below, "retired dead incarnations");
    }
}
