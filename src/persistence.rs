//! Replicated event sourcing: several replicas of one entity accept commands
//! concurrently, journal vector-clock-tagged events and converge to the same
//! state.
//!
//! This release holds:
//! * [`replicated::ReplicatedLog`]: the replication core, a sans-IO state
//!   machine that delivers events causally, orders them deterministically and
//!   recomputes the state when a late concurrent event sorts before events
//!   already applied;
//! * [`journal`]: the journal trait and its sled implementation.
//!
//! The entity actor and the cluster transport build on them.

pub mod journal;
pub mod replicated;
