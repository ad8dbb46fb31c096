//! Helpers of the Kafka end-to-end tests (`mod kafka_support;`): the
//! broker address, topics, reading a topic to its end, and the translator
//! tests' domain ([`ledger`]).

#![allow(dead_code)]

pub mod ledger;

use std::time::{Duration, Instant};

use dcb_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use dcb_kafka::rdkafka::client::DefaultClientContext;
use dcb_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use dcb_kafka::rdkafka::message::Headers;
use dcb_kafka::rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The broker of `KAFKA_BROKERS`; panics with how to start one.
pub fn brokers() -> String {
    match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "these tests need a Kafka broker: set KAFKA_BROKERS or run scripts/tansu.sh start \
             (export KAFKA_BROKERS=\"$(scripts/tansu.sh start)\")"
        ),
    }
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    for result in admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
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
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `dcb-position` header.
    pub fn position(&self) -> u64 {
        self.header(dcb_kafka::HEADER_POSITION)
            .expect("a position header")
            .parse()
            .expect("a decimal position")
    }
}

/// The header marking the end-of-topic sentinels of [`read_to_end`].
const SENTINEL: &str = "test-sentinel";

/// Every message of `topic` (in each partition's order) written before this
/// call: call it once the producers stopped. A sentinel message is written to
/// each partition and the partition is read up to it (tansu's high
/// watermarks are not exact, so they cannot say where a partition ends).
pub async fn read_to_end(brokers: &str, topic: &str) -> Vec<Received> {
    use dcb_kafka::rdkafka::message::{Header, OwnedHeaders};
    use dcb_kafka::rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("a producer");
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    assert!(!partitions.is_empty(), "topic {topic} has no partition");
    let mut ends = std::collections::HashMap::new();
    for &p in &partitions {
        let record: FutureRecord<'_, str, str> = FutureRecord::to(topic)
            .partition(p)
            .payload("")
            .headers(OwnedHeaders::new().insert(Header {
                key: SENTINEL,
                value: Some("1"),
            }));
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("write a sentinel");
        ends.insert(p, delivery.offset);
    }
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_up_to(&brokers, &topic, &ends))
        .await
        .expect("reading the topic")
}

fn read_up_to(
    brokers: &str,
    topic: &str,
    ends: &std::collections::HashMap<i32, i64>,
) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("dcb-check"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut assignment = TopicPartitionList::new();
    for &p in ends.keys() {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    let mut out = Vec::new();
    let mut next: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while ends
        .iter()
        .any(|(p, end)| next.get(p).copied().unwrap_or(0) <= *end)
    {
        assert!(
            Instant::now() < deadline,
            "topic {topic} not read to its end within 120 s: at {next:?} of {ends:?}"
        );
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = result.expect("consume");
        next.insert(m.partition(), m.offset() + 1);
        let headers: Vec<(String, String)> = m
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
        if headers.iter().any(|(k, _)| k == SENTINEL) {
            continue;
        }
        out.push(Received {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    out
}

/// Checks the relay's order guarantee on what a topic holds: per key, the
/// first copy of each event comes in position order (copies after a failure
/// or a crash are allowed, and counted); returns (distinct positions,
/// copies beyond the first).
pub fn first_copies_in_position_order(messages: &[Received]) -> (usize, usize) {
    use std::collections::{HashMap, HashSet};
    let mut seen: HashSet<u64> = HashSet::new();
    let mut last_first: HashMap<Option<String>, u64> = HashMap::new();
    let mut copies = 0;
    let mut by_partition: Vec<&Received> = messages.iter().collect();
    by_partition.sort_by_key(|m| (m.partition, m.offset));
    for m in by_partition {
        let position = m.position();
        if !seen.insert(position) {
            copies += 1;
            continue;
        }
        let last = last_first.entry(m.key.clone()).or_insert(0);
        assert!(
            position > *last,
            "key {:?}: the first copy of position {position} came after position {last} \
             (partition {}, offset {})",
            m.key,
            m.partition,
            m.offset
        );
        *last = position;
    }
    (seen.len(), copies)
}
