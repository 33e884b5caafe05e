//! Pure, state-based CRDTs: no I/O, no actors, no clocks except where a type's
//! semantics needs one (and then the clock is pluggable).
//!
//! Every type implements two small traits:
//! * [`ReplicatedData`]: `merge` in place, a join (idempotent, commutative,
//!   associative). This is all Distributed Data needs, and all a user type must
//!   provide to be stored there.
//! * [`OpBased`]: mutators take `&self` and return an operation that
//!   [`OpBased::apply`] applies. Every operation here is a small delta state:
//!   applying operations is idempotent and order-independent, so they may be
//!   delivered duplicated and in any order and still converge.
//!
//! Read accessors are per type (`value()`, `contains()`, `get()`, ...).

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::causal::Dot;

mod flag;
mod gcounter;
mod gset;
mod kernel;
mod lww_map;
mod lww_register;
mod mv_register;
mod or_map;
mod or_multi_map;
mod or_set;
mod pn_counter;
mod pn_counter_map;

#[cfg(test)]
pub(crate) mod laws;

pub use flag::Flag;
pub use gcounter::GCounter;
pub use gset::GSet;
pub use lww_map::LWWMap;
pub use lww_register::{Clock, LWWRegister, ReverseClock, Timestamped, WallClock};
pub use mv_register::{MVRegister, MVRegisterOp};
pub use or_map::{DottedValue, ORMap, ORMapOp};
pub use or_multi_map::ORMultiMap;
pub use or_set::{ORSet, ORSetOp};
pub use pn_counter::{PNCounter, PNCounterOp};
pub use pn_counter_map::PNCounterMap;

/// What an element of a set or a key of a map must be: ordered (states are kept
/// sorted, so equal states encode to equal bytes), cloneable and serialisable.
/// Implemented for every type that qualifies.
pub trait Member:
    Ord + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

impl<T: Ord + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static> Member for T {}

/// What a register value must be: cloneable, comparable and serialisable.
/// Implemented for every type that qualifies.
pub trait Payload:
    Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

impl<T: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static> Payload
    for T
{
}

/// A state-based CRDT: a value whose [`merge`](Self::merge) is a join.
///
/// Laws every implementation must keep (the crate's own types are
/// property-tested against them):
/// * idempotent: `a.merge(&a)` leaves `a` unchanged;
/// * commutative: `a ⊔ b == b ⊔ a`;
/// * associative: `(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)`.
///
/// Implement it for your own types to store them in Distributed Data.
///
/// ```
/// use ractor_replicated::ReplicatedData;
/// use serde::{Deserialize, Serialize};
///
/// /// The highest score anyone reported.
/// #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
/// struct MaxScore(u64);
///
/// impl ReplicatedData for MaxScore {
///     fn merge(&mut self, other: &Self) {
///         self.0 = self.0.max(other.0);
///     }
/// }
///
/// let mut a = MaxScore(3);
/// a.merge(&MaxScore(5));
/// assert_eq!(a, MaxScore(5));
/// ```
pub trait ReplicatedData:
    Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Merges `other` into `self`; afterwards `self` holds the least upper bound.
    fn merge(&mut self, other: &Self);

    /// The merge of `self` and `other`, leaving both untouched.
    fn merged(&self, other: &Self) -> Self {
        let mut joined = self.clone();
        joined.merge(other);
        joined
    }

    /// Retires the incarnations of `node` below `below` (see
    /// [`Retired`](crate::Retired)): what they wrote stays in the value, but
    /// no longer under their own replica ids, so the state stops growing
    /// with restarts. Later merges carry the retirement to other replicas.
    ///
    /// Call it only on a replica that holds everything those incarnations
    /// wrote, and never write again as one of them: a write of theirs that
    /// arrives later is ignored. The default does nothing, for types that
    /// keep no replica ids.
    fn retire(&mut self, node: &str, below: u64) {
        let _ = (node, below);
    }

    /// Whether the state holds anything of an incarnation of `node` below
    /// `below` (an entry, a dot of an element it added) or a retirement of
    /// `node`: what a replica must gather from every other before it
    /// retires those incarnations. The default (for types that keep no
    /// replica ids) says no.
    fn mentions(&self, node: &str, below: u64) -> bool {
        let _ = (node, below);
        false
    }

    /// The dots of the nested values that [`retire`](Self::retire) leaves
    /// as they are and [`retire_settled`](Self::retire_settled) would
    /// change: values in a map entry that hold something of an incarnation
    /// of `node` below `below`. The default (for types that nest no values)
    /// names none.
    fn unsettled(&self, node: &str, below: u64) -> Vec<Dot> {
        let _ = (node, below);
        Vec::new()
    }

    /// Retires as [`retire`](Self::retire) does, and also inside the nested
    /// values that are settled: the one value of a map entry that holds
    /// something of those incarnations, provided every dot in `elsewhere`
    /// is one of this state's [`unsettled`](Self::unsettled) values.
    ///
    /// `retire` cannot reach into nested values: a value holds only what its
    /// own line of updates saw, and two values of an entry (concurrent
    /// updates, or a copy elsewhere of one this replica removed) may hold
    /// different parts of what a dead incarnation wrote, which folding each
    /// on its own would lose. A value is settled when no replica holds or
    /// can build on another such value, so pass in `elsewhere` what
    /// `unsettled` named on every other replica, taken after the
    /// incarnations died and with the conditions of `retire`. Settled
    /// values then spread by merge. The default retires.
    fn retire_settled(&mut self, node: &str, below: u64, elsewhere: &[Dot]) {
        let _ = elsewhere;
        self.retire(node, below);
    }
}

/// Operation-based mutation: mutators read `&self` and return an operation,
/// and `apply` is the only place state changes.
///
/// For the types of this crate, an operation is a delta: applying it equals
/// merging a small state, so `apply` is idempotent and operations commute.
pub trait OpBased {
    /// The operation the type's mutators return.
    type Op: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Applies an operation produced by a mutator on this or any other replica.
    fn apply(&mut self, op: Self::Op);
}
