//! Decisions and the decision maker: read state, decide, append under a
//! condition, retry on conflict.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::TryStreamExt;
use tracing::Instrument;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::codec::CodecError;
use crate::event::{DecodeError, Event, EventRecord, Sequenced, SequencedEvent};
use crate::query::{AppendCondition, Query, QueryItem};
use crate::snapshot::{SnapshotStore, StoredSnapshot};
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
    snapshots: Option<Snapshots>,
}

/// The snapshot store of a decision maker and how often it saves.
#[derive(Clone)]
struct Snapshots {
    store: Arc<dyn SnapshotStore>,
    every: u64,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// What one attempt read: the folded state, the head the condition is
/// checked after, earlier events of the idempotency key, and whether a
/// snapshot of the state is due.
struct StateRead<St, E> {
    state: St,
    state_query: Query,
    head: Option<Position>,
    earlier: Vec<Sequenced<E>>,
    /// Save a snapshot under this key at this position once decided.
    snapshot_due: Option<(String, Position)>,
}

impl<S: EventStore> DecisionMaker<S> {
    /// A maker with the default [`RetryPolicy`].
    pub fn new(store: S) -> Self {
        DecisionMaker {
            store,
            retry: RetryPolicy::default(),
            unknown_events: UnknownEventPolicy::default(),
            snapshots: None,
        }
    }

    /// Turns on snapshots for snapshotted states (see
    /// [`Snapshotted`](crate::Snapshotted)): a decision loads the state's
    /// snapshot and reads only the events after it; once a read folds at
    /// least `every` events (counted from the snapshot, or from scratch), the
    /// state is saved again at the read's head. `every` of 0 counts as 1.
    ///
    /// States without a snapshot key (plain states, tuples, `()`) are read as
    /// before. A snapshot that cannot be loaded, does not decode or lies past
    /// the log's head is ignored and the state folded from scratch; a failed
    /// save is logged. Neither fails the decision.
    pub fn with_snapshots(mut self, store: Arc<dyn SnapshotStore>, every: u32) -> Self {
        self.snapshots = Some(Snapshots {
            store,
            every: u64::from(every.max(1)),
        });
        self
    }

    /// The snapshot store, when snapshots are on.
    pub fn snapshot_store(&self) -> Option<&Arc<dyn SnapshotStore>> {
        self.snapshots.as_ref().map(|s| &s.store)
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
                        tokio::time::sleep(self.retry.backoff.delay(attempt)).await;
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
        let read = self.read_state(decision, key_tag).await?;
        if !read.earlier.is_empty() {
            return Ok(Decided {
                events: read.earlier,
                read_head: read.head,
                attempts: attempt,
                replayed: true,
            });
        }
        let outcome = self
            .decide_and_append(
                decision,
                options,
                key_tag,
                &read.state,
                read.state_query,
                read.head,
                attempt,
            )
            .await;
        // After the append, so encoding and saving never widen the window
        // between the read and the append. Whatever the outcome, the state
        // read is true at its position.
        if let Some((key, position)) = read.snapshot_due {
            self.save_snapshot(&read.state, &key, position).await;
        }
        outcome
    }

    /// Reads and folds the decision's state and looks up the idempotency
    /// key.
    ///
    /// Without a snapshot: one read of `state query ∪ key item` from the
    /// start, so both are complete up to the same head.
    ///
    /// With a snapshot at `P`: the state query is read after `P` (its head
    /// `H1` is the store's head, so the state is complete up to `H1`), then
    /// the key item is read over the whole log (head `H2`). The condition is
    /// checked after `min(H1, H2)`, which both reads are complete up to; with
    /// a store whose head only grows, that is `H1`, so snapshots add no
    /// spurious conflicts. A key event landing between the reads is either
    /// seen by the second read (a replay) or fails the condition.
    async fn read_state<D: Decision>(
        &self,
        decision: &D,
        key_tag: Option<&Tag>,
    ) -> Result<StateRead<D::StateQuery, D::Event>, DecisionError<D::Error>> {
        let mut state = decision.state_query();
        let queries = state.queries();
        let state_query = queries
            .iter()
            .cloned()
            .fold(Query::none(), |acc, q| acc.union(q));
        let key_item = key_tag.map(|t| QueryItem::new().tags([t.clone()]));
        let snapshots = self.snapshots.as_ref();
        let snapshot_key = match snapshots {
            Some(_) if !state_query.is_none() => state.snapshot_key(),
            _ => None,
        };

        if let (Some(snapshots), Some(key)) = (snapshots, &snapshot_key) {
            let mut loaded = None;
            let mut touched = false;
            match snapshots.store.load(key).await {
                Ok(Some(snapshot)) => {
                    touched = true;
                    if state.restore_snapshot(&snapshot.payload) {
                        loaded = Some(snapshot.position);
                    } else {
                        tracing::warn!(key, "ignoring a snapshot that does not restore");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(key, error = %e, "cannot load a snapshot"),
            }
            if let Some(from) = loaded {
                let result = self
                    .store
                    .read(&state_query, ReadOptions::forwards().after(from))
                    .await?;
                if result.head >= Some(from) {
                    tracing::debug!(key, position = %from, "folding from a snapshot");
                    let state_head = result.head;
                    let mut earlier = Vec::new();
                    let folded = self
                        .fold::<D>(&mut state, &queries, result.events, None, &mut earlier)
                        .await?;
                    let mut head = state_head;
                    if let Some(item) = &key_item {
                        let keyed = self
                            .store
                            .read(&Query::from_items([item.clone()]), ReadOptions::forwards())
                            .await?;
                        head = head.min(keyed.head);
                        let mut events = keyed.events;
                        while let Some(event) = events.try_next().await? {
                            earlier.push(event.decode::<D::Event>()?);
                        }
                    }
                    let snapshot_due = (earlier.is_empty() && folded >= snapshots.every)
                        .then(|| state_head.map(|h| (key.clone(), h)))
                        .flatten();
                    return Ok(StateRead {
                        state,
                        state_query,
                        head,
                        earlier,
                        snapshot_due,
                    });
                }
                // The snapshot is past the log's end: it belongs to another
                // log (a restored backup, a shared snapshot store). Never
                // trust it; fold from scratch.
                tracing::warn!(
                    key,
                    position = %from,
                    head = ?result.head,
                    "ignoring a snapshot past the head of the log"
                );
            }
            if touched {
                // Start from the decision's own initial state, whatever the
                // failed restore did.
                state = decision.state_query();
            }
        }

        // One read for the state and the idempotency key, so both are complete
        // up to the same head and the condition covers both.
        let read_query = match &key_item {
            Some(item) => state_query.clone().or(item.clone()),
            None => state_query.clone(),
        };
        let needs_head = !read_query.is_none() || decision.validation_query().is_some();
        let mut head = None;
        let mut earlier = Vec::new();
        let mut folded = 0;
        if !read_query.is_none() {
            let result = self
                .store
                .read(&read_query, ReadOptions::forwards())
                .await?;
            head = result.head;
            folded = self
                .fold::<D>(&mut state, &queries, result.events, key_tag, &mut earlier)
                .await?;
        } else if needs_head {
            head = self.store.head().await?;
        }
        let snapshot_due = match (snapshots, snapshot_key, head) {
            (Some(snapshots), Some(key), Some(head))
                if earlier.is_empty() && folded >= snapshots.every =>
            {
                Some((key, head))
            }
            _ => None,
        };
        Ok(StateRead {
            state,
            state_query,
            head,
            earlier,
            snapshot_due,
        })
    }

    /// Folds `events` into `state`; events carrying `key_tag` go to `earlier`
    /// instead, and once one has, nothing more is folded (the decision will
    /// be a replay). Returns how many events were folded.
    async fn fold<D: Decision>(
        &self,
        state: &mut D::StateQuery,
        queries: &[Query],
        mut events: BoxStream<'static, Result<SequencedEvent, StoreError>>,
        key_tag: Option<&Tag>,
        earlier: &mut Vec<Sequenced<D::Event>>,
    ) -> Result<u64, DecisionError<D::Error>> {
        let mut folded = 0u64;
        while let Some(event) = events.try_next().await? {
            if key_tag.is_some_and(|t| event.tags().contains(t)) {
                earlier.push(event.decode::<D::Event>()?);
            } else if earlier.is_empty() {
                match state.apply(&event, queries) {
                    Err(e)
                        if self.unknown_events == UnknownEventPolicy::Skip
                            && matches!(e.source, CodecError::UnknownType(_)) =>
                    {
                        tracing::warn!(error = %e, "skipping an event of unknown type");
                    }
                    other => other?,
                }
                folded += 1;
            }
        }
        Ok(folded)
    }

    /// Saves a snapshot of `state`, best effort.
    async fn save_snapshot<St: DecisionState>(&self, state: &St, key: &str, position: Position) {
        let Some(snapshots) = &self.snapshots else {
            return;
        };
        let Some(payload) = state.encode_snapshot() else {
            return;
        };
        match snapshots
            .store
            .save(key, StoredSnapshot { position, payload })
            .await
        {
            Ok(()) => tracing::debug!(key, position = %position, "saved a snapshot"),
            Err(e) => tracing::warn!(key, error = %e, "cannot save a snapshot"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn decide_and_append<D: Decision>(
        &self,
        decision: &D,
        options: &MakeOptions,
        key_tag: Option<&Tag>,
        state: &D::StateQuery,
        state_query: Query,
        head: Option<Position>,
        attempt: u32,
    ) -> Result<Decided<D::Event>, DecisionError<D::Error>> {
        let key_item = key_tag.map(|t| QueryItem::new().tags([t.clone()]));
        let new_events = decision.process(state).map_err(DecisionError::Rejected)?;
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
        let envelopes: Vec<_> = records
            .iter()
            .map(|r| (r.tags.clone(), r.metadata.clone()))
            .collect();

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
            .zip(envelopes)
            .map(|((position, event), (tags, metadata))| Sequenced {
                position,
                recorded_at: now,
                tags,
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
