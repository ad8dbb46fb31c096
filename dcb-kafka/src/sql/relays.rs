//! Every statement on `{schema}.kafka_relays`: one row per relay name with
//! its checkpoint (the last position published, with everything before it)
//! and the lease of the instance that publishes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use super::{render, storable_text};

/// The statements, rendered once per relay.
#[derive(Debug)]
pub(crate) struct RelayTable {
    pool: PgPool,
    schema: String,
    ensure: String,
    legacy_checkpoint: String,
    position: String,
    acquire: String,
    renew: String,
    advance: String,
    record_error: String,
    release: String,
    status: String,
}

/// A relay's row, as [`RelayTable::status`] reads it.
#[derive(Debug)]
pub(crate) struct RelayRow {
    pub(crate) position: u64,
    pub(crate) owner: Option<String>,
    pub(crate) lease_live: bool,
    pub(crate) last_error: Option<String>,
    pub(crate) last_error_at: Option<DateTime<Utc>>,
}

fn to_db(position: u64) -> i64 {
    i64::try_from(position).unwrap_or(i64::MAX)
}

fn from_db(position: i64) -> u64 {
    u64::try_from(position).unwrap_or(0)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl RelayTable {
    pub(crate) fn new(pool: PgPool, schema: &str) -> Result<Self, sqlx::Error> {
        let t = "{schema}.kafka_relays";
        let lease = "clock_timestamp() + $3::bigint * interval '1 millisecond'";
        let r = |sql: String| render(&sql, schema);
        Ok(RelayTable {
            ensure: r(format!(
                "INSERT INTO {t} (relay_id, position) VALUES ($1, $2) \
                 ON CONFLICT (relay_id) DO NOTHING RETURNING position"
            ))?,
            // Relays of earlier versions kept their checkpoint in the
            // listener runner's table, under the relay's name.
            legacy_checkpoint: r(
                "SELECT position FROM {schema}.listener_checkpoints WHERE listener_id = $1"
                    .to_owned(),
            )?,
            position: r(format!("SELECT position FROM {t} WHERE relay_id = $1"))?,
            acquire: r(format!(
                "UPDATE {t} SET owner = $2, lease_until = {lease}, updated_at = clock_timestamp() \
                 WHERE relay_id = (SELECT relay_id FROM {t} WHERE relay_id = $1 \
                   AND (owner IS NULL OR owner = $2 OR lease_until IS NULL \
                        OR lease_until < clock_timestamp()) \
                   FOR UPDATE SKIP LOCKED) \
                 RETURNING position"
            ))?,
            renew: r(format!(
                "UPDATE {t} SET lease_until = {lease} WHERE relay_id = $1 AND owner = $2 \
                 RETURNING position"
            ))?,
            advance: r(format!(
                "UPDATE {t} SET position = GREATEST(position, $4), lease_until = {lease}, \
                   last_error = NULL, updated_at = clock_timestamp() \
                 WHERE relay_id = $1 AND owner = $2 RETURNING position"
            ))?,
            record_error: r(format!(
                "UPDATE {t} SET last_error = $3, last_error_at = clock_timestamp(), \
                   updated_at = clock_timestamp() WHERE relay_id = $1 AND owner = $2"
            ))?,
            release: r(format!(
                "UPDATE {t} SET owner = NULL, lease_until = NULL, updated_at = clock_timestamp() \
                 WHERE relay_id = $1 AND owner = $2"
            ))?,
            status: r(format!(
                "SELECT position, owner, COALESCE(lease_until > clock_timestamp(), false), \
                   last_error, last_error_at FROM {t} WHERE relay_id = $1"
            ))?,
            pool,
            schema: schema.to_owned(),
        })
    }

    /// Creates the relay's row if missing, starting where a relay of an
    /// earlier version (a listener of the listener runner) left off.
    pub(crate) async fn ensure(&self, relay: &str) -> Result<(), sqlx::Error> {
        let exists: Option<i64> = sqlx::query_scalar(&self.position)
            .bind(relay)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_some() {
            return Ok(());
        }
        let legacy: Option<i64> = match sqlx::query_scalar(&self.legacy_checkpoint)
            .bind(relay)
            .fetch_optional(&self.pool)
            .await
        {
            Ok(p) => p,
            // 42P01: no listener table in this schema, nothing to carry over.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => None,
            Err(e) => return Err(e),
        };
        sqlx::query(&self.ensure)
            .bind(relay)
            .bind(legacy.unwrap_or(0))
            .execute(&self.pool)
            .await?;
        if let Some(p) = legacy.filter(|p| *p > 0) {
            tracing::info!(relay, position = p, schema = %self.schema,
                "relay checkpoint carried over from the listener runner's table");
        }
        Ok(())
    }

    /// Takes the lease if it is free, expired or ours; the checkpoint when
    /// taken.
    pub(crate) async fn acquire(
        &self,
        relay: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, sqlx::Error> {
        let p: Option<i64> = sqlx::query_scalar(&self.acquire)
            .bind(relay)
            .bind(owner)
            .bind(millis(ttl))
            .fetch_optional(&self.pool)
            .await?;
        Ok(p.map(from_db))
    }

    /// Extends our lease; false when it is not ours any more.
    pub(crate) async fn renew(
        &self,
        relay: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, sqlx::Error> {
        let p: Option<i64> = sqlx::query_scalar(&self.renew)
            .bind(relay)
            .bind(owner)
            .bind(millis(ttl))
            .fetch_optional(&self.pool)
            .await?;
        Ok(p.is_some())
    }

    /// Moves the checkpoint forward to `position` and extends our lease;
    /// false when the lease is not ours any more.
    pub(crate) async fn advance(
        &self,
        relay: &str,
        owner: &str,
        ttl: Duration,
        position: u64,
    ) -> Result<bool, sqlx::Error> {
        let p: Option<i64> = sqlx::query_scalar(&self.advance)
            .bind(relay)
            .bind(owner)
            .bind(millis(ttl))
            .bind(to_db(position))
            .fetch_optional(&self.pool)
            .await?;
        Ok(p.is_some())
    }

    /// Records why publishing stopped (shown by the relay's status).
    pub(crate) async fn record_error(
        &self,
        relay: &str,
        owner: &str,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&self.record_error)
            .bind(relay)
            .bind(owner)
            .bind(storable_text(error).as_ref())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives our lease up.
    pub(crate) async fn release(&self, relay: &str, owner: &str) -> Result<(), sqlx::Error> {
        sqlx::query(&self.release)
            .bind(relay)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The relay's row, if it has one.
    pub(crate) async fn status(&self, relay: &str) -> Result<Option<RelayRow>, sqlx::Error> {
        let row = sqlx::query(&self.status)
            .bind(relay)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(RelayRow {
                position: from_db(row.try_get(0)?),
                owner: row.try_get(1)?,
                lease_live: row.try_get(2)?,
                last_error: row.try_get(3)?,
                last_error_at: row.try_get(4)?,
            })
        })
        .transpose()
    }
}
