//! One add to a large ORSet, on 3 loopback processes, against the set's size,
//! printed as JSON.
//!
//! ```sh
//! cargo build --release -p multi-node-tests && target/release/sets
//! ```
//!
//! For each size (`SETS_SIZES`, default `1000,10000,100000` elements), node 0
//! fills one `ORSet<String>` key and nodes 1 and 2 receive it; node 1
//! subscribes a listener, node 2 none. Node 0 then adds `SETS_ADDS` (default
//! 1,000) elements paced at 100 per second, each carrying its wall-clock
//! time. Measured:
//!
//! * `spread_us`: when the listener hears a new element, how long ago it was
//!   added (all processes share one clock);
//! * `sent_bytes_per_add_per_peer`: TCP payload bytes node 0 sent while
//!   adding (kernel socket counters, so with ractor_cluster's framing and the
//!   membership heartbeats), per add and per peer;
//! * `cpu_us_per_add`: CPU time per add of the writer, of the receiver with
//!   the listener and of the one without (the kernel's scheduler counters of
//!   their threads), less what the same process spent per second while idle
//!   just before (`idle_cpu_us_per_second`). A listener that still holds the
//!   value it was sent when the next add arrives makes its Replicator copy
//!   the value (copy on write); the receiver without one shows the cost of
//!   the add alone;
//! * `replicator_counters`: how each node's Replicator counters grew while
//!   adding (`states_sent` counts whole values sent).

use std::time::{Duration, Instant};

use multi_node_tests::{cpu_nanos, percentile, sibling_node_binary, socket_bytes, LoopbackCluster};
use serde_json::{json, Value};
use test_support::eventually_blocking;

/// 100 adds per second.
const PACE_MICROS: u64 = 10_000;
/// How long the idle CPU of each process is measured, before the adds.
const IDLE_WINDOW: Duration = Duration::from_secs(3);

fn main() {
    let sizes: Vec<u64> = std::env::var("SETS_SIZES")
        .ok()
        .map(|sizes| {
            sizes
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    let adds: u64 = std::env::var("SETS_ADDS")
        .ok()
        .and_then(|adds| adds.parse().ok())
        .unwrap_or(1_000);
    let binary = sibling_node_binary();
    let mut cluster = LoopbackCluster::new(&binary, "sets", 3);
    cluster.start_all();
    let results: Vec<Value> = sizes
        .iter()
        .map(|&elements| measure(&mut cluster, elements, adds))
        .collect();
    let report = json!({
        "cluster": "3 processes, loopback, release build, library defaults",
        "adds_per_second": 1_000_000 / PACE_MICROS,
        "sizes": results,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}

fn measure(cluster: &mut LoopbackCluster, elements: u64, adds: u64) -> Value {
    let key = format!("set-{elements}");
    cluster.node(0).must(&format!("set-fill {key} {elements}"));
    eventually_blocking(
        "every node holds the filled set",
        Duration::from_secs(120),
        || (0..3).all(|i| cluster.node(i).must(&format!("set-len {key}")) == json!(elements)),
    );
    let value_bytes = cluster.node(0).must(&format!("set-bytes {key}"));
    cluster.node(1).must(&format!("set-watch {key}"));
    // Forget what earlier sizes left behind.
    cluster.node(1).must("latencies");
    let pids: Vec<u32> = cluster.running().map(|node| node.pid()).collect();
    // What each process spends without adds (heartbeats, gossip), to take
    // off the CPU measured while adding.
    let idle_before: Vec<u64> = pids.iter().map(|pid| cpu_nanos(*pid)).collect();
    let idle_started = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let idle_nanos_per_second: Vec<f64> = pids
        .iter()
        .zip(idle_before)
        .map(|(pid, before)| {
            cpu_nanos(*pid).saturating_sub(before) as f64 / idle_started.elapsed().as_secs_f64()
        })
        .collect();
    let sent_before: Vec<u64> = pids.iter().map(|pid| socket_bytes(*pid).0).collect();
    let stats_before: Vec<Value> = (0..3).map(|i| cluster.node(i).must("stats")).collect();
    let cpu_before: Vec<u64> = pids.iter().map(|pid| cpu_nanos(*pid)).collect();
    let adding = Instant::now();
    let last = cluster
        .node(0)
        .must(&format!("set-stamps {key} {adds} {PACE_MICROS}"));
    let sent: Vec<u64> = pids
        .iter()
        .zip(&sent_before)
        .map(|(pid, before)| socket_bytes(*pid).0.saturating_sub(*before))
        .collect();
    let stats: Vec<Value> = (0..3)
        .map(|i| counters_since(&stats_before[i], &cluster.node(i).must("stats")))
        .collect();
    eventually_blocking(
        "the listener hears the last add",
        Duration::from_secs(60),
        || cluster.node(1).must("set-newest").as_u64() >= last.as_u64(),
    );
    eventually_blocking(
        "the receiver without a listener holds every add",
        Duration::from_secs(60),
        || cluster.node(2).must(&format!("set-len {key}")) == json!(elements + adds),
    );
    let mut samples: Vec<u64> =
        serde_json::from_value(cluster.node(1).must("latencies")).expect("a list of microseconds");
    let elapsed = adding.elapsed().as_secs_f64();
    let cpu_us_per_add: Vec<u64> = pids
        .iter()
        .zip(cpu_before)
        .zip(&idle_nanos_per_second)
        .map(|((pid, before), idle)| {
            let spent = cpu_nanos(*pid).saturating_sub(before) as f64 - idle * elapsed;
            (spent.max(0.0) / adds as f64 / 1_000.0).round() as u64
        })
        .collect();
    samples.sort_unstable();
    json!({
        "elements": elements,
        "value_bytes": value_bytes,
        "adds": adds,
        "heard_by_listener": samples.len(),
        "spread_us": {
            "p50": percentile(&samples, 0.50),
            "p90": percentile(&samples, 0.90),
            "p99": percentile(&samples, 0.99),
            "max": samples.last(),
        },
        "sent_bytes_per_add_per_peer": sent[0] / adds / 2,
        "receivers_sent_bytes_per_add": [sent[1] / adds, sent[2] / adds],
        "replicator_counters": stats,
        "cpu_us_per_add": {
            "writer": cpu_us_per_add[0],
            "receiver_with_listener": cpu_us_per_add[1],
            "receiver": cpu_us_per_add[2],
        },
        "idle_cpu_us_per_second": idle_nanos_per_second
            .iter()
            .map(|nanos| (nanos / 1_000.0).round() as u64)
            .collect::<Vec<_>>(),
    })
}

/// How much each counter of a node's `stats` grew between two readings.
fn counters_since(before: &Value, after: &Value) -> Value {
    let Some(after) = after.as_object() else {
        return Value::Null;
    };
    after
        .iter()
        .map(|(name, value)| {
            let grown = value.as_u64().unwrap_or(0)
                - before[name]
                    .as_u64()
                    .unwrap_or(0)
                    .min(value.as_u64().unwrap_or(0));
            (name.clone(), json!(grown))
        })
        .collect()
}
