//! The writer task: group commit of queued appends.
//!
//! Per batch, one round trip whatever its size: an autocommit call of
//! `{schema}.append_batch_v2(...)` (migration step 4), which locks the head row,
//! checks every request's condition against the stored events and against
//! the batch's earlier accepted requests, checks event ids, inserts the
//! accepted events and tags, moves the head, notifies, and returns one
//! outcome per request. The head lock is held for that one statement and its
//! commit only, and the statements inside the function are planned once per
//! session (the old dynamic check statement was parsed and planned again for
//! nearly every batch). [`PIPELINE_DEPTH`] says how many batches may be in
//! flight at once.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;

use dcb_core::{AppendCondition, AppendResult, EventRecord, StoreError};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres, Row};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::error::store_error_ref;
use crate::position::{from_db_or_zero, opt_to_db};
use crate::row::metadata_json;
use crate::sql;

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

/// Batches in flight at once. With more than one, the next batch is sent
/// while the previous one runs and waits on the head lock inside
/// PostgreSQL. That paid off while a batch cost more to plan and check than
/// now; measured since (decisions alone, 32 callers, `dcb-bench append`):
/// one batch in flight 5,449 decisions/s, two 4,414, three 4,155. Waiting
/// for the batch in flight lets the next one grow, and a bigger batch costs
/// less per request than the round trip it saves. Correctness does not
/// depend on the depth: each batch checks its conditions under the lock,
/// against everything committed before it.
pub(crate) const PIPELINE_DEPTH: usize = 1;

/// A batch's connection coming back when the batch is done (none when the
/// connection broke).
type Returned = Option<PoolConnection<Postgres>>;

/// Serves the queue until it closes or a shutdown message arrives, then
/// lets the batches in flight finish.
pub(crate) async fn run(config: WriterConfig, mut receiver: mpsc::Receiver<Message>) {
    let config = Arc::new(config);
    let mut buffer = Vec::with_capacity(config.max_batch_size);
    // Connections are kept while requests keep coming: taking one from the
    // pool may cost a round trip (a ping, if the pool tests connections) on
    // the serial path. They go back to the pool whenever the queue runs dry
    // and nothing is in flight, so a small pool is never starved by an idle
    // writer.
    let mut idle: Vec<PoolConnection<Postgres>> = Vec::new();
    let (done_sender, mut done) = mpsc::unbounded_channel::<Returned>();
    let mut in_flight = 0usize;
    loop {
        if in_flight >= PIPELINE_DEPTH {
            if let Some(Some(conn)) = done.recv().await {
                idle.push(conn);
            }
            in_flight -= 1;
            continue;
        }
        if in_flight == 0 && receiver.is_empty() {
            idle.clear();
        }
        let received = tokio::select! {
            biased;
            returned = done.recv(), if in_flight > 0 => {
                if let Some(Some(conn)) = returned {
                    idle.push(conn);
                }
                in_flight -= 1;
                continue;
            }
            n = receiver.recv_many(&mut buffer, config.max_batch_size) => n,
        };
        if received == 0 {
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
            let config = config.clone();
            let done_sender = done_sender.clone();
            let mut connection = idle.pop();
            in_flight += 1;
            tokio::spawn(async move {
                // Even a panic must hand the slot back, or the writer would
                // wait for this batch forever (its callers see the store
                // shut down: their reply senders are dropped).
                let committed = AssertUnwindSafe(commit_batch(&config, &mut connection, requests))
                    .catch_unwind()
                    .await;
                let _ = done_sender.send(committed.ok().and(connection));
            });
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
    // Whatever is in flight was accepted before the shutdown: let it commit
    // and answer before the writer reports itself stopped.
    while in_flight > 0 {
        let _ = done.recv().await;
        in_flight -= 1;
    }
    tracing::debug!(schema = %config.schema, "event store writer stopped");
}

async fn commit_batch(
    config: &WriterConfig,
    connection: &mut Option<PoolConnection<Postgres>>,
    requests: Vec<Request>,
) {
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
        let batch = Batch::new(&requests);
        // Optimistic first: the call looks stored event ids up only after
        // an insert hit one (nothing of that call is written), so the usual
        // batch, with new ids only, skips a lookup per event.
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let check_ids = attempt > 1;
            match try_batch(config, connection, &batch, &requests, check_ids).await {
                Err(e) if attempt < 3 && is_unique_violation(&e) => {
                    if check_ids {
                        // The lookup ran under the head lock and still missed
                        // the row: a writer that bypassed the lock.
                        tracing::warn!(error = %e, "unique violation in an append batch; retrying it");
                    } else {
                        tracing::debug!("an event id of the batch is stored; looking ids up");
                    }
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

/// A batch's arguments of `append_batch_v2`, as arrays (see migration step 4
/// for their meaning). Requests, events and items are numbered from 1.
#[derive(Default)]
pub(crate) struct Batch {
    /// Per probe (one per condition item and type of it): its request.
    pub(crate) c_request: Vec<i32>,
    /// Per probe: its request's `after` (0: none).
    pub(crate) c_after: Vec<i64>,
    /// Per probe: its item's first tag, the one `event_tags` is probed with.
    pub(crate) c_probe: Vec<Option<String>>,
    /// Per probe: one type of its item, or none for any type.
    pub(crate) c_type: Vec<Option<String>>,
    /// Per probe: all its item's tags (array literal) when it has more than
    /// one.
    pub(crate) c_tags: Vec<Option<String>>,
    r_after: Vec<i64>,
    r_last: Vec<i32>,
    e_request: Vec<i32>,
    e_type: Vec<String>,
    e_tags: Vec<String>,
    e_payload: Vec<Vec<u8>>,
    e_metadata: Vec<String>,
    e_id: Vec<uuid::Uuid>,
    d_request: Vec<i32>,
    d_event: Vec<i32>,
    u_request: Vec<i32>,
    u_event: Vec<i32>,
    u_other: Vec<i32>,
}

fn number(index: usize) -> i32 {
    i32::try_from(index + 1).unwrap_or(i32::MAX)
}

impl Batch {
    /// Encodes `requests` in order.
    pub(crate) fn new(requests: &[Request]) -> Batch {
        let parts: Vec<(&[EventRecord], Option<&AppendCondition>)> = requests
            .iter()
            .map(|r| (r.events.as_slice(), r.condition.as_ref()))
            .collect();
        Batch::from_parts(&parts)
    }

    /// Encodes requests given as (events, condition), in order.
    pub(crate) fn from_parts(requests: &[(&[EventRecord], Option<&AppendCondition>)]) -> Batch {
        let mut batch = Batch::default();
        // Which requests (0-based) carry each event id, and which events
        // (0-based ordinals) carry each tag and type: the in-batch checks
        // below look up candidates instead of scanning every earlier event.
        let mut by_id: HashMap<uuid::Uuid, Vec<usize>> = HashMap::new();
        let mut by_tag: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut by_type: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut events: Vec<(usize, &EventRecord)> = Vec::new();
        for (index, (request_events, condition)) in requests.iter().enumerate() {
            let first = events.len();
            let after = opt_to_db(condition.and_then(|c| c.after));
            batch.r_after.push(after);
            if let Some(condition) = condition {
                let mut seen = Vec::new();
                for item in condition.fail_if_events_match.items() {
                    if seen.contains(&item) {
                        continue;
                    }
                    seen.push(item);
                    batch.push_item(index, after, item);
                }
                // The earlier events of this batch this condition matches:
                // per earlier request, its last one (the highest position).
                let mut last_match: HashMap<usize, usize> = HashMap::new();
                for item in &seen {
                    let candidates: Box<dyn Iterator<Item = usize>> =
                        if let Some(tag) = item.tags.first() {
                            Box::new(by_tag.get(tag.as_str()).into_iter().flatten().copied())
                        } else if !item.types.is_empty() {
                            Box::new(
                                item.types
                                    .iter()
                                    .filter_map(|t| by_type.get(t.as_str()))
                                    .flatten()
                                    .copied(),
                            )
                        } else {
                            Box::new(0..first)
                        };
                    for ordinal in candidates {
                        let (owner, event) = events[ordinal];
                        if item.matches(event.event_type.as_str(), &event.tags) {
                            let last = last_match.entry(owner).or_insert(ordinal);
                            *last = (*last).max(ordinal);
                        }
                    }
                }
                let mut matched: Vec<usize> = last_match.into_values().collect();
                matched.sort_unstable();
                for ordinal in matched {
                    batch.d_request.push(number(index));
                    batch.d_event.push(number(ordinal));
                }
            }
            for event in request_events.iter() {
                let ordinal = events.len();
                let id = event.metadata.event_id;
                let earlier = by_id.entry(id).or_default();
                for other in earlier.iter() {
                    batch.u_request.push(number(index));
                    batch.u_event.push(number(ordinal));
                    batch.u_other.push(number(*other));
                }
                earlier.push(index);
                batch.e_request.push(number(index));
                batch.e_type.push(event.event_type.as_str().to_string());
                batch
                    .e_tags
                    .push(sql::array_literal(event.tags.iter().map(|t| t.as_str())));
                batch.e_payload.push(event.payload.clone());
                batch.e_metadata.push(metadata_json(&event.metadata));
                batch.e_id.push(id);
                events.push((index, event));
            }
            // Indexed only after the request's own condition was resolved:
            // a condition is checked against earlier requests only.
            for (ordinal, (_, event)) in events.iter().enumerate().skip(first) {
                by_type
                    .entry(event.event_type.as_str())
                    .or_default()
                    .push(ordinal);
                let mut seen: Vec<&str> = Vec::new();
                for tag in &event.tags {
                    if !seen.contains(&tag.as_str()) {
                        seen.push(tag.as_str());
                        by_tag.entry(tag.as_str()).or_default().push(ordinal);
                    }
                }
            }
            batch
                .r_last
                .push(i32::try_from(events.len()).unwrap_or(i32::MAX));
        }
        batch
    }

    fn push_item(&mut self, request: usize, after: i64, item: &dcb_core::QueryItem) {
        for probe in sql::probes(item) {
            self.c_request.push(number(request));
            self.c_after.push(after);
            self.c_probe.push(probe.tag);
            self.c_type.push(probe.event_type);
            self.c_tags.push(probe.all_tags);
        }
    }
}

/// Calls `{schema}.append_batch_v2` with `batch`: one row per request,
/// `(outcome, first_position, last_position, duplicate)` with outcome 0
/// (appended), 1 (condition failed) or 2 (duplicate event id). Without
/// `check_ids`, an event id already stored fails the whole call with a
/// unique violation instead of outcome 2.
pub(crate) async fn call_batch(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    channel: &str,
    batch: &Batch,
    check_ids: bool,
) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT outcome, first_position, last_position, duplicate FROM {schema}.append_batch_v2(\
         $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
    ))
    .bind(&batch.c_request)
    .bind(&batch.c_after)
    .bind(&batch.c_probe)
    .bind(&batch.c_type)
    .bind(&batch.c_tags)
    .bind(&batch.r_after)
    .bind(&batch.r_last)
    .bind(&batch.e_request)
    .bind(&batch.e_type)
    .bind(&batch.e_tags)
    .bind(&batch.e_payload)
    .bind(&batch.e_metadata)
    .bind(&batch.e_id)
    .bind(&batch.d_request)
    .bind(&batch.d_event)
    .bind(&batch.u_request)
    .bind(&batch.u_event)
    .bind(&batch.u_other)
    .bind(channel)
    .bind(check_ids)
    .fetch_all(conn)
    .await
}

/// Runs one batch as one autocommit call; `Err` when the call failed (then
/// nothing of the batch is written).
async fn try_batch(
    config: &WriterConfig,
    connection: &mut Option<PoolConnection<Postgres>>,
    batch: &Batch,
    requests: &[Request],
    check_ids: bool,
) -> Result<Vec<Result<AppendResult, StoreError>>, sqlx::Error> {
    let conn = match connection {
        Some(conn) => conn,
        None => connection.insert(config.pool.acquire().await?),
    };
    let result = call_batch(conn, &config.schema, &config.channel, batch, check_ids).await;
    let rows = match result {
        Ok(rows) => rows,
        Err(e) => {
            // The connection may be broken (or mid-way through a failed
            // statement); never hand it back for reuse.
            if let Some(mut conn) = connection.take() {
                conn.close_on_drop();
            }
            return Err(e);
        }
    };
    if rows.len() != requests.len() {
        return Err(sqlx::Error::Protocol(format!(
            "append_batch returned {} outcomes for {} requests",
            rows.len(),
            requests.len()
        )));
    }
    let mut outcomes = Vec::with_capacity(requests.len());
    for (row, request) in rows.iter().zip(requests) {
        let outcome: i32 = row.try_get(0)?;
        outcomes.push(match outcome {
            0 => {
                let first: i64 = row.try_get(1)?;
                let last: i64 = row.try_get(2)?;
                Ok(AppendResult {
                    first: from_db_or_zero(first),
                    last: from_db_or_zero(last),
                })
            }
            1 => Err(StoreError::ConditionFailed {
                after: request.condition.as_ref().and_then(|c| c.after),
            }),
            _ => Err(StoreError::DuplicateEventId(row.try_get(3)?)),
        });
    }
    Ok(outcomes)
}
