//! Translators end to end against a Kafka-protocol broker (tansu): 1,000
//! messages become 1,000 decisions; replaying them appends nothing; garbage
//! and rejected messages are recorded as dead and the partition moves on; a
//! topic deleted and created again is read from its start and its records at
//! reused offsets are not taken for redeliveries; messages PostgreSQL cannot
//! store as text end as dead records without blocking anything; start-up
//! fails clearly when the broker is unreachable.
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`) and a
//! broker (`KAFKA_BROKERS`; `scripts/tansu.sh start`).

mod kafka_support;

use std::time::Duration;

use dcb_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use dcb_kafka::rdkafka::client::DefaultClientContext;
use dcb_kafka::rdkafka::ClientConfig;
use dcb_kafka::{
    DeadKind, KafkaConfig, KafkaError, KafkaMessage, Publisher, Translator, TranslatorRunner,
};
use dcb_postgres::testing::TestDatabase;
use kafka_support::ledger::{
    credit, credit_from, credited, publish, start_credits, Credit, Credits,
};
use kafka_support::{brokers, create_topic, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_make_a_thousand_decisions_and_a_replay_appends_nothing() {
    let brokers = brokers();
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let topic = unique("dcb-credits");
    create_topic(&brokers, &topic, 3).await;

    let config = KafkaConfig::new(&brokers);
    let publisher = Publisher::connect(&config).await.unwrap();
    let sends = (0..1000).map(|i| {
        let publisher = &publisher;
        let topic = &topic;
        async move {
            let account = format!("acc-{}", i % 50);
            publish(publisher, topic, &account, credit(&account, i + 1)).await;
        }
    });
    futures::future::join_all(sends).await;

    let group = unique("dcb-credits-group");
    let runner = start_credits(&config, &group, &store, &topic).await;
    let stats = runner
        .wait_for_messages(1000, Duration::from_secs(120))
        .await;
    runner.shutdown().await;
    assert_eq!(stats.messages, 1000, "{stats:?}");
    assert_eq!(stats.decided, 1000, "{stats:?}");
    assert_eq!(stats.dead, 0, "{stats:?}");
    assert_eq!(credited(&store).await, 1000);

    // Replay: a new group starts at the earliest offset, so every message
    // comes again; each decision is recognised by its idempotency key.
    let replay = start_credits(&config, &unique("dcb-replay"), &store, &topic).await;
    let stats = replay
        .wait_for_messages(1000, Duration::from_secs(120))
        .await;
    replay.shutdown().await;
    assert_eq!(stats.messages, 1000, "{stats:?}");
    assert_eq!(stats.duplicates, 1000, "{stats:?}");
    assert_eq!(stats.decided, 0, "{stats:?}");
    assert_eq!(credited(&store).await, 1000, "a replay appended events");

    // The first group committed its offsets: restarted, it reads only what
    // came after. One new message per partition, each behind whatever the
    // group would read again if its offsets had not been committed; once
    // the three are decided, nothing else may have come (a redelivery would
    // be counted as a duplicate, since its decision is deduped).
    let again = start_credits(&config, &group, &store, &topic).await;
    for partition in 0..3 {
        publish_to(&config, &topic, partition, credit("after-restart", 1)).await;
    }
    let stats = again.wait_for_messages(3, Duration::from_secs(120)).await;
    again.shutdown().await;
    assert_eq!(stats.decided, 3, "the new messages: {stats:?}");
    assert_eq!(
        (stats.messages, stats.duplicates),
        (3, 0),
        "messages delivered again after a restart: offsets were not committed: {stats:?}"
    );
    assert_eq!(credited(&store).await, 1003);
    db.cleanup().await;
}

/// Publishes `payload` to one partition of `topic`.
async fn publish_to(config: &KafkaConfig, topic: &str, partition: i32, payload: Vec<u8>) {
    use dcb_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", config.brokers())
        .create()
        .expect("a producer");
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
        .partition(partition)
        .key("k")
        .payload(payload.as_slice());
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .expect("publish to the test broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_rejected_messages_are_recorded_dead_and_the_partition_moves_on() {
    let brokers = brokers();
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let topic = unique("dcb-garbage");
    create_topic(&brokers, &topic, 1).await;
    let config = KafkaConfig::new(&brokers);
    let publisher = Publisher::connect(&config).await.unwrap();
    publish(&publisher, &topic, "a", credit("a", 5)).await;
    publish(&publisher, &topic, "b", b"\x00 not json {".to_vec()).await;
    publish(&publisher, &topic, "c", credit("c", -3)).await;
    publish(&publisher, &topic, "d", credit("d", 7)).await;

    let runner = start_credits(&config, &unique("dcb-garbage-group"), &store, &topic).await;
    let stats = runner.wait_for_messages(4, Duration::from_secs(60)).await;
    let dead = runner.dead_messages(10).await.unwrap();
    runner.shutdown().await;
    assert_eq!(stats.messages, 4, "{stats:?}");
    assert_eq!(stats.decided, 2, "{stats:?}");
    assert_eq!(stats.dead, 2, "{stats:?}");
    assert_eq!(
        credited(&store).await,
        2,
        "the messages after the dead ones were processed"
    );

    assert_eq!(dead.len(), 2, "{dead:?}");
    let garbage = dead
        .iter()
        .find(|d| d.offset == 1)
        .expect("garbage recorded");
    assert_eq!(garbage.kind, DeadKind::Undecodable);
    assert_eq!(garbage.topic, topic);
    assert_eq!(garbage.key.as_deref(), Some(&b"b"[..]));
    assert_eq!(garbage.payload.as_deref(), Some(&b"\x00 not json {"[..]));
    assert!(garbage.reason.contains("JSON"), "{}", garbage.reason);
    let rejected = dead
        .iter()
        .find(|d| d.offset == 2)
        .expect("rejection recorded");
    assert_eq!(rejected.kind, DeadKind::Rejected);
    assert!(rejected.reason.contains("positive"), "{}", rejected.reason);
    db.cleanup().await;
}

/// Reads accounts and refuses those with a NUL: the reason carries the raw
/// input, as a serde or uuid error text does.
struct PickyCredits {
    topic: String,
}

impl Translator for PickyCredits {
    type Decision = Credit;

    fn topic(&self) -> &str {
        &self.topic
    }

    fn translate(&self, message: &KafkaMessage<'_>) -> Result<Credit, String> {
        let credit = credit_from(message)?;
        if credit.account.starts_with('\0') {
            return Err(format!("invalid account {}", credit.account));
        }
        Ok(credit)
    }
}

/// Messages PostgreSQL cannot store anything about as text: one whose
/// dead-record reason carries a NUL (the record used to fail, and the
/// message was retried forever, stopping every partition of the instance),
/// one whose decision tags an event with a NUL (the database refuses the
/// append every time). Both end as dead records, with the reason escaped
/// and the payload kept as sent, and the messages behind them are decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_postgres_cannot_store_end_dead_and_the_partition_moves_on() {
    let brokers = brokers();
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let topic = unique("dcb-nul");
    create_topic(&brokers, &topic, 1).await;
    let config = KafkaConfig::new(&brokers);
    let publisher = Publisher::connect(&config).await.unwrap();
    let undecodable = br#"{"account":"\u0000x","amount":1}"#.to_vec();
    let unstorable = br#"{"account":"y\u0000","amount":1}"#.to_vec();
    publish(&publisher, &topic, "a", credit("a", 5)).await;
    publish(&publisher, &topic, "b", undecodable.clone()).await;
    publish(&publisher, &topic, "c", unstorable.clone()).await;
    publish(&publisher, &topic, "d", credit("d", 7)).await;

    let runner = TranslatorRunner::new(config, unique("dcb-nul-group"), store.clone())
        .add(PickyCredits {
            topic: topic.clone(),
        })
        .dead_after(2)
        .retry_backoff(dcb_core::Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            ..dcb_core::Backoff::default()
        })
        .start()
        .await
        .unwrap();
    let stats = runner.wait_for_messages(4, Duration::from_secs(60)).await;
    let dead = runner.dead_messages(10).await.unwrap();
    runner.shutdown().await;
    assert_eq!(
        (stats.messages, stats.decided, stats.dead),
        (4, 2, 2),
        "{stats:?}"
    );
    assert_eq!(credited(&store).await, 2);
    let by_offset = |o: i64| dead.iter().find(|d| d.offset == o).expect("a dead record");
    let first = by_offset(1);
    assert_eq!(first.kind, DeadKind::Undecodable);
    assert!(
        first.reason.contains("invalid account \\u0000x"),
        "{}",
        first.reason
    );
    assert_eq!(first.payload.as_deref(), Some(undecodable.as_slice()));
    let second = by_offset(2);
    assert_eq!(second.kind, DeadKind::Failed, "{second:?}");
    assert_eq!(second.payload.as_deref(), Some(unstorable.as_slice()));
    db.cleanup().await;
}

/// Commits `offset` of `topic`'s partition 0 for consumer group `group`.
fn commit_offset(brokers: &str, group: &str, topic: &str, offset: i64) {
    use dcb_kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use dcb_kafka::rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    consumer
        .commit(&tpl, CommitMode::Sync)
        .expect("commit the offset");
}

/// Deletes `topic` and creates it again with one partition, retrying while
/// the broker finishes the deletion.
async fn recreate_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin
        .delete_topics(&[topic], &options)
        .await
        .expect("delete topic")
    {
        result.unwrap_or_else(|(t, e)| panic!("cannot delete topic {t}: {e}"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let created = admin
            .create_topics(
                &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
                &options,
            )
            .await
            .expect("create topic");
        match created.into_iter().next().expect("one result") {
            Ok(_) => return,
            Err((t, e)) if std::time::Instant::now() > deadline => {
                panic!("cannot create topic {t} again: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// When a topic is deleted and created again (as when a broker without
/// durable storage restarts), its new records reuse offsets 0, 1, 2...: a
/// dedupe key of topic/partition/offset alone took each of them for a
/// redelivery of the old record at that offset and dropped it. Here the new
/// records even repeat the old ones' content: only the record's timestamp
/// tells them apart, and they are decided (and dead-recorded) as new. The
/// group's committed offset (3) lies past the new log's end (2); tansu does
/// not answer such a fetch with an out-of-range error (a Kafka broker does,
/// and librdkafka applies `auto.offset.reset`), so the runner notices by
/// itself and starts the partition again from its beginning.
///
/// The runner is stopped while the topic is away: a consumer that fetches a
/// topic tansu 0.6 does not know crashes in librdkafka 2.12 (tansu answers
/// with a zero topic id and a leader hint, which librdkafka dereferences as
/// a topic name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_again_is_read_from_its_start_and_its_records_are_new() {
    let brokers = brokers();
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let topic = unique("dcb-recreated");
    let group = unique("dcb-recreated-group");
    create_topic(&brokers, &topic, 1).await;
    let config = KafkaConfig::new(&brokers);
    let publisher = Publisher::connect(&config).await.unwrap();
    // Offsets 0, 1, 2.
    publish(&publisher, &topic, "a", credit("a", 1)).await;
    publish(&publisher, &topic, "g", b"garbage".to_vec()).await;
    publish(&publisher, &topic, "a", credit("a", 2)).await;
    let runner = start_credits(&config, &group, &store, &topic).await;
    let stats = runner.wait_for_messages(3, Duration::from_secs(60)).await;
    runner.shutdown().await;
    assert_eq!((stats.decided, stats.dead), (2, 1), "{stats:?}");

    recreate_topic(&brokers, &topic).await;
    // Offsets 0 and 1 again, with the content of offsets 0 and 1 before.
    publish(&publisher, &topic, "a", credit("a", 1)).await;
    publish(&publisher, &topic, "g", b"garbage".to_vec()).await;
    // The group's old position, committed into the new log (what librdkafka
    // does when it loses its assignment to a broker that came back empty).
    commit_offset(&brokers, &group, &topic, 3);

    let runner = start_credits(&config, &group, &store, &topic).await;
    let stats = runner.wait_for_messages(2, Duration::from_secs(90)).await;
    let dead = runner.dead_messages(10).await.unwrap();
    runner.shutdown().await;
    assert_eq!(stats.messages, 2, "{stats:?}");
    assert_eq!(
        stats.decided, 1,
        "a new record taken for a redelivery: {stats:?}"
    );
    assert_eq!(stats.duplicates, 0, "{stats:?}");
    assert_eq!(stats.dead, 1, "{stats:?}");
    assert!(stats.rewinds <= 1, "{stats:?}");
    assert_eq!(credited(&store).await, 3);
    assert_eq!(dead.len(), 2, "one dead record per record: {dead:?}");
    assert!(dead.iter().all(|d| d.offset == 1), "{dead:?}");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_clearly_when_the_broker_is_unreachable() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let config = KafkaConfig::new("127.0.0.1:1").connect_timeout(Duration::from_secs(2));
    let error = TranslatorRunner::new(config.clone(), "g", store)
        .add(Credits { topic: "t".into() })
        .start()
        .await
        .expect_err("no broker listens on port 1");
    assert!(
        matches!(error, KafkaError::BrokerUnreachable { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(Publisher::connect(&config)
        .await
        .unwrap_err()
        .is_unreachable());
    db.cleanup().await;
}
