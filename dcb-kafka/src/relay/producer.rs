//! The relay's producer, and its replacement after a failure.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer, PurgeConfig};
use rdkafka::ClientConfig;

use crate::{KafkaConfig, KafkaError};

/// Settings the relay's guarantees rest on (see [`EventRelay`](crate::EventRelay)):
/// an idempotent producer keeps each partition's order with up to five
/// requests in flight; with the gapless guarantee, any error that would let
/// a later message of a partition land after an earlier one failed is fatal
/// to the producer (every later message fails too); and without a local
/// message timeout (which that guarantee does not cover) no message is given
/// up while later ones go on: the relay's own send timeout stops the whole
/// producer instead.
const FORCED: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("enable.gapless.guarantee", "true"),
    ("max.in.flight.requests.per.connection", "5"),
    ("message.timeout.ms", "0"),
];

/// Defaults a [`KafkaConfig`] option overrides: a batch waits at most 1 ms
/// for more messages (librdkafka's 5 ms is latency a relay at a few thousand
/// events/s pays on every event; under load the five requests in flight fill
/// batches anyway).
const DEFAULTS: &[(&str, &str)] = &[("linger.ms", "1")];

/// The producer in use, replaced by a new one (a new producer id) after a
/// failure.
pub(crate) struct Slot {
    config: ClientConfig,
    current: Mutex<FutureProducer>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl Slot {
    pub(crate) fn new(kafka: &KafkaConfig) -> Result<Self, KafkaError> {
        let config = kafka.client_config(DEFAULTS, FORCED);
        let producer = create(&config)?;
        Ok(Slot {
            config,
            current: Mutex::new(producer),
        })
    }

    /// Fails like [`crate::check_reachable`] when no broker answers; warms
    /// the producer up (see [`warm_up`]) when one does.
    pub(crate) async fn connect(&self, kafka: &KafkaConfig, topic: &str) -> Result<(), KafkaError> {
        warm_up(&self.current(), topic, kafka.startup_timeout())
            .await
            .map_err(|reason| KafkaError::BrokerUnreachable {
                brokers: kafka.brokers().to_owned(),
                reason,
            })
    }

    pub(crate) fn current(&self) -> FutureProducer {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Drops every message the current producer still holds (none of them
    /// may land after the pipeline starts again), and puts a new producer
    /// in its place.
    pub(crate) fn replace(&self) {
        let fresh = match create(&self.config) {
            Ok(p) => p,
            Err(error) => {
                tracing::error!(%error, "cannot create a new producer; keeping the old one");
                self.current()
                    .purge(PurgeConfig::default().queue().inflight());
                return;
            }
        };
        let old = std::mem::replace(
            &mut *self.current.lock().unwrap_or_else(|p| p.into_inner()),
            fresh,
        );
        old.purge(PurgeConfig::default().queue().inflight());
        // Destroying a client waits for its threads, which may be talking to
        // a broker that is gone: not on an async thread.
        std::thread::spawn(move || drop(old));
    }
}

/// Gets a new producer ready to send: connected, with `topic`'s metadata
/// and its producer id asked for; the error says no broker answered within
/// `timeout`.
///
/// An idempotent producer sends nothing before the broker gave it a
/// producer id. librdkafka asks for one when a metadata answer arrives
/// while a broker is connected, or on a 500 ms timer otherwise; but its
/// first connection (to the bootstrap address) is dropped as soon as the
/// broker's own id is known, and the next one is only opened when
/// something needs it, so a new producer usually waited one or two turns
/// of that timer (0.5 to 1 s) before its first message went out. Two
/// metadata requests: the first learns the broker, the second opens the
/// connection to it, and its answer starts the request for the producer id
/// at once.
pub(crate) async fn warm_up(
    producer: &FutureProducer,
    topic: &str,
    timeout: Duration,
) -> Result<(), String> {
    let producer = producer.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        for _ in 0..2 {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await
    .map_err(|e| format!("the warm-up task failed: {e}"))?
}

fn create(config: &ClientConfig) -> Result<FutureProducer, KafkaError> {
    config
        .create()
        .map_err(|e| KafkaError::Config(e.to_string()))
}
