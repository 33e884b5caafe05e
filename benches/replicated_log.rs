//! The replication core of one entity, without journal or network: what
//! placing events in the canonical order costs as the log grows.
//!
//! * `append/N`: 1,000 local events persisted one at a time on a log that
//!   holds N events in memory (one writer);
//! * `late_batch/N`: a batch of 1,000 events of another replica arrives, all
//!   concurrent with the last 10,000 events of a log holding N and sorting
//!   among them (three writers, a replica 10,000 events behind): each goes
//!   deep into the order and the state replays from the first of them;
//! * `late_depth/D`: the same batch on a log of 1,000,000 events, concurrent
//!   with its last D.
//!
//! `cargo bench --bench replicated_log`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use ractor_replicated::persistence::{
    EventEnvelope, EventHandler, EventMeta, LastWriterWins, ReplicatedLog,
};
use ractor_replicated::{ReplicaId, VersionVector};

/// A running sum and an order-sensitive digest: cheap to apply, and wrong if
/// the order is.
struct Digest;

impl EventHandler for Digest {
    type Event = u64;
    type State = (u64, u64);

    fn apply(&self, state: &mut (u64, u64), event: &u64, _meta: EventMeta<'_>) {
        state.0 += event;
        state.1 = state.1.rotate_left(5) ^ event;
    }
}

const BATCH: u64 = 1_000;

fn writer() -> ReplicaId {
    ReplicaId::new("writer", 1)
}

/// A log holding `events` events of `writer`, stamped 0, 1, 2, …
fn log_of(events: u64) -> ReplicatedLog<Digest, LastWriterWins> {
    let writer = writer();
    let mut version = VersionVector::new();
    let journal: Vec<EventEnvelope<u64>> = (1..=events)
        .map(|n| {
            version.increment(&writer);
            EventEnvelope {
                origin: writer.clone(),
                origin_seq: n,
                version: version.clone(),
                timestamp: i64::try_from(n).unwrap_or(i64::MAX),
                event: n,
            }
        })
        .collect();
    let mut log = ReplicatedLog::new(ReplicaId::new("reader", 1), Digest, LastWriterWins);
    log.recover(journal);
    log
}

/// `BATCH` events of another replica that had seen all but the writer's
/// last `depth` events of `held`, with timestamps spread among those.
fn late_events(held: u64, depth: u64) -> Vec<EventEnvelope<u64>> {
    let late = ReplicaId::new("late", 1);
    let mut version = VersionVector::new();
    for _ in 0..held - depth {
        version.increment(&writer());
    }
    (1..=BATCH)
        .map(|n| {
            version.increment(&late);
            EventEnvelope {
                origin: late.clone(),
                origin_seq: n,
                version: version.clone(),
                timestamp: i64::try_from(held - depth + n * (depth / BATCH)).unwrap_or(0),
                event: n,
            }
        })
        .collect()
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    for held in [10_000u64, 100_000, 1_000_000] {
        group.bench_with_input(BenchmarkId::from_parameter(held), &held, |b, &held| {
            b.iter_batched_ref(
                || log_of(held),
                |log| {
                    for n in 0..BATCH {
                        log.apply_local(vec![n], i64::MAX);
                    }
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn receive_late(c: &mut Criterion, group: &str, cases: &[(u64, u64)], label: fn(u64, u64) -> u64) {
    let mut group = c.benchmark_group(group);
    for &(held, depth) in cases {
        group.bench_with_input(
            BenchmarkId::from_parameter(label(held, depth)),
            &(),
            |b, ()| {
                b.iter_batched_ref(
                    || (log_of(held), late_events(held, depth)),
                    |(log, events)| {
                        let applied = log.receive_all(std::mem::take(events));
                        assert_eq!(applied.len() as u64, BATCH);
                    },
                    BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

fn late_batch(c: &mut Criterion) {
    let cases = [(20_000, 10_000), (100_000, 10_000), (1_000_000, 10_000)];
    receive_late(c, "late_batch", &cases, |held, _| held);
}

fn late_depth(c: &mut Criterion) {
    let cases = [
        (1_000_000, 1_000),
        (1_000_000, 10_000),
        (1_000_000, 100_000),
    ];
    receive_late(c, "late_depth", &cases, |_, depth| depth);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = append, late_batch, late_depth
}
criterion_main!(benches);
