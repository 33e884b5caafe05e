//! A replicated event-sourced entity on one node: commands, replies, journal
//! and recovery.

mod support;

use ractor::call;
use ractor_replicated::persistence::journal::{Journal, SledJournal};
use ractor_replicated::persistence::replicated::{
    Effect, EntityMessage, EventHandler, EventMeta, LastWriterWins, ReplicatedEntity,
    ReplicatedEventSourcedActor, ReplicationContext,
};
use ractor_replicated::ReplicaId;
use serde::{Deserialize, Serialize};
use support::TempDir;

struct Counter;

enum Command {
    Add(i64),
    Reset,
    Read,
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
        }
    }
}

async fn send(entity: &ractor::ActorRef<EntityMessage<Counter>>, command: Command) -> Option<i64> {
    call!(entity, EntityMessage::Command, command)
        .expect("the entity answers")
        .expect("the journal takes the events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_persist_events_and_a_respawned_entity_recovers_them() {
    let dir = TempDir::new("entity");
    let replica = ReplicaId::new("node-a", 1);
    let spawn = || async {
        let journal = SledJournal::open(&dir.0).expect("the journal opens");
        ReplicatedEntity::spawn(
            Counter,
            LastWriterWins,
            journal,
            "counter-1",
            replica.clone(),
        )
        .await
        .expect("the entity starts")
    };

    let entity = spawn().await;
    assert_eq!(send(&entity, Command::Add(5)).await, Some(5));
    assert_eq!(
        send(&entity, Command::Add(0)).await,
        None,
        "nothing persisted, no reply"
    );
    assert_eq!(send(&entity, Command::Reset).await, None);
    assert_eq!(send(&entity, Command::Add(3)).await, Some(3));
    entity.stop_and_wait(None, None).await.unwrap();

    let journal = SledJournal::open(&dir.0).unwrap();
    assert_eq!(journal.highest_sequence("counter-1").unwrap(), 3);
    drop(journal);

    let entity = spawn().await;
    assert_eq!(send(&entity, Command::Read).await, Some(3));
    assert_eq!(call!(entity, EntityMessage::State).unwrap(), 3);
    assert_eq!(send(&entity, Command::Add(1)).await, Some(4));
    entity.stop_and_wait(None, None).await.unwrap();
}

/// A journal whose disk is gone: nothing can be appended.
struct BrokenJournal;

impl Journal for BrokenJournal {
    fn append<E: Serialize>(
        &mut self,
        persistence_id: &str,
        _: &[ractor_replicated::persistence::replicated::EventEnvelope<E>],
    ) -> ractor_replicated::Result<usize> {
        Err(ractor_replicated::Error::Store {
            path: "broken".into(),
            key: Some(persistence_id.into()),
            reason: "input/output error".into(),
        })
    }

    fn read_from<E: serde::de::DeserializeOwned>(
        &self,
        _: &str,
        _: u64,
    ) -> ractor_replicated::Result<
        Vec<(
            u64,
            ractor_replicated::persistence::replicated::EventEnvelope<E>,
        )>,
    > {
        Ok(Vec::new())
    }

    fn highest_sequence(&self, _: &str) -> ractor_replicated::Result<u64> {
        Ok(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_journal_refuses_is_neither_applied_nor_acknowledged() {
    let entity = ReplicatedEntity::spawn(
        Counter,
        LastWriterWins,
        BrokenJournal,
        "counter-2",
        ReplicaId::new("node-a", 1),
    )
    .await
    .unwrap();
    let outcome = call!(entity, EntityMessage::Command, Command::Add(2)).unwrap();
    assert!(outcome.is_err_and(|err| err.to_string().contains("input/output error")));
    assert_eq!(call!(entity, EntityMessage::State).unwrap(), 0);
    entity.stop_and_wait(None, None).await.unwrap();
}
