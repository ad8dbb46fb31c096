#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod codec;
mod decision;
mod event;
pub mod fnv;
mod listener;
mod memory;
mod query;
pub mod runner;
pub mod snapshot;
mod state;
mod store;
mod tag;
pub mod testing;

pub use codec::{Codec, CodecError, JsonCodec};
pub use decision::{
    Decided, Decision, DecisionError, DecisionMaker, MakeOptions, RetryPolicy, UnknownEventPolicy,
    IDEMPOTENCY_TAG_KEY,
};
pub use event::{
    DecodeError, Event, EventMetadata, EventRecord, EventSchema, Sequenced, SequencedEvent,
};
pub use listener::{Listener, ReadModel, TransactionalListener};
pub use memory::InMemoryEventStore;
pub use query::{AppendCondition, Query, QueryItem};
pub use snapshot::{
    query_hash, snapshot_key, InMemorySnapshotStore, Snapshot, SnapshotStore, Snapshotted,
    StoredSnapshot,
};
pub use state::{state_query_for, DecisionState, StateMutate, StateQuery};
pub use store::{
    AppendResult, BoxError, Direction, EventStore, ReadOptions, ReadResult, StoreError,
};
pub use tag::{EventType, InvalidTag, Position, Tag};

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
}
