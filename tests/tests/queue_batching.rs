//! The work queue's batch paths: completions, heartbeats and releases of
//! many jobs per statement stay fenced per job (a stale attempt or a
//! cancelled job is refused, the others go through), and workers that claim
//! in batches and record outcomes in batches neither lose nor double a job.
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`).

mod queue_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_core::{EventMetadata, EventRecord, EventType, Query, ReadOptions};
use dcb_postgres::queue::{
    ClaimedJob, JobContext, JobError, JobId, JobInfo, JobState, NewJob, Processor, QueueAdmin,
    WorkQueue,
};
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::PgEventStore;
use dcb_tests::read::read_all;
use queue_support::wait_for_state;

const DONE: &str = "BatchJobDone";

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct BatchJob {
    /// Sleep this long in `run`.
    sleep_ms: u64,
    /// Record a success event (once) when done.
    hook: bool,
    /// Wait (up to 10 s) for the attempt to be cancelled.
    wait_for_cancel: bool,
    /// Wait until the test opens the batcher's gate.
    #[serde(default)]
    wait_for_gate: bool,
}

fn batch_job() -> BatchJob {
    BatchJob {
        sleep_ms: 0,
        hook: false,
        wait_for_cancel: false,
        wait_for_gate: false,
    }
}

/// Counts runs per job; optionally sleeps, waits for cancellation, records
/// a success event.
#[derive(Clone)]
struct Batcher {
    runs: Arc<Mutex<HashMap<JobId, Vec<u32>>>>,
    saw_cancel: Arc<AtomicBool>,
    gate: tokio::sync::watch::Sender<bool>,
}

impl Default for Batcher {
    fn default() -> Self {
        Batcher {
            runs: Arc::default(),
            saw_cancel: Arc::default(),
            gate: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Batcher {
    fn runs_of(&self, id: JobId) -> Vec<u32> {
        self.runs
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait]
impl Processor for Batcher {
    const KIND: &'static str = "batch_job";
    type Payload = BatchJob;

    async fn run(&self, job: &BatchJob, ctx: &JobContext) -> Result<(), JobError> {
        self.runs
            .lock()
            .unwrap()
            .entry(ctx.job_id())
            .or_default()
            .push(ctx.attempt());
        if job.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
        }
        if job.wait_for_gate {
            let _ = self.gate.subscribe().wait_for(|open| *open).await;
        }
        if job.wait_for_cancel
            && tokio::time::timeout(Duration::from_secs(10), ctx.cancelled())
                .await
                .is_ok()
        {
            self.saw_cancel.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn on_success(
        &self,
        job: &BatchJob,
        _ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        if !job.hook {
            return Ok(Vec::new());
        }
        Ok(vec![EventRecord {
            event_type: EventType::from(DONE),
            tags: vec![],
            payload: b"{}".to_vec(),
            metadata: EventMetadata::new(),
        }])
    }
}

async fn setup() -> (TestDatabase, PgEventStore, WorkQueue) {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let queue = store.queue();
    queue.migrate().await.expect("migrate queue");
    (db, store, queue)
}

async fn enqueue(db: &TestDatabase, queue: &WorkQueue, job: &BatchJob) -> JobId {
    queue
        .enqueue(
            db.pool(),
            &NewJob::for_processor::<Batcher>(job).expect("payload"),
        )
        .await
        .expect("enqueue")
        .expect("not a duplicate")
}

async fn claim(queue: &WorkQueue, limit: usize, lease: Duration, worker: &str) -> Vec<ClaimedJob> {
    queue
        .claim(
            &["default".to_string()],
            &[Batcher::KIND.to_string()],
            limit,
            lease,
            worker,
        )
        .await
        .expect("claim")
}

async fn info(queue: &WorkQueue, id: JobId) -> JobInfo {
    admin(queue)
        .job(id)
        .await
        .expect("read")
        .expect("job exists")
}

fn admin(queue: &WorkQueue) -> QueueAdmin {
    queue.admin()
}

/// Waits (up to 30 s) until the database's clock is past `at`.
async fn wait_past(queue: &WorkQueue, at: chrono::DateTime<chrono::Utc>) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(queue.pool())
            .await
            .unwrap();
        if now > at {
            return;
        }
        assert!(
            Instant::now() < until,
            "the database clock never passed {at}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reaps until `n` expired leases were put back (up to 30 s).
async fn reap(queue: &WorkQueue, n: u64) {
    let until = Instant::now() + Duration::from_secs(30);
    let mut reaped = 0;
    while reaped < n {
        reaped += queue.reap_expired().await.unwrap();
        assert!(
            Instant::now() < until,
            "only {reaped} of {n} leases expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reaped, n);
}

async fn done_events(store: &PgEventStore) -> Vec<dcb_core::SequencedEvent> {
    let (_, events) = read_all(store, &Query::types([DONE]), ReadOptions::forwards()).await;
    events
}

/// One statement completes a batch; a job whose lease expired and was
/// claimed again is refused (its new owner completes it later), the others
/// are completed; completing again is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_completion_is_fenced_per_job() {
    let (db, store, queue) = setup().await;
    let a = enqueue(&db, &queue, &batch_job()).await;
    let b = enqueue(&db, &queue, &batch_job()).await;
    let c = enqueue(&db, &queue, &batch_job()).await;

    let first = claim(&queue, 2, Duration::from_secs(30), "w1").await;
    assert_eq!(
        first.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![a, b],
        "oldest due first"
    );
    // C's first lease runs out; it is reaped and claimed again.
    let stale = claim(&queue, 1, Duration::from_millis(100), "w1").await;
    assert_eq!(stale[0].id, c);
    reap(&queue, 1).await;
    let fresh = claim(&queue, 1, Duration::from_secs(30), "w2").await;
    assert_eq!((fresh[0].id, fresh[0].attempt), (c, 2));

    assert_eq!(queue.complete_many(&[]).await.unwrap(), Vec::<bool>::new());
    let completed = queue
        .complete_many(&[&first[0], &stale[0], &first[1]])
        .await
        .unwrap();
    assert_eq!(completed, vec![true, false, true]);
    assert_eq!(info(&queue, a).await.state, JobState::Succeeded);
    assert_eq!(info(&queue, b).await.state, JobState::Succeeded);
    let c_now = info(&queue, c).await;
    assert_eq!(
        (c_now.state, c_now.attempt, c_now.locked_by.as_deref()),
        (JobState::Running, 2, Some("w2")),
        "the stale attempt changed nothing"
    );

    // The owner completes C; completing A again is refused.
    let completed = queue.complete_many(&[&fresh[0], &first[0]]).await.unwrap();
    assert_eq!(completed, vec![true, false]);
    assert_eq!(info(&queue, c).await.state, JobState::Succeeded);
    assert!(queue.complete(&stale[0]).await.unwrap_err().is_lease_lost());

    store.shutdown().await;
    db.cleanup().await;
}

/// One statement renews every lease of a batch, keeping the jobs from
/// being reaped past their original lease; a cancelled job, an expired
/// lease and a stale attempt are reported lost, each on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_heartbeat_renews_every_lease_and_reports_each_lost_one() {
    let (db, store, queue) = setup().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(enqueue(&db, &queue, &batch_job()).await);
    }
    let jobs = claim(&queue, 3, Duration::from_millis(500), "w1").await;
    assert_eq!(jobs.len(), 3);
    let all: Vec<&ClaimedJob> = jobs.iter().collect();
    let first_lease = info(&queue, ids[0]).await.lease_until.expect("leased");

    // Renewed for ten minutes: past the first lease, nothing is reaped.
    assert_eq!(
        queue
            .heartbeat_many(&all, Duration::from_secs(600))
            .await
            .unwrap(),
        vec![true; 3]
    );
    wait_past(&queue, first_lease).await;
    assert_eq!(queue.reap_expired().await.unwrap(), 0);
    for id in &ids {
        let job = info(&queue, *id).await;
        assert_eq!((job.state, job.attempt), (JobState::Running, 1));
        assert!(job.lease_until.unwrap() > first_lease + chrono::Duration::seconds(500));
    }

    // A cancelled job's lease is lost; the others are still renewed.
    assert!(admin(&queue).cancel(jobs[1].id).await.unwrap());
    let short = Duration::from_millis(100);
    assert_eq!(
        queue.heartbeat_many(&all, short).await.unwrap(),
        vec![true, false, true]
    );

    // Without more heartbeats the (now short) leases run out and the jobs
    // are reaped.
    reap(&queue, 2).await;
    assert_eq!(
        queue.heartbeat_many(&all, short).await.unwrap(),
        vec![false; 3]
    );

    // The same jobs claimed again: only the new attempts are renewed.
    let again = claim(&queue, 3, Duration::from_secs(600), "w2").await;
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|j| j.attempt == 2));
    let mixed = [&jobs[0], &again[0], &jobs[2], &again[1]];
    assert_eq!(
        queue
            .heartbeat_many(&mixed, Duration::from_secs(600))
            .await
            .unwrap(),
        vec![false, true, false, true]
    );

    store.shutdown().await;
    db.cleanup().await;
}

/// One statement releases a batch: the jobs are due again at once and the
/// attempt does not count; a second release (or a stale one) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_release_gives_jobs_back_without_counting_the_attempt() {
    let (db, store, queue) = setup().await;
    let a = enqueue(&db, &queue, &batch_job()).await;
    let b = enqueue(&db, &queue, &batch_job()).await;
    let jobs = claim(&queue, 2, Duration::from_secs(30), "w1").await;
    let all: Vec<&ClaimedJob> = jobs.iter().collect();
    assert_eq!(queue.release_many(&all).await.unwrap(), vec![true, true]);
    for id in [a, b] {
        let job = info(&queue, id).await;
        assert_eq!((job.state, job.attempt), (JobState::Ready, 0));
        assert!(job.lease_until.is_none());
    }
    assert_eq!(queue.release_many(&all).await.unwrap(), vec![false, false]);
    let again = claim(&queue, 2, Duration::from_secs(30), "w2").await;
    assert!(again.iter().all(|j| j.attempt == 1));

    store.shutdown().await;
    db.cleanup().await;
}

/// Many jobs through two worker sets that claim in small batches and
/// complete in batches: every job runs once and succeeds once, and every
/// hook event is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_claiming_and_completing_in_batches_run_each_job_once() {
    let (db, store, queue) = setup().await;
    const JOBS: usize = 600;
    let jobs: Vec<NewJob> = (0..JOBS)
        .map(|i| {
            NewJob::for_processor::<Batcher>(&BatchJob {
                hook: i % 10 == 0,
                ..batch_job()
            })
            .expect("payload")
        })
        .collect();
    let ids = queue.enqueue_many(db.pool(), &jobs).await.expect("enqueue");
    assert_eq!(ids.len(), JOBS);

    let batcher = Batcher::default();
    let one = store
        .workers()
        .register(batcher.clone())
        .concurrency(16)
        .batch_size(8)
        .poll_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let two = store
        .workers()
        .register(batcher.clone())
        .concurrency(5)
        .batch_size(3)
        .poll_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();

    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = admin(&queue).counts(None).await.unwrap();
        if counts.succeeded == JOBS as u64 {
            break;
        }
        assert!(Instant::now() < until, "not all jobs succeeded: {counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r1 = one.shutdown(Duration::from_secs(5)).await;
    let r2 = two.shutdown(Duration::from_secs(5)).await;
    assert_eq!((r1.released, r2.released), (0, 0));

    for id in &ids {
        assert_eq!(batcher.runs_of(*id), vec![1], "job {id}");
        assert_eq!(info(&queue, *id).await.attempt, 1);
    }
    assert_eq!(batcher.runs.lock().unwrap().len(), JOBS);
    let events = done_events(&store).await;
    assert_eq!(events.len(), JOBS / 10);
    let mut tagged: Vec<String> = events
        .iter()
        .flat_map(|e| e.tags().iter().map(|t| t.to_string()))
        .filter(|t| t.starts_with("job:"))
        .collect();
    tagged.sort();
    tagged.dedup();
    assert_eq!(tagged.len(), JOBS / 10, "one event per hooked job");

    store.shutdown().await;
    db.cleanup().await;
}

/// Jobs running longer than their lease in one worker set keep their
/// leases through the set's batch heartbeats, although another worker set
/// competes for them. The jobs run until the database shows each lease
/// renewed past two and a half leases after it began; heartbeats come
/// twenty times a lease, so only a stall of a whole lease could cost one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_heartbeats_keep_the_leases_of_many_long_jobs() {
    let (db, store, queue) = setup().await;
    let lease = Duration::from_secs(2);
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            enqueue(
                &db,
                &queue,
                &BatchJob {
                    wait_for_gate: true,
                    ..batch_job()
                },
            )
            .await,
        );
    }
    let batcher = Batcher::default();
    let start = |batcher: Batcher| {
        store
            .workers()
            .register(batcher)
            .concurrency(6)
            .lease(lease)
            .heartbeat(lease / 20)
            .poll_interval(Duration::from_millis(50))
            .start()
    };
    let one = start(batcher.clone()).await.unwrap();
    let two = start(batcher.clone()).await.unwrap();
    let mut began = Vec::new();
    for id in &ids {
        wait_for_state(&queue.admin(), *id, JobState::Running).await;
        began.push(chrono::Utc::now());
    }
    let outlived = *began.iter().max().unwrap() + chrono::Duration::milliseconds(5_000);
    wait_past(&queue, outlived).await;
    for id in &ids {
        let job = info(&queue, *id).await;
        assert_eq!((job.state, job.attempt), (JobState::Running, 1), "{job:?}");
        assert!(job.lease_until.unwrap() > outlived, "{job:?}");
    }
    batcher.gate.send_replace(true);
    for id in &ids {
        let done = wait_for_state(&queue.admin(), *id, JobState::Succeeded).await;
        assert_eq!(done.attempt, 1, "{done:?}");
        assert_eq!(batcher.runs_of(*id), vec![1]);
    }
    one.shutdown(Duration::from_secs(5)).await;
    two.shutdown(Duration::from_secs(5)).await;
    store.shutdown().await;
    db.cleanup().await;
}

/// A running job cancelled by an operator: the next batch heartbeat finds
/// its lease lost and cancels the attempt's context; the attempt's success
/// is then neither recorded nor its hook event appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_while_running_cancels_the_attempt() {
    let (db, store, queue) = setup().await;
    let id = enqueue(
        &db,
        &queue,
        &BatchJob {
            wait_for_cancel: true,
            hook: true,
            ..batch_job()
        },
    )
    .await;
    let batcher = Batcher::default();
    let workers = store
        .workers()
        .register(batcher.clone())
        .lease(Duration::from_secs(5))
        .heartbeat(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    wait_for_state(&queue.admin(), id, JobState::Running).await;
    while batcher.runs_of(id).is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(admin(&queue).cancel(id).await.unwrap());
    let cancelled = info(&queue, id).await;
    let until = Instant::now() + Duration::from_secs(30);
    while !batcher.saw_cancel.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < until,
            "the attempt was not told it lost its lease"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The attempt ends (by the end of the shutdown's grace period at the
    // latest); its outcome is refused.
    let report = workers.shutdown(Duration::from_secs(30)).await;
    assert_eq!(report.released, 0);
    let after = info(&queue, id).await;
    assert_eq!(after.state, JobState::Cancelled);
    assert_eq!(
        after.updated_at, cancelled.updated_at,
        "written after the cancel"
    );
    assert!(done_events(&store).await.is_empty());
    assert_eq!(batcher.runs_of(id), vec![1]);
    store.shutdown().await;
    db.cleanup().await;
}
