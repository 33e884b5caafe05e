//! Opening the sled databases of durable stores and journals, with the
//! library's defaults and your own settings.
//!
//! [`SledStore`](crate::ddata::SledStore) and
//! [`SledJournal`](crate::persistence::SledJournal) open a path with
//! [`config`]: sled's settings with a page cache of [`DEFAULT_CACHE_BYTES`]
//! (sled's own default is 1 GiB per database) and no periodic flusher (the
//! store and the journal flush when their rules say so). To change a setting,
//! start from [`config`] and pass the result to `open_with`; to keep a store
//! and a journal in one database (one cache, one file lock), [`open`] it once
//! and give the [`sled::Db`] to both with `with_db`:
//!
//! ```no_run
//! use ractor_replicated::ddata::SledStore;
//! use ractor_replicated::persistence::SledJournal;
//! use ractor_replicated::sled_db;
//!
//! let db = sled_db::open(&sled_db::config("data/node-a").cache_capacity(16 << 20))?;
//! let store = SledStore::with_db(db.clone(), "node-a")?;
//! let journal = SledJournal::with_db(db);
//! # Ok::<(), ractor_replicated::Error>(())
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result, StoreFailure};

/// The page cache of a database opened with [`config`], in bytes: 64 MiB.
/// Data beyond it is read from disk when needed; reads of the durable store
/// and the journal happen at start (recovery) and when a peer is behind.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// How long an open waits for a database that is still locked.
///
/// sled writes and syncs through a thread pool, and a task of a database that
/// was just dropped can hold the file (and its lock) a moment longer than the
/// drop. A store or journal reopened in the same process right after it was
/// closed, as a restarted Replicator or entity does, waits for that instead
/// of failing.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// The settings a store or journal opens `path` with: a
/// [`DEFAULT_CACHE_BYTES`] page cache and no periodic flusher. Change any
/// with sled's builder methods.
pub fn config(path: impl AsRef<Path>) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(DEFAULT_CACHE_BYTES)
        .flush_every_ms(None)
}

/// Opens (or creates) the database `config` describes. A database locked by
/// another open instance (in this process or another) is waited for a
/// moment, as after a restart, then an [`Error::Open`].
pub fn open(config: &sled::Config) -> Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    let failure = |failure| Error::Open {
        path: config.get_path(),
        failure,
    };
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(err) if is_locked(&err) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) if is_locked(&err) => {
                return Err(failure(StoreFailure::Locked { waited: LOCK_WAIT }))
            }
            Err(err) => return Err(failure(StoreFailure::engine(err))),
        }
    }
}

fn is_locked(err: &sled::Error) -> bool {
    matches!(err, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_reopens_right_after_it_is_dropped_and_a_second_open_waits_then_fails() {
        let temp = test_support::temp_dir("sled-db");
        let dir = temp.path();
        // Unflushed writes make the drop hand sled's thread pool work that
        // holds the file a moment longer.
        for round in 0..50u32 {
            let db = open(&config(dir)).expect("a closed database reopens");
            for item in 0..64u32 {
                db.insert(
                    [round.to_be_bytes(), item.to_be_bytes()].concat(),
                    vec![7u8; 4096],
                )
                .unwrap();
            }
        }
        let db = open(&config(dir)).unwrap();
        assert_eq!(db.len(), 50 * 64);
        let started = Instant::now();
        let err = open(&config(dir)).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Open {
                    path,
                    failure: StoreFailure::Locked { .. },
                } if path == dir
            ),
            "{err:?}"
        );
        assert!(started.elapsed() >= LOCK_WAIT);
        drop(db);
    }
}
