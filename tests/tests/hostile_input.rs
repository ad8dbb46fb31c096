//! Arbitrary text in every field a caller controls — tag keys and values,
//! event types, user metadata, query tags — against both stores: never a
//! panic, either the append commits and reads back exactly as written or it
//! is refused as an invalid request, and an innocent append sent at the
//! same time always commits.

use std::sync::Arc;

use dcb_core::{
    AppendCondition, EventRecord, EventStore, EventType, InMemoryEventStore, Query, ReadOptions,
    StoreError, Tag,
};
use dcb_postgres::testing::TestDatabase;
use dcb_tests::read::read_all;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// One hostile append: its parts as generated.
#[derive(Debug, Clone)]
struct Hostile {
    event_type: String,
    key: String,
    value: String,
    metadata: String,
    query_value: String,
}

/// Text that mixes ordinary characters with what breaks naive stores: NUL,
/// other control characters, quotes, backslashes, braces, non-ASCII, and
/// long runs.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{0,24}",
        2 => "[a-z\u{0}\"\\\\{},:\u{1}é✓]{0,16}",
        1 => ".{0,8}".prop_map(|s| format!("{s}\u{0}{s}")),
        1 => (0usize..3000).prop_map(|n| "x".repeat(n)),
    ]
}

fn hostile() -> impl Strategy<Value = Hostile> {
    (
        hostile_text(),
        "[a-z_]{1,8}|\\PC{1,12}",
        hostile_text(),
        hostile_text(),
        hostile_text(),
    )
        .prop_map(|(event_type, key, value, metadata, query_value)| Hostile {
            event_type,
            // `Tag::new` refuses keys with `:` (a programming error); a
            // store sees whatever a key may hold otherwise.
            key: key.replace(':', "_"),
            value,
            metadata,
            query_value,
        })
}

fn record(h: &Hostile) -> Option<EventRecord> {
    if h.key.is_empty() {
        return None;
    }
    let mut record = EventRecord::new(
        EventType::new(h.event_type.clone()),
        [Tag::new(&h.key, &h.value)],
        h.value.clone().into_bytes(),
    );
    record.metadata.user = Some(serde_json::json!({ "note": h.metadata, h.metadata.clone(): 1 }));
    Some(record)
}

/// Runs one hostile append beside an innocent one and checks the outcome.
async fn check<S: EventStore + ?Sized>(store: &S, case: &Hostile) -> Result<(), TestCaseError> {
    let Some(bad) = record(case) else {
        return Ok(());
    };
    let condition = AppendCondition::never_matched(Query::tags([Tag::new("q", &case.query_value)]));
    let innocent = EventRecord::new("Innocent", [Tag::new("case", "innocent")], b"{}".to_vec());
    let innocent_id = innocent.metadata.event_id;
    let (hostile, innocent) = tokio::join!(
        store.append(vec![bad.clone()], Some(condition)),
        store.append(vec![innocent], None)
    );
    prop_assert!(innocent.is_ok(), "an innocent append failed: {innocent:?}");
    match hostile {
        Ok(appended) => {
            let (_, events) = store
                .read(
                    &Query::all(),
                    ReadOptions::backwards().from(appended.last).limit(1),
                )
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .collect()
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(
                &events[0].record,
                &bad,
                "a stored event reads back as written"
            );
            // And a read by its own tag finds it.
            let found = store
                .read(&Query::tags(bad.tags.clone()), ReadOptions::forwards())
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .collect()
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .1;
            prop_assert!(found
                .iter()
                .any(|e| e.record.metadata.event_id == bad.metadata.event_id));
        }
        Err(StoreError::InvalidRequest(message)) => {
            prop_assert!(!message.is_empty());
        }
        Err(other) => return Err(TestCaseError::fail(format!("unexpected error: {other:?}"))),
    }
    let (_, innocents) = store
        .read(
            &Query::tags([Tag::new("case", "innocent")]),
            ReadOptions::forwards(),
        )
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .collect()
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(innocents
        .iter()
        .any(|e| e.record.metadata.event_id == innocent_id));
    Ok(())
}

fn run_cases<S: EventStore + 'static>(store: Arc<S>, cases: u32) -> (u32, u32) {
    let runtime = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let tried = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&hostile(), |case| {
        tried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::block_in_place(|| runtime.block_on(check(&*store, &case)))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    (tried.into_inner(), cases)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_in_memory() {
    let store = Arc::new(InMemoryEventStore::new());
    let (tried, _) = run_cases(store.clone(), 256);
    let (head, _) = read_all(&store, &Query::none(), ReadOptions::forwards()).await;
    eprintln!("in memory: {tried} hostile appends tried, log head {head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_in_postgres() {
    let db = TestDatabase::create().await;
    let store = Arc::new(db.store().await);
    let (tried, _) = run_cases(store.clone(), 128);
    let stats = store.writer_stats();
    eprintln!(
        "postgres: {tried} hostile appends tried; writer: {} batches, {} requests, {} split, {} refused by the database",
        stats.batches, stats.requests, stats.splits, stats.refused
    );
    store.shutdown().await;
    db.cleanup().await;
}
