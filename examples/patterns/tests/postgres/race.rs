//! The race harness: many callers, each a tokio task with its own decision
//! maker, released together by a barrier, against two store instances on one
//! fresh database (two application instances).
//!
//! Every caller's store is a [`RaceStore`], which
//! - counts what happened: state reads (one per attempt), events read,
//!   appends, failed conditions;
//! - holds every append until each caller has read once (the *gate*), so
//!   all callers decide from the same state and really race: the
//!   worst interleaving, every time, instead of whatever the scheduler
//!   happens to do;
//! - with [`Guard::Dropped`], appends without the condition: the same
//!   decisions with the guarantee removed, which each pattern's invariant
//!   must then catch.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dcb_core::{
    AppendCondition, AppendResult, DecisionMaker, Event, EventRecord, EventStore, Position, Query,
    ReadOptions, ReadResult, RetryPolicy, Sequenced, StoreError,
};
use dcb_postgres::snapshot::PgSnapshotStore;
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::{PgEventStore, DEFAULT_SCHEMA};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{watch, Barrier};

/// Attempts per decision. Each failed attempt means another decision on the
/// same boundary committed in between, so a caller fails at most as many
/// times as there are other commits on its boundary; the races here stay
/// well below this.
pub const MAX_ATTEMPTS: u32 = 100;

/// How long the gate waits for every caller's first read. Only a harness
/// bug (a caller that appends without reading) makes it fire; it asserts
/// nothing about speed.
const GATE_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether appends keep their conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// As the decision maker built them: the guarantee under test.
    Kept,
    /// Dropped (`None`): the guarantee removed.
    Dropped,
}

/// What a race or a counted run did, as seen by the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Callers.
    pub callers: usize,
    /// State reads: one per attempt.
    pub attempts: usize,
    /// Events those reads returned (folded or skipped).
    pub events_read: u64,
    /// Appends tried.
    pub appends: usize,
    /// Appends refused by their condition (each one re-read and decided
    /// again by the decision maker).
    pub conflicts: usize,
}

impl std::ops::Add for Counts {
    type Output = Counts;

    fn add(self, other: Counts) -> Counts {
        Counts {
            callers: self.callers + other.callers,
            attempts: self.attempts + other.attempts,
            events_read: self.events_read + other.events_read,
            appends: self.appends + other.appends,
            conflicts: self.conflicts + other.conflicts,
        }
    }
}

/// The outcomes of a race, in caller order, and its counts.
#[derive(Debug)]
pub struct Raced<T> {
    /// What each caller returned.
    pub outcomes: Vec<T>,
    /// What the store saw.
    pub counts: Counts,
}

/// One caller of a race.
pub struct Racer {
    /// 0..callers.
    pub index: usize,
    /// Its decision maker, on its own [`RaceStore`].
    pub maker: DecisionMaker<RaceStore>,
}

impl Racer {
    /// The store, for callers that are not decisions (legacy code).
    pub fn store(&self) -> &RaceStore {
        self.maker.store()
    }
}

/// Two store instances on a fresh database.
pub struct Env {
    db: TestDatabase,
    stores: Vec<PgEventStore>,
}

impl Env {
    /// A fresh database with two stores on it.
    ///
    /// # Panics
    /// Without PostgreSQL, with a message saying how to start it.
    pub async fn new() -> Env {
        let db = TestDatabase::create().await;
        let first = db.store().await;
        let second = PgEventStore::connect(db.url())
            .await
            .expect("a second store on the test database");
        Env {
            db,
            stores: vec![first, second],
        }
    }

    /// The first store (setup and checks).
    pub fn store(&self) -> &PgEventStore {
        &self.stores[0]
    }

    /// A plain decision maker on the first store (setup).
    pub fn maker(&self) -> DecisionMaker<PgEventStore> {
        DecisionMaker::new(self.stores[0].clone())
    }

    /// A snapshot store in the event store's schema, migrated.
    pub async fn snapshots(&self) -> Arc<PgSnapshotStore> {
        let snapshots =
            PgSnapshotStore::new(self.db.pool().clone(), DEFAULT_SCHEMA).expect("snapshot store");
        snapshots.migrate().await.expect("snapshot migration");
        Arc::new(snapshots)
    }

    /// A store that only counts (no gate), and its counts.
    pub fn counting_store(&self) -> RaceStore {
        RaceStore {
            inner: self.stores[0].clone(),
            gate: Arc::new(Gate::new(0, Guard::Kept, true)),
        }
    }

    /// Every event of the log, decoded as `E`.
    pub async fn log<E: Event>(&self) -> Vec<Sequenced<E>> {
        let (_, records) = self
            .store()
            .read(&Query::all(), ReadOptions::forwards())
            .await
            .expect("read the log")
            .collect()
            .await
            .expect("read the log");
        records
            .iter()
            .map(|r| r.decode::<E>().expect("a logged event decodes"))
            .collect()
    }

    /// Runs `callers` callers of `f` together; appends open once each has
    /// read once.
    pub async fn race<T, F, Fut>(&self, guard: Guard, callers: usize, f: F) -> Raced<T>
    where
        F: Fn(Racer) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.run(guard, callers, None::<std::future::Ready<()>>, f)
            .await
    }

    /// Like [`race`](Self::race), and once every caller has read (none has
    /// appended yet) runs `between`, a write by someone else, before the
    /// appends go.
    pub async fn race_interleaved<T, F, Fut, B>(
        &self,
        guard: Guard,
        callers: usize,
        between: B,
        f: F,
    ) -> Raced<T>
    where
        F: Fn(Racer) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
        B: Future<Output = ()>,
    {
        self.run(guard, callers, Some(between), f).await
    }

    async fn run<T, F, Fut, B>(
        &self,
        guard: Guard,
        callers: usize,
        between: Option<B>,
        f: F,
    ) -> Raced<T>
    where
        F: Fn(Racer) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
        B: Future<Output = ()>,
    {
        let gate = Arc::new(Gate::new(callers, guard, between.is_none()));
        let barrier = Arc::new(Barrier::new(callers));
        let mut tasks = Vec::with_capacity(callers);
        for index in 0..callers {
            let store = RaceStore {
                inner: self.stores[index % self.stores.len()].clone(),
                gate: gate.clone(),
            };
            // Every caller reads its state: the harness holds the appends
            // until all have read, so that they race from the same state.
            // (The maker's cache of states would let a caller decide
            // without reading.)
            let maker = DecisionMaker::new(store)
                .cache_entries(0)
                .with_retry(RetryPolicy::default().max_attempts(MAX_ATTEMPTS));
            let caller = f(Racer { index, maker });
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                caller.await
            }));
        }
        if let Some(between) = between {
            gate.wait_all_read().await;
            between.await;
            gate.open.send_replace(true);
        }
        let mut outcomes = Vec::with_capacity(callers);
        for task in tasks {
            outcomes.push(task.await.expect("a racer panicked"));
        }
        Raced {
            outcomes,
            counts: gate.counts(),
        }
    }

    /// Shuts the stores down and drops the database.
    pub async fn cleanup(self) {
        for store in &self.stores {
            store.shutdown().await;
        }
        self.db.cleanup().await;
    }
}

/// The shared state of one race: counters, the gate, the guard.
#[derive(Debug)]
struct Gate {
    callers: usize,
    guard: Guard,
    /// Open the gate by itself once everyone read (no `between` step).
    auto_open: bool,
    reads: AtomicUsize,
    events_read: AtomicU64,
    appends: AtomicUsize,
    conflicts: AtomicUsize,
    all_read: watch::Sender<bool>,
    open: watch::Sender<bool>,
}

impl Gate {
    fn new(callers: usize, guard: Guard, auto_open: bool) -> Gate {
        let everyone = callers == 0;
        Gate {
            callers,
            guard,
            auto_open,
            reads: AtomicUsize::new(0),
            events_read: AtomicU64::new(0),
            appends: AtomicUsize::new(0),
            conflicts: AtomicUsize::new(0),
            all_read: watch::Sender::new(everyone),
            open: watch::Sender::new(everyone && auto_open),
        }
    }

    fn counted_read(&self) {
        let reads = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
        if reads == self.callers {
            self.all_read.send_replace(true);
            if self.auto_open {
                self.open.send_replace(true);
            }
        }
    }

    async fn wait_all_read(&self) {
        let mut all_read = self.all_read.subscribe();
        if tokio::time::timeout(GATE_TIMEOUT, all_read.wait_for(|read| *read))
            .await
            .is_err()
        {
            panic!(
                "race harness: only {} of {} callers read their state; every caller must read \
                 before it appends",
                self.reads.load(Ordering::SeqCst),
                self.callers
            );
        }
    }

    async fn wait_open(&self) {
        let mut open = self.open.subscribe();
        if tokio::time::timeout(GATE_TIMEOUT, open.wait_for(|open| *open))
            .await
            .is_err()
        {
            panic!(
                "race harness: the appends were never let through ({} of {} callers read)",
                self.reads.load(Ordering::SeqCst),
                self.callers
            );
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            callers: self.callers,
            attempts: self.reads.load(Ordering::SeqCst),
            events_read: self.events_read.load(Ordering::SeqCst),
            appends: self.appends.load(Ordering::SeqCst),
            conflicts: self.conflicts.load(Ordering::SeqCst),
        }
    }
}

/// A caller's view of a Postgres store: counts, gates and (with
/// [`Guard::Dropped`]) drops append conditions. See the module docs.
#[derive(Clone, Debug)]
pub struct RaceStore {
    inner: PgEventStore,
    gate: Arc<Gate>,
}

impl RaceStore {
    /// What this store saw so far (with every store of its race).
    pub fn counts(&self) -> Counts {
        self.gate.counts()
    }
}

#[async_trait]
impl EventStore for RaceStore {
    async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult, StoreError> {
        let result = self.inner.read(query, options).await?;
        // Counted once the head is known: the state this attempt decides on
        // is fixed from here.
        self.gate.counted_read();
        let gate = self.gate.clone();
        Ok(ReadResult {
            head: result.head,
            events: result
                .events
                .inspect_ok(move |_| {
                    gate.events_read.fetch_add(1, Ordering::SeqCst);
                })
                .boxed(),
        })
    }

    async fn append(
        &self,
        events: Vec<EventRecord>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult, StoreError> {
        self.gate.wait_open().await;
        let condition = match self.gate.guard {
            Guard::Kept => condition,
            Guard::Dropped => None,
        };
        self.gate.appends.fetch_add(1, Ordering::SeqCst);
        let result = self.inner.append(events, condition).await;
        if matches!(result, Err(StoreError::ConditionFailed { .. })) {
            self.gate.conflicts.fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    async fn head(&self) -> Result<Option<Position>, StoreError> {
        self.inner.head().await
    }
}

/// Prints a pattern's closing line (shown with `--nocapture`).
pub fn report(
    pattern: &str,
    guard: Guard,
    counts: &Counts,
    successes: usize,
    rejected: usize,
    invariant: &str,
) {
    let mode = match guard {
        Guard::Kept => "",
        Guard::Dropped => " [append condition DROPPED]",
    };
    println!(
        "{pattern}{mode}: {} callers, {} attempts, {successes} successes, {rejected} rejected, \
         {} conflicts retried; {invariant}",
        counts.callers, counts.attempts, counts.conflicts,
    );
}
