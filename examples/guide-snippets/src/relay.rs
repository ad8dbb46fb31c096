//! The relay: reservations out to a Kafka topic, in log order (chapter "The
//! relay to Kafka").

use dcb_core::Query;
use dcb_kafka::{EventRelay, KafkaConfig, KafkaError, RelayHandle, Route};
use dcb_postgres::PgEventStore;

use crate::domain::{ConcertEvent, ConcertEventTag};

/// Starts the relay named `name`: every concert event goes to `topic`,
/// keyed by the concert (so one concert's events stay in one partition, in
/// position order). The relay's checkpoint and lease live in the store's
/// schema under `name`: a restart goes on from the checkpoint, and only one
/// instance per name publishes at a time.
///
/// # Errors
/// [`KafkaError::BrokerUnreachable`] when no broker answers; database
/// errors.
pub async fn start_relay(
    store: &PgEventStore,
    kafka: KafkaConfig,
    name: &str,
    topic: &str,
) -> Result<RelayHandle, KafkaError> {
    EventRelay::new(name, kafka)
        .route(
            Route::new(Query::of::<ConcertEvent>(), topic).key_tag(ConcertEventTag::Concert.key()),
        )
        .start(store)
        .await
}
