//! Membership as events: a `ClusterNode` tells subscribers which nodes come
//! up, go down and are removed, lets callers wait for a number of
//! connected nodes, and a Replicator subscribed to it stops counting a
//! removed node for `All`. A removal reaches every node, also one that
//! connects later.

use std::time::Duration;

use ractor_replicated::cluster::{ClusterConfig, ClusterNode, MemberEvent};
use ractor_replicated::ddata::{DistributedData, Key, ReplicatorConfig, WriteConsistency};
use ractor_replicated::discovery::SessionDiscovery;
use ractor_replicated::{Error, GCounter};
use test_support::{free_port, listener, next_matching, COOKIE};

const BOUND: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_come_up_go_down_and_are_removed_and_all_is_then_reached_without_them() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let config = ClusterConfig::new(format!("member-{i}"), "127.0.0.1", *port, COOKIE)
            .with_seeds(seeds.clone());
        nodes.push(ClusterNode::start(config).await.unwrap());
    }
    let (events, mut heard) = listener::<MemberEvent>().await;
    nodes[0].subscribe(events).unwrap();
    let (events, mut heard_by_1) = listener::<MemberEvent>().await;
    nodes[1].subscribe(events).unwrap();
    let mut up = nodes[0].wait_until_connected(2, BOUND).await.unwrap();
    up.sort();
    assert_eq!(up, ["member-1", "member-2"]);
    for _ in 0..2 {
        let event = next_matching(&mut heard, BOUND, |_| true).await;
        assert!(matches!(event, MemberEvent::Up(_)), "{event:?}");
    }
    let err = nodes[0]
        .wait_until_connected(3, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotConnected { required: 3, connected, .. } if connected.len() == 2),
        "{err}"
    );

    // Replicators (found through the sessions, since the three NodeServers
    // share one process) follow node 0's membership events.
    let mut replicators = Vec::new();
    for node in &nodes {
        let config = ReplicatorConfig::new(node.name())
            .with_discovery(SessionDiscovery::new(node.server().clone()));
        let dd = DistributedData::start(config).await.unwrap();
        node.subscribe(dd.actor()).unwrap();
        replicators.push(dd);
    }
    test_support::eventually("the replicators see each other", BOUND, || async {
        replicators[0]
            .reachable_peers()
            .await
            .is_ok_and(|p| p.len() == 2)
    })
    .await;

    replicators[2].stop().await;
    nodes[2].stop().await;
    let down = next_matching(&mut heard, BOUND, |_| true).await;
    assert_eq!(down, MemberEvent::Down("member-2".into()));
    let key: Key<GCounter> = Key::new("k");
    let all = WriteConsistency::All {
        timeout: Duration::from_millis(300),
    };
    let err = replicators[0]
        .update(&key, all, |c, me| c.apply(c.increment(me, 1)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { required: 3, .. }), "{err}");

    nodes[0].remove_member("member-2").unwrap();
    let removed = next_matching(&mut heard, BOUND, |_| true).await;
    assert_eq!(removed, MemberEvent::Removed("member-2".into()));
    // The Replicator heard the same event through its own subscription;
    // the update below is behind it in the Replicator's mailbox only if the
    // event arrived first, so wait for a write to go through.
    test_support::eventually("All is reached without the removed node", BOUND, || async {
        replicators[0]
            .update(&key, all, |c, me| c.apply(c.increment(me, 1)))
            .await
            .is_ok_and(|written| written.acknowledged_by.len() == 2)
    })
    .await;

    // Node 1 heard of the removal from node 0, and its Replicator too.
    let removed = next_matching(&mut heard_by_1, BOUND, |event| {
        matches!(event, MemberEvent::Removed(_))
    })
    .await;
    assert_eq!(removed, MemberEvent::Removed("member-2".into()));
    test_support::eventually("All is reached from node 1 too", BOUND, || async {
        replicators[1]
            .update(&key, all, |c, me| c.apply(c.increment(me, 1)))
            .await
            .is_ok_and(|written| written.acknowledged_by.len() == 2)
    })
    .await;

    // A node that connects later hears of it from the nodes it reaches.
    let config = ClusterConfig::new("member-3", "127.0.0.1", free_port(), COOKIE)
        .with_seeds(seeds[..2].to_vec());
    let late = ClusterNode::start(config).await.unwrap();
    let (events, mut heard_by_3) = listener::<MemberEvent>().await;
    late.subscribe(events).unwrap();
    let removed = next_matching(&mut heard_by_3, BOUND, |event| {
        matches!(event, MemberEvent::Removed(_))
    })
    .await;
    assert_eq!(removed, MemberEvent::Removed("member-2".into()));

    for dd in &replicators[..2] {
        dd.stop().await;
    }
    late.stop().await;
    for node in &nodes[..2] {
        node.stop().await;
    }
}
