//! The task that runs one listener: take the lease, then read, handle and
//! checkpoint batches until shutdown or until the lease is lost.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dcb_core::{BoxError, Position, ReadOptions, SequencedEvent};
use futures::FutureExt;
use sqlx::postgres::PgListener;
use tracing::Instrument;

use super::handler::Handler;
use super::{ListenerShared, ListenerState, RunnerShared};
use crate::position::to_db;

/// Why a leader stopped leading.
enum LeadEnd {
    Shutdown,
    Lost,
}

/// The lease as this instance knows it.
struct Lease {
    /// Conservative local expiry: the renewal was sent before the server
    /// stamped it, minus a margin for clock drift.
    valid_until: Mutex<Instant>,
    lost: AtomicBool,
}

impl Lease {
    fn new(valid_until: Instant) -> Self {
        Lease {
            valid_until: Mutex::new(valid_until),
            lost: AtomicBool::new(false),
        }
    }

    fn extend(&self, valid_until: Instant) {
        let mut current = self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        if valid_until > *current {
            *current = valid_until;
        }
    }

    fn is_valid(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
            && Instant::now() < *self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An event the handler keeps failing on.
struct Failing {
    position: Position,
    attempts: u32,
    next_attempt: Instant,
    error: String,
    event_type: String,
    event_id: uuid::Uuid,
}

/// What one batch came to.
enum BatchOutcome {
    /// Committed up to the target.
    Committed,
    /// The lease is gone.
    Lost,
    /// The checkpoint is not where we thought (a reset): here it is.
    Moved(u64),
    /// The handler failed on `events[index]`; the checkpoint is now `at`.
    Failed {
        index: usize,
        error: String,
        at: u64,
    },
}

fn lease_ms(runner: &RunnerShared) -> i64 {
    i64::try_from(runner.config.lease_ttl.as_millis()).unwrap_or(i64::MAX)
}

fn local_expiry(runner: &RunnerShared, sent: Instant) -> Instant {
    let ttl = runner.config.lease_ttl;
    sent + ttl - ttl / 10
}

fn set_state(listener: &ListenerShared, state: ListenerState) {
    listener.local().state = state;
}

/// Sleeps for `duration`, or less when shutdown starts.
async fn pause(runner: &RunnerShared, listener: &ListenerShared, duration: Duration) {
    let mut shutdown = runner.shutdown.subscribe();
    if *shutdown.borrow_and_update() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = shutdown.changed() => {}
        _ = listener.poke.notified() => {}
    }
}

/// Runs one listener until shutdown.
pub(crate) async fn run(runner: Arc<RunnerShared>, listener: Arc<ListenerShared>) {
    let span = tracing::info_span!(
        "dcb.listener",
        listener = listener.id(),
        instance = %runner.config.instance_id
    );
    run_inner(runner, listener).instrument(span).await;
}

async fn run_inner(runner: Arc<RunnerShared>, listener: Arc<ListenerShared>) {
    let retry_acquire = (runner.config.lease_ttl / 3).min(runner.config.poll_interval);
    loop {
        if *runner.shutdown.borrow() {
            break;
        }
        let sent = Instant::now();
        let acquired: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(&runner.sql.acquire)
            .bind(listener.id())
            .bind(&runner.config.instance_id)
            .bind(lease_ms(&runner))
            .fetch_optional(&runner.pool)
            .await;
        match acquired {
            Ok(Some(position)) => {
                let position = u64::try_from(position).unwrap_or(0);
                tracing::info!(position, "leading listener");
                {
                    let mut local = listener.local();
                    local.leading = true;
                    local.state = ListenerState::Running;
                }
                listener.checkpoint.send_replace(position);
                let lease = Arc::new(Lease::new(local_expiry(&runner, sent)));
                let heartbeat =
                    tokio::spawn(heartbeat(runner.clone(), listener.clone(), lease.clone()));
                let end = Leader {
                    runner: &runner,
                    listener: &listener,
                    lease: &lease,
                    position,
                    failing: None,
                }
                .run()
                .await;
                heartbeat.abort();
                listener.local().leading = false;
                match end {
                    LeadEnd::Shutdown => {
                        let released = sqlx::query(&runner.sql.release)
                            .bind(listener.id())
                            .bind(&runner.config.instance_id)
                            .execute(&runner.pool)
                            .await;
                        if let Err(error) = released {
                            tracing::warn!(%error, "could not release the lease; it expires on its own");
                        }
                        break;
                    }
                    LeadEnd::Lost => {
                        tracing::warn!("lost the lease; standing by");
                        set_state(&listener, ListenerState::Standby);
                        continue;
                    }
                }
            }
            Ok(None) => set_state(&listener, ListenerState::Standby),
            Err(error) => {
                tracing::warn!(%error, "could not try to take the lease");
                set_state(&listener, ListenerState::Standby);
            }
        }
        pause(&runner, &listener, retry_acquire).await;
    }
    {
        let mut local = listener.local();
        local.leading = false;
        local.state = ListenerState::Stopped;
    }
    tracing::info!("listener stopped");
}

/// Renews the lease every third of its time to live until aborted or lost.
async fn heartbeat(runner: Arc<RunnerShared>, listener: Arc<ListenerShared>, lease: Arc<Lease>) {
    let every = runner.config.lease_ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        let sent = Instant::now();
        let renewed: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(&runner.sql.renew)
            .bind(listener.id())
            .bind(&runner.config.instance_id)
            .bind(lease_ms(&runner))
            .fetch_optional(&runner.pool)
            .await;
        match renewed {
            Ok(Some(_)) => lease.extend(local_expiry(&runner, sent)),
            Ok(None) => {
                lease.lost.store(true, Ordering::SeqCst);
                listener.poke.notify_one();
                return;
            }
            Err(error) => tracing::warn!(%error, "could not renew the lease"),
        }
    }
}

/// One term of leadership.
struct Leader<'a> {
    runner: &'a Arc<RunnerShared>,
    listener: &'a Arc<ListenerShared>,
    lease: &'a Lease,
    /// The checkpoint (0: nothing handled yet).
    position: u64,
    failing: Option<Failing>,
}

impl Leader<'_> {
    fn batch_size(&self) -> usize {
        self.listener
            .options
            .batch_size
            .unwrap_or(self.runner.config.batch_size)
            .max(1)
    }

    fn lease_usable(&self) -> bool {
        match self.listener.registered.handler {
            // The database fences every transactional batch by itself; the
            // local view only matters once the heartbeat saw the lease go.
            Handler::Transactional(_) => !self.lease.lost.load(Ordering::SeqCst),
            // An at-least-once handler acts outside the database, so it stops
            // as soon as the lease might have run out.
            Handler::AtLeastOnce(_) => self.lease.is_valid(),
        }
    }

    fn advanced(&mut self, to: u64, handled: usize, caught_up: bool) {
        self.position = to;
        if self.failing.as_ref().is_some_and(|f| f.position.0 <= to) {
            self.failing = None;
        }
        self.listener
            .handled
            .fetch_add(handled as u64, Ordering::Relaxed);
        self.listener.checkpoint.send_replace(to);
        let mut local = self.listener.local();
        local.state = if caught_up {
            ListenerState::Idle
        } else {
            ListenerState::Running
        };
        if self.failing.is_none() {
            local.attempts = 0;
            local.failing_position = None;
        }
    }

    async fn run(mut self) -> LeadEnd {
        let mut shutdown = self.runner.shutdown.subscribe();
        let mut wake = self.runner.wake.subscribe();
        loop {
            if *shutdown.borrow_and_update() {
                return LeadEnd::Shutdown;
            }
            if !self.lease_usable() {
                return LeadEnd::Lost;
            }
            wake.borrow_and_update();
            let limit = self.batch_size();
            let read = self
                .runner
                .store
                .read(
                    &self.listener.registered.query,
                    ReadOptions::forwards()
                        .after(Position(self.position))
                        .limit(limit),
                )
                .await;
            let (head, mut events) = match read {
                Ok(result) => match result.collect().await {
                    Ok(read) => read,
                    Err(error) => {
                        tracing::warn!(%error, "reading events failed; retrying");
                        pause(self.runner, self.listener, self.runner.config.poll_interval).await;
                        continue;
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "reading events failed; retrying");
                    pause(self.runner, self.listener, self.runner.config.poll_interval).await;
                    continue;
                }
            };
            let full = events.len() >= limit;
            let mut target = if full {
                events.last().map_or(self.position, |e| e.position.0)
            } else {
                head.map_or(0, |h| h.0)
                    .max(events.last().map_or(0, |e| e.position.0))
                    .max(self.position)
            };
            if self
                .failing
                .as_ref()
                .is_some_and(|f| f.position.0 <= self.position)
            {
                self.failing = None;
            }
            if let Some(failing) = &self.failing {
                let first = events.first().map(|e| e.position);
                if first == Some(failing.position) {
                    events.truncate(1);
                    target = failing.position.0;
                    if let Some(park_after) = self.listener.options.park_after {
                        if failing.attempts >= park_after {
                            match self.park().await {
                                Ok(end) => {
                                    if let Some(end) = end {
                                        return end;
                                    }
                                }
                                Err(error) => {
                                    tracing::warn!(%error, "parking failed; retrying");
                                    pause(
                                        self.runner,
                                        self.listener,
                                        self.runner.config.poll_interval,
                                    )
                                    .await;
                                }
                            }
                            continue;
                        }
                    }
                    let now = Instant::now();
                    if failing.next_attempt > now {
                        let wait = failing.next_attempt - now;
                        pause(self.runner, self.listener, wait).await;
                        continue;
                    }
                } else {
                    // Handle what precedes the failing event first.
                    events.retain(|e| e.position < failing.position);
                    target = target.min(failing.position.0 - 1);
                }
            }
            if events.is_empty() && target <= self.position {
                if self.failing.is_none() {
                    set_state(self.listener, ListenerState::Idle);
                }
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = shutdown.changed() => {}
                    _ = self.listener.poke.notified() => {}
                    _ = tokio::time::sleep(self.runner.config.poll_interval) => {}
                }
                // A reset (here or on another instance) moves the checkpoint
                // without a batch noticing: look at it before reading on.
                match self.stored_position().await {
                    Ok(Some(position)) if position != self.position => {
                        tracing::info!(position, "checkpoint moved (reset); continuing from there");
                        self.position = position;
                        self.failing = None;
                        self.listener.checkpoint.send_replace(position);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return LeadEnd::Lost,
                    Err(error) => tracing::warn!(%error, "could not read the checkpoint"),
                }
                continue;
            }
            let caught_up = !full;
            let span = tracing::info_span!(
                "dcb.listener.batch",
                after = self.position,
                events = events.len(),
                target
            );
            let outcome = match &self.listener.registered.handler {
                Handler::Transactional(_) => {
                    self.transactional_batch(&events, target, caught_up)
                        .instrument(span)
                        .await
                }
                Handler::AtLeastOnce(_) => {
                    self.at_least_once_batch(&events, target, caught_up)
                        .instrument(span)
                        .await
                }
            };
            match outcome {
                Ok(BatchOutcome::Committed) => self.advanced(target, events.len(), caught_up),
                Ok(BatchOutcome::Lost) => return LeadEnd::Lost,
                Ok(BatchOutcome::Moved(position)) => {
                    tracing::info!(position, "checkpoint moved (reset); continuing from there");
                    self.position = position;
                    self.failing = None;
                    self.listener.checkpoint.send_replace(position);
                }
                Ok(BatchOutcome::Failed { index, error, at }) => {
                    if at > self.position {
                        self.advanced(at, index, false);
                    }
                    self.failed(&events[index], error).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "batch failed on the database; retrying");
                    pause(self.runner, self.listener, self.runner.config.poll_interval).await;
                }
            }
        }
    }

    /// The stored checkpoint if our lease is live.
    async fn stored_position(&self) -> Result<Option<u64>, sqlx::Error> {
        let position: Option<i64> = sqlx::query_scalar(&self.runner.sql.fence_read)
            .bind(self.listener.id())
            .bind(&self.runner.config.instance_id)
            .fetch_optional(&self.runner.pool)
            .await?;
        Ok(position.map(|p| u64::try_from(p).unwrap_or(0)))
    }

    /// Records a failed attempt on `event` and schedules the next one.
    async fn failed(&mut self, event: &SequencedEvent, error: String) {
        let attempts = match &self.failing {
            Some(f) if f.position == event.position => f.attempts + 1,
            _ => 1,
        };
        let park_after = self.listener.options.park_after;
        let parks_now = park_after.is_some_and(|p| attempts >= p);
        let delay = if parks_now {
            Duration::ZERO
        } else {
            self.runner.config.backoff.delay(attempts)
        };
        let state = if park_after.is_some() {
            ListenerState::Retrying
        } else {
            ListenerState::Blocked
        };
        tracing::warn!(
            position = event.position.0,
            event_type = %event.event_type(),
            attempts,
            retry_in_ms = delay.as_millis() as u64,
            error = %error,
            "listener handler failed"
        );
        {
            let mut local = self.listener.local();
            local.state = state;
            local.attempts = attempts;
            local.failing_position = Some(event.position);
            local.last_error = Some(error.clone());
            local.last_error_at = Some(chrono::Utc::now());
        }
        let recorded = sqlx::query(&self.runner.sql.record_failure)
            .bind(self.listener.id())
            .bind(&self.runner.config.instance_id)
            .bind(state.as_str())
            .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
            .bind(to_db(event.position))
            .bind(&error)
            .execute(&self.runner.pool)
            .await;
        if let Err(db_error) = recorded {
            tracing::warn!(error = %db_error, "could not record the failure");
        }
        self.failing = Some(Failing {
            position: event.position,
            attempts,
            next_attempt: Instant::now() + delay,
            error,
            event_type: event.event_type().as_str().to_owned(),
            event_id: event.metadata().event_id,
        });
    }

    /// Parks the failing event (it is the next one) and moves the checkpoint
    /// past it. `Some` when leadership ended.
    async fn park(&mut self) -> Result<Option<LeadEnd>, sqlx::Error> {
        let Some(failing) = self.failing.take() else {
            return Ok(None);
        };
        let sql = &self.runner.sql;
        let mut tx = self.runner.pool.begin().await?;
        let fenced: Option<(i64, String)> = sqlx::query_as(&sql.fence_lock)
            .bind(self.listener.id())
            .bind(&self.runner.config.instance_id)
            .bind(idle_timeout_ms(self.runner))
            .fetch_optional(&mut *tx)
            .await?;
        let Some((position, _)) = fenced else {
            return Ok(Some(LeadEnd::Lost));
        };
        let position = u64::try_from(position).unwrap_or(0);
        if position != self.position {
            self.position = position;
            self.listener.checkpoint.send_replace(position);
            return Ok(None);
        }
        sqlx::query(&sql.park)
            .bind(self.listener.id())
            .bind(to_db(failing.position))
            .bind(&failing.event_type)
            .bind(failing.event_id)
            .bind(&failing.error)
            .bind(i32::try_from(failing.attempts).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&sql.advance_locked)
            .bind(self.listener.id())
            .bind(&self.runner.config.instance_id)
            .bind(lease_ms(self.runner))
            .bind(to_db(failing.position))
            .bind(ListenerState::Running.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::error!(
            position = failing.position.0,
            event_type = %failing.event_type,
            attempts = failing.attempts,
            error = %failing.error,
            "parked event after repeated failures"
        );
        self.advanced(failing.position.0, 0, false);
        Ok(None)
    }

    async fn transactional_batch(
        &self,
        events: &[SequencedEvent],
        target: u64,
        caught_up: bool,
    ) -> Result<BatchOutcome, sqlx::Error> {
        let Handler::Transactional(handler) = &self.listener.registered.handler else {
            unreachable!("transactional batch for an at-least-once listener");
        };
        let sql = &self.runner.sql;
        let mut tx = self.runner.pool.begin().await?;
        let fenced: Option<(i64, String)> = sqlx::query_as(&sql.fence_lock)
            .bind(self.listener.id())
            .bind(&self.runner.config.instance_id)
            .bind(idle_timeout_ms(self.runner))
            .fetch_optional(&mut *tx)
            .await?;
        let Some((position, _)) = fenced else {
            return Ok(BatchOutcome::Lost);
        };
        let position = u64::try_from(position).unwrap_or(0);
        if position != self.position {
            return Ok(BatchOutcome::Moved(position));
        }
        for (index, event) in events.iter().enumerate() {
            let result = AssertUnwindSafe(handler.handle(&mut tx, event))
                .catch_unwind()
                .await;
            if let Some(error) = failure(result) {
                let _ = tx.rollback().await;
                return Ok(BatchOutcome::Failed {
                    index,
                    error,
                    at: self.position,
                });
            }
        }
        sqlx::query(&sql.advance_locked)
            .bind(self.listener.id())
            .bind(&self.runner.config.instance_id)
            .bind(lease_ms(self.runner))
            .bind(i64::try_from(target).unwrap_or(i64::MAX))
            .bind(state_name(caught_up))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(BatchOutcome::Committed)
    }

    async fn at_least_once_batch(
        &self,
        events: &[SequencedEvent],
        target: u64,
        caught_up: bool,
    ) -> Result<BatchOutcome, sqlx::Error> {
        let Handler::AtLeastOnce(handler) = &self.listener.registered.handler else {
            unreachable!("at-least-once batch for a transactional listener");
        };
        let Some(position) = self.stored_position().await? else {
            return Ok(BatchOutcome::Lost);
        };
        if position != self.position {
            return Ok(BatchOutcome::Moved(position));
        }
        for (index, event) in events.iter().enumerate() {
            if !self.lease.is_valid() {
                // Keep what was handled (if the lease still allows it), then
                // stand down: the next leader starts after the checkpoint.
                if index > 0 {
                    self.advance_fenced(event.position.0 - 1, false).await?;
                }
                return Ok(BatchOutcome::Lost);
            }
            let result = AssertUnwindSafe(handler.handle(event)).catch_unwind().await;
            if let Some(error) = failure(result) {
                let at = event.position.0 - 1;
                let at = if index > 0 && at > self.position {
                    match self.advance_fenced(at, false).await? {
                        Some(_) => at,
                        None => return Ok(BatchOutcome::Lost),
                    }
                } else {
                    self.position
                };
                return Ok(BatchOutcome::Failed { index, error, at });
            }
        }
        Ok(match self.advance_fenced(target, caught_up).await? {
            Some(_) => BatchOutcome::Committed,
            None => BatchOutcome::Lost,
        })
    }

    /// Moves the checkpoint to `to` if our lease is live and nobody moved it.
    async fn advance_fenced(&self, to: u64, caught_up: bool) -> Result<Option<i64>, sqlx::Error> {
        if to <= self.position {
            return Ok(Some(to_db(Position(self.position))));
        }
        sqlx::query_scalar(&self.runner.sql.advance_fenced)
            .bind(self.listener.id())
            .bind(&self.runner.config.instance_id)
            .bind(lease_ms(self.runner))
            .bind(i64::try_from(to).unwrap_or(i64::MAX))
            .bind(state_name(caught_up))
            .bind(i64::try_from(self.position).unwrap_or(i64::MAX))
            .fetch_optional(&self.runner.pool)
            .await
    }
}

fn state_name(caught_up: bool) -> &'static str {
    if caught_up {
        ListenerState::Idle.as_str()
    } else {
        ListenerState::Running.as_str()
    }
}

fn idle_timeout_ms(runner: &RunnerShared) -> String {
    runner
        .config
        .transaction_idle_timeout
        .as_millis()
        .to_string()
}

/// The error text of a failed or panicked handler call.
fn failure(result: Result<Result<(), BoxError>, Box<dyn std::any::Any + Send>>) -> Option<String> {
    match result {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error_chain(&*error)),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Some(format!("handler panicked: {message}"))
        }
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Listens on the store's channel and bumps the runner's wake counter on
/// every notification (and after reconnecting, since notifications may have
/// been missed). Polling covers the time it is down.
pub(crate) async fn notifier(runner: Arc<RunnerShared>) {
    let mut shutdown = runner.shutdown.subscribe();
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        let connected = async {
            let mut listener = PgListener::connect_with(&runner.pool).await?;
            listener.listen(&runner.channel).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, channel = %runner.channel, "LISTEN failed; polling meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(runner.config.poll_interval) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        };
        runner.wake.send_modify(|n| *n = n.wrapping_add(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => runner.wake.send_modify(|n| *n = n.wrapping_add(1)),
                    Ok(None) => {
                        tracing::debug!("LISTEN connection re-established");
                        runner.wake.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "LISTEN connection failed; reconnecting");
                        runner.wake.send_modify(|n| *n = n.wrapping_add(1));
                        break;
                    }
                },
            }
        }
    }
}
