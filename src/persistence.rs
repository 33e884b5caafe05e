//! Replicated event sourcing: several replicas of one entity accept commands
//! concurrently, journal vector-clock-tagged events and converge to the same
//! state.
//!
//! This release holds the replication core: [`replicated::ReplicatedLog`], a
//! sans-IO state machine that delivers events causally, orders them
//! deterministically and recomputes the state when a late concurrent event
//! sorts before events already applied. The sled journal, the actor and the
//! cluster transport build on it.

pub mod replicated;
