//! ChangeInventory: a product's stock changed (from `inventories`).

use std::convert::Infallible;

use dcb_core::Decision;
use uuid::Uuid;

use crate::events::CartEvent;

/// The command. Stateless.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeInventory {
    /// The product.
    pub product_id: Uuid,
    /// Units in stock.
    pub inventory: i64,
    /// Makes a redelivered message a no-op.
    pub idempotency_key: Option<String>,
}

impl Decision for ChangeInventory {
    type Event = CartEvent;
    type StateQuery = ();
    type Error = Infallible;

    fn state_query(&self) {}

    fn idempotency_key(&self) -> Option<String> {
        self.idempotency_key.clone()
    }

    fn process(&self, _: &()) -> Result<Vec<CartEvent>, Infallible> {
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
}
