//! Maps sqlx errors onto [`StoreError`].

use dcb_core::StoreError;

/// An outage, with a message that says what failed and why.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {cause}")]
pub(crate) struct Outage {
    context: String,
    cause: String,
    #[source]
    source: Option<sqlx::Error>,
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
            // cannot connect now; 53300: too many connections.
            code.starts_with("08")
                || code == "57P01"
                || code == "57P02"
                || code == "57P03"
                || code == "53300"
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
    source: Option<sqlx::Error>,
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

/// Converts a sqlx error met while doing `context` ("append", "read"...).
pub(crate) fn store_error(context: &str, error: sqlx::Error) -> StoreError {
    let (unavailable, cause) = describe(&error);
    build(context, unavailable, cause, Some(error))
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
