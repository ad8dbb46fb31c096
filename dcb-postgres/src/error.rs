//! Database failures, classified: whether PostgreSQL could not be reached
//! (an outage: retry later), whether a retry can help at all, and the
//! mapping onto [`StoreError`] for the event store.
//!
//! Every public error of this crate that carries a database failure carries
//! a [`DatabaseError`], never a bare `sqlx::Error`, so callers can ask
//! `is_unavailable()` / `is_retryable()` the way they ask a [`StoreError`].

use dcb_core::StoreError;

/// A PostgreSQL failure with its classification.
///
/// The SQLSTATE decides: connection exceptions (class `08`), a server
/// shutting down or starting (`57P01`-`57P03`), too many connections
/// (`53300`), a write sent to a standby (`25006`: the primary moved), and I/O, TLS and pool timeouts mean the database was
/// unavailable; serialization failures (`40001`) and deadlocks (`40P01`)
/// are worth retrying too. Anything else (a constraint, a data exception, a
/// syntax error) fails the same way again.
#[derive(Debug, thiserror::Error)]
#[error("{cause}")]
pub struct DatabaseError {
    cause: String,
    unavailable: bool,
    code: Option<String>,
    #[source]
    source: sqlx::Error,
}

impl DatabaseError {
    /// Whether PostgreSQL could not be reached or the connection broke (as
    /// opposed to a statement it rejected).
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }

    /// Whether doing the same again may succeed: an outage, a serialization
    /// failure or a deadlock.
    pub fn is_retryable(&self) -> bool {
        self.unavailable || matches!(self.code(), Some("40001" | "40P01"))
    }

    /// The SQLSTATE the server reported, if it reported one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// Whether the server refused the data itself (SQLSTATE class `22`, data
    /// exception, e.g. a NUL in text; or `23`, integrity constraint
    /// violation): the same statement with the same data fails again.
    pub fn is_data_error(&self) -> bool {
        self.code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
    }

    /// The driver's error.
    pub fn sqlx_error(&self) -> &sqlx::Error {
        &self.source
    }

    /// The driver's error, by value.
    pub fn into_sqlx(self) -> sqlx::Error {
        self.source
    }
}

impl From<sqlx::Error> for DatabaseError {
    fn from(source: sqlx::Error) -> Self {
        let (unavailable, cause) = describe(&source);
        let code = match &source {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        };
        DatabaseError {
            cause,
            unavailable,
            code,
            source,
        }
    }
}

/// An outage, with a message that says what failed and why.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {cause}")]
pub(crate) struct Outage {
    context: String,
    cause: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Whether `error` means the database could not be reached or the
/// connection broke (as opposed to a statement the database rejected).
pub(crate) fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01..57P03: admin/crash shutdown,
            // cannot connect now; 53300: too many connections; 25006: a
            // write reached a standby (the primary moved: a failover).
            code.starts_with("08")
                || code == "57P01"
                || code == "57P02"
                || code == "57P03"
                || code == "53300"
                || code == "25006"
        }),
        _ => false,
    }
}

fn describe(error: &sqlx::Error) -> (bool, String) {
    if !is_unavailable(error) {
        return (false, error.to_string());
    }
    let cause = match error {
        sqlx::Error::PoolTimedOut => "no connection could be obtained within the pool's \
             acquire timeout (PostgreSQL unreachable, or every connection busy)"
            .to_string(),
        sqlx::Error::PoolClosed => "the connection pool is closed".to_string(),
        sqlx::Error::Io(e) => format!("connection to PostgreSQL failed: {e}"),
        other => other.to_string(),
    };
    (true, cause)
}

fn build(
    context: &str,
    unavailable: bool,
    cause: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
) -> StoreError {
    let outage = Box::new(Outage {
        context: context.to_string(),
        cause,
        source,
    });
    if unavailable {
        StoreError::Unavailable { source: outage }
    } else {
        StoreError::Backend { source: outage }
    }
}

/// What can become a [`StoreError`]: the driver's errors and this crate's
/// classified ones.
pub(crate) trait IntoStoreError {
    /// The store error for a failure met while doing `context`.
    fn into_store_error(self, context: &str) -> StoreError;
}

impl IntoStoreError for sqlx::Error {
    fn into_store_error(self, context: &str) -> StoreError {
        let (unavailable, cause) = describe(&self);
        build(context, unavailable, cause, Some(Box::new(self)))
    }
}

impl IntoStoreError for DatabaseError {
    fn into_store_error(self, context: &str) -> StoreError {
        let unavailable = self.unavailable;
        let cause = self.cause.clone();
        build(context, unavailable, cause, Some(Box::new(self)))
    }
}

impl IntoStoreError for crate::migrations::MigrationError {
    fn into_store_error(self, context: &str) -> StoreError {
        match self {
            crate::migrations::MigrationError::Database(e) => e.into_store_error(context),
            crate::migrations::MigrationError::InvalidSchema(message) => {
                StoreError::InvalidRequest(message)
            }
            other => build(context, false, other.to_string(), Some(Box::new(other))),
        }
    }
}

/// Converts an error met while doing `context` ("append", "read"...).
pub(crate) fn store_error(context: &str, error: impl IntoStoreError) -> StoreError {
    error.into_store_error(context)
}

/// Like [`store_error`], for one of several requests failed by one error.
pub(crate) fn store_error_ref(context: &str, error: &sqlx::Error) -> StoreError {
    let (unavailable, cause) = describe(error);
    build(context, unavailable, cause, None)
}

/// A backend error from a message.
pub(crate) fn backend(context: &str, message: impl Into<String>) -> StoreError {
    StoreError::Backend {
        source: Box::new(Outage {
            context: context.to_string(),
            cause: message.into(),
            source: None,
        }),
    }
}
