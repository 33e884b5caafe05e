//! Starting a log from a journal, as an entity does.

use super::{ConflictResolver, EventEnvelope, EventHandler, ReplicatedLog, Snapshot};
use crate::error::{Chain, Error, Record, Result, StoreFailure};
use crate::persistence::journal::Journal;

/// Decodes a snapshot's state from its bytes.
pub type DecodeState<S> = fn(&[u8]) -> Result<S>;

/// How [`recover_from_journal`] started a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The local sequence number the snapshot's recovery read from, if the
    /// log started from a snapshot.
    pub snapshot_from: Option<u64>,
    /// How many journaled events were read.
    pub events_read: usize,
}

/// Starts an empty `log` from `journal`, as an entity does when it starts:
/// from the snapshot of `persistence_id` and the events after it if
/// `decode_state` is given and the snapshot is usable, else from every
/// journaled event.
///
/// A snapshot that cannot be read or decoded, or that the events journaled
/// after it do not fit (an event that may sort inside it), is passed over
/// with a warning: the events are the truth, and replaying all of them gives
/// the same state. An event that cannot be read is an error.
///
/// A journal that [deleted events](Journal::delete_before) no longer holds
/// them all: the log starts from the snapshot, which must then be readable
/// (an error if not, or if `decode_state` is not given), with every event
/// after it, and [forgets the history](ReplicatedLog::forget_history)
/// before it. An event journaled there was placed after the snapshot when
/// it was taken in (one that sorted inside was refused), so none is
/// checked against it.
///
/// # Panics
///
/// If `log` is not empty.
pub fn recover_from_journal<H, R, J>(
    log: &mut ReplicatedLog<H, R>,
    journal: &J,
    persistence_id: &str,
    decode_state: Option<DecodeState<H::State>>,
) -> Result<Recovered>
where
    H: EventHandler,
    R: ConflictResolver<H::Event>,
    J: Journal,
{
    if journal.deleted_before(persistence_id)?.is_some() {
        return recover_after_deletion(log, journal, persistence_id, decode_state);
    }
    if let Some(decode) = decode_state {
        if let Some(recovered) = recover_from_snapshot(log, journal, persistence_id, decode)? {
            return Ok(recovered);
        }
    }
    let journaled = journal.read_from(persistence_id, 1)?;
    let events_read = journaled.len();
    log.recover(journaled.into_iter().map(|(_, envelope)| envelope));
    Ok(Recovered {
        snapshot_from: None,
        events_read,
    })
}

fn recover_from_snapshot<H, R, J>(
    log: &mut ReplicatedLog<H, R>,
    journal: &J,
    persistence_id: &str,
    decode: DecodeState<H::State>,
) -> Result<Option<Recovered>>
where
    H: EventHandler,
    R: ConflictResolver<H::Event>,
    J: Journal,
{
    let stored = match journal.load_snapshot(persistence_id) {
        Ok(Some(stored)) => stored,
        Ok(None) => return Ok(None),
        Err(err) => {
            tracing::warn!(persistence_id, error = %Chain(&err), "cannot read the snapshot; replaying the whole journal");
            return Ok(None);
        }
    };
    let state = match decode(&stored.state) {
        Ok(state) => state,
        Err(err) => {
            tracing::warn!(persistence_id, error = %Chain(&err), "cannot decode the snapshot's state; replaying the whole journal");
            return Ok(None);
        }
    };
    let after = journal.read_from(persistence_id, stored.from_sequence)?;
    let events_read = after.len();
    let (known, later): (Vec<_>, Vec<_>) = after
        .into_iter()
        .partition(|(sequence, _)| *sequence <= stored.sequence);
    let envelopes = |events: Vec<(u64, EventEnvelope<H::Event>)>| {
        events.into_iter().map(|(_, envelope)| envelope)
    };
    let snapshot = Snapshot {
        state,
        version: stored.version,
        events: stored.events,
    };
    if log.recover_from_snapshot(snapshot, envelopes(known), envelopes(later)) {
        Ok(Some(Recovered {
            snapshot_from: Some(stored.from_sequence),
            events_read,
        }))
    } else {
        tracing::warn!(
            persistence_id,
            "journaled events may sort inside the snapshot; replaying the whole journal"
        );
        Ok(None)
    }
}

fn recover_after_deletion<H, R, J>(
    log: &mut ReplicatedLog<H, R>,
    journal: &J,
    persistence_id: &str,
    decode_state: Option<DecodeState<H::State>>,
) -> Result<Recovered>
where
    H: EventHandler,
    R: ConflictResolver<H::Event>,
    J: Journal,
{
    let failed = |failure| {
        Error::journal(
            journal.location(),
            Some(persistence_id),
            Some(Record::Snapshot),
            failure,
        )
    };
    let decode = decode_state.ok_or_else(|| failed(StoreFailure::HistoryLost))?;
    let stored = journal
        .load_snapshot(persistence_id)?
        .ok_or_else(|| failed(StoreFailure::HistoryLost))?;
    let state = decode(&stored.state).map_err(|err| failed(StoreFailure::unreadable(err)))?;
    let after = journal.read_from(persistence_id, stored.from_sequence)?;
    let events_read = after.len();
    let snapshot = Snapshot {
        state,
        version: stored.version,
        events: stored.events,
    };
    let placed = log.recover_from_snapshot(
        snapshot,
        after.into_iter().map(|(_, envelope)| envelope),
        std::iter::empty(),
    );
    // Nothing journaled after the snapshot is checked against it, so only
    // a log that was not empty refuses it.
    assert!(placed, "recover_from_journal starts an empty log");
    log.forget_history();
    Ok(Recovered {
        snapshot_from: Some(stored.from_sequence),
        events_read,
    })
}
