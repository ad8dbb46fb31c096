//! Every Postgres component, started from the store: the listener runner,
//! the work queue and its workers, the operators' views, snapshots. Each
//! uses the store's pool and schema.
//!
//! ```no_run
//! # async fn example(store: dcb_postgres::PgEventStore) -> Result<(), Box<dyn std::error::Error>> {
//! let listeners = store.listeners();        // add listeners, then .start()
//! let queue = store.queue();                // enqueue; migrate() once
//! let workers = store.workers();            // register processors, then .start()
//! let snapshots = store.snapshots();        // for DecisionMaker::with_snapshots
//! let jobs = store.queue_admin();           // jobs, counts, redrive, cancel
//! let status = store.listener_admin();      // listener status, reset, retry, skip
//! # Ok(()) }
//! ```

use crate::listener::{ListenerAdmin, ListenerRunner};
use crate::queue::{QueueAdmin, WorkQueue, Workers};
use crate::snapshot::PgSnapshotStore;
use crate::PgEventStore;

impl PgEventStore {
    /// A listener runner over this store: add listeners, then
    /// [`start`](ListenerRunner::start). Checkpoints live in the store's
    /// schema (on the primary); the runner wakes on the store's `NOTIFY`.
    /// When the store has standbys the listeners read their events there
    /// ([`ListenerRunner::read_from_primary`] keeps them on the primary).
    pub fn listeners(&self) -> ListenerRunner {
        let runner = ListenerRunner::from_parts(
            std::sync::Arc::new(self.clone()),
            self.pool().clone(),
            self.schema(),
            self.notify_channel(),
        );
        if self.has_standbys() {
            runner.read_from_standbys(self.standby_reader())
        } else {
            runner
        }
    }

    /// The operators' view of this store's listeners (status, parked
    /// events, reset and rebuild requests, retry and skip).
    pub fn listener_admin(&self) -> ListenerAdmin {
        ListenerAdmin::for_schema(self.pool().clone(), self.schema().to_owned())
    }

    /// The work queue in the store's schema (run
    /// [`migrate`](WorkQueue::migrate) once before use).
    pub fn queue(&self) -> WorkQueue {
        WorkQueue::for_schema(self.pool().clone(), self.schema().to_owned())
    }

    /// The operators' view of this store's work queue.
    pub fn queue_admin(&self) -> QueueAdmin {
        QueueAdmin::from_parts(self.pool().clone(), self.schema().to_owned())
    }

    /// Workers for [`queue`](Self::queue) whose processors append to this
    /// store: register processors, then [`start`](Workers::start).
    pub fn workers(&self) -> Workers {
        Workers::new(self.queue(), self.clone())
    }

    /// Snapshots in the store's schema (run
    /// [`migrate`](PgSnapshotStore::migrate) once before use).
    pub fn snapshots(&self) -> PgSnapshotStore {
        PgSnapshotStore::for_schema(self.pool().clone(), self.schema().to_owned())
    }
}
