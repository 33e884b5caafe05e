//! Type erasure for Distributed Data: one store holds values of many CRDT types,
//! and a value received from a peer is decoded by the type tag it travels with,
//! so a node can merge a key it has never used itself.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use serde_bytes::ByteBuf;

use crate::causal::Dot;
use crate::codec;
use crate::crdt::{
    Flag, GCounter, GSet, LWWMap, LWWRegister, MVRegister, ORMap, ORMultiMap, ORSet, OpBased,
    PNCounter, PNCounterMap, ReplicatedData,
};
use crate::error::{DecodeFailure, Error, Result};

/// A [`ReplicatedData`] value behind a trait object, as the Replicator holds
/// it. [`erase`] makes one; there is no reason to implement it by hand.
pub trait ErasedData: Any + Debug + Send + Sync {
    /// The value as [`Any`], to downcast it to its concrete type.
    fn as_any(&self) -> &dyn Any;
    /// The value as mutable [`Any`]; a value still shared with a listener is
    /// copied first.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// The value's shared handle, an `Arc<T>`, as [`Any`].
    fn as_shared_any(&self) -> &dyn Any;
    /// A boxed copy (sharing the value until either side changes it).
    fn clone_erased(&self) -> Box<dyn ErasedData>;
    /// Merges `other` into `self` and says whether `self` changed; `None` when
    /// `other` is of another type.
    fn merge_erased(&mut self, other: &dyn ErasedData) -> Option<bool>;
    /// The value's encoding through [`codec::encode`].
    fn encode_erased(&self) -> Result<Vec<u8>>;
    /// Equality across the erasure; values of different types are unequal.
    fn eq_erased(&self, other: &dyn ErasedData) -> bool;
    /// [`ReplicatedData::mentions`] across the erasure.
    fn mentions_erased(&self, node: &str, below: u64) -> bool;
    /// [`ReplicatedData::unsettled`] across the erasure.
    fn unsettled_erased(&self, node: &str, below: u64) -> Vec<Dot>;
    /// [`ReplicatedData::retire_settled`] across the erasure, if the value
    /// mentions those incarnations; says whether it did.
    fn retire_settled_erased(&mut self, node: &str, below: u64, elsewhere: &[Dot]) -> bool;
}

/// `value` behind the trait object the Replicator holds.
pub fn erase<T: ReplicatedData>(value: T) -> Box<dyn ErasedData> {
    Box::new(Shared(Arc::new(value)))
}

/// A value shared, copy on write, with the listeners it was last sent to: a
/// notification costs no copy, and an update copies the value only while a
/// listener still holds the version before it.
#[derive(Debug)]
struct Shared<T>(Arc<T>);

impl<T: ReplicatedData> ErasedData for Shared<T> {
    fn as_any(&self) -> &dyn Any {
        &*self.0
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        Arc::<T>::make_mut(&mut self.0)
    }

    fn as_shared_any(&self) -> &dyn Any {
        &self.0
    }

    fn clone_erased(&self) -> Box<dyn ErasedData> {
        Box::new(Shared(Arc::clone(&self.0)))
    }

    fn merge_erased(&mut self, other: &dyn ErasedData) -> Option<bool> {
        let other = other.as_any().downcast_ref::<T>()?;
        let merged = self.0.merged(other);
        if merged == *self.0 {
            Some(false)
        } else {
            self.0 = Arc::new(merged);
            Some(true)
        }
    }

    fn encode_erased(&self) -> Result<Vec<u8>> {
        codec::encode(&*self.0)
    }

    fn mentions_erased(&self, node: &str, below: u64) -> bool {
        self.0.mentions(node, below)
    }

    fn unsettled_erased(&self, node: &str, below: u64) -> Vec<Dot> {
        self.0.unsettled(node, below)
    }

    fn retire_settled_erased(&mut self, node: &str, below: u64, elsewhere: &[Dot]) -> bool {
        if !self.0.mentions(node, below) {
            return false;
        }
        Arc::<T>::make_mut(&mut self.0).retire_settled(node, below, elsewhere);
        true
    }

    fn eq_erased(&self, other: &dyn ErasedData) -> bool {
        other.as_any().downcast_ref::<T>() == Some(&*self.0)
    }
}

type Decoder = fn(&[u8]) -> Result<Box<dyn ErasedData>>;

fn decode_as<T: ReplicatedData>(bytes: &[u8]) -> Result<Box<dyn ErasedData>> {
    Ok(erase(codec::decode::<T>(bytes)?))
}

/// How a type whose operations travel as deltas is rebuilt on a receiver.
#[derive(Clone, Copy)]
struct DeltaCodec {
    /// The empty value a delta for an absent key applies to.
    empty: fn() -> Box<dyn ErasedData>,
    /// Decodes every operation, then applies them all (or none).
    apply: fn(&mut dyn ErasedData, &[ByteBuf]) -> Result<()>,
}

fn empty_of<T: ReplicatedData + Default>() -> Box<dyn ErasedData> {
    erase(T::default())
}

fn apply_ops_as<T: ReplicatedData + OpBased>(
    value: &mut dyn ErasedData,
    ops: &[ByteBuf],
) -> Result<()> {
    let value = value
        .as_any_mut()
        .downcast_mut::<T>()
        .ok_or(Error::Decode {
            what: std::any::type_name::<T>(),
            failure: DecodeFailure::OtherType,
        })?;
    // Decoding all of them first keeps a bad one from leaving half a delta
    // applied.
    let ops = ops
        .iter()
        .map(|op| codec::decode::<T::Op>(op))
        .collect::<Result<Vec<_>>>()?;
    for op in ops {
        value.apply(op);
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Codec {
    decode: Decoder,
    delta: Option<DeltaCodec>,
}

struct Registration {
    tag: Arc<str>,
    type_name: &'static str,
    /// Whether the type's operations travel as deltas.
    deltas: bool,
}

/// Maps the Rust types that may be stored in Distributed Data to the stable tags
/// they carry on the wire, and tags back to decoders.
///
/// A type registered with [`register_with_deltas`](Self::register_with_deltas)
/// (every built-in type is) replicates an update as the operations it applied,
/// not as its whole state; one registered with [`register`](Self::register)
/// always travels whole.
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
    codecs: HashMap<Arc<str>, Codec>,
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
                $(self.insert::<$ty>($tag, Some(delta_codec::<$ty>()));)*
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

    fn insert<T: ReplicatedData>(&mut self, tag: &str, delta: Option<DeltaCodec>) {
        let tag: Arc<str> = tag.into();
        let codec = Codec {
            decode: decode_as::<T>,
            delta,
        };
        self.codecs.insert(tag.clone(), codec);
        self.by_type.insert(
            TypeId::of::<T>(),
            Registration {
                tag,
                type_name: std::any::type_name::<T>(),
                deltas: delta.is_some(),
            },
        );
    }

    /// Registers `T` under `tag`; its updates travel as whole states.
    /// Registering the same type under the same tag again is a no-op; a tag
    /// already taken by another type, or a type already registered under
    /// another tag, is an error.
    pub fn register<T: ReplicatedData>(&mut self, tag: &str) -> Result<()> {
        self.check_free::<T>(tag)?;
        if self.tag_of::<T>().is_none() {
            self.insert::<T>(tag, None);
        }
        Ok(())
    }

    /// Registers `T` under `tag`, with its updates travelling as the
    /// operations applied through [`Tracked::apply`](super::Tracked::apply).
    ///
    /// `T`'s operations must be delta states: applying one must equal merging
    /// a small state, so that applying it twice, or after a merge that already
    /// holds it, changes nothing. A node that receives operations of this tag
    /// for a key it does not hold applies them to `T::default()`. Same rules
    /// as [`register`](Self::register) otherwise.
    pub fn register_with_deltas<T: ReplicatedData + OpBased + Default>(
        &mut self,
        tag: &str,
    ) -> Result<()> {
        self.check_free::<T>(tag)?;
        if self.tag_of::<T>().is_none() {
            self.insert::<T>(tag, Some(delta_codec::<T>()));
        }
        Ok(())
    }

    /// Whether `T` may be (or already is) registered under `tag`.
    fn check_free<T: 'static>(&self, tag: &str) -> Result<()> {
        if let Some(existing) = self.by_type.get(&TypeId::of::<T>()) {
            if &*existing.tag == tag {
                return Ok(());
            }
            return Err(Error::RegisteredTwice {
                type_name: std::any::type_name::<T>(),
                tag: existing.tag.to_string(),
            });
        }
        if self.codecs.contains_key(tag) {
            let owner = self
                .by_type
                .values()
                .find(|registration| &*registration.tag == tag)
                .map_or("another type", |registration| registration.type_name);
            return Err(Error::TagTaken {
                type_name: std::any::type_name::<T>(),
                tag: tag.to_string(),
                owner,
            });
        }
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

    /// Whether `T` is registered with its updates travelling as deltas.
    pub fn has_deltas<T: 'static>(&self) -> bool {
        self.by_type
            .get(&TypeId::of::<T>())
            .is_some_and(|registration| registration.deltas)
    }

    /// The registered tag equal to `tag`, shared rather than copied.
    pub fn canonical_tag(&self, tag: &str) -> Option<Arc<str>> {
        self.codecs.get_key_value(tag).map(|(tag, _)| tag.clone())
    }

    fn codec(&self, tag: &str) -> Result<&Codec> {
        self.codecs.get(tag).ok_or_else(|| Error::UnregisteredType {
            what: format!("tag {tag:?}"),
        })
    }

    /// Decodes `bytes` as the type registered under `tag`.
    pub fn decode(&self, tag: &str, bytes: &[u8]) -> Result<Box<dyn ErasedData>> {
        (self.codec(tag)?.decode)(bytes)
    }

    fn delta_codec(&self, tag: &str) -> Result<DeltaCodec> {
        self.codec(tag)?
            .delta
            .ok_or_else(|| Error::UnregisteredType {
                what: format!("deltas of tag {tag:?}"),
            })
    }

    /// The empty value of the type registered under `tag`, for a delta that
    /// arrives before any state of its key.
    pub fn empty_value(&self, tag: &str) -> Result<Box<dyn ErasedData>> {
        Ok((self.delta_codec(tag)?.empty)())
    }

    /// Applies encoded operations of the type registered under `tag` to
    /// `value`: all of them, or none if one does not decode.
    pub fn apply_ops(&self, tag: &str, value: &mut dyn ErasedData, ops: &[ByteBuf]) -> Result<()> {
        (self.delta_codec(tag)?.apply)(value, ops)
    }
}

fn delta_codec<T: ReplicatedData + OpBased + Default>() -> DeltaCodec {
    DeltaCodec {
        empty: empty_of::<T>,
        apply: apply_ops_as::<T>,
    }
}

impl Debug for TypeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut tags: Vec<&str> = self.codecs.keys().map(|tag| &**tag).collect();
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
        assert!(decoded.eq_erased(erase(counter).as_ref()));

        let mut empty = erase(GCounter::new());
        assert_eq!(empty.merge_erased(decoded.as_ref()), Some(true));
        assert_eq!(empty.merge_erased(decoded.as_ref()), Some(false));
        assert_eq!(empty.merge_erased(erase(Flag::default()).as_ref()), None);
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
        assert!(
            matches!(&err, Error::TagTaken { tag, owner, .. } if tag == "GCounter" && owner.ends_with("GCounter")),
            "{err:?}"
        );
        registry.register::<GCounter>("GCounter").unwrap();
        let err = registry.register::<GCounter>("Counter").unwrap_err();
        assert!(
            matches!(&err, Error::RegisteredTwice { tag, .. } if tag == "GCounter"),
            "{err:?}"
        );
    }
}
