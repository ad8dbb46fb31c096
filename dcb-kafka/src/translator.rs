//! Translators: a consumer group that turns each message of a topic into a
//! decision, with inbox dedupe and dead-letter records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dcb_core::fnv::Fnv1a;
use dcb_core::Backoff;
use dcb_core::{Decision, DecisionError, DecisionMaker, MakeOptions, StoreError};
use dcb_postgres::PgEventStore;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Offset;
use sqlx::Row;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::message::{DeadKind, DeadMessage, KafkaMessage};
use crate::{check_reachable, sql, KafkaConfig, KafkaError};

/// Turns one message of a topic into a decision.
///
/// The runner makes the decision with an idempotency key
/// ([`Translator::idempotency_key`], by default the record's identity, see
/// [`record_key`]), checked by the store in the same atomic append as the
/// decision's events, so a redelivered message changes nothing twice.
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
    /// [`record_key`], dedupes redeliveries of one record, and only those: a
    /// different record that reuses an offset (the topic was deleted and
    /// created again, or the broker lost its log) is decided as new. Return
    /// something derived from the message key or payload to also dedupe a
    /// message the producer sent twice.
    fn idempotency_key(&self, message: &KafkaMessage<'_>) -> String {
        record_key(message)
    }
}

/// `kafka:<topic>:<partition>:<offset>:<timestamp>:<digest>`: the default
/// idempotency key, the identity of one record.
///
/// The offset alone does not identify a record: when a topic is deleted and
/// created again (or a broker without durable storage restarts), new records
/// get offsets 0, 1, 2... again, and a key of offset alone would mistake each
/// of them for a redelivery of the old record at that offset and drop it. So
/// the key also carries the record's timestamp (`-` when it has none) and a
/// digest of its key, payload and headers (64-bit FNV-1a over a
/// length-prefixed encoding: stable across builds, platforms and versions). A
/// redelivery of a record is the same stored record, so it yields the same
/// key; a different record at a reused offset differs in timestamp or
/// content, so it does not.
///
/// The digest is not cryptographic: a producer that deliberately writes a
/// record with the same timestamp and a colliding digest at the offset of an
/// earlier record can have it dropped. Keys are stable: the format is pinned
/// by a test, since changing it makes every stored key unrecognisable.
///
/// ```
/// use dcb_kafka::{record_key, KafkaMessage};
/// let first = KafkaMessage::new("orders", 2, 17, Some(b"o-1"), Some(b"{}")).with_timestamp(1_700_000_000_000);
/// let again = first.clone();
/// let reused = KafkaMessage::new("orders", 2, 17, Some(b"o-9"), Some(b"{}")).with_timestamp(1_700_000_500_000);
/// assert_eq!(record_key(&first), record_key(&again));
/// assert_ne!(record_key(&first), record_key(&reused));
/// assert!(record_key(&first).starts_with("kafka:orders:2:17:1700000000000:"));
/// ```
pub fn record_key(message: &KafkaMessage<'_>) -> String {
    let timestamp = message
        .timestamp
        .map_or_else(|| "-".to_owned(), |t| t.to_string());
    format!(
        "kafka:{}:{}:{}:{timestamp}:{:016x}",
        message.topic,
        message.partition,
        message.offset,
        content_digest(message)
    )
}

/// `kafka:<topic>:<partition>:<offset>`: the idempotency key of earlier
/// versions, which identifies a position in a partition, not a record.
///
/// It dedupes redeliveries, but after a topic is deleted and created again
/// (or a broker without durable storage restarts) it silently drops every new
/// record whose offset an earlier record had. Use it (by overriding
/// [`Translator::idempotency_key`]) only where offsets are never reused, e.g.
/// to keep recognising keys stored by an earlier version while its
/// redeliveries drain.
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

/// 64-bit FNV-1a of a record's key, payload and headers, each field
/// length-prefixed (and absent distinguished from empty) so that no two
/// different records encode alike.
fn content_digest(message: &KafkaMessage<'_>) -> u64 {
    let mut hash = Fnv1a::new();
    write_optional(&mut hash, message.key);
    write_optional(&mut hash, message.payload);
    hash.write_len(message.headers().len());
    for (name, value) in message.headers() {
        hash.write_bytes(name.as_bytes());
        hash.write_bytes(value);
    }
    hash.finish()
}

/// An absent value and an empty one hash differently.
fn write_optional(hash: &mut Fnv1a, bytes: Option<&[u8]>) {
    match bytes {
        None => hash.write(&[0]),
        Some(b) => {
            hash.write(&[1]);
            hash.write_bytes(b);
        }
    }
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
        let options = MakeOptions::new().idempotency_key(self.0.idempotency_key(message));
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
    /// Partitions read again from the start because their log ended before
    /// the group's position (the topic was created again or the broker lost
    /// its log, and said nothing; see [`TranslatorRunner`]).
    pub rewinds: u64,
    /// Times this instance left and joined the group again because records
    /// waited that no member seemed to read (see [`TranslatorRunner`]).
    pub rejoins: u64,
}

#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    decided: AtomicU64,
    duplicates: AtomicU64,
    unchanged: AtomicU64,
    dead: AtomicU64,
    retries: AtomicU64,
    rewinds: AtomicU64,
    rejoins: AtomicU64,
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
            rewinds: self.rewinds.load(Ordering::Relaxed),
            rejoins: self.rejoins.load(Ordering::Relaxed),
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
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
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
        let on_reset = match self.config.get("auto.offset.reset").unwrap_or("earliest") {
            "latest" | "largest" | "end" => Some(Offset::End),
            "error" => None,
            _ => Some(Offset::Beginning),
        };
        let worker = Worker {
            consumer: Arc::new(consumer),
            on_reset,
            orphans: OrphanWatch::default(),
            outage_checked: None,
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

/// How long a translator group goes without a message before it checks
/// whether a partition's log ended before the group's position.
const RESET_CHECK_IDLE: Duration = Duration::from_secs(5);

/// How long each broker request of that check may take.
const RESET_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a metadata request may take when the brokers may be away.
const OUTAGE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long partitions paused during an outage wait for topics the brokers
/// do not know (yet) before they resume anyway.
const MISSING_TOPICS_WAIT: Duration = Duration::from_secs(30);

/// How many idle checks in a row must see the same unread backlog, with no
/// offset committed meanwhile, before an instance without partitions
/// rejoins the group.
const ORPHAN_STRIKES: u32 = 3;

/// The least time between two such rejoins of one instance.
const ORPHAN_REJOIN_EVERY: Duration = Duration::from_secs(60);

/// Partitions with records after the group's committed offset, as seen by
/// the idle checks of an instance that has no partition.
#[derive(Default)]
struct OrphanWatch {
    /// (topic, partition, committed offset, log end) of the last check.
    last: Vec<(String, i32, i64, i64)>,
    strikes: u32,
    rejoined: Option<std::time::Instant>,
}

/// The subscribed partitions whose log has records after the group's
/// committed offset: (topic, partition, committed offset or the log start
/// when none, log end). Blocking.
fn unread_backlog(
    consumer: &StreamConsumer,
    topics: &[String],
) -> rdkafka::error::KafkaResult<Vec<(String, i32, i64, i64)>> {
    let mut partitions = rdkafka::TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), RESET_CHECK_TIMEOUT)?;
        for t in metadata.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                partitions.add_partition(topic, p.id());
            }
        }
    }
    if partitions.count() == 0 {
        return Ok(Vec::new());
    }
    let committed = consumer.committed_offsets(partitions, RESET_CHECK_TIMEOUT)?;
    let mut backlog = Vec::new();
    for element in committed.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let (start, end) = consumer.fetch_watermarks(topic, partition, RESET_CHECK_TIMEOUT)?;
        let read_to = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => start,
        };
        if end > read_to {
            backlog.push((topic.to_owned(), partition, read_to, end));
        }
    }
    Ok(backlog)
}

/// Whether a consumer error says every broker connection is down.
fn is_all_brokers_down(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode;
    matches!(
        error,
        rdkafka::error::KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown)
            | rdkafka::error::KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)
    )
}

/// A partition whose log ended before the group's position.
struct Rewound {
    topic: String,
    partition: i32,
    position: i64,
    end: i64,
}

/// The assigned partitions whose position (or, before anything was
/// consumed, committed offset) lies past their log's end, each sought to
/// `to` if given. Blocking.
fn rewind_reset_partitions(
    consumer: &StreamConsumer,
    to: Option<Offset>,
) -> rdkafka::error::KafkaResult<Vec<Rewound>> {
    if consumer.assignment()?.count() == 0 {
        return Ok(Vec::new());
    }
    let positions = consumer.position()?;
    let mut committed = None;
    let mut rewound = Vec::new();
    for element in positions.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let position = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => {
                if committed.is_none() {
                    committed = Some(consumer.committed(RESET_CHECK_TIMEOUT)?);
                }
                match committed
                    .as_ref()
                    .and_then(|c| c.find_partition(topic, partition))
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(offset)) => offset,
                    _ => continue,
                }
            }
        };
        let (_, end) = consumer.fetch_watermarks(topic, partition, RESET_CHECK_TIMEOUT)?;
        if position > end {
            if let Some(to) = to {
                consumer.seek(topic, partition, to, RESET_CHECK_TIMEOUT)?;
            }
            rewound.push(Rewound {
                topic: topic.to_owned(),
                partition,
                position,
                end,
            });
        }
    }
    Ok(rewound)
}

/// Logs consumer errors: the first of a burst at once, repeats at most every
/// few seconds with their count.
#[derive(Default)]
struct ErrorLog {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl ErrorLog {
    const EVERY: Duration = Duration::from_secs(5);

    fn seen(&mut self, error: &rdkafka::error::KafkaError) {
        if self.last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            self.suppressed += 1;
            return;
        }
        let not_logged_before = std::mem::take(&mut self.suppressed);
        tracing::warn!(
            %error,
            not_logged_before,
            "consumer error; the client reconnects by itself"
        );
        self.last = Some(std::time::Instant::now());
    }
}

struct Worker {
    consumer: Arc<StreamConsumer>,
    /// Where a partition whose log ended before the group's position starts
    /// again (`auto.offset.reset`; `None` for `error`).
    on_reset: Option<Offset>,
    /// What the last idle checks saw of partitions nobody seems to read.
    orphans: OrphanWatch,
    /// When an outage was last found over (see `wait_out_outage`).
    outage_checked: Option<std::time::Instant>,
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
        let mut errors = ErrorLog::default();
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            let received = tokio::select! {
                _ = self.shutdown.changed() => break,
                m = consumer.recv() => m,
                _ = tokio::time::sleep(RESET_CHECK_IDLE) => {
                    self.check_reset_logs().await;
                    self.check_orphaned_partitions().await;
                    continue;
                }
            };
            let message = match received {
                Ok(m) => m,
                Err(error) => {
                    // Errors are events (librdkafka queues one per failed
                    // connection attempt while the brokers are away), not a
                    // state to wait out: the next ones, and the rebalance
                    // behind them, are read at once. Pausing after each one
                    // drained a backlog of an outage's errors at two per
                    // second, and the group's new assignment waited behind it.
                    errors.seen(&error);
                    if is_all_brokers_down(&error) && !self.wait_out_outage().await {
                        break;
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

    /// Every broker connection is down: pauses the assigned partitions until
    /// the brokers answer for every subscribed topic again (at most
    /// [`MISSING_TOPICS_WAIT`] for topics they do not know), then resumes;
    /// false when shutdown came first.
    ///
    /// Why: when a broker comes back, the client fetches its partitions with
    /// the topic ids it knew before, while the metadata that tells it the
    /// current ids comes later. A broker that lost its topics (tansu with
    /// memory storage; the topics created again have new ids) answers such a
    /// fetch with an unknown-topic response that crashes librdkafka 2.12 (a
    /// null topic name in its leader-discovery handling). The probe below
    /// refreshes the client's topic metadata (fetches use the ids it holds),
    /// and the group's rebalances wait meanwhile, since they are applied
    /// only when the consumer is polled. Against a broker that kept its
    /// state, the partitions resume where they were, at most a probe
    /// interval after it is back.
    async fn wait_out_outage(&mut self) -> bool {
        if self
            .outage_checked
            .is_some_and(|at| at.elapsed() < Duration::from_secs(2))
        {
            // One of the errors queued during an outage just handled.
            return true;
        }
        let paused = self.consumer.assignment().ok();
        if let Some(paused) = &paused {
            if let Err(error) = self.consumer.pause(paused) {
                tracing::debug!(%error, "cannot pause the assigned partitions");
            }
        }
        let started = std::time::Instant::now();
        let mut answering_since: Option<std::time::Instant> = None;
        let mut announced = false;
        loop {
            match self.subscribed_topics_known().await {
                Some(true) => break,
                Some(false) => {
                    let since = *answering_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > MISSING_TOPICS_WAIT {
                        tracing::warn!(
                            "the brokers answer, but not every subscribed topic exists: \
                             resuming anyway"
                        );
                        break;
                    }
                }
                None => answering_since = None,
            }
            if !announced {
                tracing::warn!(
                    "the brokers do not answer: partitions paused until they do, to resume \
                     with current topic metadata"
                );
                announced = true;
            }
            tokio::select! {
                _ = self.shutdown.changed() => return false,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        // Resume whatever is assigned now (a rebalance may be pending, not
        // applied yet); the partitions paused above, if still assigned.
        let resume = self.consumer.assignment().ok().or(paused);
        if let Some(resume) = resume {
            if let Err(error) = self.consumer.resume(&resume) {
                tracing::debug!(%error, "cannot resume the assigned partitions");
            }
        }
        if announced {
            tracing::info!(
                waited_ms = started.elapsed().as_millis() as u64,
                "the brokers answer again: partitions resumed with current topic metadata"
            );
        }
        self.outage_checked = Some(std::time::Instant::now());
        true
    }

    /// Asks the brokers for each subscribed topic's metadata (which also
    /// refreshes the client's cache of topic ids): `None` when no broker
    /// answers, else whether every topic exists.
    async fn subscribed_topics_known(&self) -> Option<bool> {
        let consumer = self.consumer.clone();
        let topics: Vec<String> = self.translators.keys().cloned().collect();
        let asked = tokio::task::spawn_blocking(move || {
            let mut all = true;
            for topic in &topics {
                let metadata = consumer
                    .fetch_metadata(Some(topic), OUTAGE_PROBE_TIMEOUT)
                    .ok()?;
                all &= metadata.topics().iter().any(|t| {
                    t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                });
            }
            Some(all)
        })
        .await;
        asked.ok().flatten()
    }

    /// Nothing came for a while: maybe a partition's log ended before the
    /// group's position (see [`TranslatorRunner`]). Where it did, seek to
    /// where `auto.offset.reset` says.
    async fn check_reset_logs(&self) {
        let consumer = self.consumer.clone();
        let on_reset = self.on_reset;
        let checked =
            tokio::task::spawn_blocking(move || rewind_reset_partitions(&consumer, on_reset)).await;
        match checked {
            Ok(Ok(rewound)) => {
                for r in rewound {
                    if self.on_reset.is_some() {
                        tracing::warn!(
                            topic = %r.topic,
                            partition = r.partition,
                            position = r.position,
                            end = r.end,
                            "the partition's log ends before the group's position (the topic \
                             was created again, or the broker lost its log): reading it again \
                             from where auto.offset.reset says"
                        );
                        self.counters.rewinds.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tracing::error!(
                            topic = %r.topic,
                            partition = r.partition,
                            position = r.position,
                            end = r.end,
                            "the partition's log ends before the group's position, and \
                             auto.offset.reset=error: waiting there; reset the group's offsets"
                        );
                    }
                }
            }
            Ok(Err(error)) => tracing::debug!(%error, "cannot compare positions with log ends"),
            Err(error) => tracing::warn!(%error, "log end check failed"),
        }
    }

    /// Nothing came for a while and this instance has no partition: when the
    /// group's committed offsets stay behind the logs' ends over several
    /// checks, nobody may be reading those partitions, and this instance
    /// rejoins the group (which makes the whole group rebalance).
    ///
    /// Why: a group coordinator may complete a rebalance with no partition
    /// assigned to anyone. tansu 0.6 does when a member's session expires
    /// between a rebalance's JoinGroup and SyncGroup (it forgets the leader,
    /// and takes a follower's empty assignment for the group's); every
    /// instance then idles until the membership changes again. Against a
    /// Kafka cluster this does not happen, and the check costs a few
    /// requests per idle interval on instances without partitions.
    async fn check_orphaned_partitions(&mut self) {
        let consumer = self.consumer.clone();
        let topics: Vec<String> = self.translators.keys().cloned().collect();
        let checked = tokio::task::spawn_blocking(move || {
            if consumer.assignment()?.count() > 0 {
                return Ok(None);
            }
            unread_backlog(&consumer, &topics).map(Some)
        })
        .await;
        let backlog = match checked {
            Ok(Ok(Some(backlog))) if !backlog.is_empty() => backlog,
            Ok(Ok(_)) => {
                self.orphans.strikes = 0;
                self.orphans.last.clear();
                return;
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "cannot compare committed offsets with log ends");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "backlog check failed");
                return;
            }
        };
        let unchanged = backlog == self.orphans.last;
        self.orphans.strikes = if unchanged {
            self.orphans.strikes + 1
        } else {
            1
        };
        self.orphans.last = backlog;
        let recently = self
            .orphans
            .rejoined
            .is_some_and(|at| at.elapsed() < ORPHAN_REJOIN_EVERY);
        if self.orphans.strikes < ORPHAN_STRIKES || recently {
            return;
        }
        tracing::warn!(
            backlog = ?self.orphans.last,
            "records wait after the group's committed offsets and this instance has no \
             partition: rejoining the group, in case no member has them"
        );
        self.consumer.unsubscribe();
        let topics: Vec<&str> = self.translators.keys().map(String::as_str).collect();
        if let Err(error) = self.consumer.subscribe(&topics) {
            tracing::error!(%error, ?topics, "cannot subscribe again");
        }
        self.orphans.strikes = 0;
        self.orphans.rejoined = Some(std::time::Instant::now());
        self.counters.rejoins.fetch_add(1, Ordering::Relaxed);
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
                 (group_id, topic, partition, "offset", key, payload, kind, reason, record_key)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (group_id, record_key) DO NOTHING"#,
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
        // The record's identity, not the translator's idempotency key: a
        // translator may key decisions by something (an order id) that two
        // different undecodable records share.
        .bind(record_key(message))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64, payload: &'static [u8], timestamp: i64) -> KafkaMessage<'static> {
        KafkaMessage::new("stock", 0, offset, Some(b"p-1"), Some(payload)).with_timestamp(timestamp)
    }

    #[test]
    fn record_key_is_pinned() {
        // A change of this value makes every stored key unrecognisable, so
        // every message redelivered after an upgrade is decided again: don't.
        let m = at(7, br#"{"inventory":3}"#, 1_700_000_000_000).with_header("trace", b"t-1");
        assert_eq!(
            record_key(&m),
            "kafka:stock:0:7:1700000000000:834d1b7b4e66b2f0"
        );
    }

    #[test]
    fn a_redelivery_has_the_same_key() {
        let m = at(7, br#"{"inventory":3}"#, 1_700_000_000_000);
        assert_eq!(record_key(&m), record_key(&m.clone()));
    }

    #[test]
    fn another_record_at_a_reused_offset_has_another_key() {
        let first = at(7, br#"{"inventory":3}"#, 1_700_000_000_000);
        // Created again: same offset, later timestamp, same content.
        let later = at(7, br#"{"inventory":3}"#, 1_700_000_000_001);
        // Same offset and timestamp, other content.
        let other = at(7, br#"{"inventory":4}"#, 1_700_000_000_000);
        assert_ne!(record_key(&first), record_key(&later));
        assert_ne!(record_key(&first), record_key(&other));
        assert_eq!(
            offset_key(&first),
            offset_key(&later),
            "the old key cannot tell"
        );
    }

    #[test]
    fn the_digest_separates_fields() {
        let base = KafkaMessage::new("t", 0, 0, None, None);
        let keys = [
            record_key(&base),
            record_key(&KafkaMessage::new("t", 0, 0, Some(b""), None)),
            record_key(&KafkaMessage::new("t", 0, 0, None, Some(b""))),
            record_key(&KafkaMessage::new("t", 0, 0, Some(b"ab"), Some(b"c"))),
            record_key(&KafkaMessage::new("t", 0, 0, Some(b"a"), Some(b"bc"))),
            record_key(&base.clone().with_header("h", b"")),
            record_key(&base.clone().with_header("h", b"v")),
        ];
        let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:#?}");
        assert!(keys[0].starts_with("kafka:t:0:0:-:"), "{}", keys[0]);
    }
}
