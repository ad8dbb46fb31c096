//! What the work queue can fail with.

use dcb_core::StoreError;

use super::job::JobId;
use crate::error::DatabaseError;
use crate::migrations::MigrationError;

/// What the work queue can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The worker no longer owns this attempt of the job: its lease expired
    /// and another worker claimed the job, or the job was cancelled. Nothing
    /// was changed.
    #[error("job {job_id} attempt {attempt}: lease lost (another worker owns the job, or it was cancelled or finished); nothing changed")]
    LeaseLost {
        /// The job.
        job_id: JobId,
        /// The attempt the caller held.
        attempt: u32,
    },
    /// A payload could not be encoded as JSON.
    #[error("job payload does not serialize: {0}")]
    Payload(#[source] serde_json::Error),
    /// A job holds something PostgreSQL cannot store (a NUL character in
    /// its kind, queue, dedupe key or payload, or an over-long key); the
    /// message names the field. Nothing was enqueued.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// The queue or its workers were configured wrongly (a bad schema name,
    /// no processor registered...).
    #[error("invalid work queue configuration: {0}")]
    InvalidConfig(String),
    /// A stored row does not make sense.
    #[error("work queue table holds an unexpected value: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("work queue database error: {0}")]
    Database(#[from] DatabaseError),
    /// Creating or upgrading the queue's tables failed.
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QueueError {
    /// Whether this is a lost lease.
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, QueueError::LeaseLost { .. })
    }

    /// Whether doing the same again may succeed: an outage (of the
    /// database or the event store) or a transient database failure. A lost
    /// lease, a bad job or a bad configuration fail again.
    pub fn is_retryable(&self) -> bool {
        match self {
            QueueError::Database(e) => e.is_retryable(),
            QueueError::Migration(e) => e.is_retryable(),
            QueueError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// Whether the database (or the event store) could not be reached.
    pub fn is_unavailable(&self) -> bool {
        match self {
            QueueError::Database(e) => e.is_unavailable(),
            QueueError::Migration(e) => e.is_unavailable(),
            QueueError::Store(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for QueueError {
    fn from(error: sqlx::Error) -> Self {
        QueueError::Database(error.into())
    }
}
