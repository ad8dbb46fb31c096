//! The in-batch paths of `append_batch_v2`, driven directly with hand-made
//! batches (through the writer, which requests share a batch depends on
//! timing): a request checked against the accepted requests before it in
//! the same batch, a rejected request taking no position, event ids
//! repeated within a batch and against the log.

use dcb_core::{AppendCondition, EventMetadata, EventRecord, Position, Query, QueryItem, Tag};
use sqlx::Row;

use crate::testing::TestDatabase;
use crate::writer::batch::{call_batch, Batch};

const APPENDED: i32 = 0;
const CONFLICT: i32 = 1;
const DUPLICATE: i32 = 2;

fn event(event_type: &str, tags: &[Tag]) -> EventRecord {
    EventRecord {
        event_type: dcb_core::EventType::new(event_type),
        tags: tags.to_vec(),
        payload: b"{}".to_vec(),
        metadata: EventMetadata::new(),
    }
}

fn with_id(mut event: EventRecord, id: uuid::Uuid) -> EventRecord {
    event.metadata.event_id = id;
    event
}

/// One outcome per request: (outcome, first, last, duplicate id).
type Outcome = (i32, Option<i64>, Option<i64>, Option<uuid::Uuid>);

async fn run(
    db: &TestDatabase,
    requests: &[(Vec<EventRecord>, Option<AppendCondition>)],
) -> Vec<Outcome> {
    let parts: Vec<(&[EventRecord], Option<&AppendCondition>)> = requests
        .iter()
        .map(|(events, condition)| (events.as_slice(), condition.as_ref()))
        .collect();
    let batch = Batch::from_parts(&parts);
    let mut conn = db.pool().acquire().await.unwrap();
    call_batch(&mut conn, "dcb", "dcb_batch_tests", &batch, true)
        .await
        .unwrap()
        .iter()
        .map(|row| {
            (
                row.get::<i32, _>(0),
                row.get::<Option<i64>, _>(1),
                row.get::<Option<i64>, _>(2),
                row.get::<Option<uuid::Uuid>, _>(3),
            )
        })
        .collect()
}

/// The stored log as (position, type, event id), and the head.
async fn log(db: &TestDatabase) -> (Vec<(i64, String, uuid::Uuid)>, i64) {
    let rows: Vec<(i64, String, uuid::Uuid)> =
        sqlx::query_as("SELECT position, event_type, event_id FROM dcb.events ORDER BY position")
            .fetch_all(db.pool())
            .await
            .unwrap();
    let head: i64 = sqlx::query_scalar("SELECT position FROM dcb.head")
        .fetch_one(db.pool())
        .await
        .unwrap();
    (rows, head)
}

fn cart(n: u32) -> Tag {
    Tag::new("cart", n)
}

#[tokio::test]
async fn a_request_conflicts_with_an_earlier_accepted_request_of_its_batch() {
    let db = TestDatabase::create().await;
    let boundary = || AppendCondition::never_matched(Query::tags([cart(1)]));
    // Two decisions on cart 1 read the same (empty) log: the first wins, the
    // second conflicts with it although it is not stored yet when checked;
    // a third on cart 2 is untouched, and takes the next position.
    let outcomes = run(
        &db,
        &[
            (vec![event("Added", &[cart(1)])], Some(boundary())),
            (vec![event("Added", &[cart(1)])], Some(boundary())),
            (
                vec![event("Added", &[cart(2)])],
                Some(AppendCondition::never_matched(Query::tags([cart(2)]))),
            ),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        vec![
            (APPENDED, Some(1), Some(1), None),
            (CONFLICT, None, None, None),
            (APPENDED, Some(2), Some(2), None),
        ]
    );

    // Same again with `after`: both read up to position 2; a type-only item
    // (any `Removed`) and a two-tag item (cart 3 AND vip) are matched by the
    // earlier request's events only when those really match.
    let after = Some(Position(2));
    let outcomes = run(
        &db,
        &[
            (
                vec![
                    event("Removed", &[cart(3)]),
                    event("Added", &[cart(3), Tag::new("vip", 1)]),
                ],
                Some(AppendCondition::not_after(Query::tags([cart(3)]), after)),
            ),
            (
                vec![event("Added", &[cart(4)])],
                Some(AppendCondition::not_after(Query::types(["Removed"]), after)),
            ),
            (
                vec![event("Added", &[cart(5)])],
                Some(AppendCondition::not_after(
                    Query::from_items([QueryItem::new().tags([cart(3), Tag::new("vip", 2)])]),
                    after,
                )),
            ),
            (
                vec![event("Added", &[cart(6)])],
                Some(AppendCondition::not_after(
                    Query::from_items([QueryItem::new().tags([cart(3), Tag::new("vip", 1)])]),
                    after,
                )),
            ),
            // Its `after` is past the first request's events: no conflict.
            (
                vec![event("Added", &[cart(7)])],
                Some(AppendCondition::not_after(
                    Query::tags([cart(3)]),
                    Some(Position(4)),
                )),
            ),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        vec![
            (APPENDED, Some(3), Some(4), None),
            (CONFLICT, None, None, None),
            (APPENDED, Some(5), Some(5), None),
            (CONFLICT, None, None, None),
            (APPENDED, Some(6), Some(6), None),
        ]
    );
    let (rows, head) = log(&db).await;
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(head, 6);
    db.cleanup().await;
}

#[tokio::test]
async fn a_rejected_request_takes_no_position_and_blocks_nobody() {
    let db = TestDatabase::create().await;
    let stored = run(&db, &[(vec![event("Added", &[cart(1)])], None)]).await;
    assert_eq!(stored, vec![(APPENDED, Some(1), Some(1), None)]);
    // The first request read nothing (its condition fails on the stored
    // event); the second, on the same boundary, read up to 1 and must not be
    // blocked by the first's events, which are never written.
    let outcomes = run(
        &db,
        &[
            (
                vec![event("Added", &[cart(1)]), event("Added", &[cart(1)])],
                Some(AppendCondition::never_matched(Query::tags([cart(1)]))),
            ),
            (
                vec![event("Added", &[cart(1)])],
                Some(AppendCondition::not_after(
                    Query::tags([cart(1)]),
                    Some(Position(1)),
                )),
            ),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        vec![
            (CONFLICT, None, None, None),
            (APPENDED, Some(2), Some(2), None)
        ]
    );
    let (rows, head) = log(&db).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(head, 2);
    db.cleanup().await;
}

#[tokio::test]
async fn event_ids_repeated_in_a_batch_or_against_the_log() {
    let db = TestDatabase::create().await;
    let stored_id = uuid::Uuid::new_v4();
    run(
        &db,
        &[(vec![with_id(event("Added", &[cart(1)]), stored_id)], None)],
    )
    .await;

    let shared = uuid::Uuid::new_v4();
    let free_again = uuid::Uuid::new_v4();
    let outcomes = run(
        &db,
        &[
            // An id already in the log.
            (
                vec![
                    event("Added", &[cart(2)]),
                    with_id(event("Added", &[cart(2)]), stored_id),
                ],
                None,
            ),
            // An id first used here...
            (vec![with_id(event("Added", &[cart(3)]), shared)], None),
            // ...then again by a later request of the same batch.
            (
                vec![
                    event("Added", &[cart(4)]),
                    with_id(event("Added", &[cart(4)]), shared),
                ],
                None,
            ),
            // A request rejected by its condition does not claim its ids...
            (
                vec![with_id(event("Added", &[cart(1)]), free_again)],
                Some(AppendCondition::never_matched(Query::tags([cart(1)]))),
            ),
            // ...so a later request may use them.
            (vec![with_id(event("Added", &[cart(5)]), free_again)], None),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        vec![
            (DUPLICATE, None, None, Some(stored_id)),
            (APPENDED, Some(2), Some(2), None),
            (DUPLICATE, None, None, Some(shared)),
            (CONFLICT, None, None, None),
            (APPENDED, Some(3), Some(3), None),
        ]
    );
    let (rows, head) = log(&db).await;
    assert_eq!(
        rows.iter().map(|r| (r.0, r.2)).collect::<Vec<_>>(),
        vec![(1, stored_id), (2, shared), (3, free_again)]
    );
    assert_eq!(head, 3);
    db.cleanup().await;
}

#[tokio::test]
async fn without_the_id_lookup_a_stored_id_fails_the_whole_call() {
    let db = TestDatabase::create().await;
    let stored = uuid::Uuid::new_v4();
    run(&db, &[(vec![with_id(event("A", &[]), stored)], None)]).await;
    // The writer's first, optimistic call: the unique index refuses the
    // stored id and nothing of the batch is written.
    let requests = [
        vec![event("B", &[])],
        vec![with_id(event("C", &[]), stored)],
    ];
    let parts: Vec<(&[EventRecord], Option<&AppendCondition>)> =
        requests.iter().map(|r| (r.as_slice(), None)).collect();
    let batch = Batch::from_parts(&parts);
    let mut conn = db.pool().acquire().await.unwrap();
    let err = call_batch(&mut conn, "dcb", "dcb_batch_tests", &batch, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, sqlx::Error::Database(e) if e.is_unique_violation()),
        "{err}"
    );
    drop(conn);
    assert_eq!(log(&db).await.1, 1, "the failed call moved the head");
    // The second call looks ids up: only the request with the stored id
    // fails.
    let mut conn = db.pool().acquire().await.unwrap();
    let rows = call_batch(&mut conn, "dcb", "dcb_batch_tests", &batch, true)
        .await
        .unwrap();
    let outcomes: Vec<(i32, Option<uuid::Uuid>)> =
        rows.iter().map(|r| (r.get(0), r.get(3))).collect();
    assert_eq!(outcomes, vec![(APPENDED, None), (DUPLICATE, Some(stored))]);
    drop(conn);
    let (events, head) = log(&db).await;
    assert_eq!(head, 2);
    assert_eq!(events[1].1, "B");
    db.cleanup().await;
}
