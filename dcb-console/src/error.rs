//! [`Error`]: what the command and the console report.

use dcb_core::StoreError;
use dcb_kafka::KafkaError;
use dcb_postgres::listener::ListenerError;
use dcb_postgres::queue::QueueError;

use crate::ops::OpenError;

/// What an operator's action or read can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The event store failed.
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    /// A statement failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The listeners' operators' API failed (an unknown listener, a failed
    /// request...).
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The work queue's operators' API failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// What was asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request makes no sense (says why).
    #[error("{0}")]
    Invalid(String),
}
