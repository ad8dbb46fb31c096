//! The crate's error type.

use dcb_core::StoreError;

/// What the Kafka components can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// No broker answered within the start-up timeout.
    #[error(
        "cannot reach the Kafka brokers at {brokers}: {reason}; check the bootstrap address \
         and that a broker is running (for tests: scripts/tansu.sh start)"
    )]
    BrokerUnreachable {
        /// The configured bootstrap brokers.
        brokers: String,
        /// What the client reported.
        reason: String,
    },
    /// The client configuration was refused (an unknown option or a bad
    /// value), or the component was set up wrongly.
    #[error("invalid Kafka configuration: {0}")]
    Config(String),
    /// The broker did not acknowledge a message (timed out, refused, or the
    /// producer failed).
    #[error("message to topic {topic} was not delivered: {source}")]
    Delivery {
        /// The topic.
        topic: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A transaction of a transactional publisher failed.
    #[error("Kafka transaction failed: {0}")]
    Transaction(String),
    /// Any other client error.
    #[error("Kafka client error: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database (dead-letter records, migrations) failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The listener runner behind the relay failed.
    #[error(transparent)]
    Listener(#[from] dcb_postgres::listener::ListenerError),
    /// The component is shut down.
    #[error("the Kafka component is shut down")]
    ShutDown,
}

impl KafkaError {
    /// Whether this error says the brokers could not be reached.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, KafkaError::BrokerUnreachable { .. })
    }
}
