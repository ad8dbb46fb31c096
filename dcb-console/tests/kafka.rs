//! Kafka's side against a real broker (tansu): a record the cart's
//! translator could not decode is listed by `dcb dead-messages` and
//! `dcb status`, shown by the console, and redriven (sent to its topic
//! again, consumed again); a relay's lag shows in the status.
//!
//! Needs PostgreSQL (DATABASE_URL) and a broker: `export
//! KAFKA_BROKERS="$(scripts/tansu.sh start)"`.

mod support;

use std::time::Duration;

use dcb_core::{EventStore, Query};
use dcb_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use dcb_kafka::rdkafka::client::DefaultClientContext;
use dcb_kafka::rdkafka::ClientConfig;
use dcb_kafka::{EventRelay, KafkaConfig, OutgoingMessage, Publisher, Route};
use serde_json::{json, Value};
use support::*;
use uuid::Uuid;

fn brokers() -> String {
    match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "this test needs a Kafka broker: KAFKA_BROKERS is not set; run \
             export KAFKA_BROKERS=\"$(scripts/tansu.sh start)\""
        ),
    }
}

/// Creates the topics (tansu does not create them on first use).
async fn ensure_topics(brokers: &str, topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("an admin client");
    let topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    // "Already exists" is fine; anything else shows up when producing.
    let _ = admin.create_topics(&topics, &AdminOptions::new()).await;
}

/// The dead records of `group` whose payload carries `marker`.
async fn dead_with(cart: &Cart, group: &str, marker: &str) -> Vec<Value> {
    let records = cart
        .dcb_json(&["dead-messages", "list", "--group", group, "--json"])
        .await;
    records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["payload"].as_str().unwrap_or("").contains(marker))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_record_is_listed_and_redriven_and_a_relays_lag_shows() {
    let brokers = brokers();
    let relay_topic = format!("console-relay-{}", Uuid::new_v4().simple());
    ensure_topics(
        &brokers,
        &[
            "inventories",
            "price-changes",
            "published-carts",
            &relay_topic,
        ],
    )
    .await;
    let kafka = KafkaConfig::new(&brokers).option("auto.offset.reset", "earliest");
    let group = format!("console-test-{}", Uuid::new_v4().simple());
    let cart = start_cart_with(Duration::from_secs(3600), |config| {
        config.kafka = Some(kafka.clone());
        config.kafka_group = group.clone();
    })
    .await;

    // A message the inventories translator cannot decode.
    let marker = Uuid::new_v4().to_string();
    let publisher = Publisher::new(&kafka).unwrap();
    publisher
        .send(
            OutgoingMessage::new("inventories")
                .key(marker.clone())
                .json(&json!({"nonsense": marker}))
                .unwrap(),
        )
        .await
        .expect("the broker takes the message");
    let first = eventually("the undecodable message recorded dead", || async {
        match dead_with(&cart, &group, &marker).await.as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(first["topic"], "inventories");
    assert_eq!(first["kind"], "undecodable");
    assert_eq!(first["key"], marker);
    let status = cart.dcb_json(&["status", "--json"]).await;
    let by_topic = status["kafka"]["dead_by_topic"].as_array().unwrap();
    assert!(
        by_topic
            .iter()
            // A reused broker may hold undecodable records of earlier runs too.
            .any(|c| c["group"] == group.as_str()
                && c["topic"] == "inventories"
                && c["count"].as_u64() >= Some(1)),
        "{status:#}"
    );
    let (code, page) = cart.get(&format!("/console/kafka?group={group}")).await;
    assert_eq!(code, 200);
    assert!(
        page.contains(&marker) && page.contains(">Redrive<"),
        "{page}"
    );

    // Redrive: a new record with the same key and payload; the translator
    // consumes it (and, as it still does not decode, records it dead
    // again, at its new offset); the old dead record is gone.
    let key = first["record_key"].as_str().unwrap();
    let output = cart
        .dcb(&[
            "dead-messages",
            "redrive",
            "--group",
            &group,
            "--record-key",
            key,
        ])
        .await;
    assert!(
        !output.status.success() && stderr(&output).contains("KAFKA_BROKERS"),
        "redrive without a broker says which is missing: {}",
        stderr(&output)
    );
    let output = dcb_with(
        &[
            "dead-messages",
            "redrive",
            "--group",
            &group,
            "--record-key",
            key,
        ],
        &[("DATABASE_URL", cart.db.url()), ("KAFKA_BROKERS", &brokers)],
    )
    .await;
    assert_success(&output, &["dead-messages", "redrive"]);
    assert!(
        stdout(&output).contains("sent to inventories again"),
        "{}",
        stdout(&output)
    );
    let again = eventually(
        "the redriven record consumed and recorded again",
        || async {
            match dead_with(&cart, &group, &marker).await.as_slice() {
                [one] if one["record_key"] != first["record_key"] => Ok(one.clone()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(again["offset"].as_i64() > first["offset"].as_i64());

    // A relay: its checkpoint and lag, from the database.
    let relay = EventRelay::new("console-test-relay", kafka.clone())
        .route(Route::new(
            Query::types(["CartCreated".to_owned()]),
            relay_topic.clone(),
        ))
        .start(cart.app.store())
        .await
        .expect("the relay starts");
    cart.add_item(Uuid::new_v4(), "relayed").await;
    let head = cart.app.store().head().await.unwrap().unwrap().0;
    eventually("the relay caught up in dcb status", || async {
        let status = cart.dcb_json(&["status", "--json"]).await;
        let relays = status["kafka"]["relays"].as_array().unwrap().clone();
        match relays.as_slice() {
            [r] if r["name"] == "console-test-relay"
                && r["position"] == head
                && r["lag_events"] == 0 =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    relay.shutdown().await;
    cart.stop().await;
}
