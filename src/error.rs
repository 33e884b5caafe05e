//! The crate's error type: every fallible public operation returns [`Error`].

/// Everything that can go wrong in ractor_replicated, as a value.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value could not be serialised for the wire or for disk.
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// The Rust type that was being encoded.
        what: &'static str,
        /// What the encoder reported.
        reason: String,
    },
    /// Bytes from a peer or from disk are not a valid encoding of the expected type.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// The Rust type that was expected.
        what: &'static str,
        /// Why the bytes were rejected.
        reason: String,
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
    /// A type tag is already registered for another Rust type, or a type twice.
    #[error("cannot register {what}: {reason}")]
    Registration {
        /// The type or tag.
        what: String,
        /// What clashed.
        reason: String,
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
        /// `"write"` or `"read"`.
        operation: &'static str,
        /// The key.
        key: String,
        /// How many replicas (this one included) had answered.
        reached: usize,
        /// How many the consistency level required.
        required: usize,
    },
    /// The Replicator actor is gone or did not answer.
    #[error("the replicator is unavailable: {reason}")]
    Unavailable {
        /// What ractor reported.
        reason: String,
    },
    /// An entity (a replica of a persistence id) is gone or did not answer.
    #[error("entity {persistence_id:?} is unavailable: {reason}")]
    EntityUnavailable {
        /// The entity's persistence id.
        persistence_id: String,
        /// Why.
        reason: String,
    },
    /// A durable store failed, or holds something that cannot be decoded.
    #[error("durable store {path}{}: {reason}", key.as_ref().map(|k| format!(", key {k:?}")).unwrap_or_default())]
    Store {
        /// Where the store keeps its data (a file path, or "memory").
        path: String,
        /// The key concerned, if one.
        key: Option<String>,
        /// What went wrong.
        reason: String,
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
        waited: std::time::Duration,
    },
    /// Starting a cluster component (NodeServer, actor) failed.
    #[error("cannot start {what}: {reason}")]
    Start {
        /// The component.
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
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
