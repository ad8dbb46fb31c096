//! Cross-crate tests for dcb.
//!
//! # The store contract suite
//!
//! [`contract`] holds one public async function per rule every
//! [`EventStore`](dcb_core::EventStore) backend must keep (reads, conditions,
//! atomicity, round trips, concurrency, the decision maker on top). A backend
//! runs all of them with one line in a test file:
//!
//! ```ignore
//! // tests/tests/memory_contract.rs
//! use dcb_core::InMemoryEventStore;
//! dcb_tests::store_contract_tests!(async { InMemoryEventStore::new() });
//! ```
//!
//! `store_contract_tests!(<async expr>)` expands to one
//! `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]` per case.
//! Each test evaluates the expression once and awaits it (`let store =
//! <expr>.await;`): it must yield a **fresh, empty** store
//! (`impl EventStore + 'static`), so cases never see each other's events.
//! Then it calls `dcb_tests::contract::<case>(store).await`, which panics with
//! a message naming the broken rule. Backend-specific setup (a fresh database,
//! migrations) goes in the expression:
//!
//! ```ignore
//! // the store owns its test database, which lives as long as the store
//! dcb_tests::store_contract_tests!(async { TestDatabase::create().await.into_store().await });
//! ```

pub mod bank;
pub mod contract;
pub mod gate;
pub mod instances;
pub mod read;

/// The workspace README's code, compiled and run as a doctest so the taste it
/// gives never goes stale.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct WorkspaceReadme;
