//! An entity's event and state types change between releases; the journal
//! and the snapshots the old release wrote must still read. Version 1 of an
//! account journals events and snapshots; version 2, which changed both
//! types the ways docs/replicated-event-sourcing.md ("Evolving event and
//! state types") allows, recovers them to the same balance and goes on.
//! What the rules forbid fails as an error, never a panic.

use ractor_replicated::persistence::{
    EntityCore, EntityIo, EventApplied, Journal, LastWriterWins, MemoryJournal,
    ReplicatedEventSourcedActor, ReplicatedLog, ReplicationMessage, Snapshots,
};
use ractor_replicated::ReplicaId;

const ACCOUNT: &str = "account-1";

/// Runs a core without peers or subscribers; flushes at once.
#[derive(Default)]
struct Alone {
    flush: bool,
}

impl<E> EntityIo<E> for Alone {
    fn send(&mut self, _: &str, _: ReplicationMessage<E>) -> bool {
        true
    }

    fn schedule_flush(&mut self) -> bool {
        self.flush = true;
        true
    }

    fn publishing(&self) -> bool {
        false
    }

    fn publish(&mut self, _: Vec<EventApplied<E>>) {}
}

/// The first release.
mod v1 {
    use ractor_replicated::persistence::{
        Effect, EventHandler, EventMeta, ReplicatedEventSourcedActor, ReplicationContext,
    };
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub enum AccountEvent {
        Deposited { cents: i64, note: String },
        Withdrawn(i64),
    }

    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    pub struct Balance {
        pub cents: i64,
        pub operations: u64,
    }

    pub struct Account;

    impl EventHandler for Account {
        type Event = AccountEvent;
        type State = Balance;

        fn apply(&self, state: &mut Balance, event: &AccountEvent, _: EventMeta<'_>) {
            match event {
                AccountEvent::Deposited { cents, .. } => state.cents += cents,
                AccountEvent::Withdrawn(cents) => state.cents -= cents,
            }
            state.operations += 1;
        }
    }

    impl ReplicatedEventSourcedActor for Account {
        type Command = AccountEvent;
        type Reply = ();

        fn handle_command(
            &self,
            _: &Balance,
            event: AccountEvent,
            _: ReplicationContext<'_>,
        ) -> Effect<AccountEvent, ()> {
            Effect::persist([event])
        }
    }
}

/// The next release: a field added at the end of a variant, a field
/// renamed, a variant renamed (with the old name as an alias) and a new
/// variant; the state gained a field in the middle and lost none.
mod v2 {
    use ractor_replicated::persistence::{
        Effect, EventHandler, EventMeta, ReplicatedEventSourcedActor, ReplicationContext,
    };
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub enum AccountEvent {
        Deposited {
            cents: i64,
            memo: String,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            currency: Option<String>,
        },
        #[serde(alias = "Withdrawn")]
        Debited(i64),
        Frozen,
    }

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct Balance {
        pub cents: i64,
        #[serde(default)]
        pub frozen: bool,
        pub operations: u64,
    }

    pub struct Account;

    impl EventHandler for Account {
        type Event = AccountEvent;
        type State = Balance;

        fn apply(&self, state: &mut Balance, event: &AccountEvent, _: EventMeta<'_>) {
            match event {
                AccountEvent::Deposited { cents, .. } => state.cents += cents,
                AccountEvent::Debited(cents) => state.cents -= cents,
                AccountEvent::Frozen => state.frozen = true,
            }
            state.operations += 1;
        }
    }

    impl ReplicatedEventSourcedActor for Account {
        type Command = AccountEvent;
        type Reply = ();

        fn handle_command(
            &self,
            _: &Balance,
            event: AccountEvent,
            _: ReplicationContext<'_>,
        ) -> Effect<AccountEvent, ()> {
            Effect::persist([event])
        }
    }
}

type Core<B> = EntityCore<B, LastWriterWins, MemoryJournal>;

fn start<B>(behaviour: B, journal: &MemoryJournal, snapshot_every: usize) -> Core<B>
where
    B: ReplicatedEventSourcedActor,
    B::State: serde::Serialize + serde::de::DeserializeOwned,
{
    let log = ReplicatedLog::new(ReplicaId::new("node-a", 1), behaviour, LastWriterWins);
    EntityCore::recover(
        ACCOUNT,
        log,
        journal.clone(),
        Some(Snapshots::every(snapshot_every)),
        1 << 20,
    )
    .expect("the journal reads")
}

/// Runs `command` and its flush; panics if it is not acknowledged.
fn run<B: ReplicatedEventSourcedActor>(core: &mut Core<B>, command: B::Command) {
    let mut io = Alone::default();
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&acknowledged);
    core.command(&mut io, command, 0, move |result| {
        flag.store(result.is_ok(), std::sync::atomic::Ordering::SeqCst);
    })
    .expect("the command runs");
    if io.flush {
        core.scheduled_flush(&mut io).expect("flushes");
    }
    assert!(acknowledged.load(std::sync::atomic::Ordering::SeqCst));
}

#[test]
fn the_next_release_reads_the_journal_and_snapshots_of_the_last() {
    let journal = MemoryJournal::new();
    let mut old = start(v1::Account, &journal, 2);
    for event in [
        v1::AccountEvent::Deposited {
            cents: 1_000,
            note: "salary".into(),
        },
        v1::AccountEvent::Withdrawn(300),
        v1::AccountEvent::Deposited {
            cents: 50,
            note: "refund".into(),
        },
    ] {
        run(&mut old, event);
    }
    let mut io = Alone::default();
    old.stop(&mut io);
    assert!(
        journal.load_snapshot(ACCOUNT).expect("reads").is_some(),
        "version 1 saved a snapshot of its state"
    );

    // From the snapshot and the event after it.
    let mut new = start(v2::Account, &journal, 1_000);
    assert!(
        new.recovered().snapshot_from.is_some(),
        "the old snapshot was used"
    );
    let expected = v2::Balance {
        cents: 750,
        frozen: false,
        operations: 3,
    };
    assert_eq!(new.log().state(), &expected);
    run(&mut new, v2::AccountEvent::Frozen);
    run(
        &mut new,
        v2::AccountEvent::Deposited {
            cents: 5,
            memo: "interest".into(),
            currency: Some("EUR".into()),
        },
    );
    new.stop(&mut io);

    // Every event, old and new, from the journal alone.
    let replayed: Vec<v2::AccountEvent> = journal
        .read_from(ACCOUNT, 1)
        .expect("the whole journal reads")
        .into_iter()
        .map(|(_, envelope)| envelope.event)
        .collect();
    assert_eq!(
        replayed,
        [
            v2::AccountEvent::Deposited {
                cents: 1_000,
                memo: "salary".into(),
                currency: None,
            },
            v2::AccountEvent::Debited(300),
            v2::AccountEvent::Deposited {
                cents: 50,
                memo: "refund".into(),
                currency: None,
            },
            v2::AccountEvent::Frozen,
            v2::AccountEvent::Deposited {
                cents: 5,
                memo: "interest".into(),
                currency: Some("EUR".into()),
            },
        ]
    );
    let again = start(v2::Account, &journal, 1_000);
    assert_eq!(
        again.log().state(),
        &v2::Balance {
            cents: 755,
            frozen: true,
            operations: 5,
        }
    );
}

/// Events of a release that the one before cannot know (a new variant, a
/// field set that it lacks) are an error for it, not a panic: readers must
/// be upgraded before writers use what is new.
#[test]
fn the_last_release_refuses_what_it_cannot_know_without_panicking() {
    let journal = MemoryJournal::new();
    let mut new = start(v2::Account, &journal, 1_000);
    run(&mut new, v2::AccountEvent::Frozen);
    let mut io = Alone::default();
    new.stop(&mut io);
    let read = journal.read_from::<v1::AccountEvent>(ACCOUNT, 1);
    assert!(read.is_err(), "an unknown variant: {read:?}");

    let journal = MemoryJournal::new();
    let mut new = start(v2::Account, &journal, 1_000);
    run(
        &mut new,
        v2::AccountEvent::Deposited {
            cents: 1,
            memo: "m".into(),
            currency: Some("EUR".into()),
        },
    );
    new.stop(&mut io);
    assert!(journal.read_from::<v1::AccountEvent>(ACCOUNT, 1).is_err());

    // Left unset, the new field is not written: the last release reads it.
    let journal = MemoryJournal::new();
    let mut new = start(v2::Account, &journal, 1_000);
    run(
        &mut new,
        v2::AccountEvent::Deposited {
            cents: 1,
            memo: "m".into(),
            currency: None,
        },
    );
    new.stop(&mut io);
    let read: Vec<v1::AccountEvent> = journal
        .read_from(ACCOUNT, 1)
        .expect("reads")
        .into_iter()
        .map(|(_, envelope)| envelope.event)
        .collect();
    assert_eq!(
        read,
        [v1::AccountEvent::Deposited {
            cents: 1,
            note: "m".into(),
        }]
    );
}
