//! ChangePrice: a product's price changed (from HTTP or `price-changes`).

use dcb_core::Decision;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::error::CartError;
use crate::events::CartEvent;
use crate::limits::{check_price, InvalidValue};

/// The command. Stateless: it reads nothing and records the change when
/// both prices are within the cart's [`limits`](crate::limits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangePrice {
    /// The product.
    pub product_id: Uuid,
    /// The price before.
    pub old_price: Decimal,
    /// The price now.
    pub new_price: Decimal,
    /// Makes a redelivered message a no-op (e.g. `price-changes/0/17`).
    pub idempotency_key: Option<String>,
}

impl ChangePrice {
    /// Checks both prices against the cart's [`limits`](crate::limits).
    ///
    /// # Errors
    /// The first price out of bounds, naming its field.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        check_price("old_price", self.old_price)?;
        check_price("new_price", self.new_price)
    }
}

impl Decision for ChangePrice {
    type Event = CartEvent;
    type StateQuery = ();
    type Error = CartError;

    fn state_query(&self) {}

    fn idempotency_key(&self) -> Option<String> {
        self.idempotency_key.clone()
    }

    fn process(&self, _: &()) -> Result<Vec<CartEvent>, CartError> {
        self.validate()?;
        Ok(vec![CartEvent::PriceChanged {
            product_id: self.product_id,
            old_price: self.old_price,
            new_price: self.new_price,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slices::test_support::*;
    use dcb_core::testing::TestHarness;

    #[test]
    fn a_price_change_is_recorded() {
        TestHarness::given([price_changed(10, "1.00", "2.00")])
            .when(ChangePrice {
                product_id: id(10),
                old_price: dec("2.00"),
                new_price: dec("3.00"),
                idempotency_key: None,
            })
            .then([price_changed(10, "2.00", "3.00")]);
    }

    #[test]
    fn prices_out_of_bounds_are_refused() {
        let change = |old: &str, new: &str| ChangePrice {
            product_id: id(10),
            old_price: dec(old),
            new_price: dec(new),
            idempotency_key: None,
        };
        TestHarness::when(change("-1", "2")).then_err(CartError::InvalidValue(
            InvalidValue::NegativePrice { field: "old_price" },
        ));
        TestHarness::when(change("1", "0.0000001")).then_err(CartError::InvalidValue(
            InvalidValue::PriceTooPrecise {
                field: "new_price",
                scale: 7,
                max: crate::limits::MAX_PRICE_SCALE,
            },
        ));
    }
}
