//! The actor a handle talks to, followed across restarts.

use std::sync::RwLock;

use ractor::{ActorRef, Message, MessagingErr};

use crate::error::Unavailability;

/// An actor, and the name it was spawned under: when it has stopped, the
/// actor registered under that name now (its successor, spawned by a
/// supervisor) takes its place.
pub(crate) struct Followed<M> {
    actor: RwLock<ActorRef<M>>,
    name: Option<String>,
}

impl<M: Message> Followed<M> {
    pub(crate) fn new(actor: ActorRef<M>) -> Self {
        Self {
            name: actor.get_name(),
            actor: RwLock::new(actor),
        }
    }

    /// The actor, or its successor once one was found.
    pub(crate) fn current(&self) -> ActorRef<M> {
        self.actor
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sends `message` to the actor, or to its successor if it stopped;
    /// fails when neither runs.
    pub(crate) fn cast(&self, message: M) -> Result<(), Unavailability> {
        let message = match self.current().cast(message) {
            Ok(()) => return Ok(()),
            Err(MessagingErr::SendErr(message)) => message,
            Err(_) => return Err(Unavailability::Stopped),
        };
        let successor = self
            .name
            .as_deref()
            .and_then(ractor::registry::where_is)
            .map(ActorRef::<M>::from)
            .ok_or(Unavailability::Stopped)?;
        successor
            .cast(message)
            .map_err(|_| Unavailability::Stopped)?;
        *self
            .actor
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = successor;
        Ok(())
    }
}
