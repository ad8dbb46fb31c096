//! Two legacy account streams (written by the old service, old event
//! versions included) take 48 concurrent writers: DCB transfers both ways,
//! DCB withdrawals, and deposits by the unchanged legacy code. Each stream
//! stays a valid legacy stream (versions 1..n in order, none twice) and
//! never goes below zero; transfers neither create nor lose money.

use std::collections::BTreeMap;

use dcb_core::{DecisionError, EventStore};
use patterns::account_stream::{
    legacy_history, LedgerError, LedgerEvent, LegacyAccounts, Transfer, Withdraw,
};

use crate::race::{report, Env, Guard, MAX_ATTEMPTS};

const CALLERS: usize = 48;
const START_CENTS: i128 = 1_250;
const TRANSFER_CENTS: u64 = 300;
const DEPOSIT_CENTS: u64 = 100;
const WITHDRAW_CENTS: u64 = 400;

/// What one caller did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Transferred,
    Deposited,
    Withdrew,
    Refused,
}

fn account(n: usize) -> &'static str {
    if n % 2 == 0 {
        "acc-a"
    } else {
        "acc-b"
    }
}

/// Replays both streams: their balances and every broken rule.
fn check(log: &[LedgerEvent]) -> (BTreeMap<String, i128>, Vec<String>) {
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let mut balances: BTreeMap<String, i128> = BTreeMap::new();
    let mut violations = Vec::new();
    for event in log {
        let stream = match event {
            LedgerEvent::AccountOpened { account, .. }
            | LedgerEvent::Deposited { account, .. }
            | LedgerEvent::Withdrawn { account, .. } => account.clone(),
        };
        let last = versions.entry(stream.clone()).or_insert(0);
        if event.version() != *last + 1 {
            violations.push(format!(
                "{stream}: version {} after {last}",
                event.version()
            ));
        }
        *last = (*last).max(event.version());
        let balance = balances.entry(stream.clone()).or_insert(0);
        *balance += event.balance_change();
        if *balance < 0 {
            violations.push(format!("{stream}: balance {balance}"));
        }
    }
    (balances, violations)
}

async fn stream_race(guard: Guard) -> Vec<String> {
    let env = Env::new().await;
    for stream in ["acc-a", "acc-b"] {
        env.store()
            .append(legacy_history(stream), None)
            .await
            .expect("the legacy history");
    }
    let raced = env
        .race(guard, CALLERS, |racer| async move {
            let n = racer.index / 4;
            let outcome = match racer.index % 4 {
                0 | 1 => {
                    let (from, to) = if racer.index % 4 == 0 {
                        ("acc-a", "acc-b")
                    } else {
                        ("acc-b", "acc-a")
                    };
                    racer
                        .maker
                        .make(Transfer {
                            from: from.into(),
                            to: to.into(),
                            cents: TRANSFER_CENTS,
                        })
                        .await
                        .map(|_| Done::Transferred)
                }
                2 => {
                    let legacy = LegacyAccounts::new(racer.store().clone());
                    let saved = legacy
                        .deposit(account(n), DEPOSIT_CENTS, MAX_ATTEMPTS)
                        .await;
                    return saved
                        .map(|_| Done::Deposited)
                        .map_err(|e| format!("legacy deposit: {e}"));
                }
                _ => racer
                    .maker
                    .make(Withdraw {
                        account: account(n).into(),
                        cents: WITHDRAW_CENTS,
                    })
                    .await
                    .map(|_| Done::Withdrew),
            };
            match outcome {
                Err(DecisionError::Rejected(LedgerError::InsufficientFunds { .. })) => {
                    Ok(Done::Refused)
                }
                other => other.map_err(|e| e.to_string()),
            }
        })
        .await;
    let done: Vec<Done> = raced
        .outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|e| panic!("unexpected outcome: {e}")))
        .collect();
    let count = |d: Done| done.iter().filter(|x| **x == d).count();

    let log: Vec<LedgerEvent> = env.log().await.into_iter().map(|e| e.event).collect();
    let (balances, violations) = check(&log);
    let total: i128 = balances.values().sum();
    let expected_total = 2 * START_CENTS + count(Done::Deposited) as i128 * DEPOSIT_CENTS as i128
        - count(Done::Withdrew) as i128 * WITHDRAW_CENTS as i128;
    report(
        "aggregate stream beside DCB",
        guard,
        &raced.counts,
        CALLERS - count(Done::Refused),
        count(Done::Refused),
        &format!(
            "{} transfers, {} legacy deposits, {} withdrawals on 2 streams: checked {} events, \
             {} broken version(s) or balance(s); money {total} of {expected_total} cents",
            count(Done::Transferred),
            count(Done::Deposited),
            count(Done::Withdrew),
            log.len(),
            violations.len(),
        ),
    );
    if guard == Guard::Kept {
        assert_eq!(
            total, expected_total,
            "transfers neither create nor lose money"
        );
        assert_eq!(
            count(Done::Deposited),
            CALLERS / 4,
            "legacy deposits never fail"
        );
        assert!(raced.counts.conflicts > 0, "the writers raced");
    }
    env.cleanup().await;
    violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn legacy_saves_and_dcb_decisions_keep_each_stream_valid() {
    assert_eq!(stream_race(Guard::Kept).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_append_condition_stream_versions_repeat() {
    let violations = stream_race(Guard::Dropped).await;
    assert!(
        violations.iter().any(|v| v.contains("version")),
        "dropping the condition must write a version twice, got {violations:?}"
    );
}
