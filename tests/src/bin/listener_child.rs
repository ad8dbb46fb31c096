//! A child process for the listener crash tests: runs one listener until
//! killed (or, when stdin closes, shuts down gracefully).
//!
//! ```text
//! listener_child <tx|alo> <database-url> <instance-id> <lease-ms> <listener-id>
//! ```
//!
//! `tx` runs the transactional `TickCounter` projection; `alo` runs an
//! at-least-once listener that prints `seen <position>` for every `Tick`.
//! Prints `ready` once started and `stopped` after a graceful shutdown.

use std::io::Write;
use std::time::Duration;

use async_trait::async_trait;
use dcb_core::{BoxError, Listener, Query, Sequenced};
use dcb_postgres::listener::RunnerConfig;
use dcb_postgres::PgEventStore;
use tokio::io::AsyncReadExt;

#[path = "../../tests/listener_support.rs"]
mod support;

use support::{TestEvent, TickCounter};

struct Printer {
    id: String,
}

#[async_trait]
impl Listener for Printer {
    type Event = TestEvent;

    fn id(&self) -> &str {
        &self.id
    }

    fn query(&self) -> Query {
        support::ticks_only()
    }

    async fn handle(&self, event: Sequenced<TestEvent>) -> Result<(), BoxError> {
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "seen {}", event.position.0)?;
            out.flush()?;
        }
        tokio::time::sleep(Duration::from_micros(fastrand::u64(..500))).await;
        Ok(())
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, url, instance, lease_ms, id] = args.as_slice() else {
        eprintln!(
            "usage: listener_child <tx|alo> <database-url> <instance-id> <lease-ms> <listener-id>"
        );
        std::process::exit(2);
    };
    let lease = Duration::from_millis(lease_ms.parse().expect("lease-ms is a number"));
    let store = PgEventStore::connect(url)
        .await
        .expect("connect to the store");
    let config = RunnerConfig::default()
        .batch_size(20)
        .poll_interval(Duration::from_millis(200))
        .lease_ttl(lease)
        .instance_id(instance.clone());
    let runner = store.listeners().config(config);
    let runner = match mode.as_str() {
        "tx" => runner.transactional(TickCounter {
            id: id.clone(),
            instance: instance.clone(),
            jitter: Duration::from_micros(300),
        }),
        "alo" => runner.at_least_once(Printer { id: id.clone() }),
        other => panic!("unknown mode {other}"),
    };
    let handle = runner.start().await.expect("start the runner");
    say("ready");
    // Run until stdin closes, then stop gracefully.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    handle.shutdown().await;
    say("stopped");
}
