//! A read gate for racers: holds the next `n` reads of every store that
//! shares it until all `n` were made, so every racer decides on the same
//! state and appends under the same condition. A race then conflicts every
//! time, however the tasks are scheduled; without the gate a test could
//! pass with the racers running one after the other.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dcb_core::{
    AppendCondition, AppendResult, EventRecord, EventStore, Position, Query, ReadOptions,
    ReadResult, StoreError,
};
use tokio::sync::Barrier;

/// Shared by the stores of one race.
#[derive(Debug, Default)]
pub struct ReadGate {
    held: AtomicUsize,
    barrier: Mutex<Option<Arc<Barrier>>>,
}

impl ReadGate {
    /// A closed gate: reads pass until [`arm`](Self::arm).
    pub fn new() -> Arc<Self> {
        Arc::new(ReadGate::default())
    }

    /// Holds the next `n` reads until all `n` were made. Call it before
    /// releasing the racers, and make sure `n` reads will come (each racer
    /// reads once first: build decision makers with `.cache_entries(0)`,
    /// or their cache lets a decision skip its read).
    pub fn arm(&self, n: usize) {
        *self.barrier.lock().expect("gate lock") = Some(Arc::new(Barrier::new(n)));
        self.held.store(n, Ordering::SeqCst);
    }

    async fn pass(&self) {
        let held = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if held.is_ok() {
            let barrier = self.barrier.lock().expect("gate lock").clone();
            if let Some(barrier) = barrier {
                barrier.wait().await;
            }
        }
    }
}

/// `store` behind `gate`: its reads (after reading) wait at the gate.
#[derive(Clone, Debug)]
pub struct Gated<S> {
    /// The store.
    pub store: S,
    gate: Arc<ReadGate>,
}

impl<S> Gated<S> {
    /// `store` behind `gate`.
    pub fn new(store: S, gate: Arc<ReadGate>) -> Self {
        Gated { store, gate }
    }
}

#[async_trait]
impl<S: EventStore> EventStore for Gated<S> {
    async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult, StoreError> {
        let result = self.store.read(query, options).await;
        self.gate.pass().await;
        result
    }

    async fn append(
        &self,
        events: Vec<EventRecord>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult, StoreError> {
        self.store.append(events, condition).await
    }

    async fn head(&self) -> Result<Option<Position>, StoreError> {
        self.store.head().await
    }
}
