//! Deterministic simulation of event replication between three replicas of
//! one persistence id: messages go through the codec and are lost,
//! duplicated, delayed (so reordered) and cut by partitions, while replicas
//! persist events concurrently and crash, losing what their journal had not
//! flushed, then restart from their journal. After healing, anti-entropy must
//! bring every replica to the same events, order and state, with every event
//! journaled exactly once everywhere. Every other seed snapshots: replicas
//! compact their logs, save snapshots, restart from them, answer lagging
//! peers from the journal and read the journal back when a late event may
//! sort among compacted ones; their states must equal a replay of the whole
//! journal. 1,000 seeds per `cargo test`; `REPLICATION_SEEDS=100000` for
//! more; a failure names its seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ractor_replicated::codec;
use ractor_replicated::persistence::journal::{Journal, MemoryJournal, StoredSnapshot};
use ractor_replicated::persistence::replicated::{
    recover_from_journal, Effects, EventHandler, EventMeta, LastWriterWins, ReplicatedLog,
    Replication, ReplicationEffect, ReplicationMessage,
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
    /// Compact and snapshot every this many events, with this many
    /// stability ticks, if set.
    snapshot_every: Option<(usize, u64)>,
    /// Per replica, where its last snapshot's recovery reads from.
    snapshot_from: Vec<u64>,
    counts: Counts,
}

/// How often the snapshot paths ran, summed over seeds.
#[derive(Default, Debug)]
struct Counts {
    snapshots_saved: usize,
    started_from_snapshot: usize,
    served_from_journal: usize,
    history_loads: usize,
}

/// A log rebuilt from the whole journal.
fn replayed(journal: &MemoryJournal, index: usize) -> ReplicatedLog<Arithmetic, LastWriterWins> {
    let mut log = ReplicatedLog::new(ReplicaId::new(NAMES[index], 1), Arithmetic, LastWriterWins);
    let journaled = journal
        .read_from::<Op>(ENTITY, 1)
        .expect("the journal reads back");
    log.recover(journaled.into_iter().map(|(_, envelope)| envelope));
    log
}

/// A replica as its entity starts: its log rebuilt from its journal, from
/// its snapshot if it snapshots and has one that fits.
fn replica_from(
    journal: &MemoryJournal,
    index: usize,
    snapshot_every: Option<(usize, u64)>,
    counts: &mut Counts,
) -> (Replication<Arithmetic, LastWriterWins>, u64) {
    let mut log = ReplicatedLog::new(ReplicaId::new(NAMES[index], 1), Arithmetic, LastWriterWins);
    let decode: fn(&[u8]) -> ractor_replicated::Result<(i64, u64)> = |bytes| codec::decode(bytes);
    let recovered = recover_from_journal(&mut log, journal, ENTITY, snapshot_every.map(|_| decode))
        .expect("the journal reads back");
    if recovered.snapshot_from.is_some() {
        counts.started_from_snapshot += 1;
    }
    let from = recovered.snapshot_from.unwrap_or(1);
    // Small budgets force catch-up to travel in many messages.
    let replication = Replication::new(log, 300);
    match snapshot_every {
        Some((every, stability)) => (
            replication
                .with_snapshots(every)
                .with_stability_ticks(stability),
            from,
        ),
        None => (replication, from),
    }
}

impl Sim {
    fn new(seed: u64) -> Self {
        let journals: Vec<MemoryJournal> = NAMES.iter().map(|_| MemoryJournal::new()).collect();
        // Short stability times make replicas compact past partitioned
        // peers, so that catch-up from the journal and history reloads run.
        let stability = [0, 2, 30][(seed / 2 % 3) as usize];
        let snapshot_every = (seed % 2 == 1).then_some((64, stability));
        let mut counts = Counts::default();
        let replicas = (0..NAMES.len())
            .map(|i| replica_from(&journals[i], i, snapshot_every, &mut counts).0)
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
            snapshot_every,
            snapshot_from: vec![1; NAMES.len()],
            counts,
        }
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.group[a] == self.group[b]
    }

    fn run_effects(&mut self, from: usize, effects: Effects<Arithmetic>) {
        for effect in effects {
            match effect {
                ReplicationEffect::Snapshot(snapshot) => {
                    // As an entity does: what the snapshot covers is durable first.
                    let journal = &mut self.journals[from];
                    journal.flush().expect("flushes");
                    let from_sequence = journal
                        .first_sequence_outside(ENTITY, &snapshot.version, self.snapshot_from[from])
                        .expect("the journal reads back");
                    let stored = StoredSnapshot {
                        state: codec::encode(&snapshot.state).expect("the state encodes"),
                        version: snapshot.version,
                        events: snapshot.events,
                        from_sequence,
                        sequence: journal.highest_sequence(ENTITY).expect("reads"),
                    };
                    journal.save_snapshot(ENTITY, &stored).expect("saves");
                    self.snapshot_from[from] = from_sequence;
                    self.counts.snapshots_saved += 1;
                }
                ReplicationEffect::ServeFromJournal { to, version } => {
                    self.counts.served_from_journal += 1;
                    let missing = self.journals[from]
                        .missing_for::<Op>(ENTITY, &version)
                        .expect("the journal reads back");
                    let effects = self.replicas[from].events_for(&to, &missing);
                    self.run_effects(from, effects);
                }
                ReplicationEffect::LoadHistory => {
                    self.counts.history_loads += 1;
                    let journaled = self.journals[from]
                        .read_from::<Op>(ENTITY, 1)
                        .expect("the journal reads back");
                    self.snapshot_from[from] = 1;
                    let effects =
                        self.replicas[from].history_loaded(journaled.into_iter().map(|(_, e)| e));
                    self.run_effects(from, effects);
                }
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
                    let ops = (0..1 + self.rng.below(3))
                        .map(|_| {
                            if self.rng.below(3) == 0 {
                                Op::Times(self.rng.below(3) as i64 + 1)
                            } else {
                                Op::Add(self.rng.below(10) as i64)
                            }
                        })
                        .collect();
                    let timestamp = self.rng.below(50) as i64;
                    // As an entity does: journal, flush, apply, then push.
                    let events = self.replicas[r].log().stamp(ops, timestamp);
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
    /// had not flushed, under the same replica id; the others see it go down
    /// and come up again.
    fn crash(&mut self, r: usize) {
        self.crashes += 1;
        self.journals[r].lose_unflushed();
        let (replica, from) =
            replica_from(&self.journals[r], r, self.snapshot_every, &mut self.counts);
        self.replicas[r] = replica;
        self.snapshot_from[r] = from;
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
            .all(|r| r.log().applied_events() == self.persisted as u64 && r.log().waiting() == 0)
    }

    /// Every replica holds the same order and state, and a replica that
    /// compacted holds the state a replay of its whole journal gives.
    fn check(&self) -> Result<(), String> {
        let first = replayed(&self.journals[0], 0);
        for (i, replica) in self.replicas.iter().enumerate() {
            let log = replica.log();
            let full = replayed(&self.journals[i], i);
            if !full.events().eq(first.events()) {
                return Err(format!("r{i} holds another order than r0"));
            }
            if !full
                .events()
                .rev()
                .take(log.events().len())
                .eq(log.events().rev())
            {
                return Err(format!(
                    "r{i} keeps in memory other events than its journal's last"
                ));
            }
            if log.state() != full.state() {
                return Err(format!(
                    "r{i} is in {:?}, a replay of its journal gives {:?}",
                    log.state(),
                    full.state()
                ));
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
    let mut counts = Counts::default();
    for seed in 0..seeds {
        let mut sim = Sim::new(seed);
        let outcome = sim.run_to_end();
        crashes += sim.crashes;
        counts.snapshots_saved += sim.counts.snapshots_saved;
        counts.started_from_snapshot += sim.counts.started_from_snapshot;
        counts.served_from_journal += sim.counts.served_from_journal;
        counts.history_loads += sim.counts.history_loads;
        if let Err(failure) = outcome {
            panic!("seed {seed}: {failure}");
        }
    }
    println!("{seeds} seeds, {crashes} crashes, {counts:?}");
    assert!(crashes > seeds as usize, "crashes are exercised: {crashes}");
    if seeds >= 100 {
        assert!(
            counts.snapshots_saved > 0
                && counts.started_from_snapshot > 0
                && counts.served_from_journal > 0
                && counts.history_loads > 0,
            "every snapshot path runs: {counts:?}"
        );
    }
}
