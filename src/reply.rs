//! Where the answer to a request goes: [`ReplyTo`].

use crate::error::Chain;
use std::fmt;

use ractor::{ActorRef, Message, RpcReplyPort};

/// Where the Replicator or an entity sends the answer to a request that
/// may take a while (a write at `Majority`, a command waiting for its
/// journal flush).
///
/// An [`RpcReplyPort`] suits `call!` and tasks that await. An actor that
/// must not block its mailbox while it waits gives itself instead: with
/// [`ReplyTo::actor`] (or `actor.into()`), the answer arrives later as one
/// of its own messages, converted with `From`, like Akka's
/// `UpdateResponse`; [`ReplyTo::actor_with`] wraps it with whatever the
/// actor needs to know which request it answers.
///
/// An answer whose receiver is gone (a dropped port, a stopped actor) is
/// dropped.
pub struct ReplyTo<R>(Box<dyn FnOnce(R) + Send>);

impl<R: Send + 'static> ReplyTo<R> {
    /// Delivers the answer by calling `deliver` (on the answering actor's
    /// task: it must not block).
    pub fn new(deliver: impl FnOnce(R) + Send + 'static) -> Self {
        Self(Box::new(deliver))
    }

    /// Sends the answer to `actor` as one of its messages.
    pub fn actor<M: Message + From<R>>(actor: ActorRef<M>) -> Self {
        Self::actor_with(actor, M::from)
    }

    /// Sends the answer to `actor`, wrapped into its message by `wrap`.
    pub fn actor_with<M: Message>(
        actor: ActorRef<M>,
        wrap: impl FnOnce(R) -> M + Send + 'static,
    ) -> Self {
        Self::new(move |answer| {
            if let Err(err) = actor.cast(wrap(answer)) {
                tracing::debug!(error = %Chain(&err), "an answer's receiver is gone");
            }
        })
    }

    /// Delivers `answer`.
    pub(crate) fn send(self, answer: R) {
        (self.0)(answer)
    }
}

impl<R: Send + 'static> From<RpcReplyPort<R>> for ReplyTo<R> {
    fn from(port: RpcReplyPort<R>) -> Self {
        Self::new(move |answer| {
            if port.send(answer).is_err() {
                tracing::debug!("an answer's caller is gone");
            }
        })
    }
}

impl<R: Send + 'static, M: Message + From<R>> From<ActorRef<M>> for ReplyTo<R> {
    fn from(actor: ActorRef<M>) -> Self {
        Self::actor(actor)
    }
}

impl<R> fmt::Debug for ReplyTo<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplyTo")
    }
}
