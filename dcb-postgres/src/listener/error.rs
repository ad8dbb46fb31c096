//! What the runner and the operators' API can fail with.

use dcb_core::{BoxError, Position, StoreError};

use super::status::{RequestId, RequestKind};
use crate::error::DatabaseError;
use crate::migrations::MigrationError;

/// What the runner's API and [`ListenerAdmin`](super::ListenerAdmin) can
/// fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// No listener with this id is registered with the runner (or known to
    /// the database, through the operators' API).
    #[error("no listener {0:?} is registered")]
    UnknownListener(String),
    /// Two listeners registered the same id.
    #[error("listener id {0:?} is registered twice")]
    DuplicateListener(String),
    /// A listener id, instance id or schema cannot be used.
    #[error("invalid listener configuration: {0}")]
    InvalidConfig(String),
    /// The database failed.
    #[error("listener database error: {0}")]
    Database(#[from] DatabaseError),
    /// Creating or upgrading the listener tables failed.
    #[error(transparent)]
    Migration(#[from] MigrationError),
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
    /// An operator's request was refused or failed (a retried event failed
    /// again, there was nothing to skip...).
    #[error("{kind:?} request {request} for listener {listener:?} failed: {error}")]
    RequestFailed {
        /// The listener id.
        listener: String,
        /// The request.
        request: RequestId,
        /// What it asked.
        kind: RequestKind,
        /// Why it failed.
        error: String,
    },
    /// A request was not carried out in time: no runner of the listener is
    /// running, or its leader is busy.
    #[error(
        "request {request} for listener {listener:?} is still pending or running; is a runner \
         with this listener running?"
    )]
    RequestTimeout {
        /// The listener id.
        listener: String,
        /// The request.
        request: RequestId,
    },
    /// [`RunnerHandle::wait_until_timeout`](super::RunnerHandle::wait_until_timeout)
    /// gave up.
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

impl ListenerError {
    /// Whether doing the same again may succeed: an outage or a transient
    /// database failure, or a wait that timed out (waiting longer may do).
    pub fn is_retryable(&self) -> bool {
        match self {
            ListenerError::Database(e) => e.is_retryable(),
            ListenerError::Migration(e) => e.is_retryable(),
            ListenerError::Store(e) => e.is_retryable(),
            ListenerError::Timeout { .. } | ListenerError::RequestTimeout { .. } => true,
            _ => false,
        }
    }

    /// Whether the database (or the event store) could not be reached.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ListenerError::Database(e) => e.is_unavailable(),
            ListenerError::Migration(e) => e.is_unavailable(),
            ListenerError::Store(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for ListenerError {
    fn from(error: sqlx::Error) -> Self {
        ListenerError::Database(error.into())
    }
}
