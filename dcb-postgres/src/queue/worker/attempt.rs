//! One attempt at a job: decode its payload, run its processor (panics
//! caught), record the success or failure hook's events once, and the
//! fenced outcome.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use dcb_core::Backoff;
use futures::FutureExt;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::ledger::LedgerOp;
use super::Shared;
use crate::queue::job::ClaimedJob;
use crate::queue::processor::{ErasedProcessor, JobContext, JobError, JobFailure};
use crate::queue::{FailOutcome, QueueError, WorkQueue};

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

/// Runs one claimed job: its processor, hooks and the fenced outcome. The
/// ledger renews its lease meanwhile.
pub(super) async fn run_job(
    shared: Arc<Shared>,
    processor: Arc<dyn ErasedProcessor>,
    job: Arc<ClaimedJob>,
    cancelled: watch::Receiver<bool>,
) {
    // OpenTelemetry messaging conventions: a `process` operation of the
    // `dcb` system on the job's queue, a child of the span that enqueued it.
    let span = tracing::info_span!(
        "dcb.job",
        "otel.name" = %format_args!("run {}", job.queue),
        "otel.kind" = "consumer",
        "messaging.system" = "dcb",
        "messaging.operation.type" = "process",
        "messaging.operation.name" = "run",
        "messaging.destination.name" = %job.queue,
        "messaging.message.id" = %job.id,
        "messaging.client.id" = %shared.worker_id,
        job_id = %job.id,
        kind = %job.kind,
        queue = %job.queue,
        attempt = job.attempt,
        worker = %shared.worker_id,
    );
    dcb_core::trace::continue_from(&span, job.trace.as_ref());
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
