//! CartItems (live): a cart's items, folded from its events on each request.

use std::collections::BTreeMap;

use dcb_core::{state_query_for, EventStore, ReadModel, ReadOptions, Sequenced, StoreError};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::CartError;
use crate::events::{CartEvent, CartEventTag, CartStream};
use crate::limits::sum_prices;

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

/// One cart as the read models show it (the HTTP answer).
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
    /// The view of `cart_id` holding `items`, totalled with checked
    /// arithmetic.
    ///
    /// # Errors
    /// [`CartError::TotalOverflow`] when the prices do not add up within
    /// `Decimal`'s range (only a history written without the cart's
    /// [`limits`](crate::limits) can get there).
    pub fn new(cart_id: Uuid, items: Vec<CartItem>) -> Result<Self, CartError> {
        let total_price =
            sum_prices(items.iter().map(|i| i.price)).ok_or(CartError::TotalOverflow)?;
        Ok(CartItemsView {
            cart_id,
            total_price,
            items,
        })
    }
}

/// The carts seen so far: each cart's items in the order they were added.
/// The total is computed when a cart is shown ([`CartItems::view`]), so
/// that a fold never does arithmetic that could fail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CartItems {
    /// Every cart that exists, with its items.
    pub carts: BTreeMap<Uuid, Vec<CartItem>>,
}

impl CartItems {
    /// Cart `cart_id` as the HTTP answer shows it; `None` when it does not
    /// exist.
    ///
    /// # Errors
    /// See [`CartItemsView::new`].
    pub fn view(&self, cart_id: Uuid) -> Option<Result<CartItemsView, CartError>> {
        let items = self.carts.get(&cart_id)?;
        Some(CartItemsView::new(cart_id, items.clone()))
    }
}

impl ReadModel for CartItems {
    type Event = CartEvent;

    fn apply(&mut self, event: &Sequenced<CartEvent>) {
        match &event.event {
            CartEvent::CartCreated { cart_id } => {
                self.carts.entry(*cart_id).or_default();
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
                self.carts.entry(*cart_id).or_default().push(CartItem {
                    item_id: *item_id,
                    product_id: *product_id,
                    description: description.clone(),
                    image: image.clone(),
                    price: *price,
                    fingerprint: fingerprint.clone(),
                });
            }
            CartEvent::CartItemRemoved { cart_id, item_id }
            | CartEvent::ItemArchived {
                cart_id, item_id, ..
            } => {
                if let Some(items) = self.carts.get_mut(cart_id) {
                    items.retain(|i| i.item_id != *item_id);
                }
            }
            CartEvent::CartCleared { cart_id } => {
                if let Some(items) = self.carts.get_mut(cart_id) {
                    items.clear();
                }
            }
            _ => {}
        }
    }
}

/// Folds cart `cart_id` from the store: its items in the order they were
/// added, `None` when it does not exist ([`CartItemsView::new`] totals
/// them).
///
/// # Errors
/// Store failures and events that no longer decode.
pub async fn load(
    store: &dyn EventStore,
    cart_id: Uuid,
) -> Result<Option<Vec<CartItem>>, StoreError> {
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
            carts: [(CART, vec![item(3, 10, "0.25")]), (OTHER, vec![])].into(),
        });
    }

    #[test]
    fn a_view_is_totalled_in_order_of_adding() {
        ProjectionHarness::given([
            created(CART),
            added(CART, 2, 20, "2.50"),
            added(CART, 1, 10, "1.00"),
        ])
        .then_assert(|model: &CartItems| {
            let view = model.view(CART).expect("the cart exists").unwrap();
            assert_eq!(view.total_price, dec("3.50"));
            assert_eq!(view.items, vec![item(2, 20, "2.50"), item(1, 10, "1.00")]);
            assert!(model.view(OTHER).is_none());
        });
    }

    #[test]
    fn a_total_beyond_decimal_range_is_an_error_not_a_panic() {
        // Only a history written without the price bounds can hold these.
        ProjectionHarness::given([
            created(CART),
            added(CART, 1, 10, "50000000000000000000000000000"),
            added(CART, 2, 10, "50000000000000000000000000000"),
        ])
        .then_assert(|model: &CartItems| {
            assert_eq!(model.view(CART), Some(Err(CartError::TotalOverflow)));
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
            carts: [(CART, vec![item(1, 10, "1.00")])].into(),
        });
    }

    #[test]
    fn no_events_no_cart() {
        ProjectionHarness::given([price_changed(10, "1", "2")]).then(CartItems::default());
    }
}
