use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};

use super::{ConflictResolver, EventEnvelope, EventHandler, EventMeta};
use crate::causal::{ReplicaId, VersionVector};

/// States are kept every this many events, so that a late concurrent event
/// replays at most this many events after its position.
const CHECKPOINT_EVERY: usize = 64;

/// At most this many received events wait for their causal past; more are
/// dropped (anti-entropy sends them again), so a peer cannot grow the buffer
/// without bound.
const MAX_WAITING: usize = 100_000;

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
    /// Everything applied, in canonical order. Boxed: under concurrent load
    /// late events go deep into the vector, and moving pointers instead of
    /// envelopes made those insertions several times cheaper.
    events: Vec<Box<EventEnvelope<H::Event>>>,
    /// `dots[i]`: the origin (as an index into `origins`) and origin sequence
    /// number of `events[i]`, so that finding an event's predecessors scans
    /// integers instead of comparing replica ids.
    dots: Vec<(usize, u64)>,
    origins: Vec<ReplicaId>,
    origin_index: HashMap<ReplicaId, usize>,
    /// Events received before their causal past.
    waiting: Vec<EventEnvelope<H::Event>>,
    /// The merge of the versions of every applied event.
    seen: VersionVector,
    /// `checkpoints[k]`: the state after the first `k * CHECKPOINT_EVERY`
    /// events, and the merge of their versions.
    checkpoints: Vec<(H::State, VersionVector)>,
    state: H::State,
    /// How many events of `events` the state reflects, in order.
    applied: usize,
    /// The first position where an event went since the state was last
    /// brought up to date, if before `applied`: the state must be replayed.
    stale_from: Option<usize>,
}

impl<H: EventHandler, R: ConflictResolver<H::Event>> ReplicatedLog<H, R> {
    /// An empty log for `replica`.
    pub fn new(replica: ReplicaId, handler: H, resolver: R) -> Self {
        Self {
            replica,
            handler,
            resolver,
            events: Vec::new(),
            dots: Vec::new(),
            origins: Vec::new(),
            origin_index: HashMap::new(),
            waiting: Vec::new(),
            seen: VersionVector::new(),
            checkpoints: vec![(H::State::default(), VersionVector::new())],
            state: H::State::default(),
            applied: 0,
            stale_from: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> &H::State {
        &self.state
    }

    /// Every applied event, in the canonical order.
    pub fn events(
        &self,
    ) -> impl ExactSizeIterator<Item = &EventEnvelope<H::Event>> + DoubleEndedIterator + '_ {
        self.events.iter().map(|event| &**event)
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
            self.insert(envelope.clone());
        }
        self.bring_state_up_to_date();
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
        self.receive_all([envelope])
    }

    /// Takes in a batch of events, as [`receive`](Self::receive) does one by
    /// one, but brings the state up to date once: a batch of late events
    /// costs one replay, not one each.
    pub fn receive_all(
        &mut self,
        envelopes: impl IntoIterator<Item = EventEnvelope<H::Event>>,
    ) -> Vec<EventEnvelope<H::Event>> {
        let mut applied = Vec::new();
        for envelope in envelopes {
            if !well_formed(&envelope) || self.is_known(&envelope) {
                continue;
            }
            if self.waiting.len() >= MAX_WAITING {
                tracing::warn!(
                    origin = %envelope.origin,
                    sequence = envelope.origin_seq,
                    "too many events wait for their causal past; dropped one"
                );
                continue;
            }
            self.waiting.push(envelope);
            while let Some(ready) = self.waiting.iter().position(|e| self.is_deliverable(e)) {
                let envelope = self.waiting.swap_remove(ready);
                self.insert(envelope.clone());
                applied.push(envelope);
            }
        }
        self.bring_state_up_to_date();
        applied
    }

    /// Takes in the events of a journal when the log starts: the same outcome
    /// as [`receive_all`](Self::receive_all), computed in one pass over the
    /// events in canonical order (a walk of the causal order that takes the
    /// first by the resolver among the events available next) rather than by
    /// inserting each at its place. A journal written under concurrent load
    /// holds events far from their canonical places; recovering 200,000 of
    /// them took seconds the other way. On a log that is not empty, it is
    /// `receive_all`.
    pub fn recover(&mut self, envelopes: impl IntoIterator<Item = EventEnvelope<H::Event>>) {
        if !self.events.is_empty() || !self.waiting.is_empty() {
            self.receive_all(envelopes);
            return;
        }
        let mut by_origin: BTreeMap<ReplicaId, BTreeMap<u64, EventEnvelope<H::Event>>> =
            BTreeMap::new();
        for envelope in envelopes.into_iter().filter(well_formed) {
            by_origin
                .entry(envelope.origin.clone())
                .or_default()
                .entry(envelope.origin_seq)
                .or_insert(envelope);
        }
        // Only an origin's next event can be available next.
        let mut queues: Vec<VecDeque<EventEnvelope<H::Event>>> = by_origin
            .into_values()
            .map(|events| events.into_values().collect())
            .collect();
        loop {
            let mut next: Option<(usize, &EventEnvelope<H::Event>)> = None;
            for (origin, queue) in queues.iter().enumerate() {
                let Some(head) = queue.front() else { continue };
                if !self.is_deliverable(head) {
                    continue;
                }
                let first = match next {
                    Some((_, best)) => self.order(head, best) == Ordering::Less,
                    None => true,
                };
                if first {
                    next = Some((origin, head));
                }
            }
            let Some(origin) = next.map(|(origin, _)| origin) else {
                break;
            };
            let Some(envelope) = queues[origin].pop_front() else {
                break;
            };
            let position = self.events.len();
            self.place(position, envelope);
        }
        // Events whose past is missing wait for it, as received ones do.
        self.waiting.extend(queues.into_iter().flatten());
        self.bring_state_up_to_date();
    }

    /// The applied events a peer whose version is `peer` lacks, in an order
    /// that respects causality.
    pub fn missing_for(&self, peer: &VersionVector) -> Vec<&EventEnvelope<H::Event>> {
        self.events()
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

    /// The resolver's order, with ties broken by event identity, so that the
    /// incremental insertion and the one-pass recovery agree even for a
    /// resolver that leaves ties.
    fn order(&self, first: &EventEnvelope<H::Event>, second: &EventEnvelope<H::Event>) -> Ordering {
        self.resolver.order(first, second).then_with(|| {
            (&first.origin, first.origin_seq).cmp(&(&second.origin, second.origin_seq))
        })
    }

    /// Its causal past is applied: the origin's previous event and every
    /// event of others it had seen.
    fn is_deliverable(&self, envelope: &EventEnvelope<H::Event>) -> bool {
        envelope.origin_seq == self.seen.get(&envelope.origin).saturating_add(1)
            && envelope
                .version
                .iter()
                .all(|(replica, n)| replica == &envelope.origin || n <= self.seen.get(replica))
    }

    /// Inserts a deliverable event at its canonical place; the state catches
    /// up in [`bring_state_up_to_date`](Self::bring_state_up_to_date).
    ///
    /// Nothing applied depends on the new event, so it is a maximal element:
    /// in the canonical topological order it becomes available right after
    /// its last predecessor, and it goes before the first later event the
    /// resolver orders after it; the order of all other events is unchanged.
    fn insert(&mut self, envelope: EventEnvelope<H::Event>) {
        // The event's causal past per origin index; an origin it has not
        // seen has no event in it.
        let mut past = vec![0; self.origins.len()];
        for (replica, n) in envelope.version.iter() {
            if let Some(&index) = self.origin_index.get(replica) {
                past[index] = if replica == &envelope.origin {
                    n.saturating_sub(1)
                } else {
                    n
                };
            }
        }
        let available_from = self
            .dots
            .iter()
            .rposition(|&(origin, seq)| seq <= past[origin])
            .map_or(0, |last| last + 1);
        let position = (available_from..self.events.len())
            .find(|&i| self.order(&envelope, &self.events[i]) == Ordering::Less)
            .unwrap_or(self.events.len());
        if position < self.applied {
            self.stale_from = Some(self.stale_from.map_or(position, |p| p.min(position)));
        }
        self.place(position, envelope);
    }

    /// Puts an event at `position` of the canonical order.
    fn place(&mut self, position: usize, envelope: EventEnvelope<H::Event>) {
        self.seen.merge(&envelope.version);
        let origin = match self.origin_index.get(&envelope.origin) {
            Some(&index) => index,
            None => {
                self.origins.push(envelope.origin.clone());
                self.origin_index
                    .insert(envelope.origin.clone(), self.origins.len() - 1);
                self.origins.len() - 1
            }
        };
        self.dots.insert(position, (origin, envelope.origin_seq));
        self.events.insert(position, Box::new(envelope));
    }

    /// Applies the events the state does not reflect yet: those appended, in
    /// order, or, after an insertion before applied events, everything from
    /// the last checkpoint before it.
    fn bring_state_up_to_date(&mut self) {
        let start = match self.stale_from.take() {
            Some(position) => {
                let checkpoint = position / CHECKPOINT_EVERY;
                self.checkpoints.truncate(checkpoint + 1);
                self.state = self.checkpoints[checkpoint].0.clone();
                checkpoint * CHECKPOINT_EVERY
            }
            None => self.applied,
        };
        let mut seen = if start == self.applied {
            self.applied_version()
        } else {
            self.checkpoints[start / CHECKPOINT_EVERY].1.clone()
        };
        for i in start..self.events.len() {
            apply(&self.handler, &mut self.state, &self.events[i], &seen);
            seen.merge(&self.events[i].version);
            if (i + 1) % CHECKPOINT_EVERY == 0 {
                self.checkpoints.push((self.state.clone(), seen.clone()));
            }
        }
        self.applied = self.events.len();
    }

    /// The merge of the versions of the events the state reflects.
    fn applied_version(&self) -> VersionVector {
        let checkpoint = self.applied / CHECKPOINT_EVERY;
        let mut version = self.checkpoints[checkpoint].1.clone();
        for e in &self.events[checkpoint * CHECKPOINT_EVERY..self.applied] {
            version.merge(&e.version);
        }
        version
    }
}

/// An envelope whose identity and version agree: a sequence number from 1
/// that its version holds for its origin. Anything else would corrupt the
/// causal bookkeeping (a version ahead of the sequence would make the
/// origin's real events look known), so it is dropped and logged.
fn well_formed<E>(envelope: &EventEnvelope<E>) -> bool {
    let ok = envelope.origin_seq != 0
        && envelope.origin_seq != u64::MAX
        && envelope.version.get(&envelope.origin) == envelope.origin_seq;
    if !ok {
        tracing::warn!(
            origin = %envelope.origin,
            sequence = envelope.origin_seq,
            "dropped a malformed event: its version disagrees with its sequence number"
        );
    }
    ok
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
