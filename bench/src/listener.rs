//! The `listener` workload: a no-op listener catching up with a preloaded
//! log, a transactional projection writing one row per event, and the live
//! latency from append to handler under a steady append load.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dcb_core::{BoxError, Event, EventStore, Listener, Position, Sequenced, TransactionalListener};
use dcb_postgres::listener::{PgTransaction, RunnerConfig, RunnerHandle};

use crate::append::preload;
use crate::cart::CartEvent;
use crate::cli::Args;
use crate::db::{Db, PgEventStore};
use crate::ping::{self, Ping};
use crate::report::Row;
use crate::runner::WARMUP;
use crate::stats::{percentile, Measured};

const WORKLOAD: &str = "listener";
/// Events per batch of the catch-up and projection runners.
pub const BATCH: usize = 500;
/// At most this many events go through the projection.
pub const PROJECTION_EVENTS: u64 = 200_000;
/// Appends per second of the live variant.
pub const LIVE_RATE: u32 = 200;
/// How long the bench waits for a listener to catch up before failing.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

fn say(line: &str) {
    eprintln!("[dcb-bench] {line}");
}

/// A throughput row: `events` handled in `elapsed`, one op per event.
pub fn throughput_row(
    workload: &str,
    variant: &str,
    conc: usize,
    events: u64,
    elapsed: Duration,
) -> Row {
    let per_s = events as f64 / elapsed.as_secs_f64().max(1e-9);
    Row {
        workload: workload.to_string(),
        variant: variant.to_string(),
        concurrency: conc,
        ops_per_s: per_s,
        events_per_s: Some(per_s),
        conflict_rate: None,
        p50_ms: None,
        p99_ms: None,
        baseline_ops_per_s: None,
        ratio: None,
        cache_hit_rate: None,
        cache_kib: None,
    }
}

/// A latency row: `latencies` (unsorted) of messages sent during `window`.
pub fn latency_row(
    workload: &str,
    variant: &str,
    conc: usize,
    mut latencies: Vec<Duration>,
    window: Duration,
) -> Row {
    latencies.sort_unstable();
    let ms = |q| percentile(&latencies, q).map(|d: Duration| d.as_secs_f64() * 1000.0);
    let m = Measured {
        ops: latencies.len() as u64,
        events: latencies.len() as u64,
        window,
        ..Measured::default()
    };
    Row {
        workload: workload.to_string(),
        variant: variant.to_string(),
        concurrency: conc,
        ops_per_s: m.ops_per_s(),
        events_per_s: Some(m.events_per_s()),
        conflict_rate: None,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        baseline_ops_per_s: None,
        ratio: None,
        cache_hit_rate: None,
        cache_kib: None,
    }
}

/// The latency row (concurrency 1) of the messages numbered `sent`, out of
/// `seen` (each message's number and latency), its p50 and p99 said on
/// stderr.
pub fn sent_latency_row(
    workload: &str,
    variant: &str,
    seen: &Mutex<Vec<(u64, Duration)>>,
    sent: std::ops::Range<u64>,
    window: Duration,
) -> Row {
    let latencies: Vec<Duration> = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(number, _)| sent.contains(number))
        .map(|(_, l)| *l)
        .collect();
    let r = latency_row(workload, variant, 1, latencies, window);
    say(&format!(
        "  p50 {:.2} ms, p99 {:.2} ms",
        r.p50_ms.unwrap_or(0.0),
        r.p99_ms.unwrap_or(0.0)
    ));
    r
}

struct Noop;

#[async_trait]
impl Listener for Noop {
    type Event = CartEvent;
    fn id(&self) -> &str {
        "bench-noop"
    }
    async fn handle(&self, _event: Sequenced<CartEvent>) -> Result<(), BoxError> {
        Ok(())
    }
}

struct Projection {
    insert: String,
}

#[async_trait]
impl TransactionalListener<PgTransaction> for Projection {
    type Event = CartEvent;
    fn id(&self) -> &str {
        "bench-projection"
    }
    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: Sequenced<CartEvent>,
    ) -> Result<(), BoxError> {
        let (cart_id, kind) = match &event.event {
            CartEvent::CartCreated(e) => (e.cart_id, "created"),
            CartEvent::ItemAdded(e) => (e.cart_id, "item"),
        };
        sqlx::query(&self.insert)
            .bind(event.position.0 as i64)
            .bind(cart_id)
            .bind(kind)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// Records the latency of every ping it handles.
pub struct PingRecorder {
    /// `(sent_us, latency)` of every ping handled.
    pub seen: Arc<Mutex<Vec<(u64, Duration)>>>,
}

#[async_trait]
impl Listener for PingRecorder {
    type Event = Ping;
    fn id(&self) -> &str {
        "bench-ping"
    }
    async fn handle(&self, event: Sequenced<Ping>) -> Result<(), BoxError> {
        let latency = ping::since(event.event.sent_us);
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((event.event.sent_us, latency));
        Ok(())
    }
}

/// Runs every variant of the workload.
///
/// # Errors
/// The first failure of any variant.
pub async fn run(db: &Db, args: &Args, rows: &mut Vec<Row>) -> Result<(), String> {
    if args.preload > 0 {
        let store = db.open_store("listener_log", 4).await?;
        let result = catch_up_and_project(db, &store, args.preload, rows).await;
        db.close_store(store).await?;
        result?;
    } else {
        say("listener: --preload 0, skipping catch_up and projection");
    }
    let store = db.open_store("listener_live", 8).await?;
    let result = live(&store, Duration::from_secs_f64(args.seconds)).await;
    db.close_store(store).await?;
    rows.push(result?);
    Ok(())
}

async fn wait(runner: &RunnerHandle, id: &str, position: u64) -> Result<(), String> {
    runner
        .wait_until_timeout(id, Position(position), CATCH_UP_TIMEOUT)
        .await
        .map_err(|e| format!("listener {id}: {e}"))
}

async fn catch_up_and_project(
    db: &Db,
    store: &PgEventStore,
    events: u64,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    say(&format!("listener: loading {events} events..."));
    let started = Instant::now();
    preload(store, events).await?;
    db.settle_schema(store.schema()).await?;
    say(&format!(
        "  loaded and settled in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let head = store
        .head()
        .await
        .map_err(|e| format!("head: {e}"))?
        .map_or(0, |p| p.0);
    let config = || RunnerConfig::default().batch_size(BATCH);

    // (1) A no-op listener from the start of the log to its head.
    say(&format!("listener: no-op catch-up over {head} events"));
    let t0 = Instant::now();
    let runner = store
        .listeners()
        .config(config())
        .at_least_once(Noop)
        .start()
        .await
        .map_err(|e| format!("start the runner: {e}"))?;
    let waited = wait(&runner, "bench-noop", head).await;
    let elapsed = t0.elapsed();
    runner.shutdown().await;
    waited?;
    let r = throughput_row(WORKLOAD, "catch_up_noop", 1, head, elapsed);
    say(&format!(
        "  {:.0} events/s ({:.1} s)",
        r.ops_per_s,
        elapsed.as_secs_f64()
    ));
    rows.push(r);

    // (2) A transactional projection, one row per event.
    let target = head.min(PROJECTION_EVENTS);
    let table = format!("{}.bench_projection", store.schema());
    db.execute(&format!(
        "CREATE TABLE {table} (position bigint PRIMARY KEY, cart_id uuid NOT NULL, kind text NOT NULL)"
    ))
    .await?;
    say(&format!(
        "listener: transactional projection over {target} events"
    ));
    let t0 = Instant::now();
    let runner = store
        .listeners()
        .config(config())
        .transactional(Projection {
            insert: format!("INSERT INTO {table} (position, cart_id, kind) VALUES ($1, $2, $3)"),
        })
        .start()
        .await
        .map_err(|e| format!("start the runner: {e}"))?;
    let waited = wait(&runner, "bench-projection", target).await;
    let elapsed = t0.elapsed();
    runner.shutdown().await;
    waited?;
    let r = throughput_row(WORKLOAD, "projection_tx", 1, target, elapsed);
    say(&format!(
        "  {:.0} events/s ({:.1} s)",
        r.ops_per_s,
        elapsed.as_secs_f64()
    ));
    rows.push(r);
    Ok(())
}

/// Appends one ping every `1 / rate` s for `warmup + window` (each append in
/// its own task, so a slow append does not slow the rate). Returns the
/// `[from, to)` range in µs of the pings sent inside the window, and how many
/// were sent in all.
pub async fn send_pings(
    store: &PgEventStore,
    rate: u32,
    window: Duration,
) -> Result<(u64, u64, u64), String> {
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let from = ping::now_us() + WARMUP.as_micros() as u64;
    let to = from + window.as_micros() as u64;
    let end = start + WARMUP + window;
    let mut tasks = tokio::task::JoinSet::new();
    let mut seq = 0u64;
    loop {
        ticker.tick().await;
        if Instant::now() >= end {
            break;
        }
        seq += 1;
        let store = store.clone();
        tasks.spawn(async move {
            let record = Ping::now(seq).to_record().map_err(|e| e.to_string())?;
            store
                .append(vec![record], None)
                .await
                .map(|_| ())
                .map_err(|e| format!("append: {e}"))
        });
        while let Some(done) = tasks.try_join_next() {
            done.map_err(|e| format!("an append task failed: {e}"))??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| format!("an append task failed: {e}"))??;
    }
    Ok((from, to, seq))
}

/// (3) Append → handler latency under a steady [`LIVE_RATE`] appends/s.
async fn live(store: &PgEventStore, window: Duration) -> Result<Row, String> {
    say(&format!("listener: live latency at {LIVE_RATE} appends/s"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let runner = store
        .listeners()
        .at_least_once(PingRecorder { seen: seen.clone() })
        .start()
        .await
        .map_err(|e| format!("start the runner: {e}"))?;
    let sent = send_pings(store, LIVE_RATE, window).await;
    let caught = match store.head().await {
        Ok(Some(head)) => wait(&runner, "bench-ping", head.0).await,
        Ok(None) => Ok(()),
        Err(e) => Err(format!("head: {e}")),
    };
    runner.shutdown().await;
    let (from, to, _) = sent?;
    caught?;
    Ok(sent_latency_row(
        WORKLOAD,
        "live_latency",
        &seen,
        from..to,
        window,
    ))
}
