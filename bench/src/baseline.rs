//! The `raw_insert` baseline: single-row autocommit INSERTs of an event-like
//! row into a plain table, one connection per caller.

use std::time::Duration;

use crate::db::Db;
use crate::runner::{run_timed, WARMUP};
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

/// Measures raw INSERTs at `concurrency` connections for `window`, in a table
/// of its own that is dropped afterwards.
///
/// # Errors
/// The table cannot be made, an insert fails, or the schema cannot be dropped.
pub async fn raw_insert(db: &Db, concurrency: usize, window: Duration) -> Result<Measured, String> {
    let schema = db.new_schema(&format!("raw_c{concurrency}"));
    db.execute(&CREATE.replace("{schema}", &schema)).await?;
    let pool = db.pool(concurrency as u32).await?;
    let sql: std::sync::Arc<str> = format!(
        "INSERT INTO {schema}.events (event_type, tags, payload, metadata, event_id) \
         VALUES ($1, $2, $3, $4, $5)"
    )
    .into();
    let metadata = serde_json::json!({ "source": "dcb-bench" });
    let result = run_timed(concurrency, WARMUP, window, |_| {
        let pool = pool.clone();
        let sql = sql.clone();
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
    .await;
    pool.close().await;
    db.drop_schema(&schema).await?;
    result
}
