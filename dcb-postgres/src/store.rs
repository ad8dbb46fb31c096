//! [`PgEventStore`]: the event store on PostgreSQL.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_core::{
    AppendCondition, AppendResult, EventRecord, EventStore, Position, Query, ReadOptions,
    ReadResult, StoreError,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::error::store_error;
use crate::failover::{self, Failover};
use crate::io_thread::IoThread;
use crate::log_read::{self, Source};
use crate::migrations;
use crate::reader::{self, ReadRequest, ReaderConfig};
use crate::standby::{self, Standby, StandbyReader, Standbys};
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
/// How long a standby read waits for the standby to show the head the
/// primary announced, unless told otherwise.
pub const DEFAULT_STANDBY_CATCH_UP_WAIT: Duration = Duration::from_millis(100);
/// How often a store with several hosts asks its primary whether it still
/// is one, unless told otherwise.
pub const DEFAULT_FAILOVER_CHECK: Duration = Duration::from_secs(1);

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
    /// The standbys reads of followers go to, if any.
    standbys: Option<Arc<Standbys>>,
    /// Follows the primary across hosts, when there are several.
    failover: Option<Arc<Failover>>,
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
    standbys: Vec<String>,
    failover_hosts: Vec<String>,
    standby_pool_options: Option<PgPoolOptions>,
    standby_catch_up_wait: Duration,
    failover_check: Duration,
}

impl Default for PgEventStoreBuilder {
    fn default() -> Self {
        PgEventStoreBuilder {
            schema: DEFAULT_SCHEMA.to_string(),
            max_batch_size: DEFAULT_MAX_BATCH_SIZE,
            migrate_on_start: true,
            pool_options: None,
            outcome_timeout: DEFAULT_OUTCOME_TIMEOUT,
            standbys: Vec::new(),
            failover_hosts: Vec::new(),
            standby_pool_options: None,
            standby_catch_up_wait: DEFAULT_STANDBY_CATCH_UP_WAIT,
            failover_check: DEFAULT_FAILOVER_CHECK,
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

    /// Adds a streaming standby of the primary (a URL of the same database
    /// on another server; call once per standby). Listeners, relays and
    /// [`PgEventStore::standby_reader`] read the log there; appends and
    /// decision reads stay on the primary. A standby is also a host the
    /// primary may move to (see [`failover_host`](Self::failover_host)).
    pub fn standby(mut self, url: impl Into<String>) -> Self {
        self.standbys.push(url.into());
        self
    }

    /// Adds a host that may become the primary after a failover without
    /// serving reads (e.g. a synchronous standby kept for failover only).
    ///
    /// A store with several hosts (the one it connects to, its standbys and
    /// these) follows the primary: when the writer cannot reach it, a
    /// connection lands on a standby, or the store's monitor connection
    /// (see [`failover_check`](Self::failover_check)) fails, it asks every
    /// host `pg_is_in_recovery()` and moves its pools (the one it was given
    /// included) to the host that answers `false`. Each URL carries all its
    /// connect options. The store never promotes anyone, and the old
    /// primary must be stopped before a standby is promoted.
    pub fn failover_host(mut self, url: impl Into<String>) -> Self {
        self.failover_hosts.push(url.into());
        self
    }

    /// Options for each standby's pool (default: 8 connections, 2 s acquire
    /// timeout, no ping before handing out a connection). The pools connect
    /// lazily, so a standby that is down does not stop the store starting.
    pub fn standby_pool_options(mut self, options: PgPoolOptions) -> Self {
        self.standby_pool_options = Some(options);
        self
    }

    /// How long a standby read waits for the standby to show the newest
    /// head the primary announced (default 100 ms; zero: never waits). A
    /// follower woken by the primary's `NOTIFY` then finds the events that
    /// woke it unless the standby is further behind than this.
    pub fn standby_catch_up_wait(mut self, wait: Duration) -> Self {
        self.standby_catch_up_wait = wait;
        self
    }

    /// How often a store with several hosts asks its primary, on a
    /// connection of its own, whether it still is one (default 1 s).
    pub fn failover_check(mut self, every: Duration) -> Self {
        self.failover_check = every.max(Duration::from_millis(50));
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
        let standby_hosts = parse_urls("standby", &self.standbys)?;
        let failover_hosts = parse_urls("failover host", &self.failover_hosts)?;
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
        let mut hosts = vec![(*pool.connect_options()).clone()];
        hosts.extend(standby_hosts.iter().cloned());
        hosts.extend(failover_hosts);
        // The primary's NOTIFYs tell standby reads which head to expect:
        // connections of its own (the LISTEN one, and one to read the head
        // after a reconnect), on the store's thread.
        let head_pool = (!standby_hosts.is_empty()).then(|| io.pool_like(&pool, 2));
        let failover = (hosts.len() > 1).then(|| {
            let mut pools = vec![pool.clone(), io_pool.clone()];
            pools.extend(head_pool.clone());
            let failover = Arc::new(Failover::new(hosts, pools, self.failover_check));
            io.handle().spawn(failover.clone().run());
            failover
        });
        let standbys = head_pool.map(|head_pool| {
            let options = self.standby_pool_options.clone().unwrap_or_else(|| {
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(2))
                    .test_before_acquire(false)
            });
            let list = standby_hosts
                .into_iter()
                .map(|host| {
                    let label = failover::label(&host);
                    Standby::new(label, options.clone().connect_lazy_with(host))
                })
                .collect();
            let standbys = Arc::new(Standbys::new(list, self.standby_catch_up_wait));
            io.handle().spawn(standby::follow_head(
                standbys.clone(),
                head_pool,
                self.schema.clone(),
                notify_channel(&self.schema),
            ));
            standbys
        });
        let committer = Committer {
            counters: counters.clone(),
            schema: self.schema.clone(),
            channel: notify_channel(&self.schema),
            lookup: io_pool.clone(),
            outcome_timeout: self.outcome_timeout,
            failover: failover.clone(),
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
                standbys,
                failover,
                _io: io,
            }),
        })
    }
}

fn notify_channel(schema: &str) -> String {
    format!("{schema}_events")
}

fn parse_urls(what: &str, urls: &[String]) -> Result<Vec<PgConnectOptions>, StoreError> {
    urls.iter()
        .map(|url| {
            url.parse::<PgConnectOptions>().map_err(|e| {
                StoreError::InvalidRequest(format!("the {what} URL cannot be used: {e}"))
            })
        })
        .collect()
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

    /// A reader of this store's log on its standbys (on the primary when
    /// it has none): for listeners, relays, read models and reports, never
    /// for decisions. See [`StandbyReader`].
    pub fn standby_reader(&self) -> StandbyReader {
        StandbyReader::new(self.clone(), self.inner.standbys.clone())
    }

    /// Whether the store was given standbys to read from.
    pub fn has_standbys(&self) -> bool {
        self.inner.standbys.is_some()
    }

    /// The `host:port` the store takes for the primary now, when it was
    /// given several hosts (it follows a failover); `None` with one host.
    pub fn primary_host(&self) -> Option<String> {
        self.inner.failover.as_ref().map(|f| f.current())
    }

    /// An error that a moved primary would explain starts a search for it.
    fn check(&self, error: StoreError) -> StoreError {
        if error.is_unavailable() {
            if let Some(failover) = &self.inner.failover {
                failover.suspect();
            }
        }
        error
    }

    fn source(&self) -> Source<'_> {
        Source {
            pool: &self.inner.pool,
            schema: &self.inner.schema,
            batched: Some(&self.inner.reads),
        }
    }
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
        log_read::read(self.source(), query, options)
            .instrument(span)
            .await
            .map_err(|e| self.check(e))
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
        log_read::head(&self.inner.pool, &self.inner.schema)
            .await
            .map_err(|e| self.check(e))
    }
}
