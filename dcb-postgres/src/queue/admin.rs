//! [`QueueAdmin`]: the operator's view of the work queue, through the
//! database alone: jobs by state and queue, counts, the age of the oldest
//! ready job, redrive, cancel and purge, the worker sets running now, and
//! ready jobs that no running worker serves. Any process with a pool and the
//! schema can use it; nothing here needs a running worker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::client::{i32_of, secs, u32_of};
use super::job::{JobId, JobInfo, JobState, QueueCounts, DEFAULT_MAX_ATTEMPTS};
use super::schema::channel;
use super::sql::AdminStatements;
use super::QueueError;
use crate::migrations;

/// The operations API of the work queue in one schema.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> Result<(), dcb_postgres::queue::QueueError> {
/// use dcb_postgres::queue::{JobFilter, JobState, QueueAdmin};
/// let admin = QueueAdmin::new(pool, "dcb")?;
/// for job in admin.jobs(&JobFilter::new().state(JobState::Dead).limit(20)).await? {
///     println!("{} {} {:?}", job.id, job.kind, job.last_error);
/// }
/// let redriven = admin.redrive_all_dead(None).await?;
/// for unserved in admin.unserved().await? {
///     eprintln!("{} ready {} jobs wait for a worker", unserved.ready, unserved.kind);
/// }
/// # Ok(()) }
/// ```
///
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct QueueAdmin {
    pool: PgPool,
    schema: String,
    channel: String,
    sql: Arc<AdminStatements>,
}

/// Which jobs [`QueueAdmin::jobs`] lists: any state, queue and kind unless
/// narrowed, most recently changed first, 100 at most unless told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFilter {
    state: Option<JobState>,
    queue: Option<String>,
    kind: Option<String>,
    limit: usize,
    offset: usize,
}

impl Default for JobFilter {
    fn default() -> Self {
        JobFilter {
            state: None,
            queue: None,
            kind: None,
            limit: 100,
            offset: 0,
        }
    }
}

impl JobFilter {
    /// Every job (the first 100).
    pub fn new() -> Self {
        JobFilter::default()
    }

    /// Only jobs in `state`.
    pub fn state(mut self, state: JobState) -> Self {
        self.state = Some(state);
        self
    }

    /// Only jobs of `queue`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Only jobs of `kind`.
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// At most `n` jobs.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = n;
        self
    }

    /// Skips the first `n` jobs (for paging).
    pub fn offset(mut self, n: usize) -> Self {
        self.offset = n;
        self
    }
}

/// One queue's jobs by state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSummary {
    /// The queue.
    pub queue: String,
    /// Its jobs by state.
    pub counts: QueueCounts,
}

/// Ready jobs of a (queue, kind) that no running worker set serves: they
/// wait until a worker registers a processor for the kind on that queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnservedKind {
    /// The queue.
    pub queue: String,
    /// The kind.
    pub kind: String,
    /// How many are ready (counted up to 10,000).
    pub ready: u64,
    /// When the oldest of them was (or is) due.
    pub oldest_run_at: Option<DateTime<Utc>>,
}

/// A worker set as it last announced itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSetInfo {
    /// Its worker id.
    pub worker_id: String,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// The kinds it has processors for.
    pub kinds: Vec<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it last announced itself.
    pub seen_at: DateTime<Utc>,
    /// Whether it announced itself recently enough to count as running.
    pub alive: bool,
}

impl QueueAdmin {
    /// The operations API on the queue in `schema` (a plain lower-case
    /// identifier).
    ///
    /// # Errors
    /// [`QueueError::InvalidConfig`] for a bad schema name.
    pub fn new(pool: PgPool, schema: impl Into<String>) -> Result<Self, QueueError> {
        let schema = schema.into();
        migrations::validate_schema(&schema)
            .map_err(|e| QueueError::InvalidConfig(e.to_string()))?;
        Ok(Self::from_parts(pool, schema))
    }

    /// For a schema already validated.
    pub(crate) fn from_parts(pool: PgPool, schema: String) -> Self {
        QueueAdmin {
            channel: channel(&schema),
            sql: Arc::new(AdminStatements::new(&schema)),
            pool,
            schema,
        }
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// How many jobs are in each state (of one queue, or all).
    ///
    /// # Errors
    /// A database error.
    pub async fn counts(&self, queue: Option<&str>) -> Result<QueueCounts, QueueError> {
        let rows = sqlx::query(&self.sql.counts)
            .bind(queue)
            .fetch_all(&self.pool)
            .await?;
        let mut counts = QueueCounts::default();
        for row in rows {
            add_count(&mut counts, &row)?;
        }
        Ok(counts)
    }

    /// Every queue that has jobs, with its jobs by state, by queue name.
    ///
    /// # Errors
    /// A database error.
    pub async fn queues(&self) -> Result<Vec<QueueSummary>, QueueError> {
        let rows = sqlx::query(&self.sql.counts_by_queue)
            .fetch_all(&self.pool)
            .await?;
        let mut queues: BTreeMap<String, QueueCounts> = BTreeMap::new();
        for row in rows {
            let queue: String = row.try_get("queue")?;
            add_count(queues.entry(queue).or_default(), &row)?;
        }
        Ok(queues
            .into_iter()
            .map(|(queue, counts)| QueueSummary { queue, counts })
            .collect())
    }

    /// How long the oldest due job (of one queue, or all) has been waiting,
    /// `None` when no job is due: the queue's lag.
    ///
    /// # Errors
    /// A database error.
    pub async fn oldest_ready_age(
        &self,
        queue: Option<&str>,
    ) -> Result<Option<Duration>, QueueError> {
        let secs: Option<f64> = sqlx::query_scalar(&self.sql.oldest_ready)
            .bind(queue)
            .fetch_one(&self.pool)
            .await?;
        Ok(secs.map(|s| Duration::from_secs_f64(s.clamp(0.0, 1e12))))
    }

    /// The jobs `filter` selects, most recently changed first.
    ///
    /// # Errors
    /// A database error.
    pub async fn jobs(&self, filter: &JobFilter) -> Result<Vec<JobInfo>, QueueError> {
        let rows = sqlx::query(&self.sql.jobs)
            .bind(filter.state.map(JobState::as_str))
            .bind(filter.queue.as_deref())
            .bind(filter.kind.as_deref())
            .bind(i64::try_from(filter.limit).unwrap_or(i64::MAX))
            .bind(i64::try_from(filter.offset).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(info_from_row).collect()
    }

    /// One job.
    ///
    /// # Errors
    /// A database error.
    pub async fn job(&self, id: JobId) -> Result<Option<JobInfo>, QueueError> {
        let row = sqlx::query(&self.sql.job)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(info_from_row).transpose()
    }

    /// Puts a dead job back as due now with a fresh set of attempts (its
    /// deadline, if it had one, is lifted; a job that had none gets
    /// [`DEFAULT_MAX_ATTEMPTS`]). Returns false when the job is not dead.
    ///
    /// # Errors
    /// A database error.
    pub async fn redrive(&self, id: JobId) -> Result<bool, QueueError> {
        let row = sqlx::query(&self.sql.redrive)
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

    /// Redrives every dead job (of one queue, or all) like
    /// [`redrive`](Self::redrive), in one transaction; returns how many.
    ///
    /// # Errors
    /// A database error (then none was redriven).
    pub async fn redrive_all_dead(&self, queue: Option<&str>) -> Result<u64, QueueError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(&self.sql.redrive_all)
            .bind(queue)
            .bind(i32_of(DEFAULT_MAX_ATTEMPTS))
            .fetch_all(&mut *tx)
            .await?;
        let mut total = 0;
        for row in &rows {
            let queue: String = row.try_get("queue")?;
            total += u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0);
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.channel)
                .bind(&queue)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if total > 0 {
            tracing::info!(jobs = total, ?queue, "dead jobs redriven");
        }
        Ok(total)
    }

    /// Cancels a ready, running or dead job. A running job's worker loses
    /// its lease: its result is rejected. Returns false when the job is
    /// already finished (or unknown).
    ///
    /// # Errors
    /// A database error.
    pub async fn cancel(&self, id: JobId) -> Result<bool, QueueError> {
        let done = sqlx::query(&self.sql.cancel)
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
        let done = sqlx::query(&self.sql.purge)
            .bind(secs(older_than))
            .bind(include_dead)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Ready jobs of every (queue, kind) that no running worker set serves
    /// (none has a processor for the kind on that queue): nothing will claim
    /// them until one starts. Workers log the same as a warning.
    ///
    /// # Errors
    /// A database error.
    pub async fn unserved(&self) -> Result<Vec<UnservedKind>, QueueError> {
        let rows = sqlx::query(&self.sql.unserved)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(UnservedKind {
                    queue: row.try_get("queue")?,
                    kind: row.try_get("kind")?,
                    ready: u64::try_from(row.try_get::<i64, _>("ready")?).unwrap_or(0),
                    oldest_run_at: row.try_get("oldest")?,
                })
            })
            .collect()
    }

    /// The worker sets that announced themselves (running ones, and those
    /// gone within the last hour).
    ///
    /// # Errors
    /// A database error.
    pub async fn worker_sets(&self) -> Result<Vec<WorkerSetInfo>, QueueError> {
        let rows = sqlx::query(&self.sql.worker_sets)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(WorkerSetInfo {
                    worker_id: row.try_get("worker_id")?,
                    queues: row.try_get("queues")?,
                    kinds: row.try_get("kinds")?,
                    started_at: row.try_get("started_at")?,
                    seen_at: row.try_get("seen_at")?,
                    alive: row.try_get("alive")?,
                })
            })
            .collect()
    }
}

fn add_count(counts: &mut QueueCounts, row: &PgRow) -> Result<(), QueueError> {
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
    Ok(())
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
