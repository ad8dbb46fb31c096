//! The slices of the cart, one module each: the command (or read model), its
//! state, its decision (or fold) and its given-when-then tests.

pub mod add_item;
pub mod archive_item;
pub mod cart_items;
pub mod cart_items_db;
pub mod carts_with_products;
pub mod change_inventory;
pub mod change_price;
pub mod clear_cart;
pub mod inventories;
pub mod publish_cart;
pub mod remove_item;
pub mod submit_cart;

#[cfg(test)]
pub(crate) mod test_support;
