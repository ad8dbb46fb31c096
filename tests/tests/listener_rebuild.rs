//! Reset and rebuild: the checkpoint and the read model's own reset commit in
//! one transaction, the listener replays the log, and progress is reported
//! (read from the database), done only once the replay reached its target.
//!
//! Needs PostgreSQL: set DATABASE_URL or run `scripts/postgres.sh start`.

#[path = "listener_support.rs"]
mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use dcb_core::EventStore;
use dcb_postgres::listener::{RebuildProgress, RunnerConfig};
use dcb_postgres::testing::TestDatabase;
use support::TickCounter;

/// `tick_seen`'s rows, distinct positions among them, and its oldest row.
async fn seen(pool: &sqlx::PgPool) -> (i64, i64, Option<DateTime<Utc>>) {
    sqlx::query_as("SELECT count(*), count(DISTINCT position), min(at) FROM tick_seen")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_replays_the_log_into_a_fresh_read_model() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    support::create_projection(db.pool()).await;
    let runner = store
        .listeners()
        .config(RunnerConfig::default().poll_interval(Duration::from_millis(100)))
        .transactional(TickCounter {
            id: "counter".into(),
            instance: "here".into(),
            jitter: Duration::ZERO,
        })
        .start()
        .await
        .expect("start");

    for chunk in 0..10u64 {
        let batch = (0..60)
            .map(|i| {
                let n = chunk * 60 + i;
                if n % 6 == 0 {
                    support::tock(n)
                } else {
                    support::tick(n)
                }
            })
            .collect();
        store.append(batch, None).await.unwrap();
    }
    let head = runner.catch_up("counter").await.unwrap().unwrap();
    assert_eq!(head.0, 600);
    assert_eq!(support::tick_count(db.pool()).await, 500);

    let mut reports: Vec<RebuildProgress> = Vec::new();
    let done = tokio::time::timeout(
        Duration::from_secs(60),
        runner.rebuild("counter", |p| reports.push(p.clone())),
    )
    .await
    .expect("rebuild in time")
    .expect("rebuild");
    assert!(done.done);
    assert_eq!(done.target, head);
    assert_eq!(done.position, head);
    assert_eq!(done.fraction, 1.0);
    assert_eq!(done.events_done, 500, "{done:?}");
    assert!(done.events_per_sec > 0.0);
    assert_eq!(reports.last(), Some(&done));
    for report in &reports[..reports.len() - 1] {
        assert!(!report.done, "reported done early: {report:?}");
    }

    assert_eq!(
        support::tick_count(db.pool()).await,
        500,
        "rebuilt, not doubled"
    );
    assert_eq!(seen(db.pool()).await.0, 500, "every tick once");
    assert_eq!(seen(db.pool()).await.1, 500);

    // A plain reset rewinds the checkpoint with the read model, in one
    // transaction: the listener's own reset ran (once more), and every row
    // of the replayed read model is newer than the reset.
    let before: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(db.pool())
        .await
        .unwrap();
    runner.reset("counter").await.unwrap();
    runner.catch_up("counter").await.unwrap();
    let resets: i64 = sqlx::query_scalar("SELECT count(*) FROM tick_resets")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(resets, 2, "the rebuild's and the reset's");
    assert_eq!(support::tick_count(db.pool()).await, 500);
    let (rows, distinct, oldest) = seen(db.pool()).await;
    assert_eq!((rows, distinct), (500, 500), "replayed once, not doubled");
    assert!(
        oldest.unwrap() > before,
        "a row older than the reset survived: the checkpoint was not rewound"
    );
    let status = runner.status("counter").await.unwrap();
    assert_eq!(status.generation, 2);
    assert_eq!(status.handled, 1_500);
    assert_eq!(status.position, Some(head));

    runner.shutdown().await;
    store.shutdown().await;
    db.cleanup().await;
}
