//! A small bank whose decisions fold a snapshotted balance: the domain of the
//! snapshot tests, run against the in-memory store (`memory_snapshot`) and
//! PostgreSQL (`pg_snapshot`) alike.

use std::sync::Arc;

use dcb_core::{
    Decided, Decision, DecisionError, DecisionMaker, DecisionState, Event, EventStore, Snapshot,
    Snapshotted, StateMutate, StateQuery,
};
use serde::{Deserialize, Serialize};

/// Money moving in and out of an account.
#[derive(Event, Debug, Clone, PartialEq)]
pub enum BankEvent {
    /// Money paid in.
    Deposited {
        /// The account.
        #[id]
        account: String,
        /// How much.
        amount: u64,
    },
    /// Money taken out.
    Withdrawn {
        /// The account.
        #[id]
        account: String,
        /// How much.
        amount: u64,
    },
}

/// An account's balance and how many events made it: the snapshotted state.
#[derive(StateQuery, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[state_query(BankEvent)]
pub struct Balance {
    /// The account.
    #[id]
    pub account: String,
    /// Deposits minus withdrawals.
    pub balance: u64,
    /// Events folded.
    pub operations: u64,
}

impl Balance {
    /// The empty balance of `account`.
    pub fn new(account: &str) -> Self {
        Balance {
            account: account.into(),
            balance: 0,
            operations: 0,
        }
    }
}

impl StateMutate for Balance {
    fn mutate(&mut self, event: BankEvent) {
        match event {
            BankEvent::Deposited { amount, .. } => self.balance += amount,
            BankEvent::Withdrawn { amount, .. } => self.balance -= amount,
        }
        self.operations += 1;
    }
}

impl Snapshot for Balance {}

/// Why a decision was rejected.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BankError {
    /// A withdrawal larger than the balance; carries the state it saw.
    #[error("insufficient funds: balance {balance} after {operations} operations")]
    InsufficientFunds {
        /// The balance the decision saw.
        balance: u64,
        /// The events folded into it.
        operations: u64,
    },
}

/// Pays `amount` into `account`; always accepted.
pub struct Deposit {
    /// The account.
    pub account: String,
    /// How much.
    pub amount: u64,
}

impl Decision for Deposit {
    type Event = BankEvent;
    type StateQuery = Snapshotted<Balance>;
    type Error = BankError;

    fn state_query(&self) -> Snapshotted<Balance> {
        Snapshotted::new(Balance::new(&self.account))
    }

    fn process(&self, _: &Snapshotted<Balance>) -> Result<Vec<BankEvent>, BankError> {
        Ok(vec![BankEvent::Deposited {
            account: self.account.clone(),
            amount: self.amount,
        }])
    }
}

/// Takes `amount` out of `account`; rejected past the balance.
pub struct Withdraw {
    /// The account.
    pub account: String,
    /// How much.
    pub amount: u64,
}

impl Decision for Withdraw {
    type Event = BankEvent;
    type StateQuery = Snapshotted<Balance>;
    type Error = BankError;

    fn state_query(&self) -> Snapshotted<Balance> {
        Snapshotted::new(Balance::new(&self.account))
    }

    fn process(&self, state: &Snapshotted<Balance>) -> Result<Vec<BankEvent>, BankError> {
        if state.balance < self.amount {
            return Err(BankError::InsufficientFunds {
                balance: state.balance,
                operations: state.operations,
            });
        }
        Ok(vec![BankEvent::Withdrawn {
            account: self.account.clone(),
            amount: self.amount,
        }])
    }
}

/// A [`Deposit`] of `amount` into `account`.
pub fn deposit(account: &str, amount: u64) -> Deposit {
    Deposit {
        account: account.into(),
        amount,
    }
}

/// A [`Withdraw`] of `amount` from `account`.
pub fn withdraw(account: &str, amount: u64) -> Withdraw {
    Withdraw {
        account: account.into(),
        amount,
    }
}

/// The `(balance, operations)` a decision sees, by asking for more than any
/// balance holds.
pub async fn balance_of<S: EventStore>(maker: &DecisionMaker<S>, account: &str) -> (u64, u64) {
    match maker.make(withdraw(account, u64::MAX)).await {
        Err(DecisionError::Rejected(BankError::InsufficientFunds {
            balance,
            operations,
        })) => (balance, operations),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// The snapshot key of `account`'s balance.
pub fn key_of(account: &str) -> String {
    Snapshotted::new(Balance::new(account))
        .snapshot_key()
        .expect("a snapshotted state has a key")
}

/// A decision's outcome as text (its events with their positions, or the
/// error), to compare two makers step by step.
pub fn outcome(result: Result<Decided<BankEvent>, DecisionError<BankError>>) -> String {
    match result {
        Ok(decided) => format!(
            "ok {:?}",
            decided
                .events
                .iter()
                .map(|e| (e.position, e.event.clone()))
                .collect::<Vec<_>>()
        ),
        Err(e) => format!("err {e}"),
    }
}

/// What a race of withdrawals ended with.
#[derive(Debug, Default)]
pub struct RaceTally {
    /// Withdrawals committed.
    pub committed: usize,
    /// Attempts beyond the first, summed over the committed ones: each is a
    /// failed append condition.
    pub retries: usize,
    /// Committed withdrawals whose state started from a snapshot.
    pub from_snapshot: usize,
}

/// Releases `racers` tasks at once, racer `i` withdrawing `amount` from
/// `account` through `makers[i % makers.len()]`, and tallies them. A
/// rejection must have seen a balance below `amount`; any other error fails
/// the test.
pub async fn race_withdrawals<S: EventStore + 'static>(
    makers: &[Arc<DecisionMaker<S>>],
    racers: usize,
    account: &str,
    amount: u64,
) -> RaceTally {
    let barrier = Arc::new(tokio::sync::Barrier::new(racers));
    let mut tasks = Vec::new();
    for racer in 0..racers {
        let maker = makers[racer % makers.len()].clone();
        let barrier = barrier.clone();
        let withdrawal = withdraw(account, amount);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            maker.make(withdrawal).await
        }));
    }
    let mut tally = RaceTally::default();
    for task in tasks {
        match task.await.expect("racer task") {
            Ok(decided) => {
                tally.committed += 1;
                tally.retries += decided.attempts as usize - 1;
                tally.from_snapshot += usize::from(decided.snapshot.is_some());
            }
            Err(DecisionError::Rejected(BankError::InsufficientFunds { balance, .. })) => {
                assert!(balance < amount, "rejected with {balance} available")
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    tally
}
