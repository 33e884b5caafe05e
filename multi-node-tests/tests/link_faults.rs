//! Real node processes whose every link goes through a fault-injecting proxy
//! (multi_node_tests::faults): partitions, flapping links, short cuts,
//! blackholes, and kill -9, with writers that log every write they attempt
//! and every acknowledgement, so that the tests can check that no
//! acknowledged write is lost and none is counted twice.
//!
//! Fault timings come from a seed: `FAULT_SEED=<n>` replays one, and
//! `FAULT_SECONDS=<s>` makes the chaos phases longer (default 10 s).
//! The tests of this file run one at a time: each starts several processes,
//! and timeouts are what they check.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use multi_node_tests::faults::Link;
use multi_node_tests::{LoopbackCluster, WriterLog};
use serde_json::{json, Value};
use test_support::eventually_blocking;
use test_support::Rng;

const NODE: &str = env!("CARGO_BIN_EXE_node");
const CONVERGE: Duration = Duration::from_secs(60);

/// One test of this file at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Seeded randomness, from `FAULT_SEED` or the given default.
fn fault_rng(default: u64) -> Rng {
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("fault seed {seed} (replay with FAULT_SEED={seed})");
    Rng(seed)
}

fn chaos_duration() -> Duration {
    let seconds = std::env::var("FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(seconds)
}

fn names(cluster: &LoopbackCluster, nodes: &[usize]) -> Value {
    json!(nodes
        .iter()
        .map(|i| cluster.name_of(*i))
        .collect::<Vec<_>>())
}

/// Waits until node `i`'s Replicator reaches exactly `peers`.
fn wait_peers(cluster: &mut LoopbackCluster, i: usize, peers: &[usize], bound: Duration) {
    let expected = names(cluster, peers);
    eventually_blocking(&format!("node {i} reaches {expected}"), bound, || {
        cluster.node(i).must("peers") == expected
    });
}

/// Starts a background writer on node `i`; returns its log's path.
fn write_in_background(
    cluster: &mut LoopbackCluster,
    i: usize,
    log_name: &str,
    write: &str,
) -> std::path::PathBuf {
    let log = cluster.scratch_file(log_name);
    cluster
        .node(i)
        .must(&format!("write-background {write} {}", log.display()));
    log
}

fn wait_done(log: &Path, bound: Duration) -> WriterLog {
    eventually_blocking(&format!("{} finishes", log.display()), bound, || {
        WriterLog::read(log).done
    });
    WriterLog::read(log)
}

/// The elements of the set `key` every running node agrees on.
fn converged_set(cluster: &mut LoopbackCluster, key: &str) -> BTreeSet<String> {
    let value = cluster.converged(&format!("get set {key}"), CONVERGE);
    serde_json::from_value::<Option<BTreeSet<String>>>(value)
        .expect("a set")
        .unwrap_or_default()
}

fn elements(key: &str, numbers: &BTreeSet<u64>) -> BTreeSet<String> {
    numbers.iter().map(|n| format!("{key}-{n}")).collect()
}

#[test]
fn a_minority_side_fails_majority_writes_the_majority_side_succeeds_and_all_converge_after_heal() {
    let _serial = serial();
    let mut cluster = LoopbackCluster::new(NODE, "partition", 5).with_link_faults();
    cluster.start_all();
    cluster.network().partition(&[0, 1], Link::Cut);
    wait_peers(&mut cluster, 0, &[1], CONVERGE);
    wait_peers(&mut cluster, 3, &[2, 4], CONVERGE);

    let minority =
        write_in_background(&mut cluster, 0, "minority", "add minority 5 majority 500 0");
    let majority: Vec<_> = [2, 3, 4]
        .iter()
        .map(|&i| {
            let write = format!("add majority-{i} 30 majority 3000 5");
            write_in_background(&mut cluster, i, &format!("majority-{i}"), &write)
        })
        .collect();
    let minority = wait_done(&minority, CONVERGE);
    assert!(minority.acked.is_empty(), "{minority:?}");
    assert_eq!(minority.failed.len(), 5, "{minority:?}");
    // A majority of 5 is 3; the minority side holds 2 nodes.
    assert!(
        minority
            .failed
            .values()
            .all(|e| e.contains("of 3 replicas")),
        "every minority write timed out short of a majority: {minority:?}"
    );
    let majority: Vec<WriterLog> = majority
        .iter()
        .map(|log| wait_done(log, CONVERGE))
        .collect();
    for log in &majority {
        assert_eq!(log.acked.len(), 30, "no majority-side write fails: {log:?}");
    }

    cluster.network().heal();
    cluster.wait_connected();
    // A write that timed out still stands where it was made, and spreads.
    assert_eq!(
        converged_set(&mut cluster, "minority"),
        elements("minority", &minority.attempted)
    );
    for (i, log) in [2, 3, 4].iter().zip(&majority) {
        let key = format!("majority-{i}");
        assert_eq!(
            converged_set(&mut cluster, &key),
            elements(&key, &log.acked)
        );
    }
}

#[test]
fn a_flapping_link_causes_no_false_timeouts_and_reconnects_within_two_seconds() {
    let _serial = serial();
    let mut rng = fault_rng(12);
    let mut cluster = LoopbackCluster::new(NODE, "flapping", 3).with_link_faults();
    cluster.start_all();
    // A majority (2 of 3) is always reachable: node 1's links never fail.
    let chaos = chaos_duration();
    let writes = chaos.as_millis() as u64 / 25;
    let logs: Vec<_> = [0, 2]
        .iter()
        .map(|&i| {
            let write = format!("add flap-{i} {writes} majority 1000 20");
            write_in_background(&mut cluster, i, &format!("flap-{i}"), &write)
        })
        .collect();
    let until = Instant::now() + chaos;
    let mut flaps = 0;
    while Instant::now() < until {
        let link = if flaps % 2 == 0 {
            Link::Cut
        } else {
            Link::Open
        };
        cluster.network().set(0, 2, link);
        flaps += 1;
        std::thread::sleep(Duration::from_millis(rng.between(100, 300)));
    }
    cluster.network().heal();
    let healed = Instant::now();
    wait_peers(&mut cluster, 0, &[1, 2], Duration::from_secs(10));
    wait_peers(&mut cluster, 2, &[0, 1], Duration::from_secs(10));
    let reconnect = healed.elapsed();
    eprintln!("{flaps} flaps; reconnected {reconnect:?} after the last heal");
    assert!(
        reconnect <= Duration::from_secs(2),
        "reconnected only {reconnect:?} after the heal"
    );
    for (i, log) in [0, 2].iter().zip(&logs) {
        let log = wait_done(log, CONVERGE);
        assert!(
            log.failed.is_empty(),
            "false timeouts on node {i}: {:?}",
            log.failed
        );
        assert_eq!(log.acked.len() as u64, writes);
        let key = format!("flap-{i}");
        assert_eq!(
            converged_set(&mut cluster, &key),
            elements(&key, &log.acked)
        );
    }
}

#[test]
fn seeds_that_are_aliases_are_dialled_until_connected_and_never_again() {
    let _serial = serial();
    let mut cluster = LoopbackCluster::new(NODE, "aliases", 3).with_link_faults();
    cluster.start_all();
    let stats = |cluster: &mut LoopbackCluster| -> Vec<Value> {
        (0..3)
            .map(|i| cluster.node(i).must("connections"))
            .collect()
    };
    // Once the start (where both ends of a pair may dial at once) is over,
    // the counters stand still.
    let mut before = stats(&mut cluster);
    eventually_blocking("the start settles", CONVERGE, || {
        std::thread::sleep(Duration::from_millis(500));
        let now = stats(&mut cluster);
        std::mem::replace(&mut before, now) == before
    });
    // Watched for three times the longest redial backoff: a node that took
    // its proxied seeds for unconnected would dial each again within it. The
    // first change fails the test at once.
    let watch_until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < watch_until {
        let now = stats(&mut cluster);
        assert_eq!(before, now, "connections changed while nothing failed");
    }
    for stats in &before {
        assert!(stats["dials"].as_u64() <= Some(4), "{stats}");
    }
}

#[test]
fn a_write_pending_across_a_short_cut_completes() {
    let _serial = serial();
    let mut rng = fault_rng(7);
    let mut cluster = LoopbackCluster::new(NODE, "short-cut", 3).with_link_faults();
    cluster.start_all();
    for round in 0..6 {
        cluster.network().set(0, 2, Link::Cut);
        wait_peers(&mut cluster, 0, &[1], CONVERGE);
        wait_peers(&mut cluster, 2, &[1], CONVERGE);
        // Every member must hold it: node 2 too, once the link is back.
        let write = format!("add pending-{round} 1 all 3000 0");
        let log = write_in_background(&mut cluster, 0, &format!("pending-{round}"), &write);
        std::thread::sleep(Duration::from_millis(rng.between(100, 500)));
        cluster.network().heal();
        let log = wait_done(&log, CONVERGE);
        assert_eq!(log.acked, BTreeSet::from([0]), "round {round}: {log:?}");
    }
}

#[test]
fn durable_nodes_under_cuts_blackholes_and_kills_lose_no_acknowledged_write_and_double_no_increment(
) {
    let _serial = serial();
    let mut rng = fault_rng(3);
    let mut cluster = LoopbackCluster::durable(NODE, "durable-chaos", 3).with_link_faults();
    cluster.start_all();
    // Each life of each node writes its own set key and increments a shared
    // counter, at Majority; the logs outlive the processes.
    let mut set_logs: Vec<(String, std::path::PathBuf)> = Vec::new();
    let mut counter_logs = Vec::new();
    let mut lives = [0u32; 3];
    let mut start_writers = |cluster: &mut LoopbackCluster, i: usize, lives: &mut [u32; 3]| {
        let life = lives[i];
        lives[i] += 1;
        let key = format!("items-{i}-{life}");
        let write = format!("add {key} 100000 majority 1000 5");
        set_logs.push((key.clone(), write_in_background(cluster, i, &key, &write)));
        let write = "inc hits 100000 majority 1000 5";
        counter_logs.push(write_in_background(
            cluster,
            i,
            &format!("hits-{i}-{life}"),
            write,
        ));
    };
    for i in 0..3 {
        start_writers(&mut cluster, i, &mut lives);
    }

    let until = Instant::now() + chaos_duration();
    let mut down: Option<usize> = None;
    let mut kills = 0;
    while Instant::now() < until {
        match rng.between(0, 2) {
            0 if down.is_none() => {
                let victim = rng.between(0, 2) as usize;
                cluster.kill(victim);
                kills += 1;
                down = Some(victim);
            }
            0 | 1 => {
                let (a, b) = (rng.between(0, 2) as usize, rng.between(0, 2) as usize);
                let fault = if rng.between(0, 1) == 0 {
                    Link::Cut
                } else {
                    Link::Blackhole
                };
                cluster.network().set(a, b, fault);
            }
            _ => cluster.network().heal(),
        }
        std::thread::sleep(Duration::from_millis(rng.between(300, 900)));
        if let Some(victim) = down.filter(|_| rng.between(0, 1) == 0) {
            cluster.start(victim);
            start_writers(&mut cluster, victim, &mut lives);
            down = None;
        }
    }
    // The whole cluster dies at once, then comes back from disk.
    for i in 0..3 {
        cluster.kill(i);
    }
    cluster.network().heal();
    for i in 0..3 {
        cluster.start(i);
    }
    cluster.wait_connected();

    let mut acked_total = 0;
    for (key, log) in &set_logs {
        let log = WriterLog::read(log);
        let held = converged_set(&mut cluster, key);
        let acked = elements(key, &log.acked);
        assert!(
            held.is_superset(&acked),
            "{key}: acknowledged {acked:?}, held {held:?}"
        );
        assert!(
            held.is_subset(&elements(key, &log.attempted)),
            "{key}: invented {held:?}"
        );
        acked_total += log.acked.len();
    }
    let (mut acked, mut attempted) = (0, 0);
    for log in &counter_logs {
        let log = WriterLog::read(log);
        acked += log.acked.len() as u64;
        attempted += log.attempted.len() as u64;
    }
    let hits = cluster
        .converged("get counter hits", CONVERGE)
        .as_u64()
        .unwrap_or(0);
    eprintln!(
        "{kills} kills; {acked_total} set writes and {acked} of {attempted} increments acknowledged; \
         counter {hits}"
    );
    assert!(acked_total > 0 && acked > 0, "the writers wrote");
    assert!(
        (acked..=attempted).contains(&hits),
        "{hits} counted, {acked} acknowledged, {attempted} attempted"
    );
}

#[test]
fn the_ledger_under_a_one_two_partition_is_identical_everywhere_after_heal() {
    let _serial = serial();
    let mut cluster = LoopbackCluster::durable(NODE, "ledger-split", 3).with_link_faults();
    cluster.start_all();
    cluster.network().partition(&[0], Link::Cut);
    wait_peers(&mut cluster, 0, &[], CONVERGE);
    wait_peers(&mut cluster, 1, &[2], CONVERGE);
    cluster.node(0).must("record-background alone 150");
    cluster.node(1).must("record-background pair 150");
    cluster.node(2).must("record-background other 150");
    for (i, prefix) in [(0, "alone"), (1, "pair"), (2, "other")] {
        eventually_blocking("every command is journaled", CONVERGE, || {
            cluster.node(i).must(&format!("progress {prefix}")) == json!(150)
        });
    }
    cluster.network().heal();
    cluster.wait_connected();
    let ledger: Vec<String> =
        serde_json::from_value(cluster.converged("ledger", CONVERGE)).expect("a ledger");
    let unique: BTreeSet<&String> = ledger.iter().collect();
    assert_eq!(unique.len(), ledger.len(), "an entry was applied twice");
    assert_eq!(ledger.len(), 450);
    for prefix in ["alone", "pair", "other"] {
        for n in 0..150 {
            assert!(
                unique.contains(&format!("{prefix}-{n}")),
                "{prefix}-{n} is lost"
            );
        }
    }
}
