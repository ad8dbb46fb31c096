//! The translator runner: builder, handle, counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dcb_core::DecisionMaker;
use dcb_postgres::PgEventStore;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Offset;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::broker_health::{BrokerHealth, OrphanWatch};
use super::decide::{DynTranslator, Erased};
use super::worker::{Context, Worker};
use super::Translator;
use crate::message::DeadMessage;
use crate::{check_reachable, sql, Backoff, KafkaConfig, KafkaError};

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
    /// Partitions read again from the start because their log ended before
    /// the group's position (the topic was created again or the broker lost
    /// its log, and said nothing; see [`TranslatorRunner`]).
    pub rewinds: u64,
    /// Times this instance left and joined the group again because records
    /// waited that no member seemed to read (see [`TranslatorRunner`]).
    pub rejoins: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) messages: AtomicU64,
    pub(super) decided: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) unchanged: AtomicU64,
    pub(super) dead: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) rewinds: AtomicU64,
    pub(super) rejoins: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> TranslatorStats {
        TranslatorStats {
            messages: self.messages.load(Ordering::Relaxed),
            decided: self.decided.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            unchanged: self.unchanged.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            rewinds: self.rewinds.load(Ordering::Relaxed),
            rejoins: self.rejoins.load(Ordering::Relaxed),
        }
    }
}

/// The default of [`TranslatorRunner::max_in_flight`].
const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// The default of [`TranslatorRunner::dead_after`].
const DEFAULT_DEAD_AFTER: u32 = 8;

/// Builds and starts a consumer group that runs [`Translator`]s.
///
/// - **Concurrency with per-key order**: messages of one partition with
///   different keys are decided concurrently (up to
///   [`TranslatorRunner::max_in_flight`] messages at once per instance);
///   messages with the same key (or without a key) in one partition are
///   decided one after the other, in offset order.
/// - **Offsets**: a partition's offset is stored only up to its lowest
///   message not finished yet (decided durably, or recorded dead), and
///   committed from there (auto-commit of stored offsets, and a synchronous
///   commit at shutdown); after a crash, messages since the last commit come
///   again and their decisions are deduped.
/// - **Dead records**: a message that does not decode, a decision the domain
///   rejects, and a decision that fails for a reason no retry fixes are
///   recorded in `{schema}.kafka_dead_messages` with the reason (made
///   storable: a NUL becomes `\u0000`; the key and payload are kept as
///   bytes), logged, and the key moves on. A decision whose statements the
///   database keeps refusing is retried [`TranslatorRunner::dead_after`]
///   times, then recorded as dead too: one bad message never blocks a
///   partition.
/// - **Waiting**: a decision that fails because the database is away, or
///   on a conflict that outlasted the decision maker's retries, is retried
///   with capped exponential backoff for as long as it takes; only its key
///   waits meanwhile (and its partition's committed offset); other keys and
///   partitions go on while fewer than [`TranslatorRunner::max_in_flight`]
///   messages are held.
/// - A topic that is deleted and created again, or a broker that lost its log
///   (and its committed offsets): the group's position lies past the new
///   end, the fetch is out of range and `auto.offset.reset=earliest` starts
///   again at the beginning; decisions are keyed by record ([`record_key`]),
///   so the new records at reused offsets are decided, not taken for
///   redeliveries. Some brokers (tansu) answer a fetch past the end with an
///   empty batch instead of an out-of-range error, and the consumer would
///   wait there until the new log grows past the old position, skipping
///   everything below it; so a group that received nothing for a few
///   seconds compares each assigned partition's position (or committed
///   offset) with the partition's end, and where the position lies past the
///   end it seeks to where `auto.offset.reset` says (the start by default;
///   counted in [`TranslatorStats::rewinds`]). The one case no consumer can
///   detect is a new log that already grew past the old position before the
///   consumer looked again: its records below that position are skipped.
///   Reset the group's offsets (or use a new group) when you re-create a
///   topic that has a backlog.
/// - While every broker is unreachable, the assigned partitions are paused;
///   they resume once the brokers answer for every subscribed topic again
///   (at most 30 s for topics they do not know), with the topic metadata
///   just refreshed: a client fetches with the topic ids it holds, and a
///   broker that lost its topics does not know the old ones (tansu's answer
///   to that crashes librdkafka 2.12).
/// - An instance without partitions that sees, over three idle checks in a
///   row, records waiting after the group's committed offsets with no
///   commit in between, rejoins the group (at most once a minute), which
///   makes the group rebalance: a coordinator may finish a rebalance with no
///   partition assigned to anyone (tansu 0.6 does when a member's session
///   expires mid-rebalance), and the group would idle until its membership
///   changes. Counted in [`TranslatorStats::rejoins`].
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
    max_in_flight: usize,
    dead_after: u32,
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
                ..Backoff::default()
            },
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            dead_after: DEFAULT_DEAD_AFTER,
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

    /// At most this many messages are held by this instance at once
    /// (deciding, or waiting behind an earlier message of their key); at
    /// least 1, which decides one message at a time. Default 256.
    pub fn max_in_flight(mut self, messages: usize) -> Self {
        self.max_in_flight = messages.max(1);
        self
    }

    /// After this many attempts refused by the database (at least 1), a
    /// message is recorded as dead (kind [`DeadKind::Failed`](crate::DeadKind::Failed))
    /// and its key moves on. Default 8. Every attempt after the first refusal
    /// runs alone (no other decision of this runner at the same time), so a
    /// refusal caused by another message's data in a shared append batch
    /// does not count against this one. Outages and conflicts are waited out
    /// however long they last, and do not count.
    pub fn dead_after(mut self, attempts: u32) -> Self {
        self.dead_after = attempts.max(1);
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
        let on_reset = match self.config.get("auto.offset.reset").unwrap_or("earliest") {
            "latest" | "largest" | "end" => Some(Offset::End),
            "error" => None,
            _ => Some(Offset::Beginning),
        };
        let consumer = Arc::new(consumer);
        let health = BrokerHealth {
            consumer: consumer.clone(),
            topics: by_topic.keys().cloned().collect(),
            on_reset,
            orphans: OrphanWatch::default(),
            outage_checked: None,
            counters: counters.clone(),
        };
        let context = Arc::new(Context {
            maker: DecisionMaker::new(self.store.clone()),
            pool: pool.clone(),
            schema: schema.clone(),
            group_id: self.group_id.clone(),
            backoff: self.backoff,
            dead_after: self.dead_after,
            counters: counters.clone(),
            isolation: tokio::sync::RwLock::new(()),
        });
        let worker = Worker::new(
            consumer,
            health,
            by_topic,
            context,
            self.max_in_flight,
            shutdown_rx,
        );
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
/// Database errors; [`KafkaError::Database`] for a `schema` that is not a
/// plain lower-case identifier.
pub async fn dead_messages(
    pool: &sqlx::PgPool,
    schema: &str,
    group_id: &str,
    limit: usize,
) -> Result<Vec<DeadMessage>, KafkaError> {
    Ok(sql::dead_records::select(pool, schema, group_id, limit).await?)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn dead_messages_refuses_a_schema_that_is_not_an_identifier() {
        let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let error = super::dead_messages(&pool, "dcb; DROP TABLE x", "g", 10)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("invalid schema name"), "{error}");
        assert!(!error.is_retryable());
    }
}
