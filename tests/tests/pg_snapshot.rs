//! Snapshots of decision states on PostgreSQL: `PgEventStore` with
//! `PgSnapshotStore`. Same results as without snapshots, saved every N
//! events, never moved back, corrupt snapshots ignored, racers and
//! idempotency keys still right.

use std::sync::Arc;

use dcb_core::{
    DecisionMaker, InMemoryEventStore, MakeOptions, Position, RetryPolicy, Snapshot, SnapshotStore,
    StoredSnapshot,
};
use dcb_postgres::snapshot::PgSnapshotStore;
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::DEFAULT_SCHEMA;
use dcb_tests::bank::{balance_of, deposit, key_of, outcome, race_withdrawals, withdraw, Balance};
use dcb_tests::gate::{Gated, ReadGate};
use dcb_tests::instances::instances;

async fn snapshot_store(db: &TestDatabase) -> Arc<PgSnapshotStore> {
    let snapshots = PgSnapshotStore::new(db.pool().clone(), DEFAULT_SCHEMA).expect("schema");
    snapshots.migrate().await.expect("migrate snapshots");
    Arc::new(snapshots)
}

#[tokio::test]
async fn migrate_is_idempotent_and_snapshots_never_move_back() {
    let db = TestDatabase::create().await;
    let snapshots = snapshot_store(&db).await;
    snapshots.migrate().await.expect("second migrate");
    assert!(PgSnapshotStore::new(db.pool().clone(), "Bad-Schema").is_err());

    assert_eq!(snapshots.load("k").await.unwrap(), None);
    let at = |p: u64, payload: &[u8]| StoredSnapshot {
        position: Position(p),
        payload: payload.to_vec(),
    };
    snapshots.save("k", at(10, b"ten")).await.unwrap();
    assert_eq!(snapshots.load("k").await.unwrap(), Some(at(10, b"ten")));
    snapshots.save("k", at(5, b"five")).await.unwrap();
    assert_eq!(snapshots.load("k").await.unwrap(), Some(at(10, b"ten")));
    snapshots.save("k", at(10, b"ten again")).await.unwrap();
    assert_eq!(
        snapshots.load("k").await.unwrap(),
        Some(at(10, b"ten again"))
    );
    snapshots.save("k", at(11, b"eleven")).await.unwrap();
    assert_eq!(snapshots.load("k").await.unwrap(), Some(at(11, b"eleven")));
    assert_eq!(snapshots.load("other").await.unwrap(), None);
    assert_eq!(snapshots.clear().await.unwrap(), 1);
    db.cleanup().await;
}

#[tokio::test]
async fn same_results_with_and_without_snapshots() {
    let db = TestDatabase::create().await;
    let snapshots = snapshot_store(&db).await;
    let with = DecisionMaker::new(db.store().await)
        .cache_entries(0)
        .with_snapshots(snapshots.clone(), 5);
    let without = DecisionMaker::new(InMemoryEventStore::new());
    let mut rng = fastrand::Rng::with_seed(7);
    for step in 0..200 {
        let account = ["a1", "a2"][rng.usize(..2)];
        let amount = rng.u64(1..40);
        let (a, b) = if rng.bool() {
            (
                outcome(with.make(deposit(account, amount)).await),
                outcome(without.make(deposit(account, amount)).await),
            )
        } else {
            (
                outcome(with.make(withdraw(account, amount)).await),
                outcome(without.make(withdraw(account, amount)).await),
            )
        };
        assert_eq!(a, b, "step {step}");
    }
    for account in ["a1", "a2"] {
        assert_eq!(
            balance_of(&with, account).await,
            balance_of(&without, account).await
        );
        let saved = snapshots
            .load(&key_of(account))
            .await
            .unwrap()
            .expect("a snapshot per account");
        assert!(saved.position > Position(100), "recent: {saved:?}");
    }
    db.cleanup().await;
}

#[tokio::test]
async fn a_snapshot_is_saved_every_n_events() {
    let db = TestDatabase::create().await;
    let snapshots = snapshot_store(&db).await;
    let maker = DecisionMaker::new(db.store().await)
        .cache_entries(0)
        .with_snapshots(snapshots.clone(), 10);
    let key = key_of("a1");
    for amount in 1..=10 {
        maker.make(deposit("a1", amount)).await.unwrap();
    }
    assert_eq!(snapshots.load(&key).await.unwrap(), None);
    maker.make(deposit("a1", 11)).await.unwrap();
    let saved = snapshots.load(&key).await.unwrap().expect("saved");
    assert_eq!(saved.position, Position(10));
    assert_eq!(
        Balance::from_snapshot_bytes(&saved.payload).unwrap(),
        Balance {
            account: "a1".into(),
            balance: 55,
            operations: 10
        }
    );
    for amount in 12..=21 {
        maker.make(deposit("a1", amount)).await.unwrap();
    }
    assert_eq!(
        snapshots.load(&key).await.unwrap().unwrap().position,
        Position(20)
    );
    assert_eq!(balance_of(&maker, "a1").await, ((1..=21).sum(), 21));
    db.cleanup().await;
}

#[tokio::test]
async fn a_snapshot_that_does_not_decode_is_ignored_and_replaced() {
    let db = TestDatabase::create().await;
    let snapshots = snapshot_store(&db).await;
    let maker = DecisionMaker::new(db.store().await)
        .cache_entries(0)
        .with_snapshots(snapshots.clone(), 1);
    for amount in [10, 20, 30] {
        maker.make(deposit("a1", amount)).await.unwrap();
    }
    let key = key_of("a1");
    for garbage in [
        &b"\xffnot json"[..],
        br#"{"account":"a1","balance":"lots","operations":1}"#,
        br#"{"account":"a2","balance":1000000,"operations":3}"#,
    ] {
        sqlx::query(&format!(
            "UPDATE {DEFAULT_SCHEMA}.snapshots SET payload = $2 WHERE key = $1"
        ))
        .bind(&key)
        .bind(garbage)
        .execute(db.pool())
        .await
        .unwrap();
        assert_eq!(balance_of(&maker, "a1").await, (60, 3));
        let saved = snapshots.load(&key).await.unwrap().unwrap();
        assert_eq!(
            Balance::from_snapshot_bytes(&saved.payload)
                .unwrap()
                .balance,
            60,
            "a good snapshot replaced the bad one"
        );
    }
    // A snapshot past the head (another log's) is ignored too.
    let rich = Balance {
        account: "a1".into(),
        balance: 1_000_000,
        operations: 3,
    };
    snapshots
        .save(
            &key,
            StoredSnapshot {
                position: Position(1_000),
                payload: rich.snapshot_bytes().unwrap(),
            },
        )
        .await
        .unwrap();
    assert_eq!(balance_of(&maker, "a1").await, (60, 3));
    db.cleanup().await;
}

/// Racers on several stores, all starting from one snapshot and held by a
/// read gate until every one has read, so their appends conflict: a
/// snapshot must not weaken the append condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racers_on_several_stores_never_overdraw() {
    const STORES: usize = 4;
    const RACERS: usize = 32;
    let db = TestDatabase::create().await;
    let snapshots = snapshot_store(&db).await;
    let retry = RetryPolicy {
        max_attempts: 10_000,
        ..RetryPolicy::default()
    };
    let gate = ReadGate::new();
    let mut makers = Vec::new();
    for store in instances(&db, STORES, 4).await {
        makers.push(Arc::new(
            DecisionMaker::new(Gated::new(store, gate.clone()))
                .cache_entries(0)
                .with_snapshots(snapshots.clone(), 1)
                .with_retry(retry.clone()),
        ));
    }
    for _ in 0..20 {
        makers[0].make(deposit("a1", 5)).await.unwrap();
    }
    gate.arm(RACERS);
    let tally = race_withdrawals(&makers, RACERS, "a1", 7).await;
    assert_eq!(tally.committed, 100 / 7);
    assert!(
        tally.retries > 0,
        "no append condition failed: the racers did not race"
    );
    assert!(tally.from_snapshot > 0, "no racer started from a snapshot");
    assert_eq!(balance_of(&makers[1], "a1").await, (100 % 7, 20 + 14));
    let plain = DecisionMaker::new(db.store().await);
    assert_eq!(balance_of(&plain, "a1").await, (100 % 7, 20 + 14));
    db.cleanup().await;
}

#[tokio::test]
async fn idempotency_keys_still_work_with_snapshots_on() {
    let db = TestDatabase::create().await;
    let snapshots = snapshot_store(&db).await;
    let maker = DecisionMaker::new(db.store().await)
        .cache_entries(0)
        .with_snapshots(snapshots.clone(), 1);
    maker.make(deposit("a1", 100)).await.unwrap();
    let request = MakeOptions::new().idempotency_key("withdraw-1");
    let first = maker
        .make_with(&withdraw("a1", 30), request.clone())
        .await
        .unwrap();
    for _ in 0..5 {
        maker.make(deposit("a1", 1)).await.unwrap();
    }
    assert_eq!(balance_of(&maker, "a1").await, (75, 7));
    let saved = snapshots.load(&key_of("a1")).await.unwrap().unwrap();
    assert!(saved.position > first.events[0].position);
    let again = maker.make_with(&withdraw("a1", 30), request).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.events.len(), 1);
    assert_eq!(again.events[0].position, first.events[0].position);
    assert_eq!(again.events[0].event, first.events[0].event);
    assert_eq!(balance_of(&maker, "a1").await, (75, 7));
    db.cleanup().await;
}
