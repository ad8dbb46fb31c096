//! The event relay end to end against a Kafka-protocol broker (tansu): the
//! events of a query reach the topic in position order per key, with
//! id/type/position/tags headers, while writers append concurrently, none
//! skipped and none twice, also while a backlog is drained with reads
//! ahead; a router feeds several topics in one pass with
//! CloudEvents headers; two instances of one relay publish each event once;
//! a relay killed midway is taken over and every event is published, first
//! copies in position order; a checkpoint of the earlier listener-based
//! relay is carried over.
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`) and a
//! broker (`KAFKA_BROKERS`; `scripts/tansu.sh start`).

mod kafka_support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use dcb_core::{EventMetadata, EventRecord, EventStore, EventType, Position, Query, Tag};
use dcb_kafka::{
    EventRelay, KafkaConfig, RelayConfig, RelayHandle, Route, HEADER_CE_ID, HEADER_CE_SOURCE,
    HEADER_CE_SPECVERSION, HEADER_CE_TIME, HEADER_CE_TYPE, HEADER_EVENT_ID, HEADER_EVENT_TYPE,
    HEADER_TAGS,
};
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::PgEventStore;
use kafka_support::*;

fn record(event_type: &'static str, key: &str, n: usize) -> EventRecord {
    EventRecord {
        event_type: EventType::from(event_type),
        tags: vec![Tag::new("k", key), Tag::new("n", n)],
        payload: serde_json::to_vec(&serde_json::json!({ "n": n })).unwrap(),
        metadata: EventMetadata::new(),
    }
}

async fn head(store: &PgEventStore) -> Position {
    store.head().await.unwrap().unwrap_or_default()
}

async fn wait_published(relay: &RelayHandle, store: &PgEventStore) {
    let head = head(store).await;
    relay
        .wait_until(head, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Waits until `relay` has published up to the head, stops it, and checks
/// that its pipeline never stopped on a failure.
async fn publish_all_then_stop(relay: RelayHandle, store: &PgEventStore) {
    wait_published(&relay, store).await;
    let status = relay.status().await.unwrap();
    relay.shutdown().await;
    assert_eq!(status.failures, 0, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_matching_events_in_position_order_with_headers() {
    let brokers = brokers();
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let topic = unique("dcb-relay");
    create_topic(&brokers, &topic, 1).await;

    // Some events before the relay starts, some after.
    for n in 0..10 {
        let event_type = if n % 3 == 0 { "Ignored" } else { "ItemAdded" };
        store
            .append(vec![record(event_type, &format!("c{}", n % 2), n)], None)
            .await
            .unwrap();
    }
    let relay = EventRelay::new("cart-relay", KafkaConfig::new(&brokers))
        .route(Route::new(Query::types(["ItemAdded"]), &topic))
        .key_tag("k")
        .config(RelayConfig::default().poll_interval(Duration::from_millis(200)))
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
    publish_all_then_stop(relay, &store).await;

    let expected: Vec<usize> = (0..20).filter(|n| n % 3 != 0).collect();
    let received = read_to_end(&brokers, &topic).await;
    assert_eq!(received.len(), expected.len(), "each event exactly once");
    for (message, n) in received.iter().zip(&expected) {
        let payload: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(payload, serde_json::json!({ "n": n }), "position order");
        assert_eq!(message.key.as_deref(), Some(format!("c{}", n % 2).as_str()));
        assert_eq!(message.header(HEADER_EVENT_TYPE), Some("ItemAdded"));
        assert_eq!(message.position(), *n as u64 + 1);
        uuid::Uuid::parse_str(message.header(HEADER_EVENT_ID).unwrap()).unwrap();
        let tags: Vec<String> = serde_json::from_str(message.header(HEADER_TAGS).unwrap()).unwrap();
        assert_eq!(tags, vec![format!("k:c{}", n % 2), format!("n:{n}")]);
        assert_eq!(
            message.header(HEADER_CE_ID),
            None,
            "no CloudEvents unless asked"
        );
    }
    db.cleanup().await;
}

/// A stretch of the log where few events match (the relay then lets the
/// store filter) followed by one where most match (it then reads whole
/// ranges and keeps what matches), and back: exactly the matching events
/// arrive, in position order, whichever way each part was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_and_dense_stretches_publish_exactly_the_matching_events() {
    let brokers = brokers();
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let topic = unique("dcb-relay-mixed");
    create_topic(&brokers, &topic, 1).await;

    // 600 events with one in 20 matching, 600 with all but one in 20
    // matching, then 600 sparse again; in appends of 50.
    let matches = |n: usize| {
        let dense = (600..1200).contains(&n);
        (n % 20 == 7) != dense
    };
    for start in (0..1800).step_by(50) {
        let records = (start..start + 50)
            .map(|n| {
                let event_type = if matches(n) { "ItemAdded" } else { "Ignored" };
                record(event_type, &format!("c{}", n % 3), n)
            })
            .collect();
        store.append(records, None).await.unwrap();
    }
    let relay = EventRelay::new("mixed-relay", KafkaConfig::new(&brokers))
        .route(Route::new(Query::types(["ItemAdded"]), &topic).key_tag("k"))
        .config(RelayConfig::default().batch_size(100))
        .start(&store)
        .await
        .unwrap();
    publish_all_then_stop(relay, &store).await;

    let expected: Vec<usize> = (0..1800).filter(|n| matches(*n)).collect();
    let received: Vec<usize> = read_to_end(&brokers, &topic)
        .await
        .iter()
        .map(|m| m.position() as usize - 1)
        .collect();
    assert_eq!(received, expected, "exactly the matching events, in order");
    db.cleanup().await;
}

/// Writers append while the relay publishes with many messages in flight
/// over three partitions: every event arrives exactly once (no failure
/// happened), and each key's events arrive in position order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_nothing_skipped_nothing_twice_per_key_order_kept() {
    const WRITERS: usize = 8;
    const EACH: usize = 300;
    let brokers = brokers();
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let topic = unique("dcb-relay-writers");
    create_topic(&brokers, &topic, 3).await;
    let relay = EventRelay::new("writers", KafkaConfig::new(&brokers))
        .route(Route::new(Query::all(), &topic).key_tag("k"))
        .config(
            RelayConfig::default()
                .batch_size(50)
                .max_in_flight(500)
                .checkpoint_every(100)
                .poll_interval(Duration::from_millis(100)),
        )
        .start(&store)
        .await
        .unwrap();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    let n = w * EACH + i;
                    store
                        .append(vec![record("Tick", &format!("k{}", n % 17), n)], None)
                        .await
                        .unwrap();
                    if i % 50 == 0 {
                        tokio::time::sleep(Duration::from_millis(fastrand::u64(..5))).await;
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    publish_all_then_stop(relay, &store).await;

    let received = read_to_end(&brokers, &topic).await;
    let (distinct, copies) = first_copies_in_position_order(&received);
    assert_eq!(copies, 0, "an event was published twice without a failure");
    assert_eq!(distinct, WRITERS * EACH, "an event was skipped");
    let positions: BTreeSet<u64> = received.iter().map(|m| m.position()).collect();
    assert_eq!(positions, (1..=(WRITERS * EACH) as u64).collect());
    // Each key stays on one partition.
    let mut partition_of: HashMap<Option<String>, i32> = HashMap::new();
    for m in &received {
        assert_eq!(
            *partition_of.entry(m.key.clone()).or_insert(m.partition),
            m.partition
        );
    }
    db.cleanup().await;
}

/// The relay drains a backlog with two reads of the log in flight, the
/// second reading the range after the first, while writers append in
/// bursts: whenever a read reaches the head before the end of its range,
/// the read of the next range (which may have seen later bursts) must be
/// dropped, or the events between that head and the range's end are
/// skipped. Every event arrives exactly once, in position order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drained_while_writers_append_in_bursts_skips_nothing() {
    const BACKLOG: usize = 2_000;
    const WRITERS: usize = 4;
    const BURSTS: usize = 250;
    const BURST: usize = 10;
    let brokers = brokers();
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let topic = unique("dcb-relay-bursts");
    create_topic(&brokers, &topic, 1).await;
    for start in (0..BACKLOG).step_by(100) {
        let records = (start..start + 100)
            .map(|n| record("Tick", "backlog", n))
            .collect();
        store.append(records, None).await.unwrap();
    }
    let relay = EventRelay::new("bursts", KafkaConfig::new(&brokers))
        .route(Route::new(Query::all(), &topic).key_tag("k"))
        .config(
            RelayConfig::default()
                .batch_size(8)
                .max_in_flight(200)
                .poll_interval(Duration::from_millis(50)),
        )
        .start(&store)
        .await
        .unwrap();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for b in 0..BURSTS {
                    let records = (0..BURST)
                        .map(|i| {
                            record(
                                "Tick",
                                &format!("w{w}"),
                                BACKLOG + (w * BURSTS + b) * BURST + i,
                            )
                        })
                        .collect();
                    store.append(records, None).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..3))).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    publish_all_then_stop(relay, &store).await;

    let total = BACKLOG + WRITERS * BURSTS * BURST;
    let received: Vec<u64> = read_to_end(&brokers, &topic)
        .await
        .iter()
        .map(|m| m.position())
        .collect();
    let expected: Vec<u64> = (1..=total as u64).collect();
    if received != expected {
        let seen: BTreeSet<u64> = received.iter().copied().collect();
        let missing: Vec<u64> = expected
            .iter()
            .filter(|p| !seen.contains(p))
            .copied()
            .collect();
        panic!(
            "{} messages for {total} events; missing positions {:?}{}",
            received.len(),
            &missing[..missing.len().min(20)],
            if missing.is_empty() {
                " (none: duplicates or out of order)"
            } else {
                ""
            }
        );
    }
    db.cleanup().await;
}

/// One relay, two routes: item events to one topic keyed by cart, checkout
/// events to another keyed by order, an event matching both to both; with
/// CloudEvents headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_feeds_several_topics_in_one_pass_with_cloud_events_headers() {
    let brokers = brokers();
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let items = unique("dcb-relay-items");
    let orders = unique("dcb-relay-orders");
    create_topic(&brokers, &items, 1).await;
    create_topic(&brokers, &orders, 1).await;
    let event = |event_type: &'static str, cart: &str, order: &str| EventRecord {
        event_type: EventType::from(event_type),
        tags: vec![Tag::new("cart", cart), Tag::new("order", order)],
        payload: b"{}".to_vec(),
        metadata: EventMetadata::new(),
    };
    store
        .append(
            vec![
                event("ItemAdded", "c1", "o1"),
                event("CheckedOut", "c1", "o1"),
                event("Other", "c1", "o1"),
                event("ItemAdded", "c2", "o2"),
            ],
            None,
        )
        .await
        .unwrap();
    let relay = EventRelay::new("router", KafkaConfig::new(&brokers))
        .route(Route::new(Query::types(["ItemAdded", "CheckedOut"]), &items).key_tag("cart"))
        .route(Route::new(Query::types(["CheckedOut"]), &orders).key_tag("order"))
        .cloud_events("urn:dcb:test")
        .start(&store)
        .await
        .unwrap();
    wait_published(&relay, &store).await;
    relay.shutdown().await;

    let on_items = read_to_end(&brokers, &items).await;
    let on_orders = read_to_end(&brokers, &orders).await;
    let positions = |ms: &[Received]| ms.iter().map(|m| m.position()).collect::<Vec<_>>();
    assert_eq!(positions(&on_items), vec![1, 2, 4]);
    assert_eq!(positions(&on_orders), vec![2]);
    assert_eq!(on_items[2].key.as_deref(), Some("c2"));
    assert_eq!(on_orders[0].key.as_deref(), Some("o1"));
    let m = &on_orders[0];
    assert_eq!(m.header(HEADER_CE_SPECVERSION), Some("1.0"));
    assert_eq!(m.header(HEADER_CE_TYPE), Some("CheckedOut"));
    assert_eq!(m.header(HEADER_CE_SOURCE), Some("urn:dcb:test"));
    assert_eq!(m.header(HEADER_CE_ID), m.header(HEADER_EVENT_ID));
    chrono::DateTime::parse_from_rfc3339(m.header(HEADER_CE_TIME).unwrap()).unwrap();
    db.cleanup().await;
}

/// Two instances of one relay run at once: the lease lets one publish, and
/// each event reaches the topic once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_one_relay_publish_each_event_once() {
    let brokers = brokers();
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let topic = unique("dcb-relay-twice");
    create_topic(&brokers, &topic, 1).await;
    let start = |instance: &str| {
        EventRelay::new("shared", KafkaConfig::new(&brokers))
            .route(Route::new(Query::all(), &topic).key_tag("k"))
            .config(
                RelayConfig::default()
                    .instance_id(instance)
                    .poll_interval(Duration::from_millis(50)),
            )
            .start(&store)
    };
    let (a, b) = tokio::join!(start("a"), start("b"));
    let (a, b) = (a.unwrap(), b.unwrap());
    for n in 0..400 {
        store
            .append(vec![record("Tick", &format!("k{}", n % 5), n)], None)
            .await
            .unwrap();
    }
    wait_published(&a, &store).await;
    let (sa, sb) = (a.status().await.unwrap(), b.status().await.unwrap());
    a.shutdown().await;
    b.shutdown().await;
    assert!(
        sa.leading != sb.leading,
        "exactly one instance leads: a {sa:?}, b {sb:?}"
    );
    assert_eq!(sa.published + sb.published, 400, "a {sa:?}, b {sb:?}");
    let received = read_to_end(&brokers, &topic).await;
    let (distinct, copies) = first_copies_in_position_order(&received);
    assert_eq!((distinct, copies), (400, 0));
    db.cleanup().await;
}

/// A relay process is killed (SIGKILL) while it publishes a backlog; another
/// instance takes over once the lease expired and publishes the rest. Every
/// event reaches the topic; per key, first copies come in position order;
/// the copies (published again from the checkpoint) are bounded by what was
/// in flight since the last checkpoint write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_midway_is_taken_over_and_nothing_is_lost() {
    const EVENTS: usize = 20_000;
    let brokers = brokers();
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let topic = unique("dcb-relay-kill");
    create_topic(&brokers, &topic, 2).await;
    for chunk in 0..(EVENTS / 500) {
        let events = (0..500)
            .map(|i| {
                let n = chunk * 500 + i;
                record("Tick", &format!("k{}", n % 23), n)
            })
            .collect();
        store.append(events, None).await.unwrap();
    }
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_relay_child"))
            .args([db.url(), &brokers, "killed", &topic, "child", "1000"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn relay_child"),
    );
    // Kill it once it has checkpointed part of the backlog, not all of it.
    let pool = db.pool().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let at_kill = loop {
        // The table exists once the child migrated.
        let position: i64 =
            sqlx::query_scalar("SELECT position FROM dcb.kafka_relays WHERE relay_id = 'killed'")
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten()
                .unwrap_or(0);
        if position >= 2_000 {
            child.0.kill().unwrap();
            child.0.wait().unwrap();
            break position;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child relay checkpointed nothing within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        (at_kill as usize) < EVENTS,
        "the child finished before it was killed: make the backlog larger"
    );
    let relay = EventRelay::new("killed", KafkaConfig::new(&brokers))
        .route(Route::new(Query::all(), &topic).key_tag("k"))
        .config(RelayConfig::default().instance_id("successor"))
        .start(&store)
        .await
        .unwrap();
    wait_published(&relay, &store).await;
    relay.shutdown().await;

    let received = read_to_end(&brokers, &topic).await;
    let (distinct, copies) = first_copies_in_position_order(&received);
    assert_eq!(distinct, EVENTS, "an event was lost");
    let config = RelayConfig::default();
    assert!(
        copies <= config.checkpoint_every + config.max_in_flight,
        "{copies} copies"
    );
    eprintln!("killed at checkpoint {at_kill}: {copies} events published twice");
    db.cleanup().await;
}

/// Kills the child process when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A relay of an earlier version kept its checkpoint in the listener
/// runner's table: the new relay starts from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_of_the_listener_based_relay_is_carried_over() {
    let brokers = brokers();
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let topic = unique("dcb-relay-legacy");
    create_topic(&brokers, &topic, 1).await;
    for n in 0..10 {
        store
            .append(vec![record("Tick", "k", n)], None)
            .await
            .unwrap();
    }
    sqlx::raw_sql(
        "CREATE TABLE dcb.listener_checkpoints (listener_id text PRIMARY KEY, position bigint NOT NULL); \
         INSERT INTO dcb.listener_checkpoints VALUES ('legacy', 6);",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let relay = EventRelay::new("legacy", KafkaConfig::new(&brokers))
        .route(Route::new(Query::all(), &topic))
        .start(&store)
        .await
        .unwrap();
    wait_published(&relay, &store).await;
    relay.shutdown().await;
    let positions: Vec<u64> = read_to_end(&brokers, &topic)
        .await
        .iter()
        .map(|m| m.position())
        .collect();
    assert_eq!(positions, vec![7, 8, 9, 10]);
    db.cleanup().await;
}
