//! Listener runners: feed [`Listener`](dcb_core::Listener)s and
//! [`TransactionalListener`](dcb_core::TransactionalListener)s the events
//! they query, in position order and in batches, with a checkpoint per
//! listener in Postgres.
//!
//! - **Transactional** listeners get the [`PgTransaction`] in which their
//!   checkpoint advances: read-model writes and the checkpoint commit
//!   together, so a Postgres read model is updated exactly once.
//! - **At-least-once** listeners may do anything; the checkpoint advances
//!   after the batch is handled, so after a crash an event may come again.
//!
//! One instance leads each listener at a time (a lease row renewed by
//! heartbeat; every checkpoint write is fenced on it). The leader wakes on the
//! store's `NOTIFY` and polls as a fallback.
//!
//! # Failures
//! A failing handler is retried with capped exponential backoff (the
//! runner's [`Backoff`]). Whether the event is eventually *parked*
//! (recorded with its error in `{schema}.parked_events`, and the listener
//! moves on) depends on the listener's [`ListenerOptions`] and on whether
//! the failure is *permanent* (the event does not decode, the handler
//! returned a [`Permanent`] error or panicked, or PostgreSQL refused the
//! data: SQLSTATE class 22 or 23):
//! - a **transactional** listener (default options) blocks on a transient
//!   failure — a read model must not miss an event because its database was
//!   away — and parks an event after
//!   [`DEFAULT_PARK_PERMANENT_AFTER`] permanent failures, so one bad event
//!   never stops it for every other one;
//! - an **at-least-once** listener parks after [`DEFAULT_PARK_AFTER`]
//!   failures (sooner when permanent);
//! - a listener with [`ListenerOptions::blocking`] never parks.
//!
//! A listener that blocks says so: its status is `Blocked`, with the
//! failing position and the error. An operator gets past one event with
//! [`ListenerAdmin::request_skip`] (the event is parked as skipped and the
//! checkpoint moves on), runs the handler again on a parked event with
//! [`ListenerAdmin::request_retry`], or rebuilds the read model.
//!
//! # Operating listeners
//! [`RunnerHandle`] (what [`ListenerRunner::start`] returns) reports status,
//! waits for catch-up, resets and rebuilds its listeners, and shuts down
//! gracefully. [`ListenerAdmin`] does the operators' part from any process
//! that has a pool: every listener's status, parked events, and requests
//! (reset, rebuild, retry, skip) that the listener's live leader carries
//! out wherever it runs, with their outcome and a rebuild's progress in the
//! database.
//!
//! ```no_run
//! use dcb_core::{BoxError, Sequenced, TransactionalListener};
//! use dcb_postgres::listener::{PgTransaction, RunnerConfig};
//! use dcb_postgres::PgEventStore;
//! # #[derive(Debug)] struct Opened;
//! # impl dcb_core::Event for Opened {
//! #   const SCHEMA: &'static [dcb_core::EventSchema] = &[];
//! #   fn event_type(&self) -> dcb_core::EventType { "Opened".into() }
//! #   fn tags(&self) -> Vec<dcb_core::Tag> { vec![] }
//! #   fn encode(&self) -> Result<Vec<u8>, dcb_core::CodecError> { Ok(vec![]) }
//! #   fn decode(_: &str, _: &[u8]) -> Result<Self, dcb_core::CodecError> { Ok(Opened) }
//! # }
//!
//! struct OpenedCount;
//!
//! #[async_trait::async_trait]
//! impl TransactionalListener<PgTransaction> for OpenedCount {
//!     type Event = Opened;
//!     fn id(&self) -> &str { "opened-count" }
//!     async fn handle(&self, tx: &mut PgTransaction, _: Sequenced<Opened>) -> Result<(), BoxError> {
//!         sqlx::query("UPDATE opened_count SET n = n + 1").execute(&mut **tx).await?;
//!         Ok(())
//!     }
//!     async fn reset(&self, tx: &mut PgTransaction) -> Result<(), BoxError> {
//!         sqlx::query("UPDATE opened_count SET n = 0").execute(&mut **tx).await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgEventStore::connect("postgres://postgres@127.0.0.1:54329/postgres").await?;
//! let runner = store
//!     .listeners()
//!     .config(RunnerConfig::default())
//!     .transactional(OpenedCount)
//!     .start()
//!     .await?;
//! let head = dcb_core::EventStore::head(&store).await?.unwrap_or_default();
//! runner.wait_until("opened-count", head).await?;
//! println!("{:?}", runner.status("opened-count").await?);
//! runner.shutdown().await;
//! # Ok(()) }
//! ```

mod admin;
mod config;
mod error;
mod failure;
mod handle;
mod handler;
mod notify;
mod runner;
mod shared;
mod sql;
mod status;
mod worker;

pub use dcb_core::{Backoff, ListenerState, DEFAULT_PARK_AFTER};

pub use admin::ListenerAdmin;
pub use config::{DeliveryMode, ListenerOptions, RunnerConfig, DEFAULT_PARK_PERMANENT_AFTER};
pub use error::ListenerError;
pub use failure::Permanent;
pub use handle::RunnerHandle;
pub use runner::{ListenerRunner, MAX_ID_BYTES};
pub use sql::{COMPONENT, STEPS};
pub use status::{
    ListenerRequest, ListenerStatus, ParkedEvent, RebuildProgress, RequestId, RequestKind,
    RequestState,
};

/// The transaction a [`TransactionalListener`](dcb_core::TransactionalListener)
/// receives: the one in which its checkpoint advances. Write through
/// `&mut **tx`.
pub type PgTransaction = sqlx::Transaction<'static, sqlx::Postgres>;
