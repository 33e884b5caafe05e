//! Many entities of one type per node, behind one router per node: three
//! nodes in one process over loopback ractor_cluster sessions. Entities
//! start on their first command or replicated event, replicate through the
//! routers, passivate when idle and catch up after a router was away.

use std::time::Duration;

use ractor::ActorRef;
use ractor_replicated::cluster::MemberEvent;
use ractor_replicated::discovery::{Discovery, PeerGroup, SessionDiscovery};
use ractor_replicated::persistence::{
    Entities, EntityRouter, EntityType, EventApplied, LastWriterWins, MemoryJournal,
};
use ractor_replicated::ReplicaId;
use test_support::{
    cluster, eventually, listener, next_matching, test_core_config, Ledger, RawBytes, Recorded,
    TestNode,
};

const BOUND: Duration = Duration::from_secs(10);
const TYPE: &str = "ledgers";

/// The ledger type on `node`, finding the other routers through its
/// sessions, with anti-entropy every 100 ms.
fn ledger_type(
    node: &TestNode,
    journal: MemoryJournal,
) -> EntityType<Ledger, LastWriterWins, MemoryJournal> {
    EntityType::new(TYPE, ReplicaId::new(node.name.as_str(), 0), journal, |_| {
        (Ledger, LastWriterWins)
    })
    .with_discovery(SessionDiscovery::new(node.server.clone()))
    .with_anti_entropy_interval(Duration::from_millis(100))
}

async fn spawn_router(
    node: &TestNode,
    journal: MemoryJournal,
    passivate_after: Option<Duration>,
) -> Entities<Ledger> {
    EntityRouter::spawn(ledger_type(node, journal).with_passivation(passivate_after))
        .await
        .expect("the router starts")
}

/// Waits until every router reaches the other two.
async fn see_each_other(routers: &[Entities<Ledger>]) {
    eventually("the routers see each other", BOUND, || async {
        for router in routers {
            let peers = router
                .stats("probe")
                .await
                .map_or(0, |s| s.reachable_peers.len());
            if peers != routers.len() - 1 {
                return false;
            }
        }
        true
    })
    .await;
}

/// Every router holds `expected` entries for `id`, in one order.
async fn converged(routers: &[Entities<Ledger>], id: &str, expected: usize) -> bool {
    let mut states = Vec::new();
    for router in routers {
        match router.state(id).await {
            Ok(state) if state.len() == expected => states.push(state),
            _ => return false,
        }
    }
    states.windows(2).all(|pair| pair[0] == pair[1])
}

async fn shut_down(routers: &[Entities<Ledger>], nodes: &[TestNode]) {
    for router in routers {
        let _ = router.router().stop_and_wait(None, None).await;
    }
    for node in nodes {
        node.shut_down().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_entities_replicate_through_one_router_per_node() {
    let nodes = cluster("router-many", 3, test_core_config()).await;
    let mut routers = Vec::new();
    for node in &nodes {
        routers.push(spawn_router(node, MemoryJournal::new(), None).await);
    }
    see_each_other(&routers).await;
    const ENTITIES: usize = 40;
    // Every node writes to every entity at once: concurrent events.
    let writers: Vec<_> = routers
        .iter()
        .enumerate()
        .map(|(n, router)| {
            let router = router.clone();
            tokio::spawn(async move {
                for e in 0..ENTITIES {
                    router
                        .command(format!("account-{e}"), format!("n{n}-{e}"))
                        .await
                        .expect("acknowledged");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    for e in 0..ENTITIES {
        let id = format!("account-{e}");
        eventually("every entity converges", BOUND, || {
            converged(&routers, &id, 3)
        })
        .await;
    }
    for router in &routers {
        assert_eq!(router.running().await.unwrap(), ENTITIES + 1);
    }
    shut_down(&routers, &nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivated_entities_wake_for_replicated_events_and_keep_their_state() {
    let nodes = cluster("router-passivate", 3, test_core_config()).await;
    let mut routers = Vec::new();
    for node in &nodes {
        let passivate = Some(Duration::from_millis(300));
        routers.push(spawn_router(node, MemoryJournal::new(), passivate).await);
    }
    see_each_other(&routers).await;
    routers[0].command("cart-1", "apple".into()).await.unwrap();
    eventually("the first entry replicates", BOUND, || {
        converged(&routers, "cart-1", 1)
    })
    .await;
    eventually("every entity passivates", BOUND, || async {
        for router in &routers {
            if router.running().await.unwrap() != 0 {
                return false;
            }
        }
        true
    })
    .await;
    // Passivated everywhere: node 2 wakes its entity with the command, and
    // the event wakes the others'.
    routers[2].command("cart-1", "pear".into()).await.unwrap();
    eventually("a passivated entity takes in the event", BOUND, || {
        converged(&routers, "cart-1", 2)
    })
    .await;
    assert_eq!(
        routers[0].state("cart-1").await.unwrap(),
        ["apple", "pear"],
        "the state came back from the journal"
    );
    shut_down(&routers, &nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_was_away_catches_up_with_passivated_entities() {
    let nodes = cluster("router-away", 3, test_core_config()).await;
    let journals: Vec<MemoryJournal> = (0..3).map(|_| MemoryJournal::new()).collect();
    let passivate = Some(Duration::from_millis(300));
    let mut routers = Vec::new();
    for (node, journal) in nodes.iter().zip(&journals) {
        routers.push(spawn_router(node, journal.clone(), passivate).await);
    }
    see_each_other(&routers).await;
    let away = routers.pop().expect("three routers");
    away.router().stop_and_wait(None, None).await.unwrap();
    for e in 0..10 {
        routers[e % 2]
            .command(format!("order-{e}"), format!("item-{e}"))
            .await
            .unwrap();
    }
    eventually("the two passivate every entity", BOUND, || async {
        for router in &routers {
            if router.running().await.unwrap() != 0 {
                return false;
            }
        }
        true
    })
    .await;
    // Back with its journal and no entity running: the others' passivated
    // entities tell it what they hold, which starts its own (asking for
    // them here would start them too, and prove nothing).
    routers.push(spawn_router(&nodes[2], journals[2].clone(), None).await);
    eventually(
        "the reports start the returning router's entities",
        BOUND,
        || async { routers[2].running().await.unwrap() >= 10 },
    )
    .await;
    for e in 0..10 {
        let id = format!("order-{e}");
        eventually("the returning router catches up", BOUND, || async {
            routers[2]
                .stats(id.as_str())
                .await
                .is_ok_and(|stats| stats.events == 1)
        })
        .await;
    }
    shut_down(&routers, &nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_between_routers_is_counted_and_replication_goes_on() {
    let nodes = cluster("router-garbage", 2, test_core_config()).await;
    let mut routers = Vec::new();
    for node in &nodes {
        routers.push(spawn_router(node, MemoryJournal::new(), None).await);
    }
    see_each_other(&routers).await;
    let discovery = SessionDiscovery::new(nodes[0].server.clone());
    let mut peers = discovery.discover(&PeerGroup::entity_type(TYPE)).await;
    let proxy: ActorRef<RawBytes> = peers.remove(0).actor.into();
    let variant = ractor_replicated::persistence::ROUTER_MESSAGE_VARIANT;
    let garbage = [
        (variant, vec![]),
        (variant, vec![1, 0xc1, 0xff, 0x00]),
        ("some.other.variant", vec![1, 2, 3]),
    ];
    let sent = garbage.len() as u64;
    for (variant, bytes) in garbage {
        proxy.cast(RawBytes { variant, bytes }).unwrap();
    }
    eventually("the garbage is counted", BOUND, || async {
        routers[1]
            .stats("any")
            .await
            .is_ok_and(|stats| stats.rejected_messages == sent)
    })
    .await;
    routers[1].command("still", "working".into()).await.unwrap();
    eventually("replication goes on", BOUND, || {
        converged(&routers, "still", 1)
    })
    .await;
    shut_down(&routers, &nodes).await;
}

/// What a projection of one entity's events hears: the local sequence
/// number and the entry.
#[derive(Debug, PartialEq)]
struct Heard(u64, String);

impl ractor::Message for Heard {}

impl From<EventApplied<Recorded>> for Heard {
    fn from(applied: EventApplied<Recorded>) -> Self {
        Heard(applied.sequence, applied.envelope.event.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_resumes_after_passivation_from_its_sequence_number() {
    let nodes = cluster("router-subscribe", 1, test_core_config()).await;
    let passivate = Some(Duration::from_millis(200));
    let router = spawn_router(&nodes[0], MemoryJournal::new(), passivate).await;
    let (projection, mut heard) = listener::<Heard>().await;
    router.subscribe("cart-9", projection.clone()).unwrap();
    for entry in ["a", "b"] {
        router.command("cart-9", entry.into()).await.unwrap();
    }
    for (sequence, entry) in [(1, "a"), (2, "b")] {
        let next = next_matching(&mut heard, BOUND, |_| true).await;
        assert_eq!(next, Heard(sequence, entry.into()));
    }
    eventually("the entity passivates", BOUND, || async {
        router.running().await.unwrap() == 0
    })
    .await;
    // Passivation ended the subscription; the projection resumes after the
    // last event it handled, without a gap or a repeat.
    router.command("cart-9", "c".into()).await.unwrap();
    router
        .subscribe_from("cart-9", projection.clone(), 3)
        .unwrap();
    router.command("cart-9", "d".into()).await.unwrap();
    for (sequence, entry) in [(3, "c"), (4, "d")] {
        let next = next_matching(&mut heard, BOUND, |_| true).await;
        assert_eq!(next, Heard(sequence, entry.into()));
    }
    router.unsubscribe("cart-9", projection.get_id()).unwrap();
    router.command("cart-9", "e".into()).await.unwrap();
    projection.drain_and_wait(None).await.unwrap();
    assert!(heard.try_recv().is_err(), "nothing after unsubscribing");
    shut_down(&[router], &nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_runs_at_most_its_limit_and_the_others_come_back_from_the_journal() {
    let nodes = cluster("router-limit", 1, test_core_config()).await;
    let entity_type = ledger_type(&nodes[0], MemoryJournal::new())
        .with_passivation(None)
        .with_max_running(10);
    let router = EntityRouter::spawn(entity_type).await.unwrap();
    for e in 0..25 {
        for entry in ["x", "y"] {
            router
                .command(format!("user-{e}"), format!("{entry}-{e}"))
                .await
                .unwrap();
        }
        assert!(router.running().await.unwrap() <= 10);
    }
    for e in 0..25 {
        assert_eq!(
            router.state(format!("user-{e}")).await.unwrap(),
            [format!("x-{e}"), format!("y-{e}")]
        );
        assert!(router.running().await.unwrap() <= 10);
    }
    shut_down(&[router], &nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_that_start_after_a_node_was_removed_do_not_wait_for_it() {
    let nodes = cluster("router-removed", 1, test_core_config()).await;
    let entity_type = ledger_type(&nodes[0], MemoryJournal::new())
        .with_snapshots(8)
        .with_replicas([nodes[0].name.clone(), "gone".to_string()]);
    let router = EntityRouter::spawn(entity_type).await.unwrap();
    router
        .router()
        .cast(MemberEvent::Removed("gone".into()).into())
        .unwrap();
    // Started after the removal: the listed replica on "gone" must not hold
    // its compaction back.
    for n in 0..40 {
        router.command("late", format!("entry-{n}")).await.unwrap();
    }
    let stats = router.stats("late").await.unwrap();
    assert!(
        stats.compacted_events > 0,
        "compaction waited for a removed node: {stats:?}"
    );
    shut_down(&[router], &nodes).await;
}
