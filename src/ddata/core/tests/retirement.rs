//! Retiring a restarted node's dead incarnation, as the cluster runs it.

use super::*;
use crate::{PNCounterMap, ReplicatedData};

/// Cores connected by a lossless network that delivers every message,
/// through the codec, until all are quiet.
struct Net {
    cores: Vec<ReplicatorCore>,
    /// What a restarted core runs with.
    config: CoreConfig,
}

fn retiring() -> CoreConfig {
    CoreConfig {
        retire_incarnations: true,
        ..CoreConfig::default()
    }
}

/// Cores that know each other from the start and retire dead incarnations.
fn members(names: &[&str]) -> Net {
    let cores = names
        .iter()
        .map(|name| {
            let mut core = core(name, retiring());
            for peer in names.iter().filter(|peer| *peer != name) {
                core.peer_up(peer);
            }
            core
        })
        .collect();
    Net {
        cores,
        config: retiring(),
    }
}

impl Net {
    fn index(&self, name: &str) -> usize {
        self.cores
            .iter()
            .position(|core| core.node() == name)
            .expect("a known node")
    }

    fn pump(&mut self, from: usize, outputs: Vec<Output>) {
        let mut queue: Vec<(usize, Output)> = outputs.into_iter().map(|e| (from, e)).collect();
        while let Some((sender, output)) = queue.pop() {
            let Output::Send { to, message } = output else {
                continue;
            };
            // A node no longer in the net (stopped) receives nothing.
            let Some(target) = self.cores.iter().position(|core| core.node() == to) else {
                continue;
            };
            let bytes = codec::encode(&Envelope {
                from: self.cores[sender].node().into(),
                message,
            })
            .unwrap();
            let envelope: Envelope = codec::decode(&bytes).unwrap();
            let answers = self.cores[target].handle_message(&envelope.from, envelope.message);
            queue.extend(answers.into_iter().map(|e| (target, e)));
        }
    }

    fn gossip(&mut self, rounds: usize) {
        for _ in 0..rounds {
            for i in 0..self.cores.len() {
                let outputs = self.cores[i].handle_timer(Timer::Gossip);
                self.pump(i, outputs);
                let outputs = self.cores[i].handle_timer(Timer::Push);
                self.pump(i, outputs);
            }
        }
    }

    /// Node `name` restarts empty under incarnation `incarnation`.
    fn restart(&mut self, name: &str, incarnation: u64) {
        let at = self.index(name);
        let mut fresh = ReplicatorCore::new(
            name,
            ReplicaId::new(name, incarnation),
            Arc::new(TypeRegistry::with_builtins()),
            self.config.clone(),
            incarnation,
        );
        fresh.start();
        self.cores[at] = fresh;
        let names: Vec<String> = self.cores.iter().map(|c| c.node().to_string()).collect();
        for (i, other) in names.iter().enumerate() {
            if i == at {
                continue;
            }
            self.cores[i].peer_down(name);
            let outputs = self.cores[i].peer_up(name);
            self.pump(i, outputs);
            let outputs = self.cores[at].peer_up(other);
            self.pump(at, outputs);
        }
    }
}

fn dead_counts(counter: &GCounter, node: &str, below: u64) -> usize {
    counter
        .counts()
        .iter()
        .filter(|(replica, _)| replica.is_earlier_incarnation_of(node, below))
        .count()
}

#[test]
fn a_restarted_node_s_dead_incarnations_are_retired_everywhere_and_values_stay() {
    let mut net = members(&["a", "b", "c"]);
    let hits: Key<GCounter> = Key::new("hits");
    let cart: Key<ORSet<String>> = Key::new("cart");
    let votes: Key<PNCounterMap<String>> = Key::new("votes");
    for incarnation in 2..=4 {
        for i in 0..3 {
            let outputs = increment(&mut net.cores[i], &hits, WriteConsistency::Local);
            net.pump(i, outputs);
            let outputs = net.cores[i]
                .update(2, &votes, WriteConsistency::Local, |map, me| {
                    map.apply(map.increment(me, "rust".into(), 1))
                })
                .unwrap();
            net.pump(i, outputs);
            // Each writer's update reaches the next before it writes, so
            // that the map's key holds one value when c's round comes.
            let outputs = net.cores[i].handle_timer(Timer::Push);
            net.pump(i, outputs);
        }
        let c = net.index("c");
        let outputs = add(&mut net.cores[c], &cart, format!("c{incarnation}"));
        net.pump(c, outputs);
        net.gossip(2);
        net.restart("c", incarnation);
    }
    net.gossip(12);
    for core in &net.cores {
        let counter = core.get(&hits).unwrap().unwrap();
        assert_eq!(counter.value(), 9, "{}", core.node());
        assert_eq!(dead_counts(counter, "c", 4), 0, "{}", core.node());
        let set = core.get(&cart).unwrap().unwrap();
        assert_eq!(set.iter().count(), 3, "{}", core.node());
        assert!(
            !set.context()
                .vector()
                .iter()
                .any(|(replica, _)| replica.node() == "c" && replica.incarnation() < 4),
            "{}",
            core.node()
        );
        let map = core.get(&votes).unwrap().unwrap();
        assert_eq!(map.get("rust"), Some(9), "{}", core.node());
        assert!(map.unsettled("c", 4).is_empty(), "{}", core.node());
        assert!(core.stats().retirements >= 1, "{}", core.node());
    }
    // Writes go on, and count once.
    let outputs = increment(&mut net.cores[0], &hits, WriteConsistency::Local);
    net.pump(0, outputs);
    net.gossip(3);
    for core in &net.cores {
        assert_eq!(core.get(&hits).unwrap().unwrap().value(), 10);
    }
}

#[test]
fn a_round_waits_for_a_member_that_is_down() {
    let mut net = members(&["a", "b", "c"]);
    let hits: Key<GCounter> = Key::new("hits");
    let outputs = increment(&mut net.cores[2], &hits, WriteConsistency::Local);
    net.pump(2, outputs);
    net.restart("c", 2);
    net.cores[0].peer_down("b");
    for _ in 0..12 {
        let outputs = net.cores[0].handle_timer(Timer::Gossip);
        net.pump(0, outputs);
    }
    let counter = net.cores[0].get(&hits).unwrap().unwrap();
    assert_eq!(
        dead_counts(counter, "c", 2),
        1,
        "b may hold more of c's first life"
    );
    let outputs = net.cores[0].peer_up("b");
    net.pump(0, outputs);
    net.gossip(12);
    let counter = net.cores[0].get(&hits).unwrap().unwrap();
    assert_eq!(dead_counts(counter, "c", 2), 0);
    assert_eq!(counter.value(), 1);
}

#[test]
fn without_listed_members_nothing_is_retired() {
    let mut net = Net {
        cores: connected(&["a", "b", "c"]),
        config: CoreConfig::default(),
    };
    let hits: Key<GCounter> = Key::new("hits");
    let outputs = increment(&mut net.cores[2], &hits, WriteConsistency::Local);
    net.pump(2, outputs);
    net.restart("c", 2);
    net.gossip(12);
    for core in &net.cores[..2] {
        assert_eq!(core.stats().retirements, 0);
        let counter = core.get(&hits).unwrap().unwrap();
        assert_eq!(dead_counts(counter, "c", 2), 1);
    }
}

#[test]
fn a_removed_node_s_incarnations_are_retired_and_a_return_under_one_is_reported() {
    let mut net = members(&["a", "b", "c"]);
    let c_replica = ReplicaId::new("c", 1);
    for i in 0..2 {
        let outputs = net.cores[i].handle_message(
            "c",
            PeerMessage::Hello {
                replica: c_replica.clone(),
            },
        );
        net.pump(i, outputs);
    }
    let hits: Key<GCounter> = Key::new("hits");
    let cart: Key<ORSet<String>> = Key::new("cart");
    for i in [0, 2] {
        let outputs = increment(&mut net.cores[i], &hits, WriteConsistency::Local);
        net.pump(i, outputs);
    }
    let outputs = add(&mut net.cores[2], &cart, "from c".into());
    net.pump(2, outputs);
    net.gossip(2);
    // c is decommissioned: it stops, and the others remove it.
    net.cores.remove(2);
    for i in 0..2 {
        let outputs = net.cores[i].peer_removed("c");
        net.pump(i, outputs);
    }
    net.gossip(12);
    for core in &net.cores {
        let counter = core.get(&hits).unwrap().unwrap();
        assert_eq!(counter.value(), 2, "{}", core.node());
        assert_eq!(dead_counts(counter, "c", u64::MAX), 0, "{}", core.node());
        let set = core.get(&cart).unwrap().unwrap();
        assert!(set.contains(&"from c".to_string()), "{}", core.node());
        assert!(
            !set.context()
                .vector()
                .iter()
                .any(|(replica, _)| replica.node() == "c"),
            "{}",
            core.node()
        );
        assert_eq!(core.stats().retired_hellos, 0);
    }
    // c comes back under its old identity: its writes would be ignored.
    let outputs = net.cores[0].peer_up("c");
    net.pump(0, outputs);
    net.cores[0].handle_message("c", PeerMessage::Hello { replica: c_replica });
    assert_eq!(net.cores[0].stats().retired_hellos, 1);
}
