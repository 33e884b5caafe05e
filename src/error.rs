//! The crate's error type: every fallible public operation returns [`Error`].
//!
//! Each variant names what a caller can act on (the key, the persistence id,
//! the store) and, where the failure started below this crate (sled,
//! MessagePack, the network, ractor), keeps that error as its
//! [`source`](std::error::Error::source). Following the Rust convention, a
//! variant's message does not repeat its source's: print the chain with
//! [`Chain`] (or `anyhow`'s `{:#}`) to see both.
//!
//! ```
//! use ractor_replicated::error::{Error, StoreFailure, Unavailability};
//!
//! /// Whether trying the call again later may succeed.
//! fn worth_retrying(err: &Error) -> bool {
//!     match err {
//!         // The write stands locally and spreads by gossip; a read may
//!         // reach its replicas next time.
//!         Error::Timeout { .. } => true,
//!         Error::EntityUnavailable {
//!             reason: Unavailability::CatchingUp,
//!             ..
//!         } => true,
//!         Error::Open {
//!             failure: StoreFailure::Locked { .. },
//!             ..
//!         } => true,
//!         _ => false,
//!     }
//! }
//! # assert!(!worth_retrying(&Error::Deleted { key: "k".into() }));
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// An error from below this crate (sled, MessagePack, I/O, ractor), kept
/// whole for [`std::error::Error::source`]. Shared rather than owned so that
/// one failure can answer every caller it concerns: a failed flush fails
/// every write that waited for it.
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in ractor_replicated, as a value.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value could not be serialised for the wire or for disk.
    #[error("cannot encode {what}")]
    Encode {
        /// The Rust type that was being encoded.
        what: &'static str,
        /// What the encoder reported.
        #[source]
        source: Source,
    },
    /// Bytes from a peer or from disk are not a valid encoding of the expected type.
    #[error("cannot decode {what}")]
    Decode {
        /// The Rust type that was expected.
        what: &'static str,
        /// Why the bytes were rejected.
        #[source]
        failure: DecodeFailure,
    },
    /// The bytes carry a wire-format version this build does not read.
    #[error("unsupported wire format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version byte found at the start of the message.
        found: u8,
        /// The version this build writes and reads.
        supported: u8,
    },
    /// A key holds a value of another type than the one asked for.
    #[error("key {key:?} holds a {found}, not a {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The type tag the caller asked for.
        expected: String,
        /// The type tag stored under the key.
        found: String,
    },
    /// The key was deleted; a deleted key stays deleted and cannot be reused.
    #[error("key {key:?} was deleted and cannot be used again")]
    Deleted {
        /// The key.
        key: String,
    },
    /// A value's Rust type was never registered with the Replicator's type registry.
    #[error("type {what} is not registered; register it before starting the Replicator")]
    UnregisteredType {
        /// The Rust type, or the type tag received from a peer.
        what: String,
    },
    /// A Rust type was registered again under another tag.
    #[error("cannot register {type_name}: it is already registered as {tag:?}")]
    RegisteredTwice {
        /// The Rust type.
        type_name: &'static str,
        /// The tag it was registered with first.
        tag: String,
    },
    /// A type tag was registered for a second Rust type.
    #[error("cannot register {type_name} as {tag:?}: the tag is taken by {owner}")]
    TagTaken {
        /// The Rust type being registered.
        type_name: &'static str,
        /// The tag.
        tag: String,
        /// The Rust type that holds the tag.
        owner: &'static str,
    },
    /// A value's encoding is too large to travel in one message.
    #[error("value of key {key:?} encodes to {bytes} bytes, over the {limit}-byte message limit")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// The encoded size of the value.
        bytes: usize,
        /// The configured maximum message size.
        limit: usize,
    },
    /// A write or read did not reach its consistency level in time. For a write,
    /// the local update stands and spreads later by gossip.
    #[error(
        "{operation} of key {key:?} reached {reached} of {required} replicas before its timeout"
    )]
    Timeout {
        /// Whether a read or a write timed out.
        operation: Operation,
        /// The key.
        key: String,
        /// How many replicas (this one included) had answered.
        reached: usize,
        /// How many the consistency level required.
        required: usize,
    },
    /// An actor of the library that a call needs is not running.
    #[error("the {actor} is unavailable: {reason}")]
    Unavailable {
        /// Which actor.
        actor: Component,
        /// Why.
        reason: Unavailability,
    },
    /// An entity (a replica of a persistence id) cannot take the call now.
    #[error("entity {persistence_id:?} is unavailable: {reason}")]
    EntityUnavailable {
        /// The entity's persistence id.
        persistence_id: String,
        /// Why.
        reason: Unavailability,
    },
    /// The durable store of distributed data failed, or holds something that
    /// cannot be read.
    #[error("durable store {location} failed{}", key.as_ref().map(|k| format!(" at key {k:?}")).unwrap_or_default())]
    Store {
        /// Where the store keeps its data (a directory, or "memory").
        location: String,
        /// The key concerned, if one.
        key: Option<String>,
        /// What went wrong.
        #[source]
        failure: StoreFailure,
    },
    /// A sled database cannot be opened.
    #[error("cannot open the database at {}", path.display())]
    Open {
        /// The database's directory.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        failure: StoreFailure,
    },
    /// An entity journal failed, or holds something that cannot be read.
    #[error("journal {location} failed{}{}",
        persistence_id.as_ref().map(|id| format!(" for entity {id:?}")).unwrap_or_default(),
        record.as_ref().map(|record| format!(" at {record}")).unwrap_or_default())]
    Journal {
        /// Where the journal keeps its data (a directory, "memory", or the
        /// journal's type).
        location: String,
        /// The entity concerned, if one (a flush concerns them all).
        persistence_id: Option<String>,
        /// The record concerned, if one.
        record: Option<Record>,
        /// What went wrong.
        #[source]
        failure: StoreFailure,
    },
    /// The caller's code, run inside one of the library's actors (an update
    /// closure, a command handler), panicked. The actor caught the panic and
    /// carries on; what the code had changed before panicking is described
    /// where it runs.
    #[error("the code given for {target} panicked: {reason}")]
    Panicked {
        /// The key, or persistence id, the code ran for.
        target: String,
        /// The panic's message.
        reason: String,
    },
    /// Fewer nodes than required were connected when the wait ended.
    #[error("{} of {required} nodes connected after {waited:?}: {connected:?}", connected.len())]
    NotConnected {
        /// How many other nodes were waited for.
        required: usize,
        /// The nodes connected when the wait ended.
        connected: Vec<String>,
        /// How long the wait took.
        waited: Duration,
    },
    /// The cluster cannot listen on its address.
    #[error("cannot listen on {address}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// What the operating system reported.
        #[source]
        source: Source,
    },
    /// Starting a cluster component (NodeServer, actor, TLS) failed.
    #[error("cannot start {what}")]
    Start {
        /// The component.
        what: &'static str,
        /// What went wrong.
        #[source]
        source: Source,
    },
}

impl Error {
    /// An [`Error::Store`] of `failure` at `location`, for `key` if one.
    pub fn store(location: impl Into<String>, key: Option<&str>, failure: StoreFailure) -> Self {
        Error::Store {
            location: location.into(),
            key: key.map(str::to_string),
            failure,
        }
    }

    /// An [`Error::Journal`] of `failure` at `location`, for `persistence_id`
    /// and `record` if known.
    pub fn journal(
        location: impl Into<String>,
        persistence_id: Option<&str>,
        record: Option<Record>,
        failure: StoreFailure,
    ) -> Self {
        Error::Journal {
            location: location.into(),
            persistence_id: persistence_id.map(str::to_string),
            record,
            failure,
        }
    }

    /// An [`Error::Start`] of `what`, caused by `source`.
    #[cfg(feature = "cluster")]
    pub(crate) fn start(
        what: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Start {
            what,
            source: Arc::new(source),
        }
    }
}

/// Why bytes could not be decoded.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeFailure {
    /// There were no bytes.
    #[error("empty input")]
    Empty,
    /// The bytes are not a MessagePack encoding of the type, or break one of
    /// its invariants.
    #[error(transparent)]
    Malformed(Source),
    /// A whole value was read and bytes were left after it.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// A fixed-size field has another length.
    #[error("{found} bytes where {expected} belong")]
    Length {
        /// The field's length.
        expected: usize,
        /// The length found.
        found: usize,
    },
    /// A delta or operation arrived for a value of another type.
    #[error("it is meant for a value of another type")]
    OtherType,
}

/// Which request timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// A read at a consistency level.
    Read,
    /// A write (an update or a delete) at a consistency level.
    Write,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Read => "read",
            Operation::Write => "write",
        })
    }
}

/// The library's actors a handle talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Component {
    /// The Replicator of Distributed Data.
    Replicator,
    /// The cluster's membership actor.
    Membership,
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Component::Replicator => "replicator",
            Component::Membership => "membership actor",
        })
    }
}

/// Why an actor cannot take a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Unavailability {
    /// It has stopped, and no successor runs under its name.
    Stopped,
    /// It stopped after taking the call, before answering; whether the call
    /// took effect is unknown.
    StoppedBeforeAnswering,
    /// A replica catching up with the listed replicas (which may have
    /// deleted events it lacks) does not run commands yet; retry later.
    CatchingUp,
}

impl fmt::Display for Unavailability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unavailability::Stopped => "it has stopped",
            Unavailability::StoppedBeforeAnswering => "it stopped before answering",
            Unavailability::CatchingUp => {
                "it is catching up with the listed replicas, which may have deleted events it lacks"
            }
        })
    }
}

/// A record of an entity journal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Record {
    /// The event at this local sequence number.
    Event(u64),
    /// The entity's snapshot.
    Snapshot,
    /// The mark of where the entity's history starts (after a deletion).
    HistoryStart,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Event(sequence) => write!(f, "event {sequence}"),
            Record::Snapshot => f.write_str("snapshot"),
            Record::HistoryStart => f.write_str("history start"),
        }
    }
}

/// What went wrong in a durable store or a journal.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreFailure {
    /// The storage engine (sled, the file system) failed.
    #[error(transparent)]
    Engine(Source),
    /// Stored bytes cannot be read back: corruption, or a format this build
    /// does not read.
    #[error(transparent)]
    Unreadable(Box<Error>),
    /// Another open store or journal (in this process or another) held the
    /// database's lock for the whole wait.
    #[error(
        "the database is in use by another open store or journal and stayed locked for {waited:?}"
    )]
    Locked {
        /// How long the lock was waited for.
        waited: Duration,
    },
    /// The store does not do this.
    #[error("this store does not support {0}")]
    Unsupported(&'static str),
    /// The journal already holds some of the events a command appended:
    /// the replica is behind its own journal (a reused replica id, or a
    /// write reported failed that landed) and stops; restarting from the
    /// journal is the way back.
    #[error("the journal already holds events of the append from {origin}#{origin_seq} on")]
    EventExists {
        /// The replica that wrote the append's first event.
        origin: String,
        /// That event's sequence number at its replica.
        origin_seq: u64,
    },
    /// Events before the snapshot were deleted, and no snapshot can stand for
    /// them (there is none, or the entity takes none).
    #[error("events before the snapshot were deleted, and there is no snapshot to read")]
    HistoryLost,
}

impl StoreFailure {
    /// A failure of the storage engine.
    pub fn engine(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreFailure::Engine(Arc::new(source))
    }

    /// Stored bytes that `decoding` could not read.
    pub fn unreadable(decoding: Error) -> Self {
        StoreFailure::Unreadable(Box::new(decoding))
    }
}

/// An error followed by its sources, on one line ("a: b: c"): this crate's
/// messages do not repeat their sources, so print `Chain(&err)` where the
/// whole story is wanted in one string.
///
/// ```
/// use ractor_replicated::error::{Chain, Error, StoreFailure};
///
/// let err = Error::store(
///     "data/node-a",
///     Some("cart"),
///     StoreFailure::engine(std::io::Error::other("disk full")),
/// );
/// assert_eq!(
///     Chain(&err).to_string(),
///     "durable store data/node-a failed at key \"cart\": disk full"
/// );
/// ```
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Runs `code`, given by the library's user, catching a panic as
/// [`Error::Panicked`] for `target`, so that the actor running it survives.
pub(crate) fn catch_panic<R>(target: &str, code: impl FnOnce() -> R) -> Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(code)).map_err(|panic| {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|reason| reason.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        tracing::error!(
            target,
            reason,
            "code given to the library panicked; the actor carries on"
        );
        Error::Panicked {
            target: target.to_string(),
            reason,
        }
    })
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
