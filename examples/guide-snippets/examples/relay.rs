//! Relays the concert events to a Kafka topic until Ctrl-C.
//!
//! `DATABASE_URL=postgres://.. KAFKA_BROKERS=host:port cargo run -p guide-snippets --example relay`

use dcb_core::BoxError;
use dcb_kafka::KafkaConfig;
use dcb_postgres::PgEventStore;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL")?;
    let kafka = KafkaConfig::from_env().ok_or("set KAFKA_BROKERS (host:port)")?;
    let store = PgEventStore::connect(&url).await?;
    let relay =
        guide_snippets::relay::start_relay(&store, kafka, "concerts-out", "concerts").await?;
    println!("relaying to topic `concerts`; Ctrl-C stops");
    tokio::signal::ctrl_c().await?;
    println!("{:?}", relay.status().await?);
    relay.shutdown().await;
    store.shutdown().await;
    Ok(())
}
