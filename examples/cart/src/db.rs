//! The read models' tables, in schema `cart`, and their migrations.

use sqlx::PgPool;

/// The schema of the read models.
pub const SCHEMA: &str = "cart";

/// The migration component of the read models.
pub const COMPONENT: &str = "cart_read_models";

/// The migration steps. Never edit a released step; append one.
pub const STEPS: &[&str] = &[r#"
CREATE TABLE IF NOT EXISTS {schema}.carts (
    cart_id uuid PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS {schema}.cart_items (
    cart_id     uuid   NOT NULL,
    item_id     uuid   NOT NULL,
    product_id  uuid   NOT NULL,
    description text   NOT NULL,
    image       text   NOT NULL,
    price       text   NOT NULL,
    fingerprint text   NOT NULL,
    position    bigint NOT NULL,
    PRIMARY KEY (cart_id, item_id)
);
CREATE TABLE IF NOT EXISTS {schema}.carts_with_products (
    cart_id    uuid NOT NULL,
    item_id    uuid NOT NULL,
    product_id uuid NOT NULL,
    PRIMARY KEY (cart_id, item_id)
);
CREATE INDEX IF NOT EXISTS carts_with_products_product
    ON {schema}.carts_with_products (product_id);
CREATE TABLE IF NOT EXISTS {schema}.inventories (
    product_id uuid   PRIMARY KEY,
    inventory  bigint NOT NULL
);
"#];

/// Creates or updates the read models' tables.
///
/// # Errors
/// Database errors.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    dcb_postgres::migrations::run(pool, SCHEMA, COMPONENT, STEPS)
        .await
        .map_err(sqlx::Error::from)
}
