//! One batch from the call to the outcome of every request in it, whatever
//! fails on the way:
//!
//! - an event id already stored: the call is made again with the id lookup
//!   on, so only that request gets `DuplicateEventId`;
//! - a value the database refuses (a data error): the batch is split in two
//!   and each half committed on its own, again and again, so every innocent
//!   request commits and only the offender gets the error;
//! - a lost reply (the connection broke after the call was sent): the
//!   server process that ran the call is ended and awaited, so its
//!   transaction is over, committed or not; then the batch's event ids are
//!   looked up on another connection, and each request learns the truth:
//!   its positions, or that nothing of it was appended. Only when the
//!   database cannot be asked within the configured bound is the outcome
//!   reported as unknown.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dcb_core::{AppendCondition, AppendResult, EventRecord, StoreError};
use sqlx::{PgPool, Row};
use tokio::time::Instant;

use super::batch::{call_batch, Batch};
use super::session::{Backend, Session};
use crate::error::{backend, store_error_ref};
use crate::failover::Failover;
use crate::position::from_db_or_zero;

/// What one request of a batch is told.
pub(crate) type Outcome = Result<AppendResult, StoreError>;

/// One request of a batch: its events and condition.
#[derive(Clone, Copy)]
pub(crate) struct Part<'a> {
    pub(crate) events: &'a [EventRecord],
    pub(crate) condition: Option<&'a AppendCondition>,
}

/// Counts of what the writer did, for operators and tests.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) batches: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) splits: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) lost_replies: AtomicU64,
    pub(crate) resolved_committed: AtomicU64,
    pub(crate) resolved_not_appended: AtomicU64,
    pub(crate) unknown: AtomicU64,
}

/// What committing needs.
pub(crate) struct Committer {
    /// What it did so far.
    pub(crate) counters: Arc<Counters>,
    pub(crate) schema: String,
    pub(crate) channel: String,
    /// Connections to look a batch up on after a lost reply; the writer's
    /// own connections are opened with its connect options (which follow
    /// the primary across a failover).
    pub(crate) lookup: PgPool,
    /// How long the writer may try to find out what became of a batch
    /// whose reply was lost before it says the outcome is unknown.
    pub(crate) outcome_timeout: Duration,
    /// Follows the primary when the store has several hosts.
    pub(crate) failover: Option<Arc<Failover>>,
}

/// How one call of the batch function ended.
enum Call {
    /// Every request has its outcome.
    Done(Vec<Outcome>),
    /// The database refused a value of the batch; nothing was written.
    Refused(sqlx::Error),
}

impl Committer {
    /// Commits `parts`, in order, on `session` (opened when `None`, left
    /// `None` when it may be broken), and returns one outcome per part.
    pub(crate) async fn commit(
        &self,
        session: &mut Option<Session>,
        parts: &[Part<'_>],
    ) -> Vec<Outcome> {
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .requests
            .fetch_add(parts.len() as u64, Ordering::Relaxed);
        let mut outcomes: Vec<Option<Outcome>> = (0..parts.len()).map(|_| None).collect();
        // Ranges still to commit, in position order.
        let mut todo: VecDeque<Range<usize>> = VecDeque::new();
        todo.push_back(0..parts.len());
        while let Some(range) = todo.pop_front() {
            match self.call(session, &parts[range.clone()]).await {
                Call::Done(done) => {
                    for (slot, outcome) in outcomes[range].iter_mut().zip(done) {
                        *slot = Some(outcome);
                    }
                }
                Call::Refused(error) if range.len() > 1 => {
                    tracing::debug!(
                        %error,
                        requests = range.len(),
                        "the database refused a value of an append batch; splitting it"
                    );
                    self.counters.splits.fetch_add(1, Ordering::Relaxed);
                    let middle = range.start + range.len() / 2;
                    todo.push_front(middle..range.end);
                    todo.push_front(range.start..middle);
                }
                Call::Refused(error) => {
                    tracing::warn!(%error, "the database refused an append");
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    outcomes[range.start] = Some(Err(StoreError::InvalidRequest(format!(
                        "the database refused this append: {}",
                        database_message(&error)
                    ))));
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(backend("append", "no outcome was recorded"))))
            .collect()
    }

    /// One call of the batch function for `parts` (retried with the id
    /// lookup on after a duplicate id), resolved after a lost reply.
    async fn call(&self, session: &mut Option<Session>, parts: &[Part<'_>]) -> Call {
        let pairs: Vec<(&[EventRecord], Option<&AppendCondition>)> =
            parts.iter().map(|p| (p.events, p.condition)).collect();
        let batch = Batch::from_parts(&pairs);
        // Optimistic first: the call looks stored event ids up only after an
        // insert hit one (nothing of that call is written), so the usual
        // batch, with new ids only, skips a lookup per event.
        let mut check_ids = false;
        let mut retried_fresh = false;
        loop {
            let current = match session {
                Some(current) => current,
                None => match Session::open(&self.lookup.connect_options()).await {
                    Ok(opened) if opened.in_recovery => {
                        // The host taken for the primary is a standby (a
                        // failover moved the primary): nothing was sent.
                        opened.close().await;
                        self.suspect();
                        return Call::Done(parts.iter().map(|_| Err(on_a_standby())).collect());
                    }
                    Ok(opened) => session.insert(opened),
                    Err(e) => {
                        // Nothing was sent.
                        self.suspect();
                        let error = store_error_ref("connect for an append", &e);
                        return Call::Done(parts.iter().map(|_| Err(clone(&error))).collect());
                    }
                },
            };
            let process = current.backend;
            let result = call_batch(
                &mut current.conn,
                &self.schema,
                &self.channel,
                &batch,
                check_ids,
            )
            .await;
            let error = match result {
                Ok(rows) => match outcomes(&rows, parts) {
                    Ok(outcomes) => return Call::Done(outcomes),
                    // Committed, but the reply makes no sense: look it up.
                    Err(e) => e,
                },
                Err(e) => e,
            };
            match classify(&error) {
                Failure::DuplicateId if !check_ids => {
                    tracing::debug!("an event id of the batch is stored; looking ids up");
                    check_ids = true;
                }
                Failure::DuplicateId | Failure::RolledBack => {
                    let error = store_error_ref("append", &error);
                    return Call::Done(parts.iter().map(|_| Err(clone(&error))).collect());
                }
                Failure::Refused => return Call::Refused(error),
                Failure::ReadOnly => {
                    // The server became a standby under this session: it
                    // wrote nothing. Drop the session, find the primary.
                    if let Some(stale) = session.take() {
                        stale.close().await;
                    }
                    self.suspect();
                    return Call::Done(parts.iter().map(|_| Err(on_a_standby())).collect());
                }
                Failure::Unknown => {
                    tracing::warn!(%error, "an append batch lost its reply; finding out what it did");
                    self.counters.lost_replies.fetch_add(1, Ordering::Relaxed);
                    self.suspect();
                    // The connection may be broken: never reuse it.
                    if let Some(broken) = session.take() {
                        drop(broken);
                    }
                    let resolved = self.resolve(Some(process), parts).await;
                    let nothing_appended = resolved
                        .iter()
                        .all(|o| matches!(o, Err(StoreError::Unavailable { .. })));
                    // A connection that died while idle fails the next call
                    // before the server sees it: when nothing of the batch
                    // was appended, send it once more on a fresh connection.
                    if nothing_appended && !retried_fresh {
                        retried_fresh = true;
                        continue;
                    }
                    return Call::Done(resolved);
                }
            }
        }
    }

    /// Finds out what became of `parts` after a lost reply: ends the server
    /// process that ran them (`process`) and waits until it is gone, then
    /// looks their event ids up. Gives up after `outcome_timeout` with
    /// [`StoreError::OutcomeUnknown`].
    pub(crate) async fn resolve(
        &self,
        process: Option<Backend>,
        parts: &[Part<'_>],
    ) -> Vec<Outcome> {
        let deadline = Instant::now() + self.outcome_timeout;
        let mut last_error = String::from("no attempt finished in time");
        loop {
            match tokio::time::timeout_at(deadline, self.try_resolve(process, parts)).await {
                Ok(Ok(outcomes)) => {
                    for outcome in &outcomes {
                        let counter = match outcome {
                            Ok(_) => &self.counters.resolved_committed,
                            Err(StoreError::Unavailable { .. }) => {
                                &self.counters.resolved_not_appended
                            }
                            Err(_) => &self.counters.unknown,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    return outcomes;
                }
                Ok(Err(e)) => {
                    self.suspect();
                    last_error = e.to_string();
                }
                Err(_) => break,
            }
            if Instant::now() + Duration::from_millis(100) >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.counters
            .unknown
            .fetch_add(parts.len() as u64, Ordering::Relaxed);
        tracing::error!(
            error = %last_error,
            timeout_ms = self.outcome_timeout.as_millis() as u64,
            "could not find out whether an append batch committed"
        );
        parts
            .iter()
            .map(|_| {
                Err(StoreError::OutcomeUnknown {
                    source: format!(
                        "the connection failed after the append was sent, and the store could \
                         not reach the database within {:?} to check whether it committed \
                         ({last_error})",
                        self.outcome_timeout
                    )
                    .into(),
                })
            })
            .collect()
    }

    /// Starts a search for the primary, when the store has several hosts.
    fn suspect(&self) {
        if let Some(failover) = &self.failover {
            failover.suspect();
        }
    }

    async fn try_resolve(
        &self,
        process: Option<Backend>,
        parts: &[Part<'_>],
    ) -> Result<Vec<Outcome>, sqlx::Error> {
        let mut conn = self.lookup.acquire().await?;
        if let Some(process) = process {
            // A process whose client is gone may still be running the call
            // (and hold the head lock); once it has exited, its transaction
            // is committed or rolled back for good.
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid = $1 AND backend_start = $2",
            )
            .bind(process.pid)
            .bind(process.started)
            .execute(&mut *conn)
            .await?;
            loop {
                let alive: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                     WHERE pid = $1 AND backend_start = $2)",
                )
                .bind(process.pid)
                .bind(process.started)
                .fetch_one(&mut *conn)
                .await?;
                if !alive {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let ids: Vec<uuid::Uuid> = parts
            .iter()
            .flat_map(|p| p.events.iter().map(|e| e.metadata.event_id))
            .collect();
        let rows = sqlx::query(&format!(
            "SELECT event_id, position FROM {}.events WHERE event_id = ANY($1)",
            self.schema
        ))
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        let mut found: HashMap<uuid::Uuid, i64> = HashMap::with_capacity(rows.len());
        for row in &rows {
            found.insert(row.try_get(0)?, row.try_get(1)?);
        }
        if !found.is_empty() {
            confirm_replicated(&mut conn).await?;
        }
        Ok(parts.iter().map(|part| settle(part, &found)).collect())
    }
}

/// Returns once the synchronous standbys the server waits for (if any)
/// confirm everything the server has written so far.
///
/// A transaction waiting for its synchronous standbys whose process is
/// ended (as a lost reply is resolved) becomes visible on the primary alone:
/// PostgreSQL warns that it "has already committed locally, but might not
/// have been replicated". Reported committed then, it could be lost by a
/// failover a moment later; so it counts only once the standbys confirm it
/// (at the level `synchronous_commit` asks: written, flushed or applied).
/// Until then this waits, and past the outcome timeout the caller hears
/// "outcome unknown". The confirmation is read from `pg_stat_replication`,
/// whose positions only a superuser or a member of `pg_read_all_stats`
/// sees.
async fn confirm_replicated(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    let (lsn, column): (String, Option<String>) = sqlx::query_as(
        "SELECT pg_current_wal_lsn()::text, \
             CASE WHEN current_setting('synchronous_standby_names') = '' THEN NULL \
                  ELSE CASE current_setting('synchronous_commit') \
                       WHEN 'remote_apply' THEN 'replay_lsn' \
                       WHEN 'on' THEN 'flush_lsn' \
                       WHEN 'remote_write' THEN 'write_lsn' \
                       END \
             END",
    )
    .fetch_one(&mut *conn)
    .await?;
    let Some(column) = column else {
        return Ok(());
    };
    let confirmed = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_replication \
         WHERE sync_state IN ('sync', 'quorum') AND {column} >= $1::pg_lsn)"
    );
    loop {
        let done: bool = sqlx::query_scalar(&confirmed)
            .bind(&lsn)
            .fetch_one(&mut *conn)
            .await?;
        if done {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A request's outcome from the positions of its event ids found in the
/// log: all there (its positions), none (not appended), or some (which an
/// atomic append cannot leave: reported as unknown).
fn settle(part: &Part<'_>, found: &HashMap<uuid::Uuid, i64>) -> Outcome {
    let positions: Vec<Option<i64>> = part
        .events
        .iter()
        .map(|e| found.get(&e.metadata.event_id).copied())
        .collect();
    if positions.iter().all(Option::is_none) {
        return Err(StoreError::Unavailable {
            source: "the connection failed after the append was sent; the store checked that \
                     nothing of it was committed"
                .into(),
        });
    }
    let known: Vec<i64> = positions.iter().flatten().copied().collect();
    let first = known.iter().min().copied().unwrap_or(0);
    let last = known.iter().max().copied().unwrap_or(0);
    let consecutive = known.len() == positions.len()
        && known.windows(2).all(|w| w[1] == w[0] + 1)
        && last - first + 1 == known.len() as i64;
    if consecutive {
        Ok(AppendResult {
            first: from_db_or_zero(first),
            last: from_db_or_zero(last),
        })
    } else {
        Err(StoreError::OutcomeUnknown {
            source: format!(
                "after a lost reply, {} of the append's {} event ids were found in the log, \
                 not as one append (another append used some of these ids)",
                known.len(),
                positions.len()
            )
            .into(),
        })
    }
}

/// The outcomes in the function's reply, one row per request:
/// `(outcome, first_position, last_position, duplicate)` with outcome 0
/// (appended), 1 (condition failed) or 2 (duplicate event id).
fn outcomes(
    rows: &[sqlx::postgres::PgRow],
    parts: &[Part<'_>],
) -> Result<Vec<Outcome>, sqlx::Error> {
    if rows.len() != parts.len() {
        return Err(sqlx::Error::Protocol(format!(
            "append_batch returned {} outcomes for {} requests",
            rows.len(),
            parts.len()
        )));
    }
    let mut outcomes = Vec::with_capacity(parts.len());
    for (row, part) in rows.iter().zip(parts) {
        let outcome: i32 = row.try_get(0)?;
        outcomes.push(match outcome {
            0 => {
                let first: i64 = row.try_get(1)?;
                let last: i64 = row.try_get(2)?;
                Ok(AppendResult {
                    first: from_db_or_zero(first),
                    last: from_db_or_zero(last),
                })
            }
            1 => Err(StoreError::ConditionFailed {
                after: part.condition.and_then(|c| c.after),
            }),
            _ => Err(StoreError::DuplicateEventId(row.try_get(3)?)),
        });
    }
    Ok(outcomes)
}

/// What a failed call means for its batch.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// An event id is already stored (the call wrote nothing).
    DuplicateId,
    /// A value the database refuses (the call wrote nothing).
    Refused,
    /// The server is a standby now (the call wrote nothing).
    ReadOnly,
    /// The database answered with an error: the call wrote nothing.
    RolledBack,
    /// No answer, or one that may come after a commit: look it up.
    Unknown,
}

fn classify(error: &sqlx::Error) -> Failure {
    let sqlx::Error::Database(db) = error else {
        // I/O, protocol, a crashed worker: the call may or may not have run.
        return Failure::Unknown;
    };
    let code = db.code();
    let code = code.as_deref().unwrap_or("");
    match code {
        "23505" => Failure::DuplicateId,
        "25006" => Failure::ReadOnly,
        // 08: connection exception; 57: operator intervention (a process
        // ended or cancelled while waiting for a synchronous standby has
        // committed locally).
        c if c.starts_with("08") || c.starts_with("57") || c.is_empty() => Failure::Unknown,
        // 22: data exception (e.g. NUL in text); 23: integrity constraint;
        // 54: program limit exceeded (e.g. an index row too large).
        c if c.starts_with("22") || c.starts_with("23") || c.starts_with("54") => Failure::Refused,
        _ => Failure::RolledBack,
    }
}

fn database_message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_string(),
        },
        other => other.to_string(),
    }
}

/// What the requests of a batch are told when the writer's host turned out
/// to be a standby: nothing was appended.
fn on_a_standby() -> StoreError {
    StoreError::Unavailable {
        source: "the host the store took for the primary is a standby (a failover moved the \
                 primary); nothing was appended, and the store is looking for the new primary"
            .into(),
    }
}

/// A copy of an error given to every request of a failed batch.
fn clone(error: &StoreError) -> StoreError {
    match error {
        StoreError::Unavailable { source } => StoreError::Unavailable {
            source: source.to_string().into(),
        },
        StoreError::DuplicateEventId(id) => StoreError::DuplicateEventId(*id),
        StoreError::InvalidRequest(m) => StoreError::InvalidRequest(m.clone()),
        other => backend("append", other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDatabase;
    use dcb_core::{Position, Query, Tag};

    fn committer(db: &TestDatabase) -> Committer {
        Committer {
            counters: Arc::default(),
            schema: "dcb".into(),
            channel: "dcb_commit_tests".into(),
            lookup: db.pool().clone(),
            outcome_timeout: Duration::from_secs(10),
            failover: None,
        }
    }

    /// A value the database refuses although it passed the store's own
    /// checks (here: a constraint added for the test) fails its request
    /// only; the batch is split until every other request commits, in
    /// order and gapless.
    #[tokio::test]
    async fn a_refused_value_fails_its_request_only() {
        let db = TestDatabase::create().await;
        sqlx::query(
            "ALTER TABLE dcb.events ADD CONSTRAINT no_poison CHECK (event_type <> 'Poison')",
        )
        .execute(db.pool())
        .await
        .unwrap();
        let committer = committer(&db);
        let requests: Vec<Vec<EventRecord>> = (0..9)
            .map(|i| {
                let kind = if i == 5 { "Poison" } else { "Fine" };
                vec![
                    EventRecord::new(kind, [Tag::new("i", i)], b"{}".to_vec()),
                    EventRecord::new("Fine", [Tag::new("i", i)], b"{}".to_vec()),
                ]
            })
            .collect();
        let conditions: Vec<AppendCondition> = (0..9)
            .map(|i| AppendCondition::never_matched(Query::tags([Tag::new("i", i)])))
            .collect();
        let parts: Vec<Part<'_>> = requests
            .iter()
            .zip(&conditions)
            .map(|(events, condition)| Part {
                events,
                condition: Some(condition),
            })
            .collect();
        let mut session = None;
        let outcomes = committer.commit(&mut session, &parts).await;
        let mut next = 1;
        for (i, outcome) in outcomes.iter().enumerate() {
            if i == 5 {
                let Err(StoreError::InvalidRequest(message)) = outcome else {
                    panic!("the poisoned request must be refused, got {outcome:?}");
                };
                assert!(message.contains("no_poison"), "{message}");
            } else {
                let appended = outcome.as_ref().expect("an innocent request must commit");
                assert_eq!(appended.first, Position(next), "in request order, gapless");
                next += 2;
            }
        }
        let counters = &committer.counters;
        assert!(counters.splits.load(Ordering::Relaxed) >= 3);
        assert_eq!(counters.refused.load(Ordering::Relaxed), 1);
        if let Some(session) = session {
            session.close().await;
        }
        db.cleanup().await;
    }

    fn part_events(n: usize) -> Vec<EventRecord> {
        (0..n)
            .map(|_| EventRecord::new("A", [], b"{}".to_vec()))
            .collect()
    }

    #[test]
    fn settles_from_the_ids_found() {
        let events = part_events(3);
        let part = Part {
            events: &events,
            condition: None,
        };
        let mut found = HashMap::new();
        assert!(matches!(
            settle(&part, &found),
            Err(StoreError::Unavailable { .. })
        ));
        for (i, e) in events.iter().enumerate() {
            found.insert(e.metadata.event_id, 10 + i as i64);
        }
        let appended = settle(&part, &found).unwrap();
        assert_eq!(
            (appended.first, appended.last),
            (Position(10), Position(12))
        );
        found.remove(&events[1].metadata.event_id);
        assert!(matches!(
            settle(&part, &found),
            Err(StoreError::OutcomeUnknown { .. })
        ));
    }
}
