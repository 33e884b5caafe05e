//! Many idle replicated entities in a 3-process loopback cluster: what they
//! cost while nothing happens, and how fast one event still travels. Prints
//! JSON.
//!
//! ```sh
//! cargo build --release -p multi-node-tests && target/release/idle_entities
//! ```
//!
//! Each node spawns `IDLE_ENTITIES` entities (default 1,000) with the
//! library's defaults and in-memory journals (sled journals with
//! `IDLE_SLED=1`), the same persistence ids on every node: one actor per
//! entity, or with `IDLE_ROUTED=1` one entity router per node hosting all
//! of them, which passivates them after `IDLE_PASSIVATE_MS` (default 0:
//! never). The benchmark then reports:
//! * how long spawning took, and until every replica reached the other two;
//! * each node's CPU use (percent of one core) over `IDLE_SECONDS` (default
//!   10) of idleness, and its resident memory;
//! * the replication latency of single events: node 0 records an entry on
//!   one entity, and the time until both other nodes hold it (read by
//!   polling them, so it includes the polls' round trips, about 0.1 ms each).

use std::time::{Duration, Instant};

use multi_node_tests::{cpu_nanos, percentile, sibling_node_binary, LoopbackCluster};
use serde_json::json;
use test_support::eventually_blocking;

const NODES: usize = 3;
const LATENCY_SAMPLES: usize = 20;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let entities = setting("IDLE_ENTITIES", 1_000) as usize;
    let idle_seconds = setting("IDLE_SECONDS", 10);
    let routed = setting("IDLE_ROUTED", 0) == 1;
    let sled = setting("IDLE_SLED", 0) == 1;
    let passivate_ms = setting("IDLE_PASSIVATE_MS", 0);
    let binary = sibling_node_binary();
    let mut cluster = if sled {
        LoopbackCluster::durable(&binary, "idle-entities", NODES)
    } else {
        LoopbackCluster::new(&binary, "idle-entities", NODES)
    };
    cluster.start_all();
    cluster.wait_connected();

    let started = Instant::now();
    let spawn_seconds: Vec<f64> = (0..NODES)
        .map(|i| {
            let spawn = if routed {
                format!("router-spawn {entities} {passivate_ms}")
            } else {
                format!("entities-spawn {entities}")
            };
            cluster.node(i).must(&spawn)["seconds"]
                .as_f64()
                .expect("seconds")
        })
        .collect();
    eventually_blocking(
        "every replica reaches the others",
        Duration::from_secs(600),
        || {
            (0..NODES).all(|i| {
                if routed {
                    cluster.node(i).must("router-peers").as_u64() == Some(NODES as u64 - 1)
                } else {
                    cluster
                        .node(i)
                        .must(&format!("entities-with-peers {}", NODES - 1))
                        .as_u64()
                        == Some(entities as u64)
                }
            })
        },
    );
    let connected_seconds = started.elapsed().as_secs_f64();

    let pids: Vec<u32> = (0..NODES).map(|i| cluster.node(i).pid()).collect();
    let before: Vec<u64> = pids.iter().map(|pid| cpu_nanos(*pid)).collect();
    let idle_started = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_seconds));
    let elapsed = idle_started.elapsed().as_secs_f64();
    let cpu_percent: Vec<f64> = pids
        .iter()
        .zip(&before)
        .map(|(pid, before)| {
            let spent = cpu_nanos(*pid).saturating_sub(*before) as f64 / 1e9;
            (spent / elapsed * 1000.0).round() / 10.0
        })
        .collect();
    let resident_kib: Vec<_> = (0..NODES).map(|i| cluster.node(i).must("rss")).collect();
    let running: Vec<_> = (0..NODES)
        .map(|i| routed.then(|| cluster.node(i).must("router-running")))
        .collect();

    let mut latencies_micros = Vec::new();
    for sample in 0..LATENCY_SAMPLES {
        let entity = sample * entities / LATENCY_SAMPLES;
        let sent = Instant::now();
        let (record, events) = if routed {
            ("router-record", "router-events")
        } else {
            ("entity-record", "entity-events")
        };
        cluster
            .node(0)
            .must(&format!("{record} {entity} sample-{sample}"));
        // Polled back to back: `eventually`'s pause would dwarf the latency.
        for i in 1..NODES {
            while cluster.node(i).must(&format!("{events} {entity}")).as_u64() != Some(1) {
                assert!(
                    sent.elapsed() < Duration::from_secs(60),
                    "the event did not reach node {i} within 60 s"
                );
            }
        }
        latencies_micros.push(sent.elapsed().as_micros() as u64);
    }
    latencies_micros.sort_unstable();

    let report = json!({
        "entities_per_node": entities,
        "routed": routed,
        "journal": if sled { "sled" } else { "memory" },
        "passivate_ms": passivate_ms,
        "running_after_idle": running,
        "nodes": NODES,
        "spawn_seconds": spawn_seconds,
        "all_replicas_connected_seconds": connected_seconds,
        "idle_seconds": idle_seconds,
        "idle_cpu_percent": cpu_percent,
        "resident_kib": resident_kib,
        "replication_latency_micros": {
            "samples": latencies_micros.len(),
            "p50": percentile(&latencies_micros, 0.5),
            "max": latencies_micros.last(),
        },
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
