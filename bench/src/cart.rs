//! The cart the append workload decides on: two event types tagged
//! `cart_id`, a state folded from them, and two decisions.
//!
//! Written by hand against the `dcb-core` traits (what `#[derive(Event)]` and
//! `#[derive(StateQuery)]` generate), so the bench does not depend on the
//! derives.

use dcb_core::{
    state_query_for, Codec, CodecError, Decision, Event, EventSchema, EventType, JsonCodec, Query,
    StateMutate, StateQuery, Tag,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The tag key of every cart event.
pub const CART_TAG: &str = "cart_id";

/// A cart was created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CartCreated {
    /// The cart.
    pub cart_id: Uuid,
}

/// An item went into a cart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemAdded {
    /// The cart.
    pub cart_id: Uuid,
    /// This line's id.
    pub item_id: Uuid,
    /// The product.
    pub product_id: u32,
    /// Its price.
    pub price_cents: u32,
    /// The line number in the cart (1 for the first item).
    pub line: u32,
}

/// The cart events.
#[derive(Clone, Debug, PartialEq)]
pub enum CartEvent {
    /// See [`CartCreated`].
    CartCreated(CartCreated),
    /// See [`ItemAdded`].
    ItemAdded(ItemAdded),
}

impl Event for CartEvent {
    const SCHEMA: &'static [EventSchema] = &[
        EventSchema {
            event_type: "CartCreated",
            tag_keys: &[CART_TAG],
        },
        EventSchema {
            event_type: "ItemAdded",
            tag_keys: &[CART_TAG],
        },
    ];

    fn event_type(&self) -> EventType {
        EventType::from_static(match self {
            CartEvent::CartCreated(_) => "CartCreated",
            CartEvent::ItemAdded(_) => "ItemAdded",
        })
    }

    fn tags(&self) -> Vec<Tag> {
        let cart = match self {
            CartEvent::CartCreated(e) => e.cart_id,
            CartEvent::ItemAdded(e) => e.cart_id,
        };
        vec![cart_tag(cart)]
    }

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        match self {
            CartEvent::CartCreated(e) => JsonCodec::encode(e),
            CartEvent::ItemAdded(e) => JsonCodec::encode(e),
        }
    }

    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError> {
        match event_type {
            "CartCreated" => JsonCodec::decode(payload).map(CartEvent::CartCreated),
            "ItemAdded" => JsonCodec::decode(payload).map(CartEvent::ItemAdded),
            other => Err(CodecError::UnknownType(other.to_string())),
        }
    }
}

/// The `cart_id` tag of a cart.
pub fn cart_tag(cart_id: Uuid) -> Tag {
    Tag::new(CART_TAG, cart_id)
}

/// What a decision knows about one cart.
#[derive(Clone, Debug, PartialEq)]
pub struct CartState {
    /// Which cart (set by the decision, not by events).
    pub cart_id: Uuid,
    /// Whether `CartCreated` was seen.
    pub created: bool,
    /// Items in the cart.
    pub items: u32,
}

impl CartState {
    /// The initial state of `cart_id`.
    pub fn new(cart_id: Uuid) -> Self {
        CartState {
            cart_id,
            created: false,
            items: 0,
        }
    }
}

impl StateQuery for CartState {
    const NAME: &'static str = "bench_cart";
    type Event = CartEvent;

    fn query(&self) -> Query {
        state_query_for::<CartEvent>(&[cart_tag(self.cart_id)])
    }
}

impl StateMutate for CartState {
    fn mutate(&mut self, event: CartEvent) {
        match event {
            CartEvent::CartCreated(_) => self.created = true,
            CartEvent::ItemAdded(_) => self.items += 1,
        }
    }
}

/// The items a cart may hold under [`AddItem`].
pub const MAX_ITEMS: u32 = 3;

/// The cart was full.
#[derive(Debug, thiserror::Error)]
#[error("cart {0} already holds {MAX_ITEMS} items")]
pub struct CartFull(pub Uuid);

/// Adds an item to a cart, creating it on the first add; at most
/// [`MAX_ITEMS`] items.
#[derive(Clone, Debug)]
pub struct AddItem {
    /// The cart.
    pub cart_id: Uuid,
    /// The product.
    pub product_id: u32,
    /// Its price.
    pub price_cents: u32,
}

/// The events of adding one item to `state`: `CartCreated` first when the
/// cart does not exist yet.
fn add_events(state: &CartState, product_id: u32, price_cents: u32) -> Vec<CartEvent> {
    let mut events = Vec::with_capacity(2);
    if !state.created {
        events.push(CartEvent::CartCreated(CartCreated {
            cart_id: state.cart_id,
        }));
    }
    events.push(CartEvent::ItemAdded(ItemAdded {
        cart_id: state.cart_id,
        item_id: Uuid::new_v4(),
        product_id,
        price_cents,
        line: state.items + 1,
    }));
    events
}

impl Decision for AddItem {
    type Event = CartEvent;
    type StateQuery = CartState;
    type Error = CartFull;

    fn state_query(&self) -> CartState {
        CartState::new(self.cart_id)
    }

    fn process(&self, state: &CartState) -> Result<Vec<CartEvent>, CartFull> {
        if state.items >= MAX_ITEMS {
            return Err(CartFull(self.cart_id));
        }
        Ok(add_events(state, self.product_id, self.price_cents))
    }
}

/// Adds a line to a cart with no cap: the same read and events as
/// [`AddItem`], so it can hammer a hot cart for a whole run.
#[derive(Clone, Debug)]
pub struct AddLine {
    /// The cart.
    pub cart_id: Uuid,
    /// The product.
    pub product_id: u32,
    /// Its price.
    pub price_cents: u32,
}

impl Decision for AddLine {
    type Event = CartEvent;
    type StateQuery = CartState;
    type Error = std::convert::Infallible;

    fn state_query(&self) -> CartState {
        CartState::new(self.cart_id)
    }

    fn process(&self, state: &CartState) -> Result<Vec<CartEvent>, Self::Error> {
        Ok(add_events(state, self.product_id, self.price_cents))
    }
}

/// The line number a decision's last `ItemAdded` got (0 if none).
pub fn last_line(events: &[dcb_core::Sequenced<CartEvent>]) -> u32 {
    events
        .iter()
        .rev()
        .find_map(|e| match &e.event {
            CartEvent::ItemAdded(i) => Some(i.line),
            CartEvent::CartCreated(_) => None,
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcb_core::{DecisionMaker, InMemoryEventStore};

    #[tokio::test]
    async fn add_item_creates_then_adds_then_refuses() {
        let maker = DecisionMaker::new(InMemoryEventStore::new());
        let cart_id = Uuid::new_v4();
        let add = || AddItem {
            cart_id,
            product_id: 7,
            price_cents: 1999,
        };
        let first = maker.make(add()).await.unwrap();
        assert_eq!(first.events.len(), 2);
        assert_eq!(last_line(&first.events), 1);
        for line in 2..=MAX_ITEMS {
            let next = maker.make(add()).await.unwrap();
            assert_eq!(next.events.len(), 1);
            assert_eq!(last_line(&next.events), line);
        }
        assert!(maker.make(add()).await.unwrap_err().rejection().is_some());
        // Another cart is its own boundary.
        let other = maker
            .make(AddItem {
                cart_id: Uuid::new_v4(),
                ..add()
            })
            .await
            .unwrap();
        assert_eq!(other.events.len(), 2);
    }

    #[tokio::test]
    async fn add_line_has_no_cap() {
        let maker = DecisionMaker::new(InMemoryEventStore::new());
        let cart_id = Uuid::new_v4();
        for line in 1..=5 {
            let d = maker
                .make(AddLine {
                    cart_id,
                    product_id: 1,
                    price_cents: 100,
                })
                .await
                .unwrap();
            assert_eq!(last_line(&d.events), line);
        }
    }

    #[test]
    fn payload_is_about_100_bytes() {
        let e = CartEvent::ItemAdded(ItemAdded {
            cart_id: Uuid::new_v4(),
            item_id: Uuid::new_v4(),
            product_id: 12345,
            price_cents: 1999,
            line: 2,
        });
        let n = e.encode().unwrap().len();
        assert!((90..=160).contains(&n), "{n}");
        let back = CartEvent::decode("ItemAdded", &e.encode().unwrap()).unwrap();
        assert_eq!(back, e);
    }
}
