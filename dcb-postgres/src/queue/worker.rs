//! Workers: claim jobs, run their processors with heartbeats, record the
//! outcome, wake on NOTIFY or a timer, shut down gracefully.

use std::any::Any;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use dcb_core::EventStore;
use futures::FutureExt;
use sqlx::postgres::PgListener;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use super::job::{Backoff, ClaimedJob, DEFAULT_QUEUE};
use super::processor::{Erased, ErasedProcessor, JobContext, JobError, JobFailure, Processor};
use super::{QueueError, WorkQueue};

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
    /// third of it, a 2 s polling fallback, [`Backoff::default`].
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
            backoff: Backoff::default(),
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

    /// Claims at most `n` jobs per statement (default 32, at least 1).
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

    /// How often a running job's lease is renewed (default: a third of the
    /// lease).
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
        });
        let (stop_tx, stop_rx) = watch::channel(None);
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(shared.clone(), wake.clone(), stop_rx.clone()));
        let dispatcher = tokio::spawn(dispatch(shared, wake, stop_rx));
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
    /// Jobs stopped at the end of the grace period and released for another
    /// worker to take at once.
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

async fn dispatch(
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<Option<Duration>>,
) -> ShutdownReport {
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, ClaimedJob> = HashMap::new();
    // Reap expired leases about every half lease (at most every poll).
    let reap_every = (shared.lease / 2).min(shared.poll_interval.max(Duration::from_millis(50)));
    let mut next_reap = Instant::now();
    let mut error_delay = Duration::ZERO;
    let grace = loop {
        if let Some(grace) = *stop.borrow() {
            break grace;
        }
        let now = Instant::now();
        if now >= next_reap {
            if let Err(e) = shared.queue.reap_expired().await {
                tracing::warn!(error = %e, "reaping expired leases failed");
            }
            next_reap = now + reap_every;
        }
        let mut sleep_for = shared.poll_interval;
        let free = shared.concurrency.saturating_sub(tasks.len());
        if free > 0 {
            let want = free.min(shared.batch_size);
            match shared
                .queue
                .claim(
                    &shared.queues,
                    &shared.kinds,
                    want,
                    shared.lease,
                    &shared.worker_id,
                )
                .await
            {
                Ok(jobs) => {
                    error_delay = Duration::ZERO;
                    let full = jobs.len() == want;
                    for job in jobs {
                        let Some(processor) = shared.processors.get(&job.kind).cloned() else {
                            continue;
                        };
                        let handle = tasks.spawn(run_job(shared.clone(), processor, job.clone()));
                        running.insert(handle.id(), job);
                    }
                    if full && tasks.len() < shared.concurrency {
                        // A full batch: more may be due. Claim again at once.
                        continue;
                    }
                    if tasks.len() < shared.concurrency {
                        match shared
                            .queue
                            .next_due_in(&shared.queues, &shared.kinds)
                            .await
                        {
                            Ok(Some(s)) => {
                                // Due jobs we did not get are locked by other
                                // claimers; look again shortly.
                                let s = Duration::from_secs_f64(s.max(0.025));
                                sleep_for = sleep_for.min(s);
                            }
                            Ok(None) => {}
                            Err(e) => tracing::warn!(error = %e, "reading the next due job failed"),
                        }
                    }
                }
                Err(e) => {
                    error_delay = (error_delay * 2)
                        .max(Duration::from_millis(100))
                        .min(Duration::from_secs(10));
                    tracing::warn!(error = %e, retry_in = ?error_delay, "claiming jobs failed");
                    sleep_for = error_delay;
                }
            }
        }
        sleep_for = sleep_for.min(next_reap.saturating_duration_since(Instant::now()));
        let has_free = tasks.len() < shared.concurrency;
        tokio::select! {
            () = stopping(&mut stop) => {}
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                finished(&mut running, done);
            }
            _ = wake.notified(), if has_free => {}
            _ = tokio::time::sleep(sleep_for) => {}
        }
    };

    // Graceful shutdown: no more claims; let running jobs finish in time.
    let mut report = ShutdownReport::default();
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
    for (_, job) in running.drain() {
        match shared.queue.release(&job).await {
            Ok(()) => {
                report.released += 1;
                tracing::info!(job_id = %job.id, kind = %job.kind, attempt = job.attempt, "job released at shutdown");
            }
            Err(QueueError::LeaseLost { .. }) => {}
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "releasing job failed; it runs again when its lease expires");
            }
        }
    }
    report
}

fn finished(
    running: &mut HashMap<tokio::task::Id, ClaimedJob>,
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

/// Runs one claimed job: its processor (with heartbeats alongside), hooks
/// and the fenced outcome.
async fn run_job(shared: Arc<Shared>, processor: Arc<dyn ErasedProcessor>, job: ClaimedJob) {
    let span = tracing::info_span!(
        "dcb.job",
        job_id = %job.id,
        kind = %job.kind,
        queue = %job.queue,
        attempt = job.attempt,
        worker = %shared.worker_id,
    );
    async {
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let ctx = JobContext::new(&job, shared.store.clone(), cancel_rx);
        let work = process(&shared, &*processor, &job, &ctx);
        tokio::pin!(work);
        let start = Instant::now() + shared.heartbeat;
        let mut ticks = tokio::time::interval_at(start, shared.heartbeat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beating = true;
        loop {
            tokio::select! {
                () = &mut work => break,
                _ = ticks.tick(), if beating => {
                    match shared.queue.heartbeat(&job, shared.lease).await {
                        Ok(()) => {}
                        Err(QueueError::LeaseLost { .. }) => {
                            tracing::warn!("lease lost while running; this attempt's result will be rejected");
                            let _ = cancel_tx.send(true);
                            beating = false;
                        }
                        Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                    }
                }
            }
        }
    }
    .instrument(span)
    .await;
}

async fn process(
    shared: &Shared,
    processor: &dyn ErasedProcessor,
    job: &ClaimedJob,
    ctx: &JobContext,
) {
    let backoff = processor.backoff().unwrap_or(shared.backoff);
    let payload = match processor.decode(&job.payload) {
        Ok(p) => p,
        Err(e) => {
            // Without a payload the failure hook cannot run either.
            tracing::error!(error = %e, "job payload does not decode; job is dead");
            report(
                shared.queue.fail(job, &e.to_string(), None).await,
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
    job: &ClaimedJob,
    ctx: &JobContext,
    payload: &(dyn Any + Send + Sync),
) -> Result<(), JobError> {
    // Do not even try to record the outcome when another worker owns the job.
    match shared.queue.heartbeat(job, shared.lease).await {
        Err(QueueError::LeaseLost { .. }) => {
            tracing::warn!("job ran, but its lease was lost; completion left to the owner");
            return Ok(());
        }
        Err(e) => return Err(JobError::retryable(e)),
        Ok(()) => {}
    }
    let events = guard(processor.on_success(payload, ctx)).await?;
    if !events.is_empty() {
        let outcome = ctx.append_once(events).await?;
        tracing::debug!(appended = outcome.appended(), "success events recorded");
    }
    match shared.queue.complete(job).await {
        Ok(()) => tracing::debug!("job succeeded"),
        Err(QueueError::LeaseLost { .. }) => {
            tracing::warn!("job succeeded, but the completion was rejected: the lease was lost");
        }
        Err(e) => {
            tracing::warn!(error = %e, "recording completion failed; the job runs again when its lease expires");
        }
    }
    Ok(())
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
            shared.queue.fail(job, &failure.error, Some(delay)).await,
            "rescheduling failure hook",
        );
        return;
    }
    match shared.queue.fail(job, &failure.error, None).await {
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
