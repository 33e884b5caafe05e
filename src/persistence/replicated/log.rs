use std::cmp::Ordering;

use super::{ConflictResolver, EventEnvelope, EventHandler, EventMeta};
use crate::causal::{ReplicaId, VersionVector};

/// States are kept every this many events, so that a late concurrent event
/// replays at most this many events after its position.
const CHECKPOINT_EVERY: usize = 64;

/// The replication core of one replica of one entity (persistence id).
///
/// * **Causal delivery**: an event is applied only after every event in its
///   causal past; events that arrive early wait in a buffer; duplicates are
///   dropped (by origin and origin sequence number).
/// * **One order everywhere**: applied events are kept in a canonical order,
///   the topological order of the happened-before relation that, whenever
///   several events could come next, takes the first by the
///   [`ConflictResolver`]. It depends only on the set of events, so replicas
///   holding the same events hold the same order and, with a deterministic
///   handler, the same state, even when the handler does not commute.
/// * **Late events**: an event that arrives after events it sorts before is
///   inserted at its place and the state is replayed from the checkpoint
///   before it.
///
/// The core does no I/O: the entity actor journals what [`persist`](Self::persist)
/// returns and what [`receive`](Self::receive) accepts, and sends
/// [`missing_for`](Self::missing_for) to peers.
pub struct ReplicatedLog<H: EventHandler, R> {
    replica: ReplicaId,
    handler: H,
    resolver: R,
    /// Everything applied, in canonical order.
    events: Vec<EventEnvelope<H::Event>>,
    /// Events received before their causal past.
    waiting: Vec<EventEnvelope<H::Event>>,
    /// The merge of the versions of every applied event.
    seen: VersionVector,
    /// `checkpoints[k]`: the state after the first `k * CHECKPOINT_EVERY` events.
    checkpoints: Vec<H::State>,
    state: H::State,
}

impl<H: EventHandler, R: ConflictResolver<H::Event>> ReplicatedLog<H, R> {
    /// An empty log for `replica`.
    pub fn new(replica: ReplicaId, handler: H, resolver: R) -> Self {
        Self {
            replica,
            handler,
            resolver,
            events: Vec::new(),
            waiting: Vec::new(),
            seen: VersionVector::new(),
            checkpoints: vec![H::State::default()],
            state: H::State::default(),
        }
    }

    /// The current state.
    pub fn state(&self) -> &H::State {
        &self.state
    }

    /// Every applied event, in the canonical order.
    pub fn events(&self) -> &[EventEnvelope<H::Event>] {
        &self.events
    }

    /// What this replica has applied, per origin.
    pub fn version(&self) -> &VersionVector {
        &self.seen
    }

    /// How many received events wait for their causal past.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Persists local events at `timestamp`: [`stamp`](Self::stamp)s them and
    /// applies them. Returns the envelopes to journal and replicate.
    pub fn persist(
        &mut self,
        events: Vec<H::Event>,
        timestamp: i64,
    ) -> Vec<EventEnvelope<H::Event>> {
        let stamped = self.stamp(events, timestamp);
        for envelope in &stamped {
            self.deliver(envelope.clone());
        }
        stamped
    }

    /// Stamps local events without applying them: each gets the next sequence
    /// number of this replica and, as version, everything applied so far plus
    /// the events stamped before it. An entity journals the envelopes first and
    /// then applies them with [`receive`](Self::receive), so that an event that
    /// failed to reach the journal is never applied.
    pub fn stamp(&self, events: Vec<H::Event>, timestamp: i64) -> Vec<EventEnvelope<H::Event>> {
        let mut version = self.seen.clone();
        events
            .into_iter()
            .map(|event| {
                let dot = version.increment(&self.replica);
                EventEnvelope {
                    origin: self.replica.clone(),
                    origin_seq: dot.counter,
                    version: version.clone(),
                    timestamp,
                    event,
                }
            })
            .collect()
    }

    /// The event handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The replica this log persists as.
    pub fn replica(&self) -> &ReplicaId {
        &self.replica
    }

    /// Takes in an event from a peer (or the journal). Returns the events that
    /// became applicable and were applied, in the order they were applied:
    /// none for a duplicate or an event still missing its causal past.
    pub fn receive(&mut self, envelope: EventEnvelope<H::Event>) -> Vec<EventEnvelope<H::Event>> {
        if self.is_known(&envelope) {
            return Vec::new();
        }
        self.waiting.push(envelope);
        let mut applied = Vec::new();
        while let Some(ready) = self.waiting.iter().position(|e| self.is_deliverable(e)) {
            let envelope = self.waiting.swap_remove(ready);
            self.deliver(envelope.clone());
            applied.push(envelope);
        }
        applied
    }

    /// The applied events a peer whose version is `peer` lacks, in an order
    /// that respects causality.
    pub fn missing_for(&self, peer: &VersionVector) -> Vec<&EventEnvelope<H::Event>> {
        self.events
            .iter()
            .filter(|e| e.origin_seq > peer.get(&e.origin))
            .collect()
    }

    fn is_known(&self, envelope: &EventEnvelope<H::Event>) -> bool {
        envelope.origin_seq <= self.seen.get(&envelope.origin)
            || self
                .waiting
                .iter()
                .any(|w| w.origin == envelope.origin && w.origin_seq == envelope.origin_seq)
    }

    /// Its causal past is applied: the origin's previous event and every
    /// event of others it had seen.
    fn is_deliverable(&self, envelope: &EventEnvelope<H::Event>) -> bool {
        envelope.origin_seq == self.seen.get(&envelope.origin) + 1
            && envelope
                .version
                .iter()
                .all(|(replica, n)| replica == &envelope.origin || n <= self.seen.get(replica))
    }

    /// Inserts a deliverable event at its canonical place and brings the
    /// state up to date.
    ///
    /// Nothing applied depends on the new event, so it is a maximal element:
    /// in the canonical topological order it becomes available right after
    /// its last predecessor, and it goes before the first later event the
    /// resolver orders after it; the order of all other events is unchanged.
    fn deliver(&mut self, envelope: EventEnvelope<H::Event>) {
        let available_from = self
            .events
            .iter()
            .rposition(|e| e.happened_before(&envelope))
            .map_or(0, |last| last + 1);
        let position = (available_from..self.events.len())
            .find(|&i| self.resolver.order(&envelope, &self.events[i]) == Ordering::Less)
            .unwrap_or(self.events.len());
        let appended = position == self.events.len();
        if appended {
            // Everything applied so far comes before it.
            apply(&self.handler, &mut self.state, &envelope, &self.seen);
        }
        self.seen.merge(&envelope.version);
        self.events.insert(position, envelope);
        if appended {
            self.checkpoint_if_due();
        } else {
            self.replay_from(position);
        }
    }

    /// The merge of the versions of the first `end` events.
    fn version_before(&self, end: usize) -> VersionVector {
        let mut version = VersionVector::new();
        for e in &self.events[..end] {
            version.merge(&e.version);
        }
        version
    }

    fn checkpoint_if_due(&mut self) {
        if self.events.len() % CHECKPOINT_EVERY == 0 {
            self.checkpoints.push(self.state.clone());
        }
    }

    fn replay_from(&mut self, position: usize) {
        let checkpoint = position / CHECKPOINT_EVERY;
        self.checkpoints.truncate(checkpoint + 1);
        let mut state = self.checkpoints[checkpoint].clone();
        let start = checkpoint * CHECKPOINT_EVERY;
        let mut seen = self.version_before(start);
        for i in start..self.events.len() {
            apply(&self.handler, &mut state, &self.events[i], &seen);
            seen.merge(&self.events[i].version);
            if (i + 1) % CHECKPOINT_EVERY == 0 {
                self.checkpoints.push(state.clone());
            }
        }
        self.state = state;
    }
}

fn apply<H: EventHandler>(
    handler: &H,
    state: &mut H::State,
    envelope: &EventEnvelope<H::Event>,
    seen_before: &VersionVector,
) {
    let concurrent = !envelope.version.descends(seen_before);
    let meta = EventMeta {
        origin: &envelope.origin,
        timestamp: envelope.timestamp,
        concurrent,
    };
    handler.apply(state, &envelope.event, meta);
}
