//! Two runner processes for one listener: only one handles events at a time;
//! SIGKILLing the leader hands over to the other once its lease expired, and
//! a graceful shutdown hands over at once (without waiting for a lease
//! longer than the test); no event is skipped or doubled.
//!
//! Needs PostgreSQL: set DATABASE_URL or run `scripts/postgres.sh start`.

#[path = "listener_support.rs"]
mod support;

use std::time::{Duration, Instant};

use dcb_core::EventStore;
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::PgEventStore;
use support::{spawn_child, WAIT};

const LISTENER: &str = "tick-counter";
const LEASE_MS: u64 = 1000;
/// A lease longer than any wait of the test: only a release frees it.
const LONG_LEASE_MS: u64 = 600_000;

async fn owner(pool: &sqlx::PgPool) -> Option<String> {
    sqlx::query_scalar(
        "SELECT owner FROM dcb.listener_checkpoints WHERE listener_id = $1 AND lease_until > clock_timestamp()",
    )
    .bind(LISTENER)
    .fetch_optional(pool)
    .await
    .unwrap()
    .flatten()
}

async fn wait_for_owner(pool: &sqlx::PgPool, instance: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if owner(pool).await.as_deref() == Some(instance) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{instance} did not take the lease within {within:?} (owner: {:?})",
            owner(pool).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn append_ticks(store: &PgEventStore, from: u64, n: u64) {
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(10) {
        let batch = chunk.iter().map(|&i| support::tick(i)).collect();
        store.append(batch, None).await.expect("append");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Instances in the order they handled events, with consecutive repeats
/// collapsed.
async fn handover_sequence(pool: &sqlx::PgPool) -> Vec<String> {
    let instances: Vec<String> =
        sqlx::query_scalar("SELECT instance FROM tick_seen ORDER BY position")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut sequence: Vec<String> = Vec::new();
    for instance in instances {
        if sequence.last() != Some(&instance) {
            sequence.push(instance);
        }
    }
    sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_failover_on_kill() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    support::create_projection(db.pool()).await;
    let pool = db.pool();

    let mut a = spawn_child("tx", db.url(), "a", LEASE_MS, LISTENER).await;
    wait_for_owner(pool, "a", WAIT).await;
    // b holds a lease only a release can end early.
    let mut b = spawn_child("tx", db.url(), "b", LONG_LEASE_MS, LISTENER).await;

    append_ticks(&store, 0, 200).await;
    support::wait_caught_up(pool, LISTENER).await;
    assert_eq!(
        handover_sequence(pool).await,
        ["a"],
        "the standby handled nothing"
    );
    assert_eq!(owner(pool).await.as_deref(), Some("a"));

    // Kill the leader while appends continue: b takes over once the lease
    // ran out.
    let appender = {
        let store = store.clone();
        tokio::spawn(async move { append_ticks(&store, 200, 300).await })
    };
    a.start_kill().expect("SIGKILL a");
    a.wait().await.unwrap();
    let takeover = wait_for_owner(pool, "b", WAIT).await;
    eprintln!("b took over {takeover:?} after a was killed");
    appender.await.unwrap();
    support::wait_caught_up(pool, LISTENER).await;
    // One leader at a time, whatever the machine's speed: b handled nothing
    // before a's last event (b waited for a's lease to run out).
    let (last_by_a, first_by_b): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "SELECT (SELECT max(at) FROM tick_seen WHERE instance = 'a'),
                    (SELECT min(at) FROM tick_seen WHERE instance = 'b')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(
        last_by_a < first_by_b,
        "a at {last_by_a}, b from {first_by_b}"
    );
    assert_eq!(handover_sequence(pool).await, ["a", "b"]);

    // A graceful shutdown releases the lease: the standby takes over at once,
    // not after b's ten-minute lease.
    let mut c = spawn_child("tx", db.url(), "c", LEASE_MS, LISTENER).await;
    drop(b.stdin.take());
    tokio::time::timeout(WAIT, b.wait())
        .await
        .expect("b stops in time")
        .unwrap();
    let takeover = wait_for_owner(pool, "c", WAIT).await;
    eprintln!("c took over {takeover:?} after b shut down");
    append_ticks(&store, 500, 100).await;
    support::wait_caught_up(pool, LISTENER).await;
    assert_eq!(handover_sequence(pool).await, ["a", "b", "c"]);

    // Every tick exactly once.
    let ticks = support::tick_positions(pool).await;
    let seen: Vec<i64> = sqlx::query_scalar("SELECT position FROM tick_seen ORDER BY position")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(seen, ticks);
    assert_eq!(support::tick_count(pool).await, 600);

    c.start_kill().unwrap();
    c.wait().await.unwrap();
    store.shutdown().await;
    db.cleanup().await;
}
