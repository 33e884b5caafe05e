//! Deterministic simulation of the Distributed Data protocol.
//!
//! Several [`ReplicatorCore`]s run against a virtual clock and a seeded network
//! that loses, duplicates, delays (and so reorders) messages, cuts and
//! blackholes links, and crashes and restarts nodes with a new incarnation.
//! Every message goes through the real codec. Clients update, delete and read
//! at random, at `Local` and `Majority` consistency; updates travel as deltas
//! (operations numbered per key and sender), whole states where a gap shows. Then the faults heal and
//! the run continues until every replica holds the same state, and the
//! properties are checked:
//!
//! * convergence: after healing, all replicas hold the same value for every key;
//! * nothing invented: the converged value is below the merge of all accepted
//!   updates, and equal to it in runs without crashes (a crash loses the writes
//!   that had not left the node, as in Akka);
//! * monotonic replicas: between crashes a replica's value only grows, and a
//!   deleted key never comes back;
//! * majority writes that succeeded are seen by majority reads whose answering
//!   set shares a replica with the write's that did not crash in between;
//! * no false timeouts: a majority write or read whose deadline falls long
//!   enough after the network healed (its longest resend wait and a round
//!   trip) succeeds, whatever it went through before;
//! * retirement: every restart leaves its node's earlier incarnations dead;
//!   after healing, each replica must have retired them, no counter or set
//!   may hold an entry of one, and the values must still be what the
//!   accepted updates wrote;
//! * expiry (every odd seed, with clocks skewed by up to 20 ms): keys
//!   `tmp-*` expire 300 ms after their last use (a write, a delete, a
//!   read), are written again in new lives and deleted, under all the faults
//!   above; after healing, once nobody uses them, they leave every replica
//!   and stay gone (a key that came back from a late copy would keep the
//!   run from converging), while the other keys keep every property above.
//!
//! `cargo test` runs 1,000 seeds. A failure names its seed; replay it with
//! `SIM_SEED=<seed> cargo test --test simulation`. Run more with
//! `SIM_SEEDS=100000 cargo test --release --test simulation`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use ractor_replicated::ddata::wire::Envelope;
use ractor_replicated::ddata::{
    CoreConfig, ErasedData, Expiry, Key, KeySelection, KeyState, Lookup, Output, ReadConsistency,
    ReplicatorCore, Timer, TypeRegistry, WriteConsistency,
};
use ractor_replicated::{codec, Error, GCounter, ORSet, ReplicaId};
use test_support::Rng;

const DEFAULT_SEEDS: u64 = 1_000;

#[test]
fn replicas_converge_under_loss_partitions_and_crashes() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SIM_SEED must be a number")],
        Err(_) => {
            let count = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|count| count.parse().ok())
                .unwrap_or(DEFAULT_SEEDS);
            (0..count).collect()
        }
    };
    let types = Arc::new(TypeRegistry::with_builtins());
    let mut stats = RunStats::default();
    for seed in seeds {
        match Sim::new(seed, types.clone()).run() {
            Ok(run) => stats.add(&run),
            Err(failure) => panic!(
                "simulation seed {seed} failed: {failure}\n\
                 replay with: SIM_SEED={seed} cargo test --test simulation"
            ),
        }
    }
    // The faults must actually have happened, or the properties prove little.
    assert!(stats.runs > 0);
    if stats.runs >= 100 {
        assert!(stats.crashes > 0, "no run crashed a node: {stats:?}");
        assert!(stats.partitions > 0, "no run partitioned: {stats:?}");
        assert!(stats.lost > 0, "no run lost a message: {stats:?}");
        assert!(
            stats.majority_checks > 0,
            "no majority read was checked: {stats:?}"
        );
        assert!(stats.deletes > 0, "no run deleted a key: {stats:?}");
        assert!(
            stats.late_requests > 0,
            "no request straddled the final heal: {stats:?}"
        );
        assert!(stats.deltas_applied > 0, "no delta was applied: {stats:?}");
        assert!(
            stats.missing_deltas > 0,
            "no delta arrived after a gap: {stats:?}"
        );
        assert!(stats.expired > 0, "no key expired: {stats:?}");
        assert!(
            stats.retirements > 0,
            "no dead incarnation was retired: {stats:?}"
        );
        assert!(
            stats.expired_arrivals > 0,
            "no expired state arrived: {stats:?}"
        );
    }
    eprintln!("simulation: {stats:?}");
}

#[derive(Debug, Default)]
struct RunStats {
    runs: u64,
    crashes: u64,
    partitions: u64,
    lost: u64,
    delivered: u64,
    majority_checks: u64,
    deletes: u64,
    /// Majority requests that straddled the final heal and were checked for
    /// a false timeout.
    late_requests: u64,
    /// Deltas of operations applied, and those held back for a gap.
    deltas_applied: u64,
    missing_deltas: u64,
    /// Keys and tombstones removed by expiry (or for a new life), and
    /// states ignored because they arrived expired, on the replicas up at
    /// the end.
    expired: u64,
    expired_arrivals: u64,
    /// Rounds that retired a restarted node's dead incarnations, on the
    /// replicas up at the end.
    retirements: u64,
}

impl RunStats {
    fn add(&mut self, run: &RunStats) {
        self.runs += 1;
        self.crashes += run.crashes;
        self.partitions += run.partitions;
        self.lost += run.lost;
        self.delivered += run.delivered;
        self.majority_checks += run.majority_checks;
        self.deletes += run.deletes;
        self.late_requests += run.late_requests;
        self.deltas_applied += run.deltas_applied;
        self.missing_deltas += run.missing_deltas;
        self.expired += run.expired;
        self.expired_arrivals += run.expired_arrivals;
        self.retirements += run.retirements;
    }
}

/// Virtual time in microseconds.
type Micros = u64;

fn micros(duration: Duration) -> Micros {
    duration.as_micros() as Micros
}

enum Event {
    Deliver {
        to: usize,
        bytes: Vec<u8>,
    },
    Fire {
        node: usize,
        incarnation: u64,
        timer: Timer,
    },
    Client,
    Fault,
    Heal,
}

#[derive(Clone, Copy, PartialEq)]
enum LinkFault {
    /// Both sides notice the cut at once (a TCP reset).
    Cut,
    /// Messages vanish while both sides still believe the link is up.
    Blackhole,
}

struct Node {
    name: String,
    core: Option<ReplicatorCore>,
    incarnation: u64,
    /// The peers this core was told are up.
    told_up: BTreeSet<usize>,
    /// Last observed state per key, to check that it only grows.
    seen: BTreeMap<String, KeyState>,
    /// Virtual times at which this node crashed.
    crashed_at: Vec<Micros>,
}

/// What the client that issued a request is waiting for.
enum Pending {
    MajorityAdd {
        element: u64,
        started: Micros,
        deadline: Micros,
    },
    MajorityRead {
        started: Micros,
        deadline: Micros,
    },
    Other,
}

struct CompletedWrite {
    element: u64,
    started: Micros,
    finished: Micros,
    holders: Vec<String>,
}

struct Sim {
    seed: u64,
    rng: Rng,
    types: Arc<TypeRegistry>,
    config: CoreConfig,
    now: Micros,
    queue: BinaryHeap<Reverse<(Micros, u64, usize)>>,
    events: Vec<Option<Event>>,
    sequence: u64,
    nodes: Vec<Node>,
    /// Partition: nodes in different groups cannot talk.
    group: Vec<u8>,
    fault: LinkFault,
    /// Each node's wall clock runs ahead of virtual time by this many
    /// milliseconds, in the seeds with expiry (`None` in the others).
    skew: Option<Vec<u64>>,
    loss: f64,
    duplication: f64,
    max_delay: Micros,
    healed: bool,
    chaos_until: Micros,
    next_request: u64,
    next_element: u64,
    pending: BTreeMap<(usize, u64, u64), Pending>,
    completed_majority_writes: Vec<CompletedWrite>,
    /// The merge of every state an accepted local update produced.
    reference: BTreeMap<String, Box<dyn ErasedData>>,
    deleted: BTreeSet<String>,
    increments: BTreeMap<String, u128>,
    violations: Vec<String>,
    stats: RunStats,
}

fn counter(i: u64) -> Key<GCounter> {
    Key::new(format!("counter-{i}"))
}
fn set(i: u64) -> Key<ORSet<u64>> {
    Key::new(format!("set-{i}"))
}
fn doomed(i: u64) -> Key<ORSet<u64>> {
    Key::new(format!("doomed-{i}"))
}
fn majority_key() -> Key<ORSet<u64>> {
    Key::new("majority")
}
/// Keys that expire, in the seeds with expiry.
fn expiring(i: u64) -> Key<ORSet<u64>> {
    Key::new(format!("{EXPIRING}{i}"))
}
const EXPIRING: &str = "tmp-";
const TIME_TO_LIVE: Duration = Duration::from_millis(300);
/// Where the virtual wall clocks start, in milliseconds.
const EPOCH_MILLIS: u64 = 1_700_000_000_000;

impl Sim {
    fn new(seed: u64, types: Arc<TypeRegistry>) -> Self {
        let mut rng = Rng(seed ^ 0x5EED_5EED_5EED_5EED);
        let node_count = 3 + rng.below(3) as usize;
        let config = CoreConfig {
            gossip_interval: Duration::from_millis(50),
            push_window: Duration::from_millis(rng.below(3)),
            notify_interval: Duration::from_millis(5),
            // Small messages force digests and entries to be split.
            max_message_bytes: 1_100 + rng.below(2_000) as usize,
            resend_interval: Duration::from_millis(rng.between(10, 60)),
            // Every node is listed from the start (`boot`).
            retire_incarnations: true,
            ..CoreConfig::default()
        };
        let loss = [0.0, 0.02, 0.1, 0.3][rng.below(4) as usize];
        let duplication = [0.0, 0.05, 0.2][rng.below(3) as usize];
        let max_delay = micros(Duration::from_millis(rng.between(1, 30)));
        // Drawn apart, so that the seeds without expiry keep their runs.
        let skew = (seed % 2 == 1).then(|| {
            let mut clocks = Rng(seed ^ 0xC10C_C10C);
            (0..node_count).map(|_| clocks.below(20)).collect()
        });
        let config = CoreConfig {
            expiry: match skew {
                Some(_) => Expiry::never().keys(KeySelection::prefixes([EXPIRING]), TIME_TO_LIVE),
                None => Expiry::never(),
            },
            ..config
        };
        let nodes = (0..node_count)
            .map(|i| Node {
                name: format!("node-{i}"),
                core: None,
                incarnation: 0,
                told_up: BTreeSet::new(),
                seen: BTreeMap::new(),
                crashed_at: Vec::new(),
            })
            .collect();
        Self {
            seed,
            rng,
            types,
            config,
            now: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            sequence: 0,
            nodes,
            group: vec![0; node_count],
            fault: LinkFault::Cut,
            skew,
            loss,
            duplication,
            max_delay,
            healed: false,
            chaos_until: micros(Duration::from_millis(1_500)),
            next_request: 0,
            next_element: 0,
            pending: BTreeMap::new(),
            completed_majority_writes: Vec::new(),
            reference: BTreeMap::new(),
            deleted: BTreeSet::new(),
            increments: BTreeMap::new(),
            violations: Vec::new(),
            stats: RunStats::default(),
        }
    }

    fn at(&mut self, delay: Micros, event: Event) {
        self.sequence += 1;
        self.events.push(Some(event));
        let index = self.events.len() - 1;
        self.queue
            .push(Reverse((self.now + delay, self.sequence, index)));
    }

    fn run(mut self) -> Result<RunStats, String> {
        for node in 0..self.nodes.len() {
            self.boot(node);
        }
        self.update_links();
        let clients = 20 + self.rng.below(60);
        for _ in 0..clients {
            let when = self.rng.below(self.chaos_until);
            self.at(when, Event::Client);
        }
        let faults = self.rng.below(6);
        for _ in 0..faults {
            let when = self.rng.below(self.chaos_until);
            self.at(when, Event::Fault);
        }
        let chaos_until = self.chaos_until;
        self.at(chaos_until, Event::Heal);

        let deadline = self.chaos_until + micros(Duration::from_secs(60));
        let check_every = micros(Duration::from_millis(20));
        let mut next_check = self.chaos_until;
        while let Some(Reverse((time, _, index))) = self.queue.pop() {
            self.now = time;
            self.advance_clocks();
            if let Some(event) = self.events[index].take() {
                self.handle(event);
            }
            if !self.violations.is_empty() {
                return Err(self.violations.join("; "));
            }
            if self.healed && self.now >= next_check {
                next_check = self.now + check_every;
                if self.converged() && self.pending.is_empty() {
                    self.check_final()?;
                    for node in 0..self.nodes.len() {
                        self.count_deltas(node);
                    }
                    return Ok(self.stats);
                }
            }
            if self.now > deadline {
                return Err(format!(
                    "no convergence {} s after healing: {}",
                    (deadline - self.chaos_until) / 1_000_000,
                    self.divergence()
                ));
            }
        }
        Err("the event queue ran dry".into())
    }

    /// Tells each core its wall clock (seeds with expiry only).
    fn advance_clocks(&mut self) {
        let Some(skew) = &self.skew else {
            return;
        };
        let millis = EPOCH_MILLIS + self.now / 1_000;
        for (node, skew) in self.nodes.iter_mut().zip(skew) {
            if let Some(core) = node.core.as_mut() {
                core.advance_clock(millis + skew);
            }
        }
    }

    fn boot(&mut self, node: usize) {
        self.nodes[node].incarnation += 1;
        let n = &self.nodes[node];
        let replica = ReplicaId::new(n.name.clone(), n.incarnation);
        let core_seed = self
            .seed
            .wrapping_mul(31)
            .wrapping_add(node as u64 * 1_000 + n.incarnation);
        let mut core = ReplicatorCore::new(
            n.name.clone(),
            replica,
            self.types.clone(),
            self.config.clone(),
            core_seed,
        );
        let mut outputs = core.start();
        // A node knows the whole membership from its configuration, reachable
        // or not, so a restart inside a partition cannot shrink its majorities.
        for (i, other) in self.nodes.iter().enumerate() {
            if i != node {
                outputs.extend(core.peer_down(&other.name));
            }
        }
        let n = &mut self.nodes[node];
        n.core = Some(core);
        n.told_up.clear();
        n.seen.clear();
        self.advance_clocks();
        self.run_outputs(node, outputs);
    }

    fn count_deltas(&mut self, node: usize) {
        if let Some(core) = &self.nodes[node].core {
            let stats = core.stats();
            self.stats.deltas_applied += stats.deltas_applied;
            self.stats.missing_deltas += stats.missing_deltas;
            self.stats.expired += stats.expired;
            self.stats.expired_arrivals += stats.expired_arrivals;
            self.stats.retirements += stats.retirements;
        }
    }

    fn alive(&self, node: usize) -> bool {
        self.nodes[node].core.is_some()
    }

    fn link_up(&self, a: usize, b: usize) -> bool {
        self.alive(a)
            && self.alive(b)
            && (self.group[a] == self.group[b] || self.fault == LinkFault::Blackhole)
    }

    fn can_deliver(&self, from: usize, to: usize) -> bool {
        self.alive(from) && self.alive(to) && self.group[from] == self.group[to]
    }

    /// Tells every core which peers came up or went down since it was last told.
    fn update_links(&mut self) {
        let count = self.nodes.len();
        for a in 0..count {
            if !self.alive(a) {
                continue;
            }
            for b in 0..count {
                if a == b {
                    continue;
                }
                let up = self.link_up(a, b);
                let told = self.nodes[a].told_up.contains(&b);
                if up == told {
                    continue;
                }
                let peer = self.nodes[b].name.clone();
                let core = self.nodes[a].core.as_mut().expect("alive");
                let outputs = if up {
                    core.peer_up(&peer)
                } else {
                    core.peer_down(&peer)
                };
                if up {
                    self.nodes[a].told_up.insert(b);
                } else {
                    self.nodes[a].told_up.remove(&b);
                }
                self.run_outputs(a, outputs);
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { to, bytes } => self.deliver(to, bytes),
            Event::Fire {
                node,
                incarnation,
                timer,
            } => {
                if self.nodes[node].incarnation != incarnation || !self.alive(node) {
                    return;
                }
                let core = self.nodes[node].core.as_mut().expect("alive");
                let outputs = core.handle_timer(timer);
                self.run_outputs(node, outputs);
                self.check_monotonic(node);
            }
            Event::Client => self.client_operation(),
            Event::Fault => self.inject_fault(),
            Event::Heal => self.heal(),
        }
    }

    fn deliver(&mut self, to: usize, bytes: Vec<u8>) {
        if !self.alive(to) {
            return;
        }
        let outputs = match codec::decode::<Envelope>(&bytes) {
            Ok(envelope) => {
                let from = self.nodes.iter().position(|n| n.name == envelope.from);
                if from.is_some_and(|from| !self.can_deliver(from, to)) {
                    self.stats.lost += 1;
                    return;
                }
                self.stats.delivered += 1;
                let core = self.nodes[to].core.as_mut().expect("alive");
                core.handle_message(&envelope.from, envelope.message)
            }
            Err(_) => {
                let core = self.nodes[to].core.as_mut().expect("alive");
                core.record_undecodable_message();
                Vec::new()
            }
        };
        self.run_outputs(to, outputs);
        self.check_monotonic(to);
    }

    fn run_outputs(&mut self, node: usize, outputs: Vec<Output>) {
        let incarnation = self.nodes[node].incarnation;
        for output in outputs {
            match output {
                Output::Send { to, message } => {
                    let Some(target) = self.nodes.iter().position(|n| n.name == to) else {
                        self.violations.push(format!("send to unknown node {to}"));
                        continue;
                    };
                    let envelope = Envelope {
                        from: self.nodes[node].name.clone(),
                        message,
                    };
                    let bytes = codec::encode(&envelope).expect("messages encode");
                    if bytes.len() > self.config.max_message_bytes {
                        self.violations.push(format!(
                            "a {}-byte message exceeds the {}-byte budget",
                            bytes.len(),
                            self.config.max_message_bytes
                        ));
                    }
                    self.transmit(target, bytes);
                }
                Output::Schedule { timer, after } => {
                    self.at(
                        micros(after),
                        Event::Fire {
                            node,
                            incarnation,
                            timer,
                        },
                    );
                }
                Output::WriteDone { request, result } => {
                    self.write_done(node, incarnation, request, result)
                }
                Output::ReadDone { request, result } => {
                    self.read_done(node, incarnation, request, result)
                }
                Output::Notify { .. } | Output::Persist { .. } => {}
                other => self.violations.push(format!("unexpected output {other:?}")),
            }
        }
    }

    fn transmit(&mut self, to: usize, bytes: Vec<u8>) {
        if !self.healed && self.rng.chance(self.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if !self.healed && self.rng.chance(self.duplication) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.between(50, self.max_delay);
            self.at(
                delay,
                Event::Deliver {
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
        if !self.healed && self.rng.chance(0.01) {
            // Garbage on the wire: must be rejected and change nothing.
            let mut garbage: Vec<u8> = (0..self.rng.below(64))
                .map(|_| self.rng.next_u64() as u8)
                .collect();
            garbage.insert(0, codec::WIRE_VERSION);
            if codec::decode::<Envelope>(&garbage).is_err() {
                self.at(1, Event::Deliver { to, bytes: garbage });
            }
        }
    }

    fn inject_fault(&mut self) {
        let count = self.nodes.len();
        match self.rng.below(3) {
            0 | 1 => {
                self.stats.partitions += 1;
                self.fault = if self.rng.chance(0.5) {
                    LinkFault::Cut
                } else {
                    LinkFault::Blackhole
                };
                for group in self.group.iter_mut() {
                    *group = 0;
                }
                let isolated = 1 + self.rng.below(count as u64 / 2) as usize;
                for _ in 0..isolated {
                    let node = self.rng.below(count as u64) as usize;
                    self.group[node] = 1;
                }
                self.update_links();
                let heal_after = self.rng.between(50_000, 600_000);
                self.at(heal_after, Event::Heal);
            }
            _ => {
                let node = self.rng.below(count as u64) as usize;
                if self.alive(node) {
                    self.stats.crashes += 1;
                    self.count_deltas(node);
                    self.nodes[node].core = None;
                    self.nodes[node].crashed_at.push(self.now);
                    self.pending.retain(|(n, _, _), _| *n != node);
                    self.update_links();
                    let restart_after = self.rng.between(10_000, 400_000);
                    self.at(restart_after, Event::Heal);
                }
            }
        }
    }

    /// Ends partitions and restarts crashed nodes; at the end of the chaos
    /// phase it also stops loss and duplication for good.
    fn heal(&mut self) {
        if self.now >= self.chaos_until {
            self.healed = true;
        }
        for group in self.group.iter_mut() {
            *group = 0;
        }
        for node in 0..self.nodes.len() {
            if !self.alive(node) {
                self.boot(node);
            }
        }
        self.update_links();
    }

    fn client_operation(&mut self) {
        let alive: Vec<usize> = (0..self.nodes.len()).filter(|n| self.alive(*n)).collect();
        if alive.is_empty() {
            return;
        }
        let node = alive[self.rng.below(alive.len() as u64) as usize];
        let incarnation = self.nodes[node].incarnation;
        self.next_request += 1;
        let request = self.next_request;
        if self.skew.is_some() && self.rng.chance(0.3) {
            self.expiring_operation(node, request);
            return;
        }
        let timeout = Duration::from_millis([200, 1_000][self.rng.below(2) as usize]);
        let deadline = self.now + micros(timeout);
        let roll = self.rng.below(100);
        let core = self.nodes[node].core.as_mut().expect("alive");
        let (outcome, pending, key_name) = match roll {
            0..=29 => {
                let key = counter(self.rng.below(2));
                let result = core.update(request, &key, WriteConsistency::Local, |c, me| {
                    c.apply(c.increment(me, 1))
                });
                if result.is_ok() {
                    *self.increments.entry(key.name().to_string()).or_default() += 1;
                }
                (result, Pending::Other, key.name().to_string())
            }
            30..=54 => {
                self.next_element += 1;
                let element = self.next_element;
                let key = set(self.rng.below(2));
                let result = core.update(request, &key, WriteConsistency::Local, |s, me| {
                    s.apply(s.add(me, element))
                });
                (result, Pending::Other, key.name().to_string())
            }
            55..=66 => {
                let key = set(self.rng.below(2));
                let pick = self.rng.next_u64();
                let result = core.update(request, &key, WriteConsistency::Local, |s, _| {
                    if !s.is_empty() {
                        let victim = *s.iter().nth(pick as usize % s.len()).expect("in range");
                        s.apply(s.remove(&victim));
                    }
                });
                (result, Pending::Other, key.name().to_string())
            }
            67..=76 => {
                self.next_element += 1;
                let element = self.next_element;
                let key = majority_key();
                let result = core.update(
                    request,
                    &key,
                    WriteConsistency::majority(timeout),
                    |s, me| s.apply(s.add(me, element)),
                );
                let started = self.now;
                (
                    result,
                    Pending::MajorityAdd {
                        element,
                        started,
                        deadline,
                    },
                    key.name().to_string(),
                )
            }
            77..=86 => {
                let key = majority_key();
                let result = core.read(request, &key, ReadConsistency::majority(timeout));
                let started = self.now;
                (
                    result,
                    Pending::MajorityRead { started, deadline },
                    key.name().to_string(),
                )
            }
            87..=94 => {
                self.next_element += 1;
                let element = self.next_element;
                let key = doomed(self.rng.below(2));
                let result = core.update(request, &key, WriteConsistency::Local, |s, me| {
                    s.apply(s.add(me, element))
                });
                match result {
                    Err(Error::Deleted { .. }) => return,
                    other => (other, Pending::Other, key.name().to_string()),
                }
            }
            _ => {
                let key = doomed(self.rng.below(2));
                let level = if self.rng.chance(0.5) {
                    WriteConsistency::Local
                } else {
                    WriteConsistency::majority(timeout)
                };
                match core.delete(request, &key, level) {
                    Err(Error::Deleted { .. }) => return,
                    Ok(outputs) => {
                        self.stats.deletes += 1;
                        self.deleted.insert(key.name().to_string());
                        (Ok(outputs), Pending::Other, key.name().to_string())
                    }
                    Err(err) => (Err(err), Pending::Other, key.name().to_string()),
                }
            }
        };
        let outputs = match outcome {
            Ok(outputs) => outputs,
            Err(err) => {
                self.violations.push(format!(
                    "{} refused an operation on {key_name}: {err}",
                    self.nodes[node].name
                ));
                return;
            }
        };
        if roll < 77 || (87..=94).contains(&roll) {
            self.record_accepted(node, &key_name);
        }
        self.pending.insert((node, incarnation, request), pending);
        self.run_outputs(node, outputs);
        self.check_monotonic(node);
    }

    /// A local add, read or delete of a key that expires: each a use.
    fn expiring_operation(&mut self, node: usize, request: u64) {
        let incarnation = self.nodes[node].incarnation;
        let key = expiring(self.rng.below(2));
        let roll = self.rng.below(100);
        self.next_element += 1;
        let element = self.next_element;
        let core = self.nodes[node].core.as_mut().expect("alive");
        let outcome = match roll {
            0..=59 => core.update(request, &key, WriteConsistency::Local, |s, me| {
                s.apply(s.add(me, element))
            }),
            60..=84 => core.read(request, &key, ReadConsistency::Local),
            _ => core.delete(request, &key, WriteConsistency::Local),
        };
        let outputs = match outcome {
            Ok(outputs) => outputs,
            Err(Error::Deleted { .. }) => return,
            Err(err) => {
                self.violations.push(format!(
                    "{} refused an operation on {}: {err}",
                    self.nodes[node].name,
                    key.name()
                ));
                return;
            }
        };
        self.pending
            .insert((node, incarnation, request), Pending::Other);
        self.run_outputs(node, outputs);
    }

    /// Folds the state an accepted local update produced into the reference.
    fn record_accepted(&mut self, node: usize, key: &str) {
        let core = self.nodes[node].core.as_ref().expect("alive");
        if let Lookup::Live { value, .. } = core.lookup(key) {
            match self.reference.get_mut(key) {
                Some(reference) => {
                    reference.merge_erased(value);
                }
                None => {
                    self.reference.insert(key.to_string(), value.clone_erased());
                }
            }
        }
    }

    fn write_done(
        &mut self,
        node: usize,
        incarnation: u64,
        request: u64,
        result: Result<Vec<String>, Error>,
    ) {
        let Some(pending) = self.pending.remove(&(node, incarnation, request)) else {
            self.violations
                .push(format!("a write finished twice or unasked: {request}"));
            return;
        };
        if let Pending::MajorityAdd { deadline, .. } = pending {
            self.check_no_false_timeout("write", deadline, &result);
        }
        if let (
            Pending::MajorityAdd {
                element, started, ..
            },
            Ok(holders),
        ) = (pending, result)
        {
            let members = self.nodes.len();
            if holders.len() < members / 2 + 1 {
                self.violations.push(format!(
                    "majority write held by {holders:?} of {members} nodes"
                ));
            }
            self.completed_majority_writes.push(CompletedWrite {
                element,
                started,
                finished: self.now,
                holders,
            });
        }
    }

    fn read_done(
        &mut self,
        node: usize,
        incarnation: u64,
        request: u64,
        result: Result<(KeyState, Vec<String>), Error>,
    ) {
        let Some(pending) = self.pending.remove(&(node, incarnation, request)) else {
            self.violations
                .push(format!("a read finished twice or unasked: {request}"));
            return;
        };
        let Pending::MajorityRead { started, deadline } = pending else {
            return;
        };
        self.check_no_false_timeout("read", deadline, &result);
        let Ok((snapshot, answered)) = result else {
            return;
        };
        let members = self.nodes.len();
        if answered.len() < members / 2 + 1 {
            self.violations.push(format!(
                "majority read answered by {answered:?} of {members} nodes"
            ));
        }
        let value = match snapshot.into_typed::<ORSet<u64>>(majority_key().name()) {
            Ok(value) => value.unwrap_or_default(),
            Err(err) => {
                self.violations
                    .push(format!("majority read failed to type: {err}"));
                return;
            }
        };
        for write in &self.completed_majority_writes {
            if write.finished > started {
                continue;
            }
            let witness = write.holders.iter().find(|holder| {
                answered.contains(holder)
                    && self
                        .nodes
                        .iter()
                        .find(|n| &&n.name == holder)
                        .is_some_and(|n| {
                            n.crashed_at
                                .iter()
                                .all(|&t| t < write.started || t > self.now)
                        })
            });
            if let Some(witness) = witness {
                self.stats.majority_checks += 1;
                if !value.contains(&write.element) {
                    self.violations.push(format!(
                        "majority read on {} at {} µs misses element {} written with majority \
                         (held by {:?}, {witness} answered the read too)",
                        self.nodes[node].name, self.now, write.element, write.holders
                    ));
                }
            }
        }
    }

    /// A request whose deadline falls its longest resend wait (8 intervals)
    /// and a round trip after the final heal had a healthy network long
    /// enough to succeed.
    fn check_no_false_timeout<T>(
        &mut self,
        what: &str,
        deadline: Micros,
        result: &Result<T, Error>,
    ) {
        let settled = self.chaos_until
            + 8 * micros(self.config.resend_interval)
            + 2 * self.max_delay
            + micros(Duration::from_millis(1));
        if deadline >= settled {
            if let Err(err) = result {
                self.violations.push(format!(
                    "a majority {what} with its deadline at {deadline} µs failed although the \
                     network healed at {} µs: {err}",
                    self.chaos_until
                ));
            } else {
                self.stats.late_requests += 1;
            }
        }
    }

    /// Between crashes, a replica's state only grows, and a tombstone stays.
    fn check_monotonic(&mut self, node: usize) {
        let Some(core) = self.nodes[node].core.as_ref() else {
            return;
        };
        let keys: Vec<String> = core.keys().map(str::to_string).collect();
        let mut violations = Vec::new();
        let mut updates = Vec::new();
        // Keys that expire come and go, and begin new lives.
        for key in keys.into_iter().filter(|key| !key.starts_with(EXPIRING)) {
            let now = core.lookup(&key);
            match (self.nodes[node].seen.get(&key), now) {
                (Some(KeyState::Deleted), Lookup::Live { .. }) => {
                    violations.push(format!(
                        "deleted key {key} came back on {}",
                        self.nodes[node].name
                    ));
                }
                (Some(KeyState::Live { value: before, .. }), Lookup::Live { value, .. }) => {
                    let mut grown = value.clone_erased();
                    if grown.merge_erased(before.as_ref()) != Some(false) {
                        violations.push(format!(
                            "{} on {} shrank from {before:?} to {value:?}",
                            key, self.nodes[node].name
                        ));
                    }
                    if !before.eq_erased(value) {
                        updates.push((key, now.to_state()));
                    }
                }
                (Some(KeyState::Deleted), _) => {}
                _ => updates.push((key, now.to_state())),
            }
        }
        self.violations.extend(violations);
        for (key, snapshot) in updates {
            self.nodes[node].seen.insert(key, snapshot);
        }
    }

    fn all_keys(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .flat_map(|core| core.keys().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }

    fn converged(&self) -> bool {
        self.divergence().is_empty()
    }

    fn divergence(&self) -> String {
        let cores: Vec<&ReplicatorCore> =
            self.nodes.iter().filter_map(|n| n.core.as_ref()).collect();
        let mut differing = Vec::new();
        for key in self.all_keys() {
            let first = cores[0].lookup(&key);
            if cores[1..]
                .iter()
                .any(|core| !same(first, core.lookup(&key)))
            {
                differing.push(key);
            }
        }
        let mut divergence = if differing.is_empty() {
            String::new()
        } else {
            format!("keys differ between replicas: {differing:?}")
        };
        let retiring: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| {
                n.core
                    .as_ref()
                    .is_some_and(|core| core.stats().pending_retirements > 0)
            })
            .map(|n| n.name.as_str())
            .collect();
        if !retiring.is_empty() {
            divergence += &format!("; still retiring dead incarnations: {retiring:?}");
        }
        let unexpired: Vec<String> = self
            .all_keys()
            .into_iter()
            .filter(|key| key.starts_with(EXPIRING))
            .collect();
        if !unexpired.is_empty() {
            divergence += &format!("; keys that expire still held: {unexpired:?}");
        }
        divergence
    }

    /// No state holds an entry of a dead incarnation once the rounds are
    /// done: states do not grow with restarts.
    fn check_retired(&self, key: &str, value: &dyn ErasedData) -> Result<(), String> {
        let dead = |replica: &ReplicaId| {
            self.nodes
                .iter()
                .any(|n| n.name == replica.node() && replica.incarnation() < n.incarnation)
        };
        let entries: Vec<ReplicaId> =
            if let Some(counter) = value.as_any().downcast_ref::<GCounter>() {
                counter.counts().iter().map(|(r, _)| r.clone()).collect()
            } else if let Some(set) = value.as_any().downcast_ref::<ORSet<u64>>() {
                set.context()
                    .vector()
                    .iter()
                    .map(|(r, _)| r.clone())
                    .collect()
            } else {
                Vec::new()
            };
        match entries.iter().find(|replica| dead(replica)) {
            Some(replica) => Err(format!(
                "{key} still holds an entry of the dead incarnation {replica}: {value:?}"
            )),
            None => Ok(()),
        }
    }

    fn check_final(&self) -> Result<(), String> {
        let crash_free = self.stats.crashes == 0;
        let core = self.nodes[0]
            .core
            .as_ref()
            .expect("all nodes up after healing");
        for key in self.all_keys() {
            match core.lookup(&key) {
                Lookup::Absent => {}
                Lookup::Deleted => {
                    if !self.deleted.contains(&key) {
                        return Err(format!("{key} is deleted but nobody deleted it"));
                    }
                }
                Lookup::Live { value, .. } => {
                    if crash_free && self.deleted.contains(&key) {
                        return Err(format!("{key} was deleted but is live: {value:?}"));
                    }
                    let Some(reference) = self.reference.get(&key) else {
                        return Err(format!(
                            "{key} holds {value:?} though no update was accepted"
                        ));
                    };
                    self.check_retired(&key, value)?;
                    if invented(value, reference.as_ref()) {
                        return Err(format!(
                            "{key} converged to {value:?}, which holds more than every accepted update: {reference:?}"
                        ));
                    }
                    if crash_free && !reference.eq_erased(value) {
                        return Err(format!(
                            "{key} converged to {value:?}, not to the merge of all accepted updates {reference:?}"
                        ));
                    }
                }
            }
        }
        if crash_free {
            for (name, increments) in &self.increments {
                let key: Key<GCounter> = Key::new(name.clone());
                let value = core
                    .get(&key)
                    .map_err(|e| e.to_string())?
                    .map_or(0, GCounter::value);
                if value != *increments {
                    return Err(format!("{name} is {value} after {increments} increments"));
                }
            }
        }
        Ok(())
    }
}

/// Whether `value` holds anything no accepted update wrote (`reference`
/// merges them all). Checked on what the sim's types hold, not as states:
/// a retired state counts a dot lost with its crashed writer as seen, so
/// the two need not be ordered as states.
fn invented(value: &dyn ErasedData, reference: &dyn ErasedData) -> bool {
    if let (Some(value), Some(reference)) = (
        value.as_any().downcast_ref::<GCounter>(),
        reference.as_any().downcast_ref::<GCounter>(),
    ) {
        return value.value() > reference.value();
    }
    if let (Some(value), Some(reference)) = (
        value.as_any().downcast_ref::<ORSet<u64>>(),
        reference.as_any().downcast_ref::<ORSet<u64>>(),
    ) {
        // Every element's dot is an accepted add (a remove lost in a crash
        // may leave an element the reference removed).
        return value.iter().any(|member| {
            value
                .dots_of(member)
                .iter()
                .any(|dot| !reference.context().contains(dot))
        });
    }
    let mut joined = reference.clone_erased();
    joined.merge_erased(value) != Some(false)
}

fn same(a: Lookup<'_>, b: Lookup<'_>) -> bool {
    match (a, b) {
        (Lookup::Absent, Lookup::Absent) | (Lookup::Deleted, Lookup::Deleted) => true,
        (Lookup::Live { value: a, .. }, Lookup::Live { value: b, .. }) => a.eq_erased(b),
        _ => false,
    }
}
