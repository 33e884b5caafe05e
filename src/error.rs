//! The crate's error type: every fallible public operation returns [`Error`].

/// Everything that can go wrong in ractor_replicated, as a value.
#[derive(Debug, thiserror::Error)]
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
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
