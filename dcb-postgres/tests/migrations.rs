//! Migrations across releases: a database made the way the release before
//! checksums made it (its `dcb_migrations` table without a checksum column,
//! every component's steps applied, data in the tables) upgrades in place
//! and gets a checksum per applied step; an edited released step is refused
//! with an error naming the component and the version, and changes nothing.
//!
//! Needs PostgreSQL: set DATABASE_URL or run `scripts/postgres.sh start`.

use dcb_core::{EventMetadata, EventRecord, EventStore, Query, ReadOptions};
use dcb_postgres::migrations::{self, checksum, MigrationError};
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::{listener, queue, snapshot, PgEventStore};
use sqlx::{Executor, PgPool};

/// Every component of this crate with the number of steps the release
/// before checksums had.
fn released() -> Vec<(&'static str, &'static [&'static str], usize)> {
    vec![
        (
            migrations::EVENT_STORE_COMPONENT,
            migrations::EVENT_STORE_STEPS,
            6,
        ),
        (listener::COMPONENT, listener::STEPS, 1),
        (queue::COMPONENT, queue::STEPS, 2),
        (snapshot::SNAPSHOTS_COMPONENT, snapshot::SNAPSHOTS_STEPS, 1),
    ]
}

/// Builds `schema` exactly as the release before checksums did: its
/// bookkeeping table, then each released step followed by its record.
async fn make_like_the_previous_release(pool: &PgPool, schema: &str) {
    let render = |sql: &str| sql.replace("{schema}", schema);
    pool.execute(sqlx::raw_sql(&render(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.dcb_migrations (
             component  text        NOT NULL,
             version    int         NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (component, version)
         );",
    )))
    .await
    .expect("old bookkeeping table");
    for (component, steps, count) in released() {
        for (index, step) in steps[..count].iter().enumerate() {
            let mut tx = pool.begin().await.unwrap();
            tx.execute(sqlx::raw_sql(&render(step)))
                .await
                .unwrap_or_else(|e| panic!("{component} step {}: {e}", index + 1));
            sqlx::query(&render(
                "INSERT INTO {schema}.dcb_migrations (component, version) VALUES ($1, $2)",
            ))
            .bind(component)
            .bind(index as i32 + 1)
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
    }
}

fn event(ty: &'static str) -> EventRecord {
    EventRecord {
        event_type: ty.into(),
        tags: vec![dcb_core::Tag::new("k", "v")],
        payload: b"{}".to_vec(),
        metadata: EventMetadata::new(),
    }
}

#[tokio::test]
async fn a_database_of_the_release_before_checksums_upgrades_in_place() {
    let db = TestDatabase::create().await;
    let pool = db.pool();
    make_like_the_previous_release(pool, "legacy").await;
    // Data written by that release: events through its append function,
    // a checkpoint, a job.
    let old_store = PgEventStore::builder()
        .schema("legacy")
        .migrate_on_start(false)
        .build(pool.clone())
        .await
        .expect("a store on the old schema");
    old_store
        .append(vec![event("Before"), event("Before")], None)
        .await
        .expect("append before the upgrade");
    old_store.shutdown().await;
    sqlx::query("INSERT INTO legacy.listener_checkpoints (listener_id, position) VALUES ('l', 2)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO legacy.jobs (id, queue, kind, payload) \
         VALUES (gen_random_uuid(), 'default', 'k', '{}')",
    )
    .execute(pool)
    .await
    .unwrap();
    let has_column = |pool: PgPool| async move {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
             WHERE table_schema = 'legacy' AND table_name = 'dcb_migrations' \
               AND column_name = 'checksum')",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert!(!has_column(pool.clone()).await);

    migrations::migrate_all(pool, "legacy")
        .await
        .expect("upgrade in place");
    assert!(has_column(pool.clone()).await);
    let rows: Vec<(String, i32, Option<String>)> = sqlx::query_as(
        "SELECT component, version, checksum FROM legacy.dcb_migrations ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (component, steps, _) in released() {
        let recorded: Vec<(i32, Option<String>)> = rows
            .iter()
            .filter(|(c, _, _)| c == component)
            .map(|(_, v, s)| (*v, s.clone()))
            .collect();
        let expected: Vec<(i32, Option<String>)> = steps
            .iter()
            .enumerate()
            .map(|(i, step)| (i as i32 + 1, Some(checksum(step))))
            .collect();
        assert_eq!(recorded, expected, "{component}: every step, checksummed");
    }
    // Again: nothing to do, nothing refused.
    migrations::migrate_all(pool, "legacy")
        .await
        .expect("again");

    // The old data is there and the store works on it.
    let store = PgEventStore::builder()
        .schema("legacy")
        .build(pool.clone())
        .await
        .expect("store after the upgrade");
    store.append(vec![event("After")], None).await.unwrap();
    let (head, events) = store
        .read(&Query::all(), ReadOptions::forwards())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(head.map(|p| p.0), Some(3));
    assert_eq!(
        events
            .iter()
            .map(|e| e.event_type().as_str().to_owned())
            .collect::<Vec<_>>(),
        ["Before", "Before", "After"]
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM legacy.jobs")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);
    let checkpoint: i64 = sqlx::query_scalar(
        "SELECT position FROM legacy.listener_checkpoints WHERE listener_id = 'l'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(checkpoint, 2);
    store.shutdown().await;
    db.cleanup().await;
}

#[tokio::test]
async fn an_edited_released_step_is_refused_and_changes_nothing() {
    let db = TestDatabase::create().await;
    let pool = db.pool();
    let v1: &[&str] = &[
        "CREATE TABLE {schema}.things (id int PRIMARY KEY)",
        "INSERT INTO {schema}.things VALUES (1)",
    ];
    migrations::run(pool, "edits", "things", v1).await.unwrap();

    // Step 2 edited, and a step 3 added.
    let edited: &[&str] = &[
        v1[0],
        "INSERT INTO {schema}.things VALUES (2)",
        "INSERT INTO {schema}.things VALUES (3)",
    ];
    let err = migrations::run(pool, "edits", "things", edited)
        .await
        .unwrap_err();
    match &err {
        MigrationError::StepChanged {
            component,
            version,
            applied,
            current,
        } => {
            assert_eq!((component.as_str(), *version), ("things", 2));
            assert_eq!(applied, &checksum(v1[1]));
            assert_eq!(current, &checksum(edited[1]));
        }
        other => panic!("expected StepChanged, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("\"things\"") && message.contains("step 2"),
        "{message}"
    );
    assert!(!err.is_retryable() && !err.is_unavailable());
    let things: Vec<i32> = sqlx::query_scalar("SELECT id FROM edits.things ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(things, [1], "step 3 was not applied");

    // A step recorded before checksums existed gets one on the next run,
    // and an edit of it is refused from then on.
    sqlx::query("UPDATE edits.dcb_migrations SET checksum = NULL WHERE component = 'things'")
        .execute(pool)
        .await
        .unwrap();
    migrations::run(pool, "edits", "things", v1).await.unwrap();
    let sums: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT checksum FROM edits.dcb_migrations WHERE component = 'things' ORDER BY version",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(sums, [Some(checksum(v1[0])), Some(checksum(v1[1]))]);
    assert!(matches!(
        migrations::run(pool, "edits", "things", edited).await,
        Err(MigrationError::StepChanged { version: 2, .. })
    ));
    // The unedited steps plus a new one go through.
    let extended: &[&str] = &[v1[0], v1[1], edited[2]];
    migrations::run(pool, "edits", "things", extended)
        .await
        .unwrap();
    let things: Vec<i32> = sqlx::query_scalar("SELECT id FROM edits.things ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(things, [1, 3]);
    db.cleanup().await;
}
