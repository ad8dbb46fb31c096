//! Translators on librdkafka's mock cluster (no broker needed): the broker
//! goes down while the group consumes and the translator carries on when it
//! comes back; garbage is recorded as dead.
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`).

mod kafka_support;

use std::time::Duration;

use dcb_kafka::rdkafka::mocking::MockCluster;
use dcb_kafka::{DeadKind, KafkaConfig, Publisher};
use dcb_postgres::testing::TestDatabase;
use kafka_support::ledger::{credit, credited, publish, start_credits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translator_carries_on_after_the_broker_comes_back() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("credits", 1, 1).unwrap();
    let config = KafkaConfig::new(cluster.bootstrap_servers());
    let publisher = std::sync::Arc::new(Publisher::connect(&config).await.unwrap());
    for i in 0..5 {
        publish(&publisher, "credits", "a", credit("a", i + 1)).await;
    }
    publish(&publisher, "credits", "g", b"garbage".to_vec()).await;

    let runner = start_credits(&config, "mock-group", &store, "credits").await;
    let stats = runner.wait_for_messages(6, Duration::from_secs(60)).await;
    assert_eq!(stats.decided, 5, "{stats:?}");
    assert_eq!(stats.dead, 1, "{stats:?}");
    let dead = runner.dead_messages(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].kind, DeadKind::Undecodable);
    assert_eq!(dead[0].offset, 5);

    cluster.broker_down(1).unwrap();
    let sender = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for i in 0..5 {
                publish(&publisher, "credits", "b", credit("b", i + 1)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runner.stats().messages, 6);
    cluster.broker_up(1).unwrap();
    sender.await.unwrap();
    let stats = runner.wait_for_messages(11, Duration::from_secs(60)).await;
    runner.shutdown().await;
    assert_eq!(stats.messages, 11, "{stats:?}");
    assert_eq!(stats.decided, 10, "{stats:?}");
    assert_eq!(credited(&store).await, 10);
    db.cleanup().await;
}
