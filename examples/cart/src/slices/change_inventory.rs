//! ChangeInventory: a product's stock changed (from `inventories`).

use dcb_core::Decision;
use uuid::Uuid;

use crate::error::CartError;
use crate::events::CartEvent;
use crate::limits::{check_inventory, InvalidValue};

/// The command. Stateless: it records the change when the stock level is
/// within the cart's [`limits`](crate::limits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeInventory {
    /// The product.
    pub product_id: Uuid,
    /// Units in stock.
    pub inventory: i64,
    /// Makes a redelivered message a no-op.
    pub idempotency_key: Option<String>,
}

impl ChangeInventory {
    /// Checks the stock level against the cart's [`limits`](crate::limits).
    ///
    /// # Errors
    /// [`InvalidValue::InventoryOutOfRange`].
    pub fn validate(&self) -> Result<(), InvalidValue> {
        check_inventory("inventory", self.inventory)
    }
}

impl Decision for ChangeInventory {
    type Event = CartEvent;
    type StateQuery = ();
    type Error = CartError;

    fn state_query(&self) {}

    fn idempotency_key(&self) -> Option<String> {
        self.idempotency_key.clone()
    }

    fn process(&self, _: &()) -> Result<Vec<CartEvent>, CartError> {
        self.validate()?;
        Ok(vec![CartEvent::InventoryChanged {
            product_id: self.product_id,
            inventory: self.inventory,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slices::test_support::*;
    use dcb_core::testing::TestHarness;

    #[test]
    fn an_inventory_change_is_recorded() {
        TestHarness::when(ChangeInventory {
            product_id: id(10),
            inventory: 7,
            idempotency_key: None,
        })
        .then([inventory_changed(10, 7)]);
    }

    #[test]
    fn a_stock_level_out_of_range_is_refused() {
        for inventory in [-1, crate::limits::MAX_INVENTORY + 1, i64::MIN, i64::MAX] {
            TestHarness::when(ChangeInventory {
                product_id: id(10),
                inventory,
                idempotency_key: None,
            })
            .then_err(CartError::InvalidValue(InvalidValue::InventoryOutOfRange {
                field: "inventory",
                min: crate::limits::MIN_INVENTORY,
                max: crate::limits::MAX_INVENTORY,
            }));
        }
    }
}
