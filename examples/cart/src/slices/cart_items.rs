//! CartItems (live): a cart's items, folded from its events on each request.

use std::collections::BTreeMap;

use dcb_core::{state_query_for, EventStore, ReadModel, ReadOptions, Sequenced, StoreError};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::{CartEvent, CartEventTag, CartStream};

/// One item as the read models show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartItem {
    /// The item.
    pub item_id: Uuid,
    /// Its product.
    pub product_id: Uuid,
    /// Free text.
    pub description: String,
    /// Free text.
    pub image: String,
    /// The price it was added with.
    pub price: Decimal,
    /// The fingerprint it was added with.
    pub fingerprint: String,
}

/// One cart as the read models show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartItemsView {
    /// The cart.
    pub cart_id: Uuid,
    /// The sum of the items' prices.
    pub total_price: Decimal,
    /// The items in the order they were added.
    pub items: Vec<CartItem>,
}

impl CartItemsView {
    /// An empty cart.
    pub fn empty(cart_id: Uuid) -> Self {
        CartItemsView {
            cart_id,
            total_price: Decimal::ZERO,
            items: Vec::new(),
        }
    }

    /// Recomputes the total from the items.
    pub fn retotal(&mut self) {
        self.total_price = self.items.iter().map(|i| i.price).sum();
    }
}

/// The carts seen so far, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CartItems {
    /// Every cart that exists.
    pub carts: BTreeMap<Uuid, CartItemsView>,
}

impl ReadModel for CartItems {
    type Event = CartEvent;

    fn apply(&mut self, event: &Sequenced<CartEvent>) {
        match &event.event {
            CartEvent::CartCreated { cart_id } => {
                self.carts
                    .entry(*cart_id)
                    .or_insert_with(|| CartItemsView::empty(*cart_id));
            }
            CartEvent::CartItemAdded {
                cart_id,
                item_id,
                product_id,
                description,
                image,
                price,
                fingerprint,
            } => {
                let cart = self
                    .carts
                    .entry(*cart_id)
                    .or_insert_with(|| CartItemsView::empty(*cart_id));
                cart.items.push(CartItem {
                    item_id: *item_id,
                    product_id: *product_id,
                    description: description.clone(),
                    image: image.clone(),
                    price: *price,
                    fingerprint: fingerprint.clone(),
                });
                cart.retotal();
            }
            CartEvent::CartItemRemoved { cart_id, item_id }
            | CartEvent::ItemArchived {
                cart_id, item_id, ..
            } => {
                if let Some(cart) = self.carts.get_mut(cart_id) {
                    cart.items.retain(|i| i.item_id != *item_id);
                    cart.retotal();
                }
            }
            CartEvent::CartCleared { cart_id } => {
                if let Some(cart) = self.carts.get_mut(cart_id) {
                    cart.items.clear();
                    cart.retotal();
                }
            }
            _ => {}
        }
    }
}

/// Folds cart `cart_id` from the store; `None` when it does not exist.
///
/// # Errors
/// Store failures and events that no longer decode.
pub async fn load(
    store: &dyn EventStore,
    cart_id: Uuid,
) -> Result<Option<CartItemsView>, StoreError> {
    let query = state_query_for::<CartStream>(&[CartEventTag::CartId.of(cart_id)]);
    let result = store.read(&query, ReadOptions::forwards()).await?;
    let mut events = result.events;
    let mut model = CartItems::default();
    while let Some(event) = events.try_next().await? {
        model.apply(&event.decode::<CartEvent>()?);
    }
    Ok(model.carts.remove(&cart_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slices::test_support::*;
    use dcb_core::testing::ProjectionHarness;

    fn item(n: u128, product: u128, price: &str) -> CartItem {
        CartItem {
            item_id: id(n),
            product_id: id(product),
            description: format!("item {n}"),
            image: format!("img {n}"),
            price: dec(price),
            fingerprint: FP.to_owned(),
        }
    }

    fn view(cart: Uuid, total: &str, items: Vec<CartItem>) -> CartItemsView {
        CartItemsView {
            cart_id: cart,
            total_price: dec(total),
            items,
        }
    }

    #[test]
    fn items_are_added_removed_archived_and_cleared() {
        ProjectionHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            added(CART, 2, 20, "2.50"),
            added(CART, 3, 10, "0.25"),
            removed(CART, 1),
            created(OTHER),
            added(OTHER, 1, 10, "4.00"),
            cleared(OTHER),
            price_changed(20, "2.50", "3.00"),
            archived(CART, 2, 20, id(999)),
        ])
        .then(CartItems {
            carts: [
                (CART, view(CART, "0.25", vec![item(3, 10, "0.25")])),
                (OTHER, view(OTHER, "0", vec![])),
            ]
            .into(),
        });
    }

    #[test]
    fn a_submitted_cart_still_shows_its_items() {
        ProjectionHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            submitted(CART, &[(1, 10, "1.00")]),
        ])
        .then(CartItems {
            carts: [(CART, view(CART, "1.00", vec![item(1, 10, "1.00")]))].into(),
        });
    }

    #[test]
    fn no_events_no_cart() {
        ProjectionHarness::given([price_changed(10, "1", "2")]).then(CartItems::default());
    }
}
