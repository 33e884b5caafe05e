//! Three real node processes on 127.0.0.1, connected by the membership helper,
//! replicating through their Replicators.

use std::time::Duration;

use multi_node_tests::LoopbackCluster;
use serde_json::json;
use test_support::eventually_blocking;

const NODE: &str = env!("CARGO_BIN_EXE_node");
const CONVERGE: Duration = Duration::from_secs(30);

#[test]
fn parallel_updates_from_every_node_converge_on_every_type() {
    let mut cluster = LoopbackCluster::new(NODE, "parallel", 3);
    cluster.start_all();
    std::thread::scope(|scope| {
        for (i, node) in cluster.running().enumerate() {
            scope.spawn(move || {
                node.must("inc-many hits 200");
                for n in 0..20 {
                    node.must(&format!("add cart item-{i}-{n}"));
                    node.must(&format!("pn balance {}", if n % 2 == 0 { 3 } else { -1 }));
                }
                node.must(&format!("remove cart item-{i}-0"));
                // The same item added and removed concurrently on every node.
                node.must("add cart shared");
                node.must("remove cart shared");
                node.must(&format!("set owner node-{i}"));
                node.must(&format!("map stock item-{i} 5"));
                node.must("map stock common 1");
            });
        }
    });

    assert_eq!(cluster.converged("get counter hits", CONVERGE), json!(600));
    assert_eq!(cluster.converged("get pn balance", CONVERGE), json!(3 * 20));
    let cart = cluster.converged("get set cart", CONVERGE);
    let items = cart.as_array().expect("a cart");
    for i in 0..3 {
        assert!(!items.contains(&json!(format!("item-{i}-0"))), "{cart}");
        for n in 1..20 {
            assert!(items.contains(&json!(format!("item-{i}-{n}"))), "{cart}");
        }
    }
    let owner = cluster.converged("get lww owner", CONVERGE);
    assert!(["node-0", "node-1", "node-2"].contains(&owner.as_str().unwrap_or_default()));
    assert_eq!(
        cluster.converged("get map stock", CONVERGE),
        json!({"common": 3, "item-0": 5, "item-1": 5, "item-2": 5})
    );
}

#[test]
fn a_node_killed_and_restarted_catches_up_and_its_new_writes_are_not_hidden() {
    let mut cluster = LoopbackCluster::new(NODE, "restart", 3);
    cluster.start_all();
    for i in 0..3 {
        cluster.node(i).must("inc hits 10");
    }
    assert_eq!(cluster.converged("get counter hits", CONVERGE), json!(30));

    cluster.kill(2);
    cluster.node(0).must("inc hits 5");
    cluster.node(1).must("inc hits 7");
    cluster.node(0).must("add cart while-down");

    cluster.start(2);
    cluster.wait_connected();
    assert_eq!(cluster.converged("get counter hits", CONVERGE), json!(42));
    // The restarted node writes under a new incarnation: its increments add
    // to the 10 its previous incarnation wrote instead of hiding behind them.
    cluster.node(2).must("inc hits 3");
    cluster.node(2).must("add cart after-restart");
    assert_eq!(cluster.converged("get counter hits", CONVERGE), json!(45));
    assert_eq!(
        cluster.converged("get set cart", CONVERGE),
        json!(["after-restart", "while-down"])
    );
}

#[test]
fn a_late_joiner_catches_up_on_ten_thousand_keys() {
    let mut cluster = LoopbackCluster::new(NODE, "late", 3);
    cluster.start(0);
    cluster.start(1);
    cluster.wait_connected();
    cluster.node(0).must("fill bulk 10000");
    let all = json!({"present": 10000, "sum": 10000});
    eventually_blocking("node 1 holds every key", CONVERGE, || {
        cluster.node(1).must("sum bulk 10000") == all
    });

    cluster.start(2);
    eventually_blocking("the late joiner holds every key", CONVERGE, || {
        cluster.node(2).must("sum bulk 10000") == all
    });
}

#[test]
fn majority_writes_and_reads_succeed_with_one_node_down() {
    let mut cluster = LoopbackCluster::new(NODE, "majority", 3);
    cluster.start_all();
    cluster.kill(2);
    eventually_blocking("the killed node is seen gone", CONVERGE, || {
        cluster.node(0).must("peers").as_array().map_or(0, Vec::len) == 1
    });
    cluster.node(0).must("inc-majority votes 3000");
    assert_eq!(cluster.node(1).must("get-majority votes 3000"), json!(1));
    // Three members are configured, so a majority is two: with only one more
    // node down, nothing could succeed.
    cluster.kill(1);
    let refused = cluster.node(0).ask("inc-majority votes 300");
    assert!(
        refused.is_err_and(|err| err.contains("reached 1 of 2")),
        "a lone node has no majority"
    );
}

#[test]
fn a_silent_node_is_disconnected_by_heartbeat_and_rejoins_when_it_wakes() {
    let mut cluster = LoopbackCluster::new(NODE, "silent", 3);
    cluster.start_all();
    cluster.node(2).signal("-STOP");
    // TCP stays up; only the missing heartbeats tell the others (3 s timeout).
    for i in 0..2 {
        eventually_blocking("the frozen node's session is closed", CONVERGE, || {
            cluster.node(i).must("peers").as_array().map_or(0, Vec::len) == 1
        });
    }
    cluster.node(0).must("inc hits 4");
    cluster.node(2).signal("-CONT");
    cluster.wait_connected();
    assert_eq!(cluster.converged("get counter hits", CONVERGE), json!(4));
}

#[test]
fn durable_nodes_killed_together_lose_no_acknowledged_write() {
    let mut cluster = LoopbackCluster::durable(NODE, "durable", 3);
    cluster.start_all();
    std::thread::scope(|scope| {
        for (i, node) in cluster.running().enumerate() {
            scope.spawn(move || {
                node.must(&format!("inc-many own-{i} 100"));
                node.must("inc-many shared 100");
                for n in 0..20 {
                    node.must(&format!("add cart item-{i}-{n}"));
                }
            });
        }
    });
    // Every write above was acknowledged; kill -9 all three at once, before
    // gossip has necessarily spread anything.
    for i in 0..3 {
        cluster.kill(i);
    }
    cluster.start_all();
    assert_eq!(
        cluster.converged("get counter shared", CONVERGE),
        json!(300)
    );
    for i in 0..3 {
        assert_eq!(
            cluster.converged(&format!("get counter own-{i}"), CONVERGE),
            json!(100)
        );
    }
    let cart = cluster.converged("get set cart", CONVERGE);
    assert_eq!(cart.as_array().map(Vec::len), Some(60), "{cart}");
    // New incarnations: fresh writes add to the recovered ones.
    for i in 0..3 {
        cluster.node(i).must("inc shared 1");
    }
    assert_eq!(
        cluster.converged("get counter shared", CONVERGE),
        json!(303)
    );
}
