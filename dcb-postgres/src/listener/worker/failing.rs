//! A failing event: each failed attempt is recorded (locally and on the
//! checkpoint row) and retried after the backoff, until the listener's
//! options park it, which records it with its error and moves the
//! checkpoint past it.

use std::time::{Duration, Instant};

use dcb_core::{ListenerState, Position, SequencedEvent};

use super::lease::lease_ms;
use super::{LeadEnd, Leader};
use crate::listener::failure::Failure;
use crate::position::to_db;

/// An event the handler keeps failing on.
pub(super) struct Failing {
    pub(super) position: Position,
    pub(super) attempts: u32,
    pub(super) next_attempt: Instant,
    pub(super) failure: Failure,
    /// Parked at the next turn (the options say so after this failure).
    pub(super) parks: bool,
    pub(super) event_type: String,
    pub(super) event_id: uuid::Uuid,
}

/// What parking came to.
pub(super) enum ParkOutcome {
    /// Parked; the checkpoint is past it.
    Parked,
    /// The checkpoint was not where this leader thought (a reset): nothing
    /// was parked.
    Moved,
    /// The lease is gone.
    Lost,
}

/// An event to park, and how it was resolved if it was.
pub(super) struct ToPark<'a> {
    pub(super) position: Position,
    pub(super) event_type: &'a str,
    pub(super) event_id: uuid::Uuid,
    pub(super) error: &'a str,
    pub(super) attempts: u32,
    /// `None`: parked, waiting for an operator; `Some("skipped")`: an
    /// operator skipped it.
    pub(super) resolution: Option<&'a str>,
}

impl Leader<'_> {
    /// Records a failed attempt on `event` and schedules the next one (or
    /// the parking).
    pub(super) async fn failed(&mut self, event: &SequencedEvent, failure: Failure) {
        let attempts = match &self.failing {
            Some(f) if f.position == event.position => f.attempts + 1,
            _ => 1,
        };
        let options = self.listener.options;
        let parks = options.parks(attempts, failure.permanent);
        let delay = if parks {
            Duration::ZERO
        } else {
            self.runner.config.backoff.delay(attempts)
        };
        let state = if options.ever_parks(failure.permanent) {
            ListenerState::Retrying
        } else {
            ListenerState::Blocked
        };
        tracing::warn!(
            position = event.position.0,
            event_type = %event.event_type(),
            attempts,
            permanent = failure.permanent,
            retry_in_ms = delay.as_millis() as u64,
            error = %failure.text,
            "listener handler failed"
        );
        if state == ListenerState::Blocked {
            tracing::error!(
                position = event.position.0,
                "listener blocked on this event until the handler succeeds or an operator skips it"
            );
        }
        {
            let mut local = self.listener.local();
            local.state = state;
            local.attempts = attempts;
            local.failing_position = Some(event.position);
            local.last_error = Some(failure.text.clone());
            local.last_error_at = Some(chrono::Utc::now());
        }
        let recorded = sqlx::query(&self.runner.sql.record_failure)
            .bind(self.listener.id())
            .bind(&self.runner.config.instance_id)
            .bind(state.as_str())
            .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
            .bind(to_db(event.position))
            .bind(&failure.text)
            .execute(&self.runner.pool)
            .await;
        if let Err(db_error) = recorded {
            tracing::warn!(error = %db_error, "could not record the failure");
        }
        self.failing = Some(Failing {
            position: event.position,
            attempts,
            next_attempt: Instant::now() + delay,
            failure,
            parks,
            event_type: event.event_type().as_str().to_owned(),
            event_id: event.metadata().event_id,
        });
    }

    /// Parks the failing event (it is the next one) and moves the checkpoint
    /// past it. `Some` when leadership ended.
    pub(super) async fn park(&mut self) -> Result<Option<LeadEnd>, sqlx::Error> {
        let Some(failing) = self.failing.take() else {
            return Ok(None);
        };
        let parked = self
            .park_and_advance(ToPark {
                position: failing.position,
                event_type: &failing.event_type,
                event_id: failing.event_id,
                error: &failing.failure.text,
                attempts: failing.attempts,
                resolution: None,
            })
            .await;
        match parked {
            Ok(ParkOutcome::Parked) => {
                tracing::error!(
                    position = failing.position.0,
                    event_type = %failing.event_type,
                    attempts = failing.attempts,
                    permanent = failing.failure.permanent,
                    error = %failing.failure.text,
                    "parked event after repeated failures"
                );
                Ok(None)
            }
            Ok(ParkOutcome::Moved) => Ok(None),
            Ok(ParkOutcome::Lost) => Ok(Some(LeadEnd::Lost)),
            Err(error) => {
                // Not parked: keep failing on it.
                self.failing = Some(failing);
                Err(error)
            }
        }
    }

    /// In one transaction fenced on the lease, records `event` as parked
    /// and moves the checkpoint to its position (it must be the next event
    /// of the listener).
    pub(super) async fn park_and_advance(
        &mut self,
        event: ToPark<'_>,
    ) -> Result<ParkOutcome, sqlx::Error> {
        let sql = &self.runner.sql;
        let mut tx = self.runner.pool.begin().await?;
        let Some((position, generation)) = self.fence(&mut tx).await? else {
            return Ok(ParkOutcome::Lost);
        };
        if position != self.position || generation != self.generation {
            self.moved(position, generation);
            return Ok(ParkOutcome::Moved);
        }
        sqlx::query(&sql.park)
            .bind(self.listener.id())
            .bind(to_db(event.position))
            .bind(event.event_type)
            .bind(event.event_id)
            .bind(event.error)
            .bind(i32::try_from(event.attempts).unwrap_or(i32::MAX))
            .bind(event.resolution)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&sql.advance_locked)
            .bind(self.listener.id())
            .bind(&self.runner.config.instance_id)
            .bind(lease_ms(self.runner))
            .bind(to_db(event.position))
            .bind(ListenerState::Running.as_str())
            .bind(0_i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.advanced(event.position.0, 0, false);
        self.check_rebuild().await;
        Ok(ParkOutcome::Parked)
    }
}
