//! Update throughput of durable Distributed Data against in memory, and the
//! recovery time of 100,000 keys. Prints JSON.
//!
//! `cargo run --release --example durability_bench`
//!
//! One Replicator, no peers. Updates increment `GCounter`s spread over 1,000
//! keys, first one at a time (each awaited), then pipelined (all issued from
//! tasks, then all awaited). The sled database lives in the system's
//! temporary directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ractor_replicated::ddata::durable::{Durability, SledStore, WriteMode};
use ractor_replicated::ddata::{
    DistributedData, Key, KeySelection, ReplicatorConfig, WriteConsistency,
};
use ractor_replicated::GCounter;
use serde_json::{json, Value};

const KEYS: usize = 1_000;
const RECOVERY_KEYS: usize = 100_000;

fn scratch(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ractor_replicated-bench-{label}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn start(node: &str, store: Option<(&PathBuf, WriteMode)>) -> DistributedData {
    let mut config = ReplicatorConfig::new(node);
    if let Some((dir, mode)) = store {
        let store = SledStore::open(dir, node).expect("the store opens");
        config = config.with_durability(Durability::new(store, KeySelection::All).with_mode(mode));
    }
    DistributedData::start(config)
        .await
        .expect("the replicator starts")
}

async fn one_at_a_time(dd: &DistributedData, keys: &[Key<GCounter>], updates: usize) -> f64 {
    let started = Instant::now();
    for i in 0..updates {
        dd.update(&keys[i % keys.len()], WriteConsistency::Local, |c, me| {
            c.apply(c.increment(me, 1))
        })
        .await
        .expect("an update");
    }
    updates as f64 / started.elapsed().as_secs_f64()
}

async fn pipelined(dd: &DistributedData, keys: &[Key<GCounter>], updates: usize) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..updates)
        .map(|i| {
            let (dd, key) = (dd.clone(), keys[i % keys.len()].clone());
            tokio::spawn(async move {
                dd.update(&key, WriteConsistency::Local, |c, me| {
                    c.apply(c.increment(me, 1))
                })
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a task").expect("an update");
    }
    updates as f64 / started.elapsed().as_secs_f64()
}

async fn throughput(label: &str, store: Option<WriteMode>, updates: usize) -> Value {
    let dir = scratch(label);
    let dd = start(label, store.map(|mode| (&dir, mode))).await;
    let keys: Vec<Key<GCounter>> = (0..KEYS).map(|i| Key::new(format!("k{i}"))).collect();
    let sequential = one_at_a_time(&dd, &keys, updates).await;
    let pipelined = pipelined(&dd, &keys, updates).await;
    dd.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    json!({ "updates": updates, "one_at_a_time_per_s": sequential.round(), "pipelined_per_s": pipelined.round() })
}

#[tokio::main]
async fn main() {
    let memory = throughput("memory", None, 200_000).await;
    let behind = WriteMode::WriteBehind {
        interval: Duration::from_millis(100),
    };
    let write_behind = throughput("write-behind", Some(behind), 200_000).await;
    let write_through = throughput("write-through", Some(WriteMode::WriteThrough), 5_000).await;

    let dir = scratch("recovery");
    let dd = start("recovery", Some((&dir, behind))).await;
    let keys: Vec<Key<GCounter>> = (0..RECOVERY_KEYS)
        .map(|i| Key::new(format!("key-{i:06}")))
        .collect();
    pipelined(&dd, &keys, RECOVERY_KEYS).await;
    dd.stop().await;
    let started = Instant::now();
    let dd = start("recovery", Some((&dir, behind))).await;
    let recovery = started.elapsed();
    let recovered = dd
        .get(
            &keys[RECOVERY_KEYS - 1],
            ractor_replicated::ddata::ReadConsistency::Local,
        )
        .await
        .expect("a read")
        .map(|c| c.value());
    assert_eq!(recovered, Some(1), "the last key was recovered");
    dd.stop().await;
    let _ = std::fs::remove_dir_all(&dir);

    let ratio = |mode: &Value, field: &str| {
        (mode[field].as_f64().unwrap_or(0.0) / memory[field].as_f64().unwrap_or(1.0) * 1000.0)
            .round()
            / 1000.0
    };
    let report = json!({
        "in_memory": memory,
        "write_behind_100ms": write_behind,
        "write_through": write_through,
        "ratio_to_in_memory": {
            "write_behind_one_at_a_time": ratio(&write_behind, "one_at_a_time_per_s"),
            "write_behind_pipelined": ratio(&write_behind, "pipelined_per_s"),
            "write_through_one_at_a_time": ratio(&write_through, "one_at_a_time_per_s"),
            "write_through_pipelined": ratio(&write_through, "pipelined_per_s"),
        },
        "recovery": { "keys": RECOVERY_KEYS, "seconds": recovery.as_secs_f64() },
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
