//! Update throughput of durable Distributed Data against in memory, and the
//! recovery time of 100,000 keys. Prints JSON.
//!
//! `cargo run --release --example durability_bench`
//!
//! One Replicator, no peers. Updates increment `GCounter`s spread over 1,000
//! keys, first one at a time (each awaited), then pipelined (all issued from
//! tasks, then all awaited). The sled database lives in the system's
//! temporary directory.
//!
//! The resident memory of an idle node that recovered the 100,000 counters,
//! and of one that recovered 100,000 registers of 1 KiB each (100 MB), is
//! measured in a child process (this one's allocations would count
//! otherwise), with sled page caches of 1 GiB (sled's default), 64 MiB (the
//! library's) and 16 MiB.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ractor_replicated::ddata::{
    DistributedData, Durability, Key, KeySelection, ReplicatorConfig, SledStore, WriteConsistency,
    WriteMode,
};
use ractor_replicated::{sled_db, GCounter, LWWRegister};
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
    start_with_cache(node, store, sled_db::DEFAULT_CACHE_BYTES).await
}

async fn start_with_cache(
    node: &str,
    store: Option<(&PathBuf, WriteMode)>,
    cache_bytes: u64,
) -> DistributedData {
    let mut config = ReplicatorConfig::new(node);
    if let Some((dir, mode)) = store {
        let sled = sled_db::config(dir).cache_capacity(cache_bytes);
        let store = SledStore::open_with(&sled, node).expect("the store opens");
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

/// A field of `/proc/self/status` in MiB (Linux only; 0 elsewhere).
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    (kib / 1024.0 * 10.0).round() / 10.0
}

/// The child: recovers the store of `node` in `dir`, idles, and prints its
/// memory.
async fn idle_node(node: &str, dir: PathBuf, cache_bytes: u64) {
    let behind = WriteMode::WriteBehind {
        interval: Duration::from_millis(100),
    };
    let dd = start_with_cache(node, Some((&dir, behind)), cache_bytes).await;
    let keys = dd.stats().await.expect("stats").keys;
    assert_eq!(keys, RECOVERY_KEYS, "every key recovered");
    // Let sled's and the Replicator's start-up work settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = json!({ "rss_mib": status_mib("VmRSS:"), "peak_rss_mib": status_mib("VmHWM:") });
    println!("{report}");
    dd.stop().await;
}

/// The memory of an idle `node` recovered from `dir`, measured in a child.
fn idle_rss(node: &str, dir: &Path, cache_bytes: u64) -> Value {
    let output = Command::new(std::env::current_exe().expect("this program"))
        .arg("--idle-node")
        .arg(node)
        .arg(dir)
        .arg(cache_bytes.to_string())
        .output()
        .expect("the child runs");
    assert!(output.status.success(), "the idle node failed: {output:?}");
    let mut report: Value = serde_json::from_slice(&output.stdout).expect("the child's JSON");
    report["cache_mib"] = json!(cache_bytes >> 20);
    report
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, node, dir, cache] = &args[..] {
        if flag == "--idle-node" {
            idle_node(node, dir.into(), cache.parse().expect("a cache size")).await;
            return;
        }
    }
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
    let caches = [1 << 30, sled_db::DEFAULT_CACHE_BYTES, 16 << 20];
    let idle_counters: Vec<Value> = caches
        .into_iter()
        .map(|cache| idle_rss("recovery", &dir, cache))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);

    let dir = scratch("registers");
    let dd = start("registers", Some((&dir, behind))).await;
    for i in 0..RECOVERY_KEYS {
        let key: Key<LWWRegister<Vec<u8>>> = Key::new(format!("key-{i:06}"));
        dd.update(&key, WriteConsistency::Local, move |r, me| {
            r.apply(r.set(me, vec![i as u8; 1024]))
        })
        .await
        .expect("an update");
    }
    dd.stop().await;
    let idle_registers: Vec<Value> = caches
        .into_iter()
        .map(|cache| idle_rss("registers", &dir, cache))
        .collect();
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
        "idle_node_with_100k_recovered_counters": idle_counters,
        "idle_node_with_100k_recovered_1kib_registers": idle_registers,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
