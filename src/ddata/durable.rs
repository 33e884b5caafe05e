//! Durable storage of Distributed Data: a narrow store trait, an in-memory
//! implementation for tests, and the sled implementation.
//!
//! A store holds, for one node, the state of each durable key (a type tag and
//! the codec encoding, or a tombstone, and for a key that expires when it was
//! last used) and the last incarnation the node wrote under. A restarted node always writes under a new, larger incarnation, so
//! it never re-mints a dot or counter entry of a previous life, whether or not
//! every key it wrote was durable.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[cfg(feature = "cluster")]
use super::core::KeySelection;
use super::wire::{Lifetime, WireValue};
use crate::error::Result;

#[cfg(feature = "sled")]
mod sled_store;

#[cfg(feature = "sled")]
pub use sled_store::SledStore;

/// Everything a store holds for one node, as [`DurableStore::load`] reads
/// it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    /// The incarnation the node last wrote under, if it ever started.
    pub last_incarnation: Option<u64>,
    /// Each durable key's last stored state.
    pub entries: BTreeMap<String, DurableEntry>,
}

/// What a store keeps of one durable key, and what the sled store writes: the
/// wire form of the value, so that a stored entry decodes exactly like a
/// replicated one, and its lifetime.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DurableEntry {
    /// The key's state.
    pub value: WireValue,
    /// When the key began and was last used, for a key that expires: a key
    /// that expired while its node was down is not recovered. `None` for
    /// other keys, and in entries written before version 2 of the store
    /// format (which had no lifetime).
    #[serde(default)]
    pub lifetime: Option<Lifetime>,
}

/// Where a Replicator keeps its durable keys. Implementations decide how to
/// make `store` and `remove` durable; [`flush`](Self::flush) must not return
/// before everything written so far survives a crash of the process.
pub trait DurableStore: Send + 'static {
    /// Everything stored for this node. An entry that cannot be decoded is an
    /// error naming the store and the key.
    fn load(&mut self) -> Result<Loaded>;
    /// Records the incarnation the node writes under from now on (durably).
    fn set_incarnation(&mut self, incarnation: u64) -> Result<()>;
    /// Stores `key`'s state.
    fn store(&mut self, key: &str, entry: &DurableEntry) -> Result<()>;
    /// Forgets `key`.
    fn remove(&mut self, key: &str) -> Result<()>;
    /// Makes every earlier `store` and `remove` durable.
    fn flush(&mut self) -> Result<()>;
    /// Where the store keeps its data, for error messages.
    fn location(&self) -> String;
}

/// When a durable key's new state reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Before the update is acknowledged (and before a read repair returns).
    /// An acknowledged write survives a crash.
    WriteThrough,
    /// Within `interval` after the update, which is acknowledged at once.
    /// Updates acknowledged in the last `interval` before a crash are lost on
    /// this replica (they survive on the peers they reached).
    WriteBehind {
        /// How often written states are flushed.
        interval: Duration,
    },
}

/// Durability settings of a Replicator.
#[cfg(feature = "cluster")]
pub struct Durability {
    pub(crate) store: Box<dyn DurableStore>,
    pub(crate) keys: KeySelection,
    pub(crate) mode: WriteMode,
}

#[cfg(feature = "cluster")]
impl Durability {
    /// Keeps the keys in `keys` in `store`, write-through.
    pub fn new(store: impl DurableStore, keys: KeySelection) -> Self {
        Self {
            store: Box::new(store),
            keys,
            mode: WriteMode::WriteThrough,
        }
    }

    /// Chooses when states reach the disk.
    pub fn with_mode(mut self, mode: WriteMode) -> Self {
        self.mode = mode;
        self
    }
}

/// A store in memory, shared by its clones: it survives a Replicator's stop
/// and restart within one process, which is what tests need.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: std::sync::Arc<std::sync::Mutex<Loaded>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Loaded) -> R) -> R {
        let mut guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }
}

impl DurableStore for MemoryStore {
    fn load(&mut self) -> Result<Loaded> {
        Ok(self.with(|recovered| recovered.clone()))
    }

    fn set_incarnation(&mut self, incarnation: u64) -> Result<()> {
        self.with(|recovered| recovered.last_incarnation = Some(incarnation));
        Ok(())
    }

    fn store(&mut self, key: &str, entry: &DurableEntry) -> Result<()> {
        self.with(|recovered| recovered.entries.insert(key.to_string(), entry.clone()));
        Ok(())
    }

    fn remove(&mut self, key: &str) -> Result<()> {
        self.with(|recovered| recovered.entries.remove(key));
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn location(&self) -> String {
        "memory".into()
    }
}

// The store's round trips, with the sled store.
#[cfg(all(test, feature = "sled"))]
pub(crate) mod tests {
    use super::*;
    use crate::ddata::registry::{erase, ErasedData, TypeRegistry};
    use crate::error::{Error, StoreFailure};
    use crate::{
        Flag, GCounter, GSet, LWWMap, LWWRegister, MVRegister, ORMap, ORMultiMap, ORSet, OpBased,
        PNCounter, PNCounterMap, ReplicaId,
    };

    pub(crate) fn untimed(value: WireValue) -> DurableEntry {
        DurableEntry {
            value,
            lifetime: None,
        }
    }

    fn timed(value: WireValue, used: u64) -> DurableEntry {
        DurableEntry {
            value,
            lifetime: Some(Lifetime { created: 1, used }),
        }
    }

    fn samples() -> Vec<(&'static str, Box<dyn ErasedData>)> {
        let me = ReplicaId::new("a", 1);
        let mut counter = GCounter::new();
        counter.apply(counter.increment(&me, 7));
        let mut pn = PNCounter::new();
        pn.apply(pn.change(&me, -3));
        let mut flag = Flag::default();
        flag.apply(flag.switch_on());
        let mut gset = GSet::<String>::new();
        gset.apply(gset.insert("g".to_string()));
        let mut set = ORSet::<String>::new();
        set.apply(set.add(&me, "x".to_string()));
        set.apply(set.add(&me, "y".to_string()));
        set.apply(set.remove("x"));
        let mut lww = LWWRegister::<String>::new();
        lww.apply(lww.set(&me, "v".to_string()));
        let mut mv = MVRegister::<String>::new();
        mv.apply(mv.write(&me, "m".to_string()));
        let mut lww_map = LWWMap::<String, String>::new();
        lww_map.apply(lww_map.insert(&me, "k".to_string(), "v".to_string()));
        let mut pn_map = PNCounterMap::<String>::new();
        pn_map.apply(pn_map.increment(&me, "k".to_string(), 4));
        let mut or_map = ORMap::<String, PNCounter>::new();
        or_map.apply(or_map.update(&me, "k".to_string(), |c, writer| {
            c.apply(c.change(writer, 2))
        }));
        let mut multi = ORMultiMap::<String, String>::new();
        multi.apply(multi.add_binding(&me, "k".to_string(), "v".to_string()));
        vec![
            ("GCounter", erase(counter)),
            ("PNCounter", erase(pn)),
            ("Flag", erase(flag)),
            ("GSet<String>", erase(gset)),
            ("ORSet<String>", erase(set)),
            ("LWWRegister<String>", erase(lww)),
            ("MVRegister<String>", erase(mv)),
            ("LWWMap<String,String>", erase(lww_map)),
            ("PNCounterMap<String>", erase(pn_map)),
            ("ORMap<String,PNCounter>", erase(or_map)),
            ("ORMultiMap<String,String>", erase(multi)),
        ]
    }

    #[test]
    fn every_crdt_type_round_trips_through_sled() {
        let dir = test_support::temp_dir("round-trip");
        let types = TypeRegistry::with_builtins();
        // Built once: the LWW register's timestamp comes from the wall clock.
        let samples = samples();
        {
            let mut store = SledStore::open(dir.path(), "node-a").unwrap();
            store.set_incarnation(42).unwrap();
            for (tag, value) in &samples {
                let wire = WireValue::Live {
                    tag: tag.to_string(),
                    state: value.encode_erased().unwrap(),
                };
                store.store(tag, &untimed(wire)).unwrap();
            }
            store.store("gone", &timed(WireValue::Deleted, 9)).unwrap();
            store
                .store("forgotten", &untimed(WireValue::Deleted))
                .unwrap();
            store.remove("forgotten").unwrap();
            store.flush().unwrap();
        }
        let mut store = SledStore::open(dir.path(), "node-a").unwrap();
        let recovered = store.load().unwrap();
        assert_eq!(recovered.last_incarnation, Some(42));
        assert_eq!(
            recovered.entries.get("gone"),
            Some(&timed(WireValue::Deleted, 9))
        );
        assert!(!recovered.entries.contains_key("forgotten"));
        for (tag, value) in &samples {
            let Some(DurableEntry {
                value: WireValue::Live { tag: found, state },
                lifetime: None,
            }) = recovered.entries.get(*tag)
            else {
                panic!("{tag} was not recovered");
            };
            let decoded = types.decode(found, state).unwrap();
            assert!(decoded.eq_erased(value.as_ref()), "{tag}");
        }
    }

    #[test]
    fn an_undecodable_entry_is_an_error_naming_the_file_and_the_key() {
        let dir = test_support::temp_dir("corrupt");
        {
            let db = sled::Config::new()
                .path(dir.path())
                .flush_every_ms(None)
                .open()
                .unwrap();
            let tree = db.open_tree("ddata/node-a").unwrap();
            tree.insert("cart/alice", &[1u8, 0xc1, 0x00][..]).unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path(), "node-a")
            .unwrap()
            .load()
            .unwrap_err();
        let Error::Store {
            location,
            key,
            failure: StoreFailure::Unreadable(cause),
        } = &err
        else {
            panic!("not an unreadable entry: {err:?}");
        };
        assert_eq!(key.as_deref(), Some("cart/alice"));
        assert_eq!(location, &dir.path().display().to_string());
        assert!(matches!(**cause, Error::Decode { .. }), "{cause:?}");
    }

    #[test]
    fn a_memory_store_is_shared_by_its_clones() {
        let mut store = MemoryStore::new();
        let mut clone = store.clone();
        store.store("k", &untimed(WireValue::Deleted)).unwrap();
        assert_eq!(clone.load().unwrap().entries.len(), 1);
    }
}
