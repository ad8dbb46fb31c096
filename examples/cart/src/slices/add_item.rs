//! AddItem: put an item into a cart (creating the cart on the first add).

use dcb_core::{Decision, StateMutate, StateQuery};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::error::{CartError, MAX_ITEMS};
use crate::events::{CartEvent, CartStream};
use crate::limits::{self, InvalidValue, MAX_DESCRIPTION_BYTES, MAX_IMAGE_BYTES};

/// The command.
#[derive(Clone, Debug, PartialEq)]
pub struct AddItem {
    /// The cart.
    pub cart_id: Uuid,
    /// The new item.
    pub item_id: Uuid,
    /// Its product.
    pub product_id: Uuid,
    /// Free text.
    pub description: String,
    /// Free text.
    pub image: String,
    /// Its price.
    pub price: Decimal,
    /// Computed by the server from the request.
    pub fingerprint: String,
}

impl AddItem {
    /// Checks the command's values against the cart's [`limits`]: the
    /// description and image hold no NUL and are not too long, the price is
    /// in range. `process` checks this first; the HTTP handler checks it
    /// before deciding, so a bad value costs no read.
    ///
    /// # Errors
    /// The first value out of bounds, naming its field.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        limits::check_text("description", &self.description, MAX_DESCRIPTION_BYTES)?;
        limits::check_text("image", &self.image, MAX_IMAGE_BYTES)?;
        limits::check_text("fingerprint", &self.fingerprint, MAX_DESCRIPTION_BYTES)?;
        limits::check_price("price", self.price)
    }
}

/// What AddItem knows about the cart.
#[derive(StateQuery, Clone, Debug)]
#[state_query(CartStream)]
pub struct AddItemState {
    #[id]
    cart_id: Uuid,
    exists: bool,
    submitted: bool,
    items: Vec<Uuid>,
}

impl AddItemState {
    /// The state of `cart_id` before any event.
    pub fn new(cart_id: Uuid) -> Self {
        AddItemState {
            cart_id,
            exists: false,
            submitted: false,
            items: Vec::new(),
        }
    }
}

impl StateMutate for AddItemState {
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

impl Decision for AddItem {
    type Event = CartEvent;
    type StateQuery = AddItemState;
    type Error = CartError;

    fn state_query(&self) -> AddItemState {
        AddItemState::new(self.cart_id)
    }

    fn process(&self, cart: &AddItemState) -> Result<Vec<CartEvent>, CartError> {
        self.validate()?;
        if cart.submitted {
            return Err(CartError::CartCannotBeAltered);
        }
        if cart.items.len() >= MAX_ITEMS {
            return Err(CartError::CartFull);
        }
        if cart.items.contains(&self.item_id) {
            return Err(CartError::ItemAlreadyInCart);
        }
        let mut events = Vec::with_capacity(2);
        if !cart.exists {
            events.push(CartEvent::CartCreated {
                cart_id: self.cart_id,
            });
        }
        events.push(CartEvent::CartItemAdded {
            cart_id: self.cart_id,
            item_id: self.item_id,
            product_id: self.product_id,
            description: self.description.clone(),
            image: self.image.clone(),
            price: self.price,
            fingerprint: self.fingerprint.clone(),
        });
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slices::test_support::*;
    use dcb_core::testing::TestHarness;

    #[test]
    fn the_first_add_creates_the_cart() {
        TestHarness::when(add(CART, 1)).then([created(CART), added(CART, 1, 10, "1.00")]);
    }

    #[test]
    fn a_later_add_only_adds() {
        TestHarness::given([created(CART), added(CART, 1, 10, "1.00")])
            .when(add(CART, 2))
            .then([added(CART, 2, 10, "1.00")]);
    }

    #[test]
    fn a_submitted_cart_cannot_be_altered() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            submitted(CART, &[]),
        ])
        .when(add(CART, 2))
        .then_err(CartError::CartCannotBeAltered);
    }

    #[test]
    fn a_fourth_item_does_not_fit() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            added(CART, 2, 10, "1.00"),
            added(CART, 3, 10, "1.00"),
        ])
        .when(add(CART, 4))
        .then_err(CartError::CartFull);
    }

    #[test]
    fn submitted_is_checked_before_full() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            added(CART, 2, 10, "1.00"),
            added(CART, 3, 10, "1.00"),
            submitted(CART, &[]),
        ])
        .when(add(CART, 4))
        .then_err(CartError::CartCannotBeAltered);
    }

    #[test]
    fn a_removed_item_frees_a_place() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            added(CART, 2, 10, "1.00"),
            added(CART, 3, 10, "1.00"),
            removed(CART, 2),
        ])
        .when(add(CART, 4))
        .then([added(CART, 4, 10, "1.00")]);
    }

    #[test]
    fn the_same_item_twice_is_rejected() {
        TestHarness::given([created(CART), added(CART, 1, 10, "1.00")])
            .when(add(CART, 1))
            .then_err(CartError::ItemAlreadyInCart);
    }

    #[test]
    fn full_is_checked_before_duplicate() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            added(CART, 2, 10, "1.00"),
            added(CART, 3, 10, "1.00"),
        ])
        .when(add(CART, 1))
        .then_err(CartError::CartFull);
    }

    #[test]
    fn a_cleared_cart_takes_items_again_and_is_not_created_twice() {
        TestHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            added(CART, 2, 10, "1.00"),
            added(CART, 3, 10, "1.00"),
            cleared(CART),
        ])
        .when(add(CART, 1))
        .then([added(CART, 1, 10, "1.00")]);
    }

    #[test]
    fn values_out_of_bounds_are_refused_before_any_rule() {
        let submitted_cart = [
            created(CART),
            added(CART, 1, 10, "1.00"),
            submitted(CART, &[]),
        ];
        let mut nul = add(CART, 2);
        nul.description = "a\0b".to_owned();
        TestHarness::given(submitted_cart.clone())
            .when(nul)
            .then_err(CartError::InvalidValue(InvalidValue::Nul {
                field: "description",
            }));
        let mut long = add(CART, 2);
        long.image = "i".repeat(MAX_IMAGE_BYTES + 1);
        TestHarness::when(long).then_err(CartError::InvalidValue(InvalidValue::TooLong {
            field: "image",
            bytes: MAX_IMAGE_BYTES + 1,
            max: MAX_IMAGE_BYTES,
        }));
        TestHarness::when(add_at(CART, 2, 10, "50000000000000000000000000000")).then_err(
            CartError::InvalidValue(InvalidValue::PriceTooHigh {
                field: "price",
                max: limits::MAX_PRICE,
            }),
        );
        TestHarness::when(add_at(CART, 2, 10, "-1")).then_err(CartError::InvalidValue(
            InvalidValue::NegativePrice { field: "price" },
        ));
    }

    #[test]
    fn other_carts_do_not_count() {
        TestHarness::given([
            created(OTHER),
            added(OTHER, 1, 10, "1.00"),
            submitted(OTHER, &[]),
        ])
        .when(add(CART, 1))
        .then([created(CART), added(CART, 1, 10, "1.00")]);
    }
}
