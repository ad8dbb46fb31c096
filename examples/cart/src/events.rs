//! The cart's events: one enum, stable type names, tags from `#[id]` fields.

use dcb_core::Event;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The fingerprint of items added before the book's chapter 28 introduced
/// fingerprints: old `CartItemAdded` payloads without one read as this.
pub const DEFAULT_FINGERPRINT: &str = "default-fingerprint";

fn default_fingerprint() -> String {
    DEFAULT_FINGERPRINT.to_owned()
}

/// One product line of a submitted cart, at the price its item was added with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderedProduct {
    /// The cart item.
    pub item_id: Uuid,
    /// Its product.
    pub product_id: Uuid,
    /// The item's own price.
    pub price: Decimal,
}

/// Every event of the cart example.
///
/// `CartStream` (generated) holds the events that change one cart; every
/// cart command folds it. `PublicationStream` holds `CartPublished`.
// The names are the book's; the shared prefix is part of them.
#[allow(clippy::enum_variant_names)]
#[derive(Event, Debug, Clone, PartialEq)]
#[stream(
    CartStream,
    [CartCreated, CartItemAdded, CartItemRemoved, CartCleared, ItemArchived, CartSubmitted]
)]
#[stream(PublicationStream, [CartPublished])]
pub enum CartEvent {
    /// A cart came to be (with its first item).
    CartCreated {
        /// The cart.
        #[id]
        cart_id: Uuid,
    },
    /// An item was put into a cart.
    CartItemAdded {
        /// The cart.
        #[id]
        cart_id: Uuid,
        /// The item (unique within the cart).
        #[id]
        item_id: Uuid,
        /// The product the item is of.
        #[id]
        product_id: Uuid,
        /// Free text.
        description: String,
        /// Free text (an image URL in the book).
        image: String,
        /// The price the item was added with.
        price: Decimal,
        /// The client's fingerprint (ch. 28); old events without one read as
        /// [`DEFAULT_FINGERPRINT`].
        #[serde(default = "default_fingerprint")]
        fingerprint: String,
    },
    /// An item was taken out of a cart.
    CartItemRemoved {
        /// The cart.
        #[id]
        cart_id: Uuid,
        /// The item.
        #[id]
        item_id: Uuid,
    },
    /// Every item was taken out of a cart.
    CartCleared {
        /// The cart.
        #[id]
        cart_id: Uuid,
    },
    /// An item was taken out of a cart because its product's price changed.
    ItemArchived {
        /// The cart.
        #[id]
        cart_id: Uuid,
        /// The item.
        #[id]
        item_id: Uuid,
        /// Its product.
        #[id]
        product_id: Uuid,
        /// The id of the `PriceChanged` event that caused it.
        price_changed_event: Uuid,
    },
    /// A cart was submitted; it cannot change any more.
    CartSubmitted {
        /// The cart.
        #[id]
        cart_id: Uuid,
        /// The remaining items, in the order they were added, each at its own
        /// price.
        ordered_products: Vec<OrderedProduct>,
        /// The sum of their prices.
        total_price: Decimal,
    },
    /// A submitted cart was published to `published-carts`.
    CartPublished {
        /// The cart.
        #[id]
        cart_id: Uuid,
    },
    /// A submitted cart could not be published within the job's deadline.
    CartPublicationFailed {
        /// The cart.
        #[id]
        cart_id: Uuid,
        /// The last error.
        reason: String,
    },
    /// A product's stock changed.
    InventoryChanged {
        /// The product.
        #[id]
        product_id: Uuid,
        /// Units in stock.
        inventory: i64,
    },
    /// A product's price changed.
    PriceChanged {
        /// The product.
        #[id]
        product_id: Uuid,
        /// The price before.
        old_price: Decimal,
        /// The price now.
        new_price: Decimal,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_item_added_payload_without_fingerprint_still_reads() {
        let payload = br#"{"cart_id":"00000000-0000-0000-0000-000000000001",
            "item_id":"00000000-0000-0000-0000-000000000002",
            "product_id":"00000000-0000-0000-0000-000000000003",
            "description":"d","image":"i","price":"9.99"}"#;
        let event = CartEvent::decode("CartItemAdded", payload).expect("old payload decodes");
        match event {
            CartEvent::CartItemAdded {
                fingerprint, price, ..
            } => {
                assert_eq!(fingerprint, DEFAULT_FINGERPRINT);
                assert_eq!(price.to_string(), "9.99");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn prices_are_stored_as_strings_and_tags_come_from_ids() {
        let event = CartEvent::PriceChanged {
            product_id: Uuid::from_u128(7),
            old_price: "1.10".parse().unwrap(),
            new_price: "2.20".parse().unwrap(),
        };
        let json: serde_json::Value = serde_json::from_slice(&event.encode().unwrap()).unwrap();
        assert_eq!(json["old_price"], "1.10");
        assert_eq!(
            event.tags(),
            vec![dcb_core::Tag::new("product_id", Uuid::from_u128(7))]
        );
    }
}
