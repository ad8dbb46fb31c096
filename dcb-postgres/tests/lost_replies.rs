//! Appends whose connection is cut between the call and its reply: every
//! caller is told the truth (its positions, "not appended", or "outcome
//! unknown"), no acknowledged event is missing and none is stored twice.
//!
//! A TCP proxy between the store and PostgreSQL cuts every connection it
//! carries every 150 ms while 16 callers append.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dcb_core::{AppendCondition, EventRecord, EventStore, Query, ReadOptions, StoreError, Tag};
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::PgEventStore;
use sqlx::postgres::PgPoolOptions;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// A TCP proxy whose connections can all be cut at once.
struct Proxy {
    port: u16,
    cut: broadcast::Sender<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = broadcast::channel(64);
        let cuts = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.recv() => {}
                    }
                    // Both sockets close here: the client sees its reply
                    // lost, the server its client gone.
                });
            }
        });
        Proxy { port, cut }
    }
}

/// `url` with its host and port replaced by `127.0.0.1:port`, and the
/// `host:port` it named.
fn through(url: &str, port: u16) -> (String, String) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let (user, host) = match authority.rfind('@') {
        Some(i) => (&authority[..=i], &authority[i + 1..]),
        None => ("", authority),
    };
    let target = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    };
    let proxied = format!(
        "{}{user}127.0.0.1:{port}{}",
        &url[..start],
        &rest[authority_end..]
    );
    (proxied, target)
}

fn record(caller: usize, n: usize) -> EventRecord {
    EventRecord::new(
        "Appended",
        [Tag::new("caller", caller), Tag::new("n", n)],
        format!("{{\"caller\":{caller},\"n\":{n}}}").into_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_connections_resolve_every_reply() {
    let db = TestDatabase::create().await;
    let (_, target) = through(db.url(), 0);
    let proxy = Proxy::start(target).await;
    let (url, _) = through(db.url(), proxy.port);
    let store = PgEventStore::builder()
        .pool_options(
            PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(2)),
        )
        .outcome_timeout(Duration::from_secs(20))
        .connect(&url)
        .await
        .expect("the store connects through the proxy");

    const CALLERS: usize = 16;
    let running = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let (store, running) = (store.clone(), running.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut n = 0;
            while running.load(Ordering::Relaxed) {
                // Two events per append, with a condition on the caller's
                // own boundary, so both the atomicity and the condition path
                // are exercised.
                let events = vec![record(caller, n), record(caller, n + 1)];
                n += 2;
                let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.metadata.event_id).collect();
                let condition =
                    AppendCondition::never_matched(Query::tags([Tag::new("never", caller)]));
                let result = store.append(events, Some(condition)).await;
                outcomes.push((ids, result));
            }
            outcomes
        }));
    }
    // Cut every connection every 150 ms for about three seconds.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let _ = proxy.cut.send(());
    }
    running.store(false, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.expect("an appender panicked"));
    }
    let stats = store.writer_stats();

    // The log, read directly (not through the proxy).
    let direct = PgEventStore::builder()
        .migrate_on_start(false)
        .connect(db.url())
        .await
        .unwrap();
    let (head, events) = direct
        .read(&Query::all(), ReadOptions::forwards())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let positions: Vec<u64> = events.iter().map(|e| e.position.get()).collect();
    assert_eq!(
        positions,
        (1..=head.map_or(0, |h| h.get())).collect::<Vec<_>>(),
        "the log is gapless"
    );
    let stored: HashMap<uuid::Uuid, u64> = events
        .iter()
        .map(|e| (e.metadata().event_id, e.position.get()))
        .collect();
    assert_eq!(stored.len(), events.len(), "no event stored twice");

    let (mut committed, mut not_appended, mut unknown) = (0, 0, 0);
    let mut acknowledged = HashSet::new();
    for (ids, result) in &outcomes {
        match result {
            Ok(appended) => {
                committed += 1;
                for (id, position) in ids.iter().zip(appended.positions()) {
                    assert_eq!(
                        stored.get(id),
                        Some(&position.get()),
                        "an acknowledged event must be in the log where the caller was told"
                    );
                    acknowledged.insert(*id);
                }
            }
            Err(StoreError::Unavailable { .. }) => {
                not_appended += 1;
                for id in ids {
                    assert!(
                        !stored.contains_key(id),
                        "an append reported as not appended is in the log: {result:?}"
                    );
                }
            }
            Err(StoreError::OutcomeUnknown { .. }) => unknown += 1,
            Err(other) => panic!("unexpected outcome: {other:?}"),
        }
    }
    // Whatever the log holds beyond the acknowledged events belongs to
    // appends whose outcome was reported unknown.
    let unknown_ids: HashSet<uuid::Uuid> = outcomes
        .iter()
        .filter(|(_, r)| matches!(r, Err(StoreError::OutcomeUnknown { .. })))
        .flat_map(|(ids, _)| ids.iter().copied())
        .collect();
    for id in stored.keys() {
        assert!(
            acknowledged.contains(id) || unknown_ids.contains(id),
            "an event in the log was neither acknowledged nor reported unknown"
        );
    }
    eprintln!(
        "{} appends: {committed} committed, {not_appended} not appended, {unknown} unknown; \
         writer: {} lost replies, {} resolved committed, {} resolved not appended, {} unknown",
        outcomes.len(),
        stats.lost_replies,
        stats.resolved_committed,
        stats.resolved_not_appended,
        stats.unknown
    );
    assert!(
        stats.lost_replies > 0,
        "the cuts must have hit appends in flight for this test to mean anything"
    );
    assert!(committed > 0, "appends must get through between cuts");
    store.shutdown().await;
    direct.shutdown().await;
    db.cleanup().await;
}

/// With a synchronous standby, an append whose reply is lost while its
/// commit waits for the standby is not reported committed on the primary's
/// word alone: ending its process releases the wait and makes the events
/// visible on the primary, but until the standby confirms them a failover
/// could still lose them. The caller hears "outcome unknown"; once the
/// standby has them, a retry with the same ids finds them stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_released_from_its_synchronous_wait_is_not_acknowledged() {
    use dcb_postgres::testing::{ReplicaSet, Synchronous};

    let set = ReplicaSet::builder()
        .synchronous(Synchronous::RemoteApply)
        .start()
        .await;
    let (_, target) = through(&set.primary_url(), 0);
    let proxy = Proxy::start(target).await;
    let (url, _) = through(&set.primary_url(), proxy.port);
    let store = PgEventStore::builder()
        .outcome_timeout(Duration::from_secs(2))
        .connect(&url)
        .await
        .expect("the store connects through the proxy");
    store
        .append(vec![record(0, 0)], None)
        .await
        .expect("appends commit while the standby applies");

    // The standby stops applying: commits wait for it.
    let standby = PgPoolOptions::new()
        .max_connections(1)
        .connect(&set.standby_url(0))
        .await
        .unwrap();
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&standby)
        .await
        .unwrap();
    let event = record(0, 1);
    let id = event.metadata.event_id;
    let waiting = {
        let store = store.clone();
        let event = event.clone();
        tokio::spawn(async move { store.append(vec![event], None).await })
    };
    // Wait until the commit waits for the standby, then cut its reply.
    let primary = PgPoolOptions::new()
        .max_connections(1)
        .connect(&set.primary_url())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let syncing: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
        )
        .fetch_one(&primary)
        .await
        .unwrap();
        if syncing > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the append never waited for the standby"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = proxy.cut.send(());
    let outcome = waiting.await.unwrap();
    assert!(
        matches!(outcome, Err(StoreError::OutcomeUnknown { .. })),
        "a commit the synchronous standby has not confirmed must not be acknowledged, got \
         {outcome:?}"
    );
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM dcb.events WHERE event_id = $1")
        .bind(id)
        .fetch_one(&primary)
        .await
        .unwrap();
    assert_eq!(visible, 1, "the primary alone has it (committed locally)");

    // Once the standby has it, the same ids are found stored.
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&standby)
        .await
        .unwrap();
    set.wait_for_standbys().await;
    let retried = store.append(vec![event], None).await;
    assert!(
        matches!(retried, Err(StoreError::DuplicateEventId(dup)) if dup == id),
        "{retried:?}"
    );
    store.shutdown().await;
    standby.close().await;
    primary.close().await;
    set.stop().await;
}
