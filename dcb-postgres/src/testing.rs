//! Test support: a fresh database per test, migrations applied.
//!
//! ```no_run
//! # async fn example() {
//! use dcb_postgres::testing::TestDatabase;
//! let db = TestDatabase::create().await;
//! let store = db.store().await;
//! // ... use the store ...
//! db.cleanup().await;
//! # }
//! ```
//!
//! The server comes from `DATABASE_URL` (a superuser URL on any database,
//! e.g. `postgres://postgres@127.0.0.1:54329/postgres`); `scripts/postgres.sh
//! start` runs a suitable server and prints that URL.
//!
//! Tests of standbys and failover start servers of their own instead: a
//! [`ReplicaSet`] is a private primary with streaming standbys, made from the
//! installed PostgreSQL binaries.

mod replica_set;

pub use replica_set::{ReplicaSet, ReplicaSetBuilder, Synchronous};

use std::time::Duration;

use async_trait::async_trait;
use dcb_core::{
    AppendCondition, AppendResult, EventRecord, EventStore, Position, Query, ReadOptions,
    ReadResult, StoreError,
};

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, Executor, PgConnection, PgPool};

use crate::store::{PgEventStore, DEFAULT_SCHEMA};

const HOW_TO_START: &str = "set DATABASE_URL (e.g. postgres://postgres@127.0.0.1:54329/postgres) \
     or run scripts/postgres.sh start";

/// The server URL from `DATABASE_URL`.
///
/// # Panics
/// When `DATABASE_URL` is unset, with a message saying how to start Postgres.
pub fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!("these tests need PostgreSQL: DATABASE_URL is not set; {HOW_TO_START}"),
    }
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (before_query, query) = match url.find('?') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let authority_start = before_query.find("://").map_or(0, |i| i + 3);
    let base = match before_query[authority_start..].find('/') {
        Some(i) => &before_query[..authority_start + i],
        None => before_query,
    };
    format!("{base}/{database}{query}")
}

/// A fresh database (`dcb_test_<random>`) with the event store's migrations
/// applied to schema `"dcb"`. Dropped by [`cleanup`](Self::cleanup), or
/// best-effort when the value is dropped (e.g. after a failed assertion).
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
    pool: PgPool,
    dropped: bool,
}

impl TestDatabase {
    /// Creates the database and migrates it.
    ///
    /// # Panics
    /// When `DATABASE_URL` is unset or the server cannot be reached, with a
    /// message saying how to start one.
    pub async fn create() -> TestDatabase {
        let admin_url = database_url();
        let mut admin = connect_admin(&admin_url).await;
        let name = format!("dcb_test_{:016x}", fastrand::u64(..));
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to test database {name}: {e}"));
        crate::migrations::migrate_store(&pool, DEFAULT_SCHEMA)
            .await
            .unwrap_or_else(|e| panic!("cannot migrate test database {name}: {e}"));
        TestDatabase {
            name,
            url,
            admin_url,
            pool,
            dropped: false,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL for this database (same server and user as `DATABASE_URL`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool on this database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A store on this database (default schema, migrated) sharing
    /// [`pool`](Self::pool). For a store with its own connections, use
    /// `PgEventStore::connect(db.url())`.
    ///
    /// # Panics
    /// When the store cannot start.
    pub async fn store(&self) -> PgEventStore {
        PgEventStore::builder()
            .build(self.pool.clone())
            .await
            .unwrap_or_else(|e| panic!("cannot start a store on {}: {e}", self.name))
    }

    /// A store on this database that owns the database: dropping the store
    /// drops the database. For test factories that must return just a store
    /// (e.g. `dcb_tests::store_contract_tests!`).
    ///
    /// # Panics
    /// When the store cannot start.
    pub async fn into_store(self) -> TestStore {
        let store = self.store().await;
        TestStore {
            store,
            database: self,
        }
    }

    /// Closes the pool and drops the database (best-effort).
    pub async fn cleanup(mut self) {
        self.pool.close().await;
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = admin
                .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
                .await;
            let _ = admin.close().await;
        }
        self.dropped = true;
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Best-effort, on a thread of its own: we may be inside (or after) a
        // runtime, and must not block it.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// A [`PgEventStore`] that owns its [`TestDatabase`] (see
/// [`TestDatabase::into_store`]). Derefs to the store and implements
/// [`EventStore`] by delegating to it.
#[derive(Debug)]
pub struct TestStore {
    store: PgEventStore,
    database: TestDatabase,
}

impl TestStore {
    /// The database (its URL, a pool).
    pub fn database(&self) -> &TestDatabase {
        &self.database
    }

    /// The store.
    pub fn store(&self) -> &PgEventStore {
        &self.store
    }
}

impl std::ops::Deref for TestStore {
    type Target = PgEventStore;

    fn deref(&self) -> &PgEventStore {
        &self.store
    }
}

#[async_trait]
impl EventStore for TestStore {
    async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult, StoreError> {
        self.store.read(query, options).await
    }

    async fn append(
        &self,
        events: Vec<EventRecord>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult, StoreError> {
        self.store.append(events, condition).await
    }

    async fn head(&self) -> Result<Option<Position>, StoreError> {
        self.store.head().await
    }
}

async fn connect_admin(url: &str) -> PgConnection {
    match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(url)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            panic!("these tests need PostgreSQL, but {url} is unreachable ({e}); {HOW_TO_START}")
        }
        Err(_) => {
            panic!("these tests need PostgreSQL, but connecting to {url} timed out; {HOW_TO_START}")
        }
    }
}
