//! Messages in and out, and dead-letter records.

use chrono::{DateTime, Utc};

/// One message read from a topic, as a [`Translator`](crate::Translator)
/// sees it.
///
/// ```
/// use dcb_kafka::KafkaMessage;
/// let message = KafkaMessage::new("orders", 0, 42, Some(b"o-1"), Some(br#"{"id":"o-1"}"#))
///     .with_header("trace", b"abc");
/// assert_eq!(message.header("trace"), Some(&b"abc"[..]));
/// assert_eq!(message.payload_str(), Some(r#"{"id":"o-1"}"#));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaMessage<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// The offset within the partition.
    pub offset: i64,
    /// The record's timestamp in milliseconds since the Unix epoch (its
    /// create time or log-append time, as the topic keeps it), if it has
    /// one. Part of the default idempotency key ([`record_key`](crate::record_key)).
    pub timestamp: Option<i64>,
    /// The key, if any.
    pub key: Option<&'a [u8]>,
    /// The value, if any (`None` for a tombstone).
    pub payload: Option<&'a [u8]>,
    headers: Vec<(&'a str, &'a [u8])>,
}

impl<'a> KafkaMessage<'a> {
    /// A message (for tests of a translator; the runner builds them from
    /// what the broker sent).
    pub fn new(
        topic: &'a str,
        partition: i32,
        offset: i64,
        key: Option<&'a [u8]>,
        payload: Option<&'a [u8]>,
    ) -> Self {
        KafkaMessage {
            topic,
            partition,
            offset,
            timestamp: None,
            key,
            payload,
            headers: Vec::new(),
        }
    }

    /// Sets the record's timestamp (milliseconds since the Unix epoch).
    ///
    /// ```
    /// use dcb_kafka::KafkaMessage;
    /// let message = KafkaMessage::new("orders", 0, 42, None, None).with_timestamp(1_700_000_000_000);
    /// assert_eq!(message.timestamp, Some(1_700_000_000_000));
    /// ```
    pub fn with_timestamp(mut self, millis: i64) -> Self {
        self.timestamp = Some(millis);
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'a str, value: &'a [u8]) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// Every header, in order (a header without a value has an empty one).
    pub fn headers(&self) -> &[(&'a str, &'a [u8])] {
        &self.headers
    }

    /// The key as UTF-8, if it is.
    pub fn key_str(&self) -> Option<&'a str> {
        self.key.and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The payload as UTF-8, if it is.
    pub fn payload_str(&self) -> Option<&'a str> {
        self.payload.and_then(|p| std::str::from_utf8(p).ok())
    }

    /// Decodes the payload as JSON; the error is a reason fit for a dead
    /// record.
    ///
    /// # Errors
    /// A missing payload or invalid JSON, described.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let payload = self
            .payload
            .ok_or_else(|| "message has no payload".to_string())?;
        serde_json::from_slice(payload).map_err(|e| format!("payload is not valid JSON: {e}"))
    }

    pub(crate) fn from_rdkafka<M: rdkafka::Message>(message: &'a M) -> Self {
        use rdkafka::message::Headers;
        let mut headers = Vec::new();
        if let Some(h) = message.headers() {
            for header in h.iter() {
                headers.push((header.key, header.value.unwrap_or_default()));
            }
        }
        KafkaMessage {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message.key(),
            payload: message.payload(),
            headers,
        }
    }
}

/// A message to publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The topic.
    pub topic: String,
    /// The key (messages with one key stay in order on one partition).
    pub key: Option<Vec<u8>>,
    /// The value.
    pub payload: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OutgoingMessage {
    /// A message to `topic` without key, value or headers.
    pub fn new(topic: impl Into<String>) -> Self {
        OutgoingMessage {
            topic: topic.into(),
            ..Default::default()
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the value.
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = Some(payload.into());
        self
    }

    /// Sets the value to `value` as JSON.
    ///
    /// # Errors
    /// When `value` does not serialize.
    pub fn json(self, value: &impl serde::Serialize) -> Result<Self, serde_json::Error> {
        Ok(self.payload(serde_json::to_vec(value)?))
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Why a message was recorded as dead instead of being decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadKind {
    /// The translator could not decode it.
    Undecodable,
    /// The decision rejected it (a domain rule said no).
    Rejected,
    /// The decision failed for a reason no retry fixes (e.g. a stored event
    /// that no longer decodes).
    Failed,
}

impl DeadKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadKind::Undecodable => "undecodable",
            DeadKind::Rejected => "rejected",
            DeadKind::Failed => "failed",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "undecodable" => DeadKind::Undecodable,
            "rejected" => DeadKind::Rejected,
            _ => DeadKind::Failed,
        }
    }
}

impl std::fmt::Display for DeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message the translator runner recorded instead of deciding on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadMessage {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub payload: Option<Vec<u8>>,
    /// Why.
    pub reason: String,
    /// Which kind of why.
    pub kind: DeadKind,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}
