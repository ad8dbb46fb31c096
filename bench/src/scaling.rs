//! The `scaling` workload: a primary and a streaming standby of its own
//! (started from the installed PostgreSQL binaries), to measure what the
//! steps beyond one store buy: listener catch-up from the standby against
//! the primary; decision throughput on the primary while four tailing
//! listeners read from the standby, from the primary, or nobody reads; and
//! the same callers split over two stores on the same server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_core::{BoxError, DecisionMaker, EventStore, Listener, Position, Sequenced};
use dcb_postgres::listener::{RunnerConfig, RunnerHandle};
use dcb_postgres::testing::ReplicaSet;
use dcb_postgres::PgEventStore;
use sqlx::postgres::PgPoolOptions;

use crate::append::{disjoint, preload};
use crate::cart::CartEvent;
use crate::cli::Args;
use crate::listener::{throughput_row, BATCH, CATCH_UP_TIMEOUT};
use crate::report::Row;
use crate::runner::WARMUP;
use crate::stats::Measured;

const WORKLOAD: &str = "scaling";
/// Callers of the decision rows.
pub const CALLERS: usize = 32;
/// Tailing listeners of the decision rows.
pub const LISTENERS: usize = 4;
/// At most this many events are preloaded for the catch-up rows.
pub const CATCH_UP_EVENTS: u64 = 1_000_000;

fn say(line: &str) {
    eprintln!("[dcb-bench] {line}");
}

/// A listener that counts what it is given.
struct Counter {
    id: String,
    handled: Arc<AtomicU64>,
}

#[async_trait]
impl Listener for Counter {
    type Event = CartEvent;
    fn id(&self) -> &str {
        &self.id
    }
    async fn handle(&self, _event: Sequenced<CartEvent>) -> Result<(), BoxError> {
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Where listeners read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Primary,
    Standby,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Primary => "primary",
            Source::Standby => "standby",
        }
    }
}

/// Starts `ids` as no-op listeners reading from `source`.
async fn start_listeners(
    store: &PgEventStore,
    source: Source,
    ids: &[String],
    config: RunnerConfig,
) -> Result<RunnerHandle, String> {
    let mut runner = store.listeners().config(config);
    if source == Source::Primary {
        runner = runner.read_from_primary();
    }
    for id in ids {
        runner = runner.at_least_once(Counter {
            id: id.clone(),
            handled: Arc::new(AtomicU64::new(0)),
        });
    }
    runner
        .start()
        .await
        .map_err(|e| format!("start the listeners: {e}"))
}

async fn wait_all(runner: &RunnerHandle, ids: &[String], head: u64) -> Result<(), String> {
    for id in ids {
        runner
            .wait_until_timeout(id, Position(head), CATCH_UP_TIMEOUT)
            .await
            .map_err(|e| format!("listener {id}: {e}"))?;
    }
    Ok(())
}

/// Runs the workload on a replica set of its own (`DATABASE_URL` is not
/// used).
///
/// # Errors
/// The first failure.
pub async fn run(args: &Args, rows: &mut Vec<Row>) -> Result<(), String> {
    say("scaling: starting a primary and an asynchronous standby...");
    let set = ReplicaSet::builder()
        .setting("shared_buffers", "256MB")
        .setting("max_connections", "400")
        .start()
        .await;
    say(&format!(
        "  primary {}, standby {}",
        set.primary_url(),
        set.standby_url(0)
    ));
    let result = async {
        let events = args.preload.min(CATCH_UP_EVENTS);
        if events > 0 {
            let store = open(&set, "catch_up").await?;
            let result = catch_up(&set, &store, events, rows).await;
            close(store).await;
            result?;
        } else {
            say("scaling: --preload 0, skipping the catch-up rows");
        }
        let store = open(&set, "decisions").await?;
        let other = match open(&set, "decisions_b").await {
            Ok(other) => other,
            Err(e) => {
                close(store).await;
                return Err(e);
            }
        };
        let result = decisions(&store, &other, Duration::from_secs_f64(args.seconds), rows).await;
        close(store).await;
        close(other).await;
        result
    }
    .await;
    set.stop().await;
    result
}

/// A store in `schema` on the primary of `set`, reading its standby, on a
/// pool of one connection per caller plus a few.
async fn open(set: &ReplicaSet, schema: &str) -> Result<PgEventStore, String> {
    let pool = PgPoolOptions::new()
        .max_connections(CALLERS as u32 + 4)
        .min_connections(CALLERS as u32 + 2)
        .acquire_timeout(Duration::from_secs(30))
        .test_before_acquire(false)
        .connect(&set.primary_url())
        .await
        .map_err(|e| format!("connect to the primary: {e}"))?;
    PgEventStore::builder()
        .schema(schema)
        .standby(set.standby_url(0))
        .build(pool)
        .await
        .map_err(|e| format!("open the store: {e}"))
}

async fn close(store: PgEventStore) {
    store.shutdown().await;
    store.pool().close().await;
}

/// A no-op listener catching up with `events` preloaded events, from the
/// primary and from the standby, twice each in the order P S S P.
async fn catch_up(
    set: &ReplicaSet,
    store: &PgEventStore,
    events: u64,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    say(&format!("scaling: loading {events} events..."));
    let started = Instant::now();
    preload(store, events).await?;
    for statement in [
        "VACUUM (ANALYZE) catch_up.events",
        "VACUUM (ANALYZE) catch_up.event_tags",
        "CHECKPOINT",
    ] {
        sqlx::raw_sql(statement)
            .execute(store.pool())
            .await
            .map_err(|e| format!("{statement}: {e}"))?;
    }
    set.wait_for_standbys().await;
    say(&format!(
        "  loaded, settled and replayed on the standby in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let head = store
        .head()
        .await
        .map_err(|e| format!("head: {e}"))?
        .map_or(0, |p| p.0);
    let mut totals = [
        (Source::Primary, Duration::ZERO),
        (Source::Standby, Duration::ZERO),
    ];
    let order = [
        Source::Primary,
        Source::Standby,
        Source::Standby,
        Source::Primary,
    ];
    for (round, source) in order.into_iter().enumerate() {
        let id = format!("catch-up-{}-{round}", source.name());
        let t0 = Instant::now();
        let runner = start_listeners(
            store,
            source,
            std::slice::from_ref(&id),
            RunnerConfig::default().batch_size(BATCH),
        )
        .await?;
        let waited = wait_all(&runner, std::slice::from_ref(&id), head).await;
        let elapsed = t0.elapsed();
        runner.shutdown().await;
        waited?;
        say(&format!(
            "  catch-up from the {}: {:.0} events/s",
            source.name(),
            head as f64 / elapsed.as_secs_f64()
        ));
        for total in totals.iter_mut() {
            if total.0 == source {
                total.1 += elapsed;
            }
        }
    }
    let primary = throughput_row(WORKLOAD, "catch_up_primary", 1, 2 * head, totals[0].1);
    let mut standby = throughput_row(WORKLOAD, "catch_up_standby", 1, 2 * head, totals[1].1);
    standby.compare_with(primary.ops_per_s);
    rows.push(primary);
    rows.push(standby);
    Ok(())
}

/// Disjoint decisions at [`CALLERS`] callers on the primary with nobody
/// reading, with [`LISTENERS`] tailing listeners reading the primary, with
/// them reading the standby, and (nobody reading) with the callers split
/// half and half over `store` and `other`, two stores on the same server;
/// half windows in the order N P S X X S P N.
async fn decisions(
    store: &PgEventStore,
    other: &PgEventStore,
    window: Duration,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    say(&format!(
        "scaling: {CALLERS} callers deciding, with no listener, {LISTENERS} listeners on the \
         primary, {LISTENERS} on the standby; and split over two stores"
    ));
    let maker = Arc::new(DecisionMaker::new(store.clone()));
    let other_maker = Arc::new(DecisionMaker::new(other.clone()));
    let half = window / 2;
    let names = [
        "decisions_no_listener",
        "decisions_4_listeners_primary",
        "decisions_4_listeners_standby",
        "decisions_split_2_stores",
    ];
    let sources = [None, Some(Source::Primary), Some(Source::Standby), None];
    let mut measured: Vec<Measured> = vec![Measured::default(); names.len()];
    for (round, index) in [0usize, 1, 2, 3, 3, 2, 1, 0].into_iter().enumerate() {
        let runner = match sources[index] {
            None => None,
            Some(source) => {
                let ids: Vec<String> = (0..LISTENERS)
                    .map(|i| format!("tail-{}-{round}-{i}", source.name()))
                    .collect();
                // New listeners replay the earlier rounds' events first:
                // measure only once they tail the head.
                let head = store
                    .head()
                    .await
                    .map_err(|e| format!("head: {e}"))?
                    .map_or(0, |p| p.0);
                let runner = start_listeners(store, source, &ids, RunnerConfig::default()).await?;
                wait_all(&runner, &ids, head).await?;
                Some((runner, ids))
            }
        };
        let result = if names[index] == "decisions_split_2_stores" {
            let (a, b) = tokio::join!(
                disjoint(&maker, CALLERS / 2, WARMUP, half),
                disjoint(&other_maker, CALLERS - CALLERS / 2, WARMUP, half)
            );
            a.and_then(|mut a| {
                a.merge(b?);
                a.finish();
                Ok(a)
            })
        } else {
            disjoint(&maker, CALLERS, WARMUP, half).await
        };
        if let Some((runner, ids)) = runner {
            let head = store
                .head()
                .await
                .map_err(|e| format!("head: {e}"))?
                .map_or(0, |p| p.0);
            let waited = wait_all(&runner, &ids, head).await;
            runner.shutdown().await;
            waited?;
        }
        measured[index].extend(result?);
    }
    let baseline = measured[0].ops_per_s();
    for (name, m) in names.iter().zip(&measured) {
        let mut row = Row::measured(WORKLOAD, name, CALLERS, m);
        if *name != names[0] {
            row.compare_with(baseline);
        }
        say(&format!(
            "  {name}: {:.0} decisions/s, p99 {:.1} ms",
            row.ops_per_s,
            row.p99_ms.unwrap_or(0.0)
        ));
        rows.push(row);
    }
    Ok(())
}
