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
        } if found == variant => codec::decode(&args).map_err(|err| Chain(&err).to_string()),
        SerializedMessage::Cast { variant, .. } | SerializedMessage::Call { variant, .. } => {
            Err(format!("unknown message variant {variant:?}"))
        }
        SerializedMessage::CallReply(..) => Err("a call reply, but no call was made".into()),
    }
}

/// Implements ractor's `Message` for an actor's message type `$message`
/// whose peer messages travel as casts of `$variant`: `$peer` is the pattern
/// of a peer message, binding its payload to `$payload`, the only part that
/// is encoded. Decoding never fails: bytes that are not a payload become
/// `Inbound::Undecodable`, so that the actor counts and logs them instead of
/// ractor dropping them silently. Where it is used, `Inbound` must have the
/// variants `Peer(payload)` and `Undecodable(String)` and convert into
/// `$message`.
macro_rules! remote_message {
    ([$($generics:tt)*] $message:ty, $variant:expr, $peer:pat => $payload:ident) => {
        impl<$($generics)*> ractor::Message for $message {
            fn serializable() -> bool {
                true
            }

            fn serialize(
                self,
            ) -> std::result::Result<
                ractor::message::SerializedMessage,
                ractor::message::BoxedDowncastErr,
            > {
                match self {
                    $peer => $crate::remote_cast::encode($variant, &$payload),
                    _ => Err(ractor::message::BoxedDowncastErr),
                }
            }

            fn deserialize(
                message: ractor::message::SerializedMessage,
            ) -> std::result::Result<Self, ractor::message::BoxedDowncastErr> {
                Ok(match $crate::remote_cast::decode($variant, message) {
                    Ok(payload) => Inbound::Peer(payload),
                    Err(reason) => Inbound::Undecodable(reason),
                }
                .into())
            }
        }
    };
}

pub(crate) use remote_message;
