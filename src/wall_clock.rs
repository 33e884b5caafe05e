//! The one place the library reads the wall clock in milliseconds: for the
//! registers' timestamps, the entities' event times and expiry.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is set before it).
pub(crate) fn millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// [`millis`] as a signed number, for the timestamps kept as `i64`.
pub(crate) fn signed_millis() -> i64 {
    i64::try_from(millis()).unwrap_or(i64::MAX)
}
