//! Decisions and the decision maker: read state, decide, append under a
//! condition, retry on conflict.
//!
//! - this module: the [`Decision`] trait and the options, outcomes and
//!   errors of making one;
//! - `maker`: the [`DecisionMaker`] and its attempt loop;
//! - `cache`: the folded states a maker keeps between decisions;
//! - `turns`: turn-taking of decisions on a hot boundary.

mod cache;
mod maker;
mod turns;

pub use cache::{CacheStats, DEFAULT_CACHE_ENTRIES};
pub use maker::DecisionMaker;

use std::time::Duration;

use uuid::Uuid;

use crate::backoff::Backoff;
use crate::codec::CodecError;
use crate::event::{DecodeError, Event, Sequenced};
use crate::query::Query;
use crate::state::DecisionState;
use crate::store::StoreError;
use crate::tag::Position;

/// The tag key under which the decision maker records idempotency keys.
pub const IDEMPOTENCY_TAG_KEY: &str = "$idempotency";

/// A command that reads a state, checks the rules and returns new events.
///
/// Command parameters live on the decision; the state holds only what events
/// give, so snapshots of a state stay valid whatever the command says.
///
/// A **stateless** decision uses `type StateQuery = ();` and reads nothing.
/// A decision over several states uses a tuple: `type StateQuery = (A, B);`.
pub trait Decision: Send + Sync {
    /// The events this decision appends.
    type Event: Event;
    /// The state it reads: a [`StateQuery`](crate::StateQuery) type, a tuple of
    /// them, or `()`.
    type StateQuery: DecisionState;
    /// The domain error (a broken business rule).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The initial state to fold, with its ids set from the command.
    fn state_query(&self) -> Self::StateQuery;

    /// A narrower query for the conflict check, when some events the state
    /// reads cannot invalidate this decision (a deposit never invalidates a
    /// withdrawal's balance check). `None` checks the state's whole query.
    fn validation_query(&self) -> Option<Query> {
        None
    }

    /// A key that makes a retried command a no-op: when events with this key
    /// were appended before, the maker appends nothing and returns them.
    ///
    /// Keys are **store-wide**: the maker looks the key up over the whole
    /// log, whatever decision appended it (the events carry the tag
    /// `$idempotency:<key>`). Two different decisions given the same key
    /// make the second a replay of the first one's events (or a decode
    /// error, when its event type does not know them). Scope keys yourself,
    /// e.g. `reserve:<request id>`.
    fn idempotency_key(&self) -> Option<String> {
        None
    }

    /// Checks the rules against `state` and returns the events to append.
    ///
    /// # Errors
    /// The domain error when a rule is broken.
    fn process(&self, state: &Self::StateQuery) -> Result<Vec<Self::Event>, Self::Error>;
}

/// How the decision maker retries.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total (the first one included) when the condition fails.
    pub max_attempts: u32,
    /// The wait between attempts (default: 1 ms doubling up to 100 ms, half
    /// jitter, which keeps racers on one boundary apart without starving
    /// anyone).
    pub backoff: Backoff,
    /// Also retry (same limits) when the store was unavailable and nothing
    /// was appended. An append whose outcome is unknown is never retried
    /// this way (see [`StoreError::OutcomeUnknown`]).
    pub retry_unavailable: bool,
}

impl RetryPolicy {
    /// Sets [`RetryPolicy::max_attempts`] (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets [`RetryPolicy::backoff`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`RetryPolicy::retry_unavailable`].
    pub fn retry_unavailable(mut self, retry: bool) -> Self {
        self.retry_unavailable = retry;
        self
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 16,
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(100)),
            retry_unavailable: false,
        }
    }
}

/// What a reader does with a stored event whose type its event enum does not
/// know (an event type added by a newer version of the application, say).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UnknownEventPolicy {
    /// Fail with an error naming the type and position (the default: a state
    /// folded without an event it should have seen would be wrong silently).
    #[default]
    Error,
    /// Skip it with a warning in the trace.
    Skip,
}

/// Per-call options: idempotency key and metadata for the appended events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MakeOptions {
    /// Overrides [`Decision::idempotency_key`].
    pub idempotency_key: Option<String>,
    /// Stored on every appended event.
    pub correlation_id: Option<Uuid>,
    /// Stored on every appended event.
    pub causation_id: Option<Uuid>,
    /// Stored on every appended event.
    pub user_metadata: Option<serde_json::Value>,
}

impl MakeOptions {
    /// No key, no metadata.
    pub fn new() -> Self {
        MakeOptions::default()
    }

    /// Sets the idempotency key: a retried command with the same key
    /// appends nothing and returns the events of the first call.
    ///
    /// The key is store-wide, not scoped by decision: any earlier events
    /// tagged with it, whatever decision appended them, make this call a
    /// replay of those events. Put the command's name in the key
    /// (`deposit:request-7`) when several commands take keys from one
    /// source.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the correlation id stored on every appended event.
    pub fn correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id stored on every appended event.
    pub fn causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Sets the application's own metadata stored on every appended event.
    pub fn user_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.user_metadata = Some(metadata);
        self
    }

    /// Options for a decision caused by `event` (an automation's): the
    /// causation id is the event's id, the correlation id the event's own
    /// correlation id, or its id when it has none.
    ///
    /// ```
    /// # use dcb_core::{EventMetadata, MakeOptions, Position, Sequenced};
    /// let event = Sequenced {
    ///     position: Position(7),
    ///     recorded_at: chrono::Utc::now(),
    ///     tags: vec![],
    ///     metadata: EventMetadata::new(),
    ///     event: (),
    /// };
    /// let options = MakeOptions::caused_by(&event);
    /// assert_eq!(options.causation_id, Some(event.metadata.event_id));
    /// assert_eq!(options.correlation_id, Some(event.metadata.event_id));
    /// ```
    pub fn caused_by<E>(event: &Sequenced<E>) -> Self {
        let metadata = &event.metadata;
        MakeOptions {
            correlation_id: Some(metadata.correlation_id.unwrap_or(metadata.event_id)),
            causation_id: Some(metadata.event_id),
            ..MakeOptions::default()
        }
    }
}

/// The outcome of a decision that did not break a rule.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Decided<E> {
    /// The appended events with their positions (empty when the decision
    /// returned no events).
    pub events: Vec<Sequenced<E>>,
    /// The head the state was read up to.
    pub read_head: Option<Position>,
    /// How many attempts it took.
    pub attempts: u32,
    /// True when the idempotency key was seen before and these are the events
    /// of that earlier call.
    pub replayed: bool,
    /// Events the last attempt read and folded (0 when it decided on a
    /// cached state without reading).
    pub folded: u64,
    /// Whether the last attempt decided on a cached state.
    pub from_cache: bool,
    /// The snapshot the last attempt's state started from, if any.
    pub snapshot: Option<Position>,
}

impl<E> Decided<E> {
    /// The position of the last appended event, if any.
    pub fn last_position(&self) -> Option<Position> {
        self.events.last().map(|e| e.position)
    }
}

/// Why a decision did not commit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecisionError<E: std::error::Error + 'static> {
    /// A business rule said no.
    #[error("rejected: {0}")]
    Rejected(#[source] E),
    /// The boundary kept changing under us for every attempt.
    #[error("gave up after {attempts} attempts: concurrent decisions kept changing the state")]
    Conflict {
        /// Attempts made.
        attempts: u32,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event no longer decodes.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A new event could not be encoded.
    #[error(transparent)]
    Encode(#[from] CodecError),
}

impl<E: std::error::Error + 'static> DecisionError<E> {
    /// The domain error, if this is one.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            DecisionError::Rejected(e) => Some(e),
            _ => None,
        }
    }

    /// Whether making the same decision again may succeed: after
    /// concurrent decisions kept changing the state, or when the store was
    /// unavailable and nothing was appended. Never for a broken rule, a
    /// stored event that does not decode, or an unknown outcome (see
    /// [`StoreError::OutcomeUnknown`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            DecisionError::Conflict { .. } => true,
            DecisionError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// Whether the store could not be reached and nothing was appended.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DecisionError::Store(e) if e.is_unavailable())
    }
}
