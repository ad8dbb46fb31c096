//! The event relay end to end against a Kafka-protocol broker (tansu): the
//! events of a query reach the topic in position order, keyed by a tag, with
//! id/type/position/tags headers; the checkpoint follows the acknowledgements;
//! events that do not match the query are not published.
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`) and a
//! broker (`KAFKA_BROKERS`; `scripts/tansu.sh start`).

use std::time::{Duration, Instant};

use dcb_core::{EventMetadata, EventRecord, EventStore, EventType, Query, Tag};
use dcb_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use dcb_kafka::rdkafka::client::DefaultClientContext;
use dcb_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use dcb_kafka::rdkafka::message::Headers;
use dcb_kafka::rdkafka::{ClientConfig, Message};
use dcb_kafka::{
    EventRelay, KafkaConfig, Publisher, HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_POSITION,
    HEADER_TAGS,
};
use dcb_postgres::listener::RunnerConfig;
use dcb_postgres::testing::TestDatabase;

fn brokers() -> String {
    match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "these tests need a Kafka broker: set KAFKA_BROKERS or run scripts/tansu.sh start \
             (export KAFKA_BROKERS=\"$(scripts/tansu.sh start)\")"
        ),
    }
}

async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for result in admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap()
    {
        result.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
}

fn record(event_type: &'static str, cart: &str, n: usize) -> EventRecord {
    EventRecord {
        event_type: EventType::from(event_type),
        tags: vec![Tag::new("cart_id", cart), Tag::new("n", n)],
        payload: serde_json::to_vec(&serde_json::json!({ "n": n })).unwrap(),
        metadata: EventMetadata::new(),
    }
}

struct Received {
    key: Option<String>,
    payload: serde_json::Value,
    headers: Vec<(String, String)>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        &self.headers.iter().find(|(k, _)| k == name).unwrap().1
    }
}

fn consume(brokers: &str, topic: &str, expected: usize) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-check"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Received {
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: serde_json::from_slice(m.payload().unwrap()).unwrap(),
                headers,
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_matching_events_in_position_order_with_headers() {
    let brokers = brokers();
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let topic = format!("dcb-relay-{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff);
    create_topic(&brokers, &topic).await;

    // Some events before the relay starts, some after.
    for n in 0..10 {
        let event_type = if n % 3 == 0 { "Ignored" } else { "ItemAdded" };
        store
            .append(vec![record(event_type, &format!("c{}", n % 2), n)], None)
            .await
            .unwrap();
    }
    let publisher = Publisher::connect(&KafkaConfig::new(&brokers))
        .await
        .unwrap();
    let relay = EventRelay::new("cart-relay", Query::types(["ItemAdded"]), &topic, publisher)
        .key_tag("cart_id")
        .runner_config(RunnerConfig::default().poll_interval(Duration::from_millis(200)))
        .start(&store)
        .await
        .unwrap();
    for n in 10..20 {
        let event_type = if n % 3 == 0 { "Ignored" } else { "ItemAdded" };
        store
            .append(vec![record(event_type, &format!("c{}", n % 2), n)], None)
            .await
            .unwrap();
    }
    let head = store.head().await.unwrap().unwrap();
    relay
        .wait_until_timeout("cart-relay", head, Duration::from_secs(60))
        .await
        .unwrap();
    relay.shutdown().await;

    let expected: Vec<usize> = (0..20).filter(|n| n % 3 != 0).collect();
    let received = consume(&brokers, &topic, expected.len());
    assert_eq!(received.len(), expected.len());
    let mut last_position = 0u64;
    for (message, n) in received.iter().zip(&expected) {
        assert_eq!(
            message.payload,
            serde_json::json!({ "n": n }),
            "position order"
        );
        assert_eq!(message.key.as_deref(), Some(format!("c{}", n % 2).as_str()));
        assert_eq!(message.header(HEADER_EVENT_TYPE), "ItemAdded");
        let position: u64 = message.header(HEADER_POSITION).parse().unwrap();
        assert!(position > last_position);
        last_position = position;
        assert_eq!(position, *n as u64 + 1);
        uuid::Uuid::parse_str(message.header(HEADER_EVENT_ID)).unwrap();
        let tags: Vec<String> = serde_json::from_str(message.header(HEADER_TAGS)).unwrap();
        assert_eq!(tags, vec![format!("cart_id:c{}", n % 2), format!("n:{n}")]);
    }
    db.cleanup().await;
}
