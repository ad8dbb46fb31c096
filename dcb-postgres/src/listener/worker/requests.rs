//! Operators' requests, carried out by the listener's leader: reset and
//! rebuild (the listener's own reset, the checkpoint and its failures in
//! one transaction), retry of one parked event (the handler runs again) and
//! skip (a parked event resolved, or the event the listener is stuck on
//! parked as skipped). Each request's outcome is written back to it.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::Instant;

use dcb_core::{ListenerState, Position, ReadOptions, SequencedEvent};
use futures::FutureExt;

use super::failing::{ParkOutcome, ToPark};
use super::{LeadEnd, Leader, Rebuild};
use crate::listener::failure;
use crate::listener::handler::Handler;
use crate::listener::status::{RequestId, RequestKind, RequestState};
use crate::position::to_db;
use crate::text::storable;

/// What serving a request came to.
enum Served {
    /// Carried out; record it done.
    Done,
    /// Carried out and recorded in its own transaction.
    Recorded,
    /// Refused or failed, with the reason: record it failed.
    Refused(String),
    /// The lease is gone: leave the request to the next leader.
    Lost,
}

impl Leader<'_> {
    /// Whether to look for requests now: a NOTIFY (or a reconnect, or the
    /// idle path) said some may wait, or a poll interval passed.
    pub(super) fn requests_due(&self) -> bool {
        self.listener.requests.load(Ordering::SeqCst)
            || self
                .requests_checked
                .is_none_or(|at| at.elapsed() >= self.runner.config.poll_interval)
    }

    /// Carries out the listener's pending requests, oldest first. `Some`
    /// when leadership ended.
    pub(super) async fn serve_requests(&mut self) -> Option<LeadEnd> {
        self.listener.requests.store(false, Ordering::SeqCst);
        self.requests_checked = Some(Instant::now());
        let pending: Vec<(i64, String, Option<i64>)> =
            match sqlx::query_as(&self.runner.sql.pending)
                .bind(self.listener.id())
                .fetch_all(&self.runner.pool)
                .await
            {
                Ok(pending) => pending,
                Err(error) => {
                    tracing::warn!(%error, "could not look for operators' requests");
                    return None;
                }
            };
        for (request, kind, position) in pending {
            let position = position.and_then(crate::position::from_db);
            let served = match RequestKind::from_name(&kind) {
                Some(RequestKind::Reset) => self.reset(request, false).await,
                Some(RequestKind::Rebuild) => self.reset(request, true).await,
                Some(RequestKind::Retry) => self.retry(request, position).await,
                Some(RequestKind::Skip) => self.skip(position).await,
                None => Ok(Served::Refused(format!("unknown request kind {kind:?}"))),
            };
            let (state, error) = match served {
                Ok(Served::Recorded) => continue,
                Ok(Served::Lost) => return Some(LeadEnd::Lost),
                Ok(Served::Done) => (RequestState::Done, None),
                Ok(Served::Refused(reason)) => (RequestState::Failed, Some(reason)),
                Err(error) => {
                    // Our own statements failed (an outage): try again at
                    // the next look.
                    tracing::warn!(%error, request, "carrying out a request failed; retrying");
                    return None;
                }
            };
            tracing::info!(
                request,
                kind,
                ?position,
                state = state.as_str(),
                ?error,
                "request served"
            );
            if let Err(error) = self.finish_request(request, state, error.as_deref()).await {
                tracing::warn!(%error, request, "could not record a request's outcome");
            }
        }
        None
    }

    async fn finish_request(
        &self,
        request: RequestId,
        state: RequestState,
        error: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&self.runner.sql.finish_request)
            .bind(request)
            .bind(state.as_str())
            .bind(&self.runner.config.instance_id)
            .bind(error.map(|e| storable(e).into_owned()))
            .execute(&self.runner.pool)
            .await?;
        Ok(())
    }

    /// Reset (and, for a rebuild, the replay's target): in one transaction
    /// fenced on the lease, the listener's own reset, the checkpoint back
    /// to the start in a new generation, its failures and parked events
    /// cleared, the request recorded.
    async fn reset(&mut self, request: RequestId, rebuild: bool) -> Result<Served, sqlx::Error> {
        let target = if rebuild {
            match self.runner.store.head().await {
                Ok(head) => head.map_or(0, |h| h.0),
                Err(error) => {
                    tracing::warn!(%error, "reading the head for a rebuild failed; retrying");
                    return Err(sqlx::Error::Protocol(format!(
                        "reading the head failed: {error}"
                    )));
                }
            }
        } else {
            0
        };
        let sql = &self.runner.sql;
        let mut tx = self.runner.pool.begin().await?;
        if self.fence(&mut tx).await?.is_none() {
            return Ok(Served::Lost);
        }
        if let Handler::Transactional(handler) = &self.listener.registered.handler {
            let result = AssertUnwindSafe(handler.reset(&mut tx))
                .catch_unwind()
                .await;
            if let Some(failure) = failure::of(result) {
                let _ = tx.rollback().await;
                return Ok(Served::Refused(format!(
                    "the listener's own reset failed (nothing was reset): {}",
                    failure.text
                )));
            }
        }
        sqlx::query(&sql.supersede)
            .bind(self.listener.id())
            .bind(format!("superseded by request {request}"))
            .execute(&mut *tx)
            .await?;
        let (generation, handled): (i64, i64) = sqlx::query_as(&sql.reset)
            .bind(self.listener.id())
            .bind(&self.runner.config.instance_id)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(&sql.reset_parked)
            .bind(self.listener.id())
            .execute(&mut *tx)
            .await?;
        let replaying = rebuild && target > 0;
        let state = if replaying {
            RequestState::Running
        } else {
            RequestState::Done
        };
        sqlx::query(&sql.start_request)
            .bind(request)
            .bind(state.as_str())
            .bind(&self.runner.config.instance_id)
            .bind(generation)
            .bind(to_db(Position(target)))
            .bind(handled)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.position = 0;
        self.generation = generation;
        self.failing = None;
        self.rebuilding = replaying.then_some(Rebuild { request, target });
        self.listener.checkpoint.send_replace(0);
        {
            let mut local = self.listener.local();
            local.clear_failure();
            local.last_error = None;
            local.last_error_at = None;
            local.state = ListenerState::Running;
        }
        tracing::info!(request, rebuild, target, generation, "listener reset");
        Ok(Served::Recorded)
    }

    /// The event of the listener's query at `position`, if there is one.
    async fn event_at(&self, position: Position) -> Result<Option<SequencedEvent>, String> {
        self.first_from(ReadOptions::forwards().from(position))
            .await
            .map(|event| event.filter(|e| e.position == position))
    }

    /// The first event of the listener's query that `options` reads.
    async fn first_from(&self, options: ReadOptions) -> Result<Option<SequencedEvent>, String> {
        let read = self
            .runner
            .source
            .read(&self.listener.registered.query, options.limit(1))
            .await
            .map_err(|e| e.to_string())?;
        let (_, events) = read.collect().await.map_err(|e| e.to_string())?;
        Ok(events.into_iter().next())
    }

    /// Runs the handler again on the parked event at `position`; for the
    /// event the listener is failing on, retries it now.
    async fn retry(
        &mut self,
        request: RequestId,
        position: Option<Position>,
    ) -> Result<Served, sqlx::Error> {
        let Some(position) = position else {
            return Ok(Served::Refused("a retry names the event's position".into()));
        };
        if let Some(failing) = &mut self.failing {
            if failing.position == position {
                failing.next_attempt = Instant::now();
                failing.parks = false;
                return Ok(Served::Done);
            }
        }
        let sql = &self.runner.sql;
        let parked = sqlx::query(&sql.parked_one)
            .bind(self.listener.id())
            .bind(to_db(position))
            .fetch_optional(&self.runner.pool)
            .await?;
        if parked.is_none() {
            return Ok(Served::Refused(format!(
                "no unresolved parked event at {position}"
            )));
        }
        let event = match self.event_at(position).await {
            Ok(Some(event)) => event,
            Ok(None) => {
                return Ok(Served::Refused(format!(
                    "the log holds no event of this listener's query at {position}"
                )));
            }
            Err(error) => return Err(sqlx::Error::Protocol(error)),
        };
        match &self.listener.registered.handler {
            Handler::Transactional(handler) => {
                let mut tx = self.runner.pool.begin().await?;
                if self.fence(&mut tx).await?.is_none() {
                    return Ok(Served::Lost);
                }
                let result = AssertUnwindSafe(handler.handle(&mut tx, &event))
                    .catch_unwind()
                    .await;
                if let Some(failure) = failure::of(result) {
                    let _ = tx.rollback().await;
                    self.failed_again(position, &failure.text).await?;
                    return Ok(Served::Refused(format!(
                        "the handler failed again: {}",
                        failure.text
                    )));
                }
                self.resolve(&mut *tx, position, "retried").await?;
                sqlx::query(&sql.finish_request)
                    .bind(request)
                    .bind(RequestState::Done.as_str())
                    .bind(&self.runner.config.instance_id)
                    .bind(None::<String>)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                self.listener.handled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(request, position = position.0, "parked event retried");
                Ok(Served::Recorded)
            }
            Handler::AtLeastOnce(handler) => {
                if !self.lease.is_valid() {
                    return Ok(Served::Lost);
                }
                let result = AssertUnwindSafe(handler.handle(&event))
                    .catch_unwind()
                    .await;
                if let Some(failure) = failure::of(result) {
                    self.failed_again(position, &failure.text).await?;
                    return Ok(Served::Refused(format!(
                        "the handler failed again: {}",
                        failure.text
                    )));
                }
                self.resolve(&self.runner.pool, position, "retried").await?;
                self.listener.handled.fetch_add(1, Ordering::Relaxed);
                Ok(Served::Done)
            }
        }
    }

    /// Gets past the event at `position` without handling it.
    async fn skip(&mut self, position: Option<Position>) -> Result<Served, sqlx::Error> {
        let Some(position) = position else {
            return Ok(Served::Refused("a skip names the event's position".into()));
        };
        if self.resolve(&self.runner.pool, position, "skipped").await? {
            tracing::info!(position = position.0, "parked event skipped");
            return Ok(Served::Done);
        }
        // Not parked: it may be the event the listener is stuck on, its
        // next one.
        let next = match self
            .first_from(ReadOptions::forwards().after(Position(self.position)))
            .await
        {
            Ok(next) => next,
            Err(error) => return Err(sqlx::Error::Protocol(error)),
        };
        let Some(next) = next.filter(|e| e.position == position) else {
            return Ok(Served::Refused(format!(
                "nothing to skip at {position}: no unresolved parked event there, and it is not \
                 the listener's next event (its checkpoint is {})",
                self.position
            )));
        };
        let (error, attempts) = match &self.failing {
            Some(f) if f.position == position => (f.failure.text.clone(), f.attempts),
            _ => ("skipped by an operator before it failed".to_owned(), 0),
        };
        let event_type = next.event_type().as_str().to_owned();
        let parked = self
            .park_and_advance(ToPark {
                position,
                event_type: &event_type,
                event_id: next.metadata().event_id,
                error: &error,
                attempts,
                resolution: Some("skipped"),
            })
            .await?;
        Ok(match parked {
            ParkOutcome::Parked => {
                tracing::warn!(position = position.0, "event skipped by an operator");
                Served::Done
            }
            ParkOutcome::Moved => Served::Refused(format!(
                "the checkpoint moved (a reset) while skipping {position}; ask again"
            )),
            ParkOutcome::Lost => Served::Lost,
        })
    }

    /// Marks the parked event at `position` resolved; whether there was one.
    async fn resolve<'e, E>(
        &self,
        executor: E,
        position: Position,
        resolution: &str,
    ) -> Result<bool, sqlx::Error>
    where
        E: sqlx::Executor<'e, Database = sqlx::Postgres>,
    {
        let done = sqlx::query(&self.runner.sql.resolve_parked)
            .bind(self.listener.id())
            .bind(to_db(position))
            .bind(resolution)
            .execute(executor)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// A retried parked event failed again: keep the new error.
    async fn failed_again(&self, position: Position, error: &str) -> Result<(), sqlx::Error> {
        sqlx::query(&self.runner.sql.parked_failed_again)
            .bind(self.listener.id())
            .bind(to_db(position))
            .bind(error)
            .execute(&self.runner.pool)
            .await?;
        Ok(())
    }

    /// At the start of a term: a rebuild an earlier leader began, in the
    /// checkpoint's current generation, is carried on.
    pub(super) async fn resume_rebuild(&mut self) {
        type Running = (RequestId, Option<i64>, Option<i64>);
        let running: Result<Option<Running>, sqlx::Error> =
            sqlx::query_as(&self.runner.sql.running_rebuild)
                .bind(self.listener.id())
                .fetch_optional(&self.runner.pool)
                .await;
        match running {
            Ok(Some((request, target, generation))) if generation == Some(self.generation) => {
                let target = target.map_or(0, |t| u64::try_from(t).unwrap_or(0));
                self.rebuilding = Some(Rebuild { request, target });
                self.check_rebuild().await;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not look for a running rebuild"),
        }
    }

    /// Records the rebuild done once the checkpoint reached its target (the
    /// statement checks it again, in the rebuild's generation).
    pub(super) async fn check_rebuild(&mut self) {
        let Some(rebuild) = &self.rebuilding else {
            return;
        };
        if self.position < rebuild.target {
            return;
        }
        let request = rebuild.request;
        let done = sqlx::query(&self.runner.sql.finish_rebuild)
            .bind(request)
            .bind(to_db(Position(self.position)))
            .execute(&self.runner.pool)
            .await;
        match done {
            Ok(done) => {
                if done.rows_affected() > 0 {
                    tracing::info!(request, position = self.position, "rebuild done");
                }
                self.rebuilding = None;
            }
            Err(error) => tracing::warn!(%error, request, "could not record the rebuild done"),
        }
    }
}
