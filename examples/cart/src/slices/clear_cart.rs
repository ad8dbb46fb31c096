//! ClearCart: take every item out of a cart.

use dcb_core::{Decision, StateMutate, StateQuery};
use uuid::Uuid;

use crate::error::CartError;
use crate::events::{CartEvent, CartStream};

/// The command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClearCart {
    /// The cart.
    pub cart_id: Uuid,
}

/// What ClearCart knows about the cart.
#[derive(StateQuery, Clone, Debug)]
#[state_query(CartStream)]
pub struct ClearCartState {
    #[id]
    cart_id: Uuid,
    exists: bool,
    submitted: bool,
}

impl StateMutate for ClearCartState {
    fn mutate(&mut self, event: CartStream) {
        match event {
            CartStream::CartCreated { .. } => self.exists = true,
            CartStream::CartSubmitted { .. } => self.submitted = true,
            _ => {}
        }
    }
}

impl Decision for ClearCart {
    type Event = CartEvent;
    type StateQuery = ClearCartState;
    type Error = CartError;

    fn state_query(&self) -> ClearCartState {
        ClearCartState {
            cart_id: self.cart_id,
            exists: false,
            submitted: false,
        }
    }

    fn process(&self, cart: &ClearCartState) -> Result<Vec<CartEvent>, CartError> {
        if cart.submitted {
            return Err(CartError::CartCannotBeAltered);
        }
        if !cart.exists {
            return Err(CartError::CartDoesNotExist);
        }
        Ok(vec![CartEvent::CartCleared {
            cart_id: self.cart_id,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slices::test_support::*;
    use dcb_core::testing::TestHarness;

    fn clear() -> ClearCart {
        ClearCart { cart_id: CART }
    }

    #[test]
    fn a_cart_with_items_is_cleared() {
        TestHarness::given([created(CART), added(CART, 1, 10, "1.00")])
            .when(clear())
            .then([cleared(CART)]);
    }

    #[test]
    fn an_empty_cart_may_be_cleared() {
        TestHarness::given([created(CART), added(CART, 1, 10, "1.00"), removed(CART, 1)])
            .when(clear())
            .then([cleared(CART)]);
    }

    #[test]
    fn a_submitted_cart_cannot_be_altered() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            submitted(CART, &[(1, 10, "1.00")]),
        ])
        .when(clear())
        .then_err(CartError::CartCannotBeAltered);
    }

    #[test]
    fn no_cart_nothing_to_clear() {
        TestHarness::given([created(OTHER)])
            .when(clear())
            .then_err(CartError::CartDoesNotExist);
    }
}
