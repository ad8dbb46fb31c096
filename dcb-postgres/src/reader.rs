//! The reader task: the first pages of concurrent reads, many per statement.
//!
//! A decision reads before it decides, so under load a store serves many
//! small reads at once, and each one as its own statement costs a round
//! trip, a wake-up of a backend and an executor start-up: more than the
//! index probes it runs. Reads whose every item is tagged, read forwards
//! (what a decision's state is), queue here instead; one statement answers
//! all that are waiting (`{schema}.read_first_pages`, migration step 5), in
//! one snapshot, with the head. Up to [`STATEMENTS_IN_FLIGHT`] such statements run at
//! once; reads arriving meanwhile wait for the next one, so batches grow
//! with the load and a lone read goes at once.
//!
//! Only first pages are batched: a read whose page comes back full goes on
//! with its own statements (see `store.rs`).

use std::sync::Arc;

use dcb_core::{Query, SequencedEvent, StoreError};
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::Instrument;

use crate::error::{backend, store_error_ref};
use crate::sql::{self, Probe};

/// Batch statements running at once.
pub(crate) const STATEMENTS_IN_FLIGHT: usize = 2;
/// Reads answered by one statement at most.
pub(crate) const MAX_READS_PER_STATEMENT: usize = 64;

/// The first page of one read: the head it is complete up to and its
/// events in position order.
pub(crate) struct FirstPage {
    /// The raw head position (0: empty log).
    pub(crate) head: i64,
    /// The events, at most a page.
    pub(crate) events: Vec<SequencedEvent>,
}

/// One read waiting for its first page.
pub(crate) struct ReadRequest {
    probes: Vec<Probe>,
    low: i64,
    page: i64,
    reply: oneshot::Sender<Result<FirstPage, StoreError>>,
}

impl ReadRequest {
    /// The request for the first `page` events of `query` from position
    /// `low` on, or `None` when the query is not for the reader (some item
    /// has no tag: such reads scan by type or by position and go on their
    /// own).
    pub(crate) fn new(
        query: &Query,
        low: i64,
        page: usize,
    ) -> Option<(
        ReadRequest,
        oneshot::Receiver<Result<FirstPage, StoreError>>,
    )> {
        if query.is_none() || query.items().iter().any(|item| item.tags.is_empty()) {
            return None;
        }
        let mut probes = Vec::new();
        let mut seen = Vec::new();
        for item in query.items() {
            if !seen.contains(&item) {
                seen.push(item);
                probes.extend(sql::probes(item));
            }
        }
        let (reply, answer) = oneshot::channel();
        let request = ReadRequest {
            probes,
            low,
            page: i64::try_from(page).unwrap_or(i64::MAX),
            reply,
        };
        Some((request, answer))
    }
}

/// What the reader needs.
pub(crate) struct ReaderConfig {
    pub(crate) pool: PgPool,
    pub(crate) schema: String,
}

/// Serves reads until every sender is gone.
pub(crate) async fn run(config: ReaderConfig, mut receiver: mpsc::Receiver<ReadRequest>) {
    let statement: Arc<str> = format!(
        "SELECT * FROM {}.read_first_pages($1, $2, $3, $4, $5, $6) ORDER BY req, position",
        config.schema
    )
    .into();
    let slots = Arc::new(Semaphore::new(STATEMENTS_IN_FLIGHT));
    let mut buffer = Vec::with_capacity(MAX_READS_PER_STATEMENT);
    loop {
        // A slot first, then the reads: while every slot is busy, reads
        // queue up for the next statement.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        if receiver
            .recv_many(&mut buffer, MAX_READS_PER_STATEMENT)
            .await
            == 0
        {
            break;
        }
        let reads = std::mem::replace(&mut buffer, Vec::with_capacity(MAX_READS_PER_STATEMENT));
        let pool = config.pool.clone();
        let statement = statement.clone();
        let span = tracing::debug_span!(
            "dcb.pg.read_batch",
            schema = %config.schema,
            reads = reads.len(),
        );
        tokio::spawn(
            async move {
                answer(&pool, &statement, reads).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// Whether the database refused a value of the statement (a data
/// exception or a program limit), as opposed to failing for everyone.
fn is_refused_value(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("54")),
        _ => false,
    }
}

/// Runs one statement for `reads` and answers each. When the database
/// refuses a value of one read (a data error), the reads are split and
/// answered in halves, so that only the offending read fails.
fn answer<'a>(
    pool: &'a PgPool,
    statement: &'a str,
    reads: Vec<ReadRequest>,
) -> futures::future::BoxFuture<'a, ()> {
    Box::pin(answer_all(pool, statement, reads))
}

async fn answer_all(pool: &PgPool, statement: &str, mut reads: Vec<ReadRequest>) {
    let mut req = Vec::new();
    let mut probe = Vec::new();
    let mut probe_type = Vec::new();
    let mut all_tags = Vec::new();
    let mut low = Vec::new();
    let mut page = Vec::new();
    for (index, read) in reads.iter().enumerate() {
        let number = i32::try_from(index + 1).unwrap_or(i32::MAX);
        for p in &read.probes {
            req.push(number);
            probe.push(p.tag.as_deref());
            probe_type.push(p.event_type.as_deref());
            all_tags.push(p.all_tags.as_deref());
            low.push(read.low);
            page.push(read.page);
        }
    }
    let result = sqlx::query(statement)
        .bind(&req)
        .bind(&probe)
        .bind(&probe_type)
        .bind(&all_tags)
        .bind(&low)
        .bind(&page)
        .fetch_all(pool)
        .await;
    let rows = match result {
        Ok(rows) => rows,
        Err(e) if reads.len() > 1 && is_refused_value(&e) => {
            tracing::debug!(error = %e, reads = reads.len(), "a batched read was refused; splitting it");
            let second = reads.split_off(reads.len() / 2);
            answer(pool, statement, reads).await;
            answer(pool, statement, second).await;
            return;
        }
        Err(e) => {
            for read in reads {
                let _ = read.reply.send(Err(store_error_ref("read events", &e)));
            }
            return;
        }
    };
    let head = match rows.first().map(|row| row.try_get::<Option<i64>, _>(0)) {
        Some(Ok(Some(head))) => head,
        Some(Err(e)) => {
            for read in reads {
                let _ = read.reply.send(Err(store_error_ref("read events", &e)));
            }
            return;
        }
        _ => {
            for read in reads {
                let _ = read.reply.send(Err(backend(
                    "read events",
                    "the head row is missing: is the schema migrated?",
                )));
            }
            return;
        }
    };
    // Rows come grouped by read, in position order.
    let mut rows = rows.iter().peekable();
    for (index, read) in reads.into_iter().enumerate() {
        let number = i32::try_from(index + 1).unwrap_or(i32::MAX);
        let page = usize::try_from(read.page).unwrap_or(usize::MAX);
        let mut events: Vec<SequencedEvent> = Vec::new();
        let mut failed = None;
        while let Some(row) = rows
            .next_if(|row| matches!(row.try_get::<Option<i32>, _>(1), Ok(Some(n)) if n == number))
        {
            if failed.is_some() || events.len() >= page {
                continue;
            }
            // The same event found by two items of the read comes twice in a
            // row: decoded once.
            let position = row.try_get::<Option<i64>, _>(2).ok().flatten();
            if position.is_some()
                && position == events.last().map(|e| crate::position::to_db(e.position))
            {
                continue;
            }
            match crate::row::to_event(row, 2) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        let _ = read.reply.send(match failed {
            Some(e) => Err(e),
            None => Ok(FirstPage { head, events }),
        });
    }
}
