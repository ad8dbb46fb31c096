//! Decisions on disjoint boundaries never fail each other: 32 concurrent
//! deciders, each on its own account, over several store instances, for a
//! while (10 s; `DCB_DISJOINT_SECS` overrides) → zero failed conditions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcb_core::{
    AppendCondition, EventMetadata, EventRecord, EventStore, Query, QueryItem, ReadOptions,
    StoreError, Tag,
};
use dcb_postgres::testing::TestDatabase;
use dcb_tests::instances::instances;
use dcb_tests::read::read_all;

const STORES: usize = 4;
const DECIDERS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deciders_on_disjoint_boundaries_never_conflict() {
    let seconds: u64 = std::env::var("DCB_DISJOINT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let db = TestDatabase::create().await;
    let stores = instances(&db, STORES, 8).await;
    let conflicts = Arc::new(AtomicU64::new(0));
    let decisions = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for decider in 0..DECIDERS {
        let store = stores[decider % STORES].clone();
        let conflicts = conflicts.clone();
        let decisions = decisions.clone();
        tasks.push(tokio::spawn(async move {
            let account = Tag::new("account", decider);
            // The account's own events, plus a type nobody appends (a
            // query shape with a type-only item, as real states have).
            let boundary = Query::from_items([
                QueryItem::new()
                    .types(["Opened", "Deposited"])
                    .tags([account.clone()]),
                QueryItem::new().types(["AccountsFrozen"]),
            ]);
            let mut balance = 0u64;
            while Instant::now() < deadline {
                let (head, events) = read_all(&store, &boundary, ReadOptions::forwards()).await;
                assert_eq!(
                    events.len() as u64,
                    balance,
                    "decider {decider} sees its own events"
                );
                let event = EventRecord {
                    event_type: "Deposited".into(),
                    tags: vec![account.clone()],
                    payload: b"{\"amount\":1}".to_vec(),
                    metadata: EventMetadata::new(),
                };
                match store
                    .append(
                        vec![event],
                        Some(AppendCondition::not_after(boundary.clone(), head)),
                    )
                    .await
                {
                    Ok(_) => {
                        balance += 1;
                        decisions.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(StoreError::ConditionFailed { .. }) => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(other) => panic!("decider {decider}: {other}"),
                }
            }
            balance
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    let conflicts = conflicts.load(Ordering::Relaxed);
    let decisions = decisions.load(Ordering::Relaxed);
    eprintln!(
        "{DECIDERS} deciders on disjoint boundaries over {STORES} stores for {seconds} s: \
         {decisions} decisions ({:.0}/s), {conflicts} conflicts",
        decisions as f64 / seconds as f64
    );
    assert_eq!(conflicts, 0, "false conflicts between disjoint boundaries");
    assert_eq!(total, decisions);
    assert!(decisions > 0);
    assert_eq!(
        stores[0].head().await.unwrap().map(|p| p.0),
        Some(decisions)
    );
    for store in &stores {
        store.shutdown().await;
    }
    db.cleanup().await;
}
