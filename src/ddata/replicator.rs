//! The Replicator actor: a thin shell that moves messages, timers and effects
//! in and out of a [`ReplicatorCore`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use ractor::concurrency::JoinHandle;
use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};

use super::core::{Effect, Lookup, PeerName, ReadOutcome, ReplicatorCore, RequestId, Timer};
use super::durable::{DurableStore, WriteMode};
use super::wire::{Envelope, PeerMessage, WireValue, MESSAGE_VARIANT};
use crate::discovery::{DiscoveredPeer, Discovery, PeerGroup};
use crate::error::{Error, Result};
use crate::remote_cast;

mod held;

use held::Held;

/// The messages of the [`Replicator`] actor. Only peer messages cross the
/// network; everything else is built by [`DistributedData`](super::DistributedData).
pub struct ReplicatorMessage(pub(crate) Inbound);

pub(crate) enum Inbound {
    /// A message from another node's Replicator.
    Peer(Envelope),
    /// Bytes from the network that are not a valid peer message.
    Undecodable(String),
    /// Work from the local handle, run inside the actor.
    Command(Command),
    /// A timer the core asked for.
    Tick(Timer),
    /// Time to poll discovery.
    Discover,
    /// Time to flush a write-behind store.
    Flush,
}

pub(crate) type Command = Box<dyn FnOnce(&mut ReplicatorState) -> Vec<Effect> + Send>;

impl ractor::Message for ReplicatorMessage {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> std::result::Result<SerializedMessage, BoxedDowncastErr> {
        match self.0 {
            Inbound::Peer(envelope) => remote_cast::encode(MESSAGE_VARIANT, &envelope),
            _ => Err(BoxedDowncastErr),
        }
    }

    /// Never fails: bytes that are not a peer message become an undecodable
    /// message, so the Replicator counts and logs them instead of ractor
    /// dropping them silently.
    fn deserialize(message: SerializedMessage) -> std::result::Result<Self, BoxedDowncastErr> {
        Ok(Self(match remote_cast::decode(MESSAGE_VARIANT, message) {
            Ok(envelope) => Inbound::Peer(envelope),
            Err(reason) => Inbound::Undecodable(reason),
        }))
    }
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

/// What [`Replicator`] is started with.
pub struct ReplicatorArguments {
    pub(crate) core: ReplicatorCore,
    pub(crate) discovery: Option<Box<dyn Discovery>>,
    pub(crate) discovery_interval: Duration,
    pub(crate) store: Option<(Box<dyn DurableStore>, WriteMode)>,
}

/// The durable store and what has not reached its disk yet.
pub(crate) struct Storage {
    store: Box<dyn DurableStore>,
    mode: WriteMode,
    /// Write-behind: keys changed since the last flush, each written once then.
    pending: BTreeSet<String>,
    /// Keys whose current state the store refused: retried before anything
    /// else is made durable, and until they are stored nothing counts as
    /// durable.
    failed: BTreeSet<String>,
    unflushed: bool,
}

impl Storage {
    /// Notes that `key` changed: written now (write-through) or at the next
    /// flush (write-behind, which so writes a busy key once per interval).
    fn record(&mut self, core: &ReplicatorCore, key: String) -> Result<()> {
        match self.mode {
            WriteMode::WriteThrough => self.persist(core, key),
            WriteMode::WriteBehind { .. } => {
                self.pending.insert(key);
                Ok(())
            }
        }
    }

    /// Writes `key`'s current state to the store; a key the store refuses
    /// is kept for the next attempt.
    fn persist(&mut self, core: &ReplicatorCore, key: String) -> Result<()> {
        let written = match core.lookup(&key) {
            Lookup::Absent => self.store.remove(&key),
            Lookup::Deleted => self.store.store(&key, &WireValue::Deleted),
            Lookup::Live { tag, value } => value.encode_erased().and_then(|state| {
                let value = WireValue::Live {
                    tag: tag.to_string(),
                    state,
                };
                self.store.store(&key, &value)
            }),
        };
        match written {
            Ok(()) => {
                self.failed.remove(&key);
                self.unflushed = true;
                Ok(())
            }
            Err(err) => {
                self.failed.insert(key);
                Err(err)
            }
        }
    }

    /// Writes the keys refused before and the pending ones, and makes
    /// everything written durable. Fails while any key's current state is
    /// not stored.
    fn flush(&mut self, core: &ReplicatorCore) -> Result<()> {
        let mut first_failure = None;
        let keys: Vec<String> = std::mem::take(&mut self.failed)
            .into_iter()
            .chain(std::mem::take(&mut self.pending))
            .collect();
        for key in keys {
            if let Err(err) = self.persist(core, key) {
                first_failure.get_or_insert(err);
            }
        }
        if self.unflushed {
            self.store.flush()?;
            self.unflushed = false;
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Write-through: nothing is announced (acknowledged, answered, sent)
    /// before the states it depends on are on disk.
    fn flush_before_announcing(&mut self, core: &ReplicatorCore) -> Result<()> {
        match self.mode {
            WriteMode::WriteThrough => self.flush(core),
            WriteMode::WriteBehind { .. } => Ok(()),
        }
    }

    fn failure(&self, reason: &str) -> Error {
        Error::Store {
            path: self.store.location(),
            key: None,
            reason: reason.to_string(),
        }
    }
}

/// The Replicator's state: its core plus what the shell must remember.
pub struct ReplicatorState {
    pub(crate) core: ReplicatorCore,
    next_request: RequestId,
    replies: HashMap<RequestId, Reply>,
    pub(crate) subscriptions: BTreeMap<String, Vec<Subscription>>,
    pub(crate) peers: BTreeMap<PeerName, ActorRef<ReplicatorMessage>>,
    discovery: Option<Box<dyn Discovery>>,
    timers: Vec<JoinHandle<()>>,
    storage: Option<Storage>,
    /// Messages for peers without a route yet.
    held: Held,
    /// A discovery round was asked for and has not run yet.
    discovery_requested: bool,
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

/// The Replicator actor. Start it through
/// [`DistributedData::start`](super::DistributedData::start), which also
/// registers it under its node-unique name so peers discover it.
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
        let mut state = ReplicatorState {
            core: args.core,
            next_request: 0,
            replies: HashMap::new(),
            subscriptions: BTreeMap::new(),
            peers: BTreeMap::new(),
            discovery: args.discovery,
            timers: Vec::new(),
            storage: args.store.map(|(store, mode)| Storage {
                store,
                mode,
                pending: BTreeSet::new(),
                failed: BTreeSet::new(),
                unflushed: false,
            }),
            held: Held::default(),
            discovery_requested: false,
        };
        if let Some(discovery) = &state.discovery {
            discovery.register(&PeerGroup::replicators(), &myself.get_cell());
            let _ = myself.cast(ReplicatorMessage(Inbound::Discover));
            state
                .timers
                .push(myself.send_interval(args.discovery_interval, || {
                    ReplicatorMessage(Inbound::Discover)
                }));
        }
        if let Some(WriteMode::WriteBehind { interval }) = state.storage.as_ref().map(|s| s.mode) {
            state
                .timers
                .push(myself.send_interval(interval, || ReplicatorMessage(Inbound::Flush)));
        }
        let effects = state.core.start();
        run_effects(&myself, &mut state, effects);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        for timer in state.timers.drain(..) {
            timer.abort();
        }
        if let Some(storage) = &mut state.storage {
            if let Err(err) = storage.flush(&state.core) {
                tracing::error!(error = %err, "cannot flush the durable store on stop");
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
        let effects = match message.0 {
            Inbound::Peer(envelope) => {
                if !state.peers.contains_key(&envelope.from) {
                    // Its answers would have nowhere to go: look again.
                    request_discovery(&myself, state);
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
            Inbound::Command(command) => command(state),
            Inbound::Tick(timer) => state.core.handle_timer(timer),
            Inbound::Discover => discover(state).await,
            Inbound::Flush => {
                if let Some(Err(err)) = state.storage.as_mut().map(|s| s.flush(&state.core)) {
                    tracing::error!(error = %err, "cannot flush the durable store");
                }
                Vec::new()
            }
        };
        run_effects(&myself, state, effects);
        Ok(())
    }
}

/// Polls discovery and tells the core which peers came and went. A peer whose
/// proxy changed restarted or reconnected: it is reported down and up again so
/// that it gets every digest and catches up.
async fn discover(state: &mut ReplicatorState) -> Vec<Effect> {
    state.discovery_requested = false;
    state.held.expire(Instant::now());
    let Some(discovery) = &state.discovery else {
        return Vec::new();
    };
    let found: BTreeMap<PeerName, ActorRef<ReplicatorMessage>> = discovery
        .discover(&PeerGroup::replicators())
        .await
        .into_iter()
        .filter(|peer| peer.node != state.core.node())
        .map(|DiscoveredPeer { node, actor }| (node, actor.into()))
        .collect();
    let mut effects = Vec::new();
    let gone: Vec<PeerName> = state
        .peers
        .keys()
        .filter(|node| !found.contains_key(*node))
        .cloned()
        .collect();
    for node in gone {
        state.peers.remove(&node);
        tracing::debug!(node, "peer replicator gone");
        effects.extend(state.core.peer_down(&node));
    }
    for (node, replicator) in found {
        let known = state.peers.get(&node).map(|known| known.get_id());
        if known == Some(replicator.get_id()) {
            continue;
        }
        if known.is_some() {
            effects.extend(state.core.peer_down(&node));
        }
        tracing::debug!(node, "peer replicator up");
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
        state.peers.insert(node.clone(), replicator);
        effects.extend(state.core.peer_up(&node));
    }
    effects
}

pub(crate) fn run_effects(
    myself: &ActorRef<ReplicatorMessage>,
    state: &mut ReplicatorState,
    effects: Vec<Effect>,
) {
    // With write-through, whatever an announcement depends on is flushed
    // first, once per stretch of the batch between writes. While the store
    // fails, this replica claims nothing about its disk: local writes fail,
    // and no WriteAck or read answer leaves it, so no peer counts it for a
    // write it did not store. Gossip goes on; it claims nothing.
    let mut durable: Option<std::result::Result<(), String>> = None;
    let mut broken_routes = BTreeSet::new();
    for effect in effects {
        if matches!(
            effect,
            Effect::Send { .. } | Effect::WriteDone { .. } | Effect::ReadDone { .. }
        ) && durable.is_none()
        {
            durable = Some(flush_before_announcing(state));
        }
        let store_failure = durable.as_ref().and_then(|d| d.as_ref().err());
        match effect {
            Effect::Send { to, message } => {
                let claims_durability = matches!(
                    message,
                    PeerMessage::WriteAck { .. } | PeerMessage::ReadReply { .. }
                );
                if claims_durability && store_failure.is_some() {
                    tracing::warn!(peer = to, "no answer sent: the durable store failed");
                    continue;
                }
                let unsent = match state.peers.get(&to) {
                    Some(peer) => cast_to(peer, state.core.node(), message),
                    None => Some(message),
                };
                if let Some(message) = unsent {
                    // No route yet (the peer spoke first) or a stopped proxy:
                    // the message waits for discovery to find the peer.
                    if state.peers.contains_key(&to) {
                        broken_routes.insert(to.clone());
                    }
                    state.held.hold(&to, message, Instant::now());
                    request_discovery(myself, state);
                }
            }
            Effect::Schedule { timer, after } => {
                let tick = move || ReplicatorMessage(Inbound::Tick(timer));
                if after.is_zero() {
                    let _ = myself.cast(tick());
                } else {
                    myself.send_after(after, tick);
                }
            }
            Effect::Notify { keys } => notify(state, keys),
            Effect::Persist { key } => {
                if let Some(storage) = &mut state.storage {
                    durable = match storage.record(&state.core, key) {
                        Ok(()) => None,
                        Err(err) => {
                            tracing::error!(error = %err, "cannot store a durable key");
                            Some(Err(err.to_string()))
                        }
                    };
                }
            }
            Effect::WriteDone { request, result } => match state.replies.remove(&request) {
                Some(Reply::Write(reply)) => {
                    let failed = store_failure.zip(state.storage.as_ref());
                    match (result, failed) {
                        (Ok(_), Some((reason, storage))) => reply(Err(storage.failure(reason))),
                        (result, _) => reply(result),
                    }
                }
                Some(Reply::Read(_)) | None => {
                    tracing::error!(request, "a write finished that nobody waits for")
                }
            },
            Effect::ReadDone { request, result } => match state.replies.remove(&request) {
                Some(Reply::Read(reply)) => reply(result),
                Some(Reply::Write(_)) | None => {
                    tracing::error!(request, "a read finished that nobody waits for")
                }
            },
        }
    }
    if durable.is_none() {
        let _ = flush_before_announcing(state);
    }
    for peer in broken_routes {
        tracing::debug!(peer, "peer proxy stopped");
        state.peers.remove(&peer);
        let effects = state.core.peer_down(&peer);
        run_effects(myself, state, effects);
    }
}

/// Asks for a discovery round soon, once however many messages wait.
fn request_discovery(myself: &ActorRef<ReplicatorMessage>, state: &mut ReplicatorState) {
    if !state.discovery_requested {
        state.discovery_requested = true;
        let _ = myself.cast(ReplicatorMessage(Inbound::Discover));
    }
}

/// Casts `message` from node `from` to a peer Replicator; gives it back if
/// the peer's proxy is gone.
fn cast_to(
    peer: &ActorRef<ReplicatorMessage>,
    from: &str,
    message: PeerMessage,
) -> Option<PeerMessage> {
    let envelope = Envelope {
        from: from.to_string(),
        message,
    };
    match peer.cast(ReplicatorMessage(Inbound::Peer(envelope))) {
        Ok(()) => None,
        Err(ractor::MessagingErr::SendErr(ReplicatorMessage(Inbound::Peer(envelope)))) => {
            Some(envelope.message)
        }
        Err(err) => {
            tracing::warn!(error = %err, "a message to a peer was lost; anti-entropy will repair");
            None
        }
    }
}

/// Write-through flush ahead of an announcement; the failure, logged.
fn flush_before_announcing(state: &mut ReplicatorState) -> std::result::Result<(), String> {
    let core = &state.core;
    let Some(storage) = state.storage.as_mut() else {
        return Ok(());
    };
    storage.flush_before_announcing(core).map_err(|err| {
        tracing::error!(error = %err, "cannot flush the durable store");
        err.to_string()
    })
}

fn notify(state: &mut ReplicatorState, keys: Vec<String>) {
    for key in keys {
        let Some(subscriptions) = state.subscriptions.get_mut(&key) else {
            continue;
        };
        let lookup = state.core.lookup(&key);
        subscriptions.retain(|subscription| (subscription.notify)(lookup));
        if subscriptions.is_empty() {
            state.subscriptions.remove(&key);
        }
    }
}
