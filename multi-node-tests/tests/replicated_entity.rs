//! Three real node processes run a replica each of the `ledger` entity, with
//! sled journals and snapshots: parallel commands, a kill -9 in the middle of
//! writing, a restart (from the snapshot) that catches up from the others'
//! journals.

use std::collections::BTreeSet;
use std::time::Duration;

use multi_node_tests::LoopbackCluster;
use serde_json::Value;
use test_support::eventually_blocking;

const NODE: &str = env!("CARGO_BIN_EXE_node");
const CONVERGE: Duration = Duration::from_secs(30);

fn entries(ledger: &Value) -> Vec<String> {
    serde_json::from_value(ledger.clone()).expect("a ledger is a list of entries")
}

/// `count` entries `prefix-0` .. are in `ledger`.
fn assert_has_all(ledger: &[String], prefix: &str, count: u64) {
    let present: BTreeSet<&str> = ledger.iter().map(String::as_str).collect();
    for n in 0..count {
        let entry = format!("{prefix}-{n}");
        assert!(present.contains(entry.as_str()), "{entry} is lost");
    }
}

#[test]
fn a_replica_killed_while_writing_catches_up_and_all_end_identical_with_nothing_lost_or_doubled() {
    // Snapshots every 64 events: each node compacts several times, and node
    // 2 restarts from one.
    let mut cluster = LoopbackCluster::durable(NODE, "entity-kill", 3)
        .with_node_arguments(&["--snapshot-every", "64"]);
    cluster.start_all();
    std::thread::scope(|scope| {
        for (i, node) in cluster.running().enumerate() {
            scope.spawn(move || node.must(&format!("record first-{i} 100")));
        }
    });

    // Node 2 writes in the background and is killed in the middle of it.
    cluster.node(2).must("record-background doomed 100000");
    eventually_blocking("node 2 is writing", CONVERGE, || {
        cluster.node(2).progress("doomed") >= 50
    });
    let acknowledged = cluster.node(2).progress("doomed");
    cluster.kill(2);

    std::thread::scope(|scope| {
        for (i, node) in cluster.running().enumerate() {
            scope.spawn(move || node.must(&format!("record while-down-{i} 100")));
        }
    });
    cluster.start(2);
    cluster.wait_connected();
    std::thread::scope(|scope| {
        for (i, node) in cluster.running().enumerate() {
            scope.spawn(move || node.must(&format!("record after-{i} 50")));
        }
    });

    let ledger = entries(&cluster.converged("ledger", CONVERGE));
    let unique: BTreeSet<&String> = ledger.iter().collect();
    assert_eq!(unique.len(), ledger.len(), "an event was applied twice");
    for i in 0..3 {
        assert_has_all(&ledger, &format!("first-{i}"), 100);
        assert_has_all(&ledger, &format!("after-{i}"), 50);
    }
    for i in 0..2 {
        assert_has_all(&ledger, &format!("while-down-{i}"), 100);
    }
    // Every acknowledged write of the killed node survived; the one in
    // flight may or may not have. Its writes are sequential: a prefix.
    let doomed = ledger.iter().filter(|e| e.starts_with("doomed-")).count() as u64;
    assert!(
        doomed >= acknowledged,
        "{acknowledged} acknowledged, {doomed} kept"
    );
    assert_has_all(&ledger, "doomed", doomed);
    assert_eq!(ledger.len() as u64, 3 * 100 + 2 * 100 + 3 * 50 + doomed);
    // Once quiet, every replica has seen every event: each compacts.
    for i in 0..3 {
        eventually_blocking("the replica compacts", CONVERGE, || {
            let stats = cluster.node(i).must("ledger-stats");
            stats["compacted"].as_u64().unwrap_or(0) > 0
        });
    }
}
