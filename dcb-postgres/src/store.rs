//! [`PgEventStore`]: the event store on PostgreSQL.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_core::{
    AppendCondition, AppendResult, Direction, EventRecord, EventStore, Position, Query,
    ReadOptions, ReadResult, StoreError,
};
use futures::stream::{StreamExt, TryStreamExt};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::error::store_error;
use crate::io_thread::IoThread;
use crate::migrations;
use crate::position::{from_db, opt_to_db, to_db};
use crate::reader::{self, ReadRequest, ReaderConfig};
use crate::sql;
use crate::writer::commit::Committer;
use crate::writer::{self, Message, Request};

/// The schema a store uses unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "dcb";
/// How many append requests the writer commits in one transaction at most,
/// unless told otherwise.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 100;
/// How many events a read fetches per round trip.
pub const READ_PAGE_SIZE: usize = 1000;
/// How long the writer tries to find out whether an append whose reply was
/// lost committed, unless told otherwise.
pub const DEFAULT_OUTCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// The event store on PostgreSQL.
///
/// Cheap to clone (an `Arc` inside); every clone shares one pool and one
/// writer task. See the crate docs for how appends work.
#[derive(Clone)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    schema: String,
    sender: mpsc::Sender<Message>,
    reads: mpsc::Sender<ReadRequest>,
    shut: AtomicBool,
    counters: Arc<crate::writer::commit::Counters>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Runs the writer and the reader; dropped last.
    _io: IoThread,
}

impl std::fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventStore")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

/// Configures and opens a [`PgEventStore`].
///
/// ```no_run
/// # async fn example() -> Result<(), dcb_core::StoreError> {
/// use dcb_postgres::PgEventStore;
/// let store = PgEventStore::builder()
///     .schema("billing")
///     .max_batch_size(200)
///     .connect("postgres://postgres@127.0.0.1:54329/postgres")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgEventStoreBuilder {
    schema: String,
    max_batch_size: usize,
    migrate_on_start: bool,
    pool_options: Option<PgPoolOptions>,
    outcome_timeout: Duration,
}

impl Default for PgEventStoreBuilder {
    fn default() -> Self {
        PgEventStoreBuilder {
            schema: DEFAULT_SCHEMA.to_string(),
            max_batch_size: DEFAULT_MAX_BATCH_SIZE,
            migrate_on_start: true,
            pool_options: None,
            outcome_timeout: DEFAULT_OUTCOME_TIMEOUT,
        }
    }
}

impl PgEventStoreBuilder {
    /// The schema holding this store's tables (default `"dcb"`). Two stores
    /// under different schemas share a database without seeing each other.
    /// Must be a lower-case identifier (`[a-z_][a-z0-9_]*`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// At most this many append requests per transaction (default 100, at
    /// least 1).
    pub fn max_batch_size(mut self, max_batch_size: usize) -> Self {
        self.max_batch_size = max_batch_size.max(1);
        self
    }

    /// Whether to apply pending migrations when the store starts (default
    /// true). With `false`, run [`PgEventStore::migrate`] or
    /// [`migrations::migrate_store`] yourself.
    pub fn migrate_on_start(mut self, migrate: bool) -> Self {
        self.migrate_on_start = migrate;
        self
    }

    /// How long the writer tries to find out whether an append committed
    /// when the connection failed after the append was sent (default 10 s).
    /// Within it, every caller learns the truth (its positions, or
    /// [`StoreError::Unavailable`]: nothing appended); past it,
    /// [`StoreError::OutcomeUnknown`]. Meanwhile other appends wait.
    pub fn outcome_timeout(mut self, timeout: Duration) -> Self {
        self.outcome_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// Options for the pool [`connect`](Self::connect) opens (default: 16
    /// connections, 5 s acquire timeout, no ping before handing out a
    /// connection: that ping is a round trip on every read, and a dead
    /// connection already fails the statement with
    /// [`StoreError::Unavailable`]: nothing was done, so the caller may
    /// retry. The decision maker does not retry it by default; turn that on
    /// with `RetryPolicy::retry_unavailable(true)`).
    pub fn pool_options(mut self, options: PgPoolOptions) -> Self {
        self.pool_options = Some(options);
        self
    }

    /// Opens a pool on `url` and starts the store.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached,
    /// [`StoreError::InvalidRequest`] for a bad schema name or URL, and
    /// migration failures.
    pub async fn connect(self, url: &str) -> Result<PgEventStore, StoreError> {
        let options = self.pool_options.clone().unwrap_or_else(|| {
            PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(5))
                .test_before_acquire(false)
        });
        let pool = options
            .connect(url)
            .await
            .map_err(|e| store_error("connect to PostgreSQL", e))?;
        self.build(pool).await
    }

    /// Starts the store on an existing pool.
    ///
    /// The store's writer (appends) and reader (decision reads) run on a
    /// thread of the store's own, with up to three connections of their own,
    /// opened with `pool`'s connect options and acquire timeout (not its
    /// `after_connect` hooks). Other reads, migrations and the caller's
    /// queries use `pool`.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] for a bad schema name; migration
    /// failures when migrating on start; [`StoreError::Backend`] when the
    /// thread cannot be started.
    pub async fn build(self, pool: PgPool) -> Result<PgEventStore, StoreError> {
        migrations::validate_schema(&self.schema)
            .map_err(|e| StoreError::InvalidRequest(e.to_string()))?;
        if self.migrate_on_start {
            migrations::migrate_store(&pool, &self.schema)
                .await
                .map_err(|e| store_error("migrate the event store", e))?;
        }
        let io = IoThread::start(&format!("dcb-pg-{}", self.schema))
            .map_err(|e| crate::error::backend("start the store's I/O thread", e.to_string()))?;
        let io_pool = io.pool_like(&pool, reader::STATEMENTS_IN_FLIGHT as u32 + 1);
        let (sender, receiver) = mpsc::channel(self.max_batch_size.saturating_mul(16).max(1024));
        let counters = Arc::new(crate::writer::commit::Counters::default());
        let committer = Committer {
            counters: counters.clone(),
            schema: self.schema.clone(),
            channel: notify_channel(&self.schema),
            connect: (*pool.connect_options()).clone(),
            lookup: io_pool.clone(),
            outcome_timeout: self.outcome_timeout,
        };
        let handle = io
            .handle()
            .spawn(writer::run(committer, self.max_batch_size, receiver));
        let (reads, read_receiver) = mpsc::channel(1024);
        io.handle().spawn(reader::run(
            ReaderConfig {
                pool: io_pool,
                schema: self.schema.clone(),
            },
            read_receiver,
        ));
        Ok(PgEventStore {
            inner: Arc::new(Inner {
                pool,
                schema: self.schema,
                sender,
                reads,
                shut: AtomicBool::new(false),
                counters,
                writer: Mutex::new(Some(handle)),
                _io: io,
            }),
        })
    }
}

fn notify_channel(schema: &str) -> String {
    format!("{schema}_events")
}

impl PgEventStore {
    /// Connects with the default configuration (schema `"dcb"`, batches of
    /// up to 100 appends) and applies pending migrations.
    ///
    /// # Errors
    /// See [`PgEventStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<PgEventStore, StoreError> {
        Self::builder().connect(url).await
    }

    /// A builder for a store with non-default settings.
    pub fn builder() -> PgEventStoreBuilder {
        PgEventStoreBuilder::default()
    }

    /// The pool (shared with the caller's own queries if it likes).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema holding this store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The `LISTEN`/`NOTIFY` channel the writer notifies once per committed
    /// batch; the payload is the new head position.
    pub fn notify_channel(&self) -> String {
        notify_channel(&self.inner.schema)
    }

    /// What the writer did since the store started: batches, requests,
    /// refused values, and replies lost to broken connections with how each
    /// was resolved.
    pub fn writer_stats(&self) -> crate::WriterStats {
        crate::WriterStats::read(&self.inner.counters)
    }

    /// Applies pending migrations (for stores built with
    /// `migrate_on_start(false)`).
    ///
    /// # Errors
    /// Outages and migration failures.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrations::migrate_store(&self.inner.pool, &self.inner.schema)
            .await
            .map_err(|e| store_error("migrate the event store", e))
    }

    /// Stops accepting appends, commits the requests already queued, and
    /// stops the writer. Appends after this fail with
    /// [`StoreError::ShutDown`]; reads keep working while the pool is open.
    pub async fn shutdown(&self) {
        if !self.inner.shut.swap(true, Ordering::SeqCst) {
            let _ = self.inner.sender.send(Message::Shutdown).await;
        }
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    /// The first page of a read as its own statement: the raw head and up
    /// to `page` events between `min` and `max`.
    async fn first_page(
        &self,
        query: &Query,
        forwards: bool,
        min: i64,
        max: i64,
        page: usize,
    ) -> Result<(i64, Vec<dcb_core::SequencedEvent>), StoreError> {
        let Some(first_sql) = sql::read_page(&self.inner.schema, query, forwards, true) else {
            return Ok((opt_to_db(self.read_head().await?), Vec::new()));
        };
        let mut binds = first_sql.binds.clone();
        binds[0] = sql::Bind::I64(min);
        binds[1] = sql::Bind::I64(max);
        binds[2] = sql::Bind::I64(page as i64);
        let rows = sql::bind_all(sqlx::query(&first_sql.text), &binds)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| store_error("read events", e))?;
        let head_raw: Option<i64> = match rows.first() {
            Some(row) => row.try_get(0).map_err(|e| store_error("read events", e))?,
            None => None,
        };
        let Some(head_raw) = head_raw else {
            return Err(crate::error::backend(
                "read events",
                format!(
                    "{}.head has no row: is the schema migrated?",
                    self.inner.schema
                ),
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

    async fn read_head(&self) -> Result<Option<Position>, StoreError> {
        let head: i64 =
            sqlx::query_scalar(&format!("SELECT position FROM {}.head", self.inner.schema))
                .fetch_one(&self.inner.pool)
                .await
                .map_err(|e| store_error("read the head", e))?;
        Ok(from_db(head))
    }
}

/// Where the next page of a read starts.
struct Cursor {
    min: i64,
    max: i64,
    remaining: usize,
    done: bool,
}

#[async_trait]
impl EventStore for PgEventStore {
    async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult, StoreError> {
        let span = tracing::debug_span!(
            "dcb.pg.read",
            schema = %self.inner.schema,
            items = query.items().len(),
            direction = ?options.direction,
            limit = ?options.limit,
        );
        async move {
            // Refused here, a value the database cannot take never reaches a
            // statement shared with other reads.
            dcb_core::limits::check_query(query)?;
            let limit = options.limit.unwrap_or(usize::MAX);
            let forwards = options.direction == Direction::Forwards;
            let schema = &self.inner.schema;
            if query.is_none() || limit == 0 {
                return Ok(ReadResult::from_vec(self.read_head().await?, Vec::new()));
            }
            // The first page reads the head in the same statement (one
            // snapshot) and stops at it. Everything at or below the head is
            // committed (head and rows commit together, in head order), so
            // later pages, bounded by the same head, complete the read.
            let page = limit.min(READ_PAGE_SIZE);
            let (min, max) = if forwards {
                (options.start.map_or(1, to_db).max(1), i64::MAX)
            } else {
                (1, options.start.map_or(i64::MAX, to_db))
            };
            // A decision's read (tagged, forwards) waits for the reader's
            // next statement, shared with the reads of its neighbours.
            let batched = if forwards {
                ReadRequest::new(query, min, page)
            } else {
                None
            };
            let (head_raw, first) = match batched {
                Some((request, answer)) => {
                    let gone = || {
                        crate::error::backend(
                            "read events",
                            "the store's reader task stopped (see the logs for a panic); \
                             open the store again",
                        )
                    };
                    self.inner.reads.send(request).await.map_err(|_| gone())?;
                    let page = answer.await.map_err(|_| gone())??;
                    (page.head, page.events)
                }
                None => self.first_page(query, forwards, min, max, page).await?,
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
            // Most reads (a decision's state) fit in the first page: the
            // statement of the later pages is only built when one is due.
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
            let pool = self.inner.pool.clone();
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
        .instrument(span)
        .await
    }

    async fn append(
        &self,
        mut events: Vec<EventRecord>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult, StoreError> {
        if events.is_empty() {
            return Err(StoreError::InvalidRequest(
                "an append needs at least one event".into(),
            ));
        }
        // Values the database would refuse fail this caller here, before
        // they could share a batch with anyone else's append.
        dcb_core::limits::check_records(&events)?;
        if let Some(condition) = &condition {
            dcb_core::limits::check_query(&condition.fail_if_events_match)?;
        }
        let mut ids = HashSet::with_capacity(events.len());
        for event in &events {
            if !ids.insert(event.metadata.event_id) {
                return Err(StoreError::DuplicateEventId(event.metadata.event_id));
            }
        }
        if self.inner.shut.load(Ordering::SeqCst) {
            return Err(StoreError::ShutDown);
        }
        let span = tracing::info_span!(
            "dcb.append",
            "otel.kind" = "client",
            "otel.status_code" = tracing::field::Empty,
            "db.system.name" = "postgresql",
            "db.operation.name" = "append",
            "dcb.schema" = %self.inner.schema,
            "dcb.events" = events.len(),
            "dcb.position" = tracing::field::Empty,
            "dcb.outcome" = tracing::field::Empty,
        );
        dcb_core::trace::stamp(&mut events, &span);
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        let outcome = async {
            self.inner
                .sender
                .send(Message::Append(Request {
                    events,
                    condition,
                    reply,
                }))
                .await
                .map_err(|_| StoreError::ShutDown)?;
            answer.await.map_err(|_| StoreError::ShutDown)?
        }
        .instrument(span.clone())
        .await;
        crate::metrics::append_finished(started.elapsed());
        if !span.is_disabled() {
            match &outcome {
                Ok(appended) => {
                    span.record("dcb.position", appended.last.0);
                    span.record("dcb.outcome", "appended");
                }
                Err(e) if e.is_condition_failed() => {
                    span.record("dcb.outcome", "condition_failed");
                }
                Err(_) => {
                    span.record("dcb.outcome", "failed");
                    span.record("otel.status_code", "ERROR");
                }
            }
        }
        outcome
    }

    async fn head(&self) -> Result<Option<Position>, StoreError> {
        self.read_head().await
    }
}
