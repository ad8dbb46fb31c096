//! Reading the log for the relay: whole ranges or filtered reads (whichever
//! costs less for the share of matching events), each on a task of its
//! own, with up to [`READS_IN_FLIGHT`] in flight.

use std::collections::VecDeque;

use dcb_core::{EventStore, Position, Query, ReadOptions, SequencedEvent, StoreError};
use dcb_postgres::StandbyReader;
use futures::future::BoxFuture;
use futures::FutureExt;

/// What a read from the log brought.
pub(super) struct Batch {
    pub(super) events: Vec<SequencedEvent>,
    /// Every matching event up to here is in `events` (or was read before).
    pub(super) covered: u64,
    /// The read stopped at its limit: more may wait.
    pub(super) full: bool,
    /// Events the read brought from the store, matching or not.
    pub(super) read: usize,
}

/// How the relay reads the log. Scanning a range of the log and keeping
/// what matches costs the database about a third of a filtered read per
/// row (a plain walk of the primary key, where a filtered read looks up
/// each type's positions first and then fetches the rows), so it is the
/// cheaper way while most of the log matches; where few events match, a
/// filtered read skips the rest. The relay switches by the share of
/// matching events it last saw, with a margin so that it does not switch
/// back and forth around the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadHow {
    /// Every event of the range; the relay keeps those matching its query.
    Scan,
    /// Only the matching events, found by the store.
    Filtered,
}

impl ReadHow {
    /// Below this many events (read or spanned), a read says too little
    /// about the share of matching events to switch on it.
    const EVIDENCE: u64 = 100;

    /// How to read next, after `batch` read from `after`.
    pub(super) fn next(self, batch: &Batch, after: u64) -> ReadHow {
        let matched = batch.events.len() as u64;
        match self {
            // Scanning costs more than filtering below about a third.
            ReadHow::Scan
                if batch.read as u64 >= Self::EVIDENCE && matched * 4 < batch.read as u64 =>
            {
                ReadHow::Filtered
            }
            // Positions are dense, so the span is about the events in it.
            ReadHow::Filtered => {
                let spanned = batch.covered.saturating_sub(after);
                if spanned >= Self::EVIDENCE && matched * 2 >= spanned {
                    ReadHow::Scan
                } else {
                    ReadHow::Filtered
                }
            }
            how => how,
        }
    }
}

/// At most this many reads of the log in flight: while one read's rows are
/// decoded and sent, the database answers the next.
pub(super) const READS_IN_FLIGHT: usize = 2;

/// A read of the log running on a task of its own.
pub(super) struct InFlightRead {
    /// The position it reads after.
    pub(super) after: u64,
    result: BoxFuture<'static, Result<Batch, StoreError>>,
}

impl InFlightRead {
    /// Starts reading up to `limit` events of `query` after `after` from
    /// `log`, the way `how` says.
    pub(super) fn start(
        log: StandbyReader,
        query: Query,
        how: ReadHow,
        after: u64,
        limit: usize,
    ) -> Self {
        let reader = tokio::spawn(read(log, query, how, after, limit));
        let result = async move {
            reader.await.unwrap_or_else(|e| {
                Err(StoreError::Backend {
                    source: format!("the read task failed: {e}").into(),
                })
            })
        }
        .boxed();
        InFlightRead { after, result }
    }
}

/// The oldest read's position and result, once it is done; pending forever
/// without one.
pub(super) async fn first_read(
    reading: &mut VecDeque<InFlightRead>,
) -> (u64, Result<Batch, StoreError>) {
    match reading.front_mut() {
        Some(read) => (read.after, (&mut read.result).await),
        None => std::future::pending().await,
    }
}

/// Reads up to `limit` events after `after` (matching `query`, or any when
/// scanning, of which those matching are kept).
async fn read(
    store: StandbyReader,
    query: Query,
    how: ReadHow,
    after: u64,
    limit: usize,
) -> Result<Batch, StoreError> {
    let options = ReadOptions::forwards().after(Position(after)).limit(limit);
    let scan = how == ReadHow::Scan && !query.is_all();
    let every = Query::all();
    let read_query = if scan { &every } else { &query };
    let (head, mut events) = store.read(read_query, options).await?.collect().await?;
    let read = events.len();
    let full = read >= limit;
    let last = events.last().map_or(after, |e| e.position.0);
    // A read that stopped at its limit covers the log up to its last event
    // (matching or not); one that did not, up to the head it was complete
    // up to.
    let covered = if full {
        last
    } else {
        head.map_or(after, |h| h.0).max(last)
    };
    if scan {
        events.retain(|e| query.matches(e.record.event_type.as_str(), &e.record.tags));
    }
    Ok(Batch {
        events,
        covered,
        full,
        read,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcb_core::{EventMetadata, EventRecord, EventType};

    /// A batch of `matched` events out of `read`, covering up to `covered`.
    fn batch(matched: usize, read: usize, covered: u64) -> Batch {
        let event = |n: u64| SequencedEvent {
            position: Position(n),
            recorded_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            record: EventRecord {
                event_type: EventType::new("E"),
                tags: Vec::new(),
                payload: Vec::new(),
                metadata: EventMetadata::new(),
            },
        };
        Batch {
            events: (1..=matched as u64).map(event).collect(),
            covered,
            full: true,
            read,
        }
    }

    #[test]
    fn scanning_gives_way_to_filtering_where_few_events_match() {
        assert_eq!(
            ReadHow::Scan.next(&batch(900, 1000, 1000), 0),
            ReadHow::Scan
        );
        assert_eq!(
            ReadHow::Scan.next(&batch(300, 1000, 1000), 0),
            ReadHow::Scan
        );
        assert_eq!(
            ReadHow::Scan.next(&batch(200, 1000, 1000), 0),
            ReadHow::Filtered
        );
        // Too few events to judge by: no switch.
        assert_eq!(ReadHow::Scan.next(&batch(0, 50, 50), 0), ReadHow::Scan);
    }

    #[test]
    fn filtering_gives_way_to_scanning_where_most_events_match() {
        // 1,000 matching events over positions 5,001..=6,500.
        assert_eq!(
            ReadHow::Filtered.next(&batch(1000, 1000, 6500), 5000),
            ReadHow::Scan
        );
        // 1,000 over 5,001..=9,000: a quarter.
        assert_eq!(
            ReadHow::Filtered.next(&batch(1000, 1000, 9000), 5000),
            ReadHow::Filtered
        );
        // Between the two thresholds, each mode stays as it is.
        assert_eq!(
            ReadHow::Filtered.next(&batch(400, 400, 1000), 0),
            ReadHow::Filtered
        );
        assert_eq!(
            ReadHow::Scan.next(&batch(400, 1000, 1000), 0),
            ReadHow::Scan
        );
        // A live read of a few events: no switch.
        assert_eq!(
            ReadHow::Filtered.next(&batch(3, 3, 3), 0),
            ReadHow::Filtered
        );
    }
}
