//! A complete in-memory event store for tests, examples and embedded use.

use std::collections::HashSet;
use std::sync::RwLock;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::event::{EventRecord, SequencedEvent};
use crate::limits;
use crate::query::{AppendCondition, Query};
use crate::store::{AppendResult, Direction, EventStore, ReadOptions, ReadResult, StoreError};
use crate::tag::Position;

/// An [`EventStore`] held in memory.
///
/// Appends take a write lock, check the condition and push, so concurrent
/// appends are serialized and the store keeps the full contract: conditional
/// appends, atomic batches, gapless positions in commit order. Reads copy the
/// matching events out under a read lock.
///
/// ```
/// # tokio_test_block_on(async {
/// use dcb_core::{InMemoryEventStore, EventStore, EventRecord, EventMetadata, Query, ReadOptions, Tag};
/// let store = InMemoryEventStore::new();
/// let record = EventRecord {
///     event_type: "Opened".into(),
///     tags: vec![Tag::new("account", "a1")],
///     payload: b"{}".to_vec(),
///     metadata: EventMetadata::new(),
/// };
/// let appended = store.append(vec![record], None).await.unwrap();
/// assert_eq!(appended.first.get(), 1);
/// let (head, events) = store.read(&Query::all(), ReadOptions::forwards()).await.unwrap().collect().await.unwrap();
/// assert_eq!(head, Some(appended.last));
/// assert_eq!(events.len(), 1);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct InMemoryEventStore {
    inner: RwLock<Inner>,
    head: watch::Sender<Option<Position>>,
}

#[derive(Debug, Default)]
struct Inner {
    events: Vec<SequencedEvent>,
    ids: HashSet<uuid::Uuid>,
}

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        InMemoryEventStore {
            inner: RwLock::new(Inner::default()),
            head: watch::channel(None).0,
        }
    }

    /// A receiver that sees the head change after every append (for runners
    /// that wait for new events instead of polling).
    pub fn watch_head(&self) -> watch::Receiver<Option<Position>> {
        self.head.subscribe()
    }

    /// Every event, in order (a copy).
    pub fn all_events(&self) -> Vec<SequencedEvent> {
        self.lock_read().events.clone()
    }

    fn lock_read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated
        // (appends validate before they push), so a poisoned lock is usable.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn matches(query: &Query, event: &SequencedEvent) -> bool {
    query.matches(event.event_type().as_str(), event.tags())
}

#[async_trait]
impl EventStore for InMemoryEventStore {
    async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult, StoreError> {
        limits::check_query(query)?;
        let inner = self.lock_read();
        let head = inner.events.last().map(|e| e.position);
        let limit = options.limit.unwrap_or(usize::MAX);
        let selected: Vec<SequencedEvent> = if query.is_none() || limit == 0 {
            Vec::new()
        } else {
            // Positions are 1-based and gapless, so a position maps to an index.
            match options.direction {
                Direction::Forwards => {
                    let start = options.start.map_or(0, |p| p.0.saturating_sub(1) as usize);
                    inner
                        .events
                        .iter()
                        .skip(start)
                        .filter(|e| matches(query, e))
                        .take(limit)
                        .cloned()
                        .collect()
                }
                Direction::Backwards => {
                    let end = options.start.map_or(inner.events.len(), |p| {
                        (p.0 as usize).min(inner.events.len())
                    });
                    inner.events[..end]
                        .iter()
                        .rev()
                        .filter(|e| matches(query, e))
                        .take(limit)
                        .cloned()
                        .collect()
                }
            }
        };
        Ok(ReadResult::from_vec(head, selected))
    }

    async fn append(
        &self,
        mut events: Vec<EventRecord>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult, StoreError> {
        if events.is_empty() {
            return Err(StoreError::InvalidRequest(
                "an append needs at least one event".into(),
            ));
        }
        limits::check_records(&events)?;
        if let Some(condition) = &condition {
            limits::check_query(&condition.fail_if_events_match)?;
        }
        let mut inner = self.lock_write();
        if let Some(condition) = &condition {
            let start = condition.after.map_or(0, |p| p.0 as usize);
            let conflict = inner
                .events
                .iter()
                .skip(start)
                .any(|e| matches(&condition.fail_if_events_match, e));
            if conflict {
                return Err(StoreError::ConditionFailed {
                    after: condition.after,
                });
            }
        }
        let mut batch_ids = HashSet::with_capacity(events.len());
        for e in &events {
            let id = e.metadata.event_id;
            if inner.ids.contains(&id) || !batch_ids.insert(id) {
                return Err(StoreError::DuplicateEventId(id));
            }
        }
        let now = chrono::Utc::now();
        let first = Position(inner.events.len() as u64 + 1);
        crate::trace::stamp(&mut events, &tracing::Span::current());
        for record in events {
            let position = Position(inner.events.len() as u64 + 1);
            inner.ids.insert(record.metadata.event_id);
            inner.events.push(SequencedEvent {
                position,
                recorded_at: now,
                record,
            });
        }
        let last = Position(inner.events.len() as u64);
        drop(inner);
        self.head.send_replace(Some(last));
        Ok(AppendResult { first, last })
    }

    async fn head(&self) -> Result<Option<Position>, StoreError> {
        Ok(self.lock_read().events.last().map(|e| e.position))
    }
}
