//! RemoveItem: take an item out of a cart.

use dcb_core::{Decision, StateMutate, StateQuery};
use uuid::Uuid;

use crate::error::CartError;
use crate::events::{CartEvent, CartStream};

/// The command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoveItem {
    /// The cart.
    pub cart_id: Uuid,
    /// The item to remove.
    pub item_id: Uuid,
}

/// What RemoveItem knows about the cart.
#[derive(StateQuery, Clone, Debug)]
#[state_query(CartStream)]
pub struct RemoveItemState {
    #[id]
    cart_id: Uuid,
    exists: bool,
    submitted: bool,
    items: Vec<Uuid>,
}

impl StateMutate for RemoveItemState {
    fn mutate(&mut self, event: CartStream) {
        match event {
            CartStream::CartCreated { .. } => self.exists = true,
            CartStream::CartItemAdded { item_id, .. } => self.items.push(item_id),
            CartStream::CartItemRemoved { item_id, .. }
            | CartStream::ItemArchived { item_id, .. } => self.items.retain(|i| *i != item_id),
            CartStream::CartCleared { .. } => self.items.clear(),
            CartStream::CartSubmitted { .. } => self.submitted = true,
        }
    }
}

impl Decision for RemoveItem {
    type Event = CartEvent;
    type StateQuery = RemoveItemState;
    type Error = CartError;

    fn state_query(&self) -> RemoveItemState {
        RemoveItemState {
            cart_id: self.cart_id,
            exists: false,
            submitted: false,
            items: Vec::new(),
        }
    }

    fn process(&self, cart: &RemoveItemState) -> Result<Vec<CartEvent>, CartError> {
        if !cart.exists {
            return Err(CartError::CartDoesNotExist);
        }
        if cart.submitted {
            return Err(CartError::CartCannotBeAltered);
        }
        if !cart.items.contains(&self.item_id) {
            return Err(CartError::ItemNotInCart);
        }
        Ok(vec![CartEvent::CartItemRemoved {
            cart_id: self.cart_id,
            item_id: self.item_id,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slices::test_support::*;
    use dcb_core::testing::TestHarness;

    fn remove(item: u128) -> RemoveItem {
        RemoveItem {
            cart_id: CART,
            item_id: id(item),
        }
    }

    #[test]
    fn an_item_in_the_cart_is_removed() {
        TestHarness::given([created(CART), added(CART, 1, 10, "1.00")])
            .when(remove(1))
            .then([removed(CART, 1)]);
    }

    #[test]
    fn no_cart_no_removal() {
        TestHarness::given([created(OTHER), added(OTHER, 1, 10, "1.00")])
            .when(remove(1))
            .then_err(CartError::CartDoesNotExist);
    }

    #[test]
    fn a_submitted_cart_cannot_be_altered() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            submitted(CART, &[(1, 10, "1.00")]),
        ])
        .when(remove(1))
        .then_err(CartError::CartCannotBeAltered);
    }

    #[test]
    fn submitted_is_checked_before_item_not_in_cart() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            submitted(CART, &[(1, 10, "1.00")]),
        ])
        .when(remove(9))
        .then_err(CartError::CartCannotBeAltered);
    }

    #[test]
    fn an_item_never_added_is_not_in_cart() {
        TestHarness::given([created(CART), added(CART, 1, 10, "1.00")])
            .when(remove(2))
            .then_err(CartError::ItemNotInCart);
    }

    #[test]
    fn a_removed_item_is_not_in_cart() {
        TestHarness::given([created(CART), added(CART, 1, 10, "1.00"), removed(CART, 1)])
            .when(remove(1))
            .then_err(CartError::ItemNotInCart);
    }

    #[test]
    fn an_archived_item_is_not_in_cart() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            archived(CART, 1, 10, id(999)),
        ])
        .when(remove(1))
        .then_err(CartError::ItemNotInCart);
    }

    #[test]
    fn a_cleared_item_is_not_in_cart() {
        TestHarness::given([created(CART), added(CART, 1, 10, "1.00"), cleared(CART)])
            .when(remove(1))
            .then_err(CartError::ItemNotInCart);
    }
}
