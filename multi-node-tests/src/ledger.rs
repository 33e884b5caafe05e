//! The replicated entities the node processes run: a ledger that records
//! entries in the order it applies them, so replicas agree only if they apply
//! the same events in the same order, and an entry applied twice shows; and,
//! for benchmarks, a tally that keeps only a count and an order-sensitive
//! digest of the same events, so its state stays small.

use std::hash::{Hash, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_replicated::persistence::{
    Effect, EventApplied, EventHandler, EventMeta, ReplicatedEventSourcedActor, ReplicationContext,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The persistence id every node's ledger replicates.
pub const LEDGER_ID: &str = "ledger";
/// The persistence id every node's tally replicates.
pub const TALLY_ID: &str = "tally";

/// The behaviour: a ledger keeps every entry, a tally only counts them.
pub struct Ledger {
    /// Whether the state holds the entries themselves.
    pub keep_entries: bool,
}

/// What a ledger or tally holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LedgerState {
    /// The entries, in the order applied (a ledger only).
    pub entries: Vec<String>,
    /// How many entries were applied.
    pub count: u64,
    /// A hash of the entries in the order applied.
    pub digest: u64,
}

/// An entry, stamped with the writer's wall clock to measure replica lag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    /// The entry.
    pub entry: String,
    /// When the writer recorded it, in microseconds since the epoch.
    pub at_micros: u64,
}

impl EventHandler for Ledger {
    type Event = Recorded;
    type State = LedgerState;

    fn apply(&self, state: &mut LedgerState, event: &Recorded, _: EventMeta<'_>) {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        event.entry.hash(&mut hasher);
        state.digest = state.digest.rotate_left(7) ^ hasher.finish();
        state.count += 1;
        if self.keep_entries {
            state.entries.push(event.entry.clone());
        }
    }
}

impl ReplicatedEventSourcedActor for Ledger {
    type Command = String;
    type Reply = u64;

    fn handle_command(
        &self,
        state: &LedgerState,
        entry: String,
        _: ReplicationContext<'_>,
    ) -> Effect<Recorded, u64> {
        let event = Recorded {
            entry,
            at_micros: now_micros(),
        };
        Effect::persist([event]).then_reply(state.count + 1)
    }
}

/// Microseconds since the epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Records, for each event another replica wrote, how long ago (wall clock,
/// same machine) it was recorded: the replica lag.
pub struct LagWatcher;

/// What a [`LagWatcher`] needs: the local node, whose own events it skips,
/// and where to send lags.
pub type LagWatcherArguments = (String, mpsc::UnboundedSender<u64>);

impl Actor for LagWatcher {
    type Msg = EventApplied<Recorded>;
    type State = LagWatcherArguments;
    type Arguments = LagWatcherArguments;

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
        EventApplied { envelope, .. }: Self::Msg,
        (node, lags): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if envelope.origin.node() != node.as_str() {
            let _ = lags.send(now_micros().saturating_sub(envelope.event.at_micros));
        }
        Ok(())
    }
}
