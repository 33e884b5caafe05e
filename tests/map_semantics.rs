//! Every map type against a reference model of its value.
//!
//! The merge laws (src/crdt/laws.rs) prove that replicas converge, not that
//! they converge on the right value. Here each update of a key is an event
//! that remembers which of the key's updates its writer saw, and the model
//! computes a key's value from scratch: the inner events of every update that
//! survives (no later update or remove saw it) and of all the updates those
//! were built on. Random histories write, remove and re-create keys on the
//! same replica while others update concurrently, deliver operations late,
//! duplicated and out of order, merge whole states, restart replicas (their
//! state round-trips through the codec and loses what is not replicated) and
//! crash them (they lose everything and come back under a new incarnation).
//! After every step, each touched replica must read exactly the model's value.
//!
//! `MODEL_CASES=<n>` runs n random histories per map type (default 300).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::rc::Rc;

use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use ractor_replicated::{
    codec, LWWMap, LWWRegister, MVRegister, ORMap, ORMultiMap, ORSet, OpBased, PNCounter,
    PNCounterMap, ReplicaId, ReplicatedData,
};
use serde::{Deserialize, Serialize};

type EventId = u64;

/// The expected semantics of one value type.
trait Model: 'static {
    /// What a writer may do to a value.
    type Action: Arbitrary + Debug + Clone;
    /// What it did, with what it saw of the value it started from.
    type Event: Clone + Debug;
    /// What a reader sees.
    type Value: PartialEq + Debug;

    fn id(event: &Self::Event) -> EventId;

    /// The event of `action` on the value made of `start`.
    fn event(start: &[Self::Event], action: &Self::Action, id: &mut EventId) -> Self::Event;

    /// The value made of `events` (each event at most once).
    fn value(events: &[Self::Event]) -> Self::Value;
}

fn next(id: &mut EventId) -> EventId {
    *id += 1;
    *id
}

/// Events not seen by any other event of `events`.
fn unobserved<E>(
    events: &[E],
    observed: impl Fn(&E) -> &[EventId],
    id: impl Fn(&E) -> EventId,
) -> impl Iterator<Item = &E> {
    let seen: BTreeSet<EventId> = events.iter().flat_map(|e| observed(e).to_vec()).collect();
    events.iter().filter(move |e| !seen.contains(&id(e)))
}

// ---- sets -----------------------------------------------------------------

#[derive(Clone, Debug)]
enum SetAction {
    Add(u8),
    Remove(u8),
}

impl Arbitrary for SetAction {
    fn arbitrary(g: &mut Gen) -> Self {
        let member = u8::arbitrary(g) % 4;
        if u8::arbitrary(g) % 3 == 0 {
            SetAction::Remove(member)
        } else {
            SetAction::Add(member)
        }
    }
}

#[derive(Clone, Debug)]
enum SetEvent {
    Add {
        id: EventId,
        member: u8,
    },
    Remove {
        id: EventId,
        member: u8,
        observed: Vec<EventId>,
    },
}

struct SetModel;

impl Model for SetModel {
    type Action = SetAction;
    type Event = SetEvent;
    type Value = Vec<u8>;

    fn id(event: &SetEvent) -> EventId {
        match event {
            SetEvent::Add { id, .. } | SetEvent::Remove { id, .. } => *id,
        }
    }

    fn event(start: &[SetEvent], action: &SetAction, id: &mut EventId) -> SetEvent {
        match *action {
            SetAction::Add(member) => SetEvent::Add {
                id: next(id),
                member,
            },
            SetAction::Remove(member) => SetEvent::Remove {
                id: next(id),
                member,
                // A remove sees the adds of the member present in its start.
                observed: live_adds(start)
                    .filter(|(_, m)| *m == member)
                    .map(|(id, _)| id)
                    .collect(),
            },
        }
    }

    fn value(events: &[SetEvent]) -> Vec<u8> {
        let members: BTreeSet<u8> = live_adds(events).map(|(_, member)| member).collect();
        members.into_iter().collect()
    }
}

/// The adds of `events` that no remove of `events` saw.
fn live_adds(events: &[SetEvent]) -> impl Iterator<Item = (EventId, u8)> + '_ {
    let removed: BTreeSet<EventId> = events
        .iter()
        .flat_map(|e| match e {
            SetEvent::Remove { observed, .. } => observed.clone(),
            SetEvent::Add { .. } => Vec::new(),
        })
        .collect();
    events.iter().filter_map(move |e| match e {
        SetEvent::Add { id, member } if !removed.contains(id) => Some((*id, *member)),
        _ => None,
    })
}

// ---- counters -------------------------------------------------------------

#[derive(Clone, Debug)]
struct CountEvent {
    id: EventId,
    by: i64,
}

/// Counters count every change in the history, once.
struct CounterModel;

impl Model for CounterModel {
    type Action = i8;
    type Event = CountEvent;
    type Value = i128;

    fn id(event: &CountEvent) -> EventId {
        event.id
    }

    fn event(_: &[CountEvent], by: &i8, id: &mut EventId) -> CountEvent {
        CountEvent {
            id: next(id),
            by: i64::from(*by),
        }
    }

    fn value(events: &[CountEvent]) -> i128 {
        events.iter().map(|e| i128::from(e.by)).sum()
    }
}

/// A grow-only count, for the user type.
struct GrowModel;

impl Model for GrowModel {
    type Action = u8;
    type Event = CountEvent;
    type Value = i128;

    fn id(event: &CountEvent) -> EventId {
        event.id
    }

    fn event(_: &[CountEvent], by: &u8, id: &mut EventId) -> CountEvent {
        CountEvent {
            id: next(id),
            // At least 1, so that every event moves its writer's count.
            by: i64::from(*by % 8) + 1,
        }
    }

    fn value(events: &[CountEvent]) -> i128 {
        CounterModel::value(events)
    }
}

// ---- registers ------------------------------------------------------------

#[derive(Clone, Debug)]
struct WriteEvent {
    id: EventId,
    value: u8,
    /// The writes present in the register the writer saw.
    observed: Vec<EventId>,
}

/// A multi-value register shows the writes no other write saw.
struct MultiValueModel;

impl Model for MultiValueModel {
    type Action = u8;
    type Event = WriteEvent;
    type Value = Vec<u8>;

    fn id(event: &WriteEvent) -> EventId {
        event.id
    }

    fn event(start: &[WriteEvent], value: &u8, id: &mut EventId) -> WriteEvent {
        WriteEvent {
            id: next(id),
            value: *value,
            observed: unobserved(start, |w| &w.observed, |w| w.id)
                .map(|w| w.id)
                .collect(),
        }
    }

    fn value(events: &[WriteEvent]) -> Vec<u8> {
        let mut values: Vec<u8> = unobserved(events, |w| &w.observed, |w| w.id)
            .map(|w| w.value)
            .collect();
        values.sort_unstable();
        values
    }
}

/// A last-writer-wins register shows its latest write; event ids are the
/// timestamps, so no two writes tie.
struct LastWriterModel;

impl Model for LastWriterModel {
    type Action = u8;
    type Event = WriteEvent;
    type Value = Option<u8>;

    fn id(event: &WriteEvent) -> EventId {
        event.id
    }

    fn event(_: &[WriteEvent], value: &u8, id: &mut EventId) -> WriteEvent {
        WriteEvent {
            id: next(id),
            value: *value,
            observed: Vec::new(),
        }
    }

    fn value(events: &[WriteEvent]) -> Option<u8> {
        events.iter().max_by_key(|w| w.id).map(|w| w.value)
    }
}

// ---- maps -----------------------------------------------------------------

#[derive(Clone, Debug)]
enum MapEvent<E> {
    Update {
        id: EventId,
        key: u8,
        /// The updates of the key present where it was written.
        observed: Vec<EventId>,
        /// The inner events of the value it wrote: its own and those of every
        /// update it was built on.
        history: Rc<Vec<E>>,
    },
    Remove {
        id: EventId,
        key: u8,
        observed: Vec<EventId>,
    },
}

impl<E> MapEvent<E> {
    fn observed(&self) -> &[EventId] {
        match self {
            MapEvent::Update { observed, .. } | MapEvent::Remove { observed, .. } => observed,
        }
    }

    fn id(&self) -> EventId {
        match self {
            MapEvent::Update { id, .. } | MapEvent::Remove { id, .. } => *id,
        }
    }

    fn key(&self) -> u8 {
        match self {
            MapEvent::Update { key, .. } | MapEvent::Remove { key, .. } => *key,
        }
    }
}

/// What a writer does to a map: update one of two keys (so that writes
/// meet), or remove it (one time in four).
#[derive(Clone, Debug)]
struct MapAction<A> {
    key: u8,
    /// `None` removes the key.
    action: Option<A>,
}

impl<A: Arbitrary> Arbitrary for MapAction<A> {
    fn arbitrary(g: &mut Gen) -> Self {
        let key = u8::arbitrary(g) % 2;
        let action = (u8::arbitrary(g) % 4 != 0).then(|| A::arbitrary(g));
        Self { key, action }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        let key = self.key;
        Box::new(
            self.action
                .shrink()
                .map(move |action| MapAction { key, action }),
        )
    }
}

/// A map whose key `k` holds the value made of the inner events its
/// surviving updates were built on.
struct MapModel<M>(std::marker::PhantomData<M>);

impl<M: Model> MapModel<M> {
    /// The inner events of the surviving updates of `key` and their
    /// histories, each once; `None` if no update of `key` survives.
    fn history_of(events: &[MapEvent<M::Event>], key: u8) -> Option<Vec<M::Event>> {
        let of_key: Vec<MapEvent<M::Event>> =
            events.iter().filter(|e| e.key() == key).cloned().collect();
        let mut seen = BTreeSet::new();
        let mut history = Vec::new();
        let mut any = false;
        for event in unobserved(&of_key, MapEvent::observed, MapEvent::id) {
            if let MapEvent::Update { history: h, .. } = event {
                any = true;
                history.extend(h.iter().filter(|e| seen.insert(M::id(e))).cloned());
            }
        }
        any.then_some(history)
    }
}

impl<M: Model> Model for MapModel<M> {
    /// A key and what to do to its value; `None` removes the key.
    type Action = MapAction<M::Action>;
    type Event = MapEvent<M::Event>;
    type Value = BTreeMap<u8, M::Value>;

    fn id(event: &Self::Event) -> EventId {
        event.id()
    }

    fn event(start: &[Self::Event], action: &Self::Action, id: &mut EventId) -> Self::Event {
        let MapAction { key, action } = action;
        let key = *key;
        let of_key: Vec<Self::Event> = start.iter().filter(|e| e.key() == key).cloned().collect();
        let observed: Vec<EventId> = unobserved(&of_key, MapEvent::observed, MapEvent::id)
            .filter(|e| matches!(e, MapEvent::Update { .. }))
            .map(MapEvent::id)
            .collect();
        match action {
            None => MapEvent::Remove {
                id: next(id),
                key,
                observed,
            },
            Some(action) => {
                let mut history = Self::history_of(start, key).unwrap_or_default();
                history.push(M::event(&history, action, id));
                MapEvent::Update {
                    id: next(id),
                    key,
                    observed,
                    history: Rc::new(history),
                }
            }
        }
    }

    fn value(events: &[Self::Event]) -> Self::Value {
        let keys: BTreeSet<u8> = events.iter().map(MapEvent::key).collect();
        keys.into_iter()
            .filter_map(|key| Some((key, M::value(&Self::history_of(events, key)?))))
            .collect()
    }
}

// ---- the implementations under test -----------------------------------------

/// A value type driven by the events of its model.
trait Value: ReplicatedData + Default {
    type Model: Model;
    /// Does what `event` did, writing as `writer`.
    fn act(&mut self, writer: &ReplicaId, event: &<Self::Model as Model>::Event);
    fn read(&self) -> <Self::Model as Model>::Value;
}

impl Value for ORSet<u8> {
    type Model = SetModel;

    fn act(&mut self, writer: &ReplicaId, event: &SetEvent) {
        let op = match event {
            SetEvent::Add { member, .. } => self.add(writer, *member),
            SetEvent::Remove { member, .. } => self.remove(member),
        };
        self.apply(op);
    }

    fn read(&self) -> Vec<u8> {
        self.iter().copied().collect()
    }
}

impl Value for PNCounter {
    type Model = CounterModel;

    fn act(&mut self, writer: &ReplicaId, event: &CountEvent) {
        self.apply(self.change(writer, event.by));
    }

    fn read(&self) -> i128 {
        self.value()
    }
}

impl Value for MVRegister<u8> {
    type Model = MultiValueModel;

    fn act(&mut self, writer: &ReplicaId, event: &WriteEvent) {
        self.apply(self.write(writer, event.value));
    }

    fn read(&self) -> Vec<u8> {
        let mut values: Vec<u8> = self.values().copied().collect();
        values.sort_unstable();
        values
    }
}

impl Value for LWWRegister<u8> {
    type Model = LastWriterModel;

    fn act(&mut self, writer: &ReplicaId, event: &WriteEvent) {
        let at = i64::try_from(event.id).unwrap_or(i64::MAX);
        self.apply(self.set_with_clock(writer, event.value, &move |_: Option<i64>| at));
    }

    fn read(&self) -> Option<u8> {
        self.value().copied()
    }
}

/// A user's own type: a grow-only count per writer, merged by maximum.
///
/// It also remembers which events each writer's count covers, so that a
/// merge of two counts of one writer that are not one the continuation of
/// the other (a writer identity that re-counted from an earlier point) shows
/// at once, whatever the counts: the value then reads as `i128::MIN`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Tally {
    counts: BTreeMap<ReplicaId, (u64, BTreeSet<EventId>)>,
    collided: bool,
}

impl ReplicatedData for Tally {
    fn merge(&mut self, other: &Self) {
        self.collided |= other.collided;
        for (writer, theirs) in &other.counts {
            let mine = self.counts.entry(writer.clone()).or_default();
            let (low, high) = if mine.0 <= theirs.0 {
                (&*mine, theirs)
            } else {
                (theirs, &*mine)
            };
            if !low.1.is_subset(&high.1) {
                self.collided = true;
            }
            if theirs.0 > mine.0 {
                *mine = theirs.clone();
            }
        }
    }
}

impl Value for Tally {
    type Model = GrowModel;

    fn act(&mut self, writer: &ReplicaId, event: &CountEvent) {
        let (count, events) = self.counts.entry(writer.clone()).or_default();
        *count += event.by.unsigned_abs();
        events.insert(event.id);
    }

    fn read(&self) -> i128 {
        if self.collided {
            return i128::MIN;
        }
        self.counts.values().map(|(n, _)| i128::from(*n)).sum()
    }
}

impl<V: Value> Value for ORMap<u8, V> {
    type Model = MapModel<V::Model>;

    fn act(&mut self, writer: &ReplicaId, event: &MapEvent<<V::Model as Model>::Event>) {
        let op = match event {
            MapEvent::Remove { key, .. } => self.remove(key),
            MapEvent::Update { key, history, .. } => {
                let inner = history.last().expect("an update has its own event");
                self.update(writer, *key, |value, me| value.act(me, inner))
            }
        };
        self.apply(op);
    }

    fn read(&self) -> BTreeMap<u8, <V::Model as Model>::Value> {
        self.iter()
            .map(|(key, value)| (*key, value.read()))
            .collect()
    }
}

/// A map type under test, driven by the events of `MapModel<Self::Inner>`.
trait Subject: ReplicatedData + OpBased + Default {
    type Inner: Model;

    /// The operation that does what `event` did at `replica`.
    fn act(&self, replica: &ReplicaId, event: &MapEvent<<Self::Inner as Model>::Event>)
        -> Self::Op;
    fn read(&self) -> BTreeMap<u8, <Self::Inner as Model>::Value>;
    /// Whether the public API shows a key holding `value`.
    fn shows(_value: &<Self::Inner as Model>::Value) -> bool {
        true
    }
}

impl<V: Value> Subject for ORMap<u8, V> {
    type Inner = V::Model;

    fn act(&self, replica: &ReplicaId, event: &MapEvent<<V::Model as Model>::Event>) -> Self::Op {
        match event {
            MapEvent::Remove { key, .. } => self.remove(key),
            MapEvent::Update { key, history, .. } => {
                let inner = history.last().expect("an update has its own event");
                self.update(replica, *key, |value, me| value.act(me, inner))
            }
        }
    }

    fn read(&self) -> BTreeMap<u8, <V::Model as Model>::Value> {
        Value::read(self)
    }
}

impl Subject for PNCounterMap<u8> {
    type Inner = CounterModel;

    fn act(&self, replica: &ReplicaId, event: &MapEvent<CountEvent>) -> Self::Op {
        match event {
            MapEvent::Remove { key, .. } => self.remove(key),
            MapEvent::Update { key, history, .. } => {
                let by = history.last().expect("an update has its own event").by;
                if by >= 0 {
                    self.increment(replica, *key, by.unsigned_abs())
                } else {
                    self.decrement(replica, *key, by.unsigned_abs())
                }
            }
        }
    }

    fn read(&self) -> BTreeMap<u8, i128> {
        self.iter().map(|(key, value)| (*key, value)).collect()
    }
}

impl Subject for ORMultiMap<u8, u8> {
    type Inner = SetModel;

    fn act(&self, replica: &ReplicaId, event: &MapEvent<SetEvent>) -> Self::Op {
        match event {
            MapEvent::Remove { key, .. } => self.remove(key),
            MapEvent::Update { key, history, .. } => {
                match history.last().expect("an update has its own event") {
                    SetEvent::Add { member, .. } => self.add_binding(replica, *key, *member),
                    SetEvent::Remove { member, .. } => self.remove_binding(replica, *key, member),
                }
            }
        }
    }

    fn read(&self) -> BTreeMap<u8, Vec<u8>> {
        self.iter()
            .map(|(key, set)| (*key, set.iter().copied().collect()))
            .collect()
    }

    fn shows(bindings: &Vec<u8>) -> bool {
        !bindings.is_empty()
    }
}

impl Subject for LWWMap<u8, u8> {
    type Inner = LastWriterModel;

    fn act(&self, replica: &ReplicaId, event: &MapEvent<WriteEvent>) -> Self::Op {
        match event {
            MapEvent::Remove { key, .. } => self.remove(key),
            MapEvent::Update { key, history, .. } => {
                let write = history.last().expect("an update has its own event");
                let at = i64::try_from(write.id).unwrap_or(i64::MAX);
                self.insert_with_clock(replica, *key, write.value, &move |_: Option<i64>| at)
            }
        }
    }

    fn read(&self) -> BTreeMap<u8, Option<u8>> {
        self.iter()
            .map(|(key, value)| (*key, Some(value)))
            .collect()
    }
}

// ---- random histories ---------------------------------------------------------

#[derive(Clone, Debug)]
enum Step<A> {
    /// Replica `at` does `action` to its map and applies the operation.
    Write { at: usize, action: A },
    /// Replica `at` does `action` to a copy of its map, then merges the copy
    /// back.
    WriteOnCopy { at: usize, action: A },
    /// Replica `to` applies operation number `op` (of all so far, modulo).
    Deliver { op: usize, to: usize },
    /// Replica `to` merges replica `from`'s whole state.
    Merge { from: usize, to: usize },
    /// Replica `at` restarts from its state as encoded.
    Restart { at: usize },
    /// Replica `at` loses everything and comes back as a new incarnation.
    Crash { at: usize },
}

impl<A: Arbitrary> Arbitrary for Step<A> {
    fn arbitrary(g: &mut Gen) -> Self {
        let (at, other) = (usize::arbitrary(g), usize::arbitrary(g));
        match u8::arbitrary(g) % 20 {
            0..=9 => Step::Write {
                at,
                action: A::arbitrary(g),
            },
            10 => Step::WriteOnCopy {
                at,
                action: A::arbitrary(g),
            },
            11..=14 => Step::Deliver { op: other, to: at },
            15..=17 => Step::Merge {
                from: other,
                to: at,
            },
            18 => Step::Restart { at },
            _ => Step::Crash { at },
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        match self {
            Step::Write { at, action } => {
                let at = *at;
                Box::new(
                    action
                        .shrink()
                        .map(move |action| Step::Write { at, action }),
                )
            }
            Step::WriteOnCopy { at, action } => {
                let at = *at;
                Box::new(
                    action
                        .shrink()
                        .map(move |action| Step::WriteOnCopy { at, action }),
                )
            }
            _ => Box::new(std::iter::empty()),
        }
    }
}

#[derive(Clone, Debug)]
struct History<A> {
    replicas: usize,
    steps: Vec<Step<A>>,
}

impl<A: Arbitrary> Arbitrary for History<A> {
    fn arbitrary(g: &mut Gen) -> Self {
        History {
            replicas: 2 + usize::arbitrary(g) % 4,
            steps: Vec::arbitrary(g),
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        let replicas = self.replicas;
        Box::new(
            self.steps
                .shrink()
                .map(move |steps| History { replicas, steps }),
        )
    }
}

struct Replica<S> {
    id: ReplicaId,
    state: S,
    /// The model's events this replica has seen.
    view: BTreeSet<EventId>,
}

type ActionOf<S> = <MapModel<<S as Subject>::Inner> as Model>::Action;
type EventOf<S> = MapEvent<<<S as Subject>::Inner as Model>::Event>;

/// Runs `history` and checks every replica it touches against the model.
fn agrees_with_model<S: Subject>(history: History<ActionOf<S>>) -> TestResult {
    let n = history.replicas;
    let mut replicas: Vec<Replica<S>> = (0..n)
        .map(|i| Replica {
            id: ReplicaId::new(format!("r{i}"), 1),
            state: S::default(),
            view: BTreeSet::new(),
        })
        .collect();
    let mut events: BTreeMap<EventId, EventOf<S>> = BTreeMap::new();
    let mut ops: Vec<(S::Op, EventId)> = Vec::new();
    let mut next_id: EventId = 0;
    for (number, step) in history.steps.iter().enumerate() {
        let touched = match step {
            Step::Write { at, action } | Step::WriteOnCopy { at, action } => {
                let replica = &mut replicas[at % n];
                let start: Vec<EventOf<S>> =
                    replica.view.iter().map(|id| events[id].clone()).collect();
                let event = MapModel::<S::Inner>::event(&start, action, &mut next_id);
                let op = if matches!(step, Step::WriteOnCopy { .. }) {
                    let mut copy = replica.state.clone();
                    let op = copy.act(&replica.id, &event);
                    copy.apply(op.clone());
                    replica.state.merge(&copy);
                    op
                } else {
                    let op = replica.state.act(&replica.id, &event);
                    replica.state.apply(op.clone());
                    op
                };
                replica.view.insert(event.id());
                ops.push((op, event.id()));
                events.insert(event.id(), event);
                at % n
            }
            Step::Deliver { op, to } => {
                if ops.is_empty() {
                    continue;
                }
                let (op, id) = ops[op % ops.len()].clone();
                let replica = &mut replicas[to % n];
                replica.state.apply(op);
                replica.view.insert(id);
                to % n
            }
            Step::Merge { from, to } => {
                let (state, view) = {
                    let source = &replicas[from % n];
                    (source.state.clone(), source.view.clone())
                };
                let replica = &mut replicas[to % n];
                replica.state.merge(&state);
                replica.view.extend(view);
                to % n
            }
            Step::Restart { at } => {
                let replica = &mut replicas[at % n];
                let bytes = codec::encode(&replica.state).expect("a state encodes");
                replica.state = codec::decode(&bytes).expect("a state decodes");
                at % n
            }
            Step::Crash { at } => {
                let replica = &mut replicas[at % n];
                let incarnation = replica.id.incarnation() + 1;
                replica.id = ReplicaId::new(replica.id.node().to_string(), incarnation);
                replica.state = S::default();
                replica.view.clear();
                at % n
            }
        };
        let replica = &replicas[touched];
        let seen: Vec<EventOf<S>> = replica.view.iter().map(|id| events[id].clone()).collect();
        if let Err(message) = compare::<S>(&replica.state, &seen) {
            return TestResult::error(format!(
                "after step {number} ({step:?}), replica {touched}: {message}"
            ));
        }
    }
    let everything: Vec<EventOf<S>> = events.values().cloned().collect();
    let mut all = S::default();
    replicas
        .iter()
        .for_each(|replica| all.merge(&replica.state));
    ops.iter().for_each(|(op, _)| all.apply(op.clone()));
    match compare::<S>(&all, &everything) {
        Ok(()) => TestResult::passed(),
        Err(message) => TestResult::error(format!("all replicas and operations merged: {message}")),
    }
}

fn compare<S: Subject>(state: &S, events: &[EventOf<S>]) -> Result<(), String> {
    let mut expected = MapModel::<S::Inner>::value(events);
    expected.retain(|_, value| S::shows(value));
    let actual = state.read();
    if actual == expected {
        Ok(())
    } else {
        Err(format!("read {actual:?}, the model says {expected:?}"))
    }
}

fn check<S: Subject>() {
    let cases = std::env::var("MODEL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    QuickCheck::new()
        .tests(cases)
        .quickcheck(agrees_with_model::<S> as fn(History<ActionOf<S>>) -> TestResult);
}

#[test]
fn a_map_of_sets_reads_what_the_model_says() {
    check::<ORMap<u8, ORSet<u8>>>();
}

#[test]
fn a_map_of_counters_reads_what_the_model_says() {
    check::<ORMap<u8, PNCounter>>();
}

#[test]
fn a_map_of_multi_value_registers_reads_what_the_model_says() {
    check::<ORMap<u8, MVRegister<u8>>>();
}

#[test]
fn a_map_of_a_user_type_reads_what_the_model_says() {
    check::<ORMap<u8, Tally>>();
}

#[test]
fn a_map_of_maps_reads_what_the_model_says() {
    check::<ORMap<u8, ORMap<u8, PNCounter>>>();
}

#[test]
fn a_pn_counter_map_reads_what_the_model_says() {
    check::<PNCounterMap<u8>>();
}

#[test]
fn an_or_multi_map_reads_what_the_model_says() {
    check::<ORMultiMap<u8, u8>>();
}

#[test]
fn an_lww_map_reads_what_the_model_says() {
    check::<LWWMap<u8, u8>>();
}
