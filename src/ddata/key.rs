use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::crdt::ReplicatedData;

/// The name of a Distributed Data entry together with the CRDT type stored under it.
///
/// Keys are cheap to clone and compare by name. The type parameter makes every
/// read and write typed; the Replicator checks at run time that a key is never
/// used with two types (the wire carries a type tag with each value).
///
/// ```
/// use ractor_replicated::ddata::Key;
/// use ractor_replicated::ORSet;
///
/// let cart: Key<ORSet<String>> = Key::new("cart/alice");
/// assert_eq!(cart.name(), "cart/alice");
/// ```
pub struct Key<T> {
    name: Arc<str>,
    data: PhantomData<fn() -> T>,
}

impl<T: ReplicatedData + Default> Key<T> {
    /// A key named `name` holding a `T`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            data: PhantomData,
        }
    }
}

impl<T> Key<T> {
    /// The key's name, unique within the store.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            data: PhantomData,
        }
    }
}

impl<T> PartialEq for Key<T> {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl<T> Eq for Key<T> {}

impl<T> fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?}: {})", self.name, std::any::type_name::<T>())
    }
}

impl<T> fmt::Display for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}
