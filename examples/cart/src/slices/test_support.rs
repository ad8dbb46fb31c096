//! Short constructors for the slices' given-when-then tests.

use rust_decimal::Decimal;
use uuid::Uuid;

use crate::events::{CartEvent, OrderedProduct};
use crate::slices::add_item::AddItem;

/// The cart under test.
pub const CART: Uuid = Uuid::from_u128(100);
/// Another cart.
pub const OTHER: Uuid = Uuid::from_u128(101);
/// The fingerprint the tests add items with.
pub const FP: &str = "fp-test";

/// Id `n` (items are 1..9, products 10..99).
pub fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// A decimal from text.
pub fn dec(s: &str) -> Decimal {
    s.parse().expect("a decimal")
}

/// `CartCreated`.
pub fn created(cart: Uuid) -> CartEvent {
    CartEvent::CartCreated { cart_id: cart }
}

/// `CartItemAdded` of item `item`, product `product`, at `price`.
pub fn added(cart: Uuid, item: u128, product: u128, price: &str) -> CartEvent {
    CartEvent::CartItemAdded {
        cart_id: cart,
        item_id: id(item),
        product_id: id(product),
        description: format!("item {item}"),
        image: format!("img {item}"),
        price: dec(price),
        fingerprint: FP.to_owned(),
    }
}

/// The AddItem command matching [`added`] with product 10 at 1.00.
pub fn add(cart: Uuid, item: u128) -> AddItem {
    add_at(cart, item, 10, "1.00")
}

/// The AddItem command matching [`added`].
pub fn add_at(cart: Uuid, item: u128, product: u128, price: &str) -> AddItem {
    AddItem {
        cart_id: cart,
        item_id: id(item),
        product_id: id(product),
        description: format!("item {item}"),
        image: format!("img {item}"),
        price: dec(price),
        fingerprint: FP.to_owned(),
    }
}

/// `CartItemRemoved`.
pub fn removed(cart: Uuid, item: u128) -> CartEvent {
    CartEvent::CartItemRemoved {
        cart_id: cart,
        item_id: id(item),
    }
}

/// `CartCleared`.
pub fn cleared(cart: Uuid) -> CartEvent {
    CartEvent::CartCleared { cart_id: cart }
}

/// `ItemArchived` caused by PriceChanged event `cause`.
pub fn archived(cart: Uuid, item: u128, product: u128, cause: Uuid) -> CartEvent {
    CartEvent::ItemArchived {
        cart_id: cart,
        item_id: id(item),
        product_id: id(product),
        price_changed_event: cause,
    }
}

/// `CartSubmitted` with `(item, product, price)` lines.
pub fn submitted(cart: Uuid, lines: &[(u128, u128, &str)]) -> CartEvent {
    let ordered_products: Vec<OrderedProduct> = lines
        .iter()
        .map(|(item, product, price)| OrderedProduct {
            item_id: id(*item),
            product_id: id(*product),
            price: dec(price),
        })
        .collect();
    let total_price = crate::limits::sum_prices(ordered_products.iter().map(|p| p.price))
        .expect("the test's prices add up");
    CartEvent::CartSubmitted {
        cart_id: cart,
        ordered_products,
        total_price,
    }
}

/// `PriceChanged`.
pub fn price_changed(product: u128, old: &str, new: &str) -> CartEvent {
    CartEvent::PriceChanged {
        product_id: id(product),
        old_price: dec(old),
        new_price: dec(new),
    }
}

/// `InventoryChanged`.
pub fn inventory_changed(product: u128, inventory: i64) -> CartEvent {
    CartEvent::InventoryChanged {
        product_id: id(product),
        inventory,
    }
}
