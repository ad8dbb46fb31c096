//! The process managers: listeners on one store whose handlers make
//! decisions in the other. They are the only link between the contexts.
//!
//! Each is an at-least-once listener that never parks (an order must not be
//! dropped because shipping was away): after a crash or a reset it is
//! handed events again. That is harmless because the decision it makes is
//! idempotent twice over: it carries an idempotency key derived from the
//! causing event's id (a repeat returns the first call's events and appends
//! nothing), and its own state says when there is nothing left to do.

use std::sync::Arc;

use async_trait::async_trait;
use dcb_core::{BoxError, DecisionError, DecisionMaker, Listener, MakeOptions, Query, Sequenced};
use dcb_postgres::listener::{ListenerError, ListenerOptions, RunnerHandle};
use dcb_postgres::PgEventStore;

use crate::ordering::{MarkShipped, OrderEvent, RejectOrder};
use crate::shipping::{ScheduleShipment, ShippingEvent};

/// The id of the process manager from ordering to shipping.
pub const SHIP_PLACED_ORDERS: &str = "ship-placed-orders";
/// The id of the process manager from shipping to ordering.
pub const RECORD_DISPATCHES: &str = "record-dispatches";

/// The two stores of the application: one per bounded context. They may
/// share a database (two schemas) or live in two databases on two servers;
/// either way each has its own log, its own positions and its own writer.
#[derive(Clone, Debug)]
pub struct Stores {
    /// The ordering context's store.
    pub ordering: PgEventStore,
    /// The shipping context's store.
    pub shipping: PgEventStore,
}

/// Options for a decision a process manager makes because of `event`: its
/// id as the cause, and an idempotency key from it.
fn because_of<E>(manager: &str, event: &Sequenced<E>) -> MakeOptions {
    MakeOptions::caused_by(event).idempotency_key(format!("{manager}/{}", event.event_id()))
}

/// Ordering → shipping: every placed order gets a shipment scheduled, or,
/// when shipping refuses it, is rejected in ordering (the compensation).
pub struct ShipPlacedOrders {
    ordering: Arc<DecisionMaker<PgEventStore>>,
    shipping: Arc<DecisionMaker<PgEventStore>>,
}

#[async_trait]
impl Listener for ShipPlacedOrders {
    type Event = OrderEvent;

    fn id(&self) -> &str {
        SHIP_PLACED_ORDERS
    }

    fn query(&self) -> Query {
        Query::types(["OrderPlaced"])
    }

    async fn handle(&self, event: Sequenced<OrderEvent>) -> Result<(), BoxError> {
        let OrderEvent::OrderPlaced { order, items } = event.event else {
            return Ok(());
        };
        let schedule = ScheduleShipment { order, items };
        match self
            .shipping
            .make_with(&schedule, because_of(SHIP_PLACED_ORDERS, &event))
            .await
        {
            Ok(_) => Ok(()),
            Err(DecisionError::Rejected(refusal)) => {
                let reject = RejectOrder {
                    order,
                    reason: refusal.to_string(),
                };
                let options = because_of("reject-refused-orders", &event);
                self.ordering.make_with(&reject, options).await?;
                Ok(())
            }
            Err(other) => Err(other.into()),
        }
    }
}

/// Shipping → ordering: a dispatched shipment marks its order shipped.
pub struct RecordDispatches {
    ordering: Arc<DecisionMaker<PgEventStore>>,
}

#[async_trait]
impl Listener for RecordDispatches {
    type Event = ShippingEvent;

    fn id(&self) -> &str {
        RECORD_DISPATCHES
    }

    fn query(&self) -> Query {
        Query::types(["ShipmentDispatched"])
    }

    async fn handle(&self, event: Sequenced<ShippingEvent>) -> Result<(), BoxError> {
        let ShippingEvent::ShipmentDispatched { shipment, order } = event.event else {
            return Ok(());
        };
        let mark = MarkShipped { order, shipment };
        self.ordering
            .make_with(&mark, because_of(RECORD_DISPATCHES, &event))
            .await?;
        Ok(())
    }
}

/// The running process managers: one listener runner on each store.
#[derive(Debug)]
pub struct ProcessManagers {
    /// Runs [`ShipPlacedOrders`] on the ordering store.
    pub to_shipping: RunnerHandle,
    /// Runs [`RecordDispatches`] on the shipping store.
    pub to_ordering: RunnerHandle,
}

impl ProcessManagers {
    /// Starts both (their checkpoints live in the store they read).
    ///
    /// # Errors
    /// What starting a listener runner reports.
    pub async fn start(stores: &Stores) -> Result<ProcessManagers, ListenerError> {
        let ordering = Arc::new(DecisionMaker::new(stores.ordering.clone()));
        let shipping = Arc::new(DecisionMaker::new(stores.shipping.clone()));
        let to_shipping = stores
            .ordering
            .listeners()
            .at_least_once_with(
                ShipPlacedOrders {
                    ordering: ordering.clone(),
                    shipping,
                },
                ListenerOptions::blocking(),
            )
            .start()
            .await?;
        let to_ordering = stores
            .shipping
            .listeners()
            .at_least_once_with(RecordDispatches { ordering }, ListenerOptions::blocking())
            .start()
            .await?;
        Ok(ProcessManagers {
            to_shipping,
            to_ordering,
        })
    }

    /// Waits until both have handled everything their store holds now.
    ///
    /// # Errors
    /// Database failures.
    pub async fn catch_up(&self) -> Result<(), ListenerError> {
        self.to_shipping.catch_up(SHIP_PLACED_ORDERS).await?;
        self.to_ordering.catch_up(RECORD_DISPATCHES).await?;
        Ok(())
    }

    /// Stops both.
    pub async fn shutdown(self) {
        self.to_shipping.shutdown().await;
        self.to_ordering.shutdown().await;
    }
}
