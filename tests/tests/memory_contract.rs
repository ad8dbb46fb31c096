//! The store contract suite against the in-memory store.

use dcb_core::InMemoryEventStore;

dcb_tests::store_contract_tests!(async { InMemoryEventStore::new() });
