//! SubmitCart: order what is in the cart, each item at its own price.

use dcb_core::{Decision, StateMutate, StateQuery};
use uuid::Uuid;

use crate::error::CartError;
use crate::events::{CartEvent, CartStream, OrderedProduct};
use crate::limits::sum_prices;

/// The command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmitCart {
    /// The cart.
    pub cart_id: Uuid,
}

/// What SubmitCart knows about the cart: its remaining items in the order
/// they were added.
#[derive(StateQuery, Clone, Debug)]
#[state_query(CartStream)]
pub struct SubmitCartState {
    #[id]
    cart_id: Uuid,
    exists: bool,
    submitted: bool,
    items: Vec<OrderedProduct>,
}

impl StateMutate for SubmitCartState {
    fn mutate(&mut self, event: CartStream) {
        match event {
            CartStream::CartCreated { .. } => self.exists = true,
            CartStream::CartItemAdded {
                item_id,
                product_id,
                price,
                ..
            } => self.items.push(OrderedProduct {
                item_id,
                product_id,
                price,
            }),
            CartStream::CartItemRemoved { item_id, .. }
            | CartStream::ItemArchived { item_id, .. } => {
                self.items.retain(|i| i.item_id != item_id)
            }
            CartStream::CartCleared { .. } => self.items.clear(),
            CartStream::CartSubmitted { .. } => self.submitted = true,
        }
    }
}

impl Decision for SubmitCart {
    type Event = CartEvent;
    type StateQuery = SubmitCartState;
    type Error = CartError;

    fn state_query(&self) -> SubmitCartState {
        SubmitCartState {
            cart_id: self.cart_id,
            exists: false,
            submitted: false,
            items: Vec::new(),
        }
    }

    fn process(&self, cart: &SubmitCartState) -> Result<Vec<CartEvent>, CartError> {
        if !cart.exists {
            return Err(CartError::CartDoesNotExist);
        }
        if cart.items.is_empty() {
            return Err(CartError::CannotSubmitEmptyCart);
        }
        if cart.submitted {
            return Err(CartError::CannotSubmitCartTwice);
        }
        let total_price =
            sum_prices(cart.items.iter().map(|i| i.price)).ok_or(CartError::TotalOverflow)?;
        Ok(vec![CartEvent::CartSubmitted {
            cart_id: self.cart_id,
            ordered_products: cart.items.clone(),
            total_price,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slices::test_support::*;
    use dcb_core::testing::TestHarness;

    fn submit() -> SubmitCart {
        SubmitCart { cart_id: CART }
    }

    #[test]
    fn a_cart_with_items_is_submitted_in_order() {
        TestHarness::given([
            created(CART),
            added(CART, 2, 20, "2.50"),
            added(CART, 1, 10, "1.00"),
        ])
        .when(submit())
        .then([submitted(CART, &[(2, 20, "2.50"), (1, 10, "1.00")])]);
    }

    #[test]
    fn two_items_of_one_product_keep_their_own_prices() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            added(CART, 2, 10, "1.50"),
            added(CART, 3, 20, "3.00"),
            removed(CART, 1),
        ])
        .when(submit())
        .then([submitted(CART, &[(2, 10, "1.50"), (3, 20, "3.00")])]);
    }

    #[test]
    fn archived_items_are_not_ordered() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            added(CART, 2, 20, "2.00"),
            archived(CART, 1, 10, id(999)),
        ])
        .when(submit())
        .then([submitted(CART, &[(2, 20, "2.00")])]);
    }

    #[test]
    fn a_total_beyond_decimal_range_is_refused_not_a_panic() {
        // Only a history written without the price bounds can hold these.
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "50000000000000000000000000000"),
            added(CART, 2, 10, "50000000000000000000000000000"),
        ])
        .when(submit())
        .then_err(CartError::TotalOverflow);
    }

    #[test]
    fn no_cart_cannot_be_submitted() {
        TestHarness::when(submit()).then_err(CartError::CartDoesNotExist);
    }

    #[test]
    fn an_empty_cart_cannot_be_submitted() {
        TestHarness::given([created(CART), added(CART, 1, 10, "1.00"), cleared(CART)])
            .when(submit())
            .then_err(CartError::CannotSubmitEmptyCart);
    }

    #[test]
    fn a_cart_is_submitted_once() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            submitted(CART, &[(1, 10, "1.00")]),
        ])
        .when(submit())
        .then_err(CartError::CannotSubmitCartTwice);
    }
}
