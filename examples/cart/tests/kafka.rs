//! Kafka end to end against a real broker (tansu): `KAFKA_BROKERS` must be
//! set (`export KAFKA_BROKERS="$(scripts/tansu.sh start)"`).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use cart::app::{App, Config};
use cart::slices::archive_item::ARCHIVE_AUTOMATION_ID;
use cart::slices::inventories::InventoriesListener;
use cart::slices::publish_cart::EnqueuePublication;
use common::*;
use dcb_core::{EventStore, Query, ReadOptions};
use dcb_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use dcb_kafka::rdkafka::{ClientConfig, Message};
use dcb_kafka::{KafkaConfig, OutgoingMessage, Publisher};
use dcb_postgres::testing::TestDatabase;
use serde_json::{json, Value};

async fn count(t: &TestApp, event_type: &str) -> usize {
    count_matching(t, Query::types([event_type.to_owned()])).await
}

/// Events matching `query`: waits must look for this test's own events, since
/// a reused broker still holds messages of earlier runs.
async fn count_matching(t: &TestApp, query: Query) -> usize {
    t.app
        .store()
        .read(&query, ReadOptions::forwards())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
        .1
        .len()
}

async fn send(publisher: &Publisher, topic: &str, payload: Value) {
    publisher
        .send(OutgoingMessage::new(topic).json(&payload).unwrap())
        .await
        .expect("the broker takes the message");
}

/// One test, so the translators of one app own the consumer group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_end_to_end() {
    let brokers = brokers();
    ensure_topics(&brokers).await;
    let kafka = KafkaConfig::new(&brokers).option("auto.offset.reset", "earliest");
    let db = TestDatabase::create().await;
    let mut config = Config::new(db.url());
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.kafka = Some(kafka.clone());
    config.kafka_group = format!("cart-test-{}", new_id());
    let app = App::start(config).await.expect("the app starts with Kafka");
    let t = TestApp {
        base: format!("http://{}", app.addr()),
        app,
        db,
        client: reqwest::Client::new(),
    };
    let publisher = Publisher::new(&kafka).unwrap();
    let translators = t.app.translators().expect("Kafka is on");

    // inventories → the Inventories read model; a bad message is dead.
    let product = new_id();
    send(
        &publisher,
        "inventories",
        json!({"product_uuid": product, "inventory": 7}),
    )
    .await;
    send(&publisher, "inventories", json!({"nonsense": true})).await;
    let mut inventory = Value::Null;
    for _ in 0..300 {
        t.settle(InventoriesListener::ID).await;
        let (status, body) = t.get(&format!("/inventories/{product}")).await;
        if status == 200 {
            inventory = body;
            break;
        }
        translators
            .wait_for_messages(translators.stats().messages + 1, Duration::from_millis(100))
            .await;
    }
    assert_eq!(inventory["inventory"], 7, "{inventory}");
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = translators.dead_messages(100).await.unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !dead.is_empty(),
        "the undecodable message is recorded as dead"
    );

    // price-changes → items added before the change are archived.
    let (cart, priced) = (new_id(), new_id());
    let (before, after) = (new_id(), new_id());
    t.add(cart, before, priced, "1.00").await;
    send(
        &publisher,
        "price-changes",
        json!({"product_id": priced, "old_price": "1.00", "new_price": "1.50"}),
    )
    .await;
    for _ in 0..300 {
        let own_price_change = Query::from_items([dcb_core::QueryItem::new()
            .types(["PriceChanged"])
            .tags([dcb_core::Tag::new("product_id", priced)])]);
        if count_matching(&t, own_price_change).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.add(cart, after, priced, "1.50").await;
    t.settle(ARCHIVE_AUTOMATION_ID).await;
    let (_, items) = t.get(&format!("/{cart}/cartitems")).await;
    let ids: Vec<&str> = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![after.to_string().as_str()], "{items}");

    // A submitted cart appears on published-carts once.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("cart-check-{}", new_id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["published-carts"]).unwrap();
    let (status, body) = t.post(&format!("/submitcart/{cart}"), None).await;
    assert_eq!(status, 200, "{body}");
    t.settle(EnqueuePublication::ID).await;
    for _ in 0..300 {
        if count(&t, "CartPublished").await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&t, "CartPublished").await, 1);
    let mut seen = 0;
    let key = cart.to_string();
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
            Ok(Ok(message)) if message.key() == Some(key.as_bytes()) => {
                let payload: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
                assert_eq!(payload["total_price"], "1.50");
                seen += 1;
            }
            Ok(_) => {}
            Err(_) if seen > 0 => break,
            Err(_) => {}
        }
    }
    assert_eq!(seen, 1, "the cart is published once");
    assert_eq!(count(&t, "CartPublished").await, 1);
    t.stop().await;
}
