use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};

use super::{ConflictResolver, EventEnvelope, EventHandler, EventMeta};
use crate::causal::{Dot, ReplicaId, VersionVector};

mod rank_tree;

use rank_tree::{NodeId, RankTree};

/// States are kept every this many events, so that a late concurrent event
/// replays at most this many events after its position.
const CHECKPOINT_EVERY: usize = 64;
/// How many compacted events an intake frees (see `ReplicatedLog::unfreed`).
const FREE_AT_ONCE: usize = 256;

/// At most this many received events wait for their causal past; more are
/// dropped (anti-entropy sends them again), so a peer cannot grow the buffer
/// without bound.
const MAX_WAITING: usize = 100_000;

/// The state after a prefix of the canonical order that the events still to
/// come are expected to sort after: what a [`ReplicatedLog`] keeps of the
/// events it [compacts](ReplicatedLog::compact), and what an entity saves to
/// start from instead of replaying its whole journal. An event that does not
/// sort after it is detected, in the log and when starting from a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot<S> {
    /// The state after the prefix.
    pub state: S,
    /// The prefix: every event `e` with `e.origin_seq <= version[e.origin]`.
    /// A prefix of a topological order holds the causal past of each of its
    /// events, so a version vector names it exactly.
    pub version: VersionVector,
    /// How many events the prefix holds.
    pub events: u64,
}

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
///   inserted at its place, found and taken in time logarithmic in the
///   events in memory, and the state is replayed from the checkpoint before
///   it (once per batch).
/// * **Compaction**: [`compact`](Self::compact) drops a prefix of the order
///   from memory, keeping only the state after it (a [`Snapshot`]). It picks
///   a prefix that the events to come will have seen, as far as the peers'
///   versions tell, so that they sort after it. One that has not (a
///   replica cut off for long, or a new one) cannot be placed without the
///   dropped events: the log then stops delivering and asks for its history
///   ([`needs_history`](Self::needs_history)), which the caller reads back
///   from its journal ([`restore_history`](Self::restore_history)).
///
/// The core does no I/O: the entity actor journals what [`stamp`](Self::stamp)
/// returns before it applies it with [`receive`](Self::receive), journals
/// what `receive` accepts from peers, and sends
/// [`missing_for`](Self::missing_for) to peers.
pub struct ReplicatedLog<H: EventHandler, R> {
    replica: ReplicaId,
    handler: H,
    resolver: R,
    /// Everything applied, in canonical order: a tree, because under
    /// concurrent load late events go deep into the order, and placing one
    /// must not cost in proportion to how deep.
    events: RankTree<EventEnvelope<H::Event>>,
    /// Per origin (an index into `origins`), the nodes of its events in
    /// `events`, by sequence number: an origin's applied events in memory
    /// are consecutive (delivery is causal, compaction cuts a prefix), so an
    /// event's predecessors are found without a scan.
    nodes_by_origin: Vec<VecDeque<NodeId>>,
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
    /// How many events compaction dropped; `checkpoints[0]` holds the state
    /// and version after them.
    compacted_events: u64,
    /// A deliverable event may sort among the compacted ones: delivery waits
    /// for the history.
    history_needed: bool,
    /// Per origin index, the version of its latest compacted event.
    compacted_latest: Vec<Option<VersionVector>>,
    /// Compacted events not freed yet. Freeing ten thousand at once held the
    /// replica up for ten milliseconds and more, so each intake and each
    /// tick frees a few.
    unfreed: Vec<EventEnvelope<H::Event>>,
    /// The journal no longer holds every compacted event (see
    /// [`forget_history`](ReplicatedLog::forget_history)).
    history_forgotten: bool,
    /// Events refused because they sort among compacted events that no
    /// journal here holds any more.
    refused: u64,
    /// The journal may delete compacted events (see
    /// [`history_may_be_deleted`](ReplicatedLog::history_may_be_deleted)).
    history_deletable: bool,
    /// What the peer held when it sent the snapshot the log started from
    /// (see [`install_snapshot`](ReplicatedLog::install_snapshot)): its
    /// events outside the snapshot sorted after it there, seen or not.
    sorted_after_snapshot: VersionVector,
}

impl<H: EventHandler, R: ConflictResolver<H::Event>> ReplicatedLog<H, R> {
    /// An empty log for `replica`.
    pub fn new(replica: ReplicaId, handler: H, resolver: R) -> Self {
        Self {
            replica,
            handler,
            resolver,
            events: RankTree::new(),
            nodes_by_origin: Vec::new(),
            origins: Vec::new(),
            origin_index: HashMap::new(),
            waiting: Vec::new(),
            seen: VersionVector::new(),
            checkpoints: vec![(H::State::default(), VersionVector::new())],
            state: H::State::default(),
            applied: 0,
            stale_from: None,
            compacted_events: 0,
            history_needed: false,
            compacted_latest: Vec::new(),
            unfreed: Vec::new(),
            history_forgotten: false,
            refused: 0,
            history_deletable: false,
            sorted_after_snapshot: VersionVector::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> &H::State {
        &self.state
    }

    /// The applied events kept in memory (all but the compacted ones), in
    /// the canonical order.
    pub fn events(
        &self,
    ) -> impl ExactSizeIterator<Item = &EventEnvelope<H::Event>> + DoubleEndedIterator + '_ {
        self.events.iter()
    }

    /// What this replica has applied, per origin.
    pub fn version(&self) -> &VersionVector {
        &self.seen
    }

    /// How many received events wait for their causal past.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The received events that wait for their causal past.
    pub fn waiting_events(&self) -> &[EventEnvelope<H::Event>] {
        &self.waiting
    }

    /// How many events were applied, compacted ones included.
    pub fn applied_events(&self) -> u64 {
        self.compacted_events
            .saturating_add(u64::try_from(self.events.len()).unwrap_or(u64::MAX))
    }

    /// The events dropped from memory by [`compact`](Self::compact), as a
    /// version (empty if none were).
    pub fn compacted(&self) -> &VersionVector {
        &self.checkpoints[0].1
    }

    /// How many events [`compact`](Self::compact) dropped from memory.
    pub fn compacted_events(&self) -> u64 {
        self.compacted_events
    }

    /// Whether a deliverable event may sort among the compacted events, so
    /// that delivery stopped until [`restore_history`](Self::restore_history).
    pub fn needs_history(&self) -> bool {
        self.history_needed
    }

    /// The history of the compacted events is gone (the journal deleted
    /// them, or never held them because the log started from a peer's
    /// snapshot): an event that does not sort after them can no longer be
    /// placed, so it is refused (logged and counted in
    /// [`refused_events`](Self::refused_events)) instead of making the log
    /// ask for its history. Such an event was made by a replica that had not
    /// seen a prefix every listed replica had passed: one outside the
    /// listed replicas, a removed one back with its old journal, or one
    /// with other retention settings.
    pub fn forget_history(&mut self) {
        self.history_forgotten = true;
    }

    /// The journal may delete compacted events (retention): compaction then
    /// also waits for the events of the old incarnation of a node whose
    /// journal was lost, which other replicas may still relay, until the
    /// node's new incarnation has made an event and reports no more of them
    /// than this log holds. Without deletion, such an event makes the log
    /// read its history back instead.
    pub fn history_may_be_deleted(&mut self) {
        self.history_deletable = true;
    }

    /// Whether [`history_may_be_deleted`](Self::history_may_be_deleted) was
    /// called.
    pub fn history_deletable(&self) -> bool {
        self.history_deletable
    }

    /// `replica` runs, though it may have made no event yet: a node's newest
    /// incarnation is the one whose next events compaction waits for, and
    /// the older ones' events still on their way are waited for too (see
    /// [`history_may_be_deleted`](Self::history_may_be_deleted)).
    pub fn incarnation_runs(&mut self, replica: &ReplicaId) {
        self.index_of(replica);
    }

    /// Whether [`forget_history`](Self::forget_history) was called.
    pub fn history_forgotten(&self) -> bool {
        self.history_forgotten
    }

    /// How many events were refused because they sort among compacted
    /// events whose history is [forgotten](Self::forget_history).
    pub fn refused_events(&self) -> u64 {
        self.refused
    }

    /// Whether [`missing_for`](Self::missing_for) can answer a peer whose
    /// version is `peer` from memory: it holds every compacted event.
    pub fn can_serve(&self, peer: &VersionVector) -> bool {
        peer.descends(self.compacted())
    }

    /// Stamps local events at `timestamp` and applies them at once, for a
    /// log that nothing journals (tests, simulations, state kept in memory
    /// only). Returns the envelopes, for the other replicas. An entity does
    /// not use it: it journals the [`stamp`](Self::stamp)ed events before it
    /// applies them with [`receive`](Self::receive), so that an event that
    /// failed to reach the journal is never applied.
    pub fn apply_local(
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
        self.free_some();
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
            self.deliver_waiting(&mut applied);
        }
        self.bring_state_up_to_date();
        applied
    }

    fn deliver_waiting(&mut self, applied: &mut Vec<EventEnvelope<H::Event>>) {
        while !self.history_needed {
            let Some(ready) = self.waiting.iter().position(|e| self.is_deliverable(e)) else {
                break;
            };
            if !self.follows_compacted(&self.waiting[ready]) {
                if self.history_forgotten {
                    let refused = self.waiting.swap_remove(ready);
                    self.refused = self.refused.saturating_add(1);
                    tracing::error!(
                        origin = %refused.origin,
                        sequence = refused.origin_seq,
                        "an event sorts among events whose history was deleted; refused"
                    );
                    continue;
                }
                tracing::debug!(
                    origin = %self.waiting[ready].origin,
                    sequence = self.waiting[ready].origin_seq,
                    "an event may sort among compacted events; the history is needed"
                );
                self.history_needed = true;
                break;
            }
            let envelope = self.waiting.swap_remove(ready);
            self.insert(envelope.clone());
            applied.push(envelope);
        }
    }

    /// Starts the log from a snapshot and the journaled events outside it:
    /// `known`, those journaled when the snapshot was taken, and `later`,
    /// those journaled since. False, with the log left empty, if a later
    /// event has not seen all of the snapshot: it may sort inside the
    /// prefix (the log read its history back after the snapshot), so the
    /// snapshot cannot be trusted, and the caller recovers from the whole
    /// journal instead. Events the snapshot covers are skipped.
    pub fn recover_from_snapshot(
        &mut self,
        snapshot: Snapshot<H::State>,
        known: impl IntoIterator<Item = EventEnvelope<H::Event>>,
        later: impl IntoIterator<Item = EventEnvelope<H::Event>>,
    ) -> bool {
        if !self.events.is_empty() || !self.waiting.is_empty() || self.compacted_events > 0 {
            return false;
        }
        let outside = |e: &EventEnvelope<H::Event>| e.origin_seq > snapshot.version.get(&e.origin);
        let later: Vec<EventEnvelope<H::Event>> = later.into_iter().filter(outside).collect();
        if !later.iter().all(|e| past_includes(e, &snapshot.version)) {
            return false;
        }
        let after: Vec<EventEnvelope<H::Event>> =
            known.into_iter().filter(outside).chain(later).collect();
        self.start_from(snapshot);
        self.walk(after);
        true
    }

    /// Rebuilds the log from its whole history, read back from the journal,
    /// after [`needs_history`](Self::needs_history) stopped delivery; then
    /// delivers what waited. Returns the events applied from those waiting,
    /// as [`receive_all`](Self::receive_all) does.
    pub fn restore_history(
        &mut self,
        journaled: impl IntoIterator<Item = EventEnvelope<H::Event>>,
    ) -> Vec<EventEnvelope<H::Event>> {
        let waiting = std::mem::take(&mut self.waiting);
        self.start_from(Snapshot {
            state: H::State::default(),
            version: VersionVector::new(),
            events: 0,
        });
        self.recover(journaled);
        self.receive_all(waiting)
    }

    /// Starts again from a peer's `snapshot`, for a replica that lacks
    /// events the peer's journal no longer holds; `holds` is everything the
    /// peer had applied when it sent it. The events this log holds outside
    /// the snapshot are kept after it, and it forgets the history before it
    /// ([`forget_history`](Self::forget_history)). Returns the events that
    /// waited and could be applied then, as [`receive_all`](Self::receive_all)
    /// does.
    ///
    /// `None`, with nothing changed, if the snapshot does not fit this log:
    /// its compacted events are not all in the snapshot, or an event it
    /// holds outside the snapshot neither was in the peer's log (where it
    /// sorted after the snapshot) nor has seen the whole snapshot. A log
    /// that already holds the whole snapshot has nothing to take from it.
    pub fn install_snapshot(
        &mut self,
        snapshot: Snapshot<H::State>,
        holds: &VersionVector,
    ) -> Option<Vec<EventEnvelope<H::Event>>> {
        if self.seen.descends(&snapshot.version) {
            return Some(Vec::new());
        }
        let outside = |e: &EventEnvelope<H::Event>| e.origin_seq > snapshot.version.get(&e.origin);
        let fits = snapshot.version.descends(self.compacted())
            && self.events.iter().filter(|e| outside(e)).all(|e| {
                e.origin_seq <= holds.get(&e.origin) || past_includes(e, &snapshot.version)
            });
        if !fits {
            return None;
        }
        self.bring_state_up_to_date();
        let kept: Vec<EventEnvelope<H::Event>> =
            self.events.iter().filter(|e| outside(e)).cloned().collect();
        let waiting = std::mem::take(&mut self.waiting);
        self.start_from(snapshot);
        self.history_forgotten = true;
        self.sorted_after_snapshot = holds.clone();
        self.walk(kept);
        Some(self.receive_all(waiting))
    }

    /// Empties the log down to `snapshot`, as if it had compacted exactly
    /// that prefix.
    fn start_from(&mut self, snapshot: Snapshot<H::State>) {
        self.events.clear();
        self.nodes_by_origin.clear();
        self.origins.clear();
        self.origin_index.clear();
        self.compacted_latest.clear();
        self.applied = 0;
        self.stale_from = None;
        self.history_needed = false;
        for (replica, _) in snapshot.version.iter() {
            self.index_of(replica);
        }
        self.seen = snapshot.version.clone();
        self.state = snapshot.state.clone();
        self.checkpoints = vec![(snapshot.state, snapshot.version)];
        self.compacted_events = snapshot.events;
    }

    /// Drops from memory the longest prefix of the canonical order (all of
    /// it, or up to a checkpoint) that every event still to come will have
    /// seen, as far as this log can tell, and returns the state after it;
    /// `None` if such a prefix would not drop at least `at_least` events
    /// (each compaction is a snapshot to save, so it should be worth one).
    ///
    /// An event that has seen the whole prefix becomes available in the
    /// canonical walk only after it, so the prefix stays the prefix whatever
    /// such events arrive. The events to come are this replica's own, and
    /// those of the replicas in `peers`, each given by its node name and the
    /// version it last reported, if any: a peer's next event follows its
    /// latest event this log holds and, if the log holds every event the
    /// peer had persisted when it reported, the report. That covers the
    /// peers' events waiting for their past too. A waiting event of a
    /// replica left out does not hold compaction back: one whose past never
    /// comes would hold it back for good.
    ///
    /// Replicas left out of `peers` (unreachable, or unknown yet) may later
    /// send events that sort among the compacted ones; the log then asks for
    /// its history ([`needs_history`](Self::needs_history)).
    pub fn compact<'a>(
        &mut self,
        peers: impl IntoIterator<Item = (&'a str, Option<&'a VersionVector>)>,
        at_least: usize,
    ) -> Option<Snapshot<H::State>> {
        if self.history_needed {
            return None;
        }
        self.bring_state_up_to_date();
        // `lowest[i]`: the lowest count of origin `i` in the causal pasts of
        // the events to come.
        let mut lowest = vec![u64::MAX; self.origins.len()];
        let peers: Vec<(&str, Option<&VersionVector>)> = peers.into_iter().collect();
        let mut bounds: Vec<VersionVector> = peers
            .iter()
            .map(|&(node, report)| self.next_event_bound(node, report))
            .collect();
        if self.history_deletable {
            bounds.extend(self.old_incarnation_bounds(&peers));
        }
        for bound in &bounds {
            for (slot, replica) in lowest.iter_mut().zip(&self.origins) {
                *slot = (*slot).min(bound.get(replica));
            }
        }
        let seen_by_all = |prefix: &VersionVector| {
            prefix.iter().all(|(replica, count)| {
                self.origin_index
                    .get(replica)
                    .is_some_and(|&index| count <= lowest[index])
            })
        };
        // The cut: everything (the current state is after it), else the
        // last checkpoint that every event to come will have seen.
        let everything = self.events.len();
        let cut = if everything > 0 && seen_by_all(&self.seen) {
            Some((everything, None))
        } else {
            (1..self.checkpoints.len())
                .rev()
                .find(|&checkpoint| seen_by_all(&self.checkpoints[checkpoint].1))
                .map(|checkpoint| (checkpoint * CHECKPOINT_EVERY, Some(checkpoint)))
        };
        let (end, checkpoint) = cut.filter(|&(end, _)| end >= at_least.max(1))?;
        // An origin's events are in order, so those cut are a prefix of its
        // nodes.
        for (nodes, latest) in self
            .nodes_by_origin
            .iter_mut()
            .zip(&mut self.compacted_latest)
        {
            let cut = nodes.partition_point(|&node| self.events.rank(node) < end);
            if let Some(&last) = cut.checked_sub(1).and_then(|last| nodes.get(last)) {
                *latest = Some(self.events.item(last).version.clone());
            }
            nodes.drain(..cut);
        }
        self.unfreed.reserve(end);
        let unfreed = &mut self.unfreed;
        self.events
            .remove_first(end, &by(&self.resolver), |envelope| unfreed.push(envelope));
        match checkpoint {
            Some(checkpoint) => {
                self.checkpoints.drain(..checkpoint);
            }
            None => self.checkpoints = vec![(self.state.clone(), self.seen.clone())],
        }
        self.applied -= end;
        self.compacted_events = self
            .compacted_events
            .saturating_add(u64::try_from(end).unwrap_or(u64::MAX));
        Some(Snapshot {
            state: self.checkpoints[0].0.clone(),
            version: self.checkpoints[0].1.clone(),
            events: self.compacted_events,
        })
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
        if !self.events.is_empty()
            || !self.waiting.is_empty()
            || self.history_needed
            || self.compacted_events > 0
        {
            self.receive_all(envelopes);
            return;
        }
        self.walk(envelopes);
    }

    /// Places `envelopes` by a walk of the canonical order, after what the
    /// log holds (nothing, or a compacted prefix they all sort after).
    fn walk(&mut self, envelopes: impl IntoIterator<Item = EventEnvelope<H::Event>>) {
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

    /// The applied events in memory a peer whose version is `peer` lacks, in
    /// an order that respects causality: all it lacks if
    /// [`can_serve`](Self::can_serve) says so, else the journal must answer.
    pub fn missing_for(&self, peer: &VersionVector) -> Vec<&EventEnvelope<H::Event>> {
        self.missing(peer, None)
    }

    /// Of the events [`missing_for`](Self::missing_for) gives, those within
    /// `held` (an earlier version of this log: what it held then).
    pub fn missing_for_within(
        &self,
        peer: &VersionVector,
        held: &VersionVector,
    ) -> Vec<&EventEnvelope<H::Event>> {
        self.missing(peer, Some(held))
    }

    /// Each origin's missing events are a run of its consecutive sequence
    /// numbers, so the cost is in the events missing, not in those held.
    fn missing(
        &self,
        peer: &VersionVector,
        held: Option<&VersionVector>,
    ) -> Vec<&EventEnvelope<H::Event>> {
        let mut missing: Vec<(usize, NodeId)> = Vec::new();
        for (origin, nodes) in self.origins.iter().zip(&self.nodes_by_origin) {
            let Some(&front) = nodes.front() else {
                continue;
            };
            let first = self.events.item(front).origin_seq;
            let from = peer.get(origin).saturating_add(1).max(first);
            let to = held.map_or(u64::MAX, |held| held.get(origin));
            let skip = usize::try_from(from - first).unwrap_or(usize::MAX);
            let take =
                usize::try_from(to.saturating_add(1).saturating_sub(from)).unwrap_or(usize::MAX);
            missing.extend(
                nodes
                    .iter()
                    .skip(skip)
                    .take(take)
                    .map(|&node| (self.events.rank(node), node)),
            );
        }
        // The canonical order respects causality.
        missing.sort_unstable();
        missing
            .into_iter()
            .map(|(_, node)| self.events.item(node))
            .collect()
    }

    fn is_known(&self, envelope: &EventEnvelope<H::Event>) -> bool {
        envelope.origin_seq <= self.seen.get(&envelope.origin)
            || self
                .waiting
                .iter()
                .any(|w| w.origin == envelope.origin && w.origin_seq == envelope.origin_seq)
    }

    /// The canonical order of two events (see [`canonical`]).
    fn order(&self, first: &EventEnvelope<H::Event>, second: &EventEnvelope<H::Event>) -> Ordering {
        canonical(&self.resolver, first, second)
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

    /// A version the causal past of the next event of the replica on `node`
    /// includes, given the version it last reported.
    fn next_event_bound(&self, node: &str, report: Option<&VersionVector>) -> VersionVector {
        // A node's replica is its newest incarnation: a node whose journal
        // was wiped persists under a new one, and the old one never again.
        let replica = self
            .origins
            .iter()
            .chain(report.into_iter().flat_map(|v| v.iter().map(|(r, _)| r)))
            .filter(|replica| replica.node() == node)
            .max()
            .cloned();
        let mut bound = VersionVector::new();
        let Some(replica) = replica else {
            // It has persisted nothing: its first event follows its report.
            if let Some(report) = report {
                bound.merge(report);
            }
            return bound;
        };
        if let Some(&index) = self.origin_index.get(&replica) {
            let in_memory = self.nodes_by_origin[index]
                .back()
                .map(|&node| &self.events.item(node).version);
            if let Some(latest) = in_memory.or(self.compacted_latest[index].as_ref()) {
                bound.merge(latest);
            }
        }
        // Events it persisted before reporting may still be on their way,
        // with pasts the report says nothing of.
        if let Some(report) = report.filter(|r| r.get(&replica) <= self.seen.get(&replica)) {
            bound.merge(report);
        }
        bound
    }

    /// Bounds on the pasts of the events still to come from the old
    /// incarnations of nodes whose journal was lost: other replicas may hold
    /// some this log lacks and relay them. An old incarnation is waited for
    /// until its node's new one has made an event (which, when history may
    /// be deleted, it does only once it caught up with every listed replica,
    /// so with every surviving event of the old one) and reports no more of
    /// the old one's events than this log holds.
    fn old_incarnation_bounds(
        &self,
        peers: &[(&str, Option<&VersionVector>)],
    ) -> Vec<VersionVector> {
        let own = self.replica.node();
        let mut bounds = Vec::new();
        for (index, origin) in self.origins.iter().enumerate() {
            let node = origin.node();
            let report = if node == own {
                Some(&self.seen)
            } else {
                match peers.iter().find(|(peer, _)| *peer == node) {
                    Some((_, report)) => *report,
                    // Not a replica whose events are waited for.
                    None => continue,
                }
            };
            let newest = self
                .origins
                .iter()
                .chain(report.into_iter().flat_map(|v| v.iter().map(|(r, _)| r)))
                .chain((node == own).then_some(&self.replica))
                .filter(|replica| replica.node() == node)
                .max();
            if newest == Some(origin) {
                continue;
            }
            let done = report.is_some_and(|report| {
                newest.is_some_and(|newest| report.get(newest) > 0)
                    && report.get(origin) <= self.seen.get(origin)
            });
            if done {
                continue;
            }
            let in_memory = self.nodes_by_origin[index]
                .back()
                .map(|&node| &self.events.item(node).version);
            bounds.push(
                in_memory
                    .or(self.compacted_latest[index].as_ref())
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        bounds
    }

    /// Whether an event sorts after every compacted event: it has seen
    /// them all, or the peer whose snapshot the log started from held it
    /// (after that snapshot, which a later compaction leaves only for a
    /// prefix that the events to come follow).
    fn follows_compacted(&self, envelope: &EventEnvelope<H::Event>) -> bool {
        past_includes(envelope, self.compacted())
            || envelope.origin_seq <= self.sorted_after_snapshot.get(&envelope.origin)
    }

    /// Inserts a deliverable event at its canonical place; the state catches
    /// up in [`bring_state_up_to_date`](Self::bring_state_up_to_date).
    ///
    /// Nothing applied depends on the new event, so it is a maximal element:
    /// in the canonical topological order it becomes available right after
    /// its last predecessor, and it goes before the first later event the
    /// resolver orders after it; the order of all other events is unchanged.
    fn insert(&mut self, envelope: EventEnvelope<H::Event>) {
        // Its last predecessor is the latest, in the order, of the last
        // events it had seen of each origin; those compacted are before
        // everything in memory.
        let mut available_from = 0;
        for (replica, n) in envelope.version.iter() {
            let Some(&index) = self.origin_index.get(replica) else {
                continue;
            };
            let last_seen = if replica == &envelope.origin {
                n.saturating_sub(1)
            } else {
                n
            };
            if let Some(node) = self.node_of(index, last_seen) {
                available_from = available_from.max(self.events.rank(node) + 1);
            }
        }
        let position = self
            .events
            .first_after(available_from, &envelope, &by(&self.resolver))
            .unwrap_or(self.events.len());
        if position < self.applied {
            self.stale_from = Some(self.stale_from.map_or(position, |p| p.min(position)));
        }
        self.place(position, envelope);
    }

    /// Puts an event at `position` of the canonical order.
    fn place(&mut self, position: usize, envelope: EventEnvelope<H::Event>) {
        self.seen.merge(&envelope.version);
        let origin = self.index_of(&envelope.origin);
        let node = self.events.insert(position, envelope, &by(&self.resolver));
        self.nodes_by_origin[origin].push_back(node);
    }

    /// The node of event `sequence` of the origin at `index`, if it is in
    /// memory.
    fn node_of(&self, index: usize, sequence: u64) -> Option<NodeId> {
        let nodes = &self.nodes_by_origin[index];
        let first = self.events.item(*nodes.front()?).origin_seq;
        let offset = usize::try_from(sequence.checked_sub(first)?).ok()?;
        nodes.get(offset).copied()
    }

    fn index_of(&mut self, replica: &ReplicaId) -> usize {
        match self.origin_index.get(replica) {
            Some(&index) => index,
            None => {
                self.origins.push(replica.clone());
                self.compacted_latest.push(None);
                self.nodes_by_origin.push(VecDeque::new());
                self.origin_index
                    .insert(replica.clone(), self.origins.len() - 1);
                self.origins.len() - 1
            }
        }
    }

    /// Frees some of the compacted events, and the room they took once all
    /// are: at every intake, and at every anti-entropy tick of its
    /// [`Replication`](super::Replication).
    pub(crate) fn free_some(&mut self) {
        if self.unfreed.is_empty() {
            return;
        }
        self.unfreed
            .truncate(self.unfreed.len().saturating_sub(FREE_AT_ONCE));
        if self.unfreed.is_empty() {
            self.unfreed = Vec::new();
        }
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
        // The events before a position are a prefix of a topological order:
        // they hold the causal past of the event there, so it is concurrent
        // with one of them exactly when they outnumber its past. Counting
        // spares the replay a version merge and comparison per event.
        let compacted: u64 = self.checkpoints[0].1.iter().map(|(_, n)| n).sum();
        let mut checkpoint_states = Vec::new();
        for (i, event) in (start..).zip(self.events.iter_from(start)) {
            let before = compacted.saturating_add(u64::try_from(i).unwrap_or(u64::MAX));
            apply(&self.handler, &mut self.state, event, before);
            if (i + 1) % CHECKPOINT_EVERY == 0 {
                checkpoint_states.push((i + 1, self.state.clone()));
            }
        }
        for (end, state) in checkpoint_states {
            let version = self.prefix_version(end);
            self.checkpoints.push((state, version));
        }
        self.applied = self.events.len();
    }

    /// The version of the compacted events and the first `end` in memory:
    /// per origin, its last event among them.
    fn prefix_version(&self, end: usize) -> VersionVector {
        let mut version = self.compacted().clone();
        for (origin, nodes) in self.origins.iter().zip(&self.nodes_by_origin) {
            // An origin's events are in order, so those before `end` are a
            // prefix of its nodes.
            let count = nodes.partition_point(|&node| self.events.rank(node) < end);
            if let Some(&last) = count.checked_sub(1).and_then(|last| nodes.get(last)) {
                version.observe(&Dot {
                    replica: origin.clone(),
                    counter: self.events.item(last).origin_seq,
                });
            }
        }
        version
    }
}

/// The resolver's order, with ties broken by event identity, so that the
/// incremental insertion and the one-pass recovery agree even for a resolver
/// that leaves ties.
fn canonical<E, R: ConflictResolver<E>>(
    resolver: &R,
    first: &EventEnvelope<E>,
    second: &EventEnvelope<E>,
) -> Ordering {
    resolver
        .order(first, second)
        .then_with(|| (&first.origin, first.origin_seq).cmp(&(&second.origin, second.origin_seq)))
}

/// [`canonical`] with `resolver`, as the tree takes an order.
fn by<E, R: ConflictResolver<E>>(
    resolver: &R,
) -> impl Fn(&EventEnvelope<E>, &EventEnvelope<E>) -> Ordering + '_ {
    move |first, second| canonical(resolver, first, second)
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

/// Whether every event of `prefix` is in the causal past of `envelope`.
fn past_includes<E>(envelope: &EventEnvelope<E>, prefix: &VersionVector) -> bool {
    prefix.iter().all(|(replica, count)| {
        let seen = envelope.version.get(replica);
        let past = if replica == &envelope.origin {
            seen.saturating_sub(1)
        } else {
            seen
        };
        count <= past
    })
}

/// Applies an event that `before` events precede in the canonical order,
/// compacted ones included.
fn apply<H: EventHandler>(
    handler: &H,
    state: &mut H::State,
    envelope: &EventEnvelope<H::Event>,
    before: u64,
) {
    let past = envelope
        .version
        .iter()
        .fold(0u64, |sum, (_, n)| sum.saturating_add(n))
        .saturating_sub(1);
    let concurrent = past != before;
    let meta = EventMeta {
        origin: &envelope.origin,
        timestamp: envelope.timestamp,
        concurrent,
    };
    handler.apply(state, &envelope.event, meta);
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::persistence::LastWriterWins;

    /// Events are numbers; the state is their sum.
    pub(in crate::persistence) struct Sum;

    impl EventHandler for Sum {
        type Event = u64;
        type State = u64;

        fn apply(&self, state: &mut u64, event: &u64, _meta: EventMeta<'_>) {
            *state += event;
        }
    }

    #[test]
    fn compacted_events_are_freed_a_few_at_each_intake() {
        let mut log = ReplicatedLog::new(ReplicaId::new("a", 1), Sum, LastWriterWins);
        let events = log.stamp(vec![1; 1000], 1);
        log.receive_all(events);
        let snapshot = log.compact([], 1000).expect("alone, everything");
        assert_eq!((snapshot.events, snapshot.state), (1000, 1000));
        assert!(log.events().next().is_none());
        assert_eq!(log.unfreed.len(), 1000, "none freed by the compaction");

        for intake in 1..=4 {
            let events = log.stamp(vec![1], 2);
            log.receive_all(events);
            assert_eq!(log.unfreed.len(), 1000 - (intake * FREE_AT_ONCE).min(1000));
        }
        assert_eq!(log.unfreed.capacity(), 0, "the room is given back too");
        assert_eq!(*log.state(), 1004);
    }

    fn log(node: &str) -> ReplicatedLog<Sum, LastWriterWins> {
        ReplicatedLog::new(ReplicaId::new(node, 1), Sum, LastWriterWins)
    }

    #[test]
    fn a_log_starts_again_from_a_peer_snapshot_that_fits_it() {
        // The peer holds a1..a64 (1 each) and x1 (100), made concurrently
        // and sorted after them (a later timestamp). A replica y that saw
        // the a's, and nothing of x, lets it compact them and keep x1.
        let mut peer = log("a");
        let from_a = peer.stamp(vec![1; 64], 1);
        peer.receive_all(from_a.clone());
        let x1 = log("x").stamp(vec![100], 1_000);
        peer.receive_all(x1.clone());
        let y_report = from_a[63].version.clone();
        let snapshot = peer.compact([("y", Some(&y_report))], 1).expect("the a's");
        assert_eq!((snapshot.events, snapshot.state), (64, 64));
        let holds = peer.version().clone();

        // b made b1 after seeing only a1 and a2: it may sort inside the
        // snapshot, which then cannot stand for b's history.
        let mut b = log("b");
        b.receive_all(from_a[..2].to_vec());
        let b1 = b.stamp(vec![1000], 3);
        b.receive_all(b1);
        assert!(b.install_snapshot(snapshot.clone(), &holds).is_none());
        assert_eq!((*b.state(), b.history_forgotten()), (1002, false));

        // c had a1 and nothing of its own: it takes the snapshot, then x1,
        // which sorts after the snapshot though it did not see it.
        let mut c = log("c");
        c.receive_all(from_a[..1].to_vec());
        assert_eq!(
            c.install_snapshot(snapshot.clone(), &holds),
            Some(Vec::new())
        );
        assert_eq!(*c.state(), 64);
        assert_eq!(c.version(), &snapshot.version);
        assert!(c.history_forgotten());
        assert_eq!(c.receive_all(x1).len(), 1);
        assert_eq!(*c.state(), 164);

        // An event the peer did not hold, made without seeing the snapshot,
        // would sort among events whose history is gone: refused.
        let z1 = log("z").stamp(vec![10_000], 4);
        assert!(c.receive_all(z1).is_empty());
        assert_eq!((*c.state(), c.refused_events(), c.waiting()), (164, 1, 0));
        assert_eq!(
            c.install_snapshot(snapshot, &holds),
            Some(Vec::new()),
            "held already"
        );
    }
}
