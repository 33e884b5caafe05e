//! The library's actors inside an application's own supervision tree.
//!
//! `cargo run --example supervised_app`
//!
//! An `App` supervisor spawns, linked to itself:
//! * the Replicator, with a durable store;
//! * a replicated entity (a ledger of deposits) journaling in the same sled
//!   database as the store (one cache, one file lock);
//! * an `Audit` listener that hears every change of a counter through its
//!   own message type (`From<Change<T>>`).
//!
//! Then an update closure panics (the caller gets `Error::Panicked`, the
//! Replicator goes on), the Replicator is killed and the supervisor starts
//! it again (it recovers the counter from its store, and the handle follows
//! it), and an `App` actor method writes at `Majority` without blocking
//! its mailbox, getting the answer as one of its messages.

use std::path::PathBuf;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_replicated::ddata::{
    Change, DistributedData, Durability, Key, KeySelection, ReadConsistency, Replicator,
    ReplicatorArguments, ReplicatorConfig, ReplicatorMessage, SledStore, UpdateResponse,
    WriteConsistency,
};
use ractor_replicated::discovery::{replicator_name, PeerGroup};
use ractor_replicated::persistence::{
    Effect, Entity, EntityArguments, EntityConfig, EventHandler, EventMeta, LastWriterWins,
    ReplicatedEntity, ReplicatedEventSourcedActor, ReplicationContext, SledJournal,
};
use ractor_replicated::{sled_db, Error, GCounter, ReplicaId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const NODE: &str = "app-node";

/// A ledger: deposits only, its state the balance.
struct Ledger;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Deposited(u64);

impl EventHandler for Ledger {
    type Event = Deposited;
    type State = u64;

    fn apply(&self, balance: &mut u64, event: &Deposited, _: EventMeta<'_>) {
        *balance += event.0;
    }
}

impl ReplicatedEventSourcedActor for Ledger {
    type Command = u64;
    type Reply = u64;

    fn handle_command(
        &self,
        balance: &u64,
        amount: u64,
        _: ReplicationContext<'_>,
    ) -> Effect<Deposited, u64> {
        Effect::persist([Deposited(amount)]).then_reply(balance + amount)
    }
}

/// Hears every change of the counter.
struct Audit;

enum AuditMessage {
    Counter(Change<GCounter>),
}

impl ractor::Message for AuditMessage {}

impl From<Change<GCounter>> for AuditMessage {
    fn from(change: Change<GCounter>) -> Self {
        Self::Counter(change)
    }
}

impl Actor for Audit {
    type Msg = AuditMessage;
    type State = mpsc::UnboundedSender<u128>;
    type Arguments = mpsc::UnboundedSender<u128>;

    async fn pre_start(
        &self,
        _: ActorRef<AuditMessage>,
        seen: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(seen)
    }

    async fn handle(
        &self,
        _: ActorRef<AuditMessage>,
        AuditMessage::Counter(change): AuditMessage,
        seen: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Change::Changed { value, .. } = change {
            println!("audit: the counter is {}", value.value());
            let _ = seen.send(value.value());
        }
        Ok(())
    }
}

/// The application's supervisor.
struct App;

enum AppMessage {
    /// Count a visit at `Majority` without waiting for the answer.
    Visit,
    /// The answer to a visit, as one of the App's messages.
    Counted(UpdateResponse<GCounter>),
}

impl ractor::Message for AppMessage {}

impl From<UpdateResponse<GCounter>> for AppMessage {
    fn from(response: UpdateResponse<GCounter>) -> Self {
        Self::Counted(response)
    }
}

struct AppState {
    db: sled::Db,
    audit: ActorRef<AuditMessage>,
    restarts: usize,
    answers: mpsc::UnboundedSender<String>,
}

fn visits() -> Key<GCounter> {
    Key::new("visits")
}

/// Spawns the Replicator under `app`, its store in the App's database, and
/// subscribes `audit` to the counter (subscriptions live in the Replicator,
/// so a new one needs them again).
async fn spawn_replicator(
    app: &ActorRef<AppMessage>,
    db: &sled::Db,
    audit: &ActorRef<AuditMessage>,
) -> Result<(), ActorProcessingErr> {
    let store = SledStore::with_db(db.clone(), NODE)?;
    let config =
        ReplicatorConfig::new(NODE).with_durability(Durability::new(store, KeySelection::All));
    let (replicator, _) = Actor::spawn_linked(
        Some(replicator_name(NODE)),
        Replicator,
        ReplicatorArguments::from(config),
        app.get_cell(),
    )
    .await?;
    ractor::cast!(
        replicator,
        ReplicatorMessage::subscribe(&visits(), audit.clone())
    )?;
    Ok(())
}

impl Actor for App {
    type Msg = AppMessage;
    type State = AppState;
    type Arguments = (
        PathBuf,
        mpsc::UnboundedSender<u128>,
        mpsc::UnboundedSender<String>,
    );

    async fn pre_start(
        &self,
        myself: ActorRef<AppMessage>,
        (dir, seen, answers): Self::Arguments,
    ) -> Result<AppState, ActorProcessingErr> {
        // One database for the store and the journal, with a small cache.
        let db = sled_db::open(&sled_db::config(&dir).cache_capacity(16 << 20))?;
        let (audit, _) = Actor::spawn_linked(None, Audit, seen, myself.get_cell()).await?;
        spawn_replicator(&myself, &db, &audit).await?;
        let config = EntityConfig::new("ledger", ReplicaId::new(NODE, 1));
        let arguments = EntityArguments::new(
            Ledger,
            LastWriterWins,
            SledJournal::with_db(db.clone()),
            config,
        );
        Actor::spawn_linked(
            Some(arguments.actor_name()),
            ReplicatedEntity::new(),
            arguments,
            myself.get_cell(),
        )
        .await?;
        Ok(AppState {
            db,
            audit,
            restarts: 0,
            answers,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<AppMessage>,
        message: AppMessage,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AppMessage::Visit => {
                let replicator: ActorRef<ReplicatorMessage> =
                    ractor::registry::where_is(replicator_name(NODE))
                        .expect("registered")
                        .into();
                // Alone, this node is a majority of itself: answered at once;
                // with peers the App would go on with other messages
                // meanwhile.
                let majority = WriteConsistency::majority(Duration::from_secs(1));
                ractor::cast!(
                    replicator,
                    ReplicatorMessage::update(
                        &visits(),
                        majority,
                        |c, me| c.apply(c.increment(me, 1)),
                        myself
                    )
                )?;
            }
            AppMessage::Counted(response) => {
                let answer = match response.result {
                    Ok(written) => format!("counted, held by {:?}", written.acknowledged_by),
                    Err(err) => format!("not counted: {err}"),
                };
                let _ = state.answers.send(answer);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<AppMessage>,
        event: SupervisionEvent,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        let replicator_stopped = match &event {
            SupervisionEvent::ActorTerminated(cell, ..)
            | SupervisionEvent::ActorFailed(cell, ..) => {
                cell.get_name() == Some(replicator_name(NODE))
            }
            _ => false,
        };
        // The event can hold the stopped actor's state: drop it first.
        drop(event);
        if replicator_stopped {
            state.restarts += 1;
            println!(
                "app: the Replicator stopped; starting it again (restart {})",
                state.restarts
            );
            spawn_replicator(&myself, &state.db, &state.audit).await?;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The panic below is caught by the Replicator; say so in one line
    // instead of the default hook's report.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("(caught by the Replicator) {info}")
    }));
    let dir = std::env::temp_dir().join(format!(
        "ractor_replicated-supervised-app-{}",
        std::process::id()
    ));
    let (seen_sender, mut seen) = mpsc::unbounded_channel();
    let (answer_sender, mut answers) = mpsc::unbounded_channel();
    let (app, _) = Actor::spawn(None, App, (dir.clone(), seen_sender, answer_sender)).await?;

    let replicator = ractor::registry::where_is(replicator_name(NODE)).expect("registered");
    let dd = DistributedData::connect(replicator.into()).await?;
    let ledger: Entity<Ledger> = Entity::for_actor(
        ractor::registry::where_is(PeerGroup::entity("ledger").actor_name(NODE))
            .expect("registered")
            .into(),
        "ledger",
    );

    dd.update(&visits(), WriteConsistency::Local, |c, me| {
        c.apply(c.increment(me, 2))
    })
    .await?;
    println!("ledger: balance {:?}", ledger.command(50).await?);

    let panicked = dd
        .update(&visits(), WriteConsistency::Local, |_, _| {
            panic!("a bug in my closure")
        })
        .await;
    assert!(matches!(panicked, Err(Error::Panicked { .. })));
    println!("a panicking update: {}", panicked.unwrap_err());

    dd.actor().kill();
    // The handle follows the Replicator the App starts again.
    let recovered = loop {
        if let Ok(value) = dd.get(&visits(), ReadConsistency::Local).await {
            break value.map(|c| c.value());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        recovered,
        Some(2),
        "the restarted Replicator recovered the counter"
    );
    println!("after the restart the counter is {recovered:?}");

    app.cast(AppMessage::Visit)?;
    let answer = tokio::time::timeout(Duration::from_secs(10), answers.recv())
        .await?
        .expect("an answer");
    println!("app: {answer}");
    let mut last = 0;
    while last < 3 {
        last = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await?
            .expect("audit runs");
    }
    println!("ledger: balance {}", ledger.state().await?);

    app.stop_and_wait(None, None).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
