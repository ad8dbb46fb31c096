//! Translators: a consumer group that turns each message of a topic into a
//! decision, with inbox dedupe and dead-letter records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dcb_core::runner::Backoff;
use dcb_core::{Decision, DecisionError, DecisionMaker, MakeOptions, StoreError};
use dcb_postgres::PgEventStore;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use sqlx::Row;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::message::{DeadKind, DeadMessage, KafkaMessage};
use crate::{check_reachable, sql, KafkaConfig, KafkaError};

/// Turns one message of a topic into a decision.
///
/// The runner makes the decision with an idempotency key
/// ([`Translator::idempotency_key`], by default the message's topic,
/// partition and offset), checked by the store in the same atomic append as
/// the decision's events, so a redelivered message changes nothing twice.
pub trait Translator: Send + Sync + 'static {
    /// The decision a message becomes.
    type Decision: Decision + Send + Sync + 'static;

    /// The topic this translator reads.
    fn topic(&self) -> &str;

    /// Decodes a message into a decision.
    ///
    /// # Errors
    /// The message cannot be decoded: it is recorded as dead with this
    /// reason and never retried.
    fn translate(&self, message: &KafkaMessage<'_>) -> Result<Self::Decision, String>;

    /// The idempotency key of the decision a message becomes. The default,
    /// [`offset_key`], dedupes redeliveries of one message; return something
    /// derived from the message key or payload to also dedupe a message the
    /// producer sent twice.
    fn idempotency_key(&self, message: &KafkaMessage<'_>) -> String {
        offset_key(message)
    }
}

/// `kafka:<topic>:<partition>:<offset>`: the default idempotency key.
///
/// ```
/// use dcb_kafka::{offset_key, KafkaMessage};
/// let m = KafkaMessage::new("orders", 2, 17, None, None);
/// assert_eq!(offset_key(&m), "kafka:orders:2:17");
/// ```
pub fn offset_key(message: &KafkaMessage<'_>) -> String {
    format!(
        "kafka:{}:{}:{}",
        message.topic, message.partition, message.offset
    )
}

/// What happened to one message.
enum Outcome {
    Decided { appended: usize, replayed: bool },
    Dead(DeadKind, String),
    Transient(String),
}

#[async_trait]
trait DynTranslator: Send + Sync {
    fn topic(&self) -> &str;
    async fn handle(
        &self,
        maker: &DecisionMaker<PgEventStore>,
        message: &KafkaMessage<'_>,
    ) -> Outcome;
}

struct Erased<T>(T);

#[async_trait]
impl<T: Translator> DynTranslator for Erased<T> {
    fn topic(&self) -> &str {
        self.0.topic()
    }

    async fn handle(
        &self,
        maker: &DecisionMaker<PgEventStore>,
        message: &KafkaMessage<'_>,
    ) -> Outcome {
        let decision = match self.0.translate(message) {
            Ok(decision) => decision,
            Err(reason) => return Outcome::Dead(DeadKind::Undecodable, reason),
        };
        let options = MakeOptions::idempotency_key(self.0.idempotency_key(message));
        match maker.make_with(&decision, options).await {
            Ok(decided) => Outcome::Decided {
                appended: if decided.replayed {
                    0
                } else {
                    decided.events.len()
                },
                replayed: decided.replayed,
            },
            Err(error) => classify(error),
        }
    }
}

fn classify<E: std::error::Error + 'static>(error: DecisionError<E>) -> Outcome {
    match error {
        DecisionError::Rejected(e) => Outcome::Dead(DeadKind::Rejected, e.to_string()),
        DecisionError::Conflict { .. } => Outcome::Transient(error.to_string()),
        DecisionError::Store(
            StoreError::ConditionFailed { .. }
            | StoreError::Unavailable { .. }
            | StoreError::Backend { .. }
            | StoreError::ShutDown,
        ) => Outcome::Transient(error.to_string()),
        other => Outcome::Dead(DeadKind::Failed, other.to_string()),
    }
}

/// Counters of a running translator group (this instance only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TranslatorStats {
    /// Messages received and finished (decided, deduped or recorded dead).
    pub messages: u64,
    /// Decisions that appended events.
    pub decided: u64,
    /// Messages whose decision had been made before (redeliveries).
    pub duplicates: u64,
    /// Decisions that appended nothing (the decision returned no events).
    pub unchanged: u64,
    /// Messages recorded as dead (undecodable, rejected or failed).
    pub dead: u64,
    /// Attempts that failed for a transient reason and were retried.
    pub retries: u64,
}

#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    decided: AtomicU64,
    duplicates: AtomicU64,
    unchanged: AtomicU64,
    dead: AtomicU64,
    retries: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> TranslatorStats {
        TranslatorStats {
            messages: self.messages.load(Ordering::Relaxed),
            decided: self.decided.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            unchanged: self.unchanged.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// Builds and starts a consumer group that runs [`Translator`]s.
///
/// - Offsets are stored only after a message's decision is durable (or its
///   dead record is), and committed from there (auto-commit of stored offsets,
///   and a synchronous commit at shutdown); after a crash, messages since the
///   last commit come again and their decisions are deduped.
/// - A message that does not decode, and a decision the domain rejects, are
///   recorded in `{schema}.kafka_dead_messages` with the reason, logged, and
///   the partition moves on.
/// - A decision that fails for a transient reason (a conflict that outlasted
///   the decision maker's retries, the database down) is retried with capped
///   exponential backoff; the partition waits meanwhile.
///
/// The consumer is configured with `enable.auto.commit=true`,
/// `enable.auto.offset.store=false` (these two are forced), and by default
/// `auto.offset.reset=earliest` and `auto.commit.interval.ms=1000`; every
/// other option of the [`KafkaConfig`] is passed through.
pub struct TranslatorRunner {
    config: KafkaConfig,
    group_id: String,
    store: PgEventStore,
    translators: Vec<Arc<dyn DynTranslator>>,
    backoff: Backoff,
}

impl std::fmt::Debug for TranslatorRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranslatorRunner")
            .field("brokers", &self.config.brokers())
            .field("group_id", &self.group_id)
            .field(
                "topics",
                &self
                    .translators
                    .iter()
                    .map(|t| t.topic())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl TranslatorRunner {
    /// A runner for consumer group `group_id`, deciding against `store` and
    /// keeping dead records in the store's schema.
    pub fn new(config: KafkaConfig, group_id: impl Into<String>, store: PgEventStore) -> Self {
        TranslatorRunner {
            config,
            group_id: group_id.into(),
            store,
            translators: Vec::new(),
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(30),
                multiplier: 2.0,
            },
        }
    }

    /// Adds a translator (one per topic).
    #[allow(clippy::should_implement_trait)] // a builder step, not arithmetic
    pub fn add<T: Translator>(mut self, translator: T) -> Self {
        self.translators.push(Arc::new(Erased(translator)));
        self
    }

    /// The backoff between attempts at a transiently failing decision
    /// (default 100 ms doubling up to 30 s).
    pub fn retry_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Creates the dead-letter table if needed, checks that the brokers
    /// answer, subscribes, and starts consuming in a background task.
    ///
    /// # Errors
    /// [`KafkaError::BrokerUnreachable`] when no broker answers within the
    /// configured start-up timeout; [`KafkaError::Config`] for no translator,
    /// two for one topic, or options librdkafka refuses; database errors.
    pub async fn start(self) -> Result<TranslatorHandle, KafkaError> {
        if self.translators.is_empty() {
            return Err(KafkaError::Config(
                "a translator runner needs at least one translator".into(),
            ));
        }
        let mut by_topic: HashMap<String, Arc<dyn DynTranslator>> = HashMap::new();
        for t in &self.translators {
            if by_topic.insert(t.topic().to_owned(), t.clone()).is_some() {
                return Err(KafkaError::Config(format!(
                    "two translators for topic {}",
                    t.topic()
                )));
            }
        }
        let pool = self.store.pool().clone();
        let schema = self.store.schema().to_owned();
        sql::migrate(&pool, &schema).await?;
        check_reachable(&self.config).await?;

        let consumer: StreamConsumer = self
            .config
            .client_config(
                &[
                    ("auto.offset.reset", "earliest"),
                    ("auto.commit.interval.ms", "1000"),
                ],
                &[
                    ("group.id", &self.group_id),
                    ("enable.auto.commit", "true"),
                    ("enable.auto.offset.store", "false"),
                ],
            )
            .create()
            .map_err(|e| KafkaError::Config(e.to_string()))?;
        let topics: Vec<&str> = by_topic.keys().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        tracing::info!(group = %self.group_id, ?topics, "translator group started");

        let counters = Arc::new(Counters::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let worker = Worker {
            consumer: Arc::new(consumer),
            translators: by_topic,
            maker: DecisionMaker::new(self.store.clone()),
            pool: pool.clone(),
            schema: schema.clone(),
            group_id: self.group_id.clone(),
            backoff: self.backoff,
            counters: counters.clone(),
            shutdown: shutdown_rx,
        };
        let span = tracing::info_span!("dcb.kafka.translators", group = %self.group_id);
        let task = tokio::spawn(worker.run().instrument(span));
        Ok(TranslatorHandle {
            group_id: self.group_id,
            pool,
            schema,
            counters,
            shutdown,
            task,
        })
    }
}

/// A running translator group.
#[derive(Debug)]
pub struct TranslatorHandle {
    group_id: String,
    pool: sqlx::PgPool,
    schema: String,
    counters: Arc<Counters>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

impl TranslatorHandle {
    /// The consumer group.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// This instance's counters.
    pub fn stats(&self) -> TranslatorStats {
        self.counters.snapshot()
    }

    /// Waits until this instance finished at least `messages` messages, or
    /// `timeout` passed; returns the counters either way.
    pub async fn wait_for_messages(&self, messages: u64, timeout: Duration) -> TranslatorStats {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if stats.messages >= messages || tokio::time::Instant::now() >= deadline {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The messages this group recorded as dead, oldest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn dead_messages(&self, limit: usize) -> Result<Vec<DeadMessage>, KafkaError> {
        dead_messages(&self.pool, &self.schema, &self.group_id, limit).await
    }

    /// Stops consuming after the message in hand, commits the stored
    /// offsets, and leaves the group.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "translator task failed");
        }
    }
}

/// The messages consumer group `group_id` recorded as dead in `schema`,
/// oldest first.
///
/// # Errors
/// Database errors.
pub async fn dead_messages(
    pool: &sqlx::PgPool,
    schema: &str,
    group_id: &str,
    limit: usize,
) -> Result<Vec<DeadMessage>, KafkaError> {
    let rows = sqlx::query(&sql::render(
        r#"SELECT topic, partition, "offset", key, payload, kind, reason, recorded_at
           FROM {schema}.kafka_dead_messages WHERE group_id = $1
           ORDER BY recorded_at, topic, partition, "offset" LIMIT $2"#,
        schema,
    ))
    .bind(group_id)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(DeadMessage {
                topic: row.try_get("topic")?,
                partition: row.try_get("partition")?,
                offset: row.try_get("offset")?,
                key: row.try_get("key")?,
                payload: row.try_get("payload")?,
                kind: DeadKind::parse(row.try_get::<&str, _>("kind")?),
                reason: row.try_get("reason")?,
                recorded_at: row.try_get("recorded_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(KafkaError::from)
}

struct Worker {
    consumer: Arc<StreamConsumer>,
    translators: HashMap<String, Arc<dyn DynTranslator>>,
    maker: DecisionMaker<PgEventStore>,
    pool: sqlx::PgPool,
    schema: String,
    group_id: String,
    backoff: Backoff,
    counters: Arc<Counters>,
    shutdown: watch::Receiver<bool>,
}

impl Worker {
    async fn run(mut self) {
        let consumer = self.consumer.clone();
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            let received = tokio::select! {
                _ = self.shutdown.changed() => break,
                m = consumer.recv() => m,
            };
            let message = match received {
                Ok(m) => m,
                Err(error) => {
                    tracing::warn!(%error, "consumer error; the client reconnects by itself");
                    tokio::select! {
                        _ = self.shutdown.changed() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue;
                }
            };
            let done = {
                let km = KafkaMessage::from_rdkafka(&message);
                let span = tracing::info_span!(
                    "dcb.kafka.translate",
                    topic = km.topic,
                    partition = km.partition,
                    offset = km.offset
                );
                self.process(&km).instrument(span).await
            };
            if !done {
                // Shutting down mid-retry: the offset stays, the message comes again.
                break;
            }
            if let Err(error) = consumer.store_offset_from_message(&message) {
                // E.g. the partition was revoked meanwhile: the new owner redelivers
                // and the decision is deduped.
                tracing::debug!(%error, "cannot store the offset");
            }
        }
        let c = consumer.clone();
        match tokio::task::spawn_blocking(move || c.commit_consumer_state(CommitMode::Sync)).await {
            Ok(Ok(())) => tracing::debug!("offsets committed at shutdown"),
            Ok(Err(error)) => tracing::debug!(%error, "nothing committed at shutdown"),
            Err(error) => tracing::warn!(%error, "commit task failed"),
        }
        consumer.unsubscribe();
        tracing::info!("translator group stopped");
    }

    /// Decides on one message, retrying transient failures; false when
    /// shutdown interrupted the retries.
    async fn process(&mut self, message: &KafkaMessage<'_>) -> bool {
        let Some(translator) = self.translators.get(message.topic).cloned() else {
            tracing::warn!("message from a topic without translator; skipped");
            self.counters.messages.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let reason = match translator.handle(&self.maker, message).await {
                Outcome::Decided { appended, replayed } => {
                    let counter = if replayed {
                        tracing::debug!("redelivered message: decision already made");
                        &self.counters.duplicates
                    } else if appended == 0 {
                        &self.counters.unchanged
                    } else {
                        tracing::debug!(appended, "decided");
                        &self.counters.decided
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    self.counters.messages.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Outcome::Dead(kind, reason) => match self.record_dead(message, kind, &reason).await
                {
                    Ok(()) => {
                        tracing::warn!(%kind, %reason, "message recorded as dead; moving on");
                        self.counters.dead.fetch_add(1, Ordering::Relaxed);
                        self.counters.messages.fetch_add(1, Ordering::Relaxed);
                        return true;
                    }
                    Err(e) => format!("cannot record a dead message: {e}"),
                },
                Outcome::Transient(reason) => reason,
            };
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            let delay = self.backoff.delay(attempt);
            tracing::warn!(attempt, ?delay, %reason, "decision failed; retrying");
            tokio::select! {
                _ = self.shutdown.changed() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn record_dead(
        &self,
        message: &KafkaMessage<'_>,
        kind: DeadKind,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&sql::render(
            r#"INSERT INTO {schema}.kafka_dead_messages
                 (group_id, topic, partition, "offset", key, payload, kind, reason)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (group_id, topic, partition, "offset") DO NOTHING"#,
            &self.schema,
        ))
        .bind(&self.group_id)
        .bind(message.topic)
        .bind(message.partition)
        .bind(message.offset)
        .bind(message.key)
        .bind(message.payload)
        .bind(kind.as_str())
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
