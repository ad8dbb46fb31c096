//! The worker set in `{schema}.job_workers`: announced at start and every
//! [`EVERY`], retired at shutdown, so that anyone can tell which queues and
//! kinds are served; and the warning about ready jobs nobody serves.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use crate::queue::client::secs;

/// How often a worker set announces itself (and looks for ready jobs that
/// no worker serves).
pub(super) const EVERY: Duration = Duration::from_secs(10);

/// How long an announcement counts: a worker set that stopped announcing
/// (it died) is taken for gone after this.
const ALIVE_FOR: Duration = Duration::from_secs(35);

/// How often the same unserved (queue, kind) is warned about.
const WARN_EVERY: Duration = Duration::from_secs(300);

/// Records (or refreshes) this worker set. A failure is logged and
/// otherwise ignored: it only costs operators the view.
pub(super) async fn announce(shared: &Shared) {
    let done = sqlx::query(&shared.queue.sql.announce)
        .bind(&shared.worker_id)
        .bind(&shared.queues)
        .bind(&shared.kinds)
        .bind(secs(ALIVE_FOR))
        .execute(shared.queue.pool())
        .await;
    if let Err(error) = done {
        tracing::warn!(%error, "could not announce the worker set (is the queue migrated?)");
    }
}

/// Removes this worker set's record (graceful shutdown).
pub(super) async fn retire(shared: &Shared) {
    let done = sqlx::query(&shared.queue.sql.retire)
        .bind(&shared.worker_id)
        .execute(shared.queue.pool())
        .await;
    if let Err(error) = done {
        tracing::warn!(%error, "could not retire the worker set; its record expires on its own");
    }
}

/// Announces, then warns about ready jobs in this set's queues of kinds no
/// live worker set serves (each pair at most every [`WARN_EVERY`]).
pub(super) async fn tick(shared: &Shared, warned: &mut HashMap<(String, String), Instant>) {
    announce(shared).await;
    let unserved = match shared.admin.unserved().await {
        Ok(unserved) => unserved,
        Err(error) => {
            tracing::debug!(%error, "could not look for unserved jobs");
            return;
        }
    };
    let now = Instant::now();
    warned.retain(|_, at| now.duration_since(*at) < WARN_EVERY);
    for kind in unserved {
        if !shared.queues.contains(&kind.queue) {
            continue;
        }
        let key = (kind.queue.clone(), kind.kind.clone());
        if warned.contains_key(&key) {
            continue;
        }
        warned.insert(key, now);
        tracing::warn!(
            queue = %kind.queue,
            kind = %kind.kind,
            ready = kind.ready,
            oldest_run_at = ?kind.oldest_run_at,
            "ready jobs of a kind no running worker registered: nothing claims them until a \
             worker set registers a processor for it"
        );
    }
}
