//! A handler's failure: its text (made storable), and whether it is
//! permanent (no retry can help), which decides when its event is parked.

use std::any::Any;

use dcb_core::{BoxError, CodecError, DecodeError};

use crate::error::DatabaseError;
use crate::text::storable;

/// Wraps a handler's error to say that no retry can help (the event is
/// wrong for this read model, not the world around it): the runner parks
/// the event after
/// [`park_permanent_after`](super::ListenerOptions::park_permanent_after)
/// attempts instead of blocking on it.
///
/// ```
/// use dcb_core::BoxError;
/// use dcb_postgres::listener::Permanent;
/// fn check(quantity: i64) -> Result<(), BoxError> {
///     if quantity < 0 {
///         return Err(Permanent::new(format!("negative quantity {quantity}")).into());
///     }
///     Ok(())
/// }
/// assert!(check(-1).unwrap_err().is::<Permanent>());
/// ```
#[derive(Debug)]
pub struct Permanent(BoxError);

impl Permanent {
    /// `error`, marked permanent.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Permanent(error.into())
    }
}

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Permanent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// A failed handler call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The error and its causes, storable.
    pub(crate) text: String,
    /// Whether no retry can help.
    pub(crate) permanent: bool,
}

/// The failure of a handler call that returned an error or panicked;
/// `None` when it succeeded.
pub(crate) fn of(result: Result<Result<(), BoxError>, Box<dyn Any + Send>>) -> Option<Failure> {
    match result {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(Failure {
            text: storable(&chain(&*error)).into_owned(),
            permanent: is_permanent(&*error),
        }),
        // A panic on one event is most likely the handler's bug meeting
        // that event: it happens again on every attempt.
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Some(Failure {
                text: storable(&format!("handler panicked: {message}")).into_owned(),
                permanent: true,
            })
        }
    }
}

/// Whether anything in `error`'s chain says no retry can help.
fn is_permanent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<Permanent>() || e.is::<CodecError>() || e.is::<DecodeError>() {
            return true;
        }
        if let Some(db) = e.downcast_ref::<DatabaseError>() {
            if db.is_data_error() {
                return true;
            }
        }
        if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() {
            if db
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
            {
                return true;
            }
        }
        current = e.source();
    }
    false
}

/// An error with its causes, `: `-separated, and the SQLSTATE of a
/// database error among them.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut code = sqlstate(error);
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Wrappers that print their source already need no repeat.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        code = code.or_else(|| sqlstate(cause));
        source = cause.source();
    }
    if let Some(code) = code {
        text.push_str(&format!(" (SQLSTATE {code})"));
    }
    text
}

fn sqlstate(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(db) = error.downcast_ref::<DatabaseError>() {
        return db.code().map(str::to_owned);
    }
    match error.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_failures() {
        let plain: BoxError = "connection reset".into();
        assert_eq!(
            of(Ok(Err(plain))),
            Some(Failure {
                text: "connection reset".into(),
                permanent: false
            })
        );
        let marked: BoxError = Box::new(Permanent::new("bad \0 data"));
        let failure = of(Ok(Err(marked))).unwrap();
        assert!(failure.permanent);
        assert_eq!(failure.text, "bad \\0 data");
        let codec: BoxError = Box::new(CodecError::Decode("nope".into()));
        assert!(of(Ok(Err(codec))).unwrap().permanent);
        let panic: Box<dyn Any + Send> = Box::new("boom");
        assert!(of(Err(panic)).unwrap().permanent);
        assert_eq!(of(Ok(Ok(()))), None);
    }
}
