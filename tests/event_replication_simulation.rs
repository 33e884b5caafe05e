//! Deterministic simulation of event replication between three replicas of
//! one persistence id: messages go through the codec and are lost,
//! duplicated, delayed (so reordered) and cut by partitions, while replicas
//! persist events concurrently and crash, losing what their journal had not
//! flushed, then restart from their journal. After healing, anti-entropy must
//! bring every replica to the same events, order and state, with every event
//! journaled exactly once everywhere. 1,000 seeds per `cargo test`;
//! `REPLICATION_SEEDS=100000` for more; a failure names its seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ractor_replicated::codec;
use ractor_replicated::persistence::journal::{Journal, MemoryJournal};
use ractor_replicated::persistence::replicated::{
    EventHandler, EventMeta, LastWriterWins, ReplicatedLog, Replication, ReplicationEffect,
    ReplicationMessage,
};
use ractor_replicated::ReplicaId;
use serde::{Deserialize, Serialize};
use support::Rng;

mod support;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Op {
    Add(i64),
    Times(i64),
}

struct Arithmetic;

impl EventHandler for Arithmetic {
    type Event = Op;
    type State = (i64, u64);

    fn apply(&self, state: &mut (i64, u64), event: &Op, _: EventMeta<'_>) {
        state.0 = match event {
            Op::Add(n) => state.0.wrapping_add(*n),
            Op::Times(n) => state.0.wrapping_mul(*n),
        };
        state.1 += 1;
    }
}

const NAMES: [&str; 3] = ["r0", "r1", "r2"];
const ENTITY: &str = "entity";

/// A message on the wire: delivery time, a tie breaker, receiver, sender, bytes.
type InFlight = (u64, u64, usize, usize, Vec<u8>);

struct Sim {
    rng: Rng,
    replicas: Vec<Replication<Arithmetic, LastWriterWins>>,
    queue: BinaryHeap<Reverse<InFlight>>,
    sequence: u64,
    now: u64,
    group: [u8; 3],
    healed: bool,
    persisted: usize,
    journals: Vec<MemoryJournal>,
    crashes: usize,
    /// Replicated events the log asked to journal twice: must stay empty.
    journaled_twice: Vec<String>,
}

/// A replica as its entity starts: its log rebuilt from its journal.
fn replica_from(journal: &MemoryJournal, index: usize) -> Replication<Arithmetic, LastWriterWins> {
    let mut log = ReplicatedLog::new(ReplicaId::new(NAMES[index], 1), Arithmetic, LastWriterWins);
    let journaled = journal
        .read_from::<Op>(ENTITY, 1)
        .expect("the journal reads back");
    log.recover(journaled.into_iter().map(|(_, envelope)| envelope));
    // Small budgets force catch-up to travel in many messages.
    Replication::new(log, 300)
}

impl Sim {
    fn new(seed: u64) -> Self {
        let journals: Vec<MemoryJournal> = NAMES.iter().map(|_| MemoryJournal::new()).collect();
        let replicas = (0..NAMES.len())
            .map(|i| replica_from(&journals[i], i))
            .collect();
        Self {
            rng: Rng(seed),
            replicas,
            queue: BinaryHeap::new(),
            sequence: 0,
            now: 0,
            group: [0; 3],
            healed: false,
            persisted: 0,
            journals,
            crashes: 0,
            journaled_twice: Vec::new(),
        }
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.group[a] == self.group[b]
    }

    fn run_effects(&mut self, from: usize, effects: Vec<ReplicationEffect<Op>>) {
        for effect in effects {
            match effect {
                ReplicationEffect::Journal(events) => {
                    let new = self.journals[from]
                        .append(ENTITY, &events)
                        .expect("the journal appends");
                    if new != events.len() {
                        self.journaled_twice.push(format!(
                            "r{from} asked to journal {} events, {new} of them new",
                            events.len()
                        ));
                    }
                }
                ReplicationEffect::Send { to, message } => {
                    let to = NAMES
                        .iter()
                        .position(|n| *n == to)
                        .expect("a known replica");
                    let bytes = codec::encode(&message).expect("messages encode");
                    let lost = !self.healed && self.rng.below(10) < 2;
                    let copies = if !self.healed && self.rng.below(10) == 0 {
                        2
                    } else {
                        1
                    };
                    for _ in 0..if lost { 0 } else { copies } {
                        self.sequence += 1;
                        let at = self.now + 1 + self.rng.below(20);
                        self.queue
                            .push(Reverse((at, self.sequence, to, from, bytes.clone())));
                    }
                }
            }
        }
    }

    fn set_links(&mut self, group: [u8; 3]) {
        let before = self.group;
        self.group = group;
        for a in 0..3 {
            for b in 0..3 {
                if a == b {
                    continue;
                }
                let (was, is) = (before[a] == before[b], group[a] == group[b]);
                if was && !is {
                    self.replicas[a].peer_down(NAMES[b]);
                } else if !was && is {
                    let effects = self.replicas[a].peer_up(NAMES[b]);
                    self.run_effects(a, effects);
                }
            }
        }
    }

    fn run_to_end(&mut self) -> Result<(), String> {
        for a in 0..3 {
            for (b, name) in NAMES.iter().enumerate() {
                if a != b {
                    let effects = self.replicas[a].peer_up(name);
                    self.run_effects(a, effects);
                }
            }
        }
        for step in 0..300u64 {
            self.now = step * 10;
            self.deliver_until(self.now);
            // Group commits happen when they happen.
            for journal in &mut self.journals {
                if self.rng.chance(0.5) {
                    journal.flush().expect("flushes");
                }
            }
            match self.rng.below(10) {
                0..=4 => {
                    let r = self.rng.below(3) as usize;
                    let op = if self.rng.below(3) == 0 {
                        Op::Times(self.rng.below(3) as i64 + 1)
                    } else {
                        Op::Add(self.rng.below(10) as i64)
                    };
                    let timestamp = self.rng.below(50) as i64;
                    // As an entity does: journal, flush, apply, then push.
                    let events = self.replicas[r].log().stamp(vec![op], timestamp);
                    self.journals[r].append(ENTITY, &events).expect("appends");
                    self.journals[r].flush().expect("flushes");
                    self.replicas[r]
                        .log_mut()
                        .receive_all(events.iter().cloned());
                    self.persisted += events.len();
                    let effects = self.replicas[r].persisted(&events);
                    self.run_effects(r, effects);
                }
                7 if self.rng.below(4) == 0 => {
                    let r = self.rng.below(3) as usize;
                    self.crash(r);
                }
                5 => {
                    let group = [0, self.rng.below(2) as u8, self.rng.below(2) as u8];
                    self.set_links(group);
                }
                6 => self.set_links([0; 3]),
                _ => {
                    let r = self.rng.below(3) as usize;
                    let effects = self.replicas[r].tick();
                    self.run_effects(r, effects);
                }
            }
        }
        self.healed = true;
        self.set_links([0; 3]);
        for round in 0..200u64 {
            self.now = 10_000 + round * 100;
            self.deliver_until(self.now);
            if self.converged() {
                return self.check();
            }
            for r in 0..3 {
                let effects = self.replicas[r].tick();
                self.run_effects(r, effects);
            }
        }
        Err("no convergence 200 anti-entropy rounds after healing".into())
    }

    /// Replica `r` crashes and restarts from its journal, which lost what it
    /// had not flushed; the others see its new incarnation come up.
    fn crash(&mut self, r: usize) {
        self.crashes += 1;
        self.journals[r].lose_unflushed();
        self.replicas[r] = replica_from(&self.journals[r], r);
        for (other, name) in NAMES.iter().enumerate() {
            if other == r || !self.connected(r, other) {
                continue;
            }
            let effects = self.replicas[r].peer_up(name);
            self.run_effects(r, effects);
            self.replicas[other].peer_down(NAMES[r]);
            let effects = self.replicas[other].peer_up(NAMES[r]);
            self.run_effects(other, effects);
        }
    }

    fn deliver_until(&mut self, time: u64) {
        while let Some(Reverse((at, _, _, _, _))) = self.queue.peek() {
            if *at > time {
                break;
            }
            let Reverse((at, _, to, from, bytes)) = self.queue.pop().expect("peeked");
            self.now = self.now.max(at);
            if !self.connected(to, from) {
                continue;
            }
            let message: ReplicationMessage<Op> =
                codec::decode(&bytes).expect("our own bytes decode");
            let effects = self.replicas[to].handle_message(NAMES[from], message);
            self.run_effects(to, effects);
        }
    }

    fn converged(&self) -> bool {
        self.replicas
            .iter()
            .all(|r| r.log().events().len() == self.persisted && r.log().waiting() == 0)
    }

    fn check(&self) -> Result<(), String> {
        let first = self.replicas[0].log();
        for (i, replica) in self.replicas.iter().enumerate() {
            let log = replica.log();
            if !log.events().eq(first.events()) {
                return Err(format!("r{i} holds another order than r0"));
            }
            if log.state() != first.state() || log.state().1 as usize != self.persisted {
                return Err(format!(
                    "r{i} ends in {:?}, r0 in {:?}",
                    log.state(),
                    first.state()
                ));
            }
            let journaled = self.journals[i]
                .read_from::<Op>(ENTITY, 1)
                .map_err(|err| err.to_string())?
                .len();
            if journaled != self.persisted {
                return Err(format!(
                    "r{i} journaled {journaled} events, expected {}",
                    self.persisted
                ));
            }
        }
        match self.journaled_twice.first() {
            Some(twice) => Err(twice.clone()),
            None => Ok(()),
        }
    }
}

#[test]
fn replicas_of_an_entity_converge_through_loss_duplication_and_partitions() {
    let seeds: u64 = std::env::var("REPLICATION_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000);
    let mut crashes = 0;
    for seed in 0..seeds {
        let mut sim = Sim::new(seed);
        let outcome = sim.run_to_end();
        crashes += sim.crashes;
        if let Err(failure) = outcome {
            panic!("seed {seed}: {failure}");
        }
    }
    assert!(crashes > seeds as usize, "crashes are exercised: {crashes}");
}
