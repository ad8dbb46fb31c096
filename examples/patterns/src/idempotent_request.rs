//! A retried request has one effect: the idempotency key.
//!
//! **Rule.** A client that timed out sends the same request again (with the
//! same request id); the payment it asks for is recorded once, and the retry
//! gets the original answer back.
//!
//! **Boundary.** The request's idempotency key: the decision maker tags the
//! events it appends with `$idempotency:<key>`, reads that tag with the
//! state and adds it to the append condition. [`RecordPayment`] is otherwise
//! stateless (`type StateQuery = ()`): recording a payment checks no rule.
//!
//! **Metadata.** The request id is also the correlation id of every event
//! the request causes (see [`request_options`]), so a trace of the request
//! finds them.
//!
//! **Why aggregates struggle.** The duplicate is a property of the request,
//! not of the account: an aggregate has to keep every processed request id
//! in its own state (growing forever, and contended by every request), or a
//! separate dedupe table is written in a second transaction, which a crash
//! between the two defeats.

use std::convert::Infallible;

use dcb_core::{Decision, Event, MakeOptions};
use uuid::Uuid;

/// Every event of the pattern.
#[derive(Event, Debug, Clone, PartialEq, Eq)]
pub enum PaymentEvent {
    /// Money was received on an account.
    PaymentRecorded {
        /// The account.
        #[id]
        account: String,
        /// How much.
        amount_cents: u64,
    },
}

/// Records a payment; `request_id` identifies the client's request across
/// its retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordPayment {
    /// The client's request id (the same on every retry).
    pub request_id: Uuid,
    /// The account.
    pub account: String,
    /// How much.
    pub amount_cents: u64,
}

impl Decision for RecordPayment {
    type Event = PaymentEvent;
    /// Stateless: nothing to read but the idempotency key.
    type StateQuery = ();
    type Error = Infallible;

    fn state_query(&self) {}

    /// Retries of one request share this key; the decision maker returns the
    /// first call's events to every retry instead of appending again.
    fn idempotency_key(&self) -> Option<String> {
        Some(format!("record-payment/{}", self.request_id))
    }

    fn process(&self, _: &()) -> Result<Vec<PaymentEvent>, Infallible> {
        Ok(vec![PaymentEvent::PaymentRecorded {
            account: self.account.clone(),
            amount_cents: self.amount_cents,
        }])
    }
}

/// The options a request is decided with: its id as the correlation id of
/// every event it causes, and the message that carried it as their cause.
pub fn request_options(request_id: Uuid, message_id: Uuid) -> MakeOptions {
    MakeOptions::new()
        .correlation_id(request_id)
        .causation_id(message_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcb_core::testing::{Scenario, TestHarness};

    const REQUEST: Uuid = Uuid::from_u128(1);

    fn pay(request: u128, amount_cents: u64) -> RecordPayment {
        RecordPayment {
            request_id: Uuid::from_u128(request),
            account: "acc-1".into(),
            amount_cents,
        }
    }

    fn recorded(amount_cents: u64) -> PaymentEvent {
        PaymentEvent::PaymentRecorded {
            account: "acc-1".into(),
            amount_cents,
        }
    }

    #[test]
    fn a_payment_is_recorded() {
        TestHarness::when(pay(1, 500)).then([recorded(500)]);
    }

    #[tokio::test]
    async fn a_retry_replays_the_first_answer_and_appends_nothing() {
        let scenario = Scenario::new()
            .when(pay(1, 500))
            .await
            .then([recorded(500)])
            .when(pay(1, 500))
            .await
            .then_replayed([recorded(500)])
            // Another request with the same content is another payment.
            .when(pay(2, 500))
            .await
            .then([recorded(500)]);
        assert_eq!(scenario.store().all_events().len(), 2);
    }

    #[tokio::test]
    async fn the_events_carry_the_request_as_correlation_and_the_message_as_cause() {
        let message = Uuid::from_u128(99);
        Scenario::new()
            .when_with(pay(1, 500), request_options(REQUEST, message))
            .await
            .then_assert(|result| {
                let decided = result.expect("recorded");
                let metadata = &decided.events[0].metadata;
                assert_eq!(metadata.correlation_id, Some(REQUEST));
                assert_eq!(metadata.causation_id, Some(message));
            });
    }
}
