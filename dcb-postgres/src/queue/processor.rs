//! What a job kind implements (`Processor`), what it sees while it runs
//! (`JobContext`), how it fails (`JobError`), and `append_once`, which records
//! an outcome event at most once.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dcb_core::{
    AppendCondition, AppendResult, BoxError, EventRecord, EventStore, EventType, Position, Query,
    QueryItem, StoreError, Tag,
};
use serde::de::DeserializeOwned;
use serde::Deserialize as _;
use tokio::sync::watch;
use uuid::Uuid;

use dcb_core::Backoff;

use super::job::{ClaimedJob, JobId};

/// The tag key of the tag [`JobContext::once_tag`] puts on hook events.
pub const JOB_TAG_KEY: &str = "job";

/// A background processor for one job kind.
///
/// `run` does the work; `on_success` and `on_failure` return events that the
/// worker records **exactly once** per job (see [`append_once`]): after the
/// job succeeded, and after its final failure. Both hooks run before the
/// worker marks the job done, and only while it holds the job's lease: the
/// success hook when the lease was confirmed less than half a lease ago (by
/// the claim or a heartbeat; no other worker can have taken the job since)
/// or after checking it in the database, the failure hook after noting the
/// failure on the job (which also checks the lease). A job an operator
/// cancels moments before its attempt succeeds may still get its success
/// events; its completion is refused.
///
/// `run` may be executed more than once for one job (a retry, or a worker
/// that died after the work but before the completion), so its effects must
/// be idempotent or at-least-once tolerant.
///
/// ```
/// use async_trait::async_trait;
/// use dcb_core::EventRecord;
/// use dcb_postgres::queue::{JobContext, JobError, JobFailure, Processor};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct SendMail { to: String }
///
/// struct Mailer;
///
/// #[async_trait]
/// impl Processor for Mailer {
///     const KIND: &'static str = "send_mail";
///     type Payload = SendMail;
///
///     async fn run(&self, mail: &SendMail, ctx: &JobContext) -> Result<(), JobError> {
///         if mail.to.is_empty() {
///             return Err(JobError::permanent("no recipient"));
///         }
///         tracing::info!(attempt = ctx.attempt(), to = %mail.to, "sending");
///         Ok(())
///     }
///
///     async fn on_failure(
///         &self,
///         _mail: &SendMail,
///         _failure: &JobFailure,
///         _ctx: &JobContext,
///     ) -> Result<Vec<EventRecord>, JobError> {
///         Ok(Vec::new()) // e.g. vec![MailEvent::MailFailed { .. }.to_record()?]
///     }
/// }
/// ```
#[async_trait]
pub trait Processor: Send + Sync + 'static {
    /// The job kind this processor runs (stored with each job).
    const KIND: &'static str;

    /// The job's payload, stored as JSON.
    type Payload: DeserializeOwned + Send + Sync + 'static;

    /// Does the work of one attempt.
    ///
    /// # Errors
    /// A [`JobError`]: retryable ones are retried with backoff until the
    /// job's attempts or deadline run out; permanent ones end the job at once.
    async fn run(&self, payload: &Self::Payload, ctx: &JobContext) -> Result<(), JobError>;

    /// Events to record once the job succeeded (none by default). They get
    /// the job's tag ([`JobContext::once_tag`]) and are appended at most once.
    ///
    /// # Errors
    /// An error (or a failed append) counts as a failed attempt: the job is
    /// retried and `run` runs again.
    async fn on_success(
        &self,
        payload: &Self::Payload,
        ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        let _ = (payload, ctx);
        Ok(Vec::new())
    }

    /// Events to record once the job failed for the last time (none by
    /// default). They get the job's tag and are appended at most once.
    ///
    /// # Errors
    /// An error (or a failed append) puts the job back to record its failure
    /// again later, without running it.
    async fn on_failure(
        &self,
        payload: &Self::Payload,
        failure: &JobFailure,
        ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        let _ = (payload, failure, ctx);
        Ok(Vec::new())
    }

    /// This kind's retry backoff; `None` uses the workers' default.
    fn backoff(&self) -> Option<Backoff> {
        None
    }
}

/// Why an attempt failed.
#[derive(Debug)]
pub struct JobError {
    source: BoxError,
    permanent: bool,
    retry_after: Option<Duration>,
}

impl JobError {
    /// A failure worth retrying (the default for errors converted with `?`).
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        JobError {
            source: error.into(),
            permanent: false,
            retry_after: None,
        }
    }

    /// A failure no retry can fix: the job dies now (and its failure hook
    /// runs).
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        JobError {
            source: error.into(),
            permanent: true,
            retry_after: None,
        }
    }

    /// Retry no sooner than `delay` (instead of the backoff), e.g. what a
    /// rate limit asked for. Still bounded by attempts and deadline, and at
    /// most [`MAX_DELAY`](dcb_core::MAX_DELAY) (a longer wait is that long).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay.min(dcb_core::MAX_DELAY));
        self
    }

    /// Whether retrying is pointless.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// Whether a retry may help (the error is not permanent); the worker
    /// retries such a failure while the job's attempts and deadline allow.
    pub fn is_retryable(&self) -> bool {
        !self.permanent
    }

    /// Whether the cause is an outage: the event store or the database
    /// could not be reached.
    pub fn is_unavailable(&self) -> bool {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&*self.source);
        while let Some(error) = current {
            if let Some(e) = error.downcast_ref::<StoreError>() {
                if e.is_unavailable() {
                    return true;
                }
            }
            if let Some(e) = error.downcast_ref::<crate::DatabaseError>() {
                if e.is_unavailable() {
                    return true;
                }
            }
            if let Some(e) = error.downcast_ref::<sqlx::Error>() {
                if crate::error::is_unavailable(e) {
                    return true;
                }
            }
            current = error.source();
        }
        false
    }

    /// The requested retry delay, if any.
    pub fn requested_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The cause.
    pub fn source_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for JobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl From<StoreError> for JobError {
    /// Store errors are retryable unless the request itself is wrong.
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::InvalidRequest(_) => JobError::permanent(error),
            other => JobError::retryable(other),
        }
    }
}

impl From<dcb_core::CodecError> for JobError {
    /// An event that does not encode will not encode on a retry either.
    fn from(error: dcb_core::CodecError) -> Self {
        JobError::permanent(error)
    }
}

impl From<BoxError> for JobError {
    fn from(error: BoxError) -> Self {
        JobError::retryable(error)
    }
}

impl From<String> for JobError {
    fn from(message: String) -> Self {
        JobError::retryable(message)
    }
}

impl From<&str> for JobError {
    fn from(message: &str) -> Self {
        JobError::retryable(message)
    }
}

/// What the failure hook learns about a job's final failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFailure {
    /// The last error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// True when the last error was permanent; false when attempts or the
    /// deadline ran out.
    pub permanent: bool,
}

/// What a processor sees while it runs a job: the job's identity and
/// attempt, the event that caused it, and the event store.
#[derive(Clone)]
pub struct JobContext {
    id: JobId,
    kind: String,
    queue: String,
    attempt: u32,
    max_attempts: Option<u32>,
    deadline: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    triggered_by_event: Option<Uuid>,
    triggered_by_position: Option<Position>,
    store: Arc<dyn EventStore>,
    cancelled: watch::Receiver<bool>,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("queue", &self.queue)
            .field("attempt", &self.attempt)
            .field("triggered_by_event", &self.triggered_by_event)
            .finish_non_exhaustive()
    }
}

impl JobContext {
    pub(crate) fn new(
        job: &ClaimedJob,
        store: Arc<dyn EventStore>,
        cancelled: watch::Receiver<bool>,
    ) -> Self {
        JobContext {
            id: job.id,
            kind: job.kind.clone(),
            queue: job.queue.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            deadline: job.deadline,
            created_at: job.created_at,
            triggered_by_event: job.triggered_by_event,
            triggered_by_position: job.triggered_by_position,
            store,
            cancelled,
        }
    }

    /// The job's id.
    pub fn job_id(&self) -> JobId {
        self.id
    }

    /// The job's kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The job's queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The attempt limit, if any.
    pub fn max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The retry deadline, if any.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.deadline
    }

    /// When the job was enqueued.
    pub fn enqueued_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// The id of the event that caused the job, if it was recorded.
    pub fn triggered_by(&self) -> Option<Uuid> {
        self.triggered_by_event
    }

    /// The position of the event that caused the job, if it was recorded.
    pub fn triggered_by_position(&self) -> Option<Position> {
        self.triggered_by_position
    }

    /// The event store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The tag that marks this job's outcome events: `job:<id>`.
    pub fn once_tag(&self) -> Tag {
        Tag::new(JOB_TAG_KEY, self.id)
    }

    /// Appends events to the store (their causation id defaults to the
    /// triggering event).
    ///
    /// # Errors
    /// See [`EventStore::append`].
    pub async fn append(
        &self,
        events: Vec<EventRecord>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult, StoreError> {
        let events = self.with_causation(events);
        self.store.append(events, condition).await
    }

    /// Appends events at most once for this job (see [`append_once`] with
    /// [`once_tag`](Self::once_tag)).
    ///
    /// # Errors
    /// Store errors other than the failed condition.
    pub async fn append_once(&self, events: Vec<EventRecord>) -> Result<AppendOnce, StoreError> {
        let events = self.with_causation(events);
        append_once(&*self.store, self.once_tag(), events).await
    }

    /// True once the worker no longer owns this attempt: its lease was lost
    /// (another worker may be running the job) or the job was cancelled. The
    /// result of the attempt will be rejected; stop early if you can.
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// Resolves when [`is_cancelled`](Self::is_cancelled) becomes true.
    pub async fn cancelled(&self) {
        let mut rx = self.cancelled.clone();
        // An error means the worker dropped the sender: the attempt is over.
        let _ = rx.wait_for(|c| *c).await;
    }

    fn with_causation(&self, mut events: Vec<EventRecord>) -> Vec<EventRecord> {
        if let Some(cause) = self.triggered_by_event {
            for event in &mut events {
                event.metadata.causation_id.get_or_insert(cause);
            }
        }
        events
    }
}

/// The outcome of [`append_once`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOnce {
    /// The events were appended now.
    Appended(AppendResult),
    /// Events of these types with this tag were recorded before; nothing was
    /// appended.
    AlreadyRecorded,
}

impl AppendOnce {
    /// Whether this call appended the events.
    pub fn appended(&self) -> bool {
        matches!(self, AppendOnce::Appended(_))
    }
}

/// Appends `events`, each tagged with `once`, unless an event of one of their
/// types carrying `once` is already in the store. A second call (a retry, a
/// second worker, a redelivered message) appends nothing and returns
/// [`AppendOnce::AlreadyRecorded`], also when both race: the condition is
/// checked by the store atomically with the append.
///
/// The work queue records hook events with the job's tag (`job:<id>`); a
/// publisher can record its success event with a tag of what it published
/// (`cart_publication:<cart id>`).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use dcb_core::{EventMetadata, EventRecord, EventType, InMemoryEventStore, Tag};
/// use dcb_postgres::queue::{append_once, AppendOnce};
/// let store = InMemoryEventStore::new();
/// let record = || EventRecord {
///     event_type: EventType::from("CartPublished"),
///     tags: vec![Tag::new("cart_id", "c1")],
///     payload: b"{}".to_vec(),
///     metadata: EventMetadata::new(),
/// };
/// let once = Tag::new("publication", "c1:7");
/// assert!(append_once(&store, once.clone(), vec![record()]).await.unwrap().appended());
/// assert_eq!(append_once(&store, once, vec![record()]).await.unwrap(), AppendOnce::AlreadyRecorded);
/// # });
/// ```
///
/// # Errors
/// [`StoreError::InvalidRequest`] for an empty `events`; store errors other
/// than the failed condition.
pub async fn append_once<S: EventStore + ?Sized>(
    store: &S,
    once: Tag,
    mut events: Vec<EventRecord>,
) -> Result<AppendOnce, StoreError> {
    if events.is_empty() {
        return Err(StoreError::InvalidRequest(
            "append_once needs at least one event".to_string(),
        ));
    }
    let mut types: Vec<EventType> = Vec::new();
    for event in &mut events {
        if !event.tags.contains(&once) {
            event.tags.push(once.clone());
        }
        if !types.contains(&event.event_type) {
            types.push(event.event_type.clone());
        }
    }
    let condition = AppendCondition::never_matched(Query::from_items([QueryItem::new()
        .types(types)
        .tags([once])]));
    match store.append(events, Some(condition)).await {
        Ok(result) => Ok(AppendOnce::Appended(result)),
        Err(StoreError::ConditionFailed { .. }) => Ok(AppendOnce::AlreadyRecorded),
        Err(e) => Err(e),
    }
}

/// A processor with its payload type erased, so workers can hold many kinds.
#[async_trait]
pub(crate) trait ErasedProcessor: Send + Sync {
    fn backoff(&self) -> Option<Backoff>;
    fn decode(&self, payload: &serde_json::Value) -> Result<Box<dyn Any + Send + Sync>, JobError>;
    async fn run(
        &self,
        payload: &(dyn Any + Send + Sync),
        ctx: &JobContext,
    ) -> Result<(), JobError>;
    async fn on_success(
        &self,
        payload: &(dyn Any + Send + Sync),
        ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError>;
    async fn on_failure(
        &self,
        payload: &(dyn Any + Send + Sync),
        failure: &JobFailure,
        ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError>;
}

pub(crate) struct Erased<P>(pub(crate) P);

impl<P: Processor> Erased<P> {
    fn typed<'a>(&self, payload: &'a (dyn Any + Send + Sync)) -> Result<&'a P::Payload, JobError> {
        payload
            .downcast_ref::<P::Payload>()
            .ok_or_else(|| JobError::permanent("internal error: payload of the wrong type"))
    }
}

#[async_trait]
impl<P: Processor> ErasedProcessor for Erased<P> {
    fn backoff(&self) -> Option<Backoff> {
        self.0.backoff()
    }

    fn decode(&self, payload: &serde_json::Value) -> Result<Box<dyn Any + Send + Sync>, JobError> {
        let typed = P::Payload::deserialize(payload).map_err(|e| {
            JobError::permanent(format!("payload does not decode as {}: {e}", P::KIND))
        })?;
        Ok(Box::new(typed))
    }

    async fn run(
        &self,
        payload: &(dyn Any + Send + Sync),
        ctx: &JobContext,
    ) -> Result<(), JobError> {
        self.0.run(self.typed(payload)?, ctx).await
    }

    async fn on_success(
        &self,
        payload: &(dyn Any + Send + Sync),
        ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        self.0.on_success(self.typed(payload)?, ctx).await
    }

    async fn on_failure(
        &self,
        payload: &(dyn Any + Send + Sync),
        failure: &JobFailure,
        ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        self.0.on_failure(self.typed(payload)?, failure, ctx).await
    }
}
