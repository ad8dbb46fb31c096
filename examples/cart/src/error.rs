//! The cart's business rules, as errors.

use crate::limits::InvalidValue;

/// A broken cart rule, or a value the cart does not accept.
/// [`CartError::code`] is the `error` field of the HTTP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CartError {
    /// The cart has no events.
    #[error("the cart does not exist")]
    CartDoesNotExist,
    /// The cart was submitted.
    #[error("the cart was submitted and cannot be altered")]
    CartCannotBeAltered,
    /// The cart holds three items.
    #[error("the cart already holds three items")]
    CartFull,
    /// The item is not in the cart (never added, removed, archived, cleared).
    #[error("the item is not in the cart")]
    ItemNotInCart,
    /// The item id is already in the cart.
    #[error("the item is already in the cart")]
    ItemAlreadyInCart,
    /// The cart has no items.
    #[error("an empty cart cannot be submitted")]
    CannotSubmitEmptyCart,
    /// The cart was submitted before.
    #[error("the cart was already submitted")]
    CannotSubmitCartTwice,
    /// The prices of the cart's items do not add up within `Decimal`'s
    /// range. Prices the cart accepts never get there (see
    /// [`limits`](crate::limits)); a history written without those bounds
    /// can.
    #[error("the total of the cart's prices is too large to compute")]
    TotalOverflow,
    /// A command carries a value outside the cart's
    /// [`limits`](crate::limits) (checked before any rule).
    #[error(transparent)]
    InvalidValue(#[from] InvalidValue),
}

impl CartError {
    /// The stable code of the rule (the variant's name; for an
    /// [`InvalidValue`], its [`code`](InvalidValue::code)).
    pub fn code(&self) -> &'static str {
        match self {
            CartError::CartDoesNotExist => "CartDoesNotExist",
            CartError::CartCannotBeAltered => "CartCannotBeAltered",
            CartError::CartFull => "CartFull",
            CartError::ItemNotInCart => "ItemNotInCart",
            CartError::ItemAlreadyInCart => "ItemAlreadyInCart",
            CartError::CannotSubmitEmptyCart => "CannotSubmitEmptyCart",
            CartError::CannotSubmitCartTwice => "CannotSubmitCartTwice",
            CartError::TotalOverflow => "TotalOverflow",
            CartError::InvalidValue(invalid) => invalid.code(),
        }
    }
}

/// The most items a cart holds.
pub const MAX_ITEMS: usize = 3;
