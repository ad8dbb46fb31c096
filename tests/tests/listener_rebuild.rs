//! Reset and rebuild: the checkpoint and the read model's own reset commit in
//! one transaction, the listener replays the log, and progress is reported.
//!
//! Needs PostgreSQL: set DATABASE_URL or run `scripts/postgres.sh start`.

#[path = "listener_support.rs"]
mod support;

use std::time::Duration;

use dcb_core::EventStore;
use dcb_postgres::listener::{ListenerRunner, RebuildProgress, RunnerConfig};
use dcb_postgres::testing::TestDatabase;
use support::TickCounter;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_replays_the_log_into_a_fresh_read_model() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    support::create_projection(db.pool()).await;
    let runner = ListenerRunner::new(&store)
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
        Duration::from_secs(30),
        runner.rebuild("counter", |p| reports.push(p.clone())),
    )
    .await
    .expect("rebuild in time")
    .expect("rebuild");
    assert_eq!(done.target, head);
    assert_eq!(done.position, head);
    assert_eq!(done.fraction, 1.0);
    assert_eq!(done.events_done, 500, "{done:?}");
    assert!(done.events_per_sec > 0.0);
    assert_eq!(reports.last(), Some(&done));

    assert_eq!(
        support::tick_count(db.pool()).await,
        500,
        "rebuilt, not doubled"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(DISTINCT position) FROM tick_seen")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(rows, 500);

    // A plain reset rewinds the checkpoint with the read model.
    runner.reset("counter").await.unwrap();
    let status = runner.status("counter").await.unwrap();
    assert!(status.position.is_none_or(|p| p <= head));
    runner.catch_up("counter").await.unwrap();
    assert_eq!(support::tick_count(db.pool()).await, 500);

    runner.shutdown().await;
    store.shutdown().await;
    db.cleanup().await;
}
