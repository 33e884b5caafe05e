//! The one way this crate's actors put a message on the wire: a ractor cast
//! of a named variant whose arguments are the codec encoding of the message,
//! decoded on arrival without ever failing the ractor `deserialize`, so that
//! the receiving actor counts and logs garbage instead of ractor dropping it.

use ractor::message::{BoxedDowncastErr, SerializedMessage};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::error::Chain;

/// `message` as a cast of `variant`.
pub(crate) fn encode<T: Serialize>(
    variant: &str,
    message: &T,
) -> Result<SerializedMessage, BoxedDowncastErr> {
    let args = codec::encode(message).map_err(|err| {
        tracing::error!(variant, error = %Chain(&err), "cannot encode a message for a peer");
        BoxedDowncastErr
    })?;
    Ok(SerializedMessage::Cast {
        variant: variant.to_string(),
        args,
        metadata: None,
    })
}

/// The message of a cast of `variant`, or why the bytes are not one.
pub(crate) fn decode<T: DeserializeOwned>(
    variant: &str,
    message: SerializedMessage,
) -> Result<T, String> {
    match message {
        SerializedMessage::Cast {
            variant: found,
            args,
            ..
        } if found == variant => codec::decode(&args).map_err(|err| err.to_string()),
        SerializedMessage::Cast { variant, .. } | SerializedMessage::Call { variant, .. } => {
            Err(format!("unknown message variant {variant:?}"))
        }
        SerializedMessage::CallReply(..) => Err("a call reply, but no call was made".into()),
    }
}
