//! Type erasure for Distributed Data: one store holds values of many CRDT types,
//! and a value received from a peer is decoded by the type tag it travels with,
//! so a node can merge a key it has never used itself.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use crate::codec;
use crate::crdt::{
    Flag, GCounter, GSet, LWWMap, LWWRegister, MVRegister, ORMap, ORMultiMap, ORSet, PNCounter,
    PNCounterMap, ReplicatedData,
};
use crate::error::{Error, Result};

/// A [`ReplicatedData`] value behind a trait object. Implemented for every
/// `ReplicatedData` type; there is no reason to implement it by hand.
pub trait ErasedData: Any + Debug + Send + Sync {
    /// The value as [`Any`], to downcast it to its concrete type.
    fn as_any(&self) -> &dyn Any;
    /// The value as mutable [`Any`].
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// A boxed copy.
    fn clone_erased(&self) -> Box<dyn ErasedData>;
    /// Merges `other` into `self` and says whether `self` changed; `None` when
    /// `other` is of another type.
    fn merge_erased(&mut self, other: &dyn ErasedData) -> Option<bool>;
    /// The value's encoding through [`codec::encode`].
    fn encode_erased(&self) -> Result<Vec<u8>>;
    /// Equality across the erasure; values of different types are unequal.
    fn eq_erased(&self, other: &dyn ErasedData) -> bool;
}

impl<T: ReplicatedData> ErasedData for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn clone_erased(&self) -> Box<dyn ErasedData> {
        Box::new(self.clone())
    }

    fn merge_erased(&mut self, other: &dyn ErasedData) -> Option<bool> {
        let other = other.as_any().downcast_ref::<T>()?;
        let merged = self.merged(other);
        if merged == *self {
            Some(false)
        } else {
            *self = merged;
            Some(true)
        }
    }

    fn encode_erased(&self) -> Result<Vec<u8>> {
        codec::encode(self)
    }

    fn eq_erased(&self, other: &dyn ErasedData) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
}

type Decoder = fn(&[u8]) -> Result<Box<dyn ErasedData>>;

fn decode_as<T: ReplicatedData>(bytes: &[u8]) -> Result<Box<dyn ErasedData>> {
    Ok(Box::new(codec::decode::<T>(bytes)?))
}

struct Registration {
    tag: Arc<str>,
    type_name: &'static str,
}

/// Maps the Rust types that may be stored in Distributed Data to the stable tags
/// they carry on the wire, and tags back to decoders.
///
/// Tags, not Rust type names, travel because type names are not stable across
/// compiler versions. Every node of a cluster must register the same tag for the
/// same type. [`TypeRegistry::with_builtins`] holds the crate's types with the
/// element types used most (`String`, `u64`, `i64`, `Vec<u8>`).
///
/// ```
/// use ractor_replicated::ddata::TypeRegistry;
/// use ractor_replicated::{GCounter, ORSet, ReplicatedData};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
/// struct MaxScore(u64);
/// impl ReplicatedData for MaxScore {
///     fn merge(&mut self, other: &Self) { self.0 = self.0.max(other.0); }
/// }
///
/// let mut types = TypeRegistry::with_builtins();
/// types.register::<MaxScore>("game.MaxScore")?;
/// assert_eq!(types.tag_of::<MaxScore>().as_deref(), Some("game.MaxScore"));
/// assert_eq!(types.tag_of::<ORSet<String>>().as_deref(), Some("ORSet<String>"));
/// assert!(types.register::<GCounter>("another-name").is_err());
/// # Ok::<(), ractor_replicated::Error>(())
/// ```
#[derive(Default)]
pub struct TypeRegistry {
    decoders: HashMap<Arc<str>, Decoder>,
    by_type: HashMap<TypeId, Registration>,
}

impl TypeRegistry {
    /// A registry that knows no type.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A registry with the crate's CRDTs pre-registered under their names
    /// (`"GCounter"`, `"ORSet<String>"`, `"ORMap<String,PNCounter>"`, ...).
    pub fn with_builtins() -> Self {
        let mut registry = Self::empty();
        registry.register_builtins();
        registry
    }

    fn register_builtins(&mut self) {
        macro_rules! builtin {
            ($($ty:ty => $tag:literal),* $(,)?) => {
                $(self.insert::<$ty>($tag);)*
            };
        }
        builtin! {
            GCounter => "GCounter",
            PNCounter => "PNCounter",
            Flag => "Flag",
            GSet<String> => "GSet<String>",
            GSet<u64> => "GSet<u64>",
            GSet<i64> => "GSet<i64>",
            ORSet<String> => "ORSet<String>",
            ORSet<u64> => "ORSet<u64>",
            ORSet<i64> => "ORSet<i64>",
            ORSet<Vec<u8>> => "ORSet<Bytes>",
            LWWRegister<String> => "LWWRegister<String>",
            LWWRegister<u64> => "LWWRegister<u64>",
            LWWRegister<i64> => "LWWRegister<i64>",
            LWWRegister<Vec<u8>> => "LWWRegister<Bytes>",
            MVRegister<String> => "MVRegister<String>",
            MVRegister<Vec<u8>> => "MVRegister<Bytes>",
            LWWMap<String, String> => "LWWMap<String,String>",
            LWWMap<String, Vec<u8>> => "LWWMap<String,Bytes>",
            PNCounterMap<String> => "PNCounterMap<String>",
            ORMap<String, PNCounter> => "ORMap<String,PNCounter>",
            ORMap<String, GCounter> => "ORMap<String,GCounter>",
            ORMap<String, ORSet<String>> => "ORMap<String,ORSet<String>>",
            ORMap<String, LWWRegister<String>> => "ORMap<String,LWWRegister<String>>",
            ORMap<String, Flag> => "ORMap<String,Flag>",
            ORMultiMap<String, String> => "ORMultiMap<String,String>",
        }
    }

    fn insert<T: ReplicatedData>(&mut self, tag: &str) {
        let tag: Arc<str> = tag.into();
        self.decoders.insert(tag.clone(), decode_as::<T>);
        self.by_type.insert(
            TypeId::of::<T>(),
            Registration {
                tag,
                type_name: std::any::type_name::<T>(),
            },
        );
    }

    /// Registers `T` under `tag`. Registering the same type under the same tag
    /// again is a no-op; a tag already taken by another type, or a type already
    /// registered under another tag, is an error.
    pub fn register<T: ReplicatedData>(&mut self, tag: &str) -> Result<()> {
        if let Some(existing) = self.by_type.get(&TypeId::of::<T>()) {
            if &*existing.tag == tag {
                return Ok(());
            }
            return Err(Error::Registration {
                what: std::any::type_name::<T>().to_string(),
                reason: format!("already registered as {:?}", existing.tag),
            });
        }
        if self.decoders.contains_key(tag) {
            let owner = self
                .by_type
                .values()
                .find(|registration| &*registration.tag == tag)
                .map_or("another type", |registration| registration.type_name);
            return Err(Error::Registration {
                what: tag.to_string(),
                reason: format!("tag already taken by {owner}"),
            });
        }
        self.insert::<T>(tag);
        Ok(())
    }

    /// The tag `T` travels with, if registered.
    pub fn tag_of<T: 'static>(&self) -> Option<Arc<str>> {
        self.by_type
            .get(&TypeId::of::<T>())
            .map(|registration| registration.tag.clone())
    }

    /// The tag `T` travels with, or [`Error::UnregisteredType`].
    pub fn require_tag_of<T: 'static>(&self) -> Result<Arc<str>> {
        self.tag_of::<T>().ok_or_else(|| Error::UnregisteredType {
            what: std::any::type_name::<T>().to_string(),
        })
    }

    /// The registered tag equal to `tag`, shared rather than copied.
    pub fn canonical_tag(&self, tag: &str) -> Option<Arc<str>> {
        self.decoders.get_key_value(tag).map(|(tag, _)| tag.clone())
    }

    /// Decodes `bytes` as the type registered under `tag`.
    pub fn decode(&self, tag: &str, bytes: &[u8]) -> Result<Box<dyn ErasedData>> {
        let decoder = self
            .decoders
            .get(tag)
            .ok_or_else(|| Error::UnregisteredType {
                what: format!("tag {tag:?}"),
            })?;
        decoder(bytes)
    }
}

impl Debug for TypeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut tags: Vec<&str> = self.decoders.keys().map(|tag| &**tag).collect();
        tags.sort_unstable();
        f.debug_struct("TypeRegistry").field("tags", &tags).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OpBased, ReplicaId};

    #[test]
    fn a_value_decodes_by_its_tag_and_merges_across_the_erasure() {
        let registry = TypeRegistry::with_builtins();
        let me = ReplicaId::new("a", 1);
        let mut counter = GCounter::new();
        counter.apply(counter.increment(&me, 3));
        let tag = registry.require_tag_of::<GCounter>().unwrap();
        let decoded = registry
            .decode(&tag, &codec::encode(&counter).unwrap())
            .unwrap();
        assert!(decoded.eq_erased(&counter));

        let mut empty: Box<dyn ErasedData> = Box::new(GCounter::new());
        assert_eq!(empty.merge_erased(decoded.as_ref()), Some(true));
        assert_eq!(empty.merge_erased(decoded.as_ref()), Some(false));
        assert_eq!(empty.merge_erased(&Flag::default()), None);
    }

    #[test]
    fn an_unknown_tag_is_an_error_not_a_panic() {
        let registry = TypeRegistry::with_builtins();
        let err = registry.decode("NoSuchType", &[1, 2, 3]).unwrap_err();
        assert!(matches!(err, Error::UnregisteredType { .. }), "{err}");
    }

    #[test]
    fn a_tag_cannot_be_taken_twice() {
        let mut registry = TypeRegistry::with_builtins();
        let err = registry.register::<GSet<u8>>("GCounter").unwrap_err();
        assert!(err.to_string().contains("GCounter"), "{err}");
        registry.register::<GCounter>("GCounter").unwrap();
    }
}
