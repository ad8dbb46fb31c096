//! Events: the `Event` trait the derive implements, metadata, and the records
//! a store writes and reads.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::CodecError;
use crate::tag::{EventType, Position, Tag};
use crate::trace::TraceContext;

/// What one event type declares: its stable name and the keys of its tags.
///
/// `#[derive(StateQuery)]` uses it to tag each query item only with the ids
/// that event type actually carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSchema {
    /// The stored type name.
    pub event_type: &'static str,
    /// The keys of the tags this type carries (its `#[id]` field names).
    pub tag_keys: &'static [&'static str],
}

/// A domain event enum (or a sub-stream of one). Implement it with
/// `#[derive(Event)]`.
///
/// Each variant is one event type with a stable name, tags from its `#[id]`
/// fields and a payload of its fields encoded by a [`Codec`](crate::Codec).
pub trait Event: Sized + Send + Sync + 'static {
    /// Every event type this enum holds, in declaration order.
    const SCHEMA: &'static [EventSchema];

    /// The stored type name of this value's variant.
    fn event_type(&self) -> EventType;

    /// The tags of this value (from its `#[id]` fields).
    fn tags(&self) -> Vec<Tag>;

    /// Encodes this value's fields.
    ///
    /// # Errors
    /// The codec failed.
    fn encode(&self) -> Result<Vec<u8>, CodecError>;

    /// Decodes a stored payload of `event_type`.
    ///
    /// # Errors
    /// [`CodecError::UnknownType`] when `event_type` is not in [`Event::SCHEMA`];
    /// [`CodecError::Decode`] when the payload does not fit.
    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError>;

    /// All type names of this enum.
    fn event_types() -> Vec<EventType> {
        Self::SCHEMA
            .iter()
            .map(|s| EventType::from_static(s.event_type))
            .collect()
    }

    /// Whether this enum has a variant stored as `event_type`.
    fn handles(event_type: &str) -> bool {
        Self::SCHEMA.iter().any(|s| s.event_type == event_type)
    }

    /// Encodes this value into a record ready to append, with fresh metadata.
    ///
    /// # Errors
    /// The codec failed.
    fn to_record(&self) -> Result<EventRecord, CodecError> {
        Ok(EventRecord {
            event_type: self.event_type(),
            tags: self.tags(),
            payload: self.encode()?,
            metadata: EventMetadata::new(),
        })
    }
}

/// Metadata stored with every event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Unique id of this event (stores reject a second event with the same id).
    pub event_id: Uuid,
    /// The id shared by everything one request or message caused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The id of the event or message that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// Anything else the application wants to keep (user id, request path...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<serde_json::Value>,
    /// The W3C trace context of the operation that appended the event (see
    /// [`crate::trace`]): stores fill it in at append time when a
    /// [`TracePropagator`](crate::trace::TracePropagator) is installed and
    /// the append is traced; listeners, jobs and Kafka consumers continue
    /// the trace from it. Events stored without one read back with `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

impl EventMetadata {
    /// Metadata with a fresh random event id and nothing else.
    pub fn new() -> Self {
        EventMetadata {
            event_id: Uuid::new_v4(),
            correlation_id: None,
            causation_id: None,
            user: None,
            trace: None,
        }
    }
}

impl Default for EventMetadata {
    fn default() -> Self {
        Self::new()
    }
}

/// An encoded event, ready to append: type, tags, payload bytes, metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// The stored type name.
    pub event_type: EventType,
    /// The tags.
    pub tags: Vec<Tag>,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// The metadata.
    pub metadata: EventMetadata,
}

impl EventRecord {
    /// A record with fresh metadata (a new event id), e.g. to seed a log
    /// with what another system wrote.
    pub fn new(
        event_type: impl Into<EventType>,
        tags: impl IntoIterator<Item = Tag>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        EventRecord {
            event_type: event_type.into(),
            tags: tags.into_iter().collect(),
            payload: payload.into(),
            metadata: EventMetadata::new(),
        }
    }

    /// Decodes the payload as `E`.
    ///
    /// # Errors
    /// See [`Event::decode`].
    pub fn decode<E: Event>(&self) -> Result<E, CodecError> {
        E::decode(self.event_type.as_str(), &self.payload)
    }
}

/// An event as read back from a store: its record, its position and when it
/// was recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequencedEvent {
    /// Where it is in the log.
    pub position: Position,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
    /// The record.
    pub record: EventRecord,
}

impl SequencedEvent {
    /// The stored type name.
    pub fn event_type(&self) -> &EventType {
        &self.record.event_type
    }

    /// The tags.
    pub fn tags(&self) -> &[Tag] {
        &self.record.tags
    }

    /// The metadata.
    pub fn metadata(&self) -> &EventMetadata {
        &self.record.metadata
    }

    /// Decodes the payload as `E` and keeps position and metadata.
    ///
    /// # Errors
    /// [`DecodeError`] naming the type and position.
    pub fn decode<E: Event>(&self) -> Result<Sequenced<E>, DecodeError> {
        let event = self.record.decode::<E>().map_err(|source| DecodeError {
            event_type: self.record.event_type.clone(),
            position: self.position,
            source,
        })?;
        Ok(Sequenced {
            position: self.position,
            recorded_at: self.recorded_at,
            tags: self.record.tags.clone(),
            metadata: self.record.metadata.clone(),
            event,
        })
    }
}

/// A decoded event with everything the store keeps about it: position,
/// recording time, tags and metadata. Listeners, transactional listeners and
/// sequenced folds ([`SequencedMutate`](crate::SequencedMutate)) receive it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequenced<E> {
    /// Where it is in the log.
    pub position: Position,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
    /// Its tags as stored (those of the event's `#[id]` fields, plus any the
    /// framework added, such as an idempotency key).
    pub tags: Vec<Tag>,
    /// The metadata.
    pub metadata: EventMetadata,
    /// The decoded event.
    pub event: E,
}

impl<E> Sequenced<E> {
    /// The same envelope around another value (e.g. the event converted to
    /// a parent enum or a sub-stream).
    pub fn map<F>(self, f: impl FnOnce(E) -> F) -> Sequenced<F> {
        Sequenced {
            position: self.position,
            recorded_at: self.recorded_at,
            tags: self.tags,
            metadata: self.metadata,
            event: f(self.event),
        }
    }

    /// The event id (from the metadata).
    pub fn event_id(&self) -> uuid::Uuid {
        self.metadata.event_id
    }
}

/// A stored event that could not be decoded, with the type and position that
/// say where to look.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode event {event_type} at position {position}: {source}")]
pub struct DecodeError {
    /// The stored type name.
    pub event_type: EventType,
    /// Where it is in the log.
    pub position: Position,
    /// What the codec said.
    #[source]
    pub source: CodecError,
}
