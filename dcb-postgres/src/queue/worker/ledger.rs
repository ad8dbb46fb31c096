//! The ledger: one task per worker set that runs all its multi-row
//! statements (completions, releases, heartbeats), one at a time.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::Shared;
use crate::queue::job::ClaimedJob;

/// At most this many completions go into one statement.
const COMPLETIONS_PER_STATEMENT: usize = 1_000;

/// Where the ledger answers a completion: whether the job was completed
/// (`false`: its lease was lost), or why the statement failed.
pub(super) type Completed = oneshot::Sender<Result<bool, String>>;

/// What job tasks and the dispatcher ask of the ledger.
pub(super) enum LedgerOp {
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

/// Records a worker set's completions and renews its leases, a batch per
/// statement: completions that arrive while a statement runs go into the
/// next one (so under load a statement carries many, and alone one goes at
/// once), and one heartbeat statement renews every held lease. One task
/// runs all of a worker set's multi-row statements, one at a time, so they
/// never wait for each other's row locks.
pub(super) async fn run(shared: Arc<Shared>, mut ops: mpsc::UnboundedReceiver<LedgerOp>) {
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
