//! The relay through a broker outage, on librdkafka's mock cluster (no
//! broker needed): while the broker is down the pipeline stops on its send
//! timeout and starts again from the last contiguous acknowledgement with a
//! new producer, again and again; once the broker is back every event is on
//! the topic, and per key the first copies come in position order. A relay
//! started with no broker to reach fails to start and leaves its lease
//! free.
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`).

mod kafka_support;

use std::time::{Duration, Instant};

use dcb_core::Backoff;
use dcb_core::{EventMetadata, EventRecord, EventStore, EventType, Query, Tag};
use dcb_kafka::rdkafka::mocking::MockCluster;
use dcb_kafka::{EventRelay, KafkaConfig, RelayConfig, Route};
use dcb_postgres::testing::TestDatabase;
use kafka_support::{first_copies_in_position_order, read_to_end};

fn record(n: usize) -> EventRecord {
    EventRecord {
        event_type: EventType::from("Tick"),
        tags: vec![Tag::new("k", n % 7)],
        payload: b"{}".to_vec(),
        metadata: EventMetadata::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_stops_the_pipeline_and_it_resumes_from_the_last_acknowledgement() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("ticks", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let relay = EventRelay::new("outage", KafkaConfig::new(&brokers))
        .route(Route::new(Query::all(), "ticks").key_tag("k"))
        .config(
            RelayConfig::default()
                .send_timeout(Duration::from_millis(800))
                .poll_interval(Duration::from_millis(100))
                .backoff(Backoff {
                    initial: Duration::from_millis(100),
                    max: Duration::from_millis(500),
                    ..Backoff::default()
                }),
        )
        .start(&store)
        .await
        .unwrap();
    for n in 0..100 {
        store.append(vec![record(n)], None).await.unwrap();
    }
    let head = store.head().await.unwrap().unwrap();
    relay
        .wait_until(head, Duration::from_secs(60))
        .await
        .unwrap();

    cluster.broker_down(1).unwrap();
    for n in 100..300 {
        store.append(vec![record(n)], None).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay.status().await.unwrap().failures < 2 {
        assert!(Instant::now() < deadline, "the outage stopped no pipeline");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = relay.status().await.unwrap();
    assert!(during.last_error.is_some(), "{during:?}");
    assert!(during.checkpoint.0 < 300, "{during:?}");

    cluster.broker_up(1).unwrap();
    let head = store.head().await.unwrap().unwrap();
    relay
        .wait_until(head, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The checkpoint follows within its interval, and clears the error.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let status = relay.status().await.unwrap();
        if status.checkpoint >= head {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoint not written: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    relay.shutdown().await;
    assert_eq!(
        after.last_error, None,
        "cleared by the next checkpoint: {after:?}"
    );

    let received = read_to_end(&brokers, "ticks").await;
    let (distinct, copies) = first_copies_in_position_order(&received);
    assert_eq!(distinct, 300, "an event was lost");
    eprintln!(
        "{} pipeline stops during the outage; {copies} events published again",
        after.failures
    );
    drop(cluster);
    db.cleanup().await;
}

/// `start` reads the log while it checks the brokers; when none answers it
/// fails with `BrokerUnreachable`, stops the task it started (which sent
/// nothing) and gives the lease up, so another instance can lead at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_no_broker_fails_to_start_and_leaves_its_lease_free() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    for n in 0..50 {
        store.append(vec![record(n)], None).await.unwrap();
    }
    // Nothing listens on the discard port.
    let kafka = KafkaConfig::new("127.0.0.1:9").connect_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let error = EventRelay::new("no-broker", kafka)
        .route(Route::new(Query::all(), "ticks").key_tag("k"))
        .start(&store)
        .await
        .expect_err("started without a broker");
    assert!(
        matches!(error, dcb_kafka::KafkaError::BrokerUnreachable { .. }),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let (owner, position): (Option<String>, i64) = sqlx::query_as(&format!(
        "SELECT owner, position FROM {}.kafka_relays WHERE relay_id = 'no-broker'",
        store.schema()
    ))
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(owner, None, "the lease was not given up");
    assert_eq!(position, 0, "nothing can have been published");

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("ticks", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let relay = EventRelay::new("no-broker", KafkaConfig::new(&brokers))
        .route(Route::new(Query::all(), "ticks").key_tag("k"))
        .start(&store)
        .await
        .unwrap();
    let head = store.head().await.unwrap().unwrap();
    relay
        .wait_until(head, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    relay.shutdown().await;
    let received = read_to_end(&brokers, "ticks").await;
    let (distinct, _) = first_copies_in_position_order(&received);
    assert_eq!(distinct, 50);
    drop(cluster);
    db.cleanup().await;
}
