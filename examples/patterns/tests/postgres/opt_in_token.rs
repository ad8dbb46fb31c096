//! 32 tokens, each used twice at the same moment (64 callers): every token
//! confirms exactly once.

use std::collections::BTreeMap;

use dcb_core::DecisionError;
use patterns::opt_in_token::{ConfirmOptIn, OptInEvent, RequestOptIn, TokenError};

use crate::race::{report, Env, Guard};

const TOKENS: usize = 32;
const USES: usize = 2;

fn token(n: usize) -> String {
    format!("token-{n:02}")
}

/// Confirmations per token, and the tokens confirmed more than once.
fn check(log: &[OptInEvent]) -> (usize, Vec<String>) {
    let mut confirmations: BTreeMap<&str, usize> = BTreeMap::new();
    for event in log {
        if let OptInEvent::OptInConfirmed { token, .. } = event {
            *confirmations.entry(token).or_default() += 1;
        }
    }
    let violations = confirmations
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(token, n)| format!("{token} used {n} times"))
        .collect();
    (confirmations.values().sum(), violations)
}

async fn token_race(guard: Guard) -> Vec<String> {
    let env = Env::new().await;
    let maker = env.maker();
    for n in 0..TOKENS {
        maker
            .make(RequestOptIn {
                token: token(n),
                email: format!("reader-{n}@example.com"),
            })
            .await
            .expect("token issued");
    }
    let raced = env
        .race(guard, TOKENS * USES, |racer| async move {
            racer
                .maker
                .make(ConfirmOptIn {
                    token: token(racer.index / USES),
                })
                .await
        })
        .await;
    let mut successes = 0;
    let mut rejected = 0;
    for outcome in &raced.outcomes {
        match outcome {
            Ok(_) => successes += 1,
            Err(DecisionError::Rejected(TokenError::AlreadyUsed)) => rejected += 1,
            Err(other) => panic!("unexpected outcome: {other}"),
        }
    }
    let log: Vec<OptInEvent> = env.log().await.into_iter().map(|e| e.event).collect();
    let (confirmations, violations) = check(&log);
    report(
        "opt-in token",
        guard,
        &raced.counts,
        successes,
        rejected,
        &format!(
            "checked {TOKENS} tokens used {USES}x each: {confirmations} confirmations, \
             {} token(s) used more than once",
            violations.len()
        ),
    );
    if guard == Guard::Kept {
        assert_eq!((successes, rejected), (TOKENS, TOKENS * (USES - 1)));
        assert_eq!(
            raced.counts.conflicts,
            TOKENS * (USES - 1),
            "every pair raced"
        );
    }
    env.cleanup().await;
    violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_used_twice_at_once_confirms_once() {
    assert_eq!(token_race(Guard::Kept).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_append_condition_a_token_confirms_twice() {
    let violations = token_race(Guard::Dropped).await;
    assert!(
        !violations.is_empty(),
        "dropping the condition must let a token be used twice"
    );
}
