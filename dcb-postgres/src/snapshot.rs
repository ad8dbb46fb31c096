//! [`PgSnapshotStore`]: snapshots of decision states in PostgreSQL.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use dcb_core::DecisionMaker;
//! use dcb_postgres::snapshot::PgSnapshotStore;
//! use dcb_postgres::PgEventStore;
//!
//! let store = PgEventStore::builder().build(pool.clone()).await?;
//! let snapshots = PgSnapshotStore::new(pool, "dcb")?;
//! snapshots.migrate().await?;
//! let maker = DecisionMaker::new(store).with_snapshots(Arc::new(snapshots), 100);
//! # Ok(()) }
//! ```

use async_trait::async_trait;
use dcb_core::{Position, SnapshotStore, StoreError, StoredSnapshot};
use sqlx::{PgPool, Row};

use crate::error::store_error;
use crate::migrations;

/// The snapshot store's migration component name.
pub const SNAPSHOTS_COMPONENT: &str = "snapshots";

/// The snapshot store's migration steps, in order. Never edit a released
/// step; append a new one.
pub const SNAPSHOTS_STEPS: &[&str] = &[
    // 1: one row per snapshot key.
    include_str!("snapshot/migrations/0001_snapshots.sql"),
];

/// Snapshots in table `{schema}.snapshots` (one row per key), usually the
/// event store's schema.
///
/// Cheap to clone (the pool is shared). A save replaces the row only when
/// its position is at least the stored one, so concurrent savers never move
/// a snapshot back.
#[derive(Clone, Debug)]
pub struct PgSnapshotStore {
    pool: PgPool,
    schema: String,
    load_sql: String,
    save_sql: String,
}

impl PgSnapshotStore {
    /// A store on `pool` under `schema` (a lower-case identifier). Run
    /// [`migrate`](Self::migrate) once before use, or apply
    /// [`SNAPSHOTS_STEPS`] with [`migrations::run`] from a deployment tool.
    ///
    /// # Errors
    /// [`StoreError::InvalidRequest`] for a bad schema name.
    pub fn new(pool: PgPool, schema: impl Into<String>) -> Result<Self, StoreError> {
        let schema = schema.into();
        migrations::validate_schema(&schema)
            .map_err(|e| StoreError::InvalidRequest(e.to_string()))?;
        Ok(Self::for_schema(pool, schema))
    }

    /// For a schema already validated (the store's).
    pub(crate) fn for_schema(pool: PgPool, schema: String) -> Self {
        let load_sql = migrations::render(
            "SELECT position, payload FROM {schema}.snapshots WHERE key = $1",
            &schema,
        );
        let save_sql = migrations::render(
            "INSERT INTO {schema}.snapshots AS s (key, position, payload) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE
                SET position = EXCLUDED.position, payload = EXCLUDED.payload, saved_at = now()
                WHERE s.position <= EXCLUDED.position",
            &schema,
        );
        PgSnapshotStore {
            pool,
            schema,
            load_sql,
            save_sql,
        }
    }

    /// The schema holding the table.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Creates the table if needed (component `"snapshots"` of
    /// [`migrations::run`]). Idempotent and safe to run concurrently.
    ///
    /// # Errors
    /// Outages and database errors.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrations::run(
            &self.pool,
            &self.schema,
            SNAPSHOTS_COMPONENT,
            SNAPSHOTS_STEPS,
        )
        .await
        .map_err(|e| store_error("migrate the snapshot store", e))
    }

    /// Deletes every snapshot (they are rebuilt by later decisions).
    ///
    /// # Errors
    /// Outages and database errors.
    pub async fn clear(&self) -> Result<u64, StoreError> {
        let sql = migrations::render("DELETE FROM {schema}.snapshots", &self.schema);
        let done = sqlx::query(&sql)
            .execute(&self.pool)
            .await
            .map_err(|e| store_error("clear snapshots", e))?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl SnapshotStore for PgSnapshotStore {
    async fn load(&self, key: &str) -> Result<Option<StoredSnapshot>, StoreError> {
        let row = sqlx::query(&self.load_sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| store_error("load a snapshot", e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let position: i64 = row
            .try_get("position")
            .map_err(|e| store_error("load a snapshot", e))?;
        let payload: Vec<u8> = row
            .try_get("payload")
            .map_err(|e| store_error("load a snapshot", e))?;
        // A negative position is no position a store gives: ignore the row.
        Ok(u64::try_from(position).ok().map(|p| StoredSnapshot {
            position: Position(p),
            payload,
        }))
    }

    async fn save(&self, key: &str, snapshot: StoredSnapshot) -> Result<(), StoreError> {
        let position = i64::try_from(snapshot.position.get()).map_err(|_| {
            StoreError::InvalidRequest(format!(
                "snapshot position {} does not fit a bigint",
                snapshot.position
            ))
        })?;
        sqlx::query(&self.save_sql)
            .bind(key)
            .bind(position)
            .bind(snapshot.payload)
            .execute(&self.pool)
            .await
            .map_err(|e| store_error("save a snapshot", e))?;
        Ok(())
    }
}
