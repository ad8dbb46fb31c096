//! PublishCart: every submitted cart goes to the `published-carts` topic
//! once, through the work queue.
//!
//! 1. [`EnqueuePublication`], a transactional listener on `CartSubmitted`,
//!    enqueues a [`PublishCartJob`] in the transaction that advances its
//!    checkpoint, deduplicated by the triggering event's id, with a retry
//!    deadline (one hour by default).
//! 2. [`PublishCartProcessor`] runs the job: unless the cart's publication is
//!    recorded already, it hands the cart to a [`CartPublisher`] (Kafka in
//!    the server, a recorder in tests) and then makes [`RecordPublication`],
//!    which records `CartPublished` once per cart.
//! 3. When the deadline passes without success, the queue's failure hook
//!    records `CartPublicationFailed` once for the job.

use std::convert::Infallible;
use std::time::Duration;

use async_trait::async_trait;
use dcb_core::{
    BoxError, Decision, DecisionMaker, Event, Position, Query, QueryItem, Sequenced, StateMutate,
    StateQuery, TransactionalListener,
};
use dcb_postgres::listener::PgTransaction;
use dcb_postgres::queue::{JobContext, JobError, JobFailure, NewJob, Processor, WorkQueue};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::{CartEvent, CartEventTag, CartEventType, OrderedProduct, PublicationStream};

/// The topic submitted carts go to.
pub const PUBLISHED_CARTS_TOPIC: &str = "published-carts";

/// How long a publication is retried by default.
pub const DEFAULT_PUBLISH_DEADLINE: Duration = Duration::from_secs(3600);

/// The message on `published-carts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedCart {
    /// The cart (also the message key).
    pub cart_id: Uuid,
    /// What was ordered, in order, each at its own price.
    pub ordered_products: Vec<OrderedProduct>,
    /// The sum.
    pub total_price: Decimal,
}

/// The payload of a publish job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishCartJob {
    /// What to publish.
    pub cart: PublishedCart,
    /// The id of the `CartSubmitted` event.
    pub event_id: Uuid,
    /// Its position.
    pub position: u64,
}

/// Where submitted carts are published to: the seam between the work queue
/// and Kafka.
#[async_trait]
pub trait CartPublisher: Send + Sync + 'static {
    /// Publishes `job.cart`; returns once the broker acknowledged it.
    ///
    /// # Errors
    /// Any error; the job is retried until its deadline.
    async fn publish(&self, job: &PublishCartJob) -> Result<(), BoxError>;
}

/// Records that a cart was published, once per cart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordPublication {
    /// The cart.
    pub cart_id: Uuid,
}

/// Whether a cart's publication was recorded.
#[derive(StateQuery, Clone, Debug)]
#[state_query(PublicationStream)]
pub struct PublicationState {
    #[id]
    cart_id: Uuid,
    published: bool,
}

impl StateMutate for PublicationState {
    fn mutate(&mut self, event: PublicationStream) {
        match event {
            PublicationStream::CartPublished { .. } => self.published = true,
        }
    }
}

impl Decision for RecordPublication {
    type Event = CartEvent;
    type StateQuery = PublicationState;
    type Error = Infallible;

    fn state_query(&self) -> PublicationState {
        PublicationState {
            cart_id: self.cart_id,
            published: false,
        }
    }

    fn process(&self, state: &PublicationState) -> Result<Vec<CartEvent>, Infallible> {
        if state.published {
            return Ok(Vec::new());
        }
        Ok(vec![CartEvent::CartPublished {
            cart_id: self.cart_id,
        }])
    }
}

/// The transactional listener that turns `CartSubmitted` into publish jobs.
pub struct EnqueuePublication {
    queue: WorkQueue,
    deadline: Duration,
}

impl EnqueuePublication {
    /// The listener's id (its checkpoint).
    pub const ID: &'static str = "cart-publication-enqueuer";

    /// Enqueues into `queue`, retrying each publication for `deadline`.
    pub fn new(queue: WorkQueue, deadline: Duration) -> Self {
        EnqueuePublication { queue, deadline }
    }
}

#[async_trait]
impl TransactionalListener<PgTransaction> for EnqueuePublication {
    type Event = CartEvent;

    fn id(&self) -> &str {
        Self::ID
    }

    fn query(&self) -> Query {
        Query::types([CartEventType::CartSubmitted])
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: Sequenced<CartEvent>,
    ) -> Result<(), BoxError> {
        let CartEvent::CartSubmitted {
            cart_id,
            ordered_products,
            total_price,
        } = event.event
        else {
            return Ok(());
        };
        let event_id = event.metadata.event_id;
        let payload = PublishCartJob {
            cart: PublishedCart {
                cart_id,
                ordered_products,
                total_price,
            },
            event_id,
            position: event.position.0,
        };
        let job = NewJob::new(PUBLISH_CART_KIND, &payload)?
            .retry_for(self.deadline)
            .dedupe_key(event_id.to_string())
            .triggered_by_id(event_id, Some(event.position));
        let id = self.queue.enqueue(&mut **tx, &job).await?;
        tracing::info!(%cart_id, job = ?id, "publication enqueued");
        Ok(())
    }
}

/// The job kind of publications.
pub const PUBLISH_CART_KIND: &str = "publish_cart";

/// Runs publish jobs with a [`CartPublisher`].
pub struct PublishCartProcessor<P> {
    publisher: P,
}

impl<P: CartPublisher> PublishCartProcessor<P> {
    /// Publishes through `publisher`.
    pub fn new(publisher: P) -> Self {
        PublishCartProcessor { publisher }
    }
}

/// Whether `CartPublished` was recorded for `cart_id`.
async fn is_published(ctx: &JobContext, cart_id: Uuid) -> Result<bool, BoxError> {
    let query = Query::from_items([QueryItem::new()
        .types([CartEventType::CartPublished])
        .tags([CartEventTag::CartId.of(cart_id)])]);
    let result = ctx
        .store()
        .read(&query, dcb_core::ReadOptions::forwards().limit(1))
        .await?;
    let (_, events) = result.collect().await?;
    Ok(!events.is_empty())
}

#[async_trait]
impl<P: CartPublisher> Processor for PublishCartProcessor<P> {
    const KIND: &'static str = PUBLISH_CART_KIND;
    type Payload = PublishCartJob;

    async fn run(&self, job: &PublishCartJob, ctx: &JobContext) -> Result<(), JobError> {
        let cart_id = job.cart.cart_id;
        if is_published(ctx, cart_id)
            .await
            .map_err(JobError::retryable)?
        {
            tracing::info!(%cart_id, "cart was published before; nothing to do");
            return Ok(());
        }
        self.publisher
            .publish(job)
            .await
            .map_err(JobError::retryable)?;
        let maker = DecisionMaker::new(ctx.store().clone());
        let options = dcb_core::MakeOptions::new().causation_id(job.event_id);
        let decided = maker
            .make_with(&RecordPublication { cart_id }, options)
            .await
            .map_err(JobError::retryable)?;
        tracing::info!(%cart_id, position = ?decided.last_position(), "cart published");
        Ok(())
    }

    async fn on_failure(
        &self,
        job: &PublishCartJob,
        failure: &JobFailure,
        _ctx: &JobContext,
    ) -> Result<Vec<dcb_core::EventRecord>, JobError> {
        let cart_id = job.cart.cart_id;
        tracing::error!(%cart_id, error = %failure.error, "cart publication failed for good");
        let event = CartEvent::CartPublicationFailed {
            cart_id,
            reason: failure.error.clone(),
        };
        Ok(vec![event.to_record().map_err(JobError::permanent)?])
    }
}

/// The position of `job`'s `CartSubmitted` event.
pub fn job_position(job: &PublishCartJob) -> Position {
    Position(job.position)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slices::test_support::*;
    use dcb_core::testing::TestHarness;

    #[test]
    fn a_publication_is_recorded() {
        TestHarness::given([created(CART), submitted(CART, &[(1, 10, "1.00")])])
            .when(RecordPublication { cart_id: CART })
            .then([CartEvent::CartPublished { cart_id: CART }]);
    }

    #[test]
    fn a_publication_is_recorded_once() {
        TestHarness::given([CartEvent::CartPublished { cart_id: CART }])
            .when(RecordPublication { cart_id: CART })
            .then([]);
    }

    #[test]
    fn another_carts_publication_does_not_count() {
        TestHarness::given([CartEvent::CartPublished { cart_id: OTHER }])
            .when(RecordPublication { cart_id: CART })
            .then([CartEvent::CartPublished { cart_id: CART }]);
    }
}
