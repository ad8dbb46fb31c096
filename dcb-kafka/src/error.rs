//! The crate's error type.

use dcb_core::StoreError;
use rdkafka::types::RDKafkaErrorCode as Code;

/// What the Kafka components can fail with.
///
/// Every variant says whether trying again can help
/// ([`KafkaError::is_retryable`]) and whether it means a broker or the
/// database could not be reached ([`KafkaError::is_unavailable`]), the way
/// [`StoreError`] does.
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
    /// The database (dead-letter records, relay checkpoints, migrations)
    /// failed; [`KafkaError::is_unavailable`] tells an outage from a
    /// statement the database refused.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A wait did not see what it waited for in time.
    #[error("timed out: {0}")]
    TimedOut(String),
    /// The component is shut down.
    #[error("the Kafka component is shut down")]
    ShutDown,
}

impl KafkaError {
    /// Whether this error says the brokers could not be reached at start-up.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, KafkaError::BrokerUnreachable { .. })
    }

    /// Whether a broker or the database could not be reached (or the
    /// connection broke), as opposed to a request that was refused.
    ///
    /// ```
    /// use dcb_kafka::KafkaError;
    /// let e = KafkaError::BrokerUnreachable { brokers: "b:9092".into(), reason: "refused".into() };
    /// assert!(e.is_unavailable() && e.is_retryable());
    /// assert!(!KafkaError::Config("bad option".into()).is_retryable());
    /// ```
    pub fn is_unavailable(&self) -> bool {
        match self {
            KafkaError::BrokerUnreachable { .. } => true,
            KafkaError::Delivery { source, .. } | KafkaError::Client(source) => {
                source.rdkafka_error_code().is_some_and(is_unreachable_code)
            }
            KafkaError::Store(e) => matches!(e, StoreError::Unavailable { .. }),
            KafkaError::Database(e) => is_database_unavailable(e),
            _ => false,
        }
    }

    /// Whether trying the same operation again later may succeed: outages,
    /// timeouts and transient broker answers yes; a refused configuration, a
    /// message the broker can never take, a statement the database refuses,
    /// or a shut-down component no.
    pub fn is_retryable(&self) -> bool {
        match self {
            KafkaError::BrokerUnreachable { .. }
            | KafkaError::Transaction(_)
            | KafkaError::TimedOut(_) => true,
            KafkaError::Config(_) | KafkaError::ShutDown => false,
            KafkaError::Delivery { source, .. } | KafkaError::Client(source) => {
                !source.rdkafka_error_code().is_some_and(is_permanent_code)
            }
            KafkaError::Store(e) => e.is_retryable(),
            KafkaError::Database(e) => is_database_unavailable(e),
        }
    }
}

/// Broker answers that say a message can never be taken as it is.
pub(crate) fn is_permanent_code(code: Code) -> bool {
    matches!(
        code,
        Code::MessageSizeTooLarge
            | Code::InvalidMessageSize
            | Code::InvalidRecord
            | Code::InvalidMessage
            | Code::InvalidArgument
            | Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::InvalidTopic
            | Code::UnsupportedVersion
            | Code::UnsupportedForMessageFormat
            | Code::InvalidConfig
            | Code::InvalidRequiredAcks
    )
}

fn is_unreachable_code(code: Code) -> bool {
    matches!(
        code,
        Code::AllBrokersDown
            | Code::BrokerTransportFailure
            | Code::Resolve
            | Code::MessageTimedOut
            | Code::RequestTimedOut
            | Code::OperationTimedOut
            | Code::NetworkException
            | Code::BrokerNotAvailable
            | Code::LeaderNotAvailable
            | Code::NotLeaderForPartition
    )
}

/// Whether a database error means PostgreSQL could not be reached or the
/// connection broke (SQLSTATE class 08, server shutdown, too many
/// connections), as opposed to a statement it refused.
pub(crate) fn is_database_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let delivery = |code| KafkaError::Delivery {
            topic: "t".into(),
            source: rdkafka::error::KafkaError::MessageProduction(code),
        };
        assert!(delivery(Code::MessageTimedOut).is_retryable());
        assert!(delivery(Code::MessageTimedOut).is_unavailable());
        assert!(!delivery(Code::MessageSizeTooLarge).is_retryable());
        assert!(!delivery(Code::MessageSizeTooLarge).is_unavailable());
        assert!(KafkaError::Database(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(!KafkaError::Database(sqlx::Error::RowNotFound).is_retryable());
        assert!(!KafkaError::ShutDown.is_retryable());
        assert!(!KafkaError::Store(StoreError::ShutDown).is_unavailable());
    }
}
