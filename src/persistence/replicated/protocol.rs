//! How the replicas of one persistence id exchange events, as a sans-IO state
//! machine around a [`ReplicatedLog`].
//!
//! * A replica pushes the events it persists to every reachable replica.
//! * Anti-entropy: a replica sends its version vector to a peer (when the
//!   peer comes up, and on every tick to a random one); the peer answers with
//!   the events the version lacks, in causal order, in messages kept under a
//!   byte budget. Lost, duplicated and reordered messages are harmless: the
//!   log buffers events until their past arrives and drops duplicates.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{ConflictResolver, EventEnvelope, EventHandler, ReplicatedLog};
use crate::causal::VersionVector;
use crate::codec;
use crate::ddata::wire::split_by_budget;
use crate::ddata::PeerName;

/// What replicas of one persistence id say to each other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ReplicationMessage<E> {
    /// Events to take in.
    Events(Vec<EventEnvelope<E>>),
    /// "This is what I have": answered with the events it lacks.
    Version(VersionVector),
}

/// What the caller must do, in order.
#[derive(Debug)]
pub enum ReplicationEffect<E> {
    /// Journal these replicated events (idempotently); they are applied.
    Journal(Vec<EventEnvelope<E>>),
    /// Deliver `message` to the replica on node `to`.
    Send {
        /// The receiving node.
        to: PeerName,
        /// The message.
        message: ReplicationMessage<E>,
    },
}

/// Event replication for one replica of one persistence id.
pub struct Replication<H: EventHandler, R> {
    log: ReplicatedLog<H, R>,
    reachable: BTreeSet<PeerName>,
    max_message_bytes: usize,
    next_peer: usize,
}

impl<H: EventHandler, R: ConflictResolver<H::Event>> Replication<H, R> {
    /// Replication around `log`, with messages of at most `max_message_bytes`
    /// (a single larger event still travels alone).
    pub fn new(log: ReplicatedLog<H, R>, max_message_bytes: usize) -> Self {
        Self {
            log,
            reachable: BTreeSet::new(),
            max_message_bytes,
            next_peer: 0,
        }
    }

    /// The replicated log.
    pub fn log(&self) -> &ReplicatedLog<H, R> {
        &self.log
    }

    /// The replicated log, to stamp local events.
    pub fn log_mut(&mut self) -> &mut ReplicatedLog<H, R> {
        &mut self.log
    }

    /// Local events were journaled and applied: push them to every
    /// reachable replica.
    pub fn persisted(
        &self,
        events: &[EventEnvelope<H::Event>],
    ) -> Vec<ReplicationEffect<H::Event>> {
        self.reachable
            .iter()
            .flat_map(|peer| self.events_to(peer, events.iter()))
            .collect()
    }

    /// A replica came up: it learns this replica's version and answers with
    /// what this one lacks.
    pub fn peer_up(&mut self, peer: &str) -> Vec<ReplicationEffect<H::Event>> {
        self.reachable.insert(peer.to_string());
        vec![self.version_to(peer)]
    }

    /// A replica went away.
    pub fn peer_down(&mut self, peer: &str) {
        self.reachable.remove(peer);
    }

    /// Anti-entropy round: this replica's version to the next reachable peer.
    pub fn tick(&mut self) -> Vec<ReplicationEffect<H::Event>> {
        if self.reachable.is_empty() {
            return Vec::new();
        }
        let index = self.next_peer % self.reachable.len();
        self.next_peer = self.next_peer.wrapping_add(1);
        let peer = self
            .reachable
            .iter()
            .nth(index)
            .cloned()
            .unwrap_or_default();
        vec![self.version_to(&peer)]
    }

    /// A message from the replica on node `from`.
    pub fn handle_message(
        &mut self,
        from: &str,
        message: ReplicationMessage<H::Event>,
    ) -> Vec<ReplicationEffect<H::Event>> {
        match message {
            ReplicationMessage::Events(events) => {
                let applied = self.log.receive_all(events);
                if applied.is_empty() {
                    Vec::new()
                } else {
                    vec![ReplicationEffect::Journal(applied)]
                }
            }
            ReplicationMessage::Version(version) => {
                let missing = self.log.missing_for(&version);
                self.events_to(from, missing.into_iter())
            }
        }
    }

    fn version_to(&self, peer: &str) -> ReplicationEffect<H::Event> {
        ReplicationEffect::Send {
            to: peer.to_string(),
            message: ReplicationMessage::Version(self.log.version().clone()),
        }
    }

    fn events_to<'a>(
        &self,
        peer: &str,
        events: impl Iterator<Item = &'a EventEnvelope<H::Event>>,
    ) -> Vec<ReplicationEffect<H::Event>>
    where
        H::Event: 'a,
    {
        let sized: Vec<(usize, EventEnvelope<H::Event>)> = events
            .filter_map(|envelope| match codec::encode(envelope) {
                Ok(bytes) => Some((bytes.len() + 16, envelope.clone())),
                Err(err) => {
                    tracing::error!(error = %err, "cannot encode an event; it is not replicated");
                    None
                }
            })
            .collect();
        split_by_budget(sized, self.max_message_bytes, |(size, _)| *size)
            .into_iter()
            .map(|chunk| ReplicationEffect::Send {
                to: peer.to_string(),
                message: ReplicationMessage::Events(chunk.into_iter().map(|(_, e)| e).collect()),
            })
            .collect()
    }
}
