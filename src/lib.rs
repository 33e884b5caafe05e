//! Replicated state for [ractor](https://docs.rs/ractor) clusters.
//!
//! This release holds the foundation: the causal vocabulary ([`causal`]), a
//! library of pure state-based CRDTs ([`crdt`]) whose merges are joins, and the
//! one wire format ([`codec`]). Distributed Data (a gossip-replicated key-value
//! store of CRDTs), its durable storage and replicated event sourcing build on it.
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

pub mod causal;
pub mod codec;
pub mod crdt;
pub mod ddata;
mod error;

pub use causal::{CausalContext, CausalOrder, Dot, DotRange, ReplicaId, VersionVector};
pub use crdt::{
    Clock, Flag, GCounter, GSet, LWWMap, LWWRegister, MVRegister, MVRegisterOp, Member, ORMap,
    ORMapOp, ORMultiMap, ORSet, ORSetOp, OpBased, PNCounter, PNCounterMap, PNCounterOp, Payload,
    ReplicatedData, ReverseClock, Timestamped, WallClock,
};
pub use error::{Error, Result};

/// Compiles and runs the README's examples with the doc tests, so they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
