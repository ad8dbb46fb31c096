//! Wiring: the projection, the automation and the mail queue on one
//! store, started and stopped together (what a service's `main` does).

use std::time::Duration;

use dcb_core::{BoxError, DecisionMaker};
use dcb_postgres::PgEventStore;
use dcb_postgres::listener::RunnerHandle;
use dcb_postgres::queue::WorkersHandle;

use crate::projection::{self, SeatsProjection};
use crate::tickets::{EnqueueMail, IssueTickets, MailTickets, Outbox};

/// The running listeners and workers.
pub struct Services {
    /// The listener runner (projection, automation, enqueueing listener).
    pub listeners: RunnerHandle,
    /// The mail workers.
    pub workers: WorkersHandle,
    /// Where the mails went.
    pub outbox: Outbox,
}

/// Migrates the read model and the queue, and starts the listeners and the
/// workers on `store`.
///
/// # Errors
/// The database cannot be reached or migrated.
pub async fn start(store: &PgEventStore) -> Result<Services, BoxError> {
    projection::migrate(store.pool()).await?;
    let queue = store.queue();
    queue.migrate().await?;
    let listeners = store
        .listeners()
        .transactional(SeatsProjection)
        .at_least_once(IssueTickets::new(DecisionMaker::new(store.clone())))
        .transactional(EnqueueMail::new(queue))
        .start()
        .await?;
    let outbox = Outbox::default();
    let workers = store
        .workers()
        .register(MailTickets {
            outbox: outbox.clone(),
        })
        .concurrency(4)
        .start()
        .await?;
    Ok(Services {
        listeners,
        workers,
        outbox,
    })
}

impl Services {
    /// Stops the workers (running jobs get 10 s) and the listeners.
    pub async fn shutdown(self) {
        self.workers.shutdown(Duration::from_secs(10)).await;
        self.listeners.shutdown().await;
    }
}
