//! What replication costs against the size of the store, on 3 loopback
//! processes with the library's default 1 s gossip interval, printed as JSON.
//! Bytes are TCP payload bytes from the kernel's socket counters (`ss`), so
//! they include ractor_cluster's framing and the membership heartbeats.
//!
//! ```sh
//! cargo build --release -p multi-node-tests && target/release/cost
//! ```
//!
//! * `idle`: bytes sent per node per second by a converged cluster holding
//!   0, 10k and 100k counters (`COST_KEYS` sets the largest);
//! * `repair`: the cluster with every key is cut in two (node 2 alone); one
//!   key changes on each side; after the links heal, the time until all three
//!   nodes hold both changes, and the bytes it took;
//! * `late_joiner`: nodes 0 and 1 hold every key; node 2 starts empty: the
//!   time from its start (process up, listening) until it holds them all, and
//!   the bytes it received against the size of the data (keys and encoded
//!   states).

use std::time::{Duration, Instant};

use multi_node_tests::faults::Link;
use multi_node_tests::{sibling_node_binary, socket_bytes, LoopbackCluster};
use serde_json::{json, Value};
use test_support::eventually_blocking;

const GOSSIP_MS: &str = "1000";
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// How far apart [`wait_quiet`] compares the counters: more than a gossip
/// interval, so every node's round falls in each comparison.
const QUIET_CHECK: Duration = Duration::from_millis(1_500);
/// Bytes a node may send between two quiet checks: ten times the idle
/// traffic measured at 100k keys, far below what a fill or a catch-up sends.
const QUIET_BYTES: u64 = 25_000;

fn main() {
    let largest: u64 = std::env::var("COST_KEYS")
        .ok()
        .and_then(|keys| keys.parse().ok())
        .unwrap_or(100_000);
    let binary = sibling_node_binary();
    let mut report = json!({
        "cluster": "3 processes, loopback, release build, gossip interval 1 s",
    });

    let mut cluster =
        LoopbackCluster::new(&binary, "cost", 3).with_node_arguments(&["--gossip-ms", GOSSIP_MS]);
    cluster.start_all();
    let mut idle = Vec::new();
    let mut filled = 0;
    for keys in [0, largest / 10, largest] {
        if keys > filled {
            let command = format!("fill k{filled} {}", keys - filled);
            cluster.node(0).must(&command);
            filled = keys;
        }
        wait_for_keys(&mut cluster, &[0, 1, 2], keys, Duration::from_secs(120));
        wait_quiet(&mut cluster);
        idle.push(json!({
            "keys": keys,
            "sent_bytes_per_second_per_node": idle_rates(&mut cluster),
        }));
        eprintln!("idle at {keys} keys measured");
    }
    report["idle"] = json!(idle);
    drop(cluster);

    report["repair"] = repair(&binary, largest);
    report["late_joiner"] = late_joiner(&binary, largest);
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}

/// Waits until each of `nodes` holds at least `keys` keys.
fn wait_for_keys(cluster: &mut LoopbackCluster, nodes: &[usize], keys: u64, bound: Duration) {
    for &i in nodes {
        let node = cluster.node(i);
        eventually_blocking(&format!("node {i} holds {keys} keys"), bound, || {
            node.must("stats")["keys"].as_u64().unwrap_or(0) >= keys
        });
    }
}

/// Waits until no running node sent more than [`QUIET_BYTES`] since the
/// previous check (checks are a gossip interval or so apart): the pushes and
/// exchanges a fill set off are over, and what remains is idle traffic.
fn wait_quiet(cluster: &mut LoopbackCluster) {
    let pids: Vec<u32> = cluster.running().map(|node| node.pid()).collect();
    let sent = || -> Vec<u64> { pids.iter().map(|pid| socket_bytes(*pid).0).collect() };
    let mut last = sent();
    let mut last_at = Instant::now();
    eventually_blocking("the cluster is quiet", Duration::from_secs(60), || {
        if last_at.elapsed() < QUIET_CHECK {
            return false;
        }
        let now = sent();
        let quiet = now
            .iter()
            .zip(&last)
            .all(|(now, before)| now.saturating_sub(*before) <= QUIET_BYTES);
        (last, last_at) = (now, Instant::now());
        quiet
    });
}

/// Bytes each node sends per second over [`IDLE_WINDOW`].
fn idle_rates(cluster: &mut LoopbackCluster) -> Vec<u64> {
    let pids: Vec<u32> = cluster.running().map(|node| node.pid()).collect();
    let before: Vec<u64> = pids.iter().map(|pid| socket_bytes(*pid).0).collect();
    std::thread::sleep(IDLE_WINDOW);
    pids.iter()
        .zip(before)
        .map(|(pid, before)| (socket_bytes(*pid).0.saturating_sub(before)) / IDLE_WINDOW.as_secs())
        .collect()
}

fn repair(binary: &std::path::Path, keys: u64) -> Value {
    let mut cluster = LoopbackCluster::new(binary, "repair", 3)
        .with_link_faults()
        .with_node_arguments(&["--gossip-ms", GOSSIP_MS]);
    cluster.start_all();
    cluster.node(0).must(&format!("fill k {keys}"));
    wait_for_keys(&mut cluster, &[0, 1, 2], keys, Duration::from_secs(120));
    wait_quiet(&mut cluster);
    cluster.network().partition(&[2], Link::Cut);
    eventually_blocking("node 2 is alone", Duration::from_secs(30), || {
        cluster
            .node(2)
            .must("peers")
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    cluster.node(0).must("inc k-7 1");
    cluster.node(2).must("inc k-8 1");
    let pids: Vec<u32> = cluster.running().map(|node| node.pid()).collect();
    // Counters of the connections that survived the cut; those made after
    // the heal start at zero.
    let before: Vec<u64> = pids.iter().map(|pid| socket_bytes(*pid).0).collect();
    let healed = Instant::now();
    cluster.network().heal();
    cluster.wait_connected();
    let reconnected = healed.elapsed();
    eventually_blocking("both changes everywhere", Duration::from_secs(60), || {
        cluster.running().all(|node| {
            node.must("get counter k-7") == json!(2) && node.must("get counter k-8") == json!(2)
        })
    });
    let repaired = healed.elapsed();
    let sent: Vec<u64> = pids
        .iter()
        .zip(before)
        .map(|(pid, before)| socket_bytes(*pid).0.saturating_sub(before))
        .collect();
    json!({
        "keys": keys,
        "reconnected_ms": reconnected.as_millis() as u64,
        "repaired_after_heal_ms": repaired.as_millis() as u64,
        "sent_bytes_since_heal_per_node": sent,
    })
}

fn late_joiner(binary: &std::path::Path, keys: u64) -> Value {
    let mut cluster =
        LoopbackCluster::new(binary, "joiner", 3).with_node_arguments(&["--gossip-ms", GOSSIP_MS]);
    cluster.start(0);
    cluster.start(1);
    cluster.wait_connected();
    cluster.node(0).must(&format!("fill k {keys}"));
    wait_for_keys(&mut cluster, &[0, 1], keys, Duration::from_secs(120));
    wait_quiet(&mut cluster);
    let data = cluster.node(0).must(&format!("data-bytes k {keys}"));
    let started = Instant::now();
    cluster.start(2);
    let pid = cluster.node(2).pid();
    let node = cluster.node(2);
    let mut polls = 0;
    let mut connected = None;
    while node.must("stats")["keys"].as_u64().unwrap_or(0) < keys {
        polls += 1;
        if connected.is_none() && node.must("peers").as_array().map_or(0, Vec::len) == 2 {
            connected = Some(started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the joiner did not catch up"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let caught_up = started.elapsed();
    let (_, received) = socket_bytes(pid);
    let data = data.as_u64().unwrap_or(0);
    json!({
        "keys": keys,
        "holders": 2,
        "caught_up_ms": caught_up.as_millis() as u64,
        "both_holders_reachable_ms": connected.map(|at| at.as_millis() as u64),
        "polls": polls,
        "received_bytes": received,
        "data_bytes": data,
        "received_per_data_byte": received as f64 / data.max(1) as f64,
    })
}
