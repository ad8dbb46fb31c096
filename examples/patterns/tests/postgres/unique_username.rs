//! 32 accounts claim `alice` at once: exactly one gets it. Its account is
//! closed, and 32 new accounts claim it again: exactly one gets it again.
//! Replaying the log, no two open accounts ever held the name.

use std::collections::BTreeMap;

use dcb_core::DecisionError;
use patterns::unique_username::{AccountError, AccountEvent, CloseAccount, OpenAccount};

use crate::race::{report, Counts, Env, Guard};

const CLAIMS: usize = 32;

/// Replays the log: how often the name was claimed, and every moment two
/// open accounts held it.
fn check(log: &[AccountEvent]) -> (usize, Vec<String>) {
    let mut holder: BTreeMap<&str, &str> = BTreeMap::new();
    let mut claims = 0;
    let mut violations = Vec::new();
    for event in log {
        match event {
            AccountEvent::AccountOpened { account, username } => {
                claims += 1;
                if let Some(held_by) = holder.insert(username, account) {
                    violations.push(format!("{username}: {account} claimed it from {held_by}"));
                }
            }
            AccountEvent::AccountClosed { username, .. } => {
                holder.remove(username.as_str());
            }
        }
    }
    (claims, violations)
}

/// One round of claims; returns the winner and the counts.
async fn claim_round(env: &Env, guard: Guard, round: usize) -> (Vec<String>, usize, Counts) {
    let raced = env
        .race(guard, CLAIMS, move |racer| async move {
            let account = format!("round{round}-account-{:02}", racer.index);
            let claimed = racer
                .maker
                .make(OpenAccount {
                    account: account.clone(),
                    username: "alice".into(),
                })
                .await;
            (account, claimed)
        })
        .await;
    let mut winners = Vec::new();
    let mut rejected = 0;
    for (account, claimed) in raced.outcomes {
        match claimed {
            Ok(_) => winners.push(account),
            Err(DecisionError::Rejected(AccountError::UsernameTaken { .. })) => rejected += 1,
            Err(other) => panic!("unexpected outcome: {other}"),
        }
    }
    (winners, rejected, raced.counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_claims_win_once_and_the_name_is_claimable_after_release() {
    let env = Env::new().await;
    let (first, rejected_1, counts_1) = claim_round(&env, Guard::Kept, 1).await;
    assert_eq!(first.len(), 1, "one winner: {first:?}");
    env.maker()
        .make(CloseAccount {
            account: first[0].clone(),
        })
        .await
        .expect("closed");
    let (second, rejected_2, counts_2) = claim_round(&env, Guard::Kept, 2).await;
    assert_eq!(second.len(), 1, "one winner after the release: {second:?}");

    let log: Vec<AccountEvent> = env.log().await.into_iter().map(|e| e.event).collect();
    let (claims, violations) = check(&log);
    assert_eq!(violations, Vec::<String>::new());
    assert_eq!(claims, 2);
    assert!(
        counts_1.conflicts > 0 && counts_2.conflicts > 0,
        "the claims raced"
    );
    let counts = counts_1 + counts_2;
    report(
        "unique username",
        Guard::Kept,
        &counts,
        first.len() + second.len(),
        rejected_1 + rejected_2,
        &format!(
            "two rounds of {CLAIMS} claims around a release: {claims} claims in the log, \
             never two holders at once"
        ),
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_append_condition_a_name_gets_many_holders() {
    let env = Env::new().await;
    let (winners, rejected, counts) = claim_round(&env, Guard::Dropped, 1).await;
    let log: Vec<AccountEvent> = env.log().await.into_iter().map(|e| e.event).collect();
    let (claims, violations) = check(&log);
    report(
        "unique username",
        Guard::Dropped,
        &counts,
        winners.len(),
        rejected,
        &format!(
            "{claims} claims of one name, {} double holders",
            violations.len()
        ),
    );
    assert!(
        !violations.is_empty(),
        "dropping the condition must let a second account claim the name"
    );
    env.cleanup().await;
}
