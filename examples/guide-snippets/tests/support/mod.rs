//! Shared helpers: the broker, topics, reading a topic back, waiting for
//! a state.

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use dcb_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use dcb_kafka::rdkafka::client::DefaultClientContext;
use dcb_kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use dcb_kafka::rdkafka::message::Headers;
use dcb_kafka::rdkafka::{ClientConfig, Message};

/// How long a state may take to show on a busy machine.
pub const EVENTUALLY: Duration = Duration::from_secs(60);

/// The broker of `KAFKA_BROKERS`; panics with how to start one.
pub fn brokers() -> String {
    match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "this test needs a Kafka broker: set KAFKA_BROKERS, or run scripts/tansu.sh start \
             (export KAFKA_BROKERS=\"$(scripts/tansu.sh start)\")"
        ),
    }
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

pub async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    for result in admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic")
    {
        result.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
}

/// One message as read back.
#[derive(Clone, Debug)]
pub struct Received {
    pub key: Option<String>,
    pub payload: String,
    pub headers: Vec<(String, String)>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads `topic` from its start until `done` holds for what was read, at
/// most [`EVENTUALLY`].
pub async fn read_until(
    brokers: &str,
    topic: &str,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("guide-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + EVENTUALLY;
    let mut received = Vec::new();
    while !done(&received) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "topic {topic}: not complete within {EVENTUALLY:?}; read so far: {received:#?}"
        );
        let Ok(message) =
            tokio::time::timeout(left.min(Duration::from_secs(1)), consumer.recv()).await
        else {
            continue;
        };
        let message = message.expect("a message");
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                        (h.key.to_owned(), value.unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        received.push(Received {
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            headers,
        });
    }
    received
}

/// Polls `probe` until it returns `Ok`, at most [`EVENTUALLY`]; panics
/// naming `what` and the last `Err` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {EVENTUALLY:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
