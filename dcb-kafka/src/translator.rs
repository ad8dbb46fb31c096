//! Translators: a consumer group that turns each message of a topic into a
//! decision, with inbox dedupe and dead-letter records.
//!
//! - this module: the [`Translator`] contract and the record key its
//!   decisions are deduplicated by;
//! - `decide`: what one message comes to (decided, dead, or retried);
//! - `runner`: the runner, its handle and counters;
//! - `worker`: the consuming loop (per-key lanes, offsets);
//! - `broker_health`: the heuristics for brokers that went away or lost
//!   their logs.

mod broker_health;
mod decide;
mod runner;
mod worker;

use dcb_core::fnv::Fnv1a;
use dcb_core::Decision;

use crate::message::KafkaMessage;

pub use runner::{dead_messages, TranslatorHandle, TranslatorRunner, TranslatorStats};

/// Turns one message of a topic into a decision.
///
/// The runner makes the decision with an idempotency key
/// ([`Translator::idempotency_key`], by default the record's identity, see
/// [`record_key`]), checked by the store in the same atomic append as the
/// decision's events, so a redelivered message changes nothing twice.
pub trait Translator: Send + Sync + 'static {
    /// The decision a message becomes.
    type Decision: Decision + Send + Sync + 'static;

    /// The topic this translator reads.
    fn topic(&self) -> &str;

    /// Decodes a message into a decision.
    ///
    /// # Errors
    /// The message cannot be decoded: it is recorded as dead with this
    /// reason and never retried.
    fn translate(&self, message: &KafkaMessage<'_>) -> Result<Self::Decision, String>;

    /// The idempotency key of the decision a message becomes. The default,
    /// [`record_key`], dedupes redeliveries of one record, and only those: a
    /// different record that reuses an offset (the topic was deleted and
    /// created again, or the broker lost its log) is decided as new. Return
    /// something derived from the message key or payload to also dedupe a
    /// message the producer sent twice.
    fn idempotency_key(&self, message: &KafkaMessage<'_>) -> String {
        record_key(message)
    }
}

/// `kafka:<topic>:<partition>:<offset>:<timestamp>:<digest>`: the default
/// idempotency key, the identity of one record.
///
/// The offset alone does not identify a record: when a topic is deleted and
/// created again (or a broker without durable storage restarts), new records
/// get offsets 0, 1, 2... again, and a key of offset alone would mistake each
/// of them for a redelivery of the old record at that offset and drop it. So
/// the key also carries the record's timestamp (`-` when it has none) and a
/// digest of its key, payload and headers (64-bit FNV-1a over a
/// length-prefixed encoding: stable across builds, platforms and versions). A
/// redelivery of a record is the same stored record, so it yields the same
/// key; a different record at a reused offset differs in timestamp or
/// content, so it does not.
///
/// The digest is not cryptographic: a producer that deliberately writes a
/// record with the same timestamp and a colliding digest at the offset of an
/// earlier record can have it dropped. Keys are stable: the format is pinned
/// by a test, since changing it makes every stored key unrecognisable.
///
/// ```
/// use dcb_kafka::{record_key, KafkaMessage};
/// let first = KafkaMessage::new("orders", 2, 17, Some(b"o-1"), Some(b"{}")).with_timestamp(1_700_000_000_000);
/// let again = first.clone();
/// let reused = KafkaMessage::new("orders", 2, 17, Some(b"o-9"), Some(b"{}")).with_timestamp(1_700_000_500_000);
/// assert_eq!(record_key(&first), record_key(&again));
/// assert_ne!(record_key(&first), record_key(&reused));
/// assert!(record_key(&first).starts_with("kafka:orders:2:17:1700000000000:"));
/// ```
pub fn record_key(message: &KafkaMessage<'_>) -> String {
    let timestamp = message
        .timestamp
        .map_or_else(|| "-".to_owned(), |t| t.to_string());
    format!(
        "kafka:{}:{}:{}:{timestamp}:{:016x}",
        message.topic,
        message.partition,
        message.offset,
        content_digest(message)
    )
}

/// `kafka:<topic>:<partition>:<offset>`: the idempotency key of earlier
/// versions, which identifies a position in a partition, not a record.
///
/// It dedupes redeliveries, but after a topic is deleted and created again
/// (or a broker without durable storage restarts) it silently drops every new
/// record whose offset an earlier record had. Use it (by overriding
/// [`Translator::idempotency_key`]) only where offsets are never reused, e.g.
/// to keep recognising keys stored by an earlier version while its
/// redeliveries drain.
///
/// ```
/// use dcb_kafka::{offset_key, KafkaMessage};
/// let m = KafkaMessage::new("orders", 2, 17, None, None);
/// assert_eq!(offset_key(&m), "kafka:orders:2:17");
/// ```
pub fn offset_key(message: &KafkaMessage<'_>) -> String {
    format!(
        "kafka:{}:{}:{}",
        message.topic, message.partition, message.offset
    )
}

/// 64-bit FNV-1a of a record's key, payload and headers, each field
/// length-prefixed (and absent distinguished from empty) so that no two
/// different records encode alike.
fn content_digest(message: &KafkaMessage<'_>) -> u64 {
    let mut hash = Fnv1a::new();
    write_optional(&mut hash, message.key);
    write_optional(&mut hash, message.payload);
    hash.write_len(message.headers().len());
    for (name, value) in message.headers() {
        hash.write_bytes(name.as_bytes());
        hash.write_bytes(value);
    }
    hash.finish()
}

/// An absent value and an empty one hash differently.
fn write_optional(hash: &mut Fnv1a, bytes: Option<&[u8]>) {
    match bytes {
        None => hash.write(&[0]),
        Some(b) => {
            hash.write(&[1]);
            hash.write_bytes(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64, payload: &'static [u8], timestamp: i64) -> KafkaMessage<'static> {
        KafkaMessage::new("stock", 0, offset, Some(b"p-1"), Some(payload)).with_timestamp(timestamp)
    }

    #[test]
    fn record_key_is_pinned() {
        // A change of this value makes every stored key unrecognisable, so
        // every message redelivered after an upgrade is decided again: don't.
        let m = at(7, br#"{"inventory":3}"#, 1_700_000_000_000).with_header("trace", b"t-1");
        assert_eq!(
            record_key(&m),
            "kafka:stock:0:7:1700000000000:834d1b7b4e66b2f0"
        );
    }

    #[test]
    fn a_redelivery_has_the_same_key() {
        let m = at(7, br#"{"inventory":3}"#, 1_700_000_000_000);
        assert_eq!(record_key(&m), record_key(&m.clone()));
    }

    #[test]
    fn another_record_at_a_reused_offset_has_another_key() {
        let first = at(7, br#"{"inventory":3}"#, 1_700_000_000_000);
        // Created again: same offset, later timestamp, same content.
        let later = at(7, br#"{"inventory":3}"#, 1_700_000_000_001);
        // Same offset and timestamp, other content.
        let other = at(7, br#"{"inventory":4}"#, 1_700_000_000_000);
        assert_ne!(record_key(&first), record_key(&later));
        assert_ne!(record_key(&first), record_key(&other));
        assert_eq!(
            offset_key(&first),
            offset_key(&later),
            "the old key cannot tell"
        );
    }

    #[test]
    fn the_digest_separates_fields() {
        let base = KafkaMessage::new("t", 0, 0, None, None);
        let keys = [
            record_key(&base),
            record_key(&KafkaMessage::new("t", 0, 0, Some(b""), None)),
            record_key(&KafkaMessage::new("t", 0, 0, None, Some(b""))),
            record_key(&KafkaMessage::new("t", 0, 0, Some(b"ab"), Some(b"c"))),
            record_key(&KafkaMessage::new("t", 0, 0, Some(b"a"), Some(b"bc"))),
            record_key(&base.clone().with_header("h", b"")),
            record_key(&base.clone().with_header("h", b"v")),
        ];
        let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:#?}");
        assert!(keys[0].starts_with("kafka:t:0:0:-:"), "{}", keys[0]);
    }
}
