//! The database side of a run: the URL, fresh schemas with their cleanup,
//! pools and stores.

use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

pub use dcb_postgres::PgEventStore;

/// The environment variable naming the database.
pub const DATABASE_URL: &str = "DATABASE_URL";

/// Reads `DATABASE_URL`.
///
/// # Errors
/// A message saying how to set it.
pub fn database_url() -> Result<String, String> {
    match std::env::var(DATABASE_URL) {
        Ok(url) if !url.trim().is_empty() => Ok(url),
        _ => Err(format!(
            "{DATABASE_URL} is not set: point it at a PostgreSQL 15+ database the bench may \
             create and drop schemas in, e.g. \
             {DATABASE_URL}=postgres://postgres@127.0.0.1:54329/postgres \
             (scripts/postgres.sh start prints one)"
        )),
    }
}

/// One run's handle on the database: an admin pool and the schemas the run
/// created, all named `bench_<run id>_...` and dropped by [`Db::cleanup`].
pub struct Db {
    url: String,
    admin: PgPool,
    run_id: String,
    schemas: Mutex<Vec<String>>,
}

impl Db {
    /// Connects the admin pool.
    ///
    /// # Errors
    /// The database cannot be reached.
    pub async fn connect(url: &str) -> Result<Db, String> {
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| format!("cannot connect to {DATABASE_URL}: {e}"))?;
        let run_id: String = (0..8)
            .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
            .collect();
        Ok(Db {
            url: url.to_string(),
            admin,
            run_id,
            schemas: Mutex::new(Vec::new()),
        })
    }

    /// This run's random id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// A fresh schema name `bench_<run id>_<suffix>`, remembered for cleanup.
    /// The schema itself is created by whoever uses it.
    pub fn new_schema(&self, suffix: &str) -> String {
        let name = format!("bench_{}_{suffix}", self.run_id);
        self.schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        name
    }

    /// A pool of up to `max` connections, opened eagerly so connecting does
    /// not land in the measurement, with no ping before each acquire (the
    /// store's own default; the raw baseline gets the same pool, so neither
    /// side pays a round trip the other does not).
    ///
    /// # Errors
    /// The database cannot be reached.
    pub async fn pool(&self, max: u32) -> Result<PgPool, String> {
        PgPoolOptions::new()
            .max_connections(max)
            .min_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .test_before_acquire(false)
            .connect(&self.url)
            .await
            .map_err(|e| format!("cannot open a pool of {max} connections: {e}"))
    }

    /// Runs one statement on the admin pool.
    ///
    /// # Errors
    /// What the database says.
    pub async fn execute(&self, sql: &str) -> Result<(), String> {
        sqlx::raw_sql(sql)
            .execute(&self.admin)
            .await
            .map(|_| ())
            .map_err(|e| format!("{sql}: {e}"))
    }

    /// Brings a freshly loaded `schema` to a steady state: `VACUUM (ANALYZE)`
    /// of every table (fresh statistics, and the visibility map that
    /// index-only scans need, as autovacuum would set it later anyway), then
    /// a `CHECKPOINT` so the load's dirty pages are not flushed during the
    /// measurement. The checkpoint is skipped when the role may not run it.
    ///
    /// # Errors
    /// What the database says about the vacuum.
    pub async fn settle_schema(&self, schema: &str) -> Result<(), String> {
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = $1")
                .bind(schema)
                .fetch_all(&self.admin)
                .await
                .map_err(|e| format!("list the tables of {schema}: {e}"))?;
        for table in tables {
            self.execute(&format!("VACUUM (ANALYZE) {schema}.{table}"))
                .await?;
        }
        if let Err(e) = self.execute("CHECKPOINT").await {
            tracing::warn!(error = %e, "no CHECKPOINT after preloading");
        }
        Ok(())
    }

    /// Drops `schema` with everything in it.
    ///
    /// # Errors
    /// What the database says (e.g. a lock held by a connection still open).
    pub async fn drop_schema(&self, schema: &str) -> Result<(), String> {
        self.execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await?;
        self.schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s != schema);
        Ok(())
    }

    /// Drops every schema this run created and has not dropped yet. Returns
    /// the ones that could not be dropped, with why.
    pub async fn cleanup(&self) -> Vec<String> {
        let left: Vec<String> = self
            .schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut failed = Vec::new();
        for schema in left {
            // Don't hang on a lock a dying connection still holds.
            let sql = format!("SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {schema} CASCADE");
            if let Err(e) = self.execute(&sql).await {
                failed.push(format!("{schema} ({e})"));
            }
        }
        failed
    }

    /// Opens a [`PgEventStore`] in a fresh schema `bench_<run id>_<suffix>`
    /// on its own pool of `connections`.
    ///
    /// # Errors
    /// The store cannot start.
    pub async fn open_store(&self, suffix: &str, connections: u32) -> Result<PgEventStore, String> {
        let schema = self.new_schema(suffix);
        let pool = self.pool(connections).await?;
        PgEventStore::builder()
            .schema(schema.as_str())
            .migrate_on_start(true)
            .build(pool)
            .await
            .map_err(|e| format!("cannot start the event store in schema {schema}: {e}"))
    }

    /// Stops `store`, closes its pool and drops its schema.
    ///
    /// # Errors
    /// The schema cannot be dropped.
    pub async fn close_store(&self, store: PgEventStore) -> Result<(), String> {
        store.shutdown().await;
        store.pool().close().await;
        let schema = store.schema().to_string();
        drop(store);
        self.drop_schema(&schema).await
    }
}
