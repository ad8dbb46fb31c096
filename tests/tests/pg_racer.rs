//! Racers on one boundary against PostgreSQL: of N concurrent decisions that
//! read the same state, exactly one commits. The racers are tasks spread over
//! several `PgEventStore` values (separate pools, separate writers), as
//! several application instances would be.

use std::sync::Arc;
use std::time::Instant;

use dcb_core::{
    AppendCondition, CodecError, Decision, DecisionError, DecisionMaker, Event, EventMetadata,
    EventRecord, EventSchema, EventStore, EventType, Query, QueryItem, ReadOptions, RetryPolicy,
    StateMutate, StateQuery, StoreError, Tag,
};
use dcb_postgres::testing::TestDatabase;
use dcb_tests::gate::{Gated, ReadGate};
use dcb_tests::instances::instances;
use dcb_tests::read::read_all;
use tokio::sync::Barrier;

const STORES: usize = 8;
const TASKS_PER_STORE: usize = 8;
const RACERS: usize = STORES * TASKS_PER_STORE;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_of_64_racers_commits_per_round() {
    const ROUNDS: usize = 50;
    let db = TestDatabase::create().await;
    let stores = instances(&db, STORES, 4).await;
    let started = Instant::now();
    for round in 0..ROUNDS {
        let boundary = Query::tags([Tag::new("seat", round)]);
        // Everyone reads before anyone appends, so all race from one head.
        let barrier = Arc::new(Barrier::new(RACERS));
        let mut tasks = Vec::new();
        for racer in 0..RACERS {
            let store = stores[racer % STORES].clone();
            let boundary = boundary.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let (head, events) = read_all(&store, &boundary, ReadOptions::forwards()).await;
                assert!(events.is_empty());
                barrier.wait().await;
                let event = EventRecord {
                    event_type: "SeatTaken".into(),
                    tags: vec![Tag::new("seat", round), Tag::new("racer", racer)],
                    payload: b"{}".to_vec(),
                    metadata: EventMetadata::new(),
                };
                store
                    .append(
                        vec![event],
                        Some(AppendCondition::not_after(boundary, head)),
                    )
                    .await
            }));
        }
        let mut winners = 0;
        let mut conflicts = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => winners += 1,
                Err(StoreError::ConditionFailed { .. }) => conflicts += 1,
                Err(other) => panic!("round {round}: unexpected error {other}"),
            }
        }
        assert_eq!((winners, conflicts), (1, RACERS - 1), "round {round}");
        let (_, events) = read_all(&stores[0], &boundary, ReadOptions::forwards()).await;
        assert_eq!(events.len(), 1, "round {round}: exactly one event stored");
    }
    let head = stores[0].head().await.unwrap().unwrap();
    assert_eq!(head.0, ROUNDS as u64);
    eprintln!(
        "{ROUNDS} rounds x {RACERS} racers over {STORES} stores: 1 winner each, {} conflicts, {:?}",
        ROUNDS * (RACERS - 1),
        started.elapsed()
    );
    for store in &stores {
        store.shutdown().await;
    }
    db.cleanup().await;
}

// ---- the same race through the decision maker, with a business rule ----

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Booked {
    show: u32,
    by: u32,
}

#[derive(Debug, Clone, PartialEq)]
enum ShowEvent {
    Booked(Booked),
}

impl Event for ShowEvent {
    const SCHEMA: &'static [EventSchema] = &[EventSchema {
        event_type: "SeatBooked",
        tag_keys: &["show"],
    }];
    fn event_type(&self) -> EventType {
        EventType::from_static("SeatBooked")
    }
    fn tags(&self) -> Vec<Tag> {
        let ShowEvent::Booked(b) = self;
        vec![Tag::new("show", b.show)]
    }
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let ShowEvent::Booked(b) = self;
        serde_json::to_vec(b).map_err(|e| CodecError::Encode(e.to_string()))
    }
    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError> {
        match event_type {
            "SeatBooked" => serde_json::from_slice(payload)
                .map(ShowEvent::Booked)
                .map_err(|e| CodecError::Decode(e.to_string())),
            other => Err(CodecError::UnknownType(other.to_string())),
        }
    }
}

#[derive(Clone)]
struct Bookings {
    show: u32,
    booked: u32,
}

impl StateQuery for Bookings {
    const NAME: &'static str = "Bookings";
    type Event = ShowEvent;
    fn query(&self) -> Query {
        Query::from_items([QueryItem::new()
            .types(["SeatBooked"])
            .tags([Tag::new("show", self.show)])])
    }
}

impl StateMutate for Bookings {
    fn mutate(&mut self, _event: ShowEvent) {
        self.booked += 1;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("sold out")]
struct SoldOut;

struct Book {
    show: u32,
    by: u32,
    capacity: u32,
}

impl Decision for Book {
    type Event = ShowEvent;
    type StateQuery = Bookings;
    type Error = SoldOut;
    fn state_query(&self) -> Bookings {
        Bookings {
            show: self.show,
            booked: 0,
        }
    }
    fn process(&self, state: &Bookings) -> Result<Vec<ShowEvent>, SoldOut> {
        if state.booked >= self.capacity {
            return Err(SoldOut);
        }
        Ok(vec![ShowEvent::Booked(Booked {
            show: self.show,
            by: self.by,
        })])
    }
}

/// Decision makers on several stores book one show: every booker reads the
/// show before any appends (a read gate; no cache of states, so each
/// reads), so the first round of appends conflicts and the rest retry. Never
/// more bookings than seats.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decision_makers_never_overbook() {
    const ROUNDS: u32 = 10;
    const CAPACITY: u32 = 5;
    let db = TestDatabase::create().await;
    let stores = instances(&db, STORES, 4).await;
    let retry = RetryPolicy {
        max_attempts: 200,
        ..RetryPolicy::default()
    };
    let gate = ReadGate::new();
    let makers: Vec<_> = stores
        .iter()
        .map(|s| {
            DecisionMaker::new(Gated::new(s.clone(), gate.clone()))
                .cache_entries(0)
                .with_retry(retry.clone())
        })
        .collect();
    let started = Instant::now();
    let mut total_attempts = 0;
    for show in 0..ROUNDS {
        gate.arm(RACERS);
        let barrier = Arc::new(Barrier::new(RACERS));
        let mut tasks = Vec::new();
        for racer in 0..RACERS {
            let maker = makers[racer % STORES].clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                maker
                    .make(Book {
                        show,
                        by: racer as u32,
                        capacity: CAPACITY,
                    })
                    .await
            }));
        }
        let (mut booked, mut sold_out, mut retries) = (0, 0, 0);
        for task in tasks {
            match task.await.unwrap() {
                Ok(decided) => {
                    booked += 1;
                    total_attempts += decided.attempts;
                    retries += decided.attempts - 1;
                }
                Err(DecisionError::Rejected(SoldOut)) => sold_out += 1,
                Err(other) => panic!("show {show}: unexpected {other}"),
            }
        }
        assert_eq!(
            (booked, sold_out),
            (CAPACITY as usize, RACERS - CAPACITY as usize),
            "show {show}"
        );
        // All bookers decided on an empty show: all but one of the
        // bookings that committed had lost a race first.
        assert!(
            retries >= CAPACITY - 1,
            "show {show}: {retries} retries: the bookers did not race"
        );
        let state = Bookings { show, booked: 0 };
        let (_, events) = read_all(&stores[0], &state.query(), ReadOptions::forwards()).await;
        assert_eq!(
            events.len(),
            CAPACITY as usize,
            "show {show}: never overbooked"
        );
    }
    eprintln!(
        "{ROUNDS} shows x {RACERS} bookers, capacity {CAPACITY}: {} bookings in {total_attempts} attempts, {:?}",
        ROUNDS * CAPACITY,
        started.elapsed()
    );
    for store in &stores {
        store.shutdown().await;
    }
    db.cleanup().await;
}
