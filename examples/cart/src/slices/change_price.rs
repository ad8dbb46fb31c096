//! ChangePrice: a product's price changed (from HTTP or `price-changes`).

use std::convert::Infallible;

use dcb_core::Decision;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::events::CartEvent;

/// The command. Stateless: it reads nothing and always records the change.
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

impl Decision for ChangePrice {
    type Event = CartEvent;
    type StateQuery = ();
    type Error = Infallible;

    fn state_query(&self) {}

    fn idempotency_key(&self) -> Option<String> {
        self.idempotency_key.clone()
    }

    fn process(&self, _: &()) -> Result<Vec<CartEvent>, Infallible> {
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
}
