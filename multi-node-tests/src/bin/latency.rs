//! Replication latency and local update throughput in a 3-process loopback
//! cluster, printed as JSON.
//!
//! ```sh
//! cargo build --release -p multi-node-tests && target/release/latency
//! ```
//!
//! * latency: node 0 writes its wall-clock time into an LWW register, spaced
//!   wider than the notification interval so no change is coalesced; nodes 1
//!   and 2 subscribe and record, when `Changed` arrives, how long ago the value
//!   was stamped (same machine, same clock);
//! * throughput: local updates of one GCounter key on node 0, one at a time
//!   (each awaited) and pipelined (all issued, then all awaited).

use std::time::Duration;

use multi_node_tests::{percentile, sibling_node_binary, LoopbackCluster};
use serde_json::{json, Value};

const UPDATES: usize = 1_000;

fn main() {
    let binary = sibling_node_binary();
    let mut cluster = LoopbackCluster::new(&binary, "bench", 3);
    cluster.start_all();
    for i in 1..3 {
        cluster.node(i).must("watch stamp");
    }
    cluster.node(0).must("stamp stamp");
    // Let the first stamp and its notifications settle before measuring.
    test_support::eventually_blocking(
        "the watchers hear the first stamp",
        Duration::from_secs(10),
        || {
            (1..3).all(|i| {
                cluster
                    .node(i)
                    .must("latencies")
                    .as_array()
                    .is_some_and(|all| !all.is_empty())
            })
        },
    );
    for _ in 0..UPDATES {
        cluster.node(0).must("stamp stamp");
        // Wider than the 5 ms notification interval: every change is notified alone.
        std::thread::sleep(Duration::from_millis(7));
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut samples: Vec<u64> = Vec::new();
    let mut per_node = Vec::new();
    for i in 1..3 {
        let latencies: Vec<u64> = serde_json::from_value(cluster.node(i).must("latencies"))
            .expect("a list of microseconds");
        per_node.push(latencies.len());
        samples.extend(latencies);
    }
    samples.sort_unstable();
    let sequential = cluster.node(0).must("throughput sequential 100000");
    let pipelined = cluster.node(0).must("throughput pipelined 200000");
    let report: Value = json!({
        "cluster": "3 processes, loopback, release build",
        "update_to_changed_us": {
            "updates": UPDATES,
            "notifications_per_listener": per_node,
            "p50": percentile(&samples, 0.50),
            "p90": percentile(&samples, 0.90),
            "p99": percentile(&samples, 0.99),
            "max": samples.last(),
        },
        "local_updates_one_key": {
            "one_at_a_time": sequential,
            "pipelined": pipelined,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
