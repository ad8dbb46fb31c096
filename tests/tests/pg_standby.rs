//! Listeners reading a streaming standby (a private primary and standby
//! started from the installed PostgreSQL binaries, see
//! `dcb_postgres::testing::ReplicaSet`).
//!
//! - Under 32 concurrent appenders on the primary, a tailing listener that
//!   reads the standby sees every event exactly once, in order: positions
//!   are committed in head-lock order and the standby replays commits in
//!   that order, so it never shows a gap.
//! - Its staleness is bounded and reported: with the standby's replay
//!   paused, the listener stays at what the standby shows while a listener
//!   on the primary catches up, the runner reports how far the standby is
//!   behind (events and time), and `wait_until` returns once replay resumes.

#[path = "replica_support.rs"]
mod support;

use std::time::{Duration, Instant};

use dcb_core::{AppendCondition, EventStore, Query, Tag};
use dcb_postgres::listener::{ListenerError, RunnerConfig};
use dcb_postgres::testing::ReplicaSet;
use dcb_postgres::PgEventStore;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use support::{tick, Recorder};

const WRITERS: usize = 32;
const APPENDS_PER_WRITER: usize = 30;
const CATCH_UP: Duration = Duration::from_secs(60);

async fn store_with_standby(set: &ReplicaSet, connections: u32) -> PgEventStore {
    PgEventStore::builder()
        .pool_options(
            PgPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(Duration::from_secs(30)),
        )
        .standby(set.standby_url(0))
        .connect(&set.primary_url())
        .await
        .expect("open the store on the primary with its standby")
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listener_on_a_standby_sees_every_event_once_in_order_under_32_appenders() {
    let set = ReplicaSet::start().await;
    let store = store_with_standby(&set, 40).await;
    assert!(store.has_standbys());
    let (recorder, seen) = Recorder::new("standby-tail");
    let runner = store
        .listeners()
        .config(RunnerConfig::default().batch_size(50))
        .at_least_once(recorder)
        .start()
        .await
        .unwrap();

    let started = Instant::now();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let own = Query::tags([Tag::new("writer", writer)]);
            let mut told = Vec::new();
            for n in 0..APPENDS_PER_WRITER {
                let head = store.head().await.unwrap();
                tokio::time::sleep(Duration::from_micros(fastrand::u64(0..2000))).await;
                let events: Vec<_> = (0..1 + fastrand::usize(0..3))
                    .map(|i| {
                        let mut event = tick((writer * 1000 + n * 10 + i) as u64);
                        event.tags.push(Tag::new("writer", writer));
                        event
                    })
                    .collect();
                let ids: Vec<_> = events.iter().map(|e| e.metadata.event_id).collect();
                // Half conditional on the writer's own boundary (which only
                // it writes, so they pass), half unconditional.
                let condition = (n % 2 == 0).then(|| AppendCondition::not_after(own.clone(), head));
                let appended = store.append(events, condition).await.unwrap();
                for (i, id) in ids.into_iter().enumerate() {
                    told.push((appended.first.0 + i as u64, id));
                }
            }
            told
        }));
    }
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    acknowledged.sort_unstable();
    let head = store.head().await.unwrap().expect("events were appended");
    runner
        .wait_until_timeout("standby-tail", head, CATCH_UP)
        .await
        .expect("the listener on the standby reaches the primary's head");
    let lag = runner.standby_lag().await;
    runner.shutdown().await;

    let primary = pool(&set.primary_url()).await;
    let log = support::log(&primary).await;
    assert_eq!(log.len() as u64, head.0);
    support::assert_gapless_with(&log, &acknowledged);
    let seen = seen.lock().unwrap().clone();
    support::assert_seen_once_in_order(&seen, &log);
    assert_eq!(lag.len(), 1, "one standby");
    println!(
        "{} events from {WRITERS} appenders in {:.1} s, all seen on the standby in order; \
         standby lag at the end: {:?}",
        log.len(),
        started.elapsed().as_secs_f64(),
        lag[0]
    );
    store.shutdown().await;
    set.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_lag_is_reported_and_wait_until_works_against_a_standby() {
    let set = ReplicaSet::start().await;
    let store = store_with_standby(&set, 10).await;
    let (on_standby, seen_standby) = Recorder::new("on-standby");
    let standby_runner = store
        .listeners()
        .at_least_once(on_standby)
        .start()
        .await
        .unwrap();
    let (on_primary, _) = Recorder::new("on-primary");
    let primary_runner = store
        .listeners()
        .read_from_primary()
        .at_least_once(on_primary)
        .start()
        .await
        .unwrap();

    // Caught up: wait_until on a standby reader returns once the standby
    // has replayed the position.
    for n in 0..10 {
        store.append(vec![tick(n)], None).await.unwrap();
    }
    let before = store.head().await.unwrap().unwrap();
    standby_runner
        .wait_until_timeout("on-standby", before, CATCH_UP)
        .await
        .unwrap();

    // Replay paused: the standby keeps showing `before`.
    let standby = pool(&set.standby_url(0)).await;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&standby)
        .await
        .unwrap();
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
            .fetch_one(&standby)
            .await
            .unwrap();
        if state == "paused" {
            break;
        }
        assert!(Instant::now() < deadline, "replay did not pause");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for n in 10..60 {
        store.append(vec![tick(n)], None).await.unwrap();
    }
    let head = store.head().await.unwrap().unwrap();
    assert_eq!(head.0, before.0 + 50);
    // The listener on the primary gets there; the one on the standby cannot
    // go past what the standby shows.
    primary_runner
        .wait_until_timeout("on-primary", head, CATCH_UP)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    match standby_runner
        .wait_until_timeout("on-standby", head, Duration::from_millis(300))
        .await
    {
        Err(ListenerError::Timeout { reached, .. }) => assert_eq!(reached, Some(before)),
        other => panic!("the listener on a paused standby must stay behind, got {other:?}"),
    }
    let lag = standby_runner.standby_lag().await;
    assert_eq!(lag.len(), 1);
    assert_eq!(lag[0].head, Some(before), "{lag:?}");
    assert_eq!(lag[0].primary_head, Some(head), "{lag:?}");
    assert_eq!(lag[0].behind, 50, "{lag:?}");
    let behind_time = lag[0].behind_time.expect("the lag in time");
    assert!(behind_time > Duration::ZERO, "{lag:?}");
    let status = standby_runner.status("on-standby").await.unwrap();
    assert_eq!(status.head, Some(head), "status reports the primary's head");
    assert_eq!(status.lag, 50, "and the lag from it");
    println!(
        "replay paused: standby {} events and {:?} behind; listener lag {} events",
        lag[0].behind, behind_time, status.lag
    );

    // Replay resumed: the standby listener catches up.
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&standby)
        .await
        .unwrap();
    standby_runner
        .wait_until_timeout("on-standby", head, CATCH_UP)
        .await
        .expect("wait_until returns once the standby has replayed the head");
    let lag = standby_runner.standby_lag().await;
    assert_eq!(lag[0].behind, 0, "{lag:?}");
    assert_eq!(lag[0].behind_time, Some(Duration::ZERO), "{lag:?}");
    let positions: Vec<u64> = seen_standby
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(positions, (1..=head.0).collect::<Vec<_>>());

    standby_runner.shutdown().await;
    primary_runner.shutdown().await;
    store.shutdown().await;
    set.stop().await;
}
