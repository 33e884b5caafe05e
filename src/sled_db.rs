//! Opening a sled database, shared by the durable store and the journal.

use std::path::Path;
use std::time::{Duration, Instant};

/// How long an open waits for a database that is still locked.
///
/// sled writes and syncs through a thread pool, and a task of a database that
/// was just dropped can hold the file (and its lock) a moment longer than the
/// drop. A store or journal reopened in the same process right after it was
/// closed, as a restarted Replicator or entity does, waits for that instead
/// of failing.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens (or creates) the sled database at `path`, with no flusher thread:
/// the callers decide when to flush. A database locked by another open
/// instance (in this process or another) is an error after [`LOCK_WAIT`].
pub(crate) fn open(path: &Path) -> Result<sled::Db, String> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(path).flush_every_ms(None).open() {
            Ok(db) => return Ok(db),
            Err(err) if is_locked(&err) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) if is_locked(&err) => {
                return Err(format!(
                    "the database is in use by another open store or journal \
                     (in this process or another) and stayed locked for {LOCK_WAIT:?}: {err}"
                ))
            }
            Err(err) => return Err(err.to_string()),
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
        let dir =
            std::env::temp_dir().join(format!("ractor_replicated-sled-db-{}", std::process::id()));
        // Unflushed writes make the drop hand sled's thread pool work that
        // holds the file a moment longer.
        for round in 0..50u32 {
            let db = open(&dir).expect("a closed database reopens");
            for item in 0..64u32 {
                db.insert(
                    [round.to_be_bytes(), item.to_be_bytes()].concat(),
                    vec![7u8; 4096],
                )
                .unwrap();
            }
        }
        let db = open(&dir).unwrap();
        assert_eq!(db.len(), 50 * 64);
        let started = Instant::now();
        let err = open(&dir).unwrap_err();
        assert!(err.contains("in use"), "{err}");
        assert!(started.elapsed() >= LOCK_WAIT);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
