//! [`WorkQueue`]: enqueueing jobs, and the claim / heartbeat / complete /
//! fail protocol that workers run, each step fenced by the job's attempt
//! and lease token.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dcb_core::trace::TraceContext;
use dcb_core::{Backoff, MAX_DELAY};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, Row};
use uuid::Uuid;

use super::admin::QueueAdmin;
use super::job::{ClaimedJob, JobId, NewJob};
use super::processor::JobError;
use super::schema::{channel, COMPONENT, STEPS};
use super::sql::Statements;
use super::QueueError;
use crate::migrations;
use crate::position;
use crate::text::storable;

/// How a failed attempt was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOutcome {
    /// Scheduled for another attempt at this time.
    Retrying(DateTime<Utc>),
    /// Dead: no more attempts.
    Dead,
}

/// The Postgres work queue: enqueue, and the claim/heartbeat/complete/fail
/// protocol workers use. The operator's side is [`QueueAdmin`]
/// ([`WorkQueue::admin`]).
///
/// Cheap to clone (a pool and a schema name).
#[derive(Clone, Debug)]
pub struct WorkQueue {
    pool: PgPool,
    schema: String,
    channel: String,
    pub(super) sql: Arc<Statements>,
}

/// Seconds of `d` for an interval parameter, at most [`MAX_DELAY`] (a
/// longer one would overflow PostgreSQL's interval arithmetic).
pub(super) fn secs(d: Duration) -> f64 {
    d.min(MAX_DELAY).as_secs_f64()
}

pub(super) fn u32_of(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

pub(super) fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl WorkQueue {
    /// A queue whose tables live in `schema` (a plain lower-case identifier,
    /// usually the event store's schema; [`PgEventStore::queue`] gives the
    /// store's). Call [`migrate`](Self::migrate) once before use.
    ///
    /// [`PgEventStore::queue`]: crate::PgEventStore::queue
    ///
    /// # Errors
    /// [`QueueError::InvalidConfig`] for a schema name that is not a plain
    /// lower-case identifier.
    pub fn new(pool: PgPool, schema: impl Into<String>) -> Result<Self, QueueError> {
        let schema = schema.into();
        migrations::validate_schema(&schema)
            .map_err(|e| QueueError::InvalidConfig(e.to_string()))?;
        Ok(Self::for_schema(pool, schema))
    }

    /// For a schema already validated (the store's).
    pub(crate) fn for_schema(pool: PgPool, schema: String) -> Self {
        WorkQueue {
            pool,
            channel: channel(&schema),
            sql: Arc::new(Statements::new(&schema)),
            schema,
        }
    }

    /// The operations API on this queue's tables.
    pub fn admin(&self) -> QueueAdmin {
        QueueAdmin::from_parts(self.pool.clone(), self.schema.clone())
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
        migrations::run(&self.pool, &self.schema, COMPONENT, STEPS).await?;
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
    /// [`QueueError::InvalidJob`] naming the field PostgreSQL could not
    /// store (checked before anything is sent), or a database error.
    pub async fn enqueue<'e, E>(
        &self,
        executor: E,
        job: &NewJob,
    ) -> Result<Option<JobId>, QueueError>
    where
        E: sqlx::Executor<'e, Database = Postgres>,
    {
        job.validate()?;
        let trace = job_trace(job);
        let statement = match trace {
            Some(_) => &self.sql.enqueue_traced,
            None => &self.sql.enqueue,
        };
        let mut query = sqlx::query(statement)
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
            .bind(job.triggered_by_position.map(position::to_db))
            .bind(&self.channel);
        if let Some(trace) = trace {
            query = query.bind(sqlx::types::Json(trace));
        }
        let row = query.fetch_optional(executor).await?;
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
    /// [`QueueError::InvalidJob`] when any job holds what PostgreSQL cannot
    /// store (nothing is written then; the message names the job and the
    /// field), or a database error.
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
        for (index, job) in jobs.iter().enumerate() {
            job.validate().map_err(|e| match e {
                QueueError::InvalidJob(message) => {
                    QueueError::InvalidJob(format!("job {index} of the batch: {message}"))
                }
                other => other,
            })?;
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
            .map(|j| j.triggered_by_position.map(position::to_db))
            .collect();
        let current = dcb_core::trace::current();
        let traces: Vec<Option<sqlx::types::Json<&TraceContext>>> = jobs
            .iter()
            .map(|j| j.trace.as_ref().or(current.as_ref()).map(sqlx::types::Json))
            .collect();
        let traced = traces.iter().any(Option::is_some);
        let statement = if traced {
            &self.sql.enqueue_many_traced
        } else {
            &self.sql.enqueue_many
        };
        let mut query = sqlx::query(statement)
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
            .bind(&self.channel);
        if traced {
            query = query.bind(traces);
        }
        let rows = query.fetch_all(executor).await?;
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

    /// Records a failed attempt of `job` with `error` (stored as
    /// [`storable`] makes it): with `retry`, schedules
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
        let error = storable(error);
        match retry {
            Some(delay) => {
                let row = sqlx::query(&self.sql.retry)
                    .bind(job.id)
                    .bind(i32_of(job.attempt))
                    .bind(job.lease_token)
                    .bind(secs(delay))
                    .bind(&*error)
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
                    .bind(&*error)
                    .execute(&self.pool)
                    .await?;
                fenced(done.rows_affected(), job).map(|()| FailOutcome::Dead)
            }
        }
    }

    /// Notes on a running job that its final failure was decided (with
    /// `error`, stored as [`storable`] makes it), before the failure hook runs: if the worker dies now, the
    /// next claim records the failure instead of running the job again.
    ///
    /// # Errors
    /// [`QueueError::LeaseLost`] when the caller no longer owns this attempt.
    pub async fn doom(&self, job: &ClaimedJob, error: &str) -> Result<(), QueueError> {
        let done = sqlx::query(&self.sql.doom)
            .bind(job.id)
            .bind(i32_of(job.attempt))
            .bind(job.lease_token)
            .bind(&*storable(error))
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
    /// retry would start after the deadline. The delay is what the error
    /// asked for ([`JobError::retry_after`]) or else `backoff`'s, at most
    /// [`MAX_DELAY`].
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
            .unwrap_or_else(|| backoff.delay(job.attempt))
            .min(MAX_DELAY);
        if let Some(deadline) = job.deadline {
            let at = chrono::Duration::from_std(delay)
                .ok()
                .and_then(|d| Utc::now().checked_add_signed(d));
            if at.is_none_or(|at| at > deadline) {
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
}

/// Every (queue, kind) a claim serves, as two parallel arrays.
pub(super) fn pairs(queues: &[String], kinds: &[String]) -> (Vec<String>, Vec<String>) {
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

pub(super) fn claimed_from_row(row: &PgRow) -> Result<ClaimedJob, QueueError> {
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
            .and_then(position::from_db),
        last_error: row.try_get("last_error")?,
        doomed: row.try_get("doomed")?,
        created_at: row.try_get("created_at")?,
        lease_token: row.try_get("lease_token")?,
        trace: row
            .try_get::<Option<sqlx::types::Json<TraceContext>>, _>("trace")?
            .map(|t| t.0),
    })
}

/// The trace context a job is enqueued with: its own, or the current span's.
fn job_trace(job: &NewJob) -> Option<TraceContext> {
    job.trace.clone().or_else(dcb_core::trace::current)
}
