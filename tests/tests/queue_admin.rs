//! The work queue's operations API through the database: a process with a
//! pool of its own lists jobs by state and queue, counts them, reads the
//! age of the oldest ready job, sees the worker sets and the ready jobs no
//! worker serves, redrives one or every dead job and cancels one; running
//! workers (another instance) carry the redriven jobs out. Hostile text is
//! refused at enqueue or stored escaped, and a huge retry delay does not
//! overflow.
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`).

mod queue_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_postgres::queue::{
    JobContext, JobError, JobFilter, JobId, JobState, NewJob, Processor, QueueAdmin, QueueError,
};
use dcb_postgres::testing::TestDatabase;
use queue_support::{wait_for_state, WAIT};
use sqlx::PgPool;

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
struct Op {
    #[serde(default)]
    name: String,
    /// Fail for good while the processor is not healed.
    #[serde(default)]
    fail: bool,
    /// Fail with this error text after a NUL (as a decoder quoting hostile
    /// input would).
    #[serde(default)]
    error: Option<String>,
    /// Ask for a retry that far away.
    #[serde(default)]
    retry_after_secs: Option<u64>,
}

#[derive(Clone, Default)]
struct Ops {
    healed: Arc<AtomicBool>,
}

#[async_trait]
impl Processor for Ops {
    const KIND: &'static str = "ops";
    type Payload = Op;

    async fn run(&self, op: &Op, _ctx: &JobContext) -> Result<(), JobError> {
        if let Some(secs) = op.retry_after_secs {
            return Err(JobError::retryable("rate limited").retry_after(Duration::from_secs(secs)));
        }
        if let Some(error) = &op.error {
            return Err(JobError::permanent(format!("bad uuid \u{0} {error}")));
        }
        if op.fail && !self.healed.load(Ordering::SeqCst) {
            return Err(JobError::permanent(format!("{} cannot be done", op.name)));
        }
        Ok(())
    }
}

fn op(name: &str) -> NewJob {
    NewJob::for_processor::<Ops>(&Op {
        name: name.into(),
        ..Op::default()
    })
    .unwrap()
}

/// An admin on a pool of its own: nothing shared with the workers.
async fn admin(db: &TestDatabase) -> QueueAdmin {
    let pool = PgPool::connect(db.url()).await.expect("a pool of its own");
    QueueAdmin::new(pool, "dcb").expect("schema")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_count_redrive_and_cancel_through_the_database() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let queue = store.queue();
    queue.migrate().await.unwrap();
    let admin = admin(&db).await;
    assert!(QueueAdmin::new(db.pool().clone(), "Bad-Schema").is_err());

    let ops = Ops::default();
    let workers = store
        .workers()
        .register(ops.clone())
        .worker_id("ops-workers")
        .poll_interval(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let fine: Vec<JobId> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(
                queue
                    .enqueue(db.pool(), &op(&format!("fine{i}")))
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        ids
    };
    let mut doomed = Vec::new();
    for i in 0..2 {
        let job = NewJob::for_processor::<Ops>(&Op {
            name: format!("doomed{i}"),
            fail: true,
            ..Op::default()
        })
        .unwrap();
        doomed.push(queue.enqueue(db.pool(), &job).await.unwrap().unwrap());
    }
    // A queue no worker serves, and a kind no worker runs.
    let elsewhere = queue
        .enqueue(db.pool(), &op("elsewhere").queue("other"))
        .await
        .unwrap()
        .unwrap();
    let unknown = queue
        .enqueue(db.pool(), &NewJob::new("nobody_runs_this", &()).unwrap())
        .await
        .unwrap()
        .unwrap();
    for id in &fine {
        wait_for_state(&admin, *id, JobState::Succeeded).await;
    }
    for id in &doomed {
        wait_for_state(&admin, *id, JobState::Dead).await;
    }

    let dead = admin
        .jobs(&JobFilter::new().state(JobState::Dead))
        .await
        .unwrap();
    let mut dead_ids: Vec<JobId> = dead.iter().map(|j| j.id).collect();
    dead_ids.sort();
    let mut expected = doomed.clone();
    expected.sort();
    assert_eq!(dead_ids, expected);
    assert!(dead[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("cannot be done"));
    let other = admin.jobs(&JobFilter::new().queue("other")).await.unwrap();
    assert_eq!(other.iter().map(|j| j.id).collect::<Vec<_>>(), [elsewhere]);
    let counts = admin.counts(None).await.unwrap();
    assert_eq!(
        (counts.succeeded, counts.dead, counts.ready),
        (3, 2, 2),
        "{counts:?}"
    );
    let queues = admin.queues().await.unwrap();
    assert_eq!(
        queues.iter().map(|q| q.queue.as_str()).collect::<Vec<_>>(),
        ["default", "other"]
    );
    assert_eq!(queues[1].counts.ready, 1);
    // The ready jobs nobody will claim: the age of the oldest, and a list.
    assert!(admin
        .oldest_ready_age(Some("other"))
        .await
        .unwrap()
        .is_some());
    assert!(admin.oldest_ready_age(None).await.unwrap().is_some());
    let unserved = admin.unserved().await.unwrap();
    assert_eq!(
        unserved
            .iter()
            .map(|u| (u.queue.as_str(), u.kind.as_str(), u.ready))
            .collect::<Vec<_>>(),
        [("default", "nobody_runs_this", 1), ("other", "ops", 1)]
    );
    let sets = admin.worker_sets().await.unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].worker_id, "ops-workers");
    assert_eq!(
        (sets[0].queues.clone(), sets[0].kinds.clone()),
        (vec!["default".to_string()], vec!["ops".to_string()])
    );
    assert!(sets[0].alive);

    // The cause is fixed: one redriven, then every other dead one; the
    // workers carry them out.
    ops.healed.store(true, Ordering::SeqCst);
    assert!(admin.redrive(doomed[0]).await.unwrap());
    let done = wait_for_state(&admin, doomed[0], JobState::Succeeded).await;
    assert_eq!(done.attempt, 1);
    assert!(
        !admin.redrive(doomed[0]).await.unwrap(),
        "not dead any more"
    );
    assert_eq!(admin.redrive_all_dead(None).await.unwrap(), 1);
    wait_for_state(&admin, doomed[1], JobState::Succeeded).await;
    assert_eq!(admin.redrive_all_dead(None).await.unwrap(), 0);

    // Cancelled: nothing waits for a worker any more.
    assert!(admin.cancel(elsewhere).await.unwrap());
    assert!(admin.cancel(unknown).await.unwrap());
    assert!(!admin.cancel(unknown).await.unwrap());
    assert!(admin.unserved().await.unwrap().is_empty());
    assert_eq!(admin.oldest_ready_age(None).await.unwrap(), None);

    // A worker set that stopped is gone from the list.
    workers.shutdown(Duration::from_secs(5)).await;
    assert!(admin.worker_sets().await.unwrap().is_empty());
    let counts = admin.counts(None).await.unwrap();
    assert_eq!((counts.succeeded, counts.cancelled, counts.dead), (5, 2, 0));
    store.shutdown().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_is_refused_at_enqueue_or_stored_escaped() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let queue = store.queue();
    queue.migrate().await.unwrap();
    let admin = admin(&db).await;
    assert!(matches!(
        dcb_postgres::queue::WorkQueue::new(db.pool().clone(), "no such"),
        Err(QueueError::InvalidConfig(_))
    ));

    // Refused before anything is written, naming the field.
    let nul_payload = NewJob::for_processor::<Ops>(&Op {
        name: "a\u{0}b".into(),
        ..Op::default()
    })
    .unwrap();
    match queue.enqueue(db.pool(), &nul_payload).await {
        Err(QueueError::InvalidJob(message)) => assert!(message.contains("$.name"), "{message}"),
        other => panic!("expected InvalidJob, got {other:?}"),
    }
    match queue
        .enqueue(db.pool(), &op("k").dedupe_key("x\u{0}"))
        .await
    {
        Err(QueueError::InvalidJob(message)) => {
            assert!(message.contains("dedupe key"), "{message}")
        }
        other => panic!("expected InvalidJob, got {other:?}"),
    }
    match queue
        .enqueue_many(db.pool(), &[op("fine"), op("q").queue("x".repeat(5_000))])
        .await
    {
        Err(QueueError::InvalidJob(message)) => {
            assert!(
                message.contains("job 1") && message.contains("queue"),
                "{message}"
            )
        }
        other => panic!("expected InvalidJob, got {other:?}"),
    }
    assert_eq!(admin.counts(None).await.unwrap(), Default::default());

    // An error text PostgreSQL cannot store as it is: the job still dies,
    // with its error escaped and bounded.
    let hostile = queue
        .enqueue(
            db.pool(),
            &NewJob::for_processor::<Ops>(&Op {
                name: "hostile".into(),
                error: Some("y".repeat(100_000)),
                ..Op::default()
            })
            .unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    // A retry asked for far beyond any sensible delay: clamped, no overflow.
    let patient = queue
        .enqueue(
            db.pool(),
            &NewJob::for_processor::<Ops>(&Op {
                name: "patient".into(),
                retry_after_secs: Some(u64::MAX),
                ..Op::default()
            })
            .unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    let bounded = queue
        .enqueue(
            db.pool(),
            &NewJob::for_processor::<Ops>(&Op {
                name: "bounded".into(),
                retry_after_secs: Some(u64::MAX),
                ..Op::default()
            })
            .unwrap()
            .retry_for(Duration::from_secs(3600)),
        )
        .await
        .unwrap()
        .unwrap();
    let workers = store
        .workers()
        .register(Ops::default())
        .poll_interval(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let dead = wait_for_state(&admin, hostile, JobState::Dead).await;
    let error = dead.last_error.unwrap();
    assert!(error.starts_with("bad uuid \\0 yyy"), "{}", &error[..40]);
    assert!(error.len() <= dcb_postgres::text::MAX_TEXT_BYTES);
    // Retried, due in about a year (the longest delay there is).
    let until = Instant::now() + WAIT;
    let waiting = loop {
        let job = admin.job(patient).await.unwrap().unwrap();
        if job.state == JobState::Ready && job.attempt == 1 {
            break job;
        }
        assert!(Instant::now() < until, "never retried: {job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let year = chrono::Duration::days(364);
    assert!(waiting.run_at > chrono::Utc::now() + year, "{waiting:?}");
    // With a deadline, such a retry comes too late: the job dies.
    wait_for_state(&admin, bounded, JobState::Dead).await;
    workers.shutdown(Duration::from_secs(5)).await;
    store.shutdown().await;
    db.cleanup().await;
}
