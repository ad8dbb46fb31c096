//! The guide's relay, run against PostgreSQL and a Kafka broker: every
//! concert event reaches the topic in position order, keyed by concert,
//! with the event id, type and position headers; a restarted relay goes
//! on from its checkpoint.

mod support;

use std::time::Duration;

use dcb_core::{DecisionMaker, EventStore};
use dcb_kafka::{HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_POSITION, KafkaConfig};
use dcb_postgres::testing::TestDatabase;
use guide_snippets::domain::{Reserve, Schedule};
use guide_snippets::relay::start_relay;
use support::{brokers, create_topic, read_until, unique};

async fn reserve(maker: &DecisionMaker<dcb_postgres::PgEventStore>, concert: &str, seat: u32) {
    maker
        .make(Reserve {
            concert: concert.into(),
            seat,
            guest: format!("guest-{seat}"),
        })
        .await
        .expect("reserved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_the_log_in_order_and_resumes_from_its_checkpoint() {
    let brokers = brokers();
    let topic = unique("guide-concerts");
    create_topic(&brokers, &topic).await;
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let maker = DecisionMaker::new(store.clone());
    for concert in ["c1", "c2"] {
        maker
            .make(Schedule {
                concert: concert.into(),
                seats: 10,
            })
            .await
            .unwrap();
    }
    for seat in 1..=4 {
        reserve(&maker, "c1", seat).await;
        reserve(&maker, "c2", seat).await;
    }

    let relay = start_relay(&store, KafkaConfig::new(&brokers), "concerts-out", &topic)
        .await
        .expect("the relay starts");
    let head = store.head().await.unwrap().unwrap();
    relay
        .wait_until(head, Duration::from_secs(60))
        .await
        .expect("everything published");
    relay.shutdown().await;

    // A second run, after more events: it starts from its checkpoint.
    for seat in 5..=6 {
        reserve(&maker, "c1", seat).await;
    }
    let relay = start_relay(&store, KafkaConfig::new(&brokers), "concerts-out", &topic)
        .await
        .expect("the relay starts again");
    let head = store.head().await.unwrap().unwrap();
    relay
        .wait_until(head, Duration::from_secs(60))
        .await
        .unwrap();
    relay.shutdown().await;

    let total = usize::try_from(head.get()).unwrap();
    let received = read_until(&brokers, &topic, |r| r.len() >= total).await;
    let positions: Vec<u64> = received
        .iter()
        .map(|m| m.header(HEADER_POSITION).unwrap().parse().unwrap())
        .collect();
    // Every position once, in order: the restart republished nothing (a
    // clean shutdown writes the checkpoint), and skipped nothing.
    assert_eq!(positions, (1..=head.get()).collect::<Vec<_>>());
    for message in &received {
        let key = message.key.as_deref().expect("keyed by concert");
        assert!(
            message.payload.contains(&format!("\"concert\":\"{key}\"")),
            "{message:?}"
        );
        assert!(message.header(HEADER_EVENT_ID).is_some());
        let event_type = message.header(HEADER_EVENT_TYPE).unwrap();
        assert!(
            ["ConcertScheduled", "SeatReserved"].contains(&event_type),
            "{event_type}"
        );
    }

    store.shutdown().await;
    db.cleanup().await;
}
