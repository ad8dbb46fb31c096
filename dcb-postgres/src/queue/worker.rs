//! Workers: claim jobs, run their processors with heartbeats, record the
//! outcome, wake on NOTIFY or a timer, shut down gracefully.
//!
//! Three tasks per worker set, plus one per running job: the dispatcher
//! ([`dispatch`]) claims batches as slots free up and starts a task per job
//! ([`attempt`]); the ledger ([`ledger`]) records completions and renews
//! leases, many jobs per statement; the listener ([`notify`]) turns
//! NOTIFYs into claims. The dispatcher also announces the worker set and
//! watches for ready jobs nobody serves ([`presence`]).

mod attempt;
mod dispatch;
mod ledger;
mod notify;
mod presence;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dcb_core::{Backoff, EventStore, MAX_DELAY};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::job::{ClaimedJob, JobId, DEFAULT_BACKOFF, DEFAULT_QUEUE, MAX_NAME_BYTES};
use super::processor::{Erased, ErasedProcessor, Processor};
use super::{QueueAdmin, QueueError, WorkQueue};
use crate::text;
use ledger::LedgerOp;

/// A set of workers: the processors they run, the queues they serve, and how
/// many jobs run at once. Configure, then [`start`](Self::start).
///
/// Start from the store ([`PgEventStore::workers`](crate::PgEventStore::workers)),
/// or from a queue and any event store with [`Workers::new`].
///
/// ```no_run
/// # use dcb_postgres::queue::Processor;
/// # async fn example<P: Processor>(store: dcb_postgres::PgEventStore, processor: P) -> Result<(), dcb_postgres::queue::QueueError> {
/// use std::time::Duration;
/// let handle = store.workers()
///     .register(processor)
///     .queues(["default", "kafka"])
///     .concurrency(16)
///     .lease(Duration::from_secs(30))
///     .start()
///     .await?;
/// // ... on SIGTERM:
/// let report = handle.shutdown(Duration::from_secs(20)).await;
/// # Ok(()) }
/// ```
pub struct Workers {
    queue: WorkQueue,
    store: Arc<dyn EventStore>,
    processors: HashMap<String, Arc<dyn ErasedProcessor>>,
    queues: Vec<String>,
    concurrency: usize,
    batch_size: usize,
    lease: Duration,
    heartbeat: Option<Duration>,
    poll_interval: Duration,
    backoff: Backoff,
    worker_id: String,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("kinds", &self.processors.keys().collect::<Vec<_>>())
            .field("queues", &self.queues)
            .field("concurrency", &self.concurrency)
            .field("lease", &self.lease)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl Workers {
    /// Workers for `queue` whose processors append to `store` (any event
    /// store; an `Arc<dyn EventStore>` too). Defaults: the `default` queue,
    /// 4 jobs at once, a 30 s lease with a heartbeat every third of it, a 2 s
    /// polling fallback, [`DEFAULT_BACKOFF`].
    pub fn new<S: EventStore + 'static>(queue: WorkQueue, store: S) -> Self {
        Workers {
            queue,
            store: Arc::new(store),
            processors: HashMap::new(),
            queues: Vec::new(),
            concurrency: 4,
            batch_size: 32,
            lease: Duration::from_secs(30),
            heartbeat: None,
            poll_interval: Duration::from_secs(2),
            backoff: DEFAULT_BACKOFF,
            worker_id: format!(
                "{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        }
    }

    /// Runs jobs of `P::KIND` with `processor` (a later registration of the
    /// same kind replaces an earlier one).
    pub fn register<P: Processor>(mut self, processor: P) -> Self {
        self.processors
            .insert(P::KIND.to_string(), Arc::new(Erased(processor)));
        self
    }

    /// Serves these queues (default: `default`).
    pub fn queues<I, Q>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = Q>,
        Q: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Runs at most `n` jobs at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Claims at most `n` jobs per statement (default 32, at least 1). A
    /// claim asks for as many jobs as there are free slots, up to `n`;
    /// completions and heartbeats are batched on their own (every completion
    /// that arrives while one statement runs goes into the next; one
    /// heartbeat statement renews every lease the workers hold).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// The lease a claim takes and a heartbeat renews (at least 100 ms, at
    /// most [`MAX_DELAY`]). A job whose worker died runs again about this
    /// long after the last heartbeat.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.clamp(Duration::from_millis(100), MAX_DELAY);
        self
    }

    /// How often the leases of running jobs are renewed (default: a third of
    /// the lease), all in one statement.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every.clamp(Duration::from_millis(10), MAX_DELAY));
        self
    }

    /// How often to look for due jobs when no NOTIFY arrives (default 2 s).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.clamp(Duration::from_millis(10), MAX_DELAY);
        self
    }

    /// The retry backoff of processors that do not set their own.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Names this worker set in the jobs it claims (default: process id and
    /// a random suffix).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = id.into();
        self
    }

    /// Starts claiming and running jobs in background tasks, and announces
    /// the worker set (its queues and kinds) in the database.
    ///
    /// # Errors
    /// [`QueueError::InvalidConfig`] when no processor is registered, or a
    /// worker id, queue or kind holds what PostgreSQL cannot store.
    pub async fn start(self) -> Result<WorkersHandle, QueueError> {
        if self.processors.is_empty() {
            return Err(QueueError::InvalidConfig(
                "no processor registered: call Workers::register before start".to_string(),
            ));
        }
        let queues = if self.queues.is_empty() {
            vec![DEFAULT_QUEUE.to_string()]
        } else {
            self.queues
        };
        let invalid = QueueError::InvalidConfig;
        text::check("worker id", &self.worker_id, MAX_NAME_BYTES).map_err(invalid)?;
        for queue in &queues {
            text::check("queue", queue, MAX_NAME_BYTES).map_err(invalid)?;
        }
        for kind in self.processors.keys() {
            text::check("processor kind", kind, MAX_NAME_BYTES).map_err(invalid)?;
        }
        let heartbeat = self.heartbeat.unwrap_or(self.lease / 3);
        let (ledger_tx, ledger_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            admin: self.queue.admin(),
            queue: self.queue,
            store: self.store,
            kinds: self.processors.keys().cloned().collect(),
            processors: self.processors,
            queues,
            concurrency: self.concurrency,
            batch_size: self.batch_size,
            lease: self.lease,
            heartbeat,
            poll_interval: self.poll_interval,
            backoff: self.backoff,
            worker_id: self.worker_id.clone(),
            held: Mutex::new(HashMap::new()),
            ledger: ledger_tx,
        });
        presence::announce(&shared).await;
        let (stop_tx, stop_rx) = watch::channel(None);
        let wake = Arc::new(Notify::new());
        let ledger = tokio::spawn(ledger::run(shared.clone(), ledger_rx));
        let listener = tokio::spawn(notify::listen(
            shared.clone(),
            wake.clone(),
            stop_rx.clone(),
        ));
        let dispatcher = tokio::spawn(dispatch::run(shared, wake, stop_rx, ledger));
        tracing::info!(worker = %self.worker_id, "work queue workers started");
        Ok(WorkersHandle {
            stop: stop_tx,
            dispatcher,
            listener,
            worker_id: self.worker_id,
        })
    }
}

/// Controls running workers. Dropping it leaves them running (detached);
/// call [`shutdown`](Self::shutdown) to stop them.
#[derive(Debug)]
pub struct WorkersHandle {
    stop: watch::Sender<Option<Duration>>,
    dispatcher: JoinHandle<ShutdownReport>,
    listener: JoinHandle<()>,
    worker_id: String,
}

/// What a graceful shutdown did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Jobs that finished during the grace period.
    pub finished: usize,
    /// Jobs released for another worker to take at once: those stopped at
    /// the end of the grace period, and those claimed but not yet started.
    pub released: usize,
}

impl WorkersHandle {
    /// The id these workers write into the jobs they claim.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Stops claiming, lets running jobs finish for up to `grace`, then stops
    /// the rest and releases them (due now, attempt not counted) so another
    /// worker takes them at once.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        let _ = self.stop.send(Some(grace));
        let report = match self.dispatcher.await {
            Ok(report) => report,
            Err(e) => {
                tracing::error!(error = %e, "work queue dispatcher failed");
                ShutdownReport::default()
            }
        };
        self.listener.abort();
        let _ = self.listener.await;
        tracing::info!(worker = %self.worker_id, finished = report.finished, released = report.released, "work queue workers stopped");
        report
    }
}

struct Shared {
    queue: WorkQueue,
    /// The operations API, to look for jobs nobody serves.
    admin: QueueAdmin,
    store: Arc<dyn EventStore>,
    processors: HashMap<String, Arc<dyn ErasedProcessor>>,
    kinds: Vec<String>,
    queues: Vec<String>,
    concurrency: usize,
    batch_size: usize,
    lease: Duration,
    heartbeat: Duration,
    poll_interval: Duration,
    backoff: Backoff,
    worker_id: String,
    /// The jobs this worker set holds a lease on: claimed and not yet
    /// completed, failed or released.
    held: Mutex<HashMap<JobId, Held>>,
    /// Where job tasks send their completions (see [`ledger::run`]).
    ledger: mpsc::UnboundedSender<LedgerOp>,
}

/// A job whose lease a worker set holds.
struct Held {
    job: Arc<ClaimedJob>,
    /// The lease runs at least until this instant plus the lease period: the
    /// claim, or the last heartbeat that extended it, was sent then (the
    /// database measures the lease from a later instant).
    confirmed: Instant,
    /// Tells the job's context that its lease was lost.
    cancel: watch::Sender<bool>,
    /// The job's task is recording a failure of the attempt itself: a
    /// heartbeat that misses the job meanwhile is not a lost lease.
    finishing: bool,
    /// A heartbeat found the lease lost: no more heartbeats for it.
    lost: bool,
}

impl Shared {
    fn held(&self) -> MutexGuard<'_, HashMap<JobId, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this worker set knows, without asking the database, that it
    /// still holds `job`'s lease with at least half of it left. No other
    /// worker can claim the job before the lease expires, so a fresh lease
    /// needs no round trip to prove it.
    fn lease_is_fresh(&self, job: &ClaimedJob) -> bool {
        self.held().get(&job.id).is_some_and(|h| {
            h.job.lease_token == job.lease_token
                && !h.lost
                && h.confirmed.elapsed() < self.lease / 2
        })
    }

    /// Notes that `job`'s lease was extended by a request sent at `at`.
    fn confirm(&self, job: &ClaimedJob, at: Instant) {
        if let Some(h) = self.held().get_mut(&job.id) {
            if h.job.lease_token == job.lease_token {
                h.confirmed = h.confirmed.max(at);
            }
        }
    }

    /// Notes that `job`'s task records the attempt's failure now.
    fn finishing(&self, job: &ClaimedJob) {
        if let Some(h) = self.held().get_mut(&job.id) {
            if h.job.lease_token == job.lease_token {
                h.finishing = true;
            }
        }
    }

    /// Forgets `job`'s lease (this attempt is over), unless the job was
    /// claimed again since.
    fn forget(&self, job: &ClaimedJob) {
        let mut held = self.held();
        if held
            .get(&job.id)
            .is_some_and(|h| h.job.lease_token == job.lease_token)
        {
            held.remove(&job.id);
        }
    }
}
