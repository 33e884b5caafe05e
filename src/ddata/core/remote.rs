//! The verbs that come from outside the local user: peer messages and timers,
//! and the gossip they drive (eager push and digest anti-entropy).

use std::collections::BTreeSet;

use super::deltas::Received;
use super::{Effect, PeerName, ReplicatorCore, Slot, Timer};
use crate::ddata::wire::{
    chunk_of, digest_budget, split_by_budget, Digest, PeerMessage, WireChange, WireDelta,
    WireEntry, WireValue, TOMBSTONE_DIGEST,
};
use crate::error::{Error, Result};

impl ReplicatorCore {
    /// A message from the Replicator of node `from`.
    pub fn handle_message(&mut self, from: &str, message: PeerMessage) -> Vec<Effect> {
        match message {
            PeerMessage::Entries { epoch, entries } => {
                for entry in entries {
                    self.merge_remote(from, epoch, entry);
                }
            }
            PeerMessage::Write {
                request,
                epoch,
                delta,
            } => {
                let key = delta.key.clone();
                match self.receive_delta(from, epoch, delta) {
                    Received::Applied => self.send(from, PeerMessage::WriteAck { request }),
                    Received::Missing => {
                        self.send(from, PeerMessage::DeltaNack { keys: vec![key] })
                    }
                    Received::Rejected => {}
                }
            }
            PeerMessage::WriteAck { request } => self.write_acked(from, request),
            PeerMessage::Read { request, key } => self.answer_read(from, request, &key),
            PeerMessage::ReadReply { request, entry } => self.read_answered(from, request, entry),
            PeerMessage::Digest {
                chunk,
                of_chunks,
                complete,
                digests,
            } => self.compare_digests(from, chunk, of_chunks, complete, digests),
            PeerMessage::Request { keys } => self.send_entries(from, keys),
            PeerMessage::Deltas { epoch, deltas } => self.receive_deltas(from, epoch, deltas),
            PeerMessage::DeltaNack { keys } => self.delta_nacked(from, keys),
        }
        self.take_effects()
    }

    /// A timer asked for in an [`Effect::Schedule`] fired.
    pub fn handle_timer(&mut self, timer: Timer) -> Vec<Effect> {
        match timer {
            Timer::Gossip => {
                self.round += 1;
                self.schedule(Timer::Gossip, self.config.gossip_interval);
                self.gossip_round();
            }
            Timer::Push => self.push(),
            Timer::Notify => self.notify(),
            Timer::Deadline(id) => self.deadline_passed(id),
            Timer::Resend => self.resend_due(),
        }
        self.take_effects()
    }

    /// Merges a state from `from`: it covers `from`'s deltas of its key up to
    /// the entry's number. A rejected entry is logged and counted and changes
    /// nothing.
    fn merge_remote(&mut self, from: &str, epoch: u64, entry: WireEntry) {
        let WireEntry { key, value, seq } = entry;
        let state = WireDelta {
            key,
            seq,
            change: WireChange::State(value),
        };
        self.receive_delta(from, epoch, state);
    }

    pub(super) fn decode_slot(&self, value: WireValue) -> Result<Slot> {
        match value {
            WireValue::Deleted => Ok(Slot::Deleted),
            WireValue::Live { tag, state } => {
                let canonical =
                    self.types
                        .canonical_tag(&tag)
                        .ok_or_else(|| Error::UnregisteredType {
                            what: format!("tag {tag:?}"),
                        })?;
                let data = self.types.decode(&canonical, &state)?;
                Ok(Slot::Live {
                    tag: canonical,
                    data,
                })
            }
        }
    }

    /// Merges `incoming` into the local state of `key`; says whether it changed.
    pub(super) fn merge_slot(&mut self, key: &str, incoming: Slot) -> Result<bool> {
        let changed = match self.entries.get_mut(key) {
            None => {
                self.entries
                    .insert(key.to_string(), super::Entry::new(incoming));
                true
            }
            Some(entry) => {
                let changed = entry.slot.merge(incoming, key)?;
                if changed {
                    entry.digest = None;
                }
                changed
            }
        };
        if changed {
            self.stats.changing_merges += 1;
            self.mark_changed(key);
        }
        Ok(changed)
    }

    fn gossip_round(&mut self) {
        let reachable: Vec<PeerName> = self.reachable_peers().map(str::to_string).collect();
        if reachable.is_empty() {
            return;
        }
        let peer = reachable[self.rng.below(reachable.len())].clone();
        let chunks = self.digest_chunk_count();
        let chunk = self.next_digest_chunk % chunks;
        self.next_digest_chunk = chunk.wrapping_add(1);
        self.send_digest_chunk(&peer, chunk, chunks);
    }

    /// Into how many chunks the keys are divided so that one round's digests
    /// stay within both the per-round key limit and half a message.
    fn digest_chunk_count(&self) -> u32 {
        let keys = self.entries.len();
        let by_count = keys.div_ceil(self.config.max_digest_keys_per_round.max(1));
        let bytes: usize = self.entries.keys().map(|key| digest_budget(key)).sum();
        let by_bytes = (2 * bytes).div_ceil(self.config.max_message_bytes.max(1));
        u32::try_from(by_count.max(by_bytes).max(1)).unwrap_or(u32::MAX)
    }

    pub(super) fn send_all_digests(&mut self, peer: &str) {
        let chunks = self.digest_chunk_count();
        for chunk in 0..chunks {
            self.send_digest_chunk(peer, chunk, chunks);
        }
    }

    fn send_digest_chunk(&mut self, peer: &str, chunk: u32, of_chunks: u32) {
        let keys: Vec<String> = self
            .entries
            .keys()
            .filter(|key| of_chunks <= 1 || chunk_of(key, of_chunks) == chunk)
            .cloned()
            .collect();
        let digests: Vec<(String, Digest)> = keys
            .into_iter()
            .filter_map(|key| self.digest(&key).map(|digest| (key, digest)))
            .collect();
        let mut parts = split_by_budget(digests, self.config.max_message_bytes, |(key, _)| {
            digest_budget(key)
        });
        if parts.is_empty() {
            // An empty chunk still tells the peer to send what this node lacks.
            parts.push(Vec::new());
        }
        let complete = parts.len() == 1;
        for digests in parts {
            self.send(
                peer,
                PeerMessage::Digest {
                    chunk,
                    of_chunks,
                    complete,
                    digests,
                },
            );
        }
    }

    /// Answers a digest: sends the states that differ or that the peer lacks,
    /// and asks for those that differ or that this node lacks.
    fn compare_digests(
        &mut self,
        from: &str,
        chunk: u32,
        of_chunks: u32,
        complete: bool,
        digests: Vec<(String, Digest)>,
    ) {
        let mut to_send = Vec::new();
        let mut wanted = Vec::new();
        for (key, theirs) in &digests {
            if !self.entries.contains_key(key) {
                wanted.push(key.clone());
                continue;
            }
            let Some(ours) = self.digest(key) else {
                continue;
            };
            if ours == *theirs {
                continue;
            }
            // A tombstone wins every merge: nothing needs to travel towards it.
            if *theirs != TOMBSTONE_DIGEST {
                to_send.push(key.clone());
            }
            if ours != TOMBSTONE_DIGEST {
                wanted.push(key.clone());
            }
        }
        if complete {
            let listed: BTreeSet<&str> = digests.iter().map(|(key, _)| key.as_str()).collect();
            to_send.extend(
                self.entries
                    .keys()
                    .filter(|key| of_chunks <= 1 || chunk_of(key, of_chunks) == chunk)
                    .filter(|key| !listed.contains(key.as_str()))
                    .cloned(),
            );
        }
        self.send_entries(from, to_send);
        let limit = self.config.max_message_bytes;
        for keys in split_by_budget(wanted, limit, |key| digest_budget(key)) {
            self.send(from, PeerMessage::Request { keys });
        }
    }

    pub(super) fn send_entries(&mut self, to: &str, keys: Vec<String>) {
        let entries: Vec<WireEntry> = keys
            .iter()
            .filter_map(|key| self.sendable_entry(key))
            .collect();
        let limit = self.config.max_message_bytes;
        for entries in split_by_budget(entries, limit, WireEntry::budget) {
            self.send(
                to,
                PeerMessage::Entries {
                    epoch: self.epoch,
                    entries,
                },
            );
        }
    }

    /// Eager push: what changed in the keys updated locally since the last
    /// push goes to every reachable peer as their next deltas, and a window
    /// opens in which further changes collect. Unreachable peers find the gap
    /// in the numbers later and ask for the states, or catch up by
    /// anti-entropy.
    pub(super) fn push(&mut self) {
        let keys = std::mem::take(&mut self.to_push);
        self.push_window_open = !keys.is_empty();
        if !self.push_window_open {
            return;
        }
        self.schedule(Timer::Push, self.config.push_window);
        let peers: Vec<PeerName> = self.reachable_peers().map(str::to_string).collect();
        if peers.is_empty() {
            for key in &keys {
                self.skip_delta(key);
            }
            return;
        }
        let mut deltas = Vec::new();
        for key in &keys {
            if let Some(taken) = self.take_delta(key) {
                deltas.extend(self.sendable(key, taken));
            }
        }
        let limit = self.config.max_message_bytes;
        for deltas in split_by_budget(deltas, limit, WireDelta::budget) {
            for peer in &peers {
                self.send(
                    peer,
                    PeerMessage::Deltas {
                        epoch: self.epoch,
                        deltas: deltas.clone(),
                    },
                );
            }
        }
    }
}
