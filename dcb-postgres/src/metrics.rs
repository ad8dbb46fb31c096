//! The metrics this crate records, through the [`metrics`] facade (a check
//! of one atomic each while no recorder is installed; `dcb-console`'s
//! `metrics` module installs a Prometheus one).
//!
//! Recorded once per append call and once per committed batch, never per
//! event. What lives in the database (listener lags, queue depths) is not
//! recorded here: `dcb-console` reads it when it is scraped.

use std::time::Duration;

/// Histogram (seconds): how long an `append` call waited for its outcome,
/// from the call to the answer (time in the writer's queue included).
pub const APPEND_DURATION_SECONDS: &str = "dcb_append_duration_seconds";

/// Histogram: append requests per batch the writer sent to the database
/// (the group commit: one transaction, one WAL flush, for all of them).
pub const APPEND_BATCH_SIZE: &str = "dcb_append_batch_size";

pub(crate) fn append_finished(waited: Duration) {
    ::metrics::histogram!(APPEND_DURATION_SECONDS).record(waited.as_secs_f64());
}

pub(crate) fn batch_committed(requests: usize) {
    ::metrics::histogram!(APPEND_BATCH_SIZE).record(requests as f64);
}
