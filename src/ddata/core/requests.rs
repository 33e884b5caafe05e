//! Writes and reads above `Local` consistency: who was asked, who answered,
//! and what happens at the deadline.

use std::time::Duration;

use super::{Output, PeerName, ReplicatorCore, RequestId, Slot, Timer};
use crate::ddata::consistency::ReadConsistency;
use crate::ddata::wire::{
    digest_of, Digest, Lifetime, PeerMessage, WireDelta, WireEntry, WireValue, TOMBSTONE_DIGEST,
};
use crate::error::{Chain, Error, Operation, Result};

/// When a pending request goes out again, in resend ticks.
#[derive(Clone, Copy)]
pub(crate) struct Backoff {
    /// Ticks until the next send.
    due_in: u32,
    /// Ticks between the last send and the next.
    interval: u32,
}

/// The longest wait between two sends of a request, in resend ticks.
const MAX_RESEND_TICKS: u32 = 8;

impl Backoff {
    fn new() -> Self {
        Self {
            due_in: 1,
            interval: 1,
        }
    }

    /// Counts one tick; whether the request is due now (and if so, doubles
    /// the wait until the next time).
    fn tick(&mut self) -> bool {
        self.due_in = self.due_in.saturating_sub(1);
        if self.due_in > 0 {
            return false;
        }
        self.interval = (self.interval * 2).min(MAX_RESEND_TICKS);
        self.due_in = self.interval;
        true
    }
}

pub(crate) struct PendingWrite {
    request: RequestId,
    key: String,
    required: usize,
    /// Nodes holding the write, this one first.
    acked: Vec<PeerName>,
    /// The write as its key's next delta: the operations, or the state.
    delta: WireDelta,
    backoff: Backoff,
}

pub(crate) struct PendingRead {
    request: RequestId,
    key: String,
    required: usize,
    /// Nodes that answered, this one first.
    answered: Vec<PeerName>,
    /// The merge of the remote answers so far.
    merged: Option<Slot>,
    /// What each remote node answered, to repair those left behind.
    answer_digests: Vec<(PeerName, Option<Digest>)>,
    /// The latest life and use of the key among the answers.
    lifetime: Option<Lifetime>,
    backoff: Backoff,
}

impl ReplicatorCore {
    /// Request numbers on the wire are drawn at random rather than counted, so
    /// that late answers to a previous incarnation of this node cannot be taken
    /// for answers to a new request.
    fn wire_request_number(&mut self) -> u64 {
        loop {
            let id = self.rng.next_u64();
            if !self.writes.contains_key(&id) && !self.reads.contains_key(&id) {
                return id;
            }
        }
    }

    pub(super) fn start_write(
        &mut self,
        request: RequestId,
        key: &str,
        required: usize,
        timeout: Duration,
    ) {
        // The write is its key's next push, to the peers it goes to.
        self.to_push.remove(key);
        let delta = match self.take_delta(key) {
            Some(Ok(delta)) => delta,
            Some(Err(err)) => {
                self.out.push(Output::WriteDone {
                    request,
                    result: Err(err),
                });
                return;
            }
            None => unreachable_entry(key),
        };
        let id = self.wire_request_number();
        self.schedule(Timer::Deadline(id), timeout);
        self.writes.insert(
            id,
            PendingWrite {
                request,
                key: key.to_string(),
                required,
                acked: vec![self.node.clone()],
                delta,
                backoff: Backoff::new(),
            },
        );
        self.send_unanswered(id);
        self.schedule_resends();
    }

    pub(super) fn write_acked(&mut self, from: &str, id: u64) {
        let Some(write) = self.writes.get_mut(&id) else {
            return;
        };
        if !write.acked.iter().any(|node| node == from) {
            write.acked.push(from.to_string());
        }
        if write.acked.len() >= write.required {
            if let Some(write) = self.writes.remove(&id) {
                self.out.push(Output::WriteDone {
                    request: write.request,
                    result: Ok(write.acked),
                });
            }
        }
    }

    pub(super) fn start_read(&mut self, request: RequestId, key: &str, level: ReadConsistency) {
        let (required, timeout) = level.required(self.members());
        if required <= 1 {
            let state = self.lookup(key).to_state();
            self.out.push(Output::ReadDone {
                request,
                result: Ok((state, vec![self.node.clone()])),
            });
            return;
        }
        let id = self.wire_request_number();
        self.schedule(Timer::Deadline(id), timeout);
        self.reads.insert(
            id,
            PendingRead {
                request,
                key: key.to_string(),
                required,
                answered: vec![self.node.clone()],
                merged: None,
                answer_digests: Vec::new(),
                lifetime: None,
                backoff: Backoff::new(),
            },
        );
        self.send_unanswered(id);
        self.schedule_resends();
    }

    /// A peer's read: answered with this node's state, or with `None` if the
    /// key is absent. A state that cannot travel gets no answer, so the reader
    /// times out instead of taking "absent" for an answer.
    pub(super) fn answer_read(&mut self, from: &str, request: u64, key: &str) {
        let entry = match self.encode_entry(key) {
            None => None,
            Some(Ok(entry)) => Some(entry),
            Some(Err(err)) => {
                tracing::error!(key, error = %Chain(&err), "cannot answer a read");
                return;
            }
        };
        self.send(from, PeerMessage::ReadReply { request, entry });
    }

    pub(super) fn read_answered(&mut self, from: &str, id: u64, entry: Option<WireEntry>) {
        let Some(read) = self.reads.get(&id) else {
            return;
        };
        if read.answered.iter().any(|node| node == from) {
            return;
        }
        let answer = match entry {
            None => None,
            Some(entry) if entry.key != read.key => {
                self.reject_answer(from, &read.key.clone(), "answer for another key");
                return;
            }
            Some(entry)
                if self.arrived_expired(
                    &entry.key,
                    matches!(entry.value, WireValue::Deleted),
                    entry.lifetime,
                ) =>
            {
                None
            }
            Some(entry) => {
                if let Some(read) = self.reads.get_mut(&id) {
                    read.lifetime = read
                        .lifetime
                        .into_iter()
                        .chain(entry.lifetime)
                        .reduce(Lifetime::join);
                }
                let digest = match &entry.value {
                    WireValue::Deleted => TOMBSTONE_DIGEST,
                    WireValue::Live { state, .. } => digest_of(state),
                };
                match self.decode_slot(entry.value) {
                    Ok(slot) => Some((slot, digest)),
                    Err(err) => {
                        self.reject_answer(from, &entry.key, Chain(&err));
                        return;
                    }
                }
            }
        };
        let Some(read) = self.reads.get_mut(&id) else {
            return;
        };
        let digest = match answer {
            None => None,
            Some((slot, digest)) => {
                if let Err(err) = merge_answers(&mut read.merged, slot, &read.key) {
                    let key = read.key.clone();
                    self.reject_answer(from, &key, Chain(&err));
                    return;
                }
                Some(digest)
            }
        };
        read.answered.push(from.to_string());
        read.answer_digests.push((from.to_string(), digest));
        if read.answered.len() >= read.required {
            self.finish_read(id);
        }
    }

    fn reject_answer(&mut self, from: &str, key: &str, reason: impl std::fmt::Display) {
        self.stats.rejected_entries += 1;
        tracing::warn!(peer = from, key, %reason, "rejected a read answer");
    }

    /// Merges the answers into the local replica (read repair), sends the
    /// result to the nodes that answered with less, and reports it.
    fn finish_read(&mut self, id: u64) {
        let Some(read) = self.reads.remove(&id) else {
            return;
        };
        if let Some(slot) = read.merged {
            if let Err(err) = self.merge_slot(&read.key, slot, None) {
                self.out.push(Output::ReadDone {
                    request: read.request,
                    result: Err(err),
                });
                return;
            }
            self.merged_use(&read.key, read.lifetime);
        }
        if let Some(merged) = self.digest(&read.key) {
            let behind: Vec<PeerName> = read
                .answer_digests
                .into_iter()
                .filter(|(_, digest)| *digest != Some(merged))
                .map(|(peer, _)| peer)
                .collect();
            if !behind.is_empty() {
                if let Some(entry) = self.sendable_entry(&read.key) {
                    for peer in &behind {
                        self.send(
                            peer,
                            PeerMessage::Entries {
                                epoch: self.epoch,
                                entries: vec![entry.clone()],
                            },
                        );
                    }
                }
            }
        }
        let state = self.lookup(&read.key).to_state();
        self.out.push(Output::ReadDone {
            request: read.request,
            result: Ok((state, read.answered)),
        });
    }

    pub(super) fn deadline_passed(&mut self, id: u64) {
        if let Some(write) = self.writes.remove(&id) {
            self.out.push(Output::WriteDone {
                request: write.request,
                result: Err(Error::Timeout {
                    operation: Operation::Write,
                    key: write.key,
                    reached: write.acked.len(),
                    required: write.required,
                }),
            });
        } else if let Some(read) = self.reads.remove(&id) {
            self.out.push(Output::ReadDone {
                request: read.request,
                result: Err(Error::Timeout {
                    operation: Operation::Read,
                    key: read.key,
                    reached: read.answered.len(),
                    required: read.required,
                }),
            });
        }
    }

    /// Sends pending request `id` to every reachable peer that has not
    /// answered it. Requests carry their number, so a peer that gets one
    /// twice merges and answers twice, and the second answer changes nothing.
    fn send_unanswered(&mut self, id: u64) {
        let message = match (self.writes.get(&id), self.reads.get(&id)) {
            (Some(write), _) => PeerMessage::Write {
                request: id,
                epoch: self.epoch,
                delta: write.delta.clone(),
            },
            (None, Some(read)) => PeerMessage::Read {
                request: id,
                key: read.key.clone(),
            },
            (None, None) => return,
        };
        let peers: Vec<PeerName> = self
            .reachable_peers()
            .filter(|peer| !self.has_answered(id, peer))
            .map(str::to_string)
            .collect();
        for peer in &peers {
            self.send(peer, message.clone());
        }
    }

    fn schedule_resends(&mut self) {
        let pending = !(self.writes.is_empty() && self.reads.is_empty());
        if pending && !self.resend_scheduled {
            self.resend_scheduled = true;
            self.schedule(Timer::Resend, self.config.resend_interval);
        }
    }

    /// The resend timer fired: every pending request whose backoff ran out
    /// goes again to the peers that have not answered.
    pub(super) fn resend_due(&mut self) {
        self.resend_scheduled = false;
        let mut due: Vec<u64> = Vec::new();
        for (id, write) in &mut self.writes {
            if write.backoff.tick() {
                due.push(*id);
            }
        }
        for (id, read) in &mut self.reads {
            if read.backoff.tick() {
                due.push(*id);
            }
        }
        for id in due {
            self.send_unanswered(id);
        }
        self.schedule_resends();
    }

    /// The pending writes of `key` that `peer` has not acknowledged.
    pub(super) fn unacked_writes_of(&self, key: &str, peer: &str) -> Vec<u64> {
        self.writes
            .iter()
            .filter(|(id, write)| write.key == key && !self.has_answered(**id, peer))
            .map(|(id, _)| *id)
            .collect()
    }

    fn has_answered(&self, id: u64, peer: &str) -> bool {
        let answered = match (self.writes.get(&id), self.reads.get(&id)) {
            (Some(write), _) => &write.acked,
            (None, Some(read)) => &read.answered,
            (None, None) => return true,
        };
        answered.iter().any(|node| node == peer)
    }

    /// A peer that came (back) up gets the pending requests it has not answered.
    pub(super) fn resend_pending_to(&mut self, peer: &str) {
        let writes = self.writes.iter().map(|(id, write)| {
            (
                *id,
                PeerMessage::Write {
                    request: *id,
                    epoch: self.epoch,
                    delta: write.delta.clone(),
                },
            )
        });
        let reads = self.reads.iter().map(|(id, read)| {
            (
                *id,
                PeerMessage::Read {
                    request: *id,
                    key: read.key.clone(),
                },
            )
        });
        let unanswered: Vec<PeerMessage> = writes
            .chain(reads)
            .filter(|(id, _)| !self.has_answered(*id, peer))
            .map(|(_, message)| message)
            .collect();
        for message in unanswered {
            self.send(peer, message);
        }
    }
}

fn merge_answers(merged: &mut Option<Slot>, answer: Slot, key: &str) -> Result<()> {
    match merged {
        None => *merged = Some(answer),
        Some(slot) => {
            slot.merge(answer, key)?;
        }
    }
    Ok(())
}

/// `start_write` runs right after the local write created the entry.
fn unreachable_entry(key: &str) -> ! {
    unreachable!("the entry of {key:?} was written just before it is replicated")
}
