//! A price the cart must have seen: a narrower validation query.
//!
//! **Rule.** A shopper adds a product at the price they were shown. If the
//! price changed since, the add is refused (the client shows the new price
//! and asks again); it must never commit at a price that was no longer
//! current.
//!
//! **Boundary.** The state reads the cart (`cart:<id>`: how many items) and
//! the product (`product:<id>`: listing, price changes and renames, since the
//! item keeps the product's name). The append condition is narrower:
//! [`AddItem::validation_query`] checks the cart and the product's *price*
//! events only, so a concurrent rename (display data) never forces the add
//! to read and decide again, while a concurrent price change always does.
//!
//! **Why aggregates struggle.** The price belongs to the product, the item
//! to the cart. A `Cart` aggregate cannot lock the `Product` it reads, so it
//! checks a price that may change before its own commit; making the product
//! part of the cart's transaction (or the cart part of the product's)
//! serializes every cart holding a popular product.

use dcb_core::{Decision, DecisionState, Event, Query, StateMutate, StateQuery};

/// Most items in one cart.
pub const MAX_ITEMS: usize = 5;

/// Every event of the pattern.
#[derive(Event, Debug, Clone, PartialEq, Eq)]
#[stream(ProductStream, [ProductListed, PriceChanged, ProductRenamed])]
#[stream(CartStream, [ItemAdded])]
pub enum ShopEvent {
    /// A product is for sale.
    ProductListed {
        /// The product.
        #[id]
        product: String,
        /// Its name.
        name: String,
        /// Its price.
        price_cents: u64,
    },
    /// A product's price changed.
    PriceChanged {
        /// The product.
        #[id]
        product: String,
        /// The new price.
        price_cents: u64,
    },
    /// A product was renamed (display data: carts keep the name they added).
    ProductRenamed {
        /// The product.
        #[id]
        product: String,
        /// The new name.
        name: String,
    },
    /// An item was put into a cart at the product's current price.
    ItemAdded {
        /// The cart.
        #[id]
        cart: String,
        /// The product.
        #[id]
        product: String,
        /// The product's name when added.
        name: String,
        /// The price it was added at.
        price_cents: u64,
    },
}

/// A broken shop rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShopError {
    /// No such product is listed.
    #[error("the product is not listed")]
    UnknownProduct,
    /// The product is listed already.
    #[error("the product is already listed")]
    AlreadyListed,
    /// The shopper saw another price than the current one.
    #[error("the price changed to {now_cents} cents")]
    PriceChangedSince {
        /// The current price.
        now_cents: u64,
    },
    /// The cart holds [`MAX_ITEMS`] items.
    #[error("the cart is full")]
    CartFull,
}

/// A product as the shop shows it: folded from `product:<id>`.
#[derive(StateQuery, Clone, Debug, PartialEq, Eq)]
#[state_query(ProductStream)]
pub struct Product {
    #[id]
    product: String,
    listed: bool,
    name: String,
    price_cents: u64,
}

impl Product {
    /// The state of `product` before any event.
    pub fn new(product: &str) -> Self {
        Product {
            product: product.to_owned(),
            listed: false,
            name: String::new(),
            price_cents: 0,
        }
    }
}

impl StateMutate for Product {
    fn mutate(&mut self, event: ProductStream) {
        match event {
            ProductStream::ProductListed {
                name, price_cents, ..
            } => {
                self.listed = true;
                self.name = name;
                self.price_cents = price_cents;
            }
            ProductStream::PriceChanged { price_cents, .. } => self.price_cents = price_cents,
            ProductStream::ProductRenamed { name, .. } => self.name = name,
        }
    }
}

/// How full a cart is: folded from `cart:<id>`.
#[derive(StateQuery, Clone, Debug, PartialEq, Eq)]
#[state_query(CartStream)]
pub struct Cart {
    #[id]
    cart: String,
    items: usize,
}

impl Cart {
    /// The state of `cart` before any event.
    pub fn new(cart: &str) -> Self {
        Cart {
            cart: cart.to_owned(),
            items: 0,
        }
    }
}

impl StateMutate for Cart {
    fn mutate(&mut self, event: CartStream) {
        let CartStream::ItemAdded { .. } = event;
        self.items += 1;
    }
}

/// Lists a product at a price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListProduct {
    /// The product.
    pub product: String,
    /// Its name.
    pub name: String,
    /// Its price.
    pub price_cents: u64,
}

impl Decision for ListProduct {
    type Event = ShopEvent;
    type StateQuery = Product;
    type Error = ShopError;

    fn state_query(&self) -> Product {
        Product::new(&self.product)
    }

    fn process(&self, product: &Product) -> Result<Vec<ShopEvent>, ShopError> {
        if product.listed {
            return Err(ShopError::AlreadyListed);
        }
        Ok(vec![ShopEvent::ProductListed {
            product: self.product.clone(),
            name: self.name.clone(),
            price_cents: self.price_cents,
        }])
    }
}

/// Changes a product's price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangePrice {
    /// The product.
    pub product: String,
    /// The new price.
    pub price_cents: u64,
}

impl Decision for ChangePrice {
    type Event = ShopEvent;
    type StateQuery = Product;
    type Error = ShopError;

    fn state_query(&self) -> Product {
        Product::new(&self.product)
    }

    fn process(&self, product: &Product) -> Result<Vec<ShopEvent>, ShopError> {
        if !product.listed {
            return Err(ShopError::UnknownProduct);
        }
        Ok(vec![ShopEvent::PriceChanged {
            product: self.product.clone(),
            price_cents: self.price_cents,
        }])
    }
}

/// Renames a product.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenameProduct {
    /// The product.
    pub product: String,
    /// The new name.
    pub name: String,
}

impl Decision for RenameProduct {
    type Event = ShopEvent;
    type StateQuery = Product;
    type Error = ShopError;

    fn state_query(&self) -> Product {
        Product::new(&self.product)
    }

    fn process(&self, product: &Product) -> Result<Vec<ShopEvent>, ShopError> {
        if !product.listed {
            return Err(ShopError::UnknownProduct);
        }
        Ok(vec![ShopEvent::ProductRenamed {
            product: self.product.clone(),
            name: self.name.clone(),
        }])
    }
}

/// Adds `product` to `cart` at the price the shopper saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddItem {
    /// The cart.
    pub cart: String,
    /// The product.
    pub product: String,
    /// The price the shopper was shown.
    pub seen_price_cents: u64,
}

impl Decision for AddItem {
    type Event = ShopEvent;
    type StateQuery = (Cart, Product);
    type Error = ShopError;

    fn state_query(&self) -> (Cart, Product) {
        (Cart::new(&self.cart), Product::new(&self.product))
    }

    /// The cart's events and the product's price events: the state also
    /// reads renames (for the item's name), but a rename cannot make this
    /// decision wrong, so it must not make it retry.
    fn validation_query(&self) -> Option<Query> {
        Some(
            self.state_query()
                .query()
                .without_types([ShopEventType::ProductRenamed]),
        )
    }

    fn process(&self, (cart, product): &(Cart, Product)) -> Result<Vec<ShopEvent>, ShopError> {
        if !product.listed {
            return Err(ShopError::UnknownProduct);
        }
        if product.price_cents != self.seen_price_cents {
            return Err(ShopError::PriceChangedSince {
                now_cents: product.price_cents,
            });
        }
        if cart.items >= MAX_ITEMS {
            return Err(ShopError::CartFull);
        }
        Ok(vec![ShopEvent::ItemAdded {
            cart: self.cart.clone(),
            product: self.product.clone(),
            name: product.name.clone(),
            price_cents: product.price_cents,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcb_core::testing::TestHarness;
    use dcb_core::DecisionState;

    fn listed(price_cents: u64) -> ShopEvent {
        ShopEvent::ProductListed {
            product: "p1".into(),
            name: "Teapot".into(),
            price_cents,
        }
    }

    fn price(price_cents: u64) -> ShopEvent {
        ShopEvent::PriceChanged {
            product: "p1".into(),
            price_cents,
        }
    }

    fn renamed(name: &str) -> ShopEvent {
        ShopEvent::ProductRenamed {
            product: "p1".into(),
            name: name.into(),
        }
    }

    fn added(cart: &str, name: &str, price_cents: u64) -> ShopEvent {
        ShopEvent::ItemAdded {
            cart: cart.into(),
            product: "p1".into(),
            name: name.into(),
            price_cents,
        }
    }

    fn add(cart: &str, seen_price_cents: u64) -> AddItem {
        AddItem {
            cart: cart.into(),
            product: "p1".into(),
            seen_price_cents,
        }
    }

    #[test]
    fn an_item_is_added_at_the_price_seen() {
        TestHarness::given([listed(100)])
            .when(add("c1", 100))
            .then([added("c1", "Teapot", 100)]);
    }

    #[test]
    fn an_outdated_price_is_refused_with_the_current_one() {
        TestHarness::given([listed(100), price(120)])
            .when(add("c1", 100))
            .then_err(ShopError::PriceChangedSince { now_cents: 120 });
    }

    #[test]
    fn the_item_keeps_the_current_name() {
        TestHarness::given([listed(100), renamed("Kettle")])
            .when(add("c1", 100))
            .then([added("c1", "Kettle", 100)]);
    }

    #[test]
    fn a_full_cart_takes_no_more() {
        let mut given = vec![listed(100)];
        given.extend((0..MAX_ITEMS).map(|_| added("c1", "Teapot", 100)));
        given.push(added("c2", "Teapot", 100));
        TestHarness::given(given)
            .when(add("c1", 100))
            .then_err(ShopError::CartFull);
    }

    #[test]
    fn the_validation_query_leaves_out_renames_but_not_prices() {
        let decision = add("c1", 100);
        let check = decision.validation_query().expect("a narrower check");
        let matches = |event: ShopEvent| check.matches_event(&event);
        assert!(matches(price(120)));
        assert!(matches(listed(100)));
        assert!(matches(added("c1", "Teapot", 100)));
        assert!(!matches(renamed("Kettle")));
        assert!(!matches(added("c2", "Teapot", 100)));
        // ...while the state reads renames.
        let state = decision.state_query().query();
        assert!(state.matches_event(&renamed("Kettle")));
    }
}
