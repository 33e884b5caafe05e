//! The Replicator actor: a thin shell that moves messages, timers and outputs
//! in and out of a [`ReplicatorCore`].

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;

use super::core::{
    CoreStats, Lookup, Output, PeerName, ReadOutcome, ReplicatorCore, RequestId, Timer,
};
use super::durable::{DurableStore, WriteMode};
use super::handle::ReplicatorConfig;
use super::registry::TypeRegistry;
use super::wire::Envelope;
use crate::discovery::{Discovery, PeerChange, PeerGroup, Peers};
use crate::disk_wait::disk_wait;
use crate::error::{Chain, Error, Result};
use crate::timers::Timers;

mod held;
mod messages;
mod outputs;
mod storage;

use held::Held;
use messages::Internal;
pub use messages::{
    Delete, DeleteResponse, Get, GetResponse, ReplicatorMessage, Retrieved, Subscribe, Update,
    UpdateResponse, Written,
};
pub(crate) use outputs::run_outputs;
use outputs::{cast_to, commit};
use storage::Storage;

pub(crate) enum Inbound {
    /// A message from another node's Replicator.
    Peer(Envelope),
    /// Bytes from the network that are not a valid peer message.
    Undecodable(String),
    /// A handle asks for the node's name and type registry.
    Describe(oneshot::Sender<(Arc<str>, Arc<TypeRegistry>)>),
    /// A timer the core asked for.
    Tick(Timer),
    /// Time for a discovery round.
    Discover,
    /// Time to flush a write-behind store.
    Flush,
    /// Time for the group commit: flush a write-through store and let out
    /// the announcements that waited for it.
    Commit,
}

pub(crate) enum Reply {
    Write(Box<dyn FnOnce(Result<Vec<PeerName>>) + Send>),
    Read(Box<dyn FnOnce(Result<ReadOutcome>) + Send>),
}

pub(crate) struct Subscription {
    pub(crate) listener: ActorId,
    /// Sends the key's state to the listener; false once the listener is gone.
    pub(crate) notify: Box<dyn Fn(Lookup<'_>) -> bool + Send>,
}

/// What [`Replicator`] is started with: its configuration.
///
/// The Replicator loads its durable store, chooses its incarnation and
/// recovers its keys in `pre_start`, so it can run under a supervisor of
/// your own: spawn it with `Actor::spawn_linked(Some(replicator_name(node)),
/// Replicator, ReplicatorArguments::from(config), supervisor)`, and after a
/// failure spawn it again with a new configuration (opening the same
/// store): it resumes with what the store holds. Naming it with
/// [`replicator_name`](crate::discovery::replicator_name) lets
/// [`DistributedData`](super::DistributedData) handles find the successor.
/// Drop the supervision event before spawning again: ractor hands the
/// stopped actor's state to the supervisor in `ActorTerminated`, and that
/// state holds the store open.
pub struct ReplicatorArguments {
    config: ReplicatorConfig,
}

impl From<ReplicatorConfig> for ReplicatorArguments {
    fn from(config: ReplicatorConfig) -> Self {
        Self { config }
    }
}

/// What a Replicator starts from, once its configuration is prepared.
pub(crate) struct Prepared {
    pub(crate) core: ReplicatorCore,
    pub(crate) discovery: Option<Box<dyn Discovery>>,
    pub(crate) discovery_interval: Option<Duration>,
    pub(crate) store: Option<(Box<dyn DurableStore>, WriteMode)>,
    pub(crate) membership: Option<crate::cluster::MemberEvents>,
}

/// The Replicator's state: its core plus what the shell must remember.
pub struct ReplicatorState {
    pub(crate) core: ReplicatorCore,
    next_request: RequestId,
    replies: HashMap<RequestId, Reply>,
    pub(crate) subscriptions: BTreeMap<String, Vec<Subscription>>,
    pub(crate) peers: Peers<ReplicatorMessage>,
    timers: Timers,
    storage: Option<Storage>,
    /// Messages for peers without a route yet.
    held: Held,
    /// Announcements waiting for the next group commit, in order.
    waiting_for_disk: Vec<Output>,
    /// An [`Inbound::Commit`] is on its way.
    commit_requested: bool,
}

impl ReplicatorState {
    /// Registers the reply of a request and returns its number.
    pub(crate) fn expect_reply(&mut self, reply: Reply) -> RequestId {
        self.next_request += 1;
        self.replies.insert(self.next_request, reply);
        self.next_request
    }

    /// Fails a request at once, for errors the core found before it acted.
    pub(crate) fn fail(&mut self, request: RequestId, err: Error) {
        match self.replies.remove(&request) {
            Some(Reply::Write(reply)) => reply(Err(err)),
            Some(Reply::Read(reply)) => reply(Err(err)),
            None => {}
        }
    }
}

/// The Replicator actor: one per node. Start it through
/// [`DistributedData::start`](super::DistributedData::start), or spawn it
/// yourself with [`ReplicatorArguments`] (under a supervisor, say) and
/// [`connect`](super::DistributedData::connect) a handle to it.
pub struct Replicator;

impl Actor for Replicator {
    type Msg = ReplicatorMessage;
    type State = ReplicatorState;
    type Arguments = ReplicatorArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> std::result::Result<Self::State, ActorProcessingErr> {
        let args = args.config.prepare()?;
        let node = args.core.node().to_string();
        let mut state = ReplicatorState {
            core: args.core,
            next_request: 0,
            replies: HashMap::new(),
            subscriptions: BTreeMap::new(),
            peers: Peers::new(args.discovery, PeerGroup::replicators(), node),
            timers: Timers::default(),
            storage: args.store.map(|(store, mode)| Storage::new(store, mode)),
            held: Held::default(),
            waiting_for_disk: Vec::new(),
            commit_requested: false,
        };
        if state.peers.register(&myself.get_cell()) {
            state.peers.request(&myself, || Inbound::Discover.into());
            if let Some(interval) = args.discovery_interval {
                state
                    .timers
                    .every(&myself, interval, || Inbound::Discover.into());
            }
        }
        if let Some(WriteMode::WriteBehind { interval }) = state.storage.as_ref().map(Storage::mode)
        {
            state
                .timers
                .every(&myself, interval, || Inbound::Flush.into());
        }
        if let Some(events) = args.membership {
            events.subscribe(myself.clone());
        }
        let outputs = state.core.start();
        run_outputs(&myself, &mut state, outputs);
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        // Callers waiting for the group commit get their answers.
        commit(&myself, state);
        if let Some(storage) = &mut state.storage {
            if let Err(err) = storage.flush(&state.core) {
                tracing::error!(error = %Chain(&err), "cannot flush the durable store on stop");
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        state.core.advance_clock(crate::wall_clock::millis());
        let outputs = match message {
            ReplicatorMessage::Update(Update(command))
            | ReplicatorMessage::Delete(Delete(command))
            | ReplicatorMessage::Get(Get(command))
            | ReplicatorMessage::Subscribe(Subscribe(command)) => command(state),
            ReplicatorMessage::Unsubscribe { key, listener } => {
                if let Some(subscriptions) = state.subscriptions.get_mut(&key) {
                    subscriptions.retain(|subscription| subscription.listener != listener);
                    if subscriptions.is_empty() {
                        state.subscriptions.remove(&key);
                    }
                }
                Vec::new()
            }
            ReplicatorMessage::GetKeys(reply) => {
                let _ = reply.send(state.core.keys().map(String::from).collect());
                Vec::new()
            }
            ReplicatorMessage::ReplicaId(reply) => {
                let _ = reply.send(state.core.replica().clone());
                Vec::new()
            }
            ReplicatorMessage::ReachablePeers(reply) => {
                let _ = reply.send(state.peers.nodes());
                Vec::new()
            }
            ReplicatorMessage::Stats(reply) => {
                let _ = reply.send(CoreStats {
                    subscriptions: state.subscriptions.values().map(Vec::len).sum(),
                    ..state.core.stats()
                });
                Vec::new()
            }
            ReplicatorMessage::RemoveMember(node) => {
                tracing::info!(node, "member removed");
                state.core.peer_removed(&node)
            }
            ReplicatorMessage::Internal(Internal(inbound)) => {
                handle_internal(&myself, state, inbound).await
            }
        };
        run_outputs(&myself, state, outputs);
        Ok(())
    }

    /// The Replicator supervises nothing; ractor tells it here that the
    /// Replicators' process group changed.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        state
            .peers
            .on_supervision(&event, &myself, || Inbound::Discover.into());
        Ok(())
    }
}

/// The Replicator's own work: peer messages, timers, flushes.
async fn handle_internal(
    myself: &ActorRef<ReplicatorMessage>,
    state: &mut ReplicatorState,
    inbound: Inbound,
) -> Vec<Output> {
    match inbound {
        Inbound::Peer(envelope) => {
            if !state.peers.contains(&envelope.from) {
                // Its answers would have nowhere to go: look again.
                state.peers.request(myself, || Inbound::Discover.into());
            }
            state.core.handle_message(&envelope.from, envelope.message)
        }
        Inbound::Undecodable(reason) => {
            tracing::warn!(
                node = state.core.node(),
                reason,
                "rejected an undecodable peer message"
            );
            state.core.record_undecodable_message();
            Vec::new()
        }
        Inbound::Describe(reply) => {
            let _ = reply.send((state.core.node().into(), state.core.types().clone()));
            Vec::new()
        }
        Inbound::Tick(timer) => state.core.handle_timer(timer),
        Inbound::Discover => discover(state).await,
        Inbound::Flush => {
            let flushed = disk_wait(|| state.storage.as_mut().map(|s| s.flush(&state.core)));
            if let Some(Err(err)) = flushed {
                tracing::error!(error = %Chain(&err), "cannot flush the durable store");
            }
            Vec::new()
        }
        Inbound::Commit => {
            commit(myself, state);
            Vec::new()
        }
    }
}

/// Runs a discovery round and tells the core which peers came and went.
/// Messages held for a peer that came up go to it first.
async fn discover(state: &mut ReplicatorState) -> Vec<Output> {
    state.held.expire(Instant::now());
    let mut outputs = Vec::new();
    for change in state.peers.round().await {
        match change {
            PeerChange::Down(node) => outputs.extend(state.core.peer_down(&node)),
            PeerChange::Up(node, replicator) => {
                let mut held = state.held.take(&node).into_iter();
                while let Some(message) = held.next() {
                    if let Some(message) = cast_to(&replicator, state.core.node(), message) {
                        // The new proxy stopped too: everything waits for the next.
                        let now = Instant::now();
                        for message in std::iter::once(message).chain(held.by_ref()) {
                            state.held.hold(&node, message, now);
                        }
                    }
                }
                outputs.extend(state.core.peer_up(&node));
            }
        }
    }
    outputs
}
