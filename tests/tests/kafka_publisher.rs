//! The publishing processor on librdkafka's mock cluster (no broker needed):
//! broker down → retries with backoff → success when it returns, success
//! event once; broker down past the deadline → failure event once; injected
//! request errors; transactional mode.
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`).

use std::time::{Duration, Instant};

mod queue_support;

use dcb_core::Backoff;
use dcb_core::{EventMetadata, EventRecord, EventType, Query, ReadOptions, Tag};
use dcb_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use dcb_kafka::rdkafka::mocking::MockCluster;
use dcb_kafka::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use dcb_kafka::rdkafka::{ClientConfig, Message};
use dcb_kafka::{
    Delivered, KafkaConfig, OutgoingMessage, PublishJob, PublishProcessor, Publisher,
    TransactionalPublisher,
};
use dcb_postgres::queue::{
    JobContext, JobError, JobFailure, JobId, JobState, NewJob, WorkQueue, Workers, WorkersHandle,
};
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::PgEventStore;
use dcb_tests::read::read_all;
use queue_support::wait_for_state;

const PUBLISHED: &str = "CartPublished";
const FAILED: &str = "CartPublicationFailed";

#[derive(serde::Serialize, serde::Deserialize)]
struct PublishCart {
    topic: String,
    cart_id: String,
}

struct CartPublication;

fn record(event_type: &'static str, cart: &str, detail: serde_json::Value) -> EventRecord {
    EventRecord {
        event_type: EventType::from(event_type),
        tags: vec![Tag::new("cart_id", cart)],
        payload: serde_json::to_vec(&detail).unwrap(),
        metadata: EventMetadata::new(),
    }
}

impl PublishJob for CartPublication {
    const KIND: &'static str = "publish_cart";
    type Payload = PublishCart;

    fn message(&self, job: &PublishCart, _: &JobContext) -> Result<OutgoingMessage, JobError> {
        Ok(OutgoingMessage::new(&job.topic)
            .key(job.cart_id.clone())
            .payload(format!(r#"{{"cart_id":"{}"}}"#, job.cart_id)))
    }

    fn published(
        &self,
        job: &PublishCart,
        at: &Delivered,
        _: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        Ok(vec![record(
            PUBLISHED,
            &job.cart_id,
            serde_json::json!({ "partition": at.partition, "offset": at.offset }),
        )])
    }

    fn failed(
        &self,
        job: &PublishCart,
        failure: &JobFailure,
        _: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        Ok(vec![record(
            FAILED,
            &job.cart_id,
            serde_json::json!({ "error": failure.error, "attempts": failure.attempts }),
        )])
    }
}

async fn count(store: &PgEventStore, event_type: &'static str) -> usize {
    let (_, events) = read_all(store, &Query::types([event_type]), ReadOptions::forwards()).await;
    events.len()
}

struct Setup {
    db: TestDatabase,
    store: PgEventStore,
    queue: WorkQueue,
}

async fn setup() -> Setup {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let queue = WorkQueue::new(db.pool().clone(), "dcb").unwrap();
    queue.migrate().await.unwrap();
    Setup { db, store, queue }
}

impl Setup {
    /// Enqueues the publication of `cart_id` to the `carts` topic, retried
    /// for `retry_for`.
    async fn enqueue(&self, cart_id: &str, retry_for: Duration) -> JobId {
        let job = NewJob::new(
            CartPublication::KIND,
            &PublishCart {
                topic: "carts".into(),
                cart_id: cart_id.into(),
            },
        )
        .unwrap()
        .retry_for(retry_for);
        let id = job.id();
        self.queue.enqueue(self.db.pool(), &job).await.unwrap();
        id
    }

    /// Workers publishing through `publisher`, retrying after 100 ms and at
    /// most `max_backoff` apart.
    async fn workers(&self, publisher: Publisher, max_backoff: Duration) -> WorkersHandle {
        Workers::new(self.queue.clone(), self.store.clone())
            .register(PublishProcessor::new(publisher, CartPublication))
            .backoff(Backoff::new(Duration::from_millis(100), max_backoff))
            .poll_interval(Duration::from_millis(100))
            .start()
            .await
            .unwrap()
    }

    /// The attempts job `id` took to reach `state` (waiting up to a minute).
    async fn attempts_to(&self, id: JobId, state: JobState) -> u32 {
        wait_for_state(&self.queue.admin(), id, state).await.attempt
    }
}

/// `n` messages to the `ledger` topic, keyed `k0`, `k1`, ...
fn ledger_batch(n: usize) -> Vec<OutgoingMessage> {
    (0..n)
        .map(|i| {
            OutgoingMessage::new("ledger")
                .key(format!("k{i}"))
                .payload("{}")
        })
        .collect()
}

fn messages_in(bootstrap: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("dcb-check-{}", fastrand::u64(..)))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut idle_since = None::<Instant>;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                assert_eq!(m.topic(), topic);
                n += 1;
                idle_since = None;
            }
            _ => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if n > 0 && since.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_retries_with_backoff_and_records_the_success_once_when_it_returns() {
    let s = setup().await;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("carts", 1, 1).unwrap();
    cluster.broker_down(1).unwrap();
    let config = KafkaConfig::new(cluster.bootstrap_servers()).option("message.timeout.ms", "500");
    let publisher = Publisher::new(&config).unwrap();

    let id = s.enqueue("c1", Duration::from_secs(600)).await;
    let workers = s.workers(publisher, Duration::from_millis(400)).await;

    // Several attempts fail while the broker is down.
    let start = Instant::now();
    loop {
        let info = s.queue.admin().job(id).await.unwrap().unwrap();
        assert_ne!(
            info.state,
            JobState::Succeeded,
            "published while the broker was down"
        );
        if info.attempt >= 3 {
            assert!(info.last_error.is_some());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no retries: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&s.store, PUBLISHED).await, 0);

    cluster.broker_up(1).unwrap();
    let attempts = s.attempts_to(id, JobState::Succeeded).await;
    assert!(attempts >= 3, "{attempts}");
    workers.shutdown(Duration::from_secs(5)).await;
    assert_eq!(count(&s.store, PUBLISHED).await, 1, "success event once");
    assert_eq!(count(&s.store, FAILED).await, 0);
    // The failed attempts never reached the broker: one copy on the topic.
    assert_eq!(messages_in(&cluster.bootstrap_servers(), "carts"), 1);
    s.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_past_the_deadline_records_the_failure_once() {
    let s = setup().await;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("carts", 1, 1).unwrap();
    cluster.broker_down(1).unwrap();
    let config = KafkaConfig::new(cluster.bootstrap_servers()).option("message.timeout.ms", "300");
    let publisher = Publisher::new(&config).unwrap();

    let id = s.enqueue("c2", Duration::from_secs(2)).await;
    let workers = s.workers(publisher, Duration::from_millis(300)).await;
    let attempts = s.attempts_to(id, JobState::Dead).await;
    assert!(attempts >= 2, "{attempts}");
    // The broker coming back changes nothing for a dead job.
    cluster.broker_up(1).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    workers.shutdown(Duration::from_secs(5)).await;
    assert_eq!(count(&s.store, FAILED).await, 1, "failure event once");
    assert_eq!(count(&s.store, PUBLISHED).await, 0);
    s.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_produce_errors_are_retried_by_the_idempotent_producer() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("orders", 1, 1).unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    let publisher = Publisher::connect(&KafkaConfig::new(cluster.bootstrap_servers()))
        .await
        .unwrap();
    let (partition, offset) = publisher
        .send(OutgoingMessage::new("orders").key("o1").payload("{}"))
        .await
        .unwrap();
    assert_eq!((partition, offset), (0, 0), "one copy, first offset");
    let (_, second) = publisher
        .send(OutgoingMessage::new("orders").key("o2").payload("{}"))
        .await
        .unwrap();
    assert_eq!(second, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_publisher_commits_batches_atomically() {
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic("ledger", 2, 3).unwrap();
    let config = KafkaConfig::new(cluster.bootstrap_servers());
    let publisher = TransactionalPublisher::new(&config, "dcb-test-worker-0")
        .await
        .unwrap();
    let batch = ledger_batch(5);
    let deliveries = publisher.send_all(&batch).await.unwrap();
    assert_eq!(deliveries.len(), 5);
    let deliveries = publisher.send_all(&batch[..2]).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(messages_in(&cluster.bootstrap_servers(), "ledger"), 7);

    // A restarted worker with the same stable id initialises again (fencing
    // the old incarnation on a real broker) and publishes.
    drop(publisher);
    let successor = TransactionalPublisher::new(&config, "dcb-test-worker-0")
        .await
        .unwrap();
    assert_eq!(successor.send_all(&batch[..1]).await.unwrap().len(), 1);
    assert_eq!(messages_in(&cluster.bootstrap_servers(), "ledger"), 8);
}

/// A batch the broker refuses part of is aborted: a `read_committed`
/// consumer sees none of it, and the next batch commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_publisher_aborts_a_failed_batch() {
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic("ledger", 1, 3).unwrap();
    let config = KafkaConfig::new(cluster.bootstrap_servers());
    let publisher = TransactionalPublisher::new(&config, "dcb-test-abort")
        .await
        .unwrap();
    let batch = ledger_batch(3);
    publisher.send_all(&batch).await.unwrap();
    // The broker refuses the next produce request for good.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    publisher
        .send_all(&batch)
        .await
        .expect_err("the refused batch fails");
    publisher.send_all(&batch[..1]).await.unwrap();
    assert_eq!(
        messages_in(&cluster.bootstrap_servers(), "ledger"),
        4,
        "the aborted batch is invisible to read_committed consumers"
    );
}
