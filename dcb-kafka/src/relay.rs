//! The event relay: publishes the events of one or several queries to
//! topics, in position order, many messages in flight, checkpointed at the
//! highest position below which everything was acknowledged.

mod headers;
mod pipeline;
mod producer;
mod reader;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcb_core::{Position, Query, SequencedEvent};
use dcb_postgres::PgEventStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::sql::relays::RelayTable;
use crate::{sql, Backoff, KafkaConfig, KafkaError, OutgoingMessage};

pub use headers::{
    HEADER_CE_ID, HEADER_CE_SOURCE, HEADER_CE_SPECVERSION, HEADER_CE_TIME, HEADER_CE_TYPE,
    HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_POSITION, HEADER_TAGS,
};

/// One destination of a relay: the events matching `query` go to `topic`.
///
/// ```
/// use dcb_core::Query;
/// use dcb_kafka::Route;
/// let route = Route::new(Query::types(["ItemAdded", "ItemRemoved"]), "cart-items").key_tag("cart_id");
/// assert_eq!(route.topic(), "cart-items");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    query: Query,
    topic: String,
    key_tag: Option<String>,
}

impl Route {
    /// The events matching `query` (by event type, tags, or both) go to
    /// `topic`.
    pub fn new(query: Query, topic: impl Into<String>) -> Self {
        Route {
            query,
            topic: topic.into(),
            key_tag: None,
        }
    }

    /// Takes the message key from the value of the event's first tag with
    /// this key (overrides [`EventRelay::key_tag`] for this route). An event
    /// without such a tag is published without a key.
    pub fn key_tag(mut self, key: impl Into<String>) -> Self {
        self.key_tag = Some(key.into());
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The query.
    pub fn query(&self) -> &Query {
        &self.query
    }
}

/// How a relay reads, publishes and checkpoints.
///
/// ```
/// use std::time::Duration;
/// use dcb_kafka::RelayConfig;
/// let config = RelayConfig::default().max_in_flight(20_000).checkpoint_every(5_000);
/// assert_eq!(config.max_in_flight, 20_000);
/// ```
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Events per read from the log. Default 1,000.
    pub batch_size: usize,
    /// Events sent and not yet acknowledged, at most. Default 10,000.
    pub max_in_flight: usize,
    /// The checkpoint is written once this many more events are
    /// acknowledged... Default 1,000.
    pub checkpoint_every: usize,
    /// ...or this long after the last write, whichever comes first.
    /// Default 200 ms.
    pub checkpoint_interval: Duration,
    /// How often the leader reads without a `NOTIFY`. Default 1 s.
    pub poll_interval: Duration,
    /// A message not acknowledged within this time stops the pipeline, which
    /// starts again from the checkpoint with a new producer. Default 30 s.
    pub send_timeout: Duration,
    /// Waits between restarts after failures. Default 100 ms doubling to 30 s.
    pub backoff: Backoff,
    /// How long a leader's lease lasts without renewal; another instance
    /// takes over about this long after the leader died. Default 5 s.
    pub lease_ttl: Duration,
    /// The name this process leads under (default: a random UUID).
    pub instance_id: String,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch_size: 1_000,
            max_in_flight: 10_000,
            checkpoint_every: 1_000,
            checkpoint_interval: Duration::from_millis(200),
            poll_interval: Duration::from_secs(1),
            send_timeout: Duration::from_secs(30),
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(30),
                ..Backoff::default()
            },
            lease_ttl: Duration::from_secs(5),
            instance_id: uuid::Uuid::new_v4().to_string(),
        }
    }
}

impl RelayConfig {
    /// Sets [`RelayConfig::batch_size`] (at least 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }
    /// Sets [`RelayConfig::max_in_flight`] (at least 1; 1 publishes one event
    /// at a time).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
    /// Sets [`RelayConfig::checkpoint_every`] (at least 1).
    pub fn checkpoint_every(mut self, n: usize) -> Self {
        self.checkpoint_every = n.max(1);
        self
    }
    /// Sets [`RelayConfig::checkpoint_interval`].
    pub fn checkpoint_interval(mut self, d: Duration) -> Self {
        self.checkpoint_interval = d;
        self
    }
    /// Sets [`RelayConfig::poll_interval`] (at least 1 ms).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d.max(Duration::from_millis(1));
        self
    }
    /// Sets [`RelayConfig::send_timeout`] (at least 100 ms).
    pub fn send_timeout(mut self, d: Duration) -> Self {
        self.send_timeout = d.max(Duration::from_millis(100));
        self
    }
    /// Sets [`RelayConfig::backoff`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
    /// Sets [`RelayConfig::lease_ttl`] (at least 300 ms).
    pub fn lease_ttl(mut self, d: Duration) -> Self {
        self.lease_ttl = d.max(Duration::from_millis(300));
        self
    }
    /// Sets [`RelayConfig::instance_id`].
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = id.into();
        self
    }
}

/// Publishes the events of the log that match its routes to Kafka.
///
/// - **Order**: events are read from the log in position order and handed
///   to an idempotent producer (`acks=all`, up to 5 requests in flight per
///   connection) in that order; the producer keeps each partition's order,
///   so messages with one key arrive in position order. Up to
///   [`RelayConfig::max_in_flight`] events are in flight at once.
/// - **Nothing before commit, nothing skipped**: the relay reads only
///   committed events (the store's positions are gapless in commit order),
///   and its checkpoint is the highest position below which *every* event
///   was acknowledged by the broker — never past an event still in flight.
///   The checkpoint is written every [`RelayConfig::checkpoint_every`]
///   acknowledgements or [`RelayConfig::checkpoint_interval`], whichever
///   comes first.
/// - **Reading**: while a backlog is dense (most events match the routes),
///   the relay reads ranges of the log and keeps the matching events, two
///   reads of consecutive ranges at a time; the later one is used only if
///   the one before it ended exactly where it starts (a read that reached
///   the head drops it), so no event is skipped. Where few events match it
///   lets the store filter. It starts reading while
///   [`EventRelay::start`] checks the brokers, and sends once the producer
///   is ready.
/// - **Standbys**: when the store has standbys
///   ([`PgEventStoreBuilder::standby`](dcb_postgres::PgEventStoreBuilder::standby)),
///   the relay reads the log there ([`PgEventStore::standby_reader`]); its
///   lease and checkpoint stay on the primary. A standby shows a gapless
///   prefix of the log, so nothing is skipped; it may only be a little late.
/// - **Failures**: a message the broker refuses, or that is not
///   acknowledged within [`RelayConfig::send_timeout`], stops the pipeline:
///   the producer's queue is purged, the producer replaced, and publishing
///   starts again after a backoff from the last contiguous
///   acknowledgement. The producer runs with
///   `enable.gapless.guarantee=true` and no local message timeout, so the
///   messages of one producer that reach a partition are always a prefix of
///   what it was given for that partition: after a failure a consumer may
///   see events again (a suffix, in order, recognisable by
///   [`HEADER_EVENT_ID`]), never a later event of a key before the first
///   copy of an earlier one. (librdkafka logs a configuration warning that
///   the gapless guarantee is experimental each time the relay creates its
///   producer; that is expected.) An event that can never be published (too
///   large for the broker) blocks the relay, with the reason in
///   [`RelayHandle::status`]; it is never skipped.
/// - **Crash**: delivery is at least once. A relay that dies publishes again,
///   from its written checkpoint, what it had sent since: up to a checkpoint
///   batch plus the events in flight.
/// - **One publisher per relay name**: a lease row (renewed by heartbeat and
///   by each checkpoint write) keeps one instance active per relay name
///   across processes; another takes over within about
///   [`RelayConfig::lease_ttl`] when the leader dies.
/// - **Reading**: the leader reads the next batch while it hands the last
///   one to the producer. While most of the log matches its routes, it
///   reads whole ranges of the log and keeps the matching events (cheaper
///   for the database than a filtered read); where few match, it lets the
///   store filter. Both cover the same positions, so the choice changes
///   nothing of the above.
/// - **Start-up**: [`EventRelay::start`] checks that a broker answers with
///   the relay's own producer, which also gets that producer its producer
///   id before the first send (so does every new producer after a
///   failure), rather than on librdkafka's 500 ms retry timer.
/// - **Wake-up**: the leader wakes on the store's `NOTIFY`
///   ([`PgEventStore::notify_channel`]) and polls every
///   [`RelayConfig::poll_interval`] as a fallback.
///
/// Messages: key from the route's key tag; value = the event payload as
/// stored; headers [`HEADER_EVENT_ID`], [`HEADER_EVENT_TYPE`],
/// [`HEADER_POSITION`], [`HEADER_TAGS`], and with
/// [`EventRelay::cloud_events`] the CloudEvents binary-mode headers
/// [`HEADER_CE_SPECVERSION`], [`HEADER_CE_ID`], [`HEADER_CE_TYPE`],
/// [`HEADER_CE_SOURCE`], [`HEADER_CE_TIME`]. An event matching several
/// routes is published to each of their topics.
///
/// ```no_run
/// # async fn example(store: dcb_postgres::PgEventStore) -> Result<(), dcb_kafka::KafkaError> {
/// use dcb_core::Query;
/// use dcb_kafka::{EventRelay, KafkaConfig, Route};
/// let relay = EventRelay::new("carts-to-kafka", KafkaConfig::new("127.0.0.1:9092"))
///     .route(Route::new(Query::types(["ItemAdded", "ItemRemoved"]), "cart-items"))
///     .route(Route::new(Query::types(["CartSubmitted"]), "submitted-carts"))
///     .key_tag("cart_id")
///     .cloud_events("urn:example:cart")
///     .start(&store)
///     .await?;
/// // ...
/// relay.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct EventRelay {
    id: String,
    kafka: KafkaConfig,
    routes: Vec<Route>,
    key_tag: Option<String>,
    cloud_events: Option<String>,
    config: RelayConfig,
}

impl EventRelay {
    /// A relay named `id` (its checkpoint and lease are kept under this
    /// name) publishing through brokers of `kafka`. Add at least one
    /// [`Route`].
    pub fn new(id: impl Into<String>, kafka: KafkaConfig) -> Self {
        EventRelay {
            id: id.into(),
            kafka,
            routes: Vec::new(),
            key_tag: None,
            cloud_events: None,
            config: RelayConfig::default(),
        }
    }

    /// Adds a route: the events matching its query also go to its topic.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// The key tag of every route that does not set its own.
    pub fn key_tag(mut self, key: impl Into<String>) -> Self {
        self.key_tag = Some(key.into());
        self
    }

    /// Adds the CloudEvents binary-mode headers, with `source` as
    /// `ce_source` (a URI reference naming this service).
    pub fn cloud_events(mut self, source: impl Into<String>) -> Self {
        self.cloud_events = Some(source.into());
        self
    }

    /// Sets the reading, pipelining and checkpoint settings.
    pub fn config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// The message the relay publishes for `event` on `route` (for tests,
    /// and for applications that publish events themselves).
    pub fn message_for(&self, route: &Route, event: &SequencedEvent) -> OutgoingMessage {
        headers::outgoing(
            route,
            self.key_tag.as_deref(),
            self.cloud_events.as_deref(),
            event,
        )
    }

    /// Creates the relay's table if needed, checks that the brokers answer,
    /// and starts relaying in a background task (as leader, or standing by
    /// while another instance leads).
    ///
    /// # Errors
    /// [`KafkaError::Config`] without a route, with an empty name, or for
    /// options librdkafka refuses; [`KafkaError::BrokerUnreachable`] when no
    /// broker answers within the configured start-up timeout; database
    /// errors.
    pub async fn start(self, store: &PgEventStore) -> Result<RelayHandle, KafkaError> {
        if self.routes.is_empty() {
            return Err(KafkaError::Config(format!(
                "relay {:?} has no route: add one with EventRelay::route",
                self.id
            )));
        }
        if self.id.is_empty() || self.id.contains('\0') {
            return Err(KafkaError::Config(format!(
                "invalid relay name {:?}: give a non-empty name without NUL",
                self.id
            )));
        }
        let pool = store.pool().clone();
        sql::migrate(&pool, store.schema()).await?;
        let table = RelayTable::new(pool.clone(), store.schema())?;
        table.ensure(&self.id).await?;
        // Every event in flight has at most one message per route.
        let capacity = self
            .config
            .max_in_flight
            .saturating_mul(self.routes.len())
            .saturating_add(1);
        let producer = producer::Slot::new(&self.kafka, capacity)?;
        let first_topic = self.routes[0].topic.clone();

        let read_query = self
            .routes
            .iter()
            .fold(Query::none(), |q, r| q.union(r.query.clone()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (acked, _) = watch::channel(0u64);
        let (wake, _) = watch::channel(0u64);
        let (connected, _) = watch::channel(false);
        let shared = Arc::new(pipeline::Shared {
            id: self.id.clone(),
            routes: self
                .routes
                .into_iter()
                .map(|r| {
                    let key_tag = r.key_tag.clone().or_else(|| self.key_tag.clone());
                    Route { key_tag, ..r }
                })
                .collect(),
            read_query,
            cloud_events: self.cloud_events,
            config: self.config,
            log: store.standby_reader(),
            table,
            producer,
            acked,
            wake,
            connected,
            leading: AtomicBool::new(false),
            published: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            shutdown: shutdown_rx,
        });
        let span = tracing::info_span!("dcb.kafka.relay", relay = %self.id);
        let notifier = tokio::spawn(
            pipeline::notifier(shared.clone(), pool, store.notify_channel())
                .instrument(span.clone()),
        );
        let task = tokio::spawn(pipeline::run(shared.clone()).instrument(span));
        let handle = RelayHandle {
            shared,
            shutdown,
            task,
            notifier,
        };
        // The relay's own producer checks that a broker answers, which
        // also gets it ready for its first send; the task reads the log
        // meanwhile and sends once this is done.
        if let Err(error) = handle
            .shared
            .producer
            .connect(&self.kafka, &first_topic)
            .await
        {
            handle.shutdown().await;
            return Err(error);
        }
        handle.shared.connected.send_replace(true);
        Ok(handle)
    }
}

/// What a relay is doing, as [`RelayHandle::status`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStatus {
    /// The written checkpoint: every matching event up to here was
    /// acknowledged by the broker.
    pub checkpoint: Position,
    /// The highest position this instance knows acknowledged with everything
    /// before it (ahead of the checkpoint by at most a checkpoint batch).
    pub acknowledged: Position,
    /// The instance holding the lease, if it is live.
    pub leader: Option<String>,
    /// Whether this instance is the leader.
    pub leading: bool,
    /// Why publishing last stopped, until the next checkpoint write.
    pub last_error: Option<String>,
    /// When that was.
    pub last_error_at: Option<DateTime<Utc>>,
    /// Messages this instance had acknowledged (every route counted).
    pub published: u64,
    /// Times this instance's pipeline stopped on a failure.
    pub failures: u64,
}

/// A running relay.
#[derive(Debug)]
pub struct RelayHandle {
    shared: Arc<pipeline::Shared>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    notifier: JoinHandle<()>,
}

impl RelayHandle {
    /// The relay's name.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The relay's checkpoint, leader and last failure.
    ///
    /// # Errors
    /// Database errors.
    pub async fn status(&self) -> Result<RelayStatus, KafkaError> {
        let row = self.shared.table.status(&self.shared.id).await?;
        let acknowledged = *self.shared.acked.borrow();
        let (checkpoint, leader, last_error, last_error_at) = match row {
            Some(r) => (
                r.position,
                r.owner.filter(|_| r.lease_live),
                r.last_error,
                r.last_error_at,
            ),
            None => (0, None, None, None),
        };
        Ok(RelayStatus {
            checkpoint: Position(checkpoint),
            acknowledged: Position(acknowledged.max(checkpoint)),
            leader,
            leading: self.shared.leading.load(Ordering::SeqCst),
            last_error,
            last_error_at,
            published: self.shared.published.load(Ordering::Relaxed),
            failures: self.shared.failures.load(Ordering::Relaxed),
        })
    }

    /// Waits until every matching event up to `position` is acknowledged
    /// (by this instance, or by the leader according to the written
    /// checkpoint), or `timeout` passed.
    ///
    /// # Errors
    /// [`KafkaError::TimedOut`] naming where the relay is; database errors.
    pub async fn wait_until(
        &self,
        position: Position,
        timeout: Duration,
    ) -> Result<(), KafkaError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut acked = self.shared.acked.subscribe();
        let mut next_db_check = tokio::time::Instant::now();
        loop {
            if *acked.borrow_and_update() >= position.0 {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= next_db_check {
                if let Some(row) = self.shared.table.status(&self.shared.id).await? {
                    if row.position >= position.0 {
                        return Ok(());
                    }
                }
                next_db_check = now + Duration::from_millis(250);
            }
            if now >= deadline {
                let status = self.status().await?;
                return Err(KafkaError::TimedOut(format!(
                    "relay {} did not reach position {} within {timeout:?}: acknowledged {}, \
                     checkpoint {}, leader {:?}, last error {:?}",
                    self.shared.id,
                    position.0,
                    status.acknowledged.0,
                    status.checkpoint.0,
                    status.leader,
                    status.last_error
                )));
            }
            let _ = tokio::time::timeout_at(next_db_check.min(deadline), acked.changed()).await;
        }
    }

    /// Stops reading, waits (at most [`RelayConfig::send_timeout`]) for the
    /// messages in flight to be acknowledged, writes the checkpoint and
    /// gives the lease up.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "relay task failed");
        }
        let _ = self.notifier.await;
    }
}
