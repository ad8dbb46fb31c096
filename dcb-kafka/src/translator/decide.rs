//! What one message comes to: a decision made (or found made before), a
//! dead record, or another attempt later.

use async_trait::async_trait;
use dcb_core::{DecisionError, DecisionMaker, MakeOptions, StoreError};
use dcb_postgres::PgEventStore;

use super::Translator;
use crate::message::{DeadKind, KafkaMessage};

/// What one attempt at a message came to.
pub(super) enum Outcome {
    /// The decision is durable (`replayed`: it had been made before).
    Decided { appended: usize, replayed: bool },
    /// No attempt can succeed: record the message as dead.
    Dead(DeadKind, String),
    /// The database or the store is away, or the decision lost a race:
    /// waiting helps, however long it takes; never a dead record.
    Wait(String),
    /// The database refused the decision's statements for a reason that may
    /// or may not pass (a deadlock, a timeout, or data it can never store):
    /// retried a bounded number of times, then recorded as dead.
    Retry(String),
}

/// A [`Translator`] with its decision type erased, so that one runner holds
/// translators of different decisions.
#[async_trait]
pub(super) trait DynTranslator: Send + Sync {
    fn topic(&self) -> &str;
    async fn handle(
        &self,
        maker: &DecisionMaker<PgEventStore>,
        message: &KafkaMessage<'_>,
    ) -> Outcome;
}

pub(super) struct Erased<T>(pub(super) T);

#[async_trait]
impl<T: Translator> DynTranslator for Erased<T> {
    fn topic(&self) -> &str {
        self.0.topic()
    }

    async fn handle(
        &self,
        maker: &DecisionMaker<PgEventStore>,
        message: &KafkaMessage<'_>,
    ) -> Outcome {
        let decision = match self.0.translate(message) {
            Ok(decision) => decision,
            Err(reason) => return Outcome::Dead(DeadKind::Undecodable, reason),
        };
        let options = MakeOptions::new().idempotency_key(self.0.idempotency_key(message));
        match maker.make_with(&decision, options).await {
            Ok(decided) => Outcome::Decided {
                appended: if decided.replayed {
                    0
                } else {
                    decided.events.len()
                },
                replayed: decided.replayed,
            },
            Err(error) => classify(error),
        }
    }
}

pub(super) fn classify<E: std::error::Error + 'static>(error: DecisionError<E>) -> Outcome {
    match error {
        DecisionError::Rejected(e) => Outcome::Dead(DeadKind::Rejected, e.to_string()),
        DecisionError::Conflict { .. } => Outcome::Wait(error.to_string()),
        DecisionError::Store(
            StoreError::ConditionFailed { .. }
            | StoreError::Unavailable { .. }
            | StoreError::ShutDown,
        ) => Outcome::Wait(error.to_string()),
        DecisionError::Store(StoreError::Backend { .. }) => Outcome::Retry(error.to_string()),
        other => Outcome::Dead(DeadKind::Failed, other.to_string()),
    }
}
