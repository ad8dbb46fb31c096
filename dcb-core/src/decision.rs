//! Decisions and the decision maker: read state, decide, append under a
//! condition, retry on conflict.

use std::time::Duration;

use futures::TryStreamExt;
use tracing::Instrument;
use uuid::Uuid;

use crate::codec::CodecError;
use crate::event::{DecodeError, Event, EventRecord, Sequenced};
use crate::query::{AppendCondition, Query, QueryItem};
use crate::state::DecisionState;
use crate::store::{EventStore, ReadOptions, StoreError};
use crate::tag::{Position, Tag};

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (the first one included) when the condition fails.
    pub max_attempts: u32,
    /// The first backoff; doubled per attempt, with full jitter.
    pub base_delay: Duration,
    /// The longest backoff.
    pub max_delay: Duration,
    /// Also retry (same limits) when the store is unavailable.
    pub retry_unavailable: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 16,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(100),
            retry_unavailable: false,
        }
    }
}

impl RetryPolicy {
    /// The jittered delay before attempt `attempt + 1` (attempt counts from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let cap = exp.min(self.max_delay);
        // Jitter in [cap/2, cap] keeps racers apart without starving anyone.
        cap.mul_f64(0.5 + fastrand::f64() * 0.5)
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
    /// Options with an idempotency key.
    pub fn idempotency_key(key: impl Into<String>) -> Self {
        MakeOptions {
            idempotency_key: Some(key.into()),
            ..Default::default()
        }
    }
}

/// The outcome of a decision that did not break a rule.
#[derive(Clone, Debug, PartialEq)]
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
}

/// Runs decisions against a store: read state and head, process, append with
/// `{query, after: head}`, and on a failed condition read and decide again.
///
/// Works with any [`EventStore`], including `Arc<dyn EventStore>`.
#[derive(Clone, Debug)]
pub struct DecisionMaker<S> {
    store: S,
    retry: RetryPolicy,
    unknown_events: UnknownEventPolicy,
}

impl<S: EventStore> DecisionMaker<S> {
    /// A maker with the default [`RetryPolicy`].
    pub fn new(store: S) -> Self {
        DecisionMaker {
            store,
            retry: RetryPolicy::default(),
            unknown_events: UnknownEventPolicy::default(),
        }
    }

    /// Sets what happens when a state's query returns an event type its
    /// event enum does not know.
    pub fn on_unknown_events(mut self, policy: UnknownEventPolicy) -> Self {
        self.unknown_events = policy;
        self
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Runs `decision` with default options.
    ///
    /// # Errors
    /// See [`DecisionError`].
    pub async fn make<D: Decision>(
        &self,
        decision: D,
    ) -> Result<Decided<D::Event>, DecisionError<D::Error>> {
        self.make_with(&decision, MakeOptions::default()).await
    }

    /// Runs `decision` with options (idempotency key, metadata).
    ///
    /// # Errors
    /// See [`DecisionError`].
    pub async fn make_with<D: Decision>(
        &self,
        decision: &D,
        options: MakeOptions,
    ) -> Result<Decided<D::Event>, DecisionError<D::Error>> {
        let span = tracing::debug_span!("dcb.decide", decision = std::any::type_name::<D>());
        async move {
            let key = options
                .idempotency_key
                .clone()
                .or_else(|| decision.idempotency_key());
            let key_tag = key.as_deref().map(|k| Tag::new(IDEMPOTENCY_TAG_KEY, k));
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                match self
                    .attempt(decision, &options, key_tag.as_ref(), attempt)
                    .await
                {
                    Err(DecisionError::Store(e)) if self.should_retry(&e, attempt) => {
                        tracing::debug!(attempt, error = %e, "retrying decision");
                        tokio::time::sleep(self.retry.backoff(attempt)).await;
                    }
                    Err(DecisionError::Store(StoreError::ConditionFailed { .. })) => {
                        return Err(DecisionError::Conflict { attempts: attempt })
                    }
                    other => return other,
                }
            }
        }
        .instrument(span)
        .await
    }

    fn should_retry(&self, error: &StoreError, attempt: u32) -> bool {
        attempt < self.retry.max_attempts
            && match error {
                StoreError::ConditionFailed { .. } => true,
                StoreError::Unavailable { .. } => self.retry.retry_unavailable,
                _ => false,
            }
    }

    async fn attempt<D: Decision>(
        &self,
        decision: &D,
        options: &MakeOptions,
        key_tag: Option<&Tag>,
        attempt: u32,
    ) -> Result<Decided<D::Event>, DecisionError<D::Error>> {
        let mut state = decision.state_query();
        let queries = state.queries();
        let state_query = queries
            .iter()
            .cloned()
            .fold(Query::none(), |acc, q| acc.union(q));
        let key_item = key_tag.map(|t| QueryItem::new().tags([t.clone()]));
        // One read for the state and the idempotency key, so both are complete
        // up to the same head and the condition below covers both.
        let read_query = match &key_item {
            Some(item) => state_query.clone().or(item.clone()),
            None => state_query.clone(),
        };
        let needs_head = !read_query.is_none() || decision.validation_query().is_some();
        let mut head = None;
        let mut earlier = Vec::new();
        if !read_query.is_none() {
            let result = self
                .store
                .read(&read_query, ReadOptions::forwards())
                .await?;
            head = result.head;
            let mut events = result.events;
            while let Some(event) = events.try_next().await? {
                if key_tag.is_some_and(|t| event.tags().contains(t)) {
                    earlier.push(event.decode::<D::Event>()?);
                } else if earlier.is_empty() {
                    match state.apply(&event, &queries) {
                        Err(e)
                            if self.unknown_events == UnknownEventPolicy::Skip
                                && matches!(e.source, CodecError::UnknownType(_)) =>
                        {
                            tracing::warn!(error = %e, "skipping an event of unknown type");
                        }
                        other => other?,
                    }
                }
            }
        } else if needs_head {
            head = self.store.head().await?;
        }
        if !earlier.is_empty() {
            return Ok(Decided {
                events: earlier,
                read_head: head,
                attempts: attempt,
                replayed: true,
            });
        }

        let new_events = decision.process(&state).map_err(DecisionError::Rejected)?;
        if new_events.is_empty() {
            return Ok(Decided {
                events: Vec::new(),
                read_head: head,
                attempts: attempt,
                replayed: false,
            });
        }

        let mut records = Vec::with_capacity(new_events.len());
        for event in &new_events {
            let mut record: EventRecord = event.to_record()?;
            record.metadata.correlation_id = options.correlation_id;
            record.metadata.causation_id = options.causation_id;
            record.metadata.user = options.user_metadata.clone();
            if let Some(t) = key_tag {
                record.tags.push(t.clone());
            }
            records.push(record);
        }
        let metas: Vec<_> = records.iter().map(|r| r.metadata.clone()).collect();

        let check = decision.validation_query().unwrap_or(state_query);
        let check = match key_item {
            Some(item) => check.or(item),
            None => check,
        };
        let condition = (!check.is_none()).then(|| AppendCondition::not_after(check, head));
        let appended = self.store.append(records, condition).await?;
        let now = chrono::Utc::now();
        let events = appended
            .positions()
            .zip(new_events)
            .zip(metas)
            .map(|((position, event), metadata)| Sequenced {
                position,
                recorded_at: now,
                metadata,
                event,
            })
            .collect();
        Ok(Decided {
            events,
            read_head: head,
            attempts: attempt,
            replayed: false,
        })
    }
}
