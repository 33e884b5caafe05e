use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::Journal;
use crate::codec;
use crate::error::{Error, Result};
use crate::persistence::replicated::EventEnvelope;

/// A [`Journal`] in a sled (0.34) database.
///
/// Per persistence id, the tree `events/<id>` maps the local sequence number
/// (8 bytes, big-endian, so trees iterate in order) to the codec encoding of
/// the [`EventEnvelope`], and the tree `origins/<id>` maps an event's origin
/// and origin sequence number to its local sequence number: the index that
/// makes appends idempotent. Both are written in one transaction; sled's log
/// is sequential, so a crash before [`Journal::flush`] loses a suffix of the
/// appends.
pub struct SledJournal {
    path: PathBuf,
    db: sled::Db,
    /// The open trees and the next local sequence number, per persistence id
    /// this handle appended to.
    appending: HashMap<String, Appending>,
}

struct Appending {
    events: sled::Tree,
    origins: sled::Tree,
    next: u64,
}

impl SledJournal {
    /// Opens (or creates) the journal at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let db = sled::Config::new()
            .path(&path)
            .flush_every_ms(None)
            .open()
            .map_err(|err| Error::Store {
                path: path.display().to_string(),
                key: None,
                reason: err.to_string(),
            })?;
        Ok(Self {
            path,
            db,
            appending: HashMap::new(),
        })
    }

    fn error(&self, key: Option<String>, reason: impl ToString) -> Error {
        Error::Store {
            path: self.path.display().to_string(),
            key,
            reason: reason.to_string(),
        }
    }

    fn trees(&self, persistence_id: &str) -> Result<(sled::Tree, sled::Tree)> {
        let open = |name: String| self.db.open_tree(name).map_err(|e| self.error(None, e));
        Ok((
            open(format!("events/{persistence_id}"))?,
            open(format!("origins/{persistence_id}"))?,
        ))
    }

    fn sequence_of(&self, persistence_id: &str, key: &[u8]) -> Result<u64> {
        <[u8; 8]>::try_from(key)
            .map(u64::from_be_bytes)
            .map_err(|_| {
                self.error(
                    Some(persistence_id.into()),
                    "a sequence number is not 8 bytes",
                )
            })
    }
}

fn origin_key<E>(envelope: &EventEnvelope<E>) -> Result<Vec<u8>> {
    codec::encode(&(&envelope.origin, envelope.origin_seq))
}

impl Journal for SledJournal {
    fn append<E: Serialize>(
        &mut self,
        persistence_id: &str,
        events: &[EventEnvelope<E>],
    ) -> Result<usize> {
        let encoded = events
            .iter()
            .map(|envelope| Ok((origin_key(envelope)?, codec::encode(envelope)?)))
            .collect::<Result<Vec<_>>>()?;
        // Taken out while in use; an append that fails reopens the trees.
        let mut appending = match self.appending.remove(persistence_id) {
            Some(appending) => appending,
            None => {
                let (events, origins) = self.trees(persistence_id)?;
                let next = self.highest_sequence(persistence_id)? + 1;
                Appending {
                    events,
                    origins,
                    next,
                }
            }
        };
        let next = appending.next;
        let outcome = (&appending.events, &appending.origins).transaction(|(tree, origins)| {
            let mut sequence = next;
            for (origin, bytes) in &encoded {
                if origins.get(origin)?.is_some() {
                    continue;
                }
                origins.insert(origin.as_slice(), &sequence.to_be_bytes()[..])?;
                tree.insert(&sequence.to_be_bytes()[..], bytes.as_slice())?;
                sequence += 1;
            }
            Ok::<_, ConflictableTransactionError<()>>(sequence - next)
        });
        let stored = match outcome {
            Ok(stored) => stored,
            Err(TransactionError::Storage(err)) => {
                return Err(self.error(Some(persistence_id.into()), err))
            }
            Err(TransactionError::Abort(())) => {
                return Err(self.error(Some(persistence_id.into()), "append aborted"))
            }
        };
        appending.next += stored;
        self.appending.insert(persistence_id.to_string(), appending);
        usize::try_from(stored).map_err(|e| self.error(None, e))
    }

    fn flush(&mut self) -> Result<()> {
        self.db.flush().map_err(|e| self.error(None, e))?;
        Ok(())
    }

    fn read_from<E: DeserializeOwned>(
        &self,
        persistence_id: &str,
        from: u64,
    ) -> Result<Vec<(u64, EventEnvelope<E>)>> {
        let (tree, _) = self.trees(persistence_id)?;
        let mut events = Vec::new();
        for item in tree.range(from.to_be_bytes()..) {
            let (key, bytes) = item.map_err(|e| self.error(None, e))?;
            let sequence = self.sequence_of(persistence_id, &key)?;
            let envelope = codec::decode(&bytes)
                .map_err(|e| self.error(Some(format!("{persistence_id}#{sequence}")), e))?;
            events.push((sequence, envelope));
        }
        Ok(events)
    }

    fn highest_sequence(&self, persistence_id: &str) -> Result<u64> {
        let (tree, _) = self.trees(persistence_id)?;
        match tree.last().map_err(|e| self.error(None, e))? {
            None => Ok(0),
            Some((key, _)) => self.sequence_of(persistence_id, &key),
        }
    }
}
