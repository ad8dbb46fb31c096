//! An idempotent producer (`acks=all`), and its transactional variant.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use tracing::Instrument;

use crate::{check_reachable, trace, KafkaConfig, KafkaError, OutgoingMessage};

/// How long `send` waits for room in the client's local queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes messages and waits for the broker's acknowledgement.
///
/// The producer is idempotent (`enable.idempotence=true`, `acks=all`, both
/// forced): the client's own retries never write a message twice or out of
/// order within a partition. A message that is not acknowledged within
/// `message.timeout.ms` (default here 30 s, passed through if set) fails with
/// [`KafkaError::Delivery`]; the caller decides whether to retry. Idempotence
/// covers the client's retries only: a caller that sends again after a
/// failure may write a second copy (consumers dedupe on a key or header).
///
/// When the client reports a fatal error, or a message fails in a way that
/// may leave the client wedged (not acknowledged in time, or refused for its
/// producer id or epoch), the client is replaced by a new one (with a new
/// producer id) for the next send. A broker that lost its producer-id state
/// (a restart without durable storage, e.g. tansu with memory storage)
/// answers `UNKNOWN_PRODUCER_ID` to every epoch the client bumps to locally,
/// and the client retries that until each message times out, for good; such
/// a broker also hands the old client's producer id to a new client, and the
/// old one is then fenced. Replacing the client costs nothing in guarantees:
/// idempotence spans one client, and the caller of a failed send may write a
/// second copy anyway. The client reconnects to brokers that come back by
/// itself.
///
/// ```no_run
/// # async fn example() -> Result<(), dcb_kafka::KafkaError> {
/// use dcb_kafka::{KafkaConfig, OutgoingMessage, Publisher};
/// let publisher = Publisher::connect(&KafkaConfig::new("127.0.0.1:9092")).await?;
/// let (partition, offset) = publisher
///     .send(OutgoingMessage::new("carts").key("c1").payload(r#"{"cart":"c1"}"#))
///     .await?;
/// println!("stored at {partition}/{offset}");
/// # Ok(()) }
/// ```
pub struct Publisher {
    config: KafkaConfig,
    client_config: ClientConfig,
    producer: RwLock<FutureProducer>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("brokers", &self.config.brokers())
            .finish_non_exhaustive()
    }
}

const PRODUCER_DEFAULTS: &[(&str, &str)] = &[("message.timeout.ms", "30000")];
const PRODUCER_FORCED: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

impl Publisher {
    /// An idempotent producer. Does not contact the brokers (so a process
    /// can start while they are down); see [`Publisher::connect`].
    ///
    /// # Errors
    /// [`KafkaError::Config`] when librdkafka refuses the options.
    pub fn new(config: &KafkaConfig) -> Result<Publisher, KafkaError> {
        let client_config = config.client_config(PRODUCER_DEFAULTS, PRODUCER_FORCED);
        let producer = create(&client_config)?;
        Ok(Publisher {
            config: config.clone(),
            client_config,
            producer: RwLock::new(producer),
        })
    }

    /// [`Publisher::new`], then checks that a broker answers.
    ///
    /// # Errors
    /// [`KafkaError::BrokerUnreachable`] when none answers within the
    /// configured start-up timeout.
    pub async fn connect(config: &KafkaConfig) -> Result<Publisher, KafkaError> {
        let publisher = Publisher::new(config)?;
        check_reachable(config).await?;
        Ok(publisher)
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Sends `message` and waits until the broker acknowledged it (all
    /// in-sync replicas); returns its partition and offset.
    ///
    /// # Errors
    /// [`KafkaError::Delivery`] when it was not acknowledged in time or was
    /// refused.
    ///
    /// The message carries the W3C trace context of its `send` span (a child
    /// of the current span) in `traceparent`/`tracestate` headers, unless
    /// it has a `traceparent` header of its own.
    pub async fn send(&self, mut message: OutgoingMessage) -> Result<(i32, i64), KafkaError> {
        let producer = self.producer();
        let span = trace::send_span(&message.topic, key_str(&message), None);
        add_trace_headers(&mut message, &span);
        let result = send_with(&producer, &message)
            .instrument(span.clone())
            .await;
        trace::record_delivery(&span, result.as_ref().copied());
        if let Err(error) = &result {
            if let Some((code, reason)) = producer.client().fatal_error() {
                self.replace(producer, &format!("fatal error {code:?}: {reason}"));
            } else if wedges_the_client(error) {
                self.replace(producer, &error.to_string());
            }
        }
        result
    }

    /// Puts a new client in place of `failed`, unless another send did so
    /// already (concurrent sends that fail on one client replace it once).
    fn replace(&self, failed: FutureProducer, why: &str) {
        let mut current = self.producer.write().unwrap_or_else(|p| p.into_inner());
        if current.client().native_ptr() != failed.client().native_ptr() {
            return;
        }
        match create(&self.client_config) {
            Ok(fresh) => {
                tracing::warn!(reason = %why, "replacing the producer client");
                let old = std::mem::replace(&mut *current, fresh);
                drop(current);
                // Destroying a client waits for its threads, which may be
                // talking to a broker that is gone: not on an async thread.
                std::thread::spawn(move || drop((old, failed)));
            }
            Err(error) => {
                tracing::error!(%error, reason = %why, "cannot create a new producer client; keeping the old one");
            }
        }
    }

    /// Waits until every message sent so far is acknowledged or failed.
    ///
    /// # Errors
    /// A timeout.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| KafkaError::Config(format!("flush task failed: {e}")))??;
        Ok(())
    }

    fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The message's key as text, when it is UTF-8.
fn key_str(message: &OutgoingMessage) -> Option<&str> {
    message
        .key
        .as_deref()
        .and_then(|k| std::str::from_utf8(k).ok())
}

/// Adds the trace context of `span` to `message`, unless it has one.
fn add_trace_headers(message: &mut OutgoingMessage, span: &tracing::Span) {
    if message
        .headers
        .iter()
        .any(|(name, _)| name == trace::HEADER_TRACEPARENT)
    {
        return;
    }
    let context = dcb_core::trace::context_of(span);
    trace::each_header(context.as_ref(), |name, value| {
        message.headers.push((name.to_owned(), value.to_vec()));
    });
}

/// Whether a failed send may have left the idempotent client in a state it
/// does not leave by itself (see [`Publisher`]).
fn wedges_the_client(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let KafkaError::Delivery {
        source: rdkafka::error::KafkaError::MessageProduction(code),
        ..
    } = error
    else {
        return false;
    };
    matches!(
        code,
        Code::MessageTimedOut
            | Code::UnknownProducerId
            | Code::ProducerFenced
            | Code::InvalidProducerEpoch
            | Code::InvalidProducerIdMapping
            | Code::OutOfOrderSequenceNumber
    )
}

fn create(config: &ClientConfig) -> Result<FutureProducer, KafkaError> {
    config
        .create()
        .map_err(|e| KafkaError::Config(e.to_string()))
}

pub(crate) async fn send_with(
    producer: &FutureProducer,
    message: &OutgoingMessage,
) -> Result<(i32, i64), KafkaError> {
    match producer
        .send(record(message), Timeout::After(QUEUE_TIMEOUT))
        .await
    {
        Ok(delivery) => Ok((delivery.partition, delivery.offset)),
        Err((source, _)) => Err(KafkaError::Delivery {
            topic: message.topic.clone(),
            source,
        }),
    }
}

/// Hands `message` to the producer without waiting for the broker.
fn enqueue(
    producer: &FutureProducer,
    message: &OutgoingMessage,
) -> Result<DeliveryFuture, KafkaError> {
    producer
        .send_result(record(message))
        .map_err(|(source, _)| KafkaError::Delivery {
            topic: message.topic.clone(),
            source,
        })
}

/// Waits for the broker's answer to a message handed over by [`enqueue`].
async fn delivered(topic: &str, delivery: DeliveryFuture) -> Result<(i32, i64), KafkaError> {
    match delivery.await {
        Ok(Ok(d)) => Ok((d.partition, d.offset)),
        Ok(Err((source, _))) => Err(KafkaError::Delivery {
            topic: topic.to_owned(),
            source,
        }),
        Err(_) => Err(KafkaError::Delivery {
            topic: topic.to_owned(),
            source: rdkafka::error::KafkaError::Canceled,
        }),
    }
}

fn record(message: &OutgoingMessage) -> FutureRecord<'_, [u8], [u8]> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&message.topic);
    if let Some(key) = &message.key {
        record = record.key(key.as_slice());
    }
    if let Some(payload) = &message.payload {
        record = record.payload(payload.as_slice());
    }
    if !message.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (name, value) in &message.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_slice()),
            });
        }
        record = record.headers(headers);
    }
    record
}

/// A transactional producer: a batch of messages becomes visible to
/// `read_committed` consumers all together or not at all.
///
/// Give each worker a **stable** `transactional.id` (e.g. `"<service>-<worker
/// index>"`, not a random one): when a worker restarts with the same id,
/// `init_transactions` fences the previous incarnation (a zombie can no longer
/// commit) and aborts the transaction it left open.
///
/// What it buys: atomic multi-message (and multi-partition) publication, and
/// zombie fencing. What it does **not** buy: exactly-once between Postgres and
/// Kafka. The commit to Kafka and the success event in Postgres are two
/// systems; a crash between them publishes the batch and leaves the job to
/// run again, which publishes it again in a new transaction. Consumers still
/// dedupe (on a key or header) — transactions only spare them partial
/// batches. Brokers without transaction support (tansu 0.6) fail at
/// `init_transactions`.
///
/// The blocking librdkafka calls (`init`, `begin`, `commit`, `abort`) run on
/// Tokio's blocking pool, never on the async worker threads.
pub struct TransactionalPublisher {
    producer: FutureProducer,
    timeout: Duration,
    lock: tokio::sync::Mutex<()>,
    /// The last transaction was aborted.
    aborted: AtomicBool,
}

impl std::fmt::Debug for TransactionalPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalPublisher")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TransactionalPublisher {
    /// A transactional producer with `transactional_id`, initialised (which
    /// fences earlier producers with the same id).
    ///
    /// # Errors
    /// [`KafkaError::Transaction`] when the broker refuses (or does not
    /// support) transactions; [`KafkaError::BrokerUnreachable`] when no
    /// broker answers.
    pub async fn new(
        config: &KafkaConfig,
        transactional_id: impl Into<String>,
    ) -> Result<TransactionalPublisher, KafkaError> {
        let id = transactional_id.into();
        let mut forced = PRODUCER_FORCED.to_vec();
        forced.push(("transactional.id", &id));
        let producer = create(&config.client_config(PRODUCER_DEFAULTS, &forced))?;
        check_reachable(config).await?;
        let timeout = config.startup_timeout().max(Duration::from_secs(10));
        let p = producer.clone();
        blocking(move || p.init_transactions(timeout)).await?;
        Ok(TransactionalPublisher {
            producer,
            timeout,
            lock: tokio::sync::Mutex::new(()),
            aborted: AtomicBool::new(false),
        })
    }

    /// Publishes `messages` in one transaction; returns each one's partition
    /// and offset once the transaction committed. On any failure the
    /// transaction is aborted and nothing becomes visible to
    /// `read_committed` consumers.
    ///
    /// # Errors
    /// [`KafkaError::Delivery`] or [`KafkaError::Transaction`].
    pub async fn send_all(
        &self,
        messages: &[OutgoingMessage],
    ) -> Result<Vec<(i32, i64)>, KafkaError> {
        let _one_at_a_time = self.lock.lock().await;
        let span = tracing::info_span!(
            "dcb.kafka.publish_transaction",
            "otel.name" = "send",
            "otel.kind" = "producer",
            "messaging.system" = "kafka",
            "messaging.operation.type" = "send",
            "messaging.operation.name" = "send",
            "messaging.batch.message_count" = messages.len(),
            messages = messages.len(),
        );
        // Every message of the transaction carries the transaction span's
        // context (unless it has its own).
        let traced: Vec<OutgoingMessage>;
        let messages = match dcb_core::trace::context_of(&span) {
            Some(_) => {
                traced = messages
                    .iter()
                    .cloned()
                    .map(|mut m| {
                        add_trace_headers(&mut m, &span);
                        m
                    })
                    .collect();
                &traced[..]
            }
            None => messages,
        };
        async {
            let after_abort = self.aborted.swap(false, Ordering::SeqCst);
            match self.transaction(messages).await {
                // Right after an aborted transaction, the producer renews its
                // epoch and purges what was queued meanwhile: the first batch
                // then fails without reaching the broker. Once more.
                Err(e) if after_abort && is_purged(&e) => self.transaction(messages).await,
                other => other,
            }
        }
        .instrument(span)
        .await
    }

    async fn transaction(
        &self,
        messages: &[OutgoingMessage],
    ) -> Result<Vec<(i32, i64)>, KafkaError> {
        let p = self.producer.clone();
        blocking(move || p.begin_transaction()).await?;
        // Every message is handed over first (the producer keeps their
        // order per partition), then every answer awaited.
        let mut pending = Vec::with_capacity(messages.len());
        let mut failure = None;
        for message in messages {
            match enqueue(&self.producer, message) {
                Ok(delivery) => pending.push((message.topic.as_str(), delivery)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut deliveries = Vec::with_capacity(pending.len());
        for (topic, delivery) in pending {
            match delivered(topic, delivery).await {
                Ok(d) => deliveries.push(d),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let timeout = self.timeout;
        let p = self.producer.clone();
        let result = match failure {
            None => blocking(move || p.commit_transaction(timeout)).await,
            Some(e) => Err(e),
        };
        match result {
            Ok(()) => Ok(deliveries),
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    async fn abort(&self) {
        let timeout = self.timeout;
        let p = self.producer.clone();
        if let Err(error) = blocking(move || p.abort_transaction(timeout)).await {
            tracing::warn!(%error, "aborting the transaction failed");
        }
        self.aborted.store(true, Ordering::SeqCst);
    }
}

async fn blocking<F>(f: F) -> Result<(), KafkaError>
where
    F: FnOnce() -> rdkafka::error::KafkaResult<()> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KafkaError::Transaction(format!("task failed: {e}")))?
        .map_err(|e| KafkaError::Transaction(e.to_string()))
}

/// Whether a message was purged from the producer's queue before it was sent.
fn is_purged(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::Delivery {
            source: rdkafka::error::KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::PurgeQueue
            ),
            ..
        }
    )
}
