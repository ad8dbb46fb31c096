//! Kafka's side, from the database: the records translators recorded as
//! dead (`{schema}.kafka_dead_messages`), the relays' checkpoints
//! (`{schema}.kafka_relays`) with their lag, and redriving a dead record.
//!
//! **Redrive** sends the dead record's key and payload to its topic again
//! (a new record, with the header [`HEADER_REDRIVEN_FROM`] naming the old
//! one), and forgets the dead record once the broker acknowledged it; the
//! group's translators then decide on the new record like on any other. A
//! record that fails again is recorded dead again. The original record's
//! headers are not kept by the dead-record table, so they are not sent.

use chrono::{DateTime, Utc};
use dcb_kafka::{OutgoingMessage, Publisher};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::ops::Ops;
use crate::sql;

/// The header a redriven record carries: the record key of the dead record
/// it replaces.
pub const HEADER_REDRIVEN_FROM: &str = "dcb-redriven-from";

/// A record a translator recorded instead of deciding on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadRecord {
    /// The consumer group whose translator recorded it.
    pub group: String,
    /// The record's identity (with `group`, the dead record's key).
    pub record_key: String,
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key, as text when it is UTF-8.
    pub key: Option<String>,
    /// Its payload, as text when it is UTF-8 (else base64, prefixed
    /// `base64:`).
    pub payload: Option<String>,
    /// `undecodable`, `rejected` or `failed`.
    pub kind: String,
    /// Why.
    pub reason: String,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    #[serde(skip)]
    raw_key: Option<Vec<u8>>,
    #[serde(skip)]
    raw_payload: Option<Vec<u8>>,
}

fn as_text(bytes: &Option<Vec<u8>>) -> Option<String> {
    use base64::Engine as _;
    bytes.as_ref().map(|b| match std::str::from_utf8(b) {
        Ok(text) => text.to_owned(),
        Err(_) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(b)
        ),
    })
}

impl DeadRecord {
    fn from_row(row: &PgRow) -> Result<DeadRecord, sqlx::Error> {
        let raw_key: Option<Vec<u8>> = row.try_get("key")?;
        let raw_payload: Option<Vec<u8>> = row.try_get("payload")?;
        Ok(DeadRecord {
            group: row.try_get("group_id")?,
            record_key: row.try_get("record_key")?,
            topic: row.try_get("topic")?,
            partition: row.try_get("partition")?,
            offset: row.try_get("offset")?,
            key: as_text(&raw_key),
            payload: as_text(&raw_payload),
            kind: row.try_get("kind")?,
            reason: row.try_get("reason")?,
            recorded_at: row.try_get("recorded_at")?,
            raw_key,
            raw_payload,
        })
    }
}

/// Dead records of one group and topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadRecordCount {
    /// The consumer group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// How many.
    pub count: u64,
}

/// A relay: where it is in the log and who publishes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RelayInfo {
    /// Its name.
    pub name: String,
    /// The last position it published (with everything before it).
    pub position: u64,
    /// How many positions it is behind the head.
    pub lag_events: u64,
    /// The instance holding its lease.
    pub owner: Option<String>,
    /// Whether that lease is live (an instance is publishing).
    pub live: bool,
    /// Why publishing last stopped.
    pub last_error: Option<String>,
    /// When.
    pub last_error_at: Option<DateTime<Utc>>,
    /// When its row last changed.
    pub updated_at: DateTime<Utc>,
}

/// Which dead records to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadFilter {
    /// Only this consumer group's.
    pub group: Option<String>,
    /// Only this topic's.
    pub topic: Option<String>,
    /// At most this many (100 when 0).
    pub limit: usize,
}

/// Dead records, newest first.
///
/// # Errors
/// Database failures (also when the schema has no Kafka tables).
pub async fn dead_records(ops: &Ops, filter: &DeadFilter) -> Result<Vec<DeadRecord>, crate::Error> {
    let limit = if filter.limit == 0 { 100 } else { filter.limit };
    let rows = sqlx::query(&sql::dead_records(ops.schema()))
        .bind(filter.group.as_deref())
        .bind(filter.topic.as_deref())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(ops.pool())
        .await?;
    Ok(rows
        .iter()
        .map(DeadRecord::from_row)
        .collect::<Result<_, _>>()?)
}

/// One dead record.
///
/// # Errors
/// Database failures.
pub async fn dead_record(
    ops: &Ops,
    group: &str,
    record_key: &str,
) -> Result<Option<DeadRecord>, crate::Error> {
    let row = sqlx::query(&sql::dead_record(ops.schema()))
        .bind(group)
        .bind(record_key)
        .fetch_optional(ops.pool())
        .await?;
    Ok(row.as_ref().map(DeadRecord::from_row).transpose()?)
}

/// Dead records counted by group and topic.
///
/// # Errors
/// Database failures.
pub async fn dead_record_counts(ops: &Ops) -> Result<Vec<DeadRecordCount>, crate::Error> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(&sql::dead_record_counts(ops.schema()))
        .fetch_all(ops.pool())
        .await?;
    Ok(rows
        .into_iter()
        .map(|(group, topic, count)| DeadRecordCount {
            group,
            topic,
            count: u64::try_from(count).unwrap_or(0),
        })
        .collect())
}

/// Every relay, with its lag behind `head`.
///
/// # Errors
/// Database failures.
pub async fn relays(ops: &Ops, head: u64) -> Result<Vec<RelayInfo>, crate::Error> {
    let rows = sqlx::query(&sql::relays(ops.schema()))
        .fetch_all(ops.pool())
        .await?;
    let mut relays = Vec::with_capacity(rows.len());
    for row in rows {
        let position = u64::try_from(row.try_get::<i64, _>("position")?).unwrap_or(0);
        relays.push(RelayInfo {
            name: row.try_get("relay_id")?,
            position,
            lag_events: head.saturating_sub(position),
            owner: row.try_get("owner")?,
            live: row.try_get("live")?,
            last_error: row.try_get("last_error")?,
            last_error_at: row.try_get("last_error_at")?,
            updated_at: row.try_get("updated_at")?,
        });
    }
    Ok(relays)
}

/// Where a redriven record went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Redriven {
    /// The dead record's group.
    pub group: String,
    /// The dead record's key.
    pub record_key: String,
    /// The topic.
    pub topic: String,
    /// The new record's partition.
    pub partition: i32,
    /// The new record's offset.
    pub offset: i64,
}

/// Sends dead record (`group`, `record_key`) to its topic again through
/// `publisher`, then forgets it (see the module docs).
///
/// # Errors
/// [`Error::NotFound`](crate::Error::NotFound) for an unknown record;
/// Kafka failures (then the dead record is kept); database failures.
pub async fn redrive(
    ops: &Ops,
    publisher: &Publisher,
    group: &str,
    record_key: &str,
) -> Result<Redriven, crate::Error> {
    let record = dead_record(ops, group, record_key).await?.ok_or_else(|| {
        crate::Error::NotFound(format!(
            "no dead record {record_key:?} of consumer group {group:?}"
        ))
    })?;
    let mut message = OutgoingMessage::new(record.topic.clone())
        .header(HEADER_REDRIVEN_FROM, record.record_key.clone().into_bytes());
    if let Some(key) = &record.raw_key {
        message = message.key(key.clone());
    }
    if let Some(payload) = &record.raw_payload {
        message = message.payload(payload.clone());
    }
    let (partition, offset) = publisher.send(message).await?;
    sqlx::query(&sql::delete_dead_record(ops.schema()))
        .bind(group)
        .bind(record_key)
        .execute(ops.pool())
        .await?;
    tracing::info!(
        group,
        record_key,
        topic = %record.topic,
        partition,
        offset,
        "dead record redriven"
    );
    Ok(Redriven {
        group: group.to_owned(),
        record_key: record_key.to_owned(),
        topic: record.topic,
        partition,
        offset,
    })
}
