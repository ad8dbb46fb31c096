//! The ordering context: customers place orders; an order ends shipped or
//! rejected. Its events live in the ordering store only.

use std::convert::Infallible;

use dcb_core::{
    BoxError, Decision, DecisionState, Event, EventStore, ReadOptions, StateMutate, StateQuery,
};
use uuid::Uuid;

/// Every event of the ordering context.
#[derive(Event, Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    /// A customer placed an order.
    OrderPlaced {
        /// The order.
        #[id]
        order: Uuid,
        /// How many items it holds.
        items: u32,
    },
    /// Shipping could not take the order (a rule only shipping knows).
    OrderRejected {
        /// The order.
        #[id]
        order: Uuid,
        /// Why.
        reason: String,
    },
    /// The order left the warehouse.
    OrderShipped {
        /// The order.
        #[id]
        order: Uuid,
        /// The shipment that carried it.
        shipment: Uuid,
    },
}

/// A broken ordering rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The order id was used before.
    #[error("the order was already placed")]
    AlreadyPlaced,
    /// An order holds at least one item.
    #[error("an order holds at least one item")]
    Empty,
}

/// Where one order stands: folded from `order:<id>` in the ordering store.
#[derive(StateQuery, Clone, Debug, Default, PartialEq, Eq)]
#[state_query(OrderEvent)]
pub struct OrderStatus {
    #[id]
    order: Uuid,
    /// Placed (with its items).
    pub items: Option<u32>,
    /// Rejected by shipping, with why.
    pub rejected: Option<String>,
    /// Shipped, with the shipment.
    pub shipped: Option<Uuid>,
}

impl OrderStatus {
    /// The state of `order` before any event.
    pub fn new(order: Uuid) -> Self {
        OrderStatus {
            order,
            ..OrderStatus::default()
        }
    }

    /// The status of `order` as the ordering store holds it now.
    ///
    /// # Errors
    /// The store failed or an event does not decode.
    pub async fn load(ordering: &impl EventStore, order: Uuid) -> Result<Self, BoxError> {
        let mut status = OrderStatus::new(order);
        let queries = status.queries();
        let (_, events) = ordering
            .read(&DecisionState::query(&status), ReadOptions::forwards())
            .await?
            .collect()
            .await?;
        for event in &events {
            status.apply(event, &queries)?;
        }
        Ok(status)
    }
}

impl StateMutate for OrderStatus {
    fn mutate(&mut self, event: OrderEvent) {
        match event {
            OrderEvent::OrderPlaced { items, .. } => self.items = Some(items),
            OrderEvent::OrderRejected { reason, .. } => self.rejected = Some(reason),
            OrderEvent::OrderShipped { shipment, .. } => self.shipped = Some(shipment),
        }
    }
}

/// A customer places an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaceOrder {
    /// The new order's id.
    pub order: Uuid,
    /// How many items.
    pub items: u32,
}

impl Decision for PlaceOrder {
    type Event = OrderEvent;
    type StateQuery = OrderStatus;
    type Error = OrderError;

    fn state_query(&self) -> OrderStatus {
        OrderStatus::new(self.order)
    }

    fn process(&self, status: &OrderStatus) -> Result<Vec<OrderEvent>, OrderError> {
        if status.items.is_some() {
            return Err(OrderError::AlreadyPlaced);
        }
        if self.items == 0 {
            return Err(OrderError::Empty);
        }
        Ok(vec![OrderEvent::OrderPlaced {
            order: self.order,
            items: self.items,
        }])
    }
}

/// Shipping refused the order: record why (the compensation for a rule the
/// ordering store could not check when the order was placed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectOrder {
    /// The order.
    pub order: Uuid,
    /// Why.
    pub reason: String,
}

impl Decision for RejectOrder {
    type Event = OrderEvent;
    type StateQuery = OrderStatus;
    type Error = Infallible;

    fn state_query(&self) -> OrderStatus {
        OrderStatus::new(self.order)
    }

    fn process(&self, status: &OrderStatus) -> Result<Vec<OrderEvent>, Infallible> {
        if status.rejected.is_some() {
            return Ok(Vec::new());
        }
        Ok(vec![OrderEvent::OrderRejected {
            order: self.order,
            reason: self.reason.clone(),
        }])
    }
}

/// Shipping dispatched the order's shipment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkShipped {
    /// The order.
    pub order: Uuid,
    /// The shipment.
    pub shipment: Uuid,
}

impl Decision for MarkShipped {
    type Event = OrderEvent;
    type StateQuery = OrderStatus;
    type Error = Infallible;

    fn state_query(&self) -> OrderStatus {
        OrderStatus::new(self.order)
    }

    fn process(&self, status: &OrderStatus) -> Result<Vec<OrderEvent>, Infallible> {
        if status.shipped.is_some() {
            return Ok(Vec::new());
        }
        Ok(vec![OrderEvent::OrderShipped {
            order: self.order,
            shipment: self.shipment,
        }])
    }
}
