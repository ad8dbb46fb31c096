//! The shipping context: one shipment per order, dispatched from the
//! warehouse. Its events live in the shipping store only.

use dcb_core::{Decision, Event, StateMutate, StateQuery};
use uuid::Uuid;

/// The most items one shipment carries: a rule of shipping that ordering
/// does not know, and could not check in its own append condition.
pub const MAX_ITEMS_PER_SHIPMENT: u32 = 10;

/// Every event of the shipping context.
#[derive(Event, Debug, Clone, PartialEq, Eq)]
pub enum ShippingEvent {
    /// A shipment was scheduled for an order.
    ShipmentScheduled {
        /// The shipment.
        #[id]
        shipment: Uuid,
        /// The order it carries (an id of the ordering context, kept here
        /// as a tag so shipping's own decisions can find it).
        #[id]
        order: Uuid,
        /// Items in it.
        items: u32,
    },
    /// The shipment left the warehouse.
    ShipmentDispatched {
        /// The shipment.
        #[id]
        shipment: Uuid,
        /// The order it carries.
        #[id]
        order: Uuid,
    },
}

/// A broken shipping rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShippingError {
    /// Too many items for one shipment.
    #[error("{items} items do not fit one shipment (at most {MAX_ITEMS_PER_SHIPMENT})")]
    TooLarge {
        /// The order's items.
        items: u32,
    },
    /// No shipment with that id.
    #[error("no such shipment")]
    UnknownShipment,
}

/// The shipment of one order, if any: folded from `order:<id>` in the
/// shipping store.
#[derive(StateQuery, Clone, Debug, Default, PartialEq, Eq)]
#[state_query(ShippingEvent)]
pub struct OrderShipment {
    #[id]
    order: Uuid,
    /// The shipment scheduled for the order.
    pub shipment: Option<Uuid>,
}

impl OrderShipment {
    /// The state of `order` before any event.
    pub fn new(order: Uuid) -> Self {
        OrderShipment {
            order,
            shipment: None,
        }
    }
}

impl StateMutate for OrderShipment {
    fn mutate(&mut self, event: ShippingEvent) {
        if let ShippingEvent::ShipmentScheduled { shipment, .. } = event {
            self.shipment = Some(shipment);
        }
    }
}

/// Schedules the shipment of an order: once per order, whatever the
/// number of times the process manager asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleShipment {
    /// The order.
    pub order: Uuid,
    /// Its items.
    pub items: u32,
}

impl Decision for ScheduleShipment {
    type Event = ShippingEvent;
    type StateQuery = OrderShipment;
    type Error = ShippingError;

    fn state_query(&self) -> OrderShipment {
        OrderShipment::new(self.order)
    }

    fn process(&self, state: &OrderShipment) -> Result<Vec<ShippingEvent>, ShippingError> {
        if state.shipment.is_some() {
            return Ok(Vec::new());
        }
        if self.items > MAX_ITEMS_PER_SHIPMENT {
            return Err(ShippingError::TooLarge { items: self.items });
        }
        Ok(vec![ShippingEvent::ShipmentScheduled {
            shipment: Uuid::new_v4(),
            order: self.order,
            items: self.items,
        }])
    }
}

/// Where one shipment stands: folded from `shipment:<id>`.
#[derive(StateQuery, Clone, Debug, Default, PartialEq, Eq)]
#[state_query(ShippingEvent)]
pub struct ShipmentStatus {
    #[id]
    shipment: Uuid,
    /// The order it carries, once scheduled.
    pub order: Option<Uuid>,
    /// Whether it left.
    pub dispatched: bool,
}

impl ShipmentStatus {
    /// The state of `shipment` before any event.
    pub fn new(shipment: Uuid) -> Self {
        ShipmentStatus {
            shipment,
            ..ShipmentStatus::default()
        }
    }
}

impl StateMutate for ShipmentStatus {
    fn mutate(&mut self, event: ShippingEvent) {
        match event {
            ShippingEvent::ShipmentScheduled { order, .. } => self.order = Some(order),
            ShippingEvent::ShipmentDispatched { .. } => self.dispatched = true,
        }
    }
}

/// The warehouse dispatches a shipment (once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchShipment {
    /// The shipment.
    pub shipment: Uuid,
}

impl Decision for DispatchShipment {
    type Event = ShippingEvent;
    type StateQuery = ShipmentStatus;
    type Error = ShippingError;

    fn state_query(&self) -> ShipmentStatus {
        ShipmentStatus::new(self.shipment)
    }

    fn process(&self, state: &ShipmentStatus) -> Result<Vec<ShippingEvent>, ShippingError> {
        let order = state.order.ok_or(ShippingError::UnknownShipment)?;
        if state.dispatched {
            return Ok(Vec::new());
        }
        Ok(vec![ShippingEvent::ShipmentDispatched {
            shipment: self.shipment,
            order,
        }])
    }
}
