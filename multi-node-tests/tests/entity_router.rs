//! Three real node processes run many `ledger` entities behind one entity
//! router each, with sled journals and quick passivation: writes to many
//! entities from every node, a kill -9 of a node in the middle of writing,
//! writes while it is down, and a restart after which its router, with no
//! entity running, catches up with every entity.

use std::collections::BTreeSet;
use std::time::Duration;

use multi_node_tests::LoopbackCluster;
use test_support::eventually_blocking;

const NODE: &str = env!("CARGO_BIN_EXE_node");
const CONVERGE: Duration = Duration::from_secs(60);
const ENTITIES: u64 = 12;

/// The entries of entity `many-<entity>` on node `i`.
fn ledger(cluster: &mut LoopbackCluster, i: usize, entity: u64) -> Vec<String> {
    serde_json::from_value(cluster.node(i).must(&format!("router-ledger {entity}")))
        .expect("a ledger is a list of entries")
}

/// The entries `prefix-<n>` for `n` below `count` that go to `entity`.
fn expected(prefix: &str, count: u64, entity: u64) -> impl Iterator<Item = String> + '_ {
    (0..count)
        .filter(move |n| n % ENTITIES == entity)
        .map(move |n| format!("{prefix}-{n}"))
}

#[test]
fn a_router_killed_while_writing_catches_up_and_every_entity_ends_identical_with_nothing_lost_or_doubled(
) {
    let mut cluster = LoopbackCluster::durable(NODE, "router-kill", 3);
    cluster.start_all();
    for node in cluster.running() {
        node.must("router-spawn 0 300");
    }
    eventually_blocking("the routers see each other", CONVERGE, || {
        cluster
            .running()
            .all(|node| node.must("router-peers").as_u64() == Some(2))
    });
    std::thread::scope(|scope| {
        for (i, node) in cluster.running().enumerate() {
            scope.spawn(move || node.must(&format!("router-record-many first-{i} 60 {ENTITIES}")));
        }
    });

    // Node 2 writes in the background and is killed in the middle of it.
    cluster.node(2).must(&format!(
        "router-record-many doomed 100000 {ENTITIES} background"
    ));
    eventually_blocking("node 2 is writing", CONVERGE, || {
        cluster.node(2).progress("doomed") >= 40
    });
    let acknowledged = cluster.node(2).progress("doomed");
    cluster.kill(2);

    std::thread::scope(|scope| {
        for (i, node) in cluster.running().enumerate() {
            scope.spawn(move || {
                node.must(&format!("router-record-many while-down-{i} 60 {ENTITIES}"))
            });
        }
    });
    // Back with its journal and no entity running: the others' entities,
    // passivated or not, tell it what they hold.
    cluster.start(2);
    cluster.wait_connected();
    cluster.node(2).must("router-spawn 0 300");
    std::thread::scope(|scope| {
        for (i, node) in cluster.running().enumerate() {
            scope.spawn(move || node.must(&format!("router-record-many after-{i} 30 {ENTITIES}")));
        }
    });

    for entity in 0..ENTITIES {
        let mut wanted: BTreeSet<String> = BTreeSet::new();
        for i in 0..3 {
            wanted.extend(expected(&format!("first-{i}"), 60, entity));
            wanted.extend(expected(&format!("after-{i}"), 30, entity));
        }
        for i in 0..2 {
            wanted.extend(expected(&format!("while-down-{i}"), 60, entity));
        }
        wanted.extend(expected("doomed", acknowledged, entity));
        let mut ledgers = Vec::new();
        eventually_blocking(
            &format!("entity {entity} holds every acknowledged entry, in one order, everywhere"),
            CONVERGE,
            || {
                ledgers = (0..3).map(|i| ledger(&mut cluster, i, entity)).collect();
                ledgers.iter().all(|ledger| ledger == &ledgers[0])
                    && wanted.iter().all(|entry| ledgers[0].contains(entry))
            },
        );
        let unique: BTreeSet<&String> = ledgers[0].iter().collect();
        assert_eq!(unique.len(), ledgers[0].len(), "an entry was applied twice");
        // Unacknowledged writes of the killed node may or may not have
        // survived; nothing else may be there.
        for entry in &ledgers[0] {
            assert!(
                wanted.contains(entry) || entry.starts_with("doomed-"),
                "{entry} was never written"
            );
        }
    }
}
