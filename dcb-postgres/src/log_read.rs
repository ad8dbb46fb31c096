//! One read of the log on one server (the primary or a standby): the first
//! page reads the head in the same statement (one snapshot) and stops at
//! it; later pages, bounded by the same head, complete the read.
//!
//! Everything at or below a head is committed (head and rows commit
//! together, in head order), and a standby replays commits in that order,
//! so on either kind of server a read sees a gapless prefix of the log. The
//! later pages of a read go to the same pool as its first page: a server's
//! head never moves back, so they find everything up to the head the first
//! page saw.

use std::sync::Arc;

use dcb_core::{Direction, Position, Query, ReadOptions, ReadResult, SequencedEvent, StoreError};
use futures::stream::{StreamExt, TryStreamExt};
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;

use crate::error::store_error;
use crate::position::{from_db, opt_to_db, to_db};
use crate::reader::ReadRequest;
use crate::sql;
use crate::store::READ_PAGE_SIZE;

/// Where a read goes.
#[derive(Clone, Copy)]
pub(crate) struct Source<'a> {
    /// The server's pool.
    pub(crate) pool: &'a PgPool,
    /// The store's schema.
    pub(crate) schema: &'a str,
    /// The reader task that answers the first pages of tagged forward reads
    /// many per statement (the primary's decision reads), if any.
    pub(crate) batched: Option<&'a mpsc::Sender<ReadRequest>>,
}

/// Where the next page of a read starts.
struct Cursor {
    min: i64,
    max: i64,
    remaining: usize,
    done: bool,
}

/// The head of the log on `pool`'s server.
pub(crate) async fn head(pool: &PgPool, schema: &str) -> Result<Option<Position>, StoreError> {
    let head: i64 = sqlx::query_scalar(&format!("SELECT position FROM {schema}.head"))
        .fetch_one(pool)
        .await
        .map_err(|e| store_error("read the head", e))?;
    Ok(from_db(head))
}

/// The first page of a read as its own statement: the raw head and up to
/// `page` events between `min` and `max`.
async fn first_page(
    source: Source<'_>,
    query: &Query,
    forwards: bool,
    min: i64,
    max: i64,
    page: usize,
) -> Result<(i64, Vec<SequencedEvent>), StoreError> {
    let Some(first_sql) = sql::read_page(source.schema, query, forwards, true) else {
        return Ok((
            opt_to_db(head(source.pool, source.schema).await?),
            Vec::new(),
        ));
    };
    let mut binds = first_sql.binds.clone();
    binds[0] = sql::Bind::I64(min);
    binds[1] = sql::Bind::I64(max);
    binds[2] = sql::Bind::I64(page as i64);
    let rows = sql::bind_all(sqlx::query(&first_sql.text), &binds)
        .persistent(!sql::plan_per_call(query))
        .fetch_all(source.pool)
        .await
        .map_err(|e| store_error("read events", e))?;
    let head_raw: Option<i64> = match rows.first() {
        Some(row) => row.try_get(0).map_err(|e| store_error("read events", e))?,
        None => None,
    };
    let Some(head_raw) = head_raw else {
        return Err(crate::error::backend(
            "read events",
            format!("{}.head has no row: is the schema migrated?", source.schema),
        ));
    };
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(event) = crate::row::to_event(row, 1)? {
            events.push(event);
        }
    }
    Ok((head_raw, events))
}

/// Reads `query` from `source` (see the module docs).
pub(crate) async fn read(
    source: Source<'_>,
    query: &Query,
    options: ReadOptions,
) -> Result<ReadResult, StoreError> {
    // Refused here, a value the database cannot take never reaches a
    // statement shared with other reads.
    dcb_core::limits::check_query(query)?;
    let limit = options.limit.unwrap_or(usize::MAX);
    let forwards = options.direction == Direction::Forwards;
    let schema = source.schema;
    if query.is_none() || limit == 0 {
        return Ok(ReadResult::from_vec(
            head(source.pool, schema).await?,
            Vec::new(),
        ));
    }
    let page = limit.min(READ_PAGE_SIZE);
    let (min, max) = if forwards {
        (options.start.map_or(1, to_db).max(1), i64::MAX)
    } else {
        (1, options.start.map_or(i64::MAX, to_db))
    };
    // A decision's read (tagged, forwards) waits for the reader's next
    // statement, shared with the reads of its neighbours.
    let batched = match source.batched {
        Some(reads) if forwards => ReadRequest::new(query, min, page).map(|r| (reads, r)),
        _ => None,
    };
    let (head_raw, first) = match batched {
        Some((reads, (request, answer))) => {
            let gone = || {
                crate::error::backend(
                    "read events",
                    "the store's reader task stopped (see the logs for a panic); \
                     open the store again",
                )
            };
            reads.send(request).await.map_err(|_| gone())?;
            let page = answer.await.map_err(|_| gone())??;
            (page.head, page.events)
        }
        None => first_page(source, query, forwards, min, max, page).await?,
    };
    let head = from_db(head_raw);
    let mut cursor = Cursor {
        min,
        max: max.min(head_raw),
        remaining: limit - first.len(),
        done: first.len() < page,
    };
    if let Some(last) = first.last() {
        if forwards {
            cursor.min = to_db(last.position) + 1;
        } else {
            cursor.max = to_db(last.position) - 1;
        }
    }
    // Most reads (a decision's state) fit in the first page: the statement
    // of the later pages is only built when one is due.
    let page_sql = if cursor.done || cursor.remaining == 0 {
        None
    } else {
        sql::read_page(schema, query, forwards, false)
    };
    let Some(page_sql) = page_sql else {
        return Ok(ReadResult {
            head,
            events: futures::stream::iter(first.into_iter().map(Ok)).boxed(),
        });
    };
    let pool = source.pool.clone();
    let persistent = !sql::plan_per_call(query);
    let page_sql = Arc::new(page_sql);
    let rest = futures::stream::try_unfold(cursor, move |mut cursor| {
        let pool = pool.clone();
        let page_sql = page_sql.clone();
        async move {
            if cursor.done || cursor.remaining == 0 || cursor.min > cursor.max {
                return Ok::<_, StoreError>(None);
            }
            let page = cursor.remaining.min(READ_PAGE_SIZE);
            let mut binds = page_sql.binds.clone();
            binds[0] = sql::Bind::I64(cursor.min);
            binds[1] = sql::Bind::I64(cursor.max);
            binds[2] = sql::Bind::I64(page as i64);
            let rows = sql::bind_all(sqlx::query(&page_sql.text), &binds)
                .persistent(persistent)
                .fetch_all(&pool)
                .await
                .map_err(|e| store_error("read events", e))?;
            let mut events = Vec::with_capacity(rows.len());
            for row in &rows {
                if let Some(event) = crate::row::to_event(row, 0)? {
                    events.push(event);
                }
            }
            cursor.remaining -= events.len();
            cursor.done = events.len() < page;
            match events.last() {
                Some(last) if forwards => cursor.min = to_db(last.position) + 1,
                Some(last) => cursor.max = to_db(last.position) - 1,
                None => cursor.done = true,
            }
            Ok(Some((events, cursor)))
        }
    })
    .map_ok(|page| futures::stream::iter(page.into_iter().map(Ok)));
    let events = futures::stream::iter(first.into_iter().map(Ok))
        .chain(rest.try_flatten())
        .boxed();
    Ok(ReadResult { head, events })
}
