#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod backoff;
mod codec;
mod decision;
mod event;
pub mod fnv;
pub mod limits;
mod listener;
mod memory;
pub mod metrics;
mod query;
pub mod snapshot;
mod state;
mod store;
mod tag;
pub mod testing;
pub mod trace;

pub use backoff::{Backoff, MAX_DELAY};
pub use codec::{Codec, CodecError, JsonCodec};
pub use decision::{
    CacheStats, Decided, Decision, DecisionError, DecisionMaker, MakeOptions, RetryPolicy,
    UnknownEventPolicy, DEFAULT_CACHE_ENTRIES, IDEMPOTENCY_TAG_KEY,
};
pub use event::{
    DecodeError, Event, EventMetadata, EventRecord, EventSchema, Sequenced, SequencedEvent,
};
pub use listener::{Listener, ListenerState, ReadModel, TransactionalListener, DEFAULT_PARK_AFTER};
pub use memory::InMemoryEventStore;
pub use query::{AppendCondition, Query, QueryItem};
pub use snapshot::{
    query_digest, snapshot_key, InMemorySnapshotStore, Snapshot, SnapshotStore, Snapshotted,
    StoredSnapshot,
};
pub use state::{state_query_for, DecisionState, SequencedMutate, StateMutate, StateQuery};
pub use store::{
    AppendResult, BoxError, Direction, EventStore, EventStoreExt, ReadOptions, ReadResult,
    StoreError,
};
pub use tag::{EventType, InvalidTag, Position, Tag};

/// `#[async_trait]`, from the `async-trait` version this crate uses: put it on
/// `impl Listener for ..` and the other async traits of dcb, so applications
/// need not depend on `async-trait` themselves.
///
/// ```
/// use dcb_core::{async_trait, BoxError, Listener, Sequenced};
/// # #[derive(Debug, Clone, PartialEq, dcb_core::Event)]
/// # enum Ping { Pinged { #[id] id: u32 } }
/// struct LogPings;
///
/// #[async_trait]
/// impl Listener for LogPings {
///     type Event = Ping;
///     fn id(&self) -> &str { "log-pings" }
///     async fn handle(&self, event: Sequenced<Ping>) -> Result<(), BoxError> {
///         println!("{:?} at {}", event.event, event.position);
///         Ok(())
///     }
/// }
/// ```
pub use async_trait::async_trait;

/// `#[derive(Event)]`: see the crate docs.
#[cfg(feature = "macros")]
pub use dcb_macros::Event;
/// `#[derive(StateQuery)]`: see the crate docs.
#[cfg(feature = "macros")]
pub use dcb_macros::StateQuery;

/// Re-exports for generated code. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use serde;
    pub use std;

    /// Whether some event type of `schema` carries tag key `key` (a compile
    /// time check of `#[derive(StateQuery)]` ids).
    pub const fn carries_tag_key(schema: &[crate::EventSchema], key: &str) -> bool {
        let mut i = 0;
        while i < schema.len() {
            let keys = schema[i].tag_keys;
            let mut j = 0;
            while j < keys.len() {
                if str_eq(keys[j], key) {
                    return true;
                }
                j += 1;
            }
            i += 1;
        }
        false
    }

    const fn str_eq(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
}
