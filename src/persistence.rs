//! Replicated event sourcing: several replicas of one entity accept commands
//! concurrently, journal vector-clock-tagged events and converge to the same
//! state.
//!
//! * [`replicated`]: the behaviour trait
//!   ([`ReplicatedEventSourcedActor`](replicated::ReplicatedEventSourcedActor)),
//!   the entity actor that runs a replica
//!   ([`ReplicatedEntity`](replicated::ReplicatedEntity)), conflict
//!   resolvers, and the sans-IO cores: [`ReplicatedLog`](replicated::ReplicatedLog)
//!   delivers events causally, orders them deterministically and recomputes
//!   the state when a late concurrent event sorts before events already
//!   applied; [`Replication`](replicated::Replication) exchanges events
//!   between replicas;
//! * [`journal`]: the journal trait, its sled implementation and an
//!   in-memory one.
//!
//! The guide is `docs/replicated-event-sourcing.md`.

pub mod journal;
pub mod replicated;
