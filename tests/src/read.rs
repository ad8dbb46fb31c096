//! Reading every event of a query in one call, for tests that check what a
//! store holds.

use dcb_core::{EventStore, Position, Query, ReadOptions, SequencedEvent};

/// Every event of `query` read with `options`, and the head the read saw;
/// panics (naming the query) when the read fails.
pub async fn read_all<S: EventStore + ?Sized>(
    store: &S,
    query: &Query,
    options: ReadOptions,
) -> (Option<Position>, Vec<SequencedEvent>) {
    store
        .read(query, options)
        .await
        .unwrap_or_else(|e| panic!("read {query:?}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("read {query:?} while streaming: {e}"))
}
