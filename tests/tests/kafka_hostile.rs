//! Arbitrary payloads and keys on a topic a translator reads — raw bytes,
//! broken and hostile JSON (NUL characters, huge numbers, over-long ids,
//! wrong types) mixed with good messages: the translator never panics, every
//! message ends decided or recorded dead, the good ones are all decided, and
//! a message sent last still gets through (no partition is stalled).
//!
//! Needs PostgreSQL (`DATABASE_URL`; `scripts/postgres.sh start`) and a
//! broker (`KAFKA_BROKERS`; `scripts/tansu.sh start`).

mod kafka_support;

use std::time::Duration;

use dcb_core::{Query, ReadOptions};
use dcb_kafka::{KafkaConfig, OutgoingMessage, Publisher};
use dcb_postgres::testing::TestDatabase;
use dcb_tests::read::read_all;
use kafka_support::ledger::{start_credits, CreditMessage, LedgerEventTag};
use kafka_support::{brokers, create_topic, unique};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

/// One message to send: its key and payload, and whether it is a good
/// credit (then it must be decided).
#[derive(Debug, Clone)]
struct Sent {
    key: Vec<u8>,
    payload: Vec<u8>,
    good: bool,
}

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,16}",
        "[a-z\u{0}\"\\\\{}\u{1}é]{0,12}",
        (0usize..3000).prop_map(|n| "x".repeat(n)),
        Just("a\u{0}b".to_string()),
    ]
}

fn message() -> impl Strategy<Value = Sent> {
    let key = prop::collection::vec(any::<u8>(), 0..24);
    prop_oneof![
        // Raw bytes.
        (key.clone(), prop::collection::vec(any::<u8>(), 0..200)).prop_map(|(key, payload)| Sent {
            key,
            payload,
            good: false,
        }),
        // A credit with a hostile account or amount.
        (key.clone(), hostile_text(), any::<i64>()).prop_map(|(key, account, amount)| Sent {
            key,
            payload: serde_json::to_vec(
                &serde_json::json!({ "account": account, "amount": amount })
            )
            .unwrap_or_default(),
            good: false,
        }),
        // Wrong shapes: huge numbers, wrong types, nesting.
        (key.clone(), "\\PC{0,8}").prop_map(|(key, s)| Sent {
            key,
            payload: format!(
                r#"{{"account":{{"nested":"{}"}},"amount":1e400,"x":[{}]}}"#,
                s.replace('"', ""),
                "9".repeat(50)
            )
            .into_bytes(),
            good: false,
        }),
        // Good credits (an ordinary account, a positive amount).
        (key, "[a-z]{1,8}", 1i64..1_000_000).prop_map(|(key, account, amount)| Sent {
            key,
            payload: serde_json::to_vec(&CreditMessage { account, amount }).unwrap(),
            good: true,
        }),
    ]
}

fn generate(count: usize) -> Vec<Sent> {
    let mut runner = TestRunner::default();
    let strategy = prop::collection::vec(message(), count);
    strategy.new_tree(&mut runner).expect("payloads").current()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_never_stall_a_translator() {
    let brokers = brokers();
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let topic = unique("dcb-hostile");
    create_topic(&brokers, &topic, 3).await;
    let config = KafkaConfig::new(&brokers);
    let publisher = Publisher::connect(&config).await.unwrap();

    let messages = generate(300);
    for m in &messages {
        publisher
            .send(
                OutgoingMessage::new(&topic)
                    .key(m.key.clone())
                    .payload(m.payload.clone()),
            )
            .await
            .expect("publish to the test broker");
    }
    let good = messages.iter().filter(|m| m.good).count() as u64;
    let runner = start_credits(&config, &unique("dcb-hostile-group"), &store, &topic).await;
    let sent = messages.len() as u64;
    let stats = runner
        .wait_for_messages(sent, Duration::from_secs(180))
        .await;
    assert_eq!(stats.messages, sent, "every message must finish: {stats:?}");
    // Good credits are decided; everything else is decided (a hostile value
    // that still makes a valid credit) or recorded dead, nothing lost.
    assert_eq!(
        stats.decided + stats.dead + stats.unchanged + stats.duplicates,
        sent,
        "{stats:?}"
    );
    assert!(
        stats.decided >= good,
        "every good credit is decided: {stats:?}"
    );

    // A message sent last is still decided: nothing is stalled.
    publisher
        .send(
            OutgoingMessage::new(&topic).key("last").payload(
                serde_json::to_vec(&CreditMessage {
                    account: "last".into(),
                    amount: 7,
                })
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    let stats = runner
        .wait_for_messages(sent + 1, Duration::from_secs(120))
        .await;
    assert_eq!(
        stats.messages,
        sent + 1,
        "the last message must get through: {stats:?}"
    );
    let dead = runner
        .dead_messages(1000)
        .await
        .expect("dead records readable");
    runner.shutdown().await;
    let (_, last) = read_all(
        &store,
        &Query::tags([LedgerEventTag::Account.of("last")]),
        ReadOptions::forwards(),
    )
    .await;
    assert_eq!(last.len(), 1);
    eprintln!(
        "{sent} messages ({good} good): {} decided, {} dead ({} dead records readable), {} retries",
        stats.decided,
        stats.dead,
        dead.len(),
        stats.retries
    );
    assert_eq!(
        dead.len() as u64,
        stats.dead,
        "every dead message has its record"
    );
    db.cleanup().await;
}
