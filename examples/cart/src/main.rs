//! A preview of the cart example on the in-memory store.
//!
//! It runs a few cart commands through the real `DecisionMaker` and prints
//! what each one decided. The full example (HTTP server on PostgreSQL, read
//! models, Kafka) replaces this program; the rules here already follow
//! `cart.md`: at most three items, no duplicate item, nothing changes after
//! submission.

use std::sync::Arc;

use dcb_core::{
    Decision, DecisionError, DecisionMaker, Event, InMemoryEventStore, StateMutate, StateQuery,
};
use uuid::Uuid;

/// The cart's events (a subset of the full example's).
// The event names are the book's; the shared prefix is part of them.
#[allow(clippy::enum_variant_names)]
#[derive(Event, Debug, Clone, PartialEq)]
#[stream(CartStream, [CartCreated, CartItemAdded, CartItemRemoved, CartSubmitted])]
enum CartEvent {
    CartCreated {
        #[id]
        cart_id: Uuid,
    },
    CartItemAdded {
        #[id]
        cart_id: Uuid,
        #[id]
        item_id: Uuid,
        description: String,
        /// Price in cents; the full example uses decimals.
        price_cents: u64,
    },
    CartItemRemoved {
        #[id]
        cart_id: Uuid,
        #[id]
        item_id: Uuid,
    },
    CartSubmitted {
        #[id]
        cart_id: Uuid,
        total_cents: u64,
    },
}

/// What the cart commands need to know about one cart.
#[derive(StateQuery, Clone, Debug)]
#[state_query(CartStream)]
struct Cart {
    #[id]
    cart_id: Uuid,
    exists: bool,
    items: Vec<(Uuid, u64)>,
    submitted: bool,
}

impl Cart {
    fn new(cart_id: Uuid) -> Self {
        Cart {
            cart_id,
            exists: false,
            items: Vec::new(),
            submitted: false,
        }
    }
}

impl StateMutate for Cart {
    fn mutate(&mut self, event: CartStream) {
        match event {
            CartStream::CartCreated { .. } => self.exists = true,
            CartStream::CartItemAdded {
                item_id,
                price_cents,
                ..
            } => self.items.push((item_id, price_cents)),
            CartStream::CartItemRemoved { item_id, .. } => {
                self.items.retain(|(id, _)| *id != item_id)
            }
            CartStream::CartSubmitted { .. } => self.submitted = true,
        }
    }
}

/// A broken cart rule.
#[derive(Debug, PartialEq, thiserror::Error)]
enum CartError {
    #[error("the cart was submitted and cannot be altered")]
    CartCannotBeAltered,
    #[error("the cart already holds three items")]
    CartFull,
    #[error("the item is already in the cart")]
    ItemAlreadyInCart,
    #[error("an empty cart cannot be submitted")]
    CannotSubmitEmptyCart,
}

struct AddItem {
    cart_id: Uuid,
    item_id: Uuid,
    description: String,
    price_cents: u64,
}

impl Decision for AddItem {
    type Event = CartEvent;
    type StateQuery = Cart;
    type Error = CartError;

    fn state_query(&self) -> Cart {
        Cart::new(self.cart_id)
    }

    fn process(&self, cart: &Cart) -> Result<Vec<CartEvent>, CartError> {
        if cart.submitted {
            return Err(CartError::CartCannotBeAltered);
        }
        if cart.items.len() >= 3 {
            return Err(CartError::CartFull);
        }
        if cart.items.iter().any(|(id, _)| *id == self.item_id) {
            return Err(CartError::ItemAlreadyInCart);
        }
        let mut events = Vec::new();
        if !cart.exists {
            events.push(CartEvent::CartCreated {
                cart_id: self.cart_id,
            });
        }
        events.push(CartEvent::CartItemAdded {
            cart_id: self.cart_id,
            item_id: self.item_id,
            description: self.description.clone(),
            price_cents: self.price_cents,
        });
        Ok(events)
    }
}

struct SubmitCart {
    cart_id: Uuid,
}

impl Decision for SubmitCart {
    type Event = CartEvent;
    type StateQuery = Cart;
    type Error = CartError;

    fn state_query(&self) -> Cart {
        Cart::new(self.cart_id)
    }

    fn process(&self, cart: &Cart) -> Result<Vec<CartEvent>, CartError> {
        if cart.submitted {
            return Err(CartError::CartCannotBeAltered);
        }
        if cart.items.is_empty() {
            return Err(CartError::CannotSubmitEmptyCart);
        }
        let total_cents = cart.items.iter().map(|(_, p)| p).sum();
        Ok(vec![CartEvent::CartSubmitted {
            cart_id: self.cart_id,
            total_cents,
        }])
    }
}

fn report<D: Decision>(
    what: &str,
    outcome: Result<dcb_core::Decided<D::Event>, DecisionError<D::Error>>,
) where
    D::Event: std::fmt::Debug,
{
    match outcome {
        Ok(decided) => {
            println!("{what}: accepted");
            for e in &decided.events {
                println!("    #{} {:?}", e.position, e.event);
            }
        }
        Err(DecisionError::Rejected(rule)) => println!("{what}: rejected: {rule}"),
        Err(other) => println!("{what}: failed: {other}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    println!("dcb cart preview: cart commands against the in-memory event store\n");
    let store = Arc::new(InMemoryEventStore::new());
    let maker = DecisionMaker::new(store.clone());
    let cart_id = Uuid::new_v4();
    let item = |n: u64| AddItem {
        cart_id,
        item_id: Uuid::from_u128(n as u128),
        description: format!("item {n}"),
        price_cents: 1000 * n,
    };

    report::<AddItem>("add item 1", maker.make(item(1)).await);
    report::<AddItem>("add item 1 again", maker.make(item(1)).await);
    for n in 2..=4 {
        report::<AddItem>(&format!("add item {n}"), maker.make(item(n)).await);
    }
    report::<SubmitCart>("submit", maker.make(SubmitCart { cart_id }).await);
    report::<AddItem>("add item 5 after submit", maker.make(item(5)).await);

    println!("\nthe log holds {} events", store.all_events().len());
}
