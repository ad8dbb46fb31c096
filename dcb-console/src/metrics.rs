//! Prometheus metrics: [`render`] the text exposition of a store's metrics,
//! or serve it at `GET /metrics` with [`router`].
//!
//! Two kinds of metrics, one page:
//!
//! - **Recorded in process** through the [`metrics`] facade by the
//!   framework itself: append latency and group-commit size (the store's
//!   writer), decisions and their conflicts (the decision maker). They need
//!   the process-wide recorder that [`install`] sets up ([`router`] calls
//!   it); without a recorder they cost one atomic check each and are not
//!   shown.
//! - **Read from the database when scraped**: the head, each listener's lag
//!   and parked events, each queue's jobs by state and the age of its oldest
//!   due job, Kafka dead records and relay lag, and the store's writer
//!   counters. A table that does not exist (Kafka never used, say) is left
//!   out; any other database failure fails the scrape, so Prometheus
//!   reports the target down instead of showing stale numbers.
//!
//! The text is formatted by `metrics-exporter-prometheus` (the `metrics`
//! crate's Prometheus exporter); the values read at scrape time go through
//! a recorder of their own for each scrape, so a listener or queue that
//! disappears from the database disappears from the page too.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dcb_core::EventStore;
use dcb_postgres::listener::ListenerAdmin;
use dcb_postgres::queue::QueueAdmin;
use dcb_postgres::PgEventStore;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use dcb_core::metrics::{DECISIONS_TOTAL, DECISION_CONFLICTS_TOTAL};
pub use dcb_postgres::metrics::{APPEND_BATCH_SIZE, APPEND_DURATION_SECONDS};

/// Gauge: the position of the last event in the log (0 when empty).
pub const HEAD_POSITION: &str = "dcb_head_position";
/// Gauge, by `listener`: positions between its checkpoint and the head.
pub const LISTENER_LAG_EVENTS: &str = "dcb_listener_lag_events";
/// Gauge, by `listener`: how long ago the first event past its checkpoint
/// was recorded (0 when caught up).
pub const LISTENER_LAG_SECONDS: &str = "dcb_listener_lag_seconds";
/// Gauge, by `listener`: parked events nobody resolved yet.
pub const LISTENER_PARKED_EVENTS: &str = "dcb_listener_parked_events";
/// Gauge, by `queue` and `state` (`ready`, `scheduled`, `running`,
/// `succeeded`, `dead`, `cancelled`): jobs.
pub const QUEUE_JOBS: &str = "dcb_queue_jobs";
/// Gauge, by `queue`: how long its oldest due job has waited (0 when none
/// is due): the queue's lag.
pub const QUEUE_OLDEST_READY_AGE_SECONDS: &str = "dcb_queue_oldest_ready_age_seconds";
/// Gauge, by `topic`: messages translators recorded as dead and that are
/// still kept (all consumer groups).
pub const KAFKA_DEAD_MESSAGES_TOTAL: &str = "dcb_kafka_dead_messages_total";
/// Gauge, by `relay`: positions between a relay's checkpoint and the head.
pub const RELAY_LAG_EVENTS: &str = "dcb_relay_lag_events";
/// Counter: batches the store's writer committed since the process started.
pub const APPEND_BATCHES_TOTAL: &str = "dcb_append_batches_total";
/// Counter: append requests in those batches.
pub const APPEND_REQUESTS_TOTAL: &str = "dcb_append_requests_total";
/// Counter: append requests the database refused (each failed alone).
pub const APPEND_REFUSED_TOTAL: &str = "dcb_append_refused_total";
/// Counter: append requests whose outcome could not be found out in time.
pub const APPEND_OUTCOME_UNKNOWN_TOTAL: &str = "dcb_append_outcome_unknown_total";

/// Every metric name this module shows (some only once they have a value).
pub const NAMES: &[&str] = &[
    HEAD_POSITION,
    LISTENER_LAG_EVENTS,
    LISTENER_LAG_SECONDS,
    LISTENER_PARKED_EVENTS,
    QUEUE_JOBS,
    QUEUE_OLDEST_READY_AGE_SECONDS,
    APPEND_DURATION_SECONDS,
    APPEND_BATCH_SIZE,
    DECISION_CONFLICTS_TOTAL,
    DECISIONS_TOTAL,
    KAFKA_DEAD_MESSAGES_TOTAL,
    RELAY_LAG_EVENTS,
    APPEND_BATCHES_TOTAL,
    APPEND_REQUESTS_TOTAL,
    APPEND_REFUSED_TOTAL,
    APPEND_OUTCOME_UNKNOWN_TOTAL,
];

/// Buckets of [`APPEND_DURATION_SECONDS`]: 0.5 ms to 10 s (an append on a
/// quiet store takes about a millisecond; past seconds, something is wrong).
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of [`APPEND_BATCH_SIZE`] (the writer takes up to 100 requests per
/// batch by default).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];
/// How often the recorder folds recorded samples into its histograms, so
/// that a process nobody scrapes keeps no growing backlog of samples.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// A scrape that could not read what it needs.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {what} for the metrics: {source}")]
pub struct MetricsError {
    what: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl MetricsError {
    fn new(what: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        MetricsError {
            what,
            source: Box::new(source),
        }
    }
}

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder that the framework's
/// in-process metrics go to (append latency and batch sizes, decisions and
/// conflicts). Call it once at start-up, before the first append; later
/// calls do nothing. Returns `false` when another recorder was installed
/// first (the application's own): those metrics then go there, and
/// [`render`] shows only what it reads from the database.
pub fn install() -> bool {
    RECORDER
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was installed before dcb's: append and decision metrics \
                     go to it, not to dcb's /metrics"
                );
                return None;
            }
            describe();
            // Counters that an alert rule names exist from the start, at 0.
            metrics::counter!(DECISION_CONFLICTS_TOTAL).increment(0);
            let upkeep = handle.clone();
            let started = std::thread::Builder::new()
                .name("dcb-metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            if let Err(error) = started {
                tracing::warn!(%error, "cannot start the metrics upkeep thread");
            }
            Some(handle)
        })
        .is_some()
}

fn builder() -> PrometheusBuilder {
    // Setting buckets fails only for an empty list; these are constants.
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(APPEND_DURATION_SECONDS.into()),
            DURATION_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(APPEND_BATCH_SIZE.into()), BATCH_BUCKETS)
        })
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// The help texts of the in-process metrics.
fn describe() {
    metrics::describe_histogram!(
        APPEND_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "How long append calls waited for their outcome"
    );
    metrics::describe_histogram!(
        APPEND_BATCH_SIZE,
        "Append requests per batch the writer sent to the database"
    );
    metrics::describe_counter!(
        DECISION_CONFLICTS_TOTAL,
        "Decision appends that failed their condition (each retried, or a conflict)"
    );
    metrics::describe_counter!(DECISIONS_TOTAL, "Decisions made, by outcome");
}

/// The whole Prometheus text of `store`: the in-process metrics (when
/// [`install`] set up the recorder) and what the database says now.
///
/// # Errors
/// [`MetricsError`] when the database cannot be read.
pub async fn render(store: &PgEventStore) -> Result<String, MetricsError> {
    let scraped = scrape(store).await?;
    let mut text = match RECORDER.get() {
        Some(Some(handle)) => handle.render(),
        _ => String::new(),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || scraped.record(store));
    text.push_str(&recorder.handle().render());
    Ok(text)
}

/// A router serving `GET /metrics` for `store` (and installing the
/// recorder, see [`install`]). Nest or merge it into the application's
/// router; a failed scrape answers 503 with the reason.
pub fn router(store: PgEventStore) -> Router {
    install();
    Router::new()
        .route("/metrics", get(serve))
        .with_state(store)
}

async fn serve(axum::extract::State(store): axum::extract::State<PgEventStore>) -> Response {
    match render(&store).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(%error, "metrics scrape failed");
            (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response()
        }
    }
}

/// What one scrape read from the database.
struct Scraped {
    head: u64,
    listeners: Vec<dcb_postgres::listener::ListenerStatus>,
    queues: Vec<(dcb_postgres::queue::QueueSummary, f64)>,
    dead_messages: Vec<(String, i64)>,
    relays: Vec<(String, i64)>,
}

impl Scraped {
    /// Sets every gauge and counter on the current (scrape's own) recorder.
    fn record(&self, store: &PgEventStore) {
        metrics::describe_gauge!(HEAD_POSITION, "Position of the last event in the log");
        metrics::gauge!(HEAD_POSITION).set(self.head as f64);

        metrics::describe_gauge!(
            LISTENER_LAG_EVENTS,
            "Positions between a listener's checkpoint and the head"
        );
        metrics::describe_gauge!(
            LISTENER_LAG_SECONDS,
            metrics::Unit::Seconds,
            "Age of the first event past a listener's checkpoint (0 when caught up)"
        );
        metrics::describe_gauge!(LISTENER_PARKED_EVENTS, "Unresolved parked events");
        for status in &self.listeners {
            let id = status.id.clone();
            metrics::gauge!(LISTENER_LAG_EVENTS, "listener" => id.clone()).set(status.lag as f64);
            if let Some(lag) = status.lag_time {
                metrics::gauge!(LISTENER_LAG_SECONDS, "listener" => id.clone())
                    .set(lag.as_secs_f64());
            }
            metrics::gauge!(LISTENER_PARKED_EVENTS, "listener" => id).set(status.parked as f64);
        }

        metrics::describe_gauge!(QUEUE_JOBS, "Jobs by queue and state");
        metrics::describe_gauge!(
            QUEUE_OLDEST_READY_AGE_SECONDS,
            metrics::Unit::Seconds,
            "How long the oldest due job of a queue has waited (0 when none is due)"
        );
        for (summary, oldest) in &self.queues {
            let counts = &summary.counts;
            for (state, count) in [
                ("ready", counts.ready),
                ("scheduled", counts.scheduled),
                ("running", counts.running),
                ("succeeded", counts.succeeded),
                ("dead", counts.dead),
                ("cancelled", counts.cancelled),
            ] {
                metrics::gauge!(QUEUE_JOBS, "queue" => summary.queue.clone(), "state" => state)
                    .set(count as f64);
            }
            metrics::gauge!(QUEUE_OLDEST_READY_AGE_SECONDS, "queue" => summary.queue.clone())
                .set(*oldest);
        }

        metrics::describe_gauge!(
            KAFKA_DEAD_MESSAGES_TOTAL,
            "Kafka messages recorded as dead and still kept, by topic"
        );
        for (topic, count) in &self.dead_messages {
            metrics::gauge!(KAFKA_DEAD_MESSAGES_TOTAL, "topic" => topic.clone()).set(*count as f64);
        }
        metrics::describe_gauge!(
            RELAY_LAG_EVENTS,
            "Positions between a relay's checkpoint and the head"
        );
        for (relay, position) in &self.relays {
            let lag = self
                .head
                .saturating_sub(u64::try_from(*position).unwrap_or(0));
            metrics::gauge!(RELAY_LAG_EVENTS, "relay" => relay.clone()).set(lag as f64);
        }

        let writer = store.writer_stats();
        metrics::describe_counter!(APPEND_BATCHES_TOTAL, "Batches the store's writer committed");
        metrics::describe_counter!(APPEND_REQUESTS_TOTAL, "Append requests in those batches");
        metrics::describe_counter!(APPEND_REFUSED_TOTAL, "Append requests the database refused");
        metrics::describe_counter!(
            APPEND_OUTCOME_UNKNOWN_TOTAL,
            "Append requests whose outcome could not be found out in time"
        );
        metrics::counter!(APPEND_BATCHES_TOTAL).absolute(writer.batches);
        metrics::counter!(APPEND_REQUESTS_TOTAL).absolute(writer.requests);
        metrics::counter!(APPEND_REFUSED_TOTAL).absolute(writer.refused);
        metrics::counter!(APPEND_OUTCOME_UNKNOWN_TOTAL).absolute(writer.unknown);
    }
}

/// Reads everything the database knows, skipping the tables of components
/// the store's schema does not have.
async fn scrape(store: &PgEventStore) -> Result<Scraped, MetricsError> {
    let pool = store.pool();
    let schema = store.schema();
    let head = store
        .head()
        .await
        .map_err(|e| MetricsError::new("the head of the log", e))?
        .map_or(0, |p| p.0);
    let exists = |table: &'static str| async move {
        sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("{schema}.{table}"))
            .fetch_one(pool)
            .await
            .map_err(|e| MetricsError::new("the schema's tables", e))
    };

    let mut listeners = Vec::new();
    if exists("listener_checkpoints").await? {
        let admin = ListenerAdmin::new(pool.clone(), schema)
            .map_err(|e| MetricsError::new("the listeners", e))?;
        listeners = admin
            .statuses()
            .await
            .map_err(|e| MetricsError::new("the listeners", e))?;
    }

    let mut queues = Vec::new();
    if exists("jobs").await? {
        let admin =
            QueueAdmin::new(pool.clone(), schema).map_err(|e| MetricsError::new("the queue", e))?;
        for summary in admin
            .queues()
            .await
            .map_err(|e| MetricsError::new("the queue", e))?
        {
            let oldest = admin
                .oldest_ready_age(Some(&summary.queue))
                .await
                .map_err(|e| MetricsError::new("the queue", e))?
                .map_or(0.0, |d| d.as_secs_f64());
            queues.push((summary, oldest));
        }
    }

    let mut dead_messages = Vec::new();
    if exists("kafka_dead_messages").await? {
        dead_messages = sqlx::query_as(&format!(
            "SELECT topic, count(*) FROM {schema}.kafka_dead_messages GROUP BY topic ORDER BY topic"
        ))
        .fetch_all(pool)
        .await
        .map_err(|e| MetricsError::new("the Kafka dead records", e))?;
    }

    let mut relays = Vec::new();
    if exists("kafka_relays").await? {
        relays = sqlx::query_as(&format!(
            "SELECT relay_id, position FROM {schema}.kafka_relays ORDER BY relay_id"
        ))
        .fetch_all(pool)
        .await
        .map_err(|e| MetricsError::new("the Kafka relays", e))?;
    }

    Ok(Scraped {
        head,
        listeners,
        queues,
        dead_messages,
        relays,
    })
}
