//! The periodic messages an actor sends itself.

use std::time::Duration;

use ractor::concurrency::JoinHandle;
use ractor::{ActorRef, Message};

/// An actor's periodic messages, stopped when its state is dropped (after
/// `post_stop`, or when the actor fails), so that no timer outlives the
/// actor that set it.
#[derive(Default)]
pub(crate) struct Timers(Vec<JoinHandle<()>>);

impl Timers {
    /// Sends `actor` the message `message` builds every `interval`.
    pub(crate) fn every<M: Message>(
        &mut self,
        actor: &ActorRef<M>,
        interval: Duration,
        message: impl Fn() -> M + Send + 'static,
    ) {
        self.0.push(actor.send_interval(interval, message));
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        for timer in &self.0 {
            timer.abort();
        }
    }
}
