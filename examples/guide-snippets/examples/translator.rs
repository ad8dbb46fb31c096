//! Schedules the concerts of topic `concerts-scheduled` until Ctrl-C.
//!
//! `DATABASE_URL=postgres://.. KAFKA_BROKERS=host:port cargo run -p guide-snippets --example translator`

use dcb_core::BoxError;
use dcb_kafka::KafkaConfig;
use dcb_postgres::PgEventStore;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL")?;
    let kafka = KafkaConfig::from_env().ok_or("set KAFKA_BROKERS (host:port)")?;
    let store = PgEventStore::connect(&url).await?;
    let translators = guide_snippets::translator::start_translator(
        store.clone(),
        kafka,
        "concerts-app",
        "concerts-scheduled",
    )
    .await?;
    println!("reading topic `concerts-scheduled`; Ctrl-C stops");
    tokio::signal::ctrl_c().await?;
    println!("{:?}", translators.stats());
    translators.shutdown().await;
    store.shutdown().await;
    Ok(())
}
