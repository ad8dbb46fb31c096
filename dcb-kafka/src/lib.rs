#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod config;
mod error;
mod message;
mod processor;
mod publisher;
mod relay;
pub mod sql;
mod trace;
mod translator;

pub use config::{KafkaConfig, BROKERS_ENV};
pub use error::KafkaError;
pub use message::{DeadKind, DeadMessage, KafkaMessage, OutgoingMessage};
pub use processor::{Delivered, PublishJob, PublishProcessor};
pub use publisher::{Publisher, TransactionalPublisher};
pub use relay::{
    EventRelay, RelayConfig, RelayHandle, RelayStatus, Route, HEADER_CE_ID, HEADER_CE_SOURCE,
    HEADER_CE_SPECVERSION, HEADER_CE_TIME, HEADER_CE_TYPE, HEADER_EVENT_ID, HEADER_EVENT_TYPE,
    HEADER_POSITION, HEADER_TAGS,
};
pub use trace::{trace_context, HEADER_TRACEPARENT, HEADER_TRACESTATE};
pub use translator::{
    dead_messages, offset_key, record_key, Translator, TranslatorHandle, TranslatorRunner,
    TranslatorStats,
};

// The one backoff of dcb, used between attempts (translators, relay
// restarts).
pub(crate) use dcb_core::Backoff;

/// Re-export of the `rdkafka` version this crate uses (for the mock cluster
/// in tests, and for options typed by rdkafka).
pub use rdkafka;

/// Checks that a broker of `config` answers a metadata request within the
/// configured start-up timeout.
///
/// # Errors
/// [`KafkaError::BrokerUnreachable`] when none does; [`KafkaError::Config`]
/// for options librdkafka refuses.
pub async fn check_reachable(config: &KafkaConfig) -> Result<(), KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client_config = config.client_config(&[], &[]);
    let timeout = config.startup_timeout();
    let brokers = config.brokers().to_owned();
    let span = tracing::debug_span!("dcb.kafka.check_reachable", %brokers);
    let task = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_config
            .create()
            .map_err(|e| KafkaError::Config(e.to_string()))?;
        consumer
            .fetch_metadata(None, timeout)
            .map(|_| ())
            .map_err(|e| KafkaError::BrokerUnreachable {
                brokers: brokers.clone(),
                reason: e.to_string(),
            })
    });
    tracing::Instrument::instrument(task, span)
        .await
        .map_err(|e| KafkaError::Config(format!("connectivity check failed: {e}")))?
}
