//! What retiring dead incarnations buys: the size of a counter, a set and a
//! map of counters after many restarts of the nodes that write them. Prints
//! JSON.
//!
//! `cargo run --release --example pruning_bench`
//!
//! Three nodes take turns restarting, each time empty and under a new
//! incarnation (a node without a durable store). Between two restarts every
//! node increments a `GCounter` once, adds an element to an `ORSet`
//! (removing its element from three rounds before, so the set holds about
//! ten elements) and increments one of four keys of a `PNCounterMap`, and
//! the replicas exchange their states until they agree. With retirement,
//! after each restart the states (which by then hold everything the dead
//! incarnation wrote) retire the node's earlier incarnations; the map
//! settles its values too (they are alike on every replica). Reported after 10, 100 and 1,000 restarts: each state's
//! encoded size, its live replica entries, and its value, which must be the
//! same with and without retirement.

use ractor_replicated::{codec, GCounter, ORSet, OpBased, PNCounterMap, ReplicaId, ReplicatedData};
use serde_json::{json, Value};

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

struct Cluster {
    retire: bool,
    incarnations: [u64; 3],
    counters: Vec<GCounter>,
    sets: Vec<ORSet<String>>,
    maps: Vec<PNCounterMap<u64>>,
}

impl Cluster {
    fn new(retire: bool) -> Self {
        Self {
            retire,
            incarnations: [1; 3],
            counters: vec![GCounter::new(); 3],
            sets: vec![ORSet::new(); 3],
            maps: vec![PNCounterMap::new(); 3],
        }
    }

    fn replica(&self, node: usize) -> ReplicaId {
        ReplicaId::new(NODES[node], self.incarnations[node])
    }

    /// Every node writes once, then the replicas agree.
    fn round(&mut self, round: u64) {
        for (node, name) in NODES.iter().enumerate() {
            let me = self.replica(node);
            let counter = &mut self.counters[node];
            counter.apply(counter.increment(&me, 1));
            let set = &mut self.sets[node];
            set.apply(set.add(&me, format!("{name}-{round}")));
            if let Some(old) = round.checked_sub(3) {
                set.apply(set.remove(&format!("{name}-{old}")));
            }
            let map = &mut self.maps[node];
            map.apply(map.increment(&me, (round + node as u64) % 4, 1));
        }
        self.agree();
    }

    fn agree(&mut self) {
        let counter = merge_all(&self.counters);
        let set = merge_all(&self.sets);
        self.counters = vec![counter; NODES.len()];
        self.sets = vec![set; NODES.len()];
        let map = merge_all(&self.maps);
        self.maps = vec![map; NODES.len()];
    }

    /// `node` restarts empty under a new incarnation; once the others hold
    /// all its dead incarnation wrote (they agree), they retire it.
    fn restart(&mut self, node: usize) {
        self.incarnations[node] += 1;
        self.counters[node] = GCounter::new();
        self.sets[node] = ORSet::new();
        self.maps[node] = PNCounterMap::new();
        self.agree();
        if self.retire {
            let below = self.incarnations[node];
            for counter in &mut self.counters {
                counter.retire(NODES[node], below);
            }
            for set in &mut self.sets {
                set.retire(NODES[node], below);
            }
            let elsewhere = self.maps[0].unsettled(NODES[node], below);
            for map in &mut self.maps {
                map.retire_settled(NODES[node], below, &elsewhere);
            }
        }
    }

    fn report(&self, restarts: u64) -> Value {
        let (counter, set, map) = (&self.counters[0], &self.sets[0], &self.maps[0]);
        json!({
            "restarts": restarts,
            "retire": self.retire,
            "gcounter_bytes": codec::encode(counter).expect("encodes").len(),
            "gcounter_entries": counter.counts().len(),
            "gcounter_value": counter.value().to_string(),
            "orset_bytes": codec::encode(set).expect("encodes").len(),
            "orset_context_entries": set.context().vector().len(),
            "orset_elements": set.len(),
            "pncountermap_bytes": codec::encode(map).expect("encodes").len(),
            "pncountermap_total": map.iter().map(|(_, n)| n).sum::<i128>().to_string(),
        })
    }
}

fn merge_all<T: ReplicatedData>(states: &[T]) -> T {
    let mut merged = states[0].clone();
    for state in &states[1..] {
        merged.merge(state);
    }
    merged
}

fn main() {
    let mut results = Vec::new();
    for retire in [false, true] {
        let mut cluster = Cluster::new(retire);
        for restart in 1..=1_000u64 {
            cluster.round(restart - 1);
            cluster.restart(usize::try_from(restart % 3).expect("small"));
            if [10, 100, 1_000].contains(&restart) {
                results.push(cluster.report(restart));
            }
        }
    }
    let report = json!({ "results": results });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("serialisable")
    );
}
