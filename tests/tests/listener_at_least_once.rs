//! At least once: an at-least-once listener SIGKILLed at random points while
//! appends continue sees every matching event at least once, and each run
//! sees a contiguous, ordered stretch of them starting no later than where
//! the previous runs stopped.
//!
//! Needs PostgreSQL: set DATABASE_URL or run `scripts/postgres.sh start`.

#[path = "listener_support.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dcb_postgres::testing::TestDatabase;
use support::spawn_child_with_lines;
use tokio::process::Child;
use tokio::task::JoinHandle;

const RUNS: usize = 8;
const LISTENER: &str = "tick-printer";

/// A child and the task collecting the positions it prints.
async fn spawn_child(url: &str, instance: &str) -> (Child, JoinHandle<Vec<i64>>) {
    let (child, mut lines) = spawn_child_with_lines("alo", url, instance, 600, LISTENER).await;
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(position) = line.strip_prefix("seen ") {
                seen.push(position.parse().expect("a position"));
            }
        }
        seen
    });
    (child, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_listener_sees_every_event_in_order_across_sigkills() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let stop = Arc::new(AtomicBool::new(false));
    let appender = support::spawn_appender(store.clone(), stop.clone());

    let mut runs: Vec<Vec<i64>> = Vec::new();
    for run in 0..RUNS {
        let (mut child, seen) = spawn_child(db.url(), &format!("killed-{run}")).await;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(700..1600))).await;
        child.start_kill().expect("SIGKILL");
        child.wait().await.expect("reap");
        let seen = seen.await.unwrap();
        eprintln!(
            "run {run}: saw {} events, checkpoint {}",
            seen.len(),
            support::checkpoint(db.pool(), LISTENER).await
        );
        runs.push(seen);
    }
    stop.store(true, Ordering::SeqCst);
    appender.await.unwrap();

    let (mut child, seen) = spawn_child(db.url(), "final").await;
    support::wait_caught_up(db.pool(), LISTENER).await;
    drop(child.stdin.take());
    child.wait().await.unwrap();
    runs.push(seen.await.unwrap());

    let ticks = support::tick_positions(db.pool()).await;
    let index_of = |position: i64| {
        ticks
            .binary_search(&position)
            .unwrap_or_else(|_| panic!("{position} is not a tick"))
    };
    // `next`: index of the first tick no run has seen yet.
    let mut next = 0usize;
    for (run, seen) in runs.iter().enumerate() {
        let Some(&first) = seen.first() else { continue };
        let start = index_of(first);
        assert!(
            start <= next,
            "run {run} started at tick #{start}, skipping from #{next}"
        );
        for (offset, &position) in seen.iter().enumerate() {
            assert_eq!(
                position,
                ticks[start + offset],
                "run {run} saw events out of order or skipped one"
            );
        }
        next = next.max(start + seen.len());
    }
    assert_eq!(next, ticks.len(), "every tick was seen at least once");
    let redelivered: usize = runs.iter().map(Vec::len).sum::<usize>() - ticks.len();
    eprintln!(
        "{} ticks, {} deliveries ({redelivered} again after a crash)",
        ticks.len(),
        ticks.len() + redelivered
    );
    store.shutdown().await;
    db.cleanup().await;
}
