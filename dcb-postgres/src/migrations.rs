//! Versioned, idempotent schema migrations, shared by every dcb component
//! that keeps tables in Postgres (the event store, listeners, the work queue).
//!
//! Each component owns an ordered list of steps. Step `i` (0-based) is
//! version `i + 1`. [`run`] applies the steps not yet recorded in
//! `{schema}.dcb_migrations`, in order, each in the same transaction as its
//! record, under a transaction-scoped advisory lock, so several processes
//! starting at once neither race nor apply a step twice.
//!
//! Steps are plain SQL (several statements are fine). Every `{schema}` in a
//! step is replaced by the schema name, which [`run`] first checks is a plain
//! lower-case identifier (`[a-z_][a-z0-9_]*`, at most 50 bytes), so it can be
//! used unquoted both as an identifier and inside string literals.
//!
//! For DBA-run DDL, call [`migrate_store`] (or [`run`] with a component's
//! steps) from a deployment tool and start the store with
//! `migrate_on_start(false)`.

use sqlx::{Executor, PgPool};
use tracing::Instrument;

/// The event store's migration component name.
pub const EVENT_STORE_COMPONENT: &str = "event_store";

/// The event store's steps, in order. Never edit a released step; append a
/// new one.
pub const EVENT_STORE_STEPS: &[&str] = &[
    // 1: the log, its tag index and the head row.
    r#"
CREATE TABLE IF NOT EXISTS {schema}.events (
    position    bigint      PRIMARY KEY,
    event_type  text        NOT NULL,
    tags        text[]      NOT NULL,
    payload     bytea       NOT NULL,
    metadata    jsonb       NOT NULL,
    event_id    uuid        NOT NULL UNIQUE,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS events_type_position ON {schema}.events (event_type, position);
CREATE TABLE IF NOT EXISTS {schema}.event_tags (
    tag        text   NOT NULL,
    event_type text   NOT NULL,
    position   bigint NOT NULL,
    PRIMARY KEY (tag, event_type, position)
);
CREATE TABLE IF NOT EXISTS {schema}.head (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    position bigint  NOT NULL
);
INSERT INTO {schema}.head (id, position) VALUES (true, 0) ON CONFLICT (id) DO NOTHING;
"#,
];

/// Checks that `schema` is a plain lower-case identifier safe to splice into
/// SQL unquoted.
///
/// # Errors
/// [`sqlx::Error::Configuration`] naming the bad value.
pub fn validate_schema(schema: &str) -> Result<(), sqlx::Error> {
    let mut chars = schema.chars();
    let ok = schema.len() <= 50
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(sqlx::Error::Configuration(
            format!(
                "invalid schema name {schema:?}: use a lower-case identifier \
                 ([a-z_][a-z0-9_]*, at most 50 bytes)"
            )
            .into(),
        ))
    }
}

/// Replaces every `{schema}` in `sql` with `schema`.
pub fn render(sql: &str, schema: &str) -> String {
    sql.replace("{schema}", schema)
}

/// Runs `steps` (SQL, may contain `{schema}` placeholders, applied in order,
/// each step once) for `component`, tracking applied versions in
/// `{schema}.dcb_migrations(component text, version int, applied_at
/// timestamptz, primary key(component, version))`, under a
/// transaction-scoped advisory lock so concurrent starters don't race.
/// Idempotent. Creates the schema if it does not exist.
///
/// # Errors
/// An invalid schema name ([`sqlx::Error::Configuration`]), or whatever the
/// database reports; a failed step rolls back with its record.
pub async fn run(
    pool: &PgPool,
    schema: &str,
    component: &str,
    steps: &[&str],
) -> Result<(), sqlx::Error> {
    validate_schema(schema)?;
    let span = tracing::debug_span!("dcb.pg.migrate", schema, component);
    run_locked(pool, schema, component, steps)
        .instrument(span)
        .await
}

async fn run_locked(
    pool: &PgPool,
    schema: &str,
    component: &str,
    steps: &[&str],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // One lock per schema: every component of a schema migrates in turn,
    // which also serializes the CREATE SCHEMA / CREATE TABLE below.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('dcb_migrations'), hashtext($1))")
        .bind(schema)
        .execute(&mut *tx)
        .await?;
    tx.execute(sqlx::raw_sql(&render(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.dcb_migrations (
             component  text        NOT NULL,
             version    int         NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (component, version)
         );",
        schema,
    )))
    .await?;
    let applied: Vec<i32> = sqlx::query_scalar(&render(
        "SELECT version FROM {schema}.dcb_migrations WHERE component = $1",
        schema,
    ))
    .bind(component)
    .fetch_all(&mut *tx)
    .await?;
    for (index, step) in steps.iter().enumerate() {
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        if applied.contains(&version) {
            continue;
        }
        tracing::info!(schema, component, version, "applying migration");
        tx.execute(sqlx::raw_sql(&render(step, schema))).await?;
        sqlx::query(&render(
            "INSERT INTO {schema}.dcb_migrations (component, version) VALUES ($1, $2)",
            schema,
        ))
        .bind(component)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Applies the event store's own steps (component `"event_store"`) to
/// `schema`.
///
/// # Errors
/// See [`run`].
pub async fn migrate_store(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    run(pool, schema, EVENT_STORE_COMPONENT, EVENT_STORE_STEPS).await
}
