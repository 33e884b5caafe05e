//! Replicated event sourcing's required outcome: replicas that hold the same
//! events have the same state, whatever order the events arrived in, also
//! for an event handler that does not commute.
//!
//! Each seed builds a random causal history on three replicas: replicas
//! persist events at colliding timestamps and receive each other's events
//! early, late, duplicated and out of causal order. At the end every replica
//! receives everything, in its own random order. 1,000 histories per resolver
//! run by default; `EVENT_SEEDS=100000` runs more, and a failure names its seed.

use std::cmp::Ordering;

use ractor_replicated::persistence::{
    ConflictResolver, EventEnvelope, EventHandler, EventMeta, LastWriterWins, ReplicatedLog,
    ResolveWith,
};
use ractor_replicated::{ReplicaId, VersionVector};
use serde::{Deserialize, Serialize};
use test_support::Rng;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Op {
    Add(i64),
    Times(i64),
    Reset,
}

/// Arithmetic whose result depends on the order of events, plus a trace of
/// what the handler saw (the `concurrent` flag included).
#[derive(Clone, Debug, Default, PartialEq)]
struct Calculator {
    value: i64,
    trace: Vec<(String, u64, bool)>,
}

struct Arithmetic;

impl EventHandler for Arithmetic {
    type Event = Op;
    type State = Calculator;

    fn apply(&self, state: &mut Calculator, event: &Op, meta: EventMeta<'_>) {
        state.value = match event {
            Op::Add(n) => state.value.wrapping_add(*n),
            Op::Times(n) => state.value.wrapping_mul(*n),
            Op::Reset => 0,
        };
        state.trace.push((
            meta.origin.node().to_string(),
            meta.timestamp as u64,
            meta.concurrent,
        ));
    }
}

fn seeds() -> u64 {
    std::env::var("EVENT_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000)
}

fn id(envelope: &EventEnvelope<Op>) -> (ReplicaId, u64) {
    (envelope.origin.clone(), envelope.origin_seq)
}

fn history<R: ConflictResolver<Op>>(seed: u64, resolver: impl Fn() -> R) -> Result<(), String> {
    let mut rng = Rng(seed);
    let replicas: Vec<ReplicaId> = (0..3).map(|i| ReplicaId::new(format!("r{i}"), 1)).collect();
    let mut logs: Vec<ReplicatedLog<Arithmetic, R>> = replicas
        .iter()
        .map(|replica| ReplicatedLog::new(replica.clone(), Arithmetic, resolver()))
        .collect();
    let mut pool: Vec<EventEnvelope<Op>> = Vec::new();
    for _ in 0..(20 + rng.index(80)) {
        let r = rng.index(3);
        if rng.index(2) == 0 {
            let ops = (0..1 + rng.index(2))
                .map(|_| match rng.index(5) {
                    0 => Op::Reset,
                    1 | 2 => Op::Times(rng.index(5) as i64 - 2),
                    _ => Op::Add(rng.index(10) as i64),
                })
                .collect();
            // Few distinct timestamps: ties must be broken deterministically too.
            let timestamp = rng.index(8) as i64;
            pool.extend(logs[r].apply_local(ops, timestamp));
        } else if !pool.is_empty() {
            let envelope = pool[rng.index(pool.len())].clone();
            logs[r].receive(envelope);
        }
    }
    for log in &mut logs {
        let mut arrivals: Vec<EventEnvelope<Op>> =
            pool.iter().chain(pool.iter()).cloned().collect();
        rng.shuffle(&mut arrivals);
        for envelope in arrivals {
            log.receive(envelope);
        }
    }

    let order = |log: &ReplicatedLog<Arithmetic, R>| log.events().map(id).collect::<Vec<_>>();
    for (i, log) in logs.iter().enumerate() {
        if log.waiting() != 0 || log.events().len() != pool.len() {
            return Err(format!(
                "r{i} applied {} of {} events, {} waiting",
                log.events().len(),
                pool.len(),
                log.waiting()
            ));
        }
        if order(log) != order(&logs[0]) {
            return Err(format!("r{i} applied the events in another order than r0"));
        }
        if log.state() != logs[0].state() {
            return Err(format!(
                "r{i} ends in {:?}, r0 in {:?}",
                log.state(),
                logs[0].state()
            ));
        }
        let events: Vec<_> = log.events().collect();
        for later in 0..events.len() {
            if let Some(earlier) = (0..later).find(|&e| events[later].happened_before(events[e])) {
                return Err(format!(
                    "r{i} applied event {later} before its cause {earlier}"
                ));
            }
        }
    }
    // The incrementally maintained state equals a replay of the final order.
    let mut replayed = Calculator::default();
    let mut seen = VersionVector::new();
    for envelope in logs[0].events() {
        let meta = EventMeta {
            origin: &envelope.origin,
            timestamp: envelope.timestamp,
            concurrent: !envelope.version.descends(&seen),
        };
        Arithmetic.apply(&mut replayed, &envelope.event, meta);
        seen.merge(&envelope.version);
    }
    if &replayed != logs[0].state() {
        return Err("the state differs from a replay of the final order".into());
    }
    // A new replica catching up from r0's log lands in the same state.
    let mut late = ReplicatedLog::new(ReplicaId::new("late", 1), Arithmetic, resolver());
    for envelope in logs[0].missing_for(&VersionVector::new()) {
        late.receive(envelope.clone());
    }
    if late.state() != logs[0].state() {
        return Err("a replica catching up from the log ends elsewhere".into());
    }
    // Recovery computes the canonical order in one pass, from any order of
    // the journal; it must be the order the incremental insertions built.
    let mut journal: Vec<EventEnvelope<Op>> = pool.clone();
    rng.shuffle(&mut journal);
    let mut recovered = ReplicatedLog::new(replicas[1].clone(), Arithmetic, resolver());
    recovered.recover(journal);
    if order(&recovered) != order(&logs[0]) || recovered.state() != logs[0].state() {
        return Err("a recovered replica holds another order or state".into());
    }
    Ok(())
}

#[test]
fn replicas_with_the_same_events_agree_under_last_writer_wins() {
    for seed in 0..seeds() {
        if let Err(failure) = history(seed, || LastWriterWins) {
            panic!("seed {seed}: {failure}");
        }
    }
}

#[test]
fn replicas_with_the_same_events_agree_under_a_custom_resolver() {
    // Newest first, then by replica name descending: a different total order.
    let newest_first = || {
        ResolveWith(|a: &EventEnvelope<Op>, b: &EventEnvelope<Op>| {
            b.timestamp
                .cmp(&a.timestamp)
                .then_with(|| b.origin.node().cmp(a.origin.node()))
        })
    };
    for seed in 0..seeds() {
        if let Err(failure) = history(seed, newest_first) {
            panic!("seed {seed}: {failure}");
        }
    }
}

#[test]
fn of_two_concurrent_writes_the_later_one_wins_everywhere() {
    let (a, b) = (ReplicaId::new("a", 1), ReplicaId::new("b", 1));
    let mut left = ReplicatedLog::new(a, Arithmetic, LastWriterWins);
    let mut right = ReplicatedLog::new(b, Arithmetic, LastWriterWins);
    let early = left.apply_local(vec![Op::Reset, Op::Add(1)], 10);
    let late = right.apply_local(vec![Op::Times(0), Op::Add(7)], 20);
    // Each applied its own writes first; the other's arrive late.
    for envelope in late {
        left.receive(envelope);
    }
    for envelope in early {
        right.receive(envelope);
    }
    assert_eq!(left.state(), right.state());
    assert_eq!(
        left.state().value,
        7,
        "the events stamped 20 are applied last"
    );
    let flags: Vec<bool> = left.state().trace.iter().map(|(_, _, c)| *c).collect();
    assert_eq!(
        flags,
        [false, false, true, true],
        "b's events did not see a's"
    );
    assert_eq!(
        LastWriterWins.order(left.events().next().unwrap(), left.events().nth(2).unwrap()),
        Ordering::Less
    );
}

#[test]
fn an_event_waits_for_its_causal_past_and_duplicates_are_dropped() {
    let (a, b) = (ReplicaId::new("a", 1), ReplicaId::new("b", 1));
    let mut writer = ReplicatedLog::new(a, Arithmetic, LastWriterWins);
    let mut reader = ReplicatedLog::new(b, Arithmetic, LastWriterWins);
    let events = writer.apply_local(vec![Op::Add(2), Op::Times(3), Op::Add(1)], 1);
    assert!(reader.receive(events[2].clone()).is_empty());
    assert!(reader.receive(events[1].clone()).is_empty());
    assert_eq!(reader.waiting(), 2);
    let applied = reader.receive(events[0].clone());
    assert_eq!(applied.len(), 3, "the first event releases the other two");
    assert!(reader.receive(events[1].clone()).is_empty(), "a duplicate");
    assert_eq!(reader.state().value, 7);
    assert_eq!(reader.state(), writer.state());
}

#[test]
fn malformed_events_are_dropped_and_the_real_ones_still_apply() {
    let (a, b) = (ReplicaId::new("a", 1), ReplicaId::new("b", 1));
    let mut writer = ReplicatedLog::new(a.clone(), Arithmetic, LastWriterWins);
    let mut reader = ReplicatedLog::new(b, Arithmetic, LastWriterWins);
    let events = writer.apply_local(vec![Op::Add(2), Op::Times(3)], 1);

    let mut ahead = events[0].clone();
    ahead.version = VersionVector::new();
    for _ in 0..1_000 {
        ahead.version.increment(&a);
    }
    let mut sequence_zero = events[0].clone();
    sequence_zero.origin_seq = 0;
    let mut at_the_limit = events[1].clone();
    at_the_limit.origin_seq = u64::MAX;
    for forged in [ahead, sequence_zero, at_the_limit] {
        assert!(reader.receive(forged).is_empty());
    }
    assert_eq!(reader.waiting(), 0, "nothing forged waits either");
    assert_eq!(reader.receive_all(events.clone()).len(), 2);
    assert_eq!(reader.state(), writer.state());

    let mut recovered = ReplicatedLog::new(a, Arithmetic, LastWriterWins);
    let mut forged = events[1].clone();
    forged.origin_seq = 7;
    recovered.recover(events.into_iter().chain([forged]));
    assert_eq!(recovered.state(), writer.state());
    assert_eq!(recovered.waiting(), 0);
}
