//! Replicas of one persistence id on three nodes in one process, over
//! loopback ractor_cluster sessions: concurrent commands, restarts and
//! garbage on the wire.

use std::time::Duration;

use ractor::ActorRef;
use ractor_replicated::cluster::MemberEvent;
use ractor_replicated::discovery::{Discovery, PeerGroup, SessionDiscovery};
use ractor_replicated::persistence::{
    Entity, EntityConfig, EntityMessage, Journal, LastWriterWins, MemoryJournal, ReplicatedEntity,
    Retention,
};
use ractor_replicated::ReplicaId;
use test_support::{cluster, eventually, test_core_config, Ledger, RawBytes, Recorded, TestNode};

const BOUND: Duration = Duration::from_secs(10);

fn replica_config(node: &TestNode, id: &str) -> EntityConfig {
    incarnation_config(node, id, 0)
}

fn incarnation_config(node: &TestNode, id: &str, incarnation: u64) -> EntityConfig {
    EntityConfig::new(id, ReplicaId::new(node.name.as_str(), incarnation))
        .with_discovery(SessionDiscovery::new(node.server.clone()))
        .with_anti_entropy_interval(Duration::from_millis(100))
}

async fn spawn_replica(node: &TestNode, journal: MemoryJournal, id: &str) -> Entity<Ledger> {
    ReplicatedEntity::spawn(Ledger, LastWriterWins, journal, replica_config(node, id))
        .await
        .expect("the entity starts")
}

const SNAPSHOT_EVERY: usize = 64;

async fn spawn_snapshotting(node: &TestNode, journal: MemoryJournal, id: &str) -> Entity<Ledger> {
    // Replica 2's absence below must outlast it.
    let config = replica_config(node, id).with_stability_time(Duration::from_millis(500));
    ReplicatedEntity::spawn_with_snapshots(Ledger, LastWriterWins, journal, config, SNAPSHOT_EVERY)
        .await
        .expect("the entity starts")
}

/// The replica holds `expected` distinct entries.
async fn assert_no_entry_twice(replica: &Entity<Ledger>, expected: usize) {
    let mut unique = replica.state().await.unwrap();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), expected, "no entry applied twice");
}

async fn shut_down(replicas: &[Entity<Ledger>], nodes: &[TestNode]) {
    for replica in replicas {
        replica.stop().await;
    }
    for node in nodes {
        node.shut_down().await;
    }
}

/// Waits until every replica reaches every other one.
async fn see_each_other(replicas: &[Entity<Ledger>]) {
    eventually("the replicas see each other", BOUND, || async {
        for replica in replicas {
            let peers = replica.stats().await.map_or(0, |s| s.reachable_peers.len());
            if peers != replicas.len() - 1 {
                return false;
            }
        }
        true
    })
    .await;
}

/// Every replica holds `expected` entries, in one order.
async fn converged(replicas: &[Entity<Ledger>], expected: usize) -> bool {
    let mut states = Vec::new();
    for replica in replicas {
        match replica.state().await {
            Ok(state) if state.len() == expected => states.push(state),
            _ => return false,
        }
    }
    states.windows(2).all(|pair| pair[0] == pair[1])
}

async fn record_concurrently(replicas: &[Entity<Ledger>], label: &str, per_replica: usize) {
    let writers: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(r, replica)| {
            let replica = replica.clone();
            let label = label.to_string();
            tokio::spawn(async move {
                for n in 0..per_replica {
                    replica
                        .command(format!("{label}-{r}-{n}"))
                        .await
                        .expect("the command is journaled");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("the writer finishes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_on_three_replicas_end_in_one_state() {
    let nodes = cluster("entity-concurrent", 3, test_core_config()).await;
    let mut replicas = Vec::new();
    for node in &nodes {
        replicas.push(spawn_replica(node, MemoryJournal::new(), "ledger-1").await);
    }
    see_each_other(&replicas).await;

    record_concurrently(&replicas, "a", 100).await;
    eventually("one state everywhere", BOUND, || converged(&replicas, 300)).await;

    assert_no_entry_twice(&replicas[0], 300).await;
    shut_down(&replicas, &nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_recovers_its_journal_and_catches_up_on_what_it_missed() {
    let nodes = cluster("entity-restart", 3, test_core_config()).await;
    let disks: Vec<MemoryJournal> = (0..3).map(|_| MemoryJournal::new()).collect();
    let mut replicas = Vec::new();
    for (node, disk) in nodes.iter().zip(&disks) {
        replicas.push(spawn_replica(node, disk.clone(), "ledger-2").await);
    }
    record_concurrently(&replicas, "before", 20).await;
    eventually("converged before the crash", BOUND, || {
        converged(&replicas, 60)
    })
    .await;

    // Replica 2 crashes: what it had not flushed is gone.
    replicas[2].actor().kill_and_wait(None).await.unwrap();
    disks[2].lose_unflushed();
    record_concurrently(&replicas[..2], "while-down", 20).await;

    replicas[2] = spawn_replica(&nodes[2], disks[2].clone(), "ledger-2").await;
    record_concurrently(&replicas, "after", 10).await;
    eventually("converged after the restart", BOUND, || {
        converged(&replicas, 130)
    })
    .await;
    shut_down(&replicas, &nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_replication_messages_are_counted_and_change_nothing() {
    let nodes = cluster("entity-garbage", 2, test_core_config()).await;
    let mut replicas = Vec::new();
    for node in &nodes {
        replicas.push(spawn_replica(node, MemoryJournal::new(), "ledger-3").await);
    }
    replicas[1].command("kept".into()).await.unwrap();
    eventually("replicated", BOUND, || converged(&replicas, 1)).await;

    let group = PeerGroup::entity("ledger-3");
    let discovery = SessionDiscovery::new(nodes[0].server.clone());
    eventually("node 0 sees node 1's replica", BOUND, || async {
        !discovery.discover(&group).await.is_empty()
    })
    .await;
    let mut peers = discovery.discover(&group).await;
    let proxy: ActorRef<RawBytes> = peers.remove(0).actor.into();
    let variant = ractor_replicated::persistence::ENTITY_MESSAGE_VARIANT;
    let garbage = [
        (variant, vec![]),
        (variant, vec![1, 0xc1, 0xff, 0x00]),
        (variant, vec![99, 1, 2, 3]),
        ("some.other.variant", vec![1, 2, 3]),
    ];
    let sent = garbage.len() as u64;
    for (variant, bytes) in garbage {
        proxy.cast(RawBytes { variant, bytes }).unwrap();
    }
    eventually("the garbage is counted", BOUND, || async {
        replicas[1]
            .stats()
            .await
            .is_ok_and(|stats| stats.rejected_messages == sent)
    })
    .await;
    replicas[1].command("still working".into()).await.unwrap();
    eventually("replication goes on", BOUND, || converged(&replicas, 2)).await;
    shut_down(&replicas, &nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshotting_replicas_serve_a_lagging_one_from_the_journal_and_reload_for_late_events() {
    let nodes = cluster("entity-snapshots", 3, test_core_config()).await;
    let disks: Vec<MemoryJournal> = (0..3).map(|_| MemoryJournal::new()).collect();
    let mut replicas = Vec::new();
    for (node, disk) in nodes.iter().zip(&disks) {
        replicas.push(spawn_snapshotting(node, disk.clone(), "ledger-4").await);
    }
    // A replica that compacts before it finds its peers would read its
    // journal back when their events arrive: correct, but not what this
    // test is about.
    see_each_other(&replicas).await;
    record_concurrently(&replicas, "together", 100).await;
    eventually("converged", BOUND, || converged(&replicas, 300)).await;
    for replica in &replicas {
        let stats = replica.stats().await.unwrap();
        assert_eq!(
            stats.history_reloads, 0,
            "compaction waits for what reachable peers have seen: {stats:?}"
        );
    }

    // Replica 2 is away while the others go on and compact past it.
    replicas[2].stop().await;
    eventually("the others see it gone", BOUND, || async {
        replicas[0]
            .stats()
            .await
            .is_ok_and(|stats| stats.reachable_peers.len() == 1)
    })
    .await;
    record_concurrently(&replicas[..2], "without-2", 150).await;
    eventually("both compact past what replica 2 holds", BOUND, || async {
        for replica in &replicas[..2] {
            if replica.stats().await.map_or(0, |s| s.compacted_events) <= 300 {
                return false;
            }
        }
        true
    })
    .await;

    // Meanwhile it took commands on its own: its events are concurrent with
    // events the others compacted.
    let alone = EntityConfig::new("ledger-4", ReplicaId::new(nodes[2].name.as_str(), 0));
    let isolated = ReplicatedEntity::spawn_with_snapshots(
        Ledger,
        LastWriterWins,
        disks[2].clone(),
        alone,
        SNAPSHOT_EVERY,
    )
    .await
    .expect("the entity starts");
    for n in 0..5 {
        isolated.command(format!("alone-{n}")).await.unwrap();
    }
    isolated.stop().await;

    replicas[2] = spawn_snapshotting(&nodes[2], disks[2].clone(), "ledger-4").await;
    eventually("one state everywhere after the reunion", BOUND, || {
        converged(&replicas, 605)
    })
    .await;
    let mut reloads = 0;
    for replica in &replicas[..2] {
        reloads += replica.stats().await.unwrap().history_reloads;
    }
    assert!(
        reloads > 0,
        "the lone events sort among compacted ones: the others read their journals back"
    );
    assert_no_entry_twice(&replicas[0], 605).await;
    shut_down(&replicas, &nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_finds_one_that_starts_after_it_without_polling() {
    let nodes = cluster("unknown-sender", 2, test_core_config()).await;
    // Discovery is never polled: replica 0 learns of replica 1 from its
    // process group's change or from its first message.
    let first = spawn_replica(&nodes[0], MemoryJournal::new(), "unknown-sender").await;
    let second = spawn_replica(&nodes[1], MemoryJournal::new(), "unknown-sender").await;
    let replicas = [first, second];
    see_each_other(&replicas).await;
    replicas[0].command("from-0".into()).await.unwrap();
    eventually("the event replicated", BOUND, || converged(&replicas, 1)).await;
    shut_down(&replicas, &nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_replica_no_longer_holds_compaction_back() {
    let nodes = cluster("removed-replica", 2, test_core_config()).await;
    // Only removal can end the wait for replica 1 within the test.
    let config =
        replica_config(&nodes[0], "removed-replica").with_stability_time(Duration::from_secs(600));
    let first = ReplicatedEntity::spawn_with_snapshots(
        Ledger,
        LastWriterWins,
        MemoryJournal::new(),
        config,
        SNAPSHOT_EVERY,
    )
    .await
    .expect("the entity starts");
    let second = spawn_replica(&nodes[1], MemoryJournal::new(), "removed-replica").await;
    let replicas = [first, second];
    see_each_other(&replicas).await;
    replicas[1].command("from-1".into()).await.unwrap();
    eventually("the event replicated", BOUND, || converged(&replicas, 1)).await;
    replicas[1].stop().await;
    eventually("replica 1 is gone", BOUND, || async {
        replicas[0]
            .stats()
            .await
            .is_ok_and(|stats| stats.reachable_peers.is_empty())
    })
    .await;

    let mut written = 1;
    for n in 0..3 * SNAPSHOT_EVERY {
        replicas[0].command(format!("alone-{n}")).await.unwrap();
        written += 1;
    }
    let stats = replicas[0].stats().await.unwrap();
    assert_eq!(stats.compacted_events, 0, "an absent replica is waited for");

    replicas[0]
        .actor()
        .cast(EntityMessage::from(MemberEvent::Removed(
            nodes[1].name.clone(),
        )))
        .unwrap();
    for n in 0..SNAPSHOT_EVERY {
        replicas[0].command(format!("removed-{n}")).await.unwrap();
        written += 1;
    }
    let stats = replicas[0].stats().await.unwrap();
    assert!(
        stats.compacted_events >= SNAPSHOT_EVERY as u64,
        "a removed replica is not waited for: {stats:?}"
    );
    assert_eq!(replicas[0].state().await.unwrap().len(), written);
    replicas[0].stop().await;
    for node in &nodes {
        node.shut_down().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_journal_catches_up_from_a_snapshot_after_the_others_deleted() {
    let nodes = cluster("entity-retention", 3, test_core_config()).await;
    let names: Vec<String> = nodes.iter().map(|node| node.name.clone()).collect();
    let spawn = |node: usize, incarnation: u64, journal: MemoryJournal| {
        let config = incarnation_config(&nodes[node], "ledger-retention", incarnation)
            .with_replicas(names.clone())
            .with_retention(Retention::DeleteCovered);
        ReplicatedEntity::spawn_with_snapshots(
            Ledger,
            LastWriterWins,
            journal,
            config,
            SNAPSHOT_EVERY,
        )
    };
    let disks: Vec<MemoryJournal> = (0..3).map(|_| MemoryJournal::new()).collect();
    let mut replicas = Vec::new();
    for (node, disk) in disks.iter().enumerate() {
        replicas.push(spawn(node, 0, disk.clone()).await.expect("starts"));
    }
    see_each_other(&replicas).await;
    // One writer: every journal holds the events in the canonical order,
    // so each can delete all its snapshot covers (concurrent writers leave
    // a replica's first journaled event outside the snapshot for a while).
    record_concurrently(&replicas[..1], "kept", 300).await;
    eventually("converged", BOUND, || converged(&replicas, 300)).await;
    eventually("every journal deleted what all passed", BOUND, || async {
        disks.iter().all(|disk| {
            disk.deleted_before("ledger-retention")
                .is_ok_and(|d| d.is_some())
        })
    })
    .await;

    // Replica 2 loses its disk and starts again under a new incarnation.
    replicas[2].stop().await;
    let fresh = MemoryJournal::new();
    replicas[2] = spawn(2, 1, fresh.clone()).await.expect("starts");
    // Its first commands wait until it has caught up with both others, and
    // then run in the order they came.
    let (first, second, third) = tokio::join!(
        replicas[2].command("held-0".into()),
        replicas[2].command("held-1".into()),
        replicas[2].command("held-2".into()),
    );
    for outcome in [first, second, third] {
        outcome.expect("the command runs once caught up");
    }
    eventually("one state everywhere", BOUND, || converged(&replicas, 303)).await;
    assert_no_entry_twice(&replicas[2], 303).await;
    let state = replicas[2].state().await.unwrap();
    assert_eq!(state[300..], ["held-0", "held-1", "held-2"]);
    for replica in &replicas {
        assert_eq!(replica.stats().await.unwrap().refused_events, 0);
    }
    assert!(
        fresh.load_snapshot("ledger-retention").unwrap().is_some()
            && fresh.deleted_before("ledger-retention").unwrap().is_some(),
        "it started from a peer's snapshot"
    );
    let journaled = fresh.read_from::<Recorded>("ledger-retention", 1).unwrap();
    assert!(
        journaled.len() < 301,
        "not every event travelled: {}",
        journaled.len()
    );
    shut_down(&replicas, &nodes).await;
}
