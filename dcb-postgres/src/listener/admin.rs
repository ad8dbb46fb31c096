//! [`ListenerAdmin`]: the operators' view of every listener, through the
//! database alone. It reads each listener's status and parked events, and
//! records requests (reset, rebuild, retry or skip one parked event) that
//! the listener's live leader, in whichever process it runs, carries out;
//! their outcome and a rebuild's progress are read back from the database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dcb_core::{EventType, ListenerState, Position};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::config::DeliveryMode;
use super::sql::{request_channel, Statements};
use super::status::{
    ListenerRequest, ListenerStatus, ParkedEvent, RebuildProgress, RequestId, RequestKind,
    RequestState,
};
use super::ListenerError;
use crate::position::{from_db, from_db_or_zero, to_db};
use crate::text::storable;

/// The operators' API of the listeners in one schema: status, parked
/// events, and requests their leaders carry out. Needs only a pool: the
/// runners may live in other processes.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> Result<(), dcb_postgres::listener::ListenerError> {
/// use std::time::Duration;
/// use dcb_core::Position;
/// use dcb_postgres::listener::ListenerAdmin;
/// let admin = ListenerAdmin::new(pool, "dcb")?.requested_by("ops: alice");
/// for status in admin.statuses().await? {
///     println!("{} {:?} lag {} parked {}", status.id, status.state, status.lag, status.parked);
/// }
/// // Get a listener past one event it parked (or is blocked on):
/// let request = admin.request_skip("cart-items-db", Position(42)).await?;
/// admin.wait_for(request, Duration::from_secs(30)).await?;
/// // Rebuild a read model and follow its progress:
/// let rebuild = admin.request_rebuild("cart-items-db").await?;
/// let progress = admin.rebuild_progress(rebuild).await?;
/// println!("{:.0}% done", progress.fraction * 100.0);
/// # Ok(()) }
/// ```
///
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct ListenerAdmin {
    pool: PgPool,
    schema: String,
    channel: String,
    requested_by: Option<String>,
    sql: Arc<Statements>,
}

impl ListenerAdmin {
    /// The listeners whose tables live in `schema` (with the event store's;
    /// a plain lower-case identifier).
    ///
    /// # Errors
    /// [`ListenerError::InvalidConfig`] for a bad schema name.
    pub fn new(pool: PgPool, schema: impl Into<String>) -> Result<Self, ListenerError> {
        let schema = schema.into();
        crate::migrations::validate_schema(&schema)
            .map_err(|e| ListenerError::InvalidConfig(e.to_string()))?;
        Ok(Self::for_schema(pool, schema))
    }

    /// For a schema already validated (the store's).
    pub(crate) fn for_schema(pool: PgPool, schema: String) -> Self {
        let sql = Arc::new(Statements::new(&schema));
        Self::with_statements(pool, schema, sql)
    }

    pub(crate) fn with_statements(pool: PgPool, schema: String, sql: Arc<Statements>) -> Self {
        ListenerAdmin {
            pool,
            channel: request_channel(&schema),
            schema,
            requested_by: None,
            sql,
        }
    }

    /// Records `who` as the author of the requests made through this value
    /// (free text, e.g. an operator's name).
    pub fn requested_by(mut self, who: impl Into<String>) -> Self {
        self.requested_by = Some(storable(&who.into()).into_owned());
        self
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The status of every listener any runner ever started in this schema,
    /// by id.
    ///
    /// # Errors
    /// Database failures.
    pub async fn statuses(&self) -> Result<Vec<ListenerStatus>, ListenerError> {
        let rows = sqlx::query(&self.sql.status)
            .bind(None::<&str>)
            .fetch_all(&self.pool)
            .await?;
        let head = self.head().await?;
        let mut all = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut status = status_from_row(row, head)?;
            status.lag_time = self.lag_time(status.position, head).await;
            all.push(status);
        }
        Ok(all)
    }

    /// The status of listener `id`.
    ///
    /// # Errors
    /// [`ListenerError::UnknownListener`] when no runner ever started it;
    /// database failures.
    pub async fn status(&self, id: &str) -> Result<ListenerStatus, ListenerError> {
        let head = self.head().await?;
        self.status_with_head(id, head).await
    }

    /// [`status`](Self::status) against a head read elsewhere.
    pub(crate) async fn status_with_head(
        &self,
        id: &str,
        head: Option<Position>,
    ) -> Result<ListenerStatus, ListenerError> {
        let row = sqlx::query(&self.sql.status)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| ListenerError::UnknownListener(id.to_owned()))?;
        let mut status = status_from_row(&row, head)?;
        status.lag_time = self.lag_time(status.position, head).await;
        Ok(status)
    }

    async fn head(&self) -> Result<Option<Position>, ListenerError> {
        let head: Option<i64> = sqlx::query_scalar(&self.sql.head)
            .fetch_optional(&self.pool)
            .await?;
        Ok(head.and_then(from_db))
    }

    /// How long ago the first event past `position` was recorded (zero when
    /// caught up, `None` when it cannot be read).
    async fn lag_time(
        &self,
        position: Option<Position>,
        head: Option<Position>,
    ) -> Option<Duration> {
        let at = position.map_or(0, |p| p.0);
        if head.is_none_or(|h| h.0 <= at) {
            return Some(Duration::ZERO);
        }
        let secs: Option<f64> = sqlx::query_scalar(&self.sql.lag_time)
            .bind(to_db(Position(at + 1)))
            .fetch_optional(&self.pool)
            .await
            .ok()
            .flatten();
        secs.map(|s| Duration::from_secs_f64(s.clamp(0.0, 1e12)))
    }

    /// The events listener `id` parked and nobody resolved yet, oldest
    /// first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn parked(&self, id: &str) -> Result<Vec<ParkedEvent>, ListenerError> {
        type Row = (i64, String, Option<uuid::Uuid>, String, i32, DateTime<Utc>);
        let rows: Vec<Row> = sqlx::query_as(&self.sql.parked)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(position, event_type, event_id, error, attempts, parked_at)| ParkedEvent {
                    listener_id: id.to_owned(),
                    position: from_db_or_zero(position),
                    event_type: EventType::from(event_type),
                    event_id,
                    error,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    parked_at,
                },
            )
            .collect())
    }

    async fn request(
        &self,
        id: &str,
        kind: RequestKind,
        position: Option<Position>,
    ) -> Result<RequestId, ListenerError> {
        let row: Option<(i64, Option<String>)> = sqlx::query_as(&self.sql.request)
            .bind(id)
            .bind(kind.as_str())
            .bind(position.map(to_db))
            .bind(self.requested_by.as_deref())
            .bind(&self.channel)
            .fetch_optional(&self.pool)
            .await?;
        let (request, _) = row.ok_or_else(|| ListenerError::UnknownListener(id.to_owned()))?;
        tracing::info!(
            listener = id,
            request,
            kind = kind.as_str(),
            ?position,
            "listener request recorded"
        );
        Ok(request)
    }

    /// Asks listener `id`'s leader to rewind it to the start of the log: in
    /// one transaction, the listener's own
    /// [`reset`](dcb_core::TransactionalListener::reset) (transactional
    /// listeners), the checkpoint, its failures and parked events. The
    /// leader then replays the log.
    ///
    /// # Errors
    /// [`ListenerError::UnknownListener`], database failures.
    pub async fn request_reset(&self, id: &str) -> Result<RequestId, ListenerError> {
        self.request(id, RequestKind::Reset, None).await
    }

    /// Asks for a reset, then a replay up to the head as it is when the
    /// leader carries the reset out; follow it with
    /// [`rebuild_progress`](Self::rebuild_progress).
    ///
    /// # Errors
    /// [`ListenerError::UnknownListener`], database failures.
    pub async fn request_rebuild(&self, id: &str) -> Result<RequestId, ListenerError> {
        self.request(id, RequestKind::Rebuild, None).await
    }

    /// Asks listener `id`'s leader to run the handler again on the parked
    /// event at `position` (out of order: later events were handled). When
    /// it succeeds the event is resolved; when it fails the request fails
    /// with the error and the event stays parked. For an event the listener
    /// is retrying (or blocked on), it retries now instead of after its
    /// backoff.
    ///
    /// # Errors
    /// [`ListenerError::UnknownListener`], database failures.
    pub async fn request_retry(
        &self,
        id: &str,
        position: Position,
    ) -> Result<RequestId, ListenerError> {
        self.request(id, RequestKind::Retry, Some(position)).await
    }

    /// Asks listener `id`'s leader to get past the event at `position`
    /// without handling it: a parked event is marked resolved; the event a
    /// listener is stuck on (its next one) is parked as skipped and the
    /// checkpoint moves past it.
    ///
    /// # Errors
    /// [`ListenerError::UnknownListener`], database failures.
    pub async fn request_skip(
        &self,
        id: &str,
        position: Position,
    ) -> Result<RequestId, ListenerError> {
        self.request(id, RequestKind::Skip, Some(position)).await
    }

    /// One request as recorded, `None` when there is no such request.
    ///
    /// # Errors
    /// Database failures.
    pub async fn request_info(
        &self,
        request: RequestId,
    ) -> Result<Option<ListenerRequest>, ListenerError> {
        let row = sqlx::query(&self.sql.request_by_id)
            .bind(request)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(request_from_row).transpose()
    }

    /// Listener `id`'s most recent requests, newest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn requests(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<Vec<ListenerRequest>, ListenerError> {
        let rows = sqlx::query(&self.sql.requests)
            .bind(id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(request_from_row).collect()
    }

    /// How far a rebuild (or reset) request got, from the database: the
    /// checkpoint against the head the reset targeted, in the generation the
    /// reset began. `done` only once the checkpoint reached the target.
    ///
    /// # Errors
    /// [`ListenerError::RequestFailed`] when the request failed (or was
    /// superseded by a later reset); [`ListenerError::UnknownListener`] when
    /// there is no such request; database failures.
    pub async fn rebuild_progress(
        &self,
        request: RequestId,
    ) -> Result<RebuildProgress, ListenerError> {
        let row = sqlx::query(&self.sql.request_by_id)
            .bind(request)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| ListenerError::UnknownListener(format!("request {request}")))?;
        let info = request_from_row(&row)?;
        if info.state == RequestState::Failed {
            return Err(failed(&info));
        }
        let get_i64 = |name: &str| -> Result<Option<i64>, sqlx::Error> { row.try_get(name) };
        let target = get_i64("target")?.map_or(0, |t| t.max(0) as u64);
        let generation = get_i64("generation")?;
        let handled_before = get_i64("handled_before")?.unwrap_or(0);
        let elapsed: Option<f64> = row.try_get("elapsed")?;
        let elapsed = Duration::from_secs_f64(elapsed.unwrap_or(0.0).clamp(0.0, 1e12));
        let replaying =
            info.state == RequestState::Running && generation == get_i64("checkpoint_generation")?;
        let (position, handled) = if info.state == RequestState::Done {
            (
                get_i64("reached")?.unwrap_or(0),
                get_i64("handled_after")?.unwrap_or(handled_before),
            )
        } else if replaying {
            (
                get_i64("checkpoint")?.unwrap_or(0),
                get_i64("handled")?.unwrap_or(handled_before),
            )
        } else {
            (0, handled_before)
        };
        let position = u64::try_from(position).unwrap_or(0);
        // Done once recorded, or once the checkpoint reached the target in
        // the rebuild's generation (the leader records it right after).
        let done = info.state == RequestState::Done || (replaying && position >= target);
        let events_done = u64::try_from(handled - handled_before).unwrap_or(0);
        let fraction = if done || target == 0 {
            if info.state == RequestState::Pending {
                0.0
            } else {
                1.0
            }
        } else {
            (position as f64 / target as f64).min(1.0)
        };
        Ok(RebuildProgress {
            request,
            listener_id: info.listener_id,
            position: Position(position),
            target: Position(target),
            events_done,
            fraction,
            events_per_sec: events_done as f64 / elapsed.as_secs_f64().max(1e-6),
            elapsed,
            done,
        })
    }

    /// Forgets finished (done or failed) requests older than `older_than`;
    /// returns how many.
    ///
    /// # Errors
    /// Database failures.
    pub async fn purge_requests(&self, older_than: Duration) -> Result<u64, ListenerError> {
        let done = sqlx::query(&self.sql.purge_requests)
            .bind(older_than.min(dcb_core::MAX_DELAY).as_secs_f64())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Waits until `request` is done or failed, polling the database, up to
    /// `timeout`; returns it as recorded.
    ///
    /// # Errors
    /// [`ListenerError::RequestFailed`] when it failed;
    /// [`ListenerError::RequestTimeout`] when it is still pending or running
    /// after `timeout` (no runner of the listener running?); database
    /// failures.
    pub async fn wait_for(
        &self,
        request: RequestId,
        timeout: Duration,
    ) -> Result<ListenerRequest, ListenerError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            let info = self
                .request_info(request)
                .await?
                .ok_or_else(|| ListenerError::UnknownListener(format!("request {request}")))?;
            match info.state {
                RequestState::Done => return Ok(info),
                RequestState::Failed => return Err(failed(&info)),
                RequestState::Pending | RequestState::Running => {}
            }
            if started.elapsed() >= timeout {
                return Err(ListenerError::RequestTimeout {
                    listener: info.listener_id,
                    request,
                });
            }
            tokio::time::sleep(pause.min(timeout.saturating_sub(started.elapsed()))).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}

/// The error of a failed request.
pub(crate) fn failed(info: &ListenerRequest) -> ListenerError {
    ListenerError::RequestFailed {
        listener: info.listener_id.clone(),
        request: info.id,
        kind: info.kind,
        error: info.error.clone().unwrap_or_default(),
    }
}

fn status_from_row(row: &PgRow, head: Option<Position>) -> Result<ListenerStatus, ListenerError> {
    let position: i64 = row.try_get("position")?;
    let leased: bool = row.try_get("leased")?;
    let owner: Option<String> = row.try_get("owner")?;
    let state: String = row.try_get("state")?;
    let leader = owner.filter(|_| leased);
    let position = from_db(position);
    let at = position.map_or(0, |p| p.0);
    let lag = head.map_or(0, |h| h.0).saturating_sub(at);
    let state = match (&leader, ListenerState::from_name(&state)) {
        (None, _) => ListenerState::Stopped,
        // The stored state is written with each batch (and a failure): a
        // leader that took the lease and has handled nothing since still
        // shows the "stopped" its predecessor left on release.
        (Some(_), ListenerState::Stopped) if lag == 0 => ListenerState::Idle,
        (Some(_), ListenerState::Stopped) => ListenerState::Running,
        (Some(_), state) => state,
    };
    Ok(ListenerStatus {
        id: row.try_get("listener_id")?,
        mode: row
            .try_get::<Option<String>, _>("mode")?
            .as_deref()
            .and_then(DeliveryMode::from_name),
        position,
        head,
        lag,
        lag_time: None,
        state,
        leader,
        leading_here: false,
        attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
        failing_position: row
            .try_get::<Option<i64>, _>("error_position")?
            .and_then(from_db),
        last_error: row.try_get("last_error")?,
        last_error_at: row.try_get("last_error_at")?,
        parked: u64::try_from(row.try_get::<i64, _>("parked")?).unwrap_or(0),
        handled: u64::try_from(row.try_get::<i64, _>("handled")?).unwrap_or(0),
        handled_here: 0,
        generation: u64::try_from(row.try_get::<i64, _>("generation")?).unwrap_or(0),
    })
}

fn request_from_row(row: &PgRow) -> Result<ListenerRequest, ListenerError> {
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    let corrupt = |what: &str, value: &str| {
        ListenerError::InvalidConfig(format!(
            "listener_requests holds an unknown {what} {value:?}"
        ))
    };
    Ok(ListenerRequest {
        id: row.try_get("id")?,
        listener_id: row.try_get("listener_id")?,
        kind: RequestKind::from_name(&kind).ok_or_else(|| corrupt("kind", &kind))?,
        position: row.try_get::<Option<i64>, _>("position")?.and_then(from_db),
        state: RequestState::from_name(&state).ok_or_else(|| corrupt("state", &state))?,
        requested_by: row.try_get("requested_by")?,
        requested_at: row.try_get("requested_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        executed_by: row.try_get("executed_by")?,
        error: row.try_get("error")?,
    })
}
