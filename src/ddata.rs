//! Distributed Data: a key-value store of CRDTs, replicated by gossip between
//! the nodes of a ractor cluster, like Akka's Distributed Data.
//!
//! Every node runs one Replicator. Reads and writes are local and never wait
//! for the network (unless a stronger [`WriteConsistency`] / [`ReadConsistency`]
//! asks for it); changes spread by an eager push right after each update and by
//! periodic digest anti-entropy, so replicas converge through concurrent writes,
//! lost messages, partitions and restarts.
//!
//! The protocol lives in [`ReplicatorCore`], a sans-IO state machine; the
//! [`Replicator`] actor only moves messages, timers and outputs in and out of it.

mod consistency;
mod core;
mod durable;
#[cfg(feature = "cluster")]
mod handle;
mod key;
mod registry;
#[cfg(feature = "cluster")]
mod replicator;
mod tracked;
pub mod wire;

pub use self::consistency::{ReadConsistency, WriteConsistency};
pub use self::core::{
    CoreConfig, CoreStats, Expiry, KeySelection, KeyState, Lookup, Output, PeerName, ReadOutcome,
    ReplicatorCore, RequestId, Timer, MIN_MESSAGE_BYTES,
};
#[cfg(feature = "cluster")]
pub use self::durable::Durability;
#[cfg(feature = "sled")]
pub use self::durable::SledStore;
pub use self::durable::{DurableEntry, DurableStore, Loaded, MemoryStore, WriteMode};
#[cfg(feature = "cluster")]
pub use self::handle::{Change, DistributedData, ReplicatorConfig};
pub use self::key::Key;
pub use self::registry::{erase, ErasedData, TypeRegistry};
#[cfg(feature = "cluster")]
pub use self::replicator::{
    Delete, DeleteResponse, Get, GetResponse, Replicator, ReplicatorArguments, ReplicatorMessage,
    ReplicatorState, Retrieved, Subscribe, Update, UpdateResponse, Written,
};
pub use self::tracked::Tracked;
