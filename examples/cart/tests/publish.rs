//! PublishCart through the work queue, with a recording publisher in place
//! of Kafka (the Kafka end-to-end test is in `kafka.rs`).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cart::slices::publish_cart::{
    CartPublisher, EnqueuePublication, PublishCartJob, PUBLISH_CART_KIND,
};
use common::*;
use dcb_core::{BoxError, EventStore, Query, ReadOptions};

#[derive(Default)]
struct Recorder {
    published: Mutex<Vec<PublishCartJob>>,
    fail: bool,
}

#[async_trait]
impl CartPublisher for Recorder {
    async fn publish(&self, job: &PublishCartJob) -> Result<(), BoxError> {
        if self.fail {
            return Err("the broker is down".into());
        }
        self.published.lock().unwrap().push(job.clone());
        Ok(())
    }
}

/// The events of `event_type` in the store, waiting (bounded) until there
/// is at least one.
async fn wait_for_events(t: &TestApp, event_type: &str) -> usize {
    let query = Query::types([event_type.to_owned()]);
    for _ in 0..300 {
        let (_, events) = t
            .app
            .store()
            .read(&query, ReadOptions::forwards())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        if !events.is_empty() {
            return events.len();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {event_type} within 30 s");
}

/// What is left once nothing runs any more: event type → count in the log,
/// and publish job state → count in the queue.
async fn final_counts(
    db: &dcb_postgres::testing::TestDatabase,
) -> (HashMap<String, i64>, HashMap<String, i64>) {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(db.url())
        .await
        .expect("the test database");
    let events = sqlx::query_as::<_, (String, i64)>(
        "SELECT event_type, count(*) FROM dcb.events GROUP BY event_type",
    )
    .fetch_all(&pool)
    .await
    .expect("the log")
    .into_iter()
    .collect();
    let jobs = sqlx::query_as::<_, (String, i64)>(
        "SELECT state, count(*) FROM dcb.jobs WHERE kind = $1 GROUP BY state",
    )
    .bind(PUBLISH_CART_KIND)
    .fetch_all(&pool)
    .await
    .expect("the queue")
    .into_iter()
    .collect();
    pool.close().await;
    (events, jobs)
}

fn count(counts: &HashMap<String, i64>, key: &str) -> i64 {
    counts.get(key).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_cart_is_published_once_and_recorded_once() {
    let recorder = Arc::new(Recorder::default());
    let t = start_with(Some(recorder.clone()), Duration::from_secs(3600)).await;
    let (cart, product) = (new_id(), new_id());
    let (first, second) = (new_id(), new_id());
    assert_eq!(t.add(cart, first, product, "1.25").await.0, 200);
    assert_eq!(t.add(cart, second, product, "2.50").await.0, 200);
    let (status, body) = t.post(&format!("/submitcart/{cart}"), None).await;
    assert_eq!(status, 200, "{body}");
    t.settle(EnqueuePublication::ID).await;
    assert_eq!(wait_for_events(&t, "CartPublished").await, 1);

    // Nothing runs any more: whatever was published or recorded twice would
    // be there now.
    let db = t.shut_down_keep_database().await;
    let published = recorder.published.lock().unwrap().clone();
    assert_eq!(published.len(), 1, "published once: {published:?}");
    let (events, jobs) = final_counts(&db).await;
    assert_eq!(count(&events, "CartPublished"), 1, "{events:?}");
    assert_eq!(count(&events, "CartPublicationFailed"), 0, "{events:?}");
    assert_eq!(
        jobs,
        HashMap::from([("succeeded".to_owned(), 1)]),
        "one job, done"
    );
    assert_eq!(published[0].cart.cart_id, cart);
    assert_eq!(published[0].cart.total_price.to_string(), "3.75");
    let items: Vec<_> = published[0]
        .cart
        .ordered_products
        .iter()
        .map(|p| p.item_id)
        .collect();
    assert_eq!(items, vec![first, second]);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_that_misses_its_deadline_is_recorded_as_failed_once() {
    let recorder = Arc::new(Recorder {
        fail: true,
        ..Default::default()
    });
    let t = start_with(Some(recorder.clone()), Duration::from_secs(1)).await;
    let (cart, product) = (new_id(), new_id());
    assert_eq!(t.add(cart, new_id(), product, "1").await.0, 200);
    let (status, body) = t.post(&format!("/submitcart/{cart}"), None).await;
    assert_eq!(status, 200, "{body}");
    t.settle(EnqueuePublication::ID).await;
    assert_eq!(wait_for_events(&t, "CartPublicationFailed").await, 1);

    let db = t.shut_down_keep_database().await;
    let (events, jobs) = final_counts(&db).await;
    assert_eq!(count(&events, "CartPublicationFailed"), 1, "{events:?}");
    assert_eq!(count(&events, "CartPublished"), 0, "{events:?}");
    assert_eq!(
        jobs,
        HashMap::from([("dead".to_owned(), 1)]),
        "one job, dead"
    );
    assert!(recorder.published.lock().unwrap().is_empty());
    db.cleanup().await;
}
