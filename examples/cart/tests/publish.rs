//! PublishCart through the work queue, with a recording publisher in place
//! of Kafka (the Kafka end-to-end test is in `kafka.rs`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cart::slices::publish_cart::{CartPublisher, EnqueuePublication, PublishCartJob};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_cart_is_published_once_and_recorded_once() {
    let recorder = Arc::new(Recorder::default());
    let t = start_with(Some(recorder.clone()), Duration::from_secs(3600)).await;
    let (cart, product) = (new_id(), new_id());
    let (first, second) = (new_id(), new_id());
    t.add(cart, first, product, "1.25").await;
    t.add(cart, second, product, "2.50").await;
    let (status, body) = t.post(&format!("/submitcart/{cart}"), None).await;
    assert_eq!(status, 200, "{body}");
    t.settle(EnqueuePublication::ID).await;
    assert_eq!(wait_for_events(&t, "CartPublished").await, 1);

    // The listener enqueued once per CartSubmitted; give a duplicate run a
    // chance to show up, then check nothing was published twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = recorder.published.lock().unwrap().clone();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].cart.cart_id, cart);
    assert_eq!(published[0].cart.total_price.to_string(), "3.75");
    let items: Vec<_> = published[0]
        .cart
        .ordered_products
        .iter()
        .map(|p| p.item_id)
        .collect();
    assert_eq!(items, vec![first, second]);
    assert_eq!(wait_for_events(&t, "CartPublished").await, 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_that_misses_its_deadline_is_recorded_as_failed_once() {
    let recorder = Arc::new(Recorder {
        fail: true,
        ..Default::default()
    });
    let t = start_with(Some(recorder), Duration::from_secs(1)).await;
    let (cart, product) = (new_id(), new_id());
    t.add(cart, new_id(), product, "1").await;
    t.post(&format!("/submitcart/{cart}"), None).await;
    t.settle(EnqueuePublication::ID).await;
    assert_eq!(wait_for_events(&t, "CartPublicationFailed").await, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(wait_for_events(&t, "CartPublicationFailed").await, 1);
    let published = t
        .app
        .store()
        .read(&Query::types(["CartPublished"]), ReadOptions::forwards())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
        .1;
    assert!(published.is_empty());
    t.stop().await;
}
