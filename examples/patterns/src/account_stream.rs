//! An old aggregate-style stream living beside DCB decisions, with an
//! upcast of old event versions.
//!
//! **Setting.** A legacy service stored each bank account as a stream: every
//! event is tagged `account:<id>` and carries the stream's `version` (1, 2,
//! 3, ...), and the legacy code ([`LegacyAccounts`]) loads the whole stream
//! and saves with an expected version. New code writes DCB decisions against
//! the same events, and both run side by side.
//!
//! **Rule.** Every stream stays a valid legacy stream (versions 1..n, no gap,
//! none twice) and a balance never goes below zero. New code may also do
//! what the aggregate could not: [`Transfer`] moves money between two
//! streams in one atomic decision.
//!
//! **Boundary.** One tag, `account:<id>`: reading it *is* reading the
//! stream, and the append condition on it *is* the expected-version check.
//! [`Transfer`] reads two streams as a tuple state and conditions on both.
//!
//! **Upcast.** The log holds three generations of deposits, all read as
//! the current [`LedgerEvent::Deposited`]:
//! - v1 `MoneyDeposited { euros }` (whole euros, an old type name):
//!   `#[event(upcast(from = "MoneyDeposited", with = deposit_v1))]` rewrites
//!   the old payload into the current shape ([`deposit_v1`]); new code only
//!   ever writes `Deposited`.
//! - v2 `Deposited { amount }` and v3 `Deposited { cents, reference }`:
//!   `#[serde(alias = "amount")]` reads the old field name and
//!   `#[serde(default)]` the missing one.
//!
//! **Why aggregates struggle.** The aggregate is its stream: a transfer is
//! two transactions on two aggregates (a saga, with a window where the money
//! is in neither account or in both), and every new rule that needs another
//! stream's facts becomes a new process manager.

use dcb_core::{
    AppendCondition, Codec, CodecError, Decision, Event, EventRecord, EventStore, EventStoreExt,
    EventType, JsonCodec, Query, ReadOptions, StateMutate, StateQuery, StoreError,
};

/// Every event of an account stream.
#[derive(Event, Debug, Clone, PartialEq, Eq)]
#[stream(AccountStream, [AccountOpened, Deposited, Withdrawn])]
pub enum LedgerEvent {
    /// The stream's first event.
    AccountOpened {
        /// The account (the stream).
        #[id]
        account: String,
        /// The stream version of this event.
        version: u64,
        /// Who holds it.
        owner: String,
    },
    /// Money came in. The first generation stored deposits as
    /// `MoneyDeposited { euros }`: they are read as this variant too.
    #[event(upcast(from = "MoneyDeposited", with = deposit_v1))]
    Deposited {
        /// The account (the stream).
        #[id]
        account: String,
        /// The stream version of this event.
        version: u64,
        /// Cents; the second generation called it `amount`.
        #[serde(alias = "amount")]
        cents: u64,
        /// Added in the third generation; older deposits read as "".
        #[serde(default)]
        reference: String,
    },
    /// Money went out.
    Withdrawn {
        /// The account (the stream).
        #[id]
        account: String,
        /// The stream version of this event.
        version: u64,
        /// Cents.
        cents: u64,
    },
}

impl LedgerEvent {
    /// The stream version of this event.
    pub fn version(&self) -> u64 {
        match self {
            LedgerEvent::AccountOpened { version, .. }
            | LedgerEvent::Deposited { version, .. }
            | LedgerEvent::Withdrawn { version, .. } => *version,
        }
    }

    /// What this event does to the balance, in cents.
    pub fn balance_change(&self) -> i128 {
        match self {
            LedgerEvent::AccountOpened { .. } => 0,
            LedgerEvent::Deposited { cents, .. } => i128::from(*cents),
            LedgerEvent::Withdrawn { cents, .. } => -i128::from(*cents),
        }
    }
}

/// The first generation's deposit (`MoneyDeposited { account, version,
/// euros }`) in the current shape (`Deposited { account, version, cents,
/// reference }`).
///
/// # Errors
/// The old payload does not have that shape.
pub fn deposit_v1(old: &[u8]) -> Result<Vec<u8>, CodecError> {
    #[derive(serde::Deserialize)]
    struct V1 {
        account: String,
        version: u64,
        euros: u64,
    }
    #[derive(serde::Serialize)]
    struct Current {
        account: String,
        version: u64,
        cents: u64,
    }
    let v1: V1 = JsonCodec::decode(old)?;
    let cents = v1
        .euros
        .checked_mul(100)
        .ok_or_else(|| CodecError::Decode(format!("{} euros overflow cents", v1.euros)))?;
    JsonCodec::encode(&Current {
        account: v1.account,
        version: v1.version,
        cents,
    })
}

/// A broken account rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// No such account.
    #[error("account {0} does not exist")]
    NoSuchAccount(String),
    /// Not enough money.
    #[error("insufficient funds: {balance_cents} cents")]
    InsufficientFunds {
        /// The balance.
        balance_cents: i128,
    },
    /// A transfer needs two accounts.
    #[error("cannot transfer to the same account")]
    SameAccount,
}

/// One account stream folded: its version and balance.
#[derive(StateQuery, Clone, Debug, PartialEq, Eq)]
#[state_query(AccountStream)]
pub struct Account {
    #[id]
    account: String,
    opened: bool,
    version: u64,
    /// Signed: the fold reports what the stream says, even a stream the
    /// legacy code overdrew.
    balance_cents: i128,
}

impl Account {
    /// The state of `account` before any event.
    pub fn new(account: &str) -> Self {
        Account {
            account: account.to_owned(),
            opened: false,
            version: 0,
            balance_cents: 0,
        }
    }

    /// The stream's version (its last event's).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The balance.
    pub fn balance_cents(&self) -> i128 {
        self.balance_cents
    }

    fn exists(&self) -> Result<(), LedgerError> {
        if self.opened {
            Ok(())
        } else {
            Err(LedgerError::NoSuchAccount(self.account.clone()))
        }
    }

    fn withdrawn(&self, cents: u64) -> Result<LedgerEvent, LedgerError> {
        self.exists()?;
        if self.balance_cents < i128::from(cents) {
            return Err(LedgerError::InsufficientFunds {
                balance_cents: self.balance_cents,
            });
        }
        Ok(LedgerEvent::Withdrawn {
            account: self.account.clone(),
            version: self.version + 1,
            cents,
        })
    }

    fn deposited(&self, cents: u64, reference: &str) -> Result<LedgerEvent, LedgerError> {
        self.exists()?;
        Ok(LedgerEvent::Deposited {
            account: self.account.clone(),
            version: self.version + 1,
            cents,
            reference: reference.to_owned(),
        })
    }
}

impl StateMutate for Account {
    fn mutate(&mut self, event: AccountStream) {
        let event = LedgerEvent::from(event);
        if let LedgerEvent::AccountOpened { .. } = event {
            self.opened = true;
        }
        self.version = event.version();
        self.balance_cents += event.balance_change();
    }
}

/// Takes money out of one account (a DCB decision on one stream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Withdraw {
    /// The account.
    pub account: String,
    /// Cents.
    pub cents: u64,
}

impl Decision for Withdraw {
    type Event = LedgerEvent;
    type StateQuery = Account;
    type Error = LedgerError;

    fn state_query(&self) -> Account {
        Account::new(&self.account)
    }

    fn process(&self, account: &Account) -> Result<Vec<LedgerEvent>, LedgerError> {
        Ok(vec![account.withdrawn(self.cents)?])
    }
}

/// Moves money between two accounts in one decision over two streams; each
/// stream gets its next version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Paying account.
    pub from: String,
    /// Receiving account.
    pub to: String,
    /// Cents.
    pub cents: u64,
}

impl Decision for Transfer {
    type Event = LedgerEvent;
    type StateQuery = (Account, Account);
    type Error = LedgerError;

    fn state_query(&self) -> (Account, Account) {
        (Account::new(&self.from), Account::new(&self.to))
    }

    fn process(&self, (from, to): &(Account, Account)) -> Result<Vec<LedgerEvent>, LedgerError> {
        if self.from == self.to {
            return Err(LedgerError::SameAccount);
        }
        to.exists()?;
        let reference = format!("transfer from {}", self.from);
        Ok(vec![
            from.withdrawn(self.cents)?,
            to.deposited(self.cents, &reference)?,
        ])
    }
}

/// The legacy service's repository, unchanged by the move to DCB: it loads
/// a stream whole and saves new events with the expected version.
///
/// The expected-version check is an append condition on the stream's one
/// tag after the position the stream was read at, so legacy saves and DCB
/// decisions exclude each other exactly as two legacy saves would.
#[derive(Clone, Debug)]
pub struct LegacyAccounts<S> {
    store: S,
}

/// What a legacy save can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// The store failed (a failed expected-version check included).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event did not decode.
    #[error(transparent)]
    Decode(#[from] dcb_core::DecodeError),
    /// The event did not encode.
    #[error(transparent)]
    Encode(#[from] dcb_core::CodecError),
}

impl<S: EventStore> LegacyAccounts<S> {
    /// A repository on `store`.
    pub fn new(store: S) -> Self {
        LegacyAccounts { store }
    }

    /// The stream query: every event tagged `account:<id>`, of any type.
    pub fn stream(account: &str) -> Query {
        Query::tags([LedgerEventTag::Account.of(account)])
    }

    /// Loads the stream: its events in order, and the position read up to.
    ///
    /// # Errors
    /// Store and decode failures.
    pub async fn load(
        &self,
        account: &str,
    ) -> Result<(Vec<LedgerEvent>, Option<dcb_core::Position>), LegacyError> {
        let (head, events) = self
            .store
            .read_decoded::<LedgerEvent>(&Self::stream(account), ReadOptions::forwards())
            .await?;
        Ok((events.into_iter().map(|e| e.event).collect(), head))
    }

    /// The legacy deposit: load, append version n+1 if the stream is still
    /// at n, reload and try again when it is not (as the legacy service
    /// did). Returns the version written and how many saves failed on the
    /// expected version.
    ///
    /// # Errors
    /// Store failures other than a failed expected version; still failing
    /// after `max_attempts` saves.
    pub async fn deposit(
        &self,
        account: &str,
        cents: u64,
        max_attempts: u32,
    ) -> Result<(u64, u32), LegacyError> {
        let mut conflicts = 0;
        loop {
            let (events, head) = self.load(account).await?;
            let version = events.last().map_or(0, LedgerEvent::version) + 1;
            let record: EventRecord = LedgerEvent::Deposited {
                account: account.to_owned(),
                version,
                cents,
                reference: "legacy".to_owned(),
            }
            .to_record()?;
            let expected_version = AppendCondition::not_after(Self::stream(account), head);
            match self
                .store
                .append(vec![record], Some(expected_version))
                .await
            {
                Ok(_) => return Ok((version, conflicts)),
                Err(StoreError::ConditionFailed { .. }) if conflicts + 1 < max_attempts => {
                    conflicts += 1
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// An account's stream as the first two generations of the legacy service
/// wrote it, byte for byte: opened (v1), 10 euros as `MoneyDeposited` (v2),
/// 250 cents as `Deposited { amount }` (v3). 1,250 cents in all.
///
/// The type names are strings on purpose: this is stored data from before
/// the current enum existed.
pub fn legacy_history(account: &str) -> Vec<EventRecord> {
    let raw = |event_type: &'static str, payload: String| {
        EventRecord::new(
            EventType::from_static(event_type),
            [LedgerEventTag::Account.of(account)],
            payload,
        )
    };
    vec![
        raw(
            "AccountOpened",
            format!(r#"{{"account":"{account}","version":1,"owner":"ann"}}"#),
        ),
        raw(
            "MoneyDeposited",
            format!(r#"{{"account":"{account}","version":2,"euros":10}}"#),
        ),
        raw(
            "Deposited",
            format!(r#"{{"account":"{account}","version":3,"amount":250}}"#),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use dcb_core::testing::{Scenario, TestHarness};
    use dcb_core::InMemoryEventStore;

    fn opened(account: &str) -> LedgerEvent {
        LedgerEvent::AccountOpened {
            account: account.into(),
            version: 1,
            owner: "ann".into(),
        }
    }

    fn deposited(account: &str, version: u64, cents: u64, reference: &str) -> LedgerEvent {
        LedgerEvent::Deposited {
            account: account.into(),
            version,
            cents,
            reference: reference.into(),
        }
    }

    fn withdrawn(account: &str, version: u64, cents: u64) -> LedgerEvent {
        LedgerEvent::Withdrawn {
            account: account.into(),
            version,
            cents,
        }
    }

    #[test]
    fn old_payloads_upcast_to_the_current_events() {
        let records = legacy_history("a1");
        let decoded: Vec<LedgerEvent> = records
            .iter()
            .map(|r| r.decode().expect("an old payload decodes"))
            .collect();
        assert_eq!(decoded[1], deposited("a1", 2, 1000, ""));
        assert_eq!(decoded[2], deposited("a1", 3, 250, ""));
        let balance: i128 = decoded.iter().map(LedgerEvent::balance_change).sum();
        assert_eq!(balance, 1250);
    }

    #[tokio::test]
    async fn a_decision_folds_the_old_events_and_continues_the_stream() {
        let store = Arc::new(InMemoryEventStore::new());
        store
            .append(legacy_history("a1"), None)
            .await
            .expect("seeded");
        Scenario::with_store(store)
            .when(Withdraw {
                account: "a1".into(),
                cents: 1250,
            })
            .await
            .then([withdrawn("a1", 4, 1250)]);
    }

    #[tokio::test]
    async fn legacy_saves_and_decisions_share_one_version_sequence() {
        let store = Arc::new(InMemoryEventStore::new());
        store
            .append(legacy_history("a1"), None)
            .await
            .expect("seeded");
        let legacy = LegacyAccounts::new(store.clone());
        assert_eq!(legacy.deposit("a1", 100, 1).await.expect("saved"), (4, 0));
        Scenario::with_store(store.clone())
            .when(Withdraw {
                account: "a1".into(),
                cents: 50,
            })
            .await
            .then([withdrawn("a1", 5, 50)]);
        assert_eq!(legacy.deposit("a1", 100, 1).await.expect("saved"), (6, 0));
        let (events, _) = legacy.load("a1").await.expect("loaded");
        let versions: Vec<u64> = events.iter().map(LedgerEvent::version).collect();
        assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_transfer_writes_the_next_version_of_both_streams() {
        TestHarness::given([
            opened("a1"),
            deposited("a1", 2, 500, ""),
            opened("b1"),
            withdrawn("a1", 3, 100),
        ])
        .when(Transfer {
            from: "a1".into(),
            to: "b1".into(),
            cents: 400,
        })
        .then([
            withdrawn("a1", 4, 400),
            deposited("b1", 2, 400, "transfer from a1"),
        ]);
    }

    #[test]
    fn a_transfer_never_overdraws() {
        TestHarness::given([opened("a1"), deposited("a1", 2, 500, ""), opened("b1")])
            .when(Transfer {
                from: "a1".into(),
                to: "b1".into(),
                cents: 501,
            })
            .then_err(LedgerError::InsufficientFunds { balance_cents: 500 });
    }

    #[test]
    fn a_transfer_needs_two_accounts() {
        TestHarness::given([opened("a1"), deposited("a1", 2, 500, "")])
            .when(Transfer {
                from: "a1".into(),
                to: "a1".into(),
                cents: 1,
            })
            .then_err(LedgerError::SameAccount);
    }

    #[test]
    fn a_transfer_needs_both_accounts() {
        TestHarness::given([opened("a1"), deposited("a1", 2, 500, "")])
            .when(Transfer {
                from: "a1".into(),
                to: "b1".into(),
                cents: 1,
            })
            .then_err(LedgerError::NoSuchAccount("b1".into()));
    }
}
