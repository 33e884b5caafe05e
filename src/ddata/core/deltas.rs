//! Delta propagation: a local update travels as the operations it applied,
//! numbered per key in the sender's sequence, and a receiver applies them
//! only in that order.
//!
//! A receiver that finds a number missing (a push lost in a reconnect, sent
//! while the link was down, or overtaken) applies nothing and asks for the
//! whole state, which covers every number up to its own; anti-entropy still
//! repairs whatever a lost answer leaves behind. Numbers restart in every
//! epoch (each start of a core draws a new one), so a receiver never mistakes
//! a restarted sender's numbers for ones it has applied.

use super::{Entry, PeerName, ReplicatorCore, Slot};
use crate::ddata::tracked::Recording;
use crate::ddata::wire::{digest_budget, PeerMessage, WireChange, WireDelta, WireValue};
use crate::error::{Chain, Error, Result};

/// How far one peer's sequence for one key has been applied here.
#[derive(Debug)]
pub(crate) struct Heard {
    peer: PeerName,
    epoch: u64,
    /// The last number applied (or covered by a whole state).
    seq: u64,
    /// One more than the gossip round in which this node last asked the peer
    /// for the whole state; 0 if never.
    asked_in_round: u64,
}

/// What became of a received delta.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Received {
    /// Applied or merged (or already held).
    Applied,
    /// An earlier number has not arrived: nothing was applied.
    Missing,
    /// Bad bytes, an unknown type or a type clash; logged and counted.
    Rejected,
}

impl Entry {
    fn heard_from(&mut self, peer: &str, epoch: u64) -> &mut Heard {
        let index = match self.heard.iter().position(|heard| heard.peer == peer) {
            Some(index) => index,
            None => {
                self.heard.push(Heard {
                    peer: peer.to_string(),
                    epoch,
                    seq: 0,
                    asked_in_round: 0,
                });
                self.heard.len() - 1
            }
        };
        let heard = &mut self.heard[index];
        if heard.epoch != epoch {
            *heard = Heard {
                peer: peer.to_string(),
                epoch,
                seq: 0,
                asked_in_round: 0,
            };
        }
        heard
    }
}

impl ReplicatorCore {
    /// Numbers the local changes of `key` since its last push as its next
    /// delta: the operations when they were recorded, the whole state
    /// otherwise. `None` if the key is absent; an error if its state cannot
    /// travel (the number is spent all the same, so receivers see the gap).
    pub(super) fn take_delta(&mut self, key: &str) -> Option<Result<WireDelta>> {
        let lifetime = self.lifetime(key);
        let entry = self.entries.get_mut(key)?;
        let prev = entry.pushed;
        self.pushes += 1;
        entry.pushed = self.pushes;
        entry.spread_used = entry.used;
        let seq = entry.pushed;
        let ops = match entry.unpushed.take() {
            Some(Recording::Ops { ops, .. }) => Some(ops),
            _ => None,
        };
        let tag = match &entry.slot {
            Slot::Live { tag, .. } => Some(tag.to_string()),
            Slot::Deleted => None,
        };
        let change = match (ops, tag) {
            (Some(ops), Some(tag)) => WireChange::Ops { tag, ops },
            _ => match self.encode_entry(key)? {
                Ok(entry) => WireChange::State(entry.value),
                Err(err) => return Some(Err(err)),
            },
        };
        Some(Ok(WireDelta {
            key: key.to_string(),
            prev,
            seq,
            change,
            lifetime,
        }))
    }

    /// Forgets the local changes of `key` since its last push, spending their
    /// number: no peer was there to receive them, and each will ask for the
    /// whole state when it sees the gap.
    pub(super) fn skip_delta(&mut self, key: &str) {
        if let Some(entry) = self.entries.get_mut(key) {
            self.pushes += 1;
            entry.pushed = self.pushes;
            entry.unpushed = None;
        }
    }

    /// The whole state of `key` under the number of its last push (changes
    /// not pushed yet are in it too; their delta will be a duplicate).
    fn numbered_state(&mut self, key: &str) -> Option<WireDelta> {
        let entry = self.sendable_entry(key)?;
        Some(WireDelta {
            key: entry.key,
            prev: 0,
            seq: entry.seq,
            change: WireChange::State(entry.value),
            lifetime: entry.lifetime,
        })
    }

    /// Deltas pushed by `from`: applies those that are next in its sequence
    /// and asks for the states of keys with a gap.
    pub(super) fn receive_deltas(&mut self, from: &str, epoch: u64, deltas: Vec<WireDelta>) {
        let mut missing = Vec::new();
        for delta in deltas {
            let key = delta.key.clone();
            if self.receive_delta(from, epoch, delta) == Received::Missing
                && self.ask_once_a_round(from, epoch, &key)
            {
                missing.push(key);
            }
        }
        self.send_in_parts(
            from,
            missing,
            |key| digest_budget(key),
            |keys| PeerMessage::DeltaNack { keys },
        );
    }

    /// Whether to ask `from` for the state of `key` now: once per gossip
    /// round, so that a burst of deltas behind one gap asks once, and a lost
    /// answer is asked for again a round later.
    fn ask_once_a_round(&mut self, from: &str, epoch: u64, key: &str) -> bool {
        let round = self.round + 1;
        let Some(entry) = self.entries.get_mut(key) else {
            return true;
        };
        let heard = entry.heard_from(from, epoch);
        let ask = heard.asked_in_round != round;
        heard.asked_in_round = round;
        ask
    }

    /// Applies one delta from `from` if it follows the last one applied of
    /// its key (or a whole state, which is always merged). A delta last used
    /// so long ago that the key expired here is ignored.
    pub(super) fn receive_delta(&mut self, from: &str, epoch: u64, delta: WireDelta) -> Received {
        let WireDelta {
            key,
            prev,
            seq,
            change,
            lifetime,
        } = delta;
        let deleted = matches!(change, WireChange::State(WireValue::Deleted));
        if self.arrived_expired(&key, deleted, lifetime) {
            return Received::Applied;
        }
        self.make_way(&key, lifetime);
        let outcome = match change {
            WireChange::State(value) => {
                let bytes = value.encoded_len();
                self.decode_slot(value)
                    .and_then(|slot| self.merge_slot(&key, slot, Some(bytes)))
                    .map(|_| Received::Applied)
            }
            WireChange::Ops { tag, ops } => {
                let heard = match self.entries.get_mut(&key) {
                    Some(entry) => entry.heard_from(from, epoch).seq,
                    None => 0,
                };
                if seq <= heard {
                    return Received::Applied;
                }
                if prev != heard {
                    self.stats.missing_deltas += 1;
                    return Received::Missing;
                }
                if ops.is_empty() {
                    // A use spread by a read: nothing to apply.
                    Ok(Received::Applied)
                } else {
                    self.apply_ops(&key, &tag, &ops).map(|()| Received::Applied)
                }
            }
        };
        match outcome {
            Ok(received) => {
                if let Some(entry) = self.entries.get_mut(&key) {
                    let heard = entry.heard_from(from, epoch);
                    heard.seq = heard.seq.max(seq);
                }
                self.merged_use(&key, lifetime);
                received
            }
            Err(err) => {
                self.stats.rejected_entries += 1;
                tracing::warn!(peer = from, key, error = %Chain(&err), "rejected a replicated delta");
                Received::Rejected
            }
        }
    }

    /// Applies encoded operations to the local value of `key` (an empty one
    /// if absent); a tombstone ignores them.
    fn apply_ops(&mut self, key: &str, tag: &str, ops: &[serde_bytes::ByteBuf]) -> Result<()> {
        let canonical = self
            .types
            .canonical_tag(tag)
            .ok_or_else(|| Error::UnregisteredType {
                what: format!("tag {tag:?}"),
            })?;
        let types = self.types.clone();
        let created = !self.entries.contains_key(key);
        if created {
            let empty = types.empty_value(&canonical)?;
            self.entries.insert(
                key.to_string(),
                Entry::new(
                    key,
                    Slot::Live {
                        tag: canonical.clone(),
                        data: empty,
                    },
                ),
            );
        }
        let Some(entry) = self.entries.get_mut(key) else {
            return Ok(());
        };
        let applied = match &mut entry.slot {
            Slot::Deleted => return Ok(()),
            Slot::Live { tag: found, data } => {
                if *found != canonical {
                    return Err(super::wrong_type(key, found, &canonical));
                }
                types.apply_ops(&canonical, data.as_mut(), ops)
            }
        };
        if let Err(err) = applied {
            if created {
                self.entries.remove(key);
            }
            return Err(err);
        }
        entry.grew(Some(ops.iter().map(|op| op.len()).sum()));
        self.stats.deltas_applied += 1;
        self.stats.changing_merges += 1;
        self.mark_changed(key);
        Ok(())
    }

    /// `from` could not apply the deltas of `keys`: it gets their whole
    /// states, numbered; a key with a write of this node it has not
    /// acknowledged gets that write again, carrying the state.
    pub(super) fn delta_nacked(&mut self, from: &str, keys: Vec<String>) {
        let mut states = Vec::new();
        for key in keys {
            let Some(state) = self.numbered_state(&key) else {
                continue;
            };
            let writes = self.unacked_writes_of(&key, from);
            if writes.is_empty() {
                states.push(state);
                continue;
            }
            for request in writes {
                self.send(
                    from,
                    PeerMessage::Write {
                        request,
                        epoch: self.epoch,
                        delta: state.clone(),
                    },
                );
            }
        }
        self.send_deltas(from, states);
    }

    /// Sends `deltas` to `to`, in as many messages as the budget needs.
    pub(super) fn send_deltas(&mut self, to: &str, deltas: Vec<WireDelta>) {
        let epoch = self.epoch;
        self.send_in_parts(to, deltas, WireDelta::budget, |deltas| {
            PeerMessage::Deltas { epoch, deltas }
        });
    }
}
