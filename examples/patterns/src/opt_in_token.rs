//! A one-time opt-in token: confirmed at most once.
//!
//! **Rule.** A newsletter sign-up mails a token; the first use of the token
//! confirms the address, every later use is refused (a link clicked twice,
//! a mail scanner and the user racing each other).
//!
//! **Boundary.** `token:<token>`: the request that issued it and its
//! confirmation. Nothing else.
//!
//! **Why aggregates struggle.** A token belongs to no entity worth an
//! aggregate. Either a `Token` aggregate is invented (a stream per token,
//! created and loaded just to flip one flag), or the token lives inside the
//! subscriber aggregate, so every use of a token contends with every other
//! change of that subscriber and the aggregate collects dead tokens forever.

use dcb_core::{Decision, Event, StateMutate, StateQuery};

/// Every event of the pattern.
#[derive(Event, Debug, Clone, PartialEq, Eq)]
pub enum OptInEvent {
    /// A token was mailed to an address.
    OptInRequested {
        /// The token.
        #[id]
        token: String,
        /// The address to confirm.
        email: String,
    },
    /// The token was used: the address is confirmed.
    OptInConfirmed {
        /// The token.
        #[id]
        token: String,
        /// The confirmed address.
        email: String,
    },
}

/// A broken token rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No such token was issued.
    #[error("unknown token")]
    UnknownToken,
    /// The token was issued before.
    #[error("the token was already issued")]
    AlreadyIssued,
    /// The token was used before.
    #[error("the token was already used")]
    AlreadyUsed,
}

/// One token's life: folded from `token:<token>`.
#[derive(StateQuery, Clone, Debug, PartialEq, Eq)]
#[state_query(OptInEvent)]
pub struct TokenState {
    #[id]
    token: String,
    email: Option<String>,
    used: bool,
}

impl TokenState {
    /// The state of `token` before any event.
    pub fn new(token: &str) -> Self {
        TokenState {
            token: token.to_owned(),
            email: None,
            used: false,
        }
    }
}

impl StateMutate for TokenState {
    fn mutate(&mut self, event: OptInEvent) {
        match event {
            OptInEvent::OptInRequested { email, .. } => self.email = Some(email),
            OptInEvent::OptInConfirmed { .. } => self.used = true,
        }
    }
}

/// Issues `token` for `email`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestOptIn {
    /// A fresh token.
    pub token: String,
    /// The address.
    pub email: String,
}

impl Decision for RequestOptIn {
    type Event = OptInEvent;
    type StateQuery = TokenState;
    type Error = TokenError;

    fn state_query(&self) -> TokenState {
        TokenState::new(&self.token)
    }

    fn process(&self, token: &TokenState) -> Result<Vec<OptInEvent>, TokenError> {
        if token.email.is_some() {
            return Err(TokenError::AlreadyIssued);
        }
        Ok(vec![OptInEvent::OptInRequested {
            token: self.token.clone(),
            email: self.email.clone(),
        }])
    }
}

/// Uses `token`: confirms its address, once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfirmOptIn {
    /// The token from the mail.
    pub token: String,
}

impl Decision for ConfirmOptIn {
    type Event = OptInEvent;
    type StateQuery = TokenState;
    type Error = TokenError;

    fn state_query(&self) -> TokenState {
        TokenState::new(&self.token)
    }

    fn process(&self, token: &TokenState) -> Result<Vec<OptInEvent>, TokenError> {
        let email = token.email.as_ref().ok_or(TokenError::UnknownToken)?;
        if token.used {
            return Err(TokenError::AlreadyUsed);
        }
        Ok(vec![OptInEvent::OptInConfirmed {
            token: self.token.clone(),
            email: email.clone(),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcb_core::testing::TestHarness;

    fn requested(token: &str) -> OptInEvent {
        OptInEvent::OptInRequested {
            token: token.into(),
            email: format!("{token}@example.com"),
        }
    }

    fn confirmed(token: &str) -> OptInEvent {
        OptInEvent::OptInConfirmed {
            token: token.into(),
            email: format!("{token}@example.com"),
        }
    }

    fn confirm(token: &str) -> ConfirmOptIn {
        ConfirmOptIn {
            token: token.into(),
        }
    }

    #[test]
    fn the_first_use_confirms() {
        TestHarness::given([requested("t1")])
            .when(confirm("t1"))
            .then([confirmed("t1")]);
    }

    #[test]
    fn the_second_use_is_refused() {
        TestHarness::given([requested("t1"), confirmed("t1")])
            .when(confirm("t1"))
            .then_err(TokenError::AlreadyUsed);
    }

    #[test]
    fn an_unknown_token_is_refused() {
        TestHarness::given([requested("t1"), confirmed("t1")])
            .when(confirm("t2"))
            .then_err(TokenError::UnknownToken);
    }

    #[test]
    fn other_tokens_do_not_count() {
        TestHarness::given([requested("t1"), requested("t2"), confirmed("t2")])
            .when(confirm("t1"))
            .then([confirmed("t1")]);
    }

    #[test]
    fn a_token_is_issued_once() {
        TestHarness::given([requested("t1")])
            .when(RequestOptIn {
                token: "t1".into(),
                email: "other@example.com".into(),
            })
            .then_err(TokenError::AlreadyIssued);
    }
}
