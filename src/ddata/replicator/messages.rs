//! The Replicator's message API: what an actor (or a task) sends it, and
//! what it answers.

use std::sync::Arc;

use ractor::{ActorId, ActorRef, Message, RpcReplyPort};

use super::{Inbound, ReplicatorState, Reply, Subscription};
use crate::causal::ReplicaId;
use crate::crdt::ReplicatedData;
use crate::ddata::consistency::{ReadConsistency, WriteConsistency};
use crate::ddata::core::{CoreStats, Lookup, Output, PeerName, ReplicatorCore, RequestId};
use crate::ddata::handle::Change;
use crate::ddata::key::Key;
use crate::ddata::tracked::Tracked;
use crate::ddata::wire::MESSAGE_VARIANT;
use crate::error::{catch_panic, Chain, Result};
use crate::remote_cast::remote_message;
use crate::reply::ReplyTo;

/// The messages of the [`Replicator`](super::Replicator) actor.
///
/// Requests about a key are typed by the key and built with the associated
/// functions ([`update`](Self::update), [`get`](Self::get),
/// [`delete`](Self::delete), [`subscribe`](Self::subscribe)), whose last
/// argument says where the answer goes, so they work with ractor's `call!`
/// and `cast!`:
///
/// ```no_run
/// use std::time::Duration;
/// use ractor::{call, ActorRef};
/// use ractor_replicated::ddata::{Key, ReadConsistency, ReplicatorMessage, WriteConsistency};
/// use ractor_replicated::{GCounter, OpBased};
///
/// # async fn demo(replicator: ActorRef<ReplicatorMessage>) -> Result<(), Box<dyn std::error::Error>> {
/// let hits: Key<GCounter> = Key::new("hits");
/// let majority = WriteConsistency::majority(Duration::from_secs(1));
/// let increment = |c: &mut ractor_replicated::ddata::Tracked<GCounter>, me: &ractor_replicated::ReplicaId| {
///     c.apply(c.increment(me, 1))
/// };
/// let written = call!(replicator, ReplicatorMessage::update, &hits, majority, increment)?.result?;
/// println!("acknowledged by {:?}", written.acknowledged_by);
/// let read = call!(replicator, ReplicatorMessage::get, &hits, ReadConsistency::Local)?.result?;
/// assert_eq!(read.value.map(|c| c.value()), Some(1));
/// # Ok(()) }
/// ```
///
/// Inside an actor, awaiting a `call!` for a write at `Majority` holds the
/// actor's mailbox until the write is done. Give the actor itself as the
/// reply target instead (any `ActorRef<M>` with `M: From<UpdateResponse<T>>`,
/// or [`ReplyTo::actor_with`]): the answer comes later as one of its
/// messages, and the actor handles others meanwhile.
///
/// Only messages between Replicators cross the network; they travel in
/// the hidden internal variant.
pub enum ReplicatorMessage {
    /// Change a key and spread the change: see [`ReplicatorMessage::update`].
    Update(Update),
    /// Delete a key for good: see [`ReplicatorMessage::delete`].
    Delete(Delete),
    /// Read a key: see [`ReplicatorMessage::get`].
    Get(Get),
    /// Hear about a key's changes: see [`ReplicatorMessage::subscribe`].
    Subscribe(Subscribe),
    /// Stop sending the changes of the key named `key` to `listener`.
    Unsubscribe {
        /// The key's name.
        key: String,
        /// The listener to drop.
        listener: ActorId,
    },
    /// The names of the keys this replica holds, deleted ones included.
    GetKeys(RpcReplyPort<Vec<String>>),
    /// The replica id local updates write with now.
    ReplicaId(RpcReplyPort<ReplicaId>),
    /// The peers this Replicator can reach now, by node name.
    ReachablePeers(RpcReplyPort<Vec<PeerName>>),
    /// Counters of rejected input and work done, and the number of keys.
    Stats(RpcReplyPort<CoreStats>),
    /// The node left the cluster for good (decommissioned): it no longer
    /// counts as a member for `Majority` and `All`, until it is reachable
    /// again (see [`DistributedData::remove_member`](crate::ddata::DistributedData::remove_member)).
    RemoveMember(PeerName),
    /// Messages between Replicators, and the Replicator's own timers.
    #[doc(hidden)]
    Internal(Internal),
}

/// The Replicator's messages to itself and to its peers: not for users.
#[doc(hidden)]
pub struct Internal(pub(crate) Inbound);

/// Membership events drive the Replicator: a node connecting or
/// disconnecting starts a discovery round, a removed node stops counting.
impl From<crate::cluster::MemberEvent> for ReplicatorMessage {
    fn from(event: crate::cluster::MemberEvent) -> Self {
        use crate::cluster::MemberEvent;
        match event {
            MemberEvent::Up(_) | MemberEvent::Down(_) => Inbound::Discover.into(),
            MemberEvent::Removed(node) => Self::RemoveMember(node),
        }
    }
}

impl From<Inbound> for ReplicatorMessage {
    fn from(inbound: Inbound) -> Self {
        Self::Internal(Internal(inbound))
    }
}

/// Work on a key of some type, run inside the Replicator.
type Command = Box<dyn FnOnce(&mut ReplicatorState) -> Vec<Output> + Send>;

/// An update of one key, built by [`ReplicatorMessage::update`].
pub struct Update(pub(crate) Command);

/// A delete of one key, built by [`ReplicatorMessage::delete`].
pub struct Delete(pub(crate) Command);

/// A read of one key, built by [`ReplicatorMessage::get`].
pub struct Get(pub(crate) Command);

/// A subscription to one key, built by [`ReplicatorMessage::subscribe`].
pub struct Subscribe(pub(crate) Command);

/// A write the consistency level confirmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The nodes known to hold the write, this one first.
    pub acknowledged_by: Vec<PeerName>,
}

/// What a read found.
#[derive(Clone, Debug, PartialEq)]
pub struct Retrieved<T> {
    /// The merged value of the replicas that answered; `None` if none of
    /// them has the key.
    pub value: Option<T>,
    /// The nodes whose answers were merged, this one first.
    pub answered_by: Vec<PeerName>,
}

/// The answer to [`ReplicatorMessage::update`].
#[derive(Debug)]
pub struct UpdateResponse<T> {
    /// The key updated.
    pub key: Key<T>,
    /// Who confirmed the write, or why the consistency level was not reached
    /// (see [`DistributedData::update`](crate::ddata::DistributedData::update)).
    pub result: Result<Written>,
}

/// The answer to [`ReplicatorMessage::delete`].
#[derive(Debug)]
pub struct DeleteResponse<T> {
    /// The key deleted.
    pub key: Key<T>,
    /// Who confirmed the delete, or why the consistency level was not reached.
    pub result: Result<Written>,
}

/// The answer to [`ReplicatorMessage::get`].
#[derive(Debug)]
pub struct GetResponse<T> {
    /// The key read.
    pub key: Key<T>,
    /// What was found, or why it could not be read
    /// (see [`DistributedData::get`](crate::ddata::DistributedData::get)).
    pub result: Result<Retrieved<T>>,
}

impl<T: Send + 'static> Message for UpdateResponse<T> {}
impl<T: Send + 'static> Message for DeleteResponse<T> {}
impl<T: Send + 'static> Message for GetResponse<T> {}

impl ReplicatorMessage {
    /// Applies `modify` to the local value of `key` (its type's default if
    /// the key is new), spreads the change at `level`, and sends the outcome
    /// to `reply`. What `modify` may do, and what each outcome means, is
    /// described at [`DistributedData::update`](crate::ddata::DistributedData::update).
    pub fn update<T, F>(
        key: &Key<T>,
        level: WriteConsistency,
        modify: F,
        reply: impl Into<ReplyTo<UpdateResponse<T>>>,
    ) -> Self
    where
        T: ReplicatedData + Default,
        F: FnOnce(&mut Tracked<'_, T>, &ReplicaId) + Send + 'static,
    {
        let key = key.clone();
        let reply = reply.into();
        Self::Update(Update(Box::new(move |state| {
            let answered = key.clone();
            write(
                state,
                move |result| {
                    reply.send(UpdateResponse {
                        key: answered,
                        result,
                    })
                },
                move |core, request| core.update(request, &key, level, modify),
            )
        })))
    }

    /// Deletes `key` for good at `level` (see
    /// [`DistributedData::delete`](crate::ddata::DistributedData::delete)),
    /// and sends the outcome to `reply`.
    pub fn delete<T: ReplicatedData>(
        key: &Key<T>,
        level: WriteConsistency,
        reply: impl Into<ReplyTo<DeleteResponse<T>>>,
    ) -> Self {
        let key = key.clone();
        let reply = reply.into();
        Self::Delete(Delete(Box::new(move |state| {
            let answered = key.clone();
            write(
                state,
                move |result| {
                    reply.send(DeleteResponse {
                        key: answered,
                        result,
                    })
                },
                move |core, request| core.delete(request, &key, level),
            )
        })))
    }

    /// Reads `key` at `level` (see
    /// [`DistributedData::get`](crate::ddata::DistributedData::get)), and
    /// sends what it found to `reply`.
    pub fn get<T: ReplicatedData>(
        key: &Key<T>,
        level: ReadConsistency,
        reply: impl Into<ReplyTo<GetResponse<T>>>,
    ) -> Self {
        let key = key.clone();
        let reply = reply.into();
        Self::Get(Get(Box::new(move |state| {
            let answered = key.clone();
            let reply = Reply::Read(Box::new(move |result| {
                let result = result.and_then(|(snapshot, answered_by)| {
                    Ok(Retrieved {
                        value: snapshot.into_typed::<T>(answered.name())?,
                        answered_by,
                    })
                });
                reply.send(GetResponse {
                    key: answered,
                    result,
                })
            }));
            let request = state.expect_reply(reply);
            state.core.read(request, &key, level).unwrap_or_else(|err| {
                state.fail(request, err);
                Vec::new()
            })
        })))
    }

    /// Sends `listener` a [`Change`] whenever `key` changes or is deleted,
    /// and the current value right away if the key has one. Changes of one
    /// key are coalesced within the notification interval. A listener that
    /// stopped, or whose conversion from [`Change`] panics, is dropped. A
    /// type the Replicator does not know is logged and subscribes nothing
    /// ([`DistributedData::subscribe`](crate::ddata::DistributedData::subscribe)
    /// reports it as an error).
    pub fn subscribe<T, M>(key: &Key<T>, listener: ActorRef<M>) -> Self
    where
        T: ReplicatedData,
        M: Message + From<Change<T>>,
    {
        let key = key.clone();
        Self::Subscribe(Subscribe(Box::new(move |state| {
            let tag = match state.core.types().require_tag_of::<T>() {
                Ok(tag) => tag,
                Err(err) => {
                    tracing::error!(key = key.name(), error = %Chain(&err), "a subscription was refused");
                    return Vec::new();
                }
            };
            let name = key.name().to_string();
            let listener_id = listener.get_id();
            let notify = move |lookup: Lookup<'_>| -> bool {
                let change = match lookup {
                    // Only a key that expired changes to absent.
                    Lookup::Absent => Change::Expired { key: key.clone() },
                    Lookup::Deleted => Change::Deleted { key: key.clone() },
                    Lookup::Live { tag: found, value } => {
                        match value
                            .as_shared_any()
                            .downcast_ref::<Arc<T>>()
                            .filter(|_| found == &*tag)
                        {
                            Some(value) => Change::Changed {
                                key: key.clone(),
                                value: Arc::clone(value),
                            },
                            None => return true,
                        }
                    }
                };
                listener.cast(M::from(change)).is_ok()
            };
            // A new listener hears of the key's state, if it has one.
            let listening = match state.core.lookup(&name) {
                Lookup::Absent => true,
                lookup => catch_panic(&name, || notify(lookup)).unwrap_or(false),
            };
            if listening {
                state
                    .subscriptions
                    .entry(name)
                    .or_default()
                    .push(Subscription {
                        listener: listener_id,
                        notify: Box::new(notify),
                    });
            }
            Vec::new()
        })))
    }

    /// Stops sending the changes of `key` to `listener`.
    pub fn unsubscribe<T>(key: &Key<T>, listener: ActorId) -> Self {
        Self::Unsubscribe {
            key: key.name().to_string(),
            listener,
        }
    }
}

/// Runs a write of the core inside the Replicator, with `reply` waiting for
/// its outcome.
fn write(
    state: &mut ReplicatorState,
    reply: impl FnOnce(Result<Written>) + Send + 'static,
    write: impl FnOnce(&mut ReplicatorCore, RequestId) -> Result<Vec<Output>>,
) -> Vec<Output> {
    let reply = Reply::Write(Box::new(move |result| {
        reply(result.map(|acknowledged_by| Written { acknowledged_by }))
    }));
    let request = state.expect_reply(reply);
    write(&mut state.core, request).unwrap_or_else(|err| {
        state.fail(request, err);
        Vec::new()
    })
}

remote_message!(
    [] ReplicatorMessage,
    MESSAGE_VARIANT,
    Self::Internal(Internal(Inbound::Peer(envelope))) => envelope
);
