//! What a runner's tasks and its handle share: the runner's settings and
//! statements, and per listener its registration, this instance's view of
//! it, and the signals that wake its task.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use dcb_core::{EventStore, ListenerState, Position};
use sqlx::PgPool;
use tokio::sync::{watch, Notify};

use super::config::{DeliveryMode, ListenerOptions, RunnerConfig};
use super::handler::{Handler, Registered};
use super::sql::Statements;

/// What every task of one runner shares.
pub(crate) struct RunnerShared {
    /// The log: its head (status, catch-up, rebuild targets).
    pub(crate) store: Arc<dyn EventStore>,
    /// Where the listeners read their events (the store, or its standbys).
    pub(crate) source: Arc<dyn EventStore>,
    /// The standbys `source` reads, if it does.
    pub(crate) standby: Option<crate::StandbyReader>,
    pub(crate) pool: PgPool,
    /// The store's channel: a NOTIFY per committed batch.
    pub(crate) channel: String,
    /// The channel operators' requests are announced on.
    pub(crate) request_channel: String,
    pub(crate) sql: Arc<Statements>,
    pub(crate) config: RunnerConfig,
    /// Bumped on every `NOTIFY` of the store (and after a reconnect).
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

impl LocalStatus {
    /// Forgets the failure (after a reset or a skip).
    pub(crate) fn clear_failure(&mut self) {
        self.attempts = 0;
        self.failing_position = None;
    }
}

/// What a listener's task shares with the handle.
pub(crate) struct ListenerShared {
    pub(crate) registered: Registered,
    pub(crate) options: ListenerOptions,
    /// The checkpoint as this instance last saw it (0: nothing handled).
    pub(crate) checkpoint: watch::Sender<u64>,
    pub(crate) local: Mutex<LocalStatus>,
    /// Pokes the task (an operator's request, or the lease is lost).
    pub(crate) poke: Notify,
    /// Operators' requests may be waiting.
    pub(crate) requests: AtomicBool,
    /// Events handled here.
    pub(crate) handled: AtomicU64,
}

impl ListenerShared {
    pub(crate) fn new(registered: Registered, options: ListenerOptions) -> Self {
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
            requests: AtomicBool::new(true),
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
