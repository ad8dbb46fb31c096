//! Crash tests for the work queue: a worker process dies mid-job (SIGKILL);
//! the job runs again after its lease expires, completes once, and its success
//! event is appended exactly once.
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`).

mod queue_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_core::{EventMetadata, EventRecord, EventType, Tag};
use dcb_postgres::queue::{
    JobContext, JobError, JobId, JobState, NewJob, Processor, WorkQueue, WorkersHandle,
};
use dcb_postgres::testing::TestDatabase;
use dcb_postgres::PgEventStore;
use queue_support::{job_events, wait_for_state};

const DONE: &str = "CrashJobDone";

#[derive(serde::Serialize, serde::Deserialize)]
struct CrashJob {
    name: String,
}

/// The surviving worker's processor for `crash_job`: succeeds and records
/// the same success event as the child's.
struct Survivor {
    runs: Arc<AtomicU32>,
}

#[async_trait]
impl Processor for Survivor {
    const KIND: &'static str = "crash_job";
    type Payload = CrashJob;

    async fn run(&self, _job: &CrashJob, _ctx: &JobContext) -> Result<(), JobError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn on_success(
        &self,
        job: &CrashJob,
        _ctx: &JobContext,
    ) -> Result<Vec<EventRecord>, JobError> {
        Ok(vec![EventRecord {
            event_type: EventType::from(DONE),
            tags: vec![Tag::new("item", &job.name)],
            payload: b"{}".to_vec(),
            metadata: EventMetadata::new(),
        }])
    }
}

/// Workers running [`Survivor`] with a lease of 2 s; returns them and the
/// count of runs.
async fn start_survivor(store: &PgEventStore) -> (WorkersHandle, Arc<AtomicU32>) {
    let runs = Arc::new(AtomicU32::new(0));
    let workers = store
        .workers()
        .register(Survivor { runs: runs.clone() })
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(100))
        .start()
        .await
        .expect("start survivor");
    (workers, runs)
}

struct ChildWorker {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ChildWorker {
    fn spawn(url: &str, mode: &str) -> ChildWorker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_queue_crash_worker"))
            .args([url, mode])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn queue_crash_worker");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildWorker { child, lines }
    }

    /// Waits for a line starting with `prefix`.
    fn expect_line(&self, prefix: &str, timeout: Duration) -> String {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(e) => panic!("child worker did not print {prefix:?} within {timeout:?}: {e}"),
            }
        }
    }
}

impl Drop for ChildWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn setup() -> (TestDatabase, WorkQueue, JobId) {
    let db = TestDatabase::create().await;
    let queue = WorkQueue::new(db.pool().clone(), "dcb").expect("schema");
    queue.migrate().await.expect("migrate queue");
    let id = queue
        .enqueue(
            db.pool(),
            &NewJob::for_processor::<Survivor>(&CrashJob { name: "a".into() })
                .expect("payload")
                .max_attempts(5),
        )
        .await
        .expect("enqueue")
        .expect("not a duplicate");
    (db, queue, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_of_a_sigkilled_worker_runs_again_after_its_lease_and_completes_once() {
    let (db, queue, id) = setup().await;
    let store = db.store().await;

    let mut child = ChildWorker::spawn(db.url(), "hang");
    let running = child.expect_line("RUNNING", Duration::from_secs(30));
    assert_eq!(running, format!("RUNNING {id} 1"));
    // Let a heartbeat or two happen, then kill the process mid-job.
    tokio::time::sleep(Duration::from_millis(800)).await;
    child.child.kill().expect("SIGKILL the worker");
    child.child.wait().expect("reap the worker");
    let killed_at = Instant::now();

    let before = queue.admin().job(id).await.unwrap().unwrap();
    assert_eq!(before.state, JobState::Running, "{before:?}");
    assert_eq!(before.attempt, 1);
    assert!(before
        .locked_by
        .as_deref()
        .unwrap_or("")
        .starts_with("child-"));

    let (workers, runs) = start_survivor(&store).await;

    let done = wait_for_state(&queue.admin(), id, JobState::Succeeded).await;
    let took = killed_at.elapsed();
    // The lease (2 s) was renewed at most 500 ms before the kill; the job
    // must not run again before it expires, and should soon after.
    assert!(
        took >= Duration::from_millis(1200),
        "ran again too early: {took:?}"
    );
    assert_eq!(done.attempt, 2, "{done:?}");
    assert!(
        done.last_error
            .as_deref()
            .unwrap_or("")
            .contains("lease expired during attempt 1"),
        "{done:?}"
    );
    // Nothing more happens to it (checked once the survivor stopped).
    let report = workers.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.released, 0);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(job_events(&store, DONE, id).await.len(), 1);
    store.shutdown().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_between_success_event_and_completion_does_not_record_it_twice() {
    let (db, queue, id) = setup().await;
    let store = db.store().await;

    let mut child = ChildWorker::spawn(db.url(), "die_after_success_event");
    child.expect_line("APPENDED", Duration::from_secs(30));
    let status = child.child.wait().expect("reap the worker");
    assert!(
        !status.success(),
        "the child should have been killed: {status:?}"
    );
    let killed_at = Instant::now();

    let before = queue.admin().job(id).await.unwrap().unwrap();
    assert_eq!(before.state, JobState::Running, "{before:?}");
    assert_eq!(
        job_events(&store, DONE, id).await.len(),
        1,
        "the child recorded success once"
    );

    let (workers, runs) = start_survivor(&store).await;

    let done = wait_for_state(&queue.admin(), id, JobState::Succeeded).await;
    assert!(
        killed_at.elapsed() >= Duration::from_millis(1200),
        "ran again too early"
    );
    assert_eq!(done.attempt, 2, "{done:?}");
    // `run` is at least once (it ran again), the success event exactly once.
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(job_events(&store, DONE, id).await.len(), 1);

    workers.shutdown(Duration::from_secs(5)).await;
    store.shutdown().await;
    db.cleanup().await;
}
