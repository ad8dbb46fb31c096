//! A work-queue processor that publishes one message per job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_core::EventRecord;
use dcb_postgres::queue::{JobContext, JobError, JobFailure, JobId, Processor};
use serde::de::DeserializeOwned;

use crate::{KafkaError, OutgoingMessage, Publisher};

/// Where the broker stored a published message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}

/// One kind of publishing job: which message a job publishes and which
/// events record its outcome. Run it with [`PublishProcessor`].
pub trait PublishJob: Send + Sync + 'static {
    /// The job kind (stored with each job).
    const KIND: &'static str;

    /// The job's payload, stored as JSON.
    type Payload: DeserializeOwned + Send + Sync + 'static;

    /// The message to publish.
    ///
    /// # Errors
    /// A [`JobError`]; use [`JobError::permanent`] for a payload that can
    /// never become a message.
    fn message(
        &self,
        payload: &Self::Payload,
        ctx: &JobContext,
    ) -> Result<OutgoingMessage, JobError>;

    /// The events recording that the broker acknowledged the message (none
    /// by default). Recorded once per job.
    ///
    /// # Errors
    /// An error counts as a failed attempt (the message is published again).
    fn published(
        &self,
        payload: &Self::Payload,
        delivered: &Delivered,
        ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        let _ = (payload, delivered, ctx);
        Ok(Vec::new())
    }

    /// The events recording that publishing failed for good (attempts or
    /// deadline exhausted, or a permanent error; none by default). Recorded
    /// once per job.
    ///
    /// # Errors
    /// An error puts the job back to record its failure later.
    fn failed(
        &self,
        payload: &Self::Payload,
        failure: &JobFailure,
        ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        let _ = (payload, failure, ctx);
        Ok(Vec::new())
    }
}

/// A [`Processor`] that publishes the message of each job with a
/// [`Publisher`] (idempotent, `acks=all`) and records the outcome events of a
/// [`PublishJob`].
///
/// - The success event is recorded only after the broker acknowledged, by the
///   queue's `on_success` hook, which appends it with a condition on the job's
///   tag: a retry or a second worker never records it twice.
/// - A failed send is a retryable [`JobError`]: the queue retries with its
///   backoff until the job's attempts or deadline run out, then the failure
///   event is recorded once. A message the broker refuses as too large fails
///   permanently at once.
/// - Publishing is at least once: a worker that dies after the
///   acknowledgement and before recording the success runs the job again.
///
/// ```no_run
/// # async fn example(queue: dcb_postgres::queue::WorkQueue, store: dcb_postgres::PgEventStore) -> Result<(), Box<dyn std::error::Error>> {
/// use dcb_core::EventRecord;
/// use dcb_kafka::{Delivered, KafkaConfig, OutgoingMessage, PublishJob, PublishProcessor, Publisher};
/// use dcb_postgres::queue::{JobContext, JobError, Workers};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct PublishCart { cart_id: String, items: Vec<String> }
///
/// struct CartPublication;
///
/// impl PublishJob for CartPublication {
///     const KIND: &'static str = "publish_cart";
///     type Payload = PublishCart;
///     fn message(&self, cart: &PublishCart, _: &JobContext) -> Result<OutgoingMessage, JobError> {
///         OutgoingMessage::new("carts").key(cart.cart_id.clone()).json(&cart.items)
///             .map_err(JobError::permanent)
///     }
///     fn published(&self, cart: &PublishCart, at: &Delivered, _: &JobContext)
///         -> Result<Vec<EventRecord>, JobError> {
///         Ok(Vec::new()) // e.g. vec![CartEvent::CartPublished { .. }.to_record()?]
///     }
/// }
///
/// let publisher = Publisher::new(&KafkaConfig::new("127.0.0.1:9092"))?;
/// let workers = Workers::new(queue, store)
///     .register(PublishProcessor::new(publisher, CartPublication))
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
pub struct PublishProcessor<J> {
    publisher: Arc<Publisher>,
    job: J,
    /// Acknowledged deliveries waiting for `on_success`, with when each
    /// was acknowledged.
    delivered: Mutex<HashMap<(JobId, u32), (Instant, Delivered)>>,
}

/// How long an acknowledged delivery waits for its `on_success`. The queue
/// calls it right after `run` returns; an entry older than this belongs to
/// an attempt whose lease was lost (another worker runs the job), and is
/// dropped so that the map does not grow.
const DELIVERY_MEMORY: Duration = Duration::from_secs(600);

impl<J> std::fmt::Debug for PublishProcessor<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishProcessor")
            .field("publisher", &self.publisher)
            .finish_non_exhaustive()
    }
}

impl<J: PublishJob> PublishProcessor<J> {
    /// A processor publishing with `publisher` (or a shared
    /// `Arc<Publisher>`).
    pub fn new(publisher: impl Into<Arc<Publisher>>, job: J) -> Self {
        PublishProcessor {
            publisher: publisher.into(),
            job,
            delivered: Mutex::new(HashMap::new()),
        }
    }

    fn deliveries(&self) -> std::sync::MutexGuard<'_, HashMap<(JobId, u32), (Instant, Delivered)>> {
        self.delivered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers the delivery of one attempt, forgetting those of earlier
    /// attempts of the job and those too old to be asked for.
    fn remember(&self, job: JobId, attempt: u32, delivered: Delivered) {
        let now = Instant::now();
        let mut deliveries = self.deliveries();
        deliveries.retain(|(id, a), (at, _)| {
            !(*id == job && *a < attempt) && now.duration_since(*at) < DELIVERY_MEMORY
        });
        deliveries.insert((job, attempt), (now, delivered));
    }

    /// How many acknowledged deliveries wait for their `on_success`.
    #[doc(hidden)]
    pub fn pending_deliveries(&self) -> usize {
        self.deliveries().len()
    }
}

#[async_trait]
impl<J: PublishJob> Processor for PublishProcessor<J> {
    const KIND: &'static str = J::KIND;
    type Payload = J::Payload;

    async fn run(&self, payload: &J::Payload, ctx: &JobContext) -> Result<(), JobError> {
        let message = self.job.message(payload, ctx)?;
        let topic = message.topic.clone();
        match self.publisher.send(message).await {
            Ok((partition, offset)) => {
                tracing::debug!(%topic, partition, offset, "published");
                self.remember(
                    ctx.job_id(),
                    ctx.attempt(),
                    Delivered {
                        topic,
                        partition,
                        offset,
                    },
                );
                Ok(())
            }
            Err(error) => Err(job_error(error)),
        }
    }

    async fn on_success(
        &self,
        payload: &J::Payload,
        ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        let delivered = self
            .deliveries()
            .remove(&(ctx.job_id(), ctx.attempt()))
            .map(|(_, delivered)| delivered)
            .ok_or_else(|| JobError::retryable("the delivery of this attempt is unknown"))?;
        self.job.published(payload, &delivered, ctx)
    }

    async fn on_failure(
        &self,
        payload: &J::Payload,
        failure: &JobFailure,
        ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        self.deliveries().retain(|(id, _), _| *id != ctx.job_id());
        self.job.failed(payload, failure, ctx)
    }
}

fn job_error(error: KafkaError) -> JobError {
    // A message the broker can never take, or a refused configuration: no
    // retry helps.
    if error.is_retryable() {
        JobError::retryable(error)
    } else {
        JobError::permanent(error)
    }
}
