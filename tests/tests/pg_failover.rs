//! Failover under load: a primary with a synchronous standby
//! (`synchronous_commit = remote_apply`), both private to the test (see
//! `dcb_postgres::testing::ReplicaSet`). 16 appenders append while a
//! transactional projection, reading its events from the standby, writes
//! one row per event; the primary is killed (SIGKILL, every process at
//! once) and the standby promoted.
//!
//! Afterwards the store has moved to the new primary by itself, and there:
//! every append that was acknowledged is in the log at the position it was
//! told; positions run 1..=head without a gap (they continued from the last
//! replicated head); and the projection, resumed from its replicated
//! checkpoint, holds exactly one row per event of the log.

#[path = "replica_support.rs"]
mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_core::{BoxError, EventStore, Query, Sequenced, StoreError, TransactionalListener};
use dcb_postgres::listener::{PgTransaction, RunnerConfig};
use dcb_postgres::testing::{ReplicaSet, Synchronous};
use dcb_postgres::PgEventStore;
use sqlx::postgres::PgPoolOptions;
use support::{tick, TestEvent};
use uuid::Uuid;

const APPENDERS: usize = 16;
/// Acknowledged appends before the kill, and again after the promotion.
const APPENDS_EACH_SIDE: u64 = 300;
const BOUND: Duration = Duration::from_secs(60);

/// One row per event it is given, in the batch's transaction (a second
/// delivery of an event would violate the primary key and be parked).
struct Projection;

#[async_trait]
impl TransactionalListener<PgTransaction> for Projection {
    type Event = TestEvent;

    fn id(&self) -> &str {
        "failover-projection"
    }

    fn query(&self) -> Query {
        support::ticks_only()
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: Sequenced<TestEvent>,
    ) -> Result<(), BoxError> {
        sqlx::query("INSERT INTO projected (position, event_id) VALUES ($1, $2)")
            .bind(event.position.0 as i64)
            .bind(event.event_id())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgTransaction) -> Result<(), BoxError> {
        sqlx::query("DELETE FROM projected")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// What the appenders were told.
#[derive(Default)]
struct Told {
    /// `(position, id)` of every event whose append returned positions.
    acknowledged: Vec<(u64, Uuid)>,
    /// Ids of appends that were acknowledged only as "already there" on a
    /// retry (their first attempt's outcome was lost).
    found_on_retry: Vec<Uuid>,
    /// Attempts that failed retryably (unavailable, outcome unknown).
    retried: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_under_load_loses_no_acknowledged_event_and_leaves_a_gapless_log() {
    let set = ReplicaSet::builder()
        .synchronous(Synchronous::RemoteApply)
        .start()
        .await;
    let store = PgEventStore::builder()
        .pool_options(
            PgPoolOptions::new()
                .max_connections(24)
                .acquire_timeout(Duration::from_secs(5)),
        )
        .standby(set.standby_url(0))
        .outcome_timeout(Duration::from_secs(30))
        .failover_check(Duration::from_millis(200))
        .connect(&set.primary_url())
        .await
        .unwrap();
    sqlx::query("CREATE TABLE projected (position bigint PRIMARY KEY, event_id uuid NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    let runner = store
        .listeners()
        .config(
            RunnerConfig::default()
                .batch_size(50)
                .poll_interval(Duration::from_millis(200))
                .lease_ttl(Duration::from_secs(2)),
        )
        .transactional(Projection)
        .start()
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut appenders = Vec::new();
    for appender in 0..APPENDERS {
        let store = store.clone();
        let stop = stop.clone();
        let acked = acked.clone();
        appenders.push(tokio::spawn(async move {
            let mut told = Told::default();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let events: Vec<_> = (0..1 + fastrand::usize(0..2))
                    .map(|i| tick(appender as u64 * 1_000_000 + n * 10 + i as u64))
                    .collect();
                let ids: Vec<Uuid> = events.iter().map(|e| e.metadata.event_id).collect();
                // The same events (the same ids) until the store says what
                // became of them.
                let deadline = Instant::now() + BOUND;
                loop {
                    match store.append(events.clone(), None).await {
                        Ok(appended) => {
                            for (i, id) in ids.iter().enumerate() {
                                told.acknowledged.push((appended.first.0 + i as u64, *id));
                            }
                            acked.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Err(StoreError::DuplicateEventId(_)) => {
                            told.found_on_retry.extend(&ids);
                            acked.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Err(e) if e.is_unavailable() || e.is_outcome_unknown() => {
                            told.retried += 1;
                            assert!(
                                Instant::now() < deadline,
                                "appends kept failing for {BOUND:?}: {e}"
                            );
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("unexpected append error: {e:?}"),
                    }
                }
            }
            told
        }));
    }
    let wait_for_acks = |target: u64| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + BOUND;
            while acked.load(Ordering::SeqCst) < target {
                assert!(
                    Instant::now() < deadline,
                    "only {} of {target} appends acknowledged within {BOUND:?}",
                    acked.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    wait_for_acks(APPENDS_EACH_SIDE).await;
    let killed_at = Instant::now();
    set.kill_primary().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    set.promote(0).await;
    let promoted = acked.load(Ordering::SeqCst);
    wait_for_acks(promoted + APPENDS_EACH_SIDE).await;
    let recovered_in = killed_at.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut told = Told::default();
    for appender in appenders {
        let one = appender.await.unwrap();
        told.acknowledged.extend(one.acknowledged);
        told.found_on_retry.extend(one.found_on_retry);
        told.retried += one.retried;
    }
    told.acknowledged.sort_unstable();

    // The store follows the primary by itself.
    let new_primary = set.standby_url(0);
    let host = new_primary
        .trim_start_matches("postgres://postgres@")
        .trim_end_matches("/postgres")
        .to_owned();
    assert_eq!(store.primary_host(), Some(host));

    let head = store.head().await.unwrap().expect("events");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&new_primary)
        .await
        .unwrap();
    let log = support::log(&pool).await;
    assert_eq!(log.len() as u64, head.0, "the head row matches the log");
    let at = support::assert_gapless_with(&log, &told.acknowledged);
    for id in &told.found_on_retry {
        assert!(
            at.contains_key(id),
            "event {id}, reported stored on a retry, is not in the log"
        );
    }

    // The projection resumed from its checkpoint: one row per event.
    runner
        .wait_until_timeout("failover-projection", head, BOUND)
        .await
        .expect("the projection catches up on the new primary");
    let status = runner.status("failover-projection").await.unwrap();
    runner.shutdown().await;
    assert_eq!(status.parked, 0, "nothing parked: {status:?}");
    let projected: Vec<(i64, Uuid)> =
        sqlx::query_as("SELECT position, event_id FROM projected ORDER BY position")
            .fetch_all(&pool)
            .await
            .unwrap();
    let projected: Vec<(u64, Uuid)> = projected
        .into_iter()
        .map(|(p, id)| (p as u64, id))
        .collect();
    support::assert_seen_once_in_order(&projected, &log);

    let stats = store.writer_stats();
    let acknowledged_ids: HashSet<Uuid> = told.acknowledged.iter().map(|(_, id)| *id).collect();
    println!(
        "{} events in the log, {} acknowledged with positions, {} found stored on a retry, \
         {} retried attempts; writer: {} lost replies ({} found committed, {} not appended, \
         {} unknown); appends flowed again {:.1} s after the kill",
        log.len(),
        acknowledged_ids.len(),
        told.found_on_retry.len(),
        told.retried,
        stats.lost_replies,
        stats.resolved_committed,
        stats.resolved_not_appended,
        stats.unknown,
        recovered_in.as_secs_f64()
    );
    store.shutdown().await;
    pool.close().await;
    set.stop().await;
}

/// What an asynchronous standby can lose: a commit returns once the primary
/// has it, so the events the standby had not received when the primary died
/// are gone after the promotion, although their appends were acknowledged;
/// the new primary's log is still gapless, and new appends take the lost
/// positions again. (To make the window wide and certain, the standby stops
/// receiving WAL before the last appends.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asynchronous_standby_loses_the_acknowledged_events_it_had_not_received() {
    let set = ReplicaSet::start().await;
    let store = PgEventStore::builder()
        .standby(set.standby_url(0))
        .failover_check(Duration::from_millis(200))
        .connect(&set.primary_url())
        .await
        .unwrap();
    let mut kept = Vec::new();
    for n in 0..20 {
        let event = tick(n);
        let id = event.metadata.event_id;
        let appended = store.append(vec![event], None).await.unwrap();
        kept.push((appended.first.0, id));
    }
    set.wait_for_standbys().await;

    // The standby stops receiving; the primary goes on acknowledging.
    let standby = PgPoolOptions::new()
        .max_connections(1)
        .connect(&set.standby_url(0))
        .await
        .unwrap();
    for statement in [
        "ALTER SYSTEM SET primary_conninfo = ''",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(statement).execute(&standby).await.unwrap();
    }
    let deadline = Instant::now() + BOUND;
    loop {
        let receiving: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_wal_receiver")
            .fetch_one(&standby)
            .await
            .unwrap();
        if receiving == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the WAL receiver did not stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lost = Vec::new();
    for n in 20..30 {
        let event = tick(n);
        let id = event.metadata.event_id;
        let appended = store.append(vec![event], None).await.unwrap();
        lost.push((appended.first.0, id));
    }

    set.kill_primary().await;
    set.promote(0).await;
    // The store follows; the next append takes position 21 again.
    let event = tick(99);
    let id = event.metadata.event_id;
    let deadline = Instant::now() + BOUND;
    let appended = loop {
        match store.append(vec![event.clone()], None).await {
            Ok(appended) => break appended,
            Err(e) if e.is_unavailable() || e.is_outcome_unknown() => {
                assert!(Instant::now() < deadline, "no append went through: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("unexpected append error: {e:?}"),
        }
    };
    assert_eq!(
        appended.first.0, 21,
        "positions continue from the standby's head"
    );
    kept.push((21, id));

    let log = support::log(&standby).await;
    let at = support::assert_gapless_with(&log, &kept);
    let gone = lost.iter().filter(|(_, id)| !at.contains_key(id)).count();
    assert_eq!(
        gone,
        lost.len(),
        "every event acknowledged after the standby stopped receiving is lost"
    );
    println!(
        "asynchronous standby: {} acknowledged events lost; position 21 reused",
        lost.len()
    );
    store.shutdown().await;
    standby.close().await;
    set.stop().await;
}
