//! Upgrading a work queue created by an earlier release: the jobs table of
//! migration step 1, with jobs in it, gets step 2's claim indexes (and
//! loses step 1's `jobs_due`); the jobs it held still run, once each.
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_postgres::migrations;
use dcb_postgres::queue::{
    JobContext, JobError, JobState, NewJob, Processor, WorkQueue, Workers, COMPONENT, STEPS,
};
use dcb_postgres::testing::TestDatabase;

#[derive(serde::Serialize, serde::Deserialize)]
struct Old {}

#[derive(Clone, Default)]
struct Counter {
    runs: Arc<AtomicU32>,
}

#[async_trait]
impl Processor for Counter {
    const KIND: &'static str = "upgrade_job";
    type Payload = Old;
    async fn run(&self, _job: &Old, _ctx: &JobContext) -> Result<(), JobError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn indexes(db: &TestDatabase) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes
         WHERE schemaname = 'dcb' AND tablename = 'jobs' ORDER BY 1",
    )
    .fetch_all(db.pool())
    .await
    .expect("list indexes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_of_the_first_release_upgrades_in_place() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    // The queue as the first release left it.
    migrations::run(db.pool(), "dcb", COMPONENT, &STEPS[..1])
        .await
        .expect("step 1");
    let queue = WorkQueue::new(db.pool().clone(), "dcb").expect("schema");
    let jobs: Vec<NewJob> = (0..50)
        .map(|_| NewJob::for_processor::<Counter>(&Old {}).expect("payload"))
        .collect();
    let ids = queue.enqueue_many(db.pool(), &jobs).await.expect("enqueue");
    assert!(indexes(&db).await.contains(&"jobs_due".to_string()));

    queue.migrate().await.expect("upgrade");
    queue.migrate().await.expect("upgrade again (no-op)");
    let after = indexes(&db).await;
    assert!(!after.contains(&"jobs_due".to_string()), "{after:?}");
    for index in [
        "jobs_claim",
        "jobs_ready_at",
        "jobs_leases",
        "jobs_finished",
    ] {
        assert!(after.contains(&index.to_string()), "{index} in {after:?}");
    }
    let version: i32 =
        sqlx::query_scalar("SELECT max(version) FROM dcb.dcb_migrations WHERE component = $1")
            .bind(COMPONENT)
            .fetch_one(db.pool())
            .await
            .expect("migration version");
    assert_eq!(version as usize, STEPS.len());

    let counter = Counter::default();
    let workers = Workers::new(queue.clone(), store.clone())
        .register(counter.clone())
        .concurrency(8)
        .poll_interval(Duration::from_millis(50))
        .start()
        .await
        .expect("start workers");
    let until = Instant::now() + Duration::from_secs(20);
    while queue.admin().counts(None).await.unwrap().succeeded < ids.len() as u64 {
        assert!(Instant::now() < until, "the old jobs did not all run");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for id in &ids {
        let job = queue.admin().job(*id).await.unwrap().unwrap();
        assert_eq!((job.state, job.attempt), (JobState::Succeeded, 1));
    }
    assert_eq!(counter.runs.load(Ordering::SeqCst), ids.len() as u32);
    workers.shutdown(Duration::from_secs(5)).await;
    store.shutdown().await;
    db.cleanup().await;
}
