//! The Replicator's durable store and what has not reached its disk yet.

use std::collections::BTreeSet;

use crate::ddata::core::{Lookup, ReplicatorCore};
use crate::ddata::durable::{DurableEntry, DurableStore, WriteMode};
use crate::ddata::wire::WireValue;
use crate::error::Result;

/// The durable store and what has not reached its disk yet.
pub(crate) struct Storage {
    store: Box<dyn DurableStore>,
    mode: WriteMode,
    /// Write-behind: keys changed since the last flush, each written once then.
    pending: BTreeSet<String>,
    /// Keys whose current state the store refused: retried before anything
    /// else is made durable, and until they are stored nothing counts as
    /// durable.
    failed: BTreeSet<String>,
    unflushed: bool,
}

impl Storage {
    pub(crate) fn new(store: Box<dyn DurableStore>, mode: WriteMode) -> Self {
        Self {
            store,
            mode,
            pending: BTreeSet::new(),
            failed: BTreeSet::new(),
            unflushed: false,
        }
    }

    pub(crate) fn mode(&self) -> WriteMode {
        self.mode
    }

    /// Notes that `key` changed: written now (write-through) or at the next
    /// flush (write-behind, which so writes a busy key once per interval).
    pub(crate) fn record(&mut self, core: &ReplicatorCore, key: String) -> Result<()> {
        match self.mode {
            WriteMode::WriteThrough => self.persist(core, key),
            WriteMode::WriteBehind { .. } => {
                self.pending.insert(key);
                Ok(())
            }
        }
    }

    /// Writes `key`'s current state to the store; a key the store refuses
    /// is kept for the next attempt.
    fn persist(&mut self, core: &ReplicatorCore, key: String) -> Result<()> {
        let lifetime = core.lifetime(&key);
        let written = match core.lookup(&key) {
            Lookup::Absent => self.store.remove(&key),
            Lookup::Deleted => self.store.store(
                &key,
                &DurableEntry {
                    value: WireValue::Deleted,
                    lifetime,
                },
            ),
            Lookup::Live { tag, value } => value.encode_erased().and_then(|state| {
                let value = WireValue::Live {
                    tag: tag.to_string(),
                    state,
                };
                self.store.store(&key, &DurableEntry { value, lifetime })
            }),
        };
        match written {
            Ok(()) => {
                self.failed.remove(&key);
                self.unflushed = true;
                Ok(())
            }
            Err(err) => {
                self.failed.insert(key);
                Err(err)
            }
        }
    }

    /// Writes the keys refused before and the pending ones, and makes
    /// everything written durable. Fails while any key's current state is
    /// not stored.
    pub(crate) fn flush(&mut self, core: &ReplicatorCore) -> Result<()> {
        let mut first_failure = None;
        let keys: Vec<String> = std::mem::take(&mut self.failed)
            .into_iter()
            .chain(std::mem::take(&mut self.pending))
            .collect();
        for key in keys {
            if let Err(err) = self.persist(core, key) {
                first_failure.get_or_insert(err);
            }
        }
        if self.unflushed {
            self.store.flush()?;
            self.unflushed = false;
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Write-through: nothing is announced (acknowledged, answered, sent)
    /// before the states it depends on are on disk.
    pub(crate) fn flush_before_announcing(&mut self, core: &ReplicatorCore) -> Result<()> {
        match self.mode {
            WriteMode::WriteThrough => self.flush(core),
            WriteMode::WriteBehind { .. } => Ok(()),
        }
    }

    /// Write-through with writes not yet flushed (or refused): an
    /// announcement must wait for the next flush.
    pub(crate) fn holds_announcements(&self) -> bool {
        self.mode == WriteMode::WriteThrough && (self.unflushed || !self.failed.is_empty())
    }
}
