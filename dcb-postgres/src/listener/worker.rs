//! The task that runs one listener: take the lease ([`lease`]), then read,
//! handle and checkpoint batches ([`batch`]), retry or park failing events
//! ([`failing`]) and carry out operators' requests ([`requests`]) until
//! shutdown or until the lease is lost.

mod batch;
mod failing;
mod lease;
mod requests;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcb_core::{ListenerState, Position, ReadOptions, SequencedEvent};
use tracing::Instrument;

use super::handler::Handler;
use super::shared::{ListenerShared, RunnerShared};
use super::status::RequestId;
use batch::BatchOutcome;
use failing::Failing;
use lease::Lease;

/// Why a leader stopped leading.
enum LeadEnd {
    Shutdown,
    Lost,
}

/// A rebuild this leader carries out: done when the checkpoint reaches
/// `target`.
struct Rebuild {
    request: RequestId,
    target: u64,
}

fn set_state(listener: &ListenerShared, state: ListenerState) {
    listener.local().state = state;
}

/// Sleeps for `duration`, or less when shutdown starts or the task is
/// poked.
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
        match lease::acquire(&runner, &listener).await {
            Ok(Some((position, generation))) => {
                tracing::info!(position, generation, "leading listener");
                {
                    let mut local = listener.local();
                    local.leading = true;
                    local.state = ListenerState::Running;
                }
                listener.checkpoint.send_replace(position);
                let lease = Arc::new(Lease::new(lease::local_expiry(&runner, sent)));
                let heartbeat = tokio::spawn(lease::heartbeat(
                    runner.clone(),
                    listener.clone(),
                    lease.clone(),
                ));
                let end = Leader {
                    runner: &runner,
                    listener: &listener,
                    lease: &lease,
                    position,
                    generation,
                    failing: None,
                    rebuilding: None,
                    requests_checked: None,
                }
                .run()
                .await;
                heartbeat.abort();
                listener.local().leading = false;
                match end {
                    LeadEnd::Shutdown => {
                        lease::release(&runner, &listener).await;
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

/// One term of leadership.
struct Leader<'a> {
    runner: &'a Arc<RunnerShared>,
    listener: &'a Arc<ListenerShared>,
    lease: &'a Lease,
    /// The checkpoint (0: nothing handled yet).
    position: u64,
    /// How many resets the checkpoint has seen.
    generation: i64,
    failing: Option<Failing>,
    rebuilding: Option<Rebuild>,
    /// When operators' requests were last looked for.
    requests_checked: Option<Instant>,
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

    /// The checkpoint moved to `to` after `handled` events.
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
            local.clear_failure();
        }
    }

    /// Someone else moved the checkpoint (a reset by an instance of an
    /// earlier release): carry on from there.
    fn moved(&mut self, position: u64, generation: i64) {
        tracing::info!(position, "checkpoint moved (reset); continuing from there");
        self.position = position;
        self.generation = generation;
        self.failing = None;
        self.listener.checkpoint.send_replace(position);
    }

    async fn run(mut self) -> LeadEnd {
        let mut shutdown = self.runner.shutdown.subscribe();
        let mut wake = self.runner.wake.subscribe();
        self.resume_rebuild().await;
        loop {
            if *shutdown.borrow_and_update() {
                return LeadEnd::Shutdown;
            }
            if !self.lease_usable() {
                return LeadEnd::Lost;
            }
            if self.requests_due() {
                if let Some(end) = self.serve_requests().await {
                    return end;
                }
            }
            wake.borrow_and_update();
            let limit = self.batch_size();
            let (head, mut events) = match self.read(limit).await {
                Ok(read) => read,
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
                    if failing.parks {
                        match self.park().await {
                            Ok(Some(end)) => return end,
                            Ok(None) => {}
                            Err(error) => {
                                tracing::warn!(%error, "parking failed; retrying");
                                pause(self.runner, self.listener, self.runner.config.poll_interval)
                                    .await;
                            }
                        }
                        continue;
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
                // Look at the stored checkpoint (a reset by an earlier
                // release's instance moves it without a batch noticing) and
                // whether requests wait, before reading on.
                match self.stored_position().await {
                    Ok(Some((position, requests))) => {
                        if requests {
                            self.listener.requests.store(true, Ordering::SeqCst);
                        }
                        if position != self.position {
                            let generation = self.generation;
                            self.moved(position, generation);
                        }
                    }
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
                Ok(BatchOutcome::Committed) => {
                    self.advanced(target, events.len(), caught_up);
                    self.check_rebuild().await;
                }
                Ok(BatchOutcome::Lost) => return LeadEnd::Lost,
                Ok(BatchOutcome::Moved {
                    position,
                    generation,
                }) => self.moved(position, generation),
                Ok(BatchOutcome::Failed { index, failure, at }) => {
                    if at > self.position {
                        self.advanced(at, index, false);
                        self.check_rebuild().await;
                    }
                    self.failed(&events[index], failure).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "batch failed on the database; retrying");
                    pause(self.runner, self.listener, self.runner.config.poll_interval).await;
                }
            }
        }
    }

    /// Up to `limit` events of the listener's query after the checkpoint,
    /// and the head the read is complete up to.
    async fn read(
        &self,
        limit: usize,
    ) -> Result<(Option<Position>, Vec<SequencedEvent>), dcb_core::StoreError> {
        self.runner
            .source
            .read(
                &self.listener.registered.query,
                ReadOptions::forwards()
                    .after(Position(self.position))
                    .limit(limit),
            )
            .await?
            .collect()
            .await
    }

    /// The stored checkpoint if our lease is live, and whether operators'
    /// requests wait.
    async fn stored_position(&self) -> Result<Option<(u64, bool)>, sqlx::Error> {
        let row: Option<(i64, bool)> = sqlx::query_as(&self.runner.sql.fence_read)
            .bind(self.listener.id())
            .bind(&self.runner.config.instance_id)
            .fetch_optional(&self.runner.pool)
            .await?;
        Ok(row.map(|(p, requests)| (u64::try_from(p).unwrap_or(0), requests)))
    }
}
