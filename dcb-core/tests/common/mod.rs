//! A small bank domain with hand-written `Event`/`StateQuery` impls, shared by
//! the integration tests of dcb-core.
#![allow(dead_code)]

use dcb_core::{
    state_query_for, Codec, CodecError, Decision, Event, EventSchema, EventType, JsonCodec, Query,
    QueryItem, ReadModel, Sequenced, StateMutate, StateQuery, Tag,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankEvent {
    Opened { account: String, owner: String },
    Deposited { account: String, amount: u64 },
    Withdrawn { account: String, amount: u64 },
}

pub fn opened(account: &str, owner: &str) -> BankEvent {
    BankEvent::Opened {
        account: account.into(),
        owner: owner.into(),
    }
}

pub fn deposited(account: &str, amount: u64) -> BankEvent {
    BankEvent::Deposited {
        account: account.into(),
        amount,
    }
}

pub fn withdrawn(account: &str, amount: u64) -> BankEvent {
    BankEvent::Withdrawn {
        account: account.into(),
        amount,
    }
}

impl BankEvent {
    pub fn account(&self) -> &str {
        match self {
            BankEvent::Opened { account, .. }
            | BankEvent::Deposited { account, .. }
            | BankEvent::Withdrawn { account, .. } => account,
        }
    }
}

impl Event for BankEvent {
    const SCHEMA: &'static [EventSchema] = &[
        EventSchema {
            event_type: "Opened",
            tag_keys: &["account"],
        },
        EventSchema {
            event_type: "Deposited",
            tag_keys: &["account"],
        },
        EventSchema {
            event_type: "Withdrawn",
            tag_keys: &["account"],
        },
    ];

    fn event_type(&self) -> EventType {
        EventType::from_static(match self {
            BankEvent::Opened { .. } => "Opened",
            BankEvent::Deposited { .. } => "Deposited",
            BankEvent::Withdrawn { .. } => "Withdrawn",
        })
    }

    fn tags(&self) -> Vec<Tag> {
        vec![Tag::new("account", self.account())]
    }

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        JsonCodec::encode(self)
    }

    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError> {
        if !Self::handles(event_type) {
            return Err(CodecError::UnknownType(event_type.into()));
        }
        let event: BankEvent = JsonCodec::decode(payload)?;
        if event.event_type() != event_type {
            return Err(CodecError::Decode(format!(
                "payload of {} stored as {event_type}",
                event.event_type()
            )));
        }
        Ok(event)
    }
}

/// One account's state: opened, balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub opened: bool,
    pub balance: i64,
}

impl Account {
    pub fn new(id: &str) -> Self {
        Account {
            id: id.into(),
            opened: false,
            balance: 0,
        }
    }
}

impl StateQuery for Account {
    const NAME: &'static str = "Account";
    type Event = BankEvent;

    fn query(&self) -> Query {
        state_query_for::<BankEvent>(&[Tag::new("account", &self.id)])
    }
}

impl StateMutate for Account {
    fn mutate(&mut self, event: BankEvent) {
        match event {
            BankEvent::Opened { .. } => self.opened = true,
            BankEvent::Deposited { amount, .. } => self.balance += amount as i64,
            BankEvent::Withdrawn { amount, .. } => self.balance -= amount as i64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BankError {
    #[error("account {0} is already open")]
    AlreadyOpen(String),
    #[error("account {0} is not open")]
    NotOpen(String),
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds { balance: i64, requested: u64 },
}

pub struct Open {
    pub account: String,
    pub owner: String,
}

impl Decision for Open {
    type Event = BankEvent;
    type StateQuery = Account;
    type Error = BankError;

    fn state_query(&self) -> Account {
        Account::new(&self.account)
    }

    fn process(&self, state: &Account) -> Result<Vec<BankEvent>, BankError> {
        if state.opened {
            return Err(BankError::AlreadyOpen(self.account.clone()));
        }
        Ok(vec![opened(&self.account, &self.owner)])
    }
}

/// The events of type `event_type` of `account`.
fn of_account(event_type: &'static str, account: &str) -> Query {
    Query::from_items([QueryItem::new()
        .types([event_type])
        .tags([Tag::new("account", account)])])
}

pub struct Deposit {
    pub account: String,
    pub amount: u64,
}

impl Decision for Deposit {
    type Event = BankEvent;
    type StateQuery = Account;
    type Error = BankError;

    fn state_query(&self) -> Account {
        Account::new(&self.account)
    }

    /// A deposit only depends on the account being open.
    fn validation_query(&self) -> Option<Query> {
        Some(of_account("Opened", &self.account))
    }

    fn process(&self, state: &Account) -> Result<Vec<BankEvent>, BankError> {
        if !state.opened {
            return Err(BankError::NotOpen(self.account.clone()));
        }
        Ok(vec![deposited(&self.account, self.amount)])
    }
}

pub struct Withdraw {
    pub account: String,
    pub amount: u64,
}

impl Decision for Withdraw {
    type Event = BankEvent;
    type StateQuery = Account;
    type Error = BankError;

    fn state_query(&self) -> Account {
        Account::new(&self.account)
    }

    /// Deposits only raise the balance, so only withdrawals can invalidate it.
    fn validation_query(&self) -> Option<Query> {
        Some(of_account("Withdrawn", &self.account))
    }

    fn process(&self, state: &Account) -> Result<Vec<BankEvent>, BankError> {
        if !state.opened {
            return Err(BankError::NotOpen(self.account.clone()));
        }
        if state.balance < self.amount as i64 {
            return Err(BankError::InsufficientFunds {
                balance: state.balance,
                requested: self.amount,
            });
        }
        Ok(vec![withdrawn(&self.account, self.amount)])
    }
}

/// A decision over two states at once (a tuple).
pub struct Transfer {
    pub from: String,
    pub to: String,
    pub amount: u64,
}

impl Decision for Transfer {
    type Event = BankEvent;
    type StateQuery = (Account, Account);
    type Error = BankError;

    fn state_query(&self) -> (Account, Account) {
        (Account::new(&self.from), Account::new(&self.to))
    }

    fn process(&self, (from, to): &(Account, Account)) -> Result<Vec<BankEvent>, BankError> {
        if !from.opened {
            return Err(BankError::NotOpen(self.from.clone()));
        }
        if !to.opened {
            return Err(BankError::NotOpen(self.to.clone()));
        }
        if from.balance < self.amount as i64 {
            return Err(BankError::InsufficientFunds {
                balance: from.balance,
                requested: self.amount,
            });
        }
        Ok(vec![
            withdrawn(&self.from, self.amount),
            deposited(&self.to, self.amount),
        ])
    }
}

/// A stateless decision: it reads nothing and always succeeds.
pub struct Grant {
    pub account: String,
    pub amount: u64,
}

impl Decision for Grant {
    type Event = BankEvent;
    type StateQuery = ();
    type Error = BankError;

    fn state_query(&self) {}

    fn process(&self, _: &()) -> Result<Vec<BankEvent>, BankError> {
        Ok(vec![deposited(&self.account, self.amount)])
    }
}

/// A read model: balances of every account, and the last position seen.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Balances {
    pub balances: std::collections::BTreeMap<String, i64>,
    pub last_position: u64,
}

impl ReadModel for Balances {
    type Event = BankEvent;

    fn apply(&mut self, event: &Sequenced<BankEvent>) {
        self.last_position = event.position.get();
        match &event.event {
            BankEvent::Opened { account, .. } => {
                self.balances.insert(account.clone(), 0);
            }
            BankEvent::Deposited { account, amount } => {
                *self.balances.entry(account.clone()).or_default() += *amount as i64;
            }
            BankEvent::Withdrawn { account, amount } => {
                *self.balances.entry(account.clone()).or_default() -= *amount as i64;
            }
        }
    }
}

/// The racers' gate, shared by the concurrency tests.
pub mod gate {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use async_trait::async_trait;
    use dcb_core::{
        AppendCondition, AppendResult, EventRecord, EventStore, Query, ReadOptions, ReadResult,
        StoreError,
    };
    use tokio::sync::Barrier;

    /// A store that holds the first `n` reads after [`Gated::arm`] until all
    /// `n` were made: every racer then decides on the same state and appends
    /// under the same condition, the worst interleaving every time, however the
    /// tasks happen to be scheduled (with the plain in-memory store, which
    /// never yields, they could otherwise run one after the other).
    pub struct Gated<S> {
        inner: S,
        armed: AtomicBool,
        reads: AtomicUsize,
        n: usize,
        barrier: Barrier,
    }

    impl<S> Gated<S> {
        pub fn new(inner: S, n: usize) -> Self {
            Gated {
                inner,
                armed: AtomicBool::new(false),
                reads: AtomicUsize::new(0),
                n,
                barrier: Barrier::new(n),
            }
        }

        pub fn arm(&self) {
            self.armed.store(true, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl<S: EventStore> EventStore for Gated<S> {
        async fn read(
            &self,
            query: &Query,
            options: ReadOptions,
        ) -> Result<ReadResult, StoreError> {
            let result = self.inner.read(query, options).await;
            if self.armed.load(Ordering::SeqCst)
                && self.reads.fetch_add(1, Ordering::SeqCst) < self.n
            {
                self.barrier.wait().await;
            }
            result
        }

        async fn append(
            &self,
            events: Vec<EventRecord>,
            condition: Option<AppendCondition>,
        ) -> Result<AppendResult, StoreError> {
            self.inner.append(events, condition).await
        }
    }
}
