//! The `EventStore` trait every backend implements, with its read options,
//! results and errors.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};

use crate::event::{Event, EventRecord, Sequenced, SequencedEvent};
use crate::query::{AppendCondition, Query};
use crate::tag::{EventType, Position};

/// Which way a read walks the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forwards,
    /// Newest first.
    Backwards,
}

/// Where a read starts, how far it goes and which way.
///
/// ```
/// use dcb_core::{ReadOptions, Position};
/// let opts = ReadOptions::forwards().after(Position(10)).limit(100);
/// assert_eq!(opts.start, Some(Position(11)));
/// let last = ReadOptions::backwards().limit(1);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReadOptions {
    /// The first position to include, in the direction of travel: forwards,
    /// events at or after it; backwards, events at or before it. `None` starts
    /// at the beginning (forwards) or the head (backwards).
    pub start: Option<Position>,
    /// At most this many events.
    pub limit: Option<usize>,
    /// Which way.
    pub direction: Direction,
}

impl ReadOptions {
    /// The whole log, oldest first.
    pub fn forwards() -> Self {
        ReadOptions::default()
    }

    /// The whole log, newest first.
    pub fn backwards() -> Self {
        ReadOptions {
            direction: Direction::Backwards,
            ..ReadOptions::default()
        }
    }

    /// Starts at `position`, inclusive.
    pub fn from(mut self, position: Position) -> Self {
        self.start = Some(position);
        self
    }

    /// Starts just past `position` in the direction of travel (forwards:
    /// `position + 1`; backwards: `position - 1`).
    pub fn after(mut self, position: Position) -> Self {
        self.start = Some(match self.direction {
            Direction::Forwards => position.next(),
            Direction::Backwards => Position(position.0.saturating_sub(1)),
        });
        self
    }

    /// Starts just past `position` if there is one.
    pub fn after_opt(self, position: Option<Position>) -> Self {
        match position {
            Some(p) => self.after(p),
            None => self,
        }
    }

    /// At most `limit` events.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Whether `position` lies within the start bound of these options.
    pub fn admits(&self, position: Position) -> bool {
        match (self.direction, self.start) {
            (_, None) => true,
            (Direction::Forwards, Some(s)) => position >= s,
            (Direction::Backwards, Some(s)) => position <= s,
        }
    }
}

/// The answer to a read: the events, streamed, and the head the read is
/// complete up to.
///
/// Every event the query matches at or below `head` (within the options) is in
/// `events`, and nothing above `head` is. A decision uses `head` as the
/// `after` of its append condition.
pub struct ReadResult {
    /// The last position of the log when the read started (`None`: empty log).
    pub head: Option<Position>,
    /// The matching events, in the requested direction.
    pub events: BoxStream<'static, Result<SequencedEvent, StoreError>>,
}

impl ReadResult {
    /// A result over events already in memory.
    pub fn from_vec(head: Option<Position>, events: Vec<SequencedEvent>) -> Self {
        ReadResult {
            head,
            events: futures::stream::iter(events.into_iter().map(Ok)).boxed(),
        }
    }

    /// Collects every event (fine for bounded reads; stream large ones).
    ///
    /// # Errors
    /// The first error the stream yields.
    pub async fn collect(self) -> Result<(Option<Position>, Vec<SequencedEvent>), StoreError> {
        let events = self.events.try_collect().await?;
        Ok((self.head, events))
    }
}

impl std::fmt::Debug for ReadResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadResult")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

/// The positions an append was given: `first..=last`, gapless.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AppendResult {
    /// The position of the first appended event.
    pub first: Position,
    /// The position of the last appended event.
    pub last: Position,
}

impl AppendResult {
    /// Every position of the append, in order.
    pub fn positions(&self) -> impl Iterator<Item = Position> {
        (self.first.0..=self.last.0).map(Position)
    }

    /// How many events were appended.
    pub fn len(&self) -> usize {
        (self.last.0 - self.first.0 + 1) as usize
    }

    /// Always false: an append holds at least one event.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A boxed error source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a store can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The append condition failed: an event matching the decision's query was
    /// recorded after the position it read. Nothing was appended. Re-read the
    /// state and decide again (the decision maker does this for you).
    #[error("append condition failed: an event matching the query was recorded after {after:?}; re-read and retry")]
    ConditionFailed {
        /// The `after` of the failed condition.
        after: Option<Position>,
    },
    /// The store could not be reached (connection refused, timed out, failed
    /// over) and the request was **not** carried out: for an append, the
    /// store knows nothing of it was committed (it was never sent, or the
    /// store checked after a lost reply). Retrying later is safe.
    #[error("event store unavailable (nothing was appended): {source}")]
    Unavailable {
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// An append was sent, but its reply was lost and the store could not
    /// find out in time whether it committed: its events may or may not be
    /// in the log. A blind retry may append them twice; retry only with the
    /// same event ids or an idempotency key (the decision maker re-reads the
    /// key and so never appends twice), or read the log to find out.
    #[error("append outcome unknown (it may or may not have committed): {source}")]
    OutcomeUnknown {
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// A stored event's payload no longer decodes.
    #[error(transparent)]
    Decode(#[from] crate::event::DecodeError),
    /// The log holds an event type the reader does not know (and the reader
    /// was configured to fail on unknown types).
    #[error("unknown event type {event_type} at position {position}")]
    UnknownEventType {
        /// The stored type name.
        event_type: EventType,
        /// Where it is.
        position: Position,
    },
    /// An event with this id is already in the store.
    #[error("duplicate event id {0}")]
    DuplicateEventId(uuid::Uuid),
    /// The request itself is wrong (e.g. an empty append).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The store is shutting down and takes no more requests.
    #[error("event store is shut down")]
    ShutDown,
    /// Anything else the backend reported.
    #[error("event store error: {source}")]
    Backend {
        /// The cause.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// Whether retrying the same operation may succeed and is safe: a failed
    /// condition (after a re-read) or an outage in which nothing was done.
    /// An unknown outcome is not: see [`StoreError::OutcomeUnknown`].
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::ConditionFailed { .. } | StoreError::Unavailable { .. }
        )
    }

    /// Whether the store could not be reached and did nothing.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// Whether an append may or may not have committed.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, StoreError::OutcomeUnknown { .. })
    }

    /// Whether this is a failed append condition.
    pub fn is_condition_failed(&self) -> bool {
        matches!(self, StoreError::ConditionFailed { .. })
    }
}

/// An event store: reads events by query and appends them atomically under a
/// condition.
///
/// The trait is object safe (its methods return boxed futures through
/// `async-trait`), so a backend can be chosen at run time and shared as
/// `Arc<dyn EventStore>`; generic code (`DecisionMaker<S: EventStore>`) works
/// with both a concrete store and `Arc<dyn EventStore>`, because `Arc<S>`
/// implements the trait too. The boxing costs one allocation per call, which is
/// noise next to a database round trip.
///
/// # Contract
/// - Positions are unique, strictly increasing in commit order, gapless as
///   seen by readers: a reader that has seen `P` never later sees a new event
///   below `P`.
/// - `append` writes all events or none. With a condition, it fails with
///   [`StoreError::ConditionFailed`] when an event matching
///   `fail_if_events_match` exists after `after` (anywhere if `None`),
///   including events appended concurrently.
/// - `read` returns the head it is complete up to; with `Direction::Forwards`
///   events come in increasing position order.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Reads the events that match `query`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] and backend errors; a stream item may fail
    /// later with the same.
    async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult, StoreError>;

    /// Appends `events` atomically, if `condition` holds.
    ///
    /// # Errors
    /// [`StoreError::ConditionFailed`] when the condition fails,
    /// [`StoreError::InvalidRequest`] for an empty batch,
    /// [`StoreError::DuplicateEventId`] when an event id is taken, and outages.
    async fn append(
        &self,
        events: Vec<EventRecord>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult, StoreError>;

    /// The last position in the log, `None` when it is empty.
    ///
    /// # Errors
    /// Outages and backend errors.
    async fn head(&self) -> Result<Option<Position>, StoreError> {
        let result = self
            .read(&Query::none(), ReadOptions::backwards().limit(1))
            .await?;
        Ok(result.head)
    }
}

/// Conveniences every [`EventStore`] has.
#[async_trait]
pub trait EventStoreExt: EventStore {
    /// Reads the events that match `query` and decodes them as `E`.
    ///
    /// # Errors
    /// Those of [`EventStore::read`], and [`StoreError::Decode`] for an
    /// event that does not decode as `E`.
    async fn read_decoded<E: Event>(
        &self,
        query: &Query,
        options: ReadOptions,
    ) -> Result<(Option<Position>, Vec<Sequenced<E>>), StoreError> {
        let (head, events) = self.read(query, options).await?.collect().await?;
        let decoded = events
            .iter()
            .map(|e| e.decode::<E>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok((head, decoded))
    }
}

impl<S: EventStore + ?Sized> EventStoreExt for S {}

/// Implements [`EventStore`] for pointers to a store (`Arc<S>`, `&S`):
/// every method forwards to the store pointed to.
macro_rules! forward_event_store {
    ($($pointer:ty),+) => {$(
        #[async_trait]
        impl<S: EventStore + ?Sized> EventStore for $pointer {
            async fn read(
                &self,
                query: &Query,
                options: ReadOptions,
            ) -> Result<ReadResult, StoreError> {
                (**self).read(query, options).await
            }

            async fn append(
                &self,
                events: Vec<EventRecord>,
                condition: Option<AppendCondition>,
            ) -> Result<AppendResult, StoreError> {
                (**self).append(events, condition).await
            }

            async fn head(&self) -> Result<Option<Position>, StoreError> {
                (**self).head().await
            }
        }
    )+};
}

forward_event_store!(Arc<S>, &S);
