//! A Postgres work queue for background processors.
//!
//! Jobs live in `{schema}.jobs`. Enqueue them in any transaction (a
//! listener's, a request's) with [`WorkQueue::enqueue`]; run them with
//! [`Workers`], which claim batches with `FOR UPDATE SKIP LOCKED`, hold a
//! lease per job (extended by heartbeats), retry failures with capped
//! exponential backoff and jitter, and record each job's success or final
//! failure event exactly once. Claims, completions and heartbeats each
//! cover many jobs per statement (see [`WorkQueue::complete_many`] and
//! [`WorkQueue::heartbeat_many`]), each job still fenced on its own.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool, store: dcb_postgres::PgEventStore) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use async_trait::async_trait;
//! use dcb_postgres::queue::{JobContext, JobError, NewJob, Processor, WorkQueue, Workers};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Publish { cart_id: String }
//!
//! struct Publisher;
//!
//! #[async_trait]
//! impl Processor for Publisher {
//!     const KIND: &'static str = "publish_cart";
//!     type Payload = Publish;
//!     async fn run(&self, job: &Publish, ctx: &JobContext) -> Result<(), JobError> {
//!         Ok(())
//!     }
//! }
//!
//! let queue = WorkQueue::new(pool.clone(), "dcb");
//! queue.migrate().await?;
//!
//! let mut tx = pool.begin().await?;
//! // ... the request's own writes ...
//! queue
//!     .enqueue(&mut *tx, &NewJob::for_processor::<Publisher>(&Publish { cart_id: "c1".into() })?
//!         .retry_for(Duration::from_secs(3600))
//!         .dedupe_key("publish:c1"))
//!     .await?;
//! tx.commit().await?;
//!
//! let workers = Workers::new(queue, store)
//!     .register(Publisher)
//!     .concurrency(8)
//!     .start()
//!     .await?;
//! // ...
//! workers.shutdown(Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//! - A job is claimed by one worker at a time. Every claim increments the
//!   attempt and issues a fresh lease token; heartbeat, complete, fail and
//!   release are fenced by both, so a worker that lost its lease (paused past
//!   it, partitioned, or the job was cancelled) gets
//!   [`QueueError::LeaseLost`] and changes nothing.
//! - A job whose worker died is put back as due when its lease expires (any
//!   running worker set reaps expired leases), and runs again within about
//!   one lease period. The crashed attempt counts as an attempt.
//! - `run` is at least once; hook events are exactly once (see
//!   [`append_once`]).

#[cfg(test)]
mod explain_tests;
mod job;
mod processor;
mod worker;

use std::time::Duration;

use chrono::{DateTime, Utc};
use dcb_core::{Backoff, Position, StoreError};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, Row};
use uuid::Uuid;

pub use job::{
    ClaimedJob, JobId, JobInfo, JobState, NewJob, QueueCounts, DEFAULT_BACKOFF,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE,
};
pub use processor::{
    append_once, AppendOnce, JobContext, JobError, JobFailure, Processor, JOB_TAG_KEY,
};
pub use worker::{ShutdownReport, Workers, WorkersHandle};

use crate::migrations;

/// The migration component name of the work queue.
pub const COMPONENT: &str = "work_queue";

/// The work queue's migration steps. Never edit a released step; append one.
pub const STEPS: &[&str] = &[
    // 1: the jobs table, the dedupe index over live jobs, and the indexes
    //    that claiming, reaping and the operations API use.
    include_str!("migrations/0001_jobs.sql"),
    // 2: claims without a sort: `jobs_claim` is walked once per (queue,
    //    kind) a claim serves, already in claim order, stopping after the
    //    batch; `jobs_ready_at` answers "when is the next job due" without
    //    reading a backlog of scheduled jobs. Both hold ready jobs only. The
    //    table churns (every job is updated at least twice), so it is
    //    vacuumed early: until then, the entries of claimed jobs stay at the
    //    head of `jobs_claim`, where every claim steps over them.
    include_str!("migrations/0002_claim_indexes.sql"),
];

/// What the work queue can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The worker no longer owns this attempt of the job: its lease expired
    /// and another worker claimed the job, or the job was cancelled. Nothing
    /// was changed.
    #[error("job {job_id} attempt {attempt}: lease lost (another worker owns the job, or it was cancelled or finished); nothing changed")]
    LeaseLost {
        /// The job.
        job_id: JobId,
        /// The attempt the caller held.
        attempt: u32,
    },
    /// A payload could not be encoded as JSON.
    #[error("job payload does not serialize: {0}")]
    Payload(#[source] serde_json::Error),
    /// The workers were configured wrongly (e.g. no processor registered).
    #[error("invalid work queue configuration: {0}")]
    InvalidConfig(String),
    /// A stored row does not make sense.
    #[error("work queue table holds an unexpected value: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("work queue database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QueueError {
    /// Whether this is a lost lease.
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, QueueError::LeaseLost { .. })
    }
}

/// How a failed attempt was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOutcome {
    /// Scheduled for another attempt at this time.
    Retrying(DateTime<Utc>),
    /// Dead: no more attempts.
    Dead,
}

/// The Postgres work queue: enqueue, the claim/heartbeat/complete/fail
/// protocol workers use, and the operations API.
///
/// Cheap to clone (a pool and a schema name).
#[derive(Clone, Debug)]
pub struct WorkQueue {
    pool: PgPool,
    schema: String,
    channel: String,
    sql: std::sync::Arc<Sql>,
}

#[derive(Debug)]
struct Sql {
    enqueue: String,
    enqueue_many: String,
    claim: String,
    reap: String,
    heartbeat: String,
    heartbeat_many: String,
    complete: String,
    complete_many: String,
    retry: String,
    doom: String,
    dead: String,
    release: String,
    release_many: String,
    next_due: String,
}

const JOB_COLUMNS: &str = "id, queue, kind, payload, state, priority, run_at, attempt, \
    max_attempts, deadline, dedupe_key, triggered_by_event, last_error, locked_by, lease_until, \
    created_at, updated_at, finished_at";

impl Sql {
    fn new(schema: &str) -> Self {
        let r = |s: &str| migrations::render(s, schema);
        Sql {
            enqueue: r("WITH ins AS (
                    INSERT INTO {schema}.jobs (id, queue, kind, payload, priority, run_at,
                        max_attempts, deadline, dedupe_key, triggered_by_event,
                        triggered_by_position)
                    VALUES ($1, $2, $3, $4, $5,
                        COALESCE($6, now() + make_interval(secs => COALESCE($7::float8, 0))),
                        $8, COALESCE($9, now() + make_interval(secs => $10::float8)), $11, $12, $13)
                    ON CONFLICT DO NOTHING
                    RETURNING id, queue)
                SELECT id, pg_notify($14, queue)::text AS notified FROM ins"),
            enqueue_many: r("WITH ins AS (
                    INSERT INTO {schema}.jobs (id, queue, kind, payload, priority, run_at,
                        max_attempts, deadline, dedupe_key, triggered_by_event,
                        triggered_by_position)
                    SELECT id, queue, kind, payload, priority,
                        COALESCE(run_at, now() + make_interval(secs => COALESCE(run_after, 0))),
                        max_attempts, COALESCE(deadline, now() + make_interval(secs => retry_for)),
                        dedupe_key, triggered_by_event, triggered_by_position
                    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int4[],
                        $6::timestamptz[], $7::float8[], $8::int4[], $9::timestamptz[],
                        $10::float8[], $11::text[], $12::uuid[], $13::int8[])
                        AS t(id, queue, kind, payload, priority, run_at, run_after, max_attempts,
                             deadline, retry_for, dedupe_key, triggered_by_event,
                             triggered_by_position)
                    ON CONFLICT DO NOTHING
                    RETURNING id, queue)
                SELECT id, pg_notify($14, queue)::text AS notified FROM ins"),
            // One walk of `jobs_claim` per (queue, kind) pair, in claim
            // order, locking at most a batch each; the merge keeps the
            // batch's best. The ids go to the UPDATE as an array so it finds
            // them through the primary key whatever the planner guesses for
            // their number; it needs no `state` test, the subquery locked
            // them as ready. With several pairs, rows locked but not kept
            // stay locked only until this statement ends (other claimers
            // skip them meanwhile).
            claim: r("UPDATE {schema}.jobs j
                SET state = 'running', attempt = j.attempt + 1,
                    lease_token = gen_random_uuid(),
                    lease_until = now() + make_interval(secs => $4::float8),
                    locked_by = $5, updated_at = now()
                WHERE j.id = ANY(ARRAY(
                    SELECT c.id
                    FROM unnest($1::text[], $2::text[]) AS p(queue, kind)
                    CROSS JOIN LATERAL (
                        SELECT r.id, r.priority, r.run_at FROM {schema}.jobs r
                        WHERE r.state = 'ready' AND r.queue = p.queue AND r.kind = p.kind
                          AND r.run_at <= now()
                        ORDER BY r.priority DESC, r.run_at, r.id
                        LIMIT $3
                        FOR UPDATE SKIP LOCKED) c
                    ORDER BY c.priority DESC, c.run_at, c.id
                    LIMIT $3))
                RETURNING j.id, j.queue, j.kind, j.payload, j.priority, j.run_at, j.attempt,
                    j.max_attempts, j.deadline, j.dedupe_key, j.triggered_by_event,
                    j.triggered_by_position, j.last_error, j.doomed, j.created_at,
                    j.lease_token"),
            reap: r("WITH expired AS (
                    SELECT id FROM {schema}.jobs
                    WHERE state = 'running' AND lease_until < now()
                    LIMIT 1000
                    FOR UPDATE SKIP LOCKED)
                UPDATE {schema}.jobs j
                SET state = 'ready', run_at = now(), lease_token = NULL, lease_until = NULL,
                    last_error = 'lease expired during attempt ' || j.attempt
                        || ' (worker ' || COALESCE(j.locked_by, '?') || ' lost)'
                        || COALESCE('; before: ' || j.last_error, ''),
                    updated_at = now()
                FROM expired WHERE j.id = expired.id
                RETURNING j.id, j.queue, j.kind, j.attempt, j.locked_by"),
            heartbeat: r("UPDATE {schema}.jobs
                SET lease_until = now() + make_interval(secs => $4::float8), updated_at = now()
                WHERE id = $1 AND attempt = $2 AND lease_token = $3 AND state = 'running'"),
            // The batch statements below find their rows through the
            // primary key (`j.id = ANY($1)`), whatever the planner thinks of
            // the arrays' size, and test no `state`: a lease token is set
            // exactly while a job runs, and a `state = 'running'` test would
            // let the planner walk `jobs_leases` instead, which until the
            // next vacuum also holds an entry for every finished job.
            heartbeat_many: r("UPDATE {schema}.jobs j
                SET lease_until = now() + make_interval(secs => $4::float8), updated_at = now()
                FROM unnest($1::uuid[], $2::int4[], $3::uuid[]) AS b(id, attempt, lease_token)
                WHERE j.id = ANY($1) AND j.id = b.id AND j.attempt = b.attempt
                  AND j.lease_token = b.lease_token
                RETURNING j.id, b.attempt"),
            complete: r("UPDATE {schema}.jobs
                SET state = 'succeeded', lease_token = NULL, lease_until = NULL,
                    finished_at = now(), updated_at = now()
                WHERE id = $1 AND attempt = $2 AND lease_token = $3 AND state = 'running'"),
            complete_many: r("UPDATE {schema}.jobs j
                SET state = 'succeeded', lease_token = NULL, lease_until = NULL,
                    finished_at = now(), updated_at = now()
                FROM unnest($1::uuid[], $2::int4[], $3::uuid[]) AS b(id, attempt, lease_token)
                WHERE j.id = ANY($1) AND j.id = b.id AND j.attempt = b.attempt
                  AND j.lease_token = b.lease_token
                RETURNING j.id, b.attempt"),
            retry: r("UPDATE {schema}.jobs
                SET state = 'ready', lease_token = NULL, lease_until = NULL,
                    run_at = now() + make_interval(secs => $4::float8), last_error = $5,
                    updated_at = now()
                WHERE id = $1 AND attempt = $2 AND lease_token = $3 AND state = 'running'
                RETURNING run_at"),
            doom: r("UPDATE {schema}.jobs
                SET doomed = true, last_error = $4, updated_at = now()
                WHERE id = $1 AND attempt = $2 AND lease_token = $3 AND state = 'running'"),
            dead: r("UPDATE {schema}.jobs
                SET state = 'dead', lease_token = NULL, lease_until = NULL, last_error = $4,
                    finished_at = now(), updated_at = now()
                WHERE id = $1 AND attempt = $2 AND lease_token = $3 AND state = 'running'"),
            release: r("WITH released AS (
                    UPDATE {schema}.jobs
                    SET state = 'ready', attempt = attempt - 1, lease_token = NULL,
                        lease_until = NULL, run_at = now(), updated_at = now()
                    WHERE id = $1 AND attempt = $2 AND lease_token = $3 AND state = 'running'
                    RETURNING queue)
                SELECT pg_notify($4, queue)::text FROM released"),
            release_many: r("WITH released AS (
                    UPDATE {schema}.jobs j
                    SET state = 'ready', attempt = j.attempt - 1, lease_token = NULL,
                        lease_until = NULL, run_at = now(), updated_at = now()
                    FROM unnest($1::uuid[], $2::int4[], $3::uuid[]) AS b(id, attempt, lease_token)
                    WHERE j.id = ANY($1) AND j.id = b.id AND j.attempt = b.attempt
                      AND j.lease_token = b.lease_token
                    RETURNING j.id, b.attempt, j.queue)
                SELECT id, attempt, pg_notify($4, queue)::text AS notified FROM released"),
            // The earliest run_at of each pair is the first entry of its
            // range in `jobs_ready_at`.
            next_due: r("SELECT EXTRACT(EPOCH FROM (min(n.run_at) - now()))::float8
                FROM unnest($1::text[], $2::text[]) AS p(queue, kind)
                CROSS JOIN LATERAL (
                    SELECT r.run_at FROM {schema}.jobs r
                    WHERE r.state = 'ready' AND r.queue = p.queue AND r.kind = p.kind
                    ORDER BY r.run_at
                    LIMIT 1) n"),
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn u32_of(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl WorkQueue {
    /// A queue whose tables live in `schema` (a plain lower-case identifier,
    /// usually the event store's schema). Call [`migrate`](Self::migrate)
    /// once before use.
    pub fn new(pool: PgPool, schema: impl Into<String>) -> Self {
        let schema = schema.into();
        WorkQueue {
            pool,
            channel: format!("dcb_jobs.{schema}"),
            sql: std::sync::Arc::new(Sql::new(&schema)),
            schema,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The NOTIFY channel enqueues signal on (the payload is the queue name).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Creates or upgrades the queue's tables (idempotent, safe to run from
    /// several processes at once).
    ///
    /// # Errors
    /// An invalid schema name or a database error.
    pub async fn migrate(&self) -> Result<(), QueueError> {
        migrations::run(&self.pool, &self.schema, COMPONENT, STEPS)
            .await
            .map_err(sqlx::Error::from)?;
        Ok(())
    }

    /// Enqueues `job` through `executor`: a pool, a connection or an open
    /// transaction (`&mut *tx`), so the job commits or rolls back with the
    /// caller's other writes. Sends a NOTIFY (delivered on commit; Postgres
    /// folds identical notifications, so one per queue per transaction).
    ///
    /// Returns the job's id, or `None` when a live job (ready, running or
    /// dead) of the same kind has the same dedupe key, in which case nothing
    /// was written.
    ///
    /// # Errors
    /// A database error.
    pub async fn enqueue<'e, E>(
        &self,
        executor: E,
        job: &NewJob,
    ) -> Result<Option<JobId>, QueueError>
    where
        E: sqlx::Executor<'e, Database = Postgres>,
    {
        let row = sqlx::query(&self.sql.enqueue)
            .bind(job.id)
            .bind(&job.queue)
            .bind(&job.kind)
            .bind(&job.payload)
            .bind(job.priority)
            .bind(job.run_at)
            .bind(job.run_after.map(secs))
            .bind(job.effective_max_attempts().map(i32_of))
            .bind(job.deadline)
            .bind(job.retry_for.map(secs))
            .bind(&job.dedupe_key)
            .bind(job.triggered_by_event)
            .bind(job.triggered_by_position.map(crate::position::to_db))
            .bind(&self.channel)
            .fetch_optional(executor)
            .await?;
        match row {
            Some(row) => Ok(Some(row.try_get::<Uuid, _>("id")?)),
            None => {
                tracing::debug!(kind = %job.kind, dedupe_key = ?job.dedupe_key, "job deduplicated");
                Ok(None)
            }
        }
    }

    /// Enqueues many jobs in one statement through `executor` (see
    /// [`enqueue`](Self::enqueue)). Returns the ids of the jobs written, in no
    /// particular order; a job left out was a duplicate (of a live job, or of
    /// an earlier job in `jobs` with the same kind and dedupe key).
    ///
    /// # Errors
    /// A database error.
    pub async fn enqueue_many<'e, E>(
        &self,
        executor: E,
        jobs: &[NewJob],
    ) -> Result<Vec<JobId>, QueueError>
    where
        E: sqlx::Executor<'e, Database = Postgres>,
    {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
        let queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
        let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
        let payloads: Vec<&serde_json::Value> = jobs.iter().map(|j| &j.payload).collect();
        let priorities: Vec<i32> = jobs.iter().map(|j| j.priority).collect();
        let run_at: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| j.run_at).collect();
        let run_after: Vec<Option<f64>> = jobs.iter().map(|j| j.run_after.map(secs)).collect();
        let max_attempts: Vec<Option<i32>> = jobs
            .iter()
            .map(|j| j.effective_max_attempts().map(i32_of))
            .collect();
        let deadlines: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| j.deadline).collect();
        let retry_for: Vec<Option<f64>> = jobs.iter().map(|j| j.retry_for.map(secs)).collect();
        let dedupe: Vec<Option<&str>> = jobs.iter().map(|j| j.dedupe_key.as_deref()).collect();
        let trig: Vec<Option<Uuid>> = jobs.iter().map(|j| j.triggered_by_event).collect();
        let trig_pos: Vec<Option<i64>> = jobs
            .iter()
            .map(|j| j.triggered_by_position.map(crate::position::to_db))
            .collect();
        let rows = sqlx::query(&self.sql.enqueue_many)
            .bind(ids)
            .bind(queues)
            .bind(kinds)
            .bind(payloads)
            .bind(priorities)
            .bind(run_at)
            .bind(run_after)
            .bind(max_attempts)
            .bind(deadlines)
            .bind(retry_for)
            .bind(dedupe)
            .bind(trig)
            .bind(trig_pos)
            .bind(&self.channel)
            .fetch_all(executor)
            .await?;
        rows.iter()
            .map(|row| row.try_get::<Uuid, _>("id").map_err(QueueError::from))
            .collect()
    }

    /// Claims up to `limit` due jobs of `kinds` from `queues` for
    /// `worker_id`, in one statement: marks them running, increments their
    /// attempt, and gives each a lease of `lease` and a fresh lease token.
    /// Highest priority first, then oldest due.
    ///
    /// # Errors
    /// A database error.
    pub async fn claim(
        &self,
        queues: &[String],
        kinds: &[String],
        limit: usize,
        lease: Duration,
        worker_id: &str,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (pair_queues, pair_kinds) = pairs(queues, kinds);
        let rows = sqlx::query(&self.sql.claim)
            .bind(pair_queues)
            .bind(pair_kinds)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(secs(lease))
            .bind(worker_id)
            .fetch_all(&self.pool)
            .await?;
        let mut jobs = rows
            .iter()
            .map(claimed_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        jobs.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.run_at.cmp(&b.run_at))
                .then(a.id.cmp(&b.id))
        });
        Ok(jobs)
    }

    /// Puts every running job whose lease expired back as due now (its
    /// attempt counts), and returns how many. Workers call this
    /// periodically; it is safe to call from anywhere.
    ///
    /// # Errors
    /// A database error.
    pub async fn reap_expired(&self) -> Result<u64, QueueError> {
        let rows = sqlx::query(&self.sql.reap).fetch_all(&self.pool).await?;
        for row in &rows {
            let id: Uuid = row.try_get("id")?;
            let attempt: i32 = row.try_get("attempt")?;
            let kind: String = row.try_get("kind")?;
            let locked_by: Option<String> = row.try_get("locked_by")?;
            tracing::warn!(job_id = %id, %kind, attempt, worker = ?locked_by, "lease expired; job is due again");
        }
        Ok(rows.len() as u64)
    }

    /// Extends the lease of `job` to `lease` from now.
    ///
    /// # Errors
    /// [`QueueError::LeaseLost`] when the caller no longer owns this attempt.
    pub async fn heartbeat(&self, job: &ClaimedJob, lease: Duration) -> Result<(), QueueError> {
        let done = sqlx::query(&self.sql.heartbeat)
            .bind(job.id)
            .bind(i32_of(job.attempt))
            .bind(job.lease_token)
            .bind(secs(lease))
            .execute(&self.pool)
            .await?;
        fenced(done.rows_affected(), job)
    }

    /// Marks `job` succeeded.
    ///
    /// # Errors
    /// [`QueueError::LeaseLost`] when the caller no longer owns this attempt
    /// (e.g. its lease expired and another worker claimed the job).
    pub async fn complete(&self, job: &ClaimedJob) -> Result<(), QueueError> {
        let done = sqlx::query(&self.sql.complete)
            .bind(job.id)
            .bind(i32_of(job.attempt))
            .bind(job.lease_token)
            .execute(&self.pool)
            .await?;
        fenced(done.rows_affected(), job)
    }

    /// Extends the leases of `jobs` to `lease` from now, in one statement,
    /// each fenced like [`heartbeat`](Self::heartbeat). Returns, in the
    /// order of `jobs`, whether each lease was extended (`false`: the lease
    /// was lost and nothing changed for that job).
    ///
    /// # Errors
    /// A database error (then no lease was extended).
    pub async fn heartbeat_many(
        &self,
        jobs: &[&ClaimedJob],
        lease: Duration,
    ) -> Result<Vec<bool>, QueueError> {
        self.fenced_batch(&self.sql.heartbeat_many, jobs, |q| q.bind(secs(lease)))
            .await
    }

    /// Marks `jobs` succeeded in one statement, each fenced like
    /// [`complete`](Self::complete). Returns, in the order of `jobs`, whether
    /// each was completed (`false`: the lease was lost and nothing changed
    /// for that job).
    ///
    /// # Errors
    /// A database error (then no job was completed).
    pub async fn complete_many(&self, jobs: &[&ClaimedJob]) -> Result<Vec<bool>, QueueError> {
        self.fenced_batch(&self.sql.complete_many, jobs, |q| q)
            .await
    }

    /// Gives `jobs` back like [`release`](Self::release), in one statement.
    /// Returns, in the order of `jobs`, whether each was released (`false`:
    /// the lease was lost and nothing changed for that job).
    ///
    /// # Errors
    /// A database error (then no job was released).
    pub async fn release_many(&self, jobs: &[&ClaimedJob]) -> Result<Vec<bool>, QueueError> {
        let channel = self.channel.clone();
        self.fenced_batch(&self.sql.release_many, jobs, move |q| q.bind(channel))
            .await
    }

    /// Runs a statement fenced by `(id, attempt, lease_token)` arrays (`$1`
    /// to `$3`, then what `more` binds) that returns the `(id, attempt)` of
    /// each row it changed; tells for each of `jobs` whether it was changed.
    async fn fenced_batch<'q, F>(
        &self,
        sql: &'q str,
        jobs: &[&ClaimedJob],
        more: F,
    ) -> Result<Vec<bool>, QueueError>
    where
        F: FnOnce(
            sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
        ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        // No deadlock between batches: a worker set runs one at a time (see
        // the ledger in worker.rs), and the fencing keeps another worker
        // set's batches off these rows (a statement of a worker that lost a
        // lease may wait for the new owner's, never the other way round).
        let mut fences: Vec<(Uuid, i32, Uuid)> = jobs
            .iter()
            .map(|j| (j.id, i32_of(j.attempt), j.lease_token))
            .collect();
        fences.sort_unstable();
        fences.dedup();
        let ids: Vec<Uuid> = fences.iter().map(|f| f.0).collect();
        let attempts: Vec<i32> = fences.iter().map(|f| f.1).collect();
        let tokens: Vec<Uuid> = fences.iter().map(|f| f.2).collect();
        let rows = more(sqlx::query(sql).bind(ids).bind(attempts).bind(tokens))
            .fetch_all(&self.pool)
            .await?;
        let changed = rows
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<Uuid, _>("id")?,
                    row.try_get::<i32, _>("attempt")?,
                ))
            })
            .collect::<Result<std::collections::HashSet<_>, sqlx::Error>>()?;
        Ok(jobs
            .iter()
            .map(|j| changed.contains(&(j.id, i32_of(j.attempt))))
            .collect())
    }

    /// Records a failed attempt of `job` with `error`: with `retry`, schedules
    /// the next attempt that long from now (the time of failure); without,
    /// marks the job dead. Workers decide finality with
    /// [`retry_decision`](Self::retry_decision) and run the failure hook
    /// before marking a job dead.
    ///
    /// # Errors
    /// [`QueueError::LeaseLost`] when the caller no longer owns this attempt.
    pub async fn fail(
        &self,
        job: &ClaimedJob,
        error: &str,
        retry: Option<Duration>,
    ) -> Result<FailOutcome, QueueError> {
        match retry {
            Some(delay) => {
                let row = sqlx::query(&self.sql.retry)
                    .bind(job.id)
                    .bind(i32_of(job.attempt))
                    .bind(job.lease_token)
                    .bind(secs(delay))
                    .bind(error)
                    .fetch_optional(&self.pool)
                    .await?;
                match row {
                    Some(row) => Ok(FailOutcome::Retrying(row.try_get("run_at")?)),
                    None => Err(lease_lost(job)),
                }
            }
            None => {
                let done = sqlx::query(&self.sql.dead)
                    .bind(job.id)
                    .bind(i32_of(job.attempt))
                    .bind(job.lease_token)
                    .bind(error)
                    .execute(&self.pool)
                    .await?;
                fenced(done.rows_affected(), job).map(|()| FailOutcome::Dead)
            }
        }
    }

    /// Notes on a running job that its final failure was decided (with
    /// `error`), before the failure hook runs: if the worker dies now, the
    /// next claim records the failure instead of running the job again.
    ///
    /// # Errors
    /// [`QueueError::LeaseLost`] when the caller no longer owns this attempt.
    pub async fn doom(&self, job: &ClaimedJob, error: &str) -> Result<(), QueueError> {
        let done = sqlx::query(&self.sql.doom)
            .bind(job.id)
            .bind(i32_of(job.attempt))
            .bind(job.lease_token)
            .bind(error)
            .execute(&self.pool)
            .await?;
        fenced(done.rows_affected(), job)
    }

    /// Gives `job` back without counting the attempt (due now, lease
    /// cleared) so another worker can take it at once; graceful shutdown
    /// does this for jobs that did not finish within the grace period.
    ///
    /// # Errors
    /// [`QueueError::LeaseLost`] when the caller no longer owns this attempt.
    pub async fn release(&self, job: &ClaimedJob) -> Result<(), QueueError> {
        let row = sqlx::query(&self.sql.release)
            .bind(job.id)
            .bind(i32_of(job.attempt))
            .bind(job.lease_token)
            .bind(&self.channel)
            .fetch_optional(&self.pool)
            .await?;
        fenced(u64::from(row.is_some()), job)
    }

    /// Whether a failed attempt of `job` is retried, and after which delay:
    /// `None` when the error is permanent, the attempts are used up, or the
    /// retry would start after the deadline.
    pub fn retry_decision(
        job: &ClaimedJob,
        error: &JobError,
        backoff: &Backoff,
    ) -> Option<Duration> {
        if error.is_permanent() || job.max_attempts.is_some_and(|m| job.attempt >= m) {
            return None;
        }
        let delay = error
            .requested_delay()
            .unwrap_or_else(|| backoff.delay(job.attempt));
        if let Some(deadline) = job.deadline {
            let at =
                Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            if at > deadline {
                return None;
            }
        }
        Some(delay)
    }

    /// Seconds until the next ready job of `kinds` in `queues` is due
    /// (negative or zero: one is due now), `None` when there is none.
    pub(crate) async fn next_due_in(
        &self,
        queues: &[String],
        kinds: &[String],
    ) -> Result<Option<f64>, QueueError> {
        let (pair_queues, pair_kinds) = pairs(queues, kinds);
        let secs: Option<f64> = sqlx::query_scalar(&self.sql.next_due)
            .bind(pair_queues)
            .bind(pair_kinds)
            .fetch_one(&self.pool)
            .await?;
        Ok(secs)
    }

    // ----- operations API -----

    /// How many jobs are in each state (of one queue, or all).
    ///
    /// # Errors
    /// A database error.
    pub async fn counts(&self, queue: Option<&str>) -> Result<QueueCounts, QueueError> {
        let rows = sqlx::query(&migrations::render(
            "SELECT state, (state = 'ready' AND run_at > now()) AS later, count(*) AS n
             FROM {schema}.jobs WHERE ($1::text IS NULL OR queue = $1)
             GROUP BY 1, 2",
            &self.schema,
        ))
        .bind(queue)
        .fetch_all(&self.pool)
        .await?;
        let mut counts = QueueCounts::default();
        for row in rows {
            let state: String = row.try_get("state")?;
            let later: bool = row.try_get("later")?;
            let n = u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0);
            match (JobState::parse(&state)?, later) {
                (JobState::Ready, false) => counts.ready += n,
                (JobState::Ready, true) => counts.scheduled += n,
                (JobState::Running, _) => counts.running += n,
                (JobState::Succeeded, _) => counts.succeeded += n,
                (JobState::Dead, _) => counts.dead += n,
                (JobState::Cancelled, _) => counts.cancelled += n,
            }
        }
        Ok(counts)
    }

    /// How long the oldest due job (of one queue, or all) has been waiting,
    /// `None` when no job is due.
    ///
    /// # Errors
    /// A database error.
    pub async fn oldest_ready_age(
        &self,
        queue: Option<&str>,
    ) -> Result<Option<Duration>, QueueError> {
        let secs: Option<f64> = sqlx::query_scalar(&migrations::render(
            "SELECT EXTRACT(EPOCH FROM (now() - min(run_at)))::float8 FROM {schema}.jobs
             WHERE state = 'ready' AND run_at <= now() AND ($1::text IS NULL OR queue = $1)",
            &self.schema,
        ))
        .bind(queue)
        .fetch_one(&self.pool)
        .await?;
        Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
    }

    /// One job.
    ///
    /// # Errors
    /// A database error.
    pub async fn job(&self, id: JobId) -> Result<Option<JobInfo>, QueueError> {
        let row = sqlx::query(&migrations::render(
            &format!("SELECT {JOB_COLUMNS} FROM {{schema}}.jobs WHERE id = $1"),
            &self.schema,
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(info_from_row).transpose()
    }

    /// Dead jobs, most recently died first.
    ///
    /// # Errors
    /// A database error.
    pub async fn dead_jobs(&self, limit: usize) -> Result<Vec<JobInfo>, QueueError> {
        let rows = sqlx::query(&migrations::render(
            &format!(
                "SELECT {JOB_COLUMNS} FROM {{schema}}.jobs WHERE state = 'dead'
                 ORDER BY finished_at DESC, id LIMIT $1"
            ),
            &self.schema,
        ))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(info_from_row).collect()
    }

    /// Puts a dead job back as due now with a fresh set of attempts (its
    /// deadline, if it had one, is lifted). Returns false when the job is not
    /// dead.
    ///
    /// # Errors
    /// A database error.
    pub async fn redrive(&self, id: JobId) -> Result<bool, QueueError> {
        let row = sqlx::query(&migrations::render(
            "WITH redriven AS (
                UPDATE {schema}.jobs
                SET state = 'ready', attempt = 0, doomed = false, run_at = now(),
                    deadline = NULL, finished_at = NULL, updated_at = now(),
                    max_attempts = COALESCE(max_attempts, $2)
                WHERE id = $1 AND state = 'dead'
                RETURNING queue)
             SELECT pg_notify($3, queue)::text FROM redriven",
            &self.schema,
        ))
        .bind(id)
        .bind(i32_of(DEFAULT_MAX_ATTEMPTS))
        .bind(&self.channel)
        .fetch_optional(&self.pool)
        .await?;
        if row.is_some() {
            tracing::info!(job_id = %id, "dead job redriven");
        }
        Ok(row.is_some())
    }

    /// Cancels a ready, running or dead job. A running job's worker loses
    /// its lease: its result is rejected. Returns false when the job is
    /// already finished (or unknown).
    ///
    /// # Errors
    /// A database error.
    pub async fn cancel(&self, id: JobId) -> Result<bool, QueueError> {
        let done = sqlx::query(&migrations::render(
            "UPDATE {schema}.jobs
             SET state = 'cancelled', lease_token = NULL, lease_until = NULL,
                 finished_at = now(), updated_at = now()
             WHERE id = $1 AND state IN ('ready', 'running', 'dead')",
            &self.schema,
        ))
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            tracing::info!(job_id = %id, "job cancelled");
        }
        Ok(done.rows_affected() > 0)
    }

    /// Deletes succeeded and cancelled jobs that finished more than
    /// `older_than` ago (and dead ones too when `include_dead`); returns how
    /// many.
    ///
    /// # Errors
    /// A database error.
    pub async fn purge_finished(
        &self,
        older_than: Duration,
        include_dead: bool,
    ) -> Result<u64, QueueError> {
        let done = sqlx::query(&migrations::render(
            "DELETE FROM {schema}.jobs
             WHERE (state IN ('succeeded', 'cancelled') OR ($2 AND state = 'dead'))
               AND finished_at < now() - make_interval(secs => $1::float8)",
            &self.schema,
        ))
        .bind(secs(older_than))
        .bind(include_dead)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// Every (queue, kind) a claim serves, as two parallel arrays.
fn pairs(queues: &[String], kinds: &[String]) -> (Vec<String>, Vec<String>) {
    let mut pair_queues = Vec::with_capacity(queues.len() * kinds.len());
    let mut pair_kinds = Vec::with_capacity(queues.len() * kinds.len());
    for queue in queues {
        for kind in kinds {
            pair_queues.push(queue.clone());
            pair_kinds.push(kind.clone());
        }
    }
    (pair_queues, pair_kinds)
}

fn lease_lost(job: &ClaimedJob) -> QueueError {
    QueueError::LeaseLost {
        job_id: job.id,
        attempt: job.attempt,
    }
}

fn fenced(rows: u64, job: &ClaimedJob) -> Result<(), QueueError> {
    if rows == 1 {
        Ok(())
    } else {
        Err(lease_lost(job))
    }
}

fn claimed_from_row(row: &PgRow) -> Result<ClaimedJob, QueueError> {
    Ok(ClaimedJob {
        id: row.try_get("id")?,
        queue: row.try_get("queue")?,
        kind: row.try_get("kind")?,
        payload: row.try_get("payload")?,
        priority: row.try_get("priority")?,
        attempt: u32_of(row.try_get("attempt")?),
        max_attempts: row.try_get::<Option<i32>, _>("max_attempts")?.map(u32_of),
        deadline: row.try_get("deadline")?,
        run_at: row.try_get("run_at")?,
        dedupe_key: row.try_get("dedupe_key")?,
        triggered_by_event: row.try_get("triggered_by_event")?,
        triggered_by_position: row
            .try_get::<Option<i64>, _>("triggered_by_position")?
            .map(|p| Position(u64::try_from(p).unwrap_or(0))),
        last_error: row.try_get("last_error")?,
        doomed: row.try_get("doomed")?,
        created_at: row.try_get("created_at")?,
        lease_token: row.try_get("lease_token")?,
    })
}

fn info_from_row(row: &PgRow) -> Result<JobInfo, QueueError> {
    Ok(JobInfo {
        id: row.try_get("id")?,
        queue: row.try_get("queue")?,
        kind: row.try_get("kind")?,
        payload: row.try_get("payload")?,
        state: JobState::parse(row.try_get::<&str, _>("state")?)?,
        priority: row.try_get("priority")?,
        run_at: row.try_get("run_at")?,
        attempt: u32_of(row.try_get("attempt")?),
        max_attempts: row.try_get::<Option<i32>, _>("max_attempts")?.map(u32_of),
        deadline: row.try_get("deadline")?,
        dedupe_key: row.try_get("dedupe_key")?,
        triggered_by_event: row.try_get("triggered_by_event")?,
        last_error: row.try_get("last_error")?,
        locked_by: row.try_get("locked_by")?,
        lease_until: row.try_get("lease_until")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}
