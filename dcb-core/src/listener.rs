//! What projections and automations implement, and the words every runner
//! reports them in. The runners that feed them (with checkpoints, leadership
//! and retries) live in the backend crates.

use async_trait::async_trait;

use crate::event::{Event, Sequenced};
use crate::query::Query;
use crate::store::BoxError;

/// A listener with side effects of any kind (calling services, enqueueing
/// work), delivered **at least once**: after a crash it may see an event again,
/// so its effects must be idempotent. Events come in position order.
#[async_trait]
pub trait Listener: Send + Sync {
    /// The events it handles.
    type Event: Event;

    /// A stable id; the runner keeps this listener's checkpoint under it.
    fn id(&self) -> &str;

    /// Which events to deliver; by default every type of [`Listener::Event`].
    fn query(&self) -> Query {
        Query::of::<Self::Event>()
    }

    /// Handles one event.
    ///
    /// # Errors
    /// Any error; the runner retries with backoff and never skips silently.
    async fn handle(&self, event: Sequenced<Self::Event>) -> Result<(), BoxError>;
}

/// A listener whose writes commit in the same transaction `Tx` as its
/// checkpoint, so a read model in that database is updated **exactly once**.
///
/// `Tx` is the backend's transaction type (for Postgres, a sqlx transaction).
#[async_trait]
pub trait TransactionalListener<Tx: Send>: Send + Sync {
    /// The events it handles.
    type Event: Event;

    /// A stable id; the runner keeps this listener's checkpoint under it.
    fn id(&self) -> &str;

    /// Which events to deliver; by default every type of
    /// [`TransactionalListener::Event`].
    fn query(&self) -> Query {
        Query::of::<Self::Event>()
    }

    /// Handles one event inside `tx`.
    ///
    /// # Errors
    /// Any error rolls back the transaction (and the checkpoint with it).
    async fn handle(&self, tx: &mut Tx, event: Sequenced<Self::Event>) -> Result<(), BoxError>;

    /// Clears the read model for a rebuild, inside the transaction that also
    /// resets the checkpoint.
    ///
    /// # Errors
    /// Any error aborts the reset.
    async fn reset(&self, tx: &mut Tx) -> Result<(), BoxError> {
        let _ = tx;
        Ok(())
    }
}

/// A read model folded in memory from events, as the
/// [`ProjectionHarness`](crate::testing::ProjectionHarness) tests it.
pub trait ReadModel: Send + Sync {
    /// The events it folds.
    type Event: Event;

    /// Applies one event.
    fn apply(&mut self, event: &Sequenced<Self::Event>);
}

/// What a listener is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListenerState {
    /// The runner has not started it yet.
    Starting,
    /// Another instance leads it; this one waits to take over.
    Standby,
    /// Handling a backlog.
    Running,
    /// Caught up, waiting for new events.
    Idle,
    /// A handler failed; it retries with backoff and parks the event after
    /// the configured attempts.
    Retrying,
    /// A handler failed; it retries with backoff and never parks, so the
    /// listener is blocked until the handler succeeds.
    Blocked,
    /// Not running.
    Stopped,
}

impl ListenerState {
    /// A stable lower-case name (`"idle"`, `"blocked"`...).
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerState::Starting => "starting",
            ListenerState::Standby => "standby",
            ListenerState::Running => "running",
            ListenerState::Idle => "idle",
            ListenerState::Retrying => "retrying",
            ListenerState::Blocked => "blocked",
            ListenerState::Stopped => "stopped",
        }
    }

    /// The state named `name` by [`ListenerState::as_str`]; unknown names
    /// read as [`ListenerState::Stopped`].
    pub fn from_name(name: &str) -> Self {
        match name {
            "starting" => ListenerState::Starting,
            "standby" => ListenerState::Standby,
            "running" => ListenerState::Running,
            "idle" => ListenerState::Idle,
            "retrying" => ListenerState::Retrying,
            "blocked" => ListenerState::Blocked,
            _ => ListenerState::Stopped,
        }
    }
}

/// How many attempts a listener makes on an event before parking it, unless
/// told otherwise.
pub const DEFAULT_PARK_AFTER: u32 = 10;
