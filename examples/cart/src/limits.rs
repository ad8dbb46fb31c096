//! What the cart accepts: a bound on every text and number a command
//! carries, checked before anything is decided.
//!
//! The bounds exist for two reasons:
//! - **every accepted text can be stored by every read model**: PostgreSQL's
//!   `text` refuses the NUL character, and an event carrying one would stop
//!   a transactional read model on that event (for every cart, not only the
//!   sender's). Lengths are bounded so one item cannot be megabytes.
//! - **every sum is exact and cannot overflow**: a price is at most
//!   [`MAX_PRICE`] with at most [`MAX_PRICE_SCALE`] decimal places, so its
//!   mantissa stays below 10^15, and even millions of them add up exactly
//!   within `Decimal`'s 96 bits (a cart holds three). Sums are checked all
//!   the same ([`sum_prices`]): a history written before these bounds, or by
//!   another program, answers a clear error instead of a panic.
//!
//! | value | accepted |
//! |---|---|
//! | `description` | at most [`MAX_DESCRIPTION_BYTES`] bytes of UTF-8, no NUL |
//! | `image` | at most [`MAX_IMAGE_BYTES`] bytes of UTF-8, no NUL |
//! | `price`, `old_price`, `new_price` | 0 to [`MAX_PRICE`], at most [`MAX_PRICE_SCALE`] decimal places |
//! | `inventory` | [`MIN_INVENTORY`] to [`MAX_INVENTORY`] |
//!
//! ```
//! use cart::limits::{check_price, check_text, InvalidValue, MAX_DESCRIPTION_BYTES};
//! assert!(check_text("description", "Mug", MAX_DESCRIPTION_BYTES).is_ok());
//! let error = check_text("description", "a\0b", MAX_DESCRIPTION_BYTES).unwrap_err();
//! assert_eq!(error, InvalidValue::Nul { field: "description" });
//! assert_eq!(error.field(), "description");
//! assert!(check_price("price", "9.99".parse().unwrap()).is_ok());
//! assert!(check_price("price", "50000000000000000000000000000".parse().unwrap()).is_err());
//! ```

use rust_decimal::Decimal;

/// The longest item description, in bytes of UTF-8.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// The longest item image (a URL in the book), in bytes of UTF-8.
pub const MAX_IMAGE_BYTES: usize = 2048;
/// The highest price: one billion.
pub const MAX_PRICE: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);
/// The most decimal places of a price.
pub const MAX_PRICE_SCALE: u32 = 6;
/// The lowest stock level a product can report.
pub const MIN_INVENTORY: i64 = 0;
/// The highest stock level a product can report: one billion units.
pub const MAX_INVENTORY: i64 = 1_000_000_000;

/// A value outside what the cart accepts. [`field`](Self::field) names the
/// field; the message never repeats the value itself (it may hold anything).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    /// The text holds a NUL character.
    #[error("{field} contains a NUL character (\\u0000), which the cart cannot store")]
    Nul {
        /// The field.
        field: &'static str,
    },
    /// The text is too long.
    #[error("{field} is {bytes} bytes long; at most {max} bytes are accepted")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length in bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The price is below zero.
    #[error("{field} must not be negative")]
    NegativePrice {
        /// The field.
        field: &'static str,
    },
    /// The price is above [`MAX_PRICE`].
    #[error("{field} must be at most {max}")]
    PriceTooHigh {
        /// The field.
        field: &'static str,
        /// The limit.
        max: Decimal,
    },
    /// The price has too many decimal places.
    #[error("{field} has {scale} decimal places; at most {max} are accepted")]
    PriceTooPrecise {
        /// The field.
        field: &'static str,
        /// Its decimal places.
        scale: u32,
        /// The limit.
        max: u32,
    },
    /// The stock level is out of range.
    #[error("{field} must be between {min} and {max}")]
    InventoryOutOfRange {
        /// The field.
        field: &'static str,
        /// The lowest accepted.
        min: i64,
        /// The highest accepted.
        max: i64,
    },
}

impl InvalidValue {
    /// The field that holds the value.
    pub fn field(&self) -> &'static str {
        match self {
            InvalidValue::Nul { field }
            | InvalidValue::TooLong { field, .. }
            | InvalidValue::NegativePrice { field }
            | InvalidValue::PriceTooHigh { field, .. }
            | InvalidValue::PriceTooPrecise { field, .. }
            | InvalidValue::InventoryOutOfRange { field, .. } => field,
        }
    }

    /// The stable code of the HTTP answer: `InvalidText`, `InvalidPrice` or
    /// `InvalidInventory`.
    pub fn code(&self) -> &'static str {
        match self {
            InvalidValue::Nul { .. } | InvalidValue::TooLong { .. } => "InvalidText",
            InvalidValue::NegativePrice { .. }
            | InvalidValue::PriceTooHigh { .. }
            | InvalidValue::PriceTooPrecise { .. } => "InvalidPrice",
            InvalidValue::InventoryOutOfRange { .. } => "InvalidInventory",
        }
    }
}

/// Checks a free text: no NUL, at most `max_bytes` bytes.
///
/// # Errors
/// [`InvalidValue::Nul`] or [`InvalidValue::TooLong`].
pub fn check_text(field: &'static str, value: &str, max_bytes: usize) -> Result<(), InvalidValue> {
    if value.len() > max_bytes {
        return Err(InvalidValue::TooLong {
            field,
            bytes: value.len(),
            max: max_bytes,
        });
    }
    if value.contains('\0') {
        return Err(InvalidValue::Nul { field });
    }
    Ok(())
}

/// Checks a price: from 0 to [`MAX_PRICE`], at most [`MAX_PRICE_SCALE`]
/// decimal places.
///
/// # Errors
/// [`InvalidValue::NegativePrice`], [`InvalidValue::PriceTooHigh`] or
/// [`InvalidValue::PriceTooPrecise`].
pub fn check_price(field: &'static str, value: Decimal) -> Result<(), InvalidValue> {
    if value.is_sign_negative() {
        return Err(InvalidValue::NegativePrice { field });
    }
    if value > MAX_PRICE {
        return Err(InvalidValue::PriceTooHigh {
            field,
            max: MAX_PRICE,
        });
    }
    if value.scale() > MAX_PRICE_SCALE {
        return Err(InvalidValue::PriceTooPrecise {
            field,
            scale: value.scale(),
            max: MAX_PRICE_SCALE,
        });
    }
    Ok(())
}

/// Checks a stock level: from [`MIN_INVENTORY`] to [`MAX_INVENTORY`].
///
/// # Errors
/// [`InvalidValue::InventoryOutOfRange`].
pub fn check_inventory(field: &'static str, value: i64) -> Result<(), InvalidValue> {
    if (MIN_INVENTORY..=MAX_INVENTORY).contains(&value) {
        Ok(())
    } else {
        Err(InvalidValue::InventoryOutOfRange {
            field,
            min: MIN_INVENTORY,
            max: MAX_INVENTORY,
        })
    }
}

/// The sum of `prices`, or `None` when it does not fit in a `Decimal`
/// (never for prices [`check_price`] accepts; possible for a history written
/// without the bounds).
///
/// ```
/// use cart::limits::sum_prices;
/// use rust_decimal::Decimal;
/// let big: Decimal = "50000000000000000000000000000".parse().unwrap();
/// assert_eq!(sum_prices([Decimal::ONE, Decimal::TWO]), Some(Decimal::from(3)));
/// assert_eq!(sum_prices([big, big]), None);
/// ```
pub fn sum_prices(prices: impl IntoIterator<Item = Decimal>) -> Option<Decimal> {
    prices
        .into_iter()
        .try_fold(Decimal::ZERO, |sum, price| sum.checked_add(price))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn texts_are_bounded_and_free_of_nul() {
        assert!(check_text("image", "", MAX_IMAGE_BYTES).is_ok());
        assert!(check_text("image", &"é".repeat(1024), MAX_IMAGE_BYTES).is_ok());
        assert_eq!(
            check_text("image", &"é".repeat(1025), MAX_IMAGE_BYTES),
            Err(InvalidValue::TooLong {
                field: "image",
                bytes: 2050,
                max: MAX_IMAGE_BYTES
            })
        );
        let nul = check_text("description", "\0", MAX_DESCRIPTION_BYTES).unwrap_err();
        assert_eq!(nul.code(), "InvalidText");
        assert!(nul.to_string().starts_with("description contains a NUL"));
    }

    #[test]
    fn prices_are_bounded_in_sign_size_and_scale() {
        for ok in [
            "0",
            "-0",
            "0.000001",
            "9.99",
            "1000000000",
            "1000000000.000000",
        ] {
            assert_eq!(check_price("price", dec(ok)), Ok(()), "{ok}");
        }
        assert_eq!(dec("-0").to_string(), "0", "a negative zero reads as zero");
        for (bad, code) in [
            ("-0.01", "NegativePrice"),
            ("1000000000.000001", "PriceTooHigh"),
            ("50000000000000000000000000000", "PriceTooHigh"),
            ("0.0000001", "PriceTooPrecise"),
        ] {
            let error = check_price("new_price", dec(bad)).unwrap_err();
            assert!(format!("{error:?}").starts_with(code), "{bad}: {error:?}");
            assert_eq!((error.field(), error.code()), ("new_price", "InvalidPrice"));
        }
    }

    #[test]
    fn inventories_are_bounded() {
        assert!(check_inventory("inventory", 0).is_ok());
        assert!(check_inventory("inventory", MAX_INVENTORY).is_ok());
        assert!(check_inventory("inventory", -1).is_err());
        assert!(check_inventory("inventory", i64::MAX).is_err());
    }

    #[test]
    fn the_largest_accepted_prices_add_up_exactly() {
        let max = dec("999999999.999999");
        let sum = sum_prices(std::iter::repeat_n(max, 1_000_000)).expect("no overflow");
        assert_eq!(sum, Decimal::from(999_999_999_999_999_i64));
        assert_eq!(sum_prices([Decimal::MAX, Decimal::ONE]), None);
    }
}
