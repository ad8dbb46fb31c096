//! The writer's connections, each with the identity of its server process,
//! so that after a lost reply the writer can end that process and know the
//! batch it ran is finished, committed or not, before it looks.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, Row};

/// One connection of the writer and the server process behind it.
pub(crate) struct Session {
    pub(crate) conn: PgConnection,
    pub(crate) backend: Backend,
    /// Whether the server is a standby (then the writer must not use it).
    pub(crate) in_recovery: bool,
}

/// A server process: its pid and when it started (a pid alone may be reused
/// by a later process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backend {
    pub(crate) pid: i32,
    pub(crate) started: DateTime<Utc>,
}

impl Session {
    /// Connects and learns the server process's identity, and whether the
    /// server is a standby (in the same round trip).
    ///
    /// # Errors
    /// The connection or the identity query failed.
    pub(crate) async fn open(options: &PgConnectOptions) -> Result<Session, sqlx::Error> {
        let mut conn = options.connect().await?;
        let row = sqlx::query(
            "SELECT pg_backend_pid(), backend_start, pg_is_in_recovery() FROM pg_stat_activity \
             WHERE pid = pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await?;
        let backend = Backend {
            pid: row.try_get(0)?,
            started: row.try_get(1)?,
        };
        let in_recovery = row.try_get(2)?;
        Ok(Session {
            conn,
            backend,
            in_recovery,
        })
    }

    /// Closes the connection, best effort (a broken one is just dropped).
    pub(crate) async fn close(self) {
        let _ = self.conn.close().await;
    }
}
