//! 16 concurrent creators on a log of 1,000 invoices take the numbers after
//! it without a gap or a repeat, with snapshots on; and what a snapshot
//! saves on a long stream, counted.

use std::sync::Arc;

use dcb_core::{DecisionMaker, Event, EventStore, SnapshotStore};
use patterns::invoice_numbers::{CreateInvoice, InvoiceEvent};

use crate::race::{report, Env, Guard};

const CREATORS: usize = 16;
/// Fold this many events and the state is saved again.
const SNAPSHOT_EVERY: u32 = 100;

fn create(customer: String) -> CreateInvoice {
    CreateInvoice {
        customer,
        amount_cents: 100,
    }
}

/// Appends invoices `1..=count` as a history (no decision needed for that).
async fn seed(env: &Env, count: u64) {
    let numbers: Vec<u64> = (1..=count).collect();
    for chunk in numbers.chunks(500) {
        let records = chunk
            .iter()
            .map(|&number| {
                InvoiceEvent::InvoiceCreated {
                    number,
                    customer: "history".into(),
                    amount_cents: 100,
                }
                .to_record()
                .expect("encodes")
            })
            .collect();
        env.store().append(records, None).await.expect("seeded");
    }
}

/// Every number in the log, in log order.
async fn numbers(env: &Env) -> Vec<u64> {
    env.log::<InvoiceEvent>()
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            InvoiceEvent::InvoiceCreated { number, .. } => Some(number),
            InvoiceEvent::InvoicePaid { .. } => None,
        })
        .collect()
}

/// Gaps and repeats in `numbers`, which should be exactly 1..=n.
fn violations(numbers: &[u64]) -> Vec<String> {
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable();
    let mut violations = Vec::new();
    let mut expected = 1;
    for n in sorted {
        if n < expected {
            violations.push(format!("{n} given twice"));
        } else {
            if n > expected {
                violations.push(format!("gap before {n}"));
            }
            expected = n + 1;
        }
    }
    violations
}

async fn creators_race(guard: Guard, history: u64) -> Vec<String> {
    let env = Env::new().await;
    seed(&env, history).await;
    let snapshots: Arc<dyn SnapshotStore> = env.snapshots().await;
    // One creation saves the snapshot every racer starts from.
    env.maker()
        .with_snapshots(snapshots.clone(), SNAPSHOT_EVERY)
        .make(create("warm-up".into()))
        .await
        .expect("created");

    let raced = env
        .race(guard, CREATORS, |racer| {
            let maker = racer
                .maker
                .with_snapshots(snapshots.clone(), SNAPSHOT_EVERY);
            async move { maker.make(create(format!("creator-{}", racer.index))).await }
        })
        .await;
    let successes = raced.outcomes.iter().filter(|o| o.is_ok()).count();
    for outcome in &raced.outcomes {
        if let Err(e) = outcome {
            panic!("creating an invoice cannot be refused: {e}");
        }
    }
    let numbers = numbers(&env).await;
    let violations = violations(&numbers);
    let counts = raced.counts;
    report(
        "invoice numbers",
        guard,
        &counts,
        successes,
        0,
        &format!(
            "checked {} numbers after {history} earlier invoices: {} gap(s) or repeat(s); \
             {:.1} events folded per attempt from a snapshot",
            numbers.len(),
            violations.len(),
            counts.events_read as f64 / counts.attempts as f64,
        ),
    );
    if guard == Guard::Kept {
        assert!(counts.conflicts > 0, "the creators raced");
        assert_eq!(numbers.len() as u64, history + 1 + CREATORS as u64);
    }
    env.cleanup().await;
    violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_creators_take_the_next_numbers_without_gap_or_repeat() {
    assert_eq!(
        creators_race(Guard::Kept, 1_000).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_append_condition_numbers_repeat() {
    let violations = creators_race(Guard::Dropped, 1_000).await;
    assert!(
        violations.iter().any(|v| v.contains("twice")),
        "dropping the condition must give a number twice, got {violations:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_folds_the_new_events_instead_of_the_whole_stream() {
    const HISTORY: u64 = 2_000;
    let env = Env::new().await;
    seed(&env, HISTORY).await;
    let snapshots: Arc<dyn SnapshotStore> = env.snapshots().await;

    let plain = env.counting_store();
    DecisionMaker::new(plain.clone())
        .make(create("plain".into()))
        .await
        .expect("created");
    let without = plain.counts().events_read;

    let first = env.counting_store();
    DecisionMaker::new(first.clone())
        .with_snapshots(snapshots.clone(), SNAPSHOT_EVERY)
        .make(create("first".into()))
        .await
        .expect("created");
    let second = env.counting_store();
    let decided = DecisionMaker::new(second.clone())
        .with_snapshots(snapshots, SNAPSHOT_EVERY)
        .make(create("second".into()))
        .await
        .expect("created");

    let numbers = numbers(&env).await;
    assert_eq!(violations(&numbers), Vec::<String>::new());
    assert!(matches!(
        decided.events[0].event,
        InvoiceEvent::InvoiceCreated { number, .. } if number == HISTORY + 3
    ));
    assert_eq!(without, HISTORY, "without a snapshot: the whole stream");
    assert_eq!(
        first.counts().events_read,
        HISTORY + 1,
        "the first read saves the snapshot"
    );
    assert_eq!(
        second.counts().events_read,
        1,
        "from the snapshot: only the invoice created since"
    );
    println!(
        "invoice numbers snapshot: {without} events folded without a snapshot, {} to save one, \
         {} from it (log of {} invoices, saved every {SNAPSHOT_EVERY} folded events)",
        first.counts().events_read,
        second.counts().events_read,
        numbers.len(),
    );
    env.cleanup().await;
}
