//! Given-when-then helpers for decisions, projections and whole scenarios.
//!
//! Three levels, from the cheapest to the most complete:
//!
//! - [`TestHarness`]: `given(events).when(decision).then(events)`. Pure and
//!   synchronous, but it builds the state the way a store read would: each
//!   given event is encoded to a record (positions `1..=n`), only the records
//!   that match the decision's state query are kept, and those are decoded and
//!   folded. A wrong tag or a codec bug shows up here, not in production.
//! - [`ProjectionHarness`]: `given(events).then(read_model)` for a
//!   [`ReadModel`], with events passed through the codec and given positions.
//! - [`Scenario`]: the real [`DecisionMaker`] against an
//!   [`InMemoryEventStore`]; checks what the decision returned **and** what was
//!   actually appended, and can chain several decisions.
//!
//! Every `then*` method is `#[track_caller]`: a failed check points at the
//! line of the test, and its message shows what was given, expected and
//! produced.
//!
//! ```
//! use dcb_core::testing::TestHarness;
//! # use dcb_core::{CodecError, Decision, Event, EventSchema, EventType, Tag};
//! # #[derive(Debug, Clone, PartialEq)]
//! # enum Ping { Pinged { id: u32 } }
//! # impl Event for Ping {
//! #     const SCHEMA: &'static [EventSchema] = &[EventSchema { event_type: "Pinged", tag_keys: &["id"] }];
//! #     fn event_type(&self) -> EventType { EventType::from_static("Pinged") }
//! #     fn tags(&self) -> Vec<Tag> { match self { Ping::Pinged { id } => vec![Tag::new("id", id)] } }
//! #     fn encode(&self) -> Result<Vec<u8>, CodecError> { match self { Ping::Pinged { id } => Ok(id.to_string().into_bytes()) } }
//! #     fn decode(_: &str, p: &[u8]) -> Result<Self, CodecError> {
//! #         let id = std::str::from_utf8(p).ok().and_then(|s| s.parse().ok()).ok_or_else(|| CodecError::Decode("bad id".into()))?;
//! #         Ok(Ping::Pinged { id })
//! #     }
//! # }
//! # #[derive(Debug, PartialEq, thiserror::Error)]
//! # #[error("never")]
//! # struct Never;
//! /// A stateless decision: it reads nothing.
//! struct SendPing { id: u32 }
//!
//! impl Decision for SendPing {
//!     type Event = Ping;
//!     type StateQuery = ();
//!     type Error = Never;
//!     fn state_query(&self) {}
//!     fn process(&self, _: &()) -> Result<Vec<Ping>, Never> {
//!         Ok(vec![Ping::Pinged { id: self.id }])
//!     }
//! }
//!
//! TestHarness::given([Ping::Pinged { id: 1 }])
//!     .when(SendPing { id: 2 })
//!     .then([Ping::Pinged { id: 2 }]);
//! ```

use std::fmt::{self, Debug};
use std::marker::PhantomData;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::decision::{Decided, Decision, DecisionError, DecisionMaker, MakeOptions, RetryPolicy};
use crate::event::{Event, EventRecord, Sequenced, SequencedEvent};
use crate::listener::ReadModel;
use crate::memory::InMemoryEventStore;
use crate::query::Query;
use crate::state::DecisionState;
use crate::store::{EventStore, ReadOptions};
use crate::tag::Position;

/// Given events, already encoded, with their `Debug` text for messages.
#[derive(Clone, Debug, Default)]
struct History {
    records: Vec<EventRecord>,
    shown: Vec<String>,
}

impl History {
    #[track_caller]
    fn push_all<E: Event + Debug>(&mut self, events: impl IntoIterator<Item = E>) {
        for event in events {
            let record = match event.to_record() {
                Ok(record) => record,
                Err(e) => panic!("given event {event:?} does not encode: {e}"),
            };
            self.records.push(record);
            self.shown.push(format!("{event:?}"));
        }
    }

    /// The records as a store would return them: positions from 1.
    fn sequenced(&self, recorded_at: DateTime<Utc>) -> impl Iterator<Item = SequencedEvent> + '_ {
        self.records
            .iter()
            .enumerate()
            .map(move |(i, record)| SequencedEvent {
                position: Position(i as u64 + 1),
                recorded_at,
                record: record.clone(),
            })
    }
}

/// Formats a list of `Debug` texts one per line, indented.
struct Listing<'a>(&'a [String]);

impl fmt::Display for Listing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(" (none)");
        }
        for (i, item) in self.0.iter().enumerate() {
            write!(f, "\n    {}. {item}", i + 1)?;
        }
        Ok(())
    }
}

fn shown<T: Debug>(items: impl IntoIterator<Item = T>) -> Vec<String> {
    items.into_iter().map(|i| format!("{i:?}")).collect()
}

fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    // Keep generic arguments readable: only strip the leading module path.
    let head = full.split('<').next().unwrap_or(full);
    match head.rfind("::") {
        Some(i) => &full[i + 2..],
        None => full,
    }
}

// ---------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------

/// Given-when-then for a single [`Decision`], without a store.
///
/// `TestHarness::given(events).when(decision)` builds the decision's state the
/// way the decision maker would from a store: the given events are encoded
/// into records at positions `1..=n`, the records that do not match the
/// state's query ([`DecisionState::query`]) are dropped, and the others are
/// decoded and folded. The decision is then processed once, and its events
/// are checked with [`When::then`], [`When::then_err`] or [`When::then_assert`].
///
/// Use [`TestHarness::when`] when there is no history.
///
/// See the [module docs](self) for an example.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestHarness;

impl TestHarness {
    /// Starts with these events in the log, in order (positions `1..=n`).
    ///
    /// # Panics
    /// When an event does not encode.
    #[track_caller]
    pub fn given<E: Event + Debug>(events: impl IntoIterator<Item = E>) -> Given<E> {
        let mut history = History::default();
        history.push_all(events);
        Given {
            history,
            _event: PhantomData,
        }
    }

    /// Processes `decision` against an empty log.
    ///
    /// # Panics
    /// See [`Given::when`].
    #[track_caller]
    pub fn when<D: Decision>(decision: D) -> When<D>
    where
        D::Event: Debug,
    {
        Given::<D::Event> {
            history: History::default(),
            _event: PhantomData,
        }
        .when(decision)
    }
}

/// The log a decision will be processed against (see [`TestHarness`]).
#[must_use = "a test harness checks nothing until `.when(..).then(..)`"]
pub struct Given<E> {
    history: History,
    _event: PhantomData<fn() -> E>,
}

impl<E> Debug for Given<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Given")
            .field("events", &self.history.shown)
            .finish()
    }
}

impl<E: Event + Debug> Given<E> {
    /// Adds events of another event enum (a state may read a stream the
    /// decision does not write), after the ones given so far.
    ///
    /// # Panics
    /// When an event does not encode.
    #[track_caller]
    pub fn and_given<F: Event + Debug>(mut self, events: impl IntoIterator<Item = F>) -> Self {
        self.history.push_all(events);
        self
    }

    /// Folds the decision's state from the given events (only those its query
    /// matches, decoded through the codec) and processes the decision.
    ///
    /// The events it returns are also encoded and decoded again, so a payload
    /// that does not survive the codec fails the test in [`When::then`].
    ///
    /// # Panics
    /// When a given event matched by the state's query does not decode as the
    /// state's event type, or a produced event does not encode or decode.
    #[track_caller]
    pub fn when<D: Decision<Event = E>>(self, decision: D) -> When<D> {
        let mut state = decision.state_query();
        let queries = state.queries();
        let query = state.query();
        let mut read = Vec::new();
        for event in self.history.sequenced(Utc::now()) {
            if !query.matches(event.event_type().as_str(), event.tags()) {
                continue;
            }
            let index = event.position.get() as usize - 1;
            if let Err(e) = state.apply(&event, &queries) {
                panic!(
                    "given event #{} {} cannot be folded into the state of {}: {e}",
                    index + 1,
                    self.history.shown[index],
                    short_type_name::<D>(),
                );
            }
            read.push(self.history.shown[index].clone());
        }
        let result = decision.process(&state);
        let round_tripped = match &result {
            Ok(events) => events.iter().map(round_trip).collect(),
            Err(_) => Vec::new(),
        };
        When {
            given: self.history.shown,
            read,
            query,
            state,
            result,
            round_tripped,
        }
    }
}

#[track_caller]
fn round_trip<E: Event + Debug>(event: &E) -> E {
    let record = match event.to_record() {
        Ok(record) => record,
        Err(e) => panic!("the decision produced {event:?}, which does not encode: {e}"),
    };
    match record.decode::<E>() {
        Ok(decoded) => decoded,
        Err(e) => panic!(
            "the decision produced {event:?}, which encodes as {} {:?} but does not decode: {e}",
            record.event_type,
            String::from_utf8_lossy(&record.payload),
        ),
    }
}

/// A decision processed against the given events: check the outcome with
/// [`When::then`], [`When::then_err`] or [`When::then_assert`].
#[must_use = "nothing is checked until `.then(..)`, `.then_err(..)` or `.then_assert(..)`"]
pub struct When<D: Decision> {
    given: Vec<String>,
    read: Vec<String>,
    query: Query,
    state: D::StateQuery,
    result: Result<Vec<D::Event>, D::Error>,
    round_tripped: Vec<D::Event>,
}

impl<D: Decision> Debug for When<D>
where
    D::Event: Debug,
    D::Error: Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("When")
            .field("decision", &short_type_name::<D>())
            .field("given", &self.given)
            .field("read", &self.read)
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}

impl<D: Decision> When<D>
where
    D::Event: Debug,
{
    /// The state the decision was processed with.
    pub fn state(&self) -> &D::StateQuery {
        &self.state
    }

    /// What the decision returned.
    pub fn result(&self) -> Result<&[D::Event], &D::Error> {
        self.result.as_deref()
    }

    /// Consumes the harness and returns what the decision returned.
    pub fn into_result(self) -> Result<Vec<D::Event>, D::Error> {
        self.result
    }

    fn context(&self) -> String {
        format!(
            "  when: {}\n  given:{}\n  read by the state query:{}\n  state query: {:?}",
            short_type_name::<D>(),
            Listing(&self.given),
            Listing(&self.read),
            self.query,
        )
    }

    /// Checks that the decision succeeded with exactly `expected`, in order,
    /// and that those events survive the codec unchanged.
    ///
    /// # Panics
    /// When the decision failed, returned other events, or an event changed
    /// through encoding and decoding.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = D::Event>)
    where
        D::Event: PartialEq,
        D::Error: Debug,
    {
        let expected: Vec<D::Event> = expected.into_iter().collect();
        match &self.result {
            Err(e) => panic!(
                "expected the decision to succeed, but it failed\n{}\n  expected events:{}\n  actual error: {e:?}",
                self.context(),
                Listing(&shown(&expected)),
            ),
            Ok(actual) if *actual != expected => panic!(
                "the decision produced other events than expected\n{}\n  expected events:{}\n  actual events:{}",
                self.context(),
                Listing(&shown(&expected)),
                Listing(&shown(actual)),
            ),
            Ok(actual) => {
                if let Some((i, (before, after))) = actual
                    .iter()
                    .zip(&self.round_tripped)
                    .enumerate()
                    .find(|(_, (a, b))| a != b)
                {
                    panic!(
                        "event #{} changed through the codec\n{}\n  produced: {before:?}\n  decoded:  {after:?}",
                        i + 1,
                        self.context(),
                    );
                }
            }
        }
    }

    /// Checks that the decision was rejected with `expected`.
    ///
    /// # Panics
    /// When the decision succeeded or failed with another error.
    #[track_caller]
    pub fn then_err(self, expected: D::Error)
    where
        D::Error: PartialEq + Debug,
    {
        match &self.result {
            Ok(events) => panic!(
                "expected the decision to fail, but it succeeded\n{}\n  expected error: {expected:?}\n  actual events:{}",
                self.context(),
                Listing(&shown(events)),
            ),
            Err(actual) if *actual != expected => panic!(
                "the decision failed with another error than expected\n{}\n  expected error: {expected:?}\n  actual error:   {actual:?}",
                self.context(),
            ),
            Err(_) => {}
        }
    }

    /// Hands the outcome to `check` for custom assertions.
    ///
    /// ```
    /// # use dcb_core::testing::TestHarness;
    /// # use dcb_core::{CodecError, Decision, Event, EventSchema, EventType, Tag};
    /// # #[derive(Debug, Clone, PartialEq)]
    /// # struct Noted(u8);
    /// # impl Event for Noted {
    /// #     const SCHEMA: &'static [EventSchema] = &[EventSchema { event_type: "Noted", tag_keys: &[] }];
    /// #     fn event_type(&self) -> EventType { EventType::from_static("Noted") }
    /// #     fn tags(&self) -> Vec<Tag> { vec![] }
    /// #     fn encode(&self) -> Result<Vec<u8>, CodecError> { Ok(vec![self.0]) }
    /// #     fn decode(_: &str, p: &[u8]) -> Result<Self, CodecError> { Ok(Noted(p[0])) }
    /// # }
    /// # #[derive(Debug, thiserror::Error)]
    /// # #[error("never")]
    /// # struct Never;
    /// # struct Note;
    /// # impl Decision for Note {
    /// #     type Event = Noted; type StateQuery = (); type Error = Never;
    /// #     fn state_query(&self) {}
    /// #     fn process(&self, _: &()) -> Result<Vec<Noted>, Never> { Ok(vec![Noted(1), Noted(2)]) }
    /// # }
    /// TestHarness::when(Note).then_assert(|result| {
    ///     let events = result.expect("accepted");
    ///     assert_eq!(events.len(), 2);
    /// });
    /// ```
    #[track_caller]
    pub fn then_assert(self, check: impl FnOnce(Result<&[D::Event], &D::Error>)) {
        check(self.result.as_deref());
    }
}

// ---------------------------------------------------------------------------
// Projections
// ---------------------------------------------------------------------------

/// Given-when-then for a [`ReadModel`]: fold events, compare the model.
///
/// Each given event is encoded, given a position (`1..=n`), and delivered to
/// the model decoded as its [`ReadModel::Event`] type, exactly as a runner
/// would deliver it; events of types the model does not handle are skipped.
///
/// ```
/// use dcb_core::testing::ProjectionHarness;
/// use dcb_core::{ReadModel, Sequenced};
/// # use dcb_core::{CodecError, Event, EventSchema, EventType, Tag};
/// # #[derive(Debug, Clone, PartialEq)]
/// # struct Visited(u8);
/// # impl Event for Visited {
/// #     const SCHEMA: &'static [EventSchema] = &[EventSchema { event_type: "Visited", tag_keys: &[] }];
/// #     fn event_type(&self) -> EventType { EventType::from_static("Visited") }
/// #     fn tags(&self) -> Vec<Tag> { vec![] }
/// #     fn encode(&self) -> Result<Vec<u8>, CodecError> { Ok(vec![self.0]) }
/// #     fn decode(_: &str, p: &[u8]) -> Result<Self, CodecError> { Ok(Visited(p[0])) }
/// # }
///
/// #[derive(Debug, Default, PartialEq)]
/// struct Visits { count: usize, last_position: u64 }
///
/// impl ReadModel for Visits {
///     type Event = Visited;
///     fn apply(&mut self, event: &Sequenced<Visited>) {
///         self.count += 1;
///         self.last_position = event.position.get();
///     }
/// }
///
/// ProjectionHarness::given([Visited(1), Visited(2)])
///     .then(Visits { count: 2, last_position: 2 });
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ProjectionHarness;

impl ProjectionHarness {
    /// Starts with these events in the log, in order (positions `1..=n`).
    ///
    /// # Panics
    /// When an event does not encode.
    #[track_caller]
    pub fn given<E: Event + Debug>(events: impl IntoIterator<Item = E>) -> ProjectionGiven {
        let mut history = History::default();
        history.push_all(events);
        ProjectionGiven { history }
    }
}

/// The events a read model will be folded from (see [`ProjectionHarness`]).
#[derive(Debug, Clone)]
#[must_use = "a projection harness checks nothing until `.then(..)` or `.then_assert(..)`"]
pub struct ProjectionGiven {
    history: History,
}

impl ProjectionGiven {
    /// Adds events (of any event enum) after the ones given so far.
    ///
    /// # Panics
    /// When an event does not encode.
    #[track_caller]
    pub fn and_given<E: Event + Debug>(mut self, events: impl IntoIterator<Item = E>) -> Self {
        self.history.push_all(events);
        self
    }

    /// Folds the given events into `R::default()` and returns the model.
    ///
    /// # Panics
    /// When an event of a type `R` handles does not decode.
    #[track_caller]
    pub fn project<R: ReadModel + Default>(&self) -> R {
        let mut model = R::default();
        for event in self.history.sequenced(Utc::now()) {
            if !<R::Event as Event>::handles(event.event_type().as_str()) {
                continue;
            }
            match event.decode::<R::Event>() {
                Ok(decoded) => model.apply(&decoded),
                Err(e) => panic!(
                    "given event #{} {} does not decode for read model {}: {e}",
                    event.position,
                    self.history.shown[event.position.get() as usize - 1],
                    short_type_name::<R>(),
                ),
            }
        }
        model
    }

    /// Checks that folding the given events yields `expected`.
    ///
    /// # Panics
    /// When the model differs, or an event does not decode.
    #[track_caller]
    pub fn then<R: ReadModel + Default + PartialEq + Debug>(self, expected: R) {
        let actual: R = self.project();
        if actual != expected {
            panic!(
                "the read model differs from the expected one\n  read model: {}\n  given:{}\n  expected: {expected:#?}\n  actual:   {actual:#?}",
                short_type_name::<R>(),
                Listing(&self.history.shown),
            );
        }
    }

    /// Folds the given events and hands the model to `check`.
    ///
    /// # Panics
    /// When an event does not decode, or `check` panics.
    #[track_caller]
    pub fn then_assert<R: ReadModel + Default>(self, check: impl FnOnce(&R)) {
        let model: R = self.project();
        check(&model);
    }
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

type Outcome<D> = Result<Decided<<D as Decision>::Event>, DecisionError<<D as Decision>::Error>>;

/// The real [`DecisionMaker`] against an [`InMemoryEventStore`]: given events
/// are appended to the store, the decision is made (read, process,
/// conditional append, retries), and the check looks at both what the maker
/// returned and what the store now holds, decoded through the codec.
///
/// A scenario can go on after a check: every `then*` returns the scenario, so
/// the next decision runs against the same store.
///
/// ```
/// # use dcb_core::{CodecError, Decision, Event, EventSchema, EventType, Tag, StateQuery, StateMutate, Query, MakeOptions};
/// use dcb_core::testing::Scenario;
/// # #[derive(Debug, Clone, PartialEq)]
/// # enum Light { SwitchedOn { room: String } }
/// # impl Event for Light {
/// #     const SCHEMA: &'static [EventSchema] = &[EventSchema { event_type: "SwitchedOn", tag_keys: &["room"] }];
/// #     fn event_type(&self) -> EventType { EventType::from_static("SwitchedOn") }
/// #     fn tags(&self) -> Vec<Tag> { match self { Light::SwitchedOn { room } => vec![Tag::new("room", room)] } }
/// #     fn encode(&self) -> Result<Vec<u8>, CodecError> { match self { Light::SwitchedOn { room } => Ok(room.clone().into_bytes()) } }
/// #     fn decode(_: &str, p: &[u8]) -> Result<Self, CodecError> { Ok(Light::SwitchedOn { room: String::from_utf8_lossy(p).into() }) }
/// # }
/// # #[derive(Clone)] struct Lit { room: String, on: bool }
/// # impl StateQuery for Lit {
/// #     const NAME: &'static str = "Lit";
/// #     type Event = Light;
/// #     fn query(&self) -> Query { dcb_core::state_query_for::<Light>(&[Tag::new("room", &self.room)]) }
/// # }
/// # impl StateMutate for Lit { fn mutate(&mut self, _: Light) { self.on = true } }
/// # #[derive(Debug, PartialEq, thiserror::Error)]
/// # #[error("already on")]
/// # struct AlreadyOn;
/// struct SwitchOn { room: String }
///
/// impl Decision for SwitchOn {
///     type Event = Light;
///     type StateQuery = Lit;
///     type Error = AlreadyOn;
///     fn state_query(&self) -> Lit { Lit { room: self.room.clone(), on: false } }
///     fn process(&self, lit: &Lit) -> Result<Vec<Light>, AlreadyOn> {
///         if lit.on { return Err(AlreadyOn) }
///         Ok(vec![Light::SwitchedOn { room: self.room.clone() }])
///     }
/// }
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let on = |room: &str| Light::SwitchedOn { room: room.into() };
/// let scenario = Scenario::new()
///     .given([on("hall")])
///     .when(SwitchOn { room: "kitchen".into() }).await
///     .then([on("kitchen")])
///     .when(SwitchOn { room: "kitchen".into() }).await
///     .then_err(AlreadyOn);
/// assert_eq!(scenario.store().all_events().len(), 2);
///
/// // the same idempotency key twice: the second call appends nothing
/// Scenario::new()
///     .when_with(SwitchOn { room: "attic".into() }, MakeOptions::new().idempotency_key("req-1")).await
///     .then([on("attic")])
///     .when_with(SwitchOn { room: "attic".into() }, MakeOptions::new().idempotency_key("req-1")).await
///     .then_replayed([on("attic")]);
/// # });
/// ```
#[derive(Debug)]
pub struct Scenario {
    maker: DecisionMaker<Arc<InMemoryEventStore>>,
    pending: History,
    given: Vec<String>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario {
    /// A scenario over a fresh, empty store.
    pub fn new() -> Self {
        Self::with_store(Arc::new(InMemoryEventStore::new()))
    }

    /// A scenario over an existing store (for example one filled by other
    /// means, or shared with a listener under test).
    pub fn with_store(store: Arc<InMemoryEventStore>) -> Self {
        Scenario {
            maker: DecisionMaker::new(store),
            pending: History::default(),
            given: Vec::new(),
        }
    }

    /// Replaces the decision maker's retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.maker = self.maker.with_retry(retry);
        self
    }

    /// The store, for extra checks.
    pub fn store(&self) -> &Arc<InMemoryEventStore> {
        self.maker.store()
    }

    /// The decision maker the scenario runs decisions with.
    pub fn maker(&self) -> &DecisionMaker<Arc<InMemoryEventStore>> {
        &self.maker
    }

    /// Adds events (of any event enum) to the log; they are appended, in one
    /// batch, just before the next decision runs.
    ///
    /// # Panics
    /// When an event does not encode.
    #[track_caller]
    pub fn given<E: Event + Debug>(mut self, events: impl IntoIterator<Item = E>) -> Self {
        let before = self.pending.shown.len();
        self.pending.push_all(events);
        self.given
            .extend(self.pending.shown[before..].iter().cloned());
        self
    }

    /// Appends the pending given events, then makes `decision`.
    ///
    /// # Panics
    /// When the store rejects the given events.
    pub async fn when<D: Decision>(self, decision: D) -> ScenarioOutcome<D> {
        self.when_with(decision, MakeOptions::default()).await
    }

    /// Like [`Scenario::when`], with options (idempotency key, metadata).
    ///
    /// # Panics
    /// When the store rejects the given events.
    pub async fn when_with<D: Decision>(
        mut self,
        decision: D,
        options: MakeOptions,
    ) -> ScenarioOutcome<D> {
        let pending = std::mem::take(&mut self.pending);
        let store = self.maker.store();
        if !pending.records.is_empty() {
            if let Err(e) = store.append(pending.records, None).await {
                panic!("the store rejected the given events: {e}");
            }
        }
        let head = store.head().await.expect("the in-memory store never fails");
        let result = self.maker.make_with(&decision, options).await;
        let appended = store
            .read(&Query::all(), ReadOptions::forwards().after_opt(head))
            .await
            .expect("the in-memory store never fails")
            .collect()
            .await
            .expect("the in-memory store never fails")
            .1;
        ScenarioOutcome {
            scenario: self,
            result,
            appended,
        }
    }
}

/// The outcome of a decision in a [`Scenario`]: check it with
/// [`then`](ScenarioOutcome::then), [`then_err`](ScenarioOutcome::then_err),
/// [`then_replayed`](ScenarioOutcome::then_replayed) or
/// [`then_assert`](ScenarioOutcome::then_assert), each of which returns the
/// scenario to go on with.
#[must_use = "nothing is checked until `.then(..)`, `.then_err(..)`, `.then_replayed(..)` or `.then_assert(..)`"]
pub struct ScenarioOutcome<D: Decision> {
    scenario: Scenario,
    result: Outcome<D>,
    appended: Vec<SequencedEvent>,
}

impl<D: Decision> Debug for ScenarioOutcome<D>
where
    D::Event: Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScenarioOutcome")
            .field("decision", &short_type_name::<D>())
            .field("result", &self.result)
            .field("appended", &self.appended)
            .finish_non_exhaustive()
    }
}

impl<D: Decision> ScenarioOutcome<D>
where
    D::Event: Debug,
{
    /// What the decision maker returned.
    pub fn result(&self) -> Result<&Decided<D::Event>, &DecisionError<D::Error>> {
        self.result.as_ref()
    }

    /// The records this decision appended to the store (read back from it).
    pub fn appended_records(&self) -> &[SequencedEvent] {
        &self.appended
    }

    /// The store, for extra checks.
    pub fn store(&self) -> &Arc<InMemoryEventStore> {
        self.scenario.store()
    }

    /// Ends the checks and returns the scenario without looking at the outcome.
    pub fn into_scenario(self) -> Scenario {
        self.scenario
    }

    fn context(&self) -> String {
        format!(
            "  when: {}\n  given:{}",
            short_type_name::<D>(),
            Listing(&self.scenario.given),
        )
    }

    #[track_caller]
    fn appended_events(&self) -> Vec<Sequenced<D::Event>> {
        self.appended
            .iter()
            .map(|record| match record.decode::<D::Event>() {
                Ok(event) => event,
                Err(e) => panic!(
                    "an appended event does not decode: {e}\n{}\n  record: {record:?}",
                    self.context()
                ),
            })
            .collect()
    }

    /// Checks that the decision committed exactly `expected`: both the events
    /// the maker returned and the ones the store now holds after the given
    /// events (decoded through the codec), at the same positions.
    ///
    /// # Panics
    /// When the decision failed or was replayed, or the returned or stored
    /// events differ from `expected`.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = D::Event>) -> Scenario
    where
        D::Event: PartialEq,
    {
        let expected: Vec<D::Event> = expected.into_iter().collect();
        let decided = match &self.result {
            Err(e) => panic!(
                "expected the decision to commit, but it failed\n{}\n  expected events:{}\n  actual error: {e:?}",
                self.context(),
                Listing(&shown(&expected)),
            ),
            Ok(decided) => decided,
        };
        let returned: Vec<&D::Event> = decided.events.iter().map(|e| &e.event).collect();
        if decided.replayed {
            panic!(
                "expected the decision to commit, but it was replayed from an earlier call with the same idempotency key\n{}\n  expected events:{}\n  replayed events:{}",
                self.context(),
                Listing(&shown(&expected)),
                Listing(&shown(&returned)),
            );
        }
        if returned.len() != expected.len() || returned.iter().zip(&expected).any(|(a, e)| *a != e)
        {
            panic!(
                "the decision committed other events than expected\n{}\n  expected events:{}\n  actual events:{}",
                self.context(),
                Listing(&shown(&expected)),
                Listing(&shown(&returned)),
            );
        }
        let stored = self.appended_events();
        let stored_events: Vec<&D::Event> = stored.iter().map(|e| &e.event).collect();
        if stored_events.len() != expected.len()
            || stored_events.iter().zip(&expected).any(|(a, e)| *a != e)
        {
            panic!(
                "the store holds other events than the decision returned (read back and decoded through the codec)\n{}\n  expected events:{}\n  stored events:{}",
                self.context(),
                Listing(&shown(&expected)),
                Listing(&shown(&stored_events)),
            );
        }
        let returned_positions: Vec<Position> = decided.events.iter().map(|e| e.position).collect();
        let stored_positions: Vec<Position> = stored.iter().map(|e| e.position).collect();
        if returned_positions != stored_positions {
            panic!(
                "the decision returned other positions than the store holds\n{}\n  returned: {returned_positions:?}\n  stored:   {stored_positions:?}",
                self.context(),
            );
        }
        self.scenario
    }

    /// Checks that the decision was rejected with `expected` and appended
    /// nothing.
    ///
    /// # Panics
    /// When the decision committed, failed otherwise, or something was
    /// appended.
    #[track_caller]
    pub fn then_err(self, expected: D::Error) -> Scenario
    where
        D::Error: PartialEq,
    {
        match &self.result {
            Ok(decided) => panic!(
                "expected the decision to be rejected, but it committed\n{}\n  expected error: {expected:?}\n  actual events:{}",
                self.context(),
                Listing(&shown(decided.events.iter().map(|e| &e.event))),
            ),
            Err(DecisionError::Rejected(actual)) if *actual == expected => {}
            Err(actual) => panic!(
                "the decision failed with another error than expected\n{}\n  expected: Rejected({expected:?})\n  actual:   {actual:?}",
                self.context(),
            ),
        }
        self.expect_nothing_appended();
        self.scenario
    }

    /// Checks that the decision was a replay of an earlier call with the same
    /// idempotency key: it returned `expected` (the earlier events), marked
    /// `replayed`, and appended nothing.
    ///
    /// # Panics
    /// When the decision failed, was not replayed, returned other events, or
    /// appended something.
    #[track_caller]
    pub fn then_replayed(self, expected: impl IntoIterator<Item = D::Event>) -> Scenario
    where
        D::Event: PartialEq,
    {
        let expected: Vec<D::Event> = expected.into_iter().collect();
        let decided = match &self.result {
            Err(e) => panic!(
                "expected the decision to be replayed, but it failed\n{}\n  actual error: {e:?}",
                self.context(),
            ),
            Ok(decided) => decided,
        };
        let returned: Vec<&D::Event> = decided.events.iter().map(|e| &e.event).collect();
        if !decided.replayed {
            panic!(
                "expected the decision to be replayed, but it ran again\n{}\n  returned events:{}",
                self.context(),
                Listing(&shown(&returned)),
            );
        }
        if returned.len() != expected.len() || returned.iter().zip(&expected).any(|(a, e)| *a != e)
        {
            panic!(
                "the replay returned other events than expected\n{}\n  expected events:{}\n  replayed events:{}",
                self.context(),
                Listing(&shown(&expected)),
                Listing(&shown(&returned)),
            );
        }
        self.expect_nothing_appended();
        self.scenario
    }

    /// Hands the maker's result to `check` (the store is still reachable
    /// through [`ScenarioOutcome::store`] before this call, and through the
    /// returned scenario after it).
    #[track_caller]
    pub fn then_assert(
        self,
        check: impl FnOnce(Result<&Decided<D::Event>, &DecisionError<D::Error>>),
    ) -> Scenario {
        check(self.result.as_ref());
        self.scenario
    }

    #[track_caller]
    fn expect_nothing_appended(&self) {
        if !self.appended.is_empty() {
            panic!(
                "expected nothing to be appended, but the store holds new events\n{}\n  appended: {:#?}",
                self.context(),
                self.appended,
            );
        }
    }
}
