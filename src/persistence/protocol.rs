//! How the replicas of one persistence id exchange events, as a sans-IO state
//! machine around a [`ReplicatedLog`].
//!
//! * A replica pushes the events it persists to every reachable replica.
//! * Anti-entropy: a replica sends its version vector to a peer (when the
//!   peer comes up, and on every tick to the next one); the peer answers with
//!   the events the version lacks, in causal order, in messages kept under a
//!   byte budget. On a tick, the answer leaves out the events the peer got
//!   less than a tick ago: under load, a peer's version lags by the events
//!   still on their way as pushes, and answering with those too sent most of
//!   them twice. Lost, duplicated and reordered messages are harmless: the
//!   log buffers events until their past arrives and drops duplicates.
//! * Snapshots (optional): every so many events, the log compacts the
//!   prefix that the next events of the replicas still heard of will have
//!   seen, and the caller saves the state after it. A peer lacking compacted
//!   events is answered from the journal; an event that may sort among them
//!   makes the caller read the history back.
//! * Retention (optional): once every listed replica has passed a saved
//!   snapshot, the caller may delete the events before it from its journal
//!   ([`passed_by_all`](Replication::passed_by_all)). A peer that lacks
//!   deleted events then gets the snapshot and the events after it
//!   ([`ReplicationMessage::Snapshot`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{ConflictResolver, EventEnvelope, EventHandler, ReplicatedLog, Snapshot};
use crate::causal::{ReplicaId, VersionVector};
use crate::codec;
use crate::ddata::wire::split_by_budget;
use crate::ddata::PeerName;
use crate::error::Chain;

/// What replicas of one persistence id say to each other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ReplicationMessage<E> {
    /// Events to take in.
    Events(Vec<EventEnvelope<E>>),
    /// "This is what I have": answered with the events it lacks.
    Version(VersionVector),
    /// "This is what I have", sent every anti-entropy tick: answered with
    /// the events it lacks that the receiver held a tick ago. Newer ones are
    /// still on their way as pushes; the next report asks again for any of
    /// them that was lost.
    Report(VersionVector),
    /// "I have exactly what you reported": the answer to a report equal to
    /// the receiver's version, after which neither reports to the other
    /// until one of them changes.
    InSync(VersionVector),
    /// "You lack events my journal no longer holds": the state after them,
    /// to start from; the events after it follow as `Events`.
    Snapshot(SnapshotOffer),
    /// "I am this replica, I have made no event yet, and this is what I
    /// have": a [`Version`](Self::Version) that also names the sender's
    /// incarnation, sent in place of `Version`, `Report` and `InSync` when
    /// history may be deleted. A version alone does not tell a node's new
    /// incarnation (its journal was lost) from the old one, whose events
    /// other replicas may still relay. Answered with the events the sender
    /// lacks and a [`Welcome`](Self::Welcome).
    Introduce {
        /// The sender.
        replica: ReplicaId,
        /// What it has.
        version: VersionVector,
    },
    /// "I know of `replica` now, and this is what I had then": the answer
    /// to an [`Introduce`](Self::Introduce). The sender waits for
    /// `replica` from then on before it deletes events, so a replica that
    /// holds the `version` of every listed replica's welcome has seen all
    /// they deleted. A version sent earlier (still on its way, or to an
    /// earlier incarnation) would not say so.
    Welcome {
        /// The replica welcomed.
        replica: ReplicaId,
        /// What the sender had.
        version: VersionVector,
    },
}

/// A snapshot sent to a replica that lacks events the sender's journal
/// deleted (see [`Replication::snapshot_received`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotOffer {
    /// The prefix the state reflects.
    pub version: VersionVector,
    /// How many events the prefix holds.
    pub events: u64,
    /// The state, encoded by the entity as it encodes its snapshots.
    pub state: Vec<u8>,
    /// Everything the sender had applied: an event of the receiver outside
    /// the prefix that is in here sorted after the prefix at the sender.
    pub holds: VersionVector,
}

/// What the caller must do, in order.
#[derive(Debug)]
pub enum ReplicationOutput<E, S> {
    /// Journal these replicated events (idempotently); they are applied.
    Journal(Vec<EventEnvelope<E>>),
    /// Deliver `message` to the replica on node `to`.
    Send {
        /// The receiving node.
        to: PeerName,
        /// The message.
        message: ReplicationMessage<E>,
    },
    /// The log compacted a prefix: save this snapshot of it, once the
    /// events it covers are durable.
    Snapshot(Snapshot<S>),
    /// A peer whose version is `version` lacks compacted events: answer it
    /// from the journal, through [`Replication::events_for`].
    ServeFromJournal {
        /// The peer's node.
        to: PeerName,
        /// What the peer has.
        version: VersionVector,
    },
    /// An event may sort among compacted events: read the whole journal and
    /// hand it to [`Replication::history_loaded`].
    LoadHistory,
    /// A peer sent a snapshot: decode its state and hand it to
    /// [`Replication::snapshot_received`].
    DecodeSnapshot {
        /// The peer's node.
        from: PeerName,
        /// What it sent.
        offer: SnapshotOffer,
    },
}

/// The outputs of a replication step, for handler `H`.
pub type ReplicationOutputs<H> =
    Vec<ReplicationOutput<<H as EventHandler>::Event, <H as EventHandler>::State>>;

/// By default, how many anti-entropy ticks a replica still holds compaction
/// back after it was last heard of (reachable, or new events of its arrived, maybe
/// relayed by another replica). A replica that is back within that time
/// (a restart, a short partition) finds its events' places in memory; one
/// away longer makes the others read their journals back once when its
/// concurrent events arrive, instead of keeping memory growing meanwhile.
pub const DEFAULT_STABILITY_TICKS: u64 = 30;

/// Event replication for one replica of one persistence id.
pub struct Replication<H: EventHandler, R> {
    log: ReplicatedLog<H, R>,
    reachable: PeerMap<()>,
    /// The last version each replica sent, by node.
    peer_versions: PeerMap<VersionVector>,
    /// The version each replica sent in its [`ReplicationMessage::Welcome`]
    /// of this one, by node.
    welcomed: PeerMap<VersionVector>,
    /// The tick each replica was last heard of, by node.
    last_heard: PeerMap<u64>,
    /// Nodes that left the cluster for good and have not come back.
    removed: PeerMap<()>,
    /// The nodes that run a replica, if known: compaction waits for them
    /// instead of for those heard of lately.
    replicas: Option<BTreeSet<PeerName>>,
    /// The peers whose last word showed exactly this replica's version,
    /// while it holds `in_sync_events` applied events: no report goes to
    /// them, so replicas that agree cost nothing at rest.
    in_sync: PeerMap<()>,
    in_sync_events: u64,
    ticks: u64,
    /// What the log held at the last tick, and at the one before: a
    /// [`ReplicationMessage::Report`] is answered within the latter.
    held_at_last_tick: VersionVector,
    held_a_tick_before: VersionVector,
    stability_ticks: u64,
    max_message_bytes: usize,
    next_peer: usize,
    snapshot_every: Option<usize>,
    /// Compaction is tried when the log holds this many events in memory.
    next_compaction: usize,
}

impl<H: EventHandler, R: ConflictResolver<H::Event>> Replication<H, R> {
    /// Replication around `log`, with messages of at most `max_message_bytes`
    /// (a single larger event still travels alone).
    pub fn new(log: ReplicatedLog<H, R>, max_message_bytes: usize) -> Self {
        // The replicas a restarted replica's journal names are heard of: they
        // are likely still there, and may have events on their way.
        let own = log.replica().node();
        let mut last_heard = PeerMap::new();
        for (replica, _) in log.version().iter() {
            if replica.node() != own {
                last_heard.insert(replica.node(), 0);
            }
        }
        // What the journal gave back is not on its way to anyone: a replica
        // that starts (or wakes) answers reports with it at once.
        let held = log.version().clone();
        Self {
            log,
            reachable: PeerMap::new(),
            peer_versions: PeerMap::new(),
            welcomed: PeerMap::new(),
            last_heard,
            removed: PeerMap::new(),
            replicas: None,
            in_sync: PeerMap::new(),
            in_sync_events: 0,
            ticks: 0,
            held_at_last_tick: held.clone(),
            held_a_tick_before: held,
            stability_ticks: DEFAULT_STABILITY_TICKS,
            max_message_bytes,
            next_peer: 0,
            snapshot_every: None,
            next_compaction: usize::MAX,
        }
    }

    /// Compacts the log and asks for a snapshot about every `events` events:
    /// it tries when that many more are in memory, and when a peer reports
    /// its version while at least that many are, and compacts when at least
    /// `events` can go. Fewer than `events` may so stay in memory (and be
    /// read back at a start) when writes stop.
    pub fn with_snapshots(mut self, events: usize) -> Self {
        let every = events.max(1);
        self.snapshot_every = Some(every);
        self.next_compaction = self.log.events().len().saturating_add(every);
        self
    }

    /// The nodes that run a replica of this persistence id (this replica's
    /// node may be among them). Compaction then waits for each of them,
    /// however long it is away, instead of for those heard of within the
    /// [stability ticks](Self::with_stability_ticks), which are then not
    /// used: no replica's events can sort among compacted ones, so none
    /// makes the log read its history back. A replica on a node not listed
    /// still replicates, but its events may sort among compacted ones (a
    /// history reload). A [removed](Self::peer_removed) node stops holding
    /// compaction back until it comes up again.
    pub fn with_replicas(mut self, nodes: impl IntoIterator<Item = impl Into<PeerName>>) -> Self {
        self.replicas = Some(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// How many ticks a replica holds compaction back after it was last
    /// heard of (default [`DEFAULT_STABILITY_TICKS`]).
    pub fn with_stability_ticks(mut self, ticks: u64) -> Self {
        self.stability_ticks = ticks;
        self
    }

    /// The replicated log.
    pub fn log(&self) -> &ReplicatedLog<H, R> {
        &self.log
    }

    /// The replicated log, to stamp local events.
    pub fn log_mut(&mut self) -> &mut ReplicatedLog<H, R> {
        &mut self.log
    }

    /// Local events were journaled durably and applied: push them to every
    /// reachable replica (and snapshot, if it is time).
    pub fn persisted(&mut self, events: &[EventEnvelope<H::Event>]) -> ReplicationOutputs<H> {
        let sized = sized(events.iter());
        let mut outputs: ReplicationOutputs<H> = self
            .reachable
            .keys()
            .flat_map(|peer| self.sized_to(peer, sized.clone()))
            .collect();
        outputs.extend(self.compaction());
        outputs
    }

    /// A replica came up: it learns this replica's version and answers with
    /// what this one lacks.
    pub fn peer_up(&mut self, peer: &str) -> ReplicationOutputs<H> {
        self.removed.remove(peer);
        self.reachable.insert(peer, ());
        self.in_sync.remove(peer);
        self.heard_of(peer);
        vec![self.version_to(peer)]
    }

    /// A replica went away. It holds compaction back for
    /// [`with_stability_ticks`](Self::with_stability_ticks) more ticks.
    pub fn peer_down(&mut self, peer: &str) {
        self.reachable.remove(peer);
        self.in_sync.remove(peer);
        self.heard_of(peer);
    }

    /// The replica on node `peer` left the cluster for good
    /// (decommissioned): it no longer holds compaction back, even when its
    /// old events still arrive through other replicas, until it comes up
    /// again. Should events of it sort among compacted ones after all, the
    /// log reads its history back ([`ReplicationOutput::LoadHistory`]).
    pub fn peer_removed(&mut self, peer: &str) {
        self.removed.insert(peer, ());
        self.reachable.remove(peer);
        self.in_sync.remove(peer);
        self.last_heard.remove(peer);
        self.peer_versions.remove(peer);
        self.welcomed.remove(peer);
    }

    /// The whole journal, read back after [`ReplicationOutput::LoadHistory`]:
    /// the log rebuilds from it and delivers what waited.
    pub fn history_loaded(
        &mut self,
        journaled: impl IntoIterator<Item = EventEnvelope<H::Event>>,
    ) -> ReplicationOutputs<H> {
        let applied = self.log.restore_history(journaled);
        self.after_receiving(applied)
    }

    /// Messages to `peer` carrying `events` (read from the journal after
    /// [`ReplicationOutput::ServeFromJournal`]).
    pub fn events_for(
        &self,
        peer: &str,
        events: &[EventEnvelope<H::Event>],
    ) -> ReplicationOutputs<H> {
        self.events_to(peer, events.iter())
    }

    /// A snapshot the replica on node `from` sent, decoded (see
    /// [`ReplicatedLog::install_snapshot`]): the log starts again from it
    /// if it fits; `None` if it does not, which is logged.
    pub fn snapshot_received(
        &mut self,
        from: &str,
        snapshot: Snapshot<H::State>,
        holds: &VersionVector,
    ) -> Option<ReplicationOutputs<H>> {
        let events = snapshot.events;
        let Some(applied) = self.log.install_snapshot(snapshot, holds) else {
            tracing::error!(
                peer = from,
                events,
                "a peer's snapshot does not fit this replica's events; not taken"
            );
            return None;
        };
        self.heard_of(from);
        Some(self.after_receiving(applied))
    }

    /// Whether every listed replica (see [`with_replicas`](Self::with_replicas))
    /// but this one and the removed ones has reported a version that holds
    /// all of `version`: no replica then needs events within it from this
    /// one. False when the replicas are not listed.
    pub fn passed_by_all(&self, version: &VersionVector) -> bool {
        every_listed(&self.replicas, &self.removed, self.log.replica(), |node| {
            self.peer_versions
                .get(node)
                .is_some_and(|reported| reported.descends(version))
        })
        .unwrap_or(false)
    }

    /// Whether every listed replica but this one and the removed ones has
    /// [welcomed](ReplicationMessage::Welcome) this one, and this replica
    /// holds all each had then: a replica that started with nothing has
    /// then seen all history any of them may have deleted. True when the
    /// replicas are not listed: none deletes.
    pub fn caught_up_with_all(&self) -> bool {
        every_listed(&self.replicas, &self.removed, self.log.replica(), |node| {
            self.welcomed
                .get(node)
                .is_some_and(|had| self.log.version().descends(had))
        })
        .unwrap_or(true)
    }

    /// Anti-entropy round: this replica's version to the next reachable peer
    /// not known to hold exactly the same events (none if all are). Ticks
    /// are also the clock of
    /// [`with_stability_ticks`](Self::with_stability_ticks).
    pub fn tick(&mut self) -> ReplicationOutputs<H> {
        self.ticks += 1;
        // A replica that went quiet after a compaction frees what it dropped.
        self.log.free_some();
        // A replica at rest keeps its versions instead of copying them.
        let version = self.log.version();
        if self.held_a_tick_before != *version || self.held_at_last_tick != *version {
            self.held_a_tick_before =
                std::mem::replace(&mut self.held_at_last_tick, version.clone());
        }
        for peer in self.reachable.keys() {
            self.last_heard.insert(peer, self.ticks);
        }
        let (ticks, stability) = (self.ticks, self.stability_ticks);
        let heard = self.last_heard.len();
        self.last_heard
            .retain(|_, heard| ticks - *heard <= stability);
        let (last_heard, replicas) = (&self.last_heard, &self.replicas);
        self.peer_versions.retain(|peer, _| {
            last_heard.contains(peer) || replicas.as_ref().is_some_and(|r| r.contains(peer))
        });
        let mut outputs = Vec::new();
        if self.last_heard.len() < heard
            && self
                .snapshot_every
                .is_some_and(|every| self.log.events().len() >= every)
        {
            // A replica no longer waited for may have been what held
            // compaction back.
            self.next_compaction = 0;
            outputs.extend(self.compaction());
        }
        self.refresh_in_sync();
        let introduction = self.introduction();
        // A replica that introduces itself goes on until each peer has
        // welcomed it, in sync or not: the first introduction may have
        // been lost.
        let (in_sync, welcomed) = (&self.in_sync, &self.welcomed);
        let behind = |peer: &&str| {
            !in_sync.contains(peer) || (introduction.is_some() && !welcomed.contains(peer))
        };
        let count = self.reachable.keys().filter(behind).count();
        if count > 0 {
            let index = self.next_peer % count;
            self.next_peer = self.next_peer.wrapping_add(1);
            let peer = self
                .reachable
                .keys()
                .filter(behind)
                .nth(index)
                .map(str::to_string)
                .unwrap_or_default();
            let message = introduction
                .unwrap_or_else(|| ReplicationMessage::Report(self.log.version().clone()));
            outputs.push(ReplicationOutput::Send { to: peer, message });
        }
        outputs
    }

    /// What a replica that has made no event says instead of its version
    /// when history may be deleted (see [`ReplicationMessage::Introduce`]).
    fn introduction(&self) -> Option<ReplicationMessage<H::Event>> {
        let own = self.log.replica();
        (self.log.history_deletable() && self.log.version().get(own) == 0).then(|| {
            ReplicationMessage::Introduce {
                replica: own.clone(),
                version: self.log.version().clone(),
            }
        })
    }

    /// Forgets which peers were in sync once this replica's version moved.
    fn refresh_in_sync(&mut self) {
        let applied = self.log.applied_events();
        if applied != self.in_sync_events {
            self.in_sync.clear();
            self.in_sync_events = applied;
        }
    }

    /// Notes whether the replica on node `peer`, whose version is
    /// `version`, holds exactly what this one does; true if so.
    fn note_in_sync(&mut self, peer: &str, version: &VersionVector) -> bool {
        self.refresh_in_sync();
        let same = version == self.log.version();
        if same {
            if self.reachable.contains(peer) {
                self.in_sync.insert(peer, ());
            }
        } else {
            self.in_sync.remove(peer);
        }
        same
    }

    /// A message from the replica on node `from`.
    pub fn handle_message(
        &mut self,
        from: &str,
        message: ReplicationMessage<H::Event>,
    ) -> ReplicationOutputs<H> {
        match message {
            ReplicationMessage::Events(events) => {
                let applied = self.log.receive_all(events);
                self.after_receiving(applied)
            }
            ReplicationMessage::Version(version) => {
                self.note_in_sync(from, &version);
                self.answer(from, version, false)
            }
            ReplicationMessage::Report(version) => self.reported(from, version, true),
            ReplicationMessage::InSync(version) => self.in_sync_with(from, version),
            ReplicationMessage::Introduce { replica, version } => {
                if replica.node() == from {
                    self.log.incarnation_runs(&replica);
                }
                self.note_in_sync(from, &version);
                let mut outputs = vec![ReplicationOutput::Send {
                    to: from.to_string(),
                    message: ReplicationMessage::Welcome {
                        replica,
                        version: self.log.version().clone(),
                    },
                }];
                outputs.extend(self.answer(from, version, false));
                outputs
            }
            ReplicationMessage::Welcome { replica, version } => {
                if &replica == self.log.replica() {
                    self.welcomed.insert(from, version.clone());
                }
                self.in_sync_with(from, version)
            }
            ReplicationMessage::Snapshot(offer) => vec![ReplicationOutput::DecodeSnapshot {
                from: from.to_string(),
                offer,
            }],
        }
    }

    /// The replica on node `from` holds exactly `version`, which this one
    /// reported.
    fn in_sync_with(&mut self, from: &str, version: VersionVector) -> ReplicationOutputs<H> {
        self.note_in_sync(from, &version);
        self.seen_by(from, version).into_iter().collect()
    }

    /// A report (or an introduction, which is answered with everything the
    /// peer lacks: `within_tick` false): answered with `InSync` too if it
    /// shows exactly this replica's version, so that the reporter learns
    /// that it can stop, and what this replica holds.
    fn reported(
        &mut self,
        from: &str,
        version: VersionVector,
        within_tick: bool,
    ) -> ReplicationOutputs<H> {
        let mut outputs = Vec::new();
        if self.note_in_sync(from, &version) {
            // The echo of a version does not name who has it either.
            let message = self
                .introduction()
                .unwrap_or_else(|| ReplicationMessage::InSync(version.clone()));
            outputs.push(ReplicationOutput::Send {
                to: from.to_string(),
                message,
            });
        }
        outputs.extend(self.answer(from, version, within_tick));
        outputs
    }

    /// Answers a peer's version with the events it lacks (only those held a
    /// tick ago if `report`), and takes it as what the peer has seen.
    fn answer(
        &mut self,
        from: &str,
        version: VersionVector,
        report: bool,
    ) -> ReplicationOutputs<H> {
        let mut outputs = if self.log.can_serve(&version) {
            let missing = if report {
                self.log
                    .missing_for_within(&version, &self.held_a_tick_before)
            } else {
                self.log.missing_for(&version)
            };
            self.events_to(from, missing.into_iter())
        } else {
            vec![ReplicationOutput::ServeFromJournal {
                to: from.to_string(),
                version: version.clone(),
            }]
        };
        outputs.extend(self.seen_by(from, version));
        outputs
    }

    /// Takes `version` as what the replica on node `from` has seen, and
    /// compacts if that was what held compaction back.
    fn seen_by(
        &mut self,
        from: &str,
        version: VersionVector,
    ) -> Option<ReplicationOutput<H::Event, H::State>> {
        self.peer_versions.insert(from, version);
        self.heard_of(from);
        if self
            .snapshot_every
            .is_some_and(|every| self.log.events().len() >= every)
        {
            self.next_compaction = 0;
        }
        self.compaction()
    }

    fn heard_of(&mut self, node: &str) {
        if !self.removed.contains(node) {
            self.last_heard.insert(node, self.ticks);
        }
    }

    fn after_receiving(&mut self, applied: Vec<EventEnvelope<H::Event>>) -> ReplicationOutputs<H> {
        // Their origins are alive, even if only another replica reaches them.
        let mut previous = None;
        for event in &applied {
            if previous != Some(&event.origin) {
                previous = Some(&event.origin);
                if event.origin.node() != self.log.replica().node() {
                    self.heard_of(event.origin.node());
                }
            }
        }
        let mut outputs = Vec::new();
        if !applied.is_empty() {
            outputs.push(ReplicationOutput::Journal(applied));
        }
        if self.log.needs_history() {
            outputs.push(ReplicationOutput::LoadHistory);
        } else {
            outputs.extend(self.compaction());
        }
        outputs
    }

    /// Compacts the log when enough events gathered in memory since the last
    /// try; a snapshot to save if a prefix was compacted.
    fn compaction(&mut self) -> Option<ReplicationOutput<H::Event, H::State>> {
        let every = self.snapshot_every?;
        if self.log.events().len() < self.next_compaction {
            return None;
        }
        // The known replicas, else every replica heard of lately: the
        // reachable ones are (each tick renews them), and so are those away
        // for less than the stability ticks.
        let versions = &self.peer_versions;
        let own = self.log.replica().node();
        let removed = &self.removed;
        let peers: Vec<&str> = match &self.replicas {
            Some(replicas) => replicas
                .iter()
                .map(String::as_str)
                .filter(|node| *node != own && !removed.contains(node))
                .collect(),
            None => self.last_heard.keys().filter(|node| *node != own).collect(),
        };
        let peers = peers.into_iter().map(|node| (node, versions.get(node)));
        let snapshot = self.log.compact(peers, every);
        self.next_compaction = self.log.events().len().saturating_add(every);
        snapshot.map(ReplicationOutput::Snapshot)
    }

    fn version_to(&self, peer: &str) -> ReplicationOutput<H::Event, H::State> {
        let message = self
            .introduction()
            .unwrap_or_else(|| ReplicationMessage::Version(self.log.version().clone()));
        ReplicationOutput::Send {
            to: peer.to_string(),
            message,
        }
    }

    fn events_to<'a>(
        &self,
        peer: &str,
        events: impl Iterator<Item = &'a EventEnvelope<H::Event>>,
    ) -> ReplicationOutputs<H>
    where
        H::Event: 'a,
    {
        self.sized_to(peer, sized(events))
    }

    /// Messages to `peer` carrying events sized by [`sized`].
    fn sized_to(
        &self,
        peer: &str,
        sized: Vec<(usize, EventEnvelope<H::Event>)>,
    ) -> ReplicationOutputs<H> {
        split_by_budget(sized, self.max_message_bytes, |(size, _)| *size)
            .into_iter()
            .map(|chunk| ReplicationOutput::Send {
                to: peer.to_string(),
                message: ReplicationMessage::Events(chunk.into_iter().map(|(_, e)| e).collect()),
            })
            .collect()
    }
}

/// Whether `test` holds for every listed replica's node but `own`'s and the
/// removed ones; `None` when the replicas are not listed.
fn every_listed(
    replicas: &Option<BTreeSet<PeerName>>,
    removed: &PeerMap<()>,
    own: &ReplicaId,
    test: impl Fn(&str) -> bool,
) -> Option<bool> {
    let replicas = replicas.as_ref()?;
    Some(
        replicas
            .iter()
            .filter(|node| *node != own.node() && !removed.contains(node))
            .all(|node| test(node)),
    )
}

/// Events with their encoded sizes (plus room for framing), to split under
/// a message budget; one that cannot be encoded is logged and left out.
fn sized<'a, E: Serialize + Clone + 'a>(
    events: impl Iterator<Item = &'a EventEnvelope<E>>,
) -> Vec<(usize, EventEnvelope<E>)> {
    events
        .filter_map(|envelope| match codec::encoded_len(envelope) {
            Ok(len) => Some((len + 16, envelope.clone())),
            Err(err) => {
                tracing::error!(error = %Chain(&err), "cannot encode an event; it is not replicated");
                None
            }
        })
        .collect()
}

/// Something per peer node, for the few nodes of a cluster: a sorted
/// vector, which an entity among many holds in a fraction of the memory of
/// a B-tree (whose smallest node has room for eleven).
#[derive(Debug)]
struct PeerMap<T>(Vec<(PeerName, T)>);

impl<T> PeerMap<T> {
    fn new() -> Self {
        Self(Vec::new())
    }

    fn position(&self, peer: &str) -> std::result::Result<usize, usize> {
        self.0
            .binary_search_by(|(known, _)| known.as_str().cmp(peer))
    }

    fn get(&self, peer: &str) -> Option<&T> {
        self.position(peer).ok().map(|at| &self.0[at].1)
    }

    fn contains(&self, peer: &str) -> bool {
        self.position(peer).is_ok()
    }

    /// Sets `peer`'s value; the name is copied only for a new peer.
    fn insert(&mut self, peer: &str, value: T) {
        match self.position(peer) {
            Ok(at) => self.0[at].1 = value,
            Err(at) => self.0.insert(at, (peer.to_string(), value)),
        }
    }

    fn remove(&mut self, peer: &str) {
        if let Ok(at) = self.position(peer) {
            self.0.remove(at);
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&str, &T) -> bool) {
        self.0.retain(|(peer, value)| keep(peer, value));
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(peer, _)| peer.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::ReplicaId;
    use crate::persistence::log::tests::Sum;
    use crate::persistence::LastWriterWins;

    fn replica(node: &str) -> Replication<Sum, LastWriterWins> {
        let log = ReplicatedLog::new(ReplicaId::new(node, 1), Sum, LastWriterWins);
        Replication::new(log, 1 << 20)
    }

    /// How many events the answer to `message` carries.
    fn answered(
        replication: &mut Replication<Sum, LastWriterWins>,
        message: ReplicationMessage<u64>,
    ) -> usize {
        replication
            .handle_message("b", message)
            .into_iter()
            .map(|output| match output {
                ReplicationOutput::Send {
                    message: ReplicationMessage::Events(events),
                    ..
                } => events.len(),
                _ => 0,
            })
            .sum()
    }

    fn snapshots(outputs: &ReplicationOutputs<Sum>) -> usize {
        outputs
            .iter()
            .filter(|output| matches!(output, ReplicationOutput::Snapshot(_)))
            .count()
    }

    /// Replica `a`, snapshotting every 2 events, whose peer `b` came up and
    /// went away more than a stability tick ago; then 4 local events.
    fn after_b_left(
        known_replicas: bool,
    ) -> (Replication<Sum, LastWriterWins>, ReplicationOutputs<Sum>) {
        let mut a = replica("a").with_snapshots(2).with_stability_ticks(1);
        if known_replicas {
            a = a.with_replicas(["a", "b"]);
        }
        a.peer_up("b");
        a.peer_down("b");
        for _ in 0..3 {
            a.tick();
        }
        let events = a.log_mut().apply_local(vec![1, 2, 3, 4], 1);
        let outputs = a.persisted(&events);
        (a, outputs)
    }

    #[test]
    fn known_replicas_hold_compaction_back_until_they_have_seen_the_events() {
        let (_, guessing) = after_b_left(false);
        assert_eq!(snapshots(&guessing), 1, "b was forgotten after a tick");

        let (mut a, knowing) = after_b_left(true);
        assert_eq!(snapshots(&knowing), 0, "b runs a replica: wait for it");
        for _ in 0..40 {
            assert_eq!(snapshots(&a.tick()), 0);
        }
        let seen = a.log().version().clone();
        let outputs = a.handle_message("b", ReplicationMessage::Version(seen));
        assert_eq!(snapshots(&outputs), 1, "b has seen all four");
    }

    #[test]
    fn a_removed_replica_no_longer_holds_compaction_back() {
        let (mut a, _) = after_b_left(true);
        a.peer_removed("b");
        let events = a.log_mut().apply_local(vec![5, 6], 2);
        assert_eq!(snapshots(&a.persisted(&events)), 1);
    }

    /// Delivers every message of `outputs` from `from` (node `from_name`)
    /// to `to`, and the answers back, until none is left; the messages
    /// `drop` picks are lost. How many were delivered.
    fn exchange(
        replicas: &mut [Replication<Sum, LastWriterWins>; 2],
        from: usize,
        outputs: ReplicationOutputs<Sum>,
        drop: &mut impl FnMut(&ReplicationMessage<u64>) -> bool,
    ) -> usize {
        let names = ["a", "b"];
        let mut queue: Vec<(usize, ReplicationMessage<u64>)> = outputs
            .into_iter()
            .filter_map(|output| match output {
                ReplicationOutput::Send { message, .. } => Some((1 - from, message)),
                _ => None,
            })
            .collect();
        let mut delivered = 0;
        while let Some((to, message)) = queue.pop() {
            if drop(&message) {
                continue;
            }
            delivered += 1;
            let answers = replicas[to].handle_message(names[1 - to], message);
            for answer in answers {
                if let ReplicationOutput::Send { message, .. } = answer {
                    queue.push((1 - to, message));
                }
            }
        }
        delivered
    }

    #[test]
    fn replicas_that_agree_stop_reporting_until_one_of_them_changes() {
        let mut replicas = [replica("a"), replica("b")];
        let mut keep = |_: &ReplicationMessage<u64>| false;
        let up = replicas[0].peer_up("b");
        exchange(&mut replicas, 0, up, &mut keep);
        let up = replicas[1].peer_up("a");
        exchange(&mut replicas, 1, up, &mut keep);
        let mut quiet_after = None;
        for round in 0..4 {
            let mut sent = 0;
            for r in 0..2 {
                let outputs = replicas[r].tick();
                sent += exchange(&mut replicas, r, outputs, &mut keep);
            }
            if sent == 0 {
                quiet_after = Some(round);
                break;
            }
        }
        assert!(quiet_after.is_some(), "replicas that agree go quiet");

        // A new event whose push is lost: reports resume and carry it.
        let events = replicas[0].log_mut().apply_local(vec![7], 1);
        let mut lose_events =
            |message: &ReplicationMessage<u64>| matches!(message, ReplicationMessage::Events(_));
        let pushed = replicas[0].persisted(&events);
        exchange(&mut replicas, 0, pushed, &mut lose_events);
        assert_eq!(replicas[1].log().applied_events(), 0);
        // An in-sync answer lost once: the reporter asks again.
        let mut lost_in_sync = false;
        let mut lose_one_in_sync = |message: &ReplicationMessage<u64>| {
            let lose = !lost_in_sync && matches!(message, ReplicationMessage::InSync(_));
            lost_in_sync |= lose;
            lose
        };
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds < 20, "no convergence");
            let mut sent = 0;
            for r in 0..2 {
                let outputs = replicas[r].tick();
                sent += exchange(&mut replicas, r, outputs, &mut lose_one_in_sync);
            }
            if sent == 0 {
                break;
            }
        }
        assert!(lost_in_sync, "an in-sync answer was lost");
        assert_eq!(replicas[1].log().state(), &7, "the lost push was repaired");
        assert_eq!(replicas[0].log().version(), replicas[1].log().version());
        for replica in &mut replicas {
            assert!(replica.tick().is_empty(), "quiet again");
        }
    }

    #[test]
    fn a_report_is_answered_with_events_held_for_a_tick_and_a_version_with_all() {
        let mut a = replica("a");
        a.peer_up("b");
        a.log_mut().apply_local(vec![1, 2], 1);
        a.tick();
        a.log_mut().apply_local(vec![3], 2);
        let nothing = VersionVector::new();
        // Held for less than a tick: maybe still on their way as pushes.
        assert_eq!(
            answered(&mut a, ReplicationMessage::Report(nothing.clone())),
            0
        );
        assert_eq!(
            answered(&mut a, ReplicationMessage::Version(nothing.clone())),
            3
        );
        a.tick();
        assert_eq!(
            answered(&mut a, ReplicationMessage::Report(nothing.clone())),
            2
        );
        a.tick();
        assert_eq!(answered(&mut a, ReplicationMessage::Report(nothing)), 3);
    }

    /// The messages among `outputs`.
    fn sent(outputs: ReplicationOutputs<Sum>) -> Vec<ReplicationMessage<u64>> {
        outputs
            .into_iter()
            .filter_map(|output| match output {
                ReplicationOutput::Send { message, .. } => Some(message),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn replicas_without_events_introduce_themselves_and_then_go_quiet() {
        let listed = |node: &str| {
            let mut replication = replica(node).with_replicas(["a", "b"]);
            replication.log_mut().history_may_be_deleted();
            replication
        };
        let (mut a, mut b) = (listed("a"), listed("b"));
        let hello = sent(a.peer_up("b"));
        assert!(
            matches!(&hello[..], [ReplicationMessage::Introduce { .. }]),
            "{hello:?}"
        );
        let (mut to_b, mut to_a) = (hello, sent(b.peer_up("a")));
        let mut rounds = 0;
        while !to_b.is_empty() || !to_a.is_empty() {
            rounds += 1;
            assert!(rounds < 5, "they keep answering each other");
            for message in std::mem::take(&mut to_b) {
                to_a.extend(sent(b.handle_message("a", message)));
            }
            for message in std::mem::take(&mut to_a) {
                to_b.extend(sent(a.handle_message("b", message)));
            }
        }
        assert!(a.caught_up_with_all() && b.caught_up_with_all());
        assert!(
            sent(a.tick()).is_empty() && sent(b.tick()).is_empty(),
            "quiet at rest"
        );
    }
}
