//! CartsWithProducts: which not-submitted carts hold an item of a product,
//! kept in Postgres by a transactional listener.

use std::collections::BTreeSet;

use async_trait::async_trait;
use dcb_core::{BoxError, Query, ReadModel, Sequenced, TransactionalListener};
use dcb_postgres::listener::PgTransaction;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::db::SCHEMA;
use crate::events::{CartEvent, CartEventType};

/// One row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CartWithProduct {
    /// The cart.
    pub cart_id: Uuid,
    /// The item.
    pub item_id: Uuid,
    /// Its product.
    pub product_id: Uuid,
}

/// One row change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A row is there.
    Put(CartWithProduct),
    /// The row of an item is gone.
    DeleteItem {
        /// The cart.
        cart_id: Uuid,
        /// The item.
        item_id: Uuid,
    },
    /// Every row of a cart is gone (cleared or submitted).
    DeleteCart {
        /// The cart.
        cart_id: Uuid,
    },
}

/// What `event` changes.
pub fn changes(event: &CartEvent) -> Vec<Change> {
    match event {
        CartEvent::CartItemAdded {
            cart_id,
            item_id,
            product_id,
            ..
        } => vec![Change::Put(CartWithProduct {
            cart_id: *cart_id,
            item_id: *item_id,
            product_id: *product_id,
        })],
        CartEvent::CartItemRemoved { cart_id, item_id }
        | CartEvent::ItemArchived {
            cart_id, item_id, ..
        } => vec![Change::DeleteItem {
            cart_id: *cart_id,
            item_id: *item_id,
        }],
        CartEvent::CartCleared { cart_id } | CartEvent::CartSubmitted { cart_id, .. } => {
            vec![Change::DeleteCart { cart_id: *cart_id }]
        }
        _ => Vec::new(),
    }
}

/// The table's content in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CartsWithProducts {
    /// The rows.
    pub rows: BTreeSet<CartWithProduct>,
}

impl ReadModel for CartsWithProducts {
    type Event = CartEvent;

    fn apply(&mut self, event: &Sequenced<CartEvent>) {
        for change in changes(&event.event) {
            match change {
                Change::Put(row) => {
                    self.rows
                        .retain(|r| !(r.cart_id == row.cart_id && r.item_id == row.item_id));
                    self.rows.insert(row);
                }
                Change::DeleteItem { cart_id, item_id } => self
                    .rows
                    .retain(|r| !(r.cart_id == cart_id && r.item_id == item_id)),
                Change::DeleteCart { cart_id } => self.rows.retain(|r| r.cart_id != cart_id),
            }
        }
    }
}

/// The transactional listener that keeps the table.
#[derive(Clone, Copy, Debug, Default)]
pub struct CartsWithProductsListener;

impl CartsWithProductsListener {
    /// The listener's id.
    pub const ID: &'static str = "carts-with-products";
}

#[async_trait]
impl TransactionalListener<PgTransaction> for CartsWithProductsListener {
    type Event = CartEvent;

    fn id(&self) -> &str {
        Self::ID
    }

    fn query(&self) -> Query {
        Query::types([
            CartEventType::CartItemAdded,
            CartEventType::CartItemRemoved,
            CartEventType::CartCleared,
            CartEventType::ItemArchived,
            CartEventType::CartSubmitted,
        ])
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: Sequenced<CartEvent>,
    ) -> Result<(), BoxError> {
        for change in changes(&event.event) {
            match change {
                Change::Put(row) => {
                    sqlx::query(&format!(
                        "INSERT INTO {SCHEMA}.carts_with_products (cart_id, item_id, product_id)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (cart_id, item_id) DO UPDATE SET product_id = EXCLUDED.product_id"
                    ))
                    .bind(row.cart_id)
                    .bind(row.item_id)
                    .bind(row.product_id)
                    .execute(&mut **tx)
                    .await?;
                }
                Change::DeleteItem { cart_id, item_id } => {
                    sqlx::query(&format!(
                        "DELETE FROM {SCHEMA}.carts_with_products WHERE cart_id = $1 AND item_id = $2"
                    ))
                    .bind(cart_id)
                    .bind(item_id)
                    .execute(&mut **tx)
                    .await?;
                }
                Change::DeleteCart { cart_id } => {
                    sqlx::query(&format!(
                        "DELETE FROM {SCHEMA}.carts_with_products WHERE cart_id = $1"
                    ))
                    .bind(cart_id)
                    .execute(&mut **tx)
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut PgTransaction) -> Result<(), BoxError> {
        sqlx::query(&format!("TRUNCATE {SCHEMA}.carts_with_products"))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// The rows of `product_id`, by cart and item.
///
/// # Errors
/// Database errors.
pub async fn for_product(
    pool: &PgPool,
    product_id: Uuid,
) -> Result<Vec<CartWithProduct>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT cart_id, item_id, product_id FROM {SCHEMA}.carts_with_products
         WHERE product_id = $1 ORDER BY cart_id, item_id"
    ))
    .bind(product_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(CartWithProduct {
                cart_id: row.try_get("cart_id")?,
                item_id: row.try_get("item_id")?,
                product_id: row.try_get("product_id")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slices::test_support::*;
    use dcb_core::testing::ProjectionHarness;

    fn row(cart: Uuid, item: u128, product: u128) -> CartWithProduct {
        CartWithProduct {
            cart_id: cart,
            item_id: id(item),
            product_id: id(product),
        }
    }

    #[test]
    fn only_open_carts_with_their_remaining_items_are_listed() {
        let third = Uuid::from_u128(102);
        ProjectionHarness::given([
            created(CART),
            added(CART, 1, 10, "1.00"),
            added(CART, 2, 10, "1.00"),
            added(CART, 3, 20, "1.00"),
            removed(CART, 3),
            created(OTHER),
            added(OTHER, 1, 10, "1.00"),
            submitted(OTHER, &[(1, 10, "1.00")]),
            created(third),
            added(third, 1, 10, "1.00"),
            added(third, 2, 20, "1.00"),
            archived(third, 1, 10, id(999)),
        ])
        .then(CartsWithProducts {
            rows: [row(CART, 1, 10), row(CART, 2, 10), row(third, 2, 20)].into(),
        });
    }

    #[test]
    fn a_cleared_cart_is_gone() {
        ProjectionHarness::given([created(CART), added(CART, 1, 10, "1.00"), cleared(CART)])
            .then(CartsWithProducts::default());
    }
}
