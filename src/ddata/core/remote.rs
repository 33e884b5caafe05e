//! The verbs that come from outside the local user: peer messages and timers,
//! and the eager push.

use super::deltas::Received;
use super::{Output, PeerName, ReplicatorCore, Slot, Timer};
use crate::ddata::wire::{PeerMessage, WireChange, WireDelta, WireEntry, WireValue};
use crate::error::{Error, Result};

impl ReplicatorCore {
    /// A message from the Replicator of node `from`.
    pub fn handle_message(&mut self, from: &str, message: PeerMessage) -> Vec<Output> {
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
            PeerMessage::Summary { groups } => self.summary_received(from, groups),
            PeerMessage::Buckets { hashes } => self.buckets_received(from, hashes),
            PeerMessage::Digests { buckets, digests } => {
                self.digests_received(from, buckets, digests)
            }
            PeerMessage::Request { keys, buckets } => self.request_received(from, keys, buckets),
            PeerMessage::Deltas { epoch, deltas } => self.receive_deltas(from, epoch, deltas),
            PeerMessage::DeltaNack { keys } => self.delta_nacked(from, keys),
            PeerMessage::Hello { replica } => self.hello_received(&replica),
            PeerMessage::Retire {
                node,
                below,
                digest,
            } => self.retire_asked(from, &node, below, digest),
            PeerMessage::Retiring {
                node,
                below,
                answer,
                part,
                parts,
                alike,
                digests,
            } => self.retiring_received(from, &node, below, (answer, part, parts), alike, digests),
        }
        self.take_outputs()
    }

    /// A timer asked for in an [`Output::Schedule`] fired.
    pub fn handle_timer(&mut self, timer: Timer) -> Vec<Output> {
        match timer {
            Timer::Gossip => {
                self.round += 1;
                self.schedule(Timer::Gossip, self.config.gossip_interval);
                self.expire_due();
                self.drive_retirements();
                self.gossip_round();
            }
            Timer::Push => self.push(),
            Timer::Notify => self.notify(),
            Timer::Deadline(id) => self.deadline_passed(id),
            Timer::Resend => self.resend_due(),
        }
        self.take_outputs()
    }

    /// Merges a state from `from`: it covers `from`'s deltas of its key up to
    /// the entry's number. A rejected entry is logged and counted and changes
    /// nothing.
    pub(super) fn merge_remote(&mut self, from: &str, epoch: u64, entry: WireEntry) {
        self.state_for_retirement(from, &entry);
        let WireEntry {
            key,
            value,
            seq,
            lifetime,
        } = entry;
        self.received(&key);
        let state = WireDelta {
            key,
            prev: 0,
            seq,
            change: WireChange::State(value),
            lifetime,
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

    /// Merges `incoming`, encoded in `bytes` if known, into the local state
    /// of `key`; says whether it changed.
    pub(super) fn merge_slot(
        &mut self,
        key: &str,
        incoming: Slot,
        bytes: Option<usize>,
    ) -> Result<bool> {
        let round = self.round;
        let changed = match self.entries.get_mut(key) {
            None => {
                let mut entry = super::Entry::new(key, incoming);
                entry.grew(bytes);
                self.hashes.changed(key, &mut entry, round);
                self.entries.insert(key.to_string(), entry);
                true
            }
            Some(entry) => {
                let changed = entry.slot.merge(incoming, key)?;
                if changed {
                    entry.grew(bytes);
                    self.hashes.changed(key, entry, round);
                }
                changed
            }
        };
        if changed {
            self.stats.changing_merges += 1;
            self.changed_beyond_entry(key);
        }
        Ok(changed)
    }

    pub(super) fn send_entries(&mut self, to: &str, keys: Vec<String>) {
        let entries: Vec<WireEntry> = keys
            .iter()
            .filter_map(|key| self.sendable_entry(key))
            .collect();
        let epoch = self.epoch;
        self.send_in_parts(to, entries, WireEntry::budget, |entries| {
            PeerMessage::Entries { epoch, entries }
        });
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
        for peer in &peers {
            self.send_deltas(peer, deltas.clone());
        }
    }
}
