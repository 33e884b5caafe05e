//! The lattice laws every CRDT of this crate is property-tested against.
//!
//! A [`History`] is a random run of 2–5 replicas: each step either performs a
//! type-specific action on one replica (through the type's mutators and `apply`)
//! or merges one replica's state into another. From the final states we check
//! that merge is a join and that every grouping and order of merges, and every
//! order of operation delivery with duplicates, reaches the same state.

use std::fmt::Debug;

use quickcheck::{Arbitrary, Gen};

use super::{OpBased, ReplicatedData};
use crate::causal::{Dot, ReplicaId};
use crate::codec;
use crate::rng::SplitMix64;

/// The `i`-th replica of a test.
pub(crate) fn replica(i: usize) -> ReplicaId {
    ReplicaId::new(format!("r{i}"), 1)
}

/// What a type needs to be driven by the law harness.
pub(crate) trait LawSubject: ReplicatedData + OpBased + Default {
    /// A random thing a replica may do to its state.
    type Action: Arbitrary + Debug + Clone;

    /// The operations `replica` produces for `action` on its current state.
    fn act(&self, replica: &ReplicaId, action: &Self::Action) -> Vec<Self::Op>;

    /// Whether `merged` (= `before ⊔ other`) kept everything `before` observed,
    /// apart from what `other` causally overwrote.
    fn keeps_observations(before: &Self, other: &Self, merged: &Self) -> bool;
    /// What a user reads of the state, to compare values of states that
    /// may differ in representation.
    fn view(&self) -> String;
}

/// One step of a random multi-replica run.
#[derive(Clone, Debug)]
pub(crate) enum Step<A> {
    Local { at: usize, action: A },
    Sync { from: usize, to: usize },
}

impl<A: Arbitrary> Arbitrary for Step<A> {
    fn arbitrary(g: &mut Gen) -> Self {
        if u8::arbitrary(g) % 10 < 7 {
            Step::Local {
                at: usize::arbitrary(g),
                action: A::arbitrary(g),
            }
        } else {
            Step::Sync {
                from: usize::arbitrary(g),
                to: usize::arbitrary(g),
            }
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        match self {
            Step::Local { at, action } => {
                let at = *at;
                Box::new(
                    action
                        .shrink()
                        .map(move |action| Step::Local { at, action }),
                )
            }
            Step::Sync { .. } => Box::new(std::iter::empty()),
        }
    }
}

/// A random run of 2–5 replicas, plus a seed for shuffling deliveries.
#[derive(Clone, Debug)]
pub(crate) struct History<A> {
    replicas: usize,
    steps: Vec<Step<A>>,
    seed: u64,
}

impl<A: Arbitrary> Arbitrary for History<A> {
    fn arbitrary(g: &mut Gen) -> Self {
        History {
            replicas: 2 + usize::arbitrary(g) % 4,
            steps: Vec::arbitrary(g),
            seed: u64::arbitrary(g),
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        let (replicas, seed) = (self.replicas, self.seed);
        Box::new(self.steps.shrink().map(move |steps| History {
            replicas,
            steps,
            seed,
        }))
    }
}

/// The final state of every replica and every operation any replica produced.
pub(crate) struct Run<T: OpBased> {
    pub states: Vec<T>,
    pub ops: Vec<T::Op>,
}

pub(crate) fn run<T: LawSubject>(history: &History<T::Action>) -> Run<T> {
    let n = history.replicas;
    let ids: Vec<ReplicaId> = (0..n).map(replica).collect();
    let mut states = vec![T::default(); n];
    let mut ops = Vec::new();
    for step in &history.steps {
        match step {
            Step::Local { at, action } => {
                let state = &mut states[at % n];
                for op in state.act(&ids[at % n], action) {
                    state.apply(op.clone());
                    ops.push(op);
                }
            }
            Step::Sync { from, to } => {
                let source = states[from % n].clone();
                states[to % n].merge(&source);
            }
        }
    }
    Run { states, ops }
}

fn merge_all<'a, T: ReplicatedData>(states: impl Iterator<Item = &'a T>) -> Option<T> {
    states.fold(None, |acc: Option<T>, s| match acc {
        None => Some(s.clone()),
        Some(acc) => Some(acc.merged(s)),
    })
}

fn report(law: &str, ok: bool) -> bool {
    if !ok {
        eprintln!("law violated: {law}");
    }
    ok
}

pub(crate) fn idempotent<T: LawSubject>(history: History<T::Action>) -> bool {
    let run = run::<T>(&history);
    report("a ⊔ a == a", run.states.iter().all(|s| &s.merged(s) == s))
}

pub(crate) fn commutative<T: LawSubject>(history: History<T::Action>) -> bool {
    let s = run::<T>(&history).states;
    let ok = s
        .iter()
        .enumerate()
        .all(|(i, a)| s[i + 1..].iter().all(|b| a.merged(b) == b.merged(a)));
    report("a ⊔ b == b ⊔ a", ok)
}

pub(crate) fn associative<T: LawSubject>(history: History<T::Action>) -> bool {
    let s = run::<T>(&history).states;
    let n = s.len();
    let ok = (0..n).all(|i| {
        let (a, b, c) = (&s[i], &s[(i + 1) % n], &s[(i + 2) % n]);
        a.merged(b).merged(c) == a.merged(&b.merged(c))
    });
    report("(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)", ok)
}

/// Any order and grouping of state merges gives the same state.
pub(crate) fn converges_under_any_merge_order<T: LawSubject>(history: History<T::Action>) -> bool {
    let states = run::<T>(&history).states;
    let forward = merge_all(states.iter());
    let backward = merge_all(states.iter().rev());
    let mut shuffled: Vec<&T> = states.iter().collect();
    SplitMix64::new(history.seed).shuffle(&mut shuffled);
    // Pairwise tree: ((s0 ⊔ s1) ⊔ (s2 ⊔ s3)) ⊔ ...
    let mut level: Vec<T> = shuffled.into_iter().cloned().collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [a, b] => a.merged(b),
                [a] => a.clone(),
                _ => unreachable!("chunks(2) yields one or two states"),
            })
            .collect();
    }
    report(
        "all merge orders agree",
        forward == backward && forward.as_ref() == level.first(),
    )
}

/// A fresh replica that receives every operation, shuffled and partly
/// duplicated, ends in the same state as the merge of all replicas.
pub(crate) fn operations_converge_in_any_order<T: LawSubject>(history: History<T::Action>) -> bool {
    let run = run::<T>(&history);
    let everything = merge_all(run.states.iter()).unwrap_or_default();
    let mut shuffler = SplitMix64::new(history.seed);
    let mut delivery = run.ops.clone();
    for _ in 0..run.ops.len() / 3 {
        delivery.push(run.ops[shuffler.below(run.ops.len())].clone());
    }
    shuffler.shuffle(&mut delivery);
    let mut receiver = T::default();
    for op in delivery {
        receiver.apply(op);
    }
    report(
        "operation delivery order does not matter",
        receiver == everything,
    )
}

/// Operations applied to a state that holds what they were made on give the
/// state that merging their maker's whole state gives: a replica that
/// receives another's deltas in order (Distributed Data's delta push) ends
/// where receiving the full states would have brought it. Checked after
/// every local step, for every other replica and a fresh one as receivers,
/// with the maker's operations since its last merge as the deltas.
pub(crate) fn deltas_join_like_full_states<T: LawSubject>(history: History<T::Action>) -> bool {
    let n = history.replicas;
    let ids: Vec<ReplicaId> = (0..n).map(replica).collect();
    let mut states = vec![T::default(); n];
    // Per replica: its state after its last merge, and its operations since.
    let mut since: Vec<(T, Vec<T::Op>)> = vec![(T::default(), Vec::new()); n];
    for step in &history.steps {
        match step {
            Step::Local { at, action } => {
                let at = at % n;
                for op in states[at].act(&ids[at], action) {
                    states[at].apply(op.clone());
                    since[at].1.push(op);
                }
                let (base, ops) = &since[at];
                let fresh = T::default();
                let receivers = states
                    .iter()
                    .enumerate()
                    .filter(|(r, _)| *r != at)
                    .map(|(_, state)| state)
                    .chain([&fresh]);
                for receiver in receivers {
                    let mut by_deltas = receiver.merged(base);
                    for op in ops {
                        by_deltas.apply(op.clone());
                    }
                    if by_deltas != receiver.merged(&states[at]) {
                        return report("deltas join like full states", false);
                    }
                }
            }
            Step::Sync { from, to } => {
                let (from, to) = (from % n, to % n);
                let source = states[from].clone();
                states[to].merge(&source);
                since[to] = (states[to].clone(), Vec::new());
            }
        }
    }
    true
}

/// `a ⊑ a ⊔ b`, and the type's own notion of "nothing observed is lost".
pub(crate) fn monotonic<T: LawSubject>(history: History<T::Action>) -> bool {
    let s = run::<T>(&history).states;
    let ok = s.iter().all(|a| {
        s.iter().all(|b| {
            let joined = a.merged(b);
            joined.merged(a) == joined && T::keeps_observations(a, b, &joined)
        })
    });
    report("merge never loses what it observed", ok)
}

/// States and operations survive the wire codec unchanged.
pub(crate) fn round_trips<T: LawSubject>(history: History<T::Action>) -> bool {
    let run = run::<T>(&history);
    let states_ok = run.states.iter().all(|s| {
        codec::encode(s)
            .and_then(|bytes| codec::decode::<T>(&bytes))
            .is_ok_and(|back| &back == s)
    });
    let ops_ok = run.ops.iter().all(|op| {
        codec::encode(op)
            .and_then(|bytes| codec::decode::<T::Op>(&bytes))
            .is_ok_and(|back| &back == op)
    });
    report("codec round trip", states_ok && ops_ok)
}

/// Retiring a dead incarnation changes no replica's value, at any step.
///
/// The history runs twice, alike but for retirement. At a step chosen by the
/// seed, replica 0 restarts empty as a new incarnation of its node; at a
/// later step, replica 1 merges every replica's state (what a replica must
/// hold before it retires, everything the dead incarnation wrote), so do
/// some others, and, in one of the runs only, replica 1 retires the dead incarnation, settling the nested
/// values that no other replica holds differently. After every step each
/// replica must read the same in both runs, and so must the merge of all.
pub(crate) fn retirement_changes_no_value<T: LawSubject>(history: History<T::Action>) -> bool {
    let n = history.replicas;
    let steps = history.steps.len();
    let death = usize::try_from(history.seed % (steps as u64 + 1)).unwrap_or(0);
    let finality =
        death + usize::try_from((history.seed >> 20) % ((steps - death) as u64 + 1)).unwrap_or(0);
    let mut ids: Vec<ReplicaId> = (0..n).map(replica).collect();
    let mut worlds = [vec![T::default(); n], vec![T::default(); n]];
    for index in 0..=steps {
        if index == death {
            ids[0] = ReplicaId::new(ids[0].node(), ids[0].incarnation() + 1);
            for states in &mut worlds {
                states[0] = T::default();
            }
        }
        if index == finality {
            for (world, states) in worlds.iter_mut().enumerate() {
                let gathered = merge_all(states.iter()).unwrap_or_default();
                states[1].merge(&gathered);
                // Some replicas catch up too, so that some values are
                // settled and others held differently elsewhere.
                for (at, state) in states.iter_mut().enumerate() {
                    if (history.seed >> (40 + at)) & 1 == 1 {
                        state.merge(&gathered);
                    }
                }
                if world == 1 {
                    let (node, below) = (ids[0].node(), ids[0].incarnation());
                    let elsewhere: Vec<Dot> = states
                        .iter()
                        .enumerate()
                        .filter(|(at, _)| *at != 1)
                        .flat_map(|(_, state)| state.unsettled(node, below))
                        .collect();
                    states[1].retire_settled(node, below, &elsewhere);
                }
            }
        }
        if let Some(step) = history.steps.get(index) {
            for states in &mut worlds {
                match step {
                    Step::Local { at, action } => {
                        let state = &mut states[at % n];
                        for op in state.act(&ids[at % n], action) {
                            state.apply(op);
                        }
                    }
                    Step::Sync { from, to } => {
                        let source = states[from % n].clone();
                        states[to % n].merge(&source);
                    }
                }
            }
        }
        let [plain, pruned] = &worlds;
        if plain.iter().zip(pruned).any(|(a, b)| a.view() != b.view()) {
            return report("retirement changes no value", false);
        }
    }
    let [plain, pruned] = &worlds;
    let everything = |states: &Vec<T>| merge_all(states.iter()).map(|s| s.view());
    let round_trip = pruned.iter().all(|s| {
        codec::encode(s)
            .and_then(|bytes| codec::decode::<T>(&bytes))
            .is_ok_and(|back| &back == s)
    });
    report(
        "retirement changes no value",
        everything(plain) == everything(pruned),
    ) && report("a state with retired incarnations round-trips", round_trip)
}

/// Generates the law tests for one type inside its test module.
macro_rules! law_tests {
    ($ty:ty) => {
        type LawHistory =
            $crate::crdt::laws::History<<$ty as $crate::crdt::laws::LawSubject>::Action>;

        #[test]
        fn merge_is_idempotent() {
            quickcheck::quickcheck($crate::crdt::laws::idempotent::<$ty> as fn(LawHistory) -> bool);
        }

        #[test]
        fn merge_is_commutative() {
            quickcheck::quickcheck(
                $crate::crdt::laws::commutative::<$ty> as fn(LawHistory) -> bool,
            );
        }

        #[test]
        fn merge_is_associative() {
            quickcheck::quickcheck(
                $crate::crdt::laws::associative::<$ty> as fn(LawHistory) -> bool,
            );
        }

        #[test]
        fn replicas_converge_whatever_the_merge_order() {
            quickcheck::quickcheck(
                $crate::crdt::laws::converges_under_any_merge_order::<$ty>
                    as fn(LawHistory) -> bool,
            );
        }

        #[test]
        fn operations_converge_in_any_delivery_order() {
            quickcheck::quickcheck(
                $crate::crdt::laws::operations_converge_in_any_order::<$ty>
                    as fn(LawHistory) -> bool,
            );
        }

        #[test]
        fn deltas_applied_in_order_join_like_full_states() {
            quickcheck::quickcheck(
                $crate::crdt::laws::deltas_join_like_full_states::<$ty> as fn(LawHistory) -> bool,
            );
        }

        #[test]
        fn merge_is_monotonic() {
            quickcheck::quickcheck($crate::crdt::laws::monotonic::<$ty> as fn(LawHistory) -> bool);
        }

        #[test]
        fn retiring_a_dead_incarnation_changes_no_value() {
            quickcheck::quickcheck(
                $crate::crdt::laws::retirement_changes_no_value::<$ty> as fn(LawHistory) -> bool,
            );
        }

        #[test]
        fn states_and_operations_round_trip_through_the_codec() {
            quickcheck::quickcheck(
                $crate::crdt::laws::round_trips::<$ty> as fn(LawHistory) -> bool,
            );
        }
    };
}

pub(crate) use law_tests;
