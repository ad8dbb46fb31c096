//! Versioned, checksummed schema migrations, shared by every dcb component
//! that keeps tables in Postgres (the event store, listeners, the work
//! queue, snapshots; `dcb-kafka` and applications pass their own steps).
//!
//! Each component owns an ordered list of steps, each a `.sql` file kept
//! beside the component's code (`include_str!`). Step `i` (0-based) is
//! version `i + 1`. [`run`] applies the steps not yet recorded in
//! `{schema}.dcb_migrations`, in order, each in the same transaction as its
//! record, under a transaction-scoped advisory lock, so several processes
//! starting at once neither race nor apply a step twice.
//!
//! **A released step is never edited.** Each applied step is recorded with
//! the SHA-256 of its text ([`checksum`]); when a step's text no longer
//! matches what the database applied, [`run`] refuses with
//! [`MigrationError::StepChanged`] naming the component and the version,
//! and changes nothing. Change a schema by appending a step. Databases
//! migrated before checksums were recorded get theirs on the next run (the
//! steps' texts are unchanged since their release: the tests pin them).
//!
//! Steps are plain SQL (several statements are fine). Every `{schema}` in a
//! step is replaced by the schema name, which [`run`] first checks is a plain
//! lower-case identifier (`[a-z_][a-z0-9_]*`, at most 50 bytes), so it can be
//! used unquoted both as an identifier and inside string literals.
//!
//! For DBA-run DDL, call [`migrate_all`] (or [`run`] with a component's
//! steps) from a deployment tool and start the store with
//! `migrate_on_start(false)`.

use sha2::{Digest, Sha256};
use sqlx::{Executor, PgPool};
use tracing::Instrument;

use crate::error::DatabaseError;

/// The event store's migration component name.
pub const EVENT_STORE_COMPONENT: &str = "event_store";

/// The event store's steps, in order. Never edit a released step; append a
/// new one.
pub const EVENT_STORE_STEPS: &[&str] = &[
    // 1: the log, its tag index and the head row.
    include_str!("store/migrations/0001_log.sql"),
    // 2: `append_batch`, an append batch as one server-side call (one round
    // trip per batch, statements planned once per session).
    include_str!("store/migrations/0002_append_batch.sql"),
    // 3: the same function again, for databases that ran an earlier step 2
    // whose event-id check could be planned as a scan of the whole log
    // (`CREATE OR REPLACE` makes the re-run harmless).
    include_str!("store/migrations/0002_append_batch.sql"),
    // 4: `append_batch_v2`, what the writer calls: it probes the tag index
    // once per (item, type), so every probe is a plain index lookup, and
    // looks stored event ids up only when asked. `append_batch` stays for
    // instances of an older release during a rolling upgrade (both take the
    // same head lock).
    include_str!("store/migrations/0004_append_batch_v2.sql"),
    // 5: `read_first_pages`, the reader's one statement for the first pages
    // of many tagged forward reads, with the head, in one snapshot.
    include_str!("store/migrations/0005_read_first_pages.sql"),
    // 6: tags and types compare bytewise ("C"): equality is the same under
    // any collation, no query orders by these columns, and a byte compare
    // costs far less than the C library's collation. Rebuilds the indexes
    // on them (no rewrite of the tables) under an exclusive lock: on a
    // large log, run it in a quiet moment.
    include_str!("store/migrations/0006_collate_c.sql"),
];

/// What running migrations can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// The schema name cannot be used (see [`validate_schema`]).
    #[error("{0}")]
    InvalidSchema(String),
    /// A step the database applied has another text now. Nothing was
    /// changed: restore the step's released text and put the change in a
    /// new step.
    #[error(
        "migration step {version} of component {component:?} was edited after it was applied \
         (applied checksum {applied}, this build's {current}); a released step must never \
         change: restore its text and add a new step instead"
    )]
    StepChanged {
        /// The component.
        component: String,
        /// The step's version (1-based).
        version: i32,
        /// The checksum recorded when the step was applied.
        applied: String,
        /// The checksum of the step's text in this build.
        current: String,
    },
    /// The database failed (a step, or the bookkeeping around it); the
    /// failed step rolled back with its record.
    #[error("migration failed: {0}")]
    Database(#[from] DatabaseError),
}

impl MigrationError {
    /// Whether running the migrations again may succeed: only after an
    /// outage (or a serialization failure).
    pub fn is_retryable(&self) -> bool {
        matches!(self, MigrationError::Database(e) if e.is_retryable())
    }

    /// Whether PostgreSQL could not be reached.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, MigrationError::Database(e) if e.is_unavailable())
    }
}

impl From<sqlx::Error> for MigrationError {
    fn from(error: sqlx::Error) -> Self {
        MigrationError::Database(error.into())
    }
}

impl From<MigrationError> for sqlx::Error {
    /// For callers whose own errors are sqlx's: a database failure is
    /// passed on as it was, anything else as a configuration error carrying
    /// the migration error.
    fn from(error: MigrationError) -> Self {
        match error {
            MigrationError::Database(e) => e.into_sqlx(),
            other => sqlx::Error::Configuration(Box::new(other)),
        }
    }
}

/// The checksum [`run`] records for a step: the SHA-256 of its text as
/// written (before `{schema}` is filled in), in lower-case hex.
pub fn checksum(step: &str) -> String {
    Sha256::digest(step.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks that `schema` is a plain lower-case identifier safe to splice into
/// SQL unquoted.
///
/// # Errors
/// [`MigrationError::InvalidSchema`] naming the bad value.
pub fn validate_schema(schema: &str) -> Result<(), MigrationError> {
    let mut chars = schema.chars();
    let ok = schema.len() <= 50
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(MigrationError::InvalidSchema(format!(
            "invalid schema name {:?}: use a lower-case identifier \
             ([a-z_][a-z0-9_]*, at most 50 bytes)",
            crate::text::storable(schema)
        )))
    }
}

/// Replaces every `{schema}` in `sql` with `schema`.
pub fn render(sql: &str, schema: &str) -> String {
    sql.replace("{schema}", schema)
}

/// Runs `steps` (SQL, may contain `{schema}` placeholders, applied in order,
/// each step once) for `component`, tracking applied versions and their
/// checksums in `{schema}.dcb_migrations(component text, version int,
/// applied_at timestamptz, checksum text, primary key(component,
/// version))`, under a transaction-scoped advisory lock so concurrent
/// starters don't race. Idempotent. Creates the schema if it does not
/// exist.
///
/// Before applying anything, every step already applied is compared with
/// its text here: an edited step fails the run with
/// [`MigrationError::StepChanged`]. A step applied before checksums were
/// recorded gets its checksum now.
///
/// # Errors
/// [`MigrationError::InvalidSchema`], [`MigrationError::StepChanged`], or
/// [`MigrationError::Database`]: whatever the database reports (a failed
/// step rolls back with its record).
pub async fn run(
    pool: &PgPool,
    schema: &str,
    component: &str,
    steps: &[&str],
) -> Result<(), MigrationError> {
    validate_schema(schema)?;
    let span = tracing::debug_span!("dcb.pg.migrate", schema, component);
    async {
        if up_to_date(pool, schema, component, steps).await {
            return Ok(());
        }
        run_locked(pool, schema, component, steps).await
    }
    .instrument(span)
    .await
}

/// Whether every step of `component` is recorded as applied to `schema`
/// with its current checksum: one read, no lock, no DDL (what nearly every
/// start of a component finds). Anything else, including a missing table
/// or column, goes the locked way, which applies, backfills or refuses.
/// Steps are only ever added, under the lock, so a complete record read
/// here stays complete.
async fn up_to_date(pool: &PgPool, schema: &str, component: &str, steps: &[&str]) -> bool {
    // Whether the table exists, asked of the catalog tables rather than by
    // naming it: a statement naming a schema that does not exist yet leaves
    // the connection's catalog cache sure that it does not, and the locked
    // pass on that connection could then try to create the schema a
    // concurrent starter has just created.
    let exists: Result<bool, sqlx::Error> = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = 'dcb_migrations')",
    )
    .bind(schema)
    .fetch_one(pool)
    .await;
    if !matches!(exists, Ok(true)) {
        return false;
    }
    let applied: Vec<(i32, Option<String>)> = match sqlx::query_as(&render(
        "SELECT version, checksum FROM {schema}.dcb_migrations WHERE component = $1",
        schema,
    ))
    .bind(component)
    .fetch_all(pool)
    .await
    {
        Ok(applied) => applied,
        Err(_) => return false,
    };
    let applied: std::collections::HashMap<i32, Option<String>> = applied.into_iter().collect();
    steps.iter().enumerate().all(|(index, step)| {
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        matches!(applied.get(&version), Some(Some(recorded)) if *recorded == checksum(step))
    })
}

async fn run_locked(
    pool: &PgPool,
    schema: &str,
    component: &str,
    steps: &[&str],
) -> Result<(), MigrationError> {
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
             checksum   text,
             PRIMARY KEY (component, version)
         );",
        schema,
    )))
    .await?;
    // Tables made before checksums were recorded have no such column.
    let has_checksums: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
         WHERE table_schema = $1 AND table_name = 'dcb_migrations'
           AND column_name = 'checksum')",
    )
    .bind(schema)
    .fetch_one(&mut *tx)
    .await?;
    if !has_checksums {
        tracing::info!(schema, "recording migration checksums from now on");
        tx.execute(sqlx::raw_sql(&render(
            "ALTER TABLE {schema}.dcb_migrations ADD COLUMN checksum text",
            schema,
        )))
        .await?;
    }
    let applied: Vec<(i32, Option<String>)> = sqlx::query_as(&render(
        "SELECT version, checksum FROM {schema}.dcb_migrations WHERE component = $1",
        schema,
    ))
    .bind(component)
    .fetch_all(&mut *tx)
    .await?;
    let applied: std::collections::HashMap<i32, Option<String>> = applied.into_iter().collect();
    let mut pending = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        let current = checksum(step);
        match applied.get(&version) {
            None => pending.push((version, step, current)),
            Some(Some(recorded)) if *recorded != current => {
                return Err(MigrationError::StepChanged {
                    component: component.to_owned(),
                    version,
                    applied: recorded.clone(),
                    current,
                });
            }
            Some(Some(_)) => {}
            Some(None) => {
                sqlx::query(&render(
                    "UPDATE {schema}.dcb_migrations SET checksum = $3
                     WHERE component = $1 AND version = $2",
                    schema,
                ))
                .bind(component)
                .bind(version)
                .bind(&current)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    for (version, step, current) in pending {
        tracing::info!(schema, component, version, "applying migration");
        tx.execute(sqlx::raw_sql(&render(step, schema))).await?;
        sqlx::query(&render(
            "INSERT INTO {schema}.dcb_migrations (component, version, checksum)
             VALUES ($1, $2, $3)",
            schema,
        ))
        .bind(component)
        .bind(version)
        .bind(&current)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Applies the event store's own steps (component `"event_store"`) to
/// `schema`.
///
/// # Errors
/// See [`run`].
pub async fn migrate_store(pool: &PgPool, schema: &str) -> Result<(), MigrationError> {
    run(pool, schema, EVENT_STORE_COMPONENT, EVENT_STORE_STEPS).await
}

/// Applies the steps of every component of this crate to `schema`: the
/// event store, listeners, the work queue and snapshots (what a deployment
/// tool runs before starting instances with `migrate_on_start(false)`).
///
/// # Errors
/// See [`run`].
pub async fn migrate_all(pool: &PgPool, schema: &str) -> Result<(), MigrationError> {
    migrate_store(pool, schema).await?;
    run(
        pool,
        schema,
        crate::listener::COMPONENT,
        crate::listener::STEPS,
    )
    .await?;
    run(pool, schema, crate::queue::COMPONENT, crate::queue::STEPS).await?;
    run(
        pool,
        schema,
        crate::snapshot::SNAPSHOTS_COMPONENT,
        crate::snapshot::SNAPSHOTS_STEPS,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksums of every released step, as the steps' texts were when
    /// they were released (computed from the string constants they were
    /// before they moved to `.sql` files). A failure here means a released
    /// step was edited: every database that applied it would refuse to
    /// migrate.
    #[test]
    fn released_steps_keep_their_text() {
        let released: &[(&str, &[&str], &[&str])] = &[
            (
                EVENT_STORE_COMPONENT,
                EVENT_STORE_STEPS,
                &[
                    "8ce8d656694541857d67f7c79808c5094821b49928cba4fc3af670afff5d2fcb",
                    "e39f02bfd4768c3b32e330f69bcd593b9df40c8d8268e3d3e743375606c3533f",
                    "e39f02bfd4768c3b32e330f69bcd593b9df40c8d8268e3d3e743375606c3533f",
                    "7eded740a3e3a7155459c7ab4df520ee3223a2e76f51d453bcb14db5667ebb12",
                    "8a0d4f39f25b8cbdc1c4e052b555a9282a131bbfd7f7089aa8a7b7283f0edc6e",
                    "6541afe6a89028add617c2f3d5eddc131e0eebebab0802446f5d2fffc248c4f1",
                ],
            ),
            (
                crate::listener::COMPONENT,
                crate::listener::STEPS,
                &["8bc22662e07e11049139e6b94f212171331ee699de036fb230d339f73c919ae1"],
            ),
            (
                crate::queue::COMPONENT,
                crate::queue::STEPS,
                &[
                    "36ae2d611c7a3cc8674550ddb15e225e4127aaef1ff7f86946954441f2e1796d",
                    "5343e75ba36d69c3cd3f542258f233a9b9f0a408bde6bc0bab1310386c5ddeaa",
                ],
            ),
            (
                crate::snapshot::SNAPSHOTS_COMPONENT,
                crate::snapshot::SNAPSHOTS_STEPS,
                &["d7ddeb4e04716ec230130a78db5bb46df2a17b46be721c552c0e108683d17529"],
            ),
        ];
        for (component, steps, sums) in released {
            assert!(steps.len() >= sums.len(), "{component}: a step was removed");
            for (index, sum) in sums.iter().enumerate() {
                assert_eq!(
                    checksum(steps[index]),
                    *sum,
                    "{component} step {} was edited after its release",
                    index + 1
                );
            }
        }
    }

    #[test]
    fn schema_names_are_checked() {
        assert!(validate_schema("dcb_1").is_ok());
        for bad in ["", "Dcb", "1dcb", "a-b", "a b", "a\0b", &"a".repeat(51)] {
            assert!(
                matches!(validate_schema(bad), Err(MigrationError::InvalidSchema(_))),
                "{bad:?}"
            );
        }
    }
}
