//! Work queue behaviour: enqueue in transactions, dedupe, retries with
//! backoff, max attempts and deadlines, dead jobs and their failure events,
//! redrive, cancel, scheduling, priorities, NOTIFY wake-up, no batch barrier,
//! graceful shutdown, the operations API.
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`).

mod queue_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_core::Backoff;
use dcb_core::{
    EventMetadata, EventRecord, EventStore, EventType, Query, ReadOptions, SequencedEvent, Tag,
};
use dcb_postgres::queue::{
    JobContext, JobError, JobFailure, JobFilter, JobId, JobInfo, JobState, NewJob, Processor,
    QueueAdmin, WorkQueue, Workers, WorkersHandle,
};
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::PgEventStore;
use queue_support::{job_events, wait_for_state};

const SUCCEEDED: &str = "TaskSucceeded";
const FAILED: &str = "TaskFailed";

/// What a task does, by payload.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Task {
    name: String,
    /// Fail this many attempts first.
    #[serde(default)]
    fail_first: u32,
    /// Fail with a permanent error.
    #[serde(default)]
    permanent: bool,
    /// Panic on failing attempts instead of returning an error.
    #[serde(default)]
    panic: bool,
    /// Sleep this long in each attempt.
    #[serde(default)]
    sleep_ms: u64,
    /// Wait until the test opens the gate of this name.
    #[serde(default)]
    gate: Option<String>,
}

#[derive(Default)]
struct Log {
    /// (name, attempt) per run, in start order.
    runs: Vec<(String, u32)>,
    /// (name, finish time) per successful run.
    finished: Vec<(String, Instant)>,
    /// (name, failure) per failure hook call.
    failures: Vec<(String, JobFailure)>,
    /// The triggering event per job.
    triggers: HashMap<String, Option<uuid::Uuid>>,
    /// Tasks that succeed from now on, whatever their payload says.
    healed: Vec<String>,
}

#[derive(Clone, Default)]
struct Tasks {
    log: Arc<Mutex<Log>>,
    gates: Arc<Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>>,
}

impl Tasks {
    fn gate(&self, name: &str) -> tokio::sync::watch::Sender<bool> {
        self.gates
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| tokio::sync::watch::channel(false).0)
            .clone()
    }

    fn open(&self, name: &str) {
        self.gate(name).send_replace(true);
    }

    fn runs(&self, name: &str) -> Vec<u32> {
        let log = self.log.lock().unwrap();
        log.runs
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .collect()
    }
}

fn record(event_type: &'static str, name: &str) -> EventRecord {
    EventRecord {
        event_type: EventType::from(event_type),
        tags: vec![Tag::new("task", name)],
        payload: b"{}".to_vec(),
        metadata: EventMetadata::new(),
    }
}

#[async_trait]
impl Processor for Tasks {
    const KIND: &'static str = "task";
    type Payload = Task;

    async fn run(&self, task: &Task, ctx: &JobContext) -> Result<(), JobError> {
        {
            let mut log = self.log.lock().unwrap();
            log.runs.push((task.name.clone(), ctx.attempt()));
            log.triggers.insert(task.name.clone(), ctx.triggered_by());
        }
        if task.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(task.sleep_ms)).await;
        }
        if let Some(gate) = &task.gate {
            let _ = self.gate(gate).subscribe().wait_for(|open| *open).await;
        }
        let healed = self.log.lock().unwrap().healed.contains(&task.name);
        if !healed && (ctx.attempt() <= task.fail_first || task.permanent) {
            if task.panic {
                panic!("task {} panicked on attempt {}", task.name, ctx.attempt());
            }
            let message = format!("task {} failed on attempt {}", task.name, ctx.attempt());
            return Err(if task.permanent {
                JobError::permanent(message)
            } else {
                JobError::retryable(message)
            });
        }
        self.log
            .lock()
            .unwrap()
            .finished
            .push((task.name.clone(), Instant::now()));
        Ok(())
    }

    async fn on_success(
        &self,
        task: &Task,
        _ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        Ok(vec![record(SUCCEEDED, &task.name)])
    }

    async fn on_failure(
        &self,
        task: &Task,
        failure: &JobFailure,
        _ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        self.log
            .lock()
            .unwrap()
            .failures
            .push((task.name.clone(), failure.clone()));
        Ok(vec![record(FAILED, &task.name)])
    }
}

struct Env {
    db: TestDatabase,
    store: PgEventStore,
    queue: WorkQueue,
    admin: QueueAdmin,
    tasks: Tasks,
}

impl Env {
    async fn new() -> Env {
        let db = TestDatabase::create().await;
        let store = db.store().await;
        let queue = store.queue();
        queue.migrate().await.expect("migrate queue");
        // Idempotent.
        queue.migrate().await.expect("migrate queue again");
        Env {
            admin: store.queue_admin(),
            db,
            store,
            queue,
            tasks: Tasks::default(),
        }
    }

    fn workers(&self) -> Workers {
        self.store
            .workers()
            .register(self.tasks.clone())
            .lease(Duration::from_secs(5))
            .poll_interval(Duration::from_millis(100))
            .backoff(Backoff::new(
                Duration::from_millis(50),
                Duration::from_millis(200),
            ))
    }

    async fn start(&self) -> WorkersHandle {
        self.workers().start().await.expect("start workers")
    }

    async fn enqueue(&self, job: NewJob) -> JobId {
        self.queue
            .enqueue(self.db.pool(), &job)
            .await
            .expect("enqueue")
            .expect("not a duplicate")
    }

    async fn wait(&self, id: JobId, state: JobState) -> JobInfo {
        wait_for_state(&self.admin, id, state).await
    }

    async fn events(&self, event_type: &'static str, id: JobId) -> Vec<SequencedEvent> {
        job_events(&self.store, event_type, id).await
    }

    async fn finish(self, workers: WorkersHandle) {
        workers.shutdown(Duration::from_secs(5)).await;
        self.store.shutdown().await;
        self.db.cleanup().await;
    }
}

fn task(name: &str) -> Task {
    Task {
        name: name.to_string(),
        ..Task::default()
    }
}

fn job(task: &Task) -> NewJob {
    NewJob::for_processor::<Tasks>(task).expect("payload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_commits_and_rolls_back_with_the_transaction_and_dedupes() {
    let env = Env::new().await;

    let mut tx = env.db.pool().begin().await.unwrap();
    let rolled_back = env
        .queue
        .enqueue(&mut *tx, &job(&task("r")).dedupe_key("k"))
        .await
        .unwrap()
        .expect("new");
    tx.rollback().await.unwrap();
    assert!(env.admin.job(rolled_back).await.unwrap().is_none());

    let mut tx = env.db.pool().begin().await.unwrap();
    let first = env
        .queue
        .enqueue(&mut *tx, &job(&task("d1")).dedupe_key("k"))
        .await
        .unwrap()
        .expect("new");
    // Same transaction, same key: not enqueued twice.
    let again = env
        .queue
        .enqueue(&mut *tx, &job(&task("d2")).dedupe_key("k"))
        .await
        .unwrap();
    assert_eq!(again, None);
    tx.commit().await.unwrap();
    // Another transaction, same key, while the first is live: not enqueued.
    assert_eq!(
        env.queue
            .enqueue(env.db.pool(), &job(&task("d3")).dedupe_key("k"))
            .await
            .unwrap(),
        None
    );
    // Another kind with the same key is a different job.
    assert!(env
        .queue
        .enqueue(
            env.db.pool(),
            &NewJob::new("other_kind", &()).unwrap().dedupe_key("k")
        )
        .await
        .unwrap()
        .is_some());
    let counts = env.admin.counts(None).await.unwrap();
    assert_eq!(counts.ready, 2);

    let workers = env.start().await;
    let done = env.wait(first, JobState::Succeeded).await;
    assert_eq!(done.attempt, 1);
    assert_eq!(env.tasks.runs("d1"), vec![1]);
    assert!(env.tasks.runs("d2").is_empty() && env.tasks.runs("d3").is_empty());
    assert_eq!(env.events(SUCCEEDED, first).await.len(), 1);
    // Once the job finished, the key is free again.
    assert!(env
        .queue
        .enqueue(env.db.pool(), &job(&task("d4")).dedupe_key("k"))
        .await
        .unwrap()
        .is_some());
    env.finish(workers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_backoff_until_success() {
    let env = Env::new().await;
    let workers = env.start().await;
    let t = Task {
        fail_first: 3,
        ..task("flaky")
    };
    let started = Instant::now();
    let id = env.enqueue(job(&t).max_attempts(5)).await;
    let done = env.wait(id, JobState::Succeeded).await;
    // Backoffs of at least 25, 50 and 100 ms (half jitter) between attempts.
    assert!(
        started.elapsed() >= Duration::from_millis(175),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(done.attempt, 4);
    assert!(done.last_error.unwrap().contains("failed on attempt 3"));
    assert_eq!(env.tasks.runs("flaky"), vec![1, 2, 3, 4]);
    assert_eq!(env.events(SUCCEEDED, id).await.len(), 1);
    assert!(env.events(FAILED, id).await.is_empty());

    // A panic counts as a retryable failure.
    let p = Task {
        fail_first: 1,
        panic: true,
        ..task("panicky")
    };
    let id = env.enqueue(job(&p)).await;
    let done = env.wait(id, JobState::Succeeded).await;
    assert_eq!(done.attempt, 2);
    assert!(done.last_error.unwrap().contains("panicked"));
    env.finish(workers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_jobs_die_record_their_failure_once_and_can_be_redriven() {
    let env = Env::new().await;
    let workers = env.start().await;
    let t = Task {
        fail_first: 3,
        ..task("doomed")
    };
    let id = env.enqueue(job(&t).max_attempts(2)).await;
    let dead = env.wait(id, JobState::Dead).await;
    assert_eq!(dead.attempt, 2);
    assert!(dead
        .last_error
        .as_deref()
        .unwrap()
        .contains("failed on attempt 2"));
    assert!(dead.finished_at.is_some());
    assert_eq!(env.tasks.runs("doomed"), vec![1, 2]);
    let failures = env.events(FAILED, id).await;
    assert_eq!(failures.len(), 1);
    {
        let log = env.tasks.log.lock().unwrap();
        assert_eq!(log.failures.len(), 1);
        assert_eq!(log.failures[0].1.attempts, 2);
        assert!(!log.failures[0].1.permanent);
    }
    let listed = env
        .admin
        .jobs(&JobFilter::new().state(JobState::Dead).limit(10))
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
    assert_eq!(env.admin.counts(None).await.unwrap().dead, 1);

    // The cause is fixed; redrive: fresh attempts, and it succeeds.
    env.tasks
        .log
        .lock()
        .unwrap()
        .healed
        .push("doomed".to_string());
    assert!(env.admin.redrive(id).await.unwrap());
    let done = env.wait(id, JobState::Succeeded).await;
    assert_eq!(done.attempt, 1);
    assert!(
        !env.admin.redrive(id).await.unwrap(),
        "only dead jobs are redriven"
    );
    assert_eq!(env.events(SUCCEEDED, id).await.len(), 1);
    // The failure event was recorded once, not again.
    assert_eq!(env.events(FAILED, id).await.len(), 1);
    env.finish(workers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_die_at_once() {
    let env = Env::new().await;
    let workers = env.start().await;
    let t = Task {
        permanent: true,
        ..task("hopeless")
    };
    let id = env.enqueue(job(&t).max_attempts(10)).await;
    let dead = env.wait(id, JobState::Dead).await;
    assert_eq!(dead.attempt, 1);
    assert_eq!(env.events(FAILED, id).await.len(), 1);
    assert!(env.tasks.log.lock().unwrap().failures[0].1.permanent);

    // A payload that does not decode is dead at once too (no hook: no payload).
    let bad = env
        .enqueue(NewJob::from_json(
            "task",
            serde_json::json!({"nonsense": true}),
        ))
        .await;
    let dead = env.wait(bad, JobState::Dead).await;
    assert!(dead.last_error.unwrap().contains("does not decode"), "");
    env.finish(workers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_limits_retries_in_time() {
    let env = Env::new().await;
    let workers = env.start().await;
    let t = Task {
        fail_first: 1000,
        ..task("until_deadline")
    };
    let id = env
        .enqueue(job(&t).retry_for(Duration::from_millis(800)))
        .await;
    let info = env.admin.job(id).await.unwrap().unwrap();
    assert_eq!(info.max_attempts, None, "only the deadline limits it");
    let deadline = info.deadline.expect("a deadline");
    // Without the deadline it would retry forever: the wait would time out.
    let dead = env.wait(id, JobState::Dead).await;
    // It died only once a retry (at most 200 ms away: the backoff's cap)
    // would have started after the deadline (both times are the database's).
    let died = dead.finished_at.expect("finished");
    assert!(
        died + chrono::Duration::milliseconds(200) >= deadline,
        "died at {died}, deadline {deadline}"
    );
    assert!(dead.attempt >= 1, "{dead:?}");
    assert_eq!(env.events(FAILED, id).await.len(), 1);
    env.finish(workers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_jobs_wait_for_their_time_and_priorities_order_due_jobs() {
    let env = Env::new().await;
    // When the scheduled jobs are due, on this process's clock (measured
    // before they are enqueued, so no later than the database's idea).
    // They rank below the due ones, so the order of runs is the same
    // however late a busy machine gets to them.
    let later_due = Instant::now() + Duration::from_millis(700);
    let later = env
        .enqueue(
            job(&task("later"))
                .priority(-10)
                .run_after(Duration::from_millis(700)),
        )
        .await;
    let at_due = Instant::now() + Duration::from_millis(300);
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(300);
    let at_id = env.enqueue(job(&task("at")).priority(-10).run_at(at)).await;
    let low = env.enqueue(job(&task("low")).priority(-1)).await;
    let high = env.enqueue(job(&task("high")).priority(5)).await;
    let counts = env.admin.counts(Some("default")).await.unwrap();
    assert_eq!((counts.ready, counts.scheduled), (2, 2));
    assert!(env.admin.oldest_ready_age(None).await.unwrap().is_some());

    // No polling within the test's time: the worker must sleep until the
    // next scheduled job is due, or the waits below time out.
    let workers = env
        .workers()
        .concurrency(1)
        .poll_interval(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    env.wait(later, JobState::Succeeded).await;
    for id in [at_id, low, high] {
        env.wait(id, JobState::Succeeded).await;
    }
    {
        let log = env.tasks.log.lock().unwrap();
        let order: Vec<&str> = log.runs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(order, vec!["high", "low", "at", "later"]);
        let finished: HashMap<&str, Instant> =
            log.finished.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        // Not before they are due (a little slack for the two clocks).
        let slack = Duration::from_millis(20);
        assert!(finished["at"] + slack >= at_due);
        assert!(finished["later"] + slack >= later_due);
    }
    assert_eq!(env.admin.oldest_ready_age(None).await.unwrap(), None);
    env.finish(workers).await;
}

/// Whether a connection to the test database is listening on the queue's
/// channel.
async fn listening(env: &Env) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN %dcb_jobs.dcb%')",
    )
    .fetch_one(env.db.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_idle_workers_without_polling() {
    let env = Env::new().await;
    let workers = env
        .workers()
        // No polling and no lease reaping within the test's time.
        .poll_interval(Duration::from_secs(120))
        .lease(Duration::from_secs(240))
        .start()
        .await
        .unwrap();
    // One job through a claim, so that the dispatcher has claimed and gone
    // idle until its next poll, two minutes away; and the LISTEN connection
    // is up.
    let warmup = env.enqueue(job(&task("warmup"))).await;
    env.wait(warmup, JobState::Succeeded).await;
    let until = Instant::now() + Duration::from_secs(30);
    while !listening(&env).await {
        assert!(Instant::now() < until, "the workers never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut tx = env.db.pool().begin().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            env.queue
                .enqueue(&mut *tx, &job(&task(&format!("n{i}"))))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    tx.commit().await.unwrap();
    // Only the NOTIFY can wake them before the wait's bound.
    for id in ids {
        env.wait(id, JobState::Succeeded).await;
    }
    env.finish(workers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_job_does_not_hold_back_the_others() {
    let env = Env::new().await;
    // The slow job holds its slot until the test opens the gate, which it
    // does only once every fast job succeeded: with a batch barrier (a
    // claim waiting for every job of the last one), they never would.
    let slow = env
        .enqueue(job(&Task {
            gate: Some("slow".into()),
            ..task("slow")
        }))
        .await;
    let mut fast = Vec::new();
    for i in 0..12 {
        fast.push(env.enqueue(job(&task(&format!("fast{i}")))).await);
    }
    let workers = env
        .workers()
        .concurrency(3)
        .batch_size(3)
        .start()
        .await
        .unwrap();
    for id in fast {
        env.wait(id, JobState::Succeeded).await;
    }
    assert_eq!(
        env.admin.job(slow).await.unwrap().unwrap().state,
        JobState::Running
    );
    env.tasks.open("slow");
    env.wait(slow, JobState::Succeeded).await;
    env.finish(workers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_the_triggering_event() {
    let env = Env::new().await;
    // The job's triggering event.
    let trigger = record("SomethingHappened", "x");
    let trigger_id = trigger.metadata.event_id;
    env.store.append(vec![trigger], None).await.unwrap();
    let (_, events) = env
        .store
        .read(
            &Query::types(["SomethingHappened"]),
            ReadOptions::forwards(),
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();

    // Due first: a claim would take it before the triggered job, had the
    // cancel not taken it out.
    let cancelled = env.enqueue(job(&task("cancelled"))).await;
    assert!(env.admin.cancel(cancelled).await.unwrap());
    assert!(!env.admin.cancel(cancelled).await.unwrap());
    let triggered = env
        .enqueue(job(&task("triggered")).triggered_by(&events[0]))
        .await;

    let workers = env.start().await;
    env.wait(triggered, JobState::Succeeded).await;
    workers.shutdown(Duration::from_secs(5)).await;
    assert!(env.tasks.runs("cancelled").is_empty());
    assert_eq!(
        env.admin.job(cancelled).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(
        env.tasks.log.lock().unwrap().triggers["triggered"],
        Some(trigger_id)
    );
    let success = env.events(SUCCEEDED, triggered).await;
    assert_eq!(success[0].metadata().causation_id, Some(trigger_id));
    let counts = env.admin.counts(None).await.unwrap();
    assert_eq!((counts.succeeded, counts.cancelled), (1, 1));
    assert_eq!(
        env.admin
            .purge_finished(Duration::ZERO, false)
            .await
            .unwrap(),
        2
    );
    env.store.shutdown().await;
    env.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_short_jobs_finish_and_releases_long_ones() {
    let env = Env::new().await;
    // Both run until their gate opens; only the short one's opens, once
    // the shutdown began.
    let short = env
        .enqueue(job(&Task {
            gate: Some("short".into()),
            ..task("short")
        }))
        .await;
    let long = env
        .enqueue(job(&Task {
            gate: Some("long".into()),
            ..task("long")
        }))
        .await;
    // Leases far longer than the test: only a release can free the job.
    let workers = env
        .workers()
        .lease(Duration::from_secs(600))
        .start()
        .await
        .unwrap();
    env.wait(short, JobState::Running).await;
    env.wait(long, JobState::Running).await;
    let stopping = workers.shutdown(Duration::from_secs(10));
    tokio::pin!(stopping);
    // Its first poll sends the stop; then the short job may finish.
    assert!(futures::poll!(&mut stopping).is_pending());
    env.tasks.open("short");
    let report = stopping.await;
    assert_eq!((report.finished, report.released), (1, 1));
    assert_eq!(
        env.admin.job(short).await.unwrap().unwrap().state,
        JobState::Succeeded
    );
    let released = env.admin.job(long).await.unwrap().unwrap();
    assert_eq!(released.state, JobState::Ready);
    assert_eq!(released.attempt, 0, "a released attempt does not count");
    assert!(released.run_at <= chrono::Utc::now());
    assert!(released.lease_until.is_none());

    // Another worker set takes it at once (its lease would have lasted ten
    // minutes).
    let other = env
        .workers()
        .lease(Duration::from_secs(600))
        .start()
        .await
        .unwrap();
    let running = env.wait(long, JobState::Running).await;
    assert_eq!(running.attempt, 1);
    let report = other.shutdown(Duration::ZERO).await;
    assert_eq!(report.released, 1);
    env.store.shutdown().await;
    env.db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_many_writes_a_batch_in_one_statement_and_dedupes() {
    let env = Env::new().await;
    let existing = env.enqueue(job(&task("e")).dedupe_key("taken")).await;
    let batch: Vec<NewJob> = (0..50)
        .map(|i| job(&task(&format!("b{i}"))).priority(i % 3))
        .chain([
            job(&task("dup1")).dedupe_key("same"),
            job(&task("dup2")).dedupe_key("same"),
            job(&task("clash")).dedupe_key("taken"),
            job(&task("later")).run_after(Duration::from_secs(3600)),
        ])
        .collect();
    let mut tx = env.db.pool().begin().await.unwrap();
    let ids = env.queue.enqueue_many(&mut *tx, &batch).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ids.len(), 52, "50 + one of the two 'same' + 'later'");
    assert!(ids.contains(&batch[50].id()));
    assert!(!ids.contains(&batch[51].id()) && !ids.contains(&batch[52].id()));
    assert!(!ids.contains(&existing));
    let counts = env.admin.counts(None).await.unwrap();
    assert_eq!((counts.ready, counts.scheduled), (52, 1));
    assert!(env
        .queue
        .enqueue_many(env.db.pool(), &[])
        .await
        .unwrap()
        .is_empty());

    let workers = env.workers().concurrency(8).start().await.unwrap();
    for id in ids.iter().filter(|id| **id != batch[53].id()) {
        env.wait(*id, JobState::Succeeded).await;
    }
    env.finish(workers).await;
}
