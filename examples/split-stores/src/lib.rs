#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod ordering;
pub mod process;
pub mod shipping;

pub use process::{ProcessManagers, Stores};
