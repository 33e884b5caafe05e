//! What an update closure works on: the value, with a record of the
//! operations applied to it, so that an update travels as those operations
//! (a delta) rather than as the whole value.

use std::ops::{Deref, DerefMut};

use serde_bytes::ByteBuf;

use crate::codec;
use crate::crdt::{OpBased, ReplicatedData};
use crate::error::Chain;

/// The value of a key inside an update closure.
///
/// Reading goes straight to the value (`Tracked<T>` dereferences to `T`), and
/// [`apply`](Self::apply) applies an operation and records it: an update made
/// of operations is pushed to peers as those operations, however large the
/// value. Changing the value any other way (through `&mut T`, e.g. a user
/// type's own `&mut self` methods) is allowed too; the update then travels
/// as the whole value, as it does for types registered without deltas.
///
/// ```
/// use ractor_replicated::ddata::{Key, ReplicatorCore, TypeRegistry, WriteConsistency};
/// use ractor_replicated::{OpBased, ORSet, ReplicaId};
/// use std::sync::Arc;
///
/// let types = Arc::new(TypeRegistry::with_builtins());
/// let mut core = ReplicatorCore::new("n1", ReplicaId::new("n1", 1), types, Default::default(), 7);
/// let key: Key<ORSet<String>> = Key::new("cart");
/// core.update(1, &key, WriteConsistency::Local, |cart, me| {
///     cart.apply(cart.add(me, "milk".to_string()));
/// })?;
/// assert!(core.get(&key)?.is_some_and(|cart| cart.contains("milk")));
/// # Ok::<(), ractor_replicated::Error>(())
/// ```
pub struct Tracked<'a, T> {
    value: &'a mut T,
    recording: Recording,
}

/// What an update did, as far as replication cares.
#[derive(Debug)]
pub(crate) enum Recording {
    /// These encoded operations, and nothing else, changed the value.
    Ops {
        /// The operations in the order applied.
        ops: Vec<ByteBuf>,
        /// Their encoded size.
        bytes: usize,
    },
    /// The value changed in a way only its whole state describes.
    Whole,
}

impl<'a, T> Tracked<'a, T> {
    /// Tracks changes to `value`; `deltas` says whether its type's
    /// operations may travel as deltas.
    pub(crate) fn new(value: &'a mut T, deltas: bool) -> Self {
        let recording = if deltas {
            Recording::Ops {
                ops: Vec::new(),
                bytes: 0,
            }
        } else {
            Recording::Whole
        };
        Self { value, recording }
    }

    pub(crate) fn into_recording(self) -> Recording {
        self.recording
    }
}

impl<T: ReplicatedData + OpBased> Tracked<'_, T> {
    /// Applies `op` to the value and records it, so that it travels as a delta.
    pub fn apply(&mut self, op: T::Op) {
        if let Recording::Ops { ops, bytes } = &mut self.recording {
            match codec::encode(&op) {
                Ok(encoded) => {
                    *bytes += encoded.len();
                    ops.push(ByteBuf::from(encoded));
                }
                Err(err) => {
                    tracing::warn!(error = %Chain(&err), "an operation cannot be encoded; the whole value travels");
                    self.recording = Recording::Whole;
                }
            }
        }
        self.value.apply(op);
    }
}

impl<T> Deref for Tracked<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.value
    }
}

impl<T> DerefMut for Tracked<'_, T> {
    /// Mutable access the recording cannot see: the whole value will travel.
    fn deref_mut(&mut self) -> &mut T {
        self.recording = Recording::Whole;
        self.value
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Tracked<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}
