//! The Replicator core's side of a late joiner's catch-up, in one process:
//! a holder of N `GCounter` keys and an empty joiner meet, and their
//! anti-entropy exchange runs through the codec until both are quiet. This
//! is the CPU the two nodes spend on the catch-up, without the network or
//! the actor around the cores (the `cost` program measures those).
//!
//! `cargo bench --bench catch_up`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use ractor_replicated::ddata::wire::{Envelope, PeerMessage};
use ractor_replicated::ddata::{
    CoreConfig, Key, Output, ReplicatorCore, Timer, TypeRegistry, WriteConsistency,
};
use ractor_replicated::{codec, GCounter, ReplicaId};

fn core(name: &str) -> ReplicatorCore {
    let mut core = ReplicatorCore::new(
        name,
        ReplicaId::new(name, 1),
        Arc::new(TypeRegistry::with_builtins()),
        CoreConfig::default(),
        7,
    );
    core.start();
    core
}

/// A holder of `keys` counters, quiet (its pushes had nowhere to go), and
/// an empty joiner.
fn holder_and_joiner(keys: u64) -> (ReplicatorCore, ReplicatorCore) {
    let mut holder = core("holder");
    for i in 0..keys {
        let key: Key<GCounter> = Key::new(format!("k-{i}"));
        holder
            .update(i, &key, WriteConsistency::Local, |c, me| {
                c.apply(c.increment(me, 1))
            })
            .expect("a local update");
    }
    (holder, core("joiner"))
}

/// The messages among `outputs`, encoded as they would travel.
fn encoded(from: &str, outputs: Vec<Output>) -> Vec<Vec<u8>> {
    outputs
        .into_iter()
        .filter_map(|output| match output {
            Output::Send { message, .. } => Some(message),
            _ => None,
        })
        .map(|message: PeerMessage| {
            codec::encode(&Envelope {
                from: from.into(),
                message,
            })
            .expect("an encodable message")
        })
        .collect()
}

/// Both meet; messages go back and forth until neither sends any more.
/// Returns the keys the joiner holds.
fn catch_up(mut holder: ReplicatorCore, mut joiner: ReplicatorCore) -> usize {
    let mut to_joiner = encoded("holder", holder.peer_up("joiner"));
    let mut to_holder = encoded("joiner", joiner.peer_up("holder"));
    while !to_joiner.is_empty() || !to_holder.is_empty() {
        let mut next_to_holder = Vec::new();
        for bytes in to_joiner.drain(..) {
            let envelope: Envelope = codec::decode(&bytes).expect("a message");
            let outputs = joiner.handle_message(&envelope.from, envelope.message);
            next_to_holder.extend(encoded("joiner", outputs));
        }
        let mut next_to_joiner = Vec::new();
        for bytes in to_holder.drain(..).chain(next_to_holder) {
            let envelope: Envelope = codec::decode(&bytes).expect("a message");
            let outputs = holder.handle_message(&envelope.from, envelope.message);
            next_to_joiner.extend(encoded("holder", outputs));
        }
        to_joiner = next_to_joiner;
    }
    joiner.keys().count()
}

/// The `Entries` messages a holder of `keys` counters sends a joiner that
/// lacks every bucket, encoded.
fn entries_for_joiner(keys: u64) -> Vec<Vec<u8>> {
    let (mut holder, mut joiner) = holder_and_joiner(keys);
    joiner.peer_up("holder");
    let mut asked = Vec::new();
    for bytes in encoded("holder", holder.peer_up("joiner")) {
        let envelope: Envelope = codec::decode(&bytes).expect("a message");
        let answers = joiner.handle_message(&envelope.from, envelope.message);
        asked.extend(encoded("joiner", answers));
    }
    let mut entries = Vec::new();
    for bytes in asked {
        let envelope: Envelope = codec::decode(&bytes).expect("a message");
        for answer in holder.handle_message(&envelope.from, envelope.message) {
            if let Output::Send {
                message: message @ PeerMessage::Entries { .. },
                ..
            } = answer
            {
                entries.extend(encoded(
                    "holder",
                    vec![Output::Send {
                        to: "joiner".into(),
                        message,
                    }],
                ));
            }
        }
    }
    entries
}

/// The joiner's part alone: decoding and merging the holder's entries, and
/// the digests of its next exchange.
fn joiner_merges(c: &mut Criterion) {
    let mut group = c.benchmark_group("joiner_merges_counters");
    for keys in [10_000u64, 100_000] {
        let entries = entries_for_joiner(keys);
        group.bench_with_input(BenchmarkId::from_parameter(keys), &keys, |b, &keys| {
            b.iter_batched(
                || {
                    let mut joiner = core("joiner");
                    joiner.peer_up("holder");
                    joiner
                },
                |mut joiner| {
                    for bytes in &entries {
                        let envelope: Envelope = codec::decode(bytes).expect("a message");
                        joiner.handle_message(&envelope.from, envelope.message);
                    }
                    assert_eq!(joiner.keys().count() as u64, keys);
                    // Its next exchange folds the digests of what arrived.
                    joiner.handle_timer(Timer::Gossip);
                    joiner
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn late_joiner(c: &mut Criterion) {
    let mut group = c.benchmark_group("catch_up_counters");
    for keys in [10_000u64, 100_000] {
        group.bench_with_input(BenchmarkId::from_parameter(keys), &keys, |b, &keys| {
            b.iter_batched(
                || holder_and_joiner(keys),
                |(holder, joiner)| {
                    let held = catch_up(holder, joiner);
                    assert_eq!(held as u64, keys);
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    targets = late_joiner, joiner_merges
}
criterion_main!(benches);
