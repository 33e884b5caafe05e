//! What one update of a large value costs to replicate, with deltas and with
//! whole values, against the size of the value. Prints JSON.
//!
//! `cargo run --release --example delta_bench`
//!
//! Two replicator cores (the sans-IO protocol that the Replicator actor runs)
//! exchange messages through the real codec, in one process. Node a holds an
//! `ORSet<String>` of 1,000, 10,000 or 100,000 elements that node b already
//! has; then a adds one element at a time, 200 times (20 with whole values),
//! each pushed and delivered before the next. Per add it measures the bytes
//! of the encoded messages a sends to b, and the time b takes to decode and
//! handle them (its CPU per add). `delta` applies the add with `Tracked::apply`, so that
//! the operation travels; `whole` makes the same change through `&mut
//! ORSet`, so that the whole value travels, as every update did before
//! deltas.

use std::sync::Arc;
use std::time::Instant;

use ractor_replicated::ddata::wire::Envelope;
use ractor_replicated::ddata::{
    CoreConfig, Key, Output, ReplicatorCore, Timer, TypeRegistry, WriteConsistency,
};
use ractor_replicated::{codec, ORSet, OpBased, ReplicaId};
use serde_json::{json, Value};

/// Adds measured per size: fewer with whole values, each of which costs the
/// receiver a merge of the whole set.
const ADDS: usize = 200;
const WHOLE_ADDS: usize = 20;

fn core(name: &str, types: &Arc<TypeRegistry>) -> ReplicatorCore {
    // Large enough for 100,000 elements without the writer measuring the
    // value on every update (it does when the value is past half the budget).
    let config = CoreConfig {
        max_message_bytes: 64 << 20,
        ..CoreConfig::default()
    };
    let mut core = ReplicatorCore::new(name, ReplicaId::new(name, 1), types.clone(), config, 1);
    core.start();
    core
}

/// The encoded messages in `outputs` addressed to `to`.
fn messages_to(from: &str, to: &str, outputs: Vec<Output>) -> Vec<Vec<u8>> {
    outputs
        .into_iter()
        .filter_map(|output| match output {
            Output::Send {
                to: target,
                message,
            } if target == to => Some(
                codec::encode(&Envelope {
                    from: from.into(),
                    message,
                })
                .expect("a message encodes"),
            ),
            _ => None,
        })
        .collect()
}

/// Decodes and handles `messages` at `to`; returns its answers for `from`.
fn deliver(from: &str, to: &mut ReplicatorCore, messages: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut answers = Vec::new();
    for bytes in messages {
        let envelope: Envelope = codec::decode(&bytes).expect("a message decodes");
        let outputs = to.handle_message(&envelope.from, envelope.message);
        answers.extend(messages_to(to.node(), from, outputs));
    }
    answers
}

fn add(
    a: &mut ReplicatorCore,
    key: &Key<ORSet<String>>,
    member: String,
    whole: bool,
) -> Vec<Output> {
    let mut outputs = a
        .update(1, key, WriteConsistency::Local, move |set, me| {
            let op = set.add(me, member);
            if whole {
                (**set).apply(op);
            } else {
                set.apply(op);
            }
        })
        .expect("the add is accepted");
    // Close the push window (pushing what it held), so that the next add is
    // pushed at once.
    outputs.extend(a.handle_timer(Timer::Push));
    outputs
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn measure(size: usize, whole: bool) -> Value {
    let types = Arc::new(TypeRegistry::with_builtins());
    let (mut a, mut b) = (core("a", &types), core("b", &types));
    let key: Key<ORSet<String>> = Key::new("presence");
    for i in 0..size {
        a.update(1, &key, WriteConsistency::Local, |set, me| {
            set.apply(set.add(me, format!("session-{i:07}")))
        })
        .expect("the fill is accepted");
    }
    a.handle_timer(Timer::Push);
    a.handle_timer(Timer::Push);
    a.peer_up("b");
    b.peer_up("a");
    // b catches up by anti-entropy, as a replica that was there all along.
    let mut to_b = messages_to("a", "b", a.handle_timer(Timer::Gossip));
    while !to_b.is_empty() {
        let to_a = deliver("a", &mut b, to_b);
        to_b = deliver("b", &mut a, to_a);
    }
    assert_eq!(a.get(&key).unwrap(), b.get(&key).unwrap(), "b caught up");
    let mut bytes = Vec::new();
    let mut receive_us = Vec::new();
    for i in 0..if whole { WHOLE_ADDS } else { ADDS } {
        let pushed = messages_to("a", "b", add(&mut a, &key, format!("new-{i}"), whole));
        bytes.push(pushed.iter().map(Vec::len).sum::<usize>() as f64);
        let started = Instant::now();
        let answers = deliver("a", &mut b, pushed);
        receive_us.push(started.elapsed().as_secs_f64() * 1e6);
        assert!(answers.is_empty(), "every push applies without asking");
    }
    assert!(
        a.get(&key).unwrap() == b.get(&key).unwrap(),
        "b has every add"
    );
    json!({
        "elements": size,
        "mode": if whole { "whole" } else { "delta" },
        "bytes_per_add_p50": median(bytes),
        "receive_us_per_add_p50": median(receive_us),
    })
}

fn main() {
    let mut results = Vec::new();
    for size in [1_000, 10_000, 100_000] {
        for whole in [false, true] {
            results.push(measure(size, whole));
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "adds": ADDS,
            "whole_adds": WHOLE_ADDS,
            "results": results
        }))
        .expect("JSON")
    );
}
