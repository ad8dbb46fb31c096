//! The dispatcher: claims jobs as slots free up, starts a task per job,
//! reaps expired leases, and on shutdown lets running jobs finish, then
//! releases the rest.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::attempt::run_job;
use super::ledger::LedgerOp;
use super::notify::stopping;
use super::{presence, Held, Shared, ShutdownReport};
use crate::queue::job::ClaimedJob;
use crate::queue::QueueError;

/// How long a claim waits for more free slots (see [`run`]).
const COALESCE: Duration = Duration::from_millis(3);

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
pub(super) async fn run(
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
    // Announce the set and look for unserved jobs; the first look waits a
    // round, so that worker sets starting together do not warn about each
    // other's kinds.
    let mut next_presence = Instant::now() + presence::EVERY;
    let mut warned = HashMap::new();
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
        if Instant::now() >= next_presence {
            presence::tick(&shared, &mut warned).await;
            next_presence = Instant::now() + presence::EVERY;
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
        }
        .min(next_presence);
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
    presence::retire(&shared).await;
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
