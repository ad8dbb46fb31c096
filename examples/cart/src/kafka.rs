//! Kafka: the `inventories` and `price-changes` translators and the
//! `published-carts` publisher. Off unless `KAFKA_BROKERS` is set.
//!
//! A message that does not decode, or carries a value outside the cart's
//! [`limits`](crate::limits), is recorded as dead with the reason (by the
//! translator runner) and the partition moves on; a redelivered message is a
//! no-op, because each decision carries the record's identity as its
//! idempotency key (the translator runner's default,
//! [`dcb_kafka::record_key`]: topic, partition, offset, timestamp and a
//! digest of the record, so a different record at a reused offset is still
//! decided).

use async_trait::async_trait;
use dcb_core::BoxError;
use dcb_kafka::{KafkaMessage, OutgoingMessage, Publisher, Translator};
use rust_decimal::Decimal;
use serde::Deserialize;
use uuid::Uuid;

use crate::slices::change_inventory::ChangeInventory;
use crate::slices::change_price::ChangePrice;
use crate::slices::publish_cart::{CartPublisher, PublishCartJob, PUBLISHED_CARTS_TOPIC};

/// The topic of stock reports.
pub const INVENTORIES_TOPIC: &str = "inventories";
/// The topic of price changes.
pub const PRICE_CHANGES_TOPIC: &str = "price-changes";
/// The consumer group of the translators.
pub const GROUP_ID: &str = "cart";

#[derive(Deserialize)]
struct InventoryMessage {
    #[serde(alias = "product_id")]
    product_uuid: Uuid,
    inventory: i64,
}

#[derive(Deserialize)]
struct PriceChangeMessage {
    #[serde(alias = "product_id")]
    product_uuid: Uuid,
    old_price: Decimal,
    new_price: Decimal,
}

/// `inventories` → ChangeInventory.
#[derive(Clone, Copy, Debug, Default)]
pub struct InventoriesTranslator;

impl Translator for InventoriesTranslator {
    type Decision = ChangeInventory;

    fn topic(&self) -> &str {
        INVENTORIES_TOPIC
    }

    fn translate(&self, message: &KafkaMessage<'_>) -> Result<ChangeInventory, String> {
        let m: InventoryMessage = message.json()?;
        let decision = ChangeInventory {
            product_id: m.product_uuid,
            inventory: m.inventory,
            idempotency_key: None,
        };
        decision.validate().map_err(|e| e.to_string())?;
        Ok(decision)
    }
}

/// `price-changes` → ChangePrice.
#[derive(Clone, Copy, Debug, Default)]
pub struct PriceChangesTranslator;

impl Translator for PriceChangesTranslator {
    type Decision = ChangePrice;

    fn topic(&self) -> &str {
        PRICE_CHANGES_TOPIC
    }

    fn translate(&self, message: &KafkaMessage<'_>) -> Result<ChangePrice, String> {
        let m: PriceChangeMessage = message.json()?;
        let decision = ChangePrice {
            product_id: m.product_uuid,
            old_price: m.old_price,
            new_price: m.new_price,
            idempotency_key: None,
        };
        decision.validate().map_err(|e| e.to_string())?;
        Ok(decision)
    }
}

/// Publishes submitted carts to `published-carts` (key: cart id; headers:
/// `event_id`, `position` of the `CartSubmitted` event).
pub struct KafkaCartPublisher {
    publisher: Publisher,
}

impl KafkaCartPublisher {
    /// Publishes with `publisher` (idempotent, acks=all).
    pub fn new(publisher: Publisher) -> Self {
        KafkaCartPublisher { publisher }
    }
}

#[async_trait]
impl CartPublisher for KafkaCartPublisher {
    async fn publish(&self, job: &PublishCartJob) -> Result<(), BoxError> {
        let message = OutgoingMessage::new(PUBLISHED_CARTS_TOPIC)
            .key(job.cart.cart_id.to_string())
            .json(&job.cart)?
            .header("event_id", job.event_id.to_string())
            .header("position", job.position.to_string());
        let (partition, offset) = self.publisher.send(message).await?;
        tracing::info!(cart_id = %job.cart.cart_id, partition, offset, "published to {PUBLISHED_CARTS_TOPIC}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> KafkaMessage<'_> {
        KafkaMessage::new("t", 0, 1, None, Some(payload))
    }

    #[test]
    fn inventories_accept_product_uuid_and_product_id() {
        let id = Uuid::from_u128(5);
        for field in ["product_uuid", "product_id"] {
            let payload = format!(r#"{{"{field}":"{id}","inventory":3}}"#);
            let d = InventoriesTranslator
                .translate(&message(payload.as_bytes()))
                .unwrap();
            assert_eq!((d.product_id, d.inventory), (id, 3));
        }
        assert!(InventoriesTranslator.translate(&message(b"{}")).is_err());
        assert!(InventoriesTranslator.translate(&message(b"nope")).is_err());
    }

    #[test]
    fn price_changes_accept_strings_and_numbers() {
        let id = Uuid::from_u128(5);
        let payload = format!(r#"{{"product_id":"{id}","old_price":"1.10","new_price":2.5}}"#);
        let d = PriceChangesTranslator
            .translate(&message(payload.as_bytes()))
            .unwrap();
        assert_eq!(d.old_price.to_string(), "1.10");
        assert_eq!(d.new_price.to_string(), "2.5");
        assert!(PriceChangesTranslator
            .translate(&message(
                br#"{"product_uuid":"x","old_price":1,"new_price":2}"#
            ))
            .is_err());
    }
}
