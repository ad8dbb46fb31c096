//! The Postgres store against a real server: reads, conditions, batches,
//! schemas, migrations, errors. Needs `DATABASE_URL` (or `scripts/postgres.sh
//! start`).

use std::time::{Duration, Instant};

use dcb_core::{
    AppendCondition, CodecError, Decision, DecisionError, DecisionMaker, Event, EventMetadata,
    EventRecord, EventSchema, EventStore, EventType, Position, Query, QueryItem, ReadOptions,
    StateMutate, StateQuery, StoreError, Tag,
};
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::{migrations, PgEventStore};
use futures::TryStreamExt;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::Executor;

fn record(ty: &'static str, tags: &[(&str, &str)]) -> EventRecord {
    EventRecord {
        event_type: ty.into(),
        tags: tags.iter().map(|(k, v)| Tag::new(k, v)).collect(),
        payload: format!("{{\"t\":\"{ty}\"}}").into_bytes(),
        metadata: EventMetadata::new(),
    }
}

/// Every event of `query` read with `options`, and the head the read saw.
async fn read_all(
    store: &impl EventStore,
    query: &Query,
    options: ReadOptions,
) -> (Option<Position>, Vec<dcb_core::SequencedEvent>) {
    store
        .read(query, options)
        .await
        .expect("read")
        .collect()
        .await
        .expect("collect")
}

fn positions(events: &[dcb_core::SequencedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position.0).collect()
}

#[tokio::test]
async fn append_read_and_conditions() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    assert_eq!(store.head().await.unwrap(), None);
    let (head, events) = read_all(&store, &Query::all(), ReadOptions::forwards()).await;
    assert_eq!((head, events.len()), (None, 0));

    let mut opened = record("Opened", &[("acc", "1")]);
    opened.metadata.correlation_id = Some(uuid::Uuid::new_v4());
    opened.metadata.user = Some(serde_json::json!({"user": "ann"}));
    let a = store
        .append(
            vec![
                opened.clone(),
                record("Deposited", &[("acc", "1"), ("by", "bob")]),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!((a.first, a.last), (Position(1), Position(2)));
    let b = store
        .append(vec![record("Opened", &[("acc", "2")])], None)
        .await
        .unwrap();
    assert_eq!(b.first, Position(3));

    let (head, events) = read_all(&store, &Query::all(), ReadOptions::forwards()).await;
    assert_eq!(head, Some(Position(3)));
    assert_eq!(
        events[0].record, opened,
        "a record reads back exactly as appended"
    );
    assert_eq!(
        events[1].tags(),
        &[Tag::new("acc", "1"), Tag::new("by", "bob")]
    );

    let acc1 = Query::tags([Tag::new("acc", "1")]);
    let (_, events) = read_all(&store, &acc1, ReadOptions::backwards()).await;
    assert_eq!(positions(&events), vec![2, 1]);

    let mixed = Query::from_items([
        QueryItem::new().tags([Tag::new("acc", "1"), Tag::new("by", "bob")]),
        QueryItem::new()
            .types(["Opened"])
            .tags([Tag::new("acc", "2")]),
        QueryItem::new()
            .types(["Opened"])
            .tags([Tag::new("acc", "2")]),
    ]);
    let (_, events) = read_all(&store, &mixed, ReadOptions::forwards()).await;
    assert_eq!(positions(&events), vec![2, 3]);

    let err = store
        .append(
            vec![record("Closed", &[("acc", "1")])],
            Some(AppendCondition::not_after(acc1.clone(), Some(Position(1)))),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::ConditionFailed {
                after: Some(Position(1))
            }
        ),
        "{err}"
    );
    store
        .append(
            vec![record("Closed", &[("acc", "1")])],
            Some(AppendCondition::not_after(acc1.clone(), Some(Position(3)))),
        )
        .await
        .unwrap();
    let err = store
        .append(
            vec![record("Opened", &[("acc", "2")])],
            Some(AppendCondition::never_matched(Query::types(["Opened"]))),
        )
        .await
        .unwrap_err();
    assert!(err.is_condition_failed());
    let (head, events) = read_all(
        &store,
        &Query::types(["Opened"]),
        ReadOptions::forwards().limit(1),
    )
    .await;
    assert_eq!((head, positions(&events)), (Some(Position(4)), vec![1]));
    let (_, events) = read_all(&store, &Query::none(), ReadOptions::forwards()).await;
    assert!(events.is_empty());

    let err = store.append(Vec::new(), None).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidRequest(_)), "{err}");
    store.shutdown().await;
    assert!(matches!(
        store.append(vec![record("Y", &[])], None).await,
        Err(StoreError::ShutDown)
    ));
    store.shutdown().await;
    db.cleanup().await;
}

#[tokio::test]
async fn reads_page_through_many_events_in_both_directions() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    // 2,600 events in 26 appends: more than two read pages.
    for chunk in 0..26 {
        let events = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                let parity = if n % 2 == 0 { "even" } else { "odd" };
                record(
                    if n % 3 == 0 { "Three" } else { "Other" },
                    &[("parity", parity)],
                )
            })
            .collect();
        store.append(events, None).await.unwrap();
    }
    let (head, all) = read_all(&store, &Query::all(), ReadOptions::forwards()).await;
    assert_eq!(head, Some(Position(2600)));
    assert!(positions(&all) == (1..=2600).collect::<Vec<_>>());
    let (_, back) = read_all(
        &store,
        &Query::all(),
        ReadOptions::backwards().from(Position(2500)),
    )
    .await;
    assert!(positions(&back) == (1..=2500).rev().collect::<Vec<_>>());
    let even = Query::tags([Tag::new("parity", "even")]);
    let (_, evens) = store
        .read(
            &even,
            ReadOptions::forwards().after(Position(100)).limit(1500),
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    // (event n sits at position n + 1, so even n are odd positions)
    let expected: Vec<u64> = (101..=2600u64).step_by(2).take(1500).collect();
    assert!(
        positions(&evens) == expected,
        "even events after 100 differ"
    );
    let threes_or_odd = Query::from_items([
        QueryItem::new().types(["Three"]),
        QueryItem::new().tags([Tag::new("parity", "odd")]),
    ]);
    let (_, got) = read_all(&store, &threes_or_odd, ReadOptions::backwards().limit(2000)).await;
    let expected: Vec<u64> = (1..=2600u64)
        .rev()
        .filter(|p| (p - 1) % 3 == 0 || (p - 1) % 2 == 1)
        .take(2000)
        .collect();
    assert!(positions(&got) == expected, "threes or odd differ");
    // A stream stays consistent with its head while later appends land.
    let result = store
        .read(&Query::all(), ReadOptions::forwards())
        .await
        .unwrap();
    store.append(vec![record("Late", &[])], None).await.unwrap();
    let (head, all) = result.collect().await.unwrap();
    assert_eq!((head, all.len()), (Some(Position(2600)), 2600));
    db.cleanup().await;
}

#[tokio::test]
async fn duplicate_event_ids_fail_only_their_own_request() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let stored = record("A", &[]);
    store.append(vec![stored.clone()], None).await.unwrap();
    let err = store
        .append(vec![record("B", &[]), stored.clone()], None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateEventId(id) if id == stored.metadata.event_id),
        "{err}"
    );
    let twice = record("C", &[]);
    let err = store
        .append(vec![twice.clone(), twice.clone()], None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateEventId(_)), "{err}");

    // Many concurrent requests, several sharing one fresh id: they land in
    // the same batches; exactly one of the sharers commits, the rest fail
    // alone, everyone else commits.
    let shared = record("Shared", &[]);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        let event = if i % 5 == 0 {
            shared.clone()
        } else {
            record("Own", &[])
        };
        tasks.push(tokio::spawn(async move {
            (i % 5 == 0, store.append(vec![event], None).await)
        }));
    }
    let mut sharers_ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            (true, Ok(_)) => sharers_ok += 1,
            (true, Err(StoreError::DuplicateEventId(id))) => {
                assert_eq!(id, shared.metadata.event_id)
            }
            (false, Ok(_)) => {}
            (sharer, other) => panic!("unexpected outcome for sharer={sharer}: {other:?}"),
        }
    }
    assert_eq!(sharers_ok, 1);
    let (head, all) = read_all(&store, &Query::all(), ReadOptions::forwards()).await;
    assert_eq!(head, Some(Position(1 + 1 + 32)));
    assert_eq!(positions(&all), (1..=34).collect::<Vec<_>>());
    db.cleanup().await;
}

#[tokio::test]
async fn two_schemas_in_one_database_are_isolated() {
    let db = TestDatabase::create().await;
    let alpha = PgEventStore::builder()
        .schema("alpha")
        .build(db.pool().clone())
        .await
        .unwrap();
    let beta = PgEventStore::builder()
        .schema("beta")
        .build(db.pool().clone())
        .await
        .unwrap();
    assert_eq!(alpha.notify_channel(), "alpha_events");
    assert_ne!(alpha.notify_channel(), beta.notify_channel());
    let shared = record("Opened", &[("acc", "1")]);
    alpha
        .append(vec![shared.clone(), record("X", &[])], None)
        .await
        .unwrap();
    // The same event id is fine in another schema; positions start at 1.
    let b = beta.append(vec![shared], None).await.unwrap();
    assert_eq!(b.first, Position(1));
    assert_eq!(alpha.head().await.unwrap(), Some(Position(2)));
    assert_eq!(beta.head().await.unwrap(), Some(Position(1)));
    // A condition in beta does not see alpha's events.
    beta.append(
        vec![record("Y", &[])],
        Some(AppendCondition::never_matched(Query::types(["X"]))),
    )
    .await
    .unwrap();
    let err = PgEventStore::builder()
        .schema("Bad-Name")
        .build(db.pool().clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidRequest(ref m) if m.contains("Bad-Name")),
        "{err}"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn migrations_are_idempotent_and_safe_to_run_concurrently() {
    let db = TestDatabase::create().await;
    // Already migrated by TestDatabase; again, twice.
    migrations::migrate_store(db.pool(), "dcb").await.unwrap();
    migrations::migrate_store(db.pool(), "dcb").await.unwrap();
    // A fresh schema, eight starters at once, for two components.
    let steps: &[&str] = &[
        "CREATE TABLE {schema}.jobs (id bigint PRIMARY KEY)",
        "ALTER TABLE {schema}.jobs ADD COLUMN name text; INSERT INTO {schema}.jobs VALUES (1, 'once')",
    ];
    let mut tasks = Vec::new();
    for i in 0..8 {
        let pool = db.pool().clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                migrations::migrate_store(&pool, "fresh").await
            } else {
                migrations::run(&pool, "fresh", "jobs", steps).await
            }
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let versions: Vec<(String, i32)> =
        sqlx::query_as("SELECT component, version FROM fresh.dcb_migrations ORDER BY 1, 2")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(
        versions,
        vec![
            ("event_store".to_string(), 1),
            ("event_store".to_string(), 2),
            ("event_store".to_string(), 3),
            ("event_store".to_string(), 4),
            ("event_store".to_string(), 5),
            ("event_store".to_string(), 6),
            ("jobs".to_string(), 1),
            ("jobs".to_string(), 2)
        ]
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM fresh.jobs")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(rows, 1, "each step ran exactly once");
    // A store that does not migrate on start works once migrated explicitly.
    let store = PgEventStore::builder()
        .schema("late")
        .migrate_on_start(false)
        .build(db.pool().clone())
        .await
        .unwrap();
    assert!(store.append(vec![record("A", &[])], None).await.is_err());
    store.migrate().await.unwrap();
    store.append(vec![record("A", &[])], None).await.unwrap();
    assert!(migrations::run(db.pool(), "no such", "x", &[])
        .await
        .is_err());
    db.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_quickly() {
    // Nothing listens on port 1.
    let url = "postgres://postgres@127.0.0.1:1/postgres";
    let started = Instant::now();
    let err = PgEventStore::builder()
        .pool_options(PgPoolOptions::new().acquire_timeout(Duration::from_millis(500)))
        .connect(url)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.is_retryable());
    let message = err.to_string();
    assert!(
        message.contains("connect") || message.contains("refused"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    // A lazy pool: the store starts, then appends and reads say why they fail.
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(url)
        .unwrap();
    let store = PgEventStore::builder()
        .migrate_on_start(false)
        .build(pool)
        .await
        .unwrap();
    let started = Instant::now();
    let err = store
        .append(vec![record("A", &[])], None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    let err = store
        .read(&Query::all(), ReadOptions::forwards())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("read"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    store.shutdown().await;
}

#[tokio::test]
async fn the_writer_survives_a_failed_batch_and_writes_nothing_of_it() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    store
        .append(vec![record("A", &[("k", "1")])], None)
        .await
        .unwrap();
    db.pool()
        .execute("ALTER TABLE dcb.event_tags RENAME TO event_tags_away")
        .await
        .unwrap();
    let err = store
        .append(vec![record("B", &[("k", "1")])], None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }), "{err}");
    db.pool()
        .execute("ALTER TABLE dcb.event_tags_away RENAME TO event_tags")
        .await
        .unwrap();
    let ok = store
        .append(vec![record("C", &[("k", "1")])], None)
        .await
        .unwrap();
    assert_eq!(ok.first, Position(2), "the failed batch took no position");
    let (_, events) = read_all(
        &store,
        &Query::tags([Tag::new("k", "1")]),
        ReadOptions::forwards(),
    )
    .await;
    assert_eq!(
        events
            .iter()
            .map(|e| e.event_type().as_str())
            .collect::<Vec<_>>(),
        vec!["A", "C"]
    );
    db.cleanup().await;
}

#[tokio::test]
async fn each_committed_batch_notifies_its_new_head() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let mut listener = PgListener::connect(db.url()).await.unwrap();
    listener.listen(&store.notify_channel()).await.unwrap();
    let appended = store
        .append(vec![record("A", &[]), record("B", &[])], None)
        .await
        .unwrap();
    let note = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(note.payload(), appended.last.0.to_string());
    db.cleanup().await;
}

// ---- an undecodable payload through the decision maker ----

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Deposited {
    account: String,
    amount: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum AccountEvent {
    Deposited(Deposited),
}

impl Event for AccountEvent {
    const SCHEMA: &'static [EventSchema] = &[EventSchema {
        event_type: "Deposited",
        tag_keys: &["account"],
    }];
    fn event_type(&self) -> EventType {
        EventType::from_static("Deposited")
    }
    fn tags(&self) -> Vec<Tag> {
        match self {
            AccountEvent::Deposited(d) => vec![Tag::new("account", &d.account)],
        }
    }
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        match self {
            AccountEvent::Deposited(d) => {
                serde_json::to_vec(d).map_err(|e| CodecError::Encode(e.to_string()))
            }
        }
    }
    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError> {
        match event_type {
            "Deposited" => serde_json::from_slice(payload)
                .map(AccountEvent::Deposited)
                .map_err(|e| CodecError::Decode(e.to_string())),
            other => Err(CodecError::UnknownType(other.to_string())),
        }
    }
}

#[derive(Clone)]
struct Balance {
    account: String,
    total: u64,
}

impl StateQuery for Balance {
    const NAME: &'static str = "Balance";
    type Event = AccountEvent;
    fn query(&self) -> Query {
        Query::from_items([QueryItem::new()
            .types(["Deposited"])
            .tags([Tag::new("account", &self.account)])])
    }
}

impl StateMutate for Balance {
    fn mutate(&mut self, event: AccountEvent) {
        let AccountEvent::Deposited(d) = event;
        self.total += d.amount;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

struct Deposit {
    account: String,
    amount: u64,
}

impl Decision for Deposit {
    type Event = AccountEvent;
    type StateQuery = Balance;
    type Error = Never;
    fn state_query(&self) -> Balance {
        Balance {
            account: self.account.clone(),
            total: 0,
        }
    }
    fn process(&self, _state: &Balance) -> Result<Vec<AccountEvent>, Never> {
        Ok(vec![AccountEvent::Deposited(Deposited {
            account: self.account.clone(),
            amount: self.amount,
        })])
    }
}

#[tokio::test]
async fn an_undecodable_payload_names_its_type_and_position() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let maker = DecisionMaker::new(store.clone());
    maker
        .make(Deposit {
            account: "a1".into(),
            amount: 5,
        })
        .await
        .unwrap();
    let mut broken = record("Deposited", &[("account", "a1")]);
    broken.payload = b"{\"account\":\"a1\",\"amount\":\"lots\"}".to_vec();
    store.append(vec![broken], None).await.unwrap();
    let err = maker
        .make(Deposit {
            account: "a1".into(),
            amount: 5,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, DecisionError::Decode(ref d) if d.position == Position(2)),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("Deposited") && message.contains("position 2"),
        "{message}"
    );
    // Other accounts are unaffected.
    let ok = maker
        .make(Deposit {
            account: "a2".into(),
            amount: 1,
        })
        .await
        .unwrap();
    assert_eq!(ok.events[0].position, Position(3));
    let (_, events) = read_all(&store, &Query::all(), ReadOptions::forwards()).await;
    assert_eq!(events.len(), 3);
    let stream_count = store
        .read(&Query::all(), ReadOptions::forwards())
        .await
        .unwrap()
        .events
        .try_fold(0, |n, _| async move { Ok(n + 1) })
        .await
        .unwrap();
    assert_eq!(stream_count, 3);
    db.cleanup().await;
}

/// The writer's server sessions are killed again and again while appends
/// are in flight. Every lost reply is resolved (the writer ends the process
/// that ran the batch and looks its event ids up), so each caller learns
/// the truth: its positions, or `Unavailable` and nothing of it in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sessions_are_resolved_and_every_outcome_matches_the_log() {
    let db = TestDatabase::create().await;
    let victim_url = format!("{}?application_name=dcb_victim", db.url());
    let store = PgEventStore::builder()
        .pool_options(PgPoolOptions::new().max_connections(4))
        .connect(&victim_url)
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut n = 0;
            while n < 5 || !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let events = vec![record("A", &[("task", "t")]), record("B", &[])];
                let ids: Vec<_> = events.iter().map(|e| e.metadata.event_id).collect();
                outcomes.push((ids, store.append(events, None).await));
                if n % 5 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                n += 1;
            }
            outcomes
        }));
    }
    // Meanwhile, terminate the store's server sessions until the writer
    // has lost several replies (a generous bound: a busy machine may need
    // many tries to hit a batch in flight).
    let mut killed = 0i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while killed == 0 || store.writer_stats().lost_replies < 3 {
        assert!(
            Instant::now() < deadline,
            "no 3 lost replies within 60 s ({killed} sessions killed): {:?}",
            store.writer_stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'dcb_victim' AND datname = current_database()",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        killed += n;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut ok = Vec::new();
    let mut not_appended = Vec::new();
    let mut unknown = Vec::new();
    for task in tasks {
        for (ids, outcome) in task.await.unwrap() {
            match outcome {
                Ok(appended) => ok.push((ids, appended)),
                Err(StoreError::Unavailable { .. }) => not_appended.push(ids),
                Err(StoreError::OutcomeUnknown { .. }) => unknown.push(ids),
                Err(other) => panic!("a killed session must give Unavailable, not: {other}"),
            }
        }
    }
    // The writer still serves.
    let last = store
        .append(vec![record("After", &[])], None)
        .await
        .unwrap();
    let (head, events) = read_all(&store, &Query::all(), ReadOptions::forwards()).await;
    assert_eq!(head, Some(last.last));
    assert_eq!(
        positions(&events),
        (1..=last.last.0).collect::<Vec<_>>(),
        "gapless"
    );
    let stored: std::collections::HashSet<_> =
        events.iter().map(|e| e.metadata().event_id).collect();
    // Committed: its events at its positions.
    for (ids, appended) in &ok {
        for (id, position) in ids.iter().zip(appended.positions()) {
            assert_eq!(events[position.0 as usize - 1].metadata().event_id, *id);
        }
    }
    // Not appended: none of its events in the log.
    for ids in &not_appended {
        assert!(
            ids.iter().all(|id| !stored.contains(id)),
            "an append answered Unavailable, but its events are in the log"
        );
    }
    // Unknown (only if the database stayed away past the outcome timeout):
    // all of it or nothing.
    let unknown_committed = unknown
        .iter()
        .filter(|ids| {
            let found = ids.iter().filter(|id| stored.contains(id)).count();
            assert!(found == 0 || found == ids.len(), "an append half-written");
            found > 0
        })
        .count();
    // Two events per append: no batch half-written.
    assert_eq!(
        events.len(),
        2 * (ok.len() + unknown_committed) + 1,
        "the log holds exactly the committed appends"
    );
    // The sessions were killed with batches in flight, and every lost reply
    // was resolved.
    let stats = store.writer_stats();
    assert!(killed > 0, "no session was killed");
    assert!(stats.lost_replies >= 3, "{stats:?}");
    assert!(
        stats.resolved_committed + stats.resolved_not_appended + stats.unknown
            >= stats.lost_replies,
        "lost replies were not resolved: {stats:?}"
    );
    assert_eq!(stats.unknown as usize, unknown.len(), "{stats:?}");
    eprintln!(
        "{killed} sessions killed, {stats:?}: {} appends ok, {} not appended, {} unknown",
        ok.len(),
        not_appended.len(),
        unknown.len()
    );
    store.shutdown().await;
    db.cleanup().await;
}

/// Reads of decisions' shape (tagged, forwards) share statements in the
/// reader task: many at once, of every query shape, must each get exactly
/// their own events, checked against the whole log filtered in memory.
#[tokio::test]
async fn concurrent_tagged_reads_each_get_exactly_their_events() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    // Boundary b holds 3b events of types A and B; every third one also
    // carries `flag:on`. Boundary 30 holds 2,500, more than a page.
    for b in 0..31usize {
        let count = if b == 30 { 2500 } else { 3 * b };
        let name = b.to_string();
        let events: Vec<EventRecord> = (0..count)
            .map(|i| {
                let ty = if i % 2 == 0 { "A" } else { "B" };
                if i % 3 == 0 {
                    record(ty, &[("box", name.as_str()), ("flag", "on")])
                } else {
                    record(ty, &[("box", name.as_str())])
                }
            })
            .collect();
        for chunk in events.chunks(500) {
            if !chunk.is_empty() {
                store.append(chunk.to_vec(), None).await.unwrap();
            }
        }
    }
    let (_, log) = read_all(&store, &Query::all(), ReadOptions::forwards()).await;
    let shapes = |b: usize| -> Vec<Query> {
        let tag = Tag::new("box", b);
        vec![
            Query::tags([tag.clone()]),
            Query::from_items([QueryItem::new().types(["A"]).tags([tag.clone()])]),
            Query::from_items([QueryItem::new().types(["A", "B"]).tags([tag.clone()])]),
            Query::tags([tag.clone(), Tag::new("flag", "on")]),
            // Two items that overlap: an event matched by both comes once.
            Query::from_items([
                QueryItem::new().types(["B"]).tags([tag.clone()]),
                QueryItem::new().tags([tag.clone(), Tag::new("flag", "on")]),
            ]),
            // Another boundary's tag in the same query.
            Query::from_items([
                QueryItem::new().tags([tag]),
                QueryItem::new()
                    .types(["A"])
                    .tags([Tag::new("box", (b + 1) % 31)]),
            ]),
        ]
    };
    let mut tasks = Vec::new();
    for n in 0..300usize {
        let store = store.clone();
        let b = (n * 7) % 31;
        let query = shapes(b)[n % 6].clone();
        let options = match n % 4 {
            0 => ReadOptions::forwards(),
            1 => ReadOptions::forwards().after(Position((n * 13 % 3000) as u64)),
            2 => ReadOptions::forwards().limit(1 + n % 5),
            _ => ReadOptions::forwards().from(Position(2)).limit(1200),
        };
        tasks.push(tokio::spawn(async move {
            let (head, events) = read_all(&store, &query, options).await;
            (query, options, head, events)
        }));
    }
    for task in tasks {
        let (query, options, head, events) = task.await.unwrap();
        let low = options.start.map_or(1, |p| p.0);
        let expected: Vec<u64> = log
            .iter()
            .filter(|e| e.position.0 >= low)
            .filter(|e| query.matches(e.event_type().as_str(), &e.record.tags))
            .map(|e| e.position.0)
            .take(options.limit.unwrap_or(usize::MAX))
            .collect();
        assert_eq!(head, Some(log.last().unwrap().position));
        assert!(
            positions(&events) == expected,
            "{query:?} {options:?}: got {} events, expected {}",
            events.len(),
            expected.len()
        );
    }
    db.cleanup().await;
}
