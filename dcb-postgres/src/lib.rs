#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

#[cfg(test)]
mod batch_tests;
mod components;
mod error;
#[cfg(test)]
mod explain_tests;
mod failover;
mod io_thread;
pub mod listener;
mod log_read;
pub mod metrics;
pub mod migrations;
mod position;
pub mod queue;
mod reader;
mod row;
pub mod snapshot;
mod sql;
mod standby;
mod store;
pub mod testing;
pub mod text;
mod writer;

pub use error::DatabaseError;
pub use standby::{StandbyLag, StandbyReader};
pub use store::{
    PgEventStore, PgEventStoreBuilder, DEFAULT_FAILOVER_CHECK, DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_OUTCOME_TIMEOUT, DEFAULT_SCHEMA, DEFAULT_STANDBY_CATCH_UP_WAIT, READ_PAGE_SIZE,
};
pub use writer::WriterStats;

/// Re-export of the `sqlx` version this crate uses, so a transactional
/// listener can write its read model (`dcb_postgres::sqlx::query(..)`) and
/// an application can open a pool without pinning `sqlx` itself.
pub use sqlx;
