//! The one wire and disk format: a version byte followed by MessagePack (rmp-serde).
//!
//! Every byte string that leaves a node or reaches the disk goes through [`encode`],
//! and everything that comes back goes through [`decode`], so the version check and
//! the "bad bytes are an error, never a panic" rule live in one place.

use serde::de::DeserializeOwned;
use serde::Serialize;

use std::sync::Arc;

use crate::error::{Chain, DecodeFailure, Error, Result};

/// The format version written in front of every encoded value.
pub const WIRE_VERSION: u8 = 1;

/// Encodes `value` as [`WIRE_VERSION`] followed by its MessagePack form.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut bytes = vec![WIRE_VERSION];
    rmp_serde::encode::write(&mut bytes, value).map_err(encode_error::<T>)?;
    Ok(bytes)
}

/// Encodes `value` as [`encode`] does, but with each struct's fields by
/// name (a MessagePack map) instead of by position. [`decode`] reads both.
/// For values whose type is yours and evolves, such as an entity's state in
/// its snapshots: fields may then be added (with `#[serde(default)]`),
/// reordered or removed and old bytes still decode, at the cost of the
/// names in every encoding.
pub fn encode_named<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut bytes = vec![WIRE_VERSION];
    value
        .serialize(&mut rmp_serde::Serializer::new(&mut bytes).with_struct_map())
        .map_err(encode_error::<T>)?;
    Ok(bytes)
}

/// The length of [`encode`]'s output for `value`, computed without keeping
/// the bytes: sizing messages under a budget must not cost an allocation and
/// a copy per value.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize> {
    let mut counter = Counter(1);
    rmp_serde::encode::write(&mut counter, value).map_err(encode_error::<T>)?;
    Ok(counter.0)
}

fn encode_error<T: ?Sized>(err: rmp_serde::encode::Error) -> Error {
    Error::Encode {
        what: std::any::type_name::<T>(),
        source: Arc::new(err),
    }
}

/// A writer that only counts.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decodes bytes written by [`encode`].
///
/// Rejects an empty input, an unknown version byte, malformed MessagePack, values
/// that break a type's invariants and trailing bytes. Failures are logged at WARN
/// with the expected type, because they mean a peer or a file is misbehaving.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let result = decode_unlogged(bytes);
    if let Err(err) = &result {
        tracing::warn!(error = %Chain(&err), len = bytes.len(), "rejected undecodable bytes");
    }
    result
}

fn decode_unlogged<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let what = std::any::type_name::<T>();
    let (&version, body) = bytes.split_first().ok_or(Error::Decode {
        what,
        failure: DecodeFailure::Empty,
    })?;
    if version != WIRE_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: WIRE_VERSION,
        });
    }
    let mut deserializer = rmp_serde::Deserializer::new(body);
    let value = T::deserialize(&mut deserializer).map_err(|err| Error::Decode {
        what,
        failure: DecodeFailure::Malformed(Arc::new(err)),
    })?;
    let trailing = deserializer.get_ref().len();
    if trailing > 0 {
        return Err(Error::Decode {
            what,
            failure: DecodeFailure::TrailingBytes(trailing),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_round_trips_behind_the_version_byte() {
        let bytes = encode(&(1u32, "two".to_string())).unwrap();
        assert_eq!(bytes[0], WIRE_VERSION);
        let back: (u32, String) = decode(&bytes).unwrap();
        assert_eq!(back, (1, "two".to_string()));
    }

    #[test]
    fn encoded_len_is_the_length_of_the_encoding() {
        let value = (1u32, "two".to_string(), vec![3u64; 40]);
        assert_eq!(encoded_len(&value).unwrap(), encode(&value).unwrap().len());
    }

    #[test]
    fn empty_input_is_a_decode_error() {
        assert!(matches!(
            decode::<u32>(&[]),
            Err(Error::Decode {
                failure: DecodeFailure::Empty,
                ..
            })
        ));
    }

    #[test]
    fn an_unknown_version_is_reported_as_such() {
        let mut bytes = encode(&7u32).unwrap();
        bytes[0] = 99;
        assert!(matches!(
            decode::<u32>(&bytes),
            Err(Error::UnsupportedVersion { found: 99, .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&7u32).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u32>(&bytes),
            Err(Error::Decode {
                failure: DecodeFailure::TrailingBytes(1),
                ..
            })
        ));
    }

    #[test]
    fn truncated_input_is_a_decode_error() {
        let bytes = encode(&"a longer string").unwrap();
        let err = decode::<String>(&bytes[..bytes.len() - 3]).unwrap_err();
        let Error::Decode {
            failure: DecodeFailure::Malformed(source),
            ..
        } = &err
        else {
            panic!("not a malformed input: {err:?}");
        };
        // The decoder's own error stays whole, for callers that inspect it.
        assert!(source.downcast_ref::<rmp_serde::decode::Error>().is_some());
        assert_eq!(
            std::error::Error::source(&err).map(ToString::to_string),
            Some(source.to_string())
        );
    }
}
