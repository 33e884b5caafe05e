//! One ractor_replicated node as an OS process, driven line by line.
//!
//! `node --name N --port P [--seeds host:port,...] [--members a,b] [--cookie C]
//! [--gossip-ms MS] [--data DIR] [--snapshot-every N]` (`node --help` says
//! what each does).
//!
//! With `--data`, every key is durable (write-through) in a sled database in
//! DIR/ddata, and the ledger entity journals in DIR/journal; without it, the
//! ledger journals in memory under a fresh replica id per boot.
//!
//! It prints `ready` once its NodeServer and Replicator run, then reads one
//! command per line on stdin and answers each with one JSON line on stdout:
//! `{"ok": value}` or `{"err": "reason"}`. See `Command::run` for the commands.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use multi_node_tests::ledger::{
    now_micros, LagWatcher, Ledger, LedgerState, Recorded, LEDGER_ID, TALLY_ID,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_replicated::cluster::{ClusterConfig, ClusterNode};
use ractor_replicated::ddata::{
    Change, CoreConfig, DistributedData, Durability, Key, KeySelection, ReadConsistency,
    ReplicatorConfig, SledStore, WriteConsistency,
};
use ractor_replicated::persistence::{
    recover_from_journal, Entities, Entity, EntityRouter, Journal, LastWriterWins, MemoryJournal,
    ReplicatedEntity, ReplicatedLog, SledJournal,
};
use ractor_replicated::{GCounter, LWWRegister, ORMap, ORSet, OpBased, PNCounter, ReplicaId};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, Semaphore};

/// One ractor_replicated node as an OS process: it answers one command per
/// line of stdin with one JSON line on stdout.
#[derive(clap::Parser)]
struct Options {
    /// The node's name.
    #[arg(long)]
    name: String,
    /// The port it listens on, on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// The nodes it dials, as host:port, comma-separated.
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<String>,
    /// Every member's name, comma-separated (for retirement rounds).
    #[arg(long, value_delimiter = ',')]
    members: Vec<String>,
    /// The cluster's cookie.
    #[arg(long, default_value = "ractor_replicated")]
    cookie: String,
    /// The Replicator's gossip interval, in milliseconds.
    #[arg(long = "gossip-ms", value_name = "MS", default_value = "200", value_parser = milliseconds)]
    gossip: Duration,
    /// Where durable keys and journals live; in memory without it.
    #[arg(long)]
    data: Option<String>,
    /// Entities with a journal on disk snapshot every this many events (0:
    /// never).
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: usize,
}

fn milliseconds(value: &str) -> Result<Duration, std::num::ParseIntError> {
    value.parse().map(Duration::from_millis)
}

/// Records, for each new stamp in a watched set, how long ago (wall clock,
/// same machine) the writer added it. Stamps sort after every other element,
/// so the newest is the last, found without a pass over the set.
struct SetWatcher;

/// A set element carrying the time it was added; see [`SetWatcher`].
fn set_stamp(micros: u64) -> String {
    format!("t{micros:020}")
}

impl Actor for SetWatcher {
    type Msg = Change<ORSet<String>>;
    /// Where latencies go, and the newest stamp heard.
    type State = (mpsc::UnboundedSender<u64>, Arc<AtomicU64>);
    type Arguments = (mpsc::UnboundedSender<u64>, Arc<AtomicU64>);

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        arguments: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(arguments)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        change: Self::Msg,
        (sender, newest): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Change::Changed { value, .. } = change {
            let stamp = value
                .iter()
                .next_back()
                .and_then(|last| last.strip_prefix('t'))
                .and_then(|micros| micros.parse::<u64>().ok());
            if let Some(stamp) = stamp.filter(|stamp| *stamp > newest.load(Ordering::Relaxed)) {
                newest.store(stamp, Ordering::Relaxed);
                let _ = sender.send(now_micros().saturating_sub(stamp));
            }
        }
        Ok(())
    }
}

/// Records, for each change of a watched timestamp register, how long ago
/// (wall clock, same machine) the writer stamped it.
struct Watcher;

impl Actor for Watcher {
    type Msg = Change<LWWRegister<u64>>;
    type State = mpsc::UnboundedSender<u64>;
    type Arguments = mpsc::UnboundedSender<u64>;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        sender: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(sender)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        change: Self::Msg,
        sender: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Change::Changed { value, .. } = change {
            if let Some(stamp) = value.value() {
                let _ = sender.send(now_micros().saturating_sub(*stamp));
            }
        }
        Ok(())
    }
}

struct Node {
    name: String,
    dd: DistributedData,
    latencies: mpsc::UnboundedReceiver<u64>,
    latency_sender: mpsc::UnboundedSender<u64>,
    /// The newest stamp a set watcher heard.
    newest_stamp: Arc<AtomicU64>,
    ledger: Entity<Ledger>,
    tally: Entity<Ledger>,
    /// Entries acknowledged so far by each background writer, by prefix.
    progress: Arc<Mutex<BTreeMap<String, u64>>>,
    lags: mpsc::UnboundedReceiver<u64>,
    lag_sender: mpsc::UnboundedSender<u64>,
    /// A reading handle on the sled journal, with `--data`.
    journal: Option<SledJournal>,
    cluster: Arc<ClusterNode>,
    /// Entities started by `entities-spawn`, with the library's defaults.
    many: Vec<Entity<Ledger>>,
    /// The router of `router-spawn`, and the journal it uses.
    routed: Option<Entities<Ledger>>,
    router_journal: EntityJournal,
}

fn arg<'a>(words: &'a [&str], index: usize) -> Result<&'a str, String> {
    words
        .get(index)
        .copied()
        .ok_or_else(|| format!("missing argument {index}"))
}

fn number<T: std::str::FromStr>(words: &[&str], index: usize) -> Result<T, String> {
    arg(words, index)?
        .parse()
        .map_err(|_| format!("argument {index} is not a number"))
}

/// Runs `record(entry, n)` with the entries `prefix-0` .. `prefix-<count - 1>`,
/// one after the other, noting under `prefix` in `progress` how many were
/// acknowledged; stops at the first failure.
async fn counted<F, Fut>(
    progress: Arc<Mutex<BTreeMap<String, u64>>>,
    prefix: String,
    count: u64,
    mut record: F,
) -> Result<(), ractor_replicated::Error>
where
    F: FnMut(String, u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), ractor_replicated::Error>>,
{
    for n in 0..count {
        record(format!("{prefix}-{n}"), n).await?;
        if let Ok(mut progress) = progress.lock() {
            progress.insert(prefix.clone(), n + 1);
        }
    }
    Ok(())
}

/// `err` and its sources, as one line for the JSON answer.
fn error(err: ractor_replicated::Error) -> String {
    ractor_replicated::error::Chain(&err).to_string()
}

/// The first words of the commands `Node::entity_command` runs.
const ENTITY_COMMANDS: [&str; 9] = [
    "ledger",
    "record",
    "progress",
    "entities-",
    "router-",
    "entity-",
    "tally",
    "watch-lag",
    "lags",
];

impl Node {
    async fn run(&mut self, line: &str) -> Result<Value, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let verb = arg(&words, 0)?;
        if ENTITY_COMMANDS.iter().any(|first| verb.starts_with(first)) {
            self.entity_command(verb, &words).await
        } else {
            self.data_command(verb, &words).await
        }
    }

    /// The commands on Distributed Data and the measurements around it.
    async fn data_command(&mut self, verb: &str, words: &[&str]) -> Result<Value, String> {
        let dd = &self.dd;
        let local = WriteConsistency::Local;
        let read = ReadConsistency::Local;
        match verb {
            "peers" => Ok(json!(dd.reachable_peers().await.map_err(error)?)),
            "replica" => Ok(json!(dd.replica_id().await.map_err(error)?.to_string())),
            "inc" => {
                let (key, by): (Key<GCounter>, u64) = (Key::new(arg(words, 1)?), number(words, 2)?);
                dd.update(&key, local, move |c, me| c.apply(c.increment(me, by)))
                    .await
                    .map_err(error)?;
                Ok(Value::Null)
            }
            "inc-many" => {
                let (key, times): (Key<GCounter>, u64) =
                    (Key::new(arg(words, 1)?), number(words, 2)?);
                for _ in 0..times {
                    dd.update(&key, local, |c, me| c.apply(c.increment(me, 1)))
                        .await
                        .map_err(error)?;
                }
                Ok(Value::Null)
            }
            "pn" => {
                let (key, by): (Key<PNCounter>, i64) =
                    (Key::new(arg(words, 1)?), number(words, 2)?);
                dd.update(&key, local, move |c, me| c.apply(c.change(me, by)))
                    .await
                    .map_err(error)?;
                Ok(Value::Null)
            }
            "add" | "remove" => {
                let key: Key<ORSet<String>> = Key::new(arg(words, 1)?);
                let element = arg(words, 2)?.to_string();
                let add = words[0] == "add";
                dd.update(&key, local, move |s, me| {
                    let op = if add {
                        s.add(me, element)
                    } else {
                        s.remove(&element)
                    };
                    s.apply(op);
                })
                .await
                .map_err(error)?;
                Ok(Value::Null)
            }
            "set" => {
                let key: Key<LWWRegister<String>> = Key::new(arg(words, 1)?);
                let value = arg(words, 2)?.to_string();
                dd.update(&key, local, move |r, me| r.apply(r.set(me, value)))
                    .await
                    .map_err(error)?;
                Ok(Value::Null)
            }
            "map" => {
                let key: Key<ORMap<String, PNCounter>> = Key::new(arg(words, 1)?);
                let field = arg(words, 2)?.to_string();
                let by: i64 = number(words, 3)?;
                dd.update(&key, local, move |m, me| {
                    m.apply(m.update(me, field, |c, writer| c.apply(c.change(writer, by))))
                })
                .await
                .map_err(error)?;
                Ok(Value::Null)
            }
            "get" => self.get(arg(words, 1)?, arg(words, 2)?).await,
            "write-background" => {
                let writer = BackgroundWriter::parse(&words[1..])?;
                tokio::spawn(writer.run(self.dd.clone()));
                Ok(Value::Null)
            }
            "connections" => {
                let stats = self.cluster.connection_stats();
                Ok(json!({
                    "dials": stats.dials,
                    "accepted": stats.accepted,
                    "refused": stats.refused,
                    "timed_out": stats.timed_out,
                    "authenticated": stats.authenticated,
                }))
            }
            "fill" => {
                let (prefix, count): (&str, u64) = (arg(words, 1)?, number(words, 2)?);
                for i in 0..count {
                    let key: Key<GCounter> = Key::new(format!("{prefix}-{i}"));
                    dd.update(&key, local, |c, me| c.apply(c.increment(me, 1)))
                        .await
                        .map_err(error)?;
                }
                Ok(Value::Null)
            }
            "sum" => {
                let (prefix, count): (&str, u64) = (arg(words, 1)?, number(words, 2)?);
                let (mut present, mut sum) = (0u64, 0u128);
                for i in 0..count {
                    let key: Key<GCounter> = Key::new(format!("{prefix}-{i}"));
                    if let Some(counter) = dd.get(&key, read).await.map_err(error)? {
                        present += 1;
                        sum += counter.value();
                    }
                }
                Ok(json!({ "present": present, "sum": sum as u64 }))
            }
            "data-bytes" => {
                // What the counters weigh on the wire: key and encoded state.
                let (prefix, count): (&str, u64) = (arg(words, 1)?, number(words, 2)?);
                let mut bytes = 0;
                for i in 0..count {
                    let name = format!("{prefix}-{i}");
                    let key: Key<GCounter> = Key::new(name.as_str());
                    if let Some(counter) = dd.get(&key, read).await.map_err(error)? {
                        let state = ractor_replicated::codec::encode(&counter).map_err(error)?;
                        bytes += name.len() + state.len();
                    }
                }
                Ok(json!(bytes))
            }
            "stats" => {
                let stats = dd.stats().await.map_err(error)?;
                Ok(json!({
                    "keys": stats.keys,
                    "messages_sent": stats.messages_sent,
                    "changing_merges": stats.changing_merges,
                    "deltas_applied": stats.deltas_applied,
                    "missing_deltas": stats.missing_deltas,
                    "states_sent": stats.states_sent,
                    "rejected_entries": stats.rejected_entries,
                }))
            }
            "inc-majority" => {
                let key: Key<GCounter> = Key::new(arg(words, 1)?);
                let timeout = Duration::from_millis(number(words, 2)?);
                let level = WriteConsistency::majority(timeout);
                dd.update(&key, level, |c, me| c.apply(c.increment(me, 1)))
                    .await
                    .map_err(error)?;
                Ok(Value::Null)
            }
            "get-majority" => {
                let key: Key<GCounter> = Key::new(arg(words, 1)?);
                let timeout = Duration::from_millis(number(words, 2)?);
                let value = dd
                    .get(&key, ReadConsistency::majority(timeout))
                    .await
                    .map_err(error)?;
                Ok(json!(value.map(|c| c.value() as u64)))
            }
            "set-fill" => {
                // Elements sort before every stamp; added a thousand per
                // update, so each push is one moderate delta.
                let key: Key<ORSet<String>> = Key::new(arg(words, 1)?);
                let count: u64 = number(words, 2)?;
                for start in (0..count).step_by(1_000) {
                    let end = (start + 1_000).min(count);
                    dd.update(&key, local, move |s, me| {
                        for i in start..end {
                            s.apply(s.add(me, format!("e{i:09}")));
                        }
                    })
                    .await
                    .map_err(error)?;
                }
                Ok(Value::Null)
            }
            "set-len" => {
                let key: Key<ORSet<String>> = Key::new(arg(words, 1)?);
                let set = dd.get(&key, read).await.map_err(error)?;
                Ok(json!(set.map_or(0, |s| s.len())))
            }
            "set-bytes" => {
                let key: Key<ORSet<String>> = Key::new(arg(words, 1)?);
                let set = dd.get(&key, read).await.map_err(error)?.unwrap_or_default();
                let bytes = ractor_replicated::codec::encode(&set).map_err(error)?;
                Ok(json!(bytes.len()))
            }
            "set-watch" => {
                let key: Key<ORSet<String>> = Key::new(arg(words, 1)?);
                let arguments = (self.latency_sender.clone(), self.newest_stamp.clone());
                let (watcher, _) = Actor::spawn(None, SetWatcher, arguments)
                    .await
                    .map_err(|e| e.to_string())?;
                dd.subscribe(&key, watcher).await.map_err(error)?;
                Ok(Value::Null)
            }
            "set-stamps" => {
                // Paced here, not by the caller, so the pace does not carry
                // the command round trip's jitter.
                let key: Key<ORSet<String>> = Key::new(arg(words, 1)?);
                let count: u64 = number(words, 2)?;
                let mut pace = tokio::time::interval(Duration::from_micros(number(words, 3)?));
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last = 0;
                for _ in 0..count {
                    pace.tick().await;
                    last = now_micros();
                    let element = set_stamp(last);
                    dd.update(&key, local, move |s, me| s.apply(s.add(me, element)))
                        .await
                        .map_err(error)?;
                }
                Ok(json!(last))
            }
            "set-newest" => Ok(json!(self.newest_stamp.load(Ordering::Relaxed))),
            "stamp" => {
                let key: Key<LWWRegister<u64>> = Key::new(arg(words, 1)?);
                let stamp = now_micros();
                dd.update(&key, local, move |r, me| r.apply(r.set(me, stamp)))
                    .await
                    .map_err(error)?;
                Ok(Value::Null)
            }
            "watch" => {
                let key: Key<LWWRegister<u64>> = Key::new(arg(words, 1)?);
                let (watcher, _) = Actor::spawn(None, Watcher, self.latency_sender.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                dd.subscribe(&key, watcher).await.map_err(error)?;
                Ok(Value::Null)
            }
            "latencies" => {
                let mut all = Vec::new();
                while let Ok(micros) = self.latencies.try_recv() {
                    all.push(micros);
                }
                Ok(json!(all))
            }
            "throughput" => self.throughput(arg(words, 1)?, number(words, 2)?).await,
            "rss" => Ok(resident_kib().map_or(Value::Null, |kib| json!(kib))),
            other => Err(format!("unknown command {other:?}")),
        }
    }

    /// The commands on the ledger, the tally and the entities of a router.
    async fn entity_command(&mut self, verb: &str, words: &[&str]) -> Result<Value, String> {
        match verb {
            "record" => {
                let (prefix, count): (&str, u64) = (arg(words, 1)?, number(words, 2)?);
                for n in 0..count {
                    self.ledger
                        .command(format!("{prefix}-{n}"))
                        .await
                        .map_err(error)?;
                }
                Ok(json!(count))
            }
            "record-background" => {
                let (prefix, count): (&str, u64) = (arg(words, 1)?, number(words, 2)?);
                let ledger = self.ledger.clone();
                tokio::spawn(counted(
                    self.progress.clone(),
                    prefix.to_string(),
                    count,
                    move |entry, _| {
                        let ledger = ledger.clone();
                        async move { ledger.command(entry).await.map(drop) }
                    },
                ));
                Ok(Value::Null)
            }
            "progress" => {
                let prefix = arg(words, 1)?;
                let progress = self.progress.lock().map_err(|e| e.to_string())?;
                Ok(json!(progress.get(prefix).copied().unwrap_or(0)))
            }
            "ledger" => Ok(json!(self.ledger.state().await.map_err(error)?.entries)),
            "ledger-stats" => entity_stats(&self.ledger).await,
            "entities-spawn" => self.entities_spawn(words).await,
            "router-spawn" => self.router_spawn(words).await,
            "router-peers" => {
                let routed = self.routed.as_ref().ok_or("no router")?;
                let stats = routed.stats("many-0").await.map_err(error)?;
                Ok(json!(stats.reachable_peers.len()))
            }
            "router-running" => {
                let routed = self.routed.as_ref().ok_or("no router")?;
                Ok(json!(routed.running().await.map_err(error)?))
            }
            "router-record" => {
                let routed = self.routed.as_ref().ok_or("no router")?;
                let id = format!("many-{}", number::<usize>(words, 1)?);
                routed
                    .command(id, arg(words, 2)?.to_string())
                    .await
                    .map_err(error)?;
                Ok(json!(null))
            }
            "router-record-many" => self.router_record_many(words).await,
            "router-ledger" => {
                let routed = self.routed.as_ref().ok_or("no router")?;
                let id = format!("many-{}", number::<usize>(words, 1)?);
                Ok(json!(routed.state(id).await.map_err(error)?.entries))
            }
            "router-events" => {
                let routed = self.routed.as_ref().ok_or("no router")?;
                let id = format!("many-{}", number::<usize>(words, 1)?);
                Ok(json!(routed.stats(id).await.map_err(error)?.events))
            }
            "entities-with-peers" => {
                // How many of the spawned entities reach `peers` replicas.
                let peers: usize = number(words, 1)?;
                let mut count = 0;
                for entity in &self.many {
                    if entity.stats().await.map_err(error)?.reachable_peers.len() == peers {
                        count += 1;
                    }
                }
                Ok(json!(count))
            }
            "entity-record" => {
                let entity = self
                    .many
                    .get(number::<usize>(words, 1)?)
                    .ok_or("no such entity")?;
                entity
                    .command(arg(words, 2)?.to_string())
                    .await
                    .map_err(error)?;
                Ok(json!(null))
            }
            "entity-events" => {
                let entity = self
                    .many
                    .get(number::<usize>(words, 1)?)
                    .ok_or("no such entity")?;
                Ok(json!(entity.stats().await.map_err(error)?.events))
            }
            "tally-stats" => entity_stats(&self.tally).await,
            "watch-lag" => {
                let arguments = (self.name.clone(), self.lag_sender.clone());
                let (watcher, _) = Actor::spawn(None, LagWatcher, arguments)
                    .await
                    .map_err(|e| e.to_string())?;
                self.tally.subscribe(watcher).map_err(error)?;
                Ok(Value::Null)
            }
            "lags" => {
                let mut all = Vec::new();
                while let Ok(micros) = self.lags.try_recv() {
                    all.push(micros);
                }
                Ok(json!(all))
            }
            "tally-record" => {
                let count: u64 = number(words, 1)?;
                for n in 0..count {
                    let entry = format!("{}-{n}", self.name);
                    self.tally.command(entry).await.map_err(error)?;
                }
                Ok(json!(count))
            }
            "tally" => {
                let state = self.tally.state().await.map_err(error)?;
                Ok(json!({ "count": state.count, "digest": state.digest }))
            }
            "tally-throughput" => {
                let window = words.get(2).map_or(Ok(0), |_| number(words, 2))?;
                let rate = words.get(3).map_or(Ok(0), |_| number(words, 3))?;
                self.tally_throughput(number(words, 1)?, window, rate).await
            }
            "tally-recovery" => self.tally_recovery().await,
            "tally-wait" => {
                let events: u64 = number(words, 1)?;
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let stats = self.tally.stats().await.map_err(error)?;
                    if stats.events >= events {
                        return Ok(json!({ "done_micros": now_micros() }));
                    }
                    if Instant::now() > deadline {
                        return Err(format!("{} of {events} events", stats.events));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            other => Err(format!("unknown command {other:?}")),
        }
    }

    /// What a restart of the tally does before it takes commands:
    /// read the journal, rebuild the log and its state.
    async fn tally_recovery(&mut self) -> Result<Value, String> {
        let journal = self
            .journal
            .as_ref()
            .ok_or("the node runs without --data")?;
        let started = Instant::now();
        let events = journal.read_from::<Recorded>(TALLY_ID, 1).map_err(error)?;
        let read = started.elapsed().as_secs_f64();
        let replica = ReplicaId::new(self.name.as_str(), 0);
        let keep_entries = false;
        let mut log = ReplicatedLog::new(replica.clone(), Ledger { keep_entries }, LastWriterWins);
        let count = events.len();
        log.recover(events.into_iter().map(|(_, envelope)| envelope));
        let seconds = started.elapsed().as_secs_f64();
        // The same from the snapshot, as the entity starts.
        let started = Instant::now();
        let mut from_snapshot =
            ReplicatedLog::new(replica, Ledger { keep_entries }, LastWriterWins);
        let decode: fn(&[u8]) -> ractor_replicated::Result<LedgerState> =
            |bytes| ractor_replicated::codec::decode(bytes);
        let recovered = recover_from_journal(&mut from_snapshot, journal, TALLY_ID, Some(decode))
            .map_err(error)?;
        Ok(json!({
            "events": count,
            "read_seconds": read,
            "seconds": seconds,
            "count": log.state().count,
            "from_snapshot": {
                "used_snapshot": recovered.snapshot_from.is_some(),
                "compacted_events": from_snapshot.compacted_events(),
                "events_read": recovered.events_read,
                "seconds": started.elapsed().as_secs_f64(),
                "count": from_snapshot.state().count,
            },
        }))
    }

    /// Starts `count` entities `many-<i>` behind one router,
    /// passivating after `passivate_ms` (0: never).
    async fn router_spawn(&mut self, words: &[&str]) -> Result<Value, String> {
        let count: usize = number(words, 1)?;
        let passivate_ms: u64 = number(words, 2)?;
        let passivate = Some(Duration::from_millis(passivate_ms)).filter(|ms| !ms.is_zero());
        let started = Instant::now();
        let replica = ReplicaId::fresh(self.name.as_str());
        let factory = |_: &str| (Ledger { keep_entries: true }, LastWriterWins);
        let routed = match self.router_journal.clone() {
            EntityJournal::Sled(journal) => {
                let entity_type = self
                    .cluster
                    .entity_type("many", replica, journal, factory)
                    .with_passivation(passivate);
                EntityRouter::spawn(entity_type).await
            }
            EntityJournal::Memory(journal) => {
                let entity_type = self
                    .cluster
                    .entity_type("many", replica, journal, factory)
                    .with_passivation(passivate);
                EntityRouter::spawn(entity_type).await
            }
        }
        .map_err(error)?;
        for i in 0..count {
            routed.state(format!("many-{i}")).await.map_err(error)?;
        }
        self.routed = Some(routed);
        Ok(json!({ "seconds": started.elapsed().as_secs_f64() }))
    }

    /// `count` commands `prefix-<n>`, entity `many-<n % entities>`,
    /// one after the other; progress counts the acknowledged ones.
    async fn router_record_many(&mut self, words: &[&str]) -> Result<Value, String> {
        let (prefix, count): (&str, u64) = (arg(words, 1)?, number(words, 2)?);
        let entities: u64 = number(words, 3)?;
        let background = words.get(4) == Some(&"background");
        let routed = self.routed.clone().ok_or("no router")?;
        let writing = counted(
            self.progress.clone(),
            prefix.to_string(),
            count,
            move |entry, n| {
                let (routed, id) = (routed.clone(), format!("many-{}", n % entities.max(1)));
                async move { routed.command(id, entry).await.map(drop) }
            },
        );
        if background {
            tokio::spawn(writing);
        } else {
            writing.await.map_err(error)?;
        }
        Ok(json!(null))
    }

    /// Starts `count` more entities `many-<i>`, each an actor of its own
    /// with an in-memory journal (against `router-spawn`'s one router).
    async fn entities_spawn(&mut self, words: &[&str]) -> Result<Value, String> {
        let count: usize = number(words, 1)?;
        let started = Instant::now();
        for _ in 0..count {
            let persistence_id = format!("many-{}", self.many.len());
            let config = self
                .cluster
                .entity_config(persistence_id, ReplicaId::fresh(self.name.as_str()));
            let ledger = Ledger {
                keep_entries: false,
            };
            let entity =
                ReplicatedEntity::spawn(ledger, LastWriterWins, MemoryJournal::new(), config)
                    .await
                    .map_err(error)?;
            self.many.push(entity);
        }
        Ok(json!({ "seconds": started.elapsed().as_secs_f64() }))
    }

    async fn get(&self, kind: &str, name: &str) -> Result<Value, String> {
        let dd = &self.dd;
        let read = ReadConsistency::Local;
        Ok(match kind {
            "counter" => json!(dd
                .get(&Key::<GCounter>::new(name), read)
                .await
                .map_err(error)?
                .map(|c| c.value() as u64)),
            "pn" => json!(dd
                .get(&Key::<PNCounter>::new(name), read)
                .await
                .map_err(error)?
                .map(|c| c.value() as i64)),
            "set" => json!(dd
                .get(&Key::<ORSet<String>>::new(name), read)
                .await
                .map_err(error)?
                .map(|s| s.iter().cloned().collect::<Vec<_>>())),
            "lww" => json!(dd
                .get(&Key::<LWWRegister<String>>::new(name), read)
                .await
                .map_err(error)?
                .and_then(|r| r.value().cloned())),
            "map" => json!(dd
                .get(&Key::<ORMap<String, PNCounter>>::new(name), read)
                .await
                .map_err(error)?
                .map(|m| m
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value() as i64))
                    .collect::<BTreeMap<_, _>>())),
            other => return Err(format!("unknown kind {other:?}")),
        })
    }

    /// Commands on the tally per second, issued without waiting for each
    /// other (their events share journal flushes), at most `window` in
    /// flight (0: all at once) and at most `rate` per second (0: flat out),
    /// then awaited.
    async fn tally_throughput(
        &self,
        count: u64,
        window: usize,
        rate: u64,
    ) -> Result<Value, String> {
        let started_micros = now_micros();
        let started = Instant::now();
        let window = if window == 0 {
            Semaphore::MAX_PERMITS
        } else {
            window
        };
        let in_flight = Arc::new(Semaphore::new(window));
        let mut commands = Vec::new();
        for n in 0..count {
            if rate > 0 {
                let due = Duration::from_secs_f64(n as f64 / rate as f64);
                tokio::time::sleep_until((started + due).into()).await;
            }
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| e.to_string())?;
            let tally = self.tally.clone();
            let entry = format!("{}-load-{n}", self.name);
            commands.push(tokio::spawn(async move {
                let done = tally.command(entry).await;
                drop(permit);
                done
            }));
        }
        for command in commands {
            command.await.map_err(|e| e.to_string())?.map_err(error)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(json!({
            "events": count,
            "seconds": seconds,
            "per_second": count as f64 / seconds,
            "started_micros": started_micros,
        }))
    }

    /// Local updates of one counter key per second, one at a time (each
    /// awaited) or pipelined (all sent, then all awaited).
    async fn throughput(&self, mode: &str, count: u64) -> Result<Value, String> {
        let key: Key<GCounter> = Key::new(format!("throughput-{mode}"));
        let started = std::time::Instant::now();
        match mode {
            "sequential" => {
                for _ in 0..count {
                    self.dd
                        .update(&key, WriteConsistency::Local, |c, me| {
                            c.apply(c.increment(me, 1))
                        })
                        .await
                        .map_err(error)?;
                }
            }
            "pipelined" => {
                let updates: Vec<_> = (0..count)
                    .map(|_| {
                        let dd = self.dd.clone();
                        let key = key.clone();
                        tokio::spawn(async move {
                            dd.update(&key, WriteConsistency::Local, |c, me| {
                                c.apply(c.increment(me, 1))
                            })
                            .await
                        })
                    })
                    .collect();
                for update in updates {
                    update.await.map_err(|e| e.to_string())?.map_err(error)?;
                }
            }
            other => return Err(format!("unknown mode {other:?}")),
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(json!({ "updates": count, "seconds": seconds, "per_second": count as f64 / seconds }))
    }
}

/// Writes one after another in the background and logs each to a file,
/// which survives a kill -9 of this process: `attempt N` before write N,
/// then `ack N` or `fail N <reason>`.
///
/// `write-background <add|inc> <key> <count> <local|majority|all> <timeout_ms> <pause_ms> <log file>`:
/// `add` puts element `<key>-N` into the ORSet `<key>`, `inc` adds 1 to the
/// GCounter `<key>`.
struct BackgroundWriter {
    add: bool,
    key: String,
    count: u64,
    level: WriteConsistency,
    pause: Duration,
    log: String,
}

impl BackgroundWriter {
    fn parse(words: &[&str]) -> Result<Self, String> {
        let add = match arg(words, 0)? {
            "add" => true,
            "inc" => false,
            other => return Err(format!("unknown write {other:?}")),
        };
        let timeout = Duration::from_millis(number(words, 4)?);
        let level = match arg(words, 3)? {
            "local" => WriteConsistency::Local,
            "majority" => WriteConsistency::majority(timeout),
            "all" => WriteConsistency::All { timeout },
            other => return Err(format!("unknown level {other:?}")),
        };
        Ok(Self {
            add,
            key: arg(words, 1)?.to_string(),
            count: number(words, 2)?,
            level,
            pause: Duration::from_millis(number(words, 5)?),
            log: arg(words, 6)?.to_string(),
        })
    }

    async fn run(self, dd: DistributedData) {
        use std::io::Write;
        let Ok(mut log) = std::fs::File::create(&self.log) else {
            return;
        };
        for n in 0..self.count {
            if writeln!(log, "attempt {n}").is_err() {
                return;
            }
            let outcome = if self.add {
                let key: Key<ORSet<String>> = Key::new(self.key.as_str());
                let element = format!("{}-{n}", self.key);
                dd.update(&key, self.level, move |s, me| s.apply(s.add(me, element)))
                    .await
            } else {
                let key: Key<GCounter> = Key::new(self.key.as_str());
                dd.update(&key, self.level, |c, me| c.apply(c.increment(me, 1)))
                    .await
            };
            let line = match outcome {
                Ok(_) => format!("ack {n}"),
                Err(err) => format!("fail {n} {}", err.to_string().replace('\n', " ")),
            };
            if writeln!(log, "{line}").is_err() {
                return;
            }
            tokio::time::sleep(self.pause).await;
        }
        let _ = writeln!(log, "done");
    }
}

/// The process's resident memory in KiB, where /proc tells it.
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Where the node's entities journal: on disk with `--data`, else in memory.
#[derive(Clone)]
enum EntityJournal {
    Sled(SledJournal),
    Memory(MemoryJournal),
}

async fn entity_stats(entity: &Entity<Ledger>) -> Result<Value, String> {
    let stats = entity.stats().await.map_err(error)?;
    Ok(json!({
        "events": stats.events,
        "compacted": stats.compacted_events,
        "waiting": stats.waiting,
        "peers": stats.reachable_peers,
        "rejected": stats.rejected_messages,
        "history_reloads": stats.history_reloads,
    }))
}

async fn start_ledger<J>(
    persistence_id: &str,
    keep_entries: bool,
    journal: J,
    replica: ReplicaId,
    cluster: &ClusterNode,
    snapshot_every: Option<usize>,
) -> Entity<Ledger>
where
    J: ractor_replicated::persistence::Journal + Sync,
{
    let config = cluster
        .entity_config(persistence_id, replica)
        .with_anti_entropy_interval(Duration::from_millis(200));
    let ledger = Ledger { keep_entries };
    match snapshot_every {
        Some(every) => {
            ReplicatedEntity::spawn_with_snapshots(ledger, LastWriterWins, journal, config, every)
                .await
        }
        None => ReplicatedEntity::spawn(ledger, LastWriterWins, journal, config).await,
    }
    .expect("the ledger starts")
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let mut options = <Options as clap::Parser>::parse();
    // The first node of a cluster is given no seeds: an empty list.
    options.seeds.retain(|seed| !seed.is_empty());
    options.members.retain(|member| !member.is_empty());
    let cluster = ClusterConfig::new(&options.name, "127.0.0.1", options.port, &options.cookie)
        .with_seeds(options.seeds.clone());
    let cluster = Arc::new(
        ClusterNode::start(cluster)
            .await
            .expect("the node server starts"),
    );
    let core = CoreConfig {
        gossip_interval: options.gossip,
        ..CoreConfig::default()
    };
    let mut config = ReplicatorConfig::new(&options.name)
        .with_discovery(cluster.discovery())
        .with_members(
            options
                .members
                .iter()
                .filter(|m| **m != options.name)
                .cloned(),
        )
        .with_core(core);
    if let Some(data) = &options.data {
        let store = SledStore::open(format!("{data}/ddata"), &options.name)
            .expect("the durable store opens");
        config = config.with_durability(Durability::new(store, KeySelection::All));
    }
    let dd = DistributedData::start(config)
        .await
        .expect("the replicator starts");
    let mut reading_journal = None;
    let (journal, replica, snapshot_every) = match &options.data {
        Some(data) => {
            // The journal keeps every event this replica wrote: its id stays.
            let journal = SledJournal::open(format!("{data}/journal")).expect("the journal opens");
            reading_journal = Some(journal.clone());
            let every = Some(options.snapshot_every).filter(|every| *every > 0);
            let replica = ReplicaId::new(options.name.as_str(), 0);
            (EntityJournal::Sled(journal), replica, every)
        }
        None => (
            EntityJournal::Memory(MemoryJournal::new()),
            ReplicaId::fresh(options.name.as_str()),
            None,
        ),
    };
    let start = |persistence_id, keep_entries| {
        let (journal, replica) = (journal.clone(), replica.clone());
        let cluster = &cluster;
        async move {
            match journal {
                EntityJournal::Sled(journal) => {
                    start_ledger(
                        persistence_id,
                        keep_entries,
                        journal,
                        replica,
                        cluster,
                        snapshot_every,
                    )
                    .await
                }
                EntityJournal::Memory(journal) => {
                    start_ledger(
                        persistence_id,
                        keep_entries,
                        journal,
                        replica,
                        cluster,
                        None,
                    )
                    .await
                }
            }
        }
    };
    let ledger = start(LEDGER_ID, true).await;
    let tally = start(TALLY_ID, false).await;
    let (latency_sender, latencies) = mpsc::unbounded_channel();
    let (lag_sender, lags) = mpsc::unbounded_channel();
    let mut node = Node {
        name: options.name.clone(),
        dd,
        latencies,
        latency_sender,
        newest_stamp: Arc::default(),
        ledger,
        tally,
        progress: Arc::default(),
        lags,
        lag_sender,
        journal: reading_journal,
        cluster: cluster.clone(),
        many: Vec::new(),
        routed: None,
        router_journal: journal.clone(),
    };

    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await.expect("stdout");
    stdout.flush().await.expect("stdout");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "quit" {
            break;
        }
        let answer = match node.run(&line).await {
            Ok(value) => json!({ "ok": value }),
            Err(err) => json!({ "err": err }),
        };
        let mut text = answer.to_string();
        text.push('\n');
        if stdout.write_all(text.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
            break;
        }
    }
    node.ledger.stop().await;
    node.tally.stop().await;
    cluster.stop().await;
}
