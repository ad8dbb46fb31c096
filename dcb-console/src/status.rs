//! [`Status`]: everything an operator looks at first, read in one go — the
//! head, every listener with its lag, every queue with its depth and the
//! age of its oldest ready job, and Kafka's dead records and relay lag.
//! `dcb status --json` prints it; the console's overview shows it.

use chrono::{DateTime, Utc};
use dcb_core::EventStore;
use dcb_postgres::listener::ListenerStatus;
use serde::Serialize;

use crate::kafka::{self, DeadRecordCount, RelayInfo};
use crate::ops::Ops;

/// The state of one store's schema and what runs on it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    /// The schema.
    pub schema: String,
    /// The head of the log (`None`: empty).
    pub head: Option<u64>,
    /// Every listener any runner ever started in the schema, by id (empty
    /// when no runner ever ran here).
    pub listeners: Vec<ListenerInfo>,
    /// Every queue that has jobs, by name (empty without a work queue).
    pub queues: Vec<QueueInfo>,
    /// Kafka's tables, when the schema has them.
    pub kafka: Option<KafkaInfo>,
}

/// One listener.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenerInfo {
    /// Its id.
    pub name: String,
    /// `transactional` or `at_least_once` (`None`: not recorded).
    pub mode: Option<String>,
    /// What it is doing (`idle`, `running`, `blocked`, `stopped`...; its
    /// leader's view, `stopped` when no instance leads it).
    pub state: String,
    /// Its checkpoint (0: nothing handled yet).
    pub position: u64,
    /// How many positions it is behind the head.
    pub lag_events: u64,
    /// How long ago the first event past its checkpoint was recorded (0
    /// when caught up; `None` when it could not be read).
    pub lag_seconds: Option<f64>,
    /// Events it parked that nobody resolved.
    pub parked: u64,
    /// The last handler error.
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_at: Option<DateTime<Utc>>,
    /// The event it is stuck on, if any.
    pub failing_position: Option<u64>,
    /// The instance that leads it.
    pub leader: Option<String>,
    /// Events handled since it was created.
    pub handled: u64,
}

impl ListenerInfo {
    /// The operator's view of a listener's status.
    pub fn of(status: &ListenerStatus) -> ListenerInfo {
        ListenerInfo {
            name: status.id.clone(),
            mode: status.mode.map(|m| m.as_str().to_owned()),
            state: status.state.as_str().to_owned(),
            position: status.position.map_or(0, |p| p.0),
            lag_events: status.lag,
            lag_seconds: status.lag_time.map(|d| d.as_secs_f64()),
            parked: status.parked,
            last_error: status.last_error.clone(),
            last_error_at: status.last_error_at,
            failing_position: status.failing_position.map(|p| p.0),
            leader: status.leader.clone(),
            handled: status.handled,
        }
    }
}

/// One queue.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueInfo {
    /// Its name.
    pub name: String,
    /// Jobs by state.
    pub counts: JobCounts,
    /// How long the oldest due job has waited (`None`: none is due).
    pub oldest_ready_age_seconds: Option<f64>,
}

/// Jobs by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JobCounts {
    /// Ready and due.
    pub ready: u64,
    /// Ready, due later (scheduled, or waiting for a retry).
    pub scheduled: u64,
    /// Running.
    pub running: u64,
    /// Succeeded (until purged).
    pub succeeded: u64,
    /// Dead: failed for the last time, waiting for an operator.
    pub dead: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl From<dcb_postgres::queue::QueueCounts> for JobCounts {
    fn from(c: dcb_postgres::queue::QueueCounts) -> Self {
        JobCounts {
            ready: c.ready,
            scheduled: c.scheduled,
            running: c.running,
            succeeded: c.succeeded,
            dead: c.dead,
            cancelled: c.cancelled,
        }
    }
}

/// Kafka's side: dead records and relays.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KafkaInfo {
    /// How many dead records there are.
    pub dead_records: u64,
    /// Dead records by consumer group and topic.
    pub dead_by_topic: Vec<DeadRecordCount>,
    /// Every relay, with its lag.
    pub relays: Vec<RelayInfo>,
}

impl Status {
    /// Reads the status of `ops`'s schema.
    ///
    /// # Errors
    /// Database failures.
    pub async fn read(ops: &Ops) -> Result<Status, crate::Error> {
        let components = ops.components().await?;
        let head = ops.store().head().await?.map(|p| p.0);
        let listeners = if components.listeners {
            ops.listeners()
                .statuses()
                .await?
                .iter()
                .map(ListenerInfo::of)
                .collect()
        } else {
            Vec::new()
        };
        let mut queues = Vec::new();
        if components.queue {
            for summary in ops.queue().queues().await? {
                let age = ops.queue().oldest_ready_age(Some(&summary.queue)).await?;
                queues.push(QueueInfo {
                    name: summary.queue,
                    counts: summary.counts.into(),
                    oldest_ready_age_seconds: age.map(|d| d.as_secs_f64()),
                });
            }
        }
        let kafka = if components.kafka {
            let dead_by_topic = kafka::dead_record_counts(ops).await?;
            Some(KafkaInfo {
                dead_records: dead_by_topic.iter().map(|c| c.count).sum(),
                dead_by_topic,
                relays: kafka::relays(ops, head.unwrap_or(0)).await?,
            })
        } else {
            None
        };
        Ok(Status {
            schema: ops.schema().to_owned(),
            head,
            listeners,
            queues,
            kafka,
        })
    }

    /// Dead jobs across every queue.
    pub fn dead_jobs(&self) -> u64 {
        self.queues.iter().map(|q| q.counts.dead).sum()
    }
}
