//! Exactly once: a transactional projection counting events is SIGKILLed at
//! random points while appends continue; after every kill its count equals
//! the number of matching events up to its checkpoint, and after the last
//! restart it equals the number of matching events.
//!
//! Needs PostgreSQL: set DATABASE_URL or run `scripts/postgres.sh start`.

#[path = "listener_support.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dcb_postgres::testing::TestDatabase;
use support::spawn_child;

const RUNS: usize = 10;
const LISTENER: &str = "tick-counter";

/// Count, ticks up to the checkpoint, and duplicate rows, read in one
/// snapshot (a batch the killed child sent its commit for may still commit
/// after the kill, and must not fall between two reads).
async fn check_consistent(pool: &sqlx::PgPool, context: &str) -> (i64, i64) {
    let (checkpoint, count, expected, duplicates) = support::snapshot(pool, LISTENER).await;
    assert_eq!(duplicates, 0, "{context}: an event was counted twice");
    assert_eq!(
        count, expected,
        "{context}: the count must equal the ticks up to the checkpoint {checkpoint}"
    );
    (checkpoint, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_projection_is_exactly_once_across_sigkills() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    support::create_projection(db.pool()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let appender = support::spawn_appender(store.clone(), stop.clone());

    let mut progressed = 0;
    for run in 0..RUNS {
        let mut child = spawn_child("tx", db.url(), &format!("killed-{run}"), 600, LISTENER).await;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(700..1600))).await;
        child.start_kill().expect("SIGKILL");
        child.wait().await.expect("reap");
        let (checkpoint, count) = check_consistent(db.pool(), &format!("after kill {run}")).await;
        if count > 0 {
            progressed += 1;
        }
        eprintln!("run {run}: killed at checkpoint {checkpoint}, count {count}");
    }
    assert!(progressed > 0, "the projection never made progress");

    stop.store(true, Ordering::SeqCst);
    appender.await.unwrap();

    let mut child = spawn_child("tx", db.url(), "final", 600, LISTENER).await;
    support::wait_caught_up(db.pool(), LISTENER).await;
    drop(child.stdin.take());
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("graceful shutdown in time")
        .unwrap();

    check_consistent(db.pool(), "after catch-up").await;
    let ticks = support::tick_positions(db.pool()).await;
    assert_eq!(support::tick_count(db.pool()).await, ticks.len() as i64);
    let seen: Vec<i64> = sqlx::query_scalar("SELECT position FROM tick_seen ORDER BY position")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(seen, ticks, "every tick exactly once");
    let owner: Option<String> =
        sqlx::query_scalar("SELECT owner FROM dcb.listener_checkpoints WHERE listener_id = $1")
            .bind(LISTENER)
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(owner, None, "graceful shutdown releases the lease");
    store.shutdown().await;
    db.cleanup().await;
}
