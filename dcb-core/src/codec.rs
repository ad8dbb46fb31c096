//! Codecs turn event payloads into bytes and back. JSON is the default.

use serde::{de::DeserializeOwned, Serialize};

/// Encodes and decodes event payloads.
///
/// `#[derive(Event)]` uses [`JsonCodec`] unless the enum says
/// `#[event(codec = MyCodec)]`. A codec is a type, not a value, so the choice is
/// fixed at compile time and costs nothing at run time.
pub trait Codec {
    /// Encodes a payload.
    ///
    /// # Errors
    /// Whatever the format reports (e.g. a map with non-string keys in JSON).
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError>;

    /// Decodes a payload.
    ///
    /// # Errors
    /// The payload does not fit `T` (missing fields, wrong types, bad bytes).
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError>;
}

/// JSON through `serde_json` (the default codec).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(|e| CodecError::Encode(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError::Decode(e.to_string()))
    }
}

/// A payload that could not be encoded or decoded. Never retryable: the
/// same bytes fail the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Encoding failed.
    #[error("cannot encode event payload: {0}")]
    Encode(String),
    /// Decoding failed: the stored payload does not fit the event's fields.
    #[error("cannot decode event payload: {0}")]
    Decode(String),
    /// The type name is not one of this enum's event types.
    #[error("unknown event type {0:?} for this event enum")]
    UnknownType(String),
}
