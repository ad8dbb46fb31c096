//! Jobs as written (`NewJob`), as claimed (`ClaimedJob`) and as reported
//! (`JobInfo`), with their states and the retry backoff.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dcb_core::trace::{TraceContext, MAX_TRACEPARENT_BYTES, MAX_TRACESTATE_BYTES};
use dcb_core::{Backoff, Position, SequencedEvent};
use serde::Serialize;
use uuid::Uuid;

use super::QueueError;
use crate::text;

/// A job's id.
pub type JobId = Uuid;

/// The queue a job goes to when [`NewJob::queue`] is not called.
pub const DEFAULT_QUEUE: &str = "default";

/// The longest kind or queue name, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// The longest dedupe key, in bytes (with the kind, it is a key of the
/// dedupe index, whose entries PostgreSQL limits to about 2.7 KB).
pub const MAX_DEDUPE_KEY_BYTES: usize = 1000;

/// The attempt limit of a job enqueued with neither [`NewJob::max_attempts`]
/// nor a deadline.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;

/// Where a job is in its life.
///
/// `Ready` → `Running` → `Succeeded`, or back to `Ready` for a retry, or
/// `Dead` after the last failure. `Dead` jobs can be redriven (back to
/// `Ready`); `Ready`, `Running` and `Dead` jobs can be cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its `run_at` and a free worker.
    Ready,
    /// Claimed by a worker that holds its lease.
    Running,
    /// Done.
    Succeeded,
    /// Failed for the last time; kept with its last error until redriven,
    /// cancelled or purged.
    Dead,
    /// Cancelled by an operator.
    Cancelled,
}

impl JobState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Ready => "ready",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, QueueError> {
        Ok(match s {
            "ready" => JobState::Ready,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "dead" => JobState::Dead,
            "cancelled" => JobState::Cancelled,
            other => {
                return Err(QueueError::Corrupt(format!("unknown job state {other:?}")));
            }
        })
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job to enqueue: its kind, payload and scheduling.
///
/// ```
/// use std::time::Duration;
/// use dcb_postgres::queue::NewJob;
/// #[derive(serde::Serialize)]
/// struct Publish { cart_id: String }
/// let job = NewJob::new("publish_cart", &Publish { cart_id: "c1".into() })
///     .unwrap()
///     .queue("kafka")
///     .priority(10)
///     .retry_for(Duration::from_secs(3600))
///     .dedupe_key("publish:c1:42");
/// assert_eq!(job.kind(), "publish_cart");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    pub(crate) id: JobId,
    pub(crate) kind: String,
    pub(crate) payload: serde_json::Value,
    pub(crate) queue: String,
    pub(crate) priority: i32,
    pub(crate) run_at: Option<DateTime<Utc>>,
    pub(crate) run_after: Option<Duration>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) deadline: Option<DateTime<Utc>>,
    pub(crate) retry_for: Option<Duration>,
    pub(crate) dedupe_key: Option<String>,
    pub(crate) triggered_by_event: Option<Uuid>,
    pub(crate) triggered_by_position: Option<Position>,
    pub(crate) trace: Option<TraceContext>,
}

impl NewJob {
    /// A job of `kind` with `payload` serialized as JSON, on the default
    /// queue, priority 0, due now, up to [`DEFAULT_MAX_ATTEMPTS`] attempts.
    ///
    /// # Errors
    /// The payload does not serialize.
    pub fn new(kind: impl Into<String>, payload: &impl Serialize) -> Result<Self, QueueError> {
        let payload = serde_json::to_value(payload).map_err(QueueError::Payload)?;
        Ok(Self::from_json(kind, payload))
    }

    /// A job for processor `P` (its [`Processor::KIND`](super::Processor::KIND)),
    /// with a payload of the processor's own type.
    ///
    /// # Errors
    /// The payload does not serialize.
    pub fn for_processor<P>(payload: &P::Payload) -> Result<Self, QueueError>
    where
        P: super::Processor,
        P::Payload: Serialize,
    {
        Self::new(P::KIND, payload)
    }

    /// A job with an already encoded payload.
    pub fn from_json(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        NewJob {
            id: Uuid::new_v4(),
            kind: kind.into(),
            payload,
            queue: DEFAULT_QUEUE.to_string(),
            priority: 0,
            run_at: None,
            run_after: None,
            max_attempts: None,
            deadline: None,
            retry_for: None,
            dedupe_key: None,
            triggered_by_event: None,
            triggered_by_position: None,
            trace: None,
        }
    }

    /// The id the job will have (fresh per `NewJob`).
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The kind (the processor that runs it).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The queue (workers claim from the queues they serve).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Higher runs first among due jobs (default 0).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Not before this instant (a `timestamptz`: no local-time ambiguity).
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self.run_after = None;
        self
    }

    /// Not before this long after the enqueue (measured by the database
    /// clock; at most [`MAX_DELAY`](dcb_core::MAX_DELAY)).
    pub fn run_after(mut self, delay: Duration) -> Self {
        self.run_after = Some(delay);
        self.run_at = None;
        self
    }

    /// At most this many attempts (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// No retry is scheduled after this instant. Without
    /// [`max_attempts`](Self::max_attempts), the deadline alone limits retries.
    pub fn deadline(mut self, at: DateTime<Utc>) -> Self {
        self.deadline = Some(at);
        self.retry_for = None;
        self
    }

    /// Keeps retrying for this long after the enqueue (a deadline measured by
    /// the database clock, at most [`MAX_DELAY`](dcb_core::MAX_DELAY)), e.g.
    /// one hour for a publish job.
    pub fn retry_for(mut self, period: Duration) -> Self {
        self.retry_for = Some(period);
        self.deadline = None;
        self
    }

    /// While a job of the same kind with this key is ready, running or dead,
    /// enqueueing another one does nothing.
    pub fn dedupe_key(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }

    /// Records the event that caused this job (its id and position);
    /// processors see it in [`JobContext`](super::JobContext) and hook events
    /// get it as their causation id.
    pub fn triggered_by(mut self, event: &SequencedEvent) -> Self {
        self.triggered_by_event = Some(event.metadata().event_id);
        self.triggered_by_position = Some(event.position);
        self
    }

    /// Records the id (and, if known, the position) of the event that caused
    /// this job.
    pub fn triggered_by_id(mut self, event_id: Uuid, position: Option<Position>) -> Self {
        self.triggered_by_event = Some(event_id);
        self.triggered_by_position = position;
        self
    }

    /// Sets the trace context the job's attempts continue. Without it, the
    /// job gets the context of the span current at enqueue (see
    /// [`dcb_core::trace`]), if any.
    pub fn trace(mut self, context: TraceContext) -> Self {
        self.trace = Some(context);
        self
    }

    /// Checks that PostgreSQL can store every field: no NUL in the kind,
    /// queue, dedupe key or payload, and keys short enough for their index.
    pub(crate) fn validate(&self) -> Result<(), QueueError> {
        let invalid = QueueError::InvalidJob;
        text::check("kind", &self.kind, MAX_NAME_BYTES).map_err(invalid)?;
        text::check("queue", &self.queue, MAX_NAME_BYTES).map_err(invalid)?;
        if let Some(key) = &self.dedupe_key {
            text::check("dedupe key", key, MAX_DEDUPE_KEY_BYTES).map_err(invalid)?;
        }
        if let Some(trace) = &self.trace {
            text::check("trace context", &trace.traceparent, MAX_TRACEPARENT_BYTES)
                .map_err(invalid)?;
            if let Some(state) = &trace.tracestate {
                text::check("trace state", state, MAX_TRACESTATE_BYTES).map_err(invalid)?;
            }
        }
        if let Some(path) = text::json_nul_path(&self.payload) {
            return Err(QueueError::InvalidJob(format!(
                "payload at {path} contains a NUL character, which PostgreSQL cannot store"
            )));
        }
        Ok(())
    }

    pub(crate) fn effective_max_attempts(&self) -> Option<u32> {
        match (
            self.max_attempts,
            self.deadline.is_some() || self.retry_for.is_some(),
        ) {
            (Some(n), _) => Some(n),
            (None, true) => None,
            (None, false) => Some(DEFAULT_MAX_ATTEMPTS),
        }
    }
}

/// A job a worker claimed: what it needs to run it and to prove ownership
/// (the attempt and the lease token) when it heartbeats, completes or fails.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimedJob {
    /// The id.
    pub id: JobId,
    /// The queue.
    pub queue: String,
    /// The kind.
    pub kind: String,
    /// The payload as JSON.
    pub payload: serde_json::Value,
    /// The priority.
    pub priority: i32,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The attempt limit, if any.
    pub max_attempts: Option<u32>,
    /// The retry deadline, if any.
    pub deadline: Option<DateTime<Utc>>,
    /// When this attempt was due.
    pub run_at: DateTime<Utc>,
    /// The dedupe key, if any.
    pub dedupe_key: Option<String>,
    /// The id of the event that caused the job, if recorded.
    pub triggered_by_event: Option<Uuid>,
    /// The position of that event, if recorded.
    pub triggered_by_position: Option<Position>,
    /// The error of the previous attempt, if any.
    pub last_error: Option<String>,
    /// True when an earlier attempt already decided this job's final failure
    /// but did not finish recording it; the worker records it without running.
    pub doomed: bool,
    /// When the job was enqueued.
    pub created_at: DateTime<Utc>,
    /// The fencing token of this claim.
    pub lease_token: Uuid,
    /// The trace context the job was enqueued with; each attempt's span is
    /// its child.
    pub trace: Option<TraceContext>,
}

impl ClaimedJob {
    /// Whether the job has no attempts left and must not run again: it was
    /// claimed past its attempt limit, or a retry became due after its
    /// deadline (an expired lease puts a job back as due at once, so this
    /// catches a worker that died during the last allowed attempt).
    pub fn exhausted(&self) -> bool {
        self.doomed
            || self.max_attempts.is_some_and(|m| self.attempt > m)
            || (self.attempt > 1 && self.deadline.is_some_and(|d| self.run_at > d))
    }
}

/// What the operations API reports about a job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobInfo {
    /// The id.
    pub id: JobId,
    /// The queue.
    pub queue: String,
    /// The kind.
    pub kind: String,
    /// The payload as JSON.
    pub payload: serde_json::Value,
    /// The state.
    pub state: JobState,
    /// The priority.
    pub priority: i32,
    /// When it is (or was last) due.
    pub run_at: DateTime<Utc>,
    /// Attempts started so far.
    pub attempt: u32,
    /// The attempt limit, if any.
    pub max_attempts: Option<u32>,
    /// The retry deadline, if any.
    pub deadline: Option<DateTime<Utc>>,
    /// The dedupe key, if any.
    pub dedupe_key: Option<String>,
    /// The id of the event that caused the job, if recorded.
    pub triggered_by_event: Option<Uuid>,
    /// The last error.
    pub last_error: Option<String>,
    /// The worker holding (or that last held) the lease.
    pub locked_by: Option<String>,
    /// Until when the current lease runs.
    pub lease_until: Option<DateTime<Utc>>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it succeeded, died or was cancelled.
    pub finished_at: Option<DateTime<Utc>>,
}

/// How many jobs are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Ready and due now.
    pub ready: u64,
    /// Ready but due later (scheduled or waiting for a retry).
    pub scheduled: u64,
    /// Running.
    pub running: u64,
    /// Succeeded (until purged).
    pub succeeded: u64,
    /// Dead.
    pub dead: u64,
    /// Cancelled (until purged).
    pub cancelled: u64,
}

/// The work queue's default retry backoff: 1 s, doubling, capped at 5
/// minutes, half jitter.
pub const DEFAULT_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
