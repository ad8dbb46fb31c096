//! A globally unique username, claimed once and released when the account
//! closes.
//!
//! **Rule.** No two open accounts share a username. Closing an account
//! releases its name, which can then be claimed again.
//!
//! **Boundary.** `username:<name>` (every claim and release of that name)
//! and `account:<id>` (so an account id is used once). Both event types
//! carry both tags, so [`OpenAccount`] and [`CloseAccount`] read one small
//! boundary each, whatever the number of accounts.
//!
//! **Why aggregates struggle.** Uniqueness is a rule over *all* accounts,
//! while an aggregate sees one. The usual ways out are a registry aggregate
//! holding every name (one hot stream that every sign-up contends on and
//! that grows forever), or a unique index in a side table written in a
//! second transaction (a crash between the two leaves a name claimed by no
//! account, or an account without its name).

use dcb_core::{Decision, Event, StateMutate, StateQuery};

/// Every event of the pattern. Both carry the account and the username, so
/// each shows up in both boundaries.
#[derive(Event, Debug, Clone, PartialEq, Eq)]
pub enum AccountEvent {
    /// An account was opened under a username (the claim).
    AccountOpened {
        /// The account.
        #[id]
        account: String,
        /// Its username.
        #[id]
        username: String,
    },
    /// An account was closed (the release of its username).
    AccountClosed {
        /// The account.
        #[id]
        account: String,
        /// The username it held.
        #[id]
        username: String,
    },
}

/// A broken account rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// An open account holds the username.
    #[error("the username is taken by account {by}")]
    UsernameTaken {
        /// The account holding it.
        by: String,
    },
    /// The account id was used before.
    #[error("the account already exists")]
    AccountExists,
    /// No such open account.
    #[error("no open account with this id")]
    NoOpenAccount,
}

/// Who holds a username now: folded from `username:<name>`.
#[derive(StateQuery, Clone, Debug, PartialEq, Eq)]
#[state_query(AccountEvent)]
pub struct UsernameClaim {
    #[id]
    username: String,
    held_by: Option<String>,
}

impl UsernameClaim {
    /// The state of `username` before any event.
    pub fn new(username: &str) -> Self {
        UsernameClaim {
            username: username.to_owned(),
            held_by: None,
        }
    }
}

impl StateMutate for UsernameClaim {
    fn mutate(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::AccountOpened { account, .. } => self.held_by = Some(account),
            AccountEvent::AccountClosed { .. } => self.held_by = None,
        }
    }
}

/// One account's life: folded from `account:<id>`.
#[derive(StateQuery, Clone, Debug, PartialEq, Eq)]
#[state_query(AccountEvent)]
pub struct AccountStatus {
    #[id]
    account: String,
    opened_as: Option<String>,
    closed: bool,
}

impl AccountStatus {
    /// The state of `account` before any event.
    pub fn new(account: &str) -> Self {
        AccountStatus {
            account: account.to_owned(),
            opened_as: None,
            closed: false,
        }
    }
}

impl StateMutate for AccountStatus {
    fn mutate(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::AccountOpened { username, .. } => self.opened_as = Some(username),
            AccountEvent::AccountClosed { .. } => self.closed = true,
        }
    }
}

/// Opens `account` under `username`, if nobody holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenAccount {
    /// The new account.
    pub account: String,
    /// The name it claims.
    pub username: String,
}

impl Decision for OpenAccount {
    type Event = AccountEvent;
    type StateQuery = (UsernameClaim, AccountStatus);
    type Error = AccountError;

    fn state_query(&self) -> (UsernameClaim, AccountStatus) {
        (
            UsernameClaim::new(&self.username),
            AccountStatus::new(&self.account),
        )
    }

    fn process(
        &self,
        (claim, account): &(UsernameClaim, AccountStatus),
    ) -> Result<Vec<AccountEvent>, AccountError> {
        if account.opened_as.is_some() {
            return Err(AccountError::AccountExists);
        }
        if let Some(by) = &claim.held_by {
            return Err(AccountError::UsernameTaken { by: by.clone() });
        }
        Ok(vec![AccountEvent::AccountOpened {
            account: self.account.clone(),
            username: self.username.clone(),
        }])
    }
}

/// Closes `account`, releasing its username.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseAccount {
    /// The account.
    pub account: String,
}

impl Decision for CloseAccount {
    type Event = AccountEvent;
    type StateQuery = AccountStatus;
    type Error = AccountError;

    fn state_query(&self) -> AccountStatus {
        AccountStatus::new(&self.account)
    }

    fn process(&self, account: &AccountStatus) -> Result<Vec<AccountEvent>, AccountError> {
        match (&account.opened_as, account.closed) {
            (Some(username), false) => Ok(vec![AccountEvent::AccountClosed {
                account: self.account.clone(),
                username: username.clone(),
            }]),
            _ => Err(AccountError::NoOpenAccount),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcb_core::testing::TestHarness;

    fn opened(account: &str, username: &str) -> AccountEvent {
        AccountEvent::AccountOpened {
            account: account.into(),
            username: username.into(),
        }
    }

    fn closed(account: &str, username: &str) -> AccountEvent {
        AccountEvent::AccountClosed {
            account: account.into(),
            username: username.into(),
        }
    }

    fn open(account: &str, username: &str) -> OpenAccount {
        OpenAccount {
            account: account.into(),
            username: username.into(),
        }
    }

    #[test]
    fn a_free_name_is_claimed() {
        TestHarness::given([opened("a1", "bob")])
            .when(open("a2", "alice"))
            .then([opened("a2", "alice")]);
    }

    #[test]
    fn a_held_name_is_refused() {
        TestHarness::given([opened("a1", "alice")])
            .when(open("a2", "alice"))
            .then_err(AccountError::UsernameTaken { by: "a1".into() });
    }

    #[test]
    fn closing_the_account_releases_the_name() {
        TestHarness::given([opened("a1", "alice"), closed("a1", "alice")])
            .when(open("a2", "alice"))
            .then([opened("a2", "alice")]);
    }

    #[test]
    fn an_account_id_is_used_once() {
        TestHarness::given([opened("a1", "alice"), closed("a1", "alice")])
            .when(open("a1", "bob"))
            .then_err(AccountError::AccountExists);
    }

    #[test]
    fn closing_emits_the_release_of_the_held_name() {
        TestHarness::given([opened("a1", "alice")])
            .when(CloseAccount {
                account: "a1".into(),
            })
            .then([closed("a1", "alice")]);
    }

    #[test]
    fn an_account_closes_once() {
        TestHarness::given([opened("a1", "alice"), closed("a1", "alice")])
            .when(CloseAccount {
                account: "a1".into(),
            })
            .then_err(AccountError::NoOpenAccount);
    }
}
