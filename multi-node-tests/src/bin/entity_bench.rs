//! Replicated event sourcing in a 3-process loopback cluster with sled
//! journals: replica lag and events journaled per second, printed as JSON.
//!
//! ```sh
//! cargo build --release -p multi-node-tests && target/release/entity_bench
//! ```
//!
//! * lag: node 0 records entries one at a time (each acknowledged, so
//!   journaled and flushed, before the next); nodes 1 and 2 subscribe to the
//!   tally and record, when the event is applied there, how long ago node 0
//!   stamped it (same machine, same clock);
//! * throughput: first node 0 alone, then all three nodes at once, issue
//!   commands without waiting (so they share journal flushes); each node
//!   reports its commands per second, and the time until it has journaled
//!   every event of all three gives its journaled events per second,
//!   replicated ones included. Node 0 alone issues all its commands at once;
//!   the three nodes keep at most `ENTITY_BENCH_WINDOW` commands in flight
//!   each (default 1,000), as clients with that many requests outstanding
//!   would, so that the replica lag measures replication rather than the
//!   queue of a node's own commands; then they write again at half the
//!   per-node rate they reached, for the lag at a sustainable load;
//! * recovery: the time node 0 takes to read its tally journal and rebuild
//!   the state, as a restart does, from the whole journal and from the
//!   snapshot.
//!
//! It also prints each node's resident memory at the end. The nodes
//! snapshot every `ENTITY_BENCH_SNAPSHOT_EVERY` events (default
//! 10,000; 0 for none).

use std::time::Duration;

use multi_node_tests::{percentile, sibling_node_binary, LoopbackCluster};
use serde_json::{json, Value};

const LAG_SAMPLES: usize = 2_000;

fn lags(cluster: &mut LoopbackCluster) -> Value {
    let mut samples: Vec<u64> = Vec::new();
    for i in 1..3 {
        let node: Vec<u64> =
            serde_json::from_value(cluster.node(i).must("lags")).expect("microseconds");
        samples.extend(node);
    }
    samples.sort_unstable();
    if samples.is_empty() {
        return Value::Null;
    }
    json!({
        "samples": samples.len(),
        "p50": percentile(&samples, 0.50),
        "p90": percentile(&samples, 0.90),
        "p99": percentile(&samples, 0.99),
        "max": samples.last(),
    })
}

fn micros(value: &Value, field: &str) -> u64 {
    value[field].as_u64().expect("a timestamp")
}

/// All three nodes issue `load` commands, at most `window` in flight and
/// `rate` per second (0: flat out); then each node's journaled events per
/// second until it holds `expected` events, and the replica lag.
fn three_writing(
    cluster: &mut LoopbackCluster,
    load: u64,
    window: u64,
    rate: u64,
    expected: u64,
) -> Value {
    let mut local = Vec::new();
    let command = format!("tally-throughput {load} {window} {rate}");
    std::thread::scope(|scope| {
        let runs: Vec<_> = cluster
            .running()
            .map(|node| {
                let command = command.clone();
                scope.spawn(move || node.must(&command))
            })
            .collect();
        local = runs
            .into_iter()
            .map(|run| run.join().expect("a run"))
            .collect();
    });
    let started = local
        .iter()
        .map(|run| micros(run, "started_micros"))
        .min()
        .unwrap_or(0);
    let mut journaled = Vec::new();
    for i in 0..3 {
        let done = micros(
            &cluster.node(i).must(&format!("tally-wait {expected}")),
            "done_micros",
        );
        let seconds = done.saturating_sub(started) as f64 / 1e6;
        journaled.push(json!({
            "events": 3 * load,
            "seconds": seconds,
            "per_second": (3 * load) as f64 / seconds,
        }));
    }
    json!({
        "window": window,
        "rate_per_node": rate,
        "commands_per_node": local,
        "journaled_per_node": journaled,
        "replica_lag_us": lags(cluster),
    })
}

fn main() {
    // Commands per node in the throughput runs; `ENTITY_BENCH_EVENTS` overrides.
    let load: u64 = std::env::var("ENTITY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let snapshot_every =
        std::env::var("ENTITY_BENCH_SNAPSHOT_EVERY").unwrap_or_else(|_| "10000".into());
    let window: u64 = std::env::var("ENTITY_BENCH_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let binary = sibling_node_binary();
    let mut cluster = LoopbackCluster::durable(&binary, "entity-bench", 3)
        .with_node_arguments(&["--snapshot-every", &snapshot_every]);
    cluster.start_all();
    test_support::eventually_blocking(
        "the replicas see each other",
        Duration::from_secs(10),
        || {
            (0..3).all(|i| {
                cluster.node(i).must("ledger-stats")["peers"]
                    .as_array()
                    .map(Vec::len)
                    == Some(2)
            })
        },
    );
    for i in 1..3 {
        cluster.node(i).must("watch-lag");
    }
    cluster.node(0).must(&format!("tally-record {LAG_SAMPLES}"));
    cluster.node(0).must(&format!("tally-wait {LAG_SAMPLES}"));
    for i in 1..3 {
        cluster.node(i).must(&format!("tally-wait {LAG_SAMPLES}"));
    }
    let idle_lag = lags(&mut cluster);

    let mut expected = LAG_SAMPLES as u64;
    let alone = cluster.node(0).must(&format!("tally-throughput {load}"));
    expected += load;
    let alone_started = micros(&alone, "started_micros");
    let alone_journaled: Vec<Value> = (0..3)
        .map(|i| {
            let done = micros(
                &cluster.node(i).must(&format!("tally-wait {expected}")),
                "done_micros",
            );
            let seconds = done.saturating_sub(alone_started) as f64 / 1e6;
            json!({ "events": load, "seconds": seconds, "per_second": load as f64 / seconds })
        })
        .collect();
    let alone_lag = lags(&mut cluster);

    expected += 3 * load;
    let flat_out = three_writing(&mut cluster, load, window, 0, expected);
    // Half the slowest node's journaled rate, in commands per node.
    let half_rate = flat_out["journaled_per_node"]
        .as_array()
        .expect("three nodes")
        .iter()
        .map(|node| node["per_second"].as_f64().unwrap_or(0.0))
        .fold(f64::INFINITY, f64::min)
        / 6.0;
    let half_rate = (half_rate as u64).max(1);
    let paced_load = half_rate * 5;
    expected += 3 * paced_load;
    let paced = three_writing(&mut cluster, paced_load, window, half_rate, expected);
    let tallies: Vec<Value> = (0..3).map(|i| cluster.node(i).must("tally")).collect();
    let recovery = cluster.node(0).must("tally-recovery");
    let stats: Vec<Value> = (0..3)
        .map(|i| cluster.node(i).must("tally-stats"))
        .collect();
    let resident_kib: Vec<Value> = (0..3).map(|i| cluster.node(i).must("rss")).collect();

    let report = json!({
        "cluster": "3 processes, loopback, release build, sled journals",
        "replica_lag_us_one_writer_one_at_a_time": idle_lag,
        "one_node_writing": {
            "commands": alone,
            "journaled_per_node": alone_journaled,
            "replica_lag_us": alone_lag,
        },
        "three_nodes_writing": flat_out,
        "three_nodes_writing_at_half_rate": paced,
        "snapshot_every": snapshot_every,
        "tallies": tallies,
        "tally_stats": stats,
        "resident_kib": resident_kib,
        "recovery_of_the_tally_journal": recovery,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
