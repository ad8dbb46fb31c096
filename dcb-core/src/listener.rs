//! What projections and automations implement. The runners that feed them
//! (with checkpoints, leadership and retries) live in the backend crates.

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
        Query::types(Self::Event::event_types())
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
        Query::types(Self::Event::event_types())
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

/// A read model folded in memory from events: what the projection harness
/// tests and what an in-memory runner can keep up to date.
pub trait ReadModel: Send + Sync {
    /// The events it folds.
    type Event: Event;

    /// Applies one event.
    fn apply(&mut self, event: &Sequenced<Self::Event>);
}
