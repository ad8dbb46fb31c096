//! Shared pieces of the listener tests and their child processes: a tiny
//! event type, a counting transactional projection and its tables, starting
//! a `listener_child` and waiting for a listener's status. Included with
//! `#[path]` by the `listener_*` tests and the `listener_child` binary.
#![allow(dead_code)]

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_core::{
    BoxError, CodecError, Event, EventMetadata, EventRecord, EventSchema, EventStore, EventType,
    Position, Query, Sequenced, Tag, TransactionalListener,
};
use dcb_postgres::listener::{
    ListenerAdmin, ListenerError, ListenerStatus, PgTransaction, RunnerHandle,
};
use dcb_postgres::PgEventStore;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long a test waits for a child or a listener's status: generous, so
/// a loaded machine only makes a test slower, never red.
pub const WAIT: Duration = Duration::from_secs(60);

/// `Tick`s are what the listeners count; `Tock`s are noise they skip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestEvent {
    Tick(u64),
    Tock(u64),
}

impl Event for TestEvent {
    const SCHEMA: &'static [EventSchema] = &[
        EventSchema {
            event_type: "Tick",
            tag_keys: &[],
        },
        EventSchema {
            event_type: "Tock",
            tag_keys: &[],
        },
    ];

    fn event_type(&self) -> EventType {
        match self {
            TestEvent::Tick(_) => EventType::from_static("Tick"),
            TestEvent::Tock(_) => EventType::from_static("Tock"),
        }
    }

    fn tags(&self) -> Vec<Tag> {
        Vec::new()
    }

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let (TestEvent::Tick(n) | TestEvent::Tock(n)) = self;
        Ok(n.to_string().into_bytes())
    }

    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError> {
        let n: u64 = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| CodecError::Decode("not a number".into()))?;
        match event_type {
            "Tick" => Ok(TestEvent::Tick(n)),
            "Tock" => Ok(TestEvent::Tock(n)),
            other => Err(CodecError::UnknownType(other.to_owned())),
        }
    }
}

pub fn tick(n: u64) -> EventRecord {
    record("Tick", n)
}

pub fn tock(n: u64) -> EventRecord {
    record("Tock", n)
}

fn record(event_type: &'static str, n: u64) -> EventRecord {
    EventRecord {
        event_type: EventType::from_static(event_type),
        tags: Vec::new(),
        payload: n.to_string().into_bytes(),
        metadata: EventMetadata::new(),
    }
}

/// Appends `Tick(n)` for each `n` of `ns` in one batch; returns the last
/// position.
pub async fn append_ticks(store: &impl EventStore, ns: std::ops::RangeInclusive<u64>) -> Position {
    store
        .append(ns.map(tick).collect(), None)
        .await
        .expect("append ticks")
        .last
}

pub fn ticks_only() -> Query {
    Query::types(["Tick"])
}

/// Creates the projection tables: `tick_count` (one counter row),
/// `tick_seen` (one row per handled event, with the instance that handled
/// it) and `tick_resets` (one row per reset of the projection).
pub async fn create_projection(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS tick_count (id int PRIMARY KEY, n bigint NOT NULL);
         INSERT INTO tick_count VALUES (1, 0) ON CONFLICT DO NOTHING;
         CREATE TABLE IF NOT EXISTS tick_seen (
             position bigint NOT NULL, instance text NOT NULL,
             at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE TABLE IF NOT EXISTS tick_resets (
             at timestamptz NOT NULL DEFAULT clock_timestamp());",
    )
    .execute(pool)
    .await
    .expect("create projection tables");
}

/// The projection's write for one tick at `position`, in `tx`: the count
/// goes up and `tick_seen` records it, handled by `instance`.
pub async fn count_tick(
    tx: &mut PgTransaction,
    position: Position,
    instance: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tick_count SET n = n + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO tick_seen (position, instance) VALUES ($1, $2)")
        .bind(position.0 as i64)
        .bind(instance)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A transactional projection counting `Tick`s, recording each one it sees.
pub struct TickCounter {
    pub id: String,
    pub instance: String,
    /// Sleeps up to this long per event (to spread kill points).
    pub jitter: Duration,
}

#[async_trait]
impl TransactionalListener<PgTransaction> for TickCounter {
    type Event = TestEvent;

    fn id(&self) -> &str {
        &self.id
    }

    fn query(&self) -> Query {
        ticks_only()
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: Sequenced<TestEvent>,
    ) -> Result<(), BoxError> {
        count_tick(tx, event.position, &self.instance).await?;
        if !self.jitter.is_zero() {
            let micros = fastrand::u64(..self.jitter.as_micros() as u64);
            tokio::time::sleep(Duration::from_micros(micros)).await;
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut PgTransaction) -> Result<(), BoxError> {
        sqlx::query("UPDATE tick_count SET n = 0 WHERE id = 1")
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM tick_seen")
            .execute(&mut **tx)
            .await?;
        sqlx::query("INSERT INTO tick_resets DEFAULT VALUES")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// In one snapshot: the checkpoint of `id`, the count the projection holds,
/// the ticks in the log up to that checkpoint, and how many positions
/// `tick_seen` holds more than once.
pub async fn snapshot(pool: &PgPool, id: &str) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT c.position, (SELECT n FROM tick_count WHERE id = 1),
             (SELECT count(*) FROM dcb.events
              WHERE event_type = 'Tick' AND position <= c.position),
             (SELECT count(*) FROM (
                 SELECT position FROM tick_seen GROUP BY position HAVING count(*) > 1) d)
         FROM (SELECT COALESCE((SELECT position FROM dcb.listener_checkpoints
                                WHERE listener_id = $1), 0) AS position) c",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("read the projection's snapshot")
}

/// The count the projection holds.
pub async fn tick_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT n FROM tick_count WHERE id = 1")
        .fetch_one(pool)
        .await
        .expect("read tick_count")
}

/// The positions of every `Tick` in the log, in order.
pub async fn tick_positions(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT position FROM dcb.events WHERE event_type = 'Tick' ORDER BY position",
    )
    .fetch_all(pool)
    .await
    .expect("read tick positions")
}

/// A listener's checkpoint as stored.
pub async fn checkpoint(pool: &PgPool, id: &str) -> i64 {
    sqlx::query_scalar("SELECT position FROM dcb.listener_checkpoints WHERE listener_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .expect("read checkpoint")
        .unwrap_or(0)
}

/// The log head.
pub async fn head(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT COALESCE(max(position), 0) FROM dcb.events")
        .fetch_one(pool)
        .await
        .expect("read head")
}

/// Starts `listener_child <mode> <url> <instance> <lease_ms> <listener>` and
/// waits (up to [`WAIT`]) for its `ready` line; returns the child (killed on
/// drop) and the lines it prints after that.
pub async fn spawn_child_with_lines(
    mode: &str,
    url: &str,
    instance: &str,
    lease_ms: u64,
    listener: &str,
) -> (Child, Lines<BufReader<ChildStdout>>) {
    // Cargo sets it for the integration tests only (this file is also part
    // of the child binary, which never spawns itself).
    let Some(exe) = option_env!("CARGO_BIN_EXE_listener_child") else {
        panic!("only the listener tests of dcb-tests start a listener_child");
    };
    let mut child = Command::new(exe)
        .args([mode, url, instance, &lease_ms.to_string(), listener])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn listener_child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("child ready in time")
        .expect("read child stdout");
    assert_eq!(ready.as_deref(), Some("ready"));
    (child, lines)
}

/// [`spawn_child_with_lines`], its later output read and dropped.
pub async fn spawn_child(
    mode: &str,
    url: &str,
    instance: &str,
    lease_ms: u64,
    listener: &str,
) -> Child {
    let (child, mut lines) = spawn_child_with_lines(mode, url, instance, lease_ms, listener).await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// Where a test reads a listener's status: the runner running it, or an
/// operator's [`ListenerAdmin`] reading the database.
// Only these tests call it, awaiting on their own task: no `Send` bound needed.
#[allow(async_fn_in_trait)]
pub trait StatusSource {
    async fn status_of(&self, id: &str) -> Result<ListenerStatus, ListenerError>;
}

impl StatusSource for RunnerHandle {
    async fn status_of(&self, id: &str) -> Result<ListenerStatus, ListenerError> {
        self.status(id).await
    }
}

impl StatusSource for ListenerAdmin {
    async fn status_of(&self, id: &str) -> Result<ListenerStatus, ListenerError> {
        self.status(id).await
    }
}

/// Waits (up to [`WAIT`]) until `id`'s status, read from `source`,
/// satisfies `done`; returns it. `what` names the awaited state in the
/// failure message.
pub async fn wait_for_status(
    source: &impl StatusSource,
    id: &str,
    what: &str,
    done: impl Fn(&ListenerStatus) -> bool,
) -> ListenerStatus {
    let until = Instant::now() + WAIT;
    loop {
        match source.status_of(id).await {
            Ok(status) if done(&status) => return status,
            Ok(status) => assert!(Instant::now() < until, "{id} never {what}: {status:?}"),
            Err(ListenerError::UnknownListener(_)) => {
                assert!(Instant::now() < until, "{id} never started");
            }
            Err(e) => panic!("status of {id}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Appends batches of one to five events (about one `Tock` for two
/// `Tick`s), numbered from 1, a few milliseconds apart, until `stop` is set.
pub fn spawn_appender(store: PgEventStore, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let batch: Vec<_> = (0..fastrand::usize(1..6))
                .map(|_| {
                    n += 1;
                    if fastrand::u8(..3) == 0 {
                        tock(n)
                    } else {
                        tick(n)
                    }
                })
                .collect();
            store.append(batch, None).await.expect("append");
            tokio::time::sleep(Duration::from_millis(fastrand::u64(1..6))).await;
        }
    })
}

/// Waits (up to [`WAIT`]) until listener `id`'s checkpoint reaches the log
/// head as it is now.
pub async fn wait_caught_up(pool: &PgPool, id: &str) {
    let head = head(pool).await;
    let until = Instant::now() + WAIT;
    while checkpoint(pool, id).await < head {
        assert!(
            Instant::now() < until,
            "{id} did not catch up to {head} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
