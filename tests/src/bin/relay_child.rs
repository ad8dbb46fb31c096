//! A child process for the relay's kill test: runs one relay until killed.
//!
//! ```text
//! relay_child <database-url> <brokers> <relay-id> <topic> <instance-id> <lease-ms>
//! ```
//!
//! Relays every event to `<topic>`, keyed by its `k` tag. Prints `ready` once
//! started.

use std::io::Write;
use std::time::Duration;

use dcb_core::Query;
use dcb_kafka::{EventRelay, KafkaConfig, RelayConfig, Route};
use dcb_postgres::PgEventStore;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, brokers, relay, topic, instance, lease_ms] = &args[..] else {
        eprintln!("usage: relay_child <database-url> <brokers> <relay-id> <topic> <instance-id> <lease-ms>");
        std::process::exit(2);
    };
    let lease = Duration::from_millis(lease_ms.parse().expect("lease-ms is a number"));
    let store = PgEventStore::connect(url)
        .await
        .expect("connect to the store");
    let _relay = EventRelay::new(relay.as_str(), KafkaConfig::new(brokers.as_str()))
        .route(Route::new(Query::all(), topic.as_str()).key_tag("k"))
        .config(
            RelayConfig::default()
                .instance_id(instance.as_str())
                .lease_ttl(lease)
                .poll_interval(Duration::from_millis(100)),
        )
        .start(&store)
        .await
        .expect("start the relay");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    std::future::pending::<()>().await;
}
