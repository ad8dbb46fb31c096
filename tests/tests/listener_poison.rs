//! Poison events: a handler failing on one event is retried with capped
//! exponential backoff, then parked (when configured) while the rest
//! proceeds; a blocking transactional listener stays on the event and shows
//! it in its status, then carries on exactly once when the handler recovers.
//!
//! Needs PostgreSQL: set DATABASE_URL or run `scripts/postgres.sh start`.

#[path = "listener_support.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_core::{BoxError, Listener, Position, Query, Sequenced, TransactionalListener};
use dcb_postgres::listener::{
    Backoff, ListenerOptions, ListenerState, PgTransaction, RunnerConfig,
};
use dcb_postgres::testing::TestDatabase;
use support::{wait_for_status, TestEvent};

const POISON: u64 = 13;

fn config() -> RunnerConfig {
    RunnerConfig::default()
        .batch_size(8)
        .poll_interval(Duration::from_millis(100))
        .backoff(Backoff::new(Duration::from_millis(50), Duration::from_millis(200)).jitter(0.0))
}

#[derive(Default)]
struct Seen {
    handled: Mutex<Vec<u64>>,
    poison_attempts: Mutex<Vec<Instant>>,
}

struct Picky(Arc<Seen>);

#[async_trait]
impl Listener for Picky {
    type Event = TestEvent;

    fn id(&self) -> &str {
        "picky"
    }

    fn query(&self) -> Query {
        support::ticks_only()
    }

    async fn handle(&self, event: Sequenced<TestEvent>) -> Result<(), BoxError> {
        let TestEvent::Tick(n) = event.event else {
            return Err("only ticks".into());
        };
        if n == POISON {
            self.0.poison_attempts.lock().unwrap().push(Instant::now());
            return Err(format!("boom on tick {n}").into());
        }
        self.0.handled.lock().unwrap().push(n);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_is_retried_with_backoff_then_parked() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let seen = Arc::new(Seen::default());
    let runner = store
        .listeners()
        .config(config())
        .at_least_once_with(Picky(seen.clone()), ListenerOptions::park_after(4))
        .start()
        .await
        .expect("start");

    let head = support::append_ticks(&store, 1..=30).await;
    runner
        .wait_until_timeout("picky", head, Duration::from_secs(30))
        .await
        .expect("the listener moves past the poison event");

    let handled = seen.handled.lock().unwrap().clone();
    let expected: Vec<u64> = (1..=30).filter(|&n| n != POISON).collect();
    assert_eq!(handled, expected, "the rest proceeds, in order");

    let attempts = seen.poison_attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 4, "four attempts, then parked");
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, min) in gaps.iter().zip([50u64, 100, 200]) {
        assert!(
            *gap >= Duration::from_millis(min * 9 / 10),
            "backoff gaps grow: {gaps:?}"
        );
    }

    let parked = runner.parked("picky").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].position, Position(POISON));
    assert_eq!(parked[0].attempts, 4);
    assert!(
        parked[0].error.contains("boom on tick 13"),
        "{}",
        parked[0].error
    );

    // The checkpoint is past every event; the listener settles to idle.
    let status = wait_for_status(&runner, "picky", "went idle", |s| {
        s.state == ListenerState::Idle
    })
    .await;
    assert_eq!(status.parked, 1);
    assert_eq!(status.position, Some(head));
    assert_eq!(status.lag, 0);
    assert_eq!(status.attempts, 0);
    assert!(status.leading_here);
    assert!(status.last_error.unwrap().contains("boom on tick 13"));

    runner.shutdown().await;
    store.shutdown().await;
    db.cleanup().await;
}

/// Counts ticks into `tick_count`, failing on the poison tick while `broken`.
struct Fragile {
    broken: Arc<AtomicBool>,
}

#[async_trait]
impl TransactionalListener<PgTransaction> for Fragile {
    type Event = TestEvent;

    fn id(&self) -> &str {
        "fragile"
    }

    fn query(&self) -> Query {
        support::ticks_only()
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: Sequenced<TestEvent>,
    ) -> Result<(), BoxError> {
        // Write first, so a failure must roll the write back.
        support::count_tick(tx, event.position, "here").await?;
        if event.event == TestEvent::Tick(POISON) && self.broken.load(Ordering::SeqCst) {
            return Err("read model constraint violated".into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_transactional_listener_waits_on_the_event_and_shows_it() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    support::create_projection(db.pool()).await;
    let broken = Arc::new(AtomicBool::new(true));
    let runner = store
        .listeners()
        .config(config())
        .transactional(Fragile {
            broken: broken.clone(),
        })
        .start()
        .await
        .expect("start");

    let head = support::append_ticks(&store, 1..=30).await;
    runner
        .wait_until_timeout("fragile", Position(POISON - 1), Duration::from_secs(30))
        .await
        .expect("the events before the poison one are handled");
    // A transient failure: the listener blocks on the event, retrying, and
    // says so.
    let status = wait_for_status(&runner, "fragile", "blocked and retried", |s| {
        s.state == ListenerState::Blocked && s.attempts >= 2
    })
    .await;
    assert_eq!(status.failing_position, Some(Position(POISON)));
    assert_eq!(status.position, Some(Position(POISON - 1)));
    assert_eq!(status.lag, 30 - (POISON - 1));
    assert!(status
        .last_error
        .as_deref()
        .unwrap()
        .contains("constraint violated"));
    assert_eq!(support::tick_count(db.pool()).await, (POISON - 1) as i64);

    // Fixed: it carries on, and the failed attempts left nothing behind.
    broken.store(false, Ordering::SeqCst);
    runner
        .wait_until_timeout("fragile", head, Duration::from_secs(30))
        .await
        .expect("recovers");
    assert_eq!(support::tick_count(db.pool()).await, 30);
    let status = runner.status("fragile").await.unwrap();
    assert_eq!(status.attempts, 0);
    assert_eq!(status.parked, 0);
    assert_eq!(status.lag, 0);

    runner.shutdown().await;
    store.shutdown().await;
    db.cleanup().await;
}
