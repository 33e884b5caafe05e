//! The causal vocabulary shared by every dot-based CRDT and by the event journal.
//!
//! * [`ReplicaId`]: who wrote something: a node name plus a per-boot incarnation.
//! * [`Dot`]: one event of one replica, `(replica, n)`.
//! * [`VersionVector`]: for each replica, how many of its events have been seen;
//!   compares as a partial order ([`CausalOrder`]).
//! * [`CausalContext`]: a version vector plus the few dots seen out of order, the
//!   "what have I observed" of the optimised OR-Set and its relatives.

mod context;
mod dot;
mod replica_id;
mod retired;
mod version_vector;

pub use context::CausalContext;
pub use dot::Dot;
pub use replica_id::ReplicaId;
pub use retired::Retired;
pub use version_vector::{CausalOrder, VersionVector};
