//! Optional snapshots of decision states: a folded state saved with the
//! position it is complete up to, so the next decision reads only the events
//! after it.
//!
//! A state opts in by implementing [`Snapshot`] (serde plus a schema
//! `VERSION`) and being wrapped in [`Snapshotted`] in its decision; the
//! [`DecisionMaker`](crate::DecisionMaker) uses a [`SnapshotStore`] once it is
//! given one with [`with_snapshots`](crate::DecisionMaker::with_snapshots).
//!
//! A snapshot is keyed by the state's [`NAME`](crate::StateQuery::NAME), its
//! [`VERSION`](Snapshot::VERSION) and a stable hash of its query (see
//! [`snapshot_key`]), so a state over other ids, a query that changed (an
//! event type added to the stream) or a fold whose version was bumped never
//! loads another's snapshot. A snapshot that no longer decodes, or decodes to
//! a state with another query, is ignored: the state is folded from scratch.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::CodecError;
use crate::event::{DecodeError, SequencedEvent};
use crate::query::Query;
use crate::state::{DecisionState, SequencedMutate, StateQuery};
use crate::store::StoreError;
use crate::tag::Position;

/// A saved state: its encoded form and the read head it is complete up to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// Every event the state's query matches at or below this position was
    /// folded into the payload, and none above it.
    pub position: Position,
    /// The encoded state ([`Snapshot::snapshot_bytes`]).
    pub payload: Vec<u8>,
}

/// Where snapshots live.
///
/// Object safe (through `async-trait`); the decision maker holds one as
/// `Arc<dyn SnapshotStore>`. Snapshots are an optimisation: the decision
/// maker treats every error of this trait as "no snapshot" (on load) or
/// logs it (on save), and never fails a decision because of it.
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// The snapshot saved under `key`, if any.
    ///
    /// # Errors
    /// Backend errors.
    async fn load(&self, key: &str) -> Result<Option<StoredSnapshot>, StoreError>;

    /// Saves `snapshot` under `key`, unless the snapshot already there has a
    /// greater position (snapshots never move back; one at the same position
    /// is replaced, which also replaces a snapshot that no longer decodes).
    ///
    /// # Errors
    /// Backend errors.
    async fn save(&self, key: &str, snapshot: StoredSnapshot) -> Result<(), StoreError>;
}

/// Snapshots in a map in memory (tests, single-process tools).
#[derive(Debug, Default)]
pub struct InMemorySnapshotStore {
    snapshots: Mutex<HashMap<String, StoredSnapshot>>,
}

impl InMemorySnapshotStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The snapshot under `key`, if any.
    pub fn get(&self, key: &str) -> Option<StoredSnapshot> {
        self.lock().get(key).cloned()
    }

    /// Puts `snapshot` under `key` unconditionally (tests use it to plant an
    /// old or corrupt snapshot).
    pub fn insert(&self, key: impl Into<String>, snapshot: StoredSnapshot) {
        self.lock().insert(key.into(), snapshot);
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.lock().keys().cloned().collect();
        keys.sort();
        keys
    }

    /// How many snapshots are stored.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no snapshot is stored.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, StoredSnapshot>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.snapshots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl SnapshotStore for InMemorySnapshotStore {
    async fn load(&self, key: &str) -> Result<Option<StoredSnapshot>, StoreError> {
        Ok(self.get(key))
    }

    async fn save(&self, key: &str, snapshot: StoredSnapshot) -> Result<(), StoreError> {
        let mut map = self.lock();
        match map.get(key) {
            Some(existing) if existing.position > snapshot.position => {}
            _ => {
                map.insert(key.to_string(), snapshot);
            }
        }
        Ok(())
    }
}

/// A state that can be snapshotted: serde for the payload (JSON by default)
/// and a schema version.
///
/// Bump [`VERSION`](Self::VERSION) whenever the fold ([`StateMutate::mutate`](crate::StateMutate::mutate))
/// or the fields change meaning: the version is part of the snapshot key, so
/// snapshots of the old fold are never loaded again. (A change of the query,
/// such as a new event type in the state's stream, changes the key by itself.)
///
/// Only what the events give belongs in the state; command parameters stay on
/// the decision, or a snapshot would carry one command's parameters into the
/// next.
pub trait Snapshot: SequencedMutate + Clone + Serialize + DeserializeOwned {
    /// The schema version of the snapshot payload and fold.
    const VERSION: u32 = 1;

    /// Encodes the state (JSON by default).
    ///
    /// # Errors
    /// The state does not serialize.
    fn snapshot_bytes(&self) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(self).map_err(|e| CodecError::Encode(e.to_string()))
    }

    /// Decodes a state encoded by [`snapshot_bytes`](Self::snapshot_bytes).
    ///
    /// # Errors
    /// The bytes do not decode as this state.
    fn from_snapshot_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError::Decode(e.to_string()))
    }
}

/// A state whose folds are snapshotted: use it as a decision's
/// `StateQuery` type. It derefs to the state, so `process` reads it as usual.
///
/// ```
/// # use dcb_core::{CodecError, Event, EventSchema, EventType, Query, StateMutate, StateQuery, Tag};
/// # #[derive(Debug)] struct Ev;
/// # impl Event for Ev {
/// #     const SCHEMA: &'static [EventSchema] = &[EventSchema { event_type: "Ticked", tag_keys: &["clock"] }];
/// #     fn event_type(&self) -> EventType { EventType::from_static("Ticked") }
/// #     fn tags(&self) -> Vec<Tag> { vec![] }
/// #     fn encode(&self) -> Result<Vec<u8>, CodecError> { Ok(vec![]) }
/// #     fn decode(_: &str, _: &[u8]) -> Result<Self, CodecError> { Ok(Ev) }
/// # }
/// use dcb_core::{DecisionState, Snapshot, Snapshotted};
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Ticks { clock: String, count: u64 }
/// impl StateQuery for Ticks {
///     const NAME: &'static str = "Ticks";
///     type Event = Ev;
///     fn query(&self) -> Query { Query::tags([Tag::new("clock", &self.clock)]) }
/// }
/// impl StateMutate for Ticks {
///     fn mutate(&mut self, _: Ev) { self.count += 1 }
/// }
/// impl Snapshot for Ticks {
///     const VERSION: u32 = 2;
/// }
///
/// let a = Snapshotted::new(Ticks { clock: "a".into(), count: 0 });
/// let b = Snapshotted::new(Ticks { clock: "b".into(), count: 0 });
/// let key = a.snapshot_key().unwrap();
/// assert!(key.starts_with("Ticks/v2/"));
/// assert_ne!(Some(key), b.snapshot_key());
/// assert_eq!(a.count, 0); // deref to the state
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshotted<S>(S);

impl<S> Snapshotted<S> {
    /// Wraps a state (with its ids set, as the decision builds it).
    pub fn new(state: S) -> Self {
        Snapshotted(state)
    }

    /// The state.
    pub fn into_inner(self) -> S {
        self.0
    }
}

impl<S> Deref for Snapshotted<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.0
    }
}

impl<S> DerefMut for Snapshotted<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.0
    }
}

impl<S> From<S> for Snapshotted<S> {
    fn from(state: S) -> Self {
        Snapshotted(state)
    }
}

impl<S: Snapshot> DecisionState for Snapshotted<S> {
    fn queries(&self) -> Vec<Query> {
        vec![StateQuery::query(&self.0)]
    }

    fn apply(&mut self, event: &SequencedEvent, queries: &[Query]) -> Result<(), DecodeError> {
        DecisionState::apply(&mut self.0, event, queries)
    }

    fn snapshot_key(&self) -> Option<String> {
        Some(snapshot_key(
            S::NAME,
            S::VERSION,
            &StateQuery::query(&self.0),
        ))
    }

    fn encode_snapshot(&self) -> Option<Vec<u8>> {
        match self.0.snapshot_bytes() {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::warn!(state = S::NAME, error = %e, "cannot encode a snapshot");
                None
            }
        }
    }

    fn restore_snapshot(&mut self, bytes: &[u8]) -> bool {
        // Decode into a fresh value and replace `self` only when it is whole
        // and describes the same boundary (guards against hash collisions
        // and a key reused by hand).
        match S::from_snapshot_bytes(bytes) {
            Ok(restored) if StateQuery::query(&restored) == StateQuery::query(&self.0) => {
                self.0 = restored;
                true
            }
            Ok(_) => {
                tracing::warn!(
                    state = S::NAME,
                    "ignoring a snapshot of the same key but another query"
                );
                false
            }
            Err(e) => {
                tracing::warn!(state = S::NAME, error = %e, "ignoring a snapshot that does not decode");
                false
            }
        }
    }
}

/// The key a snapshot of state `name` at schema `version` over `query` is
/// saved under: `{name}/v{version}/{digest}`, `digest` being [`query_digest`]
/// in 64 hex digits.
///
/// The digest is SHA-256, so two queries never share a key in practice,
/// even when an adversary chooses the ids that end up in the query's tags.
///
/// ```
/// use dcb_core::{snapshot_key, Query, Tag};
/// let a1 = Query::tags([Tag::new("account", "a1")]);
/// let a2 = Query::tags([Tag::new("account", "a2")]);
/// assert_ne!(snapshot_key("Account", 1, &a1), snapshot_key("Account", 1, &a2));
/// assert_ne!(snapshot_key("Account", 1, &a1), snapshot_key("Account", 2, &a1));
/// assert!(snapshot_key("Account", 1, &a1).starts_with("Account/v1/"));
/// ```
pub fn snapshot_key(name: &str, version: u32, query: &Query) -> String {
    let digest = query_digest(query);
    let mut key = format!("{name}/v{version}/");
    for byte in digest {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

/// A SHA-256 digest of `query` that is stable across builds, platforms and
/// Rust versions (over a canonical, length-prefixed encoding), and
/// insensitive to the order of items, types and tags and to duplicates,
/// since those do not change what the query matches.
pub fn query_digest(query: &Query) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut items: Vec<(Vec<&str>, Vec<&str>)> = query
        .items()
        .iter()
        .map(|item| {
            let mut types: Vec<&str> = item.types.iter().map(|t| t.as_str()).collect();
            types.sort_unstable();
            types.dedup();
            let mut tags: Vec<&str> = item.tags.iter().map(|t| t.as_str()).collect();
            tags.sort_unstable();
            tags.dedup();
            (types, tags)
        })
        .collect();
    items.sort_unstable();
    items.dedup();

    let mut hash = Sha256::new();
    let len = |n: usize| (n as u64).to_le_bytes();
    hash.update(len(items.len()));
    for (types, tags) in &items {
        hash.update(len(types.len()));
        for t in types {
            hash.update(len(t.len()));
            hash.update(t.as_bytes());
        }
        hash.update(len(tags.len()));
        for t in tags {
            hash.update(len(t.len()));
            hash.update(t.as_bytes());
        }
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::QueryItem;
    use crate::tag::Tag;

    #[test]
    fn snapshot_key_is_pinned() {
        // A change of this value orphans every stored snapshot: don't.
        let q = Query::from_items([QueryItem::new()
            .types(["Opened", "Deposited"])
            .tags([Tag::new("account", "a1")])]);
        assert_eq!(snapshot_key("Account", 3, &q), PINNED);
    }

    const PINNED: &str =
        "Account/v3/e360aec9b038176461b1a2a29434f551ec10bf16b9f8132676395db78cdd2a1e";

    #[test]
    fn query_digest_ignores_order_and_duplicates() {
        let a = Query::from_items([
            QueryItem::new()
                .types(["B", "A"])
                .tags([Tag::new("x", 1), Tag::new("y", 2)]),
            QueryItem::new().types(["C"]),
        ]);
        let b = Query::from_items([
            QueryItem::new().types(["C"]),
            QueryItem::new()
                .types(["A", "B", "A"])
                .tags([Tag::new("y", 2), Tag::new("x", 1)]),
        ]);
        assert_eq!(query_digest(&a), query_digest(&b));
        let c = Query::from_items([QueryItem::new().types(["A", "B"])]);
        assert_ne!(query_digest(&a), query_digest(&c));
        // Length prefixes keep boundaries: ["ab"] vs ["a", "b"].
        let d = Query::types(["ab"]);
        let e = Query::types(["a", "b"]);
        assert_ne!(query_digest(&d), query_digest(&e));
        assert_ne!(query_digest(&Query::none()), query_digest(&Query::all()));
    }
}
