//! The writer task: group commit of queued appends, one transaction per batch.
//!
//! Per batch, four round trips whatever its size: `BEGIN` with the head row
//! lock; one statement reading the head and checking every request's
//! condition and every event id; one statement inserting all events and tags
//! (UNNEST), moving the head and notifying; `COMMIT`. (Three when every
//! request fails: no insert, `ROLLBACK`.)

use std::collections::HashSet;

use dcb_core::{AppendCondition, AppendResult, EventRecord, Position, StoreError};
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::error::store_error_ref;
use crate::row::metadata_json;
use crate::sql::{self, Bind, Range, Sql};

/// What the store sends the writer.
pub(crate) enum Message {
    /// Append these events.
    Append(Request),
    /// Commit what came before, refuse what comes after, stop.
    Shutdown,
}

/// One `append` call waiting for its outcome.
pub(crate) struct Request {
    pub(crate) events: Vec<EventRecord>,
    pub(crate) condition: Option<AppendCondition>,
    pub(crate) reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

/// What the writer needs.
pub(crate) struct WriterConfig {
    pub(crate) pool: PgPool,
    pub(crate) schema: String,
    pub(crate) channel: String,
    pub(crate) max_batch_size: usize,
}

/// Serves the queue until it closes or a shutdown message arrives.
pub(crate) async fn run(config: WriterConfig, mut receiver: mpsc::Receiver<Message>) {
    let mut buffer = Vec::with_capacity(config.max_batch_size);
    loop {
        if receiver.recv_many(&mut buffer, config.max_batch_size).await == 0 {
            break;
        }
        let mut stop = false;
        let mut requests = Vec::with_capacity(buffer.len());
        for message in buffer.drain(..) {
            match message {
                Message::Append(request) if !stop => requests.push(request),
                Message::Append(request) => {
                    let _ = request.reply.send(Err(StoreError::ShutDown));
                }
                Message::Shutdown => stop = true,
            }
        }
        if !requests.is_empty() {
            commit_batch(&config, requests).await;
        }
        if stop {
            receiver.close();
            while let Some(message) = receiver.recv().await {
                if let Message::Append(request) = message {
                    let _ = request.reply.send(Err(StoreError::ShutDown));
                }
            }
            break;
        }
    }
    tracing::debug!(schema = %config.schema, "event store writer stopped");
}

async fn commit_batch(config: &WriterConfig, requests: Vec<Request>) {
    let events: usize = requests.iter().map(|r| r.events.len()).sum();
    let span = tracing::debug_span!(
        "dcb.pg.append_batch",
        schema = %config.schema,
        requests = requests.len(),
        events,
        accepted = tracing::field::Empty,
        head = tracing::field::Empty,
    );
    async {
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match try_batch(config, &requests).await {
                // A unique violation means a row arrived that the up-front id
                // check could not see (a writer bypassing the head lock); the
                // transaction is gone, so check again from scratch.
                Err(e) if attempt < 3 && is_unique_violation(&e) => {
                    tracing::warn!(error = %e, "unique violation in an append batch; retrying it");
                }
                other => break other,
            }
        };
        match outcome {
            Ok(outcomes) => {
                let accepted = outcomes.iter().filter(|o| o.is_ok()).count();
                tracing::Span::current().record("accepted", accepted);
                if let Some(last) = outcomes.iter().rev().find_map(|o| o.as_ref().ok()) {
                    tracing::Span::current().record("head", last.last.0);
                }
                for (request, outcome) in requests.into_iter().zip(outcomes) {
                    let _ = request.reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "append batch failed; nothing of it was written");
                for request in requests {
                    let _ = request.reply.send(Err(store_error_ref("append", &e)));
                }
            }
        }
    }
    .instrument(span)
    .await
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn raw(position: Position) -> i64 {
    i64::try_from(position.0).unwrap_or(i64::MAX)
}

/// The one statement that checks a batch: a row `(NULL, NULL, head)`, a row
/// `(request, NULL, NULL)` for each request whose condition matches a stored
/// event, and a row `(NULL, id, NULL)` for each of `ids` already stored.
pub(crate) fn check_statement(
    schema: &str,
    conditions: &[(usize, &AppendCondition)],
    ids: Vec<uuid::Uuid>,
) -> Sql {
    let mut check = Sql::default();
    let mut parts = vec![format!(
        "SELECT NULL::int AS request, NULL::uuid AS event_id, h.position AS head FROM {schema}.head h"
    )];
    for (index, condition) in conditions {
        let range = Range {
            min: condition
                .after
                .map(|after| check.bind(Bind::I64(raw(after).saturating_add(1)))),
            max: None,
        };
        if let Some(exists) =
            sql::exists(&mut check, schema, &condition.fail_if_events_match, &range)
        {
            parts.push(format!(
                "SELECT {index}::int, NULL::uuid, NULL::bigint WHERE {exists}"
            ));
        }
    }
    let ids_param = check.bind(Bind::UuidArray(ids));
    parts.push(format!(
        "SELECT NULL::int, e.event_id, NULL::bigint FROM {schema}.events e \
         WHERE e.event_id = ANY({ids_param})"
    ));
    check.text = parts.join(" UNION ALL ");
    check
}

/// Runs one batch in one transaction; `Err` when the transaction failed (then
/// nothing of the batch is written).
async fn try_batch(
    config: &WriterConfig,
    requests: &[Request],
) -> Result<Vec<Result<AppendResult, StoreError>>, sqlx::Error> {
    let schema = &config.schema;
    // Every writer of every process takes the head row lock first, in the
    // same round trip as BEGIN: positions are assigned and committed in lock
    // order, so they are gapless and in commit order.
    let mut tx = config
        .pool
        .begin_with(format!("BEGIN; SELECT 1 FROM {schema}.head FOR UPDATE"))
        .await?;

    // One statement reads the (locked) head, checks every condition against
    // the stored log and finds every event id already taken. It runs after
    // the lock, so its snapshot includes everything committed before us.
    let conditions: Vec<(usize, &AppendCondition)> = requests
        .iter()
        .enumerate()
        .filter_map(|(index, r)| r.condition.as_ref().map(|c| (index, c)))
        .collect();
    let ids: Vec<uuid::Uuid> = requests
        .iter()
        .flat_map(|r| r.events.iter().map(|e| e.metadata.event_id))
        .collect();
    let check = check_statement(schema, &conditions, ids);
    let rows = check.query().fetch_all(&mut *tx).await?;
    let mut failed = HashSet::new();
    let mut taken = HashSet::new();
    let mut head = None;
    for row in &rows {
        if let Some(position) = row.try_get::<Option<i64>, _>(2)? {
            head = Some(position);
        }
        if let Some(index) = row.try_get::<Option<i32>, _>(0)? {
            failed.insert(index as usize);
        }
        if let Some(id) = row.try_get::<Option<uuid::Uuid>, _>(1)? {
            taken.insert(id);
        }
    }

    let head = head.ok_or(sqlx::Error::RowNotFound)?;

    // Each request in order, against the stored log (above) and against the
    // requests accepted before it in this batch.
    let mut next = head + 1;
    let mut accepted: Vec<(i64, &EventRecord)> = Vec::new();
    let mut batch_ids = HashSet::new();
    let mut outcomes = Vec::with_capacity(requests.len());
    for (index, request) in requests.iter().enumerate() {
        if let Some(condition) = &request.condition {
            let conflict = failed.contains(&index)
                || accepted.iter().any(|(position, event)| {
                    condition.after.is_none_or(|after| *position > raw(after))
                        && condition
                            .fail_if_events_match
                            .matches(event.event_type.as_str(), &event.tags)
                });
            if conflict {
                outcomes.push(Err(StoreError::ConditionFailed {
                    after: condition.after,
                }));
                continue;
            }
        }
        if let Some(id) = request
            .events
            .iter()
            .map(|e| e.metadata.event_id)
            .find(|id| taken.contains(id) || batch_ids.contains(id))
        {
            outcomes.push(Err(StoreError::DuplicateEventId(id)));
            continue;
        }
        let first = next;
        for event in &request.events {
            accepted.push((next, event));
            batch_ids.insert(event.metadata.event_id);
            next += 1;
        }
        outcomes.push(Ok(AppendResult {
            first: Position(first as u64),
            last: Position((next - 1) as u64),
        }));
    }

    if accepted.is_empty() {
        tx.rollback().await?;
        return Ok(outcomes);
    }

    let mut positions = Vec::with_capacity(accepted.len());
    let mut types = Vec::with_capacity(accepted.len());
    let mut tags = Vec::with_capacity(accepted.len());
    let mut payloads = Vec::with_capacity(accepted.len());
    let mut metadata = Vec::with_capacity(accepted.len());
    let mut event_ids = Vec::with_capacity(accepted.len());
    let mut tag_tags = Vec::new();
    let mut tag_types = Vec::new();
    let mut tag_positions = Vec::new();
    for (position, event) in &accepted {
        positions.push(*position);
        types.push(event.event_type.as_str().to_string());
        let event_tags: Vec<&str> = event.tags.iter().map(|t| t.as_str()).collect();
        tags.push(serde_json::to_string(&event_tags).unwrap_or_else(|_| "[]".to_string()));
        payloads.push(event.payload.clone());
        metadata.push(metadata_json(&event.metadata));
        event_ids.push(event.metadata.event_id);
        let mut seen = HashSet::new();
        for tag in &event.tags {
            if seen.insert(tag.as_str()) {
                tag_tags.push(tag.as_str().to_string());
                tag_types.push(event.event_type.as_str().to_string());
                tag_positions.push(*position);
            }
        }
    }
    let new_head = next - 1;
    sqlx::query(&format!(
        "WITH ev AS (
            INSERT INTO {schema}.events (position, event_type, tags, payload, metadata, event_id)
            SELECT u.position, u.event_type,
                   ARRAY(SELECT jsonb_array_elements_text(u.tags::jsonb)),
                   u.payload, u.metadata::jsonb, u.event_id
            FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::uuid[])
                 AS u(position, event_type, tags, payload, metadata, event_id)
        ), tg AS (
            INSERT INTO {schema}.event_tags (tag, event_type, position)
            SELECT * FROM UNNEST($7::text[], $8::text[], $9::bigint[])
        ), hd AS (
            UPDATE {schema}.head SET position = $10
        )
        SELECT pg_notify($11, $10::text)"
    ))
    .bind(positions)
    .bind(types)
    .bind(tags)
    .bind(payloads)
    .bind(metadata)
    .bind(event_ids)
    .bind(tag_tags)
    .bind(tag_types)
    .bind(tag_positions)
    .bind(new_head)
    .bind(&config.channel)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(outcomes)
}
