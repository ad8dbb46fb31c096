//! [`RunnerHandle`]: a running runner's status, catch-up waits, reset and
//! rebuild, and graceful shutdown.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dcb_core::Position;
use tokio::task::JoinHandle;

use super::admin::ListenerAdmin;
use super::shared::{ListenerShared, RunnerShared};
use super::status::{ListenerStatus, ParkedEvent, RebuildProgress};
use super::ListenerError;
use crate::position::from_db_or_zero;

/// How long [`RunnerHandle::reset`] and [`RunnerHandle::rebuild`] wait for
/// the listener's leader to take their request up.
const REQUEST_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A running runner: status, catch-up waits, reset and rebuild, shutdown.
///
/// Dropping it without [`RunnerHandle::shutdown`] also stops the tasks, but
/// without waiting for them.
pub struct RunnerHandle {
    runner: Arc<RunnerShared>,
    listeners: HashMap<String, Arc<ListenerShared>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    admin: ListenerAdmin,
}

impl std::fmt::Debug for RunnerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerHandle")
            .field("instance", &self.runner.config.instance_id)
            .field("listeners", &self.listeners.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Drop for RunnerHandle {
    fn drop(&mut self) {
        self.runner.shutdown.send_replace(true);
    }
}

impl RunnerHandle {
    pub(crate) fn new(
        runner: Arc<RunnerShared>,
        listeners: HashMap<String, Arc<ListenerShared>>,
        tasks: Mutex<Vec<JoinHandle<()>>>,
        admin: ListenerAdmin,
    ) -> Self {
        RunnerHandle {
            runner,
            listeners,
            tasks,
            admin,
        }
    }

    fn listener(&self, id: &str) -> Result<&Arc<ListenerShared>, ListenerError> {
        self.listeners
            .get(id)
            .ok_or_else(|| ListenerError::UnknownListener(id.to_owned()))
    }

    /// The ids of the listeners this runner runs.
    pub fn listener_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.listeners.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The name this instance leads under.
    pub fn instance_id(&self) -> &str {
        &self.runner.config.instance_id
    }

    /// The operators' API on this runner's schema (every listener there,
    /// whichever process runs it); its requests are recorded as made by
    /// this instance.
    pub fn admin(&self) -> &ListenerAdmin {
        &self.admin
    }

    /// Whether this instance currently leads listener `id`.
    ///
    /// # Errors
    /// [`ListenerError::UnknownListener`].
    pub fn is_leading(&self, id: &str) -> Result<bool, ListenerError> {
        Ok(self.listener(id)?.local().leading)
    }

    /// The status of listener `id`: checkpoint, head, lag, state, leader,
    /// failures and parked count; this instance's live view when it leads.
    ///
    /// # Errors
    /// [`ListenerError::UnknownListener`], database and store failures.
    pub async fn status(&self, id: &str) -> Result<ListenerStatus, ListenerError> {
        let listener = self.listener(id)?;
        let head = self.runner.store.head().await?;
        let mut status = self.admin.status_with_head(id, head).await?;
        let local = listener.local().clone();
        if local.leading {
            status.state = local.state;
            status.attempts = local.attempts;
            status.failing_position = local.failing_position;
            status.last_error = local.last_error.or(status.last_error);
            status.last_error_at = local.last_error_at.or(status.last_error_at);
        } else if status.leader.is_none() && local.state == dcb_core::ListenerState::Standby {
            status.state = local.state;
        }
        status.mode = Some(listener.mode());
        status.leading_here = local.leading;
        status.handled_here = listener.handled.load(Ordering::Relaxed);
        Ok(status)
    }

    /// The status of every listener of this runner, by id.
    ///
    /// # Errors
    /// Database and store failures.
    pub async fn statuses(&self) -> Result<Vec<ListenerStatus>, ListenerError> {
        let mut all = Vec::with_capacity(self.listeners.len());
        for id in self.listener_ids() {
            all.push(self.status(&id).await?);
        }
        Ok(all)
    }

    /// The events listener `id` parked and nobody resolved yet, oldest
    /// first.
    ///
    /// # Errors
    /// [`ListenerError::UnknownListener`] and database failures.
    pub async fn parked(&self, id: &str) -> Result<Vec<ParkedEvent>, ListenerError> {
        self.listener(id)?;
        self.admin.parked(id).await
    }

    async fn current_position(&self, listener: &ListenerShared) -> Result<u64, ListenerError> {
        if listener.local().leading {
            return Ok(*listener.checkpoint.borrow());
        }
        let position: Option<i64> = sqlx::query_scalar(&self.runner.sql.position)
            .bind(listener.id())
            .fetch_optional(&self.runner.pool)
            .await?;
        Ok(position.map_or(0, |p| from_db_or_zero(p).0))
    }

    /// How far the standbys this runner's listeners read from are behind
    /// the primary (empty when they read the primary): the bound on how
    /// stale what they handle can be. See [`StandbyReader::lag`](crate::StandbyReader::lag).
    pub async fn standby_lag(&self) -> Vec<crate::StandbyLag> {
        match &self.runner.standby {
            Some(reader) => reader.lag().await,
            None => Vec::new(),
        }
    }

    /// Waits until listener `id` has handled (or parked) every event up to
    /// `position`, whichever instance leads it. Listeners reading a standby
    /// get there once the standby has replayed `position`.
    ///
    /// # Errors
    /// [`ListenerError::UnknownListener`] and database failures.
    pub async fn wait_until(&self, id: &str, position: Position) -> Result<(), ListenerError> {
        let listener = self.listener(id)?;
        let mut checkpoint = listener.checkpoint.subscribe();
        loop {
            checkpoint.borrow_and_update();
            if self.current_position(listener).await? >= position.0 {
                return Ok(());
            }
            tokio::select! {
                _ = checkpoint.changed() => {}
                _ = tokio::time::sleep(self.runner.config.poll_interval) => {}
            }
        }
    }

    /// [`RunnerHandle::wait_until`], giving up after `timeout`.
    ///
    /// # Errors
    /// [`ListenerError::Timeout`] with the position reached, and the errors
    /// of [`RunnerHandle::wait_until`].
    pub async fn wait_until_timeout(
        &self,
        id: &str,
        position: Position,
        timeout: Duration,
    ) -> Result<(), ListenerError> {
        match tokio::time::timeout(timeout, self.wait_until(id, position)).await {
            Ok(result) => result,
            Err(_) => {
                let reached = self.current_position(self.listener(id)?).await?;
                Err(ListenerError::Timeout {
                    listener: id.to_owned(),
                    target: position,
                    reached: (reached > 0).then_some(Position(reached)),
                })
            }
        }
    }

    /// Waits until listener `id` has caught up with the head of the log as it
    /// is now; returns that head.
    ///
    /// # Errors
    /// See [`RunnerHandle::wait_until`].
    pub async fn catch_up(&self, id: &str) -> Result<Option<Position>, ListenerError> {
        let head = self.runner.store.head().await?;
        if let Some(head) = head {
            self.wait_until(id, head).await?;
        }
        Ok(head)
    }

    /// Rewinds listener `id` to the start of the log and returns once done:
    /// the listener's leader (this instance or another) runs, in one
    /// transaction, the listener's own
    /// [`reset`](dcb_core::TransactionalListener::reset) (transactional
    /// listeners), sets the checkpoint to the beginning, clears its failures
    /// and forgets its parked events; then it replays the log. Through the
    /// database: [`ListenerAdmin::request_reset`].
    ///
    /// # Errors
    /// [`ListenerError::Reset`] when the listener's reset fails (nothing is
    /// reset), database failures.
    pub async fn reset(&self, id: &str) -> Result<(), ListenerError> {
        self.listener(id)?;
        let request = self.admin.request_reset(id).await?;
        self.wake_if_here(id);
        match self.admin.wait_for(request, REQUEST_WAIT).await {
            Ok(_) => Ok(()),
            Err(ListenerError::RequestFailed { error, .. }) => Err(ListenerError::Reset {
                listener: id.to_owned(),
                source: error.into(),
            }),
            Err(other) => Err(other),
        }
    }

    /// Resets listener `id` (see [`RunnerHandle::reset`]) and waits until it
    /// has replayed the log up to the head as it was when the reset was
    /// carried out, reporting progress (read from the database) to
    /// `progress` and through `tracing` about once a second, and at the end.
    ///
    /// # Errors
    /// See [`RunnerHandle::reset`].
    pub async fn rebuild<F>(
        &self,
        id: &str,
        mut progress: F,
    ) -> Result<RebuildProgress, ListenerError>
    where
        F: FnMut(&RebuildProgress) + Send,
    {
        let listener = self.listener(id)?;
        let request = self.admin.request_rebuild(id).await?;
        self.wake_if_here(id);
        let mut checkpoint = listener.checkpoint.subscribe();
        let mut last_report: Option<Instant> = None;
        let mut pause = Duration::from_millis(10);
        loop {
            checkpoint.borrow_and_update();
            let report = match self.admin.rebuild_progress(request).await {
                Ok(report) => report,
                Err(ListenerError::RequestFailed { error, .. }) => {
                    return Err(ListenerError::Reset {
                        listener: id.to_owned(),
                        source: error.into(),
                    });
                }
                Err(other) => return Err(other),
            };
            let started = report.done || report.elapsed > Duration::ZERO;
            if started
                && (report.done
                    || last_report.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)))
            {
                last_report = Some(Instant::now());
                tracing::info!(
                    listener = id,
                    position = report.position.0,
                    target = report.target.0,
                    events_done = report.events_done,
                    events_per_sec = report.events_per_sec,
                    done = report.done,
                    "rebuild progress"
                );
                progress(&report);
                if report.done {
                    return Ok(report);
                }
            }
            tokio::select! {
                _ = checkpoint.changed() => {}
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// A request for a listener of this runner was just recorded: its task
    /// here (leading or not) looks at once instead of at its next poll.
    fn wake_if_here(&self, id: &str) {
        if let Some(listener) = self.listeners.get(id) {
            listener.requests.store(true, Ordering::SeqCst);
            listener.poke.notify_one();
        }
    }

    /// Stops gracefully: no new batches are fetched; each leader finishes and
    /// commits the batch in hand, then gives its lease up so another instance
    /// takes over at once. Returns when every task has stopped.
    pub async fn shutdown(self) {
        self.runner.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        tracing::info!(instance = %self.runner.config.instance_id, "listener runner stopped");
    }
}
