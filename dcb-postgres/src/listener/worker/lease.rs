//! Leadership of one listener: a lease row taken without waiting, renewed
//! by a heartbeat every third of its time to live, given up at shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::listener::shared::{ListenerShared, RunnerShared};

/// The lease as this instance knows it.
pub(super) struct Lease {
    /// Conservative local expiry: the renewal was sent before the server
    /// stamped it, minus a margin for clock drift.
    valid_until: Mutex<Instant>,
    pub(super) lost: AtomicBool,
}

impl Lease {
    pub(super) fn new(valid_until: Instant) -> Self {
        Lease {
            valid_until: Mutex::new(valid_until),
            lost: AtomicBool::new(false),
        }
    }

    fn extend(&self, valid_until: Instant) {
        let mut current = self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        if valid_until > *current {
            *current = valid_until;
        }
    }

    pub(super) fn is_valid(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
            && Instant::now() < *self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) fn lease_ms(runner: &RunnerShared) -> i64 {
    i64::try_from(runner.config.lease_ttl.as_millis()).unwrap_or(i64::MAX)
}

/// When a lease renewed by a request sent at `sent` surely still holds.
pub(super) fn local_expiry(runner: &RunnerShared, sent: Instant) -> Instant {
    let ttl = runner.config.lease_ttl;
    sent + ttl - ttl / 10
}

/// Takes the lease if it is free, expired or ours; returns the checkpoint
/// and its generation, `None` when another instance leads.
pub(super) async fn acquire(
    runner: &RunnerShared,
    listener: &ListenerShared,
) -> Result<Option<(u64, i64)>, sqlx::Error> {
    let row: Option<(i64, i64)> = sqlx::query_as(&runner.sql.acquire)
        .bind(listener.id())
        .bind(&runner.config.instance_id)
        .bind(lease_ms(runner))
        .fetch_optional(&runner.pool)
        .await?;
    Ok(row.map(|(position, generation)| (u64::try_from(position).unwrap_or(0), generation)))
}

/// Renews the lease every third of its time to live until aborted or lost.
pub(super) async fn heartbeat(
    runner: Arc<RunnerShared>,
    listener: Arc<ListenerShared>,
    lease: Arc<Lease>,
) {
    let every = runner.config.lease_ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        let sent = Instant::now();
        let renewed: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(&runner.sql.renew)
            .bind(listener.id())
            .bind(&runner.config.instance_id)
            .bind(lease_ms(&runner))
            .fetch_optional(&runner.pool)
            .await;
        match renewed {
            Ok(Some(_)) => lease.extend(local_expiry(&runner, sent)),
            Ok(None) => {
                lease.lost.store(true, Ordering::SeqCst);
                listener.poke.notify_one();
                return;
            }
            Err(error) => tracing::warn!(%error, "could not renew the lease"),
        }
    }
}

/// Gives the lease up (graceful shutdown), so another instance takes over
/// at once.
pub(super) async fn release(runner: &RunnerShared, listener: &ListenerShared) {
    let released = sqlx::query(&runner.sql.release)
        .bind(listener.id())
        .bind(&runner.config.instance_id)
        .execute(&runner.pool)
        .await;
    if let Err(error) = released {
        tracing::warn!(%error, "could not release the lease; it expires on its own");
    }
}
