//! CRDT benchmarks, side by side with the `crdts` crate (7.3) on the same
//! workloads and the same actor type (`ReplicaId`).
//!
//! `cargo bench --bench crdt` runs them; criterion's estimates land in
//! `target/criterion/`, and the encoded sizes in
//! `target/criterion/encoded_sizes.json`. `python3 benches/report.py` turns
//! both into the table of `docs/BENCHMARKS.md`.

use std::time::Duration;

use crdts::{CmRDT, CvRDT};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use ractor_replicated::{codec, GCounter, ORSet, OpBased, PNCounter, ReplicaId, ReplicatedData};

const ELEMENTS: u64 = 10_000;
const COUNTER_REPLICAS: usize = 100;

fn replicas(n: usize) -> Vec<ReplicaId> {
    (0..n)
        .map(|i| ReplicaId::new(format!("node-{i}"), 1_700_000_000_000_000 + i as u64))
        .collect()
}

/// Three replicas; element `i` is added by replica `i % 3`.
fn ours_three_orsets() -> Vec<ORSet<u64>> {
    let ids = replicas(3);
    let mut sets = vec![ORSet::new(); 3];
    for i in 0..ELEMENTS {
        let at = (i % 3) as usize;
        let set = &mut sets[at];
        set.apply(set.add(&ids[at], i));
    }
    sets
}

fn theirs_three_orswots() -> Vec<crdts::Orswot<u64, ReplicaId>> {
    let ids = replicas(3);
    let mut sets = vec![crdts::Orswot::new(); 3];
    for i in 0..ELEMENTS {
        let at = (i % 3) as usize;
        let set = &mut sets[at];
        let op = set.add(i, set.read_ctx().derive_add_ctx(ids[at].clone()));
        set.apply(op);
    }
    sets
}

fn ours_counters() -> (GCounter, GCounter) {
    let ids = replicas(COUNTER_REPLICAS);
    let (mut a, mut b) = (GCounter::new(), GCounter::new());
    for (i, id) in ids.iter().enumerate() {
        a.apply(a.increment(id, i as u64 + 1));
        b.apply(b.increment(id, (i as u64 * 7) % 13 + 1));
    }
    (a, b)
}

fn theirs_counters() -> (crdts::GCounter<ReplicaId>, crdts::GCounter<ReplicaId>) {
    let ids = replicas(COUNTER_REPLICAS);
    let (mut a, mut b) = (crdts::GCounter::new(), crdts::GCounter::new());
    for (i, id) in ids.iter().enumerate() {
        a.apply(a.inc_many(id.clone(), i as u64 + 1));
        b.apply(b.inc_many(id.clone(), (i as u64 * 7) % 13 + 1));
    }
    (a, b)
}

fn ours_pn_counters() -> (PNCounter, PNCounter) {
    let ids = replicas(COUNTER_REPLICAS);
    let (mut a, mut b) = (PNCounter::new(), PNCounter::new());
    for (i, id) in ids.iter().enumerate() {
        a.apply(a.increment(id, i as u64 + 1));
        a.apply(a.decrement(id, 1));
        b.apply(b.increment(id, (i as u64 * 7) % 13 + 1));
        b.apply(b.decrement(id, 2));
    }
    (a, b)
}

fn theirs_pn_counters() -> (crdts::PNCounter<ReplicaId>, crdts::PNCounter<ReplicaId>) {
    let ids = replicas(COUNTER_REPLICAS);
    let (mut a, mut b) = (crdts::PNCounter::new(), crdts::PNCounter::new());
    for (i, id) in ids.iter().enumerate() {
        a.apply(a.inc_many(id.clone(), i as u64 + 1));
        a.apply(a.dec(id.clone()));
        b.apply(b.inc_many(id.clone(), (i as u64 * 7) % 13 + 1));
        b.apply(b.dec_many(id.clone(), 2));
    }
    (a, b)
}

fn orset_merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("orset_merge_10k_from_3_replicas");
    let ours = ours_three_orsets();
    let theirs = theirs_three_orsets_checked(&ours);
    group.bench_function(BenchmarkId::new("ractor_replicated", "3 states"), |bench| {
        bench.iter_batched(
            || ours[0].clone(),
            |mut joined| {
                joined.merge(&ours[1]);
                joined.merge(&ours[2]);
                joined
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function(BenchmarkId::new("crdts", "3 states"), |bench| {
        bench.iter_batched(
            || theirs.clone(),
            |mut states| {
                let (c, b) = (states.pop(), states.pop());
                let mut joined = states.pop().unwrap_or_default();
                joined.merge(b.unwrap_or_default());
                joined.merge(c.unwrap_or_default());
                joined
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("orset_merge_10k_converged");
    let ours_full = ours.iter().fold(ORSet::new(), |acc, s| acc.merged(s));
    let mut theirs_full = crdts::Orswot::new();
    theirs.iter().for_each(|s| theirs_full.merge(s.clone()));
    group.bench_function(
        BenchmarkId::new("ractor_replicated", "equal states"),
        |bench| {
            bench.iter_batched(
                || ours_full.clone(),
                |mut joined| {
                    joined.merge(&ours_full);
                    joined
                },
                BatchSize::LargeInput,
            )
        },
    );
    group.bench_function(BenchmarkId::new("crdts", "equal states"), |bench| {
        bench.iter_batched(
            || (theirs_full.clone(), theirs_full.clone()),
            |(mut joined, other)| {
                joined.merge(other);
                joined
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Builds the `crdts` states and checks that both libraries hold the same elements.
fn theirs_three_orsets_checked(ours: &[ORSet<u64>]) -> Vec<crdts::Orswot<u64, ReplicaId>> {
    let theirs = theirs_three_orswots();
    for (mine, other) in ours.iter().zip(&theirs) {
        assert_eq!(mine.len(), other.read().val.len(), "workloads must match");
    }
    theirs
}

/// Times merging `b` into `a` for both libraries (clones happen outside the timing).
fn merge_pair<O: ReplicatedData, T: CvRDT + Clone>(
    c: &mut Criterion,
    group_name: &str,
    (a, b): (O, O),
    (x, y): (T, T),
) {
    let mut group = c.benchmark_group(group_name);
    group.bench_function("ractor_replicated", |bench| {
        bench.iter_batched(
            || a.clone(),
            |mut joined| {
                joined.merge(&b);
                joined
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("crdts", |bench| {
        bench.iter_batched(
            || (x.clone(), y.clone()),
            |(mut joined, other)| {
                joined.merge(other);
                joined
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn counter_merge(c: &mut Criterion) {
    merge_pair(
        c,
        "gcounter_merge_100_replicas",
        ours_counters(),
        theirs_counters(),
    );
    merge_pair(
        c,
        "pncounter_merge_100_replicas",
        ours_pn_counters(),
        theirs_pn_counters(),
    );
}

fn single_operations(c: &mut Criterion) {
    // A replica in the middle of the order, so neither a B-tree's first-key fast
    // path nor a binary search's best case is what gets measured.
    let id = replicas(COUNTER_REPLICAS).swap_remove(COUNTER_REPLICAS / 2);
    let mut group = c.benchmark_group("orset_add_one_to_10k");
    let ours = ours_three_orsets().remove(0);
    let theirs = theirs_three_orswots().remove(0);
    group.bench_function("ractor_replicated", |bench| {
        bench.iter_batched_ref(
            || ours.clone(),
            |s| s.apply(s.add(&id, ELEMENTS + 1)),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("crdts", |bench| {
        bench.iter_batched_ref(
            || theirs.clone(),
            |s| s.apply(s.add(ELEMENTS + 1, s.read_ctx().derive_add_ctx(id.clone()))),
            BatchSize::LargeInput,
        )
    });
    group.finish();

    let (mut ours, _) = ours_counters();
    let (mut theirs, _) = theirs_counters();
    in_place_pair(
        c,
        "gcounter_increment_100_replicas",
        || ours.apply(ours.increment(&id, 1)),
        || theirs.apply(theirs.inc(id.clone())),
    );
    let (mut ours, _) = ours_pn_counters();
    let (mut theirs, _) = theirs_pn_counters();
    in_place_pair(
        c,
        "pncounter_increment_100_replicas",
        || ours.apply(ours.increment(&id, 1)),
        || theirs.apply(theirs.inc(id.clone())),
    );
}

/// Times one operation per library, repeated on the same state. Used for
/// increments, which do not grow a counter: cloning a fresh input per ~50 ns
/// operation would measure the clone.
fn in_place_pair(
    c: &mut Criterion,
    group_name: &str,
    mut ours: impl FnMut(),
    mut theirs: impl FnMut(),
) {
    let mut group = c.benchmark_group(group_name);
    group.bench_function("ractor_replicated", |bench| bench.iter(&mut ours));
    group.bench_function("crdts", |bench| bench.iter(&mut theirs));
    group.finish();
}

/// The three replicas' 10k-element sets merged into one, ours and theirs.
fn merged_orsets() -> (ORSet<u64>, crdts::Orswot<u64, ReplicaId>) {
    let ours = ours_three_orsets()
        .iter()
        .fold(ORSet::new(), |acc, s| acc.merged(s));
    let mut theirs = crdts::Orswot::new();
    theirs_three_orswots()
        .into_iter()
        .for_each(|s| theirs.merge(s));
    (ours, theirs)
}

/// Encoded sizes (rmp-serde; ours includes the codec's version byte) of the
/// merged 10k-element sets and the 100-replica counters.
fn encoded_sizes(_: &mut Criterion) {
    let (ours, theirs) = merged_orsets();
    let sizes = serde_json::json!({
        "orset_10k_from_3_replicas": {
            "ractor_replicated": ours_len(&ours),
            "crdts": theirs_len(&theirs),
        },
        "gcounter_100_replicas": {
            "ractor_replicated": ours_len(&ours_counters().0),
            "crdts": theirs_len(&theirs_counters().0),
        },
        "pncounter_100_replicas": {
            "ractor_replicated": ours_len(&ours_pn_counters().0),
            "crdts": theirs_len(&theirs_pn_counters().0),
        },
    });
    println!("encoded sizes (bytes): {sizes}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("encoded_sizes.json"), sizes.to_string());
    }
}

/// Decoding the merged 10k-element set from its encoding, as a receiver of a
/// whole state does.
fn orset_decode(c: &mut Criterion) {
    let (ours, theirs) = merged_orsets();
    let (ours, theirs) = (
        codec::encode(&ours).expect("encodes"),
        rmp_serde::to_vec(&theirs).expect("encodes"),
    );
    let mut group = c.benchmark_group("orset_decode_10k_from_3_replicas");
    group.bench_function("ractor_replicated", |bench| {
        bench.iter(|| codec::decode::<ORSet<u64>>(&ours).expect("decodes"))
    });
    group.bench_function("crdts", |bench| {
        bench.iter(|| {
            rmp_serde::from_slice::<crdts::Orswot<u64, ReplicaId>>(&theirs).expect("decodes")
        })
    });
    group.finish();
}

fn ours_len<T: serde::Serialize>(value: &T) -> usize {
    codec::encode(value).map_or(0, |bytes| bytes.len())
}

fn theirs_len<T: serde::Serialize>(value: &T) -> usize {
    rmp_serde::to_vec(value).map_or(0, |bytes| bytes.len())
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = encoded_sizes, orset_merge, orset_decode, counter_merge, single_operations
}
criterion_main!(benches);
