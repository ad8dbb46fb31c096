//! Concerts scheduled elsewhere come in from a Kafka topic, each message
//! becoming a [`Schedule`] decision (chapter "A translator from Kafka").

use dcb_kafka::{
    KafkaConfig, KafkaError, KafkaMessage, Translator, TranslatorHandle, TranslatorRunner,
};
use dcb_postgres::PgEventStore;
use serde::Deserialize;

use crate::domain::Schedule;

/// A message of the topic: `{"concert": "c1", "seats": 100}`.
#[derive(Debug, Deserialize)]
struct ScheduledMessage {
    concert: String,
    seats: u32,
}

/// Turns each message of its topic into a [`Schedule`].
pub struct ScheduleFromKafka {
    /// The topic it reads.
    pub topic: String,
}

impl Translator for ScheduleFromKafka {
    type Decision = Schedule;

    fn topic(&self) -> &str {
        &self.topic
    }

    fn translate(&self, message: &KafkaMessage<'_>) -> Result<Schedule, String> {
        let m: ScheduledMessage = message.json()?;
        if m.seats == 0 {
            return Err(format!("concert {} has no seats", m.concert));
        }
        Ok(Schedule {
            concert: m.concert,
            seats: m.seats,
        })
    }
}

/// Starts a translator group `group` reading `topic` into `store`.
///
/// # Errors
/// [`KafkaError::BrokerUnreachable`] when no broker answers; database
/// errors.
pub async fn start_translator(
    store: PgEventStore,
    kafka: KafkaConfig,
    group: &str,
    topic: &str,
) -> Result<TranslatorHandle, KafkaError> {
    TranslatorRunner::new(kafka, group, store)
        .add(ScheduleFromKafka {
            topic: topic.to_owned(),
        })
        .start()
        .await
}
