//! The operators' API through the database: a process holding only a pool
//! (here, a pool of its own) reads every listener's status and parked
//! events, and its requests — rebuild, retry or skip one event — are
//! carried out by the listener's live leader, in another process or
//! instance, with their outcome and a rebuild's progress in the database.
//! Permanent failures park a transactional listener's event (it moves on);
//! a listener that chooses to block says so in its status.
//!
//! Needs PostgreSQL: set DATABASE_URL or run `scripts/postgres.sh start`.

#[path = "listener_support.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_core::{BoxError, EventStore, Listener, Position, Query, Sequenced, TransactionalListener};
use dcb_postgres::listener::{
    Backoff, DeliveryMode, ListenerAdmin, ListenerError, ListenerOptions, ListenerState,
    PgTransaction, RequestState, RunnerConfig,
};
use dcb_postgres::testing::TestDatabase;
use sqlx::PgPool;
use support::{spawn_child, wait_for_status, TestEvent, WAIT};

const POISON: u64 = 7;

/// Polls often and retries quickly, so failures park or block soon.
fn quick_retries() -> RunnerConfig {
    RunnerConfig::default()
        .poll_interval(Duration::from_millis(100))
        .backoff(Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(50),
        ))
}

/// An admin on a pool of its own: nothing shared with the runners.
async fn admin(db: &TestDatabase) -> ListenerAdmin {
    let pool = PgPool::connect(db.url()).await.expect("a pool of its own");
    ListenerAdmin::new(pool, "dcb")
        .expect("schema")
        .requested_by("test operator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_asked_through_the_database_runs_on_the_leader_in_another_process() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    support::create_projection(db.pool()).await;
    let mut child = spawn_child("tx", db.url(), "child", 2000, "tick-counter").await;
    let batch: Vec<_> = (1..=300)
        .map(|n| {
            if n % 6 == 0 {
                support::tock(n)
            } else {
                support::tick(n)
            }
        })
        .collect();
    let head = store.append(batch, None).await.unwrap().last;
    let admin = admin(&db).await;

    let status = wait_for_status(&admin, "tick-counter", "caught up, idle", |s| {
        s.position == Some(head) && s.state == ListenerState::Idle
    })
    .await;
    assert_eq!(status.leader.as_deref(), Some("child"));
    assert_eq!(status.mode, Some(DeliveryMode::Transactional));
    assert_eq!((status.head, status.lag), (Some(head), 0));
    assert_eq!(status.lag_time, Some(Duration::ZERO));
    assert_eq!(
        (status.parked, status.handled, status.generation),
        (0, 250, 0)
    );
    assert!(!status.leading_here);
    assert_eq!(
        admin
            .statuses()
            .await
            .unwrap()
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["tick-counter"]
    );

    let request = admin.request_rebuild("tick-counter").await.unwrap();
    let until = Instant::now() + WAIT;
    let mut reports = Vec::new();
    let done = loop {
        let progress = admin.rebuild_progress(request).await.unwrap();
        reports.push(progress.clone());
        if progress.done {
            break progress;
        }
        // (A target of 0: the leader has not taken the request up yet.)
        assert!(
            progress.position < progress.target || progress.target.0 == 0,
            "at its target, yet not done: {progress:?}"
        );
        assert!(
            Instant::now() < until,
            "the rebuild never finished: {progress:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!((done.target, done.position), (head, head));
    assert_eq!((done.events_done, done.fraction), (250, 1.0));
    assert!(
        reports
            .windows(2)
            .all(|w| w[0].position <= w[1].position || w[0].target.0 == 0),
        "progress never goes back"
    );
    // `done` says the checkpoint reached the target; the leader records the
    // request as done right after, in a transaction of its own.
    let until = Instant::now() + WAIT;
    let info = loop {
        let info = admin.request_info(request).await.unwrap().unwrap();
        if info.state == RequestState::Done {
            break info;
        }
        assert!(
            Instant::now() < until,
            "the request was never recorded as done: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(info.executed_by.as_deref(), Some("child"));
    assert_eq!(info.requested_by.as_deref(), Some("test operator"));
    // Rebuilt by the child's listener, with its own reset, not doubled.
    let (checkpoint, count, expected, duplicates) =
        support::snapshot(db.pool(), "tick-counter").await;
    assert_eq!(
        (checkpoint, count, expected, duplicates),
        (300, 250, 250, 0)
    );
    let resets: i64 = sqlx::query_scalar("SELECT count(*) FROM tick_resets")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(resets, 1);
    let status = admin.status("tick-counter").await.unwrap();
    assert_eq!((status.generation, status.handled), (1, 500));

    assert!(matches!(
        admin.request_reset("no-such-listener").await,
        Err(ListenerError::UnknownListener(_))
    ));
    assert_eq!(admin.requests("tick-counter", 10).await.unwrap().len(), 1);
    assert_eq!(admin.purge_requests(Duration::ZERO).await.unwrap(), 1);
    assert!(admin.request_info(request).await.unwrap().is_none());

    drop(child.stdin.take());
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("graceful shutdown in time")
        .unwrap();
    store.shutdown().await;
    db.cleanup().await;
}

/// Handles ticks, failing on the poison one while `broken`.
struct Flaky {
    broken: Arc<AtomicBool>,
    handled: Arc<Mutex<Vec<u64>>>,
}

#[async_trait]
impl Listener for Flaky {
    type Event = TestEvent;

    fn id(&self) -> &str {
        "flaky"
    }

    fn query(&self) -> Query {
        support::ticks_only()
    }

    async fn handle(&self, event: Sequenced<TestEvent>) -> Result<(), BoxError> {
        if event.position.0 == POISON && self.broken.load(Ordering::SeqCst) {
            return Err("the mail server says no".into());
        }
        self.handled.lock().unwrap().push(event.position.0);
        Ok(())
    }
}

/// Records each tick in `strict_seen`, failing on the poison one while
/// `broken`; chooses to block on every failure.
struct Strict {
    broken: Arc<AtomicBool>,
}

#[async_trait]
impl TransactionalListener<PgTransaction> for Strict {
    type Event = TestEvent;

    fn id(&self) -> &str {
        "strict"
    }

    fn query(&self) -> Query {
        support::ticks_only()
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: Sequenced<TestEvent>,
    ) -> Result<(), BoxError> {
        if event.position.0 == POISON && self.broken.load(Ordering::SeqCst) {
            return Err("the read model refuses this cart".into());
        }
        sqlx::query("INSERT INTO strict_seen VALUES ($1)")
            .bind(event.position.0 as i64)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_parked_event_is_retried_and_a_blocking_one_skipped_through_the_database() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    sqlx::query("CREATE TABLE strict_seen (position bigint NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    let flaky_broken = Arc::new(AtomicBool::new(true));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let runner = store
        .listeners()
        .config(quick_retries())
        .at_least_once_with(
            Flaky {
                broken: flaky_broken.clone(),
                handled: handled.clone(),
            },
            ListenerOptions::park_after(2),
        )
        .transactional_with(
            Strict {
                broken: Arc::new(AtomicBool::new(true)),
            },
            ListenerOptions::blocking(),
        )
        .start()
        .await
        .unwrap();
    let head = support::append_ticks(&store, 1..=20).await;
    let admin = admin(&db).await;

    // The at-least-once listener parks the event and moves on.
    let flaky = wait_for_status(&admin, "flaky", "parked and caught up", |s| {
        s.position == Some(head) && s.parked == 1
    })
    .await;
    assert!(flaky.last_error.unwrap().contains("mail server says no"));
    let parked = admin.parked("flaky").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (parked[0].position, parked[0].attempts),
        (Position(POISON), 2)
    );
    // The transactional one chose to block: its status says where and why.
    let strict = wait_for_status(&admin, "strict", "blocked", |s| {
        s.state == ListenerState::Blocked && s.attempts >= 2
    })
    .await;
    assert_eq!(strict.failing_position, Some(Position(POISON)));
    assert_eq!(strict.position, Some(Position(POISON - 1)));
    assert!(strict
        .last_error
        .unwrap()
        .contains("read model refuses this cart"));

    // A retry while the cause is still there fails, and says so; the event
    // stays parked with its new error.
    let request = admin
        .request_retry("flaky", Position(POISON))
        .await
        .unwrap();
    match admin.wait_for(request, WAIT).await {
        Err(ListenerError::RequestFailed { error, .. }) => {
            assert!(error.contains("failed again"), "{error}")
        }
        other => panic!("expected a failed retry, got {other:?}"),
    }
    assert_eq!(admin.parked("flaky").await.unwrap()[0].attempts, 3);

    // Fixed: the leader runs the handler on that one event again.
    flaky_broken.store(false, Ordering::SeqCst);
    let request = admin
        .request_retry("flaky", Position(POISON))
        .await
        .unwrap();
    let done = admin.wait_for(request, WAIT).await.unwrap();
    assert_eq!(done.executed_by.as_deref(), Some(runner.instance_id()));
    assert_eq!(handled.lock().unwrap().last(), Some(&POISON));
    assert!(admin.parked("flaky").await.unwrap().is_empty());
    assert_eq!(admin.status("flaky").await.unwrap().parked, 0);

    // The blocked listener gets past its event by a skip, and on.
    let request = admin
        .request_skip("strict", Position(POISON))
        .await
        .unwrap();
    admin.wait_for(request, WAIT).await.unwrap();
    let strict = wait_for_status(&admin, "strict", "caught up", |s| {
        s.position == Some(head) && s.state == ListenerState::Idle
    })
    .await;
    assert_eq!((strict.parked, strict.attempts), (0, 0));
    let seen: Vec<i64> = sqlx::query_scalar("SELECT position FROM strict_seen ORDER BY 1")
        .fetch_all(db.pool())
        .await
        .unwrap();
    let expected: Vec<i64> = (1..=20).filter(|&n| n != POISON as i64).collect();
    assert_eq!(seen, expected, "everything but the skipped event, once");
    let skipped: String = sqlx::query_scalar(
        "SELECT resolution FROM dcb.parked_events WHERE listener_id = 'strict' AND position = $1",
    )
    .bind(POISON as i64)
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(skipped, "skipped");

    // Nothing to skip or retry where nothing is stuck.
    for request in [
        admin.request_skip("strict", Position(3)).await.unwrap(),
        admin.request_retry("strict", Position(3)).await.unwrap(),
    ] {
        assert!(matches!(
            admin.wait_for(request, WAIT).await,
            Err(ListenerError::RequestFailed { .. })
        ));
    }

    runner.shutdown().await;
    store.shutdown().await;
    db.cleanup().await;
}

/// Copies each tick's number into `texts`, as text; the poison tick's text
/// holds a NUL, which PostgreSQL refuses (SQLSTATE 22021).
struct Texts {
    id: &'static str,
}

#[async_trait]
impl TransactionalListener<PgTransaction> for Texts {
    type Event = TestEvent;

    fn id(&self) -> &str {
        self.id
    }

    fn query(&self) -> Query {
        support::ticks_only()
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: Sequenced<TestEvent>,
    ) -> Result<(), BoxError> {
        let TestEvent::Tick(n) = event.event else {
            return Ok(());
        };
        let text = if n == POISON {
            format!("tick {n} \u{0}")
        } else {
            format!("tick {n}")
        };
        sqlx::query("INSERT INTO texts (listener, position, text) VALUES ($1, $2, $3)")
            .bind(self.id)
            .bind(event.position.0 as i64)
            .bind(text)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_parks_the_event_unless_the_listener_chooses_to_block() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    sqlx::query("CREATE TABLE texts (listener text, position bigint, text text)")
        .execute(db.pool())
        .await
        .unwrap();
    let runner = store
        .listeners()
        .config(quick_retries())
        .transactional(Texts { id: "texts" })
        .transactional_with(
            Texts { id: "stubborn" },
            ListenerOptions::new().block_on_permanent(),
        )
        .start()
        .await
        .unwrap();
    let head = support::append_ticks(&store, 1..=20).await;
    let admin = admin(&db).await;

    // The default: a few attempts, then the event is parked and every other
    // one is handled.
    let texts = wait_for_status(&admin, "texts", "moved past the bad event", |s| {
        s.position == Some(head)
    })
    .await;
    assert_eq!(texts.parked, 1);
    let parked = admin.parked("texts").await.unwrap();
    assert_eq!(
        (parked[0].position, parked[0].attempts),
        (
            Position(POISON),
            dcb_postgres::listener::DEFAULT_PARK_PERMANENT_AFTER
        )
    );
    assert!(parked[0].error.contains("22021"), "{}", parked[0].error);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM texts WHERE listener = 'texts'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(rows, 19);

    // The one that chose to block stays on it and says so.
    let stubborn = wait_for_status(&admin, "stubborn", "blocked", |s| {
        s.state == ListenerState::Blocked && s.attempts > 3
    })
    .await;
    assert_eq!(stubborn.failing_position, Some(Position(POISON)));
    assert_eq!(stubborn.position, Some(Position(POISON - 1)));
    assert!(stubborn.last_error.unwrap().contains("22021"));
    assert_eq!(stubborn.parked, 0);

    runner.shutdown().await;
    store.shutdown().await;
    db.cleanup().await;
}

/// Fails on the poison tick with an error that carries a NUL and a lot of
/// text, as a decoder quoting hostile input would.
struct Quoting;

#[async_trait]
impl Listener for Quoting {
    type Event = TestEvent;

    fn id(&self) -> &str {
        "quoting"
    }

    fn query(&self) -> Query {
        support::ticks_only()
    }

    async fn handle(&self, event: Sequenced<TestEvent>) -> Result<(), BoxError> {
        if event.position.0 == POISON {
            return Err(format!("bad product id {:?}\u{0}{}", "\u{0}", "x".repeat(100_000)).into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_text_postgres_cannot_store_still_parks_its_event() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let runner = store
        .listeners()
        .config(quick_retries())
        .at_least_once_with(Quoting, ListenerOptions::park_after(2))
        .start()
        .await
        .unwrap();
    let head = support::append_ticks(&store, 1..=10).await;
    runner
        .wait_until_timeout("quoting", head, WAIT)
        .await
        .expect("moves past the event");
    let parked = runner.parked("quoting").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert!(parked[0].error.contains("bad product id"));
    assert!(!parked[0].error.contains('\u{0}'));
    assert!(parked[0].error.contains("\\0"));
    assert!(parked[0].error.len() <= dcb_postgres::text::MAX_TEXT_BYTES);
    let status = runner.status("quoting").await.unwrap();
    assert!(status.last_error.unwrap().len() <= dcb_postgres::text::MAX_TEXT_BYTES);
    runner.shutdown().await;
    store.shutdown().await;
    db.cleanup().await;
}

/// A leader that has handled nothing since it took the lease (an empty
/// log) is idle, not the "stopped" the table holds until its first batch;
/// once it shuts down it is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_has_handled_nothing_yet_is_idle() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let runner = store
        .listeners()
        .at_least_once(Quoting)
        .start()
        .await
        .unwrap();
    let admin = admin(&db).await;
    let led = wait_for_status(&admin, "quoting", "led", |s| s.leader.is_some()).await;
    assert_eq!(led.state, ListenerState::Idle, "{led:?}");
    runner.shutdown().await;
    let stopped = wait_for_status(&admin, "quoting", "released", |s| s.leader.is_none()).await;
    assert_eq!(stopped.state, ListenerState::Stopped);
    store.shutdown().await;
    db.cleanup().await;
}
