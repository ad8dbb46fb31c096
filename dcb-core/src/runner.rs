//! An in-memory listener runner over [`InMemoryEventStore`], with the
//! semantics of the Postgres runner (position order, batches, checkpoints,
//! retries with capped backoff, parking, status, `wait_until`, reset and
//! rebuild, graceful shutdown) for tests and embedded use. Checkpoints live
//! in memory, and one process runs everything, so there is no leadership.
//!
//! The runner is a future you drive (spawn it on your runtime); the
//! [`MemoryRunnerHandle`] talks to it.
//!
//! ```
//! # tokio_test_block_on(async {
//! use std::sync::{Arc, RwLock};
//! use dcb_core::runner::InMemoryRunner;
//! use dcb_core::{EventStore, InMemoryEventStore, ReadModel, Sequenced};
//! # #[derive(Debug)] struct Opened;
//! # impl dcb_core::Event for Opened {
//! #   const SCHEMA: &'static [dcb_core::EventSchema] = &[dcb_core::EventSchema { event_type: "Opened", tag_keys: &[] }];
//! #   fn event_type(&self) -> dcb_core::EventType { "Opened".into() }
//! #   fn tags(&self) -> Vec<dcb_core::Tag> { vec![] }
//! #   fn encode(&self) -> Result<Vec<u8>, dcb_core::CodecError> { Ok(vec![]) }
//! #   fn decode(_: &str, _: &[u8]) -> Result<Self, dcb_core::CodecError> { Ok(Opened) }
//! # }
//!
//! #[derive(Default)]
//! struct OpenedCount(u64);
//! impl ReadModel for OpenedCount {
//!     type Event = Opened;
//!     fn apply(&mut self, _: &Sequenced<Opened>) { self.0 += 1; }
//! }
//!
//! let store = Arc::new(InMemoryEventStore::new());
//! let count = Arc::new(RwLock::new(OpenedCount::default()));
//! let (runner, handle) = InMemoryRunner::new(store.clone())
//!     .read_model("opened-count", count.clone())
//!     .build();
//! let task = tokio::spawn(runner.run());
//!
//! let appended = store.append(vec![dcb_core::Event::to_record(&Opened).unwrap()], None).await.unwrap();
//! handle.wait_until("opened-count", appended.last).await.unwrap();
//! assert_eq!(count.read().unwrap().0, 1);
//! handle.shutdown().await;
//! task.await.unwrap();
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::event::{Event, SequencedEvent};
use crate::listener::{Listener, ReadModel};
use crate::memory::InMemoryEventStore;
use crate::query::Query;
use crate::store::{BoxError, EventStore, ReadOptions};
use crate::tag::{EventType, Position};

/// Capped exponential backoff between attempts on a failing event.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// The factor between consecutive waits (at least 1).
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The wait after failed attempt number `attempt` (1-based).
    ///
    /// ```
    /// use std::time::Duration;
    /// use dcb_core::runner::Backoff;
    /// let b = Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(50), multiplier: 2.0 };
    /// assert_eq!(b.delay(1), Duration::from_millis(10));
    /// assert_eq!(b.delay(3), Duration::from_millis(40));
    /// assert_eq!(b.delay(9), Duration::from_millis(50));
    /// ```
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let factor = self.multiplier.max(1.0).powi(exponent);
        let secs = (self.initial.as_secs_f64() * factor).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }
}

/// What a listener is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListenerState {
    /// The runner has not started it yet.
    Starting,
    /// Another instance leads it; this one waits to take over.
    Standby,
    /// Handling a backlog.
    Running,
    /// Caught up, waiting for new events.
    Idle,
    /// A handler failed; it retries with backoff and parks the event after
    /// the configured attempts.
    Retrying,
    /// A handler failed; it retries with backoff and never parks, so the
    /// listener is blocked until the handler succeeds.
    Blocked,
    /// Not running.
    Stopped,
}

impl ListenerState {
    /// A stable lower-case name (`"idle"`, `"blocked"`...).
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerState::Starting => "starting",
            ListenerState::Standby => "standby",
            ListenerState::Running => "running",
            ListenerState::Idle => "idle",
            ListenerState::Retrying => "retrying",
            ListenerState::Blocked => "blocked",
            ListenerState::Stopped => "stopped",
        }
    }

    /// The state named `name` by [`ListenerState::as_str`]; unknown names
    /// read as [`ListenerState::Stopped`].
    pub fn from_name(name: &str) -> Self {
        match name {
            "starting" => ListenerState::Starting,
            "standby" => ListenerState::Standby,
            "running" => ListenerState::Running,
            "idle" => ListenerState::Idle,
            "retrying" => ListenerState::Retrying,
            "blocked" => ListenerState::Blocked,
            _ => ListenerState::Stopped,
        }
    }
}

/// How many attempts a listener makes on an event before parking it, unless
/// told otherwise.
pub const DEFAULT_PARK_AFTER: u32 = 10;

/// Settings of an [`InMemoryRunner`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryRunnerConfig {
    /// At most this many events per read. Default 100.
    pub batch_size: usize,
    /// Waits between attempts on a failing event.
    pub backoff: Backoff,
}

impl Default for MemoryRunnerConfig {
    fn default() -> Self {
        MemoryRunnerConfig {
            batch_size: 100,
            backoff: Backoff::default(),
        }
    }
}

/// A listener's status in an [`InMemoryRunner`].
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryListenerStatus {
    /// The listener id.
    pub id: String,
    /// Its checkpoint: every event up to here is handled (or parked).
    pub position: Option<Position>,
    /// The head of the log.
    pub head: Option<Position>,
    /// `head - position`, in positions.
    pub lag: u64,
    /// What it is doing.
    pub state: ListenerState,
    /// Failed attempts on the event it is stuck on (0 when healthy).
    pub attempts: u32,
    /// The position of the event it is stuck on.
    pub failing_position: Option<Position>,
    /// The last handler error (kept after recovery, cleared by a reset).
    pub last_error: Option<String>,
    /// When that error happened.
    pub last_error_at: Option<DateTime<Utc>>,
    /// How many events it parked.
    pub parked: u64,
    /// Events handled since the runner started.
    pub handled: u64,
}

/// An event a listener gave up on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryParkedEvent {
    /// Where the event is in the log.
    pub position: Position,
    /// Its stored type.
    pub event_type: EventType,
    /// The last error.
    pub error: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

/// Progress of [`MemoryRunnerHandle::rebuild`].
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryRebuildProgress {
    /// The listener id.
    pub listener_id: String,
    /// Its checkpoint now.
    pub position: Position,
    /// The head when the rebuild started.
    pub target: Position,
    /// Events handled since the rebuild started.
    pub events_done: u64,
    /// Events per second so far.
    pub events_per_sec: f64,
    /// Time since the rebuild started.
    pub elapsed: Duration,
}

/// What the in-memory runner's API can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryRunnerError {
    /// No listener with this id is registered.
    #[error("no listener {0:?} is registered with this runner")]
    UnknownListener(String),
    /// The runner has stopped (or was never run).
    #[error("the listener runner is not running")]
    NotRunning,
    /// [`MemoryRunnerHandle::wait_until_timeout`] gave up.
    #[error("listener {listener:?} did not reach {target} in time (at {reached:?})")]
    Timeout {
        /// The listener id.
        listener: String,
        /// The position waited for.
        target: Position,
        /// Where it got to.
        reached: Option<Position>,
    },
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A listener with its event type erased.
trait Handler: Send + Sync {
    fn handle<'a>(&'a self, event: &'a SequencedEvent) -> BoxFuture<'a, Result<(), BoxError>>;
    fn reset(&self);
}

struct ListenerHandler<L>(L);

impl<L: Listener> Handler for ListenerHandler<L> {
    fn handle<'a>(&'a self, event: &'a SequencedEvent) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let decoded = event.decode::<L::Event>()?;
            self.0.handle(decoded).await
        })
    }

    fn reset(&self) {}
}

struct ModelHandler<R>(Arc<RwLock<R>>);

impl<R: ReadModel + Default> Handler for ModelHandler<R> {
    fn handle<'a>(&'a self, event: &'a SequencedEvent) -> BoxFuture<'a, Result<(), BoxError>> {
        let result = event.decode::<R::Event>().map(|decoded| {
            self.0
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .apply(&decoded);
        });
        Box::pin(async move { result.map_err(Into::into) })
    }

    fn reset(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = R::default();
    }
}

struct Registered {
    id: String,
    query: Query,
    park_after: Option<u32>,
    handler: Arc<dyn Handler>,
}

/// Builds an in-memory runner: add listeners and read models, then
/// [`build`](InMemoryRunner::build) and drive [`InMemoryRunner::run`].
pub struct InMemoryRunner {
    store: Arc<InMemoryEventStore>,
    config: MemoryRunnerConfig,
    registered: Vec<Registered>,
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for InMemoryRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryRunner")
            .field("config", &self.config)
            .field(
                "listeners",
                &self.registered.iter().map(|r| &r.id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

struct Shared {
    store: Arc<InMemoryEventStore>,
    shutdown: watch::Sender<bool>,
    listeners: HashMap<String, Arc<Slot>>,
}

/// One listener's state, shared by its loop and the handle.
struct Slot {
    checkpoint: watch::Sender<u64>,
    status: Mutex<SlotStatus>,
    parked: Mutex<Vec<MemoryParkedEvent>>,
    resets: Mutex<Option<mpsc::UnboundedSender<oneshot::Sender<()>>>>,
    poke: Notify,
}

#[derive(Clone)]
struct SlotStatus {
    state: ListenerState,
    attempts: u32,
    failing_position: Option<Position>,
    last_error: Option<String>,
    last_error_at: Option<DateTime<Utc>>,
    handled: u64,
}

impl Slot {
    fn status(&self) -> std::sync::MutexGuard<'_, SlotStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl InMemoryRunner {
    /// A runner over `store`.
    pub fn new(store: Arc<InMemoryEventStore>) -> Self {
        InMemoryRunner {
            store,
            config: MemoryRunnerConfig::default(),
            registered: Vec::new(),
            shared: None,
        }
    }

    /// Replaces the configuration.
    pub fn config(mut self, config: MemoryRunnerConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds an at-least-once listener that parks an event after
    /// [`DEFAULT_PARK_AFTER`] failed attempts.
    pub fn listener<L: Listener + 'static>(self, listener: L) -> Self {
        self.listener_with(listener, Some(DEFAULT_PARK_AFTER))
    }

    /// Adds an at-least-once listener that parks an event after `park_after`
    /// failed attempts, or (`None`) blocks on it, retrying forever.
    pub fn listener_with<L: Listener + 'static>(
        mut self,
        listener: L,
        park_after: Option<u32>,
    ) -> Self {
        self.registered.push(Registered {
            id: listener.id().to_owned(),
            query: listener.query(),
            park_after: park_after.map(|p| p.max(1)),
            handler: Arc::new(ListenerHandler(listener)),
        });
        self
    }

    /// Keeps `model` up to date under listener id `id`. A reset replaces it
    /// with `R::default()` (between batches, so readers never see a half
    /// reset model).
    pub fn read_model<R: ReadModel + Default + 'static>(
        mut self,
        id: impl Into<String>,
        model: Arc<RwLock<R>>,
    ) -> Self {
        self.registered.push(Registered {
            id: id.into(),
            query: Query::types(R::Event::event_types()),
            park_after: None,
            handler: Arc::new(ModelHandler(model)),
        });
        self
    }

    /// Splits into the runner (drive [`InMemoryRunner::run`]) and its handle.
    ///
    /// # Panics
    /// When two listeners share an id.
    pub fn build(mut self) -> (Self, MemoryRunnerHandle) {
        let mut listeners = HashMap::new();
        for registered in &self.registered {
            let slot = Arc::new(Slot {
                checkpoint: watch::channel(0).0,
                status: Mutex::new(SlotStatus {
                    state: ListenerState::Starting,
                    attempts: 0,
                    failing_position: None,
                    last_error: None,
                    last_error_at: None,
                    handled: 0,
                }),
                parked: Mutex::new(Vec::new()),
                resets: Mutex::new(None),
                poke: Notify::new(),
            });
            let previous = listeners.insert(registered.id.clone(), slot);
            assert!(
                previous.is_none(),
                "listener id {:?} is registered twice",
                registered.id
            );
        }
        let shared = Arc::new(Shared {
            store: self.store.clone(),
            shutdown: watch::channel(false).0,
            listeners,
        });
        self.shared = Some(shared.clone());
        (self, MemoryRunnerHandle { shared })
    }

    /// Runs every listener until [`MemoryRunnerHandle::shutdown`]: each one
    /// finishes the event in hand, then stops.
    ///
    /// # Panics
    /// When called before [`InMemoryRunner::build`].
    pub async fn run(self) {
        let shared = self
            .shared
            .clone()
            .expect("call InMemoryRunner::build before run");
        let loops = self.registered.into_iter().map(|registered| {
            let slot = shared.listeners[&registered.id].clone();
            run_listener(shared.clone(), self.config, registered, slot)
        });
        futures::future::join_all(loops).await;
    }
}

/// Waits for the first of `futures`.
async fn first_of(futures: Vec<BoxFuture<'_, ()>>) {
    futures::future::select_all(futures).await;
}

async fn run_listener(
    shared: Arc<Shared>,
    config: MemoryRunnerConfig,
    registered: Registered,
    slot: Arc<Slot>,
) {
    let (reset_tx, mut reset_rx) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
    *slot.resets.lock().unwrap_or_else(|e| e.into_inner()) = Some(reset_tx);
    let mut shutdown = shared.shutdown.subscribe();
    let mut head = shared.store.watch_head();
    let mut position = 0u64;
    // (position, attempts, next attempt)
    let mut failing: Option<(Position, u32, Instant)> = None;
    slot.status().state = ListenerState::Running;
    let batch_size = config.batch_size.max(1);
    'outer: loop {
        while let Ok(done) = reset_rx.try_recv() {
            registered.handler.reset();
            position = 0;
            failing = None;
            slot.parked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            {
                let mut status = slot.status();
                status.attempts = 0;
                status.failing_position = None;
                status.last_error = None;
                status.last_error_at = None;
                status.state = ListenerState::Running;
            }
            slot.checkpoint.send_replace(0);
            let _ = done.send(());
        }
        if *shutdown.borrow_and_update() {
            break;
        }
        head.borrow_and_update();
        let read = shared
            .store
            .read(
                &registered.query,
                ReadOptions::forwards()
                    .after(Position(position))
                    .limit(batch_size),
            )
            .await;
        let Ok((log_head, events)) = (match read {
            Ok(result) => result.collect().await,
            Err(error) => Err(error),
        }) else {
            // The in-memory store does not fail reads; if it ever does, retry.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let full = events.len() >= batch_size;
        for event in &events {
            if let Some((at, attempts, next)) = failing {
                if at == event.position {
                    let now = Instant::now();
                    if next > now {
                        first_of(vec![
                            Box::pin(tokio::time::sleep(next - now)),
                            Box::pin(shutdown.changed().map(|_| ())),
                            Box::pin(slot.poke.notified()),
                        ])
                        .await;
                        continue 'outer;
                    }
                    if registered.park_after.is_some_and(|p| attempts >= p) {
                        let error = slot.status().last_error.clone().unwrap_or_default();
                        tracing::error!(
                            listener = %registered.id,
                            position = at.0,
                            attempts,
                            %error,
                            "parked event after repeated failures"
                        );
                        slot.parked.lock().unwrap_or_else(|e| e.into_inner()).push(
                            MemoryParkedEvent {
                                position: at,
                                event_type: event.event_type().clone(),
                                error,
                                attempts,
                                parked_at: Utc::now(),
                            },
                        );
                        failing = None;
                        position = at.0;
                        {
                            let mut status = slot.status();
                            status.attempts = 0;
                            status.failing_position = None;
                            status.state = ListenerState::Running;
                        }
                        slot.checkpoint.send_replace(position);
                        continue;
                    }
                }
            }
            let result = std::panic::AssertUnwindSafe(registered.handler.handle(event))
                .catch_unwind()
                .await;
            let error = match result {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some("handler panicked".to_owned()),
            };
            match error {
                None => {
                    failing = None;
                    position = event.position.0;
                    {
                        let mut status = slot.status();
                        status.handled += 1;
                        status.attempts = 0;
                        status.failing_position = None;
                        status.state = ListenerState::Running;
                    }
                    slot.checkpoint.send_replace(position);
                }
                Some(error) => {
                    let attempts = match failing {
                        Some((at, attempts, _)) if at == event.position => attempts + 1,
                        _ => 1,
                    };
                    let parks = registered.park_after.is_some_and(|p| attempts >= p);
                    let delay = if parks {
                        Duration::ZERO
                    } else {
                        config.backoff.delay(attempts)
                    };
                    tracing::warn!(
                        listener = %registered.id,
                        position = event.position.0,
                        attempts,
                        retry_in_ms = delay.as_millis() as u64,
                        %error,
                        "listener handler failed"
                    );
                    failing = Some((event.position, attempts, Instant::now() + delay));
                    let mut status = slot.status();
                    status.attempts = attempts;
                    status.failing_position = Some(event.position);
                    status.last_error = Some(error);
                    status.last_error_at = Some(Utc::now());
                    status.state = if registered.park_after.is_some() {
                        ListenerState::Retrying
                    } else {
                        ListenerState::Blocked
                    };
                    continue 'outer;
                }
            }
        }
        if !full {
            // Every matching event up to the head is handled.
            let head_position = log_head.map_or(0, |p| p.0);
            if head_position > position {
                position = head_position;
                slot.checkpoint.send_replace(position);
            }
            slot.status().state = ListenerState::Idle;
            first_of(vec![
                Box::pin(head.changed().map(|_| ())),
                Box::pin(shutdown.changed().map(|_| ())),
                Box::pin(slot.poke.notified()),
            ])
            .await;
        }
    }
    slot.status().state = ListenerState::Stopped;
    *slot.resets.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Talks to a running [`InMemoryRunner`].
#[derive(Clone)]
pub struct MemoryRunnerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryRunnerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRunnerHandle")
            .field(
                "listeners",
                &self.shared.listeners.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl MemoryRunnerHandle {
    fn slot(&self, id: &str) -> Result<&Arc<Slot>, MemoryRunnerError> {
        self.shared
            .listeners
            .get(id)
            .ok_or_else(|| MemoryRunnerError::UnknownListener(id.to_owned()))
    }

    /// The status of listener `id`.
    ///
    /// # Errors
    /// [`MemoryRunnerError::UnknownListener`].
    pub async fn status(&self, id: &str) -> Result<MemoryListenerStatus, MemoryRunnerError> {
        let slot = self.slot(id)?;
        let position = *slot.checkpoint.borrow();
        let head = self.shared.store.head().await.ok().flatten();
        let status = slot.status().clone();
        Ok(MemoryListenerStatus {
            id: id.to_owned(),
            position: (position > 0).then_some(Position(position)),
            head,
            lag: head.map_or(0, |h| h.0).saturating_sub(position),
            state: status.state,
            attempts: status.attempts,
            failing_position: status.failing_position,
            last_error: status.last_error,
            last_error_at: status.last_error_at,
            parked: slot.parked.lock().unwrap_or_else(|e| e.into_inner()).len() as u64,
            handled: status.handled,
        })
    }

    /// The events listener `id` parked, oldest first.
    ///
    /// # Errors
    /// [`MemoryRunnerError::UnknownListener`].
    pub fn parked(&self, id: &str) -> Result<Vec<MemoryParkedEvent>, MemoryRunnerError> {
        Ok(self
            .slot(id)?
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }

    /// Waits until listener `id` has handled (or parked) every event up to
    /// `position`.
    ///
    /// # Errors
    /// [`MemoryRunnerError::UnknownListener`].
    pub async fn wait_until(&self, id: &str, position: Position) -> Result<(), MemoryRunnerError> {
        let mut checkpoint = self.slot(id)?.checkpoint.subscribe();
        // The sender lives in the slot, so `wait_for` only ends on success.
        let _ = checkpoint.wait_for(|p| *p >= position.0).await;
        Ok(())
    }

    /// [`MemoryRunnerHandle::wait_until`], giving up after `timeout`.
    ///
    /// # Errors
    /// [`MemoryRunnerError::Timeout`] with the position reached.
    pub async fn wait_until_timeout(
        &self,
        id: &str,
        position: Position,
        timeout: Duration,
    ) -> Result<(), MemoryRunnerError> {
        match tokio::time::timeout(timeout, self.wait_until(id, position)).await {
            Ok(result) => result,
            Err(_) => {
                let reached = *self.slot(id)?.checkpoint.borrow();
                Err(MemoryRunnerError::Timeout {
                    listener: id.to_owned(),
                    target: position,
                    reached: (reached > 0).then_some(Position(reached)),
                })
            }
        }
    }

    /// Rewinds listener `id` to the start of the log between two events:
    /// resets its read model (to `Default`), its checkpoint, failures and
    /// parked events. Returns once done.
    ///
    /// # Errors
    /// [`MemoryRunnerError::NotRunning`] when the runner is not running.
    pub async fn reset(&self, id: &str) -> Result<(), MemoryRunnerError> {
        let slot = self.slot(id)?;
        let (done_tx, done_rx) = oneshot::channel();
        let sent = slot
            .resets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|tx| tx.send(done_tx).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(MemoryRunnerError::NotRunning);
        }
        slot.poke.notify_one();
        done_rx.await.map_err(|_| MemoryRunnerError::NotRunning)?;
        tracing::info!(listener = id, "listener reset");
        Ok(())
    }

    /// Resets listener `id` and waits until it has replayed the log up to the
    /// head as it was when the rebuild started, reporting progress to
    /// `progress` (and through `tracing`) about every `every`.
    ///
    /// # Errors
    /// See [`MemoryRunnerHandle::reset`].
    pub async fn rebuild<F>(
        &self,
        id: &str,
        every: Duration,
        mut progress: F,
    ) -> Result<MemoryRebuildProgress, MemoryRunnerError>
    where
        F: FnMut(&MemoryRebuildProgress) + Send,
    {
        let slot = self.slot(id)?;
        let target = self
            .shared
            .store
            .head()
            .await
            .ok()
            .flatten()
            .unwrap_or(Position(0));
        let started = Instant::now();
        let handled_before = slot.status().handled;
        self.reset(id).await?;
        loop {
            let position = *slot.checkpoint.borrow();
            let events_done = slot.status().handled.saturating_sub(handled_before);
            let elapsed = started.elapsed();
            let report = MemoryRebuildProgress {
                listener_id: id.to_owned(),
                position: Position(position),
                target,
                events_done,
                events_per_sec: events_done as f64 / elapsed.as_secs_f64().max(1e-6),
                elapsed,
            };
            tracing::info!(
                listener = id,
                position,
                target = target.0,
                events_done,
                "rebuild progress"
            );
            progress(&report);
            if position >= target.0 {
                return Ok(report);
            }
            let _ = self.wait_until_timeout(id, target, every).await;
        }
    }

    /// Stops every listener after the event in hand; [`InMemoryRunner::run`]
    /// then returns.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::codec::CodecError;
    use crate::event::{EventMetadata, EventRecord, EventSchema, Sequenced};
    use crate::tag::Tag;

    #[derive(Debug, Clone, PartialEq)]
    struct Num(u64);

    impl Event for Num {
        const SCHEMA: &'static [EventSchema] = &[EventSchema {
            event_type: "Num",
            tag_keys: &[],
        }];
        fn event_type(&self) -> EventType {
            EventType::from_static("Num")
        }
        fn tags(&self) -> Vec<Tag> {
            Vec::new()
        }
        fn encode(&self) -> Result<Vec<u8>, CodecError> {
            Ok(self.0.to_string().into_bytes())
        }
        fn decode(_: &str, payload: &[u8]) -> Result<Self, CodecError> {
            std::str::from_utf8(payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(Num)
                .ok_or_else(|| CodecError::Decode("not a number".into()))
        }
    }

    fn num(n: u64) -> EventRecord {
        EventRecord {
            event_type: EventType::from_static("Num"),
            tags: Vec::new(),
            payload: n.to_string().into_bytes(),
            metadata: EventMetadata::new(),
        }
    }

    #[derive(Default)]
    struct Sum(u64);

    impl ReadModel for Sum {
        type Event = Num;
        fn apply(&mut self, event: &Sequenced<Num>) {
            self.0 += event.event.0;
        }
    }

    struct FailsOn {
        poison: u64,
        seen: Arc<Mutex<Vec<u64>>>,
        attempts: Arc<AtomicU32>,
    }

    #[async_trait]
    impl Listener for FailsOn {
        type Event = Num;
        fn id(&self) -> &str {
            "fails-on"
        }
        async fn handle(&self, event: Sequenced<Num>) -> Result<(), BoxError> {
            if event.event.0 == self.poison {
                self.attempts.fetch_add(1, Ordering::SeqCst);
                return Err("poison".into());
            }
            self.seen.lock().unwrap().push(event.event.0);
            Ok(())
        }
    }

    fn fast() -> MemoryRunnerConfig {
        MemoryRunnerConfig {
            batch_size: 4,
            backoff: Backoff {
                initial: Duration::from_millis(5),
                max: Duration::from_millis(20),
                multiplier: 2.0,
            },
        }
    }

    #[tokio::test]
    async fn read_model_follows_and_rebuilds() {
        let store = Arc::new(InMemoryEventStore::new());
        let sum = Arc::new(RwLock::new(Sum::default()));
        let (runner, handle) = InMemoryRunner::new(store.clone())
            .config(fast())
            .read_model("sum", sum.clone())
            .build();
        let task = tokio::spawn(runner.run());
        let appended = store
            .append((1..=10).map(num).collect(), None)
            .await
            .unwrap();
        handle.wait_until("sum", appended.last).await.unwrap();
        assert_eq!(sum.read().unwrap().0, 55);
        let done = handle
            .rebuild("sum", Duration::from_millis(10), |_| {})
            .await
            .unwrap();
        assert_eq!(done.position, appended.last);
        assert_eq!(done.events_done, 10);
        assert_eq!(sum.read().unwrap().0, 55);
        let status = handle.status("sum").await.unwrap();
        assert_eq!(status.lag, 0);
        assert_eq!(status.state, ListenerState::Idle);
        handle.shutdown().await;
        task.await.unwrap();
    }

    #[tokio::test]
    async fn poison_event_is_parked_after_retries_and_the_rest_proceeds() {
        let store = Arc::new(InMemoryEventStore::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(AtomicU32::new(0));
        let (runner, handle) = InMemoryRunner::new(store.clone())
            .config(fast())
            .listener_with(
                FailsOn {
                    poison: 5,
                    seen: seen.clone(),
                    attempts: attempts.clone(),
                },
                Some(3),
            )
            .build();
        let task = tokio::spawn(runner.run());
        let appended = store
            .append((1..=9).map(num).collect(), None)
            .await
            .unwrap();
        handle
            .wait_until_timeout("fails-on", appended.last, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3, 4, 6, 7, 8, 9]);
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        let parked = handle.parked("fails-on").unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].position, Position(5));
        let status = handle.status("fails-on").await.unwrap();
        assert_eq!(status.parked, 1);
        assert_eq!(status.last_error.as_deref(), Some("poison"));
        handle.shutdown().await;
        task.await.unwrap();
    }

    #[tokio::test]
    async fn blocking_listener_stays_on_the_failing_event() {
        let store = Arc::new(InMemoryEventStore::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(AtomicU32::new(0));
        let (runner, handle) = InMemoryRunner::new(store.clone())
            .config(fast())
            .listener_with(
                FailsOn {
                    poison: 3,
                    seen: seen.clone(),
                    attempts: attempts.clone(),
                },
                None,
            )
            .build();
        let task = tokio::spawn(runner.run());
        let appended = store
            .append((1..=6).map(num).collect(), None)
            .await
            .unwrap();
        let err = handle
            .wait_until_timeout("fails-on", appended.last, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            MemoryRunnerError::Timeout {
                reached: Some(Position(2)),
                ..
            }
        ));
        let status = handle.status("fails-on").await.unwrap();
        assert_eq!(status.state, ListenerState::Blocked);
        assert!(status.attempts >= 2);
        assert_eq!(status.failing_position, Some(Position(3)));
        assert_eq!(*seen.lock().unwrap(), vec![1, 2]);
        handle.shutdown().await;
        task.await.unwrap();
    }
}
