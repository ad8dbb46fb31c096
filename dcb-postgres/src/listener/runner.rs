//! [`ListenerRunner`]: registers listeners, then starts one task per
//! listener and the `LISTEN` connection that wakes them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use dcb_core::{EventStore, Listener, TransactionalListener, DEFAULT_PARK_AFTER};
use sqlx::PgPool;
use tokio::sync::watch;

use super::admin::ListenerAdmin;
use super::config::{ListenerOptions, RunnerConfig};
use super::handle::RunnerHandle;
use super::handler::Registered;
use super::shared::{ListenerShared, RunnerShared};
use super::sql::{request_channel, Statements, COMPONENT, STEPS};
use super::{notify, worker, ListenerError, PgTransaction};
use crate::text;
use crate::StandbyReader;

/// The longest listener or instance id, in bytes.
pub const MAX_ID_BYTES: usize = 200;

/// Builds and starts a runner for a set of listeners. Start from the store
/// with [`PgEventStore::listeners`](crate::PgEventStore::listeners).
pub struct ListenerRunner {
    store: Arc<dyn EventStore>,
    /// Where the listeners read events, when not from `store`.
    source: Option<Arc<dyn EventStore>>,
    /// The standbys `source` reads, for lag reports.
    standby: Option<StandbyReader>,
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
    /// A runner reading events from `store`, keeping checkpoints in `schema`
    /// through `pool` and waking on `NOTIFY channel`. `schema` must hold the
    /// store's tables too (the operators' view reads the head and event
    /// times there); [`PgEventStore::listeners`](crate::PgEventStore::listeners)
    /// fills all of this in.
    pub fn from_parts(
        store: Arc<dyn EventStore>,
        pool: PgPool,
        schema: impl Into<String>,
        channel: impl Into<String>,
    ) -> Self {
        ListenerRunner {
            store,
            source: None,
            standby: None,
            pool,
            schema: schema.into(),
            channel: channel.into(),
            config: RunnerConfig::default(),
            listeners: Vec::new(),
        }
    }

    /// Reads the listeners' events from `source` instead of the store
    /// (checkpoints, leases and the head of the log stay with the store).
    /// `source` must show a gapless prefix of the same log on every read:
    /// the store itself, or a [`StandbyReader`] of it.
    pub fn read_events_from(mut self, source: Arc<dyn EventStore>) -> Self {
        self.source = Some(source);
        self.standby = None;
        self
    }

    /// Reads the listeners' events from the store's standbys (what
    /// [`PgEventStore::listeners`](crate::PgEventStore::listeners) does when
    /// the store has standbys); [`RunnerHandle::standby_lag`] then reports
    /// how far they are behind.
    pub fn read_from_standbys(mut self, reader: StandbyReader) -> Self {
        self.source = Some(Arc::new(reader.clone()));
        self.standby = Some(reader);
        self
    }

    /// Reads the listeners' events from the primary even when the store has
    /// standbys.
    pub fn read_from_primary(mut self) -> Self {
        self.source = None;
        self.standby = None;
        self
    }

    /// Replaces the configuration.
    pub fn config(mut self, config: RunnerConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a transactional listener with the default options: transient
    /// failures block it, permanent ones park their event (see
    /// [`ListenerOptions`]).
    pub fn transactional<L>(self, listener: L) -> Self
    where
        L: TransactionalListener<PgTransaction> + 'static,
    {
        self.transactional_with(listener, ListenerOptions::new())
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
    /// [`DEFAULT_PARK_AFTER`] failed attempts (fewer when they are
    /// permanent).
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

    /// Creates or upgrades the listener tables and starts one task per
    /// listener (plus one `LISTEN` connection). Must run inside a Tokio
    /// runtime.
    ///
    /// # Errors
    /// [`ListenerError::DuplicateListener`]; [`ListenerError::InvalidConfig`]
    /// for a bad schema, or a listener or instance id PostgreSQL cannot
    /// store (a NUL, over [`MAX_ID_BYTES`]); migration and database
    /// failures.
    pub async fn start(self) -> Result<RunnerHandle, ListenerError> {
        crate::migrations::validate_schema(&self.schema)
            .map_err(|e| ListenerError::InvalidConfig(e.to_string()))?;
        text::check("instance id", &self.config.instance_id, MAX_ID_BYTES)
            .map_err(ListenerError::InvalidConfig)?;
        let mut seen = HashSet::new();
        for (registered, _) in &self.listeners {
            text::check("listener id", &registered.id, MAX_ID_BYTES)
                .map_err(ListenerError::InvalidConfig)?;
            if !seen.insert(registered.id.clone()) {
                return Err(ListenerError::DuplicateListener(registered.id.clone()));
            }
        }
        crate::migrations::run(&self.pool, &self.schema, COMPONENT, STEPS).await?;
        let statements = Arc::new(Statements::new(&self.schema));
        let mut listeners = HashMap::new();
        for (registered, options) in self.listeners {
            let shared = Arc::new(ListenerShared::new(registered, options));
            sqlx::query(&statements.ensure)
                .bind(shared.id())
                .bind(shared.mode().as_str())
                .execute(&self.pool)
                .await?;
            listeners.insert(shared.id().to_owned(), shared);
        }
        let runner = Arc::new(RunnerShared {
            source: self.source.unwrap_or_else(|| self.store.clone()),
            standby: self.standby,
            store: self.store,
            pool: self.pool.clone(),
            channel: self.channel,
            request_channel: request_channel(&self.schema),
            sql: statements.clone(),
            config: self.config,
            wake: watch::channel(0).0,
            shutdown: watch::channel(false).0,
        });
        let mut tasks = Vec::new();
        for shared in listeners.values() {
            tasks.push(tokio::spawn(worker::run(runner.clone(), shared.clone())));
        }
        tasks.push(tokio::spawn(notify::listen(
            runner.clone(),
            listeners.clone(),
        )));
        tracing::info!(
            instance = %runner.config.instance_id,
            listeners = listeners.len(),
            "listener runner started"
        );
        let admin = ListenerAdmin::with_statements(self.pool, self.schema, statements)
            .requested_by(runner.config.instance_id.clone());
        Ok(RunnerHandle::new(
            runner,
            listeners,
            Mutex::new(tasks),
            admin,
        ))
    }
}
