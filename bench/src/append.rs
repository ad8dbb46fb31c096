//! The `append` workload: decisions through the Postgres event store on
//! disjoint and on hot boundaries, a raw INSERT baseline at the same
//! concurrency, and the same decisions on an empty and on a preloaded log.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dcb_core::{
    Decided, DecisionError, DecisionMaker, Event, EventRecord, EventStore, RetryPolicy,
};
use uuid::Uuid;

use crate::baseline;
use crate::cart::{last_line, AddItem, AddLine, CartCreated, CartEvent, ItemAdded, MAX_ITEMS};
use crate::cli::Args;
use crate::db::{Db, PgEventStore};
use crate::report::Row;
use crate::runner::{run_timed, WARMUP};
use crate::stats::{Measured, OpOutcome};

/// Callers of the disjoint variant (and connections of the baseline).
pub const DISJOINT_CONCURRENCY: [usize; 4] = [1, 8, 32, 64];
/// Callers of the contended variant.
pub const CONTENDED_CONCURRENCY: [usize; 2] = [8, 32];
/// Hot boundaries of the contended variant.
pub const HOT_BOUNDARIES: usize = 4;
/// A hot cart is replaced by a fresh one after this many lines, so the state
/// a decision reads stays the size of a busy cart instead of growing for the
/// whole run; there are always exactly [`HOT_BOUNDARIES`] hot carts.
pub const HOT_CART_LINES: u32 = 100;
/// Callers of the preloaded variant.
pub const PRELOADED_CONCURRENCY: usize = 8;
/// Events per append while preloading.
pub const PRELOAD_BATCH: usize = 5_000;
/// Appends in flight while preloading.
pub const PRELOAD_LOADERS: usize = 2;

const WORKLOAD: &str = "append";

/// Connections for a store serving `callers`: one per caller plus the writer.
fn store_connections(callers: usize) -> u32 {
    callers as u32 + 2
}

fn say(line: &str) {
    eprintln!("[dcb-bench] {line}");
}

/// Runs every variant of the workload, pushing rows into `rows` as they are
/// measured (so an error part way still leaves the earlier rows).
///
/// # Errors
/// The first failure of any variant.
pub async fn run(db: &Db, args: &Args, rows: &mut Vec<Row>) -> Result<(), String> {
    let window = Duration::from_secs_f64(args.seconds);
    let first_row = rows.len();
    let result = run_variants(db, args, window, rows).await;
    // Decisions first, then their baselines, then the preloaded pair, however
    // far the run got.
    rows[first_row..].sort_by_key(|r| variant_rank(&r.variant));
    result
}

fn variant_rank(variant: &str) -> u8 {
    match variant {
        "disjoint" => 0,
        "contended" => 1,
        "raw_insert" => 2,
        _ => 3,
    }
}

async fn run_variants(
    db: &Db,
    args: &Args,
    window: Duration,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    // (a) + (c): each concurrency's baseline and its decisions measured in
    // alternating slices, so both see the same load on a shared machine.
    let concurrencies: Vec<usize> = match &args.concurrency {
        Some(list) => list.clone(),
        None => DISJOINT_CONCURRENCY.to_vec(),
    };
    for &c in &concurrencies {
        say(&format!(
            "raw_insert and disjoint: {c} connection(s)/caller(s), alternating"
        ));
        let raw = baseline::RawInsert::create(db, c).await?;
        let store = db
            .open_store(&format!("disjoint_c{c}"), store_connections(c))
            .await?;
        // One maker (one cache) for the whole row, as in an application.
        let maker = Arc::new(DecisionMaker::new(store.clone()));
        let measured = alternate(
            window,
            |warmup, slice| raw.measure(c, warmup, slice),
            |warmup, slice| disjoint(&maker, c, warmup, slice),
        )
        .await;
        let cache = maker.cache_stats();
        db.close_store(store).await?;
        raw.drop(db).await?;
        let (raw, decided) = measured?;
        let raw_row = Row::measured(WORKLOAD, "raw_insert", c, &raw);
        let raw_ops = raw_row.ops_per_s;
        let mut decided = Row::measured(WORKLOAD, "disjoint", c, &decided);
        decided.compare_with(raw_ops);
        decided.record_cache(cache);
        say(&format!(
            "  {raw_ops:.0} inserts/s, {:.0} decisions/s ({:.2}x raw)",
            decided.ops_per_s,
            decided.ratio.unwrap_or(0.0)
        ));
        rows.push(raw_row);
        rows.push(decided);
    }

    // (b) hot boundaries.
    for &c in &CONTENDED_CONCURRENCY {
        say(&format!(
            "contended: {c} callers on {HOT_BOUNDARIES} hot carts"
        ));
        let store = db
            .open_store(&format!("contended_c{c}"), store_connections(c))
            .await?;
        let retry = RetryPolicy::default().max_attempts(10_000);
        let maker = Arc::new(DecisionMaker::new(store.clone()).with_retry(retry));
        let measured = contended(&maker, c, window).await;
        let cache = maker.cache_stats();
        db.close_store(store).await?;
        let measured = measured?;
        if measured.give_ups > 0 {
            say(&format!(
                "  WARNING: {} decisions gave up",
                measured.give_ups
            ));
        }
        let mut r = Row::measured(WORKLOAD, "contended", c, &measured);
        r.record_cache(cache);
        say(&format!(
            "  {:.0} decisions/s, {:.1}% of attempts conflicted",
            r.ops_per_s,
            r.conflict_rate.unwrap_or(0.0) * 100.0
        ));
        rows.push(r);
    }

    // (d) the same decisions on an empty and on a preloaded log.
    if args.preload > 0 {
        preloaded(db, args.preload, window, rows).await?;
    }
    Ok(())
}

/// Turns a decision's result into an outcome; a give-up is an outcome, any
/// other failure stops the run.
fn outcome<E: std::error::Error>(
    result: Result<Decided<CartEvent>, DecisionError<E>>,
) -> Result<OpOutcome, String> {
    match result {
        Ok(d) => Ok(OpOutcome {
            events: d.events.len() as u64,
            attempts: d.attempts,
            gave_up: false,
        }),
        Err(DecisionError::Conflict { attempts }) => Ok(OpOutcome {
            events: 0,
            attempts,
            gave_up: true,
        }),
        Err(e) => Err(format!("decision failed: {e}")),
    }
}

fn product() -> (u32, u32) {
    (fastrand::u32(1..100_000), fastrand::u32(100..100_000))
}

/// The measuring window is cut into slices of about this length, raw
/// inserts and decisions taking turns, so a change of load on a shared
/// machine hits both sides of the ratio alike.
const SLICE: Duration = Duration::from_secs(2);
/// The warm-up before every slice after the first (pools and tables are
/// already warm; this only lets the callers of the other side drain).
const SLICE_WARMUP: Duration = Duration::from_millis(250);

/// Measures two variants in alternating slices adding up to `window` each,
/// the side that goes first swapping every slice. Each closure takes
/// (warm-up, window) and measures its variant once.
async fn alternate<A, B, FA, FB>(
    window: Duration,
    mut first: A,
    mut second: B,
) -> Result<(Measured, Measured), String>
where
    A: FnMut(Duration, Duration) -> FA,
    B: FnMut(Duration, Duration) -> FB,
    FA: std::future::Future<Output = Result<Measured, String>>,
    FB: std::future::Future<Output = Result<Measured, String>>,
{
    let slices = (window.as_secs_f64() / SLICE.as_secs_f64()).ceil().max(1.0) as u32;
    let slice = window / slices;
    let mut first_total = Measured::default();
    let mut second_total = Measured::default();
    for i in 0..slices {
        let warmup = if i < 2 { WARMUP } else { SLICE_WARMUP };
        if i % 2 == 0 {
            first_total.extend(first(warmup, slice).await?);
            second_total.extend(second(warmup, slice).await?);
        } else {
            second_total.extend(second(warmup, slice).await?);
            first_total.extend(first(warmup, slice).await?);
        }
    }
    Ok((first_total, second_total))
}

/// (a) Each caller adds [`MAX_ITEMS`] items to a cart of its own, then moves
/// to a fresh cart: decisions never share a boundary.
pub(crate) async fn disjoint(
    maker: &Arc<DecisionMaker<PgEventStore>>,
    concurrency: usize,
    warmup: Duration,
    window: Duration,
) -> Result<Measured, String> {
    run_timed(concurrency, warmup, window, |_| {
        let maker = maker.clone();
        let mut cart_id = Uuid::new_v4();
        let mut items = 0;
        move || {
            if items == MAX_ITEMS {
                cart_id = Uuid::new_v4();
                items = 0;
            }
            items += 1;
            let (product_id, price_cents) = product();
            let decision = AddItem {
                cart_id,
                product_id,
                price_cents,
            };
            let maker = maker.clone();
            async move { outcome(maker.make(decision).await) }
        }
    })
    .await
}

/// (b) Callers share [`HOT_BOUNDARIES`] carts (caller `i` on cart `i % 4`)
/// and add lines with no cap; the retry policy never gives up in practice.
async fn contended(
    maker: &Arc<DecisionMaker<PgEventStore>>,
    concurrency: usize,
    window: Duration,
) -> Result<Measured, String> {
    let hot: Arc<Vec<Mutex<Uuid>>> = Arc::new(
        (0..HOT_BOUNDARIES)
            .map(|_| Mutex::new(Uuid::new_v4()))
            .collect(),
    );
    run_timed(concurrency, WARMUP, window, |i| {
        let maker = maker.clone();
        let hot = hot.clone();
        let slot = i % HOT_BOUNDARIES;
        move || {
            let cart_id = *hot[slot].lock().unwrap_or_else(|e| e.into_inner());
            let (product_id, price_cents) = product();
            let decision = AddLine {
                cart_id,
                product_id,
                price_cents,
            };
            let maker = maker.clone();
            let hot = hot.clone();
            async move {
                let result = maker.make(decision).await;
                if let Ok(d) = &result {
                    if last_line(&d.events) >= HOT_CART_LINES {
                        let mut current = hot[slot].lock().unwrap_or_else(|e| e.into_inner());
                        if *current == cart_id {
                            *current = Uuid::new_v4();
                        }
                    }
                }
                outcome(result)
            }
        }
    })
    .await
}

/// A readable size: `1m`, `250k`, `1234`.
fn short_count(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}m", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// (d) Disjoint decisions at [`PRELOADED_CONCURRENCY`] callers on a store
/// preloaded with `events` events and on an empty one, in alternating
/// slices.
async fn preloaded(
    db: &Db,
    events: u64,
    window: Duration,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let c = PRELOADED_CONCURRENCY;
    let n = short_count(events);
    let full = db.open_store("preloaded", store_connections(c)).await?;
    let empty = match db.open_store("empty", store_connections(c)).await {
        Ok(store) => store,
        Err(e) => {
            db.close_store(full).await?;
            return Err(e);
        }
    };
    let result = async {
        say(&format!("preloaded: loading {events} events..."));
        let started = Instant::now();
        preload(&full, events).await?;
        db.settle_schema(full.schema()).await?;
        say(&format!(
            "  loaded, vacuumed, analyzed and checkpointed in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        say(&format!(
            "preloaded: {c} callers after {n} events and on an empty store, alternating"
        ));
        let empty_maker = Arc::new(DecisionMaker::new(empty.clone()));
        let full_maker = Arc::new(DecisionMaker::new(full.clone()));
        let (empty_measured, full_measured) = alternate(
            window,
            |warmup, slice| disjoint(&empty_maker, c, warmup, slice),
            |warmup, slice| disjoint(&full_maker, c, warmup, slice),
        )
        .await?;
        let mut empty_row = Row::measured(WORKLOAD, "preloaded_empty", c, &empty_measured);
        empty_row.record_cache(empty_maker.cache_stats());
        let mut full_row = Row::measured(WORKLOAD, &format!("preloaded_{n}"), c, &full_measured);
        full_row.record_cache(full_maker.cache_stats());
        full_row.compare_with(empty_row.ops_per_s);
        say(&format!(
            "  {:.0} decisions/s empty, {:.0} after {n} ({:.2}x empty)",
            empty_row.ops_per_s,
            full_row.ops_per_s,
            full_row.ratio.unwrap_or(0.0)
        ));
        rows.push(empty_row);
        rows.push(full_row);
        Ok::<_, String>(())
    }
    .await;
    db.close_store(empty).await?;
    db.close_store(full).await?;
    result
}

/// The events of one preloaded cart: created, then two items.
fn preload_cart() -> [CartEvent; 3] {
    let cart_id = Uuid::new_v4();
    let item = |line| {
        let (product_id, price_cents) = product();
        CartEvent::ItemAdded(ItemAdded {
            cart_id,
            item_id: Uuid::new_v4(),
            product_id,
            price_cents,
            line,
        })
    };
    [
        CartEvent::CartCreated(CartCreated { cart_id }),
        item(1),
        item(2),
    ]
}

/// Appends `total` cart events (about `total / 3` carts) in batches of
/// [`PRELOAD_BATCH`], [`PRELOAD_LOADERS`] appends in flight.
pub async fn preload(store: &PgEventStore, total: u64) -> Result<(), String> {
    let batches = total.div_ceil(PRELOAD_BATCH as u64);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut loaders = tokio::task::JoinSet::new();
    for _ in 0..PRELOAD_LOADERS {
        let store = store.clone();
        let next = next.clone();
        loaders.spawn(async move {
            loop {
                let batch = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if batch >= batches {
                    return Ok::<_, String>(());
                }
                let len = (total - batch * PRELOAD_BATCH as u64).min(PRELOAD_BATCH as u64) as usize;
                let mut records: Vec<EventRecord> = Vec::with_capacity(len);
                while records.len() < len {
                    for event in preload_cart() {
                        if records.len() < len {
                            records.push(event.to_record().map_err(|e| e.to_string())?);
                        }
                    }
                }
                store
                    .append(records, None)
                    .await
                    .map_err(|e| format!("preload append: {e}"))?;
                let done = (batch + 1) * PRELOAD_BATCH as u64;
                if done.is_multiple_of(100_000) {
                    say(&format!("  {} events", done.min(total)));
                }
            }
        });
    }
    while let Some(joined) = loaders.join_next().await {
        joined.map_err(|e| format!("a preload task failed: {e}"))??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_counts() {
        assert_eq!(short_count(1_000_000), "1m");
        assert_eq!(short_count(250_000), "250k");
        assert_eq!(short_count(1_234), "1234");
    }

    #[test]
    fn rows_sort_decisions_then_baselines_then_preloaded() {
        let mut variants = [
            "raw_insert",
            "disjoint",
            "preloaded_empty",
            "contended",
            "preloaded_1m",
        ];
        variants.sort_by_key(|v| variant_rank(v));
        assert_eq!(
            variants,
            [
                "disjoint",
                "contended",
                "raw_insert",
                "preloaded_empty",
                "preloaded_1m"
            ]
        );
    }
}
