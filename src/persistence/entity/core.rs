//! The rules of one replica of one persistence id, as a sans-IO core that
//! the entity actor and the simulation both drive.

use std::collections::{HashSet, VecDeque};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ReplicatedEventSourcedActor;
use crate::causal::{ReplicaId, VersionVector};
use crate::codec;
use crate::ddata::PeerName;
use crate::error::{catch_panic, Chain, Error, Record, Result, StoreFailure, Unavailability};
use crate::persistence::journal::{Journal, StoredSnapshot};
use crate::persistence::{
    recover_from_journal, ConflictResolver, DecodeState, EventEnvelope, EventHandler, Recovered,
    ReplicatedLog, Replication, ReplicationContext, ReplicationMessage, ReplicationOutput,
    ReplicationOutputs, Snapshot, SnapshotOffer,
};

/// What a command comes to: the handler's reply (`None` if it gave none)
/// once its events are durable, or why they are not.
pub type CommandResult<R> = Result<Option<R>>;

/// An answer that waits for the journal flush that makes what it reveals
/// durable: called with the flush's outcome.
pub type PendingReply = Box<dyn FnOnce(std::result::Result<(), &Error>) + Send>;

/// An event the entity applied, as its subscribers receive it: once it is
/// durable in this replica's journal, in the journal's order (which respects
/// causality but, for concurrent events, may differ from the canonical order
/// the state is computed in).
#[derive(Clone, Debug)]
pub struct EventApplied<E> {
    /// The event's local sequence number in this replica's journal, from 1:
    /// where a subscription resumes.
    pub sequence: u64,
    /// The event.
    pub envelope: EventEnvelope<E>,
}

/// How an entity that snapshots encodes its state, how often, and which
/// events its journal keeps.
pub struct Snapshots<S> {
    every: usize,
    encode: fn(&S) -> Result<Vec<u8>>,
    decode: DecodeState<S>,
    retention: Retention,
}

impl<S> Clone for Snapshots<S> {
    fn clone(&self) -> Self {
        Self {
            every: self.every,
            encode: self.encode,
            decode: self.decode,
            retention: self.retention,
        }
    }
}

/// Which events an entity's journal keeps once every listed replica (see
/// [`EntityCore::with_replicas`]) has passed its latest snapshot: no
/// replica then needs them, and the snapshot stands for them. Without
/// listed replicas nothing is ever deleted.
///
/// Deleting has a price, which keeping all avoids. A replica that lacks
/// deleted events (one whose journal was lost, or a new one) catches up
/// from a peer's snapshot instead of from its events. A replica that has
/// made no event yet holds its commands until every listed replica has
/// welcomed it and it holds what each had then (at most [`HOLD_TICKS`]
/// anti-entropy ticks; then they fail with [`Error::EntityUnavailable`]):
/// an event it made before that could sort among events the others
/// deleted, and they would have to refuse it. An event that does sort
/// among deleted events (from a replica outside the listed ones, or a
/// node removed that comes back with its old journal) is refused, logged
/// and counted ([`ReplicatedLog::refused_events`]). Every replica should
/// use the same retention, and the journal must implement
/// [`Journal::delete_before`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retention {
    /// Keep every event (the default).
    #[default]
    KeepAll,
    /// Keep this many of the events journaled just before those the
    /// snapshot does not cover (a margin to read back, for subscribers and
    /// operators), delete those before them.
    KeepLast(u64),
    /// Delete every event journaled before the first one the snapshot does
    /// not cover.
    DeleteCovered,
}

impl Retention {
    /// How many covered events to keep, if any may go.
    fn keeps(self) -> Option<u64> {
        match self {
            Retention::KeepAll => None,
            Retention::KeepLast(events) => Some(events),
            Retention::DeleteCovered => Some(0),
        }
    }
}

impl<S: Serialize + DeserializeOwned> Snapshots<S> {
    /// A snapshot about every `events` events (see
    /// [`Replication::with_snapshots`]), its state encoded with the
    /// library's codec, fields by name ([`codec::encode_named`]): a state
    /// type that gains, loses or reorders fields still reads its old
    /// snapshots. Snapshots that earlier versions of this library wrote
    /// (fields by position) still decode, into a type whose fields kept
    /// their order.
    pub fn every(events: usize) -> Self {
        Self {
            every: events,
            encode: |state| codec::encode_named(state),
            decode: |bytes| codec::decode(bytes),
            retention: Retention::KeepAll,
        }
    }
}

impl<S> Snapshots<S> {
    /// Which events the journal keeps once every listed replica passed a
    /// snapshot (default [`Retention::KeepAll`]).
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }
}

/// The I/O an [`EntityCore`] asks of whatever runs it, besides its journal.
/// None of it can lose data: the core calls it only with what is durable.
pub trait EntityIo<E> {
    /// Delivers `message` to the replica on node `to`, if there is a route
    /// to it (without one, anti-entropy repairs the loss later). False if
    /// the route just failed: the core then takes the peer as down.
    fn send(&mut self, to: &str, message: ReplicationMessage<E>) -> bool;

    /// Arranges for [`EntityCore::scheduled_flush`] to be called behind the
    /// work already queued, so that one flush covers all of it. False if it
    /// could not be arranged (the runner is stopping).
    fn schedule_flush(&mut self) -> bool;

    /// Whether anyone listens to [`publish`](Self::publish): the core keeps
    /// journaled events for it only then.
    fn publishing(&self) -> bool;

    /// Events that just became durable, in the journal's order.
    fn publish(&mut self, events: Vec<EventApplied<E>>);
}

impl<E, T: EntityIo<E> + ?Sized> EntityIo<E> for &mut T {
    fn send(&mut self, to: &str, message: ReplicationMessage<E>) -> bool {
        (**self).send(to, message)
    }

    fn schedule_flush(&mut self) -> bool {
        (**self).schedule_flush()
    }

    fn publishing(&self) -> bool {
        (**self).publishing()
    }

    fn publish(&mut self, events: Vec<EventApplied<E>>) {
        (**self).publish(events)
    }
}

/// How many anti-entropy ticks a command waits while the replica catches
/// up (see [`Retention`]) before it is refused.
pub const HOLD_TICKS: u64 = 10;

/// At most this many commands wait while the replica catches up; more are
/// refused at once.
const MAX_HELD: usize = 10_000;

/// A command that waits while the replica catches up: run later (`true`),
/// or refused (`false`).
type HeldCommand<B, R, J> = Box<
    dyn FnOnce(
            &mut EntityCore<B, R, J>,
            &mut dyn EntityIo<<B as EventHandler>::Event>,
            bool,
        ) -> Result<()>
        + Send,
>;

/// One replica of one persistence id, as a sans-IO core that the entity
/// actor and the simulation both drive: its [`Replication`], its journal,
/// and the rules that make a replica safe to crash at any point:
///
/// * a command's events are journaled before they are applied, and the
///   journal takes them or none of them;
/// * nothing leaves the replica before the journal holds it durably: no
///   reply, no message to a peer, no event to a subscriber. A peer holding
///   an event its origin lost in a crash would see the origin mint another
///   event under the same id;
/// * one journal flush covers every command that arrived before it (group
///   commit): the core asks whatever runs it to
///   [schedule](EntityIo::schedule_flush) a flush behind the work already
///   queued, and answers every waiting reply when it runs;
/// * a snapshot covers only durable events, is never older than the last
///   one saved, and names where its recovery starts reading the journal.
///
/// What is left to the runner is I/O that cannot lose data: delivering
/// messages to peers, scheduling the flush, handing events to subscribers
/// ([`EntityIo`]). Every verb returns an error only when the replica must
/// stop and start again from its journal: what it holds in memory may then
/// be ahead of its disk.
pub struct EntityCore<B: EventHandler, R, J> {
    replication: Replication<B, R>,
    journal: J,
    persistence_id: String,
    recovered: Recovered,
    /// The journal took writes since the last flush. Only then does
    /// anything wait for one: replies, unannounced and unpublished events
    /// and a due snapshot are all taken by the flush that clears it.
    unflushed: bool,
    flush_scheduled: bool,
    /// Local events to push to peers once durable.
    unannounced: Vec<EventEnvelope<B::Event>>,
    pending_replies: Vec<PendingReply>,
    /// Journaled events to publish once they are durable, in the journal's
    /// order.
    unpublished: Vec<EventApplied<B::Event>>,
    /// The local sequence number the journal gives the next event.
    next_sequence: u64,
    history_reloads: u64,
    snapshots: Option<Snapshots<B::State>>,
    /// Where the last snapshot's recovery starts reading the journal: every
    /// event before it is covered by that snapshot and the ones to come.
    snapshot_from: u64,
    /// The size of the last snapshot saved: one no larger is stale.
    snapshot_events: u64,
    /// A snapshot compacted while the events it covers were not all durable
    /// yet: saved by the next flush, which would otherwise have to run in
    /// the middle of taking in a message.
    due_snapshot: Option<Snapshot<B::State>>,
    /// When snapshotting: the local sequence number, origin and origin
    /// sequence number of each event journaled from `positions_from` on, so
    /// that where a snapshot's recovery starts is found in memory instead
    /// of by reading the journal back.
    positions: VecDeque<(u64, ReplicaId, u64)>,
    positions_from: u64,
    /// The version and read position of the last snapshot saved, until a
    /// flush makes it durable.
    last_saved: Option<(VersionVector, u64)>,
    /// Those of the last snapshot a flush made durable: what retention
    /// deletes before, once every listed replica passed it. Kept apart so
    /// that under steady writes, when every flush saves a new snapshot,
    /// retention still has a durable one to go by.
    durable_saved: Option<(VersionVector, u64)>,
    /// Where the journal's history starts, once events were deleted.
    deleted_before: Option<u64>,
    /// A version holding every deleted event: a peer that lacks any of them
    /// gets the snapshot. Since the start, that of the snapshot then.
    deleted_through: Option<VersionVector>,
    /// Retention deletes, and the replica has made no event yet: its
    /// commands wait until it caught up with every listed replica.
    joining: bool,
    /// A peer's snapshot the log started again from, with what the peer
    /// held: saved once this replica holds all of that too, so that every
    /// event that sorts after the snapshot without having seen all of it is
    /// in the journal by then (recovery could not tell it from one that
    /// sorts inside).
    installed: Option<(Snapshot<B::State>, VersionVector)>,
    /// Journaled events that waited for their past when the replica
    /// started: it crashed after starting again from a peer's snapshot and
    /// before saving it, so their past is not in the journal. Not
    /// journaled again when the snapshot comes back and they are applied.
    journaled_waiting: HashSet<(ReplicaId, u64)>,
    /// Commands that arrived while the replica caught up, with the tick
    /// they arrived at.
    held: VecDeque<(u64, HeldCommand<B, R, J>)>,
    ticks: u64,
}

impl<B, R, J> EntityCore<B, R, J>
where
    B: EventHandler,
    R: ConflictResolver<B::Event>,
    J: Journal,
{
    /// Starts the replica `log` is made for (an empty log) from what
    /// `journal` holds for `persistence_id`: from its snapshot and the
    /// events after it if `snapshots` is given and the snapshot is usable,
    /// else from every event. Replication messages stay under
    /// `max_message_bytes`.
    pub fn recover(
        persistence_id: impl Into<String>,
        mut log: ReplicatedLog<B, R>,
        journal: J,
        snapshots: Option<Snapshots<B::State>>,
        max_message_bytes: usize,
    ) -> Result<Self> {
        let persistence_id = persistence_id.into();
        let decode = snapshots.as_ref().map(|snapshots| snapshots.decode);
        let recovered = recover_from_journal(&mut log, &journal, &persistence_id, decode)?;
        let next_sequence = journal.highest_sequence(&persistence_id)?.saturating_add(1);
        let deleted_before = journal.deleted_before(&persistence_id)?;
        let deleted_through = match deleted_before {
            Some(_) => journal
                .load_snapshot(&persistence_id)?
                .map(|snapshot| snapshot.version),
            None => None,
        };
        let journaled_waiting = log
            .waiting_events()
            .iter()
            .map(|envelope| (envelope.origin.clone(), envelope.origin_seq))
            .collect();
        let mut replication = Replication::new(log, max_message_bytes);
        if let Some(snapshots) = &snapshots {
            replication = replication.with_snapshots(snapshots.every);
        }
        Ok(Self {
            replication,
            journal,
            persistence_id,
            recovered,
            // What the journal gave back may be appends of an earlier life
            // in this process that were never flushed (an actor or core that
            // failed between an append and its flush): flushed before
            // anything leaves.
            unflushed: true,
            flush_scheduled: false,
            unannounced: Vec::new(),
            pending_replies: Vec::new(),
            unpublished: Vec::new(),
            next_sequence,
            history_reloads: 0,
            snapshots,
            snapshot_from: recovered.snapshot_from.unwrap_or(1),
            snapshot_events: 0,
            due_snapshot: None,
            positions: VecDeque::new(),
            positions_from: next_sequence,
            last_saved: None,
            durable_saved: None,
            deleted_before,
            deleted_through,
            joining: false,
            installed: None,
            journaled_waiting,
            held: VecDeque::new(),
            ticks: 0,
        })
    }

    /// The nodes that run a replica (see [`Replication::with_replicas`]),
    /// which retention needs (see [`Retention`]).
    pub fn with_replicas(mut self, nodes: impl IntoIterator<Item = impl Into<PeerName>>) -> Self {
        self.replication = self.replication.with_replicas(nodes);
        let deletes = self
            .snapshots
            .as_ref()
            .is_some_and(|snapshots| snapshots.retention.keeps().is_some());
        if deletes {
            let log = self.replication.log_mut();
            log.history_may_be_deleted();
            // Until it made an event, a replica may lack history that
            // others deleted (its journal was lost, or it is new): that it
            // made none is what its journal keeps of it across restarts.
            self.joining = log.version().get(log.replica()) == 0;
        }
        self
    }

    /// How many anti-entropy ticks an unheard-of replica holds compaction
    /// back (see [`Replication::with_stability_ticks`]).
    pub fn with_stability_ticks(mut self, ticks: u64) -> Self {
        self.replication = self.replication.with_stability_ticks(ticks);
        self
    }

    /// The replicated log: the state and the events in memory.
    pub fn log(&self) -> &ReplicatedLog<B, R> {
        self.replication.log()
    }

    /// The journal.
    pub fn journal(&self) -> &J {
        &self.journal
    }

    /// The persistence id.
    pub fn persistence_id(&self) -> &str {
        &self.persistence_id
    }

    /// How the replica started from its journal.
    pub fn recovered(&self) -> Recovered {
        self.recovered
    }

    /// Times a replicated event that may sort among compacted events made
    /// the replica read its whole journal back.
    pub fn history_reloads(&self) -> u64 {
        self.history_reloads
    }

    /// Where the journal's history starts, once retention deleted events
    /// (or the replica started from a peer's snapshot): see
    /// [`Journal::deleted_before`].
    pub fn deleted_before(&self) -> Option<u64> {
        self.deleted_before
    }

    /// Whether commands wait (up to [`HOLD_TICKS`] anti-entropy ticks)
    /// because the replica catches up: retention deletes and it has made no
    /// event yet nor caught up with every listed replica, or it started
    /// again from a peer's snapshot that it has not saved yet (see
    /// [`Retention`]).
    pub fn holds_commands(&self) -> bool {
        !self.accepts_commands()
    }

    /// Runs `command` through the behaviour and journals its events; `reply`
    /// gets the outcome once they are durable. A handler that panics or a
    /// journal that refuses the events fails the command only: nothing of
    /// it was journaled or applied.
    pub fn command(
        &mut self,
        io: &mut impl EntityIo<B::Event>,
        command: B::Command,
        now_millis: i64,
        reply: impl FnOnce(CommandResult<B::Reply>) + Send + 'static,
    ) -> Result<()>
    where
        B: ReplicatedEventSourcedActor,
    {
        if !self.accepts_commands() {
            if self.held.len() >= MAX_HELD {
                reply(Err(self.catching_up_error()));
                return Ok(());
            }
            let held: HeldCommand<B, R, J> = Box::new(move |core, mut io, run| {
                if run {
                    core.execute(&mut io, command, now_millis, reply)
                } else {
                    reply(Err(core.catching_up_error()));
                    Ok(())
                }
            });
            self.held.push_back((self.ticks, held));
            return Ok(());
        }
        self.joining = false;
        // Those that waited go first.
        self.release_held(io)?;
        self.execute(io, command, now_millis, reply)
    }

    /// Runs a command the replica takes now (see [`command`](Self::command)).
    fn execute(
        &mut self,
        io: &mut impl EntityIo<B::Event>,
        command: B::Command,
        now_millis: i64,
        reply: impl FnOnce(CommandResult<B::Reply>) + Send + 'static,
    ) -> Result<()>
    where
        B: ReplicatedEventSourcedActor,
    {
        let log = self.replication.log();
        let context = ReplicationContext {
            replica: log.replica(),
            persistence_id: &self.persistence_id,
        };
        let decided = catch_panic(&self.persistence_id, || {
            log.handler().handle_command(log.state(), command, context)
        });
        let (events, answer) = match decided {
            Ok(decision) => decision.into_parts(),
            Err(err) => {
                reply(Err(err));
                return Ok(());
            }
        };
        if !events.is_empty() {
            let stamped = self.replication.log().stamp(events, now_millis);
            match self.journal.append(&self.persistence_id, &stamped) {
                Err(err) => {
                    tracing::error!(persistence_id = self.persistence_id, error = %Chain(&err), "the journal refused a command's events");
                    reply(Err(err));
                    return Ok(());
                }
                Ok(added) if added != stamped.len() => {
                    // This replica is behind its own journal (a reused
                    // replica id, or a write reported failed that landed):
                    // restarting from the journal is the way back.
                    let (origin, origin_seq) = stamped
                        .first()
                        .map(|e| (e.origin.to_string(), e.origin_seq))
                        .unwrap_or_default();
                    let err = Error::journal(
                        self.journal.location(),
                        Some(&self.persistence_id),
                        None,
                        StoreFailure::EventExists { origin, origin_seq },
                    );
                    tracing::error!(persistence_id = self.persistence_id, error = %Chain(&err), "event id already journaled");
                    reply(Err(err.clone()));
                    return Err(err);
                }
                Ok(_) => {}
            }
            self.unflushed = true;
            self.journaled(&*io, &stamped);
            self.replication
                .log_mut()
                .receive_all(stamped.iter().cloned());
            self.unannounced.extend(stamped);
        }
        self.answer_after_flush(io, move |flushed| {
            reply(flushed.map(|()| answer).map_err(Error::clone));
        });
        Ok(())
    }

    /// Whether commands run now, rather than wait: not while a peer's
    /// snapshot the log started from is not saved (after a crash, the
    /// events of a command would wait for a past the journal does not hold,
    /// and the replica would mint their ids again), nor while it joins.
    fn accepts_commands(&self) -> bool {
        self.installed.is_none() && (!self.joining || self.replication.caught_up_with_all())
    }

    fn catching_up_error(&self) -> Error {
        Error::EntityUnavailable {
            persistence_id: self.persistence_id.clone(),
            reason: Unavailability::CatchingUp,
        }
    }

    /// Runs the commands that waited, once the replica takes commands.
    fn release_held(&mut self, io: &mut impl EntityIo<B::Event>) -> Result<()> {
        if self.held.is_empty() || !self.accepts_commands() {
            return Ok(());
        }
        self.joining = false;
        let mut io: &mut dyn EntityIo<B::Event> = io;
        while let Some((_, command)) = self.held.pop_front() {
            command(self, &mut io, true)?;
        }
        Ok(())
    }

    /// Refuses the commands that waited longer than [`HOLD_TICKS`], or all
    /// of them.
    fn refuse_held(&mut self, io: &mut impl EntityIo<B::Event>, all: bool) {
        let mut io: &mut dyn EntityIo<B::Event> = io;
        while let Some((tick, _)) = self.held.front() {
            if !all && tick.saturating_add(HOLD_TICKS) > self.ticks {
                break;
            }
            if let Some((_, command)) = self.held.pop_front() {
                let _ = command(self, &mut io, false);
            }
        }
    }

    /// Calls `answer` once everything applied so far is durable: at once if
    /// nothing waits for the journal, else after the next flush, in order.
    pub fn answer_after_flush(
        &mut self,
        io: &mut impl EntityIo<B::Event>,
        answer: impl FnOnce(std::result::Result<(), &Error>) + Send + 'static,
    ) {
        if !self.unflushed {
            answer(Ok(()));
            return;
        }
        self.pending_replies.push(Box::new(answer));
        self.schedule_flush(io);
    }

    /// The flush [scheduled](EntityIo::schedule_flush) earlier.
    pub fn scheduled_flush(&mut self, io: &mut impl EntityIo<B::Event>) -> Result<()> {
        self.flush_scheduled = false;
        self.flush(io)
    }

    /// Makes the journal durable, then answers the waiting replies, pushes
    /// the new local events to the peers, publishes what was journaled and
    /// saves a snapshot if one is due.
    pub fn flush(&mut self, io: &mut impl EntityIo<B::Event>) -> Result<()> {
        let outcome = if self.unflushed {
            self.journal.flush()
        } else {
            Ok(())
        };
        self.unflushed = false;
        for reply in self.pending_replies.drain(..) {
            reply(outcome.as_ref().map(|_| ()));
        }
        if let Err(err) = outcome {
            // Maybe not durable: never pushed, so no peer can hold an event
            // this replica might mint again. If it was durable, anti-entropy
            // carries it after the restart.
            self.unannounced.clear();
            self.unpublished.clear();
            self.due_snapshot = None;
            tracing::error!(persistence_id = self.persistence_id, error = %Chain(&err), "cannot flush the journal; the entity stops");
            return Err(err);
        }
        let events = std::mem::take(&mut self.unannounced);
        let outputs = self.replication.persisted(&events);
        let (snapshots, sends): (Vec<_>, Vec<_>) = outputs
            .into_iter()
            .partition(|output| matches!(output, ReplicationOutput::Snapshot(_)));
        self.send(io, sends);
        let published = std::mem::take(&mut self.unpublished);
        if !published.is_empty() {
            io.publish(published);
        }
        if let Some(saved) = self.last_saved.take() {
            self.durable_saved = Some(saved);
        }
        // Everything applied is durable now.
        // A snapshot that is not saved costs a longer recovery, no data.
        if let Some(snapshot) = self.due_snapshot.take() {
            let _ = self.save_snapshot(snapshot);
        }
        for output in snapshots {
            if let ReplicationOutput::Snapshot(snapshot) = output {
                let _ = self.save_snapshot(snapshot);
            }
        }
        Ok(())
    }

    /// Makes everything durable as the replica stops: the commands drained
    /// may wait for their flush, which may save a snapshot, made durable by
    /// a second one.
    pub fn stop(&mut self, io: &mut impl EntityIo<B::Event>) {
        self.refuse_held(io, true);
        let _ = self.flush(io);
        if self.unflushed {
            let _ = self.journal.flush();
        }
    }

    /// Hands `each` the journaled events from local sequence number `from`
    /// on, for a new subscriber, until it returns false; false if it did or
    /// the journal could not be read (logged). The flush first publishes
    /// what the journal holds to the subscribers before it, so the replay
    /// ends where the new one's live events begin. Events retention deleted
    /// are not replayed (logged).
    pub fn replay(
        &mut self,
        io: &mut impl EntityIo<B::Event>,
        from: u64,
        mut each: impl FnMut(&EventApplied<B::Event>) -> bool,
    ) -> Result<bool> {
        self.flush(io)?;
        if let Some(deleted) = self.deleted_before.filter(|deleted| from < *deleted) {
            tracing::warn!(
                persistence_id = self.persistence_id,
                from,
                deleted,
                "a subscriber resumes from events retention deleted; it gets those kept"
            );
        }
        let journaled = match self.journal.read_from(&self.persistence_id, from.max(1)) {
            Ok(journaled) => journaled,
            Err(err) => {
                tracing::error!(persistence_id = self.persistence_id, error = %Chain(&err), "cannot read the journal to replay it to a subscriber; not subscribed");
                return Ok(false);
            }
        };
        Ok(journaled
            .into_iter()
            .all(|(sequence, envelope)| each(&EventApplied { sequence, envelope })))
    }

    /// A replication message from the replica on node `from`.
    pub fn received(
        &mut self,
        io: &mut impl EntityIo<B::Event>,
        from: &str,
        message: ReplicationMessage<B::Event>,
    ) -> Result<()> {
        let outputs = self.replication.handle_message(from, message);
        self.run(io, outputs)
    }

    /// An anti-entropy round, and the journal's retention.
    pub fn tick(&mut self, io: &mut impl EntityIo<B::Event>) -> Result<()> {
        self.ticks += 1;
        let outputs = self.replication.tick();
        self.run(io, outputs)?;
        self.refuse_held(io, false);
        self.retain(io);
        Ok(())
    }

    /// Deletes the events the last durable snapshot covers, as the
    /// retention says, once every listed replica has passed it. A journal
    /// that cannot delete is logged and keeps its events.
    fn retain(&mut self, io: &mut impl EntityIo<B::Event>) {
        let Some(keeps) = self
            .snapshots
            .as_ref()
            .and_then(|snapshots| snapshots.retention.keeps())
        else {
            return;
        };
        if self.last_saved.is_some() {
            // Saved after the last flush: the next one, which nothing else
            // may bring, makes it the one to go by.
            self.schedule_flush(io);
        }
        let Some((version, from_sequence)) = &self.durable_saved else {
            return;
        };
        let before = from_sequence.saturating_sub(keeps).max(1);
        if before <= self.deleted_before.unwrap_or(1) || !self.replication.passed_by_all(version) {
            return;
        }
        match self.journal.delete_before(&self.persistence_id, before) {
            Ok(()) => {
                tracing::debug!(
                    persistence_id = self.persistence_id,
                    before,
                    "deleted the events every replica passed"
                );
                self.deleted_before = Some(before);
                self.deleted_through = Some(version.clone());
                self.replication.log_mut().forget_history();
            }
            Err(err) => {
                tracing::warn!(persistence_id = self.persistence_id, error = %Chain(&err), "cannot delete events; the journal keeps them");
                // Not tried again for this snapshot.
                self.durable_saved = None;
            }
        }
    }

    /// The replica on node `peer` came up.
    pub fn peer_up(&mut self, io: &mut impl EntityIo<B::Event>, peer: &str) -> Result<()> {
        let outputs = self.replication.peer_up(peer);
        self.run(io, outputs)
    }

    /// The replica on node `peer` went away.
    pub fn peer_down(&mut self, peer: &str) {
        self.replication.peer_down(peer);
    }

    /// The node `peer` left the cluster for good (see
    /// [`Replication::peer_removed`]).
    pub fn peer_removed(&mut self, peer: &str) {
        self.replication.peer_removed(peer);
    }

    fn schedule_flush(&mut self, io: &mut impl EntityIo<B::Event>) {
        if !self.flush_scheduled {
            self.flush_scheduled = io.schedule_flush();
        }
    }

    fn run(
        &mut self,
        io: &mut impl EntityIo<B::Event>,
        outputs: ReplicationOutputs<B>,
    ) -> Result<()> {
        let mut sends = Vec::new();
        let mut outputs = VecDeque::from(outputs);
        while let Some(output) = outputs.pop_front() {
            match output {
                ReplicationOutput::Journal(mut events) => {
                    if !self.journaled_waiting.is_empty() {
                        let journaled = &mut self.journaled_waiting;
                        events.retain(|e| !journaled.remove(&(e.origin.clone(), e.origin_seq)));
                        if events.is_empty() {
                            continue;
                        }
                    }
                    // Already applied: a journal that refuses them stops the
                    // replica, which recovers from its journal and the peers.
                    match self.journal.append(&self.persistence_id, &events) {
                        Err(err) => {
                            tracing::error!(persistence_id = self.persistence_id, error = %Chain(&err), "cannot journal replicated events; the entity stops");
                            return Err(err);
                        }
                        Ok(added) if added != events.len() => {
                            // The journal held some already (two entities on
                            // one persistence id and journal): numbering
                            // from it.
                            tracing::warn!(
                                persistence_id = self.persistence_id,
                                "the journal already held replicated events the log did not"
                            );
                            self.next_sequence = self
                                .journal
                                .highest_sequence(&self.persistence_id)?
                                .saturating_add(1);
                            self.positions.clear();
                            self.positions_from = self.next_sequence;
                        }
                        Ok(_) => self.journaled(&*io, &events),
                    }
                    self.unflushed = true;
                    self.schedule_flush(io);
                }
                send @ ReplicationOutput::Send { .. } => sends.push(send),
                ReplicationOutput::Snapshot(snapshot) => {
                    if self.unflushed {
                        self.due_snapshot = Some(snapshot);
                        self.schedule_flush(io);
                    } else {
                        // Not saved costs a longer recovery, no data.
                        let _ = self.save_snapshot(snapshot);
                    }
                }
                ReplicationOutput::ServeFromJournal { to, version } => {
                    match self.serve_from_journal(&to, version) {
                        Ok(answer) => sends.extend(answer),
                        // Other replicas can serve the peer.
                        Err(err) => {
                            tracing::error!(persistence_id = self.persistence_id, peer = to, error = %Chain(&err), "cannot read the journal to answer a peer")
                        }
                    }
                }
                ReplicationOutput::DecodeSnapshot { from, offer } => {
                    outputs.extend(self.take_snapshot(&from, offer)?);
                }
                ReplicationOutput::LoadHistory => {
                    // Delivery waits for the history: without it the replica
                    // would stop taking in replicated events for good.
                    let journaled = self
                        .journal
                        .read_from(&self.persistence_id, 1)
                        .inspect_err(|err| {
                            tracing::error!(persistence_id = self.persistence_id, error = %Chain(&err), "cannot read the journal back for a late event; the entity stops")
                        })?;
                    tracing::info!(
                        persistence_id = self.persistence_id,
                        events = journaled.len(),
                        "an event may sort among compacted events; read the journal back"
                    );
                    // The next snapshot may cover less than the last one.
                    self.snapshot_from = 1;
                    self.snapshot_events = 0;
                    self.due_snapshot = None;
                    self.history_reloads += 1;
                    outputs.extend(
                        self.replication
                            .history_loaded(journaled.into_iter().map(|(_, envelope)| envelope)),
                    );
                }
            }
        }
        if !sends.is_empty() {
            // Answers to peers may carry local events: durable first.
            if self.unflushed {
                self.flush(io)?;
            }
            self.send(io, sends);
        }
        self.settle_installed(io)?;
        self.release_held(io)
    }

    /// The events a peer whose version is `version` lacks, from the
    /// journal; if the journal deleted some of them, its snapshot first.
    fn serve_from_journal(
        &self,
        to: &str,
        mut version: VersionVector,
    ) -> Result<ReplicationOutputs<B>> {
        let pid = self.persistence_id.as_str();
        let mut answer = Vec::new();
        if self
            .deleted_through
            .as_ref()
            .is_some_and(|deleted| !version.descends(deleted))
        {
            if let Some(snapshot) = self.journal.load_snapshot(pid)? {
                version.merge(&snapshot.version);
                answer.push(ReplicationOutput::Send {
                    to: to.to_string(),
                    message: ReplicationMessage::Snapshot(SnapshotOffer {
                        version: snapshot.version,
                        events: snapshot.events,
                        state: snapshot.state,
                        holds: self.replication.log().version().clone(),
                    }),
                });
            }
        }
        let missing = self.journal.missing_for(pid, &version)?;
        answer.extend(self.replication.events_for(to, &missing));
        Ok(answer)
    }

    /// A peer's snapshot, for a replica that lacks events the peer deleted:
    /// the log starts again from it if it fits, and the journal saves it
    /// as its own snapshot, which then stands for the events it never held.
    fn take_snapshot(&mut self, from: &str, offer: SnapshotOffer) -> Result<ReplicationOutputs<B>> {
        let pid = self.persistence_id.clone();
        let Some(snapshots) = &self.snapshots else {
            tracing::warn!(persistence_id = pid, peer = from, "a peer sent a snapshot, and this replica takes none; give every replica the same snapshots and retention");
            return Ok(Vec::new());
        };
        let state = match (snapshots.decode)(&offer.state) {
            Ok(state) => state,
            Err(err) => {
                tracing::warn!(persistence_id = pid, peer = from, error = %Chain(&err), "cannot decode a peer's snapshot");
                return Ok(Vec::new());
            }
        };
        let snapshot = Snapshot {
            state,
            version: offer.version,
            events: offer.events,
        };
        if self.log().version().descends(&snapshot.version) {
            return Ok(Vec::new());
        }
        let Some(outputs) =
            self.replication
                .snapshot_received(from, snapshot.clone(), &offer.holds)
        else {
            return Ok(Vec::new());
        };
        tracing::info!(
            persistence_id = pid,
            peer = from,
            "started again from a peer's snapshot: it lacked events the peer deleted"
        );
        self.installed = Some((snapshot, offer.holds));
        Ok(outputs)
    }

    /// Saves the peer's snapshot the log started from once this replica
    /// holds what the peer held, and marks it as where the journal's
    /// history starts: recovery must not replay the journal alone, which
    /// lacks the snapshot's events.
    fn settle_installed(&mut self, io: &mut impl EntityIo<B::Event>) -> Result<()> {
        if !self
            .installed
            .as_ref()
            .is_some_and(|(_, holds)| self.log().version().descends(holds))
        {
            return Ok(());
        }
        // Snapshots the log compacts meanwhile wait (see `save_snapshot`).
        self.flush(io)?;
        let Some((snapshot, _)) = self.installed.take() else {
            return Ok(());
        };
        let pid = self.persistence_id.clone();
        let version = snapshot.version.clone();
        // Unsaved, the log holds what the journal cannot stand for: the
        // entity stops, and starts again from the journal and the peer's
        // next answer.
        if !self.save_snapshot(snapshot)? {
            return Err(Error::journal(
                self.journal.location(),
                Some(&pid),
                Some(Record::Snapshot),
                StoreFailure::Unsupported("snapshots of this entity"),
            ));
        }
        self.journal.flush()?;
        self.journal.delete_before(&pid, self.snapshot_from)?;
        self.deleted_before = Some(self.snapshot_from);
        self.deleted_through = Some(version);
        Ok(())
    }

    fn send(&mut self, io: &mut impl EntityIo<B::Event>, outputs: ReplicationOutputs<B>) {
        for output in outputs {
            if let ReplicationOutput::Send { to, message } = output {
                if !io.send(&to, message) {
                    self.replication.peer_down(&to);
                }
            }
        }
    }

    /// Numbers events just appended to the journal, for the subscribers and
    /// the snapshots' read positions.
    fn journaled(&mut self, io: &impl EntityIo<B::Event>, events: &[EventEnvelope<B::Event>]) {
        let publishing = io.publishing();
        for envelope in events {
            if self.snapshots.is_some() {
                self.positions.push_back((
                    self.next_sequence,
                    envelope.origin.clone(),
                    envelope.origin_seq,
                ));
            }
            // A subscriber that comes later gets only events journaled
            // after it, or replays the journal.
            if publishing {
                self.unpublished.push(EventApplied {
                    sequence: self.next_sequence,
                    envelope: envelope.clone(),
                });
            }
            self.next_sequence = self.next_sequence.saturating_add(1);
        }
    }

    /// Saves a snapshot the log compacted. Everything it covers must be
    /// durable first: a snapshot claiming events that a crash took back
    /// would make the replica mint their ids again. A snapshot that cannot
    /// be saved is logged and skipped (the journal still holds every
    /// event), and its error returned for the callers that cannot go on
    /// without it. True if it was saved. None is while a peer's snapshot
    /// waits to be (see `installed`): the journal lacks the events it covers.
    fn save_snapshot(&mut self, snapshot: Snapshot<B::State>) -> Result<bool> {
        let Some(snapshots) = &self.snapshots else {
            return Ok(false);
        };
        if self.installed.is_some() {
            return Ok(false);
        }
        // A snapshot taken before the last one saved would come with a read
        // position past events it does not cover.
        if snapshot.events <= self.snapshot_events {
            return Ok(false);
        }
        let persistence_id = self.persistence_id.as_str();
        let version = snapshot.version.clone();
        let stored = (snapshots.encode)(&snapshot.state).and_then(|encoded| {
            let from_sequence = if self.snapshot_from >= self.positions_from {
                let outside = self
                    .positions
                    .iter()
                    .filter(|(sequence, ..)| *sequence >= self.snapshot_from)
                    .find(|(_, origin, origin_seq)| *origin_seq > snapshot.version.get(origin));
                let from_sequence = outside.map_or(self.next_sequence, |(sequence, ..)| *sequence);
                debug_assert!(
                    self.journal
                        .first_sequence_outside(
                            persistence_id,
                            &snapshot.version,
                            self.snapshot_from
                        )
                        .ok()
                        .is_none_or(|read| read == from_sequence),
                    "the journal positions kept in memory agree with the journal"
                );
                from_sequence
            } else {
                self.journal.first_sequence_outside(
                    persistence_id,
                    &snapshot.version,
                    self.snapshot_from,
                )?
            };
            Ok(StoredSnapshot {
                version: snapshot.version,
                events: snapshot.events,
                from_sequence,
                sequence: self.journal.highest_sequence(persistence_id)?,
                state: encoded,
            })
        });
        let saved = stored.and_then(|stored| {
            self.journal.save_snapshot(persistence_id, &stored)?;
            Ok(stored.from_sequence)
        });
        match saved {
            Ok(from_sequence) => {
                tracing::debug!(
                    persistence_id,
                    events = snapshot.events,
                    from_sequence,
                    "saved a snapshot"
                );
                self.snapshot_from = from_sequence;
                self.snapshot_events = snapshot.events;
                self.last_saved = Some((version, from_sequence));
                while self
                    .positions
                    .front()
                    .is_some_and(|(sequence, ..)| *sequence < from_sequence)
                {
                    self.positions.pop_front();
                }
                self.positions_from = self.positions_from.max(from_sequence);
                // Durable with the next flush, at the latest when the
                // replica stops.
                self.unflushed = true;
                Ok(true)
            }
            Err(err) => {
                tracing::warn!(persistence_id, error = %Chain(&err), "cannot save a snapshot; recovery replays more events");
                Err(err)
            }
        }
    }
}
