//! Durable Distributed Data: state that survives a Replicator's restart.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::Actor;
use ractor_replicated::ddata::wire::WireValue;
use ractor_replicated::ddata::{
    Change, DistributedData, Durability, DurableEntry, DurableStore, Expiry, Key, KeySelection,
    Loaded, MemoryStore, ReadConsistency, Replicator, ReplicatorArguments, ReplicatorConfig,
    SledStore, Tracked, WriteConsistency, WriteMode,
};
use ractor_replicated::discovery::replicator_name;
use ractor_replicated::error::StoreFailure;
use ractor_replicated::{codec, Error, GCounter, ORSet};
use test_support::{
    cluster, cluster_with, eventually, listener, next_matching, replicator_config, temp_dir,
    test_core_config, Restarter, SpawnChild, TempDir,
};

const BOUND: Duration = Duration::from_secs(10);

fn durable(config: ReplicatorConfig, dir: &TempDir, node: &str) -> ReplicatorConfig {
    let store = SledStore::open(dir.path(), node).expect("the store opens");
    config.with_durability(Durability::new(store, KeySelection::All))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replicator_recovers_every_value_and_listeners_see_it() {
    let dir = temp_dir("restart");
    let hits: Key<GCounter> = Key::new("hits");
    let cart: Key<ORSet<String>> = Key::new("cart");
    let doomed: Key<GCounter> = Key::new("doomed");
    let local = WriteConsistency::Local;

    let dd = DistributedData::start(durable(ReplicatorConfig::new("solo"), &dir, "solo"))
        .await
        .unwrap();
    dd.update(&hits, local, |c, me| c.apply(c.increment(me, 3)))
        .await
        .unwrap();
    for item in ["milk", "eggs"] {
        dd.update(&cart, local, move |s, me| s.apply(s.add(me, item.into())))
            .await
            .unwrap();
    }
    dd.update(&cart, local, |s, _| s.apply(s.remove("eggs")))
        .await
        .unwrap();
    dd.update(&doomed, local, |c, me| c.apply(c.increment(me, 1)))
        .await
        .unwrap();
    dd.delete(&doomed, local).await.unwrap();
    let first_life = dd.replica_id().await.unwrap();
    dd.stop().await;

    let dd = DistributedData::start(durable(ReplicatorConfig::new("solo"), &dir, "solo"))
        .await
        .unwrap();
    assert!(dd.replica_id().await.unwrap().incarnation() > first_life.incarnation());
    let read = ReadConsistency::Local;
    assert_eq!(
        dd.get(&hits, read).await.unwrap().map(|c| c.value()),
        Some(3)
    );
    let items = dd
        .get(&cart, read)
        .await
        .unwrap()
        .map(|s| s.iter().cloned().collect::<Vec<_>>());
    assert_eq!(items, Some(vec!["milk".to_string()]));
    assert!(matches!(
        dd.get(&doomed, read).await,
        Err(Error::Deleted { .. })
    ));

    let (probe, mut changes) = listener::<Change<GCounter>>().await;
    dd.subscribe(&hits, probe).await.unwrap();
    let recovered = next_matching(&mut changes, BOUND, |_| true).await;
    assert!(matches!(recovered, Change::Changed { value, .. } if value.value() == 3));

    // The new incarnation's increments add to the recovered ones.
    dd.update(&hits, local, |c, me| c.apply(c.increment(me, 2)))
        .await
        .unwrap();
    assert_eq!(
        dd.get(&hits, read).await.unwrap().map(|c| c.value()),
        Some(5)
    );
    dd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_restart_with_the_value_they_had_merged() {
    let dirs = [temp_dir("pair-0"), temp_dir("pair-1")];
    let mut nodes = cluster("pair", 2, test_core_config()).await;
    // Replace the in-memory Replicators with durable ones on the same servers.
    for (node, dir) in nodes.iter_mut().zip(&dirs) {
        node.dd.stop().await;
        let config = replicator_config(&node.name, &node.server, test_core_config());
        node.dd = DistributedData::start(durable(config, dir, &node.name))
            .await
            .unwrap();
    }
    for node in &nodes {
        eventually("the durable replicators see each other", BOUND, || async {
            node.dd.reachable_peers().await.is_ok_and(|p| p.len() == 1)
        })
        .await;
    }
    let cart: Key<ORSet<String>> = Key::new("cart");
    for (i, node) in nodes.iter().enumerate() {
        for n in 0..10 {
            let item = format!("item-{i}-{n}");
            node.dd
                .update(&cart, WriteConsistency::Local, move |s, me| {
                    s.apply(s.add(me, item))
                })
                .await
                .unwrap();
        }
    }
    eventually("both hold the merge", BOUND, || async {
        let a = nodes[0]
            .dd
            .get(&cart, ReadConsistency::Local)
            .await
            .unwrap();
        let b = nodes[1]
            .dd
            .get(&cart, ReadConsistency::Local)
            .await
            .unwrap();
        a.as_ref().is_some_and(|s| s.len() == 20) && a == b
    })
    .await;
    let merged = nodes[0]
        .dd
        .get(&cart, ReadConsistency::Local)
        .await
        .unwrap();

    for (node, dir) in nodes.iter_mut().zip(&dirs) {
        node.dd.stop().await;
        let config = replicator_config(&node.name, &node.server, test_core_config());
        node.dd = DistributedData::start(durable(config, dir, &node.name))
            .await
            .unwrap();
        // Read before any gossip could help: the merge itself was stored.
        let value = node.dd.get(&cart, ReadConsistency::Local).await.unwrap();
        assert_eq!(value, merged, "{}", node.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_store_refuses_to_start_with_the_file_and_key_named() {
    let dir = temp_dir("corrupt");
    {
        let mut store = SledStore::open(dir.path(), "broken").unwrap();
        use ractor_replicated::ddata::DurableStore;
        let garbage = WireValue::Live {
            tag: "GCounter".into(),
            state: vec![codec::WIRE_VERSION, 0xc1],
        };
        let garbage = DurableEntry {
            value: garbage,
            lifetime: None,
        };
        store.store("cart/alice", &garbage).unwrap();
        store.flush().unwrap();
    }
    let result =
        DistributedData::start(durable(ReplicatorConfig::new("broken"), &dir, "broken")).await;
    let Err(err) = result else {
        panic!("a corrupted entry must stop the start");
    };
    let Error::Store {
        location,
        key,
        failure: StoreFailure::Unreadable(cause),
    } = &err
    else {
        panic!("not an unreadable entry: {err:?}");
    };
    assert_eq!(key.as_deref(), Some("cart/alice"));
    assert_eq!(location, &dir.path().display().to_string());
    assert!(matches!(**cause, Error::Decode { .. }), "{cause:?}");
}

/// A store that counts the states written to it.
#[derive(Clone, Default)]
struct Counting {
    store: MemoryStore,
    stored: Arc<AtomicUsize>,
}

impl DurableStore for Counting {
    fn load(&mut self) -> ractor_replicated::Result<Loaded> {
        self.store.load()
    }

    fn set_incarnation(&mut self, incarnation: u64) -> ractor_replicated::Result<()> {
        self.store.set_incarnation(incarnation)
    }

    fn store(&mut self, key: &str, value: &DurableEntry) -> ractor_replicated::Result<()> {
        self.stored.fetch_add(1, Ordering::SeqCst);
        self.store.store(key, value)
    }

    fn remove(&mut self, key: &str) -> ractor_replicated::Result<()> {
        self.store.remove(key)
    }

    fn flush(&mut self) -> ractor_replicated::Result<()> {
        self.store.flush()
    }

    fn location(&self) -> String {
        self.store.location()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_coalesces_writes_and_flushes_them_on_stop() {
    let store = Counting::default();
    let config = |store: &Counting| {
        let mode = WriteMode::WriteBehind {
            interval: Duration::from_secs(3600),
        };
        ReplicatorConfig::new("behind")
            .with_durability(Durability::new(store.clone(), KeySelection::All).with_mode(mode))
    };
    let hits: Key<GCounter> = Key::new("hits");
    let dd = DistributedData::start(config(&store)).await.unwrap();
    for _ in 0..100 {
        dd.update(&hits, WriteConsistency::Local, |c, me| {
            c.apply(c.increment(me, 1))
        })
        .await
        .unwrap();
    }
    assert_eq!(
        store.stored.load(Ordering::SeqCst),
        0,
        "nothing is written before the interval ends"
    );
    dd.stop().await;
    assert_eq!(
        store.stored.load(Ordering::SeqCst),
        1,
        "a hundred updates of one key are one write, at the stop"
    );
    let dd = DistributedData::start(config(&store)).await.unwrap();
    let value = dd.get(&hits, ReadConsistency::Local).await.unwrap();
    assert_eq!(value.map(|c| c.value()), Some(100));
    dd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_selected_keys_are_stored() {
    let dir = temp_dir("selected");
    let config = || {
        let store = SledStore::open(dir.path(), "picky").expect("the store opens");
        let keys = KeySelection::Matching {
            names: ["settings".to_string()].into(),
            prefixes: vec!["cart/".into()],
        };
        ReplicatorConfig::new("picky").with_durability(Durability::new(store, keys))
    };
    let local = WriteConsistency::Local;
    let dd = DistributedData::start(config()).await.unwrap();
    for name in ["settings", "cart/alice", "scratch"] {
        let key: Key<GCounter> = Key::new(name);
        dd.update(&key, local, |c, me| c.apply(c.increment(me, 1)))
            .await
            .unwrap();
    }
    dd.stop().await;
    let dd = DistributedData::start(config()).await.unwrap();
    for (name, expected) in [
        ("settings", Some(1)),
        ("cart/alice", Some(1)),
        ("scratch", None),
    ] {
        let key: Key<GCounter> = Key::new(name);
        let value = dd.get(&key, ReadConsistency::Local).await.unwrap();
        assert_eq!(value.map(|c| c.value()), expected, "{name}");
    }
    dd.stop().await;
}

/// A store whose disk is full: every write fails.
struct FullDisk;

impl ractor_replicated::ddata::DurableStore for FullDisk {
    fn load(&mut self) -> ractor_replicated::Result<ractor_replicated::ddata::Loaded> {
        Ok(Default::default())
    }
    fn set_incarnation(&mut self, _: u64) -> ractor_replicated::Result<()> {
        Ok(())
    }
    fn store(&mut self, key: &str, _: &DurableEntry) -> ractor_replicated::Result<()> {
        Err(Error::store(
            self.location(),
            Some(key),
            StoreFailure::engine(std::io::Error::from(std::io::ErrorKind::StorageFull)),
        ))
    }
    fn remove(&mut self, _: &str) -> ractor_replicated::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> ractor_replicated::Result<()> {
        Ok(())
    }
    fn location(&self) -> String {
        "full-disk".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_write_fails_the_update_instead_of_acknowledging_it() {
    let config =
        ReplicatorConfig::new("full").with_durability(Durability::new(FullDisk, KeySelection::All));
    let dd = DistributedData::start(config).await.unwrap();
    let hits: Key<GCounter> = Key::new("hits");
    let err = dd
        .update(&hits, WriteConsistency::Local, |c, me| {
            c.apply(c.increment(me, 1))
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Store {
                key: Some(key),
                failure: StoreFailure::Engine(source),
                ..
            } if key == "hits"
                && source
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
        ),
        "{err:?}"
    );
    dd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_store_failed_does_not_acknowledge_a_replicated_write() {
    // Node 2's disk is full; nodes 0 and 1 store in memory.
    let nodes = cluster_with("full-disk", 3, test_core_config(), |i, config| {
        if i == 2 {
            config.with_durability(Durability::new(FullDisk, KeySelection::All))
        } else {
            config
        }
    })
    .await;
    let hits: Key<GCounter> = Key::new("hits");
    let increment = |c: &mut Tracked<GCounter>, me: &_| c.apply(c.increment(me, 1));
    let all = WriteConsistency::All {
        timeout: Duration::from_millis(1_500),
    };
    let err = nodes[0].dd.update(&hits, all, increment).await.unwrap_err();
    // Node 1 acknowledges (unless it is slow to), node 2 never does.
    assert!(
        matches!(err, Error::Timeout { reached, required: 3, .. } if reached < 3),
        "node 2 could not store the write: {err}"
    );
    let majority = WriteConsistency::majority(Duration::from_secs(5));
    nodes[0]
        .dd
        .update(&hits, majority, increment)
        .await
        .unwrap();
    for node in &nodes {
        node.shut_down().await;
    }
}

/// A store in memory that tells which keys a flush made durable.
#[derive(Clone, Default)]
struct FlushTracking(Arc<Mutex<FlushTrackingState>>);

#[derive(Default)]
struct FlushTrackingState {
    written: BTreeSet<String>,
    durable: BTreeSet<String>,
    flushes: u64,
}

impl FlushTracking {
    fn is_durable(&self, key: &str) -> bool {
        self.0.lock().unwrap().durable.contains(key)
    }
}

impl ractor_replicated::ddata::DurableStore for FlushTracking {
    fn load(&mut self) -> ractor_replicated::Result<ractor_replicated::ddata::Loaded> {
        Ok(Default::default())
    }
    fn set_incarnation(&mut self, _: u64) -> ractor_replicated::Result<()> {
        Ok(())
    }
    fn store(&mut self, key: &str, _: &DurableEntry) -> ractor_replicated::Result<()> {
        self.0.lock().unwrap().written.insert(key.to_string());
        Ok(())
    }
    fn remove(&mut self, _: &str) -> ractor_replicated::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> ractor_replicated::Result<()> {
        let mut state = self.0.lock().unwrap();
        let written = std::mem::take(&mut state.written);
        state.durable.extend(written);
        state.flushes += 1;
        Ok(())
    }
    fn location(&self) -> String {
        "flush-tracking".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_acknowledges_each_update_only_after_a_flush_covered_it() {
    let store = FlushTracking::default();
    let config = ReplicatorConfig::new("grouped")
        .with_durability(Durability::new(store.clone(), KeySelection::All));
    let dd = DistributedData::start(config).await.unwrap();
    let updates: Vec<_> = (0..300)
        .map(|i| {
            let (dd, store) = (dd.clone(), store.clone());
            tokio::spawn(async move {
                let key: Key<GCounter> = Key::new(format!("k{i}"));
                dd.update(&key, WriteConsistency::Local, |c, me| {
                    c.apply(c.increment(me, 1))
                })
                .await
                .unwrap();
                assert!(
                    store.is_durable(key.name()),
                    "{} acknowledged unflushed",
                    key.name()
                );
            })
        })
        .collect();
    for update in updates {
        update.await.unwrap();
    }
    let flushes = store.0.lock().unwrap().flushes;
    eprintln!("300 pipelined updates, {flushes} flushes");
    dd.stop().await;
}

const SUPERVISED: &str = "supervised";

/// Spawns the Replicator of node `SUPERVISED`, with a durable store in `dir`.
fn spawn_replicator(dir: PathBuf) -> SpawnChild {
    Arc::new(move |supervisor| {
        let dir = dir.clone();
        Box::pin(async move {
            let store = SledStore::open(&dir, SUPERVISED)?;
            let config = ReplicatorConfig::new(SUPERVISED)
                .with_durability(Durability::new(store, KeySelection::All));
            Actor::spawn_linked(
                Some(replicator_name(SUPERVISED)),
                Replicator,
                ReplicatorArguments::from(config),
                supervisor,
            )
            .await?;
            Ok(())
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicator_under_a_supervisor_survives_a_panic_and_a_restart_keeps_its_data() {
    let dir = temp_dir("supervised");
    let restarts = Arc::new(AtomicUsize::new(0));
    let spawn = spawn_replicator(dir.path().to_path_buf());
    let (supervisor, _) = Actor::spawn(None, Restarter, (spawn, restarts.clone()))
        .await
        .expect("the supervisor and its Replicator start");
    let replicator = ractor::registry::where_is(replicator_name(SUPERVISED))
        .expect("the Replicator is registered under its name");
    let dd = DistributedData::connect(replicator.into()).await.unwrap();
    let hits: Key<GCounter> = Key::new("hits");
    let local = WriteConsistency::Local;
    let first_life = dd.replica_id().await.unwrap();
    dd.update(&hits, local, |c, me| c.apply(c.increment(me, 3)))
        .await
        .unwrap();

    let err = dd.update(&hits, local, |_, _| panic!("not today")).await;
    assert!(matches!(err, Err(Error::Panicked { .. })), "{err:?}");
    assert_eq!(
        restarts.load(Ordering::SeqCst),
        0,
        "a panic is not a failure"
    );

    dd.actor().kill();
    eventually("the supervisor restarts the Replicator", BOUND, || async {
        restarts.load(Ordering::SeqCst) == 1
    })
    .await;
    // The same handle finds the successor, which recovered the count.
    eventually("the handle reaches the successor", BOUND, || async {
        dd.update(&hits, local, |c, me| c.apply(c.increment(me, 1)))
            .await
            .is_ok()
    })
    .await;
    let read = ReadConsistency::Local;
    assert_eq!(
        dd.get(&hits, read).await.unwrap().map(|c| c.value()),
        Some(4)
    );
    assert!(dd.replica_id().await.unwrap().incarnation() > first_life.incarnation());

    supervisor.stop_and_wait(None, None).await.unwrap();
    dd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_leaves_the_store_and_one_that_expired_while_down_is_not_recovered() {
    let dir = temp_dir("expiry");
    let ttl = Duration::from_millis(400);
    let expiring = |dir: &TempDir| {
        durable(
            ReplicatorConfig::new("solo")
                .with_core(test_core_config())
                .with_expiry(Expiry::never().keys(KeySelection::prefixes(["tmp/"]), ttl)),
            dir,
            "solo",
        )
    };
    let local = WriteConsistency::Local;
    let short: Key<GCounter> = Key::new("tmp/short");
    let kept: Key<GCounter> = Key::new("kept");

    let dd = DistributedData::start(expiring(&dir)).await.unwrap();
    let (probe, mut changes) = listener::<Change<GCounter>>().await;
    dd.subscribe(&short, probe).await.unwrap();
    dd.update(&short, local, |c, me| c.apply(c.increment(me, 1)))
        .await
        .unwrap();
    dd.update(&kept, local, |c, me| c.apply(c.increment(me, 1)))
        .await
        .unwrap();
    next_matching(&mut changes, BOUND, |c| matches!(c, Change::Expired { .. })).await;
    // Written again, then left alone while the node is down for longer
    // than the key's time to live.
    dd.update(&short, local, |c, me| c.apply(c.increment(me, 2)))
        .await
        .unwrap();
    dd.stop().await;
    let stored = SledStore::open(dir.path(), "solo").unwrap().load().unwrap();
    let times = stored.entries["tmp/short"]
        .lifetime
        .expect("an expiring key keeps its lifetime");
    assert!(stored.entries["kept"].lifetime.is_none());
    drop(stored);
    // The downtime itself, not a wait for convergence.
    tokio::time::sleep(ttl).await;

    let dd = DistributedData::start(expiring(&dir)).await.unwrap();
    let read = ReadConsistency::Local;
    assert_eq!(dd.get(&short, read).await.unwrap(), None);
    assert_eq!(
        dd.get(&kept, read).await.unwrap().map(|c| c.value()),
        Some(1)
    );
    dd.stop().await;
    let stored = SledStore::open(dir.path(), "solo").unwrap().load().unwrap();
    assert!(
        !stored.entries.contains_key("tmp/short"),
        "removed from the store at the start ({times:?})"
    );
}
