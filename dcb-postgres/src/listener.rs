//! Listener runners: feed [`Listener`]s and [`TransactionalListener`]s the
//! events they query, in position order and in batches, with a checkpoint per
//! listener in Postgres.
//!
//! - **Transactional** listeners get the [`PgTransaction`] in which their
//!   checkpoint advances: read-model writes and the checkpoint commit
//!   together, so a Postgres read model is updated exactly once.
//! - **At-least-once** listeners may do anything; the checkpoint advances
//!   after the batch is handled, so after a crash an event may come again.
//!
//! One instance leads each listener at a time (a lease row renewed by
//! heartbeat; every checkpoint write is fenced on it). The leader wakes on the
//! store's `NOTIFY` and polls as a fallback. A failing handler is retried with
//! capped exponential backoff; after a configured number of attempts the
//! event is parked (recorded with its error) or the listener stays blocked on
//! it. [`RunnerHandle`] reports status, waits for catch-up, resets and
//! rebuilds listeners, and shuts down gracefully.
//!
//! ```no_run
//! use dcb_core::{BoxError, Sequenced, TransactionalListener};
//! use dcb_postgres::listener::{ListenerRunner, PgTransaction, RunnerConfig};
//! use dcb_postgres::PgEventStore;
//! # #[derive(Debug)] struct Opened;
//! # impl dcb_core::Event for Opened {
//! #   const SCHEMA: &'static [dcb_core::EventSchema] = &[];
//! #   fn event_type(&self) -> dcb_core::EventType { "Opened".into() }
//! #   fn tags(&self) -> Vec<dcb_core::Tag> { vec![] }
//! #   fn encode(&self) -> Result<Vec<u8>, dcb_core::CodecError> { Ok(vec![]) }
//! #   fn decode(_: &str, _: &[u8]) -> Result<Self, dcb_core::CodecError> { Ok(Opened) }
//! # }
//!
//! struct OpenedCount;
//!
//! #[async_trait::async_trait]
//! impl TransactionalListener<PgTransaction> for OpenedCount {
//!     type Event = Opened;
//!     fn id(&self) -> &str { "opened-count" }
//!     async fn handle(&self, tx: &mut PgTransaction, _: Sequenced<Opened>) -> Result<(), BoxError> {
//!         sqlx::query("UPDATE opened_count SET n = n + 1").execute(&mut **tx).await?;
//!         Ok(())
//!     }
//!     async fn reset(&self, tx: &mut PgTransaction) -> Result<(), BoxError> {
//!         sqlx::query("UPDATE opened_count SET n = 0").execute(&mut **tx).await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgEventStore::connect("postgres://postgres@127.0.0.1:54329/postgres").await?;
//! let runner = ListenerRunner::new(&store)
//!     .config(RunnerConfig::default())
//!     .transactional(OpenedCount)
//!     .start()
//!     .await?;
//! let head = dcb_core::EventStore::head(&store).await?.unwrap_or_default();
//! runner.wait_until("opened-count", head).await?;
//! println!("{:?}", runner.status("opened-count").await?);
//! runner.shutdown().await;
//! # Ok(()) }
//! ```

mod handler;
mod sql;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dcb_core::{
    BoxError, EventStore, EventType, Listener, Position, StoreError, TransactionalListener,
};
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

pub use dcb_core::{Backoff, ListenerState, DEFAULT_PARK_AFTER};

use handler::{Handler, Registered};
use sql::Statements;
pub use sql::{COMPONENT, STEPS};

/// The transaction a [`TransactionalListener`] receives: the one in which its
/// checkpoint advances. Write through `&mut **tx`.
pub type PgTransaction = sqlx::Transaction<'static, sqlx::Postgres>;

/// Settings shared by every listener of a runner.
///
/// ```
/// use std::time::Duration;
/// use dcb_postgres::listener::RunnerConfig;
/// let config = RunnerConfig::default()
///     .batch_size(500)
///     .lease_ttl(Duration::from_secs(2))
///     .instance_id("web-1");
/// assert_eq!(config.batch_size, 500);
/// ```
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// At most this many events per batch (one transaction per batch in
    /// transactional mode). Default 100.
    pub batch_size: usize,
    /// How often an idle leader polls when no `NOTIFY` arrives. Default 1 s.
    pub poll_interval: Duration,
    /// Waits between attempts on a failing event.
    pub backoff: Backoff,
    /// How long a leader's lease lasts without renewal; a dead leader is
    /// replaced within about `lease_ttl * 4 / 3`. Renewed every third of it.
    /// Default 5 s.
    pub lease_ttl: Duration,
    /// The name this process leads under (default: a random UUID). Two live
    /// processes must never share one.
    pub instance_id: String,
    /// The server ends a batch transaction idle for longer than this (so a
    /// leader cut off mid-batch cannot hold its row lock forever). A
    /// transactional handler must not spend longer than this between two
    /// statements. Default 30 s.
    pub transaction_idle_timeout: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            batch_size: 100,
            poll_interval: Duration::from_secs(1),
            backoff: Backoff::default(),
            lease_ttl: Duration::from_secs(5),
            instance_id: uuid::Uuid::new_v4().to_string(),
            transaction_idle_timeout: Duration::from_secs(30),
        }
    }
}

impl RunnerConfig {
    /// Sets [`RunnerConfig::batch_size`] (at least 1).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Sets [`RunnerConfig::poll_interval`].
    pub fn poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval.max(Duration::from_millis(1));
        self
    }

    /// Sets [`RunnerConfig::backoff`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`RunnerConfig::lease_ttl`] (at least 300 ms).
    pub fn lease_ttl(mut self, lease_ttl: Duration) -> Self {
        self.lease_ttl = lease_ttl.max(Duration::from_millis(300));
        self
    }

    /// Sets [`RunnerConfig::instance_id`].
    pub fn instance_id(mut self, instance_id: impl Into<String>) -> Self {
        self.instance_id = instance_id.into();
        self
    }

    /// Sets [`RunnerConfig::transaction_idle_timeout`].
    pub fn transaction_idle_timeout(mut self, timeout: Duration) -> Self {
        self.transaction_idle_timeout = timeout.max(Duration::from_secs(1));
        self
    }
}

/// Settings of one listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerOptions {
    /// After this many failed attempts on one event, park it and move on;
    /// `None` keeps retrying (at the capped backoff) and blocks the listener.
    pub park_after: Option<u32>,
    /// Overrides [`RunnerConfig::batch_size`] for this listener.
    pub batch_size: Option<usize>,
}

impl ListenerOptions {
    /// Block on a failing event, retrying forever (the default for
    /// transactional listeners: a read model must not miss an event).
    pub fn blocking() -> Self {
        ListenerOptions::default()
    }

    /// Park a failing event after `attempts` attempts (at least 1) and carry
    /// on (the default for at-least-once listeners, with
    /// [`DEFAULT_PARK_AFTER`]).
    pub fn park_after(attempts: u32) -> Self {
        ListenerOptions {
            park_after: Some(attempts.max(1)),
            batch_size: None,
        }
    }

    /// Sets [`ListenerOptions::batch_size`].
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = Some(batch_size.max(1));
        self
    }
}

/// How a listener receives its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    /// In the checkpoint's transaction: exactly once for Postgres writes.
    Transactional,
    /// After the batch, before the checkpoint: at least once.
    AtLeastOnce,
}

/// A listener's status, as [`RunnerHandle::status`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerStatus {
    /// The listener id.
    pub id: String,
    /// How it receives events.
    pub mode: DeliveryMode,
    /// Its checkpoint: every event up to here is handled (or parked).
    pub position: Option<Position>,
    /// The head of the log.
    pub head: Option<Position>,
    /// `head - position`, in positions.
    pub lag: u64,
    /// What it is doing: this instance's view when it leads, else the leader's
    /// as last recorded.
    pub state: ListenerState,
    /// The instance holding a live lease, if any.
    pub leader: Option<String>,
    /// Whether this instance is the leader.
    pub leading_here: bool,
    /// Failed attempts on the event it is stuck on (0 when healthy).
    pub attempts: u32,
    /// The position of the event it is stuck on.
    pub failing_position: Option<Position>,
    /// The last handler error (kept after recovery, cleared by a reset).
    pub last_error: Option<String>,
    /// When that error happened.
    pub last_error_at: Option<DateTime<Utc>>,
    /// How many events it parked.
    pub parked: u64,
    /// Events handled by this instance since it started.
    pub handled_here: u64,
}

/// An event a listener gave up on, with the error that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedEvent {
    /// The listener id.
    pub listener_id: String,
    /// Where the event is in the log.
    pub position: Position,
    /// Its stored type.
    pub event_type: EventType,
    /// Its id.
    pub event_id: Option<uuid::Uuid>,
    /// The last error.
    pub error: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

/// Progress of a rebuild, passed to the callback of
/// [`RunnerHandle::rebuild`] and logged through `tracing`.
#[derive(Clone, Debug, PartialEq)]
pub struct RebuildProgress {
    /// The listener id.
    pub listener_id: String,
    /// Its checkpoint now.
    pub position: Position,
    /// The head when the rebuild started: done when `position` reaches it.
    pub target: Position,
    /// Events this instance handled since the rebuild started.
    pub events_done: u64,
    /// `position / target` (1 when the log was empty).
    pub fraction: f64,
    /// Events per second so far.
    pub events_per_sec: f64,
    /// Time since the rebuild started.
    pub elapsed: Duration,
}

/// What the runner's API can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// No listener with this id is registered with the runner.
    #[error("no listener {0:?} is registered with this runner")]
    UnknownListener(String),
    /// Two listeners registered the same id.
    #[error("listener id {0:?} is registered twice")]
    DuplicateListener(String),
    /// The database failed.
    #[error("listener database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The event store failed.
    #[error("event store error: {0}")]
    Store(#[from] StoreError),
    /// The listener's own reset failed; nothing was reset.
    #[error("reset of listener {listener:?} failed: {source}")]
    Reset {
        /// The listener id.
        listener: String,
        /// What its reset returned.
        #[source]
        source: BoxError,
    },
    /// [`RunnerHandle::wait_until_timeout`] gave up.
    #[error("listener {listener:?} did not reach {target} in time (at {reached:?})")]
    Timeout {
        /// The listener id.
        listener: String,
        /// The position waited for.
        target: Position,
        /// Where it got to.
        reached: Option<Position>,
    },
}

/// Builds and starts a runner for a set of listeners.
pub struct ListenerRunner {
    store: Arc<dyn EventStore>,
    pool: PgPool,
    schema: String,
    channel: String,
    config: RunnerConfig,
    listeners: Vec<(Registered, ListenerOptions)>,
}

impl std::fmt::Debug for ListenerRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerRunner")
            .field("schema", &self.schema)
            .field("config", &self.config)
            .field(
                "listeners",
                &self
                    .listeners
                    .iter()
                    .map(|(r, _)| &r.id)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ListenerRunner {
    /// A runner over `store`, keeping checkpoints in the store's schema and
    /// using its pool.
    pub fn new(store: &crate::PgEventStore) -> Self {
        Self::from_parts(
            Arc::new(store.clone()),
            store.pool().clone(),
            store.schema(),
            store.notify_channel(),
        )
    }

    /// A runner reading events from `store`, keeping checkpoints in `schema`
    /// through `pool` and waking on `NOTIFY channel`.
    pub fn from_parts(
        store: Arc<dyn EventStore>,
        pool: PgPool,
        schema: impl Into<String>,
        channel: impl Into<String>,
    ) -> Self {
        ListenerRunner {
            store,
            pool,
            schema: schema.into(),
            channel: channel.into(),
            config: RunnerConfig::default(),
            listeners: Vec::new(),
        }
    }

    /// Replaces the configuration.
    pub fn config(mut self, config: RunnerConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a transactional listener that blocks on a failing event.
    pub fn transactional<L>(self, listener: L) -> Self
    where
        L: TransactionalListener<PgTransaction> + 'static,
    {
        self.transactional_with(listener, ListenerOptions::blocking())
    }

    /// Adds a transactional listener with its own options.
    pub fn transactional_with<L>(mut self, listener: L, options: ListenerOptions) -> Self
    where
        L: TransactionalListener<PgTransaction> + 'static,
    {
        self.listeners
            .push((Registered::transactional(listener), options));
        self
    }

    /// Adds an at-least-once listener that parks an event after
    /// [`DEFAULT_PARK_AFTER`] failed attempts.
    pub fn at_least_once<L>(self, listener: L) -> Self
    where
        L: Listener + 'static,
    {
        self.at_least_once_with(listener, ListenerOptions::park_after(DEFAULT_PARK_AFTER))
    }

    /// Adds an at-least-once listener with its own options.
    pub fn at_least_once_with<L>(mut self, listener: L, options: ListenerOptions) -> Self
    where
        L: Listener + 'static,
    {
        self.listeners
            .push((Registered::at_least_once(listener), options));
        self
    }

    /// Creates the listener tables if needed and starts one task per
    /// listener (plus one `LISTEN` connection). Must run inside a Tokio
    /// runtime.
    ///
    /// # Errors
    /// [`ListenerError::DuplicateListener`], and database failures while
    /// migrating.
    pub async fn start(self) -> Result<RunnerHandle, ListenerError> {
        let mut seen = std::collections::HashSet::new();
        for (registered, _) in &self.listeners {
            if !seen.insert(registered.id.clone()) {
                return Err(ListenerError::DuplicateListener(registered.id.clone()));
            }
        }
        crate::migrations::run(&self.pool, &self.schema, sql::COMPONENT, sql::STEPS)
            .await
            .map_err(sqlx::Error::from)?;
        let statements = Statements::new(&self.schema);
        for (registered, _) in &self.listeners {
            sqlx::query(&statements.ensure)
                .bind(&registered.id)
                .execute(&self.pool)
                .await?;
        }
        let runner = Arc::new(RunnerShared {
            store: self.store,
            pool: self.pool,
            channel: self.channel,
            sql: statements,
            config: self.config,
            wake: watch::channel(0).0,
            shutdown: watch::channel(false).0,
        });
        let mut listeners = HashMap::new();
        let mut tasks = Vec::new();
        for (registered, options) in self.listeners {
            let shared = Arc::new(ListenerShared::new(registered, options));
            listeners.insert(shared.registered.id.clone(), shared.clone());
            tasks.push(tokio::spawn(worker::run(runner.clone(), shared)));
        }
        tasks.push(tokio::spawn(worker::notifier(runner.clone())));
        tracing::info!(
            instance = %runner.config.instance_id,
            listeners = listeners.len(),
            "listener runner started"
        );
        Ok(RunnerHandle {
            runner,
            listeners,
            tasks: Mutex::new(tasks),
        })
    }
}

/// What every task of one runner shares.
pub(crate) struct RunnerShared {
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) pool: PgPool,
    pub(crate) channel: String,
    pub(crate) sql: Statements,
    pub(crate) config: RunnerConfig,
    /// Bumped on every `NOTIFY` (and after a reconnect).
    pub(crate) wake: watch::Sender<u64>,
    /// `true` once shutdown starts.
    pub(crate) shutdown: watch::Sender<bool>,
}

/// This instance's view of one listener.
#[derive(Clone, Debug)]
pub(crate) struct LocalStatus {
    pub(crate) state: ListenerState,
    pub(crate) leading: bool,
    pub(crate) attempts: u32,
    pub(crate) failing_position: Option<Position>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_error_at: Option<DateTime<Utc>>,
}

/// What a listener's task shares with the handle.
pub(crate) struct ListenerShared {
    pub(crate) registered: Registered,
    pub(crate) options: ListenerOptions,
    /// The checkpoint as this instance last saw it (0: nothing handled).
    pub(crate) checkpoint: watch::Sender<u64>,
    pub(crate) local: Mutex<LocalStatus>,
    /// Pokes the task (after a reset, or when the lease is lost).
    pub(crate) poke: Notify,
    /// Events handled here.
    pub(crate) handled: AtomicU64,
}

impl ListenerShared {
    fn new(registered: Registered, options: ListenerOptions) -> Self {
        ListenerShared {
            registered,
            options,
            checkpoint: watch::channel(0).0,
            local: Mutex::new(LocalStatus {
                state: ListenerState::Starting,
                leading: false,
                attempts: 0,
                failing_position: None,
                last_error: None,
                last_error_at: None,
            }),
            poke: Notify::new(),
            handled: AtomicU64::new(0),
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.registered.id
    }

    pub(crate) fn mode(&self) -> DeliveryMode {
        match self.registered.handler {
            Handler::Transactional(_) => DeliveryMode::Transactional,
            Handler::AtLeastOnce(_) => DeliveryMode::AtLeastOnce,
        }
    }

    pub(crate) fn local(&self) -> std::sync::MutexGuard<'_, LocalStatus> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running runner: status, catch-up waits, reset and rebuild, shutdown.
///
/// Dropping it without [`RunnerHandle::shutdown`] also stops the tasks, but
/// without waiting for them.
pub struct RunnerHandle {
    runner: Arc<RunnerShared>,
    listeners: HashMap<String, Arc<ListenerShared>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for RunnerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerHandle")
            .field("instance", &self.runner.config.instance_id)
            .field("listeners", &self.listeners.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Drop for RunnerHandle {
    fn drop(&mut self) {
        self.runner.shutdown.send_replace(true);
    }
}

impl RunnerHandle {
    fn listener(&self, id: &str) -> Result<&Arc<ListenerShared>, ListenerError> {
        self.listeners
            .get(id)
            .ok_or_else(|| ListenerError::UnknownListener(id.to_owned()))
    }

    /// The ids of the listeners this runner runs.
    pub fn listener_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.listeners.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The name this instance leads under.
    pub fn instance_id(&self) -> &str {
        &self.runner.config.instance_id
    }

    /// Whether this instance currently leads listener `id`.
    ///
    /// # Errors
    /// [`ListenerError::UnknownListener`].
    pub fn is_leading(&self, id: &str) -> Result<bool, ListenerError> {
        Ok(self.listener(id)?.local().leading)
    }

    /// The status of listener `id`: checkpoint, head, lag, state, leader,
    /// failures and parked count.
    ///
    /// # Errors
    /// [`ListenerError::UnknownListener`], database and store failures.
    pub async fn status(&self, id: &str) -> Result<ListenerStatus, ListenerError> {
        let listener = self.listener(id)?;
        type Row = (
            i64,
            Option<String>,
            bool,
            String,
            i32,
            Option<i64>,
            Option<String>,
            Option<DateTime<Utc>>,
            i64,
        );
        let row: Option<Row> = sqlx::query_as(&self.runner.sql.status)
            .bind(id)
            .fetch_optional(&self.runner.pool)
            .await?;
        let head = self.runner.store.head().await?;
        let local = listener.local().clone();
        let (position, owner, leased, state, attempts, failing, error, error_at, parked) =
            row.unwrap_or((0, None, false, "stopped".into(), 0, None, None, None, 0));
        let leader = owner.filter(|_| leased);
        let (state, attempts, failing_position, last_error, last_error_at) = if local.leading {
            (
                local.state,
                local.attempts,
                local.failing_position,
                local.last_error.or(error),
                local.last_error_at.or(error_at),
            )
        } else {
            let state = match &leader {
                Some(_) => ListenerState::from_name(&state),
                None if local.state == ListenerState::Standby => ListenerState::Standby,
                None => ListenerState::Stopped,
            };
            (
                state,
                u32::try_from(attempts).unwrap_or(0),
                failing.map(crate::position::from_db_or_zero),
                error,
                error_at,
            )
        };
        let position = u64::try_from(position).unwrap_or(0);
        let head_value = head.map_or(0, |p| p.0);
        Ok(ListenerStatus {
            id: id.to_owned(),
            mode: listener.mode(),
            position: (position > 0).then_some(Position(position)),
            head,
            lag: head_value.saturating_sub(position),
            state,
            leading_here: local.leading,
            leader,
            attempts,
            failing_position,
            last_error,
            last_error_at,
            parked: u64::try_from(parked).unwrap_or(0),
            handled_here: listener.handled.load(Ordering::Relaxed),
        })
    }

    /// The status of every listener of this runner, by id.
    ///
    /// # Errors
    /// Database and store failures.
    pub async fn statuses(&self) -> Result<Vec<ListenerStatus>, ListenerError> {
        let mut all = Vec::with_capacity(self.listeners.len());
        for id in self.listener_ids() {
            all.push(self.status(&id).await?);
        }
        Ok(all)
    }

    /// The events listener `id` parked, oldest first.
    ///
    /// # Errors
    /// [`ListenerError::UnknownListener`] and database failures.
    pub async fn parked(&self, id: &str) -> Result<Vec<ParkedEvent>, ListenerError> {
        self.listener(id)?;
        type Row = (i64, String, Option<uuid::Uuid>, String, i32, DateTime<Utc>);
        let rows: Vec<Row> = sqlx::query_as(&self.runner.sql.parked)
            .bind(id)
            .fetch_all(&self.runner.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(position, event_type, event_id, error, attempts, parked_at)| ParkedEvent {
                    listener_id: id.to_owned(),
                    position: crate::position::from_db_or_zero(position),
                    event_type: EventType::from(event_type),
                    event_id,
                    error,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    parked_at,
                },
            )
            .collect())
    }

    async fn current_position(&self, listener: &ListenerShared) -> Result<u64, ListenerError> {
        if listener.local().leading {
            return Ok(*listener.checkpoint.borrow());
        }
        let position: Option<i64> = sqlx::query_scalar(&self.runner.sql.position)
            .bind(listener.id())
            .fetch_optional(&self.runner.pool)
            .await?;
        Ok(position.map_or(0, |p| u64::try_from(p).unwrap_or(0)))
    }

    /// Waits until listener `id` has handled (or parked) every event up to
    /// `position`, whichever instance leads it.
    ///
    /// # Errors
    /// [`ListenerError::UnknownListener`] and database failures.
    pub async fn wait_until(&self, id: &str, position: Position) -> Result<(), ListenerError> {
        let listener = self.listener(id)?;
        let mut checkpoint = listener.checkpoint.subscribe();
        loop {
            checkpoint.borrow_and_update();
            if self.current_position(listener).await? >= position.0 {
                return Ok(());
            }
            tokio::select! {
                _ = checkpoint.changed() => {}
                _ = tokio::time::sleep(self.runner.config.poll_interval) => {}
            }
        }
    }

    /// [`RunnerHandle::wait_until`], giving up after `timeout`.
    ///
    /// # Errors
    /// [`ListenerError::Timeout`] with the position reached, and the errors
    /// of [`RunnerHandle::wait_until`].
    pub async fn wait_until_timeout(
        &self,
        id: &str,
        position: Position,
        timeout: Duration,
    ) -> Result<(), ListenerError> {
        match tokio::time::timeout(timeout, self.wait_until(id, position)).await {
            Ok(result) => result,
            Err(_) => {
                let reached = self.current_position(self.listener(id)?).await?;
                Err(ListenerError::Timeout {
                    listener: id.to_owned(),
                    target: position,
                    reached: (reached > 0).then_some(Position(reached)),
                })
            }
        }
    }

    /// Waits until listener `id` has caught up with the head of the log as it
    /// is now; returns that head.
    ///
    /// # Errors
    /// See [`RunnerHandle::wait_until`].
    pub async fn catch_up(&self, id: &str) -> Result<Option<Position>, ListenerError> {
        let head = self.runner.store.head().await?;
        if let Some(head) = head {
            self.wait_until(id, head).await?;
        }
        Ok(head)
    }

    /// Rewinds listener `id` to the start of the log: in one transaction,
    /// locks its checkpoint (waiting for a batch in flight on any instance),
    /// runs the listener's own [`TransactionalListener::reset`] (transactional
    /// listeners), sets the checkpoint to the beginning, clears its failures
    /// and forgets its parked events. The leader then replays the log.
    ///
    /// # Errors
    /// [`ListenerError::Reset`] when the listener's reset fails (nothing is
    /// reset), database failures.
    pub async fn reset(&self, id: &str) -> Result<(), ListenerError> {
        let listener = self.listener(id)?;
        let sql = &self.runner.sql;
        sqlx::query(&sql.ensure)
            .bind(id)
            .execute(&self.runner.pool)
            .await?;
        let mut tx = self.runner.pool.begin().await?;
        sqlx::query(&sql.lock_for_reset)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if let Handler::Transactional(handler) = &listener.registered.handler {
            if let Err(source) = handler.reset(&mut tx).await {
                let _ = tx.rollback().await;
                return Err(ListenerError::Reset {
                    listener: id.to_owned(),
                    source,
                });
            }
        }
        sqlx::query(&sql.reset).bind(id).execute(&mut *tx).await?;
        sqlx::query(&sql.reset_parked)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        {
            let mut local = listener.local();
            local.attempts = 0;
            local.failing_position = None;
            local.last_error = None;
            local.last_error_at = None;
        }
        listener.checkpoint.send_replace(0);
        listener.poke.notify_one();
        tracing::info!(listener = id, "listener reset");
        Ok(())
    }

    /// Resets listener `id` (see [`RunnerHandle::reset`]) and waits until it
    /// has replayed the log up to the head as it was when the rebuild
    /// started, reporting progress to `progress` and through `tracing` about
    /// once a second.
    ///
    /// # Errors
    /// See [`RunnerHandle::reset`].
    pub async fn rebuild<F>(
        &self,
        id: &str,
        mut progress: F,
    ) -> Result<RebuildProgress, ListenerError>
    where
        F: FnMut(&RebuildProgress) + Send,
    {
        let listener = self.listener(id)?;
        let target = self.runner.store.head().await?.unwrap_or(Position(0));
        let handled_before = listener.handled.load(Ordering::Relaxed);
        let started = Instant::now();
        self.reset(id).await?;
        let mut checkpoint = listener.checkpoint.subscribe();
        let mut last_report = Instant::now();
        loop {
            checkpoint.borrow_and_update();
            let position = self.current_position(listener).await?;
            let done = position >= target.0;
            if done || last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                let elapsed = started.elapsed();
                let events_done = listener
                    .handled
                    .load(Ordering::Relaxed)
                    .saturating_sub(handled_before);
                let report = RebuildProgress {
                    listener_id: id.to_owned(),
                    position: Position(position),
                    target,
                    events_done,
                    fraction: if target.0 == 0 {
                        1.0
                    } else {
                        (position as f64 / target.0 as f64).min(1.0)
                    },
                    events_per_sec: events_done as f64 / elapsed.as_secs_f64().max(1e-6),
                    elapsed,
                };
                tracing::info!(
                    listener = id,
                    position,
                    target = target.0,
                    events_done,
                    events_per_sec = report.events_per_sec,
                    "rebuild progress"
                );
                progress(&report);
                if done {
                    return Ok(report);
                }
            }
            tokio::select! {
                _ = checkpoint.changed() => {}
                _ = tokio::time::sleep(self.runner.config.poll_interval.min(Duration::from_secs(1))) => {}
            }
        }
    }

    /// Stops gracefully: no new batches are fetched; each leader finishes and
    /// commits the batch in hand, then gives its lease up so another instance
    /// takes over at once. Returns when every task has stopped.
    pub async fn shutdown(self) {
        self.runner.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        tracing::info!(instance = %self.runner.config.instance_id, "listener runner stopped");
    }
}
