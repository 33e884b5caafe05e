//! Distributed Data across several ractor_cluster nodes inside one process,
//! connected over loopback TCP, with real Replicator actors.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use ractor_replicated::ddata::wire::MESSAGE_VARIANT;
use ractor_replicated::ddata::{
    Change, CoreConfig, DistributedData, Expiry, Key, KeySelection, ReadConsistency,
    WriteConsistency,
};
use ractor_replicated::discovery::{Discovery, PeerGroup, SessionDiscovery};
use ractor_replicated::{Error, GCounter, ORSet};
use test_support::{
    cluster, eventually, listener, next_matching, replicator_config, test_core_config, RawBytes,
};

const BOUND: Duration = Duration::from_secs(10);
const LEVEL_TIMEOUT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_update_reaches_every_node_and_its_listeners() {
    let nodes = cluster("spread", 3, test_core_config()).await;
    let cart: Key<ORSet<String>> = Key::new("cart");
    let (probe, mut changes) = listener::<Change<ORSet<String>>>().await;
    nodes[2].dd.subscribe(&cart, probe.clone()).await.unwrap();

    nodes[0]
        .dd
        .update(&cart, WriteConsistency::Local, |set, me| {
            set.apply(set.add(me, "milk".to_string()))
        })
        .await
        .unwrap();

    let change = next_matching(&mut changes, BOUND, |_| true).await;
    match change {
        Change::Changed { key, value } => {
            assert_eq!(key, cart);
            assert_eq!(value.iter().collect::<Vec<_>>(), ["milk"]);
        }
        other => panic!("expected a change, got {other:?}"),
    }
    for node in &nodes {
        eventually("every node holds the update", BOUND, || async {
            let value = node.dd.get(&cart, ReadConsistency::Local).await.unwrap();
            value.is_some_and(|set| set.contains("milk"))
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_on_every_node_converge() {
    let nodes = cluster("concurrent", 3, test_core_config()).await;
    let hits: Key<GCounter> = Key::new("hits");
    let cart: Key<ORSet<String>> = Key::new("cart");
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let dd = node.dd.clone();
        let (hits, cart) = (hits.clone(), cart.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..50 {
                dd.update(&hits, WriteConsistency::Local, |c, me| {
                    c.apply(c.increment(me, 1))
                })
                .await
                .unwrap();
                let item = format!("item-{i}-{n}");
                dd.update(&cart, WriteConsistency::Local, move |s, me| {
                    s.apply(s.add(me, item))
                })
                .await
                .unwrap();
            }
            // Everyone removes an item everyone else may be adding concurrently.
            dd.update(&cart, WriteConsistency::Local, |s, _| {
                s.apply(s.remove("item-0-0"))
            })
            .await
            .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    eventually("all nodes converge", BOUND, || async {
        let mut values = Vec::new();
        for node in &nodes {
            let counter = node.dd.get(&hits, ReadConsistency::Local).await.unwrap();
            let set = node.dd.get(&cart, ReadConsistency::Local).await.unwrap();
            values.push((counter.map(|c| c.value()), set));
        }
        values.iter().all(|v| v == &values[0]) && values[0].0 == Some(150)
    })
    .await;
    let set = nodes[1]
        .dd
        .get(&cart, ReadConsistency::Local)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(set.len(), 149, "150 adds, one observed remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consistency_level_is_reached_when_all_nodes_are_up() {
    let nodes = cluster("levels", 3, test_core_config()).await;
    let key: Key<GCounter> = Key::new("levels");
    let increment = |c: &mut ractor_replicated::ddata::Tracked<GCounter>,
                     me: &ractor_replicated::ReplicaId| {
        c.apply(c.increment(me, 1))
    };
    let writes = [
        WriteConsistency::Local,
        WriteConsistency::To {
            n: 2,
            timeout: LEVEL_TIMEOUT,
        },
        WriteConsistency::majority(LEVEL_TIMEOUT),
        WriteConsistency::All {
            timeout: LEVEL_TIMEOUT,
        },
    ];
    // All from one node, in sequence: its state holds every earlier write
    // when the write at All goes out.
    for level in writes {
        nodes[0].dd.update(&key, level, increment).await.unwrap();
    }
    // A write at All is merged on every node before it returns.
    for node in &nodes {
        let local = node.dd.get(&key, ReadConsistency::Local).await.unwrap();
        assert_eq!(local.map(|c| c.value()), Some(4), "{}", node.name);
    }
    let reads = [
        ReadConsistency::From {
            n: 2,
            timeout: LEVEL_TIMEOUT,
        },
        ReadConsistency::majority(LEVEL_TIMEOUT),
        ReadConsistency::All {
            timeout: LEVEL_TIMEOUT,
        },
    ];
    for level in reads {
        let value = nodes[1]
            .dd
            .get(&key, level)
            .await
            .unwrap()
            .map(|c| c.value());
        assert_eq!(value, Some(4), "{level:?}");
    }
}

/// A cluster of three whose third node stopped, once node 0 has seen it go.
async fn three_nodes_with_the_third_down(label: &str) -> Vec<test_support::TestNode> {
    let nodes = cluster(label, 3, test_core_config()).await;
    nodes[2].shut_down().await;
    eventually("the stopped node is seen gone", BOUND, || async {
        nodes[0]
            .dd
            .reachable_peers()
            .await
            .is_ok_and(|p| p.len() == 1)
    })
    .await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_node_down_majority_succeeds_all_times_out_and_the_write_stands() {
    let nodes = three_nodes_with_the_third_down("down").await;
    let key: Key<GCounter> = Key::new("k");
    nodes[0]
        .dd
        .update(&key, WriteConsistency::majority(LEVEL_TIMEOUT), |c, me| {
            c.apply(c.increment(me, 1))
        })
        .await
        .unwrap();
    let read = nodes[1]
        .dd
        .get(&key, ReadConsistency::majority(LEVEL_TIMEOUT))
        .await;
    assert_eq!(read.unwrap().map(|c| c.value()), Some(1));

    let all = WriteConsistency::All {
        timeout: Duration::from_millis(300),
    };
    let err = nodes[0]
        .dd
        .update(&key, all, |c, me| c.apply(c.increment(me, 1)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                reached: 2,
                required: 3,
                ..
            }
        ),
        "{err}"
    );
    let local = nodes[0].dd.get(&key, ReadConsistency::Local).await.unwrap();
    assert_eq!(
        local.map(|c| c.value()),
        Some(2),
        "a timed-out write stands locally"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_node_gone_for_good_is_removed_all_is_reached_without_it() {
    let nodes = three_nodes_with_the_third_down("removed").await;
    let key: Key<GCounter> = Key::new("k");
    let all = WriteConsistency::All {
        timeout: Duration::from_millis(300),
    };
    let err = nodes[0]
        .dd
        .update(&key, all, |c, me| c.apply(c.increment(me, 1)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { required: 3, .. }), "{err}");

    nodes[0].dd.remove_member(nodes[2].name.clone()).unwrap();
    let written = nodes[0]
        .dd
        .update(&key, all, |c, me| c.apply(c.increment(me, 1)))
        .await
        .unwrap();
    assert_eq!(
        written.acknowledged_by,
        [nodes[0].name.clone(), nodes[1].name.clone()]
    );
    let read = nodes[0]
        .dd
        .get(
            &key,
            ReadConsistency::All {
                timeout: LEVEL_TIMEOUT,
            },
        )
        .await
        .unwrap();
    assert_eq!(read.map(|c| c.value()), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_reaches_listeners_everywhere_and_the_key_cannot_be_reused() {
    let nodes = cluster("delete", 3, test_core_config()).await;
    let key: Key<ORSet<String>> = Key::new("doomed");
    nodes[0]
        .dd
        .update(
            &key,
            WriteConsistency::All {
                timeout: LEVEL_TIMEOUT,
            },
            |s, me| s.apply(s.add(me, "x".into())),
        )
        .await
        .unwrap();
    let (probe, mut changes) = listener::<Change<ORSet<String>>>().await;
    nodes[2].dd.subscribe(&key, probe).await.unwrap();
    let first = next_matching(&mut changes, BOUND, |_| true).await;
    assert!(
        matches!(first, Change::Changed { .. }),
        "subscribing reports the current value"
    );

    nodes[1]
        .dd
        .delete(&key, WriteConsistency::majority(LEVEL_TIMEOUT))
        .await
        .unwrap();
    let deleted = next_matching(&mut changes, BOUND, |c| matches!(c, Change::Deleted { .. })).await;
    assert_eq!(deleted, Change::Deleted { key: key.clone() });

    for node in &nodes {
        eventually("the tombstone arrives", BOUND, || async {
            matches!(
                node.dd.get(&key, ReadConsistency::Local).await,
                Err(Error::Deleted { .. })
            )
        })
        .await;
        let err = node
            .dd
            .update(&key, WriteConsistency::Local, |s, me| {
                s.apply(s.add(me, "y".into()))
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Deleted { .. }), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_of_a_busy_key_are_coalesced_and_end_with_the_latest_value() {
    let core = CoreConfig {
        notify_interval: Duration::from_millis(50),
        ..test_core_config()
    };
    let nodes = cluster("coalesce", 2, core).await;
    let key: Key<GCounter> = Key::new("busy");
    let (probe, mut changes) = listener::<Change<GCounter>>().await;
    nodes[0].dd.subscribe(&key, probe).await.unwrap();
    let updates: Vec<_> = (0..200)
        .map(|_| {
            let dd = nodes[0].dd.clone();
            let key = key.clone();
            tokio::spawn(async move {
                dd.update(&key, WriteConsistency::Local, |c, me| {
                    c.apply(c.increment(me, 1))
                })
                .await
            })
        })
        .collect();
    for update in updates {
        update.await.unwrap().unwrap();
    }
    let mut seen = 0;
    next_matching(&mut changes, BOUND, |change| {
        seen += 1;
        matches!(change, Change::Changed { value, .. } if value.value() == 200)
    })
    .await;
    assert!(seen < 200, "{seen} notifications for 200 updates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_share_one_value_and_keep_the_version_they_were_sent() {
    let nodes = cluster("shared-value", 1, test_core_config()).await;
    let key: Key<ORSet<String>> = Key::new("cart");
    let add = |item: &'static str| {
        let dd = nodes[0].dd.clone();
        let key = key.clone();
        async move {
            dd.update(&key, WriteConsistency::Local, move |s, me| {
                s.apply(s.add(me, item.to_string()))
            })
            .await
            .unwrap()
        }
    };
    add("milk").await;
    let (first, mut first_changes) = listener::<Change<ORSet<String>>>().await;
    let (second, mut second_changes) = listener::<Change<ORSet<String>>>().await;
    nodes[0].dd.subscribe(&key, first).await.unwrap();
    nodes[0].dd.subscribe(&key, second).await.unwrap();
    add("eggs").await;
    let has_eggs = |change: &Change<ORSet<String>>| matches!(change, Change::Changed { value, .. } if value.contains("eggs"));
    let value_of = |change: Change<ORSet<String>>| match change {
        Change::Changed { value, .. } => value,
        other => panic!("expected a value, got {other:?}"),
    };
    let held = value_of(next_matching(&mut first_changes, BOUND, has_eggs).await);
    let other = value_of(next_matching(&mut second_changes, BOUND, has_eggs).await);
    assert!(
        Arc::ptr_eq(&held, &other),
        "one value, not a copy per listener"
    );

    // The next update copies the value the listeners still hold.
    add("bread").await;
    let has_bread = |change: &Change<ORSet<String>>| matches!(change, Change::Changed { value, .. } if value.contains("bread"));
    let newer = value_of(next_matching(&mut first_changes, BOUND, has_bread).await);
    assert_eq!(newer.len(), 3);
    assert_eq!(held.iter().collect::<Vec<_>>(), ["eggs", "milk"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_listener_is_dropped_and_others_still_hear() {
    let nodes = cluster("dead-listener", 1, test_core_config()).await;
    let key: Key<GCounter> = Key::new("k");
    let (dead, _) = listener::<Change<GCounter>>().await;
    let (alive, mut changes) = listener::<Change<GCounter>>().await;
    nodes[0].dd.subscribe(&key, dead.clone()).await.unwrap();
    nodes[0].dd.subscribe(&key, alive).await.unwrap();
    dead.stop_and_wait(None, None).await.unwrap();
    nodes[0]
        .dd
        .update(&key, WriteConsistency::Local, |c, me| {
            c.apply(c.increment(me, 1))
        })
        .await
        .unwrap();
    next_matching(&mut changes, BOUND, |_| true).await;
    let subscriptions = nodes[0].dd.stats().await.unwrap().subscriptions;
    assert_eq!(subscriptions, 1, "the stopped listener was dropped");
    nodes[0].dd.unsubscribe(&key, dead.get_id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_are_counted_and_change_nothing() {
    let nodes = cluster("garbage", 2, test_core_config()).await;
    let key: Key<GCounter> = Key::new("k");
    nodes[1]
        .dd
        .update(&key, WriteConsistency::Local, |c, me| {
            c.apply(c.increment(me, 5))
        })
        .await
        .unwrap();

    let peers = SessionDiscovery::new(nodes[0].server.clone())
        .discover(&PeerGroup::replicators())
        .await;
    let target = peers
        .into_iter()
        .find(|peer| peer.node == nodes[1].name)
        .expect("node 0 has a proxy of node 1's Replicator");
    let proxy: ActorRef<RawBytes> = target.actor.into();
    let garbage = [
        (MESSAGE_VARIANT, vec![]),
        (MESSAGE_VARIANT, vec![1, 0xc1, 0xff, 0x00]),
        (MESSAGE_VARIANT, vec![99, 1, 2, 3]),
        ("some.other.variant", vec![1, 2, 3]),
    ];
    let sent = garbage.len() as u64;
    for (variant, bytes) in garbage {
        proxy.cast(RawBytes { variant, bytes }).unwrap();
    }
    eventually("the garbage is counted", BOUND, || async {
        nodes[1].dd.stats().await.unwrap().rejected_messages == sent
    })
    .await;

    let value = nodes[1].dd.get(&key, ReadConsistency::Local).await.unwrap();
    assert_eq!(value.map(|c| c.value()), Some(5), "no state change");
    nodes[0]
        .dd
        .update(
            &key,
            WriteConsistency::All {
                timeout: LEVEL_TIMEOUT,
            },
            |c, me| c.apply(c.increment(me, 1)),
        )
        .await
        .expect("node 1 still serves its peers");
    let value = nodes[1].dd.get(&key, ReadConsistency::Local).await.unwrap();
    assert_eq!(value.map(|c| c.value()), Some(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_keys_travel_in_budgeted_messages_and_an_oversized_value_is_refused() {
    let core = CoreConfig {
        max_message_bytes: 16 * 1024,
        ..test_core_config()
    };
    let nodes = cluster("budget", 2, core).await;
    let keys: Vec<Key<GCounter>> = (0..3_000)
        .map(|i| Key::new(format!("key-{i:05}")))
        .collect();
    for key in &keys {
        nodes[0]
            .dd
            .update(key, WriteConsistency::Local, |c, me| {
                c.apply(c.increment(me, 1))
            })
            .await
            .unwrap();
    }
    eventually("every key arrives", BOUND, || async {
        for key in &keys {
            let value = nodes[1].dd.get(key, ReadConsistency::Local).await.unwrap();
            if value.map(|c| c.value()) != Some(1) {
                return false;
            }
        }
        true
    })
    .await;

    let big: Key<ORSet<String>> = Key::new("big");
    let mut refused = None;
    for i in 0..2_000 {
        let item = format!("a rather long cart item name, number {i:05}");
        let result = nodes[0]
            .dd
            .update(&big, WriteConsistency::Local, move |s, me| {
                s.apply(s.add(me, item))
            })
            .await;
        if let Err(err) = result {
            refused = Some(err);
            break;
        }
    }
    let err = refused.expect("the set outgrows the 16 KiB budget");
    assert!(matches!(err, Error::ValueTooLarge { .. }), "{err}");
    // The session survived: new writes still spread.
    nodes[0]
        .dd
        .update(
            &keys[0],
            WriteConsistency::All {
                timeout: LEVEL_TIMEOUT,
            },
            |c, me| c.apply(c.increment(me, 1)),
        )
        .await
        .unwrap();
    let stats = nodes[0].dd.stats().await.unwrap();
    assert_eq!(
        stats.oversized_entries, 0,
        "nothing oversized was ever sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_update_is_an_error_and_the_replicator_goes_on() {
    let nodes = cluster("panicking", 2, test_core_config()).await;
    let cart: Key<ORSet<String>> = Key::new("cart");
    let err = nodes[0]
        .dd
        .update(&cart, WriteConsistency::Local, |_, _| panic!("no milk"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Panicked { target, reason } if target == "cart" && reason == "no milk"),
        "{err:?}"
    );
    assert_eq!(
        nodes[0]
            .dd
            .get(&cart, ReadConsistency::Local)
            .await
            .unwrap(),
        None
    );
    let majority = WriteConsistency::majority(LEVEL_TIMEOUT);
    nodes[0]
        .dd
        .update(&cart, majority, |set, me| {
            set.apply(set.add(me, "milk".to_string()))
        })
        .await
        .expect("the Replicator still serves, and reaches its peer");
    eventually("the peer holds the update", BOUND, || async {
        let value = nodes[1]
            .dd
            .get(&cart, ReadConsistency::Local)
            .await
            .unwrap();
        value.is_some_and(|set| set.contains("milk"))
    })
    .await;
}

/// A listener message whose conversion from a change panics.
struct Exploding;

impl ractor::Message for Exploding {}

impl From<Change<GCounter>> for Exploding {
    fn from(_: Change<GCounter>) -> Self {
        panic!("cannot convert")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_conversion_panics_is_dropped_and_others_still_hear() {
    let nodes = cluster("exploding", 1, test_core_config()).await;
    let dd = &nodes[0].dd;
    let hits: Key<GCounter> = Key::new("hits");
    let (exploding, _) = listener::<Exploding>().await;
    let (probe, mut changes) = listener::<Change<GCounter>>().await;
    dd.subscribe(&hits, exploding.clone()).await.unwrap();
    dd.subscribe(&hits, probe).await.unwrap();
    for _ in 0..2 {
        dd.update(&hits, WriteConsistency::Local, |c, me| {
            c.apply(c.increment(me, 1))
        })
        .await
        .unwrap();
    }
    next_matching(
        &mut changes,
        BOUND,
        |change| matches!(change, Change::Changed { value, .. } if value.value() == 2),
    )
    .await;
    // Subscribing again to a key with a value converts at once: refused too.
    dd.subscribe(&hits, exploding).await.unwrap();
    assert_eq!(
        dd.get(&hits, ReadConsistency::Local)
            .await
            .unwrap()
            .map(|c| c.value()),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_key_expires_everywhere_and_can_be_used_again() {
    let ttl = Duration::from_millis(1_500);
    let core = CoreConfig {
        expiry: Expiry::never().keys(KeySelection::prefixes(["session/"]), ttl),
        ..test_core_config()
    };
    let nodes = cluster("expiry", 2, core).await;
    let session: Key<ORSet<String>> = Key::new("session/alice");
    let kept: Key<GCounter> = Key::new("kept");
    let mut listeners = Vec::new();
    for node in &nodes {
        let (probe, changes) = listener::<Change<ORSet<String>>>().await;
        node.dd.subscribe(&session, probe).await.unwrap();
        listeners.push(changes);
    }
    nodes[0]
        .dd
        .update(&session, WriteConsistency::Local, |s, me| {
            s.apply(s.add(me, "old".into()))
        })
        .await
        .unwrap();
    nodes[0]
        .dd
        .update(&kept, WriteConsistency::Local, |c, me| {
            c.apply(c.increment(me, 1))
        })
        .await
        .unwrap();

    // Nobody reads the key (a read is a use): each node's listener hears it
    // arrive, then expire.
    for changes in &mut listeners {
        let expired = next_matching(changes, BOUND, |c| matches!(c, Change::Expired { .. })).await;
        assert_eq!(
            expired,
            Change::Expired {
                key: session.clone()
            }
        );
    }
    for node in &nodes {
        assert_eq!(
            node.dd.get(&session, ReadConsistency::Local).await.unwrap(),
            None
        );
        eventually(
            "the key that does not expire is everywhere",
            BOUND,
            || async {
                node.dd
                    .get(&kept, ReadConsistency::Local)
                    .await
                    .unwrap()
                    .is_some_and(|c| c.value() == 1)
            },
        )
        .await;
        assert!(node.dd.stats().await.unwrap().expired >= 1);
    }

    nodes[1]
        .dd
        .update(&session, WriteConsistency::Local, |s, me| {
            s.apply(s.add(me, "new".into()))
        })
        .await
        .unwrap();
    eventually(
        "the new life of the key reaches the other node",
        BOUND,
        || async {
            nodes[0]
                .dd
                .get(&session, ReadConsistency::Local)
                .await
                .unwrap()
                .is_some_and(|s| s.iter().eq(["new"].iter()))
        },
    )
    .await;
}

/// Whether every node reads `total` in `key`.
async fn counts(nodes: &[test_support::TestNode], key: &Key<GCounter>, total: u128) -> bool {
    for node in nodes {
        let value = node.dd.get(key, ReadConsistency::Local).await.unwrap();
        if value.is_none_or(|c| c.value() != total) {
            return false;
        }
    }
    true
}

/// Stops node `at`'s Replicator and starts a new one (a new incarnation)
/// with every node listed as a member.
async fn restart_listed(nodes: &mut [test_support::TestNode], at: usize, core: &CoreConfig) {
    let names: Vec<String> = nodes.iter().map(|node| node.name.clone()).collect();
    let node = &mut nodes[at];
    node.dd.stop().await;
    let config = replicator_config(&node.name, &node.server, core.clone()).with_members(names);
    node.dd = DistributedData::start(config).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replicator_s_dead_incarnation_is_retired_on_every_node() {
    let core = CoreConfig {
        retire_incarnations: true,
        ..test_core_config()
    };
    let mut nodes = cluster("retire", 3, core.clone()).await;
    for at in 0..nodes.len() {
        restart_listed(&mut nodes, at, &core).await;
    }
    let hits: Key<GCounter> = Key::new("hits");
    for node in &nodes {
        node.dd
            .update(&hits, WriteConsistency::Local, |c, me| {
                c.apply(c.increment(me, 1))
            })
            .await
            .unwrap();
    }
    eventually("every node counts 3", BOUND, || counts(&nodes, &hits, 3)).await;
    let dead = nodes[2].dd.replica_id().await.unwrap();
    restart_listed(&mut nodes, 2, &core).await;
    eventually(
        "every node retired the restarted node's dead incarnation",
        BOUND,
        || async {
            for node in &nodes {
                let counter = node.dd.get(&hits, ReadConsistency::Local).await.unwrap();
                let holds_dead = counter.is_none_or(|c| {
                    c.counts()
                        .iter()
                        .any(|(replica, _)| replica.node() == dead.node())
                });
                let stats = node.dd.stats().await.unwrap();
                if holds_dead || stats.pending_retirements > 0 {
                    return false;
                }
            }
            true
        },
    )
    .await;
    eventually("the value stays 3", BOUND, || counts(&nodes, &hits, 3)).await;
    nodes[2]
        .dd
        .update(&hits, WriteConsistency::Local, |c, me| {
            c.apply(c.increment(me, 1))
        })
        .await
        .unwrap();
    eventually("the new incarnation's write counts once", BOUND, || {
        counts(&nodes, &hits, 4)
    })
    .await;
}
