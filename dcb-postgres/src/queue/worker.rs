//! Workers: claim jobs, run their processors with heartbeats, record the
//! outcome, wake on NOTIFY or a timer, shut down gracefully.
//!
//! Three tasks per worker set, plus one per running job: the dispatcher
//! claims batches as slots free up and starts a task per job; the ledger
//! records completions and renews leases, many jobs per statement; the
//! listener turns NOTIFYs into claims.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dcb_core::EventStore;
use futures::FutureExt;
use sqlx::postgres::PgListener;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use dcb_core::Backoff;

use super::job::{ClaimedJob, JobId, DEFAULT_BACKOFF, DEFAULT_QUEUE};
use super::processor::{Erased, ErasedProcessor, JobContext, JobError, JobFailure, Processor};
use super::{FailOutcome, QueueError, WorkQueue};

/// A set of workers: the processors they run, the queues they serve, and how
/// many jobs run at once. Configure, then [`start`](Self::start).
///
/// ```no_run
/// # use dcb_postgres::queue::{WorkQueue, Workers, Processor};
/// # async fn example<P: Processor>(queue: WorkQueue, store: dcb_core::InMemoryEventStore, processor: P) -> Result<(), dcb_postgres::queue::QueueError> {
/// use std::time::Duration;
/// let handle = Workers::new(queue, store)
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
    /// Workers for `queue` whose processors append to `store`. Defaults: the
    /// `default` queue, 4 jobs at once, a 30 s lease with a heartbeat every
    /// third of it, a 2 s polling fallback, [`DEFAULT_BACKOFF`].
    pub fn new<S: EventStore + 'static>(queue: WorkQueue, store: S) -> Self {
        Self::with_shared_store(queue, Arc::new(store))
    }

    /// Like [`new`](Self::new), with a store that is already shared.
    pub fn with_shared_store(queue: WorkQueue, store: Arc<dyn EventStore>) -> Self {
        Workers {
            queue,
            store,
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

    /// The lease a claim takes and a heartbeat renews. A job whose worker
    /// died runs again about this long after the last heartbeat.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// How often the leases of running jobs are renewed (default: a third of
    /// the lease), all in one statement.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every.max(Duration::from_millis(10)));
        self
    }

    /// How often to look for due jobs when no NOTIFY arrives (default 2 s).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.max(Duration::from_millis(10));
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

    /// Starts claiming and running jobs in background tasks.
    ///
    /// # Errors
    /// [`QueueError::InvalidConfig`] when no processor is registered.
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
        let heartbeat = self.heartbeat.unwrap_or(self.lease / 3);
        let (ledger_tx, ledger_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
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
        let (stop_tx, stop_rx) = watch::channel(None);
        let wake = Arc::new(Notify::new());
        let ledger = tokio::spawn(ledger(shared.clone(), ledger_rx));
        let listener = tokio::spawn(listen(shared.clone(), wake.clone(), stop_rx.clone()));
        let dispatcher = tokio::spawn(dispatch(shared, wake, stop_rx, ledger));
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
    /// Where job tasks send their completions (see [`ledger`]).
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

/// Where the ledger answers a completion: whether the job was completed
/// (`false`: its lease was lost), or why the statement failed.
type Completed = oneshot::Sender<Result<bool, String>>;

/// What job tasks and the dispatcher ask of the ledger.
enum LedgerOp {
    /// Mark the job succeeded; answers whether it was (`false`: lease lost).
    Complete {
        job: Arc<ClaimedJob>,
        done: Completed,
    },
    /// Give the jobs back; answers, per job, whether it was released.
    Release {
        jobs: Vec<Arc<ClaimedJob>>,
        done: oneshot::Sender<Result<Vec<bool>, String>>,
    },
    /// Finish what was asked before, then stop.
    Stop,
}

/// How long a claim waits for more free slots (see `dispatch`).
const COALESCE: Duration = Duration::from_millis(3);

/// At most this many completions go into one statement.
const COMPLETIONS_PER_STATEMENT: usize = 1_000;

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

/// Forgets a job's lease when its task ends, however it ends (returned,
/// panicked, aborted).
struct Forget<'a> {
    shared: &'a Shared,
    job: &'a ClaimedJob,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.shared.forget(self.job);
    }
}

/// Records a worker set's completions and renews its leases, a batch per
/// statement: completions that arrive while a statement runs go into the
/// next one (so under load a statement carries many, and alone one goes at
/// once), and one heartbeat statement renews every held lease. One task
/// runs all of a worker set's multi-row statements, one at a time, so they
/// never wait for each other's row locks.
async fn ledger(shared: Arc<Shared>, mut ops: mpsc::UnboundedReceiver<LedgerOp>) {
    let mut next_beat = Instant::now() + shared.heartbeat;
    loop {
        let first = tokio::select! {
            op = ops.recv() => op,
            () = tokio::time::sleep_until(next_beat) => {
                beat(&shared).await;
                next_beat = Instant::now() + shared.heartbeat;
                continue;
            }
        };
        let Some(first) = first else {
            return;
        };
        let mut completions = Vec::new();
        let mut releases = Vec::new();
        let mut next = Some(first);
        while let Some(op) = next.take() {
            match op {
                LedgerOp::Complete { job, done } => completions.push((job, done)),
                LedgerOp::Release { jobs, done } => releases.push((jobs, done)),
                // Refuse new work; what is queued is still received below.
                LedgerOp::Stop => ops.close(),
            }
            if completions.len() < COMPLETIONS_PER_STATEMENT {
                next = ops.try_recv().ok();
            }
        }
        // Completions first: a job completed and then released (its task
        // was aborted while the completion was queued) stays completed.
        if !completions.is_empty() {
            complete_batch(&shared, completions).await;
        }
        for (jobs, done) in releases {
            let refs: Vec<&ClaimedJob> = jobs.iter().map(|j| &**j).collect();
            let result = shared.queue.release_many(&refs).await;
            let _ = done.send(result.map_err(|e| e.to_string()));
        }
        // Under a steady stream of completions the sleep above never wins.
        if Instant::now() >= next_beat {
            beat(&shared).await;
            next_beat = Instant::now() + shared.heartbeat;
        }
    }
}

async fn complete_batch(shared: &Shared, batch: Vec<(Arc<ClaimedJob>, Completed)>) {
    let jobs: Vec<&ClaimedJob> = batch.iter().map(|(j, _)| &**j).collect();
    match shared.queue.complete_many(&jobs).await {
        Ok(completed) => {
            // Forget the completed leases before the next heartbeat, which
            // would otherwise miss them and report them lost.
            {
                let mut held = shared.held();
                for ((job, _), &ok) in batch.iter().zip(&completed) {
                    if ok
                        && held
                            .get(&job.id)
                            .is_some_and(|h| h.job.lease_token == job.lease_token)
                    {
                        held.remove(&job.id);
                    }
                }
            }
            for ((_, done), ok) in batch.into_iter().zip(completed) {
                let _ = done.send(Ok(ok));
            }
        }
        Err(e) => {
            let e = e.to_string();
            for (_, done) in batch {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}

/// Extends the lease of every job the worker set holds, in one statement,
/// and cancels the attempts whose lease was lost.
async fn beat(shared: &Shared) {
    let jobs: Vec<Arc<ClaimedJob>> = shared
        .held()
        .values()
        .filter(|h| !h.lost)
        .map(|h| h.job.clone())
        .collect();
    if jobs.is_empty() {
        return;
    }
    let sent = Instant::now();
    let refs: Vec<&ClaimedJob> = jobs.iter().map(|j| &**j).collect();
    match shared.queue.heartbeat_many(&refs, shared.lease).await {
        Ok(extended) => {
            let mut held = shared.held();
            for (job, ok) in jobs.iter().zip(extended) {
                let Some(h) = held.get_mut(&job.id) else {
                    continue;
                };
                if h.job.lease_token != job.lease_token {
                    continue;
                }
                if ok {
                    h.confirmed = h.confirmed.max(sent);
                } else if !h.finishing && !h.lost {
                    h.lost = true;
                    let _ = h.cancel.send(true);
                    tracing::warn!(
                        job_id = %job.id,
                        kind = %job.kind,
                        attempt = job.attempt,
                        worker = %shared.worker_id,
                        "lease lost while running; this attempt's result will be rejected"
                    );
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, jobs = jobs.len(), "heartbeat failed"),
    }
}

/// Forwards NOTIFYs for our queues to the dispatcher. Missed ones (while
/// reconnecting) are covered by polling.
async fn listen(
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let mut listener = loop {
        match connect_listener(&shared).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(error = %e, "work queue LISTEN failed; polling until it works");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    () = stopping(&mut stop) => return,
                }
            }
        }
    };
    loop {
        tokio::select! {
            () = stopping(&mut stop) => return,
            received = listener.recv() => match received {
                Ok(n) => {
                    if shared.queues.iter().any(|q| q == n.payload()) {
                        wake.notify_one();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "work queue LISTEN connection failed; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    // Notifications may have been missed meanwhile.
                    wake.notify_one();
                }
            }
        }
    }
}

/// Resolves once shutdown was requested; never when the handle was dropped
/// (detached workers run until the runtime ends).
async fn stopping(stop: &mut watch::Receiver<Option<Duration>>) {
    if stop.wait_for(|s| s.is_some()).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn connect_listener(shared: &Shared) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(shared.queue.pool()).await?;
    listener.listen(shared.queue.channel()).await?;
    Ok(listener)
}

/// A claim in flight: when it was sent, how many jobs it asked for, what it
/// got.
type Claiming =
    Pin<Box<dyn Future<Output = (Instant, usize, Result<Vec<ClaimedJob>, QueueError>)> + Send>>;

async fn claimed(
    claiming: &mut Option<Claiming>,
) -> (Instant, usize, Result<Vec<ClaimedJob>, QueueError>) {
    match claiming {
        Some(claim) => claim.await,
        None => std::future::pending().await,
    }
}

/// Claims jobs as slots free up and runs each in its own task. One claim is
/// in flight at a time, concurrently with the running jobs: the slots that
/// free up meanwhile are filled by the next claim, so under load a claim
/// carries many jobs, and no job waits for another to finish.
async fn dispatch(
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<Option<Duration>>,
    ledger: JoinHandle<()>,
) -> ShutdownReport {
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, Arc<ClaimedJob>> = HashMap::new();
    let mut claiming: Option<Claiming> = None;
    // When to claim next (if a slot is free).
    let mut claim_at = Instant::now();
    // A NOTIFY arrived while a claim was in flight: that claim may have
    // missed the new job, so claim again after it whatever it got.
    let mut woken_during_claim = false;
    // Claims wait up to COALESCE for this many free slots.
    let fill_to = shared.concurrency.min(shared.batch_size).div_ceil(2);
    let mut few_free_since: Option<Instant> = None;
    // Reap expired leases about every half lease (at most every poll).
    let reap_every = (shared.lease / 2).min(shared.poll_interval.max(Duration::from_millis(50)));
    let mut next_reap = Instant::now();
    let mut error_delay = Duration::ZERO;
    let grace = loop {
        if let Some(grace) = *stop.borrow() {
            break grace;
        }
        if Instant::now() >= next_reap {
            if let Err(e) = shared.queue.reap_expired().await {
                tracing::warn!(error = %e, "reaping expired leases failed");
            }
            next_reap = Instant::now() + reap_every;
        }
        let free = shared.concurrency.saturating_sub(tasks.len());
        // A claim costs about the same for one job as for a batch (a round
        // trip, a commit, the index walk to the first ready job). When only
        // a few slots are free while jobs run, more are likely to free up
        // soon: wait a moment to claim for all of them (never long, so slow
        // jobs holding most slots delay the next claim by that moment only).
        let mut claim_from = claim_at;
        if free > 0 && free < fill_to && !tasks.is_empty() {
            let since = *few_free_since.get_or_insert_with(Instant::now);
            claim_from = claim_from.max(since + COALESCE);
        } else {
            few_free_since = None;
        }
        if claiming.is_none() && free > 0 && Instant::now() >= claim_from {
            few_free_since = None;
            let want = free.min(shared.batch_size);
            let shared = shared.clone();
            claiming = Some(Box::pin(async move {
                let sent = Instant::now();
                let result = shared
                    .queue
                    .claim(
                        &shared.queues,
                        &shared.kinds,
                        want,
                        shared.lease,
                        &shared.worker_id,
                    )
                    .await;
                (sent, want, result)
            }));
        }
        let wake_at = if claiming.is_none() && free > 0 {
            claim_from.min(next_reap)
        } else {
            next_reap
        };
        tokio::select! {
            () = stopping(&mut stop) => {}
            (sent, want, result) = claimed(&mut claiming), if claiming.is_some() => {
                claiming = None;
                match result {
                    Ok(jobs) => {
                        error_delay = Duration::ZERO;
                        let full = jobs.len() == want;
                        for job in jobs {
                            start_job(&shared, &mut tasks, &mut running, job, sent);
                        }
                        claim_at = if full || std::mem::take(&mut woken_during_claim) {
                            // More may be due: claim again as soon as a slot is free.
                            Instant::now()
                        } else {
                            idle_until(&shared).await
                        };
                    }
                    Err(e) => {
                        error_delay = (error_delay * 2)
                            .max(Duration::from_millis(100))
                            .min(Duration::from_secs(10));
                        tracing::warn!(error = %e, retry_in = ?error_delay, "claiming jobs failed");
                        claim_at = Instant::now() + error_delay;
                    }
                }
            }
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                finished(&mut running, done);
                // Collect every job that ended meanwhile (a completion
                // statement ends many at once), so the next claim fills all
                // their slots.
                while let Some(done) = tasks.try_join_next_with_id() {
                    finished(&mut running, done);
                }
            }
            _ = wake.notified() => {
                claim_at = Instant::now();
                woken_during_claim = claiming.is_some();
            }
            () = tokio::time::sleep_until(wake_at) => {}
        }
    };

    // Graceful shutdown: no more claims.
    let mut report = ShutdownReport::default();
    if let Some(claim) = claiming.take() {
        // Jobs claimed but not started: give them back at once.
        let (_, _, result) = claim.await;
        if let Ok(jobs) = result {
            report.released += release(&shared, jobs.into_iter().map(Arc::new).collect()).await;
        }
    }
    // Let running jobs finish in time.
    let deadline = Instant::now() + grace;
    while !tasks.is_empty() {
        tokio::select! {
            Some(done) = tasks.join_next_with_id() => {
                finished(&mut running, done);
                report.finished += 1;
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    tasks.abort_all();
    while let Some(done) = tasks.join_next_with_id().await {
        if let Ok((id, ())) = done {
            running.remove(&id);
            report.finished += 1;
        }
    }
    let rest: Vec<Arc<ClaimedJob>> = running.drain().map(|(_, job)| job).collect();
    report.released += release(&shared, rest).await;
    let _ = shared.ledger.send(LedgerOp::Stop);
    if let Err(e) = ledger.await {
        tracing::error!(error = %e, "work queue ledger failed");
    }
    report
}

/// After a claim that got fewer jobs than it asked for: when to look again.
/// Due jobs it did not get are locked by other claimers; look again
/// shortly. Otherwise when the next job is due, or at the next poll.
async fn idle_until(shared: &Shared) -> Instant {
    let mut sleep_for = shared.poll_interval;
    match shared
        .queue
        .next_due_in(&shared.queues, &shared.kinds)
        .await
    {
        Ok(Some(s)) => {
            sleep_for = sleep_for.min(Duration::from_secs_f64(s.max(0.025)));
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "reading the next due job failed"),
    }
    Instant::now() + sleep_for
}

/// Registers a claimed job's lease and starts its task.
fn start_job(
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    running: &mut HashMap<tokio::task::Id, Arc<ClaimedJob>>,
    job: ClaimedJob,
    claimed_at: Instant,
) {
    let Some(processor) = shared.processors.get(&job.kind).cloned() else {
        // Claims only ask for registered kinds.
        tracing::error!(job_id = %job.id, kind = %job.kind, "claimed a job of an unknown kind; it runs again when its lease expires");
        return;
    };
    let job = Arc::new(job);
    let (cancel, cancelled) = watch::channel(false);
    shared.held().insert(
        job.id,
        Held {
            job: job.clone(),
            confirmed: claimed_at,
            cancel,
            finishing: false,
            lost: false,
        },
    );
    let handle = tasks.spawn(run_job(shared.clone(), processor, job.clone(), cancelled));
    running.insert(handle.id(), job);
}

/// Releases `jobs` through the ledger (or directly when it is gone);
/// returns how many were released.
async fn release(shared: &Shared, jobs: Vec<Arc<ClaimedJob>>) -> usize {
    if jobs.is_empty() {
        return 0;
    }
    let (done, answer) = oneshot::channel();
    let op = LedgerOp::Release {
        jobs: jobs.clone(),
        done,
    };
    let answered = match shared.ledger.send(op) {
        Ok(()) => answer.await.ok(),
        // The ledger stops only after the last release; just in case.
        Err(_) => None,
    };
    let result = match answered {
        Some(result) => result,
        None => {
            let refs: Vec<&ClaimedJob> = jobs.iter().map(|j| &**j).collect();
            shared
                .queue
                .release_many(&refs)
                .await
                .map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(released) => {
            let mut n = 0;
            for (job, ok) in jobs.iter().zip(released) {
                if ok {
                    n += 1;
                    tracing::info!(job_id = %job.id, kind = %job.kind, attempt = job.attempt, "job released at shutdown");
                }
            }
            n
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = jobs.len(), "releasing jobs failed; they run again when their lease expires");
            0
        }
    }
}

fn finished(
    running: &mut HashMap<tokio::task::Id, Arc<ClaimedJob>>,
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    match done {
        Ok((id, ())) => {
            running.remove(&id);
        }
        Err(e) => {
            let job = running.remove(&e.id());
            tracing::error!(job_id = ?job.map(|j| j.id), error = %e, "job task failed; the job runs again when its lease expires");
        }
    }
}

/// Runs one claimed job: its processor, hooks and the fenced outcome. The
/// ledger renews its lease meanwhile.
async fn run_job(
    shared: Arc<Shared>,
    processor: Arc<dyn ErasedProcessor>,
    job: Arc<ClaimedJob>,
    cancelled: watch::Receiver<bool>,
) {
    let span = tracing::info_span!(
        "dcb.job",
        job_id = %job.id,
        kind = %job.kind,
        queue = %job.queue,
        attempt = job.attempt,
        worker = %shared.worker_id,
    );
    let _forget = Forget {
        shared: &shared,
        job: &job,
    };
    let ctx = JobContext::new(&job, shared.store.clone(), cancelled);
    process(&shared, &*processor, &job, &ctx)
        .instrument(span)
        .await;
}

async fn process(
    shared: &Shared,
    processor: &dyn ErasedProcessor,
    job: &Arc<ClaimedJob>,
    ctx: &JobContext,
) {
    let backoff = processor.backoff().unwrap_or(shared.backoff);
    let payload = match processor.decode(&job.payload) {
        Ok(p) => p,
        Err(e) => {
            // Without a payload the failure hook cannot run either.
            tracing::error!(error = %e, "job payload does not decode; job is dead");
            report(
                record_failure(shared, job, &e.to_string(), None).await,
                "marking job dead",
            );
            return;
        }
    };
    if job.exhausted() {
        let failure = JobFailure {
            error: job
                .last_error
                .clone()
                .unwrap_or_else(|| "no attempts left".to_string()),
            attempts: job.attempt.saturating_sub(1),
            permanent: false,
        };
        final_failure(shared, processor, job, ctx, &*payload, failure, &backoff).await;
        return;
    }
    tracing::debug!("running job");
    let outcome = match guard(processor.run(&*payload, ctx)).await {
        Ok(()) => succeed(shared, processor, job, ctx, &*payload).await,
        Err(e) => Err(e),
    };
    let error = match outcome {
        Ok(()) => return,
        Err(e) => e,
    };
    if ctx.is_cancelled() {
        tracing::warn!(error = %error, "attempt failed after losing its lease; not recorded");
        return;
    }
    match WorkQueue::retry_decision(job, &error, &backoff) {
        Some(delay) => match shared
            .queue
            .fail(job, &error.to_string(), Some(delay))
            .await
        {
            Ok(outcome) => {
                tracing::warn!(error = %error, retry_at = ?outcome, "job attempt failed; retrying");
            }
            Err(e) => report::<()>(Err(e), "recording failed attempt"),
        },
        None => {
            let failure = JobFailure {
                error: error.to_string(),
                attempts: job.attempt,
                permanent: error.is_permanent(),
            };
            final_failure(shared, processor, job, ctx, &*payload, failure, &backoff).await;
        }
    }
}

/// After `run` succeeded: check the lease, record the success hook's events
/// once, complete. Returns the error that makes this a failed attempt.
async fn succeed(
    shared: &Shared,
    processor: &dyn ErasedProcessor,
    job: &Arc<ClaimedJob>,
    ctx: &JobContext,
    payload: &(dyn Any + Send + Sync),
) -> Result<(), JobError> {
    // Do not even try to record the outcome when another worker owns the
    // job. A lease confirmed less than half a lease ago is still ours (no
    // other worker can claim the job before it expires); an older one is
    // checked in the database.
    if !shared.lease_is_fresh(job) {
        let asked = Instant::now();
        match shared.queue.heartbeat(job, shared.lease).await {
            Err(QueueError::LeaseLost { .. }) => {
                tracing::warn!("job ran, but its lease was lost; completion left to the owner");
                return Ok(());
            }
            Err(e) => return Err(JobError::retryable(e)),
            Ok(()) => shared.confirm(job, asked),
        }
    }
    let events = guard(processor.on_success(payload, ctx)).await?;
    if !events.is_empty() {
        let outcome = ctx.append_once(events).await?;
        tracing::debug!(appended = outcome.appended(), "success events recorded");
    }
    match complete(shared, job).await {
        Ok(true) => tracing::debug!("job succeeded"),
        Ok(false) => {
            tracing::warn!("job succeeded, but the completion was rejected: the lease was lost");
        }
        Err(e) => {
            tracing::warn!(error = %e, "recording completion failed; the job runs again when its lease expires");
        }
    }
    Ok(())
}

/// Marks `job` succeeded in the ledger's next completion statement.
/// Returns whether it was (`false`: the lease was lost).
async fn complete(shared: &Shared, job: &Arc<ClaimedJob>) -> Result<bool, String> {
    let (done, answer) = oneshot::channel();
    let op = LedgerOp::Complete {
        job: job.clone(),
        done,
    };
    if shared.ledger.send(op).is_ok() {
        if let Ok(result) = answer.await {
            return result;
        }
    }
    // The ledger stops only after every job task ended; just in case.
    match shared.queue.complete(job).await {
        Ok(()) => Ok(true),
        Err(QueueError::LeaseLost { .. }) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// Records a failed attempt (see [`WorkQueue::fail`]); the attempt is over
/// once it returns.
async fn record_failure(
    shared: &Shared,
    job: &ClaimedJob,
    error: &str,
    retry: Option<Duration>,
) -> Result<FailOutcome, QueueError> {
    shared.finishing(job);
    shared.queue.fail(job, error, retry).await
}

/// The last failure: note it on the job, record the failure hook's events
/// once, mark the job dead.
async fn final_failure(
    shared: &Shared,
    processor: &dyn ErasedProcessor,
    job: &ClaimedJob,
    ctx: &JobContext,
    payload: &(dyn Any + Send + Sync),
    failure: JobFailure,
    backoff: &Backoff,
) {
    match shared.queue.doom(job, &failure.error).await {
        Ok(()) => {}
        Err(QueueError::LeaseLost { .. }) => {
            tracing::warn!("job failed for good, but its lease was lost; left to the owner");
            return;
        }
        Err(e) => {
            report::<()>(Err(e), "recording final failure");
            return;
        }
    }
    let recorded = async {
        let events = guard(processor.on_failure(payload, &failure, ctx)).await?;
        if !events.is_empty() {
            let outcome = ctx.append_once(events).await?;
            tracing::debug!(appended = outcome.appended(), "failure events recorded");
        }
        Ok::<(), JobError>(())
    }
    .await;
    if let Err(e) = recorded {
        // Try again later: the job stays doomed, so the next claim records
        // the failure without running the job.
        let delay = backoff.delay(job.attempt);
        tracing::warn!(error = %e, retry_in = ?delay, "failure hook could not record its events; retrying later");
        report(
            record_failure(shared, job, &failure.error, Some(delay)).await,
            "rescheduling failure hook",
        );
        return;
    }
    match record_failure(shared, job, &failure.error, None).await {
        Ok(_) => tracing::error!(
            error = %failure.error,
            attempts = failure.attempts,
            permanent = failure.permanent,
            "job failed for good; it is dead"
        ),
        Err(e) => report::<()>(Err(e), "marking job dead"),
    }
}

/// Turns a panic in processor code into a retryable error.
async fn guard<T, F>(future: F) -> Result<T, JobError>
where
    F: std::future::Future<Output = Result<T, JobError>>,
{
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(JobError::retryable(format!(
                "processor panicked: {message}"
            )))
        }
    }
}

fn report<T>(result: Result<T, QueueError>, what: &str) {
    match result {
        Ok(_) => {}
        Err(QueueError::LeaseLost { .. }) => {
            tracing::warn!("{what}: rejected, the lease was lost");
        }
        Err(e) => {
            tracing::warn!(error = %e, "{what} failed; the job runs again when its lease expires")
        }
    }
}
