//! The event relay: publishes the events of a query to a topic, in position
//! order, checkpointed after the broker acknowledged.

use std::sync::Arc;

use async_trait::async_trait;
use dcb_core::{
    AppendCondition, AppendResult, BoxError, CodecError, Event, EventRecord, EventSchema,
    EventStore, EventType, Listener, Position, Query, ReadOptions, ReadResult, Sequenced,
    SequencedEvent, StoreError, Tag,
};
use dcb_postgres::listener::{ListenerOptions, ListenerRunner, RunnerConfig, RunnerHandle};
use dcb_postgres::PgEventStore;
use futures::StreamExt;

use crate::{KafkaError, OutgoingMessage, Publisher};

/// The header carrying the event id (UUID, text).
pub const HEADER_EVENT_ID: &str = "dcb-event-id";
/// The header carrying the event type.
pub const HEADER_EVENT_TYPE: &str = "dcb-event-type";
/// The header carrying the event's position (decimal).
pub const HEADER_POSITION: &str = "dcb-position";
/// The header carrying the event's tags (a JSON array of `key:value`).
pub const HEADER_TAGS: &str = "dcb-tags";

/// Publishes every event matching a query to a topic.
///
/// - Order: events are published one at a time in position order; each is
///   acknowledged by the broker before the next is sent, and the checkpoint
///   advances only after the acknowledgement.
/// - Message: key = the value of the event's first tag with the chosen key
///   (no key if the event has none, or no key tag was chosen); value = the
///   event payload as stored (JSON with the default codec); headers
///   [`HEADER_EVENT_ID`], [`HEADER_EVENT_TYPE`], [`HEADER_POSITION`],
///   [`HEADER_TAGS`].
/// - It reads only committed events (the store's positions are gapless in
///   commit order), so nothing is published before it is persisted and no
///   event is ever skipped: a failing send is retried with backoff and blocks
///   the relay (it is never parked).
/// - Delivery is at least once: after a crash between acknowledgement and
///   checkpoint an event is published again; consumers dedupe on the event
///   id or position header.
/// - Several instances may run the same relay: the listener runner's lease
///   keeps one active per relay id, and another takes over when it dies.
///
/// The relay is a listener of `dcb_postgres`'s runner; its checkpoint, lag
/// and status are the runner's ([`RunnerHandle::status`]).
///
/// ```no_run
/// # async fn example(store: dcb_postgres::PgEventStore) -> Result<(), dcb_kafka::KafkaError> {
/// use dcb_core::Query;
/// use dcb_kafka::{EventRelay, KafkaConfig, Publisher};
/// let publisher = Publisher::connect(&KafkaConfig::new("127.0.0.1:9092")).await?;
/// let relay = EventRelay::new("carts-to-kafka", Query::types(["ItemAdded", "ItemRemoved"]), "cart-events", publisher)
///     .key_tag("cart_id")
///     .start(&store)
///     .await?;
/// // ...
/// relay.shutdown().await;
/// # Ok(()) }
/// ```
pub struct EventRelay {
    id: String,
    query: Query,
    topic: String,
    key_tag: Option<String>,
    publisher: Arc<Publisher>,
    config: RunnerConfig,
}

impl std::fmt::Debug for EventRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRelay")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("key_tag", &self.key_tag)
            .finish_non_exhaustive()
    }
}

impl EventRelay {
    /// A relay named `id` (its checkpoint and lease are kept under this
    /// name) of the events matching `query` to `topic`.
    pub fn new(
        id: impl Into<String>,
        query: Query,
        topic: impl Into<String>,
        publisher: impl Into<Arc<Publisher>>,
    ) -> Self {
        EventRelay {
            id: id.into(),
            query,
            topic: topic.into(),
            key_tag: None,
            publisher: publisher.into(),
            config: RunnerConfig::default(),
        }
    }

    /// Takes the message key from the value of the event's tag with this key.
    pub fn key_tag(mut self, key: impl Into<String>) -> Self {
        self.key_tag = Some(key.into());
        self
    }

    /// The listener runner's configuration (batch size, poll interval,
    /// backoff, lease).
    pub fn runner_config(mut self, config: RunnerConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts the relay over `store` (checkpoint in the store's schema).
    ///
    /// # Errors
    /// Database errors while migrating the runner's tables.
    pub async fn start(self, store: &PgEventStore) -> Result<RunnerHandle, KafkaError> {
        let listener = RelayListener {
            id: self.id,
            query: self.query,
            topic: self.topic,
            key_tag: self.key_tag,
            publisher: self.publisher,
        };
        let handle = ListenerRunner::from_parts(
            Arc::new(WithTags(store.clone())),
            store.pool().clone(),
            store.schema(),
            store.notify_channel(),
        )
        .config(self.config)
        .at_least_once_with(listener, ListenerOptions::blocking())
        .start()
        .await?;
        Ok(handle)
    }

    /// The message the relay publishes for `event` (exposed for tests and
    /// for applications that publish events themselves).
    pub fn message_for(
        topic: &str,
        key_tag: Option<&str>,
        position: Position,
        event: &EventRecord,
    ) -> OutgoingMessage {
        let tags: Vec<&str> = event.tags.iter().map(Tag::as_str).collect();
        let mut message = OutgoingMessage::new(topic)
            .payload(event.payload.clone())
            .header(HEADER_EVENT_ID, event.metadata.event_id.to_string())
            .header(HEADER_EVENT_TYPE, event.event_type.as_str())
            .header(HEADER_POSITION, position.0.to_string())
            .header(
                HEADER_TAGS,
                serde_json::to_vec(&tags).unwrap_or_else(|_| b"[]".to_vec()),
            );
        if let Some(key) = key_tag {
            if let Some(tag) = event.tags.iter().find(|t| t.key() == key) {
                message = message.key(tag.value());
            }
        }
        message
    }
}

struct RelayListener {
    id: String,
    query: Query,
    topic: String,
    key_tag: Option<String>,
    publisher: Arc<Publisher>,
}

#[async_trait]
impl Listener for RelayListener {
    type Event = Relayed;

    fn id(&self) -> &str {
        &self.id
    }

    fn query(&self) -> Query {
        self.query.clone()
    }

    async fn handle(&self, event: Sequenced<Relayed>) -> Result<(), BoxError> {
        let record = EventRecord {
            event_type: event.event.event_type,
            tags: event.event.tags,
            payload: event.event.payload,
            metadata: event.metadata,
        };
        let message = EventRelay::message_for(
            &self.topic,
            self.key_tag.as_deref(),
            event.position,
            &record,
        );
        let (partition, offset) = self.publisher.send(message).await?;
        tracing::debug!(position = event.position.0, partition, offset, "relayed");
        Ok(())
    }
}

/// An event as the relay sees it: type, tags and payload bytes untouched.
#[derive(Debug)]
struct Relayed {
    event_type: EventType,
    tags: Vec<Tag>,
    payload: Vec<u8>,
}

impl Event for Relayed {
    const SCHEMA: &'static [EventSchema] = &[];

    fn event_type(&self) -> EventType {
        self.event_type.clone()
    }

    fn tags(&self) -> Vec<Tag> {
        self.tags.clone()
    }

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        Ok(self.payload.clone())
    }

    fn decode(event_type: &str, bytes: &[u8]) -> Result<Self, CodecError> {
        let (tags, payload) = unwrap_envelope(bytes)?;
        Ok(Relayed {
            event_type: EventType::new(event_type),
            tags,
            payload,
        })
    }
}

// The listener runner hands listeners decoded payloads without tags; the
// relay needs the tags, so its store wraps each payload in an envelope:
// u32 (big endian) tag count, then per tag u32 length + bytes, then the payload.
fn wrap_envelope(record: &mut EventRecord) {
    let mut out = Vec::with_capacity(record.payload.len() + 4 + record.tags.len() * 24);
    out.extend_from_slice(&(record.tags.len() as u32).to_be_bytes());
    for tag in &record.tags {
        out.extend_from_slice(&(tag.as_str().len() as u32).to_be_bytes());
        out.extend_from_slice(tag.as_str().as_bytes());
    }
    out.extend_from_slice(&record.payload);
    record.payload = out;
}

fn unwrap_envelope(bytes: &[u8]) -> Result<(Vec<Tag>, Vec<u8>), CodecError> {
    let bad = || CodecError::Decode("malformed relay envelope".into());
    let mut rest = bytes;
    let mut take = |n: usize| -> Result<&[u8], CodecError> {
        if rest.len() < n {
            return Err(bad());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let count = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad())?);
    let mut tags = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
        let text = std::str::from_utf8(take(len)?).map_err(|_| bad())?;
        tags.push(Tag::parse(text).map_err(|_| bad())?);
    }
    Ok((tags, rest.to_vec()))
}

struct WithTags(PgEventStore);

#[async_trait]
impl EventStore for WithTags {
    async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult, StoreError> {
        let result = self.0.read(query, options).await?;
        let events = result
            .events
            .map(|item| {
                item.map(|mut event: SequencedEvent| {
                    wrap_envelope(&mut event.record);
                    event
                })
            })
            .boxed();
        Ok(ReadResult {
            head: result.head,
            events,
        })
    }

    async fn append(
        &self,
        events: Vec<EventRecord>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult, StoreError> {
        self.0.append(events, condition).await
    }

    async fn head(&self) -> Result<Option<Position>, StoreError> {
        self.0.head().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips() {
        let mut record = EventRecord {
            event_type: EventType::new("ItemAdded"),
            tags: vec![Tag::new("cart_id", "c1"), Tag::new("sku", "a:b")],
            payload: br#"{"x":1}"#.to_vec(),
            metadata: dcb_core::EventMetadata::new(),
        };
        wrap_envelope(&mut record);
        let relayed = Relayed::decode("ItemAdded", &record.payload).unwrap();
        assert_eq!(
            relayed.tags,
            vec![Tag::new("cart_id", "c1"), Tag::new("sku", "a:b")]
        );
        assert_eq!(relayed.payload, br#"{"x":1}"#);
        assert!(unwrap_envelope(&[0, 0, 0, 1, 0, 0, 0, 9]).is_err());
    }

    #[test]
    fn message_has_key_and_headers() {
        let record = EventRecord {
            event_type: EventType::new("ItemAdded"),
            tags: vec![Tag::new("cart_id", "c1")],
            payload: b"{}".to_vec(),
            metadata: dcb_core::EventMetadata::new(),
        };
        let m = EventRelay::message_for("t", Some("cart_id"), Position(7), &record);
        assert_eq!(m.key.as_deref(), Some(&b"c1"[..]));
        let header = |n: &str| {
            m.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header(HEADER_POSITION), Some(b"7".to_vec()));
        assert_eq!(header(HEADER_EVENT_TYPE), Some(b"ItemAdded".to_vec()));
        assert_eq!(header(HEADER_TAGS), Some(br#"["cart_id:c1"]"#.to_vec()));
    }
}
