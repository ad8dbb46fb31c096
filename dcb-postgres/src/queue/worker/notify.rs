//! The worker set's `LISTEN` connection: NOTIFYs for its queues wake the
//! dispatcher.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::{watch, Notify};

use super::Shared;

/// Forwards NOTIFYs for our queues to the dispatcher. Missed ones (while
/// reconnecting) are covered by polling.
pub(super) async fn listen(
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let mut listener = loop {
        match connect_listener(&shared).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(error = %e, "work queue LISTEN failed; polling until it works");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    () = stopping(&mut stop) => return,
                }
            }
        }
    };
    loop {
        tokio::select! {
            () = stopping(&mut stop) => return,
            received = listener.recv() => match received {
                Ok(n) => {
                    if shared.queues.iter().any(|q| q == n.payload()) {
                        wake.notify_one();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "work queue LISTEN connection failed; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    // Notifications may have been missed meanwhile.
                    wake.notify_one();
                }
            }
        }
    }
}

/// Resolves once shutdown was requested; never when the handle was dropped
/// (detached workers run until the runtime ends).
pub(super) async fn stopping(stop: &mut watch::Receiver<Option<Duration>>) {
    if stop.wait_for(|s| s.is_some()).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn connect_listener(shared: &Shared) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(shared.queue.pool()).await?;
    listener.listen(shared.queue.channel()).await?;
    Ok(listener)
}
