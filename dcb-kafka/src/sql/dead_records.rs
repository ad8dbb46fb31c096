//! Every statement on `{schema}.kafka_dead_messages`.

use sqlx::{PgPool, Row};

use super::{render, storable_text};
use crate::message::{DeadKind, DeadMessage, KafkaMessage};
use crate::translator::record_key;

/// Records `message` as dead for consumer group `group_id`, once per record
/// (a second call for the same record changes nothing). The key and payload
/// are kept as the bytes the broker delivered; the reason is made storable
/// (see [`storable_text`]).
pub(crate) async fn insert(
    pool: &PgPool,
    schema: &str,
    group_id: &str,
    message: &KafkaMessage<'_>,
    kind: DeadKind,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(&render(
        r#"INSERT INTO {schema}.kafka_dead_messages
             (group_id, topic, partition, "offset", key, payload, kind, reason, record_key)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (group_id, record_key) DO NOTHING"#,
        schema,
    )?)
    .bind(storable_text(group_id).as_ref())
    .bind(storable_text(message.topic).as_ref())
    .bind(message.partition)
    .bind(message.offset)
    .bind(message.key)
    .bind(message.payload)
    .bind(kind.as_str())
    .bind(storable_text(reason).as_ref())
    // The record's identity, not the translator's idempotency key: a
    // translator may key decisions by something (an order id) that two
    // different undecodable records share.
    .bind(storable_text(&record_key(message)).as_ref())
    .execute(pool)
    .await?;
    Ok(())
}

/// The dead records of `group_id`, oldest first.
pub(crate) async fn select(
    pool: &PgPool,
    schema: &str,
    group_id: &str,
    limit: usize,
) -> Result<Vec<DeadMessage>, sqlx::Error> {
    let rows = sqlx::query(&render(
        r#"SELECT topic, partition, "offset", key, payload, kind, reason, recorded_at
           FROM {schema}.kafka_dead_messages WHERE group_id = $1
           ORDER BY recorded_at, topic, partition, "offset" LIMIT $2"#,
        schema,
    )?)
    .bind(storable_text(group_id).as_ref())
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(DeadMessage {
                topic: row.try_get("topic")?,
                partition: row.try_get("partition")?,
                offset: row.try_get("offset")?,
                key: row.try_get("key")?,
                payload: row.try_get("payload")?,
                kind: DeadKind::parse(row.try_get::<&str, _>("kind")?),
                reason: row.try_get("reason")?,
                recorded_at: row.try_get("recorded_at")?,
            })
        })
        .collect()
}
