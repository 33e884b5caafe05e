//! Deterministic simulation of event replication between three replicas of
//! one persistence id, each an [`EntityCore`]: the very rules the entity
//! actor runs, driven here instead of by ractor. Messages go through the
//! codec and are lost, duplicated, delayed (so reordered) and cut by
//! partitions, while replicas run commands concurrently. A replica's journal
//! flush runs when the core scheduled it, some time later (group commit),
//! so appends stay unflushed for a while, and replicas crash in that window,
//! losing what their journal had not flushed, then restart from it.
//!
//! Some crashes are only the entity's: the process, and the journal's
//! unflushed appends, live on into the next life, which must not reveal
//! them before flushing. At every crash: every acknowledged command's events survived, no event
//! published to a subscriber was lost, and no peer holds an event of the
//! crashed replica that it lost (it would mint another under the same id).
//! After healing, anti-entropy must bring every replica to the same events,
//! order and state, with every event journaled exactly once everywhere.
//! Every other seed snapshots: replicas compact their logs, save snapshots,
//! restart from them, answer lagging peers from the journal and read the
//! journal back when a late event may sort among compacted ones; their
//! states must equal a replay of the whole journal. A third of those list
//! the replicas and delete the events every replica passed (all, or all but
//! a few), and replicas also lose their whole disk and start again under a
//! new incarnation: commands wait until they caught up, and they catch up
//! from a peer's snapshot; no event may be refused, and each state must
//! equal a recovery from its journal. 1,000 seeds per `cargo
//! test`; `REPLICATION_SEEDS=100000` for more; a failure names its seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};

use ractor_replicated::codec;
use ractor_replicated::persistence::{
    Effect, EntityCore, EntityIo, EventApplied, EventEnvelope, EventHandler, EventMeta, Journal,
    LastWriterWins, MemoryJournal, ReplicatedEventSourcedActor, ReplicatedLog, ReplicationContext,
    ReplicationMessage, Retention, Snapshots, StoredSnapshot,
};
use ractor_replicated::ReplicaId;
use ractor_replicated::VersionVector;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use test_support::Rng;

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

/// A command persists its operations and answers how many.
impl ReplicatedEventSourcedActor for Arithmetic {
    type Command = Vec<Op>;
    type Reply = u64;

    fn handle_command(
        &self,
        _: &(i64, u64),
        ops: Vec<Op>,
        _: ReplicationContext<'_>,
    ) -> Effect<Op, u64> {
        let count = ops.len() as u64;
        Effect::persist(ops).then_reply(count)
    }
}

const NAMES: [&str; 3] = ["r0", "r1", "r2"];
const ENTITY: &str = "entity";

type Core = EntityCore<Arithmetic, LastWriterWins, Disk>;

/// What a replica's disk saw, summed over its lives.
#[derive(Default)]
struct DiskLog {
    snapshots_saved: usize,
    served_from_journal: usize,
    /// Appends that held events the journal had already: must stay empty.
    journaled_twice: Vec<String>,
    deletions: usize,
}

/// A replica's disk: a [`MemoryJournal`], which loses what was not flushed
/// when the simulation crashes the replica, noting what the core asks of it.
#[derive(Clone, Default)]
struct Disk {
    journal: MemoryJournal,
    log: Arc<Mutex<DiskLog>>,
}

impl Disk {
    fn note(&self) -> std::sync::MutexGuard<'_, DiskLog> {
        self.log.lock().expect("not poisoned")
    }
}

impl Journal for Disk {
    fn append<E: Serialize>(
        &mut self,
        persistence_id: &str,
        events: &[EventEnvelope<E>],
    ) -> ractor_replicated::Result<usize> {
        let added = self.journal.append(persistence_id, events)?;
        if added != events.len() {
            self.note().journaled_twice.push(format!(
                "asked to journal {} events, {added} of them new",
                events.len()
            ));
        }
        Ok(added)
    }

    fn flush(&mut self) -> ractor_replicated::Result<()> {
        self.journal.flush()
    }

    fn read_from<E: DeserializeOwned>(
        &self,
        persistence_id: &str,
        from: u64,
    ) -> ractor_replicated::Result<Vec<(u64, EventEnvelope<E>)>> {
        self.journal.read_from(persistence_id, from)
    }

    fn missing_for<E: DeserializeOwned>(
        &self,
        persistence_id: &str,
        peer: &VersionVector,
    ) -> ractor_replicated::Result<Vec<EventEnvelope<E>>> {
        self.note().served_from_journal += 1;
        self.journal.missing_for(persistence_id, peer)
    }

    fn highest_sequence(&self, persistence_id: &str) -> ractor_replicated::Result<u64> {
        self.journal.highest_sequence(persistence_id)
    }

    fn save_snapshot(
        &mut self,
        persistence_id: &str,
        snapshot: &StoredSnapshot,
    ) -> ractor_replicated::Result<()> {
        self.note().snapshots_saved += 1;
        self.journal.save_snapshot(persistence_id, snapshot)
    }

    fn load_snapshot(
        &self,
        persistence_id: &str,
    ) -> ractor_replicated::Result<Option<StoredSnapshot>> {
        self.journal.load_snapshot(persistence_id)
    }

    fn first_sequence_outside(
        &self,
        persistence_id: &str,
        prefix: &VersionVector,
        from: u64,
    ) -> ractor_replicated::Result<u64> {
        self.journal
            .first_sequence_outside(persistence_id, prefix, from)
    }

    fn delete_before(
        &mut self,
        persistence_id: &str,
        before: u64,
    ) -> ractor_replicated::Result<()> {
        self.note().deletions += 1;
        self.journal.delete_before(persistence_id, before)
    }

    fn deleted_before(&self, persistence_id: &str) -> ractor_replicated::Result<Option<u64>> {
        self.journal.deleted_before(persistence_id)
    }
}

/// What a replica's core asked for during one step.
#[derive(Default)]
struct Outbox {
    sends: Vec<(String, ReplicationMessage<Op>)>,
    flush: bool,
    published: Vec<EventApplied<Op>>,
}

impl EntityIo<Op> for Outbox {
    fn send(&mut self, to: &str, message: ReplicationMessage<Op>) -> bool {
        self.sends.push((to.to_string(), message));
        true
    }

    fn schedule_flush(&mut self) -> bool {
        self.flush = true;
        true
    }

    fn publishing(&self) -> bool {
        true
    }

    fn publish(&mut self, events: Vec<EventApplied<Op>>) {
        self.published.extend(events);
    }
}

/// Something on its way: a message between replicas, or a replica's
/// scheduled flush (which dies with the replica's life).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    Message {
        to: usize,
        from: usize,
        bytes: Vec<u8>,
    },
    Flush {
        replica: usize,
        life: u32,
    },
}

/// When it happens, a tie breaker, and what.
type Queued = (u64, u64, Pending);

/// What a replica did in its current life, checked when it crashes.
#[derive(Default)]
struct Life {
    number: u32,
    /// The replica's incarnation: a new one each time it loses its disk.
    incarnation: u64,
    /// Events of the commands acknowledged, over all lives of this
    /// incarnation.
    acknowledged: Arc<Mutex<u64>>,
    /// The highest local sequence number published to subscribers.
    published: u64,
}

struct Sim {
    rng: Rng,
    replicas: Vec<Core>,
    disks: Vec<Disk>,
    lives: Vec<Life>,
    queue: BinaryHeap<Reverse<Queued>>,
    sequence: u64,
    now: u64,
    group: [u8; 3],
    healed: bool,
    /// Events the commands asked for, acknowledged or not.
    attempted: u64,
    crashes: usize,
    /// Events of the crashed replica that were journaled and not flushed.
    lost_in_crashes: u64,
    /// Compact and snapshot every this many events, with this many
    /// stability ticks, if set.
    snapshot_every: Option<(usize, u64)>,
    /// The replicas are listed and delete events they all passed.
    retention: Option<Retention>,
    /// Events acknowledged by incarnations that lost their disk.
    acknowledged_before_wipes: u64,
    counts: Counts,
}

/// How often the snapshot paths ran, summed over seeds.
#[derive(Default, Debug)]
struct Counts {
    snapshots_saved: usize,
    started_from_snapshot: usize,
    served_from_journal: usize,
    history_loads: u64,
    lost_in_crashes: u64,
    deletions: usize,
    wipes: usize,
    snapshots_sent: usize,
    held_while_catching_up: u64,
}

/// A log rebuilt from the whole journal.
fn replayed(journal: &MemoryJournal, index: usize) -> ReplicatedLog<Arithmetic, LastWriterWins> {
    let mut log = ReplicatedLog::new(replica_id(index), Arithmetic, LastWriterWins);
    let journaled = journal
        .read_from::<Op>(ENTITY, 1)
        .expect("the journal reads back");
    log.recover(journaled.into_iter().map(|(_, envelope)| envelope));
    log
}

fn replica_id(index: usize) -> ReplicaId {
    ReplicaId::new(NAMES[index], 1)
}

/// How a replica is configured.
#[derive(Clone, Copy)]
struct Setup {
    snapshot_every: Option<(usize, u64)>,
    retention: Option<Retention>,
}

/// A replica as its entity starts: from its journal, from its snapshot if
/// it snapshots and has one that fits.
fn replica_from(disk: &Disk, replica: ReplicaId, setup: Setup) -> Core {
    let log = ReplicatedLog::new(replica, Arithmetic, LastWriterWins);
    let snapshots = setup.snapshot_every.map(|(every, _)| {
        Snapshots::every(every).with_retention(setup.retention.unwrap_or_default())
    });
    // Small budgets force catch-up to travel in many messages.
    let core =
        EntityCore::recover(ENTITY, log, disk.clone(), snapshots, 300).expect("the journal reads");
    let core = match setup.snapshot_every {
        Some((_, stability)) => core.with_stability_ticks(stability),
        None => core,
    };
    match setup.retention {
        Some(_) => core.with_replicas(NAMES),
        None => core,
    }
}

impl Sim {
    fn new(seed: u64) -> Self {
        let disks: Vec<Disk> = NAMES.iter().map(|_| Disk::default()).collect();
        // Short stability times make replicas compact past partitioned
        // peers, so that catch-up from the journal and history reloads run.
        let stability = [0, 2, 30][(seed / 2 % 3) as usize];
        let snapshot_every = (seed % 2 == 1).then_some((64, stability));
        let retention =
            (snapshot_every.is_some() && seed / 6 % 3 == 0).then_some(if seed / 18 % 2 == 0 {
                Retention::DeleteCovered
            } else {
                Retention::KeepLast(10)
            });
        let setup = Setup {
            snapshot_every,
            retention,
        };
        let replicas = (0..NAMES.len())
            .map(|i| replica_from(&disks[i], replica_id(i), setup))
            .collect();
        Self {
            rng: Rng(seed),
            replicas,
            disks,
            lives: NAMES.iter().map(|_| Life::default()).collect(),
            queue: BinaryHeap::new(),
            sequence: 0,
            now: 0,
            group: [0; 3],
            healed: false,
            attempted: 0,
            crashes: 0,
            lost_in_crashes: 0,
            snapshot_every,
            retention,
            acknowledged_before_wipes: 0,
            counts: Counts::default(),
        }
    }

    fn setup(&self) -> Setup {
        Setup {
            snapshot_every: self.snapshot_every,
            retention: self.retention,
        }
    }

    fn current_id(&self, r: usize) -> ReplicaId {
        ReplicaId::new(NAMES[r], self.lives[r].incarnation + 1)
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.group[a] == self.group[b]
    }

    /// Lets replica `r`'s core do `step`, then carries out what it asked:
    /// messages onto the network, its flush into the queue, published events
    /// checked for order.
    fn act(
        &mut self,
        r: usize,
        step: impl FnOnce(&mut Core, &mut Outbox) -> ractor_replicated::Result<()>,
    ) -> Result<(), String> {
        let mut outbox = Outbox::default();
        let outcome = step(&mut self.replicas[r], &mut outbox);
        for (to, message) in outbox.sends {
            if matches!(message, ReplicationMessage::Snapshot(_)) {
                self.counts.snapshots_sent += 1;
            }
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
                let at = self.now + 1 + self.rng.below(20);
                self.push(
                    at,
                    Pending::Message {
                        to,
                        from: r,
                        bytes: bytes.clone(),
                    },
                );
            }
        }
        if outbox.flush {
            // Group commits happen when the mailbox gets to them.
            let at = self.now + 1 + self.rng.below(30);
            let life = self.lives[r].number;
            self.push(at, Pending::Flush { replica: r, life });
        }
        for event in outbox.published {
            if event.sequence != self.lives[r].published + 1 && self.lives[r].published != 0 {
                return Err(format!(
                    "r{r} published #{} after #{}",
                    event.sequence, self.lives[r].published
                ));
            }
            self.lives[r].published = event.sequence;
        }
        outcome.map_err(|err| format!("r{r} stopped: {err}"))
    }

    fn push(&mut self, at: u64, pending: Pending) {
        self.sequence += 1;
        self.queue.push(Reverse((at, self.sequence, pending)));
    }

    fn set_links(&mut self, group: [u8; 3]) -> Result<(), String> {
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
                    self.act(a, |core, io| core.peer_up(io, NAMES[b]))?;
                }
            }
        }
        Ok(())
    }

    fn run_to_end(&mut self) -> Result<(), String> {
        for a in 0..3 {
            for (b, name) in NAMES.iter().enumerate() {
                if a != b {
                    self.act(a, |core, io| core.peer_up(io, name))?;
                }
            }
        }
        for step in 0..300u64 {
            self.now = step * 10;
            self.deliver_until(self.now)?;
            match self.rng.below(10) {
                0..=4 => {
                    let r = self.rng.below(3) as usize;
                    let ops: Vec<Op> = (0..1 + self.rng.below(3))
                        .map(|_| {
                            if self.rng.below(3) == 0 {
                                Op::Times(self.rng.below(3) as i64 + 1)
                            } else {
                                Op::Add(self.rng.below(10) as i64)
                            }
                        })
                        .collect();
                    let timestamp = self.rng.below(50) as i64;
                    self.attempted += ops.len() as u64;
                    let acknowledged = Arc::clone(&self.lives[r].acknowledged);
                    if self.replicas[r].holds_commands() {
                        self.counts.held_while_catching_up += 1;
                    }
                    self.act(r, |core, io| {
                        core.command(io, ops, timestamp, move |result| {
                            if let Ok(Some(count)) = result {
                                *acknowledged.lock().expect("not poisoned") += count;
                            }
                        })
                    })?;
                }
                7 if self.rng.below(3) == 0 => {
                    let r = self.rng.below(3) as usize;
                    self.crash(r, true)?;
                }
                9 if self.retention.is_some() && self.rng.below(4) == 0 => {
                    let r = self.rng.below(3) as usize;
                    self.wipe(r)?;
                }
                8 if self.rng.below(4) == 0 => {
                    // The entity fails and restarts; the process, and so
                    // the journal's unflushed appends, live on.
                    let r = self.rng.below(3) as usize;
                    self.crash(r, false)?;
                }
                5 => {
                    let group = [0, self.rng.below(2) as u8, self.rng.below(2) as u8];
                    self.set_links(group)?;
                }
                6 => self.set_links([0; 3])?,
                _ => {
                    let r = self.rng.below(3) as usize;
                    self.act(r, |core, io| core.tick(io))?;
                }
            }
        }
        self.healed = true;
        self.set_links([0; 3])?;
        for round in 0..200u64 {
            self.now = 10_000 + round * 100;
            self.deliver_until(self.now)?;
            if self.converged() {
                for r in 0..3 {
                    self.act(r, |core, io| {
                        core.stop(io);
                        Ok(())
                    })?;
                }
                return self.check();
            }
            for r in 0..3 {
                self.act(r, |core, io| core.tick(io))?;
            }
        }
        let states: Vec<String> = self
            .replicas
            .iter()
            .map(|r| {
                format!(
                    "{:?} waiting {:?} refused {} deleted {:?}",
                    r.log().version(),
                    r.log()
                        .waiting_events()
                        .iter()
                        .map(|e| (e.origin.clone(), e.origin_seq, e.version.clone()))
                        .collect::<Vec<_>>(),
                    r.log().refused_events(),
                    r.deleted_before()
                )
            })
            .collect();
        Err(format!(
            "no convergence 200 anti-entropy rounds after healing: {states:#?}"
        ))
    }

    /// Replica `r` crashes and restarts from its journal under the same
    /// replica id; the journal lost what it had not flushed if the process
    /// died (`lose_unflushed`), and still holds it if only the entity
    /// failed. The others see it go down and come up again.
    fn crash(&mut self, r: usize, lose_unflushed: bool) -> Result<(), String> {
        self.crashes += 1;
        self.counts.history_loads += self.replicas[r].history_reloads();
        let journaled = self.disks[r]
            .journal
            .highest_sequence(ENTITY)
            .expect("reads");
        if lose_unflushed {
            self.disks[r].journal.lose_unflushed();
        }
        let durable = self.disks[r]
            .journal
            .highest_sequence(ENTITY)
            .expect("reads");
        self.lost_in_crashes += journaled - durable;
        let id = self.current_id(r);
        let replica = replica_from(&self.disks[r], id.clone(), self.setup());
        if replica.recovered().snapshot_from.is_some() {
            self.counts.started_from_snapshot += 1;
        }
        let own = replica.log().version().get(&id);
        let life = &mut self.lives[r];
        let acknowledged = *life.acknowledged.lock().expect("not poisoned");
        if own < acknowledged {
            return Err(format!(
                "r{r} acknowledged {acknowledged} events of its own and kept {own} after a crash"
            ));
        }
        if life.published > durable {
            return Err(format!(
                "r{r} published event #{} and kept {durable} after a crash",
                life.published
            ));
        }
        life.number += 1;
        life.published = 0;
        for (other, peer) in self.replicas.iter().enumerate() {
            let held = peer.log().version().get(&id);
            if other != r && held > own {
                return Err(format!(
                    "r{other} holds r{r}'s event #{held}, which r{r} lost in a crash: it was sent before it was durable"
                ));
            }
        }
        self.restart(r, replica)
    }

    /// Replica `r` loses its disk, once another replica holds every event
    /// it holds, durably (else acknowledged events could go with it: its
    /// own, or those of an earlier lost incarnation that only it had), and
    /// starts again, empty, under a new incarnation. One at a time: not
    /// while another replica still catches up after losing its own (the
    /// documented limit; seed 35553 of a batch without this rule joined a
    /// replica from two peers that were themselves still empty).
    fn wipe(&mut self, r: usize) -> Result<(), String> {
        if (0..3).any(|other| other != r && self.replicas[other].holds_commands()) {
            return Ok(());
        }
        let held = self.replicas[r].log().version();
        let Some(holder) =
            (0..3).find(|&other| other != r && self.replicas[other].log().version().descends(held))
        else {
            return Ok(());
        };
        self.act(holder, |core, io| core.flush(io))?;
        self.counts.wipes += 1;
        self.counts.history_loads += self.replicas[r].history_reloads();
        self.disks[r] = Disk::default();
        let life = &mut self.lives[r];
        life.number += 1;
        life.published = 0;
        life.incarnation += 1;
        let acknowledged = std::mem::take(&mut life.acknowledged);
        self.acknowledged_before_wipes += *acknowledged.lock().expect("not poisoned");
        let replica = replica_from(&self.disks[r], self.current_id(r), self.setup());
        self.restart(r, replica)
    }

    fn restart(&mut self, r: usize, replica: Core) -> Result<(), String> {
        self.replicas[r] = replica;
        for (other, name) in NAMES.iter().enumerate() {
            if other == r || !self.connected(r, other) {
                continue;
            }
            self.act(r, |core, io| core.peer_up(io, name))?;
            self.replicas[other].peer_down(NAMES[r]);
            self.act(other, |core, io| core.peer_up(io, NAMES[r]))?;
        }
        Ok(())
    }

    fn deliver_until(&mut self, time: u64) -> Result<(), String> {
        while let Some(Reverse((at, ..))) = self.queue.peek() {
            if *at > time {
                break;
            }
            let Reverse((at, _, pending)) = self.queue.pop().expect("peeked");
            self.now = self.now.max(at);
            match pending {
                Pending::Message { to, from, bytes } => {
                    if !self.connected(to, from) {
                        continue;
                    }
                    let message: ReplicationMessage<Op> =
                        codec::decode(&bytes).expect("our own bytes decode");
                    self.act(to, |core, io| core.received(io, NAMES[from], message))?;
                }
                Pending::Flush { replica, life } => {
                    if life == self.lives[replica].number {
                        self.act(replica, |core, io| core.scheduled_flush(io))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Every replica applied the same events and none waits for any.
    fn converged(&self) -> bool {
        let first = self.replicas[0].log();
        self.replicas
            .iter()
            .all(|r| r.log().version() == first.version() && r.log().waiting() == 0)
    }

    /// Every replica holds the same order and state, every event exactly
    /// once, every acknowledged event, and a replica that compacted holds
    /// the state a replay of its whole journal gives.
    fn check(&self) -> Result<(), String> {
        let total: u64 = self.replicas[0]
            .log()
            .version()
            .iter()
            .map(|(_, count)| count)
            .sum();
        let acknowledged: u64 = self.acknowledged_before_wipes
            + self
                .lives
                .iter()
                .map(|life| *life.acknowledged.lock().expect("not poisoned"))
                .sum::<u64>();
        if total < acknowledged || total > self.attempted {
            return Err(format!(
                "{total} events in the end, {acknowledged} acknowledged of {} attempted",
                self.attempted
            ));
        }
        if self.retention.is_some() {
            return self.check_with_retention(total);
        }
        let first = replayed(&self.disks[0].journal, 0);
        for (i, replica) in self.replicas.iter().enumerate() {
            let log = replica.log();
            let full = replayed(&self.disks[i].journal, i);
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
            if log.state() != first.state() || log.state().1 != total {
                return Err(format!(
                    "r{i} ends in {:?}, r0 in {:?}, {total} events",
                    log.state(),
                    first.state()
                ));
            }
            let journaled = self.disks[i]
                .journal
                .read_from::<Op>(ENTITY, 1)
                .map_err(|err| err.to_string())?
                .len() as u64;
            if journaled != total {
                return Err(format!(
                    "r{i} journaled {journaled} events, expected {total}"
                ));
            }
            if let Some(twice) = self.disks[i].note().journaled_twice.first() {
                return Err(format!("r{i} {twice}"));
            }
        }
        Ok(())
    }

    /// With deleted events, a journal is checked against a recovery from
    /// its snapshot and the events it kept.
    fn check_with_retention(&self, total: u64) -> Result<(), String> {
        let first = self.replicas[0].log();
        for (i, replica) in self.replicas.iter().enumerate() {
            let log = replica.log();
            if log.refused_events() > 0 {
                return Err(format!("r{i} refused {} events", log.refused_events()));
            }
            if log.state() != first.state() || log.state().1 != total {
                return Err(format!(
                    "r{i} ends in {:?}, r0 in {:?}, {total} events",
                    log.state(),
                    first.state()
                ));
            }
            let recovered = replica_from(&self.disks[i], self.current_id(i), self.setup());
            if recovered.log().state() != log.state() {
                return Err(format!(
                    "r{i} is in {:?}, a recovery from its journal gives {:?}",
                    log.state(),
                    recovered.log().state()
                ));
            }
            if let Some(twice) = self.disks[i].note().journaled_twice.first() {
                return Err(format!("r{i} {twice}"));
            }
        }
        Ok(())
    }

    fn counted(&mut self) -> Counts {
        let disks = self.disks.iter().map(|disk| disk.note());
        let (saved, served, deletions) = disks.fold((0, 0, 0), |(saved, served, deleted), note| {
            (
                saved + note.snapshots_saved,
                served + note.served_from_journal,
                deleted + note.deletions,
            )
        });
        Counts {
            snapshots_saved: saved,
            started_from_snapshot: self.counts.started_from_snapshot,
            served_from_journal: served,
            history_loads: self.counts.history_loads
                + self
                    .replicas
                    .iter()
                    .map(|core| core.history_reloads())
                    .sum::<u64>(),
            lost_in_crashes: self.lost_in_crashes,
            deletions,
            wipes: self.counts.wipes,
            snapshots_sent: self.counts.snapshots_sent,
            held_while_catching_up: self.counts.held_while_catching_up,
        }
    }
}

#[test]
fn replicas_of_an_entity_converge_through_loss_duplication_crashes_and_partitions() {
    let seeds: u64 = std::env::var("REPLICATION_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000);
    let mut crashes = 0;
    let mut counts = Counts::default();
    // To run one failing seed alone: REPLICATION_FIRST_SEED=n REPLICATION_SEEDS=n+1.
    let first: u64 = std::env::var("REPLICATION_FIRST_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    for seed in first..seeds {
        let mut sim = Sim::new(seed);
        let outcome = sim.run_to_end();
        crashes += sim.crashes;
        let seen = sim.counted();
        counts.snapshots_saved += seen.snapshots_saved;
        counts.started_from_snapshot += seen.started_from_snapshot;
        counts.served_from_journal += seen.served_from_journal;
        counts.history_loads += seen.history_loads;
        counts.lost_in_crashes += seen.lost_in_crashes;
        counts.deletions += seen.deletions;
        counts.wipes += seen.wipes;
        counts.snapshots_sent += seen.snapshots_sent;
        counts.held_while_catching_up += seen.held_while_catching_up;
        if let Err(failure) = outcome {
            panic!("seed {seed}: {failure}");
        }
    }
    let ran = seeds.saturating_sub(first);
    println!("{ran} seeds, {crashes} crashes, {counts:?}");
    assert!(crashes > ran as usize, "crashes are exercised: {crashes}");
    if ran >= 100 {
        assert!(
            counts.snapshots_saved > 0
                && counts.started_from_snapshot > 0
                && counts.served_from_journal > 0
                && counts.history_loads > 0
                && counts.lost_in_crashes > 0
                && counts.deletions > 0
                && counts.wipes > 0
                && counts.snapshots_sent > 0
                && counts.held_while_catching_up > 0,
            "every snapshot path runs, and crashes lose unflushed events: {counts:?}"
        );
    }
}

/// Under steady writes every flush saves a new snapshot, not yet durable
/// when the next tick comes: retention must go by the last durable one.
#[test]
fn retention_deletes_while_writes_go_on() {
    let disk = Disk::default();
    let log = ReplicatedLog::new(replica_id(0), Arithmetic, LastWriterWins);
    let snapshots = Snapshots::every(10).with_retention(Retention::DeleteCovered);
    let mut core = EntityCore::recover(ENTITY, log, disk.clone(), Some(snapshots), 1 << 20)
        .expect("the journal reads")
        .with_replicas([NAMES[0]]);
    let mut io = Outbox::default();
    for _ in 0..20 {
        for _ in 0..10 {
            core.command(&mut io, vec![Op::Add(1)], 0, |_| {})
                .expect("a command");
        }
        core.scheduled_flush(&mut io).expect("a flush");
        core.tick(&mut io).expect("a tick");
    }
    let kept = disk
        .journal
        .read_from::<Op>(ENTITY, 1)
        .expect("reads")
        .len();
    assert!(
        core.deleted_before().is_some() && kept <= 20,
        "{kept} events kept of 200"
    );
    assert_eq!(core.log().state(), &(200, 200));
}
