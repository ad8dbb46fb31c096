//! The `raw_insert` baseline: single-row autocommit INSERTs of an event-like
//! row into a plain table, one connection per caller.

use std::time::Duration;

use crate::db::Db;
use crate::runner::run_timed;
use crate::stats::{Measured, OpOutcome};

/// The baseline table: the same columns as a stored event, with a
/// `bigserial` id (what a naive event table would use) and a unique event id.
const CREATE: &str = "CREATE SCHEMA {schema};
CREATE TABLE {schema}.events (
    id          bigserial   PRIMARY KEY,
    event_type  text        NOT NULL,
    tags        text[]      NOT NULL,
    payload     bytea       NOT NULL,
    metadata    jsonb       NOT NULL,
    event_id    uuid        NOT NULL UNIQUE,
    recorded_at timestamptz NOT NULL DEFAULT now()
);";

/// The size of the random payload, close to an encoded `ItemAdded`.
const PAYLOAD_BYTES: usize = 100;

/// A raw-INSERT table with its own pool of connections, measured in one or
/// more windows (so they can alternate with another variant's), then
/// dropped.
pub struct RawInsert {
    schema: String,
    pool: sqlx::PgPool,
    sql: std::sync::Arc<str>,
}

impl RawInsert {
    /// Creates the table and opens `concurrency` connections.
    ///
    /// # Errors
    /// The table or the pool cannot be made.
    pub async fn create(db: &Db, concurrency: usize) -> Result<RawInsert, String> {
        let schema = db.new_schema(&format!("raw_c{concurrency}"));
        db.execute(&CREATE.replace("{schema}", &schema)).await?;
        let pool = db.pool(concurrency as u32).await?;
        let sql = format!(
            "INSERT INTO {schema}.events (event_type, tags, payload, metadata, event_id) \
             VALUES ($1, $2, $3, $4, $5)"
        )
        .into();
        Ok(RawInsert { schema, pool, sql })
    }

    /// Measures `concurrency` callers inserting for `window` after `warmup`.
    ///
    /// # Errors
    /// An insert fails.
    pub async fn measure(
        &self,
        concurrency: usize,
        warmup: Duration,
        window: Duration,
    ) -> Result<Measured, String> {
        let metadata = serde_json::json!({ "source": "dcb-bench" });
        run_timed(concurrency, warmup, window, |_| {
            let pool = self.pool.clone();
            let sql = self.sql.clone();
            let metadata = metadata.clone();
            move || {
                let pool = pool.clone();
                let sql = sql.clone();
                let metadata = metadata.clone();
                async move {
                    let payload: Vec<u8> = (0..PAYLOAD_BYTES).map(|_| fastrand::u8(..)).collect();
                    sqlx::query(&sql)
                        .bind("ItemAdded")
                        .bind(vec![format!("cart_id:{}", uuid::Uuid::new_v4())])
                        .bind(payload)
                        .bind(metadata)
                        .bind(uuid::Uuid::new_v4())
                        .execute(&pool)
                        .await
                        .map_err(|e| format!("raw insert: {e}"))?;
                    Ok(OpOutcome {
                        events: 1,
                        attempts: 0,
                        gave_up: false,
                    })
                }
            }
        })
        .await
    }

    /// Closes the pool and drops the table.
    ///
    /// # Errors
    /// The schema cannot be dropped.
    pub async fn drop(self, db: &Db) -> Result<(), String> {
        self.pool.close().await;
        db.drop_schema(&self.schema).await
    }
}
