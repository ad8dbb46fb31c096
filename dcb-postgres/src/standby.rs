//! [`StandbyReader`]: the log read from streaming standbys.
//!
//! Appends and decision reads stay on the primary: a decision must read the
//! newest state to append under its condition without a conflict. What only
//! follows the log — listeners, relays, read models, reports — can read a
//! standby instead and leave the primary to the writers.
//!
//! A standby never shows a gap: positions are assigned under the head lock
//! and committed in that order, and a standby applies the WAL in commit
//! order, so whatever it shows is a prefix of the log, head included (see
//! `log_read.rs`). It may show a shorter prefix than the primary: how much
//! shorter is [`StandbyReader::lag`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_core::{
    AppendCondition, AppendResult, EventRecord, EventStore, Position, Query, ReadOptions,
    ReadResult, StoreError,
};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tracing::Instrument;

use crate::log_read::{self, Source};
use crate::position::to_db;
use crate::PgEventStore;

/// How long a standby that failed a read is left out before it is tried
/// again.
const REST_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// One standby: its pool, and until when it is left out after a failure.
pub(crate) struct Standby {
    pub(crate) label: String,
    pub(crate) pool: PgPool,
    resting_until: Mutex<Option<Instant>>,
}

impl Standby {
    pub(crate) fn new(label: String, pool: PgPool) -> Self {
        Standby {
            label,
            pool,
            resting_until: Mutex::new(None),
        }
    }

    fn resting(&self) -> bool {
        self.resting_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    fn rest(&self) {
        *self.resting_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + REST_AFTER_FAILURE);
    }
}

/// What a store's standby reads share: the standbys, which one reads next,
/// and the newest head the primary announced.
pub(crate) struct Standbys {
    pub(crate) list: Vec<Standby>,
    next: AtomicUsize,
    /// The highest head the primary's `NOTIFY` announced (0: none yet).
    announced: AtomicU64,
    /// How long a read waits for a standby to show the announced head.
    catch_up_wait: Duration,
}

impl Standbys {
    pub(crate) fn new(list: Vec<Standby>, catch_up_wait: Duration) -> Self {
        Standbys {
            list,
            next: AtomicUsize::new(0),
            announced: AtomicU64::new(0),
            catch_up_wait,
        }
    }

    /// The standbys in the order the next read tries them: taking turns,
    /// those resting after a failure last.
    fn order(&self) -> Vec<&Standby> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.list.len();
        let mut order: Vec<&Standby> = (0..n).map(|i| &self.list[(start + i) % n]).collect();
        order.sort_by_key(|s| s.resting());
        order
    }
}

/// Follows the primary's head through its `NOTIFY`s (one per committed
/// batch, the new head as payload), so that a standby read knows which
/// head it should show. Runs until the runtime stops.
pub(crate) async fn follow_head(
    standbys: Arc<Standbys>,
    pool: PgPool,
    schema: String,
    channel: String,
) {
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                tracing::debug!(%error, "cannot LISTEN for the primary's head; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Notifications may have been missed, and after a failover the new
        // primary's head is the truth (an asynchronous standby may have
        // lost the old primary's last commits): start from the head as it is.
        match log_read::head(&pool, &schema).await {
            Ok(head) => standbys
                .announced
                .store(head.map_or(0, |h| h.0), Ordering::SeqCst),
            Err(error) => tracing::debug!(%error, "cannot read the primary's head"),
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if let Ok(head) = notification.payload().parse::<u64>() {
                        standbys.announced.fetch_max(head, Ordering::SeqCst);
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(%error, "LISTEN for the primary's head failed; reconnecting");
                    break;
                }
            }
        }
    }
}

/// How far one standby is behind the primary, as
/// [`StandbyReader::lag`] reports it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StandbyLag {
    /// The standby's `host:port`.
    pub standby: String,
    /// The head the standby shows.
    pub head: Option<Position>,
    /// The head of the primary.
    pub primary_head: Option<Position>,
    /// Events the primary has and the standby does not show yet.
    pub behind: u64,
    /// How long ago the first of those was recorded (zero when the standby
    /// is caught up): the standby's staleness in time.
    pub behind_time: Option<Duration>,
    /// Why the standby or the primary could not be asked, if so.
    pub error: Option<String>,
}

/// Reads the log from the store's standbys (see
/// [`PgEventStore::standby_reader`]).
///
/// - **Reads** ([`EventStore::read`], [`EventStore::head`]) go to a standby,
///   the standbys taking turns; a standby that fails a read is left out for
///   a second and the read goes to the next one, or to the primary when none
///   answers. Each read sees a gapless prefix of the log up to the head it
///   reports, which may be behind the primary's. When the primary has
///   announced a newer head (its `NOTIFY`), a read waits up to
///   [`PgEventStoreBuilder::standby_catch_up_wait`](crate::PgEventStoreBuilder::standby_catch_up_wait)
///   for the standby to show it, so a follower woken by that `NOTIFY` finds
///   the new events.
/// - **Appends** go to the primary (the store's writer), as
///   [`PgEventStore::append`](EventStore::append) would.
/// - A store without standbys gives a reader that reads the primary.
///
/// Do not make decisions from it: a decision made on a stale state still
/// cannot commit a conflict (the primary checks the condition), but it
/// fails and retries more.
#[derive(Clone)]
pub struct StandbyReader {
    store: PgEventStore,
    standbys: Option<Arc<Standbys>>,
}

impl std::fmt::Debug for StandbyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let standbys: Vec<&str> = self
            .standbys
            .iter()
            .flat_map(|s| s.list.iter().map(|s| s.label.as_str()))
            .collect();
        f.debug_struct("StandbyReader")
            .field("schema", &self.store.schema())
            .field("standbys", &standbys)
            .finish()
    }
}

impl StandbyReader {
    pub(crate) fn new(store: PgEventStore, standbys: Option<Arc<Standbys>>) -> Self {
        StandbyReader { store, standbys }
    }

    /// The store whose log this reads.
    pub fn store(&self) -> &PgEventStore {
        &self.store
    }

    /// Whether reads go to standbys (false: the store has none, they go to
    /// the primary).
    pub fn has_standbys(&self) -> bool {
        self.standbys.is_some()
    }

    /// How far each standby is behind the primary now: the heads both
    /// show, the events between, and how long ago the first of them was
    /// recorded. Empty without standbys.
    pub async fn lag(&self) -> Vec<StandbyLag> {
        let Some(standbys) = &self.standbys else {
            return Vec::new();
        };
        let schema = self.store.schema();
        let primary = log_read::head(self.store.pool(), schema).await;
        let mut lags = Vec::with_capacity(standbys.list.len());
        for standby in &standbys.list {
            let head = log_read::head(&standby.pool, schema).await;
            let mut lag = StandbyLag {
                standby: standby.label.clone(),
                head: head.as_ref().ok().copied().flatten(),
                primary_head: primary.as_ref().ok().copied().flatten(),
                behind: 0,
                behind_time: None,
                error: None,
            };
            match (&primary, &head) {
                (Ok(primary_head), Ok(head)) => {
                    let shown = head.map_or(0, |h| h.0);
                    lag.behind = primary_head.map_or(0, |h| h.0).saturating_sub(shown);
                    lag.behind_time = if lag.behind == 0 {
                        Some(Duration::ZERO)
                    } else {
                        self.recorded_ago(Position(shown + 1)).await
                    };
                }
                (Err(e), _) => lag.error = Some(format!("primary: {e}")),
                (_, Err(e)) => lag.error = Some(e.to_string()),
            }
            lags.push(lag);
        }
        lags
    }

    /// How long ago the event at `position` was recorded, on the primary.
    async fn recorded_ago(&self, position: Position) -> Option<Duration> {
        let secs: Option<f64> = sqlx::query_scalar(&format!(
            "SELECT extract(epoch FROM now() - recorded_at)::float8 FROM {}.events \
             WHERE position = $1",
            self.store.schema()
        ))
        .bind(to_db(position))
        .fetch_optional(self.store.pool())
        .await
        .ok()
        .flatten();
        secs.map(|s| Duration::from_secs_f64(s.clamp(0.0, 1e12)))
    }

    /// One read on `standby`, repeated (briefly) while the standby shows
    /// less than the head the primary announced before the read began.
    async fn read_on(
        &self,
        standbys: &Standbys,
        standby: &Standby,
        query: &Query,
        options: &ReadOptions,
    ) -> Result<ReadResult, StoreError> {
        let wanted = standbys.announced.load(Ordering::SeqCst);
        let deadline = Instant::now() + standbys.catch_up_wait;
        let mut pause = Duration::from_millis(1);
        loop {
            let source = Source {
                pool: &standby.pool,
                schema: self.store.schema(),
                batched: None,
            };
            let result = log_read::read(source, query, *options).await?;
            let shown = result.head.map_or(0, |h| h.0);
            if shown >= wanted || Instant::now() + pause > deadline {
                return Ok(result);
            }
            drop(result);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

#[async_trait]
impl EventStore for StandbyReader {
    async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult, StoreError> {
        let Some(standbys) = &self.standbys else {
            return self.store.read(query, options).await;
        };
        let span = tracing::debug_span!(
            "dcb.pg.standby_read",
            schema = %self.store.schema(),
            standby = tracing::field::Empty,
        );
        async {
            for standby in standbys.order() {
                tracing::Span::current().record("standby", standby.label.as_str());
                match self.read_on(standbys, standby, query, &options).await {
                    Ok(result) => return Ok(result),
                    Err(error) if error.is_unavailable() => {
                        tracing::debug!(%error, "standby read failed; trying the next");
                        standby.rest();
                    }
                    Err(error) => return Err(error),
                }
            }
            tracing::Span::current().record("standby", "primary");
            self.store.read(query, options).await
        }
        .instrument(span)
        .await
    }

    async fn append(
        &self,
        events: Vec<EventRecord>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult, StoreError> {
        self.store.append(events, condition).await
    }

    async fn head(&self) -> Result<Option<Position>, StoreError> {
        let Some(standbys) = &self.standbys else {
            return self.store.head().await;
        };
        for standby in standbys.order() {
            match log_read::head(&standby.pool, self.store.schema()).await {
                Ok(head) => return Ok(head),
                Err(error) if error.is_unavailable() => standby.rest(),
                Err(error) => return Err(error),
            }
        }
        self.store.head().await
    }
}
