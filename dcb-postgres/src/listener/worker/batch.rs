//! One batch: transactional (the handler writes in the transaction that
//! advances the checkpoint, fenced on the lease row) or at-least-once (the
//! handler acts first, the checkpoint advances after, fenced on the lease
//! and the expected position).

use std::panic::AssertUnwindSafe;

use dcb_core::{ListenerState, Position, SequencedEvent};
use futures::FutureExt;
use tracing::Instrument;

use super::lease::lease_ms;
use super::Leader;
use crate::listener::failure::{self, Failure};
use crate::listener::handler::Handler;
use crate::listener::shared::RunnerShared;
use crate::position::to_db;

/// What one batch came to.
pub(super) enum BatchOutcome {
    /// Committed up to the target.
    Committed,
    /// The lease is gone.
    Lost,
    /// The checkpoint is not where we thought (a reset): here it is.
    Moved { position: u64, generation: i64 },
    /// The handler failed on `events[index]`; the checkpoint is now `at`.
    Failed {
        index: usize,
        failure: Failure,
        at: u64,
    },
}

pub(super) fn state_name(caught_up: bool) -> &'static str {
    if caught_up {
        ListenerState::Idle.as_str()
    } else {
        ListenerState::Running.as_str()
    }
}

pub(super) fn idle_timeout_ms(runner: &RunnerShared) -> String {
    runner
        .config
        .transaction_idle_timeout
        .as_millis()
        .to_string()
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Leader<'_> {
    /// The span of handling one event, a child of the trace the event was
    /// appended in (OpenTelemetry messaging conventions: a `process`
    /// operation of the `dcb` system on the store's log, named by its
    /// notification channel; the subscription is the listener).
    fn handle_span(&self, event: &SequencedEvent) -> tracing::Span {
        let id = self.listener.id();
        let span = tracing::info_span!(
            "dcb.listener.handle",
            "otel.name" = %format_args!("handle {id}"),
            "otel.kind" = "consumer",
            "messaging.system" = "dcb",
            "messaging.operation.type" = "process",
            "messaging.operation.name" = "handle",
            "messaging.destination.name" = %self.runner.channel,
            "messaging.destination.subscription.name" = id,
            "messaging.consumer.group.name" = id,
            "messaging.message.id" = %event.record.metadata.event_id,
            "dcb.event_type" = event.record.event_type.as_str(),
            "dcb.position" = event.position.0,
        );
        dcb_core::trace::continue_from(&span, event.record.metadata.trace.as_ref());
        span
    }

    /// Inside `tx`, locks the checkpoint row if our lease is live: its
    /// position and generation, `None` when the lease is gone.
    pub(super) async fn fence(
        &self,
        tx: &mut crate::listener::PgTransaction,
    ) -> Result<Option<(u64, i64)>, sqlx::Error> {
        let fenced: Option<(i64, i64, String)> = sqlx::query_as(&self.runner.sql.fence_lock)
            .bind(self.listener.id())
            .bind(&self.runner.config.instance_id)
            .bind(idle_timeout_ms(self.runner))
            .fetch_optional(&mut **tx)
            .await?;
        Ok(fenced
            .map(|(position, generation, _)| (u64::try_from(position).unwrap_or(0), generation)))
    }

    pub(super) async fn transactional_batch(
        &self,
        events: &[SequencedEvent],
        target: u64,
        caught_up: bool,
    ) -> Result<BatchOutcome, sqlx::Error> {
        let Handler::Transactional(handler) = &self.listener.registered.handler else {
            unreachable!("transactional batch for an at-least-once listener");
        };
        let mut tx = self.runner.pool.begin().await?;
        let Some((position, generation)) = self.fence(&mut tx).await? else {
            return Ok(BatchOutcome::Lost);
        };
        if position != self.position || generation != self.generation {
            return Ok(BatchOutcome::Moved {
                position,
                generation,
            });
        }
        for (index, event) in events.iter().enumerate() {
            let result = AssertUnwindSafe(handler.handle(&mut tx, event))
                .catch_unwind()
                .instrument(self.handle_span(event))
                .await;
            if let Some(failure) = failure::of(result) {
                let _ = tx.rollback().await;
                return Ok(BatchOutcome::Failed {
                    index,
                    failure,
                    at: self.position,
                });
            }
        }
        sqlx::query(&self.runner.sql.advance_locked)
            .bind(self.listener.id())
            .bind(&self.runner.config.instance_id)
            .bind(lease_ms(self.runner))
            .bind(i64::try_from(target).unwrap_or(i64::MAX))
            .bind(state_name(caught_up))
            .bind(count(events.len()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(BatchOutcome::Committed)
    }

    pub(super) async fn at_least_once_batch(
        &self,
        events: &[SequencedEvent],
        target: u64,
        caught_up: bool,
    ) -> Result<BatchOutcome, sqlx::Error> {
        let Handler::AtLeastOnce(handler) = &self.listener.registered.handler else {
            unreachable!("at-least-once batch for a transactional listener");
        };
        let Some((position, _)) = self.stored_position().await? else {
            return Ok(BatchOutcome::Lost);
        };
        if position != self.position {
            return Ok(BatchOutcome::Moved {
                position,
                generation: self.generation,
            });
        }
        for (index, event) in events.iter().enumerate() {
            if !self.lease.is_valid() {
                // Keep what was handled (if the lease still allows it), then
                // stand down: the next leader starts after the checkpoint.
                if index > 0 {
                    self.advance_fenced(event.position.0 - 1, index, false)
                        .await?;
                }
                return Ok(BatchOutcome::Lost);
            }
            let result = AssertUnwindSafe(handler.handle(event))
                .catch_unwind()
                .instrument(self.handle_span(event))
                .await;
            if let Some(failure) = failure::of(result) {
                let at = event.position.0 - 1;
                let at = if index > 0 && at > self.position {
                    match self.advance_fenced(at, index, false).await? {
                        Some(_) => at,
                        None => return Ok(BatchOutcome::Lost),
                    }
                } else {
                    self.position
                };
                return Ok(BatchOutcome::Failed { index, failure, at });
            }
        }
        Ok(
            match self.advance_fenced(target, events.len(), caught_up).await? {
                Some(_) => BatchOutcome::Committed,
                None => BatchOutcome::Lost,
            },
        )
    }

    /// Moves the checkpoint to `to` after `handled` events, if our lease is
    /// live and nobody moved it.
    pub(super) async fn advance_fenced(
        &self,
        to: u64,
        handled: usize,
        caught_up: bool,
    ) -> Result<Option<i64>, sqlx::Error> {
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
            .bind(count(handled))
            .fetch_optional(&self.runner.pool)
            .await
    }
}
