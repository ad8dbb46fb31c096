//! CartItems from DB (ch. 28): the same shape as the live CartItems, kept in
//! Postgres by a transactional listener, so it is updated exactly once per
//! event. `cart reset-cart-items` rebuilds it from the log.
//!
//! The fold is [`changes`], a pure function from an event to row changes;
//! the listener applies them with SQL, and [`CartItemsDb`] applies them in
//! memory for the given-then tests.
//!
//! The cart accepts no text a `text` column cannot hold (see
//! [`limits`](crate::limits)); a NUL already in the log (written before
//! those limits, or by another program) is stored as U+FFFD, because a
//! failing event would stop this listener for every cart.

use async_trait::async_trait;
use dcb_core::{BoxError, Position, Query, ReadModel, Sequenced, TransactionalListener};
use dcb_postgres::listener::PgTransaction;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::db::SCHEMA;
use crate::events::{CartEvent, CartEventType};
use crate::slices::cart_items::{CartItem, CartItems};

/// One row change of the cart items tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The cart exists.
    CreateCart {
        /// The cart.
        cart_id: Uuid,
    },
    /// An item row, ordered by `position`.
    PutItem {
        /// The cart.
        cart_id: Uuid,
        /// The item.
        item: CartItem,
        /// Where it was added.
        position: Position,
    },
    /// An item is gone.
    DeleteItem {
        /// The cart.
        cart_id: Uuid,
        /// The item.
        item_id: Uuid,
    },
    /// Every item of a cart is gone.
    DeleteItems {
        /// The cart.
        cart_id: Uuid,
    },
}

/// What `event` changes.
pub fn changes(event: &Sequenced<CartEvent>) -> Vec<Change> {
    match &event.event {
        CartEvent::CartCreated { cart_id } => vec![Change::CreateCart { cart_id: *cart_id }],
        CartEvent::CartItemAdded {
            cart_id,
            item_id,
            product_id,
            description,
            image,
            price,
            fingerprint,
        } => vec![Change::PutItem {
            cart_id: *cart_id,
            item: CartItem {
                item_id: *item_id,
                product_id: *product_id,
                description: description.clone(),
                image: image.clone(),
                price: *price,
                fingerprint: fingerprint.clone(),
            },
            position: event.position,
        }],
        CartEvent::CartItemRemoved { cart_id, item_id }
        | CartEvent::ItemArchived {
            cart_id, item_id, ..
        } => vec![Change::DeleteItem {
            cart_id: *cart_id,
            item_id: *item_id,
        }],
        CartEvent::CartCleared { cart_id } => vec![Change::DeleteItems { cart_id: *cart_id }],
        _ => Vec::new(),
    }
}

/// The tables' content in memory: what the given-then tests check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CartItemsDb {
    /// The carts, as the HTTP answer shows them.
    pub carts: CartItems,
}

impl ReadModel for CartItemsDb {
    type Event = CartEvent;

    fn apply(&mut self, event: &Sequenced<CartEvent>) {
        for change in changes(event) {
            let carts = &mut self.carts.carts;
            match change {
                Change::CreateCart { cart_id } => {
                    carts.entry(cart_id).or_default();
                }
                Change::PutItem { cart_id, item, .. } => {
                    let items = carts.entry(cart_id).or_default();
                    items.retain(|i| i.item_id != item.item_id);
                    items.push(item);
                }
                Change::DeleteItem { cart_id, item_id } => {
                    if let Some(items) = carts.get_mut(&cart_id) {
                        items.retain(|i| i.item_id != item_id);
                    }
                }
                Change::DeleteItems { cart_id } => {
                    if let Some(items) = carts.get_mut(&cart_id) {
                        items.clear();
                    }
                }
            }
        }
    }
}

/// `text` as a `text` column can hold it: a NUL character (which PostgreSQL
/// refuses, and which would stop this listener on that event for every cart)
/// becomes U+FFFD. The cart refuses NUL in what it accepts; this is for
/// events written before that, or by another program.
fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// The transactional listener that keeps the tables.
#[derive(Clone, Copy, Debug, Default)]
pub struct CartItemsDbListener;

impl CartItemsDbListener {
    /// The listener's id.
    pub const ID: &'static str = "cart-items-db";
}

#[async_trait]
impl TransactionalListener<PgTransaction> for CartItemsDbListener {
    type Event = CartEvent;

    fn id(&self) -> &str {
        Self::ID
    }

    fn query(&self) -> Query {
        Query::types([
            CartEventType::CartCreated,
            CartEventType::CartItemAdded,
            CartEventType::CartItemRemoved,
            CartEventType::CartCleared,
            CartEventType::ItemArchived,
        ])
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: Sequenced<CartEvent>,
    ) -> Result<(), BoxError> {
        for change in changes(&event) {
            apply_sql(tx, change).await?;
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut PgTransaction) -> Result<(), BoxError> {
        sqlx::query(&format!("TRUNCATE {SCHEMA}.carts, {SCHEMA}.cart_items"))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

async fn apply_sql(tx: &mut PgTransaction, change: Change) -> Result<(), sqlx::Error> {
    match change {
        Change::CreateCart { cart_id } => {
            sqlx::query(&format!(
                "INSERT INTO {SCHEMA}.carts (cart_id) VALUES ($1) ON CONFLICT DO NOTHING"
            ))
            .bind(cart_id)
            .execute(&mut **tx)
            .await?;
        }
        Change::PutItem {
            cart_id,
            item,
            position,
        } => {
            sqlx::query(&format!(
                "INSERT INTO {SCHEMA}.carts (cart_id) VALUES ($1) ON CONFLICT DO NOTHING"
            ))
            .bind(cart_id)
            .execute(&mut **tx)
            .await?;
            sqlx::query(&format!(
                "INSERT INTO {SCHEMA}.cart_items
                    (cart_id, item_id, product_id, description, image, price, fingerprint, position)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (cart_id, item_id) DO UPDATE SET
                    product_id = EXCLUDED.product_id, description = EXCLUDED.description,
                    image = EXCLUDED.image, price = EXCLUDED.price,
                    fingerprint = EXCLUDED.fingerprint, position = EXCLUDED.position"
            ))
            .bind(cart_id)
            .bind(item.item_id)
            .bind(item.product_id)
            .bind(storable(&item.description).as_ref())
            .bind(storable(&item.image).as_ref())
            .bind(item.price.to_string())
            .bind(storable(&item.fingerprint).as_ref())
            .bind(i64::try_from(position.0).unwrap_or(i64::MAX))
            .execute(&mut **tx)
            .await?;
        }
        Change::DeleteItem { cart_id, item_id } => {
            sqlx::query(&format!(
                "DELETE FROM {SCHEMA}.cart_items WHERE cart_id = $1 AND item_id = $2"
            ))
            .bind(cart_id)
            .bind(item_id)
            .execute(&mut **tx)
            .await?;
        }
        Change::DeleteItems { cart_id } => {
            sqlx::query(&format!(
                "DELETE FROM {SCHEMA}.cart_items WHERE cart_id = $1"
            ))
            .bind(cart_id)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// Reads cart `cart_id` from the tables: its items in the order they were
/// added, `None` when it does not exist
/// ([`CartItemsView::new`](crate::slices::cart_items::CartItemsView::new)
/// totals them).
///
/// # Errors
/// Database errors, or a stored price that does not parse.
pub async fn load(pool: &PgPool, cart_id: Uuid) -> Result<Option<Vec<CartItem>>, BoxError> {
    let exists: Option<Uuid> = sqlx::query_scalar(&format!(
        "SELECT cart_id FROM {SCHEMA}.carts WHERE cart_id = $1"
    ))
    .bind(cart_id)
    .fetch_optional(pool)
    .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let rows = sqlx::query(&format!(
        "SELECT item_id, product_id, description, image, price, fingerprint
         FROM {SCHEMA}.cart_items WHERE cart_id = $1 ORDER BY position"
    ))
    .bind(cart_id)
    .fetch_all(pool)
    .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let price: String = row.try_get("price")?;
        items.push(CartItem {
            item_id: row.try_get("item_id")?,
            product_id: row.try_get("product_id")?,
            description: row.try_get("description")?,
            image: row.try_get("image")?,
            price: price.parse()?,
            fingerprint: row.try_get("fingerprint")?,
        });
    }
    Ok(Some(items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slices::test_support::*;
    use dcb_core::testing::ProjectionHarness;

    fn history() -> Vec<CartEvent> {
        vec![
            created(CART),
            added(CART, 1, 10, "1.00"),
            added(CART, 2, 20, "2.50"),
            added(CART, 3, 10, "0.25"),
            removed(CART, 1),
            added(CART, 1, 30, "9.00"),
            created(OTHER),
            added(OTHER, 1, 10, "4.00"),
            cleared(OTHER),
            archived(CART, 2, 20, id(999)),
            submitted(CART, &[(3, 10, "0.25"), (1, 30, "9.00")]),
        ]
    }

    #[test]
    fn the_tables_hold_what_the_live_model_shows() {
        let given = ProjectionHarness::given(history());
        let live: CartItems = given.project();
        given.then(CartItemsDb { carts: live });
    }

    #[test]
    fn a_removed_and_re_added_item_is_listed_once_at_its_new_place() {
        ProjectionHarness::given(history()).then_assert(|db: &CartItemsDb| {
            let cart = db.carts.view(CART).expect("the cart exists").unwrap();
            let ids: Vec<Uuid> = cart.items.iter().map(|i| i.item_id).collect();
            assert_eq!(ids, vec![id(3), id(1)]);
            assert_eq!(cart.total_price, dec("9.25"));
        });
    }

    #[test]
    fn every_cart_event_maps_to_row_changes() {
        let at = |event| Sequenced {
            position: Position(5),
            recorded_at: chrono::Utc::now(),
            tags: Vec::new(),
            metadata: dcb_core::EventMetadata::new(),
            event,
        };
        assert_eq!(
            changes(&at(cleared(CART))),
            vec![Change::DeleteItems { cart_id: CART }]
        );
        assert_eq!(
            changes(&at(archived(CART, 1, 10, id(9)))),
            vec![Change::DeleteItem {
                cart_id: CART,
                item_id: id(1)
            }]
        );
        assert!(changes(&at(price_changed(10, "1", "2"))).is_empty());
    }

    #[test]
    fn a_nul_becomes_a_replacement_character_in_the_tables() {
        assert_eq!(storable("a\0b\0"), "a\u{FFFD}b\u{FFFD}");
        assert!(matches!(storable("ab"), std::borrow::Cow::Borrowed("ab")));
    }
}
