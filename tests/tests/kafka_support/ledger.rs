//! The translator tests' domain: `{"account", "amount"}` credit messages
//! that a [`Credits`] translator turns into [`Credit`] decisions, which
//! reject amounts that are not positive.

use dcb_core::{Decision, Event, Query, ReadOptions};
use dcb_kafka::{
    KafkaConfig, KafkaMessage, OutgoingMessage, Publisher, Translator, TranslatorHandle,
    TranslatorRunner,
};
use dcb_postgres::PgEventStore;
use dcb_tests::read::read_all;

#[derive(Event, Debug, Clone, PartialEq)]
pub enum LedgerEvent {
    Credited {
        #[id]
        account: String,
        amount: i64,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("amount must be positive, got {0}")]
pub struct NotPositive(pub i64);

pub struct Credit {
    pub account: String,
    pub amount: i64,
}

impl Decision for Credit {
    type Event = LedgerEvent;
    type StateQuery = ();
    type Error = NotPositive;

    fn state_query(&self) {}

    fn process(&self, _: &()) -> Result<Vec<LedgerEvent>, NotPositive> {
        if self.amount <= 0 {
            return Err(NotPositive(self.amount));
        }
        Ok(vec![LedgerEvent::Credited {
            account: self.account.clone(),
            amount: self.amount,
        }])
    }
}

/// A credit as sent on the topic.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct CreditMessage {
    pub account: String,
    pub amount: i64,
}

/// Reads `message` as a [`CreditMessage`]; its JSON error otherwise.
pub fn credit_from(message: &KafkaMessage<'_>) -> Result<Credit, String> {
    let m: CreditMessage = message.json()?;
    Ok(Credit {
        account: m.account,
        amount: m.amount,
    })
}

/// Translates every message of `topic` with [`credit_from`].
pub struct Credits {
    pub topic: String,
}

impl Translator for Credits {
    type Decision = Credit;

    fn topic(&self) -> &str {
        &self.topic
    }

    fn translate(&self, message: &KafkaMessage<'_>) -> Result<Credit, String> {
        credit_from(message)
    }
}

/// How many `Credited` events the store holds.
pub async fn credited(store: &PgEventStore) -> usize {
    let (_, events) = read_all(store, &Query::types(["Credited"]), ReadOptions::forwards()).await;
    events.len()
}

pub async fn publish(publisher: &Publisher, topic: &str, key: &str, payload: Vec<u8>) {
    publisher
        .send(OutgoingMessage::new(topic).key(key).payload(payload))
        .await
        .expect("publish to the test broker");
}

/// The payload of a credit of `amount` to `account`.
pub fn credit(account: &str, amount: i64) -> Vec<u8> {
    serde_json::to_vec(&CreditMessage {
        account: account.into(),
        amount,
    })
    .unwrap()
}

/// Starts a runner in consumer group `group` with one [`Credits`] translator
/// of `topic`.
pub async fn start_credits(
    config: &KafkaConfig,
    group: &str,
    store: &PgEventStore,
    topic: &str,
) -> TranslatorHandle {
    TranslatorRunner::new(config.clone(), group, store.clone())
        .add(Credits {
            topic: topic.to_owned(),
        })
        .start()
        .await
        .expect("start the translator")
}
