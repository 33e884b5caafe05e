//! Carrying out the core's outputs: messages, timers, notifications, disk
//! writes and replies, with the rule that keeps durable writes safe.
//!
//! With write-through storage, an announcement (a message to a peer, the
//! answer to a local caller) must not leave before what it may depend on is
//! on disk. Announcements made while writes are not flushed wait in order,
//! and one flush releases all of them: the flush is asked for with a message
//! to the Replicator itself, so it runs after every message already in the
//! mailbox, and the updates waiting there share it (group commit). While the
//! store fails, the replica claims nothing about its disk: local writes fail,
//! and no `WriteAck` or read answer leaves it, so no peer counts it for a
//! write it did not store. Gossip goes on; it claims nothing.

use std::time::Instant;

use ractor::ActorRef;

use super::{Inbound, Internal, ReplicatorMessage, ReplicatorState, Reply};
use crate::ddata::core::Output;
use crate::ddata::wire::{Envelope, PeerMessage};
use crate::error::{catch_panic, Chain, Error};

/// Runs a batch of outputs, in order.
pub(crate) fn run_outputs(
    myself: &ActorRef<ReplicatorMessage>,
    state: &mut ReplicatorState,
    outputs: Vec<Output>,
) {
    for output in outputs {
        match output {
            Output::Schedule { timer, after } => {
                let tick = move || ReplicatorMessage::from(Inbound::Tick(timer));
                if after.is_zero() {
                    let _ = myself.cast(tick());
                } else {
                    myself.send_after(after, tick);
                }
            }
            Output::Notify { keys } => notify(state, keys),
            Output::Persist { key } => {
                if let Some(storage) = &mut state.storage {
                    if let Err(err) = storage.record(&state.core, key) {
                        tracing::error!(error = %Chain(&err), "cannot store a durable key");
                    }
                }
            }
            announcement @ (Output::Send { .. }
            | Output::WriteDone { .. }
            | Output::ReadDone { .. }) => {
                let must_wait = !state.waiting_for_disk.is_empty()
                    || state
                        .storage
                        .as_ref()
                        .is_some_and(|storage| storage.holds_announcements());
                if must_wait {
                    state.waiting_for_disk.push(announcement);
                    if !state.commit_requested {
                        state.commit_requested = true;
                        let _ = myself.cast(Inbound::Commit.into());
                    }
                } else {
                    announce(myself, state, announcement, None);
                }
            }
        }
    }
}

/// The group commit: flushes the store, then lets out every announcement
/// that waited for it.
pub(crate) fn commit(myself: &ActorRef<ReplicatorMessage>, state: &mut ReplicatorState) {
    state.commit_requested = false;
    let failure = match state.storage.as_mut() {
        Some(storage) => storage
            .flush_before_announcing(&state.core)
            .err()
            .inspect(|err| {
                tracing::error!(error = %Chain(err), "cannot flush the durable store");
            }),
        None => None,
    };
    for announcement in std::mem::take(&mut state.waiting_for_disk) {
        announce(myself, state, announcement, failure.as_ref());
    }
}

/// Lets out one announcement; `store_failure` if what it depends on could
/// not be stored.
fn announce(
    myself: &ActorRef<ReplicatorMessage>,
    state: &mut ReplicatorState,
    announcement: Output,
    store_failure: Option<&Error>,
) {
    match announcement {
        Output::Send { to, message } => {
            let claims_durability = matches!(
                message,
                PeerMessage::WriteAck { .. } | PeerMessage::ReadReply { .. }
            );
            if claims_durability && store_failure.is_some() {
                tracing::warn!(peer = to, "no answer sent: the durable store failed");
                return;
            }
            send(myself, state, to, message);
        }
        Output::WriteDone { request, result } => match state.replies.remove(&request) {
            Some(Reply::Write(reply)) => match (result, store_failure) {
                (Ok(_), Some(failure)) => reply(Err(failure.clone())),
                (result, _) => reply(result),
            },
            Some(Reply::Read(_)) | None => {
                tracing::error!(request, "a write finished that nobody waits for")
            }
        },
        Output::ReadDone { request, result } => match state.replies.remove(&request) {
            Some(Reply::Read(reply)) => reply(result),
            Some(Reply::Write(_)) | None => {
                tracing::error!(request, "a read finished that nobody waits for")
            }
        },
        other => tracing::error!(?other, "an output that is not an announcement waited"),
    }
}

/// Sends `message` to peer `to`. Without a route (the peer spoke before
/// discovery found it) or through a proxy that stopped (the peer is then
/// down), the message waits for discovery to find the peer.
fn send(
    myself: &ActorRef<ReplicatorMessage>,
    state: &mut ReplicatorState,
    to: String,
    message: PeerMessage,
) {
    let unsent = match state.peers.get(&to) {
        Some(peer) => cast_to(peer, state.core.node(), message),
        None => Some(message),
    };
    let Some(message) = unsent else {
        return;
    };
    state.held.hold(&to, message, Instant::now());
    state.peers.request(myself, || Inbound::Discover.into());
    if state.peers.forget(&to) {
        tracing::debug!(peer = to, "peer proxy stopped");
        let outputs = state.core.peer_down(&to);
        run_outputs(myself, state, outputs);
    }
}

/// Casts `message` from node `from` to a peer Replicator; gives it back if
/// the peer's proxy is gone.
pub(crate) fn cast_to(
    peer: &ActorRef<ReplicatorMessage>,
    from: &str,
    message: PeerMessage,
) -> Option<PeerMessage> {
    let envelope = Envelope {
        from: from.to_string(),
        message,
    };
    match peer.cast(Inbound::Peer(envelope).into()) {
        Ok(()) => None,
        Err(ractor::MessagingErr::SendErr(ReplicatorMessage::Internal(Internal(
            Inbound::Peer(envelope),
        )))) => Some(envelope.message),
        Err(err) => {
            tracing::warn!(error = %Chain(&err), "a message to a peer was lost; anti-entropy will repair");
            None
        }
    }
}

fn notify(state: &mut ReplicatorState, keys: Vec<String>) {
    for key in keys {
        let Some(subscriptions) = state.subscriptions.get_mut(&key) else {
            continue;
        };
        let lookup = state.core.lookup(&key);
        // A listener's message type is the caller's: a panicking conversion
        // drops that subscription, not the Replicator.
        subscriptions.retain(|subscription| {
            catch_panic(&key, || (subscription.notify)(lookup)).unwrap_or(false)
        });
        if subscriptions.is_empty() {
            state.subscriptions.remove(&key);
        }
    }
}
