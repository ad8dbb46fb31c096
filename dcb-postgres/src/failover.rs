//! Following the primary across a failover.
//!
//! sqlx connects to one host per URL (no multi-host URLs, no
//! `target_session_attrs`), so a store given several hosts finds the
//! primary itself: it asks every host `pg_is_in_recovery()` and points its
//! pools at the one that answers `false`
//! ([`PgPool::set_connect_options`]; new connections go there, broken ones
//! are dropped as they fail).
//!
//! A search starts when something suspects the primary (the writer could
//! not connect or lost a reply, a connection landed on a standby, a read
//! failed for want of a server) and when the monitor connection, which asks
//! the current primary `pg_is_in_recovery()` every
//! [`PgEventStoreBuilder::failover_check`](crate::PgEventStoreBuilder::failover_check),
//! fails. Until one host answers as the primary, searches repeat every
//! [`SEARCH_RETRY`]. A store with a single host has no such task.

use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::Notify;

/// How long one host may take to connect and answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause between searches that found no primary.
pub(crate) const SEARCH_RETRY: Duration = Duration::from_millis(200);

/// The hosts that may be the primary, and the pools that follow it.
pub(crate) struct Failover {
    hosts: Vec<PgConnectOptions>,
    /// Retargeted together: the store's pool and its I/O pool.
    pools: Vec<PgPool>,
    /// Which host the pools point at.
    current: Mutex<usize>,
    wake: Notify,
    check_every: Duration,
}

impl std::fmt::Debug for Failover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover")
            .field("hosts", &self.hosts.iter().map(label).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// `host:port` of a host, for logs and reports (never its password).
pub(crate) fn label(options: &PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}

impl Failover {
    /// `hosts[0]` is where the pools point now.
    pub(crate) fn new(
        hosts: Vec<PgConnectOptions>,
        pools: Vec<PgPool>,
        check_every: Duration,
    ) -> Self {
        Failover {
            hosts,
            pools,
            current: Mutex::new(0),
            wake: Notify::new(),
            check_every,
        }
    }

    /// Something failed in a way a moved primary would explain: look for it
    /// (at once, in the background).
    pub(crate) fn suspect(&self) {
        self.wake.notify_one();
    }

    /// The host the pools point at.
    pub(crate) fn current(&self) -> String {
        let current = *self.current.lock().unwrap_or_else(|e| e.into_inner());
        label(&self.hosts[current])
    }

    /// Watches the primary and searches when it is suspected, until the
    /// runtime stops.
    pub(crate) async fn run(self: std::sync::Arc<Self>) {
        let mut monitor: Option<PgConnection> = None;
        loop {
            let suspected = tokio::select! {
                _ = self.wake.notified() => true,
                _ = tokio::time::sleep(self.check_every) => false,
            };
            if !suspected && self.still_primary(&mut monitor).await {
                continue;
            }
            if let Some(conn) = monitor.take() {
                drop(conn);
            }
            while !self.search().await {
                tokio::time::sleep(SEARCH_RETRY).await;
            }
        }
    }

    /// Whether the current host still answers as the primary, on the
    /// monitor connection (opened when missing).
    async fn still_primary(&self, monitor: &mut Option<PgConnection>) -> bool {
        if monitor.is_none() {
            let options = self.pools[0].connect_options();
            match tokio::time::timeout(PROBE_TIMEOUT, options.connect()).await {
                Ok(Ok(conn)) => *monitor = Some(conn),
                _ => return false,
            }
        }
        let Some(conn) = monitor.as_mut() else {
            return false;
        };
        let answer = tokio::time::timeout(
            PROBE_TIMEOUT,
            sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()").fetch_one(conn),
        )
        .await;
        matches!(answer, Ok(Ok(false)))
    }

    /// Asks every host at once; points the pools at the primary if exactly
    /// one answers as such (or, if several do, keeps the current one among
    /// them). Returns whether a primary was found.
    async fn search(&self) -> bool {
        let answers = futures::future::join_all(self.hosts.iter().map(is_primary)).await;
        let primaries: Vec<usize> = answers
            .iter()
            .enumerate()
            .filter_map(|(i, primary)| primary.then_some(i))
            .collect();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let chosen = match primaries.as_slice() {
            [] => {
                tracing::debug!("no host answers as the primary yet");
                return false;
            }
            [one] => *one,
            several => {
                // Two writable primaries: the old one was not fenced. Stay
                // where the writer already is rather than flap.
                let names: Vec<String> = several.iter().map(|i| label(&self.hosts[*i])).collect();
                tracing::error!(
                    hosts = ?names,
                    "several hosts answer as the primary; stop the old primary before promoting \
                     a standby"
                );
                if several.contains(&*current) {
                    *current
                } else {
                    several[0]
                }
            }
        };
        if chosen != *current {
            tracing::warn!(
                from = %label(&self.hosts[*current]),
                to = %label(&self.hosts[chosen]),
                "the primary moved; the store follows it"
            );
            for pool in &self.pools {
                pool.set_connect_options(self.hosts[chosen].clone());
            }
            *current = chosen;
        }
        true
    }
}

/// Whether `host` answers, within [`PROBE_TIMEOUT`], as a server that is
/// not in recovery.
async fn is_primary(host: &PgConnectOptions) -> bool {
    let probe = async {
        let mut conn = host.connect().await?;
        let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok::<_, sqlx::Error>(!in_recovery)
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Ok(true))
    )
}
