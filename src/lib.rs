//! Replicated state for [ractor](https://docs.rs/ractor) clusters.
//!
//! * at the root, the vocabulary everything else uses: pure state-based CRDTs
//!   whose merges are joins ([`GCounter`], [`ORSet`], [`ORMap`], ... and the
//!   [`ReplicatedData`] and [`OpBased`] traits), the causal types they share
//!   ([`ReplicaId`], [`Dot`], [`VersionVector`], [`CausalContext`]), and the
//!   crate's [`Error`] and [`Result`] (the details of errors are in [`error`]);
//! * [`ddata`]: Distributed Data, a key-value store of CRDTs replicated by
//!   gossip between the nodes of a ractor cluster (one Replicator actor per
//!   node, consistency levels, listeners);
//! * [`persistence`]: replicated event sourcing, entities whose replicas
//!   accept commands concurrently and journal vector-clock-tagged events;
//! * [`cluster`] and [`discovery`]: the membership helper and how replicas
//!   find each other;
//! * [`codec`]: the one wire and disk format.
//!
//! ```
//! use ractor_replicated::{codec, OpBased, ORSet, ReplicaId, ReplicatedData};
//!
//! // Two nodes edit a shopping cart without coordination.
//! let (a, b) = (ReplicaId::fresh("node-a"), ReplicaId::fresh("node-b"));
//! let mut cart_a = ORSet::new();
//! cart_a.apply(cart_a.add(&a, "milk".to_string()));
//! let mut cart_b = cart_a.clone();
//! cart_a.apply(cart_a.add(&a, "eggs".to_string()));
//! cart_b.apply(cart_b.remove("milk"));
//!
//! // State travels as bytes; decoding never panics on bad input.
//! let bytes = codec::encode(&cart_b)?;
//! cart_a.merge(&codec::decode(&bytes)?);
//! assert_eq!(cart_a.iter().collect::<Vec<_>>(), ["eggs"]);
//! # Ok::<(), ractor_replicated::Error>(())
//! ```

#![warn(missing_docs)]

mod causal;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod codec;
mod crdt;
pub mod ddata;
#[cfg(feature = "cluster")]
pub mod discovery;
#[cfg(feature = "cluster")]
mod disk_wait;
pub mod error;
#[cfg(feature = "cluster")]
mod followed;
#[cfg(test)]
mod golden;
pub mod persistence;
#[cfg(feature = "cluster")]
mod remote_cast;
#[cfg(feature = "cluster")]
mod reply;
mod rng;
#[cfg(feature = "sled")]
pub mod sled_db;
#[cfg(feature = "cluster")]
mod timers;
mod wall_clock;

pub use causal::{CausalContext, CausalOrder, Dot, ReplicaId, Retired, VersionVector};
pub use crdt::{
    Clock, DottedValue, Flag, GCounter, GSet, LWWMap, LWWRegister, MVRegister, MVRegisterOp,
    Member, ORMap, ORMapOp, ORMultiMap, ORSet, ORSetOp, OpBased, PNCounter, PNCounterMap,
    PNCounterOp, Payload, ReplicatedData, ReverseClock, Timestamped, WallClock,
};
pub use error::{Error, Result};
#[cfg(feature = "cluster")]
pub use reply::ReplyTo;

/// Compiles and runs the README's examples with the doc tests, so they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Runs the code of the CRDT guide with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/crdts.md")]
struct CrdtGuideDoctests;

/// Compiles the code of the Distributed Data guide with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/distributed-data.md")]
struct DistributedDataGuideDoctests;

/// Compiles the code of the durability guide with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/durability.md")]
struct DurabilityGuideDoctests;

/// Runs the code of the replicated event sourcing guide with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/replicated-event-sourcing.md")]
struct ReplicatedEventSourcingGuideDoctests;
