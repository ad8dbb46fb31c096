//! Work queue recovery: heartbeats keep a long job's lease; a worker lost
//! during the last allowed attempt, or while recording a final failure, leaves
//! a job that the next worker marks dead (recording the failure event once)
//! without running it again.
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`).

mod queue_support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dcb_core::{EventMetadata, EventRecord, EventType};
use dcb_postgres::queue::{
    ClaimedJob, JobContext, JobError, JobFailure, JobId, JobState, NewJob, Processor, WorkQueue,
    Workers, WorkersHandle,
};
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::PgEventStore;
use queue_support::{job_events, wait_for_state};

const FAILED: &str = "SlowJobFailed";

#[derive(serde::Serialize, serde::Deserialize)]
struct SlowJob {
    sleep_ms: u64,
}

#[derive(Clone, Default)]
struct Slow {
    runs: Arc<AtomicU32>,
    failures: Arc<std::sync::Mutex<Vec<JobFailure>>>,
}

#[async_trait]
impl Processor for Slow {
    const KIND: &'static str = "slow";
    type Payload = SlowJob;

    async fn run(&self, job: &SlowJob, _ctx: &JobContext) -> Result<(), JobError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
        Ok(())
    }

    async fn on_failure(
        &self,
        _job: &SlowJob,
        failure: &JobFailure,
        _ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        self.failures.lock().unwrap().push(failure.clone());
        Ok(vec![EventRecord {
            event_type: EventType::from(FAILED),
            tags: vec![],
            payload: b"{}".to_vec(),
            metadata: EventMetadata::new(),
        }])
    }
}

/// Enqueues a quick `Slow` job allowed `max_attempts`, claimed at once (for
/// 300 ms) by a worker that then vanishes.
async fn claimed_by_a_lost_worker(
    db: &TestDatabase,
    queue: &WorkQueue,
    max_attempts: u32,
) -> (JobId, ClaimedJob) {
    let id = queue
        .enqueue(
            db.pool(),
            &NewJob::for_processor::<Slow>(&SlowJob { sleep_ms: 0 })
                .unwrap()
                .max_attempts(max_attempts),
        )
        .await
        .unwrap()
        .unwrap();
    let mut lost = queue
        .claim(
            &["default".to_string()],
            &[Slow::KIND.to_string()],
            1,
            Duration::from_millis(300),
            "lost-worker",
        )
        .await
        .unwrap();
    assert_eq!(lost.len(), 1);
    (id, lost.remove(0))
}

/// Workers with a fresh `Slow` processor, taking over from a lost worker.
async fn survivors(queue: &WorkQueue, store: &PgEventStore) -> (WorkersHandle, Slow) {
    let slow = Slow::default();
    let workers = Workers::new(queue.clone(), store.clone())
        .register(slow.clone())
        .poll_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    (workers, slow)
}

async fn setup() -> (TestDatabase, PgEventStore, WorkQueue) {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let queue = WorkQueue::new(db.pool().clone(), "dcb").expect("schema");
    queue.migrate().await.expect("migrate queue");
    (db, store, queue)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_the_lease_of_a_job_longer_than_the_lease() {
    let (db, store, queue) = setup().await;
    let slow = Slow::default();
    let id = queue
        .enqueue(
            db.pool(),
            &NewJob::for_processor::<Slow>(&SlowJob { sleep_ms: 5000 }).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    // Two worker sets: if the lease lapsed, the other one would take the job.
    // The job runs 2.5 leases; renewals twenty times a lease leave room for
    // a busy machine's stalls (only a stall of a whole lease could cost it).
    let start = || {
        store
            .workers()
            .register(slow.clone())
            .lease(Duration::from_secs(2))
            .heartbeat(Duration::from_millis(100))
            .poll_interval(Duration::from_millis(50))
            .start()
    };
    let a = start().await.unwrap();
    let b = start().await.unwrap();
    let done = wait_for_state(&queue.admin(), id, JobState::Succeeded).await;
    assert_eq!(done.attempt, 1);
    assert_eq!(slow.runs.load(Ordering::SeqCst), 1);
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
    store.shutdown().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_lost_during_the_last_attempt_leaves_a_dead_job_with_one_failure_event() {
    let (db, store, queue) = setup().await;
    // A worker claims it and vanishes.
    let (id, _lost) = claimed_by_a_lost_worker(&db, &queue, 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    let (workers, slow) = survivors(&queue, &store).await;
    let dead = wait_for_state(&queue.admin(), id, JobState::Dead).await;
    assert!(dead
        .last_error
        .as_deref()
        .unwrap()
        .contains("lease expired during attempt 1"));
    assert_eq!(slow.runs.load(Ordering::SeqCst), 0, "no attempts were left");
    assert_eq!(job_events(&store, FAILED, id).await.len(), 1);
    assert_eq!(slow.failures.lock().unwrap()[0].attempts, 1);
    workers.shutdown(Duration::from_secs(1)).await;
    store.shutdown().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_lost_while_recording_a_final_failure_does_not_run_the_job_again() {
    let (db, store, queue) = setup().await;
    let (id, lost) = claimed_by_a_lost_worker(&db, &queue, 5).await;
    // It decided the job failed for good (a permanent error), then vanished
    // before recording the failure event.
    queue.doom(&lost, "permanent: bad input").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    let (workers, slow) = survivors(&queue, &store).await;
    let dead = wait_for_state(&queue.admin(), id, JobState::Dead).await;
    assert_eq!(slow.runs.load(Ordering::SeqCst), 0);
    assert!(dead.last_error.as_deref().unwrap().contains("bad input"));
    assert_eq!(job_events(&store, FAILED, id).await.len(), 1);
    workers.shutdown(Duration::from_secs(1)).await;
    store.shutdown().await;
    db.cleanup().await;
}
