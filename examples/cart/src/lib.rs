//! The shopping cart of Martin Dilger's *Understanding Event Sourcing*
//! (chapters 21-28) on dcb: event sourcing with Dynamic Consistency
//! Boundaries, without aggregates.
//!
//! - [`events`]: the one event enum.
//! - [`slices`]: one module per slice (AddItem, RemoveItem, ClearCart,
//!   SubmitCart, ChangePrice, ChangeInventory, ArchiveItem with its
//!   automation, PublishCart; the read models CartItems, CartItems from DB,
//!   CartsWithProducts, Inventories), each with its tests.
//! - [`limits`]: the bounds on every text and number a command carries.
//! - [`http`]: the axum routes of the book's server.
//! - [`app`]: wiring (store, listeners, work queue, Kafka) for the binary and
//!   the integration tests.

#![warn(missing_docs)]

pub mod app;
pub mod db;
pub mod error;
pub mod events;
pub mod http;
pub mod kafka;
pub mod limits;
pub mod slices;

pub use error::CartError;
pub use events::{CartEvent, OrderedProduct};
