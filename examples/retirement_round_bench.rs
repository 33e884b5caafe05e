//! What a retirement round costs on the wire, against the number of keys.
//! Prints JSON.
//!
//! `cargo run --release --example retirement_round_bench`
//!
//! Three Replicator cores (the sans-IO core the actor runs) on a lossless
//! in-memory network write `keys` counters, every node each of them, and
//! agree. Then node `c` restarts empty under a new incarnation, and the
//! cores run gossip rounds until `c` holds every key again and every
//! core's retirement round is done. Reported: the bytes of every message
//! sent from the restart on, with retirement on and off (the difference is
//! the rounds' own cost), and the bytes of the retirement messages alone.

use std::collections::VecDeque;
use std::sync::Arc;

use ractor_replicated::ddata::wire::{Envelope, PeerMessage};
use ractor_replicated::ddata::{
    CoreConfig, Key, Output, ReplicatorCore, Timer, TypeRegistry, WriteConsistency,
};
use ractor_replicated::{codec, GCounter, ReplicaId};
use serde_json::{json, Value};

const NODES: [&str; 3] = ["a", "b", "c"];

struct Net {
    cores: Vec<ReplicatorCore>,
    config: CoreConfig,
    /// Bytes sent since counting began: all, and retirement messages.
    bytes: usize,
    retirement_bytes: usize,
}

impl Net {
    fn new(retire: bool) -> Self {
        let config = CoreConfig {
            retire_incarnations: retire,
            ..CoreConfig::default()
        };
        let mut net = Self {
            cores: Vec::new(),
            config,
            bytes: 0,
            retirement_bytes: 0,
        };
        for name in NODES {
            let core = net.core(name, 1);
            net.cores.push(core);
        }
        for at in 0..NODES.len() {
            net.connect(at);
        }
        net
    }

    fn core(&self, name: &str, incarnation: u64) -> ReplicatorCore {
        let mut core = ReplicatorCore::new(
            name,
            ReplicaId::new(name, incarnation),
            Arc::new(TypeRegistry::with_builtins()),
            self.config.clone(),
            incarnation,
        );
        core.start();
        core
    }

    fn connect(&mut self, at: usize) {
        for peer in NODES.iter().filter(|peer| **peer != NODES[at]) {
            let outputs = self.cores[at].peer_up(peer);
            self.deliver(at, outputs);
        }
    }

    fn deliver(&mut self, from: usize, outputs: Vec<Output>) {
        let mut queue: VecDeque<(usize, Output)> = outputs.into_iter().map(|e| (from, e)).collect();
        while let Some((sender, output)) = queue.pop_front() {
            let Output::Send { to, message } = output else {
                continue;
            };
            let retirement = matches!(
                message,
                PeerMessage::Retire { .. } | PeerMessage::Retiring { .. }
            );
            let envelope = Envelope {
                from: NODES[sender].to_string(),
                message,
            };
            let bytes = codec::encode(&envelope).expect("encodes");
            self.bytes += bytes.len();
            if retirement {
                self.retirement_bytes += bytes.len();
            }
            let envelope: Envelope = codec::decode(&bytes).expect("decodes");
            let target = NODES.iter().position(|n| *n == to).expect("a node");
            let answers = self.cores[target].handle_message(&envelope.from, envelope.message);
            queue.extend(answers.into_iter().map(|e| (target, e)));
        }
    }

    fn gossip(&mut self) {
        for at in 0..self.cores.len() {
            for timer in [Timer::Gossip, Timer::Push] {
                let outputs = self.cores[at].handle_timer(timer);
                self.deliver(at, outputs);
            }
        }
    }

    fn write(&mut self, keys: usize) {
        for at in 0..self.cores.len() {
            for i in 0..keys {
                let key: Key<GCounter> = Key::new(format!("counter-{i}"));
                let outputs = self.cores[at]
                    .update(0, &key, WriteConsistency::Local, |c, me| {
                        c.apply(c.increment(me, 1))
                    })
                    .expect("writes");
                self.deliver(at, outputs);
            }
        }
    }

    fn settled(&self, keys: usize) -> bool {
        self.cores
            .iter()
            .all(|core| core.keys().count() == keys && core.stats().pending_retirements == 0)
    }
}

fn measure(keys: usize, retire: bool) -> Value {
    let mut net = Net::new(retire);
    net.write(keys);
    for _ in 0..10 {
        net.gossip();
    }
    net.bytes = 0;
    net.retirement_bytes = 0;
    net.cores[2] = net.core("c", 2);
    net.connect(2);
    let mut rounds = 0;
    while !net.settled(keys) || rounds < 12 {
        net.gossip();
        rounds += 1;
        assert!(rounds < 1_000, "the cores did not settle");
    }
    json!({
        "keys": keys,
        "retire": retire,
        "bytes_after_restart": net.bytes,
        "retirement_message_bytes": net.retirement_bytes,
        "retirements": net.cores.iter().map(|c| c.stats().retirements).sum::<u64>(),
    })
}

fn main() {
    let mut results = Vec::new();
    for keys in [100, 1_000, 10_000] {
        for retire in [false, true] {
            results.push(measure(keys, retire));
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({ "results": results })).expect("json")
    );
}
