//! The guide's projection, automation and work-queue chapters, run against
//! PostgreSQL: reservations show in the seats table after `wait_until`,
//! each ticket is issued and mailed, `TicketMailed` is recorded once per
//! ticket, and a rebuild fills the table again from the log.

mod support;

use std::time::Duration;

use dcb_core::{DecisionMaker, EventStore, EventStoreExt, Query, ReadOptions};
use dcb_postgres::testing::TestDatabase;
use guide_snippets::domain::{ConcertEvent, ConcertEventType, Reserve, Schedule};
use guide_snippets::projection::{SeatsProjection, reserved_seats};
use support::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_are_projected_ticketed_and_mailed_once() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let services = guide_snippets::app::start(&store)
        .await
        .expect("services start");

    let maker = DecisionMaker::new(store.clone());
    maker
        .make(Schedule {
            concert: "c1".into(),
            seats: 10,
        })
        .await
        .expect("scheduled");
    let mut last = None;
    for (seat, guest) in [(7, "ann"), (8, "bob"), (3, "eve")] {
        let decided = maker
            .make(Reserve {
                concert: "c1".into(),
                seat,
                guest: guest.into(),
            })
            .await
            .expect("reserved");
        last = decided.last_position();
    }

    // Read your own write: wait for the projection to reach it.
    services
        .listeners
        .wait_until_timeout(SeatsProjection::ID, last.unwrap(), Duration::from_secs(60))
        .await
        .expect("the projection catches up");
    let expected = vec![
        (3, "eve".to_string()),
        (7, "ann".to_string()),
        (8, "bob".to_string()),
    ];
    assert_eq!(reserved_seats(store.pool(), "c1").await.unwrap(), expected);

    // The automation issues three tickets; the queue mails each and records
    // TicketMailed.
    let mailed = Query::types([ConcertEventType::TicketMailed]);
    eventually("three tickets mailed and recorded", || async {
        let (_, events) = store
            .read_decoded::<ConcertEvent>(&mailed, ReadOptions::forwards())
            .await
            .map_err(|e| e.to_string())?;
        if events.len() >= 3 {
            Ok(())
        } else {
            Err(format!("{} TicketMailed so far", events.len()))
        }
    })
    .await;
    let outbox = services.outbox.clone();
    services.shutdown().await;

    // Negative checks once everything stopped: each ticket issued once,
    // mailed at least once, recorded once.
    let count = |t: ConcertEventType| {
        let store = store.clone();
        async move {
            let (_, events) = store
                .read_decoded::<ConcertEvent>(&Query::types([t]), ReadOptions::forwards())
                .await
                .unwrap();
            events.len()
        }
    };
    assert_eq!(count(ConcertEventType::TicketIssued).await, 3);
    assert_eq!(count(ConcertEventType::TicketMailed).await, 3);
    let mut seats: Vec<u32> = outbox.sent().iter().map(|m| m.seat).collect();
    seats.sort_unstable();
    seats.dedup();
    assert_eq!(seats, [3, 7, 8]);

    // A rebuild empties the table and replays the log into it.
    let listeners = store
        .listeners()
        .transactional(SeatsProjection)
        .start()
        .await
        .unwrap();
    dcb_postgres::sqlx::query("UPDATE concerts.seats SET guest = 'damaged'")
        .execute(store.pool())
        .await
        .unwrap();
    listeners
        .rebuild(SeatsProjection::ID, |_| {})
        .await
        .expect("rebuild");
    let head = store.head().await.unwrap().unwrap();
    listeners
        .wait_until_timeout(SeatsProjection::ID, head, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(reserved_seats(store.pool(), "c1").await.unwrap(), expected);
    listeners.shutdown().await;

    store.shutdown().await;
    db.cleanup().await;
}
