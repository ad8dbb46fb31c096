#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod error;
pub mod events;
pub mod kafka;
pub mod metrics;
mod ops;
mod sql;
pub mod status;
pub mod telemetry;
mod web;

pub use error::Error;
pub use ops::{migrate, redact, Components, OpenError, Ops};
pub use web::{Console, ConsoleError, MIN_TOKEN_BYTES};
