use std::path::Path;
use std::sync::Arc;

use super::{DurableEntry, DurableStore, Loaded};
use crate::codec;
use crate::error::{DecodeFailure, Error, Result, StoreFailure};

const INCARNATION: &[u8] = b"incarnation";

/// A [`DurableStore`] in a sled database (0.34).
///
/// One database may hold several nodes: each node's entries live in the tree
/// `ddata/<node>` under the key's name, its incarnation in `ddata-meta/<node>`.
/// Values are codec encodings (version byte + MessagePack).
pub struct SledStore {
    location: String,
    entries: sled::Tree,
    meta: sled::Tree,
    db: sled::Db,
}

impl SledStore {
    /// Opens (or creates) the database at `path` for node `node`, with the
    /// library's settings ([`sled_db::config`](crate::sled_db::config)). The
    /// Replicator decides when to flush (see [`WriteMode`](super::WriteMode)).
    pub fn open(path: impl AsRef<Path>, node: &str) -> Result<Self> {
        Self::open_with(&crate::sled_db::config(path), node)
    }

    /// Opens (or creates) the database `config` describes, for node `node`:
    /// start from [`sled_db::config`](crate::sled_db::config) to change the
    /// cache size or another setting.
    pub fn open_with(config: &sled::Config, node: &str) -> Result<Self> {
        let db = crate::sled_db::open(config)?;
        Self::in_db(db, config.get_path().display().to_string(), node)
    }

    /// The store of node `node` in an open database, which other stores and
    /// journals may share (see [`sled_db`](crate::sled_db)).
    pub fn with_db(db: sled::Db, node: &str) -> Result<Self> {
        Self::in_db(db, "a shared sled database".into(), node)
    }

    fn in_db(db: sled::Db, location: String, node: &str) -> Result<Self> {
        let fail = |err: sled::Error| Error::store(&location, None, StoreFailure::engine(err));
        let entries = db.open_tree(format!("ddata/{node}")).map_err(fail)?;
        let meta = db.open_tree(format!("ddata-meta/{node}")).map_err(fail)?;
        Ok(Self {
            location,
            entries,
            meta,
            db,
        })
    }

    /// The storage engine failed at `key`, or at no key in particular.
    fn failed(&self, key: Option<&str>) -> impl Fn(sled::Error) -> Error + '_ {
        let key = key.map(str::to_string);
        move |err| Error::store(&self.location, key.as_deref(), StoreFailure::engine(err))
    }

    /// What is stored at `key` cannot be read back.
    fn unreadable(&self, key: &str) -> impl Fn(Error) -> Error + '_ {
        let key = key.to_string();
        move |err| Error::store(&self.location, Some(&key), StoreFailure::unreadable(err))
    }
}

impl DurableStore for SledStore {
    fn load(&mut self) -> Result<Loaded> {
        let last_incarnation = match self.meta.get(INCARNATION).map_err(self.failed(None))? {
            None => None,
            Some(bytes) => {
                Some(codec::decode::<u64>(&bytes).map_err(self.unreadable("<incarnation>"))?)
            }
        };
        let mut recovered = Loaded {
            last_incarnation,
            ..Loaded::default()
        };
        for item in self.entries.iter() {
            let (key, bytes) = item.map_err(self.failed(None))?;
            let key = String::from_utf8(key.to_vec()).map_err(|err| {
                self.unreadable(&String::from_utf8_lossy(&key))(Error::Decode {
                    what: "a key",
                    failure: DecodeFailure::Malformed(Arc::new(err)),
                })
            })?;
            let entry: DurableEntry = codec::decode(&bytes).map_err(self.unreadable(&key))?;
            recovered.entries.insert(key, entry);
        }
        Ok(recovered)
    }

    fn set_incarnation(&mut self, incarnation: u64) -> Result<()> {
        let bytes = codec::encode(&incarnation)?;
        self.meta
            .insert(INCARNATION, bytes)
            .map_err(self.failed(Some("<incarnation>")))?;
        self.flush()
    }

    fn store(&mut self, key: &str, entry: &DurableEntry) -> Result<()> {
        let bytes = codec::encode(entry)?;
        self.entries
            .insert(key.as_bytes(), bytes)
            .map_err(self.failed(Some(key)))?;
        Ok(())
    }

    fn remove(&mut self, key: &str) -> Result<()> {
        self.entries
            .remove(key.as_bytes())
            .map_err(self.failed(Some(key)))?;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.db.flush().map_err(self.failed(None))?;
        Ok(())
    }

    fn location(&self) -> String {
        self.location.clone()
    }
}
