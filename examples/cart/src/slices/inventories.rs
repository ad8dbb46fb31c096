//! Inventories: product → units in stock, kept in Postgres by a
//! transactional listener.

use std::collections::BTreeMap;

use async_trait::async_trait;
use dcb_core::{BoxError, Query, ReadModel, Sequenced, TransactionalListener};
use dcb_postgres::listener::PgTransaction;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::db::SCHEMA;
use crate::events::{CartEvent, CartEventType};

/// A product's stock, as `GET /inventories/{product_id}` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The product.
    pub product_id: Uuid,
    /// Units in stock.
    pub inventory: i64,
}

/// The table's content in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventories {
    /// Stock by product.
    pub products: BTreeMap<Uuid, i64>,
}

impl ReadModel for Inventories {
    type Event = CartEvent;

    fn apply(&mut self, event: &Sequenced<CartEvent>) {
        if let CartEvent::InventoryChanged {
            product_id,
            inventory,
        } = event.event
        {
            self.products.insert(product_id, inventory);
        }
    }
}

/// The transactional listener that keeps the table.
#[derive(Clone, Copy, Debug, Default)]
pub struct InventoriesListener;

impl InventoriesListener {
    /// The listener's id.
    pub const ID: &'static str = "inventories";
}

#[async_trait]
impl TransactionalListener<PgTransaction> for InventoriesListener {
    type Event = CartEvent;

    fn id(&self) -> &str {
        Self::ID
    }

    fn query(&self) -> Query {
        Query::types([CartEventType::InventoryChanged])
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: Sequenced<CartEvent>,
    ) -> Result<(), BoxError> {
        if let CartEvent::InventoryChanged {
            product_id,
            inventory,
        } = event.event
        {
            // Test hook, off by default: CART_FAIL_LISTENER_ON=<product id>
            // makes this handler fail on that product's InventoryChanged (the
            // listener blocks on it until restarted without the variable).
            // Used by tests/faults_listener.rs.
            if std::env::var("CART_FAIL_LISTENER_ON").is_ok_and(|p| p == product_id.to_string()) {
                return Err(format!("CART_FAIL_LISTENER_ON: failing on {product_id}").into());
            }
            sqlx::query(&format!(
                "INSERT INTO {SCHEMA}.inventories (product_id, inventory) VALUES ($1, $2)
                 ON CONFLICT (product_id) DO UPDATE SET inventory = EXCLUDED.inventory"
            ))
            .bind(product_id)
            .bind(inventory)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut PgTransaction) -> Result<(), BoxError> {
        sqlx::query(&format!("TRUNCATE {SCHEMA}.inventories"))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// The stock of `product_id`, if it was ever reported.
///
/// # Errors
/// Database errors.
pub async fn load(pool: &PgPool, product_id: Uuid) -> Result<Option<Inventory>, sqlx::Error> {
    let inventory: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT inventory FROM {SCHEMA}.inventories WHERE product_id = $1"
    ))
    .bind(product_id)
    .fetch_optional(pool)
    .await?;
    Ok(inventory.map(|inventory| Inventory {
        product_id,
        inventory,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slices::test_support::*;
    use dcb_core::testing::ProjectionHarness;

    #[test]
    fn the_last_report_wins() {
        ProjectionHarness::given([
            inventory_changed(10, 5),
            inventory_changed(20, 1),
            created(CART),
            inventory_changed(10, 3),
        ])
        .then(Inventories {
            products: [(id(10), 3), (id(20), 1)].into(),
        });
    }
}
