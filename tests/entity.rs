//! A replicated event-sourced entity on one node: commands, replies, journal
//! and recovery.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{call, cast, Actor};
use ractor_replicated::discovery::PeerGroup;
use ractor_replicated::error::StoreFailure;
use ractor_replicated::persistence::{
    CommandResult, Effect, Entity, EntityArguments, EntityConfig, EntityMessage, EventApplied,
    EventEnvelope, EventHandler, EventMeta, Journal, LastWriterWins, MemoryJournal,
    ReplicatedEntity, ReplicatedEventSourcedActor, ReplicationContext, SledJournal,
};
use ractor_replicated::{ReplicaId, ReplyTo};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use test_support::{eventually, listener, next_matching, temp_dir, Restarter, SpawnChild};

struct Counter;

enum Command {
    Add(i64),
    Reset,
    Read,
    /// The handler panics on it.
    Explode,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Event {
    Added(i64),
    WasReset,
}

impl EventHandler for Counter {
    type Event = Event;
    type State = i64;

    fn apply(&self, state: &mut i64, event: &Event, _: EventMeta<'_>) {
        match event {
            Event::Added(n) => *state += n,
            Event::WasReset => *state = 0,
        }
    }
}

impl ReplicatedEventSourcedActor for Counter {
    type Command = Command;
    type Reply = i64;

    fn handle_command(
        &self,
        state: &i64,
        command: Command,
        _: ReplicationContext<'_>,
    ) -> Effect<Event, i64> {
        match command {
            Command::Add(0) => Effect::none(),
            Command::Add(n) => Effect::persist([Event::Added(n)]).then_reply(state + n),
            Command::Reset => Effect::persist([Event::WasReset]),
            Command::Read => Effect::reply(*state),
            Command::Explode => panic!("boom"),
        }
    }
}

async fn send(entity: &Entity<Counter>, command: Command) -> Option<i64> {
    entity
        .command(command)
        .await
        .expect("the journal takes the events")
}

async fn spawn<J: Journal + Sync>(journal: J, persistence_id: &str) -> Entity<Counter> {
    spawn_with(journal, persistence_id, None).await
}

async fn spawn_snapshotting<J: Journal + Sync>(
    journal: J,
    persistence_id: &str,
    every: usize,
) -> Entity<Counter> {
    spawn_with(journal, persistence_id, Some(every)).await
}

async fn spawn_with<J: Journal + Sync>(
    journal: J,
    persistence_id: &str,
    snapshot_every: Option<usize>,
) -> Entity<Counter> {
    let config = EntityConfig::new(persistence_id, ReplicaId::new("node-a", 1));
    match snapshot_every {
        Some(every) => {
            ReplicatedEntity::spawn_with_snapshots(Counter, LastWriterWins, journal, config, every)
                .await
        }
        None => ReplicatedEntity::spawn(Counter, LastWriterWins, journal, config).await,
    }
    .expect("the entity starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_persist_events_and_a_respawned_entity_recovers_them() {
    let dir = temp_dir("entity");
    let open = || SledJournal::open(dir.path()).expect("the journal opens");

    let entity = spawn(open(), "counter-1").await;
    assert_eq!(send(&entity, Command::Add(5)).await, Some(5));
    assert_eq!(
        send(&entity, Command::Add(0)).await,
        None,
        "nothing persisted, no reply"
    );
    assert_eq!(send(&entity, Command::Reset).await, None);
    assert_eq!(send(&entity, Command::Add(3)).await, Some(3));
    entity.stop().await;

    let journal = open();
    assert_eq!(journal.highest_sequence("counter-1").unwrap(), 3);
    drop(journal);

    let entity = spawn(open(), "counter-1").await;
    assert_eq!(send(&entity, Command::Read).await, Some(3));
    assert_eq!(entity.state().await.unwrap(), 3);
    assert_eq!(send(&entity, Command::Add(1)).await, Some(4));
    entity.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_a_crash_of_pipelined_commands() {
    let disk = MemoryJournal::new();
    let entity = spawn(disk.clone(), "counter-3").await;
    // Many commands in flight at once share journal flushes (group commit);
    // each is acknowledged only once its flush is done.
    let replies: Vec<_> = (1..=500)
        .map(|n| {
            let entity = entity.clone();
            tokio::spawn(async move { entity.command(Command::Add(n)).await })
        })
        .collect();
    for reply in replies {
        reply.await.unwrap().expect("acknowledged");
    }
    let acknowledged = entity.state().await.unwrap();
    assert_eq!(acknowledged, (1..=500).sum::<i64>());
    // A crash: the actor is gone without stopping, the disk keeps what was flushed.
    entity.actor().kill_and_wait(None).await.unwrap();
    disk.lose_unflushed();

    let entity = spawn(disk.clone(), "counter-3").await;
    assert_eq!(entity.state().await.unwrap(), acknowledged);
    entity.stop().await;
}

/// A journal whose disk is gone: nothing can be appended.
struct BrokenJournal;

/// The journal's disk failed, for `persistence_id` or (a flush) for all.
fn io_error(persistence_id: Option<&str>) -> ractor_replicated::Error {
    ractor_replicated::Error::journal(
        "broken",
        persistence_id,
        None,
        StoreFailure::engine(std::io::Error::other("input/output error")),
    )
}

impl Journal for BrokenJournal {
    fn append<E: Serialize>(
        &mut self,
        persistence_id: &str,
        _: &[EventEnvelope<E>],
    ) -> ractor_replicated::Result<usize> {
        Err(io_error(Some(persistence_id)))
    }

    fn flush(&mut self) -> ractor_replicated::Result<()> {
        Ok(())
    }

    fn read_from<E: DeserializeOwned>(
        &self,
        _: &str,
        _: u64,
    ) -> ractor_replicated::Result<Vec<(u64, EventEnvelope<E>)>> {
        Ok(Vec::new())
    }

    fn highest_sequence(&self, _: &str) -> ractor_replicated::Result<u64> {
        Ok(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_journal_refuses_is_neither_applied_nor_acknowledged() {
    let entity = spawn(BrokenJournal, "counter-2").await;
    let outcome = entity.command(Command::Add(2)).await;
    let err = outcome.unwrap_err();
    assert!(
        matches!(
            &err,
            ractor_replicated::Error::Journal {
                persistence_id: Some(id),
                failure: StoreFailure::Engine(source),
                ..
            } if id == "counter-2" && source.downcast_ref::<std::io::Error>().is_some()
        ),
        "{err:?}"
    );
    assert_eq!(entity.state().await.unwrap(), 0);
    entity.stop().await;
}

/// A journal that takes appends but cannot make them durable.
struct UnflushableJournal(MemoryJournal);

impl Journal for UnflushableJournal {
    fn append<E: Serialize>(
        &mut self,
        persistence_id: &str,
        events: &[EventEnvelope<E>],
    ) -> ractor_replicated::Result<usize> {
        self.0.append(persistence_id, events)
    }

    fn flush(&mut self) -> ractor_replicated::Result<()> {
        Err(io_error(None))
    }

    fn read_from<E: DeserializeOwned>(
        &self,
        persistence_id: &str,
        from: u64,
    ) -> ractor_replicated::Result<Vec<(u64, EventEnvelope<E>)>> {
        self.0.read_from(persistence_id, from)
    }

    fn highest_sequence(&self, persistence_id: &str) -> ractor_replicated::Result<u64> {
        self.0.highest_sequence(persistence_id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_cannot_flush_fails_the_command_and_stops_the_entity() {
    let entity = spawn(UnflushableJournal(MemoryJournal::new()), "counter-4").await;
    let outcome = entity.command(Command::Add(2)).await;
    let err = outcome.unwrap_err();
    assert!(
        matches!(
            &err,
            ractor_replicated::Error::Journal {
                persistence_id: None,
                failure: StoreFailure::Engine(source),
                ..
            } if source.downcast_ref::<std::io::Error>().is_some()
        ),
        "{err:?}"
    );
    let after = entity.state().await;
    assert!(
        after.is_err_and(|err| matches!(err, ractor_replicated::Error::EntityUnavailable { .. })),
        "its memory may be ahead of its disk: it must not answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_the_journal_already_holds_fails_the_command_and_stops_the_entity() {
    let mut disk = MemoryJournal::new();
    let entity = spawn(disk.clone(), "counter-5").await;
    // Another writer under the same replica id got there first, as with a
    // replica id reused for a second journal writer.
    let mut other = ractor_replicated::persistence::ReplicatedLog::new(
        ReplicaId::new("node-a", 1),
        Counter,
        LastWriterWins,
    );
    let theirs = other.apply_local(vec![Event::Added(100)], 0);
    disk.append("counter-5", &theirs).unwrap();

    let outcome = entity.command(Command::Add(1)).await;
    let err = outcome.unwrap_err();
    assert!(
        matches!(
            &err,
            ractor_replicated::Error::Journal {
                failure: StoreFailure::EventExists { origin, origin_seq: 1 },
                ..
            } if origin.starts_with("node-a")
        ),
        "{err:?}"
    );
    assert!(entity.state().await.is_err(), "the entity stopped");
    let journaled: Vec<(u64, EventEnvelope<Event>)> = disk.read_from("counter-5", 1).unwrap();
    assert_eq!(journaled.len(), 1);
    assert_eq!(journaled[0].1.event, Event::Added(100), "theirs stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshotting_entity_keeps_few_events_in_memory_and_restarts_from_its_snapshot() {
    let dir = temp_dir("entity-snapshots");
    let open = || SledJournal::open(dir.path()).expect("the journal opens");
    let entity = spawn_snapshotting(open(), "counter-6", 200).await;
    for n in 1..=1_000 {
        send(&entity, Command::Add(n)).await;
    }
    let stats = entity.stats().await.unwrap();
    assert_eq!(stats.events, 1_000);
    assert!(
        stats.events - stats.compacted_events < 2 * 200 + 64,
        "alone, a replica compacts all but the events since its last try: {stats:?}"
    );
    entity.stop().await;

    let journal = open();
    let snapshot = journal
        .load_snapshot("counter-6")
        .unwrap()
        .expect("a snapshot was saved");
    assert!(snapshot.events >= 600, "{snapshot:?}");
    assert_eq!(
        journal.highest_sequence("counter-6").unwrap(),
        1_000,
        "every event stays"
    );
    drop(journal);

    let entity = spawn_snapshotting(open(), "counter-6", 200).await;
    let stats = entity.stats().await.unwrap();
    assert_eq!(stats.events, 1_000);
    assert_eq!(
        stats.compacted_events, snapshot.events,
        "it started from the snapshot"
    );
    assert_eq!(entity.state().await.unwrap(), (1..=1_000).sum::<i64>());
    assert_eq!(send(&entity, Command::Add(1)).await, Some(500_501));
    entity.stop().await;

    // Without snapshots, the whole journal gives the same state.
    let entity = spawn(open(), "counter-6").await;
    assert_eq!(entity.stats().await.unwrap().compacted_events, 0);
    assert_eq!(entity.state().await.unwrap(), 500_501);
    entity.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_is_passed_over_for_the_whole_journal() {
    let disk = MemoryJournal::new();
    let entity = spawn_snapshotting(disk.clone(), "counter-7", 100).await;
    for n in 1..=300 {
        send(&entity, Command::Add(n)).await;
    }
    entity.stop().await;
    let good = disk.load_snapshot("counter-7").unwrap().expect("saved");
    let expected = (1..=300).sum::<i64>();

    let damaged = [
        ractor_replicated::codec::encode(&ractor_replicated::persistence::StoredSnapshot {
            state: vec![0xc1],
            ..good.clone()
        })
        .unwrap(),
        vec![0xff, 0x00, 0x13],
        Vec::new(),
    ];
    for bytes in damaged {
        disk.put_raw_snapshot("counter-7", bytes);
        let entity = spawn_snapshotting(disk.clone(), "counter-7", 100).await;
        let stats = entity.stats().await.unwrap();
        assert_eq!(stats.compacted_events, 0, "the snapshot was not used");
        assert_eq!(stats.events, 300);
        assert_eq!(entity.state().await.unwrap(), expected);
        entity.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_command_handler_is_an_error_and_the_entity_goes_on() {
    let entity = spawn(MemoryJournal::new(), "counter-panics").await;
    assert_eq!(send(&entity, Command::Add(2)).await, Some(2));
    let err = entity.command(Command::Explode).await.unwrap_err();
    assert!(
        matches!(&err, ractor_replicated::Error::Panicked { target, reason }
            if target == "counter-panics" && reason == "boom"),
        "{err:?}"
    );
    assert_eq!(send(&entity, Command::Add(3)).await, Some(5));
    assert_eq!(entity.state().await.unwrap(), 5);
    entity.stop().await;
}

/// A command's answer, tagged with the command it answers.
struct Answer(usize, CommandResult<i64>);

impl ractor::Message for Answer {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_work_with_call_and_answer_as_the_callers_messages() {
    let entity = spawn(MemoryJournal::new(), "counter-messages").await;
    let actor = entity.actor();
    let reply = call!(actor, EntityMessage::command, Command::Add(1)).unwrap();
    assert_eq!(reply.unwrap(), Some(1));

    // Pipelined commands answered to an actor, each tagged, in order.
    let (listener, mut answers) = listener::<Answer>().await;
    for (i, n) in [2, 3, 4].into_iter().enumerate() {
        let target = listener.clone();
        let reply = ReplyTo::actor_with(target, move |result| Answer(i, result));
        cast!(actor, EntityMessage::command(Command::Add(n), reply)).unwrap();
    }
    for (i, expected) in [3, 6, 10].into_iter().enumerate() {
        let Answer(tag, result) =
            next_matching(&mut answers, Duration::from_secs(10), |_| true).await;
        assert_eq!((tag, result.unwrap()), (i, Some(expected)));
    }
    assert_eq!(call!(actor, EntityMessage::State).unwrap(), 10);
    assert_eq!(call!(actor, EntityMessage::Stats).unwrap().events, 4);
    entity.stop().await;
}

const SUPERVISED_ID: &str = "counter-supervised";
const SUPERVISED_NODE: &str = "node-a";

/// Spawns a counter entity of `SUPERVISED_ID`, journaling in `dir`.
fn spawn_entity(dir: PathBuf) -> SpawnChild {
    Arc::new(move |supervisor| {
        let dir = dir.clone();
        Box::pin(async move {
            let journal = SledJournal::open(&dir)?;
            // The same replica id in every life: the journal holds its events.
            let config = EntityConfig::new(SUPERVISED_ID, ReplicaId::new(SUPERVISED_NODE, 1));
            let arguments = EntityArguments::new(Counter, LastWriterWins, journal, config);
            Actor::spawn_linked(
                Some(arguments.actor_name()),
                ReplicatedEntity::new(),
                arguments,
                supervisor,
            )
            .await?;
            Ok(())
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_under_a_supervisor_is_restarted_with_its_journal_and_the_handle_follows() {
    let dir = temp_dir("entity-supervised");
    let restarts = Arc::new(AtomicUsize::new(0));
    let spawn = spawn_entity(dir.path().to_path_buf());
    let (supervisor, _) = Actor::spawn(None, Restarter, (spawn, restarts.clone()))
        .await
        .expect("the supervisor and its entity start");
    let name = PeerGroup::entity(SUPERVISED_ID).actor_name(SUPERVISED_NODE);
    let actor = ractor::registry::where_is(name).expect("the entity is registered under its name");
    let entity: Entity<Counter> = Entity::for_actor(actor.into(), SUPERVISED_ID);
    assert_eq!(send(&entity, Command::Add(5)).await, Some(5));
    assert!(entity.command(Command::Explode).await.is_err());
    assert_eq!(
        restarts.load(Ordering::SeqCst),
        0,
        "a panicking command is not a failure"
    );

    entity.actor().kill();
    eventually(
        "the supervisor restarts the entity",
        Duration::from_secs(10),
        || async { restarts.load(Ordering::SeqCst) == 1 },
    )
    .await;
    eventually(
        "the handle reaches the successor",
        Duration::from_secs(10),
        || async { entity.command(Command::Read).await.is_ok() },
    )
    .await;
    assert_eq!(
        send(&entity, Command::Add(1)).await,
        Some(6),
        "the journal was replayed"
    );

    supervisor.stop_and_wait(None, None).await.unwrap();
    entity.stop().await;
}

/// A projection's own message type, fed by an entity's subscription.
#[derive(Debug, PartialEq)]
enum Projection {
    Applied(u64, Event),
}

impl ractor::Message for Projection {}

impl From<EventApplied<Event>> for Projection {
    fn from(applied: EventApplied<Event>) -> Self {
        Projection::Applied(applied.sequence, applied.envelope.event)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_replays_from_a_sequence_number_then_follows_without_gap_or_repeat() {
    let entity = spawn(MemoryJournal::new(), "projected").await;
    for n in 1..=10 {
        send(&entity, Command::Add(n)).await;
    }
    // Commands keep coming while the subscription replays the journal.
    let writers: Vec<_> = (11..=40)
        .map(|n| {
            let entity = entity.clone();
            tokio::spawn(async move { send(&entity, Command::Add(n)).await })
        })
        .collect();
    let (projection, mut applied) = listener::<Projection>().await;
    entity.subscribe_from(projection.clone(), 5).unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let mut received = Vec::new();
    while received.len() < 36 {
        received.push(next_matching(&mut applied, Duration::from_secs(10), |_| true).await);
    }
    let sequences: Vec<u64> = received
        .iter()
        .map(|Projection::Applied(sequence, _)| *sequence)
        .collect();
    assert_eq!(sequences, (5..=40).collect::<Vec<_>>());
    // The replayed part is the journal's: the first ten commands, in order.
    assert_eq!(received[0], Projection::Applied(5, Event::Added(5)));
    assert_eq!(received[5], Projection::Applied(10, Event::Added(10)));
    let mut added: Vec<i64> = received
        .iter()
        .filter_map(|Projection::Applied(_, event)| match event {
            Event::Added(n) => Some(*n),
            Event::WasReset => None,
        })
        .collect();
    added.sort_unstable();
    assert_eq!(added, (5..=40).collect::<Vec<_>>());

    entity.unsubscribe(projection.get_id()).unwrap();
    send(&entity, Command::Add(41)).await;
    // Everything sent to the projection is in its channel once it drained.
    projection.drain_and_wait(None).await.unwrap();
    assert!(applied.try_recv().is_err(), "nothing after unsubscribing");
    entity.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_events_once_durable_and_is_dropped_when_its_conversion_panics() {
    struct Fragile;
    impl ractor::Message for Fragile {}
    impl From<EventApplied<Event>> for Fragile {
        fn from(applied: EventApplied<Event>) -> Self {
            assert_ne!(
                applied.envelope.event,
                Event::WasReset,
                "cannot take a reset"
            );
            Fragile
        }
    }
    let entity = spawn(MemoryJournal::new(), "fragile").await;
    let (fragile, mut fragile_applied) = listener::<Fragile>().await;
    let (plain, mut plain_applied) = listener::<EventApplied<Event>>().await;
    entity.subscribe(fragile.clone()).unwrap();
    entity.subscribe(plain).unwrap();
    send(&entity, Command::Add(1)).await;
    send(&entity, Command::Reset).await;
    send(&entity, Command::Add(2)).await;
    for expected in [Event::Added(1), Event::WasReset, Event::Added(2)] {
        let applied = next_matching(&mut plain_applied, Duration::from_secs(10), |_| true).await;
        assert_eq!(applied.envelope.event, expected);
    }
    fragile.drain_and_wait(None).await.unwrap();
    let mut fragile_count = 0;
    while fragile_applied.try_recv().is_ok() {
        fragile_count += 1;
    }
    assert_eq!(fragile_count, 1, "dropped at the event it could not take");
    entity.stop().await;
}
