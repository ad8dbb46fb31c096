//! [`Ops`]: what the command and the console work on — one store's schema,
//! with the operators' APIs of its listeners, its work queue and the Kafka
//! tables — and opening it with errors that say what is missing.

use std::time::Duration;

use dcb_postgres::listener::ListenerAdmin;
use dcb_postgres::migrations::{self, MigrationError};
use dcb_postgres::queue::QueueAdmin;
use dcb_postgres::PgEventStore;
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgPool};

use crate::sql;

/// The operators' view of one store: the store (for reads), the listeners'
/// and the queue's operators' APIs, and which components the schema has.
///
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Ops {
    store: PgEventStore,
    listeners: ListenerAdmin,
    queue: QueueAdmin,
    operator: String,
}

/// Why [`Ops::connect`] (or [`migrate`]) could not open the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// No database URL was given.
    #[error(
        "no database given: set DATABASE_URL or pass --database-url \
         (e.g. postgres://postgres@127.0.0.1:5432/postgres)"
    )]
    NoUrl,
    /// The URL does not parse.
    #[error("the database URL {url} is not valid: {reason}")]
    BadUrl {
        /// The URL, without its password.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server did not answer.
    #[error(
        "cannot reach PostgreSQL at {url}: {reason} (is the server running, and the URL right?)"
    )]
    Unreachable {
        /// The URL, without its password.
        url: String,
        /// The driver's error.
        reason: String,
    },
    /// The server answered, but the database named in the URL does not
    /// exist.
    #[error("database {database:?} does not exist on the server of {url}; check the URL's database name")]
    NoDatabase {
        /// The database name.
        database: String,
        /// The URL, without its password.
        url: String,
    },
    /// The server refused the connection (password, permissions).
    #[error("PostgreSQL at {url} refused the connection: {reason}")]
    Refused {
        /// The URL, without its password.
        url: String,
        /// The server's message.
        reason: String,
    },
    /// The schema name is not a plain lower-case identifier.
    #[error("{0}")]
    BadSchema(String),
    /// The schema does not exist, or holds no event store.
    #[error(
        "{what} in database {database:?}, and {found}; pass --schema (or set DCB_SCHEMA), \
         or create its tables with `dcb migrate --schema {schema}`"
    )]
    NoSchema {
        /// The schema asked for.
        schema: String,
        /// The database.
        database: String,
        /// What is missing.
        what: String,
        /// Where the event stores of the database are, as a clause.
        found: String,
    },
    /// Anything else the database said.
    #[error("{0}")]
    Database(String),
}

/// `url` with its password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_owned(),
    }
}

/// How long opening the database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a small pool on `url`, classifying failures.
async fn open_pool(url: Option<&str>) -> Result<PgPool, OpenError> {
    let url = url.map(str::trim).filter(|u| !u.is_empty());
    let url = url.ok_or(OpenError::NoUrl)?;
    let shown = redact(url);
    let options: sqlx::postgres::PgConnectOptions =
        url.parse().map_err(|e: sqlx::Error| OpenError::BadUrl {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
    let database = options.get_database().unwrap_or("postgres").to_owned();
    // One connection first: a pool reports a refused connection as a
    // time-out, this says what the server (or the network) said.
    let first = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
        .await
        .map_err(|_| OpenError::Unreachable {
            url: shown.clone(),
            reason: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        })?
        .map_err(|e| classify(e, &shown, &database))?;
    let _ = first.close().await;
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| classify(e, &shown, &database))
}

fn classify(error: sqlx::Error, url: &str, database: &str) -> OpenError {
    let url = url.to_owned();
    match &error {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("3D000") => OpenError::NoDatabase {
                database: database.to_owned(),
                url,
            },
            Some(code) if code.starts_with("28") => OpenError::Refused {
                url,
                reason: db.message().to_owned(),
            },
            _ => OpenError::Database(error.to_string()),
        },
        sqlx::Error::Configuration(e) => OpenError::BadUrl {
            url,
            reason: e.to_string(),
        },
        _ => OpenError::Unreachable {
            url,
            reason: error.to_string(),
        },
    }
}

fn schema_error(e: MigrationError) -> OpenError {
    match e {
        MigrationError::InvalidSchema(message) => OpenError::BadSchema(message),
        other => OpenError::Database(other.to_string()),
    }
}

/// Applies every component's migrations to `schema` (the event store,
/// listeners, work queue and snapshots of `dcb-postgres`, and the tables of
/// `dcb-kafka`), creating the schema if needed; returns the components
/// applied, in order.
///
/// # Errors
/// [`OpenError`] when the database cannot be opened; the migration's error
/// (e.g. an edited released step) as [`OpenError::Database`].
pub async fn migrate(url: Option<&str>, schema: &str) -> Result<Vec<&'static str>, OpenError> {
    migrations::validate_schema(schema).map_err(schema_error)?;
    let pool = open_pool(url).await?;
    let result = async {
        migrations::migrate_all(&pool, schema).await?;
        migrations::run(
            &pool,
            schema,
            dcb_kafka::sql::COMPONENT,
            dcb_kafka::sql::STEPS,
        )
        .await
    }
    .await;
    pool.close().await;
    result.map_err(|e| OpenError::Database(e.to_string()))?;
    Ok(vec![
        migrations::EVENT_STORE_COMPONENT,
        dcb_postgres::listener::COMPONENT,
        dcb_postgres::queue::COMPONENT,
        dcb_postgres::snapshot::SNAPSHOTS_COMPONENT,
        dcb_kafka::sql::COMPONENT,
    ])
}

impl Ops {
    /// Connects to `url` and opens the store in `schema` without migrating
    /// anything.
    ///
    /// # Errors
    /// [`OpenError`]: no URL, an unreachable server, a missing database, a
    /// schema that does not exist or holds no event store (naming the
    /// schemas that do).
    pub async fn connect(url: Option<&str>, schema: &str) -> Result<Ops, OpenError> {
        migrations::validate_schema(schema).map_err(schema_error)?;
        let pool = open_pool(url).await?;
        let database: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&pool)
            .await
            .map_err(|e| OpenError::Database(e.to_string()))?;
        let (exists, has_store): (bool, bool) = sqlx::query_as(sql::SCHEMA_STATE)
            .bind(schema)
            .fetch_one(&pool)
            .await
            .map_err(|e| OpenError::Database(e.to_string()))?;
        if !has_store {
            let stores: Vec<String> = sqlx::query_scalar(sql::SCHEMAS_WITH_STORE)
                .fetch_all(&pool)
                .await
                .map_err(|e| OpenError::Database(e.to_string()))?;
            let found = match stores.as_slice() {
                [] => "no schema there holds a dcb event store".to_owned(),
                [one] => format!("its dcb event store is in schema {one:?}"),
                many => format!("its dcb event stores are in schemas {}", many.join(", ")),
            };
            let what = if exists {
                format!("schema {schema:?} holds no dcb event store (no table {schema}.head)")
            } else {
                format!("schema {schema:?} does not exist")
            };
            pool.close().await;
            return Err(OpenError::NoSchema {
                schema: schema.to_owned(),
                database,
                what,
                found,
            });
        }
        let store = PgEventStore::builder()
            .schema(schema)
            .migrate_on_start(false)
            .build(pool)
            .await
            .map_err(|e| OpenError::Database(e.to_string()))?;
        Ok(Ops::new(store))
    }

    /// The operators' view of `store` (its pool and schema).
    pub fn new(store: PgEventStore) -> Ops {
        Ops {
            listeners: store.listener_admin(),
            queue: store.queue_admin(),
            store,
            operator: "dcb".to_owned(),
        }
    }

    /// Records `who` as the author of the listener requests made through
    /// this value (shown in the listener's request history).
    pub fn operator(mut self, who: impl Into<String>) -> Ops {
        self.operator = who.into();
        self.listeners = self.listeners.requested_by(self.operator.clone());
        self
    }

    /// Who makes the requests.
    pub fn operator_name(&self) -> &str {
        &self.operator
    }

    /// The store.
    pub fn store(&self) -> &PgEventStore {
        &self.store
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        self.store.schema()
    }

    /// The listeners' operators' API.
    pub fn listeners(&self) -> &ListenerAdmin {
        &self.listeners
    }

    /// The work queue's operators' API.
    pub fn queue(&self) -> &QueueAdmin {
        &self.queue
    }

    /// Which components' tables the schema has now (a listener runner, a
    /// worker set or a relay may create theirs at any time).
    ///
    /// # Errors
    /// Database failures.
    pub async fn components(&self) -> Result<Components, sqlx::Error> {
        let names: Vec<String> = sqlx::query_scalar(&sql::render(sql::COMPONENTS, self.schema()))
            .fetch_all(self.pool())
            .await?;
        let has = |c: &str| names.iter().any(|n| n == c);
        Ok(Components {
            listeners: has(dcb_postgres::listener::COMPONENT),
            queue: has(dcb_postgres::queue::COMPONENT),
            kafka: has(dcb_kafka::sql::COMPONENT),
        })
    }

    /// Stops the store's writer and closes the pool.
    pub async fn close(&self) {
        self.store.shutdown().await;
        self.store.pool().close().await;
    }
}

/// Which components have tables in the schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Components {
    /// The listener runner's (checkpoints, parked events, requests).
    pub listeners: bool,
    /// The work queue's.
    pub queue: bool,
    /// `dcb-kafka`'s (dead records, relays).
    pub kafka: bool,
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden_and_nothing_else_changes() {
        assert_eq!(
            redact("postgres://alice:s3cret@db:5432/app?sslmode=require"),
            "postgres://alice:***@db:5432/app?sslmode=require"
        );
        assert_eq!(redact("postgres://alice@db/app"), "postgres://alice@db/app");
        assert_eq!(redact("not a url"), "not a url");
    }
}
