//! The decision maker: the state (from its cache, or read and folded), the
//! decision, the conditional append, and what follows a failed condition.

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::TryStreamExt;
use tracing::Instrument;

use super::cache::{CacheKey, CacheStats, Cached, StateCache, DEFAULT_CACHE_ENTRIES};
use super::turns::Turns;
use super::{
    Decided, Decision, DecisionError, MakeOptions, RetryPolicy, UnknownEventPolicy,
    IDEMPOTENCY_TAG_KEY,
};
use crate::codec::CodecError;
use crate::event::{Event, EventRecord, Sequenced, SequencedEvent};
use crate::query::{AppendCondition, Query, QueryItem};
use crate::snapshot::{SnapshotStore, StoredSnapshot};
use crate::state::DecisionState;
use crate::store::{EventStore, ReadOptions, StoreError};
use crate::tag::{Position, Tag};

/// Runs decisions against a store: the state, the decision, an append with
/// `{query, after: the state's position}`, and on a failed condition the
/// events that came in between and another try.
///
/// Works with any [`EventStore`], including `Arc<dyn EventStore>`. Cheap to
/// clone: clones share the cache of states and the turns on hot boundaries.
///
/// # The cache of states
///
/// By default a maker keeps the states its decisions folded (up to
/// [`DEFAULT_CACHE_ENTRIES`], least recently used dropped first), each with
/// the position it is complete up to, and updates them with the events its
/// decisions append. A decision on a state in the cache skips the read: it
/// decides at once and appends with the condition "nothing matching after
/// the cached position", which the store checks as usual. If another
/// process appended to the boundary meanwhile, the condition fails, the
/// maker reads only the events after the cached position, and decides again.
/// A decision on a cached state that appends nothing (a rejection, or no
/// events) is confirmed against a fresh read first, so a stale entry can
/// never refuse a command that would succeed. Decisions with an idempotency
/// key always read (the key must be looked up in the whole log).
/// [`cache_entries`](Self::cache_entries) sizes or turns off the cache;
/// [`cache_stats`](Self::cache_stats) reports it.
///
/// # Hot boundaries
///
/// When this maker's decisions on one boundary conflict with each other,
/// the boundary is hot for two seconds: decisions on it take turns instead
/// of racing, each on the state the one before left in the cache.
#[derive(Clone, Debug)]
pub struct DecisionMaker<S> {
    store: S,
    retry: RetryPolicy,
    unknown_events: UnknownEventPolicy,
    snapshots: Option<Snapshots>,
    cache: Option<Arc<StateCache>>,
    turns: Arc<Turns>,
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

/// The state one attempt decides on.
struct View<St, E> {
    state: St,
    /// The position the state is complete up to: every event its query
    /// matches at or below it is folded in, none above.
    state_at: Option<Position>,
    /// The `after` of the append condition (at most `state_at`).
    after: Option<Position>,
    /// Whether the state was read just now (rather than taken from the
    /// cache, or guessed).
    fresh: bool,
    /// Whether the state is the decision's initial one, guessed for a
    /// boundary not in the cache.
    guessed: bool,
    /// Events folded by this attempt's reads.
    folded: u64,
    /// The snapshot the state started from, if any.
    snapshot: Option<Position>,
    /// Earlier events of the idempotency key (then the decision is a replay).
    earlier: Vec<Sequenced<E>>,
    /// Save a snapshot under this key at this position once decided.
    snapshot_due: Option<(String, Position)>,
}

/// Notes how a decision ended on its span (and in the decision counters).
fn record_outcome<E, R: std::error::Error + 'static>(
    span: &tracing::Span,
    outcome: &Result<Decided<E>, DecisionError<R>>,
) {
    let (name, error) = match outcome {
        Ok(decided) if decided.replayed => ("replayed", false),
        Ok(decided) if decided.events.is_empty() => ("unchanged", false),
        Ok(_) => ("appended", false),
        Err(DecisionError::Rejected(_)) => ("rejected", false),
        Err(DecisionError::Conflict { .. }) => ("conflict", true),
        Err(_) => ("failed", true),
    };
    crate::metrics::decision(name);
    if span.is_disabled() {
        return;
    }
    if let Ok(decided) = outcome {
        span.record("dcb.attempts", decided.attempts);
    } else if let Err(DecisionError::Conflict { attempts }) = outcome {
        span.record("dcb.attempts", *attempts);
    }
    span.record("dcb.outcome", name);
    if error {
        span.record("otel.status_code", "ERROR");
    }
}

/// What a whole decision works with, computed once.
struct Plan<'a> {
    key_tag: Option<&'a Tag>,
    queries: Vec<Query>,
    state_query: Query,
    /// Where the state is cached, when it may be.
    cache_key: Option<CacheKey>,
    /// Whether a boundary not in the cache may be guessed to have no
    /// events yet.
    may_guess: bool,
}

impl<S: EventStore> DecisionMaker<S> {
    /// A maker with the default [`RetryPolicy`] and a cache of up to
    /// [`DEFAULT_CACHE_ENTRIES`] states.
    pub fn new(store: S) -> Self {
        DecisionMaker {
            store,
            retry: RetryPolicy::default(),
            unknown_events: UnknownEventPolicy::default(),
            snapshots: None,
            cache: Some(Arc::new(StateCache::new(DEFAULT_CACHE_ENTRIES))),
            turns: Arc::default(),
        }
    }

    /// Keeps up to `entries` folded states (see the type's docs); 0 turns
    /// the cache off, so that every decision reads its state.
    pub fn cache_entries(mut self, entries: usize) -> Self {
        self.cache = (entries > 0).then(|| Arc::new(StateCache::new(entries)));
        self
    }

    /// What the cache holds and how it served; `None` when it is off.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }

    /// Turns on snapshots for snapshotted states (see
    /// [`Snapshotted`](crate::Snapshotted)): a decision that reads its state
    /// loads the state's snapshot and reads only the events after it; once
    /// a read folds at least `every` events (counted from the snapshot, or
    /// from scratch), the state is saved again at the read's head. `every`
    /// of 0 counts as 1.
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
        let span = tracing::info_span!(
            "dcb.decide",
            "dcb.decision" = std::any::type_name::<D>(),
            "dcb.attempts" = tracing::field::Empty,
            "dcb.outcome" = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
        );
        let outcome = async move {
            let key = options
                .idempotency_key
                .clone()
                .or_else(|| decision.idempotency_key());
            let key_tag = key.as_deref().map(|k| Tag::new(IDEMPOTENCY_TAG_KEY, k));
            let queries = decision.state_query().queries();
            let state_query = queries
                .iter()
                .cloned()
                .fold(Query::none(), |acc, q| acc.union(q));
            let cache_key = match &self.cache {
                Some(_) if !state_query.is_none() => {
                    Some(CacheKey::new::<D::StateQuery>(state_query.clone()))
                }
                _ => None,
            };
            // Guessing is for decisions whose condition covers their whole
            // state (so a wrong guess fails it) and that look nothing up.
            let may_guess = cache_key.is_some()
                && key_tag.is_none()
                && decision.validation_query().is_none()
                && self.snapshots.is_none();
            let mut plan = Plan {
                key_tag: key_tag.as_ref(),
                queries,
                state_query,
                cache_key,
                may_guess,
            };
            let mut turn = None;
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                if turn.is_none() {
                    if let Some(key) = &plan.cache_key {
                        turn = self.turns.take(key).await;
                    }
                }
                let outcome = self.attempt(decision, &options, &plan, attempt).await;
                // One guess per decision: after a wrong one, read.
                plan.may_guess = false;
                if matches!(
                    outcome,
                    Err(DecisionError::Store(StoreError::ConditionFailed { .. }))
                ) {
                    crate::metrics::decision_conflict();
                }
                match outcome {
                    Err(DecisionError::Store(e)) if self.should_retry(&e, attempt, &plan) => {
                        if e.is_condition_failed() {
                            if let Some(key) = &plan.cache_key {
                                self.turns.conflicted(key);
                            }
                        }
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
        .instrument(span.clone())
        .await;
        record_outcome(&span, &outcome);
        outcome
    }

    fn should_retry(&self, error: &StoreError, attempt: u32, plan: &Plan<'_>) -> bool {
        attempt < self.retry.max_attempts
            && match error {
                StoreError::ConditionFailed { .. } => true,
                StoreError::Unavailable { .. } => self.retry.retry_unavailable,
                // Safe only with a key: the retry reads the key first and
                // replays what an append that did commit wrote.
                StoreError::OutcomeUnknown { .. } => {
                    self.retry.retry_unavailable && plan.key_tag.is_some()
                }
                _ => false,
            }
    }

    async fn attempt<D: Decision>(
        &self,
        decision: &D,
        options: &MakeOptions,
        plan: &Plan<'_>,
        attempt: u32,
    ) -> Result<Decided<D::Event>, DecisionError<D::Error>> {
        let mut view = self.view(decision, plan).await?;
        if !view.earlier.is_empty() {
            return Ok(Decided {
                events: view.earlier,
                read_head: view.after,
                attempts: attempt,
                replayed: true,
                folded: view.folded,
                from_cache: false,
                snapshot: view.snapshot,
            });
        }
        let decided = loop {
            let decided = decision.process(&view.state);
            let appends = matches!(&decided, Ok(events) if !events.is_empty());
            if appends || view.fresh {
                break decided;
            }
            // Nothing to append on a cached state: the events after it may
            // change the answer, so read them and decide again.
            view = self.refresh::<D>(plan, view).await?;
        };
        let outcome = match decided {
            Ok(new_events) => {
                self.append(decision, options, plan, &view, new_events, attempt)
                    .await
            }
            Err(rejection) => Err(DecisionError::Rejected(rejection)),
        };
        // After the append, so encoding and saving never widen the window
        // between the read and the append. Whatever the outcome, the state
        // read is true at its position.
        if let Some((key, position)) = &view.snapshot_due {
            self.save_snapshot(&view.state, key, *position).await;
        }
        if view.guessed {
            if let Some(cache) = &self.cache {
                match &outcome {
                    Ok(decided) if !decided.events.is_empty() => {
                        cache.guessed::<D::StateQuery>(true)
                    }
                    Err(DecisionError::Store(StoreError::ConditionFailed { .. })) => {
                        cache.guessed::<D::StateQuery>(false)
                    }
                    _ => {}
                }
            }
        }
        match &outcome {
            Err(DecisionError::Store(StoreError::ConditionFailed { .. }))
                if !view.fresh && !view.guessed =>
            {
                // The cached state is behind: the next attempt reads what
                // came after it.
                if let (Some(cache), Some(key)) = (&self.cache, &plan.cache_key) {
                    cache.mark_stale(key, view.state_at);
                }
            }
            _ => {}
        }
        outcome
    }

    /// The state to decide on: from the cache when it is there (brought up
    /// to date first when it is known to be behind), otherwise read.
    async fn view<D: Decision>(
        &self,
        decision: &D,
        plan: &Plan<'_>,
    ) -> Result<View<D::StateQuery, D::Event>, DecisionError<D::Error>> {
        if plan.key_tag.is_none() {
            if let (Some(cache), Some(key)) = (&self.cache, &plan.cache_key) {
                if let Some(Cached {
                    state,
                    position,
                    stale,
                }) = cache.get::<D::StateQuery>(key)
                {
                    let view = View {
                        state,
                        state_at: position,
                        after: position,
                        fresh: false,
                        guessed: false,
                        folded: 0,
                        snapshot: None,
                        earlier: Vec::new(),
                        snapshot_due: None,
                    };
                    return if stale {
                        self.refresh::<D>(plan, view).await
                    } else {
                        Ok(view)
                    };
                }
            }
        }
        if let (true, Some(cache)) = (plan.may_guess, &self.cache) {
            if cache.may_guess::<D::StateQuery>() {
                // A boundary this process has not seen is most often a new
                // one: decide as if it had no events, under the condition
                // "nothing matching at all". When it has events, the
                // condition fails and the next attempt reads them.
                return Ok(View {
                    state: decision.state_query(),
                    state_at: None,
                    after: None,
                    fresh: false,
                    guessed: true,
                    folded: 0,
                    snapshot: None,
                    earlier: Vec::new(),
                    snapshot_due: None,
                });
            }
        }
        let view = self.read_state(decision, plan).await?;
        if let (Some(cache), Some(key)) = (&self.cache, &plan.cache_key) {
            if view.earlier.is_empty() {
                cache.put(key.clone(), view.state.clone(), view.state_at);
            }
        }
        Ok(view)
    }

    /// Reads the events of the state's query after the view's position and
    /// folds them in: the state is then complete up to the read's head.
    async fn refresh<D: Decision>(
        &self,
        plan: &Plan<'_>,
        mut view: View<D::StateQuery, D::Event>,
    ) -> Result<View<D::StateQuery, D::Event>, DecisionError<D::Error>> {
        let result = self
            .store
            .read(
                &plan.state_query,
                ReadOptions::forwards().after_opt(view.state_at),
            )
            .await?;
        let head = result.head;
        let mut ignored = Vec::new();
        let folded = self
            .fold::<D>(
                &mut view.state,
                &plan.queries,
                result.events,
                None,
                &mut ignored,
            )
            .await?;
        if let (Some(cache), Some(key)) = (&self.cache, &plan.cache_key) {
            cache.refreshed();
            cache.put(key.clone(), view.state.clone(), head);
        }
        view.state_at = head;
        view.after = head;
        view.fresh = true;
        view.guessed = false;
        view.folded += folded;
        Ok(view)
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
        plan: &Plan<'_>,
    ) -> Result<View<D::StateQuery, D::Event>, DecisionError<D::Error>> {
        let mut state = decision.state_query();
        let queries = &plan.queries;
        let state_query = &plan.state_query;
        let key_tag = plan.key_tag;
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
                    .read(state_query, ReadOptions::forwards().after(from))
                    .await?;
                if result.head >= Some(from) {
                    tracing::debug!(key, position = %from, "folding from a snapshot");
                    let state_head = result.head;
                    let mut earlier = Vec::new();
                    let folded = self
                        .fold::<D>(&mut state, queries, result.events, None, &mut earlier)
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
                    return Ok(View {
                        state,
                        state_at: state_head,
                        after: head,
                        fresh: true,
                        guessed: false,
                        folded,
                        snapshot: Some(from),
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
                .fold::<D>(&mut state, queries, result.events, key_tag, &mut earlier)
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
        Ok(View {
            state,
            state_at: head,
            after: head,
            fresh: true,
            guessed: false,
            folded,
            snapshot: None,
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
                self.apply::<D>(state, queries, &event)?;
                folded += 1;
            }
        }
        Ok(folded)
    }

    /// Folds one event, skipping unknown types when told to.
    fn apply<D: Decision>(
        &self,
        state: &mut D::StateQuery,
        queries: &[Query],
        event: &SequencedEvent,
    ) -> Result<(), DecisionError<D::Error>> {
        match state.apply(event, queries) {
            Err(e)
                if self.unknown_events == UnknownEventPolicy::Skip
                    && matches!(e.source, CodecError::UnknownType(_)) =>
            {
                tracing::warn!(error = %e, "skipping an event of unknown type");
                Ok(())
            }
            other => Ok(other?),
        }
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

    /// Encodes the decision's events, appends them under the condition, and
    /// brings the cached state up to the appended events.
    async fn append<D: Decision>(
        &self,
        decision: &D,
        options: &MakeOptions,
        plan: &Plan<'_>,
        view: &View<D::StateQuery, D::Event>,
        new_events: Vec<D::Event>,
        attempt: u32,
    ) -> Result<Decided<D::Event>, DecisionError<D::Error>> {
        let head = view.after;
        let decided = |events| Decided {
            events,
            read_head: head,
            attempts: attempt,
            replayed: false,
            folded: view.folded,
            from_cache: !view.fresh,
            snapshot: view.snapshot,
        };
        if new_events.is_empty() {
            return Ok(decided(Vec::new()));
        }

        let mut records = Vec::with_capacity(new_events.len());
        for event in &new_events {
            let mut record: EventRecord = event.to_record()?;
            record.metadata.correlation_id = options.correlation_id;
            record.metadata.causation_id = options.causation_id;
            record.metadata.user = options.user_metadata.clone();
            if let Some(t) = plan.key_tag {
                record.tags.push(t.clone());
            }
            records.push(record);
        }
        let validation = decision.validation_query();
        // The condition covers the whole state query only without a
        // narrower validation query: only then does a successful append
        // prove nothing else came to the state's boundary meanwhile.
        let covers_state = validation.is_none();
        let keep = match (&self.cache, &plan.cache_key) {
            (Some(_), Some(_)) if covers_state => Some(records.clone()),
            _ => None,
        };
        let check = validation.unwrap_or_else(|| plan.state_query.clone());
        let check = match plan.key_tag {
            Some(t) => check.or(QueryItem::new().tags([t.clone()])),
            None => check,
        };
        let condition = (!check.is_none()).then(|| AppendCondition::not_after(check, head));
        let envelopes: Vec<_> = records
            .iter()
            .map(|r| (r.tags.clone(), r.metadata.clone()))
            .collect();
        let appended = match self.store.append(records, condition).await {
            Ok(appended) => appended,
            Err(e) => return Err(e.into()),
        };
        let now = chrono::Utc::now();
        if let (Some(cache), Some(key)) = (&self.cache, &plan.cache_key) {
            match keep {
                Some(records) => {
                    let mut state = view.state.clone();
                    let mut folded = true;
                    for (position, record) in appended.positions().zip(records) {
                        let event = SequencedEvent {
                            position,
                            recorded_at: now,
                            record,
                        };
                        if self.apply::<D>(&mut state, &plan.queries, &event).is_err() {
                            folded = false;
                            break;
                        }
                    }
                    if folded {
                        cache.put(key.clone(), state, Some(appended.last));
                    } else {
                        cache.remove(key);
                    }
                }
                // Other events of the boundary may have come meanwhile: the
                // entry is still true at its position, but must be brought
                // up to date before it is used again.
                None => cache.mark_stale(key, view.state_at),
            }
        }
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
        Ok(decided(events))
    }
}
