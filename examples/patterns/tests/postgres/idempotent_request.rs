//! 16 payment requests, each sent 4 times at the same moment (a client
//! retrying after timeouts; 64 callers): each request is recorded once, and
//! every retry gets the first answer back. The request id travels as the
//! correlation id of the recorded event.

use std::collections::BTreeMap;

use dcb_core::Position;
use patterns::idempotent_request::{request_options, PaymentEvent, RecordPayment};
use uuid::Uuid;

use crate::race::{report, Env, Guard};

const REQUESTS: usize = 16;
const SENDS: usize = 4;

fn request_id(n: usize) -> Uuid {
    Uuid::from_u128(0x1000 + n as u128)
}

async fn retry_race(guard: Guard) -> Vec<String> {
    let env = Env::new().await;
    let raced = env
        .race(guard, REQUESTS * SENDS, |racer| async move {
            let request = racer.index / SENDS;
            let decision = RecordPayment {
                request_id: request_id(request),
                account: format!("account-{}", request % 4),
                amount_cents: 100 + request as u64,
            };
            // Each send is its own message: its id is the cause.
            let message = Uuid::new_v4();
            let decided = racer
                .maker
                .make_with(&decision, request_options(decision.request_id, message))
                .await;
            (request, decided)
        })
        .await;

    // What each send was told: the position of "its" payment.
    let mut answers: BTreeMap<usize, Vec<Position>> = BTreeMap::new();
    let mut replayed = 0;
    for (request, decided) in &raced.outcomes {
        let decided = decided
            .as_ref()
            .expect("recording a payment is never refused");
        replayed += usize::from(decided.replayed);
        answers
            .entry(*request)
            .or_default()
            .push(decided.events[0].position);
    }
    let fresh = raced.outcomes.len() - replayed;

    let log = env.log::<PaymentEvent>().await;
    let mut effects: BTreeMap<Uuid, usize> = BTreeMap::new();
    for event in &log {
        let request = event
            .metadata
            .correlation_id
            .expect("the request id is the correlation id");
        assert!(
            event.metadata.causation_id.is_some(),
            "the message is the cause"
        );
        *effects.entry(request).or_default() += 1;
    }
    let violations: Vec<String> = effects
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(request, n)| format!("request {request} recorded {n} times"))
        .collect();
    report(
        "idempotent request",
        guard,
        &raced.counts,
        fresh,
        0,
        &format!(
            "{REQUESTS} requests sent {SENDS}x each: {} payments in the log, {replayed} sends \
             answered by a replay, {} request(s) with more than one effect",
            log.len(),
            violations.len()
        ),
    );
    if guard == Guard::Kept {
        assert_eq!(log.len(), REQUESTS);
        assert_eq!((fresh, replayed), (REQUESTS, REQUESTS * (SENDS - 1)));
        for (request, positions) in &answers {
            assert!(
                positions.iter().all(|p| *p == positions[0]),
                "every send of request {request} is told the same payment: {positions:?}"
            );
        }
        assert!(raced.counts.conflicts > 0, "the sends raced");
    }
    env.cleanup().await;
    violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_retried_concurrently_has_one_effect() {
    assert_eq!(retry_race(Guard::Kept).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_append_condition_a_retry_pays_twice() {
    let violations = retry_race(Guard::Dropped).await;
    assert!(
        !violations.is_empty(),
        "dropping the condition must let a retry record the payment again"
    );
}
