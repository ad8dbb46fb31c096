//! Gapless invoice numbers, with a snapshot on a stream that only grows.
//!
//! **Rule.** Invoices are numbered 1, 2, 3, ... without a gap and without a
//! number used twice (tax law in many countries).
//!
//! **Boundary.** Every `InvoiceCreated` event, whatever its tags: the query
//! is type-only. A new number is the last one plus one, and a concurrent
//! creation makes the append condition fail, so the loser reads again and
//! takes the next number. Other invoice events (`InvoicePaid`) are outside
//! the boundary and never slow numbering down.
//!
//! **Snapshot.** The boundary grows with every invoice, so its state,
//! [`LastInvoiceNumber`], is a [`Snapshot`] read through [`Snapshotted`]:
//! with `DecisionMaker::with_snapshots`, a decision loads the saved state and
//! folds only the invoices created after it.
//!
//! **Why aggregates struggle.** The sequence spans all invoices. An
//! aggregate per invoice cannot see the others; a `NumberSequence`
//! aggregate works, but its number and the invoice it belongs to are written
//! in two transactions, and a crash between them leaves a gap. A database
//! sequence leaves gaps on every rollback.

use std::convert::Infallible;

use dcb_core::{Decision, Event, Snapshot, Snapshotted, StateMutate, StateQuery};
use serde::{Deserialize, Serialize};

/// Every event of the pattern.
#[derive(Event, Debug, Clone, PartialEq, Eq)]
#[stream(InvoiceNumbering, [InvoiceCreated])]
pub enum InvoiceEvent {
    /// An invoice was created under the next number.
    InvoiceCreated {
        /// Its number, tagged so one invoice can be read alone.
        #[id]
        number: u64,
        /// Who pays.
        customer: String,
        /// How much.
        amount_cents: u64,
    },
    /// An invoice was paid. Not part of the numbering boundary.
    InvoicePaid {
        /// The invoice.
        #[id]
        number: u64,
    },
}

/// The last number given: a state without ids, so its query is every
/// `InvoiceCreated` event.
#[derive(StateQuery, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[state_query(InvoiceNumbering)]
pub struct LastInvoiceNumber {
    last: u64,
}

impl LastInvoiceNumber {
    /// The last number given (0 before the first invoice).
    pub fn last(&self) -> u64 {
        self.last
    }
}

impl StateMutate for LastInvoiceNumber {
    fn mutate(&mut self, event: InvoiceNumbering) {
        let InvoiceNumbering::InvoiceCreated { number, .. } = event;
        // The max, not a count: the fold stays right whatever it is given.
        self.last = self.last.max(number);
    }
}

/// Serde and the default schema version: nothing else to write.
impl Snapshot for LastInvoiceNumber {}

/// Creates an invoice under the next number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateInvoice {
    /// Who pays.
    pub customer: String,
    /// How much.
    pub amount_cents: u64,
}

impl Decision for CreateInvoice {
    type Event = InvoiceEvent;
    type StateQuery = Snapshotted<LastInvoiceNumber>;
    /// Creating an invoice breaks no rule.
    type Error = Infallible;

    fn state_query(&self) -> Snapshotted<LastInvoiceNumber> {
        Snapshotted::new(LastInvoiceNumber::default())
    }

    fn process(
        &self,
        numbers: &Snapshotted<LastInvoiceNumber>,
    ) -> Result<Vec<InvoiceEvent>, Infallible> {
        Ok(vec![InvoiceEvent::InvoiceCreated {
            number: numbers.last + 1,
            customer: self.customer.clone(),
            amount_cents: self.amount_cents,
        }])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use dcb_core::testing::TestHarness;
    use dcb_core::{DecisionMaker, EventStore, InMemoryEventStore, InMemorySnapshotStore};

    fn created(number: u64) -> InvoiceEvent {
        InvoiceEvent::InvoiceCreated {
            number,
            customer: "acme".into(),
            amount_cents: 100,
        }
    }

    fn create() -> CreateInvoice {
        CreateInvoice {
            customer: "acme".into(),
            amount_cents: 100,
        }
    }

    #[test]
    fn the_first_invoice_is_number_one() {
        TestHarness::when(create()).then([created(1)]);
    }

    #[test]
    fn the_next_number_follows_the_last() {
        TestHarness::given([
            created(1),
            created(2),
            InvoiceEvent::InvoicePaid { number: 1 },
        ])
        .when(create())
        .then([created(3)]);
    }

    #[tokio::test]
    async fn a_snapshot_gives_the_same_number_from_fewer_events() {
        let store = Arc::new(InMemoryEventStore::new());
        let records = (1..=500)
            .map(|n| created(n).to_record().expect("encodes"))
            .collect();
        store.append(records, None).await.expect("appended");
        let snapshots = Arc::new(InMemorySnapshotStore::new());
        let maker = DecisionMaker::new(store.clone()).with_snapshots(snapshots.clone(), 100);

        let first = maker.make(create()).await.expect("created");
        assert_eq!(first.events[0].event, created(501));
        assert_eq!(snapshots.len(), 1, "the first read folded 500 events");
        let second = maker.make(create()).await.expect("created");
        assert_eq!(second.events[0].event, created(502));
        let plain = DecisionMaker::new(store).make(create()).await;
        assert_eq!(plain.expect("created").events[0].event, created(503));
    }
}
