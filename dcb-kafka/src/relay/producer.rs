//! The relay's producer, and its replacement after a failure.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};

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

/// The relay's producer: librdkafka's, with its own polling thread, telling
/// each delivery to a [`Deliveries`] rather than to one future per message
/// (which cost an allocation and a wake-up per message).
pub(crate) type RelayProducer = ThreadedProducer<DeliveryContext>;

/// What the broker answered for the messages of one producer, by sequence
/// number: each message is sent with the next number as its opaque value,
/// and its slot (number modulo the capacity) says pending, delivered or
/// failed. The pipeline keeps fewer messages in flight than the capacity and
/// resets a slot when it takes the answer, so a slot is never reused while
/// its message is in flight. A producer serves one lead only (every lead
/// that does not end the relay replaces it), so no answer of an earlier
/// lead can be taken for a message of a later one.
pub(crate) struct Deliveries {
    slots: Box<[AtomicU8]>,
    /// Failed messages' errors, by sequence number (rare).
    errors: Mutex<Vec<(u64, rdkafka::error::KafkaError)>>,
    /// Woken on every answer.
    pub(crate) answered: tokio::sync::Notify,
}

/// The state of one slot of [`Deliveries`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    Pending,
    Delivered,
    Failed,
}

const PENDING: u8 = 0;
const DELIVERED: u8 = 1;
const FAILED: u8 = 2;

impl Deliveries {
    pub(crate) fn new(capacity: usize) -> Self {
        Deliveries {
            slots: (0..capacity.max(1))
                .map(|_| AtomicU8::new(PENDING))
                .collect(),
            errors: Mutex::new(Vec::new()),
            answered: tokio::sync::Notify::new(),
        }
    }

    fn slot(&self, seq: u64) -> &AtomicU8 {
        &self.slots[(seq % self.slots.len() as u64) as usize]
    }

    /// The answer for message `seq`, if there is one yet.
    pub(crate) fn get(&self, seq: u64) -> Delivery {
        match self.slot(seq).load(Ordering::Acquire) {
            DELIVERED => Delivery::Delivered,
            FAILED => Delivery::Failed,
            _ => Delivery::Pending,
        }
    }

    /// Frees the slot of message `seq` (answered and taken).
    pub(crate) fn reset(&self, seq: u64) {
        self.slot(seq).store(PENDING, Ordering::Relaxed);
    }

    /// The error message `seq` failed with.
    pub(crate) fn error(&self, seq: u64) -> rdkafka::error::KafkaError {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, e)| e.clone())
            .unwrap_or(rdkafka::error::KafkaError::Canceled)
    }

    /// Records the broker's answer for message `seq` (`None`: delivered).
    pub(crate) fn answer(&self, seq: u64, error: Option<rdkafka::error::KafkaError>) {
        let state = match error {
            None => DELIVERED,
            Some(error) => {
                self.errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((seq, error));
                FAILED
            }
        };
        self.slot(seq).store(state, Ordering::Release);
        self.answered.notify_one();
    }
}

/// The producer's context: hands each delivery report to its
/// [`Deliveries`].
#[derive(Clone)]
pub(crate) struct DeliveryContext(Arc<Deliveries>);

impl DeliveryContext {
    pub(crate) fn deliveries(&self) -> &Arc<Deliveries> {
        &self.0
    }
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        self.0
            .answer(seq as u64, result.as_ref().err().map(|(e, _)| e.clone()));
    }
}

/// The producer in use, replaced by a new one (a new producer id) after a
/// failure.
pub(crate) struct Slot {
    config: ClientConfig,
    /// Messages one producer may have in flight at once.
    capacity: usize,
    current: Mutex<Arc<RelayProducer>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl Slot {
    /// A producer for up to `capacity` messages in flight.
    pub(crate) fn new(kafka: &KafkaConfig, capacity: usize) -> Result<Self, KafkaError> {
        let config = kafka.client_config(DEFAULTS, FORCED);
        let producer = create(&config, capacity)?;
        Ok(Slot {
            config,
            capacity,
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

    pub(crate) fn current(&self) -> Arc<RelayProducer> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Drops every message the current producer still holds (none of them
    /// may land after the pipeline starts again), and puts a new producer
    /// in its place.
    pub(crate) fn replace(&self) {
        let fresh = match create(&self.config, self.capacity) {
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
    producer: &Arc<RelayProducer>,
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

fn create(config: &ClientConfig, capacity: usize) -> Result<Arc<RelayProducer>, KafkaError> {
    let context = DeliveryContext(Arc::new(Deliveries::new(capacity)));
    config
        .create_with_context(context)
        .map(Arc::new)
        .map_err(|e| KafkaError::Config(e.to_string()))
}
