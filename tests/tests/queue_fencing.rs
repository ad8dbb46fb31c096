//! Fencing tests for the work queue: a job whose lease expired while its
//! first worker was paused is completed by a second worker; the first
//! worker's late completion (or failure, or heartbeat) is rejected and its
//! success event is not recorded twice.
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`).

mod queue_support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dcb_core::{EventMetadata, EventRecord, EventType, Tag};
use dcb_postgres::queue::{
    append_once, AppendOnce, JobContext, JobError, JobId, JobInfo, JobState, NewJob, Processor,
    QueueError, WorkQueue, Workers, WorkersHandle,
};
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::PgEventStore;
use queue_support::{job_events, wait_for_state};
use tokio::sync::watch;

const DONE: &str = "FenceJobDone";

#[derive(serde::Serialize, serde::Deserialize)]
struct FenceJob {
    name: String,
}

fn done_event(name: &str) -> EventRecord {
    EventRecord {
        event_type: EventType::from(DONE),
        tags: vec![Tag::new("item", name)],
        payload: b"{}".to_vec(),
        metadata: EventMetadata::new(),
    }
}

/// Succeeds, unless `gate` is set: then attempt 1 waits until the gate opens
/// (a worker paused mid-job).
struct Fence {
    runs: Arc<AtomicU32>,
    gate: Option<watch::Receiver<bool>>,
}

#[async_trait]
impl Processor for Fence {
    const KIND: &'static str = "fence_job";
    type Payload = FenceJob;

    async fn run(&self, _job: &FenceJob, ctx: &JobContext) -> Result<(), JobError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if let (Some(gate), 1) = (&self.gate, ctx.attempt()) {
            let mut gate = gate.clone();
            let _ = gate.wait_for(|open| *open).await;
        }
        Ok(())
    }

    async fn on_success(
        &self,
        job: &FenceJob,
        _ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        Ok(vec![done_event(&job.name)])
    }
}

async fn setup() -> (TestDatabase, WorkQueue, JobId) {
    let db = TestDatabase::create().await;
    let queue = WorkQueue::new(db.pool().clone(), "dcb").expect("schema");
    queue.migrate().await.expect("migrate queue");
    let id = queue
        .enqueue(
            db.pool(),
            &NewJob::for_processor::<Fence>(&FenceJob { name: "f".into() }).expect("payload"),
        )
        .await
        .expect("enqueue")
        .expect("not a duplicate");
    (db, queue, id)
}

/// Starts workers as `second-worker` (a lease of 5 s) and checks that they
/// complete job `id` as its attempt 2, recording its success event once;
/// returns them, their count of runs and the completed job.
async fn second_worker_completes(
    queue: &WorkQueue,
    store: &PgEventStore,
    id: JobId,
) -> (WorkersHandle, Arc<AtomicU32>, JobInfo) {
    let runs = Arc::new(AtomicU32::new(0));
    let workers = Workers::new(queue.clone(), store.clone())
        .register(Fence {
            runs: runs.clone(),
            gate: None,
        })
        .worker_id("second-worker")
        .lease(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(50))
        .start()
        .await
        .expect("start second worker");
    let done = wait_for_state(&queue.admin(), id, JobState::Succeeded).await;
    assert_eq!(done.attempt, 2);
    assert_eq!(done.locked_by.as_deref(), Some("second-worker"));
    assert_eq!(job_events(&store, DONE, id).await.len(), 1);
    (workers, runs, done)
}

/// The protocol level: worker 1 claims, pauses past its lease; worker 2
/// (real workers) reclaims and completes; worker 1's late calls are rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_completion_of_a_worker_that_lost_its_lease_is_rejected() {
    let (db, queue, id) = setup().await;
    let store = db.store().await;

    let claimed = queue
        .claim(
            &["default".to_string()],
            &["fence_job".to_string()],
            10,
            Duration::from_millis(500),
            "paused-worker",
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let first = claimed.into_iter().next().unwrap();
    assert_eq!((first.id, first.attempt), (id, 1));
    // Worker 1 still owns it within its lease.
    queue
        .heartbeat(&first, Duration::from_millis(500))
        .await
        .expect("heartbeat within the lease");

    // Worker 1 "pauses" past its lease.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let (workers, runs, _) = second_worker_completes(&queue, &store, id).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Worker 1 wakes up and tries to finish its attempt.
    let late = queue.complete(&first).await;
    assert!(
        matches!(late, Err(QueueError::LeaseLost { job_id, attempt: 1 }) if job_id == id),
        "{late:?}"
    );
    assert!(queue
        .fail(&first, "late failure", None)
        .await
        .unwrap_err()
        .is_lease_lost());
    assert!(queue
        .fail(&first, "late failure", Some(Duration::ZERO))
        .await
        .unwrap_err()
        .is_lease_lost());
    assert!(queue
        .heartbeat(&first, Duration::from_secs(5))
        .await
        .unwrap_err()
        .is_lease_lost());
    assert!(queue.release(&first).await.unwrap_err().is_lease_lost());
    assert!(queue
        .doom(&first, "late")
        .await
        .unwrap_err()
        .is_lease_lost());
    // Even if it records its success event, it is not recorded twice.
    let again = append_once(&store, Tag::new("job", id), vec![done_event("f")])
        .await
        .expect("append_once");
    assert_eq!(again, AppendOnce::AlreadyRecorded);

    let after = queue.admin().job(id).await.unwrap().unwrap();
    assert_eq!(after.state, JobState::Succeeded);
    assert_eq!(after.attempt, 2);
    assert_eq!(
        after
            .last_error
            .as_deref()
            .map(|e| e.contains("lease expired")),
        Some(true)
    );
    assert_eq!(job_events(&store, DONE, id).await.len(), 1);

    workers.shutdown(Duration::from_secs(5)).await;
    store.shutdown().await;
    db.cleanup().await;
}

/// The same with two real worker sets: the first one's processor is stuck
/// (and its heartbeat too slow to keep the lease); when it resumes after the
/// second one completed the job, its result is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_worker_set_cannot_complete_a_job_another_worker_completed() {
    let (db, queue, id) = setup().await;
    let store = db.store().await;

    let (open, gate) = watch::channel(false);
    let first_runs = Arc::new(AtomicU32::new(0));
    let first = Workers::new(queue.clone(), store.clone())
        .register(Fence {
            runs: first_runs.clone(),
            gate: Some(gate),
        })
        .worker_id("first-worker")
        // One slot, taken by the stuck attempt: it cannot reclaim the job.
        .concurrency(1)
        .lease(Duration::from_millis(500))
        // Heartbeats far apart: the "paused" worker loses its lease.
        .heartbeat(Duration::from_secs(30))
        .poll_interval(Duration::from_millis(50))
        .start()
        .await
        .expect("start first worker");
    let running = wait_for_state(&queue.admin(), id, JobState::Running).await;
    assert_eq!(running.locked_by.as_deref(), Some("first-worker"));
    while first_runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (second, second_runs, done) = second_worker_completes(&queue, &store, id).await;

    // The first worker resumes: its attempt 1 finishes (within the
    // shutdown's grace period), but the completion and the success event
    // are refused.
    open.send(true).expect("open the gate");
    let r1 = first.shutdown(Duration::from_secs(30)).await;
    let r2 = second.shutdown(Duration::from_secs(5)).await;
    assert_eq!((r1.released, r2.released), (0, 0));
    let after = queue.admin().job(id).await.unwrap().unwrap();
    assert_eq!(after.state, JobState::Succeeded);
    assert_eq!(after.attempt, 2);
    assert_eq!(after.locked_by.as_deref(), Some("second-worker"));
    // Not a write to the job since the second worker completed it.
    assert_eq!(
        (after.updated_at, after.finished_at),
        (done.updated_at, done.finished_at)
    );
    assert_eq!(job_events(&store, DONE, id).await.len(), 1);
    assert_eq!(first_runs.load(Ordering::SeqCst), 1);
    assert_eq!(second_runs.load(Ordering::SeqCst), 1);
    store.shutdown().await;
    db.cleanup().await;
}
