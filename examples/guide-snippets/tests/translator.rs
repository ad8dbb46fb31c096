//! The guide's translator, run against PostgreSQL and a Kafka broker: each
//! message schedules its concert once, a message sent twice is rejected by
//! the decision (a second record is a second decision), a broken message is
//! recorded dead, and a new consumer group replaying the topic appends
//! nothing.

mod support;

use std::time::Duration;

use dcb_core::{EventStoreExt, Query, ReadOptions};
use dcb_kafka::{KafkaConfig, OutgoingMessage, Publisher};
use dcb_postgres::PgEventStore;
use dcb_postgres::testing::TestDatabase;
use guide_snippets::domain::{ConcertEvent, ConcertEventType};
use guide_snippets::translator::start_translator;
use support::{brokers, create_topic, eventually, unique};

async fn scheduled(store: &PgEventStore) -> Vec<ConcertEvent> {
    let (_, events) = store
        .read_decoded::<ConcertEvent>(
            &Query::types([ConcertEventType::ConcertScheduled]),
            ReadOptions::forwards(),
        )
        .await
        .unwrap();
    events.into_iter().map(|e| e.event).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_schedule_concerts_once_and_broken_ones_are_dead() {
    let brokers = brokers();
    let topic = unique("guide-scheduled");
    create_topic(&brokers, &topic).await;
    let publisher = Publisher::connect(&KafkaConfig::new(&brokers))
        .await
        .expect("publisher");
    for payload in [
        r#"{"concert":"c1","seats":100}"#,
        r#"{"concert":"c2","seats":50}"#,
        r#"{"concert":"c1","seats":100}"#, // sent twice: AlreadyScheduled
        "not json",
    ] {
        publisher
            .send(OutgoingMessage::new(&topic).payload(payload))
            .await
            .expect("produced");
    }

    let db = TestDatabase::create().await;
    let store = db.store().await;
    let kafka = KafkaConfig::new(&brokers);
    let translators = start_translator(store.clone(), kafka.clone(), &unique("group"), &topic)
        .await
        .expect("translators start");
    let stats = translators
        .wait_for_messages(4, Duration::from_secs(60))
        .await;
    assert_eq!(stats.messages, 4, "{stats:?}");
    assert_eq!((stats.decided, stats.dead), (2, 2), "{stats:?}");
    let mut dead: Vec<String> = translators
        .dead_messages(10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.reason)
        .collect();
    dead.sort();
    assert_eq!(dead.len(), 2);
    assert!(
        dead.iter().any(|r| r.contains("already scheduled")),
        "{dead:?}"
    );
    translators.shutdown().await;

    // A new group reads the topic from its start: every record is known.
    let replay = start_translator(store.clone(), kafka, &unique("replay"), &topic)
        .await
        .unwrap();
    let stats = replay.wait_for_messages(4, Duration::from_secs(60)).await;
    assert_eq!(stats.messages, 4, "{stats:?}");
    replay.shutdown().await;
    assert_eq!(
        stats.decided, 0,
        "a replay decides nothing again: {stats:?}"
    );

    let concerts = eventually("two concerts scheduled", || async {
        let events = scheduled(&store).await;
        if events.len() == 2 {
            Ok(events)
        } else {
            Err(format!("{events:?}"))
        }
    })
    .await;
    assert_eq!(
        concerts,
        [
            ConcertEvent::ConcertScheduled {
                concert: "c1".into(),
                seats: 100
            },
            ConcertEvent::ConcertScheduled {
                concert: "c2".into(),
                seats: 50
            },
        ]
    );
    store.shutdown().await;
    db.cleanup().await;
}
