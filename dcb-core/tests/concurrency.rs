//! 64 concurrent decisions on one bank account against the in-memory store:
//! withdrawals race with deposits and with each other. The business rule
//! holds, nothing is lost, and the default retry policy is enough.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::gate::Gated;
use common::*;
use dcb_core::{
    AppendCondition, AppendResult, DecisionError, DecisionMaker, EventRecord, EventStore,
    InMemoryEventStore, Query, ReadOptions, ReadResult, StoreError, Tag,
};
use tokio::sync::Barrier;

const CALLS: usize = 64;

/// The in-memory store with a random pause between a read and the next
/// step, so that decisions really interleave (the plain in-memory store
/// answers without ever yielding).
struct Jittery(InMemoryEventStore);

#[async_trait]
impl EventStore for Jittery {
    async fn read(&self, query: &Query, options: ReadOptions) -> Result<ReadResult, StoreError> {
        let result = self.0.read(query, options).await;
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..1500))).await;
        result
    }

    async fn append(
        &self,
        events: Vec<EventRecord>,
        condition: Option<AppendCondition>,
    ) -> Result<AppendResult, StoreError> {
        tokio::task::yield_now().await;
        self.0.append(events, condition).await
    }
}

#[derive(Debug)]
enum Call {
    Deposit(u64),
    Withdraw(u64),
}

struct Outcome {
    committed_deposits: u64,
    committed_withdrawals: u64,
    rejected: usize,
    max_attempts: u32,
    /// Attempts beyond the first, over the committed decisions: each one
    /// followed a failed append condition.
    retries: u32,
}

/// Races `CALLS` deposits and withdrawals on one account through one
/// decision maker (`cache_entries` states cached), calling `start` once the
/// account is set up, just before the racers are released together.
async fn race<S: EventStore + 'static>(
    store: S,
    seed: u64,
    cache_entries: usize,
    start: impl FnOnce(&S),
) -> Outcome {
    let maker = Arc::new(DecisionMaker::new(store).cache_entries(cache_entries));
    maker
        .make(Open {
            account: "a1".into(),
            owner: "ann".into(),
        })
        .await
        .expect("open");
    maker
        .make(Deposit {
            account: "a1".into(),
            amount: 50,
        })
        .await
        .expect("first deposit");

    let mut rng = fastrand::Rng::with_seed(seed);
    let mut calls: Vec<Call> = (0..CALLS)
        .map(|i| {
            if i % 2 == 0 {
                Call::Deposit(rng.u64(1..=40))
            } else {
                Call::Withdraw(rng.u64(1..=60))
            }
        })
        .collect();
    rng.shuffle(&mut calls);

    start(maker.store());
    let barrier = Arc::new(Barrier::new(CALLS));
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|call| {
            let (maker, barrier) = (maker.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let result = match call {
                    Call::Deposit(amount) => {
                        maker
                            .make(Deposit {
                                account: "a1".into(),
                                amount,
                            })
                            .await
                    }
                    Call::Withdraw(amount) => {
                        maker
                            .make(Withdraw {
                                account: "a1".into(),
                                amount,
                            })
                            .await
                    }
                };
                (call, result)
            })
        })
        .collect();

    let mut outcome = Outcome {
        committed_deposits: 50,
        committed_withdrawals: 0,
        rejected: 0,
        max_attempts: 0,
        retries: 0,
    };
    let mut committed_positions = Vec::new();
    for task in tasks {
        let (call, result) = task.await.expect("a decision panicked");
        match (&call, result) {
            (_, Ok(decided)) => {
                assert_eq!(decided.events.len(), 1, "{call:?}");
                outcome.max_attempts = outcome.max_attempts.max(decided.attempts);
                outcome.retries += decided.attempts - 1;
                committed_positions.push(decided.events[0].position);
                match call {
                    Call::Deposit(amount) => outcome.committed_deposits += amount,
                    Call::Withdraw(amount) => outcome.committed_withdrawals += amount,
                }
            }
            (
                Call::Withdraw(_),
                Err(DecisionError::Rejected(BankError::InsufficientFunds { .. })),
            ) => outcome.rejected += 1,
            (_, Err(DecisionError::Conflict { attempts })) => panic!(
                "{call:?} gave up after {attempts} attempts: the default retry policy is not enough"
            ),
            (_, Err(e)) => panic!("{call:?} failed with {e}"),
        }
    }

    // Fold the final log in position order.
    let (_, events) = maker
        .store()
        .read(
            &Query::tags([Tag::new("account", "a1")]),
            ReadOptions::forwards(),
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut balance: i64 = 0;
    let (mut deposits, mut withdrawals) = (0u64, 0u64);
    let mut logged_positions = Vec::new();
    for event in &events {
        let decoded = event.decode::<BankEvent>().expect("decodes").event;
        match decoded {
            BankEvent::Opened { .. } => continue,
            BankEvent::Deposited { amount, .. } => {
                balance += amount as i64;
                deposits += amount;
            }
            BankEvent::Withdrawn { amount, .. } => {
                balance -= amount as i64;
                withdrawals += amount;
            }
        }
        assert!(
            balance >= 0,
            "the balance went negative ({balance}) at position {}",
            event.position
        );
        logged_positions.push(event.position);
    }
    // the first deposit was made before the race
    logged_positions.remove(0);
    committed_positions.sort();
    assert_eq!(
        committed_positions, logged_positions,
        "the committed decisions are exactly the events in the log"
    );
    assert_eq!(deposits, outcome.committed_deposits, "no lost deposit");
    assert_eq!(
        withdrawals, outcome.committed_withdrawals,
        "no lost withdrawal"
    );
    assert!(withdrawals <= deposits);
    assert_eq!(
        balance,
        outcome.committed_deposits as i64 - outcome.committed_withdrawals as i64,
        "final balance = committed deposits - committed withdrawals"
    );
    outcome
}

/// Every racer reads before any appends (the gate, and no cache of states
/// to skip the read): the withdrawals that fit the balance all append under
/// the same condition, one wins, the others must fail theirs and retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deposits_and_withdrawals_on_one_account() {
    for seed in 0..5 {
        let outcome = race(
            Gated::new(InMemoryEventStore::new(), CALLS),
            seed,
            0,
            Gated::arm,
        )
        .await;
        eprintln!(
            "seed {seed}: deposits {} withdrawals {} rejected {} max attempts {} retries {}",
            outcome.committed_deposits,
            outcome.committed_withdrawals,
            outcome.rejected,
            outcome.max_attempts,
            outcome.retries
        );
        assert!(
            outcome.retries > 0,
            "seed {seed}: no append condition failed: the racers did not race"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deposits_and_withdrawals_with_interleaving() {
    let mut most = 0;
    for seed in 0..5 {
        let outcome = race(
            Jittery(InMemoryEventStore::new()),
            seed,
            dcb_core::DEFAULT_CACHE_ENTRIES,
            |_| {},
        )
        .await;
        eprintln!(
            "seed {seed}: deposits {} withdrawals {} rejected {} max attempts {}",
            outcome.committed_deposits,
            outcome.committed_withdrawals,
            outcome.rejected,
            outcome.max_attempts
        );
        most = most.max(outcome.max_attempts);
    }
    assert!(
        most > 1,
        "the racers never conflicted: the test does not race"
    );
}
